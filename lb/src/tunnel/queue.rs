//! One core's wait queue: requests that found every tunnel able to serve
//! them busy (or their class at its limit) wait here until a tunnel, an h2
//! stream slot or a class permit frees, their deadline passes, or no worker
//! serves the route any more. Strict priority between urgencies (RFC 9218
//! §4.1: 0 most urgent), first come first served within one.
//!
//! Plain data, generic over what is handed out (a pool lease in the lb, a
//! number in the tests): when room frees, the pool offers it to the waiters
//! in priority order ([`WaitQueue::offer`]), and the first one it can serve
//! gets it; the request path awaits [`Waiter::wait`] under its deadline and
//! cancels its place however the wait ends. Nothing here touches a socket.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::tunnel::class_queue::Ticket;
use crate::tunnel::permits::{Permits, Place};

/// A cross-core permit (a worker's limit or its class's) that refused a
/// waiter at its last try, so the waiter's place is published on it for the
/// other cores to respect (tunnel/permits.rs).
pub(crate) struct HeldBack {
    /// The worker's entry in this core's pool.
    pub(crate) slot: usize,
    pub(crate) worker: Arc<str>,
    pub(crate) permits: Arc<Permits>,
}

/// A request waiting for room on its route.
pub(crate) struct Waiter<T> {
    pub(crate) host: Box<[u8]>,
    pub(crate) path: Box<[u8]>,
    /// The method, to find the request's class on the worker offering room.
    pub(crate) method: Box<[u8]>,
    /// RFC 9218 urgency, 0 (most urgent) to 7: its queue level.
    pub(crate) urgency: u8,
    /// When it started waiting.
    pub(crate) since: Instant,
    /// Its place in line on any core: urgency, then `since`.
    pub(crate) place: Place,
    /// The cross-core permits that refused it at its last try.
    pub(crate) held_back: RefCell<Vec<HeldBack>>,
    /// Its place in its class's queue, given back when the waiter goes.
    pub(crate) ticket: Option<Ticket>,
    got: RefCell<Option<T>>,
    /// No worker serves the route any more: stop waiting.
    no_route: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl<T> Waiter<T> {
    /// Records that `h` refused it; returns whether that is news.
    pub(crate) fn hold(&self, h: HeldBack) -> bool {
        let mut held = self.held_back.borrow_mut();
        if held.iter().any(|x| Arc::ptr_eq(&x.permits, &h.permits)) {
            return false;
        }
        held.push(h);
        true
    }

    /// Forgets the permits of worker `slot` (what holds it back there now is
    /// a tunnel, not a permit); returns whether it had any.
    pub(crate) fn unhold(&self, slot: usize) -> bool {
        let mut held = self.held_back.borrow_mut();
        let n = held.len();
        held.retain(|h| h.slot != slot);
        held.len() != n
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Resolves with what was handed over, or `None` when no worker serves
    /// the route any more. Bound it with a timeout: the queue has no clock.
    pub(crate) fn wait(self: &Rc<Self>) -> Wait<'_, T> {
        Wait { w: self }
    }
}

/// The future of [`Waiter::wait`].
pub(crate) struct Wait<'a, T> {
    w: &'a Rc<Waiter<T>>,
}

impl<T> Future for Wait<'_, T> {
    type Output = Option<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(t) = self.w.got.borrow_mut().take() {
            return Poll::Ready(Some(t));
        }
        if self.w.no_route.get() {
            return Poll::Ready(None);
        }
        *self.w.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The queue is at its bound (`queue.max_waiting`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Full;

/// What a waiter's route has now, when the workers changed.
pub(crate) enum Reroute<T> {
    /// Still busy: keep waiting.
    Wait,
    /// Room on another worker: here it is.
    Give(T),
    /// No worker serves the route any more.
    NoRoute,
}

/// Urgency levels (RFC 9218 §4.1: 0 to 7).
const LEVELS: usize = 8;

/// Waiters by urgency, FIFO within each; bounded in total length.
pub(crate) struct WaitQueue<T> {
    levels: [VecDeque<Rc<Waiter<T>>>; LEVELS],
    len: usize,
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        WaitQueue { levels: Default::default(), len: 0 }
    }
}

