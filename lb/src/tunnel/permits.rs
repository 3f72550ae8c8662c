//! A worker's cross-core concurrency limit (`Tunnel-Max-Concurrency`, or a
//! class's `limit`): the one counter the cores share per request, the record
//! of which cores have a request waiting because it was at its limit (so a
//! permit freed on one core reaches a waiter on another), and each core's
//! first waiter's place in line (so a freed permit goes to the most urgent,
//! oldest waiter on any core, not to the freeing core's own).
//!
//! Plain data (atomics): the pool takes and gives back permits, publishes
//! where its first waiter stands, and sends "capacity freed" to the cores
//! [`Permits::give_back`] names; the tests below check the limit, that no
//! waiting core is missed whatever the order of a failed take and a
//! give-back on two cores, and that nobody takes a permit ahead of an
//! earlier place published on another core.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crossbeam_utils::CachePadded;

/// Where a request stands in line for a permit: its RFC 9218 urgency first
/// (0 goes first), then when it started waiting (or arrived). One monotonic
/// clock and one epoch per process, so places compare across cores; ties
/// (the same microsecond) let both go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Place(u64);

/// No waiter: behind every place.
const NOBODY: u64 = u64::MAX;

impl Place {
    /// Bits below the urgency: microseconds since the epoch (73,000 years).
    const TIME_BITS: u32 = 61;

    pub(crate) fn new(urgency: u8, since: Instant) -> Place {
        let us = since.saturating_duration_since(Self::epoch()).as_micros().min((1 << Self::TIME_BITS) - 1) as u64;
        Place((u64::from(urgency.min(7)) << Self::TIME_BITS) | us)
    }

    /// The process's epoch for places, fixed by its first use (the pool
    /// fixes it when a core starts, before any request waits).
    pub(crate) fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }
}

/// Why [`Permits::try_take`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// As many as the limit are in use.
    Full,
    /// One is free, but a waiter on another core stands ahead in line: it
    /// has been told (its core is in the waiting record) and takes it.
    Behind,
}

#[derive(Debug)]
pub(crate) struct Permits {
    in_use: CachePadded<AtomicU32>,
    /// One bit per core (core id modulo 64) that failed to take a permit
    /// since the last give-back told it.
    waiting: AtomicU64,
    /// One bit per core (modulo 64) that may have a place in `heads`: the
    /// common case (nobody waits) reads one word.
    headed: AtomicU64,
    /// Per core: the place of its first waiter held back by this permit,
    /// [`NOBODY`] if none. Written only by its own core.
    heads: Box<[CachePadded<AtomicU64>]>,
}

impl Permits {
    pub(crate) fn new(cores: usize) -> Permits {
        Permits {
            in_use: CachePadded::new(AtomicU32::new(0)),
            waiting: AtomicU64::new(0),
            headed: AtomicU64::new(0),
            heads: (0..cores.max(1)).map(|_| CachePadded::new(AtomicU64::new(NOBODY))).collect(),
        }
    }

    /// Takes a permit for a request at `place` on `core` if fewer than `max`
    /// are in use and no other core published a waiter ahead of it (this
    /// core's own line is the pool's to keep). A core that fails records
    /// that it waits, then looks once more: a permit given back (or a place
    /// withdrawn) between the failure and the record is then either seen by
    /// this second look or its giver sees the record (both sides use one
    /// total order, `SeqCst`), so no waiter is left behind.
    pub(crate) fn try_take(&self, core: usize, max: u32, place: Place) -> Result<(), Refused> {
        if self.ahead_of(core, place) {
            self.waiting.fetch_or(bit(core), Ordering::SeqCst);
            if self.ahead_of(core, place) {
                return Err(Refused::Behind);
            }
        }
        if self.take_once(max) {
            return Ok(());
        }
        self.waiting.fetch_or(bit(core), Ordering::SeqCst);
        if self.take_once(max) {
            Ok(())
        } else {
            Err(Refused::Full)
        }
    }

