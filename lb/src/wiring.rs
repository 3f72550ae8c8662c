//! Wiring: starting a core's thread and spawning its tasks. An accept loop
//! per client listener ([`crate::proxy`] serves each connection; on a TLS
//! listener after the handshake, [`crate::tls`]), the tunnel
//! accept loop ([`crate::tunnel::accept`]), the inbox loop (tunnels and
//! clients handed over by other cores), the idle tunnel sweeper, and on core
//! 0 the admin listener ([`crate::admin`]). The only module that imports the
//! task modules; they share [`crate::percore`].

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpListener;
use ptth_proto::rt::runtime::{pin_to, Runtime};
use ptth_proto::rt::tls::{MaybeTls, TlsStream};

use crate::error::StartupError;
use crate::inbox::CoreMsg;
use crate::percore::{accept_each, spawn_killable, Core};
use crate::proxy::ClientStream;
use crate::stats;
use crate::tunnel::pool::Pool;
use crate::Shared;

/// How often each core checks the process-wide stop flags.
const FLAG_POLL: Duration = Duration::from_millis(20);
/// How often idle tunnels are checked for a worker that hung up.
const SWEEP_EVERY: Duration = Duration::from_millis(500);

/// Listeners for one core, bound on the main thread.
pub(crate) struct CoreListeners {
    pub(crate) clients: Vec<std::net::TcpListener>,
    pub(crate) tls_clients: Vec<std::net::TcpListener>,
    pub(crate) tunnel: std::net::TcpListener,
    pub(crate) admin: Option<std::net::TcpListener>,
}

/// Starts core `id` on its own thread. The result of building the runtime is
/// reported on `ready` before serving starts.
pub(crate) fn spawn(
    id: usize,
    shared: Arc<Shared>,
    listeners: CoreListeners,
    stop_flag: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<(), StartupError>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("ptth-lb-core-{id}")).spawn(move || {
        let pinned = if shared.cfg.profile.pin { pin_to(id) } else { None };
        let (mut rt, driver) = match Runtime::build(&shared.cfg.profile.runtime) {
            Ok(r) => r,
            Err(source) => {
                let _ = ready.send(Err(StartupError::Runtime { core: id, source }));
                return;
            }
        };
        let _ = shared.core_info[id].set(crate::CoreInfo { driver, cpu: pinned });
        let _ = ready.send(Ok(()));
        rt.block_on(run(id, shared, listeners, stop_flag));
    })
}

async fn run(id: usize, shared: Arc<Shared>, listeners: CoreListeners, stop_flag: Arc<AtomicBool>) {
    let pool = Pool::new(id, shared.placement.clone(), shared.inboxes.clone())
        .with_reserved(&shared.cfg.reserved_routes, shared.cfg.profile.route_hold)
        .with_health(shared.cfg.profile.health);
    let core = Rc::new(Core::new(id, shared.clone(), pool));
    monoio::spawn(core.stop.clone().follow(stop_flag, FLAG_POLL));
    for l in listeners.clients {
        match TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(accept_clients(core.clone(), l));
            }
            Err(e) => tracing::error!(core = id, "client listener: {e}"),
        }
    }
    for l in listeners.tls_clients {
        match TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(accept_tls_clients(core.clone(), l));
            }
            Err(e) => tracing::error!(core = id, "TLS client listener: {e}"),
        }
    }
    match TcpListener::from_std(listeners.tunnel) {
        Ok(l) => {
            monoio::spawn(crate::tunnel::accept::accept_loop(core.clone(), l));
        }
        Err(e) => tracing::error!(core = id, "tunnel listener: {e}"),
    }
    if let Some(a) = listeners.admin {
        match TcpListener::from_std(a) {
            Ok(l) => {
                monoio::spawn(crate::admin::serve(core.clone(), l));
            }
            Err(e) => tracing::error!(core = id, "admin listener: {e}"),
        }
    }
    monoio::spawn(inbox_loop(core.clone()));
    monoio::spawn(sweeper(core.clone()));

    core.stop.wait().await;
    // Drain: requests in flight finish (idle keep-alive connections close as
    // soon as they notice the stop), bounded by the drain deadline.
    let deadline = std::time::Instant::now() + core.cfg().profile.drain_timeout;
    while core.active.get() > 0 && std::time::Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    core.kill.fire();
    core.pool.borrow_mut().close_all();
    // Let the killed tasks run once so their sockets close before the thread ends.
    monoio::time::sleep(Duration::from_millis(20)).await;
}

/// What a connection past `limits.max_clients` gets before it is closed
/// (RFC 9110 §15.6.4; `Retry-After`, §10.2.3).
const SHED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 34\r\n\r\nthe lb is at its connection limit\n";

