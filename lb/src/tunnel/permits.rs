//! A worker's cross-core concurrency limit (`Tunnel-Max-Concurrency`): the
//! one counter the cores share per request, and the record of which cores
//! have a request waiting because the worker was at its limit, so a permit
//! freed on one core reaches a waiter on another.
//!
//! Plain data (two atomics): the pool takes and gives back permits and sends
//! "capacity freed" to the cores [`Permits::give_back`] names; the tests
//! below check the limit and that no waiting core is missed, whatever the
//! order of a failed take and a give-back on two cores.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

#[derive(Debug, Default)]
pub(crate) struct Permits {
    in_use: CachePadded<AtomicU32>,
    /// One bit per core (core id modulo 64) that failed to take a permit
    /// since the last give-back told it.
    waiting: AtomicU64,
}

impl Permits {
    /// Takes a permit if fewer than `max` are in use. A core that fails
    /// records that it waits, then tries once more: a permit given back
    /// between the failure and the record is then either seen by this second
    /// try or its give-back sees the record (both sides use one total order,
    /// `SeqCst`), so no waiter is left behind.
    pub(crate) fn try_take(&self, core: usize, max: u32) -> bool {
        if self.take_once(max) {
            return true;
        }
        self.waiting.fetch_or(bit(core), Ordering::SeqCst);
        self.take_once(max)
    }

    fn take_once(&self, max: u32) -> bool {
        if self.in_use.fetch_add(1, Ordering::SeqCst) < max {
            true
        } else {
            self.in_use.fetch_sub(1, Ordering::SeqCst);
            false
        }
    }

    /// Gives a permit back; returns the cores (as a bit set, see [`cores`])
    /// to tell that one is free, clearing the record.
    pub(crate) fn give_back(&self) -> u64 {
        self.in_use.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return 0;
        }
        self.waiting.swap(0, Ordering::SeqCst)
    }

    /// The cores recorded as waiting (as a bit set), clearing the record:
    /// for telling them the limit itself grew.
    pub(crate) fn take_waiting(&self) -> u64 {
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return 0;
        }
        self.waiting.swap(0, Ordering::SeqCst)
    }

    /// Permits taken now (for `/status`; a moment's view, not for decisions:
    /// a failed take counts for an instant).
    pub(crate) fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Relaxed)
    }
}

fn bit(core: usize) -> u64 {
    1 << (core % 64)
}

/// The cores of `mask` among `n` cores.
pub(crate) fn cores(mask: u64, n: usize) -> impl Iterator<Item = usize> {
    (0..n).filter(move |&c| mask & bit(c) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_in_use() {
        let p = Permits::default();
        assert!(p.try_take(0, 2) && p.try_take(1, 2));
        assert!(!p.try_take(0, 2));
        assert_eq!(p.in_use(), 2);
        // Core 0 waits; the give-back says so, once.
        assert_eq!(cores(p.give_back(), 4).collect::<Vec<_>>(), [0]);
        assert_eq!(p.give_back(), 0);
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn every_waiting_core_is_told() {
        let p = Permits::default();
        assert!(p.try_take(0, 1));
        assert!(!p.try_take(1, 1));
        assert!(!p.try_take(3, 1));
        assert!(!p.try_take(67, 1));
        // Past 64 cores a bit stands for several: all of them are told (a
        // core told in vain finds nobody waiting).
        assert_eq!(cores(p.give_back(), 68).collect::<Vec<_>>(), [1, 3, 65, 67]);
    }

    /// The interleaving that would lose a wake-up without the second try: a
    /// core fails, the holder gives back before the failure is recorded.
    #[test]
    fn a_give_back_between_failure_and_record_is_not_lost() {
        let p = Permits::default();
        assert!(p.try_take(0, 1));
        // Core 1's first attempt fails...
        assert!(!p.take_once(1));
        // ...core 0 gives back before core 1 records that it waits (nobody to tell)...
        assert_eq!(p.give_back(), 0);
        // ...so core 1's record-then-retry gets the permit itself.
        p.waiting.fetch_or(bit(1), Ordering::SeqCst);
        assert!(p.take_once(1));
    }

    #[test]
    fn threads_never_exceed_the_limit() {
        let p = std::sync::Arc::new(Permits::default());
        let held = std::sync::Arc::new(AtomicU32::new(0));
        let peak = std::sync::Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|core| {
                let (p, held, peak) = (p.clone(), held.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if p.try_take(core, 3) {
                            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::Relaxed);
                            held.fetch_sub(1, Ordering::SeqCst);
                            p.give_back();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 3, "{peak:?}");
        assert_eq!(p.in_use(), 0);
    }
}
