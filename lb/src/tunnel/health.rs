//! Outlier detection: a worker whose attempts keep failing is taken out of
//! selection for a while, so least-loaded routing does not feed a broken
//! worker (a sidecar whose origin is down answers fast, so it looks least
//! loaded). Envoy's consecutive-errors outlier detection is the model.
//!
//! A worker can also withdraw itself: its sidecar, finding its origin down,
//! answers 503 with `Tunnel-Unprocessed: ?1` and `Retry-After`, and is out
//! of selection for that long ([`Health::withdraw`]), without counting as a
//! failure (docs/PROTOCOL.md §5).
//!
//! Per worker, per core, plain data: the pool reports each attempt's
//! outcome ([`Health::record`]) and asks [`Health::out`] when it
//! chooses; the tests below drive it with explicit instants. Each core
//! judges from what it sees itself, so no state is shared across cores.

use std::time::{Duration, Instant};

pub(crate) use crate::config::HealthPolicy as Policy;

/// One worker's record on one core.
#[derive(Debug, Default)]
pub(crate) struct Health {
    failures: u32,
    /// Ejections since the worker last succeeded.
    ejections: u32,
    until: Option<Instant>,
    /// The worker said it cannot serve until then.
    withdrawn: Option<Instant>,
}

/// The longest a worker's `Retry-After` keeps it out.
pub(crate) const MAX_WITHDRAWAL: Duration = Duration::from_secs(60);

/// What an attempt says about its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A response from the worker's application.
    Ok,
    /// The worker failed: its tunnel broke or timed out, it answered with an
    /// invalid response, or with 502/503/504 (its origin is down).
    Failed,
}

impl Health {
    /// Whether the worker is ejected for failing at `now`.
    pub(crate) fn ejected(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// Whether it withdrew itself and is still out at `now`.
    pub(crate) fn withdrawn(&self, now: Instant) -> bool {
        self.withdrawn.is_some_and(|u| now < u)
    }

    /// Out of selection at `now`: ejected or withdrawn.
    pub(crate) fn out(&self, now: Instant) -> bool {
        self.ejected(now) || self.withdrawn(now)
    }

    /// The worker asked not to get requests for `d` (its `Retry-After`,
    /// at most [`MAX_WITHDRAWAL`]); returns how long it is out.
    pub(crate) fn withdraw(&mut self, now: Instant, d: Duration) -> Duration {
        let d = d.min(MAX_WITHDRAWAL);
        self.withdrawn = Some(now + d);
        d
    }

    /// Records one attempt (`now` is needed for a failure only). Returns how
    /// long the worker is ejected for when this failure ejects it.
    pub(crate) fn record(&mut self, v: Verdict, now: Option<Instant>, p: &Policy) -> Option<Duration> {
        if v == Verdict::Ok {
            self.failures = 0;
            self.ejections = 0;
            return None;
        }
        let now = now.unwrap_or_else(Instant::now);
        // Failures of requests already on their way when it was ejected say
        // nothing new.
        if self.ejected(now) {
            return None;
        }
        self.failures += 1;
        if p.consecutive_failures == 0 || self.failures < p.consecutive_failures {
            return None;
        }
        let grow = 1u32.checked_shl(self.ejections.min(16)).unwrap_or(u32::MAX);
        let d = p.ejection.saturating_mul(grow).min(p.max_ejection);
        self.until = Some(now + d);
        self.ejections += 1;
        self.failures = 0;
        Some(d)
    }

    /// Whether it was ever ejected or withdrawn (a check with no clock
    /// read, so that selection asks the clock only when one may be on).
    pub(crate) fn ever_out(&self) -> bool {
        self.until.is_some() || self.withdrawn.is_some()
    }

    /// When the current ejection ends, if one is on.
    #[cfg(test)]
    fn until(&self, now: Instant) -> Option<Instant> {
        self.until.filter(|&u| now < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy { consecutive_failures: 3, ejection: Duration::from_secs(1), max_ejection: Duration::from_secs(5) };

    #[test]
    fn consecutive_failures_eject_for_a_growing_time() {
        let t0 = Instant::now();
        let mut h = Health::default();
        assert_eq!(h.record(Verdict::Failed, Some(t0), &P), None);
        assert_eq!(h.record(Verdict::Failed, Some(t0), &P), None);
        assert_eq!(h.record(Verdict::Failed, Some(t0), &P), Some(Duration::from_secs(1)));
        assert!(h.ejected(t0) && !h.ejected(t0 + Duration::from_secs(1)));
        // Failures while ejected (requests already on their way) neither
        // extend it nor count towards the next one.
        assert_eq!(h.record(Verdict::Failed, Some(t0), &P), None);
        // Back, and failing again: twice as long, then capped.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..2 {
            assert_eq!(h.record(Verdict::Failed, Some(t1), &P), None);
        }
        assert_eq!(h.record(Verdict::Failed, Some(t1), &P), Some(Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(2);
        for t in [t2, t2 + Duration::from_secs(4)] {
            h.record(Verdict::Failed, Some(t), &P);
            h.record(Verdict::Failed, Some(t), &P);
            h.record(Verdict::Failed, Some(t), &P);
        }
        assert_eq!(h.until(t2 + Duration::from_secs(4)), Some(t2 + Duration::from_secs(9)), "capped at 5 s");
    }

    #[test]
    fn a_withdrawal_is_out_for_its_time_and_no_failure() {
        let t0 = Instant::now();
        let mut h = Health::default();
        assert!(!h.ever_out());
        assert_eq!(h.withdraw(t0, Duration::from_secs(2)), Duration::from_secs(2));
        assert!(h.out(t0) && h.withdrawn(t0) && !h.ejected(t0));
        assert!(!h.out(t0 + Duration::from_secs(2)), "back when its Retry-After ends");
        assert_eq!(h.withdraw(t0, Duration::from_secs(3600)), MAX_WITHDRAWAL, "a worker cannot stay out for an hour of Retry-After");
        // It did not count towards an ejection.
        assert_eq!(h.record(Verdict::Failed, Some(t0), &P), None);
        assert_eq!(h.record(Verdict::Failed, Some(t0), &P), None);
        assert_eq!(h.record(Verdict::Failed, Some(t0), &P), Some(Duration::from_secs(1)));
    }

    #[test]
    fn a_success_resets_the_count_and_the_backoff() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.record(Verdict::Failed, Some(t0), &P);
        h.record(Verdict::Failed, Some(t0), &P);
        h.record(Verdict::Ok, Some(t0), &P);
        assert_eq!(h.record(Verdict::Failed, Some(t0), &P), None, "the run of failures starts again");
        h.record(Verdict::Failed, Some(t0), &P);
        assert_eq!(h.record(Verdict::Failed, Some(t0), &P), Some(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        h.record(Verdict::Ok, Some(t1), &P);
        for _ in 0..2 {
            h.record(Verdict::Failed, Some(t1), &P);
        }
        assert_eq!(h.record(Verdict::Failed, Some(t1), &P), Some(Duration::from_secs(1)), "back to the first ejection time");
        let never = Policy { consecutive_failures: 0, ..P };
        let mut h = Health::default();
        for _ in 0..100 {
            assert_eq!(h.record(Verdict::Failed, Some(t0), &never), None);
        }
    }
}
