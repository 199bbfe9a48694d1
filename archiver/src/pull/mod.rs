//! Pulling a window from the device that recorded it, when KVS does not have it (an
//! on-demand or scheduled camera): over the devices' MQTT broker, check that the device is
//! online (its retained `available`), publish `<camera>/upload/set` for the missing span,
//! and follow the camera's `upload/events` until the window is sent, bounded. Every pull
//! ends with a recorded outcome (sent, not needed, device offline or without the video,
//! timed out), never a hang; the clip is then made from what KVS holds.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use kvs_edge_config::archiver::{PullDevice, PullSettings};
use kvs_edge_config::{STREAM_CAMERA_TAG, STREAM_DEVICE_TAG};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::info;

pub mod https;

/// How long the device's retained `available` and the answer to the request may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(20);
/// Progress in the log this often while the device uploads.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// How a pull ended, for the log and the outcome JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Pulled {
    /// The device sent what it had of the window (`missing`: what it did not have).
    Sent {
        fragments: u64,
        bytes: u64,
        missing: Value,
    },
    /// The device is not connected (its last will, or a clean stop).
    Offline(String),
    /// The device refused the request, or has none of the window.
    Refused(String),
    /// Asked over HTTPS, and KVS now holds the whole span (seen in ListFragments: HTTPS
    /// cannot follow the device's events).
    Arrived,
    /// Asked, but the upload did not end within `wait_s`.
    TimedOut { fragments: u64 },
    /// The broker could not be reached or the answer could not be read.
    Failed(String),
}

impl Pulled {
    pub fn json(&self, device: &PullDevice, id: &str, span: (i64, i64)) -> Value {
        let mut v = json!({
            "device": device.device,
            "camera": device.camera,
            "request": id,
            "start_ms": span.0,
            "end_ms": span.1,
        });
        match self {
            Pulled::Sent {
                fragments,
                bytes,
                missing,
            } => {
                v["result"] = json!("sent");
                v["fragments"] = json!(fragments);
                v["bytes"] = json!(bytes);
                v["missing_on_device"] = missing.clone();
            }
            Pulled::Offline(state) => {
                v["result"] = json!("device_offline");
                v["available"] = json!(state);
            }
            Pulled::Refused(reason) => {
                v["result"] = json!("refused");
                v["reason"] = json!(reason);
            }
            Pulled::Arrived => {
                v["result"] = json!("sent");
                v["seen_in"] = json!("ListFragments");
            }
            Pulled::TimedOut { fragments } => {
                v["result"] = json!("timed_out");
                v["fragments"] = json!(fragments);
            }
            Pulled::Failed(reason) => {
                v["result"] = json!("failed");
                v["reason"] = json!(reason);
            }
        }
        v
    }
}

/// The device recording `stream`: the one `[[pull.devices]]` names, else the one the
/// stream's tags name (`kvs-edge:device` and `kvs-edge:camera`, set by the agent on the
/// streams it creates); `None` when neither says.
pub async fn device_for(
    cfg: &PullSettings,
    kvs: &aws_sdk_kinesisvideo::Client,
    throttle_budget: Duration,
    stream: &str,
) -> anyhow::Result<Option<PullDevice>> {
    if let Some(d) = cfg.devices.iter().find(|d| d.stream == stream) {
        return Ok(Some(d.clone()));
    }
    let what = format!("ListTagsForStream {stream}");
    let out = crate::retry::kvs(&what, throttle_budget, || {
        kvs.list_tags_for_stream().stream_name(stream).send()
    })
    .await
    .context(what)?;
    let tags = out.tags.unwrap_or_default();
    device_from_tags(stream, |k| tags.get(k).map(String::as_str))
}

/// The device a stream's tags name, checked: both tags or neither, each a single MQTT topic
/// level (a tag is set by whoever may tag the stream, and becomes part of a topic).
pub fn device_from_tags<'a>(
    stream: &str,
    tag: impl Fn(&str) -> Option<&'a str>,
) -> anyhow::Result<Option<PullDevice>> {
    let (device, camera) = match (tag(STREAM_DEVICE_TAG), tag(STREAM_CAMERA_TAG)) {
        (None, None) => return Ok(None),
        (Some(d), Some(c)) => (d, c),
        _ => anyhow::bail!(
            "stream {stream} has only one of the tags {STREAM_DEVICE_TAG} and {STREAM_CAMERA_TAG}"
        ),
    };
    for (name, value) in [(STREAM_DEVICE_TAG, device), (STREAM_CAMERA_TAG, camera)] {
        if value.is_empty() || value.contains(['/', '+', '#', '\0']) {
            anyhow::bail!(
                "stream {stream}: tag {name} = {value:?} is not a single MQTT topic level"
            );
        }
    }
    Ok(Some(PullDevice {
        stream: stream.to_string(),
        device: device.to_string(),
        camera: camera.to_string(),
    }))
}

