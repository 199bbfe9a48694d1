//! Reading the input MP4s' boxes: the box walker, each track's description from its `trak`
//! (kind, id, timescale, sample description, start delay), and progressive sample tables.

use super::Kind;

pub(super) fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes(s.try_into().unwrap()))
}

pub(super) fn be64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_be_bytes(s.try_into().unwrap()))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes(s.try_into().unwrap()))
}

/// The child boxes of a box payload: (type, payload).
pub(super) fn children(payload: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= payload.len() {
        let size = be32(payload, at).unwrap_or(0) as usize;
        let kind: [u8; 4] = payload[at + 4..at + 8].try_into().unwrap();
        let (header, size) = if size == 1 {
            match be64(payload, at + 8) {
                Some(s) => (16, s as usize),
                None => break,
            }
        } else if size == 0 {
            (8, payload.len() - at)
        } else {
            (8, size)
        };
        if size < header || at + size > payload.len() {
            break;
        }
        out.push((kind, &payload[at + header..at + size]));
        at += size;
    }
    out
}

pub(super) fn child<'a>(payload: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    children(payload)
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, p)| p)
}

/// A box again as a whole (header + payload), to be copied into the output.
fn whole(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(payload.len() + 8);
    b.extend_from_slice(&((payload.len() + 8) as u32).to_be_bytes());
    b.extend_from_slice(kind);
    b.extend_from_slice(payload);
    b
}

/// One sample as the output needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sample {
    /// Absolute byte offset in the input.
    pub offset: u64,
    pub size: u32,
    pub duration: u32,
    pub cto: i32,
    pub sync: bool,
}

/// One input track: its description and timing, from `moov`.
#[derive(Debug, Clone)]
pub(super) struct Track {
    pub id: u32,
    pub kind: Kind,
    pub timescale: u32,
    /// The whole `stsd` box, copied into the output.
    pub stsd: Vec<u8>,
    pub width: u16,
    pub height: u16,
    /// How late the track starts (its edit list's leading empty edit), in microseconds.
    pub delay_us: u64,
    /// Progressive inputs: the whole sample table.
    pub samples: Vec<Sample>,
    /// Fragmented inputs: `trex` defaults (duration, size, flags).
    pub trex: (u32, u32, u32),
}

/// The movie's timescale (`mvhd`), which edit lists are written in.
pub(super) fn movie_timescale(moov: &[u8]) -> u32 {
    child(moov, b"mvhd")
        .and_then(|m| {
            if m.first() == Some(&1) {
                be32(m, 20)
            } else {
                be32(m, 12)
            }
        })
        .filter(|t| *t > 0)
        .unwrap_or(1000)
}

/// The track of a `trak`, `None` for kinds the joiner does not carry (hints, subtitles).
pub(super) fn track(
    trak: &[u8],
    moov: &[u8],
    movie_timescale: u32,
) -> Result<Option<Track>, String> {
    let mdia = child(trak, b"mdia").ok_or("a trak without mdia")?;
    let kind = match child(mdia, b"hdlr").and_then(|h| h.get(8..12)) {
        Some(b"vide") => Kind::Video,
        Some(b"soun") => Kind::Audio,
        _ => return Ok(None),
    };
    let tkhd = child(trak, b"tkhd").ok_or("a trak without tkhd")?;
    let id = if tkhd.first() == Some(&1) {
        be32(tkhd, 20)
    } else {
        be32(tkhd, 12)
    }
    .ok_or("short tkhd")?;
    let mdhd = child(mdia, b"mdhd").ok_or("no mdhd")?;
    let timescale = if mdhd.first() == Some(&1) {
        be32(mdhd, 20)
    } else {
        be32(mdhd, 12)
    }
    .filter(|t| *t > 0)
    .ok_or("no timescale")?;
    let stbl = child(mdia, b"minf")
        .and_then(|m| child(m, b"stbl"))
        .ok_or("no stbl")?;
    let stsd_payload = child(stbl, b"stsd").ok_or("no stsd")?;
    // A VisualSampleEntry has its width and height at fixed places.
    let entry = stsd_payload.get(8..).unwrap_or_default();
    let (width, height) = match kind {
        Kind::Video => (be16(entry, 32).unwrap_or(0), be16(entry, 34).unwrap_or(0)),
        Kind::Audio => (0, 0),
    };
    let trex = child(moov, b"mvex")
        .map(children)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k == b"trex")
        .map(|(_, t)| t)
        .find(|t| be32(t, 4) == Some(id))
        .map(|t| {
            (
                be32(t, 12).unwrap_or(0),
                be32(t, 16).unwrap_or(0),
                be32(t, 20).unwrap_or(0),
            )
        })
        .unwrap_or_default();
    Ok(Some(Track {
        id,
        kind,
        timescale,
        stsd: whole(b"stsd", stsd_payload),
        width,
        height,
        delay_us: start_delay(trak, movie_timescale),
        samples: coalesce_pcm(sample_table(stbl)?),
        trex,
    }))
}

