//! A one-shot, thread-local stop signal: every task of a core that must end on
//! shutdown awaits [`Signal::wait`] beside its work. monoio drops only runnable
//! tasks with the runtime, so sockets of tasks parked on I/O are closed by
//! making those tasks finish, which is what this is for.
//!
//! Each waiting future owns one slot in the waker table and updates it in
//! place when re-polled, so a long-lived connection polled millions of times
//! costs one slot, not millions.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

#[derive(Default)]
struct Inner {
    fired: Cell<bool>,
    slots: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

/// A thread-local signal; clones share it.
#[derive(Clone, Default)]
pub struct Signal(Rc<Inner>);

impl Signal {
    pub fn new() -> Self {
        Signal::default()
    }

    pub fn is_fired(&self) -> bool {
        self.0.fired.get()
    }

    /// Fires the signal and wakes every waiter.
    pub fn fire(&self) {
        if self.0.fired.replace(true) {
            return;
        }
        let wakers: Vec<Waker> = self.0.slots.borrow_mut().iter_mut().filter_map(Option::take).collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves once the signal has fired.
    pub fn wait(&self) -> Wait {
        Wait { sig: self.clone(), slot: None }
    }

    /// Fires this signal once `flag` turns true, checking every `every`.
    /// Bridges a cross-thread flag into a core without cross-thread wakers.
    pub async fn follow(self, flag: Arc<AtomicBool>, every: Duration) {
        while !flag.load(Ordering::Acquire) {
            if self.is_fired() {
                return;
            }
            monoio::time::sleep(every).await;
        }
        self.fire();
    }
}

/// Future returned by [`Signal::wait`].
pub struct Wait {
    sig: Signal,
    slot: Option<usize>,
}

impl Future for Wait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let inner = &*this.sig.0;
        if inner.fired.get() {
            return Poll::Ready(());
        }
        let mut slots = inner.slots.borrow_mut();
        match this.slot {
            // Re-polled by the same task (every poll of a killable task): no
            // waker clone.
            Some(i) => match &mut slots[i] {
                Some(w) if w.will_wake(cx.waker()) => {}
                s => *s = Some(cx.waker().clone()),
            },
            None => {
                let i = match inner.free.borrow_mut().pop() {
                    Some(i) => {
                        slots[i] = Some(cx.waker().clone());
                        i
                    }
                    None => {
                        slots.push(Some(cx.waker().clone()));
                        slots.len() - 1
                    }
                };
                this.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            if let Some(s) = self.sig.0.slots.borrow_mut().get_mut(i) {
                *s = None;
            }
            self.sig.0.free.borrow_mut().push(i);
        }
    }
}
