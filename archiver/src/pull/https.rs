//! The pull over AWS IoT's data plane (HTTPS, SigV4 for `iotdevicegateway`, the signing name
//! the IoT Data Plane API reference gives, with the archiver's IAM
//! credentials), for a Lambda function with no certificate to connect with: the device's
//! retained `available` (GetRetainedMessage), the request (Publish, QoS 1), and then, since
//! HTTPS cannot follow the device's events, the window watched as it fills in ListFragments
//! until nothing is missing, nothing has come for `STALLED`, or `wait_s` is up.

use std::future::Future;
use std::time::Duration;

use base64::Engine;
use kvs_edge_config::archiver::PullSettings;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::info;

use super::Pulled;
use crate::signed::SignedClient;

/// How often ListFragments is asked while the device uploads.
const POLL: Duration = Duration::from_secs(2);
/// No new video for this long after the request: the device has nothing more to send.
const STALLED: Duration = Duration::from_secs(60);

/// Everything but RFC 3986's unreserved characters is encoded (`/` too).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `https://<endpoint>/<api>/<topic>`, the topic one path segment.
fn url(endpoint: &str, api: &str, topic: &str) -> String {
    format!(
        "{}/{api}/{}",
        endpoint.trim_end_matches('/'),
        utf8_percent_encode(topic, SEGMENT)
    )
}

/// The retained message on `topic` (`None`: there is none).
async fn retained(
    client: &SignedClient,
    endpoint: &str,
    topic: &str,
) -> anyhow::Result<Option<String>> {
    let reply = client
        .send(
            "iotdevicegateway",
            "GET",
            &url(endpoint, "retainedMessage", topic),
            "application/json",
            b"",
        )
        .await?;
    match reply.status {
        200 => {
            let v: Value = serde_json::from_slice(&reply.body)?;
            let payload = v["payload"].as_str().unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD.decode(payload)?;
            Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
        }
        404 => Ok(None),
        s => anyhow::bail!(
            "GetRetainedMessage {topic}: {s} {} {}",
            reply.error_type,
            String::from_utf8_lossy(&reply.body)
        ),
    }
}

/// Asks the device behind `camera` (`<prefix>/<device>/<camera>`) for `[start_ms, end_ms)`;
/// `missing()` says how many ms of the span KVS still lacks.
pub async fn pull<F, Fut>(
    client: &SignedClient,
    cfg: &PullSettings,
    endpoint: &str,
    base: &str,
    camera: &str,
    request: (&str, i64, i64),
    mut missing: F,
) -> Pulled
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<i64>>,
{
    let (id, start_ms, end_ms) = request;
    match retained(client, endpoint, &format!("{base}/available")).await {
        Err(e) => return Pulled::Failed(format!("{e:#}")),
        Ok(None) => return Pulled::Offline("unknown (no retained availability)".into()),
        Ok(Some(state)) if state != "online" => return Pulled::Offline(state),
        Ok(Some(_)) => {}
    }
    let body = json!({"id": id, "start": start_ms, "end": end_ms, "token": id}).to_string();
    let publish = format!(
        "{}?qos=1",
        url(endpoint, "topics", &format!("{camera}/upload/set"))
    );
    match client
        .send(
            "iotdevicegateway",
            "POST",
            &publish,
            "application/json",
            body.as_bytes(),
        )
        .await
    {
        Err(e) => {
            return Pulled::Failed(format!(
                "Publish: {}",
                crate::store::error_chain(e.as_ref())
            ));
        }
        Ok(r) if r.status != 200 => {
            return Pulled::Failed(format!(
                "Publish: {} {} {}",
                r.status,
                r.error_type,
                String::from_utf8_lossy(&r.body)
            ));
        }
        Ok(_) => {}
    }
    info!(device = %base, id, start_ms, end_ms, "asked the device for the window (AWS IoT over HTTPS)");
    let give_up = Instant::now() + Duration::from_secs(cfg.wait_s);
    let mut last = i64::MAX;
    let mut moved = Instant::now();
    loop {
        let lacking = match missing().await {
            Ok(ms) => ms,
            Err(e) => return Pulled::Failed(format!("{e:#}")),
        };
        if lacking <= 0 {
            return Pulled::Arrived;
        }
        let now = Instant::now();
        if lacking < last {
            last = lacking;
            moved = now;
            info!(device = %base, id, lacking_ms = lacking, "waiting for the device's upload");
        }
        if now >= give_up || now.duration_since(moved) >= STALLED {
            return Pulled::TimedOut { fragments: 0 };
        }
        tokio::time::sleep(POLL.min(give_up - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_one_path_segment() {
        assert_eq!(
            url(
                "https://x-ats.iot.eu-west-1.amazonaws.com/",
                "topics",
                "kvs-edge/pi/cam/upload/set"
            ),
            "https://x-ats.iot.eu-west-1.amazonaws.com/topics/kvs-edge%2Fpi%2Fcam%2Fupload%2Fset"
        );
    }
}
