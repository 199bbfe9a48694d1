//! The MP4 joiner against MP4s it did not write: kvs-local's GetClip writer (progressive,
//! moov first, video and optionally audio). Joined output has every sample once, in order,
//! with decode times running on per track and audio kept where its edit list puts it; chunk
//! boundaries never change the output; a changed codec configuration or track layout
//! starts a new file; truncated or shuffled input is an error, never a panic. ffprobe checks
//! real joined clips in tests/tests/archiver_clip.rs.

use kvs_edge_archiver::mp4join::{Joiner, Output};
use kvs_local::mp4::{AudioCodec, AudioTrack, Sample, VideoTrack, write};
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
    clip_with_audio(avcc, start_ms, n, tag, None)
}

/// AAC LC, 48 kHz, mono.
const ASC: &[u8] = &[0x11, 0x88];

/// Like `clip`, with `audio` = (delay in ms, frame count) AAC frames of 1024 samples at
/// 48 kHz whose bytes all equal `0xA0 + i`, starting `delay` after the video.
fn clip_with_audio(
    avcc: &[u8],
    start_ms: i64,
    n: usize,
    tag: u8,
    audio: Option<(i64, usize)>,
) -> Vec<u8> {
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
    let (delay, frames) = audio.unwrap_or((0, 0));
    let audio_data: Vec<Vec<u8>> = (0..frames)
        .map(|i| vec![0xA0u8.wrapping_add(i as u8); 20 + i % 3])
        .collect();
    let audio_samples: Vec<Sample> = (0..frames)
        .map(|i| Sample {
            pts_ms: start_ms + delay + (i as i64 * 1024 * 1000 / 48_000),
            keyframe: true,
            data: &audio_data[i],
        })
        .collect();
    let track = AudioTrack {
        codec: AudioCodec::Aac,
        config: ASC,
        rate: 48_000,
        channels: 1,
    };
    write(
        &VideoTrack {
            width: 320,
            height: 240,
            codec: kvs_local::mp4::Codec::H264,
            config: avcc,
        },
        &samples,
        audio.map(|_| (&track, audio_samples.as_slice())),
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

/// The `tfdt` decode times of a file's fragments, per track id, in file order.
fn decode_times(file: &[u8]) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    for (kind, moof) in boxes(file) {
        if kind != "moof" {
            continue;
        }
        let mut at = 0;
        while let Some(p) = moof[at..].windows(4).position(|w| w == b"tfhd") {
            let tfhd = at + p;
            let id = u32::from_be_bytes(moof[tfhd + 8..tfhd + 12].try_into().unwrap());
            let tfdt = tfhd + moof[tfhd..].windows(4).position(|w| w == b"tfdt").unwrap();
            out.push((
                id,
                u64::from_be_bytes(moof[tfdt + 8..tfdt + 16].try_into().unwrap()),
            ));
            at = tfdt;
        }
    }
    out
}

#[test]
fn audio_is_carried_as_a_second_track_and_keeps_its_place() {
    // Two parts of 2 s; the audio starts 20 ms after the video in each.
    let parts = [
        clip_with_audio(AVCC_A, 0, 50, 0, Some((20, 90))),
        clip_with_audio(AVCC_A, 2000, 50, 50, Some((20, 90))),
    ];
    let files = files(&join(&parts, 1000).unwrap());
    assert_eq!(files.len(), 1);
    let top = boxes(&files[0]);
    let moov = top[1].1;
    let handlers: Vec<&[u8]> = moov
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"hdlr")
        .map(|(i, _)| &moov[i + 12..i + 16])
        .collect();
    assert_eq!(handlers, [b"vide", b"soun"]);
    assert!(moov.windows(4).any(|w| w == b"mp4a") && moov.windows(4).any(|w| w == b"esds"));
    // Every byte once: each part's video, then its audio (kvs-local's chunk order).
    let media: Vec<u8> = top
        .iter()
        .filter(|(k, _)| k == "mdat")
        .flat_map(|(_, p)| p.to_vec())
        .collect();
    let mut expect = Vec::new();
    for part in 0..2usize {
        for i in 0..50usize {
            expect.extend(vec![(50 * part + i) as u8; 100 + i % 7]);
        }
        for i in 0..90usize {
            expect.extend(vec![0xA0u8.wrapping_add(i as u8); 20 + i % 3]);
        }
    }
    assert_eq!(media, expect);
    // Video in ms, audio in 48 kHz samples: each part's audio 20 ms after its video.
    assert_eq!(
        decode_times(&files[0]),
        [(1, 0), (2, 960), (1, 2000), (2, 2000 * 48 + 960)]
    );
}

#[test]
fn audio_that_appears_or_goes_starts_a_new_file() {
    let out = join(
        &[
            clip(AVCC_A, 0, 20, 0),
            clip_with_audio(AVCC_A, 800, 20, 20, Some((0, 30))),
            clip(AVCC_A, 1600, 20, 40),
        ],
        4096,
    )
    .unwrap();
    let files = files(&out);
    assert_eq!(files.len(), 3);
    let has_audio = |f: &[u8]| f.windows(4).any(|w| w == b"soun");
    assert_eq!(
        files.iter().map(|f| has_audio(f)).collect::<Vec<_>>(),
        [false, true, false]
    );
}

