//! The S3 API, so that the archiver's offline runs (tests, `make demo`) need no other
//! process: requests signed for the `s3` service go to s3s (SigV4 checked with kvs-local's
//! keys) over s3s-fs, which keeps objects as files under `<data-dir>/s3/<bucket>/<key>`
//! (path-style addressing). Buckets named in the configuration exist from the start.
//!
//! A thin layer (`LocalS3`) adds what S3 promises and s3s-fs does not keep:
//! - keys up to 1024 bytes: s3s-fs names a file after the base64 of the key, which passes the
//!   file system's 255-byte name limit from about 130 bytes on; such keys are stored under
//!   `~long/<hash>` (the key itself in `~long/<hash>.key`) and listed by their real names;
//! - ListObjectsV2 with `EncodingType=url` encodes the keys and prefixes it returns;
//! - an overwrite is atomic for readers: a GET or HEAD sees the old object or the new one,
//!   never the new data with the old metadata (per-key locks around s3s-fs's steps).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use sha2::{Digest, Sha256};
use tokio::sync::RwLock;

use crate::sigv4::Credentials;

/// The S3 service over `<data_dir>/s3`, creating `buckets`.
pub fn service(
    data_dir: &Path,
    credentials: &Credentials,
    buckets: &[String],
) -> anyhow::Result<S3Service> {
    let root = data_dir.join("s3");
    std::fs::create_dir_all(&root)?;
    for b in buckets {
        std::fs::create_dir_all(root.join(b))?;
    }
    let fs = s3s_fs::FileSystem::new(&root)
        .map_err(|e| anyhow::anyhow!("S3 store {}: {e:?}", root.display()))?;
    let mut builder = S3ServiceBuilder::new(LocalS3 {
        fs,
        root,
        locks: Mutex::default(),
    });
    builder.set_auth(SimpleAuth::from_single(
        credentials.access_key.clone(),
        credentials.secret_key.clone(),
    ));
    Ok(builder.build())
}

/// True for requests signed for S3 (header or presigned query).
pub fn is_s3(req: &Request<Incoming>) -> bool {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("/s3/aws4_request"));
    let query = req
        .uri()
        .query()
        .is_some_and(|q| q.contains("%2Fs3%2Faws4_request"));
    header || query
}

/// Where keys too long for s3s-fs's file names are kept (see the module notes).
const LONG: &str = "~long/";

/// The key s3s-fs stores `key` under: the key itself when its file names fit, else a
/// short hashed name.
fn physical(bucket: &str, key: &str) -> String {
    // s3s-fs's longest name: ".bucket-{b64}.object-{b64}.upload-{uuid}.metadata.json".
    let b64 = |n: usize| n.div_ceil(3) * 4;
    let name = 8 + b64(bucket.len()) + 8 + b64(key.len()) + 44 + 14;
    if name <= 255 && key.split('/').all(|part| part.len() <= 255) {
        key.to_string()
    } else {
        format!(
            "{LONG}{}",
            hex::encode(&Sha256::digest(key.as_bytes())[..16])
        )
    }
}

/// Bytes S3 leaves as they are in URL-encoded listings (`EncodingType=url`).
const KEY_SAFE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// A key as S3 writes it with `EncodingType=url` (form encoding: a space is `+`).
fn url_encoded(s: &str) -> String {
    s.split(' ')
        .map(|part| utf8_percent_encode(part, KEY_SAFE).to_string())
        .collect::<Vec<_>>()
        .join("+")
}

/// One lock per (bucket, physical key) in use: writers replace data and metadata under it,
/// readers take both under it.
type KeyLocks = Mutex<HashMap<(String, String), Arc<RwLock<()>>>>;

struct LocalS3 {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
    locks: KeyLocks,
}

