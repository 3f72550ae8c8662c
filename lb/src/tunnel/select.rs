//! Choosing which worker takes a request, among those that serve its route
//! and have room: weighted power of two choices (Mitzenmacher), aware of
//! latency and of declared capacity. Two candidates are drawn in proportion
//! to their weight; the one whose requests in flight, times its recent
//! response time, per unit of weight is lower wins. Where both declared a
//! limit for this request (the worker's `Tunnel-Max-Concurrency` or the
//! request's class's `limit`), requests in flight are counted against it:
//! the share of the limit in use across all cores, so a worker declaring 12
//! takes three times the requests of one declaring 4 at the same fill. When
//! that ties (both idle), a candidate clearly faster than the other (under
//! a quarter of its response time) wins; otherwise the first draw does. So
//! idle, equally fast workers share requests by weight, loaded ones by load,
//! and a worker that slows down gets proportionally less, even at low
//! concurrency where in-flight counts alone mostly tie.
//!
//! Plain data: the pool builds the [`Choice`]s and obeys the answer; the
//! tests below check the distribution without sockets.

use ptth_proto::rt::FastRng;

/// One candidate as selection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Choice {
    /// `Tunnel-Weight`, at least 1.
    pub(crate) weight: u32,
    /// Requests in flight on the worker (this core's count).
    pub(crate) in_flight: u32,
    /// Its recent time to a response head, microseconds (a moving average,
    /// [`Latency`]); 0 while unknown.
    pub(crate) latency_us: u32,
    /// The fullest limit that applies to this request on the worker, if
    /// any: its permits in use across cores, and the limit.
    pub(crate) limit: Option<Occupancy>,
}

/// A cross-core limit's fill: permits in use (all cores) out of `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Occupancy {
    pub(crate) in_use: u32,
    pub(crate) limit: u32,
}

impl Occupancy {
    /// The fuller of two (by share of its limit).
    pub(crate) fn fuller(self, other: Occupancy) -> Occupancy {
        let (a, b) = (u64::from(self.in_use) * u64::from(other.limit.max(1)), u64::from(other.in_use) * u64::from(self.limit.max(1)));
        if a >= b {
            self
        } else {
            other
        }
    }
}

impl Choice {
    /// Requests in flight (`by_limit`: the share of its limit in use) times
    /// response time per unit of weight. An unknown latency counts as
    /// `known` (the other's), so a new worker is neither shunned nor flooded.
    fn load(self, known: u32, by_limit: bool) -> u128 {
        let lat = if self.latency_us == 0 { known } else { self.latency_us };
        let (busy, of) = match (by_limit, self.limit) {
            (true, Some(o)) => (o.in_use, o.limit.max(1)),
            _ => (self.in_flight, 1),
        };
        u128::from(busy) * u128::from(lat.max(1)) * 1_000_000 / (u128::from(of) * u128::from(self.weight.max(1)))
    }
}

/// The index (into `choices`) of the candidate to try first; `None` when
/// there is none.
pub(crate) fn power_of_two(choices: &[Choice], rng: &mut FastRng) -> Option<usize> {
    let a = draw(choices, None, rng)?;
    let Some(b) = draw(choices, Some(a), rng) else { return Some(a) };
    let (ca, cb) = (choices[a], choices[b]);
    let known = |c: Choice, other: Choice| if c.latency_us == 0 { other.latency_us } else { c.latency_us };
    // Counted against declared limits only where both have one: a limit
    // says nothing about a worker that declared none.
    let by_limit = ca.limit.is_some() && cb.limit.is_some();
    let (la, lb) = (ca.load(known(ca, cb), by_limit), cb.load(known(cb, ca), by_limit));
    let b_clearly_faster = cb.latency_us != 0 && ca.latency_us != 0 && u64::from(cb.latency_us) * 4 < u64::from(ca.latency_us);
    Some(if lb < la || (lb == la && b_clearly_faster) { b } else { a })
}