/// The connection back when this core serves one more client connection.
/// Past `limits.max_clients` it is shed: counted, logged (at most once a
/// second), answered 503 on a plain listener (`answer`), closed. What this
/// core already serves keeps going.
fn admit_client(core: &Rc<Core>, mut stream: monoio::net::TcpStream, peer: SocketAddr, answer: bool) -> Option<monoio::net::TcpStream> {
    let max = core.cfg().profile.max_clients;
    if core.active.get() < max {
        return Some(stream);
    }
    stats::add(&core.stats().clients_shed, 1);
    if let Some(held) = core.sheds.admit(std::time::Instant::now()) {
        let more = if held > 0 { format!(" ({held} more not logged in the last second)") } else { String::new() };
        tracing::warn!(core = core.id, %peer, "client connection shed: this core serves {max} (limits.max_clients){more}");
    }
    if answer {
        let timeout = core.cfg().profile.io_timeout.min(Duration::from_secs(1));
        spawn_killable(core, async move {
            let _ = ptth_proto::rt::io::write_all(&mut stream, SHED.to_vec(), timeout).await;
            // Read what the client sent before closing: closing with unread
            // bytes sends a reset, which can destroy the 503 before it is read.
            let mut rb = ptth_proto::rt::io::ReadBuf::with_capacity(4096);
            let _ = rb.fill(&mut stream, Duration::from_millis(200)).await;
        });
    }
    None
}

async fn accept_clients(core: Rc<Core>, listener: TcpListener) {
    let c = core.clone();
    accept_each(&core, listener, "client", core.stop.clone(), move |stream, peer| {
        stats::add(&c.stats().clients_accepted, 1);
        if let Some(stream) = admit_client(&c, stream, peer, true) {
            spawn_client(&c, stream, peer, Vec::new(), false);
        }
    })
    .await;
}

async fn accept_tls_clients(core: Rc<Core>, listener: TcpListener) {
    let c = core.clone();
    accept_each(&core, listener, "TLS client", core.stop.clone(), move |stream, peer| {
        stats::add(&c.stats().clients_accepted, 1);
        // A cleartext 503 means nothing to a TLS client: it is just closed.
        let Some(stream) = admit_client(&c, stream, peer, false) else { return };
        let Some(tls) = c.shared.tls.as_ref() else { return };
        let conn = match tls.accept() {
            Ok(conn) => conn,
            Err(e) => {
                tracing::error!(core = c.id, %peer, "TLS session: {e}");
                return;
            }
        };
        let core = c.clone();
        spawn_connection(&c, async move {
            // TCP_NODELAY on every relayed socket.
            let _ = stream.set_nodelay(true);
            let limit = core.cfg().profile.header_timeout;
            match TlsStream::handshake(stream, conn, limit).await {
                Ok(s) => crate::proxy::serve(core, s, peer, Vec::new(), false).await,
                Err(e) => {
                    // Scanners and clients that do not trust the certificate
                    // end here all the time: counted, logged at debug.
                    stats::add(&core.stats().tls_handshakes_failed, 1);
                    tracing::debug!(core = core.id, %peer, "TLS handshake: {e}");
                }
            }
        });
    })
    .await;
}

/// Serves one client connection on this core until it ends or the core is
/// killed.
pub(crate) fn spawn_client<S: ClientStream>(core: &Rc<Core>, stream: S, peer: SocketAddr, buffered: Vec<u8>, migrated: bool) {
    let c = core.clone();
    spawn_connection(core, async move {
        // TCP_NODELAY on every relayed socket.
        let _ = stream.tcp().set_nodelay(true);
        crate::proxy::serve(c, stream, peer, buffered, migrated).await;
    });
}

/// Runs a client connection's task, counted as active from now (so that
/// accepts in one burst see each other) until the task ends or is dropped.
fn spawn_connection(core: &Rc<Core>, work: impl std::future::Future<Output = ()> + 'static) {
    crate::percore::spawn_killable_with(core, Active::count(core.clone()), work);
}

/// One client connection in `Core::active`.
struct Active(Rc<Core>);

impl Active {
    fn count(core: Rc<Core>) -> Active {
        core.active.set(core.active.get() + 1);
        stats::set_u64(&core.stats().active_clients, core.active.get());
        Active(core)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let c = &self.0;
        c.active.set(c.active.get() - 1);
        stats::set_u64(&c.stats().active_clients, c.active.get());
    }
}

async fn inbox_loop(core: Rc<Core>) {
    let shared = core.shared.clone();
    loop {
        let msg = monoio::select! {
            m = shared.inboxes[core.id].recv() => m,
            _ = core.kill.wait() => return,
        };
        match msg {
            Some(CoreMsg::Tunnel { stream, id, meta, setup }) => match stream.adopt() {
                Ok(s) => {
                    monoio::spawn(crate::tunnel::accept::finish(core.clone(), s, id, meta, setup));
                }
                Err(e) => {
                    tracing::warn!(core = core.id, worker = %id, "adopting a tunnel: {e}");
                    shared.placement.release(&id, core.id);
                }
            },
            Some(CoreMsg::Client { stream, peer, buffered }) => match stream.adopt() {
                Ok(MaybeTls::Plain(s)) => spawn_client(&core, s, peer, buffered, true),
                // The TLS session goes on here where it stopped there.
                Ok(MaybeTls::Tls(s)) => spawn_client(&core, *s, peer, buffered, true),
                Err(e) => tracing::warn!(core = core.id, %peer, "adopting a client connection: {e}"),
            },
            Some(CoreMsg::Capacity { worker }) => core.pool.borrow_mut().capacity_freed(&worker),
            Some(CoreMsg::Config(cfg)) => core.reconfigure(&cfg),
            None => return,
        }
    }
}

async fn sweeper(core: Rc<Core>) {
    loop {
        monoio::select! {
            _ = monoio::time::sleep(SWEEP_EVERY) => {},
            _ = core.kill.wait() => return,
        }
        core.pool.borrow_mut().sweep(SWEEP_EVERY);
    }
}
