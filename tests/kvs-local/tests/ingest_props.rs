//! Property tests of the incremental PutMedia parser: the way the body is chunked never
//! changes the outcome, and mutated, truncated or random input is answered with an error or
//! accepted, never with a panic or a wedge. (A cargo-fuzz target covers the same ground
//! for longer runs: tests/kvs-local/fuzz.)

use kvs_local::ebml::{self, write_element, write_header, write_uint};
use kvs_local::ingest::{Event, Ingest, IngestError, Limits, TimecodeType};
use proptest::prelude::*;

/// A valid stream: header, then `clusters` fragments of 5 frames 40 ms apart.
fn stream(clusters: usize, unknown_size_clusters: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut h = Vec::new();
    write_element(&mut h, ebml::DOC_TYPE, b"matroska");
    write_element(&mut out, ebml::EBML, &h);
    write_header(&mut out, ebml::SEGMENT, None);
    let mut info = Vec::new();
    write_uint(&mut info, ebml::TIMECODE_SCALE, 1_000_000);
    write_element(&mut out, ebml::INFO, &info);
    let mut entry = Vec::new();
    write_uint(&mut entry, ebml::TRACK_NUMBER, 1);
    write_uint(&mut entry, ebml::TRACK_TYPE, 1);
    write_element(&mut entry, ebml::CODEC_ID, b"V_MPEG4/ISO/AVC");
    write_element(
        &mut entry,
        ebml::CODEC_PRIVATE,
        &[1, 77, 0, 30, 0xFF, 0xE1, 0, 2, 0x67, 0x4D, 1, 0, 1, 0x68],
    );
    let mut tracks = Vec::new();
    write_element(&mut tracks, ebml::TRACK_ENTRY, &entry);
    write_element(&mut out, ebml::TRACKS, &tracks);
    for c in 0..clusters {
        let mut body = Vec::new();
        write_uint(
            &mut body,
            ebml::TIMECODE,
            1_700_000_000_000 + c as u64 * 200,
        );
        for f in 0..5u8 {
            let mut block = vec![0x81, 0, f * 40, if f == 0 { 0x80 } else { 0 }];
            block.extend_from_slice(&[0, 0, 0, 3, 0x65, f, c as u8]);
            write_element(&mut body, ebml::SIMPLE_BLOCK, &block);
        }
        if unknown_size_clusters {
            write_header(&mut out, ebml::CLUSTER, None);
            out.extend_from_slice(&body);
        } else {
            write_element(&mut out, ebml::CLUSTER, &body);
        }
    }
    out
}

#[derive(Debug, PartialEq)]
enum Seen {
    Started(i64),
    Complete {
        timecode: i64,
        frames: usize,
        body: Vec<u8>,
    },
}

/// Feeds `data` in the given chunk sizes; returns what came out and how it ended.
fn run(data: &[u8], chunks: &[usize]) -> (Vec<Seen>, Result<(), IngestError>) {
    let mut ingest = Ingest::new(TimecodeType::Absolute, Limits::default());
    let mut events = Vec::new();
    let mut pos = 0;
    let mut sizes = chunks.iter().cycle();
    let mut result = Ok(());
    while pos < data.len() {
        let n = (*sizes.next().unwrap_or(&1)).max(1).min(data.len() - pos);
        if let Err(e) = ingest.push(&data[pos..pos + n], &mut events) {
            result = Err(e);
            break;
        }
        pos += n;
    }
    if result.is_ok() {
        result = ingest.finish(&mut events);
    }
    let seen = events
        .into_iter()
        .map(|e| match e {
            Event::FragmentStarted { timecode_ms } => Seen::Started(timecode_ms),
            Event::FragmentComplete(f) => Seen::Complete {
                timecode: f.timecode_ms,
                frames: f.frames.len(),
                body: f.body,
            },
        })
        .collect();
    (seen, result)
}

#[test]
fn a_valid_stream_yields_every_fragment() {
    for unknown in [false, true] {
        let (seen, result) = run(&stream(4, unknown), &[usize::MAX]);
        assert_eq!(result, Ok(()));
        let complete: Vec<i64> = seen
            .iter()
            .filter_map(|s| {
                if let Seen::Complete { timecode, .. } = s {
                    Some(*timecode)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(
            complete,
            [
                1_700_000_000_000,
                1_700_000_000_200,
                1_700_000_000_400,
                1_700_000_000_600
            ]
        );
        assert!(
            seen.iter()
                .all(|s| !matches!(s, Seen::Complete { frames, .. } if *frames != 5))
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn chunking_does_not_change_the_outcome(
        chunks in proptest::collection::vec(1usize..300, 1..20),
        unknown in any::<bool>(),
    ) {
        let data = stream(3, unknown);
        prop_assert_eq!(run(&data, &chunks), run(&data, &[data.len()]));
    }

    #[test]
    fn mutated_input_never_panics(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
        chunks in proptest::collection::vec(1usize..500, 1..8),
        unknown in any::<bool>(),
    ) {
        let mut data = stream(3, unknown);
        for (at, byte) in flips {
            let i = at.index(data.len());
            data[i] = byte;
        }
        data.truncate(cut.index(data.len() + 1));
        let (seen, result) = run(&data, &chunks);
        // Whatever happened, every completed fragment obeys the rules.
        for s in &seen {
            if let Seen::Complete { frames, .. } = s {
                prop_assert!(*frames > 0);
            }
        }
        if let Err(e) = result {
            prop_assert!(!e.detail.is_empty());
        }
    }

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = run(&data, &[37]);
    }
}
