//! Joins consecutive GetClip results (MP4s of one H.264 or H.265 track) into one fragmented MP4,
//! streaming: input arrives in chunks of any size, output leaves as soon as it is known, and
//! only box headers and sample tables are held (never the media). Pure.
//!
//! Inputs may be progressive with `moov` before `mdat` (kvs-local's, and the usual layout)
//! or fragmented (`moof` + `mdat` pairs); whether AWS's GetClip writes one or the other is not
//! documented, so both are read. A progressive input with its `mdat` first is refused.
//!
//! Output: `ftyp`, a `moov` with the first input's sample description (`stsd`, copied) and
//! `mvex`, then one `moof` + `mdat` per input fragment (a progressive input is one fragment).
//! Decode times continue from part to part. When a part's sample description differs (the
//! codec configuration changed inside the window), `Output::NextFile` says that the bytes
//! after it are a new file, starting with its own `ftyp` and `moov`.

use bytes::Bytes;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Mp4Error {
    #[error("MP4 part {part}: {reason}")]
    Invalid { part: usize, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Bytes(Bytes),
    /// The codec configuration changed: what follows is the next file.
    NextFile,
}

/// Boxes held whole (`moov`, `moof`) may not exceed this.
const MAX_HELD_BOX: u64 = 64 * 1024 * 1024;
const TRACK_ID: u32 = 1;

/// One sample as the output needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    /// Byte offset in the input: absolute (progressive) or within the mdat payload (fragmented).
    offset: u64,
    size: u32,
    duration: u32,
    cto: i32,
    sync: bool,
}

/// The input's track: its description and timing, from `moov`.
#[derive(Debug, Clone, Default)]
struct Track {
    timescale: u32,
    stsd: Vec<u8>,
    width: u16,
    height: u16,
    /// Progressive inputs: the whole sample table.
    samples: Vec<Sample>,
    /// Fragmented inputs: `trex` defaults (duration, size, flags).
    trex: (u32, u32, u32),
}

enum State {
    /// Reading a box header (8 or 16 bytes).
    Header,
    /// Holding a whole box of this type and size.
    Hold { kind: [u8; 4], size: u64 },
    /// Skipping this many payload bytes.
    Skip(u64),
    /// Streaming an mdat payload: bytes left.
    Mdat { left: u64 },
}

pub struct Joiner {
    part: usize,
    state: State,
    buf: Vec<u8>,
    /// Absolute position in the current input.
    pos: u64,
    track: Option<Track>,
    /// The current output file's description (to notice codec changes) and timescale.
    out_stsd: Option<Vec<u8>>,
    out_timescale: u32,
    /// Decode time of the next output sample, in the output timescale.
    next_dts: u64,
    sequence: u32,
    /// Samples of the current fragment whose bytes are being copied: (start, end) in the
    /// input's coordinates, in order, and the index of the next one.
    copying: Vec<(u64, u64)>,
    copy_at: usize,
    /// Samples from the last `moof`, waiting for their `mdat`.
    pending: Vec<Sample>,
}

impl Default for Joiner {
    fn default() -> Self {
        Joiner {
            part: 0,
            state: State::Header,
            buf: Vec::new(),
            pos: 0,
            track: None,
            out_stsd: None,
            out_timescale: 0,
            next_dts: 0,
            sequence: 0,
            copying: Vec::new(),
            copy_at: 0,
            pending: Vec::new(),
        }
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes(s.try_into().unwrap()))
}
fn be64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_be_bytes(s.try_into().unwrap()))
}
fn be16(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes(s.try_into().unwrap()))
}

/// The child boxes of a box payload: (type, payload).
fn children(payload: &[u8]) -> Vec<([u8; 4], &[u8])> {
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

fn child<'a>(payload: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    children(payload)
        .into_iter()
        .find(|(k, _)| k == kind)
        .map(|(_, p)| p)
}

/// `stsd` as a whole box again (header + payload), to be copied into the output.
fn whole(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(payload.len() + 8);
    b.extend_from_slice(&((payload.len() + 8) as u32).to_be_bytes());
    b.extend_from_slice(kind);
    b.extend_from_slice(payload);
    b
}

