//! Feeds arbitrary bytes, in arbitrary chunks, to the PutMedia ingest state machine: it must
//! answer with events or an error, never panic, never loop.
#![no_main]

use kvs_local::ingest::{Ingest, Limits, TimecodeType};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else { return };
    let limits = Limits { max_metadata_bytes: 64 * 1024, max_fragment_bytes: 1024 * 1024, ..Limits::default() };
    let mut ingest = Ingest::new(TimecodeType::Relative { producer_start_ms: 1_700_000_000_000 }, limits);
    let mut events = Vec::new();
    for piece in data.chunks(usize::from(chunk).max(1)) {
        if ingest.push(piece, &mut events).is_err() {
            return;
        }
        events.clear();
    }
    let _ = ingest.finish(&mut events);
});
