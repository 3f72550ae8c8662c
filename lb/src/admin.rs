//! The admin listener (core 0): `GET /healthz` and `GET /status`.
//!
//! `/status` reads the per-core counters and the placement table; it never
//! touches another core's owned state, so scraping costs the data path nothing.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use monoio::net::{TcpListener, TcpStream};
use ptth_proto::h1::{self, Parsed, RequestHead};
use ptth_proto::rt::io::{write_all, ReadBuf};
use ptth_proto::setup::Claim;

use crate::percore::Core;
use crate::stats::get;
use crate::Shared;

pub(crate) async fn serve(core: Rc<Core>, listener: TcpListener) {
    // Stays up through the drain (until the kill), so /healthz can report it.
    let c = core.clone();
    crate::percore::accept_each(&core, listener, "admin", core.kill.clone(), move |stream, _| {
        let (shared, cfg) = (c.shared.clone(), c.cfg());
        crate::percore::spawn_killable(&c, async move { answer(&shared, &cfg, stream).await });
    })
    .await;
}

async fn answer(shared: &Shared, cfg: &crate::Config, mut stream: TcpStream) {
    let p = &cfg.profile;
    let mut rb = ReadBuf::with_capacity(8192);
    let mut head = RequestHead::default();
    let limits = h1::Limits { max_head: 8192, ..p.limits };
    let deadline = std::time::Instant::now() + p.header_timeout;
    let (status, ctype, body) = loop {
        match h1::parse_request(rb.data(), &limits, &mut head) {
            Ok(Parsed::Complete) => break route(shared, rb.data(), &head),
            Ok(Parsed::Partial) => {}
            Err(e) => break (e.status(), "text/plain", format!("{e}\n")),
        }
        match rb.fill(&mut stream, deadline.saturating_duration_since(std::time::Instant::now())).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    };
    let mut out = Vec::with_capacity(body.len() + 128);
    h1::write_simple_response(&mut out, status, h1::reason(status), &[], ctype, body.as_bytes(), true);
    let _ = write_all(&mut stream, out, p.io_timeout).await;
}

fn route(shared: &Shared, buf: &[u8], head: &RequestHead) -> (u16, &'static str, String) {
    let path = head.target(buf).split(|&b| b == b'?').next().unwrap_or(b"");
    if head.method(buf) != b"GET" && head.method(buf) != b"HEAD" {
        return (405, "text/plain", "the admin listener answers GET only\n".into());
    }
    match path {
        b"/healthz" => {
            if shared.draining.load(Ordering::Acquire) {
                (503, "text/plain", "draining\n".into())
            } else {
                (200, "text/plain", "ok\n".into())
            }
        }
        b"/status" => (200, "application/json", status_json(shared)),
        _ => (404, "text/plain", "unknown admin path; try /status or /healthz\n".into()),
    }
}

/// The `/status` document, typed: what the admin listener serves as JSON
/// and what an embedding program (or a test) reads with [`crate::Lb::status`].
/// docs/OPERATIONS.md describes each field.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub cores: usize,
    /// Core 0's driver and pinning (each core's: `per_core[].driver`, `.cpu`).
    pub runtime: String,
    pub draining: bool,
    pub uptime_s: u64,
    /// Reloads accepted since start (SIGHUP, `Lb::reload`).
    #[serde(default)]
    pub config_reloads: u64,
    pub requests: Totals,
    pub per_core: Vec<CoreStatus>,
    pub workers: Vec<WorkerStatus>,
    /// Each request class's queue, over all workers declaring it and all
    /// cores (`default`: requests no declared class matches).
    #[serde(default)]
    pub classes: Vec<ClassQueueStatus>,
}

/// One class's queue.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClassQueueStatus {
    pub name: String,
    /// Requests waiting now.
    pub waiting: u32,
    /// How long the oldest of them has waited (as of each core's last
    /// sweep, every 500 ms); `None` when none waits.
    pub oldest_wait_ms: Option<u64>,
    /// Requests that waited, since start.
    pub queued: u64,
    /// 503s because the class's queue (or a core's) was full.
    pub shed_full: u64,
    /// 503s because the wait passed the class's `wait` (or `queue.max_wait_ms`).
    pub shed_timeout: u64,
    /// Requests whose client went away while they waited.
    pub abandoned: u64,
}

