//! From an alarm event to a decision: which streams, which window, or why nothing. Pure.
//!
//! Streams come from the first mapping whose pattern matches the alarm's name or ARN, else
//! (when allowed) from the `StreamName` dimension of the alarm's metric, which KVS's own
//! CloudWatch metrics carry. The window is `[alarm time - pre_roll, alarm time + post_roll]`.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use kvs_edge_config::archiver::{ArchiverConfig, glob_match};
use serde_json::{Value, json};

use crate::event::{Alarm, Event, JobState};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipRequest {
    pub alarm: Alarm,
    pub streams: Vec<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// How the streams were found: `mapping[i]` or `StreamName dimension`.
    pub resolved_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Ignore(String),
    Clip(Box<ClipRequest>),
    /// Record a MediaConvert job's final state next to its clip.
    Record(Box<JobState>),
    /// No mapping or dimension names the streams: the alarm's tags may (an API call, so
    /// not in a dry run).
    LookupTags(Box<Alarm>),
}

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Decision {
    /// The dry-run output: `{"action": "ignore", "reason"}` or
    /// `{"action": "clip", "alarm", "streams", "start", "end", …}`.
    pub fn json(&self) -> Value {
        match self {
            Decision::Ignore(reason) => json!({ "action": "ignore", "reason": reason }),
            Decision::LookupTags(a) => json!({
                "action": "lookup-tags",
                "alarm": a.name,
                "alarm_arn": a.arn,
                "reason": "no mapping matches and the metric has no StreamName dimension: the streams come from the alarm's tags (kvs-edge:streams or StreamName), read when not a dry run",
            }),
            Decision::Record(j) => json!({
                "action": "record",
                "job": j.job_id,
                "status": j.status,
                "clip": format!("s3://{}/{}", j.clip_bucket, j.clip_key),
            }),
            Decision::Clip(c) => json!({
                "action": "clip",
                "alarm": c.alarm.name,
                "alarm_arn": c.alarm.arn,
                "transition": c.alarm.transition_id(),
                "streams": c.streams,
                "start": rfc3339(&c.start),
                "end": rfc3339(&c.end),
                "alarm_time": rfc3339(&c.alarm.time),
                "resolved_by": c.resolved_by,
                "shape": c.alarm.shape,
            }),
        }
    }
}

impl Decision {
    /// A clip asked for by hand (`kvs-edge-archiver clip`): `name` stands in for the alarm.
    pub fn manual(name: &str, stream: &str, start: DateTime<Utc>, end: DateTime<Utc>) -> Decision {
        Decision::Clip(Box::new(ClipRequest {
            alarm: Alarm {
                shape: "manual",
                event_id: None,
                name: name.to_string(),
                arn: None,
                reason: "requested from the command line".into(),
                time: start,
                previous: None,
                region: None,
                account: None,
                dimensions: Vec::new(),
                muted_by: None,
                triggered_by: Vec::new(),
            },
            streams: vec![stream.to_string()],
            start,
            end,
            resolved_by: "command line".into(),
        }))
    }
}

pub fn decide(cfg: &ArchiverConfig, event: Event) -> Decision {
    let alarm = match event {
        Event::Ignore(reason) => return Decision::Ignore(reason),
        Event::Job(j) => return Decision::Record(j),
        Event::Alarm(a) => a,
    };
    if cfg.skip_muted
        && let Some(rule) = &alarm.muted_by
    {
        return Decision::Ignore(format!(
            "{}: muted by {rule} (skip_muted = true)",
            alarm.name
        ));
    }
    // A composite alarm also matches through the child alarms that set it off.
    let children = alarm.triggered_by.iter().flat_map(|arn| {
        let name = arn.split_once(":alarm:").map_or(arn.as_str(), |(_, n)| n);
        [arn.as_str(), name]
    });
    let names: Vec<&str> = std::iter::once(alarm.name.as_str())
        .chain(alarm.arn.as_deref())
        .chain(children)
        .collect();
    let matches = |pattern: &str| names.iter().any(|n| glob_match(pattern, n));
    let (streams, pre, post, resolved_by) = match cfg
        .mappings
        .iter()
        .enumerate()
        .find(|(_, m)| matches(&m.alarm))
    {
        Some((i, m)) => (
            m.streams.clone(),
            m.pre_roll_s.unwrap_or(cfg.clip.pre_roll_s),
            m.post_roll_s.unwrap_or(cfg.clip.post_roll_s),
            format!("mappings[{i}]"),
        ),
        None => {
            let mut streams: Vec<String> = alarm
                .dimensions
                .iter()
                .filter(|(k, _)| cfg.use_stream_dimension && k == "StreamName")
                .map(|(_, v)| v.clone())
                .collect();
            streams.dedup();
            if streams.is_empty() && cfg.use_alarm_tags && alarm.arn.is_some() {
                return Decision::LookupTags(alarm);
            }
            if streams.is_empty() {
                return Decision::Ignore(format!(
                    "{}: unknown alarm: no mapping matches it and its metric has no StreamName dimension",
                    alarm.name
                ));
            }
            (
                streams,
                cfg.clip.pre_roll_s,
                cfg.clip.post_roll_s,
                "StreamName dimension".to_string(),
            )
        }
    };
    Decision::Clip(Box::new(ClipRequest {
        start: alarm.time - Duration::seconds(pre as i64),
        end: alarm.time + Duration::seconds(post as i64),
        streams,
        resolved_by,
        alarm: *alarm,
    }))
}

/// The decision for an alarm whose streams its tags named (the default window).
pub fn with_tagged_streams(cfg: &ArchiverConfig, alarm: Alarm, streams: Vec<String>) -> Decision {
    if streams.is_empty() {
        return Decision::Ignore(format!(
            "{}: unknown alarm: no mapping matches it, its metric has no StreamName dimension and its tags name no stream",
            alarm.name
        ));
    }
    Decision::Clip(Box::new(ClipRequest {
        start: alarm.time - Duration::seconds(cfg.clip.pre_roll_s as i64),
        end: alarm.time + Duration::seconds(cfg.clip.post_roll_s as i64),
        streams,
        resolved_by: "alarm tags".into(),
        alarm,
    }))
}

/// The object key of a stream's clip: `cfg.key_template` filled in. Deterministic, so every
/// delivery of the same alarm transition names the same object.
pub fn clip_key(
    template: &str,
    stream: &str,
    alarm: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> String {
    let safe: String = alarm
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let compact = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
    template
        .replace("{stream}", stream)
        .replace("{alarm}", &safe)
        .replace("{yyyy}", &start.format("%Y").to_string())
        .replace("{mm}", &start.format("%m").to_string())
        .replace("{dd}", &start.format("%d").to_string())
        .replace("{start}", &compact(start))
        .replace("{end}", &compact(end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_and_safe() {
        let t = crate::event::parse_time("2024-02-17T11:53:08.431+0000").unwrap();
        let key = clip_key(
            "clips/{stream}/{yyyy}/{mm}/{dd}/{alarm}-{start}-{end}.mp4",
            "garage-cam",
            "Garage motion / night",
            t - Duration::seconds(60),
            t + Duration::seconds(120),
        );
        assert_eq!(
            key,
            "clips/garage-cam/2024/02/17/Garage-motion---night-20240217T115208Z-20240217T115508Z.mp4"
        );
    }
}
