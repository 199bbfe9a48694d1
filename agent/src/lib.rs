//! kvs-edge-agent: runs on the camera device. Per camera: capture (GStreamer) → timeline →
//! Matroska fragmenter → uploader (PutMedia sessions, acks, retries). `runner` wires the
//! cameras together; `main.rs` is a thin binary over it.
//!
//! Pure protocol code: `h264`, `mkv`, `timeline`, `control`, and the ack parser and request
//! signing in `putmedia`. I/O at the edges: `capture`, `putmedia::Session`, `uploader`, `kvs`,
//! `metrics`, `mqtt`, `persisted`, `snapshot`, `systemd` (readiness and watchdog, judged by
//! the pure `health`).

pub mod backoff;
mod bits;
pub mod camera;
pub mod capture;
pub mod codec;
pub mod control;
pub mod credentials;
pub mod export;
pub mod fragmenter;
pub mod h264;
pub mod h265;
pub mod health;
pub mod journal;
pub mod kvs;
pub mod metrics;
pub mod mkv;
pub mod motion;
pub mod mqtt;
pub mod net;
pub mod persisted;
pub mod policy;
pub mod putmedia;
mod recycle;
pub mod runner;
pub mod snapshot;
pub mod systemd;
pub mod timeline;
pub mod tls;
pub mod uploader;
