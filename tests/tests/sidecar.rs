//! Sidecar mode: a worker forwarding to a local HTTP/1.1 origin over a
//! keep-alive pool; and a worker keeping tunnels to two lbs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ptth_tests::*;
use ptth_workerd::{OriginAddr, Responder, Sidecar};

/// A tiny threaded keep-alive origin: answers `origin saw <METHOD> <path>
/// <body-length>`; counts the connections it accepted.
fn origin() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            c.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut w = s;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0usize;
                    let mut forwarded = false;
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        if h == "\r\n" {
                            break;
                        }
                        let lower = h.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        forwarded |= lower.starts_with("forwarded:");
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    let mut parts = line.split_whitespace();
                    let text = format!("origin saw {} {} {len} forwarded={forwarded}", parts.next().unwrap(), parts.next().unwrap());
                    write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{text}", text.len()).unwrap();
                }
            });
        }
    });
    (addr, conns)
}

#[test]
fn sidecar_forwards_over_a_keepalive_pool() {
    let lb = start_lb(1, |_| {});
    let (oaddr, conns) = origin();
    let o = OriginAddr::parse(&format!("http://{oaddr}")).unwrap();
    let _w = start_worker(worker_config(&lb, "side", 1), move || Sidecar::new(o.clone()));
    let mut c = Client::connect(lb.client_addr());
    for i in 0..10 {
        let r = c.get(&format!("/item/{i}"));
        assert_eq!(r.text(), format!("origin saw GET /item/{i} 0 forwarded=true"));
        assert!(r.header("connection").is_none(), "origin's hop-by-hop fields are dropped");
    }
    c.send(b"POST /form HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world");
    assert_eq!(c.read_response(false).text(), "origin saw POST /form 11 forwarded=true");
    // One tunnel, one request at a time: one pooled origin connection served all.
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[test]
fn origin_down_is_502() {
    let lb = start_lb(1, |_| {});
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let o = OriginAddr::parse(&format!("http://{dead}")).unwrap();
    let _w = start_worker(worker_config(&lb, "side", 1), move || Sidecar::new(o.clone()));
    let r = get(lb.client_addr(), "/");
    assert_eq!(r.status, 502);
    // The worker said it passed nothing on (Tunnel-Unprocessed); with no
    // other worker to try, the lb answers, naming the worker. The origin's
    // address stays in the worker's log, out of the client's sight.
    assert!(r.text().contains("could not pass the request on"), "{}", r.text());
    assert!(!r.text().contains(&dead.port().to_string()), "{}", r.text());
}

#[test]
fn a_worker_keeps_tunnels_to_every_lb() {
    let lb1 = start_lb(2, |_| {});
    let lb2 = start_lb(1, |_| {});
    let mut cfg = worker_config(&lb1, "both", 3);
    cfg.lbs.push(lb2.tunnel_addr.to_string());
    let w = start_worker(cfg, || Responder::Hello);
    assert_eq!(w.coverage(0), vec![3, 3]);
    assert_eq!(w.coverage(1), vec![3]);
    assert_eq!(get(lb1.client_addr(), "/").status, 200);
    assert_eq!(get(lb2.client_addr(), "/").status, 200);
}
