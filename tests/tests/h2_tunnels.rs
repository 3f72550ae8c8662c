//! HTTP/2 tunnels: many streams on one tunnel, GOAWAY drain during a rolling
//! restart with no request lost (cleartext and TLS tunnels), PING liveness.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ptth_tests::*;
use ptth_workerd::{InnerProtocol, Responder};

fn h2_worker(lb: &ptth_lb::Lb, id: &str, r: Responder) -> ptth_workerd::Worker {
    let mut cfg = worker_config(lb, id, 1);
    cfg.protocols = vec![InnerProtocol::H2];
    start_worker(cfg, move || r.clone())
}

#[test]
fn one_tunnel_carries_many_requests_at_once() {
    let lb = start_lb(1, |_| {});
    let _w = h2_worker(&lb, "h2", Responder::Delay(Duration::from_millis(300)));
    let addr = lb.client_addr();
    let t0 = std::time::Instant::now();
    let threads: Vec<_> = (0..32).map(|_| std::thread::spawn(move || get(addr, "/").status)).collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    // 32 requests of 300 ms over a single tunnel finish together, not in turn.
    assert!(t0.elapsed() < Duration::from_secs(3), "took {:?}", t0.elapsed());
    let s = settled_status(&lb, "every request is counted", |s| s.workers.first().is_some_and(|w| w.requests == 32));
    assert_eq!(s.workers[0].tunnels_per_core, [1]);
}

/// Steady load from `conns` keep-alive connections, GETs and POSTs with
/// bodies, counting anything but a complete 200.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    bad: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, conns: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let bad = Arc::new(AtomicU64::new(0));
        let threads = (0..conns)
            .map(|i| {
                let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
                std::thread::spawn(move || {
                    let mut errors = Vec::new();
                    let mut c = Client::connect(addr);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let req = if (n + i as u64).is_multiple_of(2) {
                            "GET /r HTTP/1.1\r\nHost: t\r\n\r\n".to_string()
                        } else {
                            "POST /w HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello".to_string()
                        };
                        c.send(req.as_bytes());
                        let r = c.read_response(false);
                        if r.status == 200 && r.complete {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            bad.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("{} {}", r.status, r.text()));
                            c = Client::connect(addr);
                        }
                    }
                    errors
                })
            })
            .collect();
        Load { stop, ok, bad, threads }
    }

    fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        (self.ok.load(Ordering::Relaxed), self.bad.load(Ordering::Relaxed), errors)
    }
}

#[test]
fn rolling_restart_of_three_workers_loses_nothing() {
    rolling_restart_loses_nothing(false);
}

/// The same over TLS tunnels: the h2 crate over the project's TLS stream,
/// GOAWAY drain and all.
#[test]
fn rolling_restart_over_tls_tunnels_loses_nothing() {
    rolling_restart_loses_nothing(true);
}

