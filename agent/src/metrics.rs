//! Prometheus metrics on a local port (`[metrics] listen`): per camera, frames, fragments
//! sent / persisted / dropped / rejected, bytes, sessions, error acks, ack latency, buffer
//! depth, restarts, stalls and the encoder in use. Text exposition format 0.0.4.

use std::convert::Infallible;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::camera::CameraStats;
use crate::journal::{Journal, JournalStats};
use crate::mqtt::LinkStats;
use crate::timeline::WallMs;
use crate::uploader::UploadStats;

/// One camera's counters, as the registry holds them.
#[derive(Clone)]
pub struct CameraMetrics {
    pub camera: String,
    pub stream: String,
    pub camera_stats: Arc<CameraStats>,
    pub upload_stats: Arc<UploadStats>,
    pub journal: Arc<std::sync::Mutex<Journal>>,
    /// Unless continuous, the journal's backlog is the recording, not video late for KVS.
    pub upload_mode: kvs_edge_config::agent::UploadMode,
}

/// The cameras running now; the runner adds and removes them as the configuration changes.
#[derive(Clone, Default)]
pub struct Registry(Arc<std::sync::RwLock<Vec<CameraMetrics>>>);

impl Registry {
    pub fn cameras(&self) -> Vec<CameraMetrics> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, cameras: Vec<CameraMetrics>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = cameras;
    }
}

/// (help, kind, value) for one metric of one camera.
type Metric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Snapshot) -> u64,
);

/// Everything read once per camera per scrape (Prometheus) or per stats message (MQTT).
pub struct Snapshot<'a> {
    pub c: &'a CameraMetrics,
    pub journal: JournalStats,
    pub pending: u64,
    pub pending_bytes: u64,
    pub oldest_age_s: u64,
}

impl<'a> Snapshot<'a> {
    pub fn of(c: &'a CameraMetrics) -> Snapshot<'a> {
        let now = WallMs::now().0;
        let j = c.journal.lock().unwrap_or_else(|p| p.into_inner());
        Snapshot {
            c,
            journal: j.stats(),
            pending: j.pending_len() as u64,
            pending_bytes: j.pending_bytes(),
            oldest_age_s: j
                .oldest_ms()
                .map_or(0, |ms| ((now - ms).max(0) / 1000) as u64),
        }
    }

    /// The counters as a JSON object, named as in Prometheus without the `kvs_edge_` prefix.
    pub fn json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "camera": self.c.camera, "stream": self.c.stream });
        for (name, _, _, value) in METRICS {
            v[*name] = serde_json::json!(value(self));
        }
        v["encoder"] = serde_json::json!(
            self.c
                .camera_stats
                .encoder
                .try_lock()
                .map(|e| e.clone())
                .unwrap_or_default()
        );
        let stats = &self.c.camera_stats;
        let mut tracks = Vec::new();
        if let Some((codec, w, h)) = *stats.video.lock().unwrap_or_else(|p| p.into_inner()) {
            tracks.push(serde_json::json!(
                { "track": "video", "codec": codec.to_string(), "width": w, "height": h }
            ));
        }
        if let Some((codec, rate, channels)) =
            *stats.audio.lock().unwrap_or_else(|p| p.into_inner())
        {
            tracks.push(serde_json::json!(
                { "track": "audio", "codec": codec.to_string(), "rate": rate, "channels": channels }
            ));
        }
        if !tracks.is_empty() {
            v["tracks"] = serde_json::json!(tracks);
        }
        if let Some(why) = stats
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            v["failed"] = serde_json::json!(why);
        }
        v
    }
}

