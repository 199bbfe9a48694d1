//! The local motion trigger, pure. The capture hands small grey pictures (64x36) to a
//! `Detector`, which says when motion starts and ends; the camera hands those changes to a
//! `Trigger`, which turns them into the alarm they raise: covering `pre_s` before the motion
//! started (from the recording) to `post_s` after it ended, one alarm for motion that comes
//! back before the last one's window closed.

use kvs_edge_config::agent::MotionSettings;

use crate::control::Alarm;

/// A pixel counts as changed when its brightness moved by more than this (0-255): sensor
/// noise and compression shimmer stay below it.
const NOISE_FLOOR: u8 = 24;

/// The size of the pictures compared.
pub const WIDTH: usize = 64;
pub const HEIGHT: usize = 36;

/// What a picture changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Started,
    Ended,
}

/// Compares each picture with the one before.
#[derive(Debug)]
pub struct Detector {
    threshold: f32,
    quiet_ms: i64,
    /// Moving pictures in a row before motion starts.
    confirm: u32,
    /// The last picture, and the one before it.
    previous: Option<Vec<u8>>,
    before: Option<Vec<u8>>,
    moving_run: u32,
    last_motion_ms: i64,
    active: bool,
}

impl Detector {
    /// `threshold`: the fraction of the picture that must change; motion ends `quiet_ms`
    /// after the last moving picture; it starts after `confirm` moving pictures in a row
    /// (2 for pictures a few times a second; 1 when only keyframes are looked at).
    pub fn new(threshold: f32, quiet_ms: i64, confirm: u32) -> Detector {
        Detector {
            threshold,
            quiet_ms,
            confirm: confirm.max(1),
            previous: None,
            before: None,
            moving_run: 0,
            last_motion_ms: i64::MIN,
            active: false,
        }
    }

    /// The fraction of pixels that changed beyond the noise floor (0 for pictures of
    /// different sizes).
    pub fn changed(previous: &[u8], picture: &[u8]) -> f32 {
        if previous.len() != picture.len() || picture.is_empty() {
            return 0.0;
        }
        let moved = previous
            .iter()
            .zip(picture)
            .filter(|(a, b)| a.abs_diff(**b) > NOISE_FLOOR)
            .count();
        moved as f32 / picture.len() as f32
    }

    /// Feeds one grey picture seen at `at_ms`; says when motion starts or ends. A picture
    /// moves when it differs from both the last one and the one before: a flicker (one
    /// picture unlike its neighbours, which are alike) is not motion.
    pub fn push(&mut self, picture: &[u8], at_ms: i64) -> Option<Change> {
        let differs = |other: &Option<Vec<u8>>| {
            other
                .as_deref()
                .map(|p| Detector::changed(p, picture) >= self.threshold)
        };
        let moving = differs(&self.previous) == Some(true) && differs(&self.before) != Some(false);
        // The oldest buffer is reused for the new picture.
        let mut oldest = self.before.take().unwrap_or_default();
        oldest.clear();
        oldest.extend_from_slice(picture);
        self.before = self.previous.replace(oldest);
        if moving {
            self.moving_run += 1;
            self.last_motion_ms = at_ms;
        } else {
            self.moving_run = 0;
        }
        if !self.active && self.moving_run >= self.confirm {
            self.active = true;
            return Some(Change::Started);
        }
        if self.active && at_ms.saturating_sub(self.last_motion_ms) >= self.quiet_ms {
            self.active = false;
            return Some(Change::Ended);
        }
        None
    }
}

/// An alarm the trigger raised: new, or one raised before with a later end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raised {
    pub alarm: Alarm,
    pub new: bool,
}

/// Turns motion into alarms.
#[derive(Debug)]
pub struct Trigger {
    settings: MotionSettings,
    alarm: Option<Alarm>,
    moving: bool,
}

impl Trigger {
    pub fn new(settings: MotionSettings) -> Trigger {
        Trigger {
            settings,
            alarm: None,
            moving: false,
        }
    }

    /// Motion started or ended at `now_ms`: the alarm raised (a new one, or the last one
    /// extended when its window had not closed yet).
    pub fn on_change(&mut self, change: Change, now_ms: i64) -> Option<Raised> {
        let post_ms = self.settings.post_s as i64 * 1000;
        let mut new = false;
        match change {
            Change::Started => {
                self.moving = true;
                match &mut self.alarm {
                    Some(a) if now_ms <= a.end_ms => a.end_ms = a.end_ms.max(now_ms + post_ms),
                    slot => {
                        new = true;
                        let pre_ms = self.settings.pre_s as i64 * 1000;
                        *slot = Some(Alarm {
                            id: format!("motion-{now_ms}"),
                            label: self.settings.label.clone(),
                            pre_s: self.settings.pre_s,
                            post_s: self.settings.post_s,
                            start_ms: now_ms - pre_ms,
                            end_ms: now_ms + post_ms,
                        });
                    }
                }
            }
            Change::Ended => {
                self.moving = false;
                let a = self.alarm.as_mut()?;
                a.end_ms = a.end_ms.max(now_ms + post_ms);
            }
        }
        let alarm = self.alarm.clone()?;
        Some(Raised { alarm, new })
    }

