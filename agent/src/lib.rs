//! kvs-edge-agent: runs on the camera device. Capture → H.264 access units → Matroska
//! fragments → journal → PutMedia. This crate so far holds the pure protocol pieces (`h264`,
//! `mkv`, the ack parser and request signing in `putmedia`) and the PutMedia session; capture,
//! journal, control and the binary arrive with their issues.

pub mod capture;
pub mod h264;
pub mod mkv;
pub mod putmedia;
pub mod timeline;
