//! Deadlines on the data path's waits: every read and write on a client
//! connection or a tunnel, the wait for a response head, a handshake. Each
//! wait is bounded by [`within`], which the data path calls four to eight
//! times per proxied request.
//!
//! Why not `monoio::time::timeout`: it builds a fresh timer per wait (a
//! 640-byte, cache-padded entry carried inside every I/O future), inserts it
//! into the core's timer wheel on the first poll and removes it on drop. The
//! waits here almost always end long before their deadline, so that work is
//! thrown away. Instead each core keeps the timers its finished waits leave
//! behind, boxed, and a new wait takes one back and moves its deadline.
//! Moving a deadline later only records the new time (the wheel fires the
//! entry at the old time, sees the later one and re-files it), and the
//! deadlines of successive waits are mostly later than the previous ones,
//! so a wait usually touches the wheel not at all.
//!
//! monoio's timer keeps the first waker it was polled with until it fires,
//! so a kept timer is always polled with a waker of its own that passes the
//! wake on to whichever task waits on it now ([`Forward`]).
//!
//! Timers are kept only while a runtime built by
//! [`crate::rt::runtime::Runtime`] runs on the thread ([`Scope`]); a timer
//! belongs to its runtime's wheel and must not outlive it. Elsewhere (a bare
//! monoio runtime in a test) each wait builds and drops its own timer.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use monoio::time::{Instant, Sleep};

/// Timers kept per thread at most: enough for every wait of a busy core;
/// beyond it, a finished wait's timer is dropped.
const KEPT_MAX: usize = 4096;

thread_local! {
    /// `None` outside a [`Scope`].
    static KEPT: RefCell<Option<Vec<Kept>>> = const { RefCell::new(None) };
}

/// A timer and the waker it was registered with.
struct Kept {
    sleep: Pin<Box<Sleep>>,
    forward: Rc<Forward>,
    /// Wakes `forward`'s task; the only waker `sleep` is ever polled with.
    waker: Waker,
}

/// The task waiting on a kept timer now, if any.
struct Forward {
    task: Cell<Option<Waker>>,
}

impl Forward {
    fn wake(&self) {
        if let Some(w) = self.task.take() {
            w.wake();
        }
    }
}

/// A waker for a [`Forward`], from an `Rc`: the waker never leaves the
/// thread (only this thread's timer wheel holds it, and only this module
/// wakes it), which is what makes a non-atomic count sound here.
#[allow(unsafe_code)]
mod forward_waker {
    use std::rc::Rc;
    use std::task::{RawWaker, RawWakerVTable, Waker};

    use super::Forward;

    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake_by_ref, drop);

    pub(super) fn new(f: &Rc<Forward>) -> Waker {
        let raw = RawWaker::new(Rc::into_raw(f.clone()).cast(), &VTABLE);
        // SAFETY: the vtable's functions treat the data pointer as the
        // `Rc<Forward>` it came from, each keeping the count balanced; the
        // waker stays on this thread (see the module comment).
        unsafe { Waker::from_raw(raw) }
    }

    unsafe fn clone(p: *const ()) -> RawWaker {
        // SAFETY: `p` came from `Rc::into_raw` and its count is at least the
        // one this waker holds.
        unsafe { Rc::increment_strong_count(p.cast::<Forward>()) };
        RawWaker::new(p, &VTABLE)
    }

    unsafe fn wake(p: *const ()) {
        // SAFETY: as in `clone`; this consumes the waker's count.
        let f = unsafe { Rc::from_raw(p.cast::<Forward>()) };
        f.wake();
    }

    unsafe fn wake_by_ref(p: *const ()) {
        // SAFETY: as in `clone`; the waker keeps its count.
        unsafe { &*p.cast::<Forward>() }.wake();
    }

    unsafe fn drop(p: *const ()) {
        // SAFETY: as in `wake`.
        unsafe { Rc::decrement_strong_count(p.cast::<Forward>()) };
    }
}

/// A wait passed its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired;

impl std::fmt::Display for Expired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline passed")
    }
}

impl std::error::Error for Expired {}

/// The thread's runtime is running: finished waits' timers are kept for the
/// next ones until this drops (inside the runtime, before its wheel goes).
pub(crate) struct Scope(());

impl Scope {
    pub(crate) fn enter() -> Scope {
        KEPT.with(|k| *k.borrow_mut() = Some(Vec::new()));
        Scope(())
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let kept = KEPT.with(|k| k.borrow_mut().take());
        drop(kept);
    }
}

/// Runs `fut` until it completes or `limit` passes, whichever comes first
/// (`fut` is polled first, so a result that is ready wins over a deadline
/// that passed in the same wakeup).
pub async fn within<F: Future>(limit: Duration, fut: F) -> Result<F::Output, Expired> {
    let mut timer = Timer::start(limit);
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        timer.poll(cx).map(|()| Err(Expired))
    })
    .await
}

