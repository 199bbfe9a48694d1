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
use crate::uploader::UploadStats;

/// One camera's counters, as the registry holds them.
#[derive(Clone)]
pub struct CameraMetrics {
    pub camera: String,
    pub stream: String,
    pub camera_stats: Arc<CameraStats>,
    pub upload_stats: Arc<UploadStats>,
}

/// Renders every camera's counters in the Prometheus text format.
pub fn render(cameras: &[CameraMetrics]) -> String {
    let mut out = String::new();
    let metric = |out: &mut String,
                  name: &str,
                  kind: &str,
                  help: &str,
                  value: &dyn Fn(&CameraMetrics) -> u64| {
        let _ = writeln!(
            out,
            "# HELP kvs_edge_{name} {help}\n# TYPE kvs_edge_{name} {kind}"
        );
        for c in cameras {
            let _ = writeln!(
                out,
                "kvs_edge_{name}{{camera=\"{}\",stream=\"{}\"}} {}",
                c.camera,
                c.stream,
                value(c)
            );
        }
    };
    let r = Ordering::Relaxed;
    metric(
        &mut out,
        "frames_total",
        "counter",
        "Access units captured.",
        &|c| c.camera_stats.capture.frames.load(r),
    );
    metric(
        &mut out,
        "frames_discarded_total",
        "counter",
        "Frames dropped before fragmenting (waiting for a keyframe, over-long GOPs).",
        &|c| c.camera_stats.frames_discarded.load(r),
    );
    metric(
        &mut out,
        "fragments_total",
        "counter",
        "Fragments made.",
        &|c| c.camera_stats.fragments.load(r),
    );
    metric(
        &mut out,
        "fragments_sent_total",
        "counter",
        "Fragment uploads (a resend counts again).",
        &|c| c.upload_stats.fragments_sent.load(r),
    );
    metric(
        &mut out,
        "fragments_persisted_total",
        "counter",
        "Fragments KVS acknowledged as PERSISTED.",
        &|c| c.upload_stats.fragments_persisted.load(r),
    );
    metric(
        &mut out,
        "fragments_dropped_total",
        "counter",
        "Fragments dropped because the buffer was full.",
        &|c| c.upload_stats.fragments_dropped.load(r),
    );
    metric(
        &mut out,
        "fragments_rejected_total",
        "counter",
        "Fragments KVS refused for good.",
        &|c| c.upload_stats.fragments_rejected.load(r),
    );
    metric(
        &mut out,
        "bytes_sent_total",
        "counter",
        "Fragment bytes uploaded.",
        &|c| c.upload_stats.bytes_sent.load(r),
    );
    metric(
        &mut out,
        "sessions_total",
        "counter",
        "PutMedia sessions opened.",
        &|c| c.upload_stats.sessions.load(r),
    );
    metric(
        &mut out,
        "session_failures_total",
        "counter",
        "PutMedia sessions that failed.",
        &|c| c.upload_stats.session_failures.load(r),
    );
    metric(
        &mut out,
        "error_acks_total",
        "counter",
        "ERROR acks received.",
        &|c| c.upload_stats.error_acks.load(r),
    );
    metric(
        &mut out,
        "ack_latency_ms",
        "gauge",
        "Send-to-PERSISTED latency of the last fragment.",
        &|c| c.upload_stats.last_ack_latency_ms.load(r),
    );
    metric(
        &mut out,
        "buffered_fragments",
        "gauge",
        "Fragments waiting for PERSISTED.",
        &|c| c.upload_stats.buffered_fragments.load(r),
    );
    metric(
        &mut out,
        "buffered_bytes",
        "gauge",
        "Bytes waiting for PERSISTED.",
        &|c| c.upload_stats.buffered_bytes.load(r),
    );
    metric(
        &mut out,
        "source_restarts_total",
        "counter",
        "Source restarts (errors, EOS, stalls).",
        &|c| c.camera_stats.restarts.load(r),
    );
    metric(
        &mut out,
        "source_stalls_total",
        "counter",
        "Sources that stopped delivering frames.",
        &|c| c.camera_stats.stalls.load(r),
    );
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
    out
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, cameras: Vec<CameraMetrics>) {
    let cameras = Arc::new(cameras);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let cameras = cameras.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let cameras = cameras.clone();
                async move {
                    let resp = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(render(&cameras))))
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
