//! Exponential restart delays: `min`, then `min*factor`, ... capped at `max`.

use std::time::Duration;

use crate::config::Backoff as BackoffConfig;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    factor: f64,
    next: Duration,
}

impl Backoff {
    pub fn new(cfg: &BackoffConfig) -> Self {
        Backoff {
            min: cfg.min.get(),
            max: cfg.max.get(),
            factor: cfg.factor,
            next: cfg.min.get(),
        }
    }

    /// The delay before the next restart; each call grows the following one.
    pub fn next_delay(&mut self) -> Duration {
        let current = self.next;
        self.next = self.next.mul_f64(self.factor).min(self.max);
        current
    }

    /// Back to `min`, after an instance ran long enough to count as healthy.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// How long an instance must run for its next failure to count as a fresh one.
    pub fn healthy_after(&self) -> Duration {
        self.max.max(Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baetyl_sdk::config::HumanDuration;

    #[test]
    fn grows_by_factor_and_caps_at_max() {
        let mut b = Backoff::new(&BackoffConfig {
            min: HumanDuration::from_millis(100),
            max: HumanDuration::from_millis(1000),
            factor: 3.0,
        });
        let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, vec![100, 300, 900, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn factor_one_is_constant() {
        let mut b = Backoff::new(&BackoffConfig {
            min: HumanDuration::from_secs(2),
            max: HumanDuration::from_secs(60),
            factor: 1.0,
        });
        assert_eq!(b.next_delay(), Duration::from_secs(2));
        assert_eq!(b.next_delay(), Duration::from_secs(2));
    }
}
