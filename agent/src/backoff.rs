//! Jittered exponential backoff: from `min`, doubling to `max`; each wait is drawn from
//! [current/2, current] so a fleet that lost the network together does not retry together.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            current: min,
            failures: 0,
        }
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The next wait, and the one after it doubled.
    pub fn next_delay(&mut self) -> Duration {
        let upper = self.current;
        self.current = (self.current * 2).min(self.max);
        self.failures += 1;
        let half = upper / 2;
        half + Duration::from_nanos(random_u64() % (half.as_nanos() as u64).max(1))
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    pub fn reset(&mut self) {
        self.current = self.min;
        self.failures = 0;
    }
}

/// A random number from the standard library's randomly seeded hasher.
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let bounds = [100, 200, 400, 800, 800];
        for upper in bounds {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(upper / 2) && d <= Duration::from_millis(upper),
                "{d:?} vs {upper}"
            );
        }
        assert_eq!(b.failures(), 5);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
