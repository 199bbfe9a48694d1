//! H.265 (HEVC) parameter sets, pure: reading the picture size from an SPS and validating
//! the HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3) that KVS stores as the
//! CodecPrivate of a `V_MPEGH/ISO/HEVC` track. As with H.264, KVS does not check it on
//! ingest, and a bad record only shows later, at playback: so we check here.

use thiserror::Error;

use crate::bits::{Bits, BitsError, rbsp};

pub const NAL_VPS: u8 = 32;
pub const NAL_SPS: u8 = 33;
pub const NAL_PPS: u8 = 34;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum H265Error {
    #[error("no {0} in the HEVCDecoderConfigurationRecord")]
    Missing(&'static str),
    #[error("SPS is malformed: {0}")]
    BadSps(String),
    #[error("HEVCDecoderConfigurationRecord is invalid: {0}")]
    BadHvcc(String),
}

/// The NAL unit type (from the two-byte NAL header).
pub fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| (b >> 1) & 0x3F)
}

/// What we need from a sequence parameter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    pub level_idc: u8,
    pub width: u32,
    pub height: u32,
}

/// Skips profile_tier_level(1, max_sub_layers_minus1), keeping the general profile and level.
fn profile_tier_level(b: &mut Bits<'_>, max_sub_layers_minus1: u32) -> Result<(u8, u8), BitsError> {
    b.bits(3)?; // general_profile_space, general_tier_flag
    let profile_idc = b.bits(5)? as u8;
    b.skip(32 + 4 + 43 + 1)?; // compatibility flags, source flags, constraint flags, inbld
    let level_idc = b.bits(8)? as u8;
    let mut present = Vec::new();
    for _ in 0..max_sub_layers_minus1 {
        present.push((b.bit()?, b.bit()?));
    }
    if max_sub_layers_minus1 > 0 {
        for _ in max_sub_layers_minus1..8 {
            b.bits(2)?; // reserved_zero_2bits
        }
    }
    for (profile, level) in present {
        if profile == 1 {
            b.skip(88)?;
        }
        if level == 1 {
            b.skip(8)?;
        }
    }
    Ok((profile_idc, level_idc))
}

