//! Failures around the data path: no worker, a worker killed mid-request, a
//! worker too slow, full queues, the lb restarted under its workers.

use std::time::Duration;

use ptth_tests::*;
use ptth_workerd::{InnerProtocol, Responder};

#[test]
fn no_worker_is_503_with_retry_after() {
    let lb = start_lb(2, |_| {});
    let mut c = Client::connect(lb.client_addr());
    let r = c.get("/nothing");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.text().contains("no worker serves"), "{}", r.text());
    // A bodyless request leaves the connection usable.
    assert_eq!(c.get("/again").status, 503);
}

fn routed(lb: &ptth_lb::Lb, id: &str, route: &str, r: Responder) -> ptth_workerd::Worker {
    let mut cfg = worker_config(lb, id, 2);
    cfg.meta.routes = vec![route.to_string()];
    start_worker(cfg, move || r.clone())
}

#[test]
fn worker_killed_mid_request_is_502_and_others_keep_serving() {
    let lb = start_lb(2, |_| {});
    let slow = routed(&lb, "slow", "/slow/", Responder::Delay(Duration::from_secs(3)));
    let _fast = routed(&lb, "fast", "/", Responder::Hello);
    let addr = lb.client_addr();
    let pending = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(b"POST /slow/x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
        c.read_response(false)
    });
    wait_until("the slow request is in flight", || lb.status().workers.iter().any(|w| w.id == "slow" && w.in_flight == 1));
    slow.kill();
    let r = pending.join().unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("slow"), "names the worker: {}", r.text());
    for _ in 0..20 {
        assert_eq!(get(lb.client_addr(), "/").status, 200);
    }
    // The dead worker's tunnels are forgotten...
    wait_until("the killed worker leaves /status", || !lb.status().workers.iter().any(|w| w.id == "slow"));
    // ...but its prefix does not fall through to the catch-all worker
    // (timeouts.route_hold_ms): a /admin/ pool must not leak to a / one.
    wait_until("the reconnect grace has passed", || get(lb.client_addr(), "/slow/x").status == 503);
    let r = get(lb.client_addr(), "/slow/y");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.text().contains("reserved"), "{}", r.text());
    assert_eq!(get(lb.client_addr(), "/other").status, 200, "the rest is served");
}

#[test]
fn idempotent_request_is_retried_on_another_worker() {
    let lb = start_lb(1, |_| {});
    let a = routed(&lb, "a", "/r/", Responder::Delay(Duration::from_millis(1500)));
    let b = routed(&lb, "b", "/r/", Responder::Delay(Duration::from_millis(1500)));
    let addr = lb.client_addr();
    let pending = std::thread::spawn(move || get(addr, "/r/1"));
    let mut busy = String::new();
    wait_until("the request is in flight", || match lb.status().workers.into_iter().find(|w| w.in_flight == 1) {
        Some(w) => {
            busy = w.id;
            true
        }
        None => false,
    });
    let survivor = if busy == "a" {
        a.kill();
        b
    } else {
        b.kill();
        a
    };
    let r = pending.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(lb.status().per_core[0].retries, 1);
    drop(survivor);
}

#[test]
fn slow_worker_is_504() {
    let lb = start_lb(1, |c| c.profile.response_timeout = Duration::from_millis(300));
    let _w = responder(&lb, "slow", Responder::Delay(Duration::from_secs(2)));
    let r = get(lb.client_addr(), "/");
    assert_eq!(r.status, 504);
    assert!(r.text().contains("slow"), "{}", r.text());
}

/// A worker that takes one request at a time: one h1 tunnel, or one h2
/// tunnel whose SETTINGS_MAX_CONCURRENT_STREAMS is 1.
fn one_at_a_time(lb: &ptth_lb::Lb, kind: InnerProtocol, r: Responder) -> ptth_workerd::Worker {
    let mut cfg = worker_config(lb, "one", 1);
    cfg.protocols = vec![kind];
    cfg.max_streams = 1;
    start_worker(cfg, move || r.clone())
}