    fn take_once(&self, max: u32) -> bool {
        if self.in_use.fetch_add(1, Ordering::SeqCst) < max {
            true
        } else {
            self.in_use.fetch_sub(1, Ordering::SeqCst);
            false
        }
    }

    /// Whether a core other than `core` published a place ahead of `place`.
    fn ahead_of(&self, core: usize, place: Place) -> bool {
        let mut m = self.headed.load(Ordering::SeqCst);
        while m != 0 {
            let b = m.trailing_zeros() as usize;
            m &= m - 1;
            for c in (b..self.heads.len()).step_by(64) {
                if c != core && self.heads[c].load(Ordering::SeqCst) < place.0 {
                    return true;
                }
            }
        }
        false
    }

    /// Publishes the place of `core`'s first waiter for this permit (`None`:
    /// it has none). Returns whether the place moved back or was withdrawn:
    /// a permit that waiter would have taken may be free, and the cores
    /// recorded as waiting must then be told (see [`Permits::take_waiting`]).
    pub(crate) fn publish(&self, core: usize, place: Option<Place>) -> bool {
        let new = place.map_or(NOBODY, |p| p.0);
        let old = self.heads[core % self.heads.len()].swap(new, Ordering::SeqCst);
        if new != NOBODY {
            self.headed.fetch_or(bit(core), Ordering::SeqCst);
        } else if self.heads.len() <= 64 {
            // Past 64 cores a bit stands for several: it stays set (a stale
            // bit costs a look at a withdrawn place).
            self.headed.fetch_and(!bit(core), Ordering::SeqCst);
        }
        new > old
    }

    /// Gives a permit back on `core`; returns the other cores (as a bit set,
    /// see [`cores`]) to tell that one is free, clearing their record.
    pub(crate) fn give_back(&self, core: usize) -> u64 {
        self.in_use.fetch_sub(1, Ordering::SeqCst);
        self.take_waiting(core)
    }

