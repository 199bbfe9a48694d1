//! What the agent knows of a camera's video codec: which one it is, its decoder
//! configuration (validated), and how Matroska, GStreamer and humans name it. Pure.
//!
//! GetClip, HLS and DASH play H.264 and H.265 video ("Video playback track requirements" in
//! the KVS developer guide); anything else a camera sends is refused here, with a reason,
//! before a fragment is made.

use std::fmt;

use thiserror::Error;

use crate::{h264, h265};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    H264,
    H265,
}

impl VideoCodec {
    /// The Matroska CodecID KVS expects.
    pub fn matroska_id(self) -> &'static str {
        match self {
            VideoCodec::H264 => "V_MPEG4/ISO/AVC",
            VideoCodec::H265 => "V_MPEGH/ISO/HEVC",
        }
    }

    /// A short lowercase name for labels and JSON (`h264`, `h265`).
    pub fn short_name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::H265 => "h265",
        }
    }

    /// The GStreamer caps name of the elementary stream.
    pub fn caps_name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "video/x-h264",
            VideoCodec::H265 => "video/x-h265",
        }
    }

    /// The caps a parsed stream must have for the fragmenter: length-prefixed access units.
    pub fn parsed_caps(self) -> &'static str {
        match self {
            VideoCodec::H264 => "video/x-h264,stream-format=avc,alignment=au",
            VideoCodec::H265 => "video/x-h265,stream-format=hvc1,alignment=au",
        }
    }

    /// The parser element that produces `parsed_caps`.
    pub fn parser(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264parse",
            VideoCodec::H265 => "h265parse",
        }
    }

    /// The codec of a GStreamer caps name, if it is one KVS can play.
    pub fn from_caps_name(name: &str) -> Option<VideoCodec> {
        match name {
            "video/x-h264" => Some(VideoCodec::H264),
            "video/x-h265" => Some(VideoCodec::H265),
            _ => None,
        }
    }

    /// The codec of a journal record's tag.
    pub fn from_tag(tag: u8) -> Option<VideoCodec> {
        match tag {
            0 => Some(VideoCodec::H264),
            1 => Some(VideoCodec::H265),
            _ => None,
        }
    }

    pub fn tag(self) -> u8 {
        match self {
            VideoCodec::H264 => 0,
            VideoCodec::H265 => 1,
        }
    }
}

impl fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VideoCodec::H264 => "H.264",
            VideoCodec::H265 => "H.265",
        })
    }
}

/// What KVS's players take, for error messages.
pub const SUPPORTED_VIDEO: &str = "H.264 or H.265";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("unusable H.264 decoder configuration: {0}")]
    H264(#[from] h264::H264Error),
    #[error("unusable H.265 decoder configuration: {0}")]
    H265(#[from] h265::H265Error),
}

/// The codec configuration of a run of access units: a change means new Tracks, so a new
/// PutMedia session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecConfig {
    pub codec: VideoCodec,
    /// The decoder configuration record (AVC or HEVC), validated: the track's CodecPrivate.
    pub private: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

impl CodecConfig {
    /// Validates a decoder configuration record and reads the picture size from it.
    pub fn new(codec: VideoCodec, private: Vec<u8>) -> Result<CodecConfig, CodecError> {
        let (width, height) = match codec {
            VideoCodec::H264 => {
                let sps = h264::validate_avcc(&private)?;
                (sps.width, sps.height)
            }
            VideoCodec::H265 => {
                let sps = h265::validate_hvcc(&private)?;
                (sps.width, sps.height)
            }
        };
        Ok(CodecConfig {
            codec,
            private,
            width,
            height,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags_round_trip() {
        for c in [VideoCodec::H264, VideoCodec::H265] {
            assert_eq!(VideoCodec::from_tag(c.tag()), Some(c));
            assert_eq!(VideoCodec::from_caps_name(c.caps_name()), Some(c));
            assert!(c.parsed_caps().starts_with(c.caps_name()));
        }
        assert_eq!(VideoCodec::from_caps_name("image/jpeg"), None);
        assert_eq!(VideoCodec::H265.matroska_id(), "V_MPEGH/ISO/HEVC");
    }

    #[test]
    fn a_bad_record_is_refused_naming_the_codec() {
        let e = CodecConfig::new(VideoCodec::H265, vec![1, 2, 3]).unwrap_err();
        assert!(e.to_string().starts_with("unusable H.265"), "{e}");
        let e = CodecConfig::new(VideoCodec::H264, vec![]).unwrap_err();
        assert!(e.to_string().starts_with("unusable H.264"), "{e}");
    }
}

/// The audio codecs KVS's GetClip plays next to the video: AAC, and G.711 A-law
/// (`A_MS/ACM`; µ-law is converted to A-law on the device, see `capture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    Aac,
    Alaw,
}

impl AudioCodec {
    pub fn matroska_id(self) -> &'static str {
        match self {
            AudioCodec::Aac => "A_AAC",
            AudioCodec::Alaw => "A_MS/ACM",
        }
    }

    pub fn short_name(self) -> &'static str {
        match self {
            AudioCodec::Aac => "aac",
            AudioCodec::Alaw => "alaw",
        }
    }

    pub fn tag(self) -> u8 {
        match self {
            AudioCodec::Aac => 0,
            AudioCodec::Alaw => 1,
        }
    }

    pub fn from_tag(tag: u8) -> Option<AudioCodec> {
        match tag {
            0 => Some(AudioCodec::Aac),
            1 => Some(AudioCodec::Alaw),
            _ => None,
        }
    }
}

impl fmt::Display for AudioCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AudioCodec::Aac => "AAC",
            AudioCodec::Alaw => "G.711 A-law",
        })
    }
}