impl Joiner {
    fn err(&self, reason: impl Into<String>) -> Mp4Error {
        Mp4Error::Invalid {
            part: self.part,
            reason: reason.into(),
        }
    }

    /// A new input (the next GetClip result) begins.
    pub fn begin_part(&mut self) {
        self.part += 1;
        self.state = State::Header;
        self.buf.clear();
        self.pos = 0;
        self.track = None;
        self.pending.clear();
        self.copying.clear();
        self.copy_at = 0;
    }

    /// The current input ended; it must have ended between boxes.
    pub fn end_part(&mut self) -> Result<(), Mp4Error> {
        match self.state {
            State::Header if self.buf.is_empty() => {}
            State::Skip(0) | State::Mdat { left: 0 } => {}
            // An mdat "to the end of the file" ends here.
            State::Mdat { left } if left > u64::MAX / 2 => {}
            _ => return Err(self.err("the input ends inside a box")),
        }
        if self.track.is_none() {
            return Err(self.err("no moov box"));
        }
        Ok(())
    }

    /// Feeds input bytes; returns what can be written now.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<Output>, Mp4Error> {
        let mut out = Vec::new();
        while !data.is_empty() {
            match self.state {
                State::Header => {
                    let want = if self.buf.len() >= 8 && be32(&self.buf, 0) == Some(1) {
                        16
                    } else {
                        8
                    };
                    let n = (want - self.buf.len()).min(data.len());
                    self.buf.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    self.pos += n as u64;
                    if self.buf.len() < want {
                        continue;
                    }
                    if want == 8 && be32(&self.buf, 0) == Some(1) {
                        continue; // a 64-bit size follows
                    }
                    let kind: [u8; 4] = self.buf[4..8].try_into().unwrap();
                    let size = match be32(&self.buf, 0).unwrap() {
                        1 => be64(&self.buf, 8).unwrap(),
                        0 if &kind == b"mdat" => u64::MAX,
                        0 => return Err(self.err("a box extending to the end of file")),
                        s => u64::from(s),
                    };
                    let header = want as u64;
                    if size < header {
                        return Err(self.err(format!(
                            "box {} of size {size}",
                            String::from_utf8_lossy(&kind)
                        )));
                    }
                    self.buf.clear();
                    let payload = size.saturating_sub(header);
                    self.state = match &kind {
                        b"moov" | b"moof" => {
                            if payload > MAX_HELD_BOX {
                                return Err(self.err(format!(
                                    "{} box of {payload} bytes",
                                    String::from_utf8_lossy(&kind)
                                )));
                            }
                            State::Hold {
                                kind,
                                size: payload,
                            }
                        }
                        b"mdat" => {
                            self.start_mdat(payload, &mut out)?;
                            State::Mdat { left: payload }
                        }
                        _ => State::Skip(payload),
                    };
                }
                State::Hold { kind, size } => {
                    let n = ((size as usize) - self.buf.len()).min(data.len());
                    self.buf.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    self.pos += n as u64;
                    if self.buf.len() as u64 == size {
                        let payload = std::mem::take(&mut self.buf);
                        if &kind == b"moov" {
                            self.read_moov(&payload, &mut out)?;
                        } else {
                            self.read_moof(&payload)?;
                        }
                        self.state = State::Header;
                    }
                }
                State::Skip(left) => {
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.pos += n;
                    self.state = if left == n {
                        State::Header
                    } else {
                        State::Skip(left - n)
                    };
                }
                State::Mdat { left } => {
                    let n = left.min(data.len() as u64) as usize;
                    self.copy(&data[..n], &mut out);
                    data = &data[n..];
                    self.pos += n as u64;
                    self.state = if left == n as u64 {
                        State::Header
                    } else {
                        State::Mdat {
                            left: left - n as u64,
                        }
                    };
                }
            }
            if let State::Skip(0) = self.state {
                self.state = State::Header;
            }
        }
        Ok(out)
    }

    fn read_moov(&mut self, moov: &[u8], out: &mut Vec<Output>) -> Result<(), Mp4Error> {
        let trak = children(moov)
            .into_iter()
            .filter(|(k, _)| k == b"trak")
            .map(|(_, p)| p)
            .find(|t| {
                child(t, b"mdia")
                    .and_then(|m| child(m, b"hdlr"))
                    .is_some_and(|h| h.get(8..12) == Some(b"vide"))
            })
            .ok_or_else(|| self.err("no video track"))?;
        let mdia = child(trak, b"mdia").ok_or_else(|| self.err("no mdia"))?;
        let mdhd = child(mdia, b"mdhd").ok_or_else(|| self.err("no mdhd"))?;
        let timescale = if mdhd.first() == Some(&1) {
            be32(mdhd, 20)
        } else {
            be32(mdhd, 12)
        }
        .filter(|t| *t > 0)
        .ok_or_else(|| self.err("no timescale"))?;
        let stbl = child(mdia, b"minf")
            .and_then(|m| child(m, b"stbl"))
            .ok_or_else(|| self.err("no stbl"))?;
        let stsd_payload = child(stbl, b"stsd").ok_or_else(|| self.err("no stsd"))?;
        // The first sample entry (a VisualSampleEntry: avc1, hvc1 …): width and height at
        // fixed places.
        let entry = stsd_payload.get(8..).unwrap_or_default();
        let (width, height) = (be16(entry, 32).unwrap_or(0), be16(entry, 34).unwrap_or(0));
        let trex = child(moov, b"mvex")
            .and_then(|m| child(m, b"trex"))
            .map(|t| {
                (
                    be32(t, 12).unwrap_or(0),
                    be32(t, 16).unwrap_or(0),
                    be32(t, 20).unwrap_or(0),
                )
            })
            .unwrap_or_default();
        let samples = sample_table(stbl).map_err(|r| self.err(r))?;
        let track = Track {
            timescale,
            stsd: whole(b"stsd", stsd_payload),
            width,
            height,
            samples,
            trex,
        };
        // A new output file at the start and whenever the description changes.
        if self.out_stsd.as_deref() != Some(&track.stsd[..]) {
            if self.out_stsd.is_some() {
                out.push(Output::NextFile);
                self.next_dts = 0;
                self.sequence = 0;
            }
            self.out_stsd = Some(track.stsd.clone());
            self.out_timescale = timescale;
            out.push(Output::Bytes(Bytes::from(init_segment(&track))));
        }
        if !track.samples.is_empty() {
            self.pending = track.samples.clone();
        }
        self.track = Some(track);
        Ok(())
    }

    fn read_moof(&mut self, moof: &[u8]) -> Result<(), Mp4Error> {
        let track = self
            .track
            .as_ref()
            .ok_or_else(|| self.err("moof before moov"))?;
        let traf = child(moof, b"traf").ok_or_else(|| self.err("moof without traf"))?;
        let tfhd = child(traf, b"tfhd").ok_or_else(|| self.err("traf without tfhd"))?;
        let flags = be32(tfhd, 0).unwrap_or(0) & 0xFF_FFFF;
        let mut at = 8; // version/flags, track id
        if flags & 0x1 != 0 {
            at += 8; // base data offset: samples are read from the mdat that follows
        }
        if flags & 0x2 != 0 {
            at += 4;
        }
        let mut default_duration = track.trex.0;
        let mut default_size = track.trex.1;
        let mut default_flags = track.trex.2;
        if flags & 0x8 != 0 {
            default_duration = be32(tfhd, at).unwrap_or(0);
            at += 4;
        }
        if flags & 0x10 != 0 {
            default_size = be32(tfhd, at).unwrap_or(0);
            at += 4;
        }
        if flags & 0x20 != 0 {
            default_flags = be32(tfhd, at).unwrap_or(0);
        }
        let mut samples = Vec::new();
        let mut offset = 0u64;
        for (kind, trun) in children(traf) {
            if &kind != b"trun" {
                continue;
            }
            let version = trun.first().copied().unwrap_or(0);
            let tf = be32(trun, 0).unwrap_or(0) & 0xFF_FFFF;
            let count = be32(trun, 4).ok_or_else(|| self.err("short trun"))?;
            let mut at = 8;
            if tf & 0x1 != 0 {
                at += 4; // data offset: samples are contiguous from the mdat's start
            }
            let mut first_flags = None;
            if tf & 0x4 != 0 {
                first_flags = be32(trun, at);
                at += 4;
            }
            for i in 0..count {
                let mut field = |present: bool, default: u32| -> Result<u32, Mp4Error> {
                    if !present {
                        return Ok(default);
                    }
                    let v = be32(trun, at).ok_or_else(|| self.err("short trun"))?;
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
                samples.push(Sample {
                    offset,
                    size,
                    duration,
                    cto,
                    sync: sflags & 0x0001_0000 == 0,
                });
                offset += u64::from(size);
            }
        }
        self.pending = samples;
        Ok(())
    }

    /// An mdat starts: write the output moof and mdat header for the samples it holds.
    fn start_mdat(&mut self, payload: u64, out: &mut Vec<Output>) -> Result<(), Mp4Error> {
        let Some(track) = self.track.as_ref() else {
            return Err(self.err("mdat before moov: a progressive MP4 must have its moov first"));
        };
        let samples = std::mem::take(&mut self.pending);
        if samples.is_empty() {
            self.copying.clear();
            self.copy_at = 0;
            return Ok(());
        }
        // Progressive offsets are absolute; fragmented ones count from the payload's start.
        let base = if track.samples.is_empty() {
            self.pos
        } else {
            0
        };
        let payload_start = self.pos;
        let mut ranges = Vec::with_capacity(samples.len());
        let mut last_end = payload_start;
        for s in &samples {
            let start = base + s.offset;
            let end = start + u64::from(s.size);
            if start < last_end || end > payload_start.saturating_add(payload) {
                return Err(self.err("samples out of order or outside the mdat"));
            }
            ranges.push((start, end));
            last_end = end;
        }
        let scale = |v: i64| -> i64 {
            if track.timescale == self.out_timescale {
                v
            } else {
                v * i64::from(self.out_timescale) / i64::from(track.timescale)
            }
        };
        self.sequence += 1;
        let total: u64 = samples.iter().map(|s| u64::from(s.size)).sum();
        let moof = fragment_header(
            self.sequence,
            self.next_dts,
            &samples
                .iter()
                .map(|s| Sample {
                    duration: scale(i64::from(s.duration)) as u32,
                    cto: scale(i64::from(s.cto)) as i32,
                    ..*s
                })
                .collect::<Vec<_>>(),
        );
        self.next_dts += samples
            .iter()
            .map(|s| scale(i64::from(s.duration)) as u64)
            .sum::<u64>();
        let mut head = moof;
        head.extend_from_slice(&((total + 8) as u32).to_be_bytes());
        head.extend_from_slice(b"mdat");
        out.push(Output::Bytes(Bytes::from(head)));
        self.copying = ranges;
        self.copy_at = 0;
        Ok(())
    }

    /// Copies the sample bytes of `data` (at `self.pos`) to the output.
    fn copy(&mut self, data: &[u8], out: &mut Vec<Output>) {
        let (from, to) = (self.pos, self.pos + data.len() as u64);
        while let Some(&(start, end)) = self.copying.get(self.copy_at) {
            if start >= to {
                break;
            }
            let (a, b) = (start.max(from), end.min(to));
            if a < b {
                out.push(Output::Bytes(Bytes::copy_from_slice(
                    &data[(a - from) as usize..(b - from) as usize],
                )));
            }
            if end <= to {
                self.copy_at += 1;
            } else {
                break;
            }
        }
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

fn mp4_box(kind: &[u8; 4], parts: &[&[u8]]) -> Vec<u8> {
    let len = 8 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_be_bytes());
    b.extend_from_slice(kind);
    for p in parts {
        b.extend_from_slice(p);
    }
    b
}

fn full_box(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
    let vf = ((u32::from(version) << 24) | flags).to_be_bytes();
    mp4_box(kind, &[&vf, body])
}

const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

fn words(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

/// `ftyp` + `moov` for a fragmented file with `track`'s sample description.
fn init_segment(track: &Track) -> Vec<u8> {
    // The sample entry's type (avc1, hvc1 …) is a brand of the file too.
    let entry = track.stsd.get(20..24).unwrap_or(b"avc1");
    let ftyp = mp4_box(
        b"ftyp",
        &[b"isom", &0x200u32.to_be_bytes(), b"isomiso5mp41", entry],
    );
    let mut mvhd = words(&[0, 0, 1000, 0, 0x0001_0000]);
    mvhd.extend_from_slice(&[0x01, 0x00, 0, 0]); // volume, reserved
    mvhd.extend_from_slice(&[0; 8]);
    mvhd.extend_from_slice(&words(&MATRIX));
    mvhd.extend_from_slice(&[0; 24]);
    mvhd.extend_from_slice(&(TRACK_ID + 1).to_be_bytes());
    let mvhd = full_box(b"mvhd", 0, 0, &mvhd);
    let mut tkhd = words(&[0, 0, TRACK_ID, 0, 0, 0, 0, 0, 0]);
    tkhd.extend_from_slice(&words(&MATRIX));
    tkhd.extend_from_slice(&words(&[
        u32::from(track.width) << 16,
        u32::from(track.height) << 16,
    ]));
    let tkhd = full_box(b"tkhd", 0, 3, &tkhd);
    let mdhd = full_box(
        b"mdhd",
        0,
        0,
        &[&words(&[0, 0, track.timescale, 0])[..], &[0x55, 0xC4, 0, 0]].concat(),
    );
    let hdlr = full_box(
        b"hdlr",
        0,
        0,
        &[&[0u8; 4][..], b"vide", &[0; 12], b"kvs-edge\0"].concat(),
    );
    let vmhd = full_box(b"vmhd", 0, 1, &[0; 8]);
    let dref = full_box(
        b"dref",
        0,
        0,
        &[&1u32.to_be_bytes()[..], &full_box(b"url ", 0, 1, &[])].concat(),
    );
    let dinf = mp4_box(b"dinf", &[&dref]);
    let empty = |kind: &[u8; 4]| full_box(kind, 0, 0, &0u32.to_be_bytes());
    let stsz = full_box(b"stsz", 0, 0, &[0; 8]);
    let stbl = mp4_box(
        b"stbl",
        &[
            &track.stsd,
            &empty(b"stts"),
            &empty(b"stsc"),
            &stsz,
            &empty(b"stco"),
        ],
    );
    let minf = mp4_box(b"minf", &[&vmhd, &dinf, &stbl]);
    let mdia = mp4_box(b"mdia", &[&mdhd, &hdlr, &minf]);
    let trak = mp4_box(b"trak", &[&tkhd, &mdia]);
    let trex = full_box(b"trex", 0, 0, &words(&[TRACK_ID, 1, 0, 0, 0]));
    let mvex = mp4_box(b"mvex", &[&trex]);
    let moov = mp4_box(b"moov", &[&mvhd, &trak, &mvex]);
    [ftyp, moov].concat()
}

/// `moof` for `samples`, whose bytes follow in the next `mdat`.
fn fragment_header(sequence: u32, base_dts: u64, samples: &[Sample]) -> Vec<u8> {
    let mfhd = full_box(b"mfhd", 0, 0, &sequence.to_be_bytes());
    // default-base-is-moof: data offsets count from this moof's start.
    let tfhd = full_box(b"tfhd", 0, 0x02_0000, &TRACK_ID.to_be_bytes());
    let tfdt = full_box(b"tfdt", 1, 0, &base_dts.to_be_bytes());
    let mut body = Vec::with_capacity(8 + 16 * samples.len());
    body.extend_from_slice(&(samples.len() as u32).to_be_bytes());
    body.extend_from_slice(&0u32.to_be_bytes()); // data offset, patched below
    for s in samples {
        let flags: u32 = if s.sync { 0x0200_0000 } else { 0x0101_0000 };
        body.extend_from_slice(&words(&[s.duration, s.size, flags, s.cto as u32]));
    }
    // version 1: signed composition offsets; data offset, duration, size, flags, cto present.
    let trun = full_box(b"trun", 1, 0x1 | 0x100 | 0x200 | 0x400 | 0x800, &body);
    let traf_len = 8 + tfhd.len() + tfdt.len() + trun.len();
    let moof_len = 8 + mfhd.len() + traf_len;
    let data_offset = (moof_len + 8) as u32; // past this moof and the mdat header
    let mut trun = trun;
    trun[16..20].copy_from_slice(&data_offset.to_be_bytes());
    let traf = mp4_box(b"traf", &[&tfhd, &tfdt, &trun]);
    mp4_box(b"moof", &[&mfhd, &traf])
}
