//! When to try again after a failed attempt, and how long to wait first: exponential back-off
//! with jitter, a budget of consecutive failures, and the fetch's overall deadline.

use std::time::Duration;

use rand_chacha::ChaCha12Rng;
use rand_core::{RngCore, SeedableRng};
use tokio::time::Instant;

use super::{DownloadConfig, DownloadError};

/// Retry bookkeeping for one fetch.
#[derive(Debug)]
pub(super) struct Retry {
    initial: Duration,
    max: Duration,
    retries: u32,
    /// The back-off before the next attempt (before jitter).
    next_wait: Duration,
    /// Failed attempts since the last one that delivered something.
    failures: u32,
    deadline: Instant,
    rng: ChaCha12Rng,
}

impl Retry {
    /// Retries as `config` says, never past `deadline`; `seed` drives the jitter.
    pub(super) fn new(config: &DownloadConfig, deadline: Instant, seed: u64) -> Self {
        Self {
            initial: config.retry_initial,
            max: config.retry_max.max(config.retry_initial),
            retries: config.retries,
            next_wait: config.retry_initial,
            failures: 0,
            deadline,
            rng: ChaCha12Rng::seed_from_u64(seed),
        }
    }

    /// After a failed attempt: waits the back-off and returns `Ok` to try again, or gives up with
    /// `error` when the consecutive failures exceed `retries` or the wait would pass the deadline.
    ///
    /// `progressed`: the attempt delivered bytes before it failed. Then the budget and the
    /// back-off start over: a long download over a flaky link that keeps moving should not die
    /// of the sum of its hiccups (the overall timeout still bounds it).
    pub(super) async fn after_failure(
        &mut self,
        error: DownloadError,
        progressed: bool,
    ) -> Result<(), DownloadError> {
        let wait = self.next_wait(&error, progressed, Instant::now())?;
        log::info!(
            "download: attempt failed ({error}); retry {}/{} in {wait:?}",
            self.failures,
            self.retries
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// The decision of `after_failure` at `now`: how long to wait, or `Err(error)` to give up.
    fn next_wait(
        &mut self,
        error: &DownloadError,
        progressed: bool,
        now: Instant,
    ) -> Result<Duration, DownloadError> {
        if progressed {
            self.failures = 0;
            self.next_wait = self.initial;
        }
        self.failures += 1;
        if self.failures > self.retries {
            log::warn!(
                "download: giving up after {} failed attempts: {error}",
                self.failures
            );
            return Err(error.clone());
        }
        let wait = self.jittered(self.next_wait);
        self.next_wait = self.next_wait.saturating_mul(2).min(self.max);
        if now + wait >= self.deadline {
            log::warn!("download: no time left for another attempt: {error}");
            return Err(error.clone());
        }
        Ok(wait)
    }

    /// `base` × a uniform factor in [0.5, 1.5): clients that lost the same server at the same
    /// moment must not come back in lock-step.
    fn jittered(&mut self, base: Duration) -> Duration {
        // 53 random bits → a uniform fraction in [0, 1).
        let fraction = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        Duration::try_from_secs_f64(base.as_secs_f64() * (0.5 + fraction)).unwrap_or(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::coap::endpoint::CoapConfig;

    fn config(retries: u32) -> DownloadConfig {
        DownloadConfig {
            ca_file: None,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            overall_timeout: Duration::from_secs(60),
            retries,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_millis(350),
            coap: CoapConfig::default(),
            block_szx: 6,
            coaps: Vec::new(),
        }
    }

    impl Retry {
        fn clone_state(&self) -> Self {
            Self {
                rng: self.rng.clone(),
                ..*self
            }
        }
    }

    #[test]
    fn jitter_stays_within_half_either_side() {
        let mut r = Retry::new(&config(3), Instant::now(), 7);
        let base = Duration::from_millis(1000);
        let waits: Vec<Duration> = (0..1000).map(|_| r.jittered(base)).collect();
        assert!(waits.iter().all(|w| *w >= base / 2 && *w < base * 3 / 2));
        // Spread over the whole interval, not stuck at one value.
        assert!(waits.iter().any(|w| *w < base * 3 / 4));
        assert!(waits.iter().any(|w| *w > base * 5 / 4));
    }

    #[test]
    fn doubles_to_the_cap_and_gives_up_after_the_budget() {
        let now = Instant::now();
        let mut r = Retry::new(&config(4), now + Duration::from_secs(60), 1);
        let lost = DownloadError::ConnectionLost("x".into());
        // Bases 100, 200, 350 (capped), 350 ms, each within ±50 %.
        for base in [100u64, 200, 350, 350] {
            let wait = r.next_wait(&lost, false, now).expect("within budget");
            let base = Duration::from_millis(base);
            assert!(
                wait >= base / 2 && wait <= base * 3 / 2,
                "{wait:?} vs {base:?}"
            );
        }
        assert_eq!(r.next_wait(&lost, false, now), Err(lost));
    }

    #[test]
    fn progress_restores_the_budget_and_the_deadline_wins() {
        let now = Instant::now();
        let mut r = Retry::new(&config(1), now + Duration::from_millis(500), 2);
        let lost = DownloadError::ConnectionLost("x".into());
        r.next_wait(&lost, false, now).expect("first retry");
        // A second failure without progress exceeds retries = 1 …
        assert!(r.clone_state().next_wait(&lost, false, now).is_err());
        // … but an attempt that delivered bytes starts the count and the back-off over.
        let wait = r.next_wait(&lost, true, now).expect("progress resets");
        assert!(wait <= Duration::from_millis(150));
        // Close to the deadline: no further attempt even with budget left.
        let late = now + Duration::from_millis(490);
        assert_eq!(r.next_wait(&lost, true, late), Err(lost));
    }

    #[tokio::test]
    async fn after_failure_sleeps_the_wait() {
        let mut c = config(1);
        c.retry_initial = Duration::from_millis(20);
        let start = Instant::now();
        let mut r = Retry::new(&c, start + Duration::from_secs(5), 3);
        let lost = DownloadError::ConnectionLost("x".into());
        r.after_failure(lost.clone(), false).await.expect("retry");
        assert!(Instant::now() - start >= Duration::from_millis(10));
        assert_eq!(r.after_failure(lost.clone(), false).await, Err(lost));
    }
}
