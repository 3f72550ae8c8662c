//! ptth-lb: a thread-per-core io_uring load balancer for workers that dial
//! out (reverse HTTP, draft-kazuho-ptth-ptth).
//!
//! The request path, file by file:
//! 1. [`listen`]: SO_REUSEPORT listeners, one per core per address.
//! 2. [`core`]: one pinned thread and monoio runtime per core, owning its state.
//! 3. [`tunnel::accept`]: workers connect, send the PTTH setup, are
//!    authorized and placed on a core ([`tunnel::placement`]).
//! 4. [`proxy`]: a client request is parsed (strictly), routed and sent over a
//!    tunnel chosen by [`tunnel::pool`]; the response streams back.
//! 5. [`admin`]: `/status` and `/healthz`.
//!
//! [`run`] starts it all and returns a handle; tests call it on 127.0.0.1:0.

pub mod admin;
mod attempts;
pub mod certs;
pub mod config;
pub mod demo;
mod downstream_h2;
pub mod error;
mod exchange;
mod failure;
mod h2_tunnel;
mod inbox;
mod listen;
mod percore;
mod proxy;
pub mod stats;
pub mod tls;
mod tunnel;
pub use tunnel::identity;
mod wiring;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_utils::CachePadded;

pub use config::{Config, ConfigError, Profile};
pub use error::{Error, ReloadError, StartupError};

use crate::inbox::Inbox;
use crate::stats::CoreStats;
use crate::tunnel::placement::Placement;

/// What every core can see; the data path reads only `cfg` and its own
/// entries of `stats` and `inboxes`.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) cores: usize,
    pub(crate) placement: Arc<Placement>,
    pub(crate) stats: Vec<CachePadded<CoreStats>>,
    pub(crate) inboxes: Arc<[Inbox]>,
    pub(crate) draining: AtomicBool,
    pub(crate) started: Instant,
    /// What each core's thread got at start: driver and pinning.
    pub(crate) core_info: Vec<std::sync::OnceLock<CoreInfo>>,
    /// TLS for the TLS client listeners and the tunnel listener (when
    /// either has it).
    pub(crate) tls: Option<tls::ServerTls>,
    /// The tunnel listener runs TLS.
    pub(crate) tunnel_tls: bool,
    /// The config in force: the one started with, then each accepted
    /// reload's (the cores hold copies; this one is for the next reload and
    /// for `/status`).
    pub(crate) current: std::sync::Mutex<Arc<Config>>,
    /// Reloads accepted since start.
    pub(crate) reloads: std::sync::atomic::AtomicU64,
}

/// How one core's thread runs: its I/O driver and the CPU it is pinned to.
#[derive(Debug, Clone)]
pub struct CoreInfo {
    pub driver: ptth_proto::rt::runtime::Driver,
    /// `None`: not pinned (`runtime.pin = false`, or the pin failed).
    pub cpu: Option<usize>,
}

impl CoreInfo {
    /// e.g. `io_uring (1024 entries, flags coop_taskrun), pinned to CPU 0`.
    pub fn describe(&self) -> String {
        match self.cpu {
            Some(cpu) => format!("{}, pinned to CPU {cpu}", self.driver),
            None => format!("{}, not pinned", self.driver),
        }
    }
}

/// A running lb.
pub struct Lb {
    /// Bound client listener addresses (port 0 resolved).
    pub client_addrs: Vec<SocketAddr>,
    /// Bound TLS client listener addresses.
    pub client_tls_addrs: Vec<SocketAddr>,
    pub tunnel_addr: SocketAddr,
    /// The tunnel listener runs TLS.
    pub tunnel_tls: bool,
    pub admin_addr: Option<SocketAddr>,
    /// Cores running.
    pub cores: usize,
    /// Driver, ring flags and pinning of each core, as started.
    pub per_core: Vec<CoreInfo>,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Lb {
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addrs[0]
    }