/// What a request waits for, as the queue keeps it.
pub(crate) struct Want<'a> {
    pub(crate) host: &'a [u8],
    pub(crate) path: &'a [u8],
    pub(crate) method: &'a [u8],
    pub(crate) urgency: u8,
}

impl<T> WaitQueue<T> {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a waiter at the back of its urgency level, unless `max` already
    /// wait (its `ticket` is then given back). `held_back`: the cross-core
    /// permits that refused it just now.
    pub(crate) fn enqueue(
        &mut self,
        want: &Want<'_>,
        max: usize,
        ticket: Option<Ticket>,
        held_back: Vec<HeldBack>,
    ) -> Result<Rc<Waiter<T>>, Full> {
        if self.len >= max {
            return Err(Full);
        }
        let urgency = want.urgency.min(LEVELS as u8 - 1);
        let since = Instant::now();
        let w = Rc::new(Waiter {
            host: want.host.into(),
            path: want.path.into(),
            method: want.method.into(),
            urgency,
            since,
            place: Place::new(urgency, since),
            held_back: RefCell::new(held_back),
            ticket,
            got: RefCell::new(None),
            no_route: Cell::new(false),
            waker: RefCell::new(None),
        });
        self.levels[usize::from(w.urgency)].push_back(w.clone());
        self.len += 1;
        Ok(w)
    }

    /// Takes `w` out of the queue (its wait ended: served, timed out, or its
    /// client went away). Returns what was handed to it but not yet taken,
    /// which the caller gives back.
    pub(crate) fn cancel(&mut self, w: &Rc<Waiter<T>>) -> Option<T> {
        let level = &mut self.levels[usize::from(w.urgency)];
        if let Some(i) = level.iter().position(|x| Rc::ptr_eq(x, w)) {
            level.remove(i);
            self.len -= 1;
        }
        w.got.borrow_mut().take()
    }

    /// Every waiter, most urgent first.
    pub(crate) fn each(&self, f: impl FnMut(&Waiter<T>)) {
        self.levels.iter().flatten().map(|w| &**w).for_each(f);
    }

    /// Room freed: offers it to each waiter in priority order (most urgent
    /// level first, oldest first within it) until `give` serves one, which
    /// leaves the queue and is woken. A waiter `give` cannot serve (another
    /// route, or its class at its limit) keeps its place. Returns whether
    /// one was served.
    pub(crate) fn offer(&mut self, mut give: impl FnMut(&Waiter<T>) -> Option<T>) -> bool {
        if self.len == 0 {
            return false;
        }
        for level in &mut self.levels {
            for i in 0..level.len() {
                if let Some(t) = give(&level[i]) {
                    let w = level.remove(i).expect("index in range");
                    self.len -= 1;
                    *w.got.borrow_mut() = Some(t);
                    w.wake();
                    return true;
                }
            }
        }
        false
    }

