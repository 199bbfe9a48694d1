//! H.264 bitstream helpers, pure: Annex B splitting into NAL units and access units, SPS
//! parsing (profile, level, picture size), and building and validating the
//! AVCDecoderConfigurationRecord (ISO/IEC 14496-15) that KVS stores as CodecPrivate.
//!
//! KVS does not check codec private data on ingest; bad SPS/PPS only surfaces later as
//! MissingCodecPrivateData / InvalidCodecPrivateData from GetClip or HLS. So we check here.

use thiserror::Error;

use crate::bits::{Bits, BitsError, rbsp};

pub const NAL_SLICE: u8 = 1;
pub const NAL_IDR: u8 = 5;
pub const NAL_SEI: u8 = 6;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum H264Error {
    #[error("no SPS seen before the first picture")]
    MissingSps,
    #[error("no PPS seen before the first picture")]
    MissingPps,
    #[error("SPS is malformed: {0}")]
    BadSps(String),
    #[error("AVCDecoderConfigurationRecord is invalid: {0}")]
    BadAvcc(String),
}

pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1F)
}

/// Splits an Annex B byte stream into NAL units (start codes removed).
pub fn split_annex_b(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::with_capacity(starts.len());
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map_or(data.len(), |&n| n - 3);
        // A 4-byte start code leaves a zero before the next 3-byte one; trailing zeros too.
        while end > s && data[end - 1] == 0 {
            end -= 1;
        }
        if end > s {
            nals.push(&data[s..end]);
        }
    }
    nals
}

fn is_vcl(t: u8) -> bool {
    (1..=5).contains(&t)
}

/// Groups the NAL units of an Annex B stream into access units: a new one starts at an AUD,
/// or at SPS/PPS/SEI or a slice with `first_mb_in_slice == 0` after a picture's slices.
pub fn access_units<'a>(nals: &[&'a [u8]]) -> Vec<Vec<&'a [u8]>> {
    let mut units: Vec<Vec<&[u8]>> = Vec::new();
    let mut current: Vec<&[u8]> = Vec::new();
    let mut has_picture = false;
    for &nal in nals {
        let t = nal_type(nal);
        let first_slice = is_vcl(t) && nal.get(1).is_some_and(|b| b & 0x80 != 0);
        let starts_new = t == NAL_AUD
            || (has_picture && (matches!(t, NAL_SPS | NAL_PPS | NAL_SEI) || first_slice));
        if starts_new && !current.is_empty() {
            units.push(std::mem::take(&mut current));
            has_picture = false;
        }
        has_picture |= is_vcl(t);
        current.push(nal);
    }
    if !current.is_empty() {
        units.push(current);
    }
    units
}

/// What we need from a sequence parameter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub width: u32,
    pub height: u32,
}

fn skip_scaling_list(b: &mut Bits<'_>, size: usize) -> Result<(), BitsError> {
    let (mut last, mut next) = (8i32, 8i32);
    for _ in 0..size {
        if next != 0 {
            next = (last + b.se()? + 256) % 256;
        }
        last = if next == 0 { last } else { next };
    }
    Ok(())
}

pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, H264Error> {
    if nal_type(nal) != NAL_SPS || nal.len() < 4 {
        return Err(H264Error::BadSps("not an SPS NAL unit".into()));
    }
    let data = rbsp(&nal[1..]);
    read_sps(&mut Bits::new(&data)).map_err(|e| H264Error::BadSps(e.into()))?
}