/// An index drawn in proportion to weight, other than `not`.
fn draw(choices: &[Choice], not: Option<usize>, rng: &mut FastRng) -> Option<usize> {
    let eligible = || (0..choices.len()).filter(move |&i| Some(i) != not);
    let total: u64 = eligible().map(|i| u64::from(choices[i].weight.max(1))).sum();
    if total == 0 {
        return None;
    }
    let mut r = rng.below(total);
    for i in eligible() {
        let w = u64::from(choices[i].weight.max(1));
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    None
}

/// A worker's recent time to a response head on one core: an exponentially
/// weighted moving average (each sample counts 1/5), in microseconds.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Latency(u32);

impl Latency {
    pub(crate) fn observe(&mut self, took: std::time::Duration) {
        let sample = u32::try_from(took.as_micros()).unwrap_or(u32::MAX).max(1);
        self.0 = if self.0 == 0 { sample } else { ((u64::from(self.0) * 4 + u64::from(sample)) / 5) as u32 };
    }

    pub(crate) fn micros(self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(choices: &[Choice], n: usize) -> Vec<f64> {
        let mut rng = FastRng::seeded(7);
        let mut counts = vec![0usize; choices.len()];
        for _ in 0..n {
            counts[power_of_two(choices, &mut rng).unwrap()] += 1;
        }
        counts.into_iter().map(|c| c as f64 / n as f64).collect()
    }

    #[test]
    fn idle_workers_share_by_weight() {
        let idle = |weight| Choice { weight, in_flight: 0, latency_us: 0, limit: None };
        let s = shares(&[idle(1), idle(3)], 100_000);
        assert!((s[0] - 0.25).abs() < 0.02 && (s[1] - 0.75).abs() < 0.02, "{s:?}");
        let s = shares(&[idle(1), idle(1), idle(2)], 100_000);
        assert!((s[2] - 0.5).abs() < 0.02, "{s:?}");
    }

    #[test]
    fn a_loaded_worker_gets_less() {
        // Equal weights, one with requests piling up: it wins only when it
        // is drawn twice, which two distinct draws never do.
        let c = |weight, in_flight| Choice { weight, in_flight, latency_us: 0, limit: None };
        let s = shares(&[c(1, 8), c(1, 0)], 10_000);
        assert_eq!(s[0], 0.0, "{s:?}");
        // Load is per unit of weight: 4 in flight at weight 4 equals 1 at weight 1.
        let s = shares(&[c(4, 4), c(1, 2)], 10_000);
        assert_eq!(s[1], 0.0, "{s:?}");
    }

    #[test]
    fn a_slow_worker_gets_less_even_when_idle() {
        let c = |in_flight, latency_us| Choice { weight: 1, in_flight, latency_us, limit: None };
        // Both idle: the clearly faster one wins every pair.
        let s = shares(&[c(0, 10_000), c(0, 1_000)], 10_000);
        assert_eq!(s[0], 0.0, "{s:?}");
        // Within 4x of each other (the jitter of equally fast workers): shared
        // as if equal.
        let s = shares(&[c(0, 3_500), c(0, 1_000)], 100_000);
        assert!((s[0] - 0.5).abs() < 0.02, "{s:?}");
        // Loaded: in flight times latency. 1 request on a 10x slower worker
        // weighs more than 5 on the fast one.
        let s = shares(&[c(1, 10_000), c(5, 1_000)], 10_000);
        assert_eq!(s[0], 0.0, "{s:?}");
        let s = shares(&[c(1, 10_000), c(11, 1_000)], 10_000);
        assert_eq!(s[1], 0.0, "{s:?}");
        // Unknown latency: judged by in-flight counts alone.
        let s = shares(&[c(2, 0), c(1, 5_000)], 10_000);
        assert_eq!(s[0], 0.0, "{s:?}");
    }

    #[test]
    fn declared_limits_count_as_capacity() {
        let c = |in_flight, in_use, limit| Choice { weight: 1, in_flight, latency_us: 1_000, limit: Some(Occupancy { in_use, limit }) };
        // 3 of 4 against 6 of 12: the fuller one loses, though it has fewer in flight.
        let s = shares(&[c(3, 3, 4), c(6, 6, 12)], 10_000);
        assert_eq!(s[0], 0.0, "{s:?}");
        // Equally full: a tie, shared.
        let s = shares(&[c(1, 2, 4), c(1, 6, 12)], 100_000);
        assert!((s[0] - 0.5).abs() < 0.02, "{s:?}");
        // In use counts every core's requests, not this core's in flight.
        let s = shares(&[c(0, 4, 8), c(2, 2, 8)], 10_000);
        assert_eq!(s[0], 0.0, "{s:?}");
        // One without a limit: both judged by in flight.
        let free = Choice { weight: 1, in_flight: 1, latency_us: 1_000, limit: None };
        let s = shares(&[c(3, 1, 100), free], 10_000);
        assert_eq!(s[0], 0.0, "{s:?}");
        assert_eq!(Occupancy { in_use: 3, limit: 4 }.fuller(Occupancy { in_use: 1, limit: 1 }), Occupancy { in_use: 1, limit: 1 });
    }

    #[test]
    fn latency_is_a_moving_average() {
        let mut l = Latency::default();
        assert_eq!(l.micros(), 0, "unknown until a sample");
        l.observe(std::time::Duration::from_millis(10));
        assert_eq!(l.micros(), 10_000);
        for _ in 0..30 {
            l.observe(std::time::Duration::from_millis(1));
        }
        assert!((1_000..1_010).contains(&l.micros()), "{}", l.micros());
    }

    #[test]
    fn one_or_none() {
        let mut rng = FastRng::seeded(1);
        assert_eq!(power_of_two(&[], &mut rng), None);
        assert_eq!(power_of_two(&[Choice { weight: 5, in_flight: 100, latency_us: 0, limit: None }], &mut rng), Some(0));
    }
}