const METRICS: &[Metric] = &[
    ("frames_total", "counter", "Access units captured.", |s| {
        s.c.camera_stats.capture.frames.load(R)
    }),
    (
        "frames_discarded_total",
        "counter",
        "Frames dropped before fragmenting (waiting for a keyframe, over-long GOPs, no usable codec data).",
        |s| {
            s.c.camera_stats.frames_discarded.load(R)
                + s.c.camera_stats.capture.dropped_no_codec.load(R)
        },
    ),
    ("fragments_total", "counter", "Fragments made.", |s| {
        s.c.camera_stats.fragments.load(R)
    }),
    (
        "fragments_sent_total",
        "counter",
        "Fragment uploads (a resend counts again).",
        |s| s.c.upload_stats.fragments_sent.load(R),
    ),
    (
        "fragments_persisted_total",
        "counter",
        "Fragments KVS acknowledged as PERSISTED.",
        |s| s.c.upload_stats.fragments_persisted.load(R),
    ),
    (
        "fragment_tags_omitted_total",
        "counter",
        "Alarms or other metadata left out of fragment tags to stay within KVS's limit of 10 (the video is kept).",
        |s| s.c.camera_stats.tags_omitted.load(R),
    ),
    (
        "fragments_not_recorded_total",
        "counter",
        "Fragments captured outside the camera's recording windows (record_schedule) and not kept.",
        |s| s.c.camera_stats.fragments_not_recorded.load(R),
    ),
    (
        "motion_alarms_total",
        "counter",
        "Alarms the camera's motion trigger raised.",
        |s| s.c.camera_stats.motion_alarms.load(R),
    ),
    (
        "audio_frames_dropped_total",
        "counter",
        "Audio frames left out: before the first picture, or too late for their fragment.",
        |s| s.c.camera_stats.audio_dropped.load(R),
    ),
    (
        "fragments_received_total",
        "counter",
        "Fragments released on RECEIVED: the stream's retention is 0, KVS keeps nothing and never answers PERSISTED.",
        |s| s.c.upload_stats.fragments_received.load(R),
    ),
    (
        "fragments_dropped_total",
        "counter",
        "Fragments dropped by the journal policy (oldest deleted, new denied, expired).",
        |s| s.journal.dropped_oldest + s.journal.denied + s.journal.expired,
    ),
    (
        "fragments_rejected_total",
        "counter",
        "Fragments KVS refused for good.",
        |s| s.c.upload_stats.fragments_rejected.load(R),
    ),
    (
        "bytes_sent_total",
        "counter",
        "Fragment bytes uploaded.",
        |s| s.c.upload_stats.bytes_sent.load(R),
    ),
    (
        "sessions_total",
        "counter",
        "PutMedia sessions opened.",
        |s| s.c.upload_stats.sessions.load(R),
    ),
    (
        "session_failures_total",
        "counter",
        "PutMedia sessions that failed.",
        |s| s.c.upload_stats.session_failures.load(R),
    ),
    ("error_acks_total", "counter", "ERROR acks received.", |s| {
        s.c.upload_stats.error_acks.load(R)
    }),
    (
        "ack_latency_ms",
        "gauge",
        "Send-to-PERSISTED latency of the last fragment.",
        |s| s.c.upload_stats.last_ack_latency_ms.load(R),
    ),
    (
        "journal_pending_fragments",
        "gauge",
        "Fragments journaled and not yet PERSISTED.",
        |s| s.pending,
    ),
    (
        "journal_pending_bytes",
        "gauge",
        "Bytes journaled and not yet PERSISTED.",
        |s| s.pending_bytes,
    ),
    (
        "journal_oldest_age_seconds",
        "gauge",
        "Age of the oldest unsent fragment.",
        |s| s.oldest_age_s,
    ),
    (
        "journal_bytes_written_total",
        "counter",
        "Bytes written to the journal (records and framing).",
        |s| s.journal.bytes_written,
    ),
    (
        "source_restarts_total",
        "counter",
        "Source restarts (errors, EOS, stalls).",
        |s| s.c.camera_stats.restarts.load(R),
    ),
    (
        "source_stalls_total",
        "counter",
        "Sources that stopped delivering frames.",
        |s| s.c.camera_stats.stalls.load(R),
    ),
];

const R: Ordering = Ordering::Relaxed;

