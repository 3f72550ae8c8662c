//! ptth-workerd: a PTTH worker. It dials out to one or more `ptth-lb`s, keeps
//! tunnels on every lb core, and answers the requests the lb sends over them.
//!
//! Two ways to use it:
//! - as a library: [`serve`] with your own [`Handler`], so a Rust program is a
//!   worker itself;
//! - as the `ptth-workerd` sidecar binary: `--origin URL` forwards to a local
//!   HTTP/1.1 app ([`Sidecar`]), `--respond SPEC` runs a built-in
//!   [`Responder`].
//!
//! Threads: `Config::threads` runtimes, one per thread (io_uring, or epoll as a
//! fallback), each with its own handler value and dialers.

#![forbid(unsafe_code)]

mod config;
mod dial;
mod error;
mod origin;
mod respond;
mod tunnel;
mod tunnel_h2;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ptth_proto::rt::runtime::{pin_to, Runtime};
use ptth_proto::rt::signal::Signal;

pub use config::{client_tls, Config};

/// A tunnel's byte stream: TLS to the lb, or cleartext.
pub(crate) type TunnelStream = ptth_proto::rt::tls::MaybeTls<rustls::ClientConnection>;
pub use dial::{Coverage, LbState};
pub use error::{Error, OriginFailure};
pub use origin::{OriginAddr, OriginCheck, OriginHealth, Sidecar};
pub use ptth_proto::setup::{Claim, InnerProtocol, Origin, WorkerMeta};
pub use respond::Responder;
pub use tunnel::{Exchange, Handler};

/// How often each thread looks at the process-wide stop and kill flags.
const FLAG_POLL: Duration = Duration::from_millis(20);

/// One log line: `verbose_only` lines (every tunnel) are debug events, the
/// rest (coverage changes, refusals, backoff) info. The binary's subscriber
/// filters them (`--quiet`, `--verbose`, `PTTH_LOG`); an embedding program
/// installs its own, or none.
pub(crate) fn log(verbose_only: bool, args: std::fmt::Arguments<'_>) {
    if verbose_only {
        tracing::debug!("{args}");
    } else {
        tracing::info!("{args}");
    }
}

/// State shared by a worker's threads (control path only).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) lbs: Vec<LbState>,
    /// Live tunnels per (thread, lb).
    counts: Vec<AtomicU32>,
    up: AtomicUsize,
    /// The TLS client config new dials use (`cfg.tls` at start, then what
    /// [`Worker::set_tls`] gave).
    pub(crate) tls: std::sync::RwLock<Option<Arc<rustls::ClientConfig>>>,
}

impl Shared {
    pub(crate) fn tunnels_mine(&self, thread: usize, lb: usize) -> u32 {
        self.counts[thread * self.lbs.len() + lb].load(Ordering::Relaxed)
    }
}

/// A running worker. Dropping it kills it (closes every tunnel at once).
pub struct Worker {
    shared: Arc<Shared>,
    cfg: Config,
    stop: Arc<AtomicBool>,
    kill: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Worker {
    /// Tunnels up, over all lbs.
    pub fn tunnels(&self) -> usize {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// Tunnel counts per core of lb number `lb` (in `Config::lbs` order).
    pub fn coverage(&self, lb: usize) -> Vec<u32> {
        self.shared.lbs[lb].coverage.lock().unwrap_or_else(|p| p.into_inner()).per_core.clone()
    }

    /// Why the last dial to lb number `lb` failed, until one succeeds.
    pub fn last_error(&self, lb: usize) -> Option<String> {
        self.shared.lbs[lb].coverage.lock().unwrap_or_else(|p| p.into_inner()).last_error.clone()
    }

    /// True when every core of every lb holds `tunnels_per_core` tunnels.
    pub fn is_covered(&self) -> bool {
        self.shared.lbs.iter().all(|lb| lb.coverage.lock().unwrap_or_else(|p| p.into_inner()).is_covered(self.cfg.tunnels_per_core))
    }

    /// New dials use `tls` from now on (a rotated client certificate, a new
    /// CA); tunnels already up keep their sessions. Only for a worker that
    /// started with TLS (`cfg.tls`): cleartext stays cleartext.
    pub fn set_tls(&self, tls: Arc<rustls::ClientConfig>) -> Result<(), Error> {
        let mut cur = self.shared.tls.write().unwrap_or_else(|p| p.into_inner());
        if cur.is_none() {
            return Err(Error::Config("this worker dials without TLS; start it with --tls or --ca to use certificates".into()));
        }
        *cur = Some(tls);
        Ok(())
    }

    /// Graceful stop: no more dials, idle tunnels close, requests in flight
    /// finish with `Connection: close`; returns when all threads ended.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        self.join();
    }

    /// Abrupt stop, as if the process died: every socket closes now.
    pub fn kill(mut self) {
        self.kill.store(true, Ordering::Release);
        self.join();
    }

    /// Blocks until the worker ends (after `stop_flag` is set).
    pub fn wait(mut self) {
        self.join();
    }

    /// Whether every worker thread has ended (a fatal error, or a stop).
    pub fn finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// The flag that [`stop`](Self::stop) sets, for signal handlers.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.kill.store(true, Ordering::Release);
            self.join();
        }
    }
}

