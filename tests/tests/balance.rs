//! Routing and balancing: Host claims, longest path prefix, an even spread
//! over workers, weights, and core-local serving on a 2-core lb (with the
//! hand-off to another core when the accepting core has no tunnel).

use std::time::Duration;

use ptth_tests::*;
use ptth_workerd::{Claim, Exchange, Handler, Origin};

/// Answers its name, after `.1` (zero: at once).
#[derive(Clone)]
struct Named(String, Duration);

impl Handler for Named {
    async fn handle(&self, ex: &mut Exchange<'_>) -> Result<(), ptth_workerd::Error> {
        if !self.1.is_zero() {
            monoio::time::sleep(self.1).await;
        }
        ex.respond(200, &[], self.0.as_bytes()).await
    }
}

fn named(lb: &ptth_lb::Lb, id: &str, tweak: impl FnOnce(&mut ptth_workerd::Config)) -> ptth_workerd::Worker {
    named_after(lb, id, Duration::ZERO, tweak)
}

fn named_after(lb: &ptth_lb::Lb, id: &str, delay: Duration, tweak: impl FnOnce(&mut ptth_workerd::Config)) -> ptth_workerd::Worker {
    let mut cfg = worker_config(lb, id, 2);
    tweak(&mut cfg);
    let name = id.to_string();
    start_worker(cfg, move || Named(name.clone(), delay))
}

/// Sends `n` requests over `conns` keep-alive connections in parallel;
/// counts responses by body.
fn tally(addr: std::net::SocketAddr, conns: usize, n: usize, host: &str, path: &str) -> std::collections::HashMap<String, usize> {
    let threads: Vec<_> = (0..conns)
        .map(|_| {
            let (host, path) = (host.to_string(), path.to_string());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut seen = Vec::new();
                for _ in 0..n / conns {
                    c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
                    let r = c.read_response(false);
                    assert_eq!(r.status, 200, "{}", r.text());
                    seen.push(r.text());
                }
                seen
            })
        })
        .collect();
    let mut out = std::collections::HashMap::new();
    for t in threads {
        for s in t.join().unwrap() {
            *out.entry(s).or_insert(0) += 1;
        }
    }
    out
}

#[test]
fn three_workers_share_evenly() {
    let lb = start_lb(2, |_| {});
    let _w: Vec<_> = ["w1", "w2", "w3"].iter().map(|id| named(&lb, id, |_| {})).collect();
    let counts = tally(lb.client_addr(), 12, 3000, "t", "/");
    for id in ["w1", "w2", "w3"] {
        let n = counts.get(id).copied().unwrap_or(0);
        assert!((800..=1200).contains(&n), "{id} got {n} of 3000: {counts:?}");
    }
}

/// A worker 10 times slower than another gets proportionally less: the fast
/// one takes at least 80 % of the requests, at low and at higher
/// concurrency (selection weighs in-flight requests by each worker's recent
/// response time, and breaks idle ties toward the clearly faster one).
#[test]
fn a_slow_worker_gets_proportionally_less() {
    for conns in [1, 8] {
        let lb = start_lb(1, |_| {});
        let worker = |id: &str, delay| named_after(&lb, id, delay, |c| c.tunnels_per_core = 8);
        let _slow = worker("slow", Duration::from_millis(20));
        let _fast = worker("fast", Duration::from_millis(2));
        let n = 200 * conns.min(2);
        let counts = tally(lb.client_addr(), conns, n, "t", "/");
        let fast = counts.get("fast").copied().unwrap_or(0);
        assert!(fast * 100 >= n * 80, "{conns} connections: fast got {fast} of {n}: {counts:?}");
    }
}

#[test]
fn weights_bias_the_share() {
    let lb = start_lb(1, |_| {});
    // Enough tunnels that requests never wait: weights pick among idle
    // workers. Both take 2 ms, so the host's scheduling noise (a few hundred
    // µs) cannot make one look four times faster than the other, which
    // latency-aware selection would rightly follow over the weights.
    let delay = Duration::from_millis(2);
    let _a = named_after(&lb, "light", delay, |c| {
        c.meta.weight = 1;
        c.tunnels_per_core = 8;
    });
    let _b = named_after(&lb, "heavy", delay, |c| {
        c.meta.weight = 3;
        c.tunnels_per_core = 8;
    });
    // One connection: nothing is in flight when a worker is chosen, so the
    // choice is the weighted draw alone, whatever the machine's load (with
    // requests in flight, load-awareness rightly overrides weight).
    let counts = tally(lb.client_addr(), 1, 1000, "t", "/");
    let heavy = counts.get("heavy").copied().unwrap_or(0);
    // An even split would be 500, so 600 still shows the weight (with
    // instant responders, 648 and once 447 were seen in a .ci/run: noise
    // made one look four times faster for a while).
    assert!((600..=850).contains(&heavy), "heavy got {heavy} of 1000, want about 750: {counts:?}");
}

#[test]
fn host_then_longest_prefix() {
    let lb = start_lb(2, |_| {});
    let _site = named(&lb, "site", |_| {});
    let _api = named(&lb, "api", |c| c.meta.routes = vec!["/api/".into()]);
    let _v2 = named(&lb, "api-v2", |c| c.meta.routes = vec!["/api/v2/".into()]);
    let _special = named(&lb, "special", |c| c.claim = Claim::Origins(vec![Origin::parse("https://special.example").unwrap()]));
    let one = |host: &str, path: &str| {
        let mut c = Client::connect(lb.client_addr());
        c.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
        c.read_response(false).text()
    };
    assert_eq!(one("t", "/"), "site");
    assert_eq!(one("t", "/api/x"), "api");
    assert_eq!(one("t", "/api/v2/x?q=/api/"), "api-v2");
    assert_eq!(one("t", "/apix"), "site");
    assert_eq!(one("special.example:8080", "/api/x"), "special");
}

#[test]
fn requests_are_served_core_locally() {
    let lb = start_lb(2, |_| {});
    let _w = named(&lb, "w", |_| {});
    let counts = tally(lb.client_addr(), 20, 400, "t", "/");
    assert_eq!(counts.get("w"), Some(&400));
    let s = settled_status(&lb, "every request is counted", |s| s.requests.total == 400);
    assert_eq!((s.requests.served_local, s.requests.served_migrated), (400, 0), "{s:?}");
    assert_eq!(s.workers[0].tunnels_per_core, [2, 2]);
}

#[test]
fn connections_hop_to_the_core_that_has_the_tunnel() {
    let lb = start_lb(2, |_| {});
    let (mut tunnel, core) = raw_h1_tunnel(lb.tunnel_addr, "raw");
    // Serve requests on the one tunnel.
    let server = std::thread::spawn(move || {
        serve_raw(&mut tunnel, 20, "raw");
        core
    });
    // Twenty connections: the kernel spreads them over both cores; those on
    // the core without the tunnel are handed to the one with it.
    for _ in 0..20 {
        let r = get(lb.client_addr(), "/");
        assert_eq!(r.text(), "raw");
    }
    server.join().unwrap();
    let s = settled_status(&lb, "every request is counted", |s| s.requests.total == 20);
    assert_eq!(s.requests.served_local + s.requests.served_migrated, 20, "{s:?}");
    assert!(s.requests.served_migrated > 0, "with 20 connections some land on the other core: {s:?}");
}
