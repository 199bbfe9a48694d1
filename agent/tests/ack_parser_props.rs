//! The PutMedia ack parser under any chunking: acks split across chunks or batched in one
//! give the same result as the stream read whole, and arbitrary bytes never panic (they
//! come back as errors naming the line).

use kvs_edge_agent::putmedia::{AckEvent, AckParser};
use proptest::prelude::*;

const STREAM: &str = concat!(
    r#"{"EventType":"BUFFERING","FragmentTimecode":1595833960258,"FragmentNumber":"91343852333181457151482848337893124909386799"}"#,
    "\n",
    r#"{"EventType":"RECEIVED","FragmentTimecode":1595833960258,"FragmentNumber":"91343852333181457151482848337893124909386799"}"#,
    "\r\n\n",
    r#"{"EventType":"IDLE"}"#,
    "\n",
    r#"{"EventType":"PERSISTED","FragmentTimecode":1595833960258,"FragmentNumber":"91343852333181457151482848337893124909386799"}"#,
    "\n",
    r#"{"EventType":"ERROR","ErrorId":4004,"ErrorCode":"FRAGMENT_TIMECODE_LESSER_THAN_PREVIOUS","FragmentTimecode":1595833962258}"#,
);

fn parse(data: &[u8], cuts: &[usize]) -> Vec<String> {
    let mut p = AckParser::default();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut sizes = cuts.iter().cycle();
    while pos < data.len() {
        let n = (*sizes.next().unwrap_or(&1)).max(1).min(data.len() - pos);
        out.extend(
            p.push(&data[pos..pos + n])
                .into_iter()
                .map(|a| format!("{a:?}")),
        );
        pos += n;
    }
    out.extend(p.finish().map(|a| format!("{a:?}")));
    out
}

#[test]
fn the_whole_stream_reads_as_five_acks() {
    let mut p = AckParser::default();
    let mut acks: Vec<_> = p
        .push(STREAM.as_bytes())
        .into_iter()
        .map(Result::unwrap)
        .collect();
    acks.extend(p.finish().map(Result::unwrap));
    let kinds: Vec<AckEvent> = acks.iter().map(|a| a.event_type).collect();
    use AckEvent::*;
    assert_eq!(kinds, [Buffering, Received, Idle, Persisted, Error]);
    assert_eq!(acks[4].error_id, Some(4004));
}

proptest! {
    #[test]
    fn chunking_does_not_matter(cuts in proptest::collection::vec(1usize..64, 1..16)) {
        prop_assert_eq!(parse(STREAM.as_bytes(), &cuts), parse(STREAM.as_bytes(), &[STREAM.len()]));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600), cut in 1usize..50) {
        let _ = parse(&data, &[cut]);
    }
}
