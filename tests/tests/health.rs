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
    assert!(!w("up").ejected);
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