/// Responses over all cores.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub total: u64,
    pub served_local: u64,
    pub served_migrated: u64,
}

/// One core's counters.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CoreStatus {
    pub core: usize,
    /// The I/O driver this core runs (and why not io_uring, if it fell back).
    #[serde(default)]
    pub driver: String,
    /// The CPU this core's thread is pinned to; `None`: not pinned.
    #[serde(default)]
    pub cpu: Option<usize>,
    pub requests: u64,
    pub served_local: u64,
    pub served_migrated: u64,
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub retries: u64,
    pub queued: u64,
    pub clients_accepted: u64,
    /// Connections refused at `limits.max_clients`.
    #[serde(default)]
    pub clients_shed: u64,
    pub clients_handed_off: u64,
    pub tls_handshakes_failed: u64,
    pub active_clients: u64,
    pub tunnels_accepted: u64,
    pub setups_rejected: u64,
}

/// Origins a worker claimed: `"*"`, or a list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Origins {
    Any(String),
    Listed(Vec<String>),
}

/// One worker, over all cores.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerStatus {
    pub id: String,
    /// The identity that set it up: an `[[identities]]` name, `token` (the
    /// shared token) or `loopback`.
    #[serde(default)]
    pub identity: String,
    pub origins: Origins,
    pub routes: Vec<String>,
    pub weight: u32,
    pub max_concurrency: Option<u32>,
    pub tunnels_per_core: Vec<u32>,
    pub in_flight_per_core: Vec<u32>,
    pub in_flight: u32,
    pub requests: u64,
    /// The classes it declared (`Tunnel-Classes`), in matching order.
    #[serde(default)]
    pub classes: Vec<ClassStatus>,
    /// Some core keeps it out of selection now (outlier detection).
    #[serde(default)]
    pub ejected: bool,
    /// Times cores ejected it.
    #[serde(default)]
    pub ejections: u64,
    /// Why it was last ejected (by the core whose ejection ends last), if
    /// ever: `"5 failed attempts in a row; last: it answered 502"`.
    #[serde(default)]
    pub last_ejection: Option<String>,
    /// It withdrew itself (its origin is unavailable) and some core keeps
    /// it out now.
    #[serde(default)]
    pub withdrawn: bool,
}

/// One declared class of a worker.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClassStatus {
    pub name: String,
    /// RFC 9218 urgency, 0 (most urgent) to 7.
    pub urgency: u8,
    pub rules: Vec<String>,
    pub limit: Option<u32>,
    /// Requests of the class running now, across cores (classes with a limit).
    pub in_flight: Option<u32>,
    /// For a class declared `adaptive`: the limit the lb estimates now (at
    /// most `limit`).
    #[serde(default)]
    pub adaptive_limit: Option<u32>,
}

