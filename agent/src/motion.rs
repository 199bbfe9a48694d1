//! Motion detection for the local trigger: small grey frames (the capture branch scales
//! them to 64x36 at a few frames a second) compared with the previous one. A frame is
//! "moving" when enough of its pixels changed by more than a noise floor; motion starts
//! after two moving frames in a row (one flickering frame is not an event) and ends after
//! a quiet spell. Pure: the capture feeds it frames, the camera acts on what it says.

/// A pixel counts as changed when its brightness moved by more than this (0-255): sensor
/// noise and compression shimmer stay below it.
const NOISE_FLOOR: u8 = 24;
/// Moving frames in a row before motion starts.
const CONFIRM: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionConfig {
    /// The fraction of the picture (0-1) that must change for a frame to count as moving.
    pub threshold: f32,
    /// Quiet frames in a row after which motion has ended.
    pub quiet_frames: u32,
}

/// What a frame changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Started,
    Ended,
}

#[derive(Debug)]
pub struct Detector {
    cfg: MotionConfig,
    previous: Option<Vec<u8>>,
    moving_run: u32,
    quiet_run: u32,
    active: bool,
}

impl Detector {
    pub fn new(cfg: MotionConfig) -> Detector {
        Detector {
            cfg,
            previous: None,
            moving_run: 0,
            quiet_run: 0,
            active: false,
        }
    }

    /// The fraction of pixels that changed beyond the noise floor (0 for the first frame
    /// or one of another size).
    pub fn changed(previous: &[u8], frame: &[u8]) -> f32 {
        if previous.len() != frame.len() || frame.is_empty() {
            return 0.0;
        }
        let moved = previous
            .iter()
            .zip(frame)
            .filter(|(a, b)| a.abs_diff(**b) > NOISE_FLOOR)
            .count();
        moved as f32 / frame.len() as f32
    }

    /// Feeds one grey frame; says when motion starts or ends.
    pub fn push(&mut self, frame: &[u8]) -> Option<Change> {
        let fraction = self
            .previous
            .as_deref()
            .map_or(0.0, |p| Detector::changed(p, frame));
        match &mut self.previous {
            Some(p) if p.len() == frame.len() => p.copy_from_slice(frame),
            p => *p = Some(frame.to_vec()),
        }
        if fraction >= self.cfg.threshold {
            self.moving_run += 1;
            self.quiet_run = 0;
        } else {
            self.moving_run = 0;
            self.quiet_run += 1;
        }
        if !self.active && self.moving_run >= CONFIRM {
            self.active = true;
            return Some(Change::Started);
        }
        if self.active && self.quiet_run >= self.cfg.quiet_frames {
            self.active = false;
            return Some(Change::Ended);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dot_at: Option<usize>) -> Vec<u8> {
        let mut f = vec![40u8; 64 * 36];
        if let Some(x) = dot_at {
            // A 16x12 bright block: 8 % of the picture.
            for row in 10..22 {
                for col in x..x + 16 {
                    f[row * 64 + col] = 220;
                }
            }
        }
        f
    }

    #[test]
    fn a_moving_block_starts_motion_and_stillness_ends_it() {
        let mut d = Detector::new(MotionConfig {
            threshold: 0.02,
            quiet_frames: 3,
        });
        assert_eq!(d.push(&frame(None)), None);
        assert_eq!(d.push(&frame(Some(0))), None, "one frame is not yet motion");
        assert_eq!(d.push(&frame(Some(20))), Some(Change::Started));
        assert_eq!(d.push(&frame(Some(40))), None, "still moving");
        let still = frame(Some(40));
        assert_eq!(d.push(&still), None);
        assert_eq!(d.push(&still), None);
        assert_eq!(d.push(&still), Some(Change::Ended));
    }

    #[test]
    fn noise_and_a_single_flicker_are_not_motion() {
        let mut d = Detector::new(MotionConfig {
            threshold: 0.02,
            quiet_frames: 3,
        });
        for k in 0..10 {
            // Every pixel shimmers, by less than the noise floor.
            let noisy: Vec<u8> = (0..64 * 36)
                .map(|i| if (i + k) % 2 == 0 { 40 } else { 55 })
                .collect();
            assert_eq!(d.push(&noisy), None);
        }
        assert_eq!(d.push(&frame(Some(10))), None, "a flicker");
        assert_eq!(d.push(&frame(None)), None);
        assert_eq!(d.push(&frame(None)), None);
    }
}
