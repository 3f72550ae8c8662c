//! Adaptive class limits: for a class declared `adaptive` (its `limit` then
//! being the most it may reach), the lb estimates the concurrency that keeps
//! the class's latency near its minimum, the gradient method of Envoy's
//! adaptive concurrency filter and Netflix's concurrency-limits:
//!
//! - `min_rtt`: the lowest time to a response head seen. First, and then
//!   every [`PROBE_EVERY`] samples, the limit drops to [`PROBE_LIMIT`] until
//!   [`PROBE_SAMPLES`] responses arrive at that concurrency, and their
//!   minimum becomes `min_rtt` (so it follows a worker that got slower for
//!   good; a minimum taken while the worker is saturated would only ratchet
//!   the limit up);
//! - `rtt`: a moving average of recent samples (each counts 1/8), or the
//!   sample itself when it is slower (the average alone lags a worker that
//!   starts to queue);
//! - gradient = [`TOLERANCE`] × `min_rtt` / `rtt`. At 1 or more (latency
//!   within the tolerance of its minimum) the limit grows by its square
//!   root (the headroom); below 1 it shrinks by the gradient (at most by
//!   half). Each step moves a fifth of the way to the new value, and the
//!   limit stays within 1 and the declared maximum. It grows only while the
//!   class uses more than half of it (a class using little says nothing
//!   about more).
//!
//! Against a worker that runs `C` at once and queues the rest, the limit
//! settles near `TOLERANCE × C`: requests beyond that would only wait inside
//! the worker, where the lb cannot prioritize them, instead of in the lb's
//! queue, where it can.
//!
//! Plain data: the pool feeds it each response's latency; the tests below
//! run it against a simulated worker.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How much above its minimum the latency may be before the limit shrinks.
pub(crate) const TOLERANCE: f64 = 1.25;
/// Samples between two measurements of the minimum latency.
pub(crate) const PROBE_EVERY: u32 = 500;
/// The limit while the minimum is measured.
pub(crate) const PROBE_LIMIT: u32 = 1;
/// Responses at [`PROBE_LIMIT`] a measurement takes.
pub(crate) const PROBE_SAMPLES: u32 = 3;

/// One adaptive class limit on one worker (shared by the lb's cores).
#[derive(Debug, Clone)]
pub(crate) struct Gradient {
    limit: f64,
    max: f64,
    rtt_us: f64,
    min_rtt_us: f64,
    since_probe: u32,
    probe: Option<Probe>,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    min_us: f64,
    got: u32,
    seen: u32,
}

impl Gradient {
    /// Measures the worker's minimum latency first (a probe), then starts
    /// at half the declared maximum (at least 1).
    pub(crate) fn new(max: u32) -> Gradient {
        let max = f64::from(max.max(1));
        let probe = Some(Probe { min_us: f64::INFINITY, got: 0, seen: 0 });
        Gradient { limit: (max / 2.0).ceil().max(1.0), max, rtt_us: 0.0, min_rtt_us: f64::INFINITY, since_probe: 0, probe }
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> u32 {
        match self.probe {
            Some(_) => PROBE_LIMIT,
            None => self.limit.floor().max(1.0) as u32,
        }
    }

    /// One response of the class took `took` to its head while `in_flight`
    /// of the class ran (this one included); returns the new limit.
    pub(crate) fn observe(&mut self, took: Duration, in_flight: u32) -> u32 {
        let us = (took.as_secs_f64() * 1e6).max(1.0);
        if let Some(p) = &mut self.probe {
            p.seen += 1;
            if in_flight <= PROBE_LIMIT {
                p.min_us = p.min_us.min(us);
                p.got += 1;
            }
            // Requests that started before the probe drain first; a probe
            // that never gets its samples gives up.
            if p.got >= PROBE_SAMPLES || p.seen > 64 + 4 * self.limit as u32 {
                if p.min_us.is_finite() {
                    self.min_rtt_us = p.min_us;
                    self.rtt_us = p.min_us;
                }
                self.probe = None;
                self.since_probe = 0;
            }
            return self.limit();
        }
        self.rtt_us = if self.rtt_us == 0.0 { us } else { self.rtt_us + (us - self.rtt_us) / 8.0 };
        self.min_rtt_us = self.min_rtt_us.min(us);
        self.since_probe += 1;
        // A slow sample counts at once (the average alone lags it, and the
        // limit would run on while the worker already queues).
        let gradient = TOLERANCE * self.min_rtt_us / self.rtt_us.max(us);
        let target = if gradient >= 1.0 {
            if f64::from(in_flight) * 2.0 < self.limit {
                self.limit
            } else {
                self.limit + self.limit.sqrt()
            }
        } else {
            self.limit * gradient.max(0.5)
        };
        self.limit = (self.limit + (target - self.limit) / 5.0).clamp(1.0, self.max);
        if self.since_probe >= PROBE_EVERY {
            self.probe = Some(Probe { min_us: f64::INFINITY, got: 0, seen: 0 });
        }
        self.limit()
    }
}

/// An adaptive limit as the lb's cores share it: the estimator behind a
/// lock, taken once per response of the class (an adaptive class is a
/// limited one, whose requests take a shared permit anyway), and its current
/// value, read without a lock by the permit check.
#[derive(Debug)]
pub(crate) struct AdaptiveLimit {
    gradient: Mutex<Gradient>,
    current: AtomicU32,
}

impl AdaptiveLimit {
    pub(crate) fn new(max: u32) -> AdaptiveLimit {
        let g = Gradient::new(max);
        AdaptiveLimit { current: AtomicU32::new(g.limit()), gradient: Mutex::new(g) }
    }