/// What KVS's players take for audio, for error messages.
pub const SUPPORTED_AUDIO: &str = "AAC or G.711 (A-law; µ-law is converted to A-law)";

/// An audio track's configuration: the codec, its CodecPrivate (AudioSpecificConfig for
/// AAC, WAVEFORMATEX for A-law) and the stream's rate and channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioConfig {
    pub codec: AudioCodec,
    pub private: Vec<u8>,
    pub rate: u32,
    pub channels: u8,
}

/// The AAC sampling frequency table (ISO/IEC 14496-3, samplingFrequencyIndex).
const AAC_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];

impl AudioConfig {
    /// AAC from its AudioSpecificConfig (as `aacparse` announces it in `codec_data`).
    pub fn aac(asc: Vec<u8>) -> Result<AudioConfig, String> {
        let mut b = crate::bits::Bits::new(&asc);
        let short = |e: &str| format!("AudioSpecificConfig: {e}");
        let object_type = b.bits(5).map_err(short)?;
        if object_type == 0 || object_type == 31 {
            return Err(format!(
                "AAC audio object type {object_type} is not supported"
            ));
        }
        let index = b.bits(4).map_err(short)?;
        let rate = if index == 0x0F {
            b.bits(24).map_err(short)?
        } else {
            *AAC_RATES
                .get(index as usize)
                .ok_or_else(|| format!("AAC sampling frequency index {index} is reserved"))?
        };
        let channel_config = b.bits(4).map_err(short)?;
        if !(1..=7).contains(&channel_config) {
            return Err(format!(
                "AAC channel configuration {channel_config} is not supported (1 to 7)"
            ));
        }
        let channels = if channel_config == 7 {
            8
        } else {
            channel_config as u8
        };
        Ok(AudioConfig {
            codec: AudioCodec::Aac,
            private: asc,
            rate,
            channels,
        })
    }

    /// G.711 A-law: the WAVEFORMATEX KVS expects as `A_MS/ACM`'s CodecPrivate.
    pub fn alaw(rate: u32, channels: u8) -> AudioConfig {
        let mut w = Vec::with_capacity(18);
        w.extend_from_slice(&0x0006u16.to_le_bytes()); // WAVE_FORMAT_ALAW
        w.extend_from_slice(&u16::from(channels).to_le_bytes());
        w.extend_from_slice(&rate.to_le_bytes());
        w.extend_from_slice(&(rate * u32::from(channels)).to_le_bytes()); // bytes per second
        w.extend_from_slice(&u16::from(channels).to_le_bytes()); // block align
        w.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
        w.extend_from_slice(&0u16.to_le_bytes()); // no extra bytes
        AudioConfig {
            codec: AudioCodec::Alaw,
            private: w,
            rate,
            channels,
        }
    }
}

/// Everything a PutMedia session's Tracks say: the video, and the audio when the fragments
/// carry it. A change means a new session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackSet {
    pub video: CodecConfig,
    pub audio: Option<AudioConfig>,
}

#[cfg(test)]
mod audio_tests {
    use super::*;

    #[test]
    fn aac_configs_give_rate_and_channels() {
        // AAC-LC, 48 kHz, stereo (vogels_330.mkv's codec private data).
        let c = AudioConfig::aac(vec![0x11, 0x90]).unwrap();
        assert_eq!((c.rate, c.channels), (48_000, 2));
        // AAC-LC, 16 kHz mono.
        let c = AudioConfig::aac(vec![0x14, 0x08]).unwrap();
        assert_eq!((c.rate, c.channels), (16_000, 1));
        assert!(AudioConfig::aac(vec![0x12]).is_err());
        assert!(
            AudioConfig::aac(vec![0x00, 0x00])
                .unwrap_err()
                .contains("object type 0")
        );
        // An explicit frequency (index 15): 24 bits of it, then the channels.
        let c = AudioConfig::aac(vec![0x17, 0x80, 0x3E, 0x80, 0x08]).unwrap();
        assert_eq!((c.rate, c.channels), (32_000, 1));
        assert!(
            AudioConfig::aac(vec![0x16, 0x80])
                .unwrap_err()
                .contains("index 13")
        );
    }

    #[test]
    fn alaw_carries_a_waveformatex() {
        let c = AudioConfig::alaw(8000, 1);
        assert_eq!(
            c.private,
            [
                6, 0, 1, 0, 0x40, 0x1F, 0, 0, 0x40, 0x1F, 0, 0, 1, 0, 8, 0, 0, 0
            ]
        );
        assert_eq!(c.codec.matroska_id(), "A_MS/ACM");
    }
}
