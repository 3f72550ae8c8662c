//! Health: a worker whose origin is down is not fed by least-loaded routing.
//! It says it passed nothing on (`Tunnel-Unprocessed`), so its requests go
//! to another worker, and after failing again and again it is ejected for a
//! while (docs/PROTOCOL.md §5, the profile's `[health]`).

use std::net::TcpListener;

use ptth_tests::*;
use ptth_workerd::{OriginAddr, Responder, Sidecar};

/// A sidecar whose origin refuses connections.
fn dead_origin_worker(lb: &ptth_lb::Lb, id: &str) -> ptth_workerd::Worker {
    // Bound and closed at once: connecting to it is refused.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let o = OriginAddr::parse(&format!("http://{dead}")).unwrap();
    start_worker(worker_config(lb, id, 2), move || Sidecar::new(o.clone()))
}

#[test]
fn a_worker_whose_origin_is_down_is_ejected_and_its_requests_go_elsewhere() {
    let lb = start_lb(1, |_| {});
    let _down = dead_origin_worker(&lb, "down");
    let _up = start_worker(worker_config(&lb, "up", 2), || Responder::Hello);
    let addr = lb.client_addr();
    let mut c = Client::connect(addr);
    for i in 0..40 {
        let r = c.get(&format!("/item/{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    // A request with a body is held whole (below buffers.replay_max), so
    // it can go elsewhere too, whatever its method.
    c.send(b"POST /form HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(c.read_response(false).status, 200);
    // Counted once each response is written: wait for the last one.
    let s = settled_status(&lb, "the healthy worker's count includes the last request", |s| {
        s.workers.iter().any(|w| w.id == "up" && w.requests >= 41)
    });
    let w = |id: &str| s.workers.iter().find(|w| w.id == id).unwrap_or_else(|| panic!("{id} in {:?}", s.workers)).clone();
    assert!(w("down").ejected && w("down").ejections >= 1, "{:?}", w("down"));
    let why = w("down").last_ejection.unwrap_or_default();
    assert!(why.contains("failed attempts in a row") && why.contains("502"), "says why: {why:?}");
    assert!(!w("up").ejected && w("up").last_ejection.is_none());
    assert_eq!(w("up").requests, 41, "every request was served by the healthy worker");
}

#[test]
fn the_last_worker_of_a_route_is_never_ejected_and_its_502_hides_the_origin() {
    let lb = start_lb(1, |_| {});
    let _down = dead_origin_worker(&lb, "alone");
    for _ in 0..8 {
        // (An lb-made 502 closes the client connection: one per request.)
        let r = get(lb.client_addr(), "/");
        // Still routed to it (no "no worker serves"), answered 502.
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.text().contains("could not pass the request on"), "{}", r.text());
        assert!(!r.text().contains("127.0.0.1"), "no internal address for the client: {}", r.text());
    }
    let s = lb.status();
    assert_eq!(s.workers.len(), 1);
    assert!(s.workers[0].ejections >= 1, "ejected, and still the one serving its route");
}

/// An origin that answers `origin\n` until stopped; stopping closes its
/// listener and every connection, so the sidecar's pooled ones die too.
struct StoppableOrigin {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl StoppableOrigin {
    fn start(addr: &str) -> StoppableOrigin {
        use std::io::{Read, Write};
        let l = TcpListener::bind(addr).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, c) = (stop.clone(), conns.clone());
        let accept = std::thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                c.lock().unwrap().push(conn.try_clone().unwrap());
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        if conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\norigin\n").is_err() {
                            return;
                        }
                    }
                });
            }
        });
        StoppableOrigin { addr, stop, conns, accept: Some(accept) }
    }

    fn stop(mut self) -> std::net::SocketAddr {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(a) = self.accept.take() {
            a.join().unwrap();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        self.addr
    }
}

