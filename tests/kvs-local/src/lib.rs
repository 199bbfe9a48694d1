//! kvs-local: the Kinesis Video Streams API (control plane, PutMedia, archived media) on
//! loopback, so the official AWS SDKs, boto3 and kvs-edge's own PutMedia client work
//! against it by endpoint configuration alone. See docs/kvs-local.md.
//!
//! Pure protocol code (`ebml`, `ingest`, `sigv4`, `mp4`) is kept apart from the I/O
//! (`server`, `putmedia`, `control`, `archived`, `store`).

pub mod archived;
pub mod control;
pub mod ebml;
pub mod error;
pub mod faults;
pub mod ingest;
pub mod iotdata;
pub mod mediaconvert;
pub mod mp4;
pub mod putmedia;
pub mod s3;
pub mod server;
pub mod sigv4;
pub mod store;
mod transcode;

pub use faults::Faults;
pub use server::{AnswerAt, Config, DEFAULT_ACCESS_KEY, DEFAULT_SECRET_KEY, Server};
