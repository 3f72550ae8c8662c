//! Dialing out: keeps this worker's tunnels to every lb, on every lb core.
//!
//! Place in the request path: before any request, each worker thread runs one
//! dialer per lb. A dial is a TCP connect plus the PTTH setup; the lb's `101`
//! says which of its cores took the tunnel (`Tunnel-Core`/`Tunnel-Cores`). The
//! dialers keep dialing until every lb core holds `tunnels_per_core` tunnels,
//! and redial when one ends. Failures back off exponentially with full jitter,
//! the first connect included, honouring the lb's `Retry-After`.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use monoio::net::TcpStream;
use ptth_proto::rt::tls::{HandshakeError, MaybeTls, TlsStream};

use crate::TunnelStream;
use ptth_proto::h1::{self, Parsed, ResponseHead};
use ptth_proto::rt::io::{write_all, ReadBuf};
use ptth_proto::rt::signal::Signal;
use ptth_proto::rt::FastRng;
use ptth_proto::setup::{write_setup_request, Accepted, SetupParams, SetupResponse};

use crate::config::Config;
use crate::error::Error;
use crate::{log, Shared};

/// How often a satisfied dialer re-checks its tunnel count.
const RECHECK: Duration = Duration::from_millis(50);

/// What one worker process knows about its tunnels to one lb.
#[derive(Debug)]
pub struct Coverage {
    /// Bumped when the lb's core count changes (it restarted differently), so
    /// tunnels from before do not decrement the new counts.
    pub epoch: u64,
    /// The lb's core count; 0 until the first `101`.
    pub cores: u32,
    pub per_core: Vec<u32>,
    /// Whether every core held its target at the last change (for logging
    /// transitions once).
    pub covered: bool,
    /// Why the last dial failed, until one succeeds.
    pub last_error: Option<String>,
}

impl Coverage {
    pub(crate) fn new() -> Coverage {
        Coverage { epoch: 0, cores: 0, per_core: Vec::new(), covered: false, last_error: None }
    }

    pub fn total(&self) -> u32 {
        self.per_core.iter().sum()
    }

    pub fn is_covered(&self, target: u32) -> bool {
        self.cores > 0 && self.per_core.iter().all(|&n| n >= target)
    }
}

/// One lb as the dialers share it.
#[derive(Debug)]
pub struct LbState {
    pub addr: String,
    pub coverage: Mutex<Coverage>,
}

fn lock(lb: &LbState) -> std::sync::MutexGuard<'_, Coverage> {
    lb.coverage.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tunnels this thread should hold to an lb with `cores` cores.
fn share(cores: u32, per_core: u32, threads: usize, index: usize) -> u32 {
    let total = cores.max(1) * per_core;
    let threads = threads as u32;
    total / threads + u32::from((index as u32) < total % threads)
}

/// Delay before attempt number `attempt` (0-based): full jitter over an
/// exponentially growing window, never below what the lb asked for.
fn backoff(cfg: &Config, attempt: u32, retry_after: Option<u32>, rng: &mut FastRng) -> Duration {
    let window = cfg.backoff_base.saturating_mul(1u32 << attempt.min(16)).min(cfg.backoff_max);
    let jittered = Duration::from_nanos(window.as_nanos() as u64 / 2 + rng.below(window.as_nanos() as u64 / 2 + 1));
    jittered.max(Duration::from_secs(u64::from(retry_after.unwrap_or(0))))
}