/// Past the queue's bounds (wait time, length): 503 with Retry-After.
fn queue_bounds_give_503(kind: InnerProtocol) {
    // One request at a time, so a second request must wait.
    let lb = start_lb(1, |c| c.profile.queue_wait = Duration::from_millis(200));
    let mut cfg = worker_config(&lb, "one", 1);
    cfg.meta.max_concurrency = Some(1);
    cfg.protocols = vec![kind];
    let _w = start_worker(cfg, || Responder::Delay(Duration::from_millis(1000)));
    let addr = lb.client_addr();
    let first = std::thread::spawn(move || get(addr, "/"));
    wait_until("the first request holds the tunnel", || lb.status().workers.first().is_some_and(|w| w.in_flight == 1));
    let r = get(lb.client_addr(), "/");
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert!(r.text().contains("no tunnel became free for class default within 200ms"), "{}", r.text());
    assert_eq!(first.join().unwrap().status, 200);

    let lb = start_lb(1, |c| c.profile.queue_max = 0);
    let _w = one_at_a_time(&lb, kind, Responder::Delay(Duration::from_millis(500)));
    let addr = lb.client_addr();
    let first = std::thread::spawn(move || get(addr, "/"));
    wait_until("the first request holds the tunnel", || lb.status().workers.first().is_some_and(|w| w.in_flight == 1));
    let r = get(lb.client_addr(), "/");
    assert_eq!(r.status, 503);
    assert!(
        r.text().contains("too many requests of class default are waiting for a tunnel (queue.max_waiting = 0 on this core)"),
        "{}",
        r.text()
    );
    assert_eq!(first.join().unwrap().status, 200);
}

/// Requests beyond the worker's capacity wait and get the next free slot.
fn waiting_request_gets_the_next_free_tunnel(kind: InnerProtocol) {
    let lb = start_lb(1, |_| {});
    let _w = one_at_a_time(&lb, kind, Responder::Delay(Duration::from_millis(300)));
    let addr = lb.client_addr();
    let threads: Vec<_> = (0..4).map(|_| std::thread::spawn(move || get(addr, "/"))).collect();
    for t in threads {
        assert_eq!(t.join().unwrap().status, 200);
    }
    assert!(lb.status().per_core[0].queued >= 1);
}

#[test]
fn workers_reconnect_after_the_lb_restarts() {
    let lb = start_lb(2, |_| {});
    let tunnel = lb.tunnel_addr;
    let w = responder(&lb, "w", Responder::Hello);
    assert_eq!(get(lb.client_addr(), "/").status, 200);
    lb.shutdown();
    wait_until("the worker notices", || !w.is_covered());
    let lb = start_lb(2, |c| c.tunnel_listen = tunnel);
    wait_until("the worker covers the new lb", || w.is_covered());
    assert_eq!(get(lb.client_addr(), "/").status, 200);
}

#[test]
fn requests_wait_for_a_worker_that_is_redialing() {
    let lb = start_lb(1, |_| {});
    let (first, _) = raw_h1_tunnel(lb.tunnel_addr, "redialer");
    std::thread::sleep(Duration::from_millis(300));
    // The worker's only tunnel goes away...
    drop(first);
    let addr = lb.client_addr();
    let pending = std::thread::spawn(move || get(addr, "/"));
    // ...and comes back a moment later: the request waited for it instead of
    // failing with "no worker serves".
    std::thread::sleep(Duration::from_millis(300));
    let (mut second, _) = raw_h1_tunnel(lb.tunnel_addr, "redialer");
    serve_raw(&mut second, 1, "back");
    let r = pending.join().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "back"));
}

/// A request the worker may have acted on is never sent to a second one
/// unless it is idempotent (RFC 9110 §9.2.2): a bodyless POST whose tunnel
/// died after it went out gets 502 from HTTP/1.1 and h2c clients alike, and
/// a GET in the same situation is served by another worker.
fn lost_after_sending(kind: InnerProtocol) {
    let lb = start_lb(1, |_| {});
    let mut cfg = worker_config(&lb, "doomed", 4);
    cfg.protocols = vec![kind];
    let doomed = start_worker(cfg, || Responder::Delay(Duration::from_secs(30)));
    let addr = lb.client_addr();
    let h1_post = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(b"POST /h1 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
        c.read_response(false)
    });
    let h2_post = std::thread::spawn(move || {
        block_on(async move {
            let mut s = h2_connect(addr).await;
            h2_request(&mut s, "POST", "/h2", b"").await
        })
    });
    let h2_get = std::thread::spawn(move || {
        block_on(async move {
            let mut s = h2_connect(addr).await;
            h2_request(&mut s, "GET", "/h2get", b"").await
        })
    });
    wait_until("three requests are on the doomed worker", || lb.status().workers.iter().any(|w| w.id == "doomed" && w.in_flight == 3));
    let mut good = worker_config(&lb, "good", 4);
    good.protocols = vec![kind];
    let _good = start_worker(good, || Responder::Hello);
    doomed.kill();
    let r = h1_post.join().unwrap();
    assert_eq!(r.status, 502, "HTTP/1.1 POST: {}", r.text());
    let (status, _, body) = h2_post.join().unwrap();
    assert_eq!(status, 502, "h2c POST was sent again: {}", String::from_utf8_lossy(&body));
    let (status, _, body) = h2_get.join().unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"hello\n"[..]), "h2c GET is retried");
}