/// The request id for a clip: the same for every delivery of the same alarm (a device
/// given the same id again replaces the window instead of sending it twice).
pub fn request_id(clip_key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(clip_key.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("archiver-{hex}")
}

/// Asks `device` for `[start_ms, end_ms)` and follows it until sent, refused or `wait_s`.
pub async fn pull(
    cfg: &PullSettings,
    device: &PullDevice,
    id: &str,
    start_ms: i64,
    end_ms: i64,
) -> Pulled {
    let base = format!("{}/{}", cfg.prefix, device.device);
    let camera = format!("{base}/{}", device.camera);
    let (client, events) = match connect(cfg) {
        Ok(c) => c,
        Err(e) => return Pulled::Failed(format!("{e:#}")),
    };
    let mut link = Link { client, events };
    let outcome = link.ask(cfg, &base, &camera, id, start_ms, end_ms).await;
    let _ = link.client.try_disconnect();
    outcome
}

fn connect(cfg: &PullSettings) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let id = cfg.client_id.clone().unwrap_or_else(|| {
        let n = crate::retry::random_u64();
        format!("kvs-edge-archiver-{n:016x}")
    });
    let mut opts = MqttOptions::new(id, cfg.host.clone(), cfg.port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(Some(1 << 20));
    if let Some(tls) = &cfg.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("pull.tls: {}", p.display()))
        };
        let ca = match &tls.ca_path {
            Some(p) => read(p)?,
            None => anyhow::bail!("pull.tls: ca_path is required for the archiver"),
        };
        let client_auth = match (&tls.cert_path, &tls.key_path) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let alpn = tls.alpn_for(cfg.port);
        opts.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca,
            alpn: (!alpn.is_empty()).then(|| alpn.into_iter().map(String::into_bytes).collect()),
            client_auth,
        }));
    }
    // No last will: the archiver has nothing to say when it goes, and AWS IoT refuses a
    // connection whose will topic its policy does not allow.
    Ok(AsyncClient::new(opts, 16))
}

struct Link {
    client: AsyncClient,
    events: EventLoop,
}

