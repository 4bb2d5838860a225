//! Waiting for something observable instead of sleeping a fixed time.
//!
//! [`eventually`] (blocking) and [`eventually_async`] call a probe until it reports success, pausing a little
//! longer each time (from 5 ms up to 100 ms), and panic with what was awaited, the timeout and the probe's last
//! answer when time is up. A probe answers with a [`Probe`]: `bool`, `Option<T>` (the value is returned) or
//! `Result<T, E>` (the last error is shown on failure).

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// What a probe of [`eventually`] answers: ready with a value, or not yet (with a note for the failure message).
pub trait Probe {
    type Value;
    fn ready(self) -> Result<Self::Value, Option<String>>;
}

impl Probe for bool {
    type Value = ();
    fn ready(self) -> Result<(), Option<String>> {
        if self { Ok(()) } else { Err(None) }
    }
}

impl<T> Probe for Option<T> {
    type Value = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Display> Probe for Result<T, E> {
    type Value = T;
    fn ready(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:#}")))
    }
}

#[track_caller]
fn timed_out(timeout: Duration, what: &str, last: Option<String>) -> ! {
    match last {
        Some(note) => panic!("timed out after {timeout:?} waiting for {what}; last: {note}"),
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Calls `probe` until it is ready and returns its value; after `timeout`, the probe's last note.
pub fn poll<P: Probe>(
    timeout: Duration,
    mut probe: impl FnMut() -> P,
) -> Result<P::Value, Option<String>> {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        let last = match probe().ready() {
            Ok(v) => return Ok(v),
            Err(note) => note,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(last);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// [`poll`] for an async probe.
pub async fn poll_async<P, F>(
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> Result<P::Value, Option<String>>
where
    P: Probe,
    F: Future<Output = P>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        let last = match probe().await.ready() {
            Ok(v) => return Ok(v),
            Err(note) => note,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(last);
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Calls `probe` until it is ready and returns its value; panics naming `what` after `timeout`.
#[track_caller]
pub fn eventually<P: Probe>(timeout: Duration, what: &str, probe: impl FnMut() -> P) -> P::Value {
    poll(timeout, probe).unwrap_or_else(|last| timed_out(timeout, what, last))
}

/// [`eventually`] for an async probe: `eventually_async(t, "x", || async { ... })`.
pub async fn eventually_async<P, F>(
    timeout: Duration,
    what: &str,
    probe: impl FnMut() -> F,
) -> P::Value
where
    P: Probe,
    F: Future<Output = P>,
{
    match poll_async(timeout, probe).await {
        Ok(v) => v,
        Err(last) => timed_out(timeout, what, last),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_value_once_ready() {
        let mut n = 0;
        let v = eventually(Duration::from_secs(5), "n to reach 3", || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(v, 3);
    }

    #[test]
    fn names_what_it_waited_for_and_the_last_error() {
        let err = std::panic::catch_unwind(|| {
            eventually(Duration::from_millis(30), "the impossible", || {
                Err::<(), _>("still not")
            })
        })
        .expect_err("must time out");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            msg.contains("waiting for the impossible") && msg.contains("last: still not"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn async_probe() {
        let start = tokio::time::Instant::now();
        eventually_async(Duration::from_secs(5), "50 ms to pass", || async move {
            start.elapsed() >= Duration::from_millis(50)
        })
        .await;
    }
}