fn rolling_restart_loses_nothing(tls: bool) {
    let certs = tls.then(|| {
        let d = std::env::temp_dir().join(format!("ptth-h2-rolling-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        ptth_lb::certs::write_dev(&ptth_lb::certs::DevCerts::new(d.clone())).expect("certs");
        d
    });
    let lb = start_lb(2, |c| {
        if let Some(d) = &certs {
            c.tunnel_tls = Some(true);
            c.tls_certs = vec![ptth_lb::tls::CertSpec { cert: d.join("lb.pem"), key: d.join("lb.key"), names: vec![] }];
        }
    });
    assert_eq!(lb.tunnel_tls, tls);
    let worker = |id: &str| {
        let mut cfg = worker_config(&lb, id, 1);
        cfg.protocols = vec![InnerProtocol::H2];
        if let Some(d) = &certs {
            cfg.tls = Some(ptth_workerd::client_tls(Some(&d.join("ca.pem")), None).expect("client TLS"));
        }
        start_worker(cfg, || Responder::Delay(Duration::from_millis(5)))
    };
    let mut workers: Vec<_> = (0..3).map(|i| worker(&format!("gen0-{i}"))).collect();
    let load = Load::start(lb.client_addr(), 8);
    std::thread::sleep(Duration::from_millis(300));
    for (i, slot) in workers.iter_mut().enumerate() {
        // Replacement first, then drain the old one (GOAWAY on every tunnel).
        let fresh = worker(&format!("gen1-{i}"));
        let old = std::mem::replace(slot, fresh);
        std::thread::sleep(Duration::from_millis(200));
        old.stop();
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, bad, errors) = load.finish();
    assert!(ok > 100, "the load ran ({ok} requests)");
    assert_eq!(bad, 0, "lost requests during the rolling restart: {errors:?}");
    wait_until("only the new workers remain", || lb.status().workers.iter().all(|w| w.id.starts_with("gen1-")));
}

#[test]
fn unanswered_ping_closes_the_tunnel() {
    let lb = start_lb(1, |c| {
        c.profile.ping_every = Duration::from_millis(200);
        c.profile.ping_timeout = Duration::from_millis(300);
    });
    // A worker that completes the setup, then goes silent (never reads, never
    // answers a PING): the lb must notice and drop its tunnel.
    let mut t = std::net::TcpStream::connect(lb.tunnel_addr).unwrap();
    t.set_read_timeout(Some(STEP)).unwrap();
    t.write_all(b"GET /.well-known/ptth/*/ HTTP/1.1\r\nHost: lb\r\nConnection: Upgrade\r\nUpgrade: ptth\r\nALPN: h2\r\nTunnel-Worker-Id: \"mute\"\r\n\r\n").unwrap();
    let mut buf = [0u8; 256];
    let n = t.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101"));
    wait_until("the mute worker shows up", || lb.status().workers.len() == 1);
    wait_until("the lb drops the tunnel that does not answer PINGs", || lb.status().workers.is_empty());
    // A live h2 worker on the same lb keeps its tunnel through many PINGs.
    let w = h2_worker(&lb, "alive", Responder::Hello);
    std::thread::sleep(Duration::from_millis(1200));
    assert!(w.is_covered());
    assert_eq!(get(lb.client_addr(), "/").status, 200);
    drop(t);
}

/// A request body of up to `buffers.replay_max` is read whole and held, so
/// a stream the worker refuses unprocessed goes out again, body and all; a
/// larger body has streamed and gets a 502 that says why.
#[test]
fn refused_streams_are_resent_when_their_body_is_held() {
    let lb = start_lb(1, |c| c.profile.replay_max = 16 * 1024);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let s = seen.clone();
    // Each path is refused the first time it arrives, answered after.
    let _w = scripted_h2_worker(lb.tunnel_addr, "picky", move |p| {
        if s.lock().unwrap().insert(p.uri.path().to_string()) {
            Verdict::Refuse
        } else {
            Verdict::Answer
        }
    });
    wait_until("the scripted worker is routable", || !lb.status().workers.is_empty());
    let small = vec![b'x'; 12 * 1024];
    let mut c = Client::connect(lb.client_addr());
    c.send(format!("POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", small.len()).as_bytes());
    c.send(&small);
    let r = c.read_response(false);
    assert_eq!((r.status, r.text()), (200, format!("got {}", small.len())));
    let big = vec![b'y'; 40 * 1024];
    let mut c = Client::connect(lb.client_addr());
    c.send(format!("POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", big.len()).as_bytes());
    c.send(&big);
    let r = c.read_response(false);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("buffers.replay_max"), "{}", r.text());
}

/// A response the worker cuts short (a reset after some DATA) reaches an
/// HTTP/1.1 client as a 502 (when nothing was relayed yet) or a truncated
/// body, never as one ended by a last chunk.
#[test]
fn a_reset_mid_body_is_not_a_complete_response() {
    let lb = start_lb(1, |_| {});
    let _w = scripted_h2_worker(lb.tunnel_addr, "cutter", |_| Verdict::Truncate);
    wait_until("the scripted worker is routable", || !lb.status().workers.is_empty());
    let mut c = Client::connect(lb.client_addr());
    c.send(b"GET /cut HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response(false);
    assert!(r.status == 502 || (r.status == 200 && !r.complete), "a cut-short body looked complete: {} {:?}", r.status, r.text());
}
