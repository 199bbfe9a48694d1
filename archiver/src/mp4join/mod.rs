//! Joins consecutive GetClip results (MP4s of one H.264 or H.265 video track and, when the
//! stream has it, one AAC or A-law audio track) into one fragmented MP4, streaming: input
//! arrives in chunks of any size, output leaves as soon as it is known, and only box headers
//! and sample tables are held (never the media). Pure.
//!
//! Inputs may be progressive with `moov` before `mdat` (kvs-local's, and the usual layout)
//! or fragmented (`moof` + `mdat` pairs); whether AWS's GetClip writes one or the other is not
//! documented, so both are read, with the tracks' samples in any interleaving. A progressive
//! input with its `mdat` first is refused.
//!
//! Output: `ftyp`, a `moov` with the first input's sample descriptions (`stsd`, copied; the
//! video is track 1, audio track 2) and `mvex`, then one `moof` + `mdat` per input fragment
//! (a progressive input is one fragment), the samples in their input order. Each part starts
//! where the previous part's video ended, each track as late as its edit list says (audio
//! that starts after the video stays after it) and never before that track's previous end.
//! When a part's tracks or sample descriptions differ (the codec configuration or the track
//! layout changed inside the window), `Output::NextFile` says that the bytes after it are a
//! new file, starting with its own `ftyp` and `moov`.

mod read;
mod write;

use bytes::Bytes;
use thiserror::Error;

use read::{Sample, Track, be32, be64, children};
use write::{OutSample, TrackDesc, TrackFragment};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Mp4Error {
    #[error("MP4 part {part}: {reason}")]
    Invalid { part: usize, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Bytes(Bytes),
    /// The codec configuration or the tracks changed: what follows is the next file.
    NextFile,
}

/// The kinds of track carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Video,
    Audio,
}

/// A sample of the current input and the index of its track.
type Placed = (usize, Sample);

/// Boxes held whole (`moov`, `moof`) may not exceed this.
const MAX_HELD_BOX: u64 = 64 * 1024 * 1024;

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

/// An output track: what the current file declares and where its decode time is.
struct OutTrack {
    kind: Kind,
    stsd: Vec<u8>,
    timescale: u32,
    /// Decode time of the next sample, in `timescale`.
    next_dts: u64,
}

pub struct Joiner {
    part: usize,
    state: State,
    buf: Vec<u8>,
    /// Absolute position in the current input, and where the box being read started.
    pos: u64,
    box_start: u64,
    /// The current input's tracks (video first), once its `moov` is read.
    tracks: Option<Vec<Track>>,
    /// The current output file's tracks, in the same order.
    out: Vec<OutTrack>,
    sequence: u32,
    /// Byte ranges of the current fragment's samples in the input, in order, and the index
    /// of the next one to copy.
    copying: Vec<(u64, u64)>,
    copy_at: usize,
    /// Samples waiting for their `mdat`: (track index, sample), absolute offsets.
    pending: Vec<Placed>,
    /// Where the current part starts (µs in the output), until its tracks are placed: at
    /// its `moov` when progressive, at its first `moof` when fragmented.
    part_start_us: Option<u64>,
    /// Fragmented parts: per track, its first `tfdt` and where that was placed in the
    /// output, so later fragments keep their gaps.
    anchors: Vec<Option<(u64, u64)>>,
}

impl Default for Joiner {
    fn default() -> Self {
        Joiner {
            part: 0,
            state: State::Header,
            buf: Vec::new(),
            pos: 0,
            box_start: 0,
            tracks: None,
            out: Vec::new(),
            sequence: 0,
            copying: Vec::new(),
            copy_at: 0,
            pending: Vec::new(),
            part_start_us: None,
            anchors: Vec::new(),
        }
    }
}

