//! What each request class's queue shares across cores: how many of its
//! requests wait now (over all cores, against the bound the class declared
//! with `queue=`) and per core, what was queued and shed, and the oldest
//! wait, for `/status`.
//!
//! Place in the request path: only when a request must wait
//! (`tunnel::acquire` → `Pool::enqueue`); a request that finds room never
//! touches any of it, so light classes stay core-local.
//!
//! Plain data (atomics and a registry by class name): the tests below check
//! the bound across threads and that every ticket gives its place back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_utils::CachePadded;

use crate::stats;

/// One class (by name) over every worker that declares it.
#[derive(Debug)]
pub(crate) struct ClassQueue {
    pub(crate) name: Box<str>,
    /// Requests of the class waiting now, on all cores.
    waiting: CachePadded<AtomicU32>,
    per_core: Box<[CachePadded<ClassCoreStats>]>,
}

/// One core's counts for a class; written by that core only.
#[derive(Debug, Default)]
pub(crate) struct ClassCoreStats {
    /// Requests that waited.
    pub(crate) queued: AtomicU64,
    /// 503: the class's queue (or the core's) was full.
    pub(crate) shed_full: AtomicU64,
    /// 503: the wait passed the class's `wait` (or `queue.max_wait_ms`).
    pub(crate) shed_timeout: AtomicU64,
    /// The client went away while its request waited.
    pub(crate) abandoned: AtomicU64,
    /// When this core's oldest waiter of the class started waiting, in ms
    /// since the Unix epoch (0: none). Refreshed by the core's sweep.
    pub(crate) oldest_since_ms: AtomicU64,
}

/// A place in a class's queue; given back when dropped.
#[derive(Debug)]
pub(crate) struct Ticket(Arc<ClassQueue>);

impl ClassQueue {
    fn new(name: &str, cores: usize) -> ClassQueue {
        ClassQueue { name: name.into(), waiting: CachePadded::default(), per_core: (0..cores).map(|_| CachePadded::default()).collect() }
    }

    /// A place for one more waiter, unless `bound` already wait (over all
    /// cores). The count never exceeds the bound at any instant: a failed
    /// try counts for a moment and is taken back.
    pub(crate) fn try_enter(self: &Arc<Self>, bound: Option<u32>) -> Option<Ticket> {
        let before = self.waiting.fetch_add(1, Ordering::AcqRel);
        if bound.is_some_and(|b| before >= b) {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Ticket(self.clone()))
    }

    /// Requests of the class waiting now (a moment's view).
    pub(crate) fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    pub(crate) fn core(&self, core: usize) -> &ClassCoreStats {
        &self.per_core[core % self.per_core.len()]
    }

    /// Sums the cores' counts.
    pub(crate) fn totals(&self) -> ClassTotals {
        let mut t = ClassTotals { waiting: self.waiting(), ..ClassTotals::default() };
        for c in self.per_core.iter() {
            t.queued += stats::get(&c.queued);
            t.shed_full += stats::get(&c.shed_full);
            t.shed_timeout += stats::get(&c.shed_timeout);
            t.abandoned += stats::get(&c.abandoned);
            let since = stats::get(&c.oldest_since_ms);
            if since != 0 && t.oldest_since_ms.is_none_or(|o| since < o) {
                t.oldest_since_ms = Some(since);
            }
        }
        t
    }
}

impl Ticket {
    pub(crate) fn class(&self) -> &Arc<ClassQueue> {
        &self.0
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A class's counts over all cores.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClassTotals {
    pub(crate) waiting: u32,
    pub(crate) queued: u64,
    pub(crate) shed_full: u64,
    pub(crate) shed_timeout: u64,
    pub(crate) abandoned: u64,
    pub(crate) oldest_since_ms: Option<u64>,
}

/// The classes by name. Used on the control path only (tunnel setup,
/// `/status`); an entry no worker declares and nobody waits in goes away at
/// the next setup, so names a worker made up cannot grow it without bound.
#[derive(Debug)]
pub(crate) struct Registry {
    cores: usize,
    map: Mutex<HashMap<Box<str>, Arc<ClassQueue>>>,
}

impl Registry {
    pub(crate) fn new(cores: usize) -> Registry {
        Registry { cores: cores.max(1), map: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Box<str>, Arc<ClassQueue>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The class named `name`, made on first use.
    pub(crate) fn get(&self, name: &str) -> Arc<ClassQueue> {
        let mut map = self.lock();
        // Held only here: nothing declares it, nothing waits in it.
        map.retain(|n, q| Arc::strong_count(q) > 1 || &**n == name);
        map.entry(name.into()).or_insert_with(|| Arc::new(ClassQueue::new(name, self.cores))).clone()
    }

    /// Every class, by name.
    pub(crate) fn all(&self) -> Vec<Arc<ClassQueue>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_holds_across_threads_and_tickets_give_back() {
        let r = Registry::new(2);
        let q = r.get("heavy");
        let held: Vec<Ticket> = std::thread::scope(|s| {
            let hands: Vec<_> = (0..8).map(|_| s.spawn(|| (0..100).filter_map(|_| q.try_enter(Some(50))).collect::<Vec<_>>())).collect();
            hands.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(held.len(), 50, "exactly the bound got in");
        assert_eq!(q.waiting(), 50);
        drop(held);
        assert_eq!(q.waiting(), 0);
        assert!(q.try_enter(Some(0)).is_none(), "queue=0: nobody waits");
        let t = q.try_enter(None).expect("no bound of its own");
        assert_eq!(t.class().name.as_ref(), "heavy");
    }

    #[test]
    fn names_nobody_uses_go_away() {
        let r = Registry::new(1);
        let kept = r.get("kept");
        drop(r.get("made-up"));
        let _other = r.get("other");
        let names: Vec<_> = r.all().iter().map(|q| q.name.to_string()).collect();
        assert_eq!(names, ["kept", "other"]);
        assert!(Arc::ptr_eq(&kept, &r.get("kept")), "one queue per name");
    }

    #[test]
    fn totals_sum_the_cores() {
        let q = Arc::new(ClassQueue::new("c", 2));
        stats::add(&q.core(0).queued, 2);
        stats::add(&q.core(1).queued, 3);
        stats::add(&q.core(1).shed_timeout, 1);
        stats::set_u64(&q.core(0).oldest_since_ms, 900);
        stats::set_u64(&q.core(1).oldest_since_ms, 700);
        let t = q.totals();
        assert_eq!((t.queued, t.shed_timeout, t.oldest_since_ms), (5, 1, Some(700)));
    }
}
