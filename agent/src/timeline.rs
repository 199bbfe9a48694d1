//! Media time and wall time, and the one place where one becomes the other.
//!
//! The pipeline's running time (`MediaTime`) is monotonic and drift-free; KVS wants ABSOLUTE
//! producer timestamps (`WallMs`, ms since the epoch). A `Timeline` is anchored once from the
//! wall clock and then advanced by media time only, so NTP steps on the device never make
//! fragments jump. It re-anchors when media time goes backwards or leaps (a source restart,
//! a looped file), and never hands out a wall time at or before one it already gave out.

use std::time::{SystemTime, UNIX_EPOCH};

/// Pipeline running time in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MediaTime(pub u64);

/// Producer time: milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WallMs(pub i64);

impl WallMs {
    pub fn now() -> WallMs {
        WallMs(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        )
    }
}

/// Media-time leaps longer than this are treated as discontinuities.
pub const MAX_LEAP_NS: u64 = 5_000_000_000;

#[derive(Debug, Clone)]
pub struct Timeline {
    anchor: Option<(MediaTime, WallMs)>,
    last_media: Option<MediaTime>,
    last_wall: Option<WallMs>,
    reanchors: u64,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    pub fn new() -> Timeline {
        Timeline {
            anchor: None,
            last_media: None,
            last_wall: None,
            reanchors: 0,
        }
    }

    /// How many discontinuities forced a re-anchor.
    pub fn reanchors(&self) -> u64 {
        self.reanchors
    }

    /// Forgets the media-time anchor (a new source instance starts its own running time);
    /// wall times stay strictly increasing across it.
    pub fn restart(&mut self) {
        self.anchor = None;
        self.last_media = None;
    }

    /// Maps a media time to producer time. `now` is the wall clock at the time of the call,
    /// used only when (re-)anchoring.
    pub fn wall(&mut self, media: MediaTime, now: WallMs) -> WallMs {
        let discontinuous = match self.last_media {
            Some(last) => media < last || media.0 - last.0 > MAX_LEAP_NS,
            None => false,
        };
        if discontinuous {
            self.reanchors += 1;
        }
        if self.anchor.is_none() || discontinuous {
            // Never step back behind what was handed out already.
            let start = match self.last_wall {
                Some(last) if now <= last => WallMs(last.0 + 1),
                _ => now,
            };
            self.anchor = Some((media, start));
        }
        let (m0, w0) = self.anchor.expect("anchored above");
        // Signed: the anchor may come from another stream (audio first, via `project`), and
        // the first picture may be a little older than it.
        let delta_ms = (media.0 as i128 - m0.0 as i128) / 1_000_000;
        let mut wall = WallMs(w0.0 + delta_ms as i64);
        if let Some(last) = self.last_wall
            && wall <= last
        {
            wall = WallMs(last.0 + 1);
        }
        self.last_media = Some(media);
        self.last_wall = Some(wall);
        wall
    }
}

impl Timeline {
    /// Maps a media time of another stream of the same pipeline (audio) on the current
    /// anchor, without moving it; when nothing is anchored yet (the audio came first), this
    /// media time anchors the timeline. Times a little before the anchor map before it.
    pub fn project(&mut self, media: MediaTime, now: WallMs) -> WallMs {
        let (m0, w0) = *self.anchor.get_or_insert_with(|| {
            let start = match self.last_wall {
                Some(last) if now <= last => WallMs(last.0 + 1),
                _ => now,
            };
            (media, start)
        });
        let delta_ms = (media.0 as i128 - m0.0 as i128) / 1_000_000;
        WallMs(w0.0 + delta_ms as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_picture_older_than_an_audio_anchor_maps_before_it_without_overflow() {
        // Audio reached the camera task first and anchored the timeline; the first picture
        // is 30 ms older in media time (a loaded device: seen in make test).
        let mut t = Timeline::new();
        assert_eq!(
            t.project(MediaTime(1_030 * MS), WallMs(50_000)),
            WallMs(50_000)
        );
        assert_eq!(
            t.wall(MediaTime(1_000 * MS), WallMs(50_010)),
            WallMs(49_970)
        );
        assert_eq!(
            t.wall(MediaTime(1_040 * MS), WallMs(50_050)),
            WallMs(50_010)
        );
    }

    #[test]
    fn other_streams_project_on_the_same_anchor() {
        let mut t = Timeline::new();
        t.wall(MediaTime(1_000 * MS), WallMs(50_000));
        assert_eq!(t.project(MediaTime(1_020 * MS), WallMs(9)), WallMs(50_020));
        assert_eq!(t.project(MediaTime(990 * MS), WallMs(9)), WallMs(49_990));
        // Audio first: it anchors, and the video follows on the same anchor.
        let mut t = Timeline::new();
        assert_eq!(
            t.project(MediaTime(500 * MS), WallMs(70_000)),
            WallMs(70_000)
        );
        assert_eq!(t.wall(MediaTime(520 * MS), WallMs(99_999)), WallMs(70_020));
        assert_eq!(t.reanchors(), 0);
    }

    #[test]
    fn advances_by_media_time_not_by_the_wall_clock() {
        let mut t = Timeline::new();
        assert_eq!(t.wall(MediaTime(0), WallMs(1000)), WallMs(1000));
        // The wall clock jumps an hour ahead (NTP); media time says 40 ms passed.
        assert_eq!(t.wall(MediaTime(40 * MS), WallMs(3_601_000)), WallMs(1040));
        assert_eq!(t.reanchors(), 0);
    }

    #[test]
    fn reanchors_on_discontinuities_without_going_back() {
        let mut t = Timeline::new();
        t.wall(MediaTime(10_000 * MS), WallMs(50_000));
        assert_eq!(
            t.wall(MediaTime(10_040 * MS), WallMs(50_040)),
            WallMs(50_040)
        );
        // The source restarted: media time back to zero; the wall clock says 50_100.
        assert_eq!(t.wall(MediaTime(0), WallMs(50_100)), WallMs(50_100));
        // A leap of a minute in media time: re-anchored at the wall clock, still increasing.
        assert_eq!(
            t.wall(MediaTime(60_000 * MS), WallMs(50_020)),
            WallMs(50_101)
        );
        assert_eq!(t.reanchors(), 2);
    }

    #[test]
    fn restart_keeps_wall_time_increasing() {
        let mut t = Timeline::new();
        let a = t.wall(MediaTime(0), WallMs(5000));
        t.restart();
        let b = t.wall(MediaTime(0), WallMs(4000)); // clock stepped back meanwhile
        assert!(b > a);
    }
}
