//! The KVS side of a clip: a stream's data endpoints (GetDataEndpoint), the window's
//! fragments (ListFragments, waiting a bounded time for the post-roll) and their media
//! (GetClip). Every call is retried in-process while KVS throttles it (see `retry`), and
//! GetClip's refusals of the media itself are told apart from other failures, so that the
//! caller can split the range where the codec configuration changes.

use std::time::Duration;

use aws_sdk_kinesisvideo::types::ApiName;
use aws_sdk_kinesisvideoarchivedmedia as media;
use aws_smithy_types::DateTime as SdkTime;
use aws_smithy_types::byte_stream::ByteStream;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use chrono::{DateTime, Utc};
use media::types::{
    ClipFragmentSelector, ClipFragmentSelectorType, ClipTimestampRange, FragmentSelector,
    FragmentSelectorType, TimestampRange,
};
use thiserror::Error;
use tokio::time::Instant;
use tracing::info;

use crate::plan::{self, Fragment};
use crate::retry;
use crate::store::error_chain;

/// How often ListFragments is asked while waiting for the post-roll.
const POLL: Duration = Duration::from_secs(2);

/// How often a long wait for ingestion says it is still waiting.
const SAY_EVERY: Duration = Duration::from_secs(30);

/// How long, from `now`, to wait for a window ending at `end` to be ingested: until `wait`
/// after its end. A window that ended longer ago than that is not waited for at all (what
/// is not in the stream by then will not come), one in the future until its end and `wait`.
pub fn patience(end: DateTime<Utc>, now: DateTime<Utc>, wait: Duration) -> Duration {
    (end + chrono::Duration::from_std(wait).unwrap_or_default() - now)
        .to_std()
        .unwrap_or_default()
}

/// GetClip's answers about the media of a range rather than the request: the codec private
/// data or the tracks change inside it ("Video playback track requirements"), or a fragment
/// cannot be played. Which of them the service names for a change is not documented, so
/// all are treated alike: a smaller range may play.
const UNPLAYABLE: [&str; 4] = [
    "InvalidCodecPrivateDataException",
    "MissingCodecPrivateDataException",
    "UnsupportedStreamMediaTypeException",
    "InvalidMediaFrameException",
];

#[derive(Debug, Error)]
pub enum ClipError {
    /// GetClip cannot make one MP4 of this range's media (see `UNPLAYABLE`).
    #[error("GetClip {stream}: {code}: {message}")]
    Unplayable {
        stream: String,
        code: String,
        message: String,
    },
    #[error("{0}")]
    Failed(String),
}

/// The KVS clients of the archiver.
pub struct Kvs {
    pub control: aws_sdk_kinesisvideo::Client,
    pub sdk: aws_config::SdkConfig,
    /// How long one call keeps retrying while throttled.
    pub throttle_budget: Duration,
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

impl Kvs {
    /// An archived-media client for `stream`'s data endpoint for `api`.
    pub async fn media(&self, stream: &str, api: ApiName) -> Result<media::Client, String> {
        let what = format!("GetDataEndpoint ({api:?}) for {stream}");
        let out = retry::kvs(&what, self.throttle_budget, || {
            self.control
                .get_data_endpoint()
                .stream_name(stream)
                .api_name(api.clone())
                .send()
        })
        .await
        .map_err(|e| format!("{what}: {}", error_chain(&e)))?;
        let url = out
            .data_endpoint
            .ok_or_else(|| format!("{what}: no endpoint in the answer"))?;
        let conf = media::config::Builder::from(&self.sdk)
            .endpoint_url(url)
            .build();
        Ok(media::Client::from_conf(conf))
    }

    /// Lists the window's fragments, waiting until `wait` after the window's end for the
    /// post-roll; true when it was not all ingested by then.
    pub async fn fragments(
        &self,
        stream: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        wait: Duration,
    ) -> Result<(Vec<Fragment>, bool), String> {
        let list = self.media(stream, ApiName::ListFragments).await?;
        let patience = patience(end, Utc::now(), wait);
        let deadline = Instant::now() + patience;
        let mut said: Option<Instant> = None;
        loop {
            let all = self.list_fragments(&list, stream, start, end).await?;
            let window = plan::in_window(all, ms(start), ms(end));
            let ingested = plan::ingested_to(&window, ms(end));
            if ingested || Instant::now() >= deadline {
                return Ok((window, !ingested));
            }
            // Say what is awaited, at the start and then now and then: a window that ends
            // in the future can take minutes.
            if said.is_none_or(|at| at.elapsed() >= SAY_EVERY) {
                let so_far = window
                    .iter()
                    .map(|f| f.start_ms + f.duration_ms)
                    .max()
                    .and_then(DateTime::from_timestamp_millis)
                    .map_or_else(
                        || "no video yet".to_string(),
                        |t| format!("video up to {}", t.to_rfc3339()),
                    );
                info!(
                    stream,
                    "waiting for the window to be ingested up to its end, {} ({so_far}); \
                     clipping what exists at {} at the latest",
                    end.to_rfc3339(),
                    (Utc::now()
                        + chrono::Duration::from_std(deadline - Instant::now())
                            .unwrap_or_default())
                    .to_rfc3339()
                );
                said = Some(Instant::now());
            }
            tokio::time::sleep(POLL.min(deadline - Instant::now())).await;
        }
    }

