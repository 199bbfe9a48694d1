//! Clips into S3: a streamed multipart upload (one part in memory at a time, whatever the
//! clip's size), object metadata and tags, optional SSE-KMS, and exactly one object per key:
//! an existing key is never written again (checked first, and `If-None-Match: *` on the
//! completion where S3 supports it). Failure records go next to the clip's key.

use std::collections::HashMap;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use bytes::{Bytes, BytesMut};
use thiserror::Error;

/// Parts are this large (S3's minimum is 5 MiB, except for the last part).
pub const PART_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("S3 {op} s3://{bucket}/{key}: {reason}")]
    S3 {
        op: &'static str,
        bucket: String,
        key: String,
        reason: String,
    },
    #[error("reading the clip: {0}")]
    Source(String),
    /// The object is there but is not JSON: no retry will change that.
    #[error("s3://{bucket}/{key} is not JSON: {reason}")]
    NotJson {
        bucket: String,
        key: String,
        reason: String,
    },
}

/// The full chain of an SDK error (the top level alone says "service error").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        // The SDK's operation errors repeat their inner error's text ("ResourceNotFound
        // Exception: …" twice): each piece is said once.
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Where and how an object is written.
#[derive(Debug, Clone)]
pub struct Target {
    pub bucket: String,
    pub key: String,
    pub metadata: HashMap<String, String>,
    pub tags: Vec<(String, String)>,
    pub kms_key_id: Option<String>,
}

impl Target {
    fn err(&self, op: &'static str, e: &(dyn std::error::Error + 'static)) -> StoreError {
        StoreError::S3 {
            op,
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            reason: error_chain(e),
        }
    }

    /// `k=v&k=v`, URL-encoded, as S3's x-amz-tagging wants.
    fn tagging(&self) -> String {
        let enc = |s: &str| {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        self.tags
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// True when the object exists.
pub async fn exists(s3: &Client, bucket: &str, key: &str) -> Result<bool, StoreError> {
    match s3.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => Ok(true),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
        Err(e) => Err(StoreError::S3 {
            op: "HeadObject",
            bucket: bucket.into(),
            key: key.into(),
            reason: error_chain(&e),
        }),
    }
}

/// An object's user metadata (`x-amz-meta-*`), or None when there is no such object.
pub async fn metadata(
    s3: &Client,
    bucket: &str,
    key: &str,
    version: Option<&str>,
) -> Result<Option<HashMap<String, String>>, StoreError> {
    match s3
        .head_object()
        .bucket(bucket)
        .key(key)
        .set_version_id(version.map(str::to_string))
        .send()
        .await
    {
        Ok(o) => Ok(Some(o.metadata.unwrap_or_default())),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
        Err(e) => Err(StoreError::S3 {
            op: "HeadObject",
            bucket: bucket.into(),
            key: key.into(),
            reason: error_chain(&e),
        }),
    }
}

/// A small JSON object (a job record), or None when there is none. An object that is not
/// JSON is an error naming it.
pub async fn get_json(
    s3: &Client,
    bucket: &str,
    key: &str,
) -> Result<Option<serde_json::Value>, StoreError> {
    let err = |op, reason| StoreError::S3 {
        op,
        bucket: bucket.into(),
        key: key.into(),
        reason,
    };
    let out = match s3.get_object().bucket(bucket).key(key).send().await {
        Ok(o) => o,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
        Err(e) => return Err(err("GetObject", error_chain(&e))),
    };
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| err("GetObject", error_chain(&e)))?;
    serde_json::from_slice(&body.into_bytes())
        .map(Some)
        .map_err(|e| StoreError::NotJson {
            bucket: bucket.into(),
            key: key.into(),
            reason: e.to_string(),
        })
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Stored {
        bytes: u64,
    },
    /// The key was written meanwhile by another delivery of the same alarm.
    AlreadyThere,
}

/// A multipart upload in progress; the chunks of the clip are pushed through it.
pub struct Upload<'a> {
    s3: &'a Client,
    target: Target,
    upload_id: String,
    parts: Vec<CompletedPart>,
    buffer: BytesMut,
    bytes: u64,
}

