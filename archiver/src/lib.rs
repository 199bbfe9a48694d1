//! kvs-edge-archiver: runs in the cloud (Lambda, SQS consumer or CLI). An alarm event
//! becomes a clip window, the clip is fetched with GetClip, stored in S3 and handed to
//! MediaConvert. The modules (event, resolve, clip, store, transcode, replay) arrive with
//! the archiver issues; this crate exists now so the workspace has its final shape.
