//! kvs-local against Matroska from outside the project (tests/fixtures/kvs-media, from AWS's
//! parser library): the input of AWS's own PutMedia demo (`clusters.mkv`: RELATIVE
//! timecodes, known-size Clusters, SeekHead, Void, Cues, Tags with Targets) and the same
//! with unknown-size Clusters, as the official C producer writes them, are ingested and read
//! back; GetMediaForFragmentList answers in the structure of the real service's output.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kvs_edge_agent::putmedia::{AckEvent, Timecodes};
use kvs_edge_tests::*;
use kvs_local::ebml::{self, Children};

const T: Duration = Duration::from_secs(60);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("tests/fixtures/kvs-media").join(name)).expect("fixture")
}

/// Top-level elements as (id, offset, the size field's offset and length, unknown size),
/// walking into unknown-size Segments and across unknown-size Clusters.
fn top_level(mkv: &[u8]) -> Vec<(u32, usize, usize, usize, bool)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < mkv.len() {
        let h = ebml::read_header(&mkv[pos..], pos as u64)
            .expect("valid EBML")
            .expect("whole header");
        let id_len = {
            let first = mkv[pos];
            (first.leading_zeros() + 1) as usize
        };
        out.push((h.id, pos, pos + id_len, h.len - id_len, h.size.is_none()));
        pos += h.len;
        match (h.id, h.size) {
            (ebml::SEGMENT, _) => {}
            (_, Some(size)) => pos += size as usize,
            (_, None) => {
                // An unknown-size Cluster ends where the next top-level element starts.
                while pos < mkv.len() {
                    let c = ebml::read_header(&mkv[pos..], pos as u64).unwrap().unwrap();
                    if ebml::is_top_level(c.id) {
                        break;
                    }
                    pos += c.len + c.size.unwrap() as usize;
                }
            }
        }
    }
    out
}

/// The same file with every Cluster's size written as "unknown" (same field length).
fn with_unknown_size_clusters(mkv: &[u8]) -> Vec<u8> {
    let mut out = mkv.to_vec();
    for (id, _, size_at, size_len, _) in top_level(mkv) {
        if id == ebml::CLUSTER {
            // The length marker bit and every value bit set: "unknown".
            out[size_at] = 0xFF >> (size_len - 1);
            for b in &mut out[size_at + 1..size_at + size_len] {
                *b = 0xFF;
            }
        }
    }
    out
}

/// The SimpleTag names of a Tags element's payload.
fn tag_names(tags: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    for tag in Children::new(tags) {
        let (_, tag, _) = tag.unwrap();
        for simple in Children::new(tag) {
            let (id, simple, _) = simple.unwrap();
            if id != ebml::SIMPLE_TAG {
                continue;
            }
            for field in Children::new(simple) {
                let (id, value, _) = field.unwrap();
                if id == ebml::TAG_NAME {
                    names.push(String::from_utf8(value.to_vec()).unwrap());
                }
            }
        }
    }
    names
}

fn payload(mkv: &[u8], at: usize) -> &[u8] {
    let h = ebml::read_header(&mkv[at..], 0).unwrap().unwrap();
    &mkv[at + h.len..at + h.len + h.size.unwrap() as usize]
}

/// PutMedias `body` with RELATIVE timecodes from `start_ms`, in 7777-byte pieces.
async fn put_relative(
    local: &Local,
    stream: &str,
    body: &[u8],
    start_ms: i64,
) -> anyhow::Result<Vec<kvs_edge_agent::putmedia::Ack>> {
    let mut params = session_params(&local.url(), stream);
    params.timecodes = Timecodes::Relative;
    params.producer_start = UNIX_EPOCH + Duration::from_millis(start_ms as u64);
    put_media_with(params, body.chunks(7777).map(<[u8]>::to_vec).collect(), T).await
}

#[tokio::test]
async fn the_demo_input_and_unknown_size_clusters_are_ingested_and_read_back() -> anyhow::Result<()>
{
    let local = Local::start().await?;
    let demo = fixture("clusters.mkv");
    let clusters = top_level(&demo)
        .iter()
        .filter(|e| e.0 == ebml::CLUSTER)
        .count();
    assert_eq!(clusters, 8);
    let dir = local.dir.path();
    let original = dir.join("clusters.mkv");
    std::fs::write(&original, &demo)?;
    let frames = ffprobe(&original)?.4;
    let unknown = with_unknown_size_clusters(&demo);
    let sizes: Vec<bool> = top_level(&unknown)
        .iter()
        .filter(|e| e.0 == ebml::CLUSTER)
        .map(|e| e.4)
        .collect();
    assert_eq!(sizes, [true; 8], "every Cluster of unknown size");
    for (stream, body) in [("demo", demo.clone()), ("unknown-sizes", unknown.clone())] {
        create_stream(&local.control(), stream, 24).await?;
        let start = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64 - 120_000;
        let acks = put_relative(&local, stream, &body, start).await?;
        assert!(
            acks_of(&acks, AckEvent::Error).is_empty(),
            "{stream}: {acks:?}"
        );
        assert_eq!(
            acks_of(&acks, AckEvent::Persisted).len(),
            clusters,
            "{stream}"
        );
        let listed = list_all_fragments(&local.archived(), stream).await?;
        let first = listed[0].producer_timestamp.unwrap().to_millis()?;
        // (Epoch seconds travel as floats: a millisecond either way.)
        assert!(
            (first - start).abs() <= 1,
            "{stream}: RELATIVE timecodes count from the producer start: {first} vs {start}"
        );
        // Read back: the whole as a clip, one fragment as Matroska.
        let (_, clip) = get_clip(&local.archived(), stream, start, start + 20_000).await?;
        let path = dir.join(format!("{stream}.mp4"));
        std::fs::write(&path, clip)?;
        let (codec, w, h, _, got) = ffprobe(&path)?;
        assert_eq!(
            (codec.as_str(), w, h, got),
            ("h264", 640, 480, frames),
            "{stream}"
        );
        let number = listed[2].fragment_number.clone().unwrap();
        let one = get_media(&local.archived(), stream, &[number]).await?;
        let path = dir.join(format!("{stream}-2.mkv"));
        std::fs::write(&path, &one)?;
        mkvinfo(&path)?;
        assert_eq!(ffprobe(&path)?.1, 640);
    }
    Ok(())
}