/// PCM (G.711 A-law) is tabled one sample per time step, a byte or two each: carried like
/// that, a minute of 8 kHz audio is 480 000 `trun` entries. Runs of such samples that are
/// contiguous in the file become samples of up to `PCM_GROUP` steps, as players read PCM.
fn coalesce_pcm(samples: Vec<Sample>) -> Vec<Sample> {
    const PCM_GROUP: u32 = 1024;
    let pcm = samples.len() > 1
        && samples
            .iter()
            .all(|s| s.duration == 1 && s.size == samples[0].size && s.size <= 8);
    if !pcm {
        return samples;
    }
    let mut out: Vec<Sample> = Vec::with_capacity(samples.len() / PCM_GROUP as usize + 1);
    for s in samples {
        match out.last_mut() {
            Some(last)
                if last.offset + u64::from(last.size) == s.offset && last.duration < PCM_GROUP =>
            {
                last.size += s.size;
                last.duration += 1;
            }
            _ => out.push(s),
        }
    }
    out
}

/// The leading empty edit of a track's edit list (`media_time` -1), in microseconds.
fn start_delay(trak: &[u8], movie_timescale: u32) -> u64 {
    let Some(elst) = child(trak, b"edts").and_then(|e| child(e, b"elst")) else {
        return 0;
    };
    let v1 = elst.first() == Some(&1);
    let (duration, media_time) = if v1 {
        (be64(elst, 8), be64(elst, 16).map(|t| t as i64))
    } else {
        (
            be32(elst, 8).map(u64::from),
            be32(elst, 12).map(|t| i64::from(t as i32)),
        )
    };
    match (be32(elst, 4), duration, media_time) {
        (Some(n), Some(d), Some(-1)) if n > 0 => {
            (u128::from(d) * 1_000_000 / u128::from(movie_timescale)) as u64
        }
        _ => 0,
    }
}

/// The progressive sample table: sizes, offsets, durations, composition offsets, sync.
fn sample_table(stbl: &[u8]) -> Result<Vec<Sample>, String> {
    let Some(stsz) = child(stbl, b"stsz") else {
        return Ok(Vec::new());
    };
    let fixed = be32(stsz, 4).unwrap_or(0);
    let count = be32(stsz, 8).unwrap_or(0) as usize;
    if count == 0 {
        return Ok(Vec::new()); // a fragmented file's empty table
    }
    if count > 10_000_000 {
        return Err(format!("{count} samples"));
    }
    let size = |i: usize| {
        if fixed != 0 {
            Some(fixed)
        } else {
            be32(stsz, 12 + 4 * i)
        }
    };
    let mut samples = Vec::with_capacity(count);
    // Durations (stts runs).
    let stts = child(stbl, b"stts").ok_or("no stts")?;
    let mut durations = Vec::with_capacity(count);
    for r in 0..be32(stts, 4).unwrap_or(0) as usize {
        let (n, d) = (
            be32(stts, 8 + 8 * r).ok_or("short stts")?,
            be32(stts, 12 + 8 * r).ok_or("short stts")?,
        );
        durations.extend(std::iter::repeat_n(
            d,
            (n as usize).min(count - durations.len()),
        ));
    }
    let mut ctos = Vec::with_capacity(count);
    if let Some(ctts) = child(stbl, b"ctts") {
        for r in 0..be32(ctts, 4).unwrap_or(0) as usize {
            let n = be32(ctts, 8 + 8 * r).ok_or("short ctts")?;
            let o = be32(ctts, 12 + 8 * r).ok_or("short ctts")? as i32;
            ctos.extend(std::iter::repeat_n(o, (n as usize).min(count - ctos.len())));
        }
    }
    let sync: Option<Vec<u32>> = child(stbl, b"stss").map(|s| {
        (0..be32(s, 4).unwrap_or(0) as usize)
            .filter_map(|i| be32(s, 8 + 4 * i))
            .collect()
    });
    // Offsets: chunks (stco/co64) hold runs of samples (stsc).
    let chunk_offsets: Vec<u64> = if let Some(stco) = child(stbl, b"stco") {
        (0..be32(stco, 4).unwrap_or(0) as usize)
            .map(|i| be32(stco, 8 + 4 * i).map(u64::from).ok_or("short stco"))
            .collect::<Result<_, _>>()?
    } else if let Some(co64) = child(stbl, b"co64") {
        (0..be32(co64, 4).unwrap_or(0) as usize)
            .map(|i| be64(co64, 8 + 8 * i).ok_or("short co64"))
            .collect::<Result<_, _>>()?
    } else {
        return Err("no stco or co64".into());
    };
    let stsc = child(stbl, b"stsc").ok_or("no stsc")?;
    let runs: Vec<(u32, u32)> = (0..be32(stsc, 4).unwrap_or(0) as usize)
        .filter_map(|r| Some((be32(stsc, 8 + 12 * r)?, be32(stsc, 12 + 12 * r)?)))
        .collect();
    let mut i = 0;
    for (c, chunk_offset) in chunk_offsets.iter().enumerate() {
        let chunk = c as u32 + 1;
        let per_chunk = runs
            .iter()
            .rev()
            .find(|(first, _)| *first <= chunk)
            .map_or(0, |(_, n)| *n);
        let mut offset = *chunk_offset;
        for _ in 0..per_chunk {
            if i == count {
                break;
            }
            let size = size(i).ok_or("short stsz")?;
            samples.push(Sample {
                offset,
                size,
                duration: durations.get(i).copied().unwrap_or(0),
                cto: ctos.get(i).copied().unwrap_or(0),
                sync: sync
                    .as_ref()
                    .is_none_or(|s| s.binary_search(&(i as u32 + 1)).is_ok()),
            });
            offset += u64::from(size);
            i += 1;
        }
    }
    if samples.len() != count {
        return Err(format!(
            "the chunk table covers {} of {count} samples",
            samples.len()
        ));
    }
    Ok(samples)
}

