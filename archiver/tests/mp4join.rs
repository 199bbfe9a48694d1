//! The MP4 joiner against MP4s it did not write: kvs-local's GetClip writer (progressive,
//! moov first). Joined output has every sample once, in order, with decode times running on;
//! chunk boundaries never change the output; a changed codec configuration starts a new
//! file; truncated or shuffled input is an error, never a panic. ffprobe checks real
//! joined clips in tests/tests/archiver_clip.rs.

use kvs_edge_archiver::mp4join::{Joiner, Output};
use kvs_local::mp4::{Sample, VideoTrack, write};
use proptest::prelude::*;

/// A fake but well-formed AVCDecoderConfigurationRecord: the joiner copies it, never reads it.
const AVCC_A: &[u8] = &[
    1, 0x4d, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x4d, 0, 0x1f, 1, 0, 4, 0x68, 0xee, 0x3c, 0x80,
];
const AVCC_B: &[u8] = &[
    1, 0x64, 0, 0x28, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x28, 1, 0, 4, 0x68, 0xee, 0x3c, 0x80,
];

/// A clip of `n` samples at 40 ms, a keyframe every 10; sample i's bytes all equal `tag + i`.
fn clip(avcc: &[u8], start_ms: i64, n: usize, tag: u8) -> Vec<u8> {
    let data: Vec<Vec<u8>> = (0..n)
        .map(|i| vec![tag.wrapping_add(i as u8); 100 + i % 7])
        .collect();
    let samples: Vec<Sample> = (0..n)
        .map(|i| Sample {
            pts_ms: start_ms + 40 * i as i64,
            keyframe: i % 10 == 0,
            data: &data[i],
        })
        .collect();
    write(
        &VideoTrack {
            width: 320,
            height: 240,
            codec: kvs_local::mp4::Codec::H264,
            config: avcc,
        },
        &samples,
        None,
    )
}

fn join(parts: &[Vec<u8>], chunk: usize) -> Result<Vec<Output>, String> {
    let mut j = Joiner::default();
    let mut out = Vec::new();
    for p in parts {
        j.begin_part();
        for c in p.chunks(chunk.max(1)) {
            out.extend(j.push(c).map_err(|e| e.to_string())?);
        }
        j.end_part().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// The output's files, as bytes.
fn files(out: &[Output]) -> Vec<Vec<u8>> {
    let mut files = vec![Vec::new()];
    for o in out {
        match o {
            Output::Bytes(b) => files.last_mut().unwrap().extend_from_slice(b),
            Output::NextFile => files.push(Vec::new()),
        }
    }
    files
}

/// Top-level boxes: (type, payload).
fn boxes(b: &[u8]) -> Vec<(String, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= b.len() {
        let size = u32::from_be_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        out.push((
            String::from_utf8_lossy(&b[at + 4..at + 8]).into_owned(),
            &b[at + 8..at + size],
        ));
        at += size;
    }
    assert_eq!(at, b.len(), "boxes tile the file");
    out
}

#[test]
fn two_clips_become_one_fragmented_file_with_every_sample_in_order() {
    let (a, b) = (clip(AVCC_A, 0, 50, 0), clip(AVCC_A, 2000, 30, 50));
    let files = files(&join(&[a, b], 1 << 20).unwrap());
    assert_eq!(files.len(), 1);
    let top = boxes(&files[0]);
    let kinds: Vec<&str> = top.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["ftyp", "moov", "moof", "mdat", "moof", "mdat"]);
    // The media: every sample's bytes once, in order (tags 0..80).
    let media: Vec<u8> = top
        .iter()
        .filter(|(k, _)| k == "mdat")
        .flat_map(|(_, p)| p.to_vec())
        .collect();
    let mut expect = Vec::new();
    for i in 0..50usize {
        expect.extend(vec![i as u8; 100 + i % 7]);
    }
    for i in 0..30usize {
        expect.extend(vec![50 + i as u8; 100 + i % 7]);
    }
    assert_eq!(media, expect);
    // The second fragment's decode time continues where the first one ended (50 × 40 ms).
    let second_moof = top[4].1;
    let tfdt = second_moof.windows(4).position(|w| w == b"tfdt").unwrap();
    let base = u64::from_be_bytes(second_moof[tfdt + 8..tfdt + 16].try_into().unwrap());
    assert_eq!(base, 2000, "in the input's timescale (ms)");
}

#[test]
fn a_codec_change_starts_a_new_file() {
    let out = join(
        &[
            clip(AVCC_A, 0, 20, 0),
            clip(AVCC_B, 800, 20, 20),
            clip(AVCC_B, 1600, 5, 40),
        ],
        4096,
    )
    .unwrap();
    let files = files(&out);
    assert_eq!(files.len(), 2);
    let kinds = |f: &[u8]| boxes(f).iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(kinds(&files[0]), ["ftyp", "moov", "moof", "mdat"]);
    assert_eq!(
        kinds(&files[1]),
        ["ftyp", "moov", "moof", "mdat", "moof", "mdat"]
    );
    assert!(
        files[1].windows(AVCC_B.len()).any(|w| w == AVCC_B),
        "the new file describes the new codec"
    );
}

#[test]
fn broken_input_is_an_error() {
    let a = clip(AVCC_A, 0, 20, 0);
    assert!(
        join(&[a[..a.len() - 10].to_vec()], 1000).is_err(),
        "truncated"
    );
    assert!(join(&[a[..40].to_vec()], 7).is_err(), "no moov");
    let top = boxes(&a);
    let mdat_first: Vec<u8> =
        [&a[..top[0].1.len() + 8], &a[a.len() - top[2].1.len() - 8..]].concat();
    assert!(join(&[mdat_first], 1000).unwrap_err().contains("moov"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn chunk_boundaries_do_not_matter(chunk in 1usize..5000, n in 1usize..60, m in 1usize..60) {
        let parts = [clip(AVCC_A, 0, n, 0), clip(AVCC_A, 40 * n as i64, m, 100)];
        let whole = files(&join(&parts, usize::MAX).unwrap());
        prop_assert_eq!(files(&join(&parts, chunk).unwrap()), whole);
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000), chunk in 1usize..300) {
        let _ = join(&[bytes], chunk);
    }
}
