//! kvs-local's S3 and MediaConvert held to what the services promise, checked by boto3 (an
//! independent client, from the project's venv) and by the AWS SDK for Rust: keys up to
//! 1024 bytes, URL-encoded listings, overwrites atomic for readers, one MediaConvert job
//! per ClientRequestToken under simultaneous calls.

use std::process::Command;

use aws_sdk_s3::types::EncodingType;
use kvs_edge_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_finds_the_s3_and_mediaconvert_promises_kept() -> anyhow::Result<()> {
    let local = Local::start_with(|c| {
        c.buckets = vec!["edge".into()];
        c.paused_queues = vec!["hold".into()];
    })
    .await?;
    let script = repo_root().join("tests/python/kvs_local_s3_boto3.py");
    let url = local.url();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(venv_python()?)
            .arg(script)
            .args(["--endpoint", &url, "--bucket", "edge", "--queue", "hold"])
            .output()
            .map_err(anyhow::Error::from)
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "boto3 checks failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("promises checked"), "{stdout}");
    Ok(())
}

#[tokio::test]
async fn listings_with_encoding_type_url_are_encoded() -> anyhow::Result<()> {
    let local = Local::start_with(|c| c.buckets = vec!["edge".into()]).await?;
    let s3 = local_s3_client(&local.url());
    for key in ["odd/a b+c/\u{e9}\u{1}.mp4", "odd/plain.mp4"] {
        s3.put_object()
            .bucket("edge")
            .key(key)
            .body(bytes::Bytes::from_static(b"x").into())
            .send()
            .await?;
    }
    // The Rust SDK does not decode: what it gets is what the server wrote.
    let page = s3
        .list_objects_v2()
        .bucket("edge")
        .prefix("odd/")
        .encoding_type(EncodingType::Url)
        .send()
        .await?;
    let keys: Vec<&str> = page.contents().iter().filter_map(|o| o.key()).collect();
    assert_eq!(keys, ["odd/a+b%2Bc/%C3%A9%01.mp4", "odd/plain.mp4"]);
    assert_eq!(
        kvs_edge_archiver::batch::decode_key(keys[0]).unwrap(),
        "odd/a b+c/\u{e9}\u{1}.mp4"
    );
    // Without EncodingType a key goes out as it is (a control character would break the
    // XML, as it does on S3: why the archiver always asks for URL encoding).
    let page = s3
        .list_objects_v2()
        .bucket("edge")
        .prefix("odd/p")
        .send()
        .await?;
    assert_eq!(page.contents()[0].key(), Some("odd/plain.mp4"));
    Ok(())
}
