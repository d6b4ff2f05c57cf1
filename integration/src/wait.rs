//! Waiting for a condition with a deadline, instead of sleeping a fixed time.

use std::time::{Duration, Instant};

use crate::Error;

/// Polls `check` every 100 ms until it returns `Some(value)` or `timeout` passes; the error
/// names `what` was awaited and the last observation `check` reported through `last`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut(&mut String) -> Option<T>,
) -> Result<T, Error> {
    wait_every(what, timeout, Duration::from_millis(100), check)
}

/// [`wait_for`], polling every `every` (tightly where a few milliseconds matter, such as a
/// restart's downtime).
pub fn wait_every<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut(&mut String) -> Option<T>,
) -> Result<T, Error> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(v) = check(&mut last) {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                what: what.to_string(),
                after: timeout,
                last,
            });
        }
        std::thread::sleep(every);
    }
}