#[tokio::test]
async fn get_media_for_fragment_list_answers_like_the_service() -> anyhow::Result<()> {
    let local = Local::start().await?;
    create_stream(&local.control(), "demo", 24).await?;
    let start = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64 - 120_000;
    put_relative(&local, "demo", &fixture("clusters.mkv"), start).await?;
    let listed = list_all_fragments(&local.archived(), "demo").await?;
    let numbers: Vec<String> = listed
        .iter()
        .take(2)
        .map(|f| f.fragment_number.clone().unwrap())
        .collect();
    let ours = get_media(&local.archived(), "demo", &numbers).await?;

    // The real service's GetMedia output of the same input, chunk by chunk: EBML, Segment of
    // unknown size, SeekHead and Void (kvs-local keeps no SeekHead), Info, Tracks, the
    // service's Tags, the Cluster (then Tags only GetMedia sends).
    let real = fixture("kinesis_video_renderer_example_output.mkv");
    let shape = |mkv: &[u8]| -> Vec<Vec<u32>> {
        let mut chunks: Vec<Vec<u32>> = Vec::new();
        for (id, _, _, _, unknown) in top_level(mkv) {
            if id == ebml::EBML {
                chunks.push(Vec::new());
            }
            if id == ebml::SEGMENT {
                assert!(unknown, "a Segment of unknown size");
            }
            if ![ebml::SEEK_HEAD, ebml::VOID].contains(&id) {
                chunks.last_mut().unwrap().push(id);
            }
        }
        chunks
    };
    let real_chunk: Vec<u32> = shape(&real)[0]
        .iter()
        .copied()
        .take_while(|id| *id != ebml::CLUSTER)
        .chain([ebml::CLUSTER])
        .collect();
    let our_chunks = shape(&ours);
    assert_eq!(our_chunks.len(), 2, "one chunk per fragment");
    assert_eq!(
        our_chunks[1], real_chunk,
        "EBML, Segment, Info, Tracks, Tags, Cluster"
    );
    // The first fragment also carries the producer's own Tags (the demo input's encoder
    // tags), in their own element before the service's: as the real service returns a
    // producer's encoder tags in output_get_media.mkv.
    let with_producer_tags: Vec<u32> = shape(&fixture("output_get_media.mkv"))[0]
        .iter()
        .copied()
        .take_while(|id| *id != ebml::CLUSTER)
        .chain([ebml::CLUSTER])
        .collect();
    assert_eq!(
        with_producer_tags,
        [
            ebml::EBML,
            ebml::SEGMENT,
            ebml::INFO,
            ebml::TRACKS,
            ebml::TAGS,
            ebml::TAGS,
            ebml::CLUSTER
        ]
    );
    assert_eq!(our_chunks[0], with_producer_tags);

    // The service's tags, named and ordered as the real service writes them.
    let service_tags = |mkv: &[u8]| -> Vec<Vec<String>> {
        let elements = top_level(mkv);
        elements
            .windows(2)
            .filter(|w| w[0].0 == ebml::TAGS && w[1].0 == ebml::CLUSTER)
            .map(|w| tag_names(payload(mkv, w[0].1)))
            .collect()
    };
    let real_tags = service_tags(&real);
    let our_tags = service_tags(&ours);
    assert_eq!(our_tags[0], real_tags[0]);
    assert_eq!(
        real_tags[0],
        [
            "AWS_KINESISVIDEO_FRAGMENT_NUMBER",
            "AWS_KINESISVIDEO_SERVER_TIMESTAMP",
            "AWS_KINESISVIDEO_PRODUCER_TIMESTAMP"
        ]
    );
    assert_eq!(our_tags.len(), 2);
    for n in &numbers {
        assert!(
            ours.windows(n.len()).any(|w| w == n.as_bytes()),
            "each chunk names its fragment"
        );
    }
    Ok(())
}
