//! The restart decision: given an instance's restart policy, how it ended, how long it ran and the streak
//! of restarts before, whether to restart it, after how long, or to leave it ended. A pure function, so
//! every policy is tested without running anything; the supervisor only carries out what it answers.
//!
//! Delays grow from `backoff.min` by `backoff.factor` up to `backoff.max`. A run at least as long as
//! [`healthy_after`] counts as healthy: the delay and the count of restarts in a row start over.

use std::time::Duration;

use crate::config::{Policy, RestartPolicy};
use crate::engine::Exit;

/// What the supervisor remembers between the runs of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streak {
    /// Restarts in a row without a healthy run in between.
    pub restarts: u32,
    /// The delay the next restart waits.
    pub next_delay: Duration,
}

impl Streak {
    /// The streak of an instance that has not ended yet.
    pub fn new(policy: &RestartPolicy) -> Self {
        Streak {
            restarts: 0,
            next_delay: policy.backoff.min.get(),
        }
    }
}

/// What to do with an instance that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again after `delay`; remember `streak`.
    Restart { delay: Duration, streak: Streak },
    /// The policy does not restart it: `success` says whether it ended cleanly.
    Leave { success: bool },
    /// It was restarted `retry.max` times in a row already: give up on it.
    GiveUp,
}

/// How long a run must last for its end to count as a fresh failure rather than one more in a row.
pub fn healthy_after(policy: &RestartPolicy) -> Duration {
    policy.backoff.max.get().max(Duration::from_secs(10))
}

/// Decides what follows an instance's end: `exit` after running for `ran`, with `streak` from before.
pub fn decide(policy: &RestartPolicy, exit: &Exit, ran: Duration, streak: Streak) -> Decision {
    let streak = if ran >= healthy_after(policy) {
        Streak::new(policy)
    } else {
        streak
    };
    let restart = match policy.policy {
        Policy::Always => true,
        Policy::OnFailure => !exit.success(),
        Policy::No => false,
    };
    if !restart {
        return Decision::Leave {
            success: exit.success(),
        };
    }
    let restarts = streak.restarts + 1;
    if policy.retry.max > 0 && restarts > policy.retry.max {
        return Decision::GiveUp;
    }
    let b = &policy.backoff;
    Decision::Restart {
        delay: streak.next_delay,
        streak: Streak {
            restarts,
            next_delay: streak.next_delay.mul_f64(b.factor).min(b.max.get()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backoff, Retry};
    use baetyl_sdk::config::HumanDuration;

    fn policy(p: Policy, max: u32, min_ms: u64, max_ms: u64, factor: f64) -> RestartPolicy {
        RestartPolicy {
            policy: p,
            retry: Retry { max },
            backoff: Backoff {
                min: HumanDuration::from_millis(min_ms),
                max: HumanDuration::from_millis(max_ms),
                factor,
            },
        }
    }

    const QUICK: Duration = Duration::from_millis(50);
    const CRASH: Exit = Exit::Signal(9);
    const CLEAN: Exit = Exit::Code(0);

    /// The delays of `n` quick failures in a row, or where the streak ended.
    fn delays(p: &RestartPolicy, n: usize) -> Vec<Result<u128, Decision>> {
        let mut streak = Streak::new(p);
        (0..n)
            .map(|_| match decide(p, &CRASH, QUICK, streak) {
                Decision::Restart { delay, streak: s } => {
                    streak = s;
                    Ok(delay.as_millis())
                }
                other => Err(other),
            })
            .collect()
    }

    #[test]
    fn delays_grow_by_factor_up_to_max() {
        let p = policy(Policy::Always, 0, 100, 1000, 3.0);
        assert_eq!(
            delays(&p, 5),
            vec![Ok(100), Ok(300), Ok(900), Ok(1000), Ok(1000)]
        );
        let constant = policy(Policy::Always, 0, 2000, 60_000, 1.0);
        assert_eq!(delays(&constant, 3), vec![Ok(2000), Ok(2000), Ok(2000)]);
    }

    #[test]
    fn each_policy_restarts_what_it_says() {
        let fresh = |p: &RestartPolicy, exit: &Exit| decide(p, exit, QUICK, Streak::new(p));
        let always = policy(Policy::Always, 0, 100, 1000, 2.0);
        let on_failure = policy(Policy::OnFailure, 0, 100, 1000, 2.0);
        let no = policy(Policy::No, 0, 100, 1000, 2.0);
        for exit in [
            CLEAN,
            Exit::Code(3),
            CRASH,
            Exit::Error("no such file".into()),
        ] {
            assert!(
                matches!(fresh(&always, &exit), Decision::Restart { .. }),
                "always restarts after {exit}"
            );
            assert_eq!(
                fresh(&no, &exit),
                Decision::Leave {
                    success: exit.success()
                }
            );
        }
        assert_eq!(
            fresh(&on_failure, &CLEAN),
            Decision::Leave { success: true }
        );
        for exit in [Exit::Code(3), CRASH, Exit::Error("x".into())] {
            assert!(matches!(
                fresh(&on_failure, &exit),
                Decision::Restart { .. }
            ));
        }
    }

    #[test]
    fn retry_max_gives_up_after_that_many_restarts_in_a_row() {
        let p = policy(Policy::OnFailure, 2, 100, 1000, 2.0);
        assert_eq!(
            delays(&p, 4),
            vec![
                Ok(100),
                Ok(200),
                Err(Decision::GiveUp),
                Err(Decision::GiveUp)
            ]
        );
        // 0 means no limit.
        let unlimited = policy(Policy::Always, 0, 100, 100, 1.0);
        assert!(delays(&unlimited, 1000).iter().all(Result::is_ok));
    }

    #[test]
    fn a_healthy_run_starts_the_streak_over() {
        let p = policy(Policy::Always, 2, 100, 1000, 2.0);
        let worn = Streak {
            restarts: 2,
            next_delay: Duration::from_millis(400),
        };
        // Quick again: the third restart in a row is one too many.
        assert_eq!(decide(&p, &CRASH, QUICK, worn), Decision::GiveUp);
        // After a run of 10 s (the floor of `healthy_after`), it is the first failure of a new streak.
        assert_eq!(healthy_after(&p), Duration::from_secs(10));
        assert_eq!(
            decide(&p, &CRASH, Duration::from_secs(10), worn),
            Decision::Restart {
                delay: Duration::from_millis(100),
                streak: Streak {
                    restarts: 1,
                    next_delay: Duration::from_millis(200)
                }
            }
        );
        // With a longer backoff cap, a run must outlast the cap.
        let slow = policy(Policy::Always, 0, 1000, 60_000, 2.0);
        assert_eq!(healthy_after(&slow), Duration::from_secs(60));
        let worn = Streak {
            restarts: 5,
            next_delay: Duration::from_secs(32),
        };
        assert!(matches!(
            decide(&slow, &CRASH, Duration::from_secs(59), worn),
            Decision::Restart { delay, .. } if delay == Duration::from_secs(32)
        ));
    }
}
