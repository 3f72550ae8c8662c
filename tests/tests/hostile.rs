//! Hostile input, end to end: raw sockets and an h2c client against a real lb
//! and a real sidecar worker in front of an origin that records the exact
//! bytes it receives (`ptth_tests::recording`). Every case family of the
//! message-integrity work (smuggling through `Connection`, chunk framing,
//! target forms, desync through bytes a peer sends unasked, error responses
//! lost to a reset) is checked on both tunnel kinds; after every case fresh
//! clients must get their own responses.

use std::io::{Read, Write};
use std::time::Duration;

use ptth_tests::recording::Recorder;
use ptth_tests::*;
use ptth_workerd::{InnerProtocol, OriginAddr, Sidecar};

/// An lb, a sidecar worker on one tunnel kind, and the recording origin.
struct Rig {
    lb: ptth_lb::Lb,
    origin: Recorder,
    _worker: ptth_workerd::Worker,
    fresh: std::cell::Cell<u32>,
}

fn rig(kind: InnerProtocol) -> Rig {
    let lb = start_lb(1, |_| {});
    let origin = Recorder::start();
    let o = OriginAddr::parse(&format!("http://{}", origin.addr)).unwrap();
    let mut cfg = worker_config(&lb, "side", 2);
    cfg.protocols = vec![kind];
    let worker = start_worker(cfg, move || Sidecar::new(o.clone()));
    Rig { lb, origin, _worker: worker, fresh: std::cell::Cell::new(0) }
}

impl Rig {
    /// Fresh clients, each on a new connection, get their own responses.
    fn fresh_clients_get_their_own(&self, after: &str) {
        for _ in 0..3 {
            let n = self.fresh.get() + 1;
            self.fresh.set(n);
            let path = format!("/fresh/{n}");
            let r = get(self.lb.client_addr(), &path);
            assert_eq!(r.status, 200, "after {after}: {}", r.text());
            assert!(r.text().starts_with(&format!("origin GET {path} ")), "after {after}: got {:?}", r.text());
        }
    }

    /// Sends `raw` on a new connection; returns every byte until the lb closes.
    fn raw_exchange(&self, raw: &[u8]) -> Vec<u8> {
        let mut s = std::net::TcpStream::connect(self.lb.client_addr()).unwrap();
        s.write_all(raw).unwrap_or_else(|e| panic!("sending {:?}: {e}", String::from_utf8_lossy(&raw[..raw.len().min(60)])));
        // Done sending: a lingering close ends at this client's FIN, not at
        // its deadline. The FIN goes once the answer starts (or the lb is
        // silent a while, for a request only a FIN completes), not before:
        // a request still waiting for a tunnel (one the last case broke is
        // being redialed) would be taken for one whose client left.
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut half_closed = false;
        let half_close = |s: &mut std::net::TcpStream, done: &mut bool| {
            if !std::mem::replace(done, true) {
                let _ = s.shutdown(std::net::Shutdown::Write);
                s.set_read_timeout(Some(STEP)).unwrap();
            }
        };
        let mut got = Vec::new();
        let mut chunk = [0u8; 65536];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => return got,
                Ok(n) => {
                    got.extend_from_slice(&chunk[..n]);
                    half_close(&mut s, &mut half_closed);
                }
                Err(e) if !half_closed && matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    half_close(&mut s, &mut half_closed)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
                Err(e) => panic!("reading the answer to {:?}: {e}", String::from_utf8_lossy(&raw[..raw.len().min(60)])),
            }
        }
    }
}

fn status_of(answer: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(answer);
    text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn smuggled(origin: &Recorder) -> bool {
    origin.seen().iter().any(|s| s.target.contains("smuggled"))
}

/// A chunk line longer than the decoder's 4 KiB bound.
static LONG_EXT: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let mut v = b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n5;x=".to_vec();
    v.extend(std::iter::repeat_n(b'a', 5000));
    v.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    v
});

