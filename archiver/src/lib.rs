//! kvs-edge-archiver: runs in the cloud (Lambda, SQS consumer or CLI). An alarm event
//! becomes a clip window, the clip is fetched with GetClip, stored in S3 and handed to
//! MediaConvert.
//!
//! Pure: `event` (every delivery shape → alarm transitions), `decide` (streams, window, key),
//! `plan` (GetClip requests for a window), `mp4join` (consecutive GetClip MP4s → one file),
//! `transcode` (MediaConvert jobs from a template), `batch` (S3 Batch Operations invocations,
//! completion report rows), `selection` (what a replay runs over). I/O: `clip` (ListFragments,
//! GetClip, the hand-off), `store` (S3), `replay` (batch replay runs).

pub mod batch;
pub mod clip;
pub mod cloudwatch;
pub mod decide;
pub mod event;
pub mod fetch;
pub mod lambda;
pub mod mediaconvert;
pub mod mp4join;
pub mod plan;
pub mod pull;
pub mod replay;
pub mod retry;
pub mod selection;
pub mod signed;
pub mod sqs;
pub mod store;
pub mod transcode;

use kvs_edge_config::archiver::ArchiverConfig;

/// Every decision an input holds (one per record), or why the input is not an event.
pub fn decisions(
    cfg: &ArchiverConfig,
    input: &[u8],
) -> Result<Vec<decide::Decision>, event::EventError> {
    Ok(event::parse(input)?
        .into_iter()
        .map(|e| decide::decide(cfg, e))
        .collect())
}