impl Link {
    /// The next message, within `until`; `Err` when the connection fails.
    async fn next(&mut self, until: Instant) -> anyhow::Result<Option<(String, Bytes)>> {
        loop {
            let polled = tokio::time::timeout_at(until, self.events.poll()).await;
            match polled {
                Err(_) => return Ok(None),
                Ok(Err(e)) => return Err(anyhow::Error::new(e).context("MQTT")),
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    let topic = String::from_utf8_lossy(&p.topic).into_owned();
                    return Ok(Some((topic, p.payload)));
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn ask(
        &mut self,
        cfg: &PullSettings,
        base: &str,
        camera: &str,
        id: &str,
        start_ms: i64,
        end_ms: i64,
    ) -> Pulled {
        let available = format!("{base}/available");
        let events = format!("{camera}/upload/events");
        let rejected = format!("{camera}/upload/rejected");
        let filters =
            [&available, &events, &rejected].map(|t| Filter::new(t.as_str(), QoS::AtLeastOnce));
        if let Err(e) = self.client.subscribe_many(filters).await {
            return Pulled::Failed(format!("MQTT: {e}"));
        }
        // The device's retained availability comes first.
        let deadline = Instant::now() + ANSWER_WITHIN;
        let state = loop {
            match self.next(deadline).await {
                Err(e) => return Pulled::Failed(format!("{e:#}")),
                Ok(None) => break "unknown (no retained availability)".to_string(),
                Ok(Some((t, p))) if t == available => {
                    break String::from_utf8_lossy(&p).into_owned();
                }
                Ok(Some(_)) => {}
            }
        };
        if state != "online" {
            return Pulled::Offline(state);
        }
        // The token comes back in a rejection: another archiver's request to the same
        // camera is refused on the same topic.
        let request = json!({"id": id, "start": start_ms, "end": end_ms, "token": id}).to_string();
        if let Err(e) = self
            .client
            .publish(
                format!("{camera}/upload/set"),
                QoS::AtLeastOnce,
                false,
                request,
            )
            .await
        {
            return Pulled::Failed(format!("MQTT: {e}"));
        }
        info!(device = %base, id, start_ms, end_ms, "asked the device for the window");
        let give_up = Instant::now() + Duration::from_secs(cfg.wait_s);
        // Until the device answers, the shorter bound applies.
        let mut answered = false;
        let mut deadline = (Instant::now() + ANSWER_WITHIN).min(give_up);
        let mut sent = 0;
        let mut next_note = Instant::now() + PROGRESS_EVERY;
        loop {
            let until = deadline.min(next_note);
            let message = match self.next(until).await {
                Err(e) => return Pulled::Failed(format!("{e:#}")),
                Ok(m) => m,
            };
            let now = Instant::now();
            let Some((topic, payload)) = message else {
                if now >= deadline {
                    return if answered {
                        Pulled::TimedOut { fragments: sent }
                    } else {
                        Pulled::Failed(format!(
                            "the device did not answer within {ANSWER_WITHIN:?}"
                        ))
                    };
                }
                info!(device = %base, id, sent, "waiting for the device's upload");
                next_note = now + PROGRESS_EVERY;
                continue;
            };
            if topic == available {
                let state = String::from_utf8_lossy(&payload).into_owned();
                if state != "online" {
                    // It went away mid-upload: what it sent is in KVS, the rest is not.
                    return Pulled::Offline(state);
                }
                continue;
            }
            let Ok(body) = serde_json::from_slice::<Value>(&payload) else {
                continue;
            };
            if topic == rejected {
                if body["token"] == id {
                    return Pulled::Refused(body["reason"].as_str().unwrap_or("refused").into());
                }
                continue;
            }
            if body["id"] != id {
                continue;
            }
            sent = body["fragments_sent"].as_u64().unwrap_or(sent);
            // Answered: from now on only the overall bound applies.
            answered = true;
            deadline = give_up;
            match body["type"].as_str() {
                // A window ending in the future may still come; one that has ended and of
                // which the device holds nothing will not: say so rather than wait.
                Some("new")
                    if body["fragments_available"] == 0
                        && body["end_ms"].as_i64().is_some_and(|e| e <= now_ms()) =>
                {
                    return Pulled::Refused(
                        "the device holds none of the window (never recorded, or dropped by its retention)".into(),
                    );
                }
                Some("end") => {
                    return Pulled::Sent {
                        fragments: sent,
                        bytes: body["bytes_sent"].as_u64().unwrap_or(0),
                        missing: body["missing"].clone(),
                    };
                }
                _ => {}
            }
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_tags_name_the_device_or_say_what_is_wrong() {
        let tags = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
        };
        let d = device_from_tags(
            "gate",
            tags(&[
                ("kvs-edge:device", "garage-pi"),
                ("kvs-edge:camera", "cam"),
                ("site", "x"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (d.stream.as_str(), d.device.as_str(), d.camera.as_str()),
            ("gate", "garage-pi", "cam")
        );
        assert!(
            device_from_tags("gate", tags(&[("site", "x")]))
                .unwrap()
                .is_none(),
            "untagged"
        );
        let e = device_from_tags("gate", tags(&[("kvs-edge:device", "garage-pi")])).unwrap_err();
        assert!(e.to_string().contains("only one of"), "{e}");
        for bad in ["a/b", "+", "#", ""] {
            let pairs: &'static [(&str, &str)] = Box::leak(
                vec![("kvs-edge:device", bad), ("kvs-edge:camera", "cam")].into_boxed_slice(),
            );
            let e = device_from_tags("gate", tags(pairs)).unwrap_err();
            assert!(e.to_string().contains("kvs-edge:device"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn request_ids_are_stable_per_clip_and_valid_on_the_device() {
        let a = request_id("clips/cam/2026/12/03/door-20261203T100000Z-20261203T100300Z.mp4");
        assert_eq!(
            a,
            request_id("clips/cam/2026/12/03/door-20261203T100000Z-20261203T100300Z.mp4")
        );
        assert_ne!(
            a,
            request_id("clips/cam/2026/12/03/door-20261203T110000Z-20261203T110300Z.mp4")
        );
        assert!(a.len() <= 64 && a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
}
