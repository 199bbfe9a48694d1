//! Property tests of the Matroska fragmenter, checked by an independent reader (kvs-local's
//! incremental ingest, which enforces the KVS rules): for any frame sequence, every fragment
//! starts on a keyframe, none exceeds the limit, no frame is lost or reordered, and the bytes
//! are a stream KVS would accept.

use kvs_edge_agent::fragmenter::{AccessUnit, Fragmenter, FragmenterConfig, MkvError};
use kvs_edge_agent::mkv::{self, TrackSpec};
use kvs_local::ingest::{Event, Ingest, Limits, TimecodeType};
use proptest::prelude::*;

/// Frames: (gap to the previous frame in ms, keyframe?, payload size).
fn frames() -> impl Strategy<Value = Vec<(i64, bool, usize)>> {
    proptest::collection::vec(
        (1i64..200, proptest::bool::weighted(0.1), 1usize..2000),
        1..300,
    )
}

const AVCC: &[u8] = &[1, 77, 0, 30, 0xFF, 0xE1, 0, 2, 0x67, 0x4D, 1, 0, 1, 0x68];

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn fragments_obey_the_kvs_rules(seq in frames(), target in 500i64..3000, max in 3000i64..12_000) {
        let mut f = Fragmenter::new(FragmenterConfig { target_ms: target, max_ms: max });
        let mut out = Vec::new();
        let mut accepted = Vec::new();
        let mut t = 1_700_000_000_000i64;
        for (i, (gap, key, size)) in seq.iter().enumerate() {
            t += gap;
            let key = *key || i == 0;
            let au = AccessUnit { pts_ms: t, dts_ms: t, keyframe: key, data: vec![0x41; *size].into() };
            match f.push(au) {
                Ok(done) => {
                    accepted.push(t);
                    out.extend(done);
                }
                Err(MkvError::GopTooLong { .. }) => {
                    // The GOP is discarded, as the camera supervisor does; frames until the
                    // next keyframe are refused.
                    let n = f.discard();
                    accepted.truncate(accepted.len() - n);
                }
                Err(MkvError::NeedKeyframe(_)) => {}
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
        out.extend(f.flush());

        let mut stream = mkv::session_header([9; 16], &[TrackSpec::h264(AVCC.to_vec(), 320, 240)], "props");
        for frag in &out {
            prop_assert!(frag.duration_ms <= max + 200, "fragment of {} ms over {max}", frag.duration_ms);
            stream.extend_from_slice(&frag.bytes);
        }
        let limits = Limits { max_fragment_duration_ms: max, ..Limits::default() };
        let mut ingest = Ingest::new(TimecodeType::Absolute, limits);
        let mut events = Vec::new();
        ingest.push(&stream, &mut events).map_err(|e| TestCaseError::fail(e.to_string()))?;
        ingest.finish(&mut events).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut seen = Vec::new();
        for e in events {
            if let Event::FragmentComplete(frag) = e {
                prop_assert!(frag.frames[0].keyframe, "fragment starts on a keyframe");
                seen.extend(frag.frames.iter().map(|fr| fr.timestamp_ms));
            }
        }
        prop_assert_eq!(seen, accepted, "every accepted frame, in order");
    }
}
