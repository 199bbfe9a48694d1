//! Writing the joined file: the initialization segment (`ftyp` + `moov` with one `trak` per
//! output track and `mvex`) and each fragment's `moof`.

use super::Kind;

/// An output track as the initialization segment describes it. Output track ids are the
/// position in the list plus one: video 1, audio 2.
pub(super) struct TrackDesc<'a> {
    pub kind: Kind,
    pub timescale: u32,
    pub stsd: &'a [u8],
    pub width: u16,
    pub height: u16,
}

/// One output sample's `trun` fields.
#[derive(Debug, Clone, Copy)]
pub(super) struct OutSample {
    pub duration: u32,
    pub size: u32,
    pub cto: i32,
    pub sync: bool,
}

/// One output track's part of a fragment: its decode time and runs of samples, each run
/// contiguous in the `mdat` at the given offset from the mdat payload's start.
pub(super) struct TrackFragment {
    pub track_id: u32,
    pub base_dts: u64,
    pub runs: Vec<(u64, Vec<OutSample>)>,
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

fn trak(id: u32, t: &TrackDesc<'_>) -> Vec<u8> {
    let volume = match t.kind {
        Kind::Video => 0,
        Kind::Audio => 0x0100_0000,
    };
    let mut tkhd = words(&[0, 0, id, 0, 0, 0, 0, 0, volume]);
    tkhd.extend_from_slice(&words(&MATRIX));
    tkhd.extend_from_slice(&words(&[
        u32::from(t.width) << 16,
        u32::from(t.height) << 16,
    ]));
    let tkhd = full_box(b"tkhd", 0, 3, &tkhd);
    let mdhd = full_box(
        b"mdhd",
        0,
        0,
        &[&words(&[0, 0, t.timescale, 0])[..], &[0x55, 0xC4, 0, 0]].concat(),
    );
    let (handler, media_header) = match t.kind {
        Kind::Video => (b"vide", full_box(b"vmhd", 0, 1, &[0; 8])),
        Kind::Audio => (b"soun", full_box(b"smhd", 0, 0, &[0; 4])),
    };
    let hdlr = full_box(
        b"hdlr",
        0,
        0,
        &[&[0u8; 4][..], handler, &[0; 12], b"kvs-edge\0"].concat(),
    );
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
            t.stsd,
            &empty(b"stts"),
            &empty(b"stsc"),
            &stsz,
            &empty(b"stco"),
        ],
    );
    let minf = mp4_box(b"minf", &[&media_header, &dinf, &stbl]);
    let mdia = mp4_box(b"mdia", &[&mdhd, &hdlr, &minf]);
    mp4_box(b"trak", &[&tkhd, &mdia])
}

/// `ftyp` + `moov` for a fragmented file of `tracks` (the video first).
pub(super) fn init_segment(tracks: &[TrackDesc<'_>]) -> Vec<u8> {
    // The video sample entry's type (avc1, hvc1 …) is a brand of the file too.
    let entry = tracks
        .first()
        .and_then(|t| t.stsd.get(20..24))
        .unwrap_or(b"avc1");
    let ftyp = mp4_box(
        b"ftyp",
        &[b"isom", &0x200u32.to_be_bytes(), b"isomiso5mp41", entry],
    );
    let mut mvhd = words(&[0, 0, 1000, 0, 0x0001_0000]);
    mvhd.extend_from_slice(&[0x01, 0x00, 0, 0]); // volume, reserved
    mvhd.extend_from_slice(&[0; 8]);
    mvhd.extend_from_slice(&words(&MATRIX));
    mvhd.extend_from_slice(&[0; 24]);
    mvhd.extend_from_slice(&(tracks.len() as u32 + 1).to_be_bytes());
    let mvhd = full_box(b"mvhd", 0, 0, &mvhd);
    let traks: Vec<Vec<u8>> = tracks
        .iter()
        .enumerate()
        .map(|(i, t)| trak(i as u32 + 1, t))
        .collect();
    let trexs: Vec<Vec<u8>> = (1..=tracks.len() as u32)
        .map(|id| full_box(b"trex", 0, 0, &words(&[id, 1, 0, 0, 0])))
        .collect();
    let trex_refs: Vec<&[u8]> = trexs.iter().map(Vec::as_slice).collect();
    let mvex = mp4_box(b"mvex", &trex_refs);
    let mut parts: Vec<&[u8]> = vec![&mvhd];
    parts.extend(traks.iter().map(Vec::as_slice));
    parts.push(&mvex);
    let moov = mp4_box(b"moov", &parts);
    [ftyp, moov].concat()
}

/// `moof` for `tracks`, whose sample bytes follow in the next `mdat`.
pub(super) fn fragment_header(sequence: u32, tracks: &[TrackFragment]) -> Vec<u8> {
    // The moof's length does not depend on the data offsets: write it once to learn it.
    let build = |payload_start: u64| -> Vec<u8> {
        let mfhd = full_box(b"mfhd", 0, 0, &sequence.to_be_bytes());
        let mut trafs = Vec::with_capacity(tracks.len());
        for t in tracks {
            // default-base-is-moof: data offsets count from this moof's start.
            let tfhd = full_box(b"tfhd", 0, 0x02_0000, &t.track_id.to_be_bytes());
            let tfdt = full_box(b"tfdt", 1, 0, &t.base_dts.to_be_bytes());
            let mut parts = vec![tfhd, tfdt];
            for (offset, samples) in &t.runs {
                let mut body = Vec::with_capacity(8 + 16 * samples.len());
                body.extend_from_slice(&(samples.len() as u32).to_be_bytes());
                body.extend_from_slice(&((payload_start + offset) as u32).to_be_bytes());
                for s in samples {
                    let flags: u32 = if s.sync { 0x0200_0000 } else { 0x0101_0000 };
                    body.extend_from_slice(&words(&[s.duration, s.size, flags, s.cto as u32]));
                }
                // version 1: signed composition offsets; data offset, duration, size, flags
                // and cto present.
                parts.push(full_box(
                    b"trun",
                    1,
                    0x1 | 0x100 | 0x200 | 0x400 | 0x800,
                    &body,
                ));
            }
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            trafs.push(mp4_box(b"traf", &refs));
        }
        let mut parts: Vec<&[u8]> = vec![&mfhd];
        parts.extend(trafs.iter().map(Vec::as_slice));
        mp4_box(b"moof", &parts)
    };
    let len = build(0).len() as u64;
    build(len + 8) // past this moof and the mdat header
}