    pub(crate) fn limit(&self) -> u32 {
        self.current.load(Ordering::Relaxed)
    }

    /// Feeds one response; returns the limit before and after.
    pub(crate) fn observe(&self, took: Duration, in_flight: u32) -> (u32, u32) {
        let mut g = self.gradient.lock().unwrap_or_else(|p| p.into_inner());
        let before = self.limit();
        let after = g.observe(took, in_flight);
        self.current.store(after, Ordering::Relaxed);
        (before, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that runs `capacity` requests at once in `base` each and
    /// queues the rest: with `n` in flight, a response takes
    /// `base × max(1, n / capacity)`. The class always has more waiting than
    /// its limit (a flood), so `n` is the limit.
    fn run(g: &mut Gradient, capacity: u32, base: Duration, samples: usize) -> Vec<u32> {
        run_all(g, capacity, base, samples).into_iter().filter_map(|(n, probing)| (!probing).then_some(n)).collect()
    }

    /// Each sample's limit after it, and whether a probe is on.
    fn run_all(g: &mut Gradient, capacity: u32, base: Duration, samples: usize) -> Vec<(u32, bool)> {
        (0..samples)
            .map(|_| {
                let n = g.limit();
                let took = base.mul_f64((f64::from(n) / f64::from(capacity)).max(1.0));
                (g.observe(took, n), g.probe.is_some())
            })
            .collect()
    }

    #[test]
    fn settles_near_what_the_worker_runs_at_once() {
        for capacity in [2, 4, 16] {
            let mut g = Gradient::new(64);
            let seen = run(&mut g, capacity, Duration::from_millis(200), 4000);
            let tail = &seen[seen.len() - 1000..];
            let (lo, hi) = (tail.iter().min().copied().unwrap(), tail.iter().max().copied().unwrap());
            let mean = tail.iter().map(|&n| f64::from(n)).sum::<f64>() / tail.len() as f64;
            let c = f64::from(capacity);
            // Around TOLERANCE × C on average; never below what it runs at once
            // (less one), never far above.
            assert!(mean >= c && mean <= c * 1.5 + 1.0, "capacity {capacity}: mean {mean:.1}");
            assert!(lo + 1 >= capacity && f64::from(hi) <= c * 1.7 + 1.0, "capacity {capacity}: settled in {lo}..={hi}");
        }
    }

    #[test]
    fn stays_within_one_and_the_declared_maximum() {
        // A worker that never slows down: the limit grows to the maximum.
        let mut g = Gradient::new(8);
        assert_eq!(g.limit(), PROBE_LIMIT, "measures the minimum first");
        for _ in 0..PROBE_SAMPLES {
            g.observe(Duration::from_millis(5), 1);
        }
        assert_eq!(g.limit(), 4, "then starts at half the maximum");
        let seen = run(&mut g, 1000, Duration::from_millis(5), 400);
        assert_eq!(*seen.last().unwrap(), 8);
        // One that gets much slower at once: down to 1 at worst.
        let mut g = Gradient::new(8);
        for _ in 0..200 {
            g.observe(Duration::from_millis(10), 8);
        }
        let low = (0..200).map(|_| g.observe(Duration::from_secs(10), 8)).min();
        assert_eq!(low, Some(1));
    }

    #[test]
    fn follows_a_worker_that_got_slower_for_good() {
        // Its minimum moves up with the window, so the limit recovers
        // instead of staying pinned at 1.
        let mut g = Gradient::new(16);
        run(&mut g, 4, Duration::from_millis(10), 2000);
        let seen = run(&mut g, 4, Duration::from_millis(40), 4000);
        let tail = &seen[seen.len() - 1000..];
        assert!(tail.iter().all(|&n| (3..=7).contains(&n)), "{:?}", &tail[..20]);
    }

    #[test]
    fn probes_its_minimum_at_low_concurrency_now_and_then() {
        let mut g = Gradient::new(16);
        let seen = run_all(&mut g, 4, Duration::from_millis(10), 3 * PROBE_EVERY as usize);
        let probes = seen.windows(2).filter(|w| !w[0].1 && w[1].1).count();
        assert!((2..=3).contains(&probes), "{probes} probes");
        assert!(seen.iter().filter(|(_, probing)| *probing).all(|(n, _)| *n == PROBE_LIMIT));
        assert!(seen.iter().filter(|(_, probing)| *probing).count() < 20, "a probe is short");
    }

    #[test]
    fn the_minimum_comes_from_low_concurrency_even_under_a_flood() {
        // The first responses of a flood are slow (the worker queues); the
        // first probe takes the minimum at concurrency 1, so the limit does
        // not run up on a wrong minimum.
        let mut g = Gradient::new(16);
        let seen = run(&mut g, 4, Duration::from_millis(200), 300);
        assert!(seen.iter().all(|&n| n <= 9), "at most a step above where it started: {:?}", &seen[..30]);
        assert!((4..=6).contains(seen.last().unwrap()), "{:?}", &seen[seen.len() - 10..]);
    }

    #[test]
    fn a_class_using_little_does_not_grow() {
        let mut g = Gradient::new(64);
        for _ in 0..PROBE_SAMPLES {
            g.observe(Duration::from_millis(1), 1);
        }
        for _ in 0..1000 {
            g.observe(Duration::from_millis(1), 2);
        }
        assert_eq!(g.limit(), 32, "still the start: 2 in flight says nothing about 40");
    }
}