/// Runs one dialer: this thread's tunnels to one lb.
pub(crate) async fn run_dialer<F>(lb_index: usize, thread: usize, shared: Arc<Shared>, cfg: Rc<Config>, stop: Signal, spawn_tunnel: F)
where
    F: Fn(TunnelStream, Vec<u8>, Accepted, u64),
{
    let lb = &shared.lbs[lb_index];
    let mut rng = FastRng::seeded((thread as u64) << 32 | lb_index as u64);
    let mut attempt = 0u32;
    let mut failing = false;
    // Jitter even the first connect, so a fleet started at once does not dial
    // in lockstep.
    let first = Duration::from_nanos(rng.below(cfg.backoff_base.as_nanos() as u64 + 1));
    if sleep_or_stop(first, &stop).await {
        return;
    }
    loop {
        let cores = lock(lb).cores;
        let target = share(cores, cfg.tunnels_per_core, cfg.threads, thread);
        let busy = shared.tunnels_mine(thread, lb_index);
        if busy >= target || stop.is_fired() {
            if sleep_or_stop(RECHECK, &stop).await {
                return;
            }
            continue;
        }
        let tls = shared.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
        let dialed = monoio::select! {
            r = dial_once(&lb.addr, &cfg, tls) => r,
            _ = stop.wait() => return,
        };
        match dialed {
            Ok((stream, leftover, acc)) => {
                attempt = 0;
                lock(lb).last_error = None;
                if failing {
                    failing = false;
                    log(false, format_args!("lb {}: reachable again", lb.addr));
                }
                let placed = {
                    let mut cov = lock(lb);
                    if cov.cores != acc.cores {
                        cov.epoch += 1;
                        cov.cores = acc.cores;
                        cov.per_core = vec![0; acc.cores as usize];
                    }
                    let core = acc.core as usize;
                    let lacking = cov.per_core.iter().any(|&n| n < cfg.tunnels_per_core);
                    if cov.per_core[core] >= cfg.tunnels_per_core && lacking {
                        None
                    } else {
                        cov.per_core[core] += 1;
                        let now = cov.is_covered(cfg.tunnels_per_core);
                        if now && !cov.covered {
                            log(
                                false,
                                format_args!("lb {}: all {} cores covered, {} tunnels each", lb.addr, cov.cores, cfg.tunnels_per_core),
                            );
                        }
                        cov.covered = now;
                        Some(cov.epoch)
                    }
                };
                match placed {
                    Some(epoch) => {
                        log(true, format_args!("lb {}: tunnel up on core {}/{}", lb.addr, acc.core, acc.cores));
                        spawn_tunnel(stream, leftover, acc, epoch);
                    }
                    None => {
                        // The lb placed it on a core that is full while another
                        // lacks tunnels: drop it and dial again.
                        drop(stream);
                        if sleep_or_stop(cfg.backoff_base, &stop).await {
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                let retry_after = match &e {
                    Error::Rejected { retry_after, .. } => *retry_after,
                    _ => None,
                };
                let wait = backoff(&cfg, attempt, retry_after, &mut rng);
                attempt = attempt.saturating_add(1);
                lock(lb).last_error = Some(e.to_string());
                if !failing || cfg.verbose || attempt.is_power_of_two() {
                    log(false, format_args!("lb {}: {e}; retrying in {} ms", lb.addr, wait.as_millis()));
                }
                failing = true;
                if sleep_or_stop(wait, &stop).await {
                    return;
                }
            }
        }
    }
}

/// Records that a tunnel ended; logs when coverage is lost.
pub(crate) fn tunnel_ended(cfg: &Config, lb: &LbState, core: u32, epoch: u64, stopping: bool) {
    let mut cov = lock(lb);
    if cov.epoch == epoch {
        if let Some(n) = cov.per_core.get_mut(core as usize) {
            *n = n.saturating_sub(1);
        }
    }
    let now = cov.is_covered(cfg.tunnels_per_core);
    if cov.covered && !now && !stopping {
        log(false, format_args!("lb {}: tunnel lost on core {core}; redialing", lb.addr));
    }
    cov.covered = now;
}

/// Sleeps; true when the stop signal fired instead.
async fn sleep_or_stop(d: Duration, stop: &Signal) -> bool {
    monoio::select! {
        _ = monoio::time::sleep(d) => stop.is_fired(),
        _ = stop.wait() => true,
    }
}

/// Connects (with TLS when configured: the lb is authenticated before
/// anything, the token included, is sent) and performs the PTTH setup.
/// Returns the stream, any bytes read past the `101`, and what the lb
/// accepted.
/// `tls`: the client config in force now (`Worker::set_tls` may replace
/// it between dials).
async fn dial_once(addr: &str, cfg: &Config, tls: Option<Arc<rustls::ClientConfig>>) -> Result<(TunnelStream, Vec<u8>, Accepted), Error> {
    let conn_err = |source| Error::Connect { lb: addr.to_string(), source };
    let tcp = match ptth_proto::rt::deadline::within(cfg.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(conn_err(e)),
        Err(_) => return Err(conn_err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))),
    };
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_tcp_keepalive(Some(Duration::from_secs(30)), Some(Duration::from_secs(10)), Some(3));
    let mut stream = match &tls {
        None => MaybeTls::Plain(tcp),
        Some(tls) => {
            let tls_err = |why: String| Error::Tls { lb: addr.to_string(), why };
            let name = cfg.tls_name.clone().unwrap_or_else(|| lb_host(addr).to_string());
            let server = rustls::pki_types::ServerName::try_from(name.clone())
                .map_err(|_| tls_err(format!("{name:?} is not a DNS name or IP address to verify the lb by (--tls-name)")))?;
            let conn = rustls::ClientConnection::new(tls.clone(), server).map_err(|e| tls_err(e.to_string()))?;
            match TlsStream::handshake(tcp, conn, cfg.setup_timeout).await {
                Ok(s) => MaybeTls::Tls(Box::new(s)),
                // An lb we cannot authenticate gets nothing, and the log says why.
                Err(HandshakeError::Tls(e)) => return Err(tls_err(format!("the lb is not trusted as {name:?}: {e}"))),
                Err(e) => return Err(tls_err(e.to_string())),
            }
        }
    };
    let host = addr;
    let mut out = Vec::with_capacity(512);
    write_setup_request(
        &mut out,
        &SetupParams { host, claim: &cfg.claim, offer: &cfg.protocols, token: cfg.token.as_deref(), meta: &cfg.meta },
    );
    let (res, _) = write_all(&mut stream, out, cfg.setup_timeout).await;
    res.map_err(conn_err)?;
    let mut rb = ReadBuf::with_capacity(16 * 1024);
    let mut head = ResponseHead::default();
    let deadline = std::time::Instant::now() + cfg.setup_timeout;
    loop {
        match h1::parse_response(rb.data(), &cfg.limits, false, &mut head) {
            Ok(Parsed::Complete) => break,
            Ok(Parsed::Partial) => {}
            Err(e) => return Err(Error::BadSetupResponse { lb: addr.into(), why: e.to_string() }),
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rb.fill(&mut stream, left).await {
            Ok(0) => return Err(conn_err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed during setup"))),
            Ok(_) => {}
            Err(e) => return Err(conn_err(e)),
        }
    }
    match SetupResponse::parse(rb.data(), &head, &cfg.protocols) {
        Ok(SetupResponse::Accepted(acc)) => {
            rb.consume(head.len);
            Ok((stream, rb.take_unconsumed(), acc))
        }
        Ok(SetupResponse::Rejected { status, retry_after }) => {
            rb.consume(head.len);
            let reason = read_reason(&mut stream, &mut rb).await;
            Err(Error::Rejected { lb: addr.into(), status, retry_after, reason })
        }
        Err(why) => Err(Error::BadSetupResponse { lb: addr.into(), why }),
    }
}

/// The host part of an `--lb` address (`host:port`, `[v6]:port`).
fn lb_host(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// Best effort: the first line of a refusal's body, for the log.
async fn read_reason(stream: &mut TunnelStream, rb: &mut ReadBuf) -> String {
    for _ in 0..4 {
        if rb.data().contains(&b'\n') || rb.data().len() >= 512 {
            break;
        }
        match rb.fill(stream, Duration::from_millis(200)).await {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let d = rb.data();
    let line = d.split(|&b| b == b'\n').next().unwrap_or(b"");
    String::from_utf8_lossy(&line[..line.len().min(512)]).trim().to_string()
}

/// Count of tunnels per (thread, lb), kept by the tunnel tasks.
pub(crate) fn count_slot(threads: usize, lbs: usize) -> Vec<std::sync::atomic::AtomicU32> {
    (0..threads * lbs).map(|_| std::sync::atomic::AtomicU32::new(0)).collect()
}

pub(crate) fn bump(slots: &[std::sync::atomic::AtomicU32], idx: usize, up: bool) {
    if up {
        slots[idx].fetch_add(1, Ordering::Relaxed);
    } else {
        slots[idx].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lb_is_verified_by_its_host() {
        assert_eq!(lb_host("lb.example:7443"), "lb.example");
        assert_eq!(lb_host("10.0.0.1:7443"), "10.0.0.1");
        assert_eq!(lb_host("[2001:db8::1]:7443"), "2001:db8::1");
    }

    #[test]
    fn shares_cover_the_total() {
        for (cores, per, threads) in [(2, 4, 1), (3, 4, 2), (16, 1, 3), (1, 1, 4)] {
            let sum: u32 = (0..threads).map(|t| share(cores, per, threads, t)).sum();
            assert_eq!(sum, cores * per);
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cfg = Config::default();
        let mut rng = FastRng::seeded(1);
        let d0 = backoff(&cfg, 0, None, &mut rng);
        assert!(d0 <= cfg.backoff_base && d0 >= cfg.backoff_base / 2);
        let d20 = backoff(&cfg, 20, None, &mut rng);
        assert!(d20 <= cfg.backoff_max && d20 >= cfg.backoff_max / 2);
        assert!(backoff(&cfg, 0, Some(3), &mut rng) >= Duration::from_secs(3));
    }
}
