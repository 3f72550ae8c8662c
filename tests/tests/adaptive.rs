//! An adaptive class limit end to end (docs/PROTOCOL.md §5): the lb's
//! estimate against a worker that runs 2 requests at once. Its own test
//! binary: the estimate reads latencies, which other tests running beside it
//! on the same cores would blur.

use std::time::Duration;

use ptth_tests::*;
use ptth_workerd::{Exchange, Handler};

const HEAVY_TIME: Duration = Duration::from_millis(60);

/// Runs at most `capacity` heavy requests at once (`HEAVY_TIME`/3 each) and
/// queues the rest inside, so that latency grows past that concurrency.
struct Bounded {
    capacity: u32,
    running: std::cell::Cell<u32>,
}

impl Handler for Bounded {
    async fn handle(&self, ex: &mut Exchange<'_>) -> Result<(), ptth_workerd::Error> {
        while self.running.get() >= self.capacity {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        self.running.set(self.running.get() + 1);
        monoio::time::sleep(HEAVY_TIME / 3).await;
        self.running.set(self.running.get() - 1);
        ex.respond(200, &[("content-type", "text/plain")], b"ok\n").await
    }
}

/// An adaptive class (`limit=16;adaptive`) against a worker that runs 2 at
/// once: after measuring the minimum latency one at a time, the lb's
/// estimate starts at half the maximum and comes down toward what the
/// worker runs at once (lb/src/tunnel/adaptive.rs), and
/// `/status` shows it.
#[test]
fn an_adaptive_class_limit_comes_down_to_what_the_worker_runs_at_once() {
    let lb = start_lb(1, |c| c.profile.queue_wait = Duration::from_secs(30));
    // Tunnels enough that they never bound the concurrency (h1 tunnels
    // carry one request each): only the class limit does.
    let mut cfg = worker_config(&lb, "bounded", 12);
    cfg.meta.classes = ptth_proto::setup::parse_classes(br#"heavy=("POST /report/");u=6;limit=16;adaptive"#).unwrap();
    let _w = start_worker(cfg, || Bounded { capacity: 2, running: std::cell::Cell::new(0) });
    let limit = |lb: &ptth_lb::Lb| lb.status().workers.first().and_then(|w| w.classes.first()).and_then(|c| c.adaptive_limit);
    wait_until("the worker is registered", || limit(&lb).is_some());
    assert_eq!(limit(&lb), Some(1), "measures the worker's minimum latency first, one at a time");
    let addr = lb.client_addr();
    let clients: Vec<_> = (0..12)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..25 {
                    c.send(format!("POST /report/{t}-{i} HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\nhi").as_bytes());
                    assert_eq!(c.read_response(false).status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    // Down from 8 (at 8 at once the worker's latency is 4 times its least);
    // how far depends on timing on a busy test host, the settling point is
    // unit-tested against a simulated worker.
    let n = limit(&lb).unwrap();
    assert!((1..8).contains(&n), "estimated {n} for a worker that runs 2 at once");
}
