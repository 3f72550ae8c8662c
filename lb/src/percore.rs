//! One core's state and the helpers its tasks share: everything a core serves
//! lives in owned state (`Rc`, `Cell`, `RefCell`; no borrow is held across an
//! `.await`). Spawning the tasks is [`crate::wiring`]'s; nothing here imports
//! the modules that serve requests, so they can all import this.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use monoio::net::{TcpListener, TcpStream};
use ptth_proto::rt::logging::LogThrottle;
use ptth_proto::rt::signal::{Signal, Wait};

use crate::inbox::CoreMsg;
use crate::stats::CoreStats;
use crate::tunnel::pool::Pool;
use crate::{Config, Shared};

pub(crate) struct Core {
    pub(crate) id: usize,
    pub(crate) shared: Arc<Shared>,
    /// The config this core serves new work with: this core's own copy,
    /// replaced whole by a reload (`CoreMsg::Config`). A request reads it
    /// once and keeps that copy to its end.
    cfg: RefCell<Rc<Config>>,
    pub(crate) pool: RefCell<Pool>,
    /// Graceful stop: no new connections, finish what is in flight.
    pub(crate) stop: Signal,
    /// Hard stop after the drain deadline: every task ends, sockets close.
    pub(crate) kill: Signal,
    /// Client connections being served on this core.
    pub(crate) active: Cell<u64>,
    /// Rate limit of tunnel-setup refusal log lines.
    pub(crate) refusals: LogThrottle,
    /// Rate limit of shed-connection log lines.
    pub(crate) sheds: LogThrottle,
}

impl Core {
    pub(crate) fn new(id: usize, shared: Arc<Shared>, pool: Pool) -> Core {
        let cfg = RefCell::new(Rc::new(shared.cfg.clone()));
        Core {
            id,
            shared,
            cfg,
            pool: RefCell::new(pool),
            stop: Signal::new(),
            kill: Signal::new(),
            active: Cell::new(0),
            refusals: Default::default(),
            sheds: Default::default(),
        }
    }

    pub(crate) fn stats(&self) -> &CoreStats {
        &self.shared.stats[self.id]
    }

    /// The config in force on this core now (a reference count, not a copy).
    pub(crate) fn cfg(&self) -> Rc<Config> {
        self.cfg.borrow().clone()
    }

    /// A reload: new work on this core runs with `cfg` from now on; work
    /// under way keeps the copy it holds.
    pub(crate) fn reconfigure(&self, cfg: &Config) {
        let mut pool = self.pool.borrow_mut();
        pool.set_reserved(&cfg.reserved_routes, cfg.profile.route_hold);
        pool.set_health(cfg.profile.health);
        *self.cfg.borrow_mut() = Rc::new(cfg.clone());
    }
}

/// Accepts on `listener` until `until` fires, handing each connection to
/// `on`. Accept errors (EMFILE and friends) back off briefly instead of
/// spinning.
///
/// The accept in flight when `until` fires is not dropped: under io_uring
/// a dropped accept that completes anyway yields a connection nobody owns
/// (monoio discards the descriptor without closing it), and its client
/// would wait until the process exits. The listener is shut down instead,
/// which ends the accept (with an error, or with a last connection that is
/// handed on and sees the stop), and pending connections are refused.
pub(crate) async fn accept_each(
    core: &Rc<Core>,
    listener: TcpListener,
    what: &str,
    until: Signal,
    mut on: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let accept = listener.accept();
        let mut accept = std::pin::pin!(accept);
        let (accepted, stopping) = monoio::select! {
            r = &mut accept => (r, false),
            _ = until.wait() => {
                shutdown_listener(&listener);
                (accept.await, true)
            }
        };
        match accepted {
            Ok((stream, peer)) => on(stream, peer),
            Err(_) if stopping => {}
            Err(e) => {
                tracing::warn!(core = core.id, "{what} accept: {e}");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if stopping {
            return;
        }
    }
}

/// Stops a listening socket: a pending accept returns, connections not yet
/// accepted are refused (the socket closes when the listener drops).
#[allow(unsafe_code)]
fn shutdown_listener(l: &TcpListener) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor belongs to `l`, borrowed for the whole call,
    // so it is open; shutdown(2) takes no pointers.
    let _ = unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
}

/// Spawns a task on this core that ends when its work does or when the core
/// is killed, whichever comes first (so its sockets close at shutdown).
pub(crate) fn spawn_killable(core: &Core, work: impl Future<Output = ()> + 'static) {
    spawn_killable_with(core, (), work);
}

/// [`spawn_killable`], holding `guard` until the task ends or is dropped
/// (a count of what the task is, given back however it ends).
pub(crate) fn spawn_killable_with<G: Unpin + 'static>(core: &Core, guard: G, work: impl Future<Output = ()> + 'static) {
    monoio::spawn(Killable { kill: core.kill.wait(), work, _guard: guard });
}

/// `work` until `kill` fires. A hand-written future rather than a `select!`
/// in an `async` block: that block would hold `work` twice (the captured
/// value and the one moved into the select), doubling every spawned task's
/// size and the bytes copied to spawn it, once per h2c stream. For the same
/// reason a guard the task holds is a field here, not a local of an
/// `async` block around `work` (which doubled each client connection's
/// task: 13 KiB instead of 6.6 for a plain one, 30 instead of 15 for TLS).
struct Killable<F, G> {
    kill: Wait,
    work: F,
    _guard: G,
}

impl<F: Future<Output = ()>, G: Unpin> Future for Killable<F, G> {
    type Output = ();
    #[allow(unsafe_code)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: `work` is structurally pinned: it is never moved out of
        // `Killable`, which has no `Drop` of its own and is `Unpin` only if
        // `F` is; `kill` and `_guard` are `Unpin` and not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        if Pin::new(&mut this.kill).poll(cx).is_ready() {
            return Poll::Ready(());
        }
        // SAFETY: as above, `work` stays where it is until `Killable` drops.
        unsafe { Pin::new_unchecked(&mut this.work) }.poll(cx)
    }
}

/// Detaches a socket from this core so another core can adopt it: a
/// duplicate of its descriptor goes, and this core's handle closes once no
/// operation holds it any more. (Taking the descriptor itself panics in
/// monoio while an operation still holds it, such as the poll that watched
/// a queued client, cancelled an instant ago.) `Err` gives the stream back
/// when the descriptor cannot be duplicated (out of descriptors).
#[allow(unsafe_code)]
pub(crate) fn detach(stream: TcpStream) -> Result<std::net::TcpStream, TcpStream> {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor belongs to `stream`, which is alive (borrowed)
    // for the whole call, so it is open.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    match fd.try_clone_to_owned() {
        Ok(dup) => Ok(std::net::TcpStream::from(dup)),
        Err(e) => {
            tracing::warn!("handing a connection to another core: {e}");
            Err(stream)
        }
    }
}

/// Registers a socket from another core with this core's driver.
pub(crate) fn adopt(stream: std::net::TcpStream) -> std::io::Result<TcpStream> {
    // io_uring accepts return blocking sockets; the legacy driver needs them
    // non-blocking, and this core may run either.
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// Sends a message to core `to`.
pub(crate) fn send_to(shared: &Shared, to: usize, msg: CoreMsg) {
    shared.inboxes[to].send(msg);
}

/// True once the lb has begun shutting down.
pub(crate) fn draining(shared: &Shared) -> bool {
    shared.draining.load(Ordering::Acquire)
}