    /// Reads the TLS certificate files again: new handshakes use them,
    /// established connections keep theirs. `Ok(false)`: no TLS listener.
    /// On error the old certificates stay.
    pub fn reload_tls(&self) -> Result<bool, tls::TlsError> {
        match &self.shared.tls {
            Some(t) => t.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Applies a new config to new work: policy, identities and tokens,
    /// limits, queues, timeouts, reserved routes, forwarding, the log filter
    /// and the certificates. Tunnels and client connections stay; a request
    /// under way finishes under the config it started with. Everything is
    /// checked first: on an error nothing changes. Returns what changed,
    /// one `key = value` (or `key changed`) each.
    pub fn reload(&self, new: Config) -> Result<Vec<String>, ReloadError> {
        let old = self.shared.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let resolved_tls = new.tunnel_tls();
        let mut fixed = Vec::new();
        let mut differs = |key: &str, changed: bool| {
            if changed {
                fixed.push(key.to_string());
            }
        };
        differs("listen.client", new.client_listen != old.client_listen);
        differs("listen.client_tls", new.client_tls_listen != old.client_tls_listen);
        differs("listen.tunnel", new.tunnel_listen != old.tunnel_listen);
        differs("listen.admin", new.admin_listen != old.admin_listen);
        differs("tunnel.tls", resolved_tls.as_ref().is_ok_and(|&t| t != self.shared.tunnel_tls));
        let (p, q) = (&new.profile, &old.profile);
        differs("runtime.cores", resolve_cores(p.cores) != self.shared.cores);
        differs("runtime.pin", p.pin != q.pin);
        differs("runtime.driver", p.runtime.driver != q.runtime.driver);
        differs("runtime.ring_flags", p.runtime.flags != q.runtime.flags);
        differs("runtime.ring_entries", p.runtime.entries != q.runtime.entries);
        if !fixed.is_empty() {
            return Err(ReloadError::NeedsRestart(fixed));
        }
        let new_tunnel_tls = resolved_tls?;
        ptth_proto::rt::logging::check_filter(&new.log_level).map_err(|e| ConfigError::new("log.level", e))?;
        if let Some(tls) = &self.shared.tls {
            if new.tls_certs.is_empty() {
                return Err(ConfigError::new("tls.certificates", "the TLS listeners need a certificate").into());
            }
            // Last of the checks: it applies itself when it succeeds.
            tls.reconfigure(new.tls_certs.clone(), &new.worker_certs)?;
        }
        let changes = config::effective::changes(&old, &new, new_tunnel_tls);
        if !new.quiet {
            // `--quiet` keeps its errors-only filter.
            let _ = ptth_proto::rt::logging::set_filter(&new.log_level);
        }
        let new = Arc::new(new);
        *self.shared.current.lock().unwrap_or_else(|p| p.into_inner()) = new.clone();
        self.shared.reloads.fetch_add(1, Ordering::Relaxed);
        for inbox in self.shared.inboxes.iter() {
            inbox.send(inbox::CoreMsg::Config(new.clone()));
        }
        Ok(changes)
    }

    /// What `/status` reports, typed (no admin listener needed).
    pub fn status(&self) -> admin::Status {
        admin::status(&self.shared)
    }

    /// The flag [`shutdown`](Self::shutdown) sets; a signal handler may set it.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Graceful shutdown: stop accepting, refuse new tunnels with 503, let
    /// requests in flight finish within the drain deadline, close everything.
    pub fn shutdown(mut self) {
        self.shared.draining.store(true, Ordering::Release);
        self.stop.store(true, Ordering::Release);
        self.join();
    }

    /// Blocks until the stop flag is set and the cores have drained.
    pub fn wait(mut self) {
        self.join();
    }

    fn join(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shared.draining.store(true, Ordering::Release);
            self.stop.store(true, Ordering::Release);
            self.join();
        }
    }
}

/// The number of cores a profile asks for, given the CPUs this process may use.
pub fn resolve_cores(requested: usize) -> usize {
    let allowed = ptth_proto::rt::runtime::allowed_cpus().len().max(1);
    if requested == 0 {
        allowed
    } else {
        requested
    }
}

/// What an operator should hear about a config before it runs: settings
/// that work but are likely not what was meant.
pub fn config_warnings(cfg: &Config) -> Vec<String> {
    let mut w = Vec::new();
    let allowed = ptth_proto::rt::runtime::allowed_cpus().len().max(1);
    if cfg.profile.cores > allowed {
        w.push(format!(
            "runtime.cores = {} but this process may run on {allowed} CPUs: the extra cores share CPUs{} and add latency, not throughput; set runtime.cores = 0 (one per allowed CPU) or at most {allowed}",
            cfg.profile.cores,
            if cfg.profile.pin { " (pinning wraps around)" } else { "" },
        ));
    }
    if let Some(files) = ptth_proto::rt::runtime::open_files() {
        let cores = resolve_cores(cfg.profile.cores) as u64;
        let need = cores * cfg.profile.max_clients + u64::from(cfg.max_tunnels);
        if files < need {
            w.push(format!(
                "the open-file limit is {files}, below what the limits admit ({cores} cores x limits.max_clients {} + tunnel.max_tunnels {} = {need}): past it accepts fail (EMFILE) instead of shedding with 503; raise it (systemd LimitNOFILE=, ulimit -n) or lower limits.max_clients",
                cfg.profile.max_clients, cfg.max_tunnels
            ));
        }
    }
    w
}

/// Binds every listener, starts one thread per core and returns once all
/// cores run.
pub fn run(cfg: Config) -> Result<Lb, StartupError> {
    let cores = resolve_cores(cfg.profile.cores);
    let mut client_groups = Vec::new();
    for &a in &cfg.client_listen {
        client_groups.push(listen::bind_group("client", a, cores, cfg.share_listeners)?);
    }
    let mut tls_groups = Vec::new();
    for &a in &cfg.client_tls_listen {
        tls_groups.push(listen::bind_group("TLS client", a, cores, cfg.share_listeners)?);
    }
    let tunnel_tls = cfg.tunnel_tls()?;
    let tls = match (cfg.client_tls_listen.is_empty() && !tunnel_tls, cfg.tls_certs.is_empty()) {
        (true, _) => None,
        (false, true) => {
            return Err(StartupError::Config(config::ConfigError::new(
                "listen.client_tls",
                "a TLS listener needs a certificate: [[tls.certificates]] in the config, or --tls-cert and --tls-key",
            )))
        }
        (false, false) => Some(tls::ServerTls::new(cfg.tls_certs.clone(), &cfg.worker_certs)?),
    };
    let tunnels = listen::bind_group("tunnel", cfg.tunnel_listen, cores, cfg.share_listeners)?;
    let admin = match cfg.admin_listen {
        Some(a) => Some(listen::bind_one("admin", a)?),
        None => None,
    };
    let addr = |l: &std::net::TcpListener| l.local_addr().expect("bound listener has an address");
    let client_addrs = client_groups.iter().map(|g| addr(&g[0])).collect();
    let client_tls_addrs = tls_groups.iter().map(|g| addr(&g[0])).collect();
    let tunnel_addr = addr(&tunnels[0]);
    let admin_addr = admin.as_ref().map(addr);

    let cfg_copy = cfg.clone();
    let shared = Arc::new(Shared {
        cfg,
        cores,
        placement: Arc::new(Placement::new(cores)),
        stats: (0..cores).map(|_| CachePadded::new(CoreStats::default())).collect(),
        inboxes: (0..cores).map(|_| Inbox::new()).collect(),
        draining: AtomicBool::new(false),
        started: Instant::now(),
        core_info: (0..cores).map(|_| std::sync::OnceLock::new()).collect(),
        tls,
        tunnel_tls,
        current: std::sync::Mutex::new(Arc::new(cfg_copy)),
        reloads: std::sync::atomic::AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut per_core: Vec<Vec<std::net::TcpListener>> = (0..cores).map(|_| Vec::new()).collect();
    for group in client_groups {
        for (i, l) in group.into_iter().enumerate() {
            per_core[i].push(l);
        }
    }
    let mut per_core_tls: Vec<Vec<std::net::TcpListener>> = (0..cores).map(|_| Vec::new()).collect();
    for group in tls_groups {
        for (i, l) in group.into_iter().enumerate() {
            per_core_tls[i].push(l);
        }
    }
    let mut admin = admin;
    let mut threads = Vec::new();
    for (id, ((clients, tls_clients), tunnel)) in per_core.into_iter().zip(per_core_tls).zip(tunnels).enumerate() {
        let listeners = wiring::CoreListeners { clients, tls_clients, tunnel, admin: if id == 0 { admin.take() } else { None } };
        let t = wiring::spawn(id, shared.clone(), listeners, stop.clone(), ready_tx.clone())
            .map_err(|source| StartupError::Runtime { core: id, source })?;
        threads.push(t);
    }
    drop(ready_tx);
    let mut lb = Lb { client_addrs, client_tls_addrs, tunnel_addr, tunnel_tls, admin_addr, cores, per_core: vec![], stop, shared, threads };
    for _ in 0..cores {
        // On an error `lb` drops, which stops the cores that did start.
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(StartupError::Runtime { core: 0, source: std::io::Error::other("a core thread died at start") }),
        }
    }
    lb.per_core = lb.shared.core_info.iter().map(|i| i.get().cloned().expect("every core reported ready")).collect();
    Ok(lb)
}