impl LocalS3 {
    fn lock_for(&self, bucket: &str, key: &str) -> Arc<RwLock<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks
            .entry((bucket.to_string(), key.to_string()))
            .or_default()
            .clone()
    }

    /// Remembers the real name of a key stored under `~long/`.
    fn note_long_key(&self, bucket: &str, key: &str, physical: &str) -> S3Result<()> {
        if physical == key {
            return Ok(());
        }
        let path = self.root.join(bucket).join(format!("{physical}.key"));
        std::fs::write(&path, key).map_err(|e| s3_error!(e, InternalError))
    }

    fn forget_long_key(&self, bucket: &str, key: &str, physical: &str) {
        if physical != key {
            let _ = std::fs::remove_file(self.root.join(bucket).join(format!("{physical}.key")));
        }
    }

    /// Every object of a bucket as (real key, size, modified), from the files s3s-fs keeps.
    fn objects(&self, bucket: &str) -> S3Result<Vec<Object>> {
        let base = self.root.join(bucket);
        if !base.is_dir() {
            return Err(s3_error!(NoSuchBucket));
        }
        let mut out = Vec::new();
        let mut dirs = vec![base.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| s3_error!(e, InternalError))?;
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let Some(rel) = path.strip_prefix(&base).ok().and_then(|r| r.to_str()) else {
                    continue;
                };
                let key = if let Some(hashed) = rel.strip_prefix(LONG) {
                    if hashed.ends_with(".key") {
                        continue;
                    }
                    match std::fs::read_to_string(base.join(format!("{rel}.key"))) {
                        Ok(k) => k,
                        Err(_) => continue, // an upload in progress
                    }
                } else {
                    rel.to_string()
                };
                out.push(Object {
                    key: Some(key),
                    size: Some(meta.len() as i64),
                    last_modified: meta.modified().ok().map(Timestamp::from),
                    ..Default::default()
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[async_trait::async_trait]
impl S3 for LocalS3 {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn put_object(
        &self,
        mut req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let physical = physical(&bucket, &key);
        // The body is read before the lock is taken: readers keep the old object meanwhile.
        if let Some(body) = req.input.body.take() {
            let bytes: Bytes = s3s::Body::from(body)
                .collect()
                .await
                .map_err(|e| s3_error!(IncompleteBody, "{e}"))?
                .to_bytes();
            req.input.body = Some(StreamingBlob::from(s3s::Body::from(bytes)));
        }
        req.input.key = physical.clone();
        let lock = self.lock_for(&bucket, &physical);
        let _write = lock.write().await;
        let out = self.fs.put_object(req).await?;
        self.note_long_key(&bucket, &key, &physical)?;
        Ok(out)
    }

    async fn get_object(
        &self,
        mut req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        req.input.key = physical(&req.input.bucket, &req.input.key);
        let lock = self.lock_for(&req.input.bucket, &req.input.key);
        let _read = lock.read().await;
        // The file is opened and its metadata read under the lock; the body streams from
        // the opened file afterwards, whatever replaces it.
        self.fs.get_object(req).await
    }

    async fn head_object(
        &self,
        mut req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        req.input.key = physical(&req.input.bucket, &req.input.key);
        let lock = self.lock_for(&req.input.bucket, &req.input.key);
        let _read = lock.read().await;
        self.fs.head_object(req).await
    }

    async fn delete_object(
        &self,
        mut req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let physical = physical(&bucket, &key);
        req.input.key = physical.clone();
        let lock = self.lock_for(&bucket, &physical);
        let _write = lock.write().await;
        let out = self.fs.delete_object(req).await;
        // S3 answers 204 for a key that does not exist.
        let out = match out {
            Err(e) if *e.code() == s3s::S3ErrorCode::NoSuchKey => {
                Ok(S3Response::new(DeleteObjectOutput::default()))
            }
            other => other,
        };
        self.forget_long_key(&bucket, &key, &physical);
        out
    }

    async fn create_multipart_upload(
        &self,
        mut req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let key = req.input.key.clone();
        req.input.key = physical(&req.input.bucket, &key);
        let mut out = self.fs.create_multipart_upload(req).await?;
        out.output.key = Some(key);
        Ok(out)
    }

    async fn upload_part(
        &self,
        mut req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        req.input.key = physical(&req.input.bucket, &req.input.key);
        self.fs.upload_part(req).await
    }

    async fn complete_multipart_upload(
        &self,
        mut req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let physical = physical(&bucket, &key);
        req.input.key = physical.clone();
        let lock = self.lock_for(&bucket, &physical);
        let _write = lock.write().await;
        let mut out = self.fs.complete_multipart_upload(req).await?;
        self.note_long_key(&bucket, &key, &physical)?;
        out.output.key = Some(key);
        Ok(out)
    }

    async fn abort_multipart_upload(
        &self,
        mut req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        req.input.key = physical(&req.input.bucket, &req.input.key);
        self.fs.abort_multipart_upload(req).await
    }

    async fn put_object_tagging(
        &self,
        mut req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        req.input.key = physical(&req.input.bucket, &req.input.key);
        let lock = self.lock_for(&req.input.bucket, &req.input.key);
        let _write = lock.write().await;
        self.fs.put_object_tagging(req).await
    }

    async fn get_object_tagging(
        &self,
        mut req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        req.input.key = physical(&req.input.bucket, &req.input.key);
        let lock = self.lock_for(&req.input.bucket, &req.input.key);
        let _read = lock.read().await;
        self.fs.get_object_tagging(req).await
    }

    /// Listed here, not by s3s-fs: real key names for `~long/` objects, and URL encoding.
    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        let after = match (&input.continuation_token, &input.start_after) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(start)) => Some(start.clone()),
            (None, None) => None,
        };
        let mut contents = Vec::new();
        let mut prefixes = BTreeSet::new();
        let mut last = None;
        let mut truncated = false;
        for o in self.objects(&input.bucket)? {
            let key = o.key.clone().unwrap_or_default();
            if !key.starts_with(&prefix) {
                continue;
            }
            // A common prefix rolls up every key under it.
            let rolled = input
                .delimiter
                .as_deref()
                .filter(|d| !d.is_empty())
                .and_then(|d| {
                    key[prefix.len()..]
                        .find(d)
                        .map(|i| key[..prefix.len() + i + d.len()].to_string())
                });
            let entry = rolled.clone().unwrap_or_else(|| key.clone());
            if after.as_ref().is_some_and(|a| entry.as_str() <= a.as_str()) {
                continue;
            }
            if rolled.as_ref().is_some_and(|p| prefixes.contains(p)) {
                continue;
            }
            if contents.len() + prefixes.len() >= max_keys {
                truncated = true;
                break;
            }
            last = Some(entry.clone());
            match rolled {
                Some(p) => {
                    prefixes.insert(p);
                }
                None => contents.push(o),
            }
        }
        let encode = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let text = |s: String| if encode { url_encoded(&s) } else { s };
        for o in &mut contents {
            o.key = o.key.take().map(text);
        }
        let output = ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(text(prefix)),
            delimiter: input.delimiter.map(text),
            max_keys: Some(max_keys as i32),
            key_count: Some((contents.len() + prefixes.len()) as i32),
            is_truncated: Some(truncated),
            continuation_token: input.continuation_token,
            next_continuation_token: if truncated { last } else { None },
            start_after: input.start_after.map(text),
            encoding_type: input.encoding_type,
            common_prefixes: (!prefixes.is_empty()).then(|| {
                prefixes
                    .into_iter()
                    .map(|p| CommonPrefix {
                        prefix: Some(text(p)),
                    })
                    .collect()
            }),
            contents: Some(contents),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_keys_get_short_names_and_short_keys_keep_theirs() {
        assert_eq!(physical("clips", "clips/a/b.mp4"), "clips/a/b.mp4");
        let long = format!("clips/{}.mp4", "x".repeat(150));
        let p = physical("clips", &long);
        assert!(p.starts_with(LONG) && p.len() < 64, "{p}");
        assert_eq!(p, physical("clips", &long), "stable");
        assert_ne!(p, physical("clips", &format!("{long}2")));
        let segment = "y".repeat(300);
        assert!(physical("b", &segment).starts_with(LONG));
    }

    #[test]
    fn url_encoding_is_s3s() {
        assert_eq!(url_encoded("clips/a b+c/é.mp4"), "clips/a+b%2Bc/%C3%A9.mp4");
        assert_eq!(url_encoded("x\u{1}y"), "x%01y");
    }
}
