//! The S3 API, so that the archiver's offline runs (tests, `make demo`) need no other
//! process: requests signed for the `s3` service go to s3s (SigV4 checked with kvs-local's
//! keys) over s3s-fs, which keeps objects as files under `<data-dir>/s3/<bucket>/`
//! (path-style addressing). Buckets named in the configuration exist from the start.

use std::path::Path;

use hyper::Request;
use hyper::body::Incoming;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};

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
    let mut builder = S3ServiceBuilder::new(fs);
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
