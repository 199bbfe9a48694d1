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