/// Requests that must be refused with a status before anything reaches the
/// origin, and whose connection then closes.
fn rejected_requests(kind: InnerProtocol) {
    let r = rig(kind);
    let cases: &[(&str, &[u8], u16)] = &[
        (
            "Connection: transfer-encoding with a smuggling chunk line",
            b"POST /c/hopte HTTP/1.1\r\nHost: origin.test\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n15 /smuggled HTTP/1.1\r\n\r\n0\r\n\r\n",
            400,
        ),
        ("control bytes in a chunk extension", b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n5;\x01\x7f\x00\r\nhello\r\n0\r\n\r\n", 400),
        ("junk after the chunk size", b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n5 junk\r\nhello\r\n0\r\n\r\n", 400),
        (
            "a request line as a trailer",
            b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            400,
        ),
        ("NUL in a trailer", b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: a\x00b\r\n\r\n", 400),
        ("obs-fold in a trailer", b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n", 400),
        ("asterisk form with GET", b"GET * HTTP/1.1\r\nHost: o\r\n\r\n", 400),
        ("CL.TE", b"POST /c HTTP/1.1\r\nHost: o\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("TE.CL", b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
        ("differing Content-Lengths", b"POST /c HTTP/1.1\r\nHost: o\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        ("chunked not final", b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n", 400),
        ("obfuscated coding", b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
        ("space before the colon", b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
        ("chunk size overflow", b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\nx\r\n0\r\n\r\n", 400),
        ("bare CR in a field", b"GET /c HTTP/1.1\r\nHost: o\rX: y\r\n\r\n", 400),
        ("NUL in a field", b"GET /c HTTP/1.1\r\nHost: o\r\nX: a\x00b\r\n\r\n", 400),
        ("obs-fold in the head", b"GET /c HTTP/1.1\r\nHost: o\r\nX: a\r\n b\r\n\r\n", 400),
        ("invalid Host", b"GET /c HTTP/1.1\r\nHost: a b/c\r\n\r\n", 400),
        ("userinfo in the target", b"GET http://u:p@o/c HTTP/1.1\r\nHost: o\r\n\r\n", 400),
        ("bad percent-encoding", b"GET /a%zz HTTP/1.1\r\nHost: o\r\n\r\n", 400),
        ("CONNECT", b"CONNECT origin.test:22 HTTP/1.1\r\nHost: origin.test:22\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: o\r\n\r\n", 501),
        ("chunked twice", b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
        ("Content-Length with a sign", b"POST /c HTTP/1.1\r\nHost: o\r\nContent-Length: +5\r\n\r\nhello", 400),
        ("Content-Length in hex", b"POST /c HTTP/1.1\r\nHost: o\r\nContent-Length: 0x5\r\n\r\nhello", 400),
        ("Content-Length list that differs", b"POST /c HTTP/1.1\r\nHost: o\r\nContent-Length: 5, 6\r\n\r\nhello", 400),
        ("Transfer-Encoding in HTTP/1.0", b"POST /c HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("empty Transfer-Encoding", b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: \r\n\r\n", 400),
        ("chunk size with a sign", b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n+5\r\nhello\r\n0\r\n\r\n", 400),
        ("chunk without its CRLF", b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400),
        ("bare LF after the chunk size", b"POST /c HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400),
        ("oversized chunk extension", LONG_EXT.as_slice(), 400),
        ("two Hosts", b"GET /c HTTP/1.1\r\nHost: o\r\nHost: smuggled\r\n\r\n", 400),
        ("no Host", b"GET /c HTTP/1.1\r\n\r\n", 400),
        ("control byte in the target", b"GET /c\x01 HTTP/1.1\r\nHost: o\r\n\r\n", 400),
        ("space in a field name", b"GET /c HTTP/1.1\r\nHost: o\r\nX Y: z\r\n\r\n", 400),
        ("authority form without CONNECT", b"GET origin.test:80 HTTP/1.1\r\nHost: o\r\n\r\n", 400),
        ("unknown scheme", b"GET ftp://origin.test/c HTTP/1.1\r\nHost: o\r\n\r\n", 400),
        ("HTTP/2 request line", b"GET /c HTTP/2.0\r\nHost: o\r\n\r\n", 505),
    ];
    for (what, raw, want) in cases {
        r.origin.clear();
        let answer = r.raw_exchange(raw);
        assert_eq!(status_of(&answer), *want, "{what}: {:?}", String::from_utf8_lossy(&answer));
        assert!(r.origin.seen().is_empty(), "{what}: reached the origin: {:?}", r.origin.seen());
        assert!(r.origin.raw().is_empty(), "{what}: bytes reached the origin: {:?}", String::from_utf8_lossy(&r.origin.raw()));
        r.fresh_clients_get_their_own(what);
    }
}

/// Requests the lb forwards, checked against what the origin received.
fn forwarded_requests(kind: InnerProtocol) {
    let r = rig(kind);
    // `Connection: content-length` must not strip the length of a body that
    // is still relayed by it (the smuggled request would follow it).
    r.origin.clear();
    let mut c = Client::connect(r.lb.client_addr());
    c.send(
        b"POST /c/hopcl HTTP/1.1\r\nHost: origin.test\r\nConnection: content-length\r\nContent-Length: 45\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: origin.test\r\n\r\n",
    );
    let resp = c.read_response(false);
    assert!(resp.text().starts_with("origin POST /c/hopcl host=origin.test body=45 "), "{}", resp.text());
    assert!(!smuggled(&r.origin), "{:?}", r.origin.seen());
    // Byte for byte: one head with the length, then exactly the 45 body bytes.
    let raw = String::from_utf8(r.origin.raw()).unwrap();
    assert!(raw.starts_with("POST /c/hopcl HTTP/1.1\r\nHost: origin.test\r\n"), "{raw}");
    assert_eq!(raw.to_ascii_lowercase().matches("\r\ncontent-length: 45\r\n").count(), 1, "{raw}");
    assert!(raw.ends_with("\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: origin.test\r\n\r\n") && !raw.contains("onnection"), "{raw}");
    let hop = r.origin.find("/c/hopcl").unwrap();
    assert_eq!(hop.field("content-length").as_deref(), Some("45"));
    assert_eq!(hop.body.len(), 45);
    r.fresh_clients_get_their_own("Connection: content-length");

    // RFC 9110 §6.5.1: a trailer section carries no framing, routing or
    // credentials on (a recipient merging it would see a second length or
    // Host after the body): the origin gets the checksum, not the rest.
    r.origin.clear();
    let resp = Client::connect(r.lb.client_addr()).send_and_read(
        b"POST /c/trl HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Sum: 7\r\nContent-Length: 99\r\nHost: evil\r\nAuthorization: x\r\n\r\n",
    );
    assert!(resp.starts_with("origin POST /c/trl "), "{resp}");
    let raw = String::from_utf8_lossy(&r.origin.raw()).to_ascii_lowercase();
    assert!(raw.contains("x-sum: 7\r\n") && !raw.contains(": 99") && !raw.contains("evil") && !raw.contains("authorization"), "{raw}");

    // RFC 9112 §3.2.2: the absolute form's authority replaces Host.
    let resp = Client::connect(r.lb.client_addr()).send_and_read(b"GET http://echo.test/c/abs HTTP/1.1\r\nHost: origin.test\r\n\r\n");
    assert!(resp.starts_with("origin GET /c/abs host=echo.test "), "{resp}");
    // OPTIONS * goes on with its Host.
    let resp = Client::connect(r.lb.client_addr()).send_and_read(b"OPTIONS * HTTP/1.1\r\nHost: origin.test\r\n\r\n");
    assert!(resp.starts_with("origin OPTIONS * host=origin.test "), "{resp}");
    // Routing and the origin see the normalized path.
    for (sent, seen) in [("/api/../index.html", "/index.html"), ("/api/%2e%2e/x?q=/../", "/x?q=/../"), ("/%7Ea", "/~a")] {
        let resp = Client::connect(r.lb.client_addr()).send_and_read(format!("GET {sent} HTTP/1.1\r\nHost: o\r\n\r\n").as_bytes());
        assert!(resp.starts_with(&format!("origin GET {seen} ")), "{sent}: {resp}");
    }
    // A client's own Forwarded / X-Forwarded-For never reach the origin.
    let resp = Client::connect(r.lb.client_addr())
        .send_and_read(b"GET /f HTTP/1.1\r\nHost: o\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n");
    assert!(!resp.contains("6.6.6.6") && resp.contains("fwd=[for=\"127.0.0.1:") && resp.contains("xff=[]"), "{resp}");
    // A request with exactly the lb's maximum of fields fits the worker's
    // limits too, after the lb added its own.
    let fields: String = (1..100).map(|i| format!("X-F{i}: v\r\n")).collect();
    let resp = Client::connect(r.lb.client_addr()).send_and_read(format!("GET /many HTTP/1.1\r\nHost: o\r\n{fields}\r\n").as_bytes());
    assert!(resp.starts_with("origin GET /many "), "{resp}");
    r.fresh_clients_get_their_own("forwarded requests");
}

/// The origin's hostile responses, as an HTTP/1.1 client sees them.
fn hostile_responses(kind: InnerProtocol) {
    let r = rig(kind);
    // Framing fields named by Connection are kept: the body arrives whole.
    for case in ["conn-cl", "conn-te", "obs-reason"] {
        let resp = get(r.lb.client_addr(), &format!("/r/{case}"));
        assert!(resp.complete && resp.status == 200 && resp.text() == "hello", "{case}: {resp:?}");
        r.fresh_clients_get_their_own(case);
    }
    // Invalid chunk framing never reaches the client: the response is cut
    // short (its head may be out already) and the connection closed.
    for (case, bad) in [("bad-ext", &b"\x01"[..]), ("junk-size", b"junk"), ("trailer-reqline", b"GET /x"), ("trailer-nul", b"\x00")] {
        let answer = r.raw_exchange(format!("GET /r/{case} HTTP/1.1\r\nHost: o\r\n\r\n").as_bytes());
        assert!(!answer.windows(bad.len()).any(|w| w == bad), "{case}: relayed {:?}", String::from_utf8_lossy(&answer));
        let status = status_of(&answer);
        assert!(status == 502 || (status == 200 && !answer.ends_with(b"0\r\n\r\n")), "{case}: {:?}", String::from_utf8_lossy(&answer));
        r.fresh_clients_get_their_own(case);
    }
    // Bytes sent after a complete response never reach the next client.
    for (case, method) in [("extra", "GET"), ("head-body", "HEAD"), ("204-body", "GET"), ("304-body", "GET")] {
        let mut c = Client::connect(r.lb.client_addr());
        c.send(format!("{method} /r/{case} HTTP/1.1\r\nHost: o\r\n\r\n").as_bytes());
        let resp = c.read_response(method == "HEAD");
        assert!(!resp.text().contains("STOLEN"), "{case}: {resp:?}");
        r.origin.wait_late(case);
        r.fresh_clients_get_their_own(case);
    }
    // Ambiguous or unsupported response framing: 502.
    for case in ["cl-te", "cl-differ", "te-gzip", "cl-negative", "status-004"] {
        let resp = get(r.lb.client_addr(), &format!("/r/{case}"));
        assert_eq!(resp.status, 502, "{case}: {}", resp.text());
        r.fresh_clients_get_their_own(case);
    }
    // A 101 nobody asked for is a 502, and what follows it is not served.
    let resp = get(r.lb.client_addr(), "/r/101");
    assert_eq!(resp.status, 502, "{}", resp.text());
    r.fresh_clients_get_their_own("101");
    // A body ended by close reaches the client whole.
    let resp = get(r.lb.client_addr(), "/r/until-close");
    assert!(resp.complete && resp.text() == "until-close-body", "{resp:?}");
    r.fresh_clients_get_their_own("until-close");
}

/// h2c clients: the same rules on the HTTP/2 client side.
fn h2_clients(kind: InnerProtocol) {
    let r = rig(kind);
    let addr = r.lb.client_addr();
    let origin = &r.origin;
    block_on(async move {
        let mut send = h2_connect(addr).await;
        // CONNECT is refused, not forwarded as a plain request.
        let req = http::Request::builder().method("CONNECT").uri("origin.test:22").body(()).unwrap();
        let mut s = send.clone().ready().await.unwrap();
        let (resp, _tx) = s.send_request(req, false).unwrap();
        let resp = ptth_proto::rt::deadline::within(STEP, resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), 501);
        // Normalized path, the client's Forwarded dropped.
        let req = http::Request::builder()
            .uri("http://origin.test/api/../n")
            .header("forwarded", "for=6.6.6.6")
            .header("x-forwarded-for", "6.6.6.6")
            .body(())
            .unwrap();
        let mut s = send.clone().ready().await.unwrap();
        let (resp, _) = s.send_request(req, true).unwrap();
        let resp = ptth_proto::rt::deadline::within(STEP, resp).await.unwrap().unwrap();
        let mut body = resp.into_body();
        let mut text = Vec::new();
        while let Some(d) = ptth_proto::rt::h2io::recv_data(&mut body).await {
            text.extend_from_slice(&d.unwrap());
        }
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("origin GET /n host=origin.test ") && !text.contains("6.6.6.6"), "{text}");
        // A close-delimited body ends the stream with END_STREAM, not a reset.
        let (status, _, body) = h2_request(&mut send, "GET", "/r/until-close", b"").await;
        assert_eq!((status, body.as_slice()), (200, &b"until-close-body"[..]));
        // 101 from the origin: 502.
        let (status, _, _) = h2_request(&mut send, "GET", "/r/101", b"").await;
        assert_eq!(status, 502);
        // Framing fields named by Connection are kept.
        for case in ["conn-cl", "conn-te", "obs-reason"] {
            let (status, _, body) = h2_request(&mut send, "GET", &format!("/r/{case}"), b"").await;
            assert_eq!((status, body.as_slice()), (200, &b"hello"[..]), "{case}");
        }
        // Invalid chunk framing: the stream fails (502 or a reset), it never
        // ends normally with what the parser refused.
        for case in ["bad-ext", "junk-size", "trailer-reqline", "trailer-nul"] {
            let req = http::Request::builder().uri(format!("http://origin.test/r/{case}")).body(()).unwrap();
            let mut s = send.clone().ready().await.unwrap();
            let (resp, _) = s.send_request(req, true).unwrap();
            let resp = ptth_proto::rt::deadline::within(STEP, resp).await.unwrap();
            let Ok(resp) = resp else { continue };
            if resp.status() == 502 {
                continue;
            }
            let mut body = resp.into_body();
            let mut clean_end = true;
            while let Some(d) = ptth_proto::rt::h2io::recv_data(&mut body).await {
                if d.is_err() {
                    clean_end = false;
                    break;
                }
            }
            if clean_end {
                clean_end = body.trailers().await.is_ok();
            }
            assert!(!clean_end, "{case}: the stream ended normally");
        }
        // Bytes after a complete response do not reach the next requests.
        for case in ["extra", "204-body", "304-body"] {
            let (_, _, body) = h2_request(&mut send, "GET", &format!("/r/{case}"), b"").await;
            assert!(!body.ends_with(b"STOLEN"), "{case}");
            // The late bytes are on the origin connection before anything reuses it.
            origin.wait_late(case);
        }
        for n in 0..3 {
            let (status, _, body) = h2_request(&mut send, "GET", &format!("/h2fresh/{n}"), b"").await;
            assert_eq!(status, 200);
            assert!(body.starts_with(format!("origin GET /h2fresh/{n} ").as_bytes()), "{}", String::from_utf8_lossy(&body));
        }
    });
    r.fresh_clients_get_their_own("h2 clients");
}

/// Error responses survive a client that is still sending (lingering close):
/// these heads (4 MiB) are larger than the socket buffers, so without the drain the
/// client's write fails with a reset before it reads the answer.
fn errors_reach_clients_that_keep_sending(kind: InnerProtocol) {
    let r = rig(kind);
    let line = format!("GET /{} HTTP/1.1\r\nHost: o\r\n\r\n", "a".repeat(4 << 20));
    assert_eq!(status_of(&r.raw_exchange(line.as_bytes())), 414);
    let head = format!("GET / HTTP/1.1\r\nHost: o\r\nX-Big: {}\r\n\r\n", "b".repeat(4 << 20));
    assert_eq!(status_of(&r.raw_exchange(head.as_bytes())), 431);
    r.fresh_clients_get_their_own("oversized heads");
}

on_both_tunnel_kinds!(rejected_requests, forwarded_requests, hostile_responses, h2_clients, errors_reach_clients_that_keep_sending);

/// A rogue worker on a raw HTTP/1.1 tunnel: bytes it sends while no request
/// is outstanding close the tunnel before reuse, and are never served.
#[test]
fn rogue_worker_bytes_are_never_served() {
    let lb = start_lb(1, |c| c.profile.queue_wait = Duration::from_millis(300));
    let stolen = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTOLEN";
    // Unsolicited bytes right after the 101.
    let (mut t, _) = raw_h1_tunnel(lb.tunnel_addr, "rogue");
    t.write_all(stolen).unwrap();
    let resp = get(lb.client_addr(), "/next");
    assert_ne!(resp.text(), "STOLEN");
    assert_eq!(t.read(&mut [0u8; 64]).unwrap_or(0), 0, "the lb closes the tunnel");
    // Bytes 30 ms after a complete response.
    let (mut t, _) = raw_h1_tunnel(lb.tunnel_addr, "rogue2");
    let addr = lb.client_addr();
    let first = std::thread::spawn(move || get(addr, "/first"));
    serve_raw(&mut t, 1, "fine");
    assert_eq!(first.join().unwrap().text(), "fine");
    std::thread::sleep(Duration::from_millis(30));
    t.write_all(stolen).unwrap();
    let resp = get(lb.client_addr(), "/second");
    assert_ne!(resp.text(), "STOLEN");
    assert_eq!(t.read(&mut [0u8; 64]).unwrap_or(0), 0, "the lb closes the tunnel");
}

/// Setup requests: duplicate Items and HTTP/1.0 are refused; tunnels per
/// peer are capped with 429 + Retry-After.
#[test]
fn setup_strictness_and_peer_cap() {
    let lb = start_lb(1, |c| c.max_tunnels_per_peer = 2);
    let refused = |setup: &str| {
        let mut s = std::net::TcpStream::connect(lb.tunnel_addr).unwrap();
        s.set_read_timeout(Some(STEP)).unwrap();
        s.write_all(setup.as_bytes()).unwrap();
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    };
    let base = "Host: lb\r\nConnection: Upgrade\r\nUpgrade: ptth\r\nALPN: http%2F1.1\r\n";
    let two_weights = refused(&format!("GET /.well-known/ptth/*/ HTTP/1.1\r\n{base}Tunnel-Weight: 1\r\nTunnel-Weight: 9\r\n\r\n"));
    assert!(two_weights.starts_with("HTTP/1.1 400") && two_weights.contains("more than once"), "{two_weights}");
    let http10 = refused(&format!("GET /.well-known/ptth/*/ HTTP/1.0\r\n{base}\r\n"));
    assert!(http10.starts_with("HTTP/1.1 400") && http10.contains("HTTP/1.1"), "{http10}");
    let _a = raw_h1_tunnel(lb.tunnel_addr, "p1");
    let _b = raw_h1_tunnel(lb.tunnel_addr, "p2");
    let third = refused(&format!("GET /.well-known/ptth/*/ HTTP/1.1\r\n{base}Tunnel-Worker-Id: \"p3\"\r\n\r\n"));
    assert!(third.starts_with("HTTP/1.1 429") && third.contains("Retry-After:") && third.contains("max_tunnels_per_peer"), "{third}");
}

/// The sidecar writes the origin's request head from its own parse, so a
/// PTTH proxy that forwards `Connection: content-length` as is (not ptth-lb)
/// cannot smuggle a request to the origin either.
#[test]
fn sidecar_rewrites_heads_from_any_lb() {
    let fake_lb = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = Recorder::start();
    let o = OriginAddr::parse(&format!("http://{}", origin.addr)).unwrap();
    let cfg = ptth_workerd::Config {
        lbs: vec![fake_lb.local_addr().unwrap().to_string()],
        tunnels_per_core: 1,
        protocols: vec![InnerProtocol::Http11],
        quiet: true,
        ..Default::default()
    };
    let _w = ptth_workerd::serve(cfg, move || Sidecar::new(o.clone())).unwrap();
    let (mut t, _) = fake_lb.accept().unwrap();
    t.set_read_timeout(Some(STEP)).unwrap();
    let mut setup = Vec::new();
    let mut b = [0u8; 1];
    while !setup.ends_with(b"\r\n\r\n") {
        assert_eq!(t.read(&mut b).unwrap(), 1);
        setup.push(b[0]);
    }
    t.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ptth\r\nALPN: http%2F1.1\r\n\r\n").unwrap();
    t.write_all(b"POST /c HTTP/1.1\r\nHost: o\r\nConnection: content-length\r\nContent-Length: 45\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: origin.test\r\n\r\n").unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("body=45") {
        let mut chunk = [0u8; 4096];
        let n = t.read(&mut chunk).unwrap();
        assert!(n > 0, "tunnel closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(!smuggled(&origin), "{:?}", origin.seen());
    assert_eq!(origin.find("/c").unwrap().field("content-length").as_deref(), Some("45"));
}