    /// While motion lasts, keeps the alarm's end `post_s` ahead: the alarm when it was
    /// extended (once half its post-roll is used up, not at every call).
    pub fn tick(&mut self, now_ms: i64) -> Option<Raised> {
        if !self.moving {
            return None;
        }
        let post_ms = self.settings.post_s as i64 * 1000;
        let a = self.alarm.as_mut()?;
        if a.end_ms - now_ms > post_ms / 2 {
            return None;
        }
        a.end_ms = now_ms + post_ms;
        Some(Raised {
            alarm: a.clone(),
            new: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(block_at: Option<usize>) -> Vec<u8> {
        let mut f = vec![40u8; WIDTH * HEIGHT];
        if let Some(x) = block_at {
            // A 16x12 bright block: 8 % of the picture.
            for row in 10..22 {
                for col in x..x + 16 {
                    f[row * WIDTH + col] = 220;
                }
            }
        }
        f
    }

    #[test]
    fn a_moving_block_starts_motion_and_stillness_ends_it() {
        let mut d = Detector::new(0.02, 1000, 2);
        assert_eq!(d.push(&picture(None), 0), None);
        assert_eq!(
            d.push(&picture(Some(0)), 200),
            None,
            "one picture is not motion"
        );
        assert_eq!(d.push(&picture(Some(20)), 400), Some(Change::Started));
        assert_eq!(d.push(&picture(Some(40)), 600), None, "still moving");
        let still = picture(Some(40));
        assert_eq!(d.push(&still, 800), None);
        assert_eq!(d.push(&still, 1400), None, "quiet for 0.8 s");
        assert_eq!(d.push(&still, 1600), Some(Change::Ended), "quiet for 1 s");
        // Keyframes only: one moving picture is enough.
        let mut d = Detector::new(0.02, 4000, 1);
        assert_eq!(d.push(&picture(None), 0), None);
        assert_eq!(d.push(&picture(Some(10)), 2000), Some(Change::Started));
    }

    #[test]
    fn noise_and_a_single_flicker_are_not_motion() {
        let mut d = Detector::new(0.02, 1000, 2);
        for k in 0..10 {
            // Every pixel shimmers, by less than the noise floor.
            let noisy: Vec<u8> = (0..WIDTH * HEIGHT)
                .map(|i| if (i + k) % 2 == 0 { 40 } else { 55 })
                .collect();
            assert_eq!(d.push(&noisy, k as i64 * 200), None);
        }
        assert_eq!(d.push(&picture(Some(10)), 2200), None, "a flicker");
        assert_eq!(d.push(&picture(None), 2400), None);
        assert_eq!(d.push(&picture(None), 2600), None);
    }

    #[test]
    fn motion_raises_one_alarm_with_its_pre_and_post_roll() {
        let mut t = Trigger::new(MotionSettings {
            pre_s: 10,
            post_s: 30,
            ..Default::default()
        });
        let raised = t.on_change(Change::Started, 100_000).unwrap();
        assert!(raised.new);
        let a = raised.alarm;
        assert_eq!(
            (a.start_ms, a.end_ms, a.label.as_str()),
            (90_000, 130_000, "motion")
        );
        assert_eq!(a.id, "motion-100000");
        assert_eq!(t.tick(110_000), None, "more than half the post-roll left");
        let longer = t.tick(120_000).expect("extended while moving").alarm;
        assert_eq!(
            (longer.id.as_str(), longer.end_ms),
            ("motion-100000", 150_000)
        );
        let ended = t.on_change(Change::Ended, 125_000).unwrap().alarm;
        assert_eq!(ended.end_ms, 155_000);
        assert_eq!(t.tick(150_000), None, "not moving: no extension");
        // Motion again before the window closed: the same alarm, longer.
        let again = t.on_change(Change::Started, 140_000).unwrap();
        assert!(!again.new);
        let again = again.alarm;
        assert_eq!(
            (again.id.as_str(), again.end_ms),
            ("motion-100000", 170_000)
        );
        t.on_change(Change::Ended, 141_000);
        // After it closed: a new alarm.
        let next = t.on_change(Change::Started, 200_000).unwrap();
        assert!(next.new);
        assert_eq!(next.alarm.id, "motion-200000");
    }
}
