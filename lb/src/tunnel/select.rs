//! Choosing which worker takes a request, among those that serve its route
//! and have room: weighted power of two choices (Mitzenmacher). Two
//! candidates are drawn in proportion to their weight; the one with fewer
//! requests in flight per unit of weight wins, ties to the first draw. Idle
//! workers thus share requests by weight, loaded ones by load, and a worker
//! that slows down (its in-flight count grows) gets proportionally less.
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
}

impl Choice {
    /// In-flight requests per unit of weight, scaled to stay integral.
    fn load(self) -> u64 {
        u64::from(self.in_flight) * 1_000_000 / u64::from(self.weight.max(1))
    }
}

/// The index (into `choices`) of the candidate to try first; `None` when
/// there is none.
pub(crate) fn power_of_two(choices: &[Choice], rng: &mut FastRng) -> Option<usize> {
    let a = draw(choices, None, rng)?;
    let Some(b) = draw(choices, Some(a), rng) else { return Some(a) };
    Some(if choices[b].load() < choices[a].load() { b } else { a })
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
        let idle = |weight| Choice { weight, in_flight: 0 };
        let s = shares(&[idle(1), idle(3)], 100_000);
        assert!((s[0] - 0.25).abs() < 0.02 && (s[1] - 0.75).abs() < 0.02, "{s:?}");
        let s = shares(&[idle(1), idle(1), idle(2)], 100_000);
        assert!((s[2] - 0.5).abs() < 0.02, "{s:?}");
    }

    #[test]
    fn a_loaded_worker_gets_less() {
        // Equal weights, one with requests piling up: it wins only when it
        // is drawn twice, which two distinct draws never do.
        let s = shares(&[Choice { weight: 1, in_flight: 8 }, Choice { weight: 1, in_flight: 0 }], 10_000);
        assert_eq!(s[0], 0.0, "{s:?}");
        // Load is per unit of weight: 4 in flight at weight 4 equals 1 at weight 1.
        let s = shares(&[Choice { weight: 4, in_flight: 4 }, Choice { weight: 1, in_flight: 2 }], 10_000);
        assert_eq!(s[1], 0.0, "{s:?}");
    }

    #[test]
    fn one_or_none() {
        let mut rng = FastRng::seeded(1);
        assert_eq!(power_of_two(&[], &mut rng), None);
        assert_eq!(power_of_two(&[Choice { weight: 5, in_flight: 100 }], &mut rng), Some(0));
    }
}