/// Starts a worker: `cfg.threads` threads, each calling `make` once for its
/// handler, dialing every lb in `cfg.lbs`.
pub fn serve<H, F>(cfg: Config, make: F) -> Result<Worker, Error>
where
    H: Handler,
    F: Fn() -> H + Send + Sync + 'static,
{
    cfg.validate().map_err(Error::Config)?;
    let shared = Arc::new(Shared {
        lbs: cfg.lbs.iter().map(|a| LbState { addr: a.clone(), coverage: Mutex::new(Coverage::new()) }).collect(),
        counts: dial::count_slot(cfg.threads, cfg.lbs.len()),
        up: AtomicUsize::new(0),
        tls: std::sync::RwLock::new(cfg.tls.clone()),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let kill = Arc::new(AtomicBool::new(false));
    let make = Arc::new(make);
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::new();
    for t in 0..cfg.threads {
        let (cfg, shared, stop, kill, make, ready) =
            (cfg.clone(), shared.clone(), stop.clone(), kill.clone(), make.clone(), ready_tx.clone());
        let th = std::thread::Builder::new()
            .name(format!("ptth-workerd-{t}"))
            .spawn(move || {
                if cfg.pin {
                    pin_to(t);
                }
                let mut rt = match Runtime::build(&cfg.runtime) {
                    Ok((rt, driver)) => {
                        if let Some(why) = driver.fallback.filter(|_| t == 0) {
                            tracing::warn!("running on epoll, not io_uring: {why}");
                        }
                        rt
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                rt.block_on(thread_main(t, cfg, shared, stop, kill, make));
            })
            .map_err(Error::Io)?;
        threads.push(th);
    }
    drop(ready_tx);
    let worker = Worker { shared, cfg, stop, kill, threads };
    for _ in 0..worker.threads.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                worker.kill.store(true, Ordering::Release);
                return Err(Error::Io(e));
            }
            Err(_) => return Err(Error::Config("a worker thread failed to start".into())),
        }
    }
    Ok(worker)
}

async fn thread_main<H, F>(
    thread: usize,
    cfg: Config,
    shared: Arc<Shared>,
    stop_flag: Arc<AtomicBool>,
    kill_flag: Arc<AtomicBool>,
    make: Arc<F>,
) where
    H: Handler,
    F: Fn() -> H,
{
    let stop = Signal::new();
    let kill = Signal::new();
    monoio::spawn(stop.clone().follow(stop_flag, FLAG_POLL));
    monoio::spawn(kill.clone().follow(kill_flag, FLAG_POLL));
    let handler = Rc::new(make());
    let cfg = Rc::new(cfg);
    let live = Rc::new(Cell::new(0u32));
    for lb in 0..shared.lbs.len() {
        let slot = thread * shared.lbs.len() + lb;
        let spawn_tunnel = {
            let (handler, cfg, shared, stop, kill, live) =
                (handler.clone(), cfg.clone(), shared.clone(), stop.clone(), kill.clone(), live.clone());
            move |stream, leftover, acc: ptth_proto::setup::Accepted, epoch| {
                dial::bump(&shared.counts, slot, true);
                shared.up.fetch_add(1, Ordering::Relaxed);
                live.set(live.get() + 1);
                let (handler, cfg, shared, stop, kill, live) =
                    (handler.clone(), cfg.clone(), shared.clone(), stop.clone(), kill.clone(), live.clone());
                monoio::spawn(async move {
                    let work = async {
                        match acc.protocol {
                            InnerProtocol::H2 => tunnel_h2::serve(stream, leftover, handler.clone(), cfg.clone(), &stop).await,
                            InnerProtocol::Http11 => {
                                tunnel::serve(tunnel::Conn::new(stream, leftover, cfg.clone()), &*handler, &stop).await
                            }
                        }
                    };
                    let res = monoio::select! {
                        r = work => Some(r),
                        _ = kill.wait() => None,
                    };
                    if let Some(Err(e)) = res {
                        log(true, format_args!("lb {}: tunnel on core {} ended: {e}", shared.lbs[lb].addr, acc.core));
                    }
                    dial::tunnel_ended(&cfg, &shared.lbs[lb], acc.core, epoch, stop.is_fired());
                    dial::bump(&shared.counts, slot, false);
                    shared.up.fetch_sub(1, Ordering::Relaxed);
                    live.set(live.get() - 1);
                });
            }
        };
        monoio::spawn(dial::run_dialer(lb, thread, shared.clone(), cfg.clone(), stop.clone(), spawn_tunnel));
    }
    let drained = async {
        stop.wait().await;
        if thread == 0 {
            log(false, format_args!("stopping: no more dials, idle tunnels close, requests in flight finish"));
        }
        while live.get() > 0 {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    monoio::select! {
        _ = kill.wait() => {},
        _ = drained => {},
    }
    // monoio drops tasks still parked when the runtime goes away without
    // running them; give the killed ones a turn so their sockets close now.
    stop.fire();
    kill.fire();
    monoio::time::sleep(Duration::from_millis(20)).await;
}