fn read_sps(b: &mut Bits<'_>) -> Result<Result<SpsInfo, H265Error>, BitsError> {
    b.bits(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = b.bits(3)?;
    b.bit()?; // sps_temporal_id_nesting_flag
    let (profile_idc, level_idc) = profile_tier_level(b, max_sub_layers_minus1)?;
    b.ue()?; // sps_seq_parameter_set_id
    let chroma_format_idc = b.ue()?;
    if chroma_format_idc == 3 {
        b.bit()?; // separate_colour_plane_flag
    }
    let width = b.ue()?;
    let height = b.ue()?;
    let (mut crop_w, mut crop_h) = (0, 0);
    if b.bit()? == 1 {
        let (left, right, top, bottom) = (b.ue()?, b.ue()?, b.ue()?, b.ue()?);
        let (sub_w, sub_h) = match chroma_format_idc {
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        crop_w = sub_w * (left + right);
        crop_h = sub_h * (top + bottom);
    }
    Ok(
        match (width.checked_sub(crop_w), height.checked_sub(crop_h)) {
            (Some(width), Some(height)) if width > 0 && height > 0 => Ok(SpsInfo {
                profile_idc,
                level_idc,
                width,
                height,
            }),
            _ => Err(H265Error::BadSps(
                "the conformance window leaves no picture".into(),
            )),
        },
    )
}

/// Reads an SPS NAL unit (with its two-byte header).
pub fn parse_sps(nal: &[u8]) -> Result<SpsInfo, H265Error> {
    if nal_type(nal) != NAL_SPS || nal.len() < 4 {
        return Err(H265Error::BadSps("not an SPS NAL unit".into()));
    }
    let data = rbsp(&nal[2..]);
    read_sps(&mut Bits::new(&data)).map_err(|e| H265Error::BadSps(e.into()))?
}

/// Checks a record the way a player would need it (VPS, SPS and PPS present, well formed,
/// 4-byte NAL lengths), returning the first SPS's facts.
pub fn validate_hvcc(record: &[u8]) -> Result<SpsInfo, H265Error> {
    let bad = |m: &str| H265Error::BadHvcc(m.to_string());
    if record.len() < 23 {
        return Err(bad("shorter than 23 bytes"));
    }
    if record[0] != 1 {
        return Err(bad("configurationVersion is not 1"));
    }
    if record[21] & 0x03 != 3 {
        return Err(bad("NAL unit lengths are not 4 bytes (lengthSizeMinusOne)"));
    }
    let arrays = record[22];
    let mut pos = 23;
    let (mut vps, mut sps, mut pps) = (false, None, false);
    for _ in 0..arrays {
        let header = record
            .get(pos..pos + 3)
            .ok_or_else(|| bad("truncated array"))?;
        let kind = header[0] & 0x3F;
        let count = u16::from_be_bytes([header[1], header[2]]);
        pos += 3;
        for _ in 0..count {
            let len = record
                .get(pos..pos + 2)
                .ok_or_else(|| bad("truncated NAL unit length"))?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let nal = record
                .get(pos + 2..pos + 2 + len)
                .ok_or_else(|| bad("truncated NAL unit"))?;
            if nal_type(nal) != kind {
                return Err(bad("a NAL unit in the array of another type"));
            }
            match kind {
                NAL_VPS => vps = true,
                NAL_SPS if sps.is_none() => sps = Some(parse_sps(nal)?),
                NAL_PPS => pps = true,
                _ => {}
            }
            pos += 2 + len;
        }
    }
    if !vps {
        return Err(H265Error::Missing("VPS"));
    }
    if !pps {
        return Err(H265Error::Missing("PPS"));
    }
    let sps = sps.ok_or(H265Error::Missing("SPS"))?;
    if record[1] & 0x1F != sps.profile_idc {
        return Err(bad("the profile differs from the SPS"));
    }
    Ok(sps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real record: `videotestsrc ! video/x-raw,width=320,height=240 ! x265enc !
    /// h265parse ! video/x-h265,stream-format=hvc1`'s codec_data (x265, GStreamer 1.22).
    pub(crate) fn sample_record() -> Vec<u8> {
        hex::decode(
            "0104080000009808000000003ff000fcfffcfc00000f03200001001740010c01ffff0408000003009808\
             00000300003f9598092100010030420101040800000300980800000300003f90014101e2294b2b3492\
             657ff80008000b506060604000000300400000078222000100074401c172b46240",
        )
        .unwrap()
    }

    #[test]
    fn a_real_record_validates_with_its_picture_size() {
        let info = validate_hvcc(&sample_record()).unwrap();
        assert_eq!((info.width, info.height, info.profile_idc), (320, 240, 4));
    }

    #[test]
    fn broken_records_are_named() {
        let good = sample_record();
        assert!(matches!(
            validate_hvcc(&good[..10]),
            Err(H265Error::BadHvcc(_))
        ));
        let mut two_byte_lengths = good.clone();
        two_byte_lengths[21] = 0x0D;
        assert!(
            validate_hvcc(&two_byte_lengths)
                .unwrap_err()
                .to_string()
                .contains("4 bytes")
        );
        // Without its PPS array (the last one: 3 bytes of header, 2 of length, 7 of NAL).
        let mut no_pps = good.clone();
        no_pps[22] = 2;
        no_pps.truncate(good.len() - 3 - 2 - 7);
        assert_eq!(validate_hvcc(&no_pps), Err(H265Error::Missing("PPS")));
        let mut truncated = good.clone();
        truncated.pop();
        assert!(validate_hvcc(&truncated).is_err());
    }
}
