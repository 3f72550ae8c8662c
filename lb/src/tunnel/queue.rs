//! One core's wait queue: requests that found every tunnel able to serve
//! their route busy wait here, first come first served, until a tunnel (or
//! an h2 stream slot) frees, their deadline passes, or no worker serves the
//! route any more.
//!
//! Plain data, generic over what is handed out (a pool lease in the lb, a
//! number in the tests): the pool asks which waiter a freed slot can serve
//! ([`WaitQueue::first`]) and hands the lease over; the request path awaits
//! [`Waiter::wait`] under its deadline and cancels its place however the
//! wait ends. Nothing here touches a socket.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A request waiting for room on its route.
pub(crate) struct Waiter<T> {
    pub(crate) host: Box<[u8]>,
    pub(crate) path: Box<[u8]>,
    got: RefCell<Option<T>>,
    /// No worker serves the route any more: stop waiting.
    no_route: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl<T> Waiter<T> {
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

/// FIFO of waiters, bounded in length.
pub(crate) struct WaitQueue<T> {
    waiters: VecDeque<Rc<Waiter<T>>>,
}

impl<T> Default for WaitQueue<T> {
    fn default() -> Self {
        WaitQueue { waiters: VecDeque::new() }
    }
}

impl<T> WaitQueue<T> {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiters.len()
    }

    /// Adds a waiter at the back, unless `max` already wait.
    pub(crate) fn enqueue(&mut self, host: &[u8], path: &[u8], max: usize) -> Result<Rc<Waiter<T>>, Full> {
        if self.waiters.len() >= max {
            return Err(Full);
        }
        let w = Rc::new(Waiter {
            host: host.into(),
            path: path.into(),
            got: RefCell::new(None),
            no_route: Cell::new(false),
            waker: RefCell::new(None),
        });
        self.waiters.push_back(w.clone());
        Ok(w)
    }

    /// Takes `w` out of the queue (its wait ended: served, timed out, or its
    /// client went away). Returns what was handed to it but not yet taken,
    /// which the caller gives back.
    pub(crate) fn cancel(&mut self, w: &Rc<Waiter<T>>) -> Option<T> {
        if let Some(i) = self.waiters.iter().position(|x| Rc::ptr_eq(x, w)) {
            self.waiters.remove(i);
        }
        w.got.borrow_mut().take()
    }

    /// Room freed: the oldest waiter it can serve (`serves`), if any.
    pub(crate) fn first(&self, serves: impl FnMut(&Waiter<T>) -> bool) -> Option<usize> {
        self.waiters.iter().map(|w| &**w).position(serves)
    }

    /// Hands `t` to the waiter at `i` (from [`WaitQueue::first`]), takes it
    /// out of the queue and wakes it.
    pub(crate) fn hand(&mut self, i: usize, t: T) {
        let w = self.waiters.remove(i).expect("index from first()");
        *w.got.borrow_mut() = Some(t);
        w.wake();
    }

    /// The workers changed (one left): each waiter, oldest first, is asked
    /// again where its route stands.
    pub(crate) fn reroute(&mut self, mut decide: impl FnMut(&Waiter<T>) -> Reroute<T>) {
        let mut i = 0;
        while i < self.waiters.len() {
            match decide(&self.waiters[i]) {
                Reroute::Wait => {
                    i += 1;
                    continue;
                }
                Reroute::Give(t) => *self.waiters[i].got.borrow_mut() = Some(t),
                Reroute::NoRoute => self.waiters[i].no_route.set(true),
            }
            let w = self.waiters.remove(i).expect("index in range");
            w.wake();
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

    #[test]
    fn fifo_bounded_and_woken() {
        let mut q = WaitQueue::<u32>::default();
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let a = q.enqueue(b"h", b"/a", 2).unwrap();
        let b = q.enqueue(b"h", b"/b", 2).unwrap();
        assert_eq!(q.enqueue(b"h", b"/c", 2).err(), Some(Full));
        assert_eq!(poll(&a, &wakes), Poll::Pending);
        assert_eq!(poll(&b, &wakes), Poll::Pending);
        // A slot that serves both goes to the oldest.
        let i = q.first(|_| true).unwrap();
        q.hand(i, 7);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll(&a, &wakes), Poll::Ready(Some(7)));
        assert_eq!(poll(&b, &wakes), Poll::Pending);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn offer_skips_waiters_the_slot_cannot_serve() {
        let mut q = WaitQueue::<u32>::default();
        let a = q.enqueue(b"h", b"/a", 8).unwrap();
        let b = q.enqueue(b"h", b"/b", 8).unwrap();
        let i = q.first(|w| &*w.path == b"/b").unwrap();
        q.hand(i, 1);
        assert_eq!(q.cancel(&b), Some(1), "handed to /b");
        assert_eq!(q.cancel(&a), None, "/a still had nothing");
        assert_eq!(q.len(), 0);
        // No waiter it can serve: nobody is chosen.
        let _c = q.enqueue(b"h", b"/c", 8).unwrap();
        assert_eq!(q.first(|_| false), None);
    }

    #[test]
    fn cancel_returns_what_arrived_at_the_last_moment() {
        let mut q = WaitQueue::<u32>::default();
        let a = q.enqueue(b"h", b"/", 8).unwrap();
        q.hand(q.first(|_| true).unwrap(), 9);
        // The client went away before its task ran: the lease comes back.
        assert_eq!(q.cancel(&a), Some(9));
        assert_eq!(q.cancel(&a), None);
    }

    #[test]
    fn reroute_gives_room_or_ends_the_wait() {
        let mut q = WaitQueue::<u32>::default();
        let wakes = Arc::new(Count(AtomicUsize::new(0)));
        let a = q.enqueue(b"h", b"/gone", 8).unwrap();
        let b = q.enqueue(b"h", b"/moved", 8).unwrap();
        let c = q.enqueue(b"h", b"/busy", 8).unwrap();
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