/// Renders every camera's counters in the Prometheus text format, with the credentials'
/// expiry and the MQTT link's state when there are such things.
pub fn render(
    cameras: &[CameraMetrics],
    credentials_expire_in: Option<i64>,
    mqtt: Option<&LinkStats>,
) -> String {
    let snapshots: Vec<Snapshot> = cameras.iter().map(Snapshot::of).collect();
    let mut out = String::new();
    if let Some(link) = mqtt {
        let _ = writeln!(
            out,
            "# HELP kvs_edge_mqtt_connected 1 while the agent is connected to its MQTT broker (or AWS IoT Core).\n\
             # TYPE kvs_edge_mqtt_connected gauge\nkvs_edge_mqtt_connected {}\n\
             # HELP kvs_edge_mqtt_connections_total Connections made to the MQTT broker (a climbing count is a flapping link).\n\
             # TYPE kvs_edge_mqtt_connections_total counter\nkvs_edge_mqtt_connections_total {}",
            u8::from(link.connected.load(R)),
            link.connections.load(R)
        );
    }
    // The family is always declared (dashboards and alert rules may refer to it); it has a
    // sample only for credentials that expire (temporary ones, from the IoT credentials
    // provider), none for static keys.
    let _ = writeln!(
        out,
        "# HELP kvs_edge_credentials_expiry_seconds Seconds until the AWS credentials in use expire.\n\
         # TYPE kvs_edge_credentials_expiry_seconds gauge"
    );
    if let Some(secs) = credentials_expire_in {
        let _ = writeln!(out, "kvs_edge_credentials_expiry_seconds {secs}");
    }
    for (name, kind, help, value) in METRICS {
        let _ = writeln!(
            out,
            "# HELP kvs_edge_{name} {help}\n# TYPE kvs_edge_{name} {kind}"
        );
        for s in &snapshots {
            let _ = writeln!(
                out,
                "kvs_edge_{name}{{camera=\"{}\",stream=\"{}\"}} {}",
                s.c.camera,
                s.c.stream,
                value(s)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP kvs_edge_upload_mode_info The camera's upload policy (continuous, scheduled, on_demand): unless continuous, the journal's backlog is the recording.\n# TYPE kvs_edge_upload_mode_info gauge"
    );
    for c in cameras {
        let mode = match c.upload_mode {
            kvs_edge_config::agent::UploadMode::Continuous => "continuous",
            kvs_edge_config::agent::UploadMode::OnDemand => "on_demand",
            kvs_edge_config::agent::UploadMode::Scheduled => "scheduled",
        };
        let _ = writeln!(
            out,
            "kvs_edge_upload_mode_info{{camera=\"{}\",stream=\"{}\",mode=\"{mode}\"}} 1",
            c.camera, c.stream
        );
    }
    let _ = writeln!(
        out,
        "# HELP kvs_edge_encoder_info The H.264 encoder element in use.\n# TYPE kvs_edge_encoder_info gauge"
    );
    for c in cameras {
        let encoder = c
            .camera_stats
            .encoder
            .try_lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "kvs_edge_encoder_info{{camera=\"{}\",encoder=\"{encoder}\"}} 1",
            c.camera
        );
    }
    let _ = writeln!(
        out,
        "# HELP kvs_edge_track_info The codec and picture size of each track being sent.\n\
         # TYPE kvs_edge_track_info gauge"
    );
    for c in cameras {
        let stats = &c.camera_stats;
        if let Some((codec, w, h)) = *stats.video.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = writeln!(
                out,
                "kvs_edge_track_info{{camera=\"{}\",track=\"video\",codec=\"{}\",width=\"{w}\",height=\"{h}\"}} 1",
                c.camera,
                codec.short_name()
            );
        }
        if let Some((codec, rate, ch)) = *stats.audio.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = writeln!(
                out,
                "kvs_edge_track_info{{camera=\"{}\",track=\"audio\",codec=\"{}\",rate=\"{rate}\",channels=\"{ch}\"}} 1",
                c.camera,
                codec.short_name()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP kvs_edge_camera_failed 1 while the camera cannot stream (an unsupported codec, \
         unusable codec data; the reason is in the log and the MQTT status).\n\
         # TYPE kvs_edge_camera_failed gauge"
    );
    for c in cameras {
        let failed = c
            .camera_stats
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        let _ = writeln!(
            out,
            "kvs_edge_camera_failed{{camera=\"{}\",stream=\"{}\"}} {}",
            c.camera,
            c.stream,
            u8::from(failed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP kvs_edge_stream_retention_hours The stream's data retention as DescribeStream reports it \
         (0: KVS archives nothing, fragments are released on RECEIVED).\n\
         # TYPE kvs_edge_stream_retention_hours gauge"
    );
    for c in cameras {
        let hours = c.upload_stats.retention_hours.load(R);
        if hours >= 0 {
            let _ = writeln!(
                out,
                "kvs_edge_stream_retention_hours{{camera=\"{}\",stream=\"{}\"}} {hours}",
                c.camera, c.stream
            );
        }
    }
    out
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    cameras: Registry,
    credentials: Arc<crate::credentials::CredentialSource>,
    mqtt: Option<Arc<LinkStats>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (cameras, credentials, mqtt) = (cameras.clone(), credentials.clone(), mqtt.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (cameras, credentials, mqtt) =
                    (cameras.clone(), credentials.clone(), mqtt.clone());
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(render(
                                &cameras.cameras(),
                                credentials.expires_in_secs(),
                                mqtt.as_deref(),
                            ))))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                    };
                    Ok::<_, Infallible>(resp.expect("valid response"))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
