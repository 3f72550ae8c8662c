//! HTTP/1.1 proxying through real tunnels: keep-alive, pipelining, framing of
//! HEAD/1xx/204/304, Expect: 100-continue, hop-by-hop stripping, Forwarded,
//! chunked bodies both ways, HTTP/1.0 clients.

use ptth_tests::*;
use ptth_workerd::{Exchange, Handler, Responder};

/// Answers according to the path, for framing tests.
#[derive(Clone)]
struct Statuses;

impl Handler for Statuses {
    async fn handle(&self, ex: &mut Exchange<'_>) -> Result<(), ptth_workerd::Error> {
        match ex.target() {
            "/204" => ex.respond(204, &[], b"").await,
            "/304" => ex.respond(304, &[("ETag", "\"x\"")], b"").await,
            "/chunked" => {
                ex.start(200, &[("X-Kind", "chunked")]).await?;
                ex.send(b"part one, ").await?;
                ex.send(b"part two").await?;
                ex.finish().await
            }
            "/hop" => ex.respond(200, &[("Connection", "x-private"), ("X-Private", "1"), ("Keep-Alive", "timeout=5")], b"hop").await,
            _ => ex.respond(200, &[("Content-Type", "text/plain")], b"hello\n").await,
        }
    }
}

#[test]
fn keep_alive_and_pipelining_in_order() {
    let lb = start_lb(2, |_| {});
    let _w = responder(&lb, "echo", Responder::Echo);
    let mut c = Client::connect(lb.client_addr());
    for i in 0..5 {
        let r = c.get(&format!("/seq/{i}"));
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with(&format!("GET /seq/{i}\n")), "{}", r.text());
    }
    // Three requests in one write: answered in order on the same connection.
    c.send(b"GET /p/1 HTTP/1.1\r\nHost: t\r\n\r\nGET /p/2 HTTP/1.1\r\nHost: t\r\n\r\nPOST /p/3 HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody");
    for i in 1..=3 {
        let r = c.read_response(false);
        assert_eq!(r.status, 200);
        let method = if i == 3 { "POST" } else { "GET" };
        assert!(r.text().starts_with(&format!("{method} /p/{i}\n")), "{}", r.text());
    }
}

#[test]
fn head_204_304_and_chunked_framing() {
    let lb = start_lb(2, |_| {});
    let _w = start_worker(worker_config(&lb, "statuses", 2), || Statuses);
    let mut c = Client::connect(lb.client_addr());
    c.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response(true);
    assert_eq!((r.status, r.header("content-length")), (200, Some("6")));
    assert!(r.body.is_empty());
    let r = c.get("/204");
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty() && r.header("content-length").is_none());
    let r = c.get("/304");
    assert_eq!((r.status, r.header("etag")), (304, Some("\"x\"")));
    let r = c.get("/chunked");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "part one, part two");
    // Still usable after all of that.
    assert_eq!(c.get("/").text(), "hello\n");
}

#[test]
fn hop_by_hop_fields_are_stripped_and_forwarded_added() {
    let lb = start_lb(1, |_| {});
    let _w = responder(&lb, "echo", Responder::Echo);
    let mut c = Client::connect(lb.client_addr());
    c.send(b"GET /h HTTP/1.1\r\nHost: app.test\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nKeep-Alive: 30\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nX-Kept: yes\r\n\r\n");
    let r = c.read_response(false);
    // Field names compare case-insensitively (HTTP/2 tunnels lower-case them).
    let t = r.text().to_ascii_lowercase();
    for gone in ["x-secret", "keep-alive", "te:", "proxy-authorization", "connection"] {
        assert!(!t.contains(gone), "{gone} leaked: {t}");
    }
    assert!(t.contains("x-kept: yes"));
    assert!(t.contains("forwarded: for=\"127.0.0.1:") && t.contains(";proto=http;host=\"app.test\""), "{t}");
}

#[test]
fn response_hop_by_hop_fields_are_stripped() {
    let lb = start_lb(1, |_| {});
    let _w = start_worker(worker_config(&lb, "statuses", 1), || Statuses);
    let r = get(lb.client_addr(), "/hop");
    assert_eq!(r.text(), "hop");
    assert!(r.header("x-private").is_none() && r.header("keep-alive").is_none() && r.header("connection").is_none(), "{:?}", r.headers);
}

#[test]
fn expect_100_continue_then_body() {
    let lb = start_lb(1, |_| {});
    let _w = responder(&lb, "echo", Responder::Echo);
    let mut c = Client::connect(lb.client_addr());
    c.send(b"PUT /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.read_response(false);
    assert_eq!(interim.status, 100);
    c.send(b"hello");
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("\n\nhello"), "{}", r.text());
    assert!(!r.text().contains("Expect"), "Expect must not reach the worker");
}

#[test]
fn chunked_request_body_streams_through() {
    let lb = start_lb(2, |_| {});
    let _w = responder(&lb, "echo", Responder::Echo);
    let mut c = Client::connect(lb.client_addr());
    c.send(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
    std::thread::sleep(std::time::Duration::from_millis(50));
    c.send(b"6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("\n\nhello world"), "{}", r.text());
}

#[test]
fn http10_client_gets_a_close_delimited_body() {
    let lb = start_lb(1, |_| {});
    let _w = start_worker(worker_config(&lb, "statuses", 1), || Statuses);
    let mut c = Client::connect(lb.client_addr());
    c.send(b"GET /chunked HTTP/1.0\r\n\r\n");
    let r = c.read_response(false);
    assert!(r.text() == "part one, part two" && r.header("transfer-encoding").is_none(), "{r:?}");
    assert!(r.text().starts_with("part one"));
    assert!(c.is_closed());
}

#[test]
fn absolute_form_target_routes_on_its_authority() {
    let lb = start_lb(1, |_| {});
    let mut cfg = worker_config(&lb, "app", 1);
    cfg.claim = ptth_workerd::Claim::Origins(vec![ptth_workerd::Origin::parse("http://app.example").unwrap()]);
    let _w = start_worker(cfg, || Responder::Hello);
    let mut c = Client::connect(lb.client_addr());
    c.send(b"GET http://app.example/x HTTP/1.1\r\nHost: other.example\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    let r = c.get("/x");
    assert_eq!(r.status, 503, "Host test is not claimed");
}

#[test]
fn interim_responses_reach_http11_clients() {
    use std::io::{Read, Write};
    let lb = start_lb(1, |_| {});
    // A raw worker that sends 103 Early Hints before its answer.
    let mut t = std::net::TcpStream::connect(lb.tunnel_addr).unwrap();
    t.set_read_timeout(Some(STEP)).unwrap();
    t.write_all(b"GET /.well-known/ptth/*/ HTTP/1.1\r\nHost: lb\r\nConnection: Upgrade\r\nUpgrade: ptth\r\nALPN: http%2F1.1\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = t.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101"));
    let worker = std::thread::spawn(move || {
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = t.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        t.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap();
        t
    });
    let mut c = Client::connect(lb.client_addr());
    c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    let hints = c.read_response(false);
    assert_eq!((hints.status, hints.header("link")), (103, Some("</s.css>; rel=preload")));
    let r = c.read_response(false);
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    drop(worker.join().unwrap());
}