/// A `moof`'s track fragments: their samples with absolute offsets, and each track's
/// decode time (`tfdt`) where given.
#[derive(Debug, Default)]
pub(super) struct Fragment {
    pub samples: Vec<(u32, Sample)>,
    pub decode_times: Vec<(u32, u64)>,
}

/// Reads a `moof`. `moof_start` is the moof's own offset in the input; `defaults` gives a
/// track's `trex` defaults (`None` for tracks the joiner does not carry, which are skipped).
pub(super) fn fragment(
    moof: &[u8],
    moof_start: u64,
    defaults: impl Fn(u32) -> Option<(u32, u32, u32)>,
) -> Result<Fragment, String> {
    let mut out = Fragment::default();
    // Without a base offset or default-base-is-moof, a traf's data follows the previous one's.
    let mut data_end = moof_start;
    for (kind, traf) in children(moof) {
        if &kind != b"traf" {
            continue;
        }
        let tfhd = child(traf, b"tfhd").ok_or("traf without tfhd")?;
        let flags = be32(tfhd, 0).unwrap_or(0) & 0xFF_FFFF;
        let id = be32(tfhd, 4).ok_or("short tfhd")?;
        let mut at = 8;
        let base = if flags & 0x1 != 0 {
            let b = be64(tfhd, at).ok_or("short tfhd")?;
            at += 8;
            b
        } else if flags & 0x2_0000 != 0 {
            moof_start
        } else {
            data_end
        };
        if flags & 0x2 != 0 {
            at += 4;
        }
        let Some((mut default_duration, mut default_size, mut default_flags)) = defaults(id) else {
            continue;
        };
        if flags & 0x8 != 0 {
            default_duration = be32(tfhd, at).ok_or("short tfhd")?;
            at += 4;
        }
        if flags & 0x10 != 0 {
            default_size = be32(tfhd, at).ok_or("short tfhd")?;
            at += 4;
        }
        if flags & 0x20 != 0 {
            default_flags = be32(tfhd, at).ok_or("short tfhd")?;
        }
        if let Some(tfdt) = child(traf, b"tfdt") {
            let t = if tfdt.first() == Some(&1) {
                be64(tfdt, 4)
            } else {
                be32(tfdt, 4).map(u64::from)
            };
            out.decode_times.extend(t.map(|t| (id, t)));
        }
        let mut next = base;
        for (kind, trun) in children(traf) {
            if &kind != b"trun" {
                continue;
            }
            let version = trun.first().copied().unwrap_or(0);
            let tf = be32(trun, 0).unwrap_or(0) & 0xFF_FFFF;
            let count = be32(trun, 4).ok_or("short trun")?;
            let mut at = 8;
            if tf & 0x1 != 0 {
                let offset = be32(trun, at).ok_or("short trun")? as i32;
                next = base
                    .checked_add_signed(i64::from(offset))
                    .ok_or("a trun data offset before the file")?;
                at += 4;
            }
            let mut first_flags = None;
            if tf & 0x4 != 0 {
                first_flags = be32(trun, at);
                at += 4;
            }
            for i in 0..count {
                let mut field = |present: bool, default: u32| -> Result<u32, String> {
                    if !present {
                        return Ok(default);
                    }
                    let v = be32(trun, at).ok_or("short trun")?;
                    at += 4;
                    Ok(v)
                };
                let duration = field(tf & 0x100 != 0, default_duration)?;
                let size = field(tf & 0x200 != 0, default_size)?;
                let mut sflags = field(tf & 0x400 != 0, default_flags)?;
                if i == 0
                    && let Some(f) = first_flags
                {
                    sflags = f;
                }
                let cto_raw = field(tf & 0x800 != 0, 0)?;
                let cto = if version == 0 {
                    cto_raw.min(i32::MAX as u32) as i32
                } else {
                    cto_raw as i32
                };
                out.samples.push((
                    id,
                    Sample {
                        offset: next,
                        size,
                        duration,
                        cto,
                        sync: sflags & 0x0001_0000 == 0,
                    },
                ));
                next += u64::from(size);
            }
        }
        data_end = next;
    }
    Ok(out)
}
