//! A progressive MP4 writer for one H.264 or H.265 video track (GetClip's output), pure.
//!
//! Layout: `ftyp`, `moov` (one `trak` with a complete sample table, one chunk), `mdat`.
//! Samples arrive in decode order with their presentation times, as Matroska stores them;
//! decode times are the sorted presentation times, so B-frames get `ctts` offsets.

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

/// One access unit in decode order, AVCC (length-prefixed) as in Matroska and MP4.
pub struct Sample<'a> {
    pub pts_ms: i64,
    pub keyframe: bool,
    pub data: &'a [u8],
}

const TIMESCALE: u32 = 1000;

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

/// Writes the MP4. `samples` must be non-empty.
pub fn write(track: &VideoTrack<'_>, samples: &[Sample<'_>]) -> Vec<u8> {
    let (dts, durations) = timing(samples);
    let base_pts = samples.iter().map(|s| s.pts_ms).min().unwrap_or(0);
    let duration: u64 = durations.iter().map(|&d| u64::from(d)).sum();
    let duration32 = duration.min(u64::from(u32::MAX)) as u32;

    let ftyp = boxed(
        b"ftyp",
        &[
            b"isom",
            &0x200u32.to_be_bytes(),
            b"isomiso2mp41",
            track.codec.boxes().0,
        ],
    );
    let mdat_payload: usize = samples.iter().map(|s| s.data.len()).sum();

    let build_moov = |chunk_offset: u64| -> Vec<u8> {
        let mvhd = full(
            b"mvhd",
            0,
            0,
            &Buf::default()
                .u32(0)
                .u32(0)
                .u32(TIMESCALE)
                .u32(duration32)
                .u32(0x0001_0000)
                .u16(0x0100)
                .bytes(&[0; 10])
                .matrix()
                .bytes(&[0; 24])
                .u32(2)
                .0,
        );
        let tkhd = full(
            b"tkhd",
            0,
            3,
            &Buf::default()
                .u32(0)
                .u32(0)
                .u32(1)
                .u32(0)
                .u32(duration32)
                .bytes(&[0; 8])
                .u16(0)
                .u16(0)
                .u16(0)
                .u16(0)
                .matrix()
                .u32(track.width << 16)
                .u32(track.height << 16)
                .0,
        );
        let mdhd = full(
            b"mdhd",
            0,
            0,
            &Buf::default()
                .u32(0)
                .u32(0)
                .u32(TIMESCALE)
                .u32(duration32)
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
                .bytes(b"vide")
                .bytes(&[0; 12])
                .bytes(b"VideoHandler\0")
                .0,
        );
        let vmhd = full(b"vmhd", 0, 1, &[0; 8]);
        let dinf = boxed(
            b"dinf",
            &[&full(
                b"dref",
                0,
                0,
                &Buf::default().u32(1).bytes(&full(b"url ", 0, 1, &[])).0,
            )],
        );

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
        let stsd = full(b"stsd", 0, 0, &Buf::default().u32(1).bytes(&entry).0);

        let mut runs: Vec<(u32, u32)> = Vec::new();
        for &d in &durations {
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

        let offsets: Vec<i32> = samples
            .iter()
            .zip(&dts)
            .map(|(s, &d)| (s.pts_ms - base_pts - d) as i32)
            .collect();
        let ctts = offsets.iter().any(|&o| o != 0).then(|| {
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

        let keys: Vec<u32> = samples
            .iter()
            .enumerate()
            .filter(|(_, s)| s.keyframe)
            .map(|(i, _)| i as u32 + 1)
            .collect();
        let stss = full(
            b"stss",
            0,
            0,
            &keys
                .iter()
                .fold(Buf::default().u32(keys.len() as u32), |b, &k| b.u32(k))
                .0,
        );
        let stsc = full(
            b"stsc",
            0,
            0,
            &Buf::default()
                .u32(1)
                .u32(1)
                .u32(samples.len() as u32)
                .u32(1)
                .0,
        );
        let stsz = full(
            b"stsz",
            0,
            0,
            &samples
                .iter()
                .fold(Buf::default().u32(0).u32(samples.len() as u32), |b, s| {
                    b.u32(s.data.len() as u32)
                })
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
        stbl_parts.extend([&stss[..], &stsc, &stsz, &stco]);
        let stbl = boxed(b"stbl", &stbl_parts);
        let minf = boxed(b"minf", &[&vmhd, &dinf, &stbl]);
        let mdia = boxed(b"mdia", &[&mdhd, &hdlr, &minf]);
        let trak = boxed(b"trak", &[&tkhd, &mdia]);
        boxed(b"moov", &[&mvhd, &trak])
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
    for s in samples {
        out.extend_from_slice(s.data);
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
        );
        assert!(mp4.windows(4).any(|w| w == b"ctts"));
    }
}