/// A sidecar that checks its origin (a TCP connect every 50 ms) withdraws
/// while the origin is down: its tunnels stay up, it answers 503 with
/// Tunnel-Unprocessed and Retry-After, the lb sends its requests to the
/// other worker and keeps it out of selection (not as a failure: no
/// ejection); once the origin is back it takes requests again.
#[test]
fn a_worker_withdraws_while_its_origin_is_down_and_rejoins() {
    use ptth_workerd::{OriginCheck, OriginHealth};
    let lb = start_lb(1, |_| {});
    let origin = StoppableOrigin::start("127.0.0.1:0");
    let o = OriginAddr::parse(&format!("http://{}", origin.addr)).unwrap();
    let check = OriginCheck { path: None, every: std::time::Duration::from_millis(50), timeout: std::time::Duration::from_millis(500) };
    let health = OriginHealth::start(&o, check, true);
    let h = health.clone();
    let _side = start_worker(worker_config(&lb, "side", 2), move || Sidecar::with_health(o.clone(), h.clone()));
    // The other worker is the slower one, so latency-aware selection keeps
    // offering requests to the sidecar (with an instant responder beside
    // it, an idle sidecar four times slower may be offered none at all).
    let _up = start_worker(worker_config(&lb, "up", 2), || Responder::Delay(std::time::Duration::from_millis(20)));
    let addr = lb.client_addr();
    let served_by_origin = |n: usize| {
        let mut c = Client::connect(addr);
        (0..n)
            .filter(|i| {
                let r = c.get(&format!("/{i}"));
                assert_eq!(r.status, 200, "{}", r.text());
                r.text() == "origin\n"
            })
            .count()
    };
    wait_until("the sidecar takes requests", || served_by_origin(10) > 0);
    let at = origin.stop();
    wait_until("the health check sees the origin down", || health.is_down());
    // Every request is served, by the other worker; the sidecar is found
    // withdrawn by the first request offered to it.
    wait_until("a request offered to the sidecar finds it withdrawn", || {
        assert_eq!(served_by_origin(5), 0);
        lb.status().workers.iter().any(|w| w.id == "side" && w.withdrawn)
    });
    let s = lb.status();
    let side = s.workers.iter().find(|w| w.id == "side").expect("the sidecar is still registered");
    assert!(side.withdrawn, "{side:?}");
    assert_eq!(side.tunnels_per_core.iter().sum::<u32>(), 2, "its tunnels stay up: {side:?}");
    assert_eq!(side.ejections, 0, "a withdrawal is not a failure: {side:?}");
    // Back: it rejoins once its Retry-After (1 s) has passed.
    let _origin = StoppableOrigin::start(&at.to_string());
    wait_until("the health check sees the origin back", || !health.is_down());
    wait_until("the sidecar takes requests again", || served_by_origin(10) > 0);
}

/// The only worker of a route withdrawn: its clients get 503 with
/// Retry-After at once (not 502, and not the same request sent again to it).
#[test]
fn a_withdrawn_last_worker_is_a_503_with_retry_after() {
    use ptth_workerd::{OriginCheck, OriginHealth};
    let lb = start_lb(1, |_| {});
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let o = OriginAddr::parse(&format!("http://{dead}")).unwrap();
    let check = OriginCheck { path: None, every: std::time::Duration::from_millis(50), timeout: std::time::Duration::from_millis(500) };
    let health = OriginHealth::start(&o, check, true);
    wait_until("the health check sees the origin down", || health.is_down());
    let h = health.clone();
    let _alone = start_worker(worker_config(&lb, "alone", 2), move || Sidecar::with_health(o.clone(), h.clone()));
    for _ in 0..3 {
        let r = get(lb.client_addr(), "/");
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(r.header("retry-after").is_some(), "{r:?}");
        assert!(r.text().contains("could not pass the request on"), "{}", r.text());
    }
    let s = settled_status(&lb, "the worker's requests are counted", |s| s.workers.first().is_some_and(|w| w.requests >= 3));
    assert_eq!(s.per_core[0].retries, 0, "never sent again to the worker that withdrew");
    assert!(s.workers[0].withdrawn);
}
