//! Overload and slow clients (docs/OPERATIONS.md, limits): past a core's
//! `limits.max_clients` a new connection is answered 503 and closed while
//! the connections it serves go on; idle and slow clients are cut at their
//! deadlines.

use std::io::{Read, Write};
use std::time::Duration;

use ptth_tests::*;
use ptth_workerd::Responder;

#[test]
fn past_max_clients_a_new_connection_gets_503_and_the_others_go_on() {
    let lb = start_lb(1, |c| c.profile.max_clients = 3);
    let _w = responder(&lb, "w", Responder::Hello);
    let mut held: Vec<Client> = (0..3).map(|_| Client::connect(lb.client_addr())).collect();
    for c in held.iter_mut() {
        assert_eq!(c.get("/").status, 200);
    }
    let mut extra = Client::connect(lb.client_addr());
    let r = extra.get("/");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(extra.is_closed(), "a shed connection is closed");
    let s = lb.status();
    assert_eq!(s.per_core[0].clients_shed, 1);
    for c in held.iter_mut() {
        assert_eq!(c.get("/").status, 200, "what the core serves keeps going");
    }
    // A connection that ends makes room.
    drop(held.pop());
    wait_until("the closed connection leaves", || lb.status().per_core[0].active_clients == 2);
    assert_eq!(Client::connect(lb.client_addr()).get("/").status, 200);
}

/// A client that opens a connection and sends part of a head gets 408 at
/// `timeouts.header_ms`; one that sends nothing is closed at
/// `timeouts.keepalive_ms`; neither holds its connection past them.
#[test]
fn slow_and_idle_clients_are_cut_at_their_deadlines() {
    let lb = start_lb(1, |c| {
        c.profile.header_timeout = Duration::from_millis(300);
        c.profile.keepalive_timeout = Duration::from_millis(300);
    });
    let _w = responder(&lb, "w", Responder::Hello);
    let mut slow = std::net::TcpStream::connect(lb.client_addr()).unwrap();
    slow.set_read_timeout(Some(STEP)).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut idle = std::net::TcpStream::connect(lb.client_addr()).unwrap();
    idle.set_read_timeout(Some(STEP)).unwrap();
    let started = std::time::Instant::now();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap(), 0, "an idle connection is closed without a response");
    assert!(started.elapsed() < STEP, "both cut at their deadlines, not at the test's");
    wait_until("both connections are gone", || lb.status().per_core[0].active_clients == 0);
}

/// Between requests a connection reads into a small idle buffer and parks
/// its full-size one (docs/OPERATIONS.md, capacity notes): a next request,
/// or a first one on a fresh connection, is served as any other, also when
/// its head is larger than the small buffer; the keep-alive deadline still
/// closes the connection.
#[test]
fn idle_connections_are_served_from_the_small_buffer_and_still_time_out() {
    let lb = start_lb(1, |c| c.profile.keepalive_timeout = Duration::from_millis(1500));
    let _w = responder(&lb, "w", Responder::Echo);
    let mut used = Client::connect(lb.client_addr());
    assert_eq!(used.get("/1").status, 200);
    let mut fresh = Client::connect(lb.client_addr());
    let big = "v".repeat(3 * ptth_proto::rt::io::IDLE_READ);
    used.send(format!("GET /2 HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let r = used.read_response(false);
    assert_eq!(r.status, 200);
    assert!(r.text().contains(&big), "the whole head reached the worker");
    assert_eq!(fresh.get("/1").status, 200, "a fresh connection's first request");
    let started = std::time::Instant::now();
    wait_until("the idle deadline closes both", || lb.status().per_core[0].active_clients == 0);
    assert!(started.elapsed() >= Duration::from_millis(1000), "not before the keep-alive deadline");
    assert!(used.is_closed() && fresh.is_closed());
}