    /// The cores recorded as waiting (as a bit set), clearing their record:
    /// for telling them a permit is free, the limit itself grew, or a place
    /// ahead of theirs was withdrawn. `core`, the one asking, keeps its own
    /// record: whether its own waiters get what freed is its pool's
    /// business, and a later give-back elsewhere must still tell it.
    pub(crate) fn take_waiting(&self, core: usize) -> u64 {
        let w = self.waiting.load(Ordering::SeqCst);
        if w & !bit(core) == 0 {
            return 0;
        }
        self.waiting.fetch_and(bit(core), Ordering::SeqCst)
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
    use std::time::Duration;

    /// A place at `urgency`, `ms` after a common start.
    fn at(urgency: u8, ms: u64) -> Place {
        Place::new(urgency, Place::epoch() + Duration::from_secs(1) + Duration::from_millis(ms))
    }

    fn take(p: &Permits, core: usize, max: u32) -> bool {
        p.try_take(core, max, at(3, 0)).is_ok()
    }

    #[test]
    fn at_most_max_in_use() {
        let p = Permits::new(4);
        assert!(take(&p, 0, 2) && take(&p, 1, 2));
        assert_eq!(p.try_take(0, 2, at(3, 0)), Err(Refused::Full));
        assert_eq!(p.in_use(), 2);
        // Core 0 waits; a give-back on core 1 says so, once.
        assert_eq!(cores(p.give_back(1), 4).collect::<Vec<_>>(), [0]);
        assert_eq!(p.give_back(1), 0);
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn every_waiting_core_is_told() {
        let p = Permits::new(68);
        assert!(take(&p, 0, 1));
        assert!(!take(&p, 1, 1));
        assert!(!take(&p, 3, 1));
        assert!(!take(&p, 67, 1));
        // Past 64 cores a bit stands for several: all of them are told (a
        // core told in vain finds nobody waiting).
        assert_eq!(cores(p.give_back(0), 68).collect::<Vec<_>>(), [1, 3, 65, 67]);
    }

    /// A core telling the others keeps its own record: a later give-back on
    /// another core still reaches its waiters.
    #[test]
    fn the_core_that_tells_keeps_its_own_record() {
        let p = Permits::new(2);
        assert!(take(&p, 1, 1));
        assert!(!take(&p, 0, 1));
        assert_eq!(p.take_waiting(0), 0, "only itself waits: nobody to tell");
        assert_eq!(cores(p.give_back(1), 2).collect::<Vec<_>>(), [0]);
        assert_eq!(p.give_back(1), 0, "told once");
    }

    /// The interleaving that would lose a wake-up without the second try: a
    /// core fails, the holder gives back before the failure is recorded.
    #[test]
    fn a_give_back_between_failure_and_record_is_not_lost() {
        let p = Permits::new(2);
        assert!(take(&p, 0, 1));
        // Core 1's first attempt fails...
        assert!(!p.take_once(1));
        // ...core 0 gives back before core 1 records that it waits (nobody to tell)...
        assert_eq!(p.give_back(0), 0);
        // ...so core 1's record-then-retry gets the permit itself.
        p.waiting.fetch_or(bit(1), Ordering::SeqCst);
        assert!(p.take_once(1));
    }

    /// Strict priority, then arrival order, across cores: a free permit is
    /// not taken past an earlier (or more urgent) place another core
    /// published, whatever core frees it or asks; a core's own place does
    /// not hold it back (its line is its pool's).
    #[test]
    fn nobody_takes_a_permit_ahead_of_a_place_published_elsewhere() {
        let p = Permits::new(3);
        assert!(!p.publish(1, Some(at(1, 10))), "a first place moves nothing back");
        assert_eq!(p.try_take(0, 1, at(1, 20)), Err(Refused::Behind), "later at the same urgency");
        assert_eq!(p.try_take(2, 1, at(5, 0)), Err(Refused::Behind), "earlier but less urgent");
        assert_eq!(p.in_use(), 0, "nothing taken");
        // Those that were refused are recorded, to be told when the place moves.
        assert_eq!(cores(p.waiting.load(Ordering::SeqCst), 3).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(p.try_take(2, 1, at(0, 50)), Ok(()), "more urgent goes first");
        p.give_back(2);
        assert_eq!(p.try_take(1, 1, at(1, 20)), Ok(()), "core 1's own place does not hold it back");
        p.give_back(1);
        // Core 1's waiter left: its place is withdrawn, and that is news.
        assert!(p.publish(1, None));
        assert_eq!(p.try_take(0, 1, at(1, 20)), Ok(()));
        // A place published behind another moves back: news too.
        assert!(!p.publish(2, Some(at(2, 0))));
        assert!(p.publish(2, Some(at(2, 5))));
        assert!(!p.publish(2, Some(at(1, 5))), "moving forward is not");
    }

    #[test]
    fn places_order_by_urgency_then_time() {
        assert!(at(0, 500) < at(1, 0));
        assert!(at(3, 1) < at(3, 2));
        assert!(at(7, 0) > at(6, u64::from(u32::MAX)));
        assert!(at(9, 0) == at(7, 0), "past 7 is the least urgent");
        assert!(at(7, 1_000_000_000).0 < NOBODY);
    }

    #[test]
    fn threads_never_exceed_the_limit() {
        let p = std::sync::Arc::new(Permits::new(4));
        let held = std::sync::Arc::new(AtomicU32::new(0));
        let peak = std::sync::Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|core| {
                let (p, held, peak) = (p.clone(), held.clone(), peak.clone());
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        // Places come and go on every core meanwhile.
                        p.publish(core, (i % 3 == 0).then(|| at(3, i)));
                        if p.try_take(core, 3, at(3, i)).is_ok() {
                            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::Relaxed);
                            held.fetch_sub(1, Ordering::SeqCst);
                            p.give_back(core);
                        }
                    }
                    p.publish(core, None);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Relaxed) <= 3, "{peak:?}");
        assert_eq!(p.in_use(), 0);
        assert_eq!(p.headed.load(Ordering::SeqCst), 0, "every place withdrawn");
    }
}
