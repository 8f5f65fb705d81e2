//! The outer retry policy for API calls that may span an outage (boot, lifecycle calls): the
//! SDK has already retried inside each call; this loop waits out a longer one, with jittered
//! exponential backoff so a fleet booting together spreads its retries.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use tokio::time::{Instant, sleep};
use tracing::warn;

use super::Result;

/// First pause before retrying a failed API call or re-reading a state in flight.
pub const RETRY_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between retries: a boot deadline is minutes, so retrying every few seconds
/// keeps the API budget small while still finishing soon after a burst of errors ends.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);

/// Calls `op` until it succeeds, fails for good, or `deadline` passes; retryable failures
/// (throttling, 5xx, timeouts, unreachable) wait with jittered exponential backoff.
pub async fn retry<T, F, Fut>(deadline: Instant, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = RETRY_BACKOFF;
    let mut failures = 0u32;
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if e.is_retryable() && Instant::now() + backoff < deadline => {
                failures += 1;
                // The first failure and then every fourth: a long outage stays readable.
                if failures % 4 == 1 {
                    warn!(error = %e, failures, "API call failed; retrying");
                }
                sleep(jitter(backoff)).await;
                backoff = next(backoff);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The pause after `backoff`: doubled, capped.
pub fn next(backoff: Duration) -> Duration {
    (backoff * 2).min(MAX_RETRY_BACKOFF)
}

/// Between half and all of `d`, so a fleet booting together spreads its retries.
pub fn jitter(d: Duration) -> Duration {
    let random = RandomState::new().hash_one(std::time::Instant::now());
    let fraction = 0.5 + (random % 1000) as f64 / 2000.0;
    d.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{self, CloudError};

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_gives_up_at_the_deadline_and_not_on_final_errors() {
        use crate::cloud::Call;
        let api = |code: &str| CloudError::Api {
            call: Call::new("ec2", "DescribeNetworkInterfaces", "eni-1"),
            code: Some(code.to_owned()),
            message: None,
            status: Some(503),
        };
        let start = Instant::now();
        let mut calls = 0;
        let result: cloud::Result<()> = retry(start + Duration::from_secs(10), || {
            calls += 1;
            async { Err(api("Unavailable")) }
        })
        .await;
        assert!(result.is_err());
        assert!(calls >= 4, "{calls} calls");
        assert!(start.elapsed() <= Duration::from_secs(10));
        let mut calls = 0;
        let result: cloud::Result<()> = retry(start + Duration::from_secs(60), || {
            calls += 1;
            let mut e = api("InvalidParameterValue");
            if let CloudError::Api { status, .. } = &mut e {
                *status = Some(400);
            }
            async move { Err(e) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }
}
