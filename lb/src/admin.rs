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
use serde_json::json;

use crate::percore::Core;
use crate::stats::get;
use crate::Shared;

pub(crate) async fn serve(core: Rc<Core>, listener: TcpListener) {
    // Stays up through the drain (until the kill), so /healthz can report it.
    let c = core.clone();
    crate::percore::accept_each(&core, listener, "admin", core.kill.clone(), move |stream, _| {
        let shared = c.shared.clone();
        crate::percore::spawn_killable(&c, async move { answer(&shared, stream).await });
    })
    .await;
}

async fn answer(shared: &Shared, mut stream: TcpStream) {
    let p = &shared.cfg.profile;
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

/// The `/status` document (see docs/OPERATIONS.md for each field).
pub(crate) fn status_json(shared: &Shared) -> String {
    let per_core: Vec<_> = shared
        .stats
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "core": i,
                "requests": get(&s.requests),
                "served_local": get(&s.served_local),
                "served_migrated": get(&s.served_migrated),
                "status_2xx": get(&s.status_2xx),
                "status_3xx": get(&s.status_3xx),
                "status_4xx": get(&s.status_4xx),
                "status_5xx": get(&s.status_5xx),
                "retries": get(&s.retries),
                "queued": get(&s.queued),
                "clients_accepted": get(&s.clients_accepted),
                "clients_handed_off": get(&s.clients_handed_off),
                "active_clients": get(&s.active_clients),
                "tunnels_accepted": get(&s.tunnels_accepted),
                "setups_rejected": get(&s.setups_rejected),
            })
        })
        .collect();
    let sum = |f: fn(&crate::stats::CoreStats) -> u64| shared.stats.iter().map(|s| f(s)).sum::<u64>();
    let workers: Vec<_> = {
        let map = shared.placement.lock();
        let mut list: Vec<_> = map.iter().collect();
        list.sort_by(|a, b| a.0.cmp(b.0));
        list.into_iter()
            .map(|(id, e)| {
                let claim = match &e.meta.claim {
                    Claim::Any => json!("*"),
                    Claim::Origins(o) => json!(o.iter().map(|o| o.to_string()).collect::<Vec<_>>()),
                };
                let in_flight: Vec<u32> = e.stats.iter().map(|s| s.in_flight.load(Ordering::Relaxed)).collect();
                json!({
                    "id": &**id,
                    "origins": claim,
                    "routes": e.meta.routes,
                    "weight": e.meta.weight,
                    "max_concurrency": e.meta.max_concurrency,
                    "tunnels_per_core": e.per_core,
                    "in_flight_per_core": in_flight,
                    "in_flight": in_flight.iter().sum::<u32>(),
                    "requests": e.stats.iter().map(|s| get(&s.requests)).sum::<u64>(),
                })
            })
            .collect()
    };
    let doc = json!({
        "cores": shared.cores,
        "runtime": shared.driver.get().cloned().unwrap_or_default(),
        "draining": shared.draining.load(Ordering::Acquire),
        "uptime_s": shared.started.elapsed().as_secs(),
        "requests": {
            "total": sum(|s| get(&s.requests)),
            "served_local": sum(|s| get(&s.served_local)),
            "served_migrated": sum(|s| get(&s.served_migrated)),
        },
        "per_core": per_core,
        "workers": workers,
    });
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}