/// Reads the counters and the placement table into a [`Status`].
pub(crate) fn status(shared: &Shared) -> Status {
    let per_core: Vec<CoreStatus> = shared
        .stats
        .iter()
        .enumerate()
        .map(|(i, s)| CoreStatus {
            core: i,
            driver: shared.core_info[i].get().map(|c| c.driver.to_string()).unwrap_or_default(),
            cpu: shared.core_info[i].get().and_then(|c| c.cpu),
            requests: get(&s.requests),
            served_local: get(&s.served_local),
            served_migrated: get(&s.served_migrated),
            status_2xx: get(&s.status_2xx),
            status_3xx: get(&s.status_3xx),
            status_4xx: get(&s.status_4xx),
            status_5xx: get(&s.status_5xx),
            retries: get(&s.retries),
            queued: get(&s.queued),
            clients_accepted: get(&s.clients_accepted),
            clients_shed: get(&s.clients_shed),
            clients_handed_off: get(&s.clients_handed_off),
            tls_handshakes_failed: get(&s.tls_handshakes_failed),
            active_clients: get(&s.active_clients),
            tunnels_accepted: get(&s.tunnels_accepted),
            setups_rejected: get(&s.setups_rejected),
        })
        .collect();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |t| t.as_millis() as u64);
    let workers = {
        let map = shared.placement.lock();
        let mut list: Vec<_> = map.iter().collect();
        list.sort_by(|a, b| a.0.cmp(b.0));
        list.into_iter()
            .map(|(id, e)| {
                let in_flight_per_core: Vec<u32> = e.stats.iter().map(|s| s.in_flight.load(Ordering::Relaxed)).collect();
                WorkerStatus {
                    id: id.to_string(),
                    identity: e.owner.to_string(),
                    origins: match &e.meta.claim {
                        Claim::Any => Origins::Any("*".into()),
                        Claim::Origins(o) => Origins::Listed(o.iter().map(|o| o.to_string()).collect()),
                    },
                    routes: e.meta.routes.clone(),
                    weight: e.meta.weight,
                    max_concurrency: e.meta.max_concurrency,
                    tunnels_per_core: e.per_core.clone(),
                    in_flight: in_flight_per_core.iter().sum(),
                    in_flight_per_core,
                    requests: e.stats.iter().map(|s| get(&s.requests)).sum(),
                    ejected: e.stats.iter().any(|s| get(&s.ejected_until_ms) > now_ms),
                    ejections: e.stats.iter().map(|s| get(&s.ejections)).sum(),
                    last_ejection: e
                        .stats
                        .iter()
                        .filter(|s| get(&s.ejections) > 0)
                        .max_by_key(|s| get(&s.ejected_until_ms))
                        .map(|s| s.last_ejection.lock().unwrap_or_else(|p| p.into_inner()).clone()),
                    withdrawn: e.stats.iter().any(|s| get(&s.withdrawn_until_ms) > now_ms),
                    classes: e
                        .meta
                        .classes
                        .iter()
                        .map(|c| ClassStatus {
                            name: c.name.clone(),
                            urgency: c.urgency,
                            rules: c.rules.iter().map(|r| r.to_string()).collect(),
                            limit: c.limit,
                            // A take that fails counts for an instant: never show more than the limit.
                            in_flight: c.limit.and_then(|l| e.class_permits.get(&c.name).map(|p| p.in_use().min(l))),
                            adaptive_limit: e.class_adaptive.get(&c.name).filter(|_| c.adaptive).map(|a| a.limit()),
                        })
                        .collect(),
                }
            })
            .collect()
    };
    let classes = shared
        .placement
        .classes
        .all()
        .iter()
        .map(|q| {
            let t = q.totals();
            ClassQueueStatus {
                name: q.name.to_string(),
                waiting: t.waiting,
                oldest_wait_ms: t.oldest_since_ms.filter(|_| t.waiting > 0).map(|since| now_ms.saturating_sub(since)),
                queued: t.queued,
                shed_full: t.shed_full,
                shed_timeout: t.shed_timeout,
                abandoned: t.abandoned,
            }
        })
        .collect();
    Status {
        cores: shared.cores,
        runtime: shared.core_info[0].get().map(crate::CoreInfo::describe).unwrap_or_default(),
        draining: shared.draining.load(Ordering::Acquire),
        uptime_s: shared.started.elapsed().as_secs(),
        config_reloads: shared.reloads.load(Ordering::Relaxed),
        requests: Totals {
            total: per_core.iter().map(|c| c.requests).sum(),
            served_local: per_core.iter().map(|c| c.served_local).sum(),
            served_migrated: per_core.iter().map(|c| c.served_migrated).sum(),
        },
        per_core,
        workers,
        classes,
    }
}

/// The `/status` document as JSON.
pub(crate) fn status_json(shared: &Shared) -> String {
    let mut s = serde_json::to_string_pretty(&status(shared)).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}