fn read_sps(b: &mut Bits<'_>) -> Result<Result<SpsInfo, H264Error>, BitsError> {
    let profile_idc = b.bits(8)? as u8;
    let constraint_flags = b.bits(8)? as u8;
    let level_idc = b.bits(8)? as u8;
    b.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = 0;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = b.ue()?;
        if chroma_format_idc == 3 {
            separate_colour_plane = b.bit()?;
        }
        b.ue()?; // bit_depth_luma_minus8
        b.ue()?; // bit_depth_chroma_minus8
        b.bit()?; // qpprime_y_zero_transform_bypass_flag
        if b.bit()? == 1 {
            for i in 0..if chroma_format_idc == 3 { 12 } else { 8 } {
                if b.bit()? == 1 {
                    skip_scaling_list(b, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    b.ue()?; // log2_max_frame_num_minus4
    match b.ue()? {
        0 => {
            b.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            b.bit()?;
            b.se()?;
            b.se()?;
            for _ in 0..b.ue()? {
                b.se()?;
            }
        }
        _ => {}
    }
    b.ue()?; // max_num_ref_frames
    b.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = b.ue()? + 1;
    let height_map_units = b.ue()? + 1;
    let frame_mbs_only = b.bit()?;
    if frame_mbs_only == 0 {
        b.bit()?; // mb_adaptive_frame_field_flag
    }
    b.bit()?; // direct_8x8_inference_flag
    let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0, 0, 0, 0);
    if b.bit()? == 1 {
        crop_l = b.ue()?;
        crop_r = b.ue()?;
        crop_t = b.ue()?;
        crop_b = b.ue()?;
    }
    let chroma_array_type = if separate_colour_plane == 1 {
        0
    } else {
        chroma_format_idc
    };
    let (crop_x, crop_y) = match chroma_array_type {
        1 => (2, 2 * (2 - frame_mbs_only)),
        2 => (2, 2 - frame_mbs_only),
        _ => (1, 2 - frame_mbs_only),
    };
    let width = (width_mbs * 16).checked_sub(crop_x * (crop_l + crop_r));
    let height =
        (height_map_units * 16 * (2 - frame_mbs_only)).checked_sub(crop_y * (crop_t + crop_b));
    Ok(match (width, height) {
        (Some(width), Some(height)) if width > 0 && height > 0 => Ok(SpsInfo {
            profile_idc,
            constraint_flags,
            level_idc,
            width,
            height,
        }),
        _ => Err(H264Error::BadSps("cropping leaves no picture".into())),
    })
}

/// Builds an AVCDecoderConfigurationRecord with 4-byte NAL lengths from one SPS and PPS.
pub fn avcc_record(sps: &[u8], pps: &[u8]) -> Result<Vec<u8>, H264Error> {
    let info = parse_sps(sps)?;
    if nal_type(pps) != NAL_PPS || pps.len() < 2 {
        return Err(H264Error::MissingPps);
    }
    let mut out = vec![
        1,
        info.profile_idc,
        info.constraint_flags,
        info.level_idc,
        0xFF,
        0xE1,
    ];
    out.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    out.extend_from_slice(sps);
    out.push(1);
    out.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    out.extend_from_slice(pps);
    Ok(out)
}

/// Checks a record the way a player would need it, returning the first SPS's facts.
pub fn validate_avcc(record: &[u8]) -> Result<SpsInfo, H264Error> {
    let bad = |m: &str| H264Error::BadAvcc(m.to_string());
    if record.len() < 7 {
        return Err(bad("shorter than 7 bytes"));
    }
    if record[0] != 1 {
        return Err(bad("configurationVersion is not 1"));
    }
    let mut pos = 5;
    let mut first_sps = None;
    for kind in [NAL_SPS, NAL_PPS] {
        let count = *record
            .get(pos)
            .ok_or_else(|| bad("truncated parameter set count"))? as usize;
        let count = if kind == NAL_SPS { count & 0x1F } else { count };
        pos += 1;
        if count == 0 {
            return Err(if kind == NAL_SPS {
                H264Error::MissingSps
            } else {
                H264Error::MissingPps
            });
        }
        for _ in 0..count {
            let len = record
                .get(pos..pos + 2)
                .ok_or_else(|| bad("truncated parameter set length"))?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let nal = record
                .get(pos + 2..pos + 2 + len)
                .ok_or_else(|| bad("truncated parameter set"))?;
            if nal_type(nal) != kind {
                return Err(bad("a parameter set of the wrong NAL type"));
            }
            if kind == NAL_SPS && first_sps.is_none() {
                first_sps = Some(parse_sps(nal)?);
            }
            pos += 2 + len;
        }
    }
    let sps = first_sps.ok_or(H264Error::MissingSps)?;
    if record[1] != sps.profile_idc || record[3] != sps.level_idc {
        return Err(bad("profile or level differs from the SPS"));
    }
    Ok(sps)
}

/// An access unit's NAL units as a Matroska/MP4 sample: 4-byte big-endian lengths. AUDs and
/// parameter sets are left out (they travel in CodecPrivate).
pub fn avcc_sample(nals: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nals.iter().map(|n| n.len() + 4).sum());
    for nal in nals
        .iter()
        .filter(|n| !matches!(nal_type(n), NAL_AUD | NAL_SPS | NAL_PPS))
    {
        out.extend_from_slice(&(nal.len() as u32).to_be_bytes());
        out.extend_from_slice(nal);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // x264 via GStreamer: videotestsrc 320x240 I420 → x264enc, Main profile, level 2.1.
    const SPS: &[u8] = &[
        0x67, 0x4D, 0x40, 0x15, 0xD9, 0x01, 0x41, 0xFB, 0x01, 0x6A, 0x0C, 0x0C, 0x0D, 0x4A, 0x00,
        0x00, 0x03, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x65, 0x1E, 0x2C, 0x5C, 0x90,
    ];
    const PPS: &[u8] = &[0x68, 0xEB, 0xCC, 0xB2];

    #[test]
    fn parses_sps_picture_size() {
        let info = parse_sps(SPS).unwrap();
        assert_eq!(
            (info.profile_idc, info.level_idc, info.width, info.height),
            (77, 21, 320, 240)
        );
    }

    #[test]
    fn builds_and_validates_avcc() {
        let record = avcc_record(SPS, PPS).unwrap();
        assert_eq!(validate_avcc(&record).unwrap().width, 320);
        assert_eq!(
            validate_avcc(&record[..record.len() - 2]),
            Err(H264Error::BadAvcc("truncated parameter set".into()))
        );
        let mut no_pps = record[..6 + 2 + SPS.len()].to_vec();
        no_pps.push(0);
        assert_eq!(validate_avcc(&no_pps), Err(H264Error::MissingPps));
        assert!(matches!(
            validate_avcc(&[1, 77, 0, 13, 0xFF, 0xE0, 0]),
            Err(H264Error::MissingSps)
        ));
    }

    #[test]
    fn splits_annex_b_and_groups_access_units() {
        let stream = [
            &[0, 0, 0, 1, 0x09, 0xF0][..],
            &[0, 0, 0, 1],
            SPS,
            &[0, 0, 1],
            PPS,
            &[0, 0, 1, 0x65, 0x88, 0x84],
            &[0, 0, 0, 1, 0x09, 0xF0],
            &[0, 0, 1, 0x41, 0x9A, 0x00],
        ]
        .concat();
        let nals = split_annex_b(&stream);
        assert_eq!(
            nals.iter().map(|n| nal_type(n)).collect::<Vec<_>>(),
            [9, 7, 8, 5, 9, 1]
        );
        let aus = access_units(&nals);
        assert_eq!(aus.len(), 2);
        let sample = avcc_sample(&aus[0]);
        assert_eq!(sample, [0, 0, 0, 3, 0x65, 0x88, 0x84]);
    }

    #[test]
    fn groups_without_auds_by_first_slice() {
        let idr = [0x65u8, 0x88];
        let p1 = [0x41u8, 0x9A];
        let p1_second_slice = [0x41u8, 0x40];
        let nals: Vec<&[u8]> = vec![SPS, PPS, &idr, &p1, &p1_second_slice, &p1];
        let aus = access_units(&nals);
        assert_eq!(aus.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2, 1]);
    }
}