impl<'a> Upload<'a> {
    pub async fn start(s3: &'a Client, target: Target) -> Result<Upload<'a>, StoreError> {
        let mut req = s3
            .create_multipart_upload()
            .bucket(&target.bucket)
            .key(&target.key)
            .content_type("video/mp4")
            .set_metadata(Some(target.metadata.clone()));
        if !target.tags.is_empty() {
            req = req.tagging(target.tagging());
        }
        if let Some(kms) = &target.kms_key_id {
            req = req
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(kms);
        }
        let out = req
            .send()
            .await
            .map_err(|e| target.err("CreateMultipartUpload", &e))?;
        let upload_id = out.upload_id.ok_or_else(|| StoreError::S3 {
            op: "CreateMultipartUpload",
            bucket: target.bucket.clone(),
            key: target.key.clone(),
            reason: "no UploadId in the answer".into(),
        })?;
        Ok(Upload {
            s3,
            target,
            upload_id,
            parts: Vec::new(),
            buffer: BytesMut::with_capacity(PART_BYTES),
            bytes: 0,
        })
    }

    /// Adds bytes; a full part is sent at once.
    pub async fn push(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let mut rest = chunk;
        while !rest.is_empty() {
            let room = PART_BYTES - self.buffer.len();
            let n = room.min(rest.len());
            self.buffer.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buffer.len() == PART_BYTES {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self) -> Result<(), StoreError> {
        let body: Bytes = self.buffer.split().freeze();
        self.bytes += body.len() as u64;
        let number = self.parts.len() as i32 + 1;
        let out = self
            .s3
            .upload_part()
            .bucket(&self.target.bucket)
            .key(&self.target.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.target.err("UploadPart", &e))?;
        self.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag)
                .build(),
        );
        Ok(())
    }

    /// Sends the last part and completes, unless the key appeared meanwhile.
    pub async fn finish(mut self) -> Result<Written, StoreError> {
        if !self.buffer.is_empty() || self.parts.is_empty() {
            self.send_part().await?;
        }
        let done = self
            .s3
            .complete_multipart_upload()
            .bucket(&self.target.bucket)
            .key(&self.target.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.parts)))
                    .build(),
            )
            .if_none_match("*")
            .send()
            .await;
        match done {
            Ok(_) => Ok(Written::Stored { bytes: self.bytes }),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => {
                self.abort().await;
                Ok(Written::AlreadyThere)
            }
            Err(e) => {
                let err = self.target.err("CompleteMultipartUpload", &e);
                self.abort().await;
                Err(err)
            }
        }
    }

    /// Gives up (after an error): S3 drops the parts sent so far.
    pub async fn abort(&self) {
        let _ = self
            .s3
            .abort_multipart_upload()
            .bucket(&self.target.bucket)
            .key(&self.target.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
    }
}

/// Deletes an object (nothing happens when it does not exist).
pub async fn delete(s3: &Client, bucket: &str, key: &str) -> Result<(), StoreError> {
    s3.delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| StoreError::S3 {
            op: "DeleteObject",
            bucket: bucket.into(),
            key: key.into(),
            reason: error_chain(&e),
        })
}

/// A small JSON object (a record next to a clip).
pub async fn put_json(
    s3: &Client,
    bucket: &str,
    key: &str,
    value: &serde_json::Value,
) -> Result<(), StoreError> {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .content_type("application/json")
        .body(ByteStream::from(value.to_string().into_bytes()))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| StoreError::S3 {
            op: "PutObject",
            bucket: bucket.into(),
            key: key.into(),
            reason: error_chain(&e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn an_error_chain_says_each_piece_once() {
        // As the SDK nests them: "service error", the operation error, the exception.
        let e = Layer(
            "service error",
            Some(Box::new(Layer(
                "ResourceNotFoundException: The requested stream x is not found or not active.",
                Some(Box::new(Layer(
                    "The requested stream x is not found or not active.",
                    Some(Box::new(Layer("connection reset", None))),
                ))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "service error: ResourceNotFoundException: The requested stream x is not found or \
             not active.: connection reset"
        );
    }

    #[test]
    fn tags_are_url_encoded() {
        let t = Target {
            bucket: "b".into(),
            key: "k".into(),
            metadata: HashMap::new(),
            tags: vec![
                ("alarm".into(), "Garage motion/night".into()),
                ("stream".into(), "cam-1".into()),
            ],
            kms_key_id: None,
        };
        assert_eq!(t.tagging(), "alarm=Garage%20motion%2Fnight&stream=cam-1");
    }
}
