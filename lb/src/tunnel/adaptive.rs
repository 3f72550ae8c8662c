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
//! - one decision per round trip: after the limit changes, the responses to
//!   requests sent before the change are skipped (they say nothing about
//!   the new limit), then a window of as many responses as the limit (at
//!   least [`MIN_WINDOW`]) is averaged into `rtt`. Deciding on every
//!   response instead reads a round trip late: a flood's first responses,
//!   sent before the worker queued, still look fast and run the limit on,
//!   then the slow ones drive it below what the worker runs at once;
//! - gradient = [`TOLERANCE`] × `min_rtt` / `rtt`. Below 1 (latency past the
//!   tolerance) the limit becomes limit × gradient (at most halved); at 1 or
//!   more it grows by half its square root (the headroom, at least 1), and
//!   only while the class used more than half of it in the window (a class
//!   using little says nothing about more). It stays within 1 and the
//!   declared maximum.
//!
//! Against a worker that runs `C` at once and queues the rest, the latency
//! at a limit `L > C` is `L / C` times its minimum, so one decision brings
//! the limit to `TOLERANCE × C`, and it then moves between there and a step
//! above: requests beyond that would only wait inside the worker, where the
//! lb cannot prioritize them, instead of in the lb's queue, where it can.
//!
//! Plain data: the pool feeds it each response's latency; the tests below
//! run it against simulated workers.

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
/// The fewest responses a decision averages.
pub(crate) const MIN_WINDOW: u32 = 3;

/// One adaptive class limit on one worker (shared by the lb's cores).
#[derive(Debug, Clone)]
pub(crate) struct Gradient {
    limit: f64,
    max: f64,
    min_rtt_us: f64,
    since_probe: u32,
    probe: Option<Probe>,
    /// Responses still to come to requests sent before the last change.
    skip: u32,
    window: Window,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    min_us: f64,
    got: u32,
    seen: u32,
}

/// The responses of the current decision window.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    sum_us: f64,
    n: u32,
    /// The most of the class in flight at one of them.
    busiest: u32,
}

impl Gradient {
    /// Measures the worker's minimum latency first (a probe), then starts
    /// at half the declared maximum (at least 1).
    pub(crate) fn new(max: u32) -> Gradient {
        let max = f64::from(max.max(1));
        let probe = Some(Probe { min_us: f64::INFINITY, got: 0, seen: 0 });
        Gradient {
            limit: (max / 2.0).ceil().max(1.0),
            max,
            min_rtt_us: f64::INFINITY,
            since_probe: 0,
            probe,
            skip: 0,
            window: Window::default(),
        }
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
        let before = self.limit();
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
                }
                self.probe = None;
                self.since_probe = 0;
                self.window = Window::default();
            }
            return self.limit();
        }
        self.min_rtt_us = self.min_rtt_us.min(us);
        self.since_probe += 1;
        if self.since_probe >= PROBE_EVERY {
            self.probe = Some(Probe { min_us: f64::INFINITY, got: 0, seen: 0 });
            return self.limit();
        }
        if self.skip > 0 {
            self.skip -= 1;
            return self.limit();
        }
        let w = &mut self.window;
        w.sum_us += us;
        w.n += 1;
        w.busiest = w.busiest.max(in_flight);
        if w.n < before.max(MIN_WINDOW) {
            return before;
        }
        let w = std::mem::take(&mut self.window);
        let gradient = TOLERANCE * self.min_rtt_us / (w.sum_us / f64::from(w.n));
        let target = if gradient < 1.0 {
            self.limit * gradient.max(0.5)
        } else if f64::from(w.busiest) * 2.0 < self.limit {
            self.limit
        } else {
            self.limit + (self.limit.sqrt() / 2.0).max(1.0)
        };
        self.limit = target.clamp(1.0, self.max);
        if self.limit() != before {
            // Those still out were sent under the old limit.
            self.skip = in_flight.saturating_sub(1);
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

    /// The same worker in time: the lb keeps `g.limit()` requests in flight
    /// (a flood), the worker runs `capacity` at once for `service` each, first
    /// come first served, the rest waiting inside it; each response is
    /// observed when it arrives, so the latency the estimate sees lags the
    /// concurrency that caused it by a round trip, as on a real worker.
    /// Returns, per response, the concurrency at the worker when it arrived.
    fn simulate(g: &mut Gradient, capacity: usize, service: Duration, responses: usize) -> Vec<u32> {
        let mut now = Duration::ZERO;
        // (sent, finishes) of the running ones; sent times of those waiting inside.
        let mut running: Vec<(Duration, Duration)> = Vec::new();
        let mut inside: std::collections::VecDeque<Duration> = Default::default();
        let mut seen = Vec::with_capacity(responses);
        while seen.len() < responses {
            while (running.len() + inside.len()) < g.limit() as usize {
                if running.len() < capacity {
                    running.push((now, now + service));
                } else {
                    inside.push_back(now);
                }
            }
            let i = (0..running.len()).min_by_key(|&i| running[i].1).expect("one runs");
            let (sent, done) = running.swap_remove(i);
            now = done;
            let in_flight = (running.len() + inside.len() + 1) as u32;
            seen.push(in_flight);
            g.observe(now - sent, in_flight);
            if let Some(s) = inside.pop_front() {
                running.push((s, now + service));
            }
        }
        seen
    }

    #[test]
    fn a_flood_does_not_run_the_limit_past_what_the_worker_runs() {
        // Against a worker running 4 at once: the first probe, then the start
        // (half of 16); responses that left before the worker queued still
        // look fast, which must not run the limit on while the slow ones are
        // on their way, nor the slow ones drive it below 4 (capacity lost).
        for capacity in [4u32, 16] {
            let mut g = Gradient::new(4 * capacity);
            let seen = simulate(&mut g, capacity as usize, Duration::from_millis(200), 60 * capacity as usize);
            let peak = seen.iter().copied().max().unwrap();
            assert!(peak <= 2 * capacity, "capacity {capacity}: peak {peak} above the start: {:?}", &seen[..60]);
            let tail = &seen[seen.len() - 20 * capacity as usize..];
            let mean = tail.iter().map(|&n| f64::from(n)).sum::<f64>() / tail.len() as f64;
            let c = f64::from(capacity);
            assert!(tail.iter().all(|&n| n >= capacity), "capacity {capacity}: below it: {tail:?}");
            assert!(mean <= c * 1.6, "capacity {capacity}: settled at {mean:.1}: {tail:?}");
        }
    }

    #[test]
    fn follows_a_worker_that_runs_more_at_once() {
        let mut g = Gradient::new(64);
        simulate(&mut g, 4, Duration::from_millis(50), 400);
        assert!(g.limit() <= 7, "{}", g.limit());
        // The worker now runs 16 at once: the limit climbs to it.
        let seen = simulate(&mut g, 16, Duration::from_millis(50), 1500);
        let tail = &seen[seen.len() - 300..];
        assert!(tail.iter().all(|&n| n >= 14), "{:?}", &tail[..40]);
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