/// `v` in timescale `from` → timescale `to`.
fn rescale(v: u64, from: u32, to: u32) -> u64 {
    if from == to {
        v
    } else {
        (u128::from(v) * u128::from(to) / u128::from(from.max(1))) as u64
    }
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
        self.tracks = None;
        self.part_start_us = None;
        self.anchors.clear();
        self.pending.clear();
        self.copying.clear();
        self.copy_at = 0;
    }

    /// The current input ended; it must have ended between boxes, with every sample found.
    pub fn end_part(&mut self) -> Result<(), Mp4Error> {
        match self.state {
            State::Header if self.buf.is_empty() => {}
            State::Skip(0) | State::Mdat { left: 0 } => {}
            // An mdat "to the end of the file" ends here.
            State::Mdat { left } if left > u64::MAX / 2 => {}
            _ => return Err(self.err("the input ends inside a box")),
        }
        if self.tracks.is_none() {
            return Err(self.err("no moov box"));
        }
        if !self.pending.is_empty() {
            return Err(self.err(format!(
                "{} samples lie outside every mdat",
                self.pending.len()
            )));
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
                    self.box_start = self.pos - header;
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
        let movie_timescale = read::movie_timescale(moov);
        let mut video = None;
        let mut audio = None;
        for (kind, trak) in children(moov) {
            if &kind != b"trak" {
                continue;
            }
            let track = read::track(trak, moov, movie_timescale).map_err(|r| self.err(r))?;
            match track {
                Some(t) if t.kind == Kind::Video && video.is_none() => video = Some(t),
                Some(t) if t.kind == Kind::Audio && audio.is_none() => audio = Some(t),
                _ => {}
            }
        }
        let video = video.ok_or_else(|| self.err("no video track"))?;
        let tracks: Vec<Track> = std::iter::once(video).chain(audio).collect();
        // A new output file at the start and whenever the tracks or descriptions change.
        let same = self.out.len() == tracks.len()
            && self
                .out
                .iter()
                .zip(&tracks)
                .all(|(o, t)| o.kind == t.kind && o.stsd == t.stsd);
        if !same {
            if !self.out.is_empty() {
                out.push(Output::NextFile);
                self.sequence = 0;
            }
            self.out = tracks
                .iter()
                .map(|t| OutTrack {
                    kind: t.kind,
                    stsd: t.stsd.clone(),
                    timescale: t.timescale,
                    next_dts: 0,
                })
                .collect();
            let descs: Vec<TrackDesc> = tracks
                .iter()
                .map(|t| TrackDesc {
                    kind: t.kind,
                    timescale: t.timescale,
                    stsd: &t.stsd,
                    width: t.width,
                    height: t.height,
                })
                .collect();
            out.push(Output::Bytes(Bytes::from(write::init_segment(&descs))));
        }
        // The part starts where the video ended.
        self.part_start_us = Some(rescale(
            self.out[0].next_dts,
            self.out[0].timescale,
            1_000_000,
        ));
        if tracks.iter().any(|t| !t.samples.is_empty()) {
            // Progressive: each track as late as its edit list says.
            let delays: Vec<u64> = tracks.iter().map(|t| t.delay_us).collect();
            self.place_tracks(&delays);
        }
        self.pending = tracks
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.samples.iter().map(move |s| (i, *s)))
            .collect();
        self.tracks = Some(tracks);
        Ok(())
    }

    fn read_moof(&mut self, moof: &[u8]) -> Result<(), Mp4Error> {
        let tracks = self
            .tracks
            .as_ref()
            .ok_or_else(|| self.err("moof before moov"))?;
        let fragment = read::fragment(moof, self.box_start, |id| {
            tracks.iter().find(|t| t.id == id).map(|t| t.trex)
        })
        .map_err(|r| self.err(r))?;
        let index = |id: u32| tracks.iter().position(|t| t.id == id).unwrap_or(0);
        let found: Vec<(usize, Sample)> = fragment
            .samples
            .into_iter()
            .map(|(id, s)| (index(id), s))
            .collect();
        let dts_of = |t: &Track| {
            fragment
                .decode_times
                .iter()
                .find(|(id, _)| *id == t.id)
                .map(|(_, dts)| *dts)
        };
        let decode_times: Vec<Option<u64>> = tracks.iter().map(dts_of).collect();
        if self.part_start_us.is_some() {
            // The part's first fragment: its decode times say how the tracks line up.
            let delays: Vec<u64> = tracks
                .iter()
                .zip(&decode_times)
                .map(|(t, dts)| rescale(dts.unwrap_or(0), t.timescale, 1_000_000) + t.delay_us)
                .collect();
            self.place_tracks(&delays);
            self.anchors = decode_times
                .iter()
                .zip(&self.out)
                .map(|(dts, o)| dts.map(|d| (d, o.next_dts)))
                .collect();
        } else {
            // Later fragments keep their distance from the first (a gap stays a gap).
            for (i, dts) in decode_times.iter().enumerate() {
                let (Some(dts), Some(Some((first, placed)))) = (dts, self.anchors.get(i)) else {
                    continue;
                };
                let from = tracks[i].timescale;
                let o = &mut self.out[i];
                let at = placed + rescale(dts.saturating_sub(*first), from, o.timescale);
                o.next_dts = o.next_dts.max(at);
            }
        }
        self.pending.extend(found);
        Ok(())
    }

    /// Places the current part's tracks: each starts `delays[i]` (µs) after the earliest,
    /// from where the previous part's video ended, and never before its own previous end.
    fn place_tracks(&mut self, delays: &[u64]) {
        let Some(start_us) = self.part_start_us.take() else {
            return;
        };
        let earliest = delays.iter().copied().min().unwrap_or(0);
        for (o, delay) in self.out.iter_mut().zip(delays) {
            let at = rescale(start_us + delay - earliest, 1_000_000, o.timescale);
            o.next_dts = o.next_dts.max(at);
        }
    }

    /// An mdat starts: write the output moof and mdat header for the samples it holds.
    fn start_mdat(&mut self, payload: u64, out: &mut Vec<Output>) -> Result<(), Mp4Error> {
        let Some(tracks) = self.tracks.as_ref() else {
            return Err(self.err("mdat before moov: a progressive MP4 must have its moov first"));
        };
        let (start, end) = (self.pos, self.pos.saturating_add(payload));
        let (mut here, later): (Vec<Placed>, Vec<Placed>) =
            self.pending.iter().partition(|(_, s)| s.offset < end);
        self.pending = later;
        self.copying.clear();
        self.copy_at = 0;
        if here.is_empty() {
            return Ok(());
        }
        // Output in input order; each track's samples must already be in that order.
        here.sort_by_key(|(_, s)| s.offset);
        let mut last_end = start;
        let mut last_of_track = vec![0u64; tracks.len()];
        for (t, s) in &here {
            let s_end = s.offset + u64::from(s.size);
            if s.offset < last_end || s_end > end || s.offset < last_of_track[*t] {
                return Err(self.err("samples out of order or outside the mdat"));
            }
            last_end = s_end;
            last_of_track[*t] = s_end;
        }
        // Runs of one track's consecutive samples become that track's truns.
        let mut fragments: Vec<TrackFragment> = self
            .out
            .iter()
            .enumerate()
            .map(|(i, o)| TrackFragment {
                track_id: i as u32 + 1,
                base_dts: o.next_dts,
                runs: Vec::new(),
            })
            .collect();
        let mut at = 0u64;
        let mut ranges = Vec::with_capacity(here.len());
        let mut previous: Option<usize> = None;
        for (t, s) in &here {
            let (from, to) = (tracks[*t].timescale, self.out[*t].timescale);
            let scale = |v: i64| {
                if from == to {
                    v
                } else {
                    v * i64::from(to) / i64::from(from.max(1))
                }
            };
            let sample = OutSample {
                duration: scale(i64::from(s.duration)) as u32,
                size: s.size,
                cto: scale(i64::from(s.cto)) as i32,
                sync: s.sync,
            };
            self.out[*t].next_dts += u64::from(sample.duration);
            let runs = &mut fragments[*t].runs;
            match runs.last_mut() {
                Some((_, run)) if previous == Some(*t) => run.push(sample),
                _ => runs.push((at, vec![sample])),
            }
            previous = Some(*t);
            ranges.push((s.offset, s.offset + u64::from(s.size)));
            at += u64::from(s.size);
        }
        fragments.retain(|f| !f.runs.is_empty());
        self.sequence += 1;
        let mut head = write::fragment_header(self.sequence, &fragments);
        head.extend_from_slice(&((at + 8) as u32).to_be_bytes());
        head.extend_from_slice(b"mdat");
        out.push(Output::Bytes(Bytes::from(head)));
        self.copying = ranges;
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
