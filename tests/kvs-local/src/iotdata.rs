//! AWS IoT's data plane over HTTPS, the two calls the archiver makes from a Lambda function
//! (IAM, no certificate): Publish (`POST /topics/{topic}?qos=1`, the message as the body)
//! and GetRetainedMessage (`GET /retainedMessage/{topic}`: `{"topic", "payload" (base64),
//! "qos", "lastModifiedTime"}`, or 404 ResourceNotFoundException). SigV4 for the
//! `iotdevicegateway` service, the signing name the IoT Data Plane API reference gives. Bridged to an MQTT broker on
//! loopback (`Config::iot_broker`, mosquitto in the tests), so that devices receive what is
//! published and retained messages are the broker's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::Request;
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde_json::json;

use crate::error::ApiError;
use crate::server::{Body, State, error_response, json, signed_json};

/// Whether `path` is one of the IoT data plane's.
pub fn is_iot_data(path: &str) -> bool {
    path.starts_with("/topics/") || path.starts_with("/retainedMessage/")
}

pub(crate) async fn handle(state: &State, req: Request<Incoming>) -> http::Response<Body> {
    let (parts, body, _) = match signed_json(state, req, "iotdevicegateway").await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(port) = state.cfg.iot_broker else {
        return error_response(&ApiError::new(
            503,
            "ServiceUnavailableException",
            "kvs-local has no MQTT broker to bridge AWS IoT's data plane to (Config::iot_broker)",
        ));
    };
    let path = parts.uri.path();
    let (op, rest) = match (parts.method.as_str(), path) {
        ("POST", p) if p.starts_with("/topics/") => ("Publish", &p["/topics/".len()..]),
        ("GET", p) if p.starts_with("/retainedMessage/") => {
            ("GetRetainedMessage", &p["/retainedMessage/".len()..])
        }
        _ => return error_response(&ApiError::unknown_operation(path)),
    };
    let topic = percent_decode_str(rest).decode_utf8_lossy().into_owned();
    if topic.is_empty() || topic.contains(['+', '#']) {
        return error_response(&ApiError::invalid(format!("{topic:?} is not a topic name")));
    }
    let result = match op {
        "Publish" => publish(port, &topic, body).await.map(|()| json(&json!({}))),
        _ => retained(port, &topic).await.map(|found| match found {
            Some(payload) => json(&json!({
                "topic": topic,
                "payload": base64::engine::general_purpose::STANDARD.encode(&payload),
                "qos": 1,
                "lastModifiedTime": chrono::Utc::now().timestamp_millis(),
            })),
            None => error_response(&ApiError::new(
                404,
                "ResourceNotFoundException",
                format!("no retained message on {topic}"),
            )),
        }),
    };
    result.unwrap_or_else(|e| {
        error_response(&ApiError::new(
            500,
            "InternalFailureException",
            format!("the MQTT bridge: {e:#}"),
        ))
    })
}

fn client(port: u16) -> (AsyncClient, EventLoop) {
    static N: AtomicU64 = AtomicU64::new(0);
    let id = format!(
        "kvs-local-iotdata-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    AsyncClient::new(MqttOptions::new(id, "127.0.0.1", port), 8)
}

/// The next packet from the broker, within `within`.
async fn next(events: &mut EventLoop, within: Duration) -> anyhow::Result<Option<Packet>> {
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, events.poll()).await {
            Err(_) => return Ok(None),
            Ok(Err(e)) => return Err(anyhow::Error::new(e).context("MQTT")),
            Ok(Ok(Event::Incoming(p))) => return Ok(Some(p)),
            Ok(Ok(Event::Outgoing(_))) => {}
        }
    }
}

async fn publish(port: u16, topic: &str, payload: Bytes) -> anyhow::Result<()> {
    let (client, mut events) = client(port);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await?;
    loop {
        match next(&mut events, Duration::from_secs(5)).await? {
            Some(Packet::PubAck(_)) => break,
            Some(_) => {}
            None => anyhow::bail!("the broker did not acknowledge the publish within 5 s"),
        }
    }
    let _ = client.disconnect().await;
    let _ = next(&mut events, Duration::from_millis(200)).await;
    Ok(())
}

async fn retained(port: u16, topic: &str) -> anyhow::Result<Option<Bytes>> {
    let (client, mut events) = client(port);
    client.subscribe(topic, QoS::AtLeastOnce).await?;
    let mut subscribed = false;
    let mut found = None;
    // Retained messages follow the SUBACK at once; a moment after it, there is none.
    let mut within = Duration::from_secs(5);
    while let Some(packet) = next(&mut events, within).await? {
        match packet {
            Packet::SubAck(_) => {
                subscribed = true;
                within = Duration::from_millis(300);
            }
            Packet::Publish(p) if p.retain => {
                found = Some(p.payload);
                break;
            }
            _ => {}
        }
    }
    anyhow::ensure!(
        subscribed,
        "the broker did not acknowledge the subscription"
    );
    let _ = client.disconnect().await;
    Ok(found)
}
