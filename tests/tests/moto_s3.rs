//! The S3-compatible server the archiver's cloud paths are tested against (moto, from the
//! project's venv) starts on a free loopback port, stores a clip that kvs-local's GetClip
//! produced, and gives it back byte for byte, still playable.

use std::time::Duration;

use kvs_edge_agent::putmedia::AckEvent;
use kvs_edge_tests::*;

const ROUND_TRIP: &str = r#"
import sys, hashlib, boto3
url, path, back = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
s3.create_bucket(Bucket="clips")
s3.upload_file(path, "clips", "clips/cam/2026/11/22/alarm.mp4", ExtraArgs={"ContentType": "video/mp4"})
head = s3.head_object(Bucket="clips", Key="clips/cam/2026/11/22/alarm.mp4")
s3.download_file("clips", "clips/cam/2026/11/22/alarm.mp4", back)
print(head["ContentType"], head["ContentLength"])
"#;

#[tokio::test]
async fn a_clip_round_trips_through_moto_s3() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "cam", 24).await?;
    let video = Encoded::gstreamer(50, 25, 25, 320, 240)?;
    let start = now_ms() - 30_000;
    let (body, _) = video.upload(start, 1000)?;
    let acks = put_media(&local.url(), "cam", vec![body], Duration::from_secs(30)).await?;
    assert_eq!(acks_of(&acks, AckEvent::Persisted).len(), 2);
    let (_, clip) = get_clip(&local.archived(), "cam", start, start + 2000).await?;
    let path = local.dir.path().join("clip.mp4");
    let back = local.dir.path().join("back.mp4");
    std::fs::write(&path, &clip)?;

    let (path_s, back_s) = (path.display().to_string(), back.display().to_string());
    let out = tokio::task::spawn_blocking(move || {
        let moto = Moto::start()?;
        python(ROUND_TRIP, &[&moto.url, &path_s, &back_s])
    })
    .await??;
    assert_eq!(out.trim(), format!("video/mp4 {}", clip.len()));
    assert_eq!(std::fs::read(&back)?, clip.to_vec());
    let (codec, _, _, _, frames) = ffprobe(&back)?;
    assert_eq!((codec.as_str(), frames), ("h264", 50));
    Ok(())
}