/// One wait's timer: a kept one (given back when the wait ends), or, outside
/// a [`Scope`], one of its own.
enum Timer {
    Kept(Option<Kept>),
    Own(Pin<Box<Sleep>>),
}

impl Timer {
    fn start(limit: Duration) -> Timer {
        let now = Instant::now();
        // A limit too large to add is as good as none (about 30 years).
        let at = now.checked_add(limit).unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400));
        let scoped = KEPT.with(|k| k.borrow_mut().as_mut().map(Vec::pop));
        match scoped {
            None => Timer::Own(Box::pin(monoio::time::sleep_until(at))),
            Some(Some(mut k)) => {
                k.sleep.as_mut().reset(at);
                Timer::Kept(Some(k))
            }
            Some(None) => {
                let forward = Rc::new(Forward { task: Cell::new(None) });
                let waker = forward_waker::new(&forward);
                Timer::Kept(Some(Kept { sleep: Box::pin(monoio::time::sleep_until(at)), forward, waker }))
            }
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self {
            Timer::Own(s) => s.as_mut().poll(cx),
            Timer::Kept(Some(k)) => {
                // The task to wake, set before the timer can fire.
                let current = k.forward.task.take().filter(|w| w.will_wake(cx.waker()));
                k.forward.task.set(Some(current.unwrap_or_else(|| cx.waker().clone())));
                k.sleep.as_mut().poll(&mut Context::from_waker(&k.waker))
            }
            Timer::Kept(None) => Poll::Pending,
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let Timer::Kept(k) = self else { return };
        let Some(k) = k.take() else { return };
        // The entry may still fire while kept: it must wake nobody, and not
        // hold on to this wait's task.
        drop(k.forward.task.take());
        KEPT.with(|cell| {
            if let Some(kept) = cell.borrow_mut().as_mut().filter(|v| v.len() < KEPT_MAX) {
                kept.push(k);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().expect("runtime")
    }

    #[test]
    fn a_kept_timer_bounds_the_next_wait_by_its_own_limit() {
        runtime().block_on(async {
            let _scope = Scope::enter();
            // A wait with a long limit leaves its timer behind...
            assert_eq!(within(Duration::from_secs(60), async { 1 }).await, Ok(1));
            assert_eq!(KEPT.with(|k| k.borrow().as_ref().map(Vec::len)), Some(1));
            // ...and the next wait, with a short limit, takes it and still
            // ends on time (the deadline moved earlier).
            let t = std::time::Instant::now();
            assert_eq!(within(Duration::from_millis(20), std::future::pending::<()>()).await, Err(Expired));
            let took = t.elapsed();
            assert!(took >= Duration::from_millis(20) && took < Duration::from_secs(5), "{took:?}");
            // A later deadline on a kept timer that already fired works too.
            assert_eq!(within(Duration::from_millis(10), std::future::pending::<()>()).await, Err(Expired));
            assert_eq!(KEPT.with(|k| k.borrow().as_ref().map(Vec::len)), Some(1));
        });
    }

    #[test]
    fn a_kept_timer_wakes_the_task_that_waits_on_it_now() {
        runtime().block_on(async {
            let _scope = Scope::enter();
            // Another task registers the timer first and ends.
            monoio::spawn(async { within(Duration::from_secs(60), monoio::time::sleep(Duration::from_millis(1))).await })
                .await
                .expect("the first wait ends on its own");
            // This task takes it back with an earlier deadline: the wheel
            // must wake this task, not the one that registered it.
            let t = std::time::Instant::now();
            let r = within(Duration::from_millis(30), std::future::pending::<()>()).await;
            assert_eq!(r, Err(Expired));
            assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        });
    }

    #[test]
    fn a_deadline_moved_later_does_not_fire_at_the_old_time() {
        runtime().block_on(async {
            let _scope = Scope::enter();
            // Registered for 10 ms from now, then kept.
            let _ = within(Duration::from_millis(10), monoio::time::sleep(Duration::from_millis(1))).await;
            // Taken back with 150 ms: the wheel fires the entry at the old
            // time, sees the later deadline and files it again.
            let t = std::time::Instant::now();
            let r = within(Duration::from_millis(150), monoio::time::sleep(Duration::from_millis(60))).await;
            assert_eq!(r, Ok(()), "the wait ended at the old deadline after {:?}", t.elapsed());
        });
    }

    #[test]
    fn without_a_scope_nothing_is_kept() {
        runtime().block_on(async {
            assert_eq!(within(Duration::from_secs(1), async { 2 }).await, Ok(2));
            assert_eq!(KEPT.with(|k| k.borrow().as_ref().map(Vec::len)), None);
        });
    }

    #[test]
    fn a_ready_result_wins_over_a_passed_deadline() {
        runtime().block_on(async {
            let _scope = Scope::enter();
            assert_eq!(within(Duration::ZERO, async { 3 }).await, Ok(3));
        });
    }
}