    /// The workers changed (one left): each waiter, most urgent and oldest
    /// first, is asked again where its route stands.
    pub(crate) fn reroute(&mut self, mut decide: impl FnMut(&Waiter<T>) -> Reroute<T>) {
        for level in &mut self.levels {
            let mut i = 0;
            while i < level.len() {
                match decide(&level[i]) {
                    Reroute::Wait => {
                        i += 1;
                        continue;
                    }
                    Reroute::Give(t) => *level[i].got.borrow_mut() = Some(t),
                    Reroute::NoRoute => level[i].no_route.set(true),
                }
                let w = level.remove(i).expect("index in range");
                self.len -= 1;
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls the waiter's future once with a counting waker.
    fn poll(w: &Rc<Waiter<u32>>, wakes: &Arc<Count>) -> Poll<Option<u32>> {
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(w.wait());
        f.as_mut().poll(&mut cx)
    }

    fn want(path: &[u8], urgency: u8) -> Want<'_> {
        Want { host: b"h", path, method: b"GET", urgency }
    }

    #[test]
    fn fifo_bounded_and_woken() {
        let mut q = WaitQueue::<u32>::default();
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let a = q.enqueue(&want(b"/a", 3), 2, None, Vec::new()).unwrap();
        let b = q.enqueue(&want(b"/b", 3), 2, None, Vec::new()).unwrap();
        assert_eq!(q.enqueue(&want(b"/c", 0), 2, None, Vec::new()).err(), Some(Full), "the bound is on all levels together");
        assert_eq!(poll(&a, &wakes), Poll::Pending);
        assert_eq!(poll(&b, &wakes), Poll::Pending);
        // A slot that serves both goes to the oldest.
        assert!(q.offer(|_| Some(7)));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&a, &wakes), Poll::Ready(Some(7)));
        assert_eq!(poll(&b, &wakes), Poll::Pending);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn strict_priority_between_levels_fifo_within() {
        let mut q = WaitQueue::<u32>::default();
        let order = [(b"/l1".as_slice(), 5), (b"/u1", 1), (b"/l2", 5), (b"/d1", 3), (b"/u2", 1), (b"/any", 9)];
        let ws: Vec<_> = order.iter().map(|&(p, u)| q.enqueue(&want(p, u), 16, None, Vec::new()).unwrap()).collect();
        assert_eq!(ws[5].urgency, 7, "past 7 is the least urgent level");
        let mut served = Vec::new();
        while q.offer(|w| {
            served.push(String::from_utf8_lossy(&w.path).into_owned());
            Some(0)
        }) {}
        assert_eq!(served, ["/u1", "/u2", "/d1", "/l1", "/l2", "/any"]);
        assert!(q.is_empty());
    }

    #[test]
    fn offer_skips_waiters_the_slot_cannot_serve() {
        let mut q = WaitQueue::<u32>::default();
        let a = q.enqueue(&want(b"/a", 0), 8, None, Vec::new()).unwrap();
        let b = q.enqueue(&want(b"/b", 7), 8, None, Vec::new()).unwrap();
        // The most urgent waiter cannot use this room (its class is at its
        // limit, or another route): the next one can, and gets it.
        assert!(q.offer(|w| (&*w.path == b"/b").then_some(1)));
        assert_eq!(q.cancel(&b), Some(1), "handed to /b");
        assert_eq!(q.cancel(&a), None, "/a still had nothing");
        assert_eq!(q.len(), 0);
        // No waiter it can serve: nobody is chosen.
        let _c = q.enqueue(&want(b"/c", 3), 8, None, Vec::new()).unwrap();
        assert!(!q.offer(|_| None));
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn cancel_returns_what_arrived_at_the_last_moment() {
        let mut q = WaitQueue::<u32>::default();
        let a = q.enqueue(&want(b"/", 2), 8, None, Vec::new()).unwrap();
        assert!(q.offer(|_| Some(9)));
        // The client went away before its task ran: the lease comes back.
        assert_eq!(q.cancel(&a), Some(9));
        assert_eq!(q.cancel(&a), None);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn reroute_gives_room_or_ends_the_wait() {
        let mut q = WaitQueue::<u32>::default();
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let a = q.enqueue(&want(b"/gone", 3), 8, None, Vec::new()).unwrap();
        let b = q.enqueue(&want(b"/moved", 0), 8, None, Vec::new()).unwrap();
        let c = q.enqueue(&want(b"/busy", 3), 8, None, Vec::new()).unwrap();
        for w in [&a, &b, &c] {
            assert_eq!(poll(w, &wakes), Poll::Pending);
        }
        q.reroute(|w| match &*w.path {
            b"/gone" => Reroute::NoRoute,
            b"/moved" => Reroute::Give(3),
            _ => Reroute::Wait,
        });
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        assert_eq!(poll(&a, &wakes), Poll::Ready(None));
        assert_eq!(poll(&b, &wakes), Poll::Ready(Some(3)));
        assert_eq!(poll(&c, &wakes), Poll::Pending);
        assert_eq!(q.len(), 1);
    }
}