#[test]
fn fragmented_input_with_two_tracks_is_read_by_its_data_offsets() {
    // The joiner's own output is fragmented: a moof with a traf per track, truns pointing
    // into the mdat. Joined again, it gives the same media and timing.
    let parts = [
        clip_with_audio(AVCC_A, 0, 30, 0, Some((20, 50))),
        clip_with_audio(AVCC_A, 1200, 30, 30, Some((20, 50))),
    ];
    let once = files(&join(&parts, 4096).unwrap());
    let twice = files(&join(&once, 333).unwrap());
    assert_eq!(twice.len(), 1);
    let media = |f: &[u8]| -> Vec<u8> {
        boxes(f)
            .iter()
            .filter(|(k, _)| k == "mdat")
            .flat_map(|(_, p)| p.to_vec())
            .collect()
    };
    assert_eq!(media(&twice[0]), media(&once[0]));
    assert_eq!(decode_times(&twice[0]), decode_times(&once[0]));
}

/// The `trun` sample counts and total durations per track id of a joined file.
fn trun_totals(file: &[u8]) -> std::collections::BTreeMap<u32, (u64, u64)> {
    let mut totals = std::collections::BTreeMap::new();
    for (kind, moof) in boxes(file) {
        if kind != "moof" {
            continue;
        }
        let mut id = 0;
        let mut at = 0;
        while at + 8 <= moof.len() {
            let tag = &moof[at + 4..at + 8];
            if tag == b"tfhd" {
                id = u32::from_be_bytes(moof[at + 12..at + 16].try_into().unwrap());
            }
            if tag == b"trun" {
                let count = u32::from_be_bytes(moof[at + 12..at + 16].try_into().unwrap());
                let entry = |i: usize| at + 20 + 16 * i;
                let duration: u64 = (0..count as usize)
                    .map(|i| {
                        u64::from(u32::from_be_bytes(
                            moof[entry(i)..entry(i) + 4].try_into().unwrap(),
                        ))
                    })
                    .sum();
                let t = totals.entry(id).or_insert((0, 0));
                t.0 += u64::from(count);
                t.1 += duration;
            }
            // Walk into containers, over leaf boxes.
            let size = u32::from_be_bytes(moof[at..at + 4].try_into().unwrap()) as usize;
            at += if tag == b"traf" { 8 } else { size };
        }
    }
    totals
}

#[test]
fn a_law_is_carried_in_groups_not_byte_by_byte() {
    // G.711 A-law at 8 kHz: the MP4 tables it one byte per sample; 50 frames of 20 ms.
    let track = AudioTrack {
        codec: AudioCodec::Alaw,
        config: &[],
        rate: 8000,
        channels: 1,
    };
    let part = |start: i64, tag: u8| {
        let video: Vec<Vec<u8>> = (0..25).map(|i| vec![tag + i as u8; 100]).collect();
        let v: Vec<Sample> = (0..25)
            .map(|i| Sample {
                pts_ms: start + 40 * i as i64,
                keyframe: i % 10 == 0,
                data: &video[i],
            })
            .collect();
        let audio: Vec<Vec<u8>> = (0..50).map(|i| vec![0xD5 ^ i as u8; 160]).collect();
        let a: Vec<Sample> = (0..50)
            .map(|i| Sample {
                pts_ms: start + 20 * i as i64,
                keyframe: true,
                data: &audio[i],
            })
            .collect();
        let video_track = VideoTrack {
            width: 320,
            height: 240,
            codec: kvs_local::mp4::Codec::H264,
            config: AVCC_A,
        };
        write(&video_track, &v, Some((&track, a.as_slice())))
    };
    let files = files(&join(&[part(0, 0), part(1000, 25)], 777).unwrap());
    assert_eq!(files.len(), 1);
    let totals = trun_totals(&files[0]);
    // 2 × 8000 samples, in groups of at most 1024 (not 16 000 one-byte samples).
    assert_eq!(totals[&2], (16, 16_000), "{totals:?}");
    assert_eq!(totals[&1], (50, 2000));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn chunk_boundaries_do_not_matter(chunk in 1usize..5000, n in 1usize..60, m in 1usize..60, audio in 0usize..40) {
        let with = |frames: usize| (frames > 0).then_some((10, frames));
        let parts = [
            clip_with_audio(AVCC_A, 0, n, 0, with(audio)),
            clip_with_audio(AVCC_A, 40 * n as i64, m, 100, with(audio)),
        ];
        let whole = files(&join(&parts, usize::MAX).unwrap());
        prop_assert_eq!(files(&join(&parts, chunk).unwrap()), whole);
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2000), chunk in 1usize..300) {
        let _ = join(&[bytes], chunk);
    }
}
