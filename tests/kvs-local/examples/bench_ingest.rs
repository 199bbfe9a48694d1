//! `make bench`: throughput of kvs-local's hot paths, in release mode.
//! - PutMedia ingest: the incremental Matroska parser/validator fed in 64 KiB chunks.
//! - GetClip: the MP4 writer over 200 fragments (the GetClip cap).
//!
//! Prints Markdown rows for docs/benchmarks.md. Peak RSS from /proc/self/status.

use std::time::Instant;

use kvs_local::ebml::{self, write_element, write_header, write_uint};
use kvs_local::ingest::{Event, Ingest, Limits, TimecodeType};
use kvs_local::mp4;

const FPS: i64 = 25;
const FRAGMENT_MS: i64 = 2000;
const FRAME_BYTES: usize = 20_000; // ~4 Mbit/s video

fn stream(fragments: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut h = Vec::new();
    write_element(&mut h, ebml::DOC_TYPE, b"matroska");
    write_element(&mut out, ebml::EBML, &h);
    write_header(&mut out, ebml::SEGMENT, None);
    let mut entry = Vec::new();
    write_uint(&mut entry, ebml::TRACK_NUMBER, 1);
    write_uint(&mut entry, ebml::TRACK_TYPE, 1);
    write_element(&mut entry, ebml::CODEC_ID, b"V_MPEG4/ISO/AVC");
    let mut tracks = Vec::new();
    write_element(&mut tracks, ebml::TRACK_ENTRY, &entry);
    write_element(&mut out, ebml::TRACKS, &tracks);
    let frame = vec![0x41u8; FRAME_BYTES];
    for f in 0..fragments as i64 {
        let mut body = Vec::new();
        write_uint(
            &mut body,
            ebml::TIMECODE,
            (1_700_000_000_000 + f * FRAGMENT_MS) as u64,
        );
        for i in 0..FRAGMENT_MS * FPS / 1000 {
            let mut block = vec![0x81];
            block.extend_from_slice(&((i * 1000 / FPS) as i16).to_be_bytes());
            block.push(if i == 0 { 0x80 } else { 0 });
            block.extend_from_slice(&frame);
            write_element(&mut body, ebml::SIMPLE_BLOCK, &block);
        }
        write_element(&mut out, ebml::CLUSTER, &body);
    }
    out
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    let data = stream(60);
    let mib = data.len() as f64 / (1024.0 * 1024.0);
    let mut best = f64::MAX;
    let mut fragments = Vec::new();
    for _ in 0..5 {
        let mut ingest = Ingest::new(TimecodeType::Absolute, Limits::default());
        let mut events = Vec::new();
        fragments.clear();
        let t = Instant::now();
        for chunk in data.chunks(64 * 1024) {
            ingest.push(chunk, &mut events).expect("valid stream");
            for e in events.drain(..) {
                if let Event::FragmentComplete(f) = e {
                    fragments.push(f);
                }
            }
        }
        ingest.finish(&mut events).expect("valid stream");
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "| PutMedia ingest (parse + validate, 64 KiB chunks) | {mib:.0} MiB, {} fragments | {:.0} MiB/s |",
        fragments.len(),
        mib / best
    );

    let clip_fragments = stream(200);
    let mut ingest = Ingest::new(TimecodeType::Absolute, Limits::default());
    let mut events = Vec::new();
    ingest.push(&clip_fragments, &mut events).expect("valid");
    ingest.finish(&mut events).expect("valid");
    let frags: Vec<_> = events
        .into_iter()
        .filter_map(|e| {
            if let Event::FragmentComplete(f) = e {
                Some(f)
            } else {
                None
            }
        })
        .collect();
    let t = Instant::now();
    let samples: Vec<mp4::Sample> = frags
        .iter()
        .flat_map(|f| {
            f.frames.iter().map(move |fr| mp4::Sample {
                pts_ms: fr.timestamp_ms,
                keyframe: fr.keyframe,
                data: &f.body[fr.offset..fr.offset + fr.len],
            })
        })
        .collect();
    let out = mp4::write(
        &mp4::VideoTrack {
            width: 1920,
            height: 1080,
            codec: kvs_local::mp4::Codec::H264,
            config: &[1, 77, 0, 40, 0xFF, 0xE1, 0, 2, 0x67, 0x4D, 1, 0, 1, 0x68],
        },
        &samples,
        None,
    );
    let secs = t.elapsed().as_secs_f64();
    println!(
        "| GetClip MP4 assembly (200 fragments, {} frames) | {:.0} MiB out | {:.0} ms ({:.0} MiB/s) |",
        samples.len(),
        out.len() as f64 / 1048576.0,
        secs * 1000.0,
        out.len() as f64 / 1048576.0 / secs
    );
    println!(
        "| peak RSS of the benchmark process | | {:.0} MiB |",
        peak_rss_mib()
    );
}
