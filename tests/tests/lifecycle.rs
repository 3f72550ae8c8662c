//! Graceful stops: the lb and a worker finish requests in flight; health
//! reporting.

use std::time::Duration;

use ptth_tests::*;
use ptth_workerd::Responder;

#[test]
fn lb_shutdown_finishes_requests_in_flight() {
    let lb = start_lb(2, |_| {});
    let _w = responder(&lb, "slow", Responder::Delay(Duration::from_millis(500)));
    let addr = lb.client_addr();
    assert_eq!(get(lb.admin_addr.unwrap(), "/healthz").text(), "ok\n");
    let pending = std::thread::spawn(move || get(addr, "/"));
    wait_until("the request is in flight", || lb.status().workers.first().is_some_and(|w| w.in_flight == 1));
    lb.shutdown();
    let r = pending.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"), "draining closes the client connection");
    assert!(std::net::TcpStream::connect(addr).is_err(), "listeners are closed after shutdown");
}

#[test]
fn worker_stop_finishes_requests_in_flight() {
    let lb = start_lb(1, |_| {});
    let w = responder(&lb, "slow", Responder::Delay(Duration::from_millis(500)));
    let addr = lb.client_addr();
    let pending = std::thread::spawn(move || get(addr, "/"));
    wait_until("the request is in flight", || lb.status().workers.first().is_some_and(|w| w.in_flight == 1));
    w.stop();
    assert_eq!(pending.join().unwrap().status, 200);
    wait_until("the stopped worker leaves /status", || lb.status().workers.is_empty());
    assert_eq!(get(addr, "/").status, 503);
}

#[test]
fn status_reports_workers_per_core() {
    let lb = start_lb(2, |_| {});
    let mut cfg = worker_config(&lb, "api", 3);
    cfg.meta.routes = vec!["/api/".into()];
    cfg.meta.weight = 5;
    cfg.meta.max_concurrency = Some(9);
    let _w = start_worker(cfg, || Responder::Hello);
    for _ in 0..4 {
        assert_eq!(get(lb.client_addr(), "/api/x").status, 200);
    }
    settled_status(&lb, "every request is counted", |s| s.requests.total == 4);
    // The admin listener's JSON, field by field (docs/OPERATIONS.md).
    let s = status(&lb);
    assert_eq!(s["cores"], 2);
    // CI runs the suite twice: io_uring, then PTTH_FORCE_LEGACY=1 (epoll).
    let forced = std::env::var_os("PTTH_FORCE_LEGACY").is_some_and(|v| v != "0");
    let driver = s["runtime"].as_str().unwrap();
    if forced {
        assert!(driver.starts_with("legacy epoll (forced by the environment)"), "{driver}");
    } else {
        assert!(driver.starts_with("io_uring") || driver.starts_with("legacy epoll (io_uring unavailable: "), "{driver}");
    }
    // Each core's driver; the tests do not pin.
    for c in s["per_core"].as_array().unwrap() {
        assert!(c["driver"].as_str().unwrap().starts_with(driver.split(',').next().unwrap()), "{c}");
        assert!(c["cpu"].is_null(), "{c}");
    }
    let w = &s["workers"][0];
    assert_eq!(w["id"], "api");
    assert_eq!(w["origins"], "*");
    assert_eq!(w["routes"], serde_json::json!(["/api/"]));
    assert_eq!((w["weight"].as_u64(), w["max_concurrency"].as_u64()), (Some(5), Some(9)));
    assert_eq!(w["tunnels_per_core"], serde_json::json!([3, 3]));
    assert_eq!(w["requests"], 4);
    assert_eq!(s["requests"]["total"], 4);
}

/// `/status` says which CPU each core's thread is pinned to: core i on the
/// i-th CPU this process may use (the top-level `runtime` is core 0's).
#[test]
fn status_reports_the_cpu_each_core_is_pinned_to() {
    let lb = start_lb(2, |c| c.profile.pin = true);
    let cpus: Vec<usize> = ptth_proto::rt::runtime::allowed_cpus().iter().map(|c| c.id).collect();
    let s = lb.status();
    let want: Vec<Option<usize>> = (0..2).map(|i| Some(cpus[i % cpus.len()])).collect();
    assert_eq!(s.per_core.iter().map(|c| c.cpu).collect::<Vec<_>>(), want);
    assert!(s.runtime.ends_with(&format!("pinned to CPU {}", cpus[0])), "{}", s.runtime);
}

/// SIGTERM under load (`Lb::shutdown`, what the signal calls): eight
/// keep-alive clients on both cores keep sending while the lb drains.
/// Every request that was sent gets a whole 200 (the last on each
/// connection says `Connection: close`); after that, new connections are
/// refused. No request is cut off, none hangs.
#[test]
fn shutdown_under_load_answers_every_request_it_took() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let lb = start_lb(2, |c| c.profile.drain_timeout = Duration::from_secs(5));
    let _w = responder(&lb, "w", Responder::Delay(Duration::from_millis(5)));
    let addr = lb.client_addr();
    let ok = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let ok = ok.clone();
            std::thread::spawn(move || loop {
                let Some(mut c) = Client::try_connect(addr) else { return };
                // A connection the lb closed between requests reads as
                // closed before any byte: that request was never taken.
                while let Some(r) = c.try_get("/") {
                    assert_eq!(r.status, 200, "{}", r.text());
                    assert!(r.complete, "a response cut off");
                    ok.fetch_add(1, Ordering::Relaxed);
                    if r.header("connection") == Some("close") {
                        break;
                    }
                }
            })
        })
        .collect();
    wait_until("the load runs", || ok.load(Ordering::Relaxed) > 200);
    lb.shutdown();
    for c in clients {
        c.join().expect("every request the lb took was answered whole");
    }
    assert!(std::net::TcpStream::connect(addr).is_err(), "after the drain, connections are refused");
}