/// A worker's concurrency limit holds across cores, and a permit given back
/// on one core reaches a request queued on the other: no waiter is left
/// behind until its deadline (which would be a 503 here).
fn a_permit_freed_on_one_core_reaches_a_waiter_on_another(kind: InnerProtocol) {
    let lb = start_lb(2, |c| c.profile.queue_wait = Duration::from_secs(30));
    let mut cfg = worker_config(&lb, "limited", 2);
    cfg.meta.max_concurrency = Some(1);
    cfg.protocols = vec![kind];
    let _w = start_worker(cfg, || Responder::Delay(Duration::from_millis(50)));
    let addr = lb.client_addr();
    // Sixteen connections land on both cores (all on one: 1 in 2^15).
    let threads: Vec<_> = (0..16).map(|_| std::thread::spawn(move || get(addr, "/").status)).collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let s = lb.status();
    assert!(s.per_core.iter().all(|c| c.queued >= 1), "both cores queued requests: {:?}", s.per_core);
}

on_both_tunnel_kinds!(
    queue_bounds_give_503,
    waiting_request_gets_the_next_free_tunnel,
    lost_after_sending,
    a_permit_freed_on_one_core_reaches_a_waiter_on_another
);

/// A worker that stops dead with requests in flight (SIGSTOP, a frozen VM):
/// its h2 tunnel stops answering PINGs, and at the liveness deadline
/// (`h2.ping_ms` + `h2.ping_timeout_ms`, far below `timeouts.response_ms`)
/// the lb closes it; the GET it held (idempotent, no response byte) is
/// served by another worker, the POST gets 502.
#[test]
fn a_frozen_worker_is_detected_by_its_liveness_deadline() {
    let lb = start_lb(1, |c| {
        c.profile.ping_every = Duration::from_millis(200);
        c.profile.ping_timeout = Duration::from_millis(300);
        c.profile.response_timeout = Duration::from_secs(60);
    });
    let (tx, received) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    // Its runtime thread blocks on the first request: from then on nothing
    // on the tunnel is read or answered, PINGs included.
    let _frozen = scripted_h2_worker(lb.tunnel_addr, "frozen", move |p| {
        let _ = tx.lock().unwrap().send(p.uri.path().to_string());
        std::thread::sleep(Duration::from_secs(3600));
        Verdict::Refuse
    });
    wait_until("the frozen worker joins", || lb.status().workers.len() == 1);
    let addr = lb.client_addr();
    let started = std::time::Instant::now();
    let get = std::thread::spawn(move || {
        block_on(async move {
            let mut s = h2_connect(addr).await;
            h2_request(&mut s, "GET", "/get", b"").await
        })
    });
    assert_eq!(received.recv_timeout(STEP).unwrap(), "/get");
    // The POST goes out on the tunnel too; the worker never reads it.
    let post = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.send(b"POST /post HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
        c.read_response(false)
    });
    wait_until("both requests are on the frozen worker", || lb.status().workers.iter().any(|w| w.in_flight == 2));
    let _good = routed(&lb, "good", "/", Responder::Hello);
    let r = post.join().unwrap();
    assert_eq!(r.status, 502, "the POST may have been acted on: {}", r.text());
    let (status, _, body) = get.join().unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"hello\n"[..]), "the GET goes to another worker");
    assert!(started.elapsed() < Duration::from_secs(10), "within the liveness deadline, not the response timeout");
    wait_until("the frozen worker is gone", || lb.status().workers.iter().all(|w| w.id != "frozen"));
}
