//! Retrying what the services throttle: jittered exponential backoff, bounded by a budget
//! and by the runtime's deadline (a Lambda invocation's end, set with `within`), so that a
//! clip under throttling is fetched in-process instead of failing and waiting minutes for
//! a redelivery.
//!
//! KVS throttles with `ClientLimitExceededException` (HTTP 400), which the AWS SDK's
//! standard retry does not classify as throttling; MediaConvert with 429.

use std::future::Future;
use std::time::Duration;

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tokio::time::Instant;
use tracing::warn;

/// A number that differs between calls: RandomState is seeded from the OS's randomness per
/// process and instance (no RNG crate needed for jitter, client ids and run ids).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// A number in [0, 1) that differs between calls, for backoff jitter.
pub fn jitter() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Delays doubling from `first` up to `max`; each one jittered to half to all of itself, so
/// that callers throttled together spread out.
pub struct Backoff {
    delay: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { delay: first, max }
    }

    pub fn next_delay(&mut self) -> Duration {
        let wait = self.delay.mul_f64(0.5 + jitter() * 0.5);
        self.delay = (self.delay * 2).min(self.max);
        wait
    }
}

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `f` with a deadline that retries respect (a Lambda invocation's end).
pub async fn within<F: Future>(deadline: Instant, f: F) -> F::Output {
    DEADLINE.scope(deadline, f).await
}

/// Time kept back from the runtime's deadline to record the outcome.
const MARGIN: Duration = Duration::from_secs(5);

/// True when KVS refused the call for its rate (GetClip, ListFragments, GetDataEndpoint …).
pub fn is_kvs_throttling<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    e.code() == Some("ClientLimitExceededException")
}

/// Calls `op` again while KVS throttles it, with jittered backoff (250 ms doubling to 10 s),
/// for at most `budget` and never past the runtime's deadline. Returns the last answer.
pub async fn kvs<T, E, R, F, Fut>(
    what: &str,
    budget: Duration,
    mut op: F,
) -> Result<T, SdkError<E, R>>
where
    E: ProvideErrorMetadata,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, R>>>,
{
    let mut until = Instant::now() + budget;
    if let Ok(deadline) = DEADLINE.try_with(|d| *d) {
        until = until.min(deadline.checked_sub(MARGIN).unwrap_or(deadline));
    }
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let mut throttled = 0;
    loop {
        match op().await {
            Err(e) if is_kvs_throttling(&e) => {
                let wait = backoff.next_delay();
                if Instant::now() + wait > until {
                    warn!(
                        "{what}: throttled by KVS {} times, giving up",
                        throttled + 1
                    );
                    return Err(e);
                }
                throttled += 1;
                warn!(
                    "{what}: throttled by KVS (ClientLimitExceededException); retry {throttled} in {wait:?}"
                );
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let waits: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        for (w, full) in waits.iter().zip([100, 200, 400, 400, 400]) {
            let full = Duration::from_millis(full);
            assert!(
                *w >= full / 2 && *w <= full,
                "{w:?} within half to all of {full:?}"
            );
        }
    }
}
