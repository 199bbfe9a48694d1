//! A progressive MP4 writer for GetClip's output, pure: one H.264 or H.265 video track and,
//! when the fragments carry it, one audio track (AAC or G.711 A-law).
//!
//! Layout: `ftyp`, `moov` (a `trak` per track, each with a complete sample table and one
//! chunk), `mdat` (the video's samples, then the audio's). Video samples arrive in decode
//! order with their presentation times, as Matroska stores them; decode times are the sorted
//! presentation times, so B-frames get `ctts` offsets. Audio is timed in its own sample rate
//! (an AAC frame is 1024 samples, A-law one byte per sample and channel) and starts where its
//! first frame does, through an edit list.

/// The video track description: its codec, decoder configuration record (AVC or HEVC, the
/// Matroska CodecPrivate as it is) and picture size.
pub struct VideoTrack<'a> {
    pub width: u32,
    pub height: u32,
    pub codec: Codec,
    pub config: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// `avc1` with `avcC`.
    H264,
    /// `hvc1` with `hvcC` (parameter sets in the record, as KVS's CodecPrivate has them).
    H265,
}

impl Codec {
    fn boxes(self) -> (&'static [u8; 4], &'static [u8; 4]) {
        match self {
            Codec::H264 => (b"avc1", b"avcC"),
            Codec::H265 => (b"hvc1", b"hvcC"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    /// `mp4a` with an `esds` carrying the AudioSpecificConfig.
    Aac,
    /// `alaw` (one byte per sample and channel).
    Alaw,
}

/// The audio track description.
pub struct AudioTrack<'a> {
    pub codec: AudioCodec,
    /// The AudioSpecificConfig for AAC; unused for A-law.
    pub config: &'a [u8],
    pub rate: u32,
    pub channels: u16,
}

/// One access unit (video in decode order, AVCC/HVCC as in Matroska and MP4) or audio frame.
pub struct Sample<'a> {
    pub pts_ms: i64,
    pub keyframe: bool,
    pub data: &'a [u8],
}

const TIMESCALE: u32 = 1000;
const VIDEO_ID: u32 = 1;
const AUDIO_ID: u32 = 2;

fn boxed(kind: &[u8; 4], parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = 8 + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.extend_from_slice(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

fn full(kind: &[u8; 4], version: u8, flags: u32, body: &[u8]) -> Vec<u8> {
    let vf = (u32::from(version) << 24 | flags).to_be_bytes();
    boxed(kind, &[&vf, body])
}

#[derive(Default)]
struct Buf(Vec<u8>);
impl Buf {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    fn matrix(self) -> Self {
        [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000]
            .iter()
            .fold(self, |b, &v| b.u32(v))
    }
}

/// Decode times and durations for samples given in decode order with presentation times.
fn timing(samples: &[Sample<'_>]) -> (Vec<i64>, Vec<u32>) {
    let mut sorted: Vec<i64> = samples.iter().map(|s| s.pts_ms).collect();
    sorted.sort_unstable();
    let base = sorted.first().copied().unwrap_or(0);
    let dts: Vec<i64> = sorted.iter().map(|t| t - base).collect();
    let mut durations: Vec<u32> = dts
        .windows(2)
        .map(|w| (w[1] - w[0]).max(0) as u32)
        .collect();
    let typical = if durations.is_empty() {
        33
    } else {
        (durations.iter().map(|&d| u64::from(d)).sum::<u64>() / durations.len() as u64).max(1)
            as u32
    };
    durations.push(typical);
    (dts, durations)
}

/// `stsz`'s two forms.
enum Sizes {
    /// One size per sample.
    Each(Vec<u32>),
    /// `count` samples of `size` bytes (PCM: a sample is one sample per channel).
    Fixed { size: u32, count: u32 },
}

/// What a `trak` is made of, whatever its kind.
struct TrackPlan<'a> {
    id: u32,
    /// Media timescale (ms for video, the sample rate for audio).
    timescale: u32,
    durations: Vec<u32>,
    /// Composition offsets (video with B-frames), in the media timescale.
    cts: Option<Vec<i32>>,
    /// 1-based sync samples; `None` when every sample is one.
    sync: Option<Vec<u32>>,
    /// Sample sizes, one per sample.
    sizes: Sizes,
    /// `stsd`'s one entry.
    entry: Vec<u8>,
    handler: &'a [u8; 4],
    handler_name: &'a [u8],
    /// `vmhd` or `smhd`.
    media_header: Vec<u8>,
    /// tkhd width and height (0 for audio) and volume.
    size: (u32, u32),
    volume: u16,
    /// The track starts this late (movie timescale): an empty edit first.
    delay_ms: u32,
}

impl TrackPlan<'_> {
    fn media_duration(&self) -> u64 {
        self.durations.iter().map(|&d| u64::from(d)).sum()
    }

    /// The track's length in movie time (ms), delay included.
    fn movie_duration(&self) -> u64 {
        self.media_duration() * u64::from(TIMESCALE) / u64::from(self.timescale)
            + u64::from(self.delay_ms)
    }

    fn trak(&self, chunk_offset: u64) -> Vec<u8> {
        let movie = self.movie_duration().min(u64::from(u32::MAX)) as u32;
        let media = self.media_duration().min(u64::from(u32::MAX)) as u32;
        let tkhd = full(
            b"tkhd",
            0,
            3,
            &Buf::default()
                .u32(0)
                .u32(0)
                .u32(self.id)
                .u32(0)
                .u32(movie)
                .bytes(&[0; 8])
                .u16(0)
                .u16(0)
                .u16(self.volume)
                .u16(0)
                .matrix()
                .u32(self.size.0 << 16)
                .u32(self.size.1 << 16)
                .0,
        );
        let mut edits = Buf::default().u32(if self.delay_ms > 0 { 2 } else { 1 });
        if self.delay_ms > 0 {
            edits = edits.u32(self.delay_ms).i32(-1).u32(0x0001_0000);
        }
        let edits = edits.u32(movie - self.delay_ms).i32(0).u32(0x0001_0000);
        let edts = boxed(b"edts", &[&full(b"elst", 0, 0, &edits.0)]);
        let mdhd = full(
            b"mdhd",
            0,
            0,
            &Buf::default()
                .u32(0)
                .u32(0)
                .u32(self.timescale)
                .u32(media)
                .u16(0x55C4)
                .u16(0)
                .0,
        );
        let hdlr = full(
            b"hdlr",
            0,
            0,
            &Buf::default()
                .u32(0)
                .bytes(self.handler)
                .bytes(&[0; 12])
                .bytes(self.handler_name)
                .0,
        );
        let dinf = boxed(
            b"dinf",
            &[&full(
                b"dref",
                0,
                0,
                &Buf::default().u32(1).bytes(&full(b"url ", 0, 1, &[])).0,
            )],
        );
        let stsd = full(b"stsd", 0, 0, &Buf::default().u32(1).bytes(&self.entry).0);
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for &d in &self.durations {
            match runs.last_mut() {
                Some((count, delta)) if *delta == d => *count += 1,
                _ => runs.push((1, d)),
            }
        }
        let stts = full(
            b"stts",
            0,
            0,
            &runs
                .iter()
                .fold(Buf::default().u32(runs.len() as u32), |b, &(c, d)| {
                    b.u32(c).u32(d)
                })
                .0,
        );
        let ctts = self.cts.as_ref().map(|offsets| {
            full(
                b"ctts",
                1,
                0,
                &offsets
                    .iter()
                    .fold(Buf::default().u32(offsets.len() as u32), |b, &o| {
                        b.u32(1).i32(o)
                    })
                    .0,
            )
        });
        let stss = self.sync.as_ref().map(|keys| {
            full(
                b"stss",
                0,
                0,
                &keys
                    .iter()
                    .fold(Buf::default().u32(keys.len() as u32), |b, &k| b.u32(k))
                    .0,
            )
        });
        let (fixed, n, table) = match &self.sizes {
            Sizes::Each(sizes) => (0, sizes.len() as u32, sizes.as_slice()),
            Sizes::Fixed { size, count } => (*size, *count, &[][..]),
        };
        let stsc = full(b"stsc", 0, 0, &Buf::default().u32(1).u32(1).u32(n).u32(1).0);
        let stsz = full(
            b"stsz",
            0,
            0,
            &table
                .iter()
                .fold(Buf::default().u32(fixed).u32(n), |b, &s| b.u32(s))
                .0,
        );
        let stco = if chunk_offset > u64::from(u32::MAX) {
            full(
                b"co64",
                0,
                0,
                &Buf::default().u32(1).bytes(&chunk_offset.to_be_bytes()).0,
            )
        } else {
            full(
                b"stco",
                0,
                0,
                &Buf::default().u32(1).u32(chunk_offset as u32).0,
            )
        };
        let mut stbl_parts: Vec<&[u8]> = vec![&stsd, &stts];
        if let Some(c) = &ctts {
            stbl_parts.push(c);
        }
        if let Some(k) = &stss {
            stbl_parts.push(k);
        }
        stbl_parts.extend([&stsc[..], &stsz, &stco]);
        let stbl = boxed(b"stbl", &stbl_parts);
        let minf = boxed(b"minf", &[&self.media_header, &dinf, &stbl]);
        let mdia = boxed(b"mdia", &[&mdhd, &hdlr, &minf]);
        boxed(b"trak", &[&tkhd, &edts, &mdia])
    }
}

fn video_plan<'a>(track: &VideoTrack<'_>, samples: &[Sample<'_>]) -> TrackPlan<'a> {
    let (dts, durations) = timing(samples);
    let base_pts = samples.iter().map(|s| s.pts_ms).min().unwrap_or(0);
    let offsets: Vec<i32> = samples
        .iter()
        .zip(&dts)
        .map(|(s, &d)| (s.pts_ms - base_pts - d) as i32)
        .collect();
    let mut compressor = [0u8; 32];
    let name = b"kvs-local";
    compressor[0] = name.len() as u8;
    compressor[1..=name.len()].copy_from_slice(name);
    let (entry_kind, config_kind) = track.codec.boxes();
    let entry = boxed(
        entry_kind,
        &[
            &Buf::default()
                .bytes(&[0; 6])
                .u16(1)
                .bytes(&[0; 16])
                .u16(track.width as u16)
                .u16(track.height as u16)
                .u32(0x0048_0000)
                .u32(0x0048_0000)
                .u32(0)
                .u16(1)
                .bytes(&compressor)
                .u16(0x0018)
                .u16(0xFFFF)
                .0,
            &boxed(config_kind, &[track.config]),
        ],
    );
    TrackPlan {
        id: VIDEO_ID,
        timescale: TIMESCALE,
        durations,
        cts: offsets.iter().any(|&o| o != 0).then_some(offsets),
        sync: Some(
            samples
                .iter()
                .enumerate()
                .filter(|(_, s)| s.keyframe)
                .map(|(i, _)| i as u32 + 1)
                .collect(),
        ),
        sizes: Sizes::Each(samples.iter().map(|s| s.data.len() as u32).collect()),
        entry,
        handler: b"vide",
        handler_name: b"VideoHandler\0",
        media_header: full(b"vmhd", 0, 1, &[0; 8]),
        size: (track.width, track.height),
        volume: 0,
        delay_ms: 0,
    }
}

/// An MPEG-4 descriptor: tag, length (one byte: ours are short), body.
fn descriptor(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag, body.len() as u8];
    out.extend_from_slice(body);
    out
}

fn audio_plan<'a>(track: &AudioTrack<'_>, samples: &[Sample<'_>], delay_ms: u32) -> TrackPlan<'a> {
    let channels = track.channels.max(1);
    // AAC: a sample is a frame of 1024. A-law is PCM, which MP4 (as QuickTime before it)
    // describes one sample per time step: a byte per channel, each lasting 1.
    let (durations, sizes) = match track.codec {
        AudioCodec::Aac => (
            vec![1024; samples.len()],
            Sizes::Each(samples.iter().map(|s| s.data.len() as u32).collect()),
        ),
        AudioCodec::Alaw => {
            let bytes: usize = samples.iter().map(|s| s.data.len()).sum();
            let count = (bytes / usize::from(channels)) as u32;
            (
                vec![1; count as usize],
                Sizes::Fixed {
                    size: u32::from(channels),
                    count,
                },
            )
        }
    };
    let base = Buf::default()
        .bytes(&[0; 6])
        .u16(1)
        .bytes(&[0; 8])
        .u16(channels)
        .u16(16)
        .u16(0)
        .u16(0)
        .u32(track.rate << 16);
    let entry = match track.codec {
        AudioCodec::Aac => {
            let decoder_config = Buf::default()
                .u8(0x40) // objectTypeIndication: MPEG-4 audio
                .u8(0x15) // streamType audio, upstream 0, reserved 1
                .bytes(&[0, 0, 0]) // bufferSizeDB
                .u32(0)
                .u32(0)
                .bytes(&descriptor(0x05, track.config));
            let es = Buf::default()
                .u16(AUDIO_ID as u16)
                .u8(0)
                .bytes(&descriptor(0x04, &decoder_config.0))
                .bytes(&descriptor(0x06, &[0x02]));
            let esds = full(b"esds", 0, 0, &descriptor(0x03, &es.0));
            boxed(b"mp4a", &[&base.0, &esds])
        }
        AudioCodec::Alaw => boxed(b"alaw", &[&base.0]),
    };
    TrackPlan {
        id: AUDIO_ID,
        timescale: track.rate.max(1),
        durations,
        cts: None,
        sync: None,
        sizes,
        entry,
        handler: b"soun",
        handler_name: b"SoundHandler\0",
        media_header: full(b"smhd", 0, 0, &[0; 4]),
        size: (0, 0),
        volume: 0x0100,
        delay_ms,
    }
}

/// Writes the MP4. `samples` must be non-empty; `audio`, when given, is the audio track and
/// its frames. Whichever track starts later starts through an edit list, so the two keep
/// the producer's alignment.
pub fn write(
    track: &VideoTrack<'_>,
    samples: &[Sample<'_>],
    audio: Option<(&AudioTrack<'_>, &[Sample<'_>])>,
) -> Vec<u8> {
    let audio = audio.filter(|(_, f)| !f.is_empty());
    let video_start = samples.iter().map(|s| s.pts_ms).min().unwrap_or(0);
    let start = audio.map_or(video_start, |(_, f)| video_start.min(f[0].pts_ms));
    let mut video = video_plan(track, samples);
    video.delay_ms = (video_start - start) as u32;
    let mut plans = vec![video];
    let mut payloads: Vec<&[Sample<'_>]> = vec![samples];
    if let Some((a, frames)) = audio {
        plans.push(audio_plan(a, frames, (frames[0].pts_ms - start) as u32));
        payloads.push(frames);
    }
    let duration = plans
        .iter()
        .map(TrackPlan::movie_duration)
        .max()
        .unwrap_or(0)
        .min(u64::from(u32::MAX)) as u32;
    let brand = track.codec.boxes().0;
    let ftyp = boxed(
        b"ftyp",
        &[b"isom", &0x200u32.to_be_bytes(), b"isomiso2mp41", brand],
    );
    let lens: Vec<usize> = payloads
        .iter()
        .map(|p| p.iter().map(|s| s.data.len()).sum())
        .collect();
    let mdat_payload: usize = lens.iter().sum();
    let build_moov = |first_chunk: u64| -> Vec<u8> {
        let mvhd = full(
            b"mvhd",
            0,
            0,
            &Buf::default()
                .u32(0)
                .u32(0)
                .u32(TIMESCALE)
                .u32(duration)
                .u32(0x0001_0000)
                .u16(0x0100)
                .bytes(&[0; 10])
                .matrix()
                .bytes(&[0; 24])
                .u32(plans.len() as u32 + 1)
                .0,
        );
        let mut offset = first_chunk;
        let mut traks = Vec::new();
        for (plan, len) in plans.iter().zip(&lens) {
            traks.push(plan.trak(offset));
            offset += *len as u64;
        }
        let mut parts: Vec<&[u8]> = vec![&mvhd];
        parts.extend(traks.iter().map(Vec::as_slice));
        boxed(b"moov", &parts)
    };
    let moov_len = build_moov(0).len();
    let mdat_header_len = if mdat_payload + 8 > u32::MAX as usize {
        16
    } else {
        8
    };
    let moov = build_moov((ftyp.len() + moov_len + mdat_header_len) as u64);

    let mut out = Vec::with_capacity(ftyp.len() + moov.len() + mdat_header_len + mdat_payload);
    out.extend_from_slice(&ftyp);
    out.extend_from_slice(&moov);
    if mdat_header_len == 16 {
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(b"mdat");
        out.extend_from_slice(&((mdat_payload + 16) as u64).to_be_bytes());
    } else {
        out.extend_from_slice(&((mdat_payload + 8) as u32).to_be_bytes());
        out.extend_from_slice(b"mdat");
    }
    for payload in payloads {
        for s in payload {
            out.extend_from_slice(s.data);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top_level_boxes(mp4: &[u8]) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos + 8 <= mp4.len() {
            let len = u32::from_be_bytes(mp4[pos..pos + 4].try_into().unwrap()) as usize;
            out.push((
                String::from_utf8_lossy(&mp4[pos + 4..pos + 8]).into_owned(),
                len,
            ));
            pos += len;
        }
        assert_eq!(pos, mp4.len(), "boxes tile the file");
        out
    }

    #[test]
    fn layout_and_chunk_offset() {
        let frames = [vec![0, 0, 0, 1, 0x65], vec![0, 0, 0, 1, 0x41]];
        let samples: Vec<Sample> = frames
            .iter()
            .enumerate()
            .map(|(i, d)| Sample {
                pts_ms: 1000 + 40 * i as i64,
                keyframe: i == 0,
                data: d,
            })
            .collect();
        let mp4 = write(
            &VideoTrack {
                width: 320,
                height: 240,
                codec: Codec::H264,
                config: &[1, 77, 0, 30, 0xFF, 0xE0, 0],
            },
            &samples,
            None,
        );
        let boxes = top_level_boxes(&mp4);
        let kinds: Vec<&str> = boxes.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(kinds, ["ftyp", "moov", "mdat"]);
        let stco = mp4.windows(4).position(|w| w == b"stco").unwrap();
        let offset = u32::from_be_bytes(mp4[stco + 12..stco + 16].try_into().unwrap()) as usize;
        assert_eq!(&mp4[offset..offset + 5], &frames[0][..]);
        assert!(
            !mp4.windows(4).any(|w| w == b"ctts"),
            "no B-frames, no ctts"
        );
    }

    #[test]
    fn b_frames_get_composition_offsets() {
        // decode order I P B with presentation 0, 80, 40
        let d = [1u8];
        let samples = [
            Sample {
                pts_ms: 0,
                keyframe: true,
                data: &d,
            },
            Sample {
                pts_ms: 80,
                keyframe: false,
                data: &d,
            },
            Sample {
                pts_ms: 40,
                keyframe: false,
                data: &d,
            },
        ];
        let (dts, durations) = timing(&samples);
        assert_eq!(dts, [0, 40, 80]);
        assert_eq!(durations, [40, 40, 40]);
        let mp4 = write(
            &VideoTrack {
                width: 2,
                height: 2,
                codec: Codec::H264,
                config: &[1],
            },
            &samples,
            None,
        );
        assert!(mp4.windows(4).any(|w| w == b"ctts"));
    }
}