    async fn list_fragments(
        &self,
        media: &media::Client,
        stream: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<Fragment>, String> {
        let selector = FragmentSelector::builder()
            .fragment_selector_type(FragmentSelectorType::ProducerTimestamp)
            .timestamp_range(
                TimestampRange::builder()
                    .start_timestamp(SdkTime::from_millis(ms(start)))
                    .end_timestamp(SdkTime::from_millis(ms(end)))
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .build()
            .map_err(|e| e.to_string())?;
        let what = format!("ListFragments {stream}");
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = retry::kvs(&what, self.throttle_budget, || {
                media
                    .list_fragments()
                    .stream_name(stream)
                    .fragment_selector(selector.clone())
                    .max_results(1000)
                    .set_next_token(token.clone())
                    .send()
            })
            .await
            .map_err(|e| format!("{what}: {}", error_chain(&e)))?;
            for f in page.fragments.unwrap_or_default() {
                let (Some(number), Some(ts)) = (f.fragment_number, f.producer_timestamp) else {
                    continue;
                };
                out.push(Fragment {
                    number,
                    start_ms: rounded_ms(&ts),
                    duration_ms: f.fragment_length_in_milliseconds,
                    size: f.fragment_size_in_bytes,
                });
            }
            token = page.next_token;
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// One GetClip call; its MP4 arrives as a stream.
    pub async fn clip(
        &self,
        clips: &media::Client,
        stream: &str,
        r: &plan::Request,
    ) -> Result<ByteStream, ClipError> {
        let range = ClipTimestampRange::builder()
            .start_timestamp(SdkTime::from_millis(r.start_ms))
            .end_timestamp(SdkTime::from_millis(r.end_ms))
            .build()
            .map_err(|e| ClipError::Failed(e.to_string()))?;
        let selector = ClipFragmentSelector::builder()
            .fragment_selector_type(ClipFragmentSelectorType::ProducerTimestamp)
            .timestamp_range(range)
            .build()
            .map_err(|e| ClipError::Failed(e.to_string()))?;
        let what = format!("GetClip {stream}");
        let out = retry::kvs(&what, self.throttle_budget, || {
            clips
                .get_clip()
                .stream_name(stream)
                .clip_fragment_selector(selector.clone())
                .send()
        })
        .await
        .map_err(|e| match e.code() {
            Some(code) if UNPLAYABLE.contains(&code) => ClipError::Unplayable {
                stream: stream.to_string(),
                code: code.to_string(),
                message: e.message().unwrap_or_default().to_string(),
            },
            _ => ClipError::Failed(format!("{what}: {}", error_chain(&e))),
        })?;
        Ok(out.payload)
    }
}

/// A KVS timestamp in ms. The service sends epoch seconds as a JSON double: `…362.320`
/// parses to …362.319999…, which `to_millis` truncates to the wrong millisecond.
fn rounded_ms(t: &aws_smithy_types::DateTime) -> i64 {
    (t.as_nanos() + 500_000).div_euclid(1_000_000) as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn kvs_timestamps_round_to_the_millisecond_they_name() {
        let t = aws_smithy_types::DateTime::from_secs_f64(1_796_259_362.32);
        assert_eq!(
            t.to_millis().unwrap(),
            1_796_259_362_319,
            "truncation is off by one"
        );
        assert_eq!(super::rounded_ms(&t), 1_796_259_362_320);
    }

    use super::*;

    #[test]
    fn only_a_recent_or_future_window_is_waited_for() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let wait = Duration::from_secs(120);
        let at = |secs: i64| now + chrono::Duration::seconds(secs);
        assert_eq!(patience(at(-600), now, wait), Duration::ZERO, "long past");
        assert_eq!(
            patience(at(-120), now, wait),
            Duration::ZERO,
            "just past the wait"
        );
        assert_eq!(
            patience(at(-30), now, wait),
            Duration::from_secs(90),
            "recent"
        );
        assert_eq!(
            patience(at(300), now, wait),
            Duration::from_secs(420),
            "in the future"
        );
    }
}
