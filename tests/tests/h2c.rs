//! HTTP/2 clients (h2c, prior knowledge) on the client port, through h2 and
//! h1 tunnels: semantics, many streams, large bodies both ways, malformed
//! input, rapid reset.

use std::io::{Read, Write};
use std::time::Duration;

use ptth_tests::*;
use ptth_workerd::{InnerProtocol, Responder};

fn worker(lb: &ptth_lb::Lb, inner: InnerProtocol, r: Responder) -> ptth_workerd::Worker {
    let mut cfg = worker_config(lb, "w", 2);
    cfg.protocols = vec![inner];
    start_worker(cfg, move || r.clone())
}

#[test]
fn h2c_through_both_tunnel_kinds() {
    for inner in [InnerProtocol::H2, InnerProtocol::Http11] {
        let lb = start_lb(2, |_| {});
        let _w = worker(&lb, inner, Responder::Echo);
        let addr = lb.client_addr();
        block_on(async move {
            let mut c = h2_connect(addr).await;
            let (status, _, body) = h2_request(&mut c, "GET", "/a?x=1", b"").await;
            assert_eq!(status, 200);
            let text = String::from_utf8(body).unwrap();
            assert!(text.starts_with("GET /a?x=1\n"), "{inner:?}: {text}");
            assert!(text.to_ascii_lowercase().contains("forwarded: for=\"127.0.0.1:"), "{text}");
            let (status, _, body) = h2_request(&mut c, "POST", "/b", b"posted body").await;
            assert_eq!(status, 200);
            assert!(body.ends_with(b"\n\nposted body"), "{inner:?}");
        });
        // The same port still speaks HTTP/1.1.
        assert_eq!(get(lb.client_addr(), "/").status, 200);
    }
}

#[test]
fn many_concurrent_streams_on_one_connection() {
    let lb = start_lb(1, |_| {});
    let _w = worker(&lb, InnerProtocol::H2, Responder::Delay(Duration::from_millis(200)));
    let addr = lb.client_addr();
    block_on(async move {
        let c = h2_connect(addr).await;
        let t0 = std::time::Instant::now();
        let mut tasks = Vec::new();
        for i in 0..100 {
            let mut c = c.clone();
            tasks.push(monoio::spawn(async move { h2_request(&mut c, "GET", &format!("/{i}"), b"").await.0 }));
        }
        for t in tasks {
            assert_eq!(t.await, 200);
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "100 streams of 200 ms took {:?}", t0.elapsed());
    });
}

#[test]
fn large_bodies_both_ways() {
    for inner in [InnerProtocol::H2, InnerProtocol::Http11] {
        let lb = start_lb(1, |_| {});
        let _w = worker(&lb, inner, Responder::Echo);
        let addr = lb.client_addr();
        block_on(async move {
            let c = h2_connect(addr).await;
            let size = 16usize << 20;
            let req = http::Request::builder().method("PUT").uri("http://test/big").body(()).unwrap();
            let mut send = c.ready().await.unwrap();
            let (resp, mut tx) = send.send_request(req, false).unwrap();
            // Upload and download at once: the echo streams the body back
            // while it is still arriving.
            let up = monoio::spawn(async move {
                for _ in 0..size / 65536 {
                    ptth_proto::rt::h2io::send_data(&mut tx, bytes::Bytes::from(vec![b'z'; 65536]), false).await.unwrap();
                }
                ptth_proto::rt::h2io::send_data(&mut tx, bytes::Bytes::new(), true).await.unwrap();
            });
            let resp = ptth_proto::rt::deadline::within(STEP, resp).await.unwrap().unwrap();
            assert_eq!(resp.status(), 200);
            let mut body = resp.into_body();
            let mut n = 0;
            while let Some(d) = ptth_proto::rt::h2io::recv_data(&mut body).await {
                n += d.unwrap().len();
            }
            up.await;
            assert!(n > size, "{inner:?}: echoed {n} bytes");
        });
    }
}

/// Raw HTTP/2 frames, for input the h2 crate would refuse to send.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal fields without indexing, new names, no Huffman (RFC 7541 §6.2.2).
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    // RFC 7541 §5.1: an integer with a 7-bit prefix.
    fn int(out: &mut Vec<u8>, mut n: usize) {
        if n < 127 {
            out.push(n as u8);
            return;
        }
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128 + 128) as u8);
            n /= 128;
        }
        out.push(n as u8);
    }
    let mut out = Vec::new();
    for (k, v) in fields {
        out.push(0x00);
        int(&mut out, k.len());
        out.extend_from_slice(k.as_bytes());
        int(&mut out, v.len());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// The first RST_STREAM or GOAWAY: (frame type, error code).
fn rejection(s: &mut std::net::TcpStream) -> Option<(u8, u32)> {
    loop {
        let mut h = [0u8; 9];
        s.read_exact(&mut h).ok()?;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).ok()?;
        match h[3] {
            3 => return Some((3, u32::from_be_bytes([p[0], p[1], p[2], p[3]]))),
            7 => return Some((7, u32::from_be_bytes([p[4], p[5], p[6], p[7]]))),
            _ => {}
        }
    }
}

fn raw_h2(addr: std::net::SocketAddr) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&frame(4, 0, 0, &[])).unwrap(); // SETTINGS
    s
}

#[test]
fn malformed_h2_requests_get_stream_errors() {
    let lb = start_lb(1, |_| {});
    let _w = worker(&lb, InnerProtocol::H2, Responder::Hello);
    let base = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "t")];
    let bad: Vec<Vec<(&str, &str)>> = vec![
        // RFC 9113 §8.2.2: connection-specific field.
        base.iter().copied().chain([("connection", "keep-alive")]).collect(),
        // §8.2: uppercase field name.
        base.iter().copied().chain([("X-Upper", "1")]).collect(),
        // §8.3: pseudo-header after a regular field.
        vec![(":method", "GET"), ("x-a", "1"), (":scheme", "http"), (":path", "/"), (":authority", "t")],
        // §8.3.1: missing :path.
        vec![(":method", "GET"), (":scheme", "http"), (":authority", "t")],
    ];
    for fields in bad {
        let mut s = raw_h2(lb.client_addr());
        s.write_all(&frame(1, 0x5, 1, &hpack(&fields))).unwrap(); // HEADERS, END_STREAM|END_HEADERS
                                                                  // A stream error (RST_STREAM PROTOCOL_ERROR), or for a field the
                                                                  // decoder refuses outright (an uppercase name), a connection error.
        let (kind, code) = rejection(&mut s).unwrap_or_else(|| panic!("no rejection for {fields:?}"));
        assert!(matches!((kind, code), (3, 1) | (7, 1) | (7, 9)), "frame {kind} code {code} for {fields:?}");
    }
    // Garbage instead of frames: the connection ends with GOAWAY.
    let mut s = raw_h2(lb.client_addr());
    s.write_all(&[0xff; 64]).unwrap();
    assert!(matches!(rejection(&mut s), Some((7, _))), "GOAWAY after garbage");
    // And the lb still serves.
    let addr = lb.client_addr();
    block_on(async move { assert_eq!(h2_request(&mut h2_connect(addr).await, "GET", "/", b"").await.0, 200) });
}

#[test]
fn rapid_reset_costs_little_and_is_cut_off() {
    let lb = start_lb(1, |_| {});
    let _w = worker(&lb, InnerProtocol::H2, Responder::Delay(Duration::from_millis(50)));
    let mut s = raw_h2(lb.client_addr());
    let headers = hpack(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "t")]);
    // Open a stream and reset it at once, thousands of times.
    let mut burst = Vec::new();
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        burst.extend_from_slice(&frame(1, 0x5, id, &headers));
        burst.extend_from_slice(&frame(3, 0, id, &8u32.to_be_bytes())); // RST_STREAM(CANCEL)
    }
    let _ = s.write_all(&burst);
    // The lb either keeps up (the streams stop as soon as they are reset) or
    // sends GOAWAY; either way it stays responsive.
    let t0 = std::time::Instant::now();
    let addr = lb.client_addr();
    block_on(async move { assert_eq!(h2_request(&mut h2_connect(addr).await, "GET", "/", b"").await.0, 200) });
    assert!(t0.elapsed() < Duration::from_secs(5));
    wait_until("reset streams stop their work", || lb.status().workers.first().is_some_and(|w| w.in_flight == 0));
    let forwarded = lb.status().workers[0].requests;
    assert!(forwarded < 5000, "every reset stream reached the worker ({forwarded})");
}

#[test]
fn clients_vanishing_mid_stream_leave_tunnels_alone() {
    for inner in [InnerProtocol::H2, InnerProtocol::Http11] {
        let lb = start_lb(1, |_| {});
        let _w = worker(&lb, inner, Responder::Delay(Duration::from_millis(300)));
        let addr = lb.client_addr();
        // Open many streams, then drop the whole connection while they wait.
        block_on(async move {
            let c = h2_connect(addr).await;
            for i in 0..20 {
                let mut c = c.clone();
                monoio::spawn(async move {
                    let _ = h2_request(&mut c, "GET", &format!("/{i}"), b"").await;
                });
            }
            monoio::time::sleep(Duration::from_millis(100)).await;
        });
        wait_until("abandoned streams settle", || lb.status().workers.first().is_some_and(|w| w.in_flight == 0));
        let before = lb.status().workers[0].tunnels_per_core.clone();
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(lb.status().workers[0].tunnels_per_core, before, "{inner:?}: tunnels dropped");
        let addr = lb.client_addr();
        block_on(async move { assert_eq!(h2_request(&mut h2_connect(addr).await, "GET", "/", b"").await.0, 200) });
        // An idle h2c connection whose client went quiet does not hold the
        // shutdown to its drain deadline.
        let t = std::time::Instant::now();
        lb.shutdown();
        assert!(t.elapsed() < Duration::from_secs(3), "shutdown took {:?}", t.elapsed());
    }
}

#[test]
fn upgrade_h2c_is_ignored_and_the_connection_stays() {
    let lb = start_lb(1, |_| {});
    let _w = worker(&lb, InnerProtocol::H2, Responder::Echo);
    let mut c = Client::connect(lb.client_addr());
    c.send(b"GET /up HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert!(r.header("connection").is_none(), "{:?}", r.headers);
    let t = r.text().to_ascii_lowercase();
    assert!(!t.contains("upgrade") && !t.contains("http2-settings"), "{t}");
    assert_eq!(c.get("/again").status, 200, "same connection still usable");
}

/// Streams a body, then trailer fields.
#[derive(Clone)]
struct WithTrailers;

impl ptth_workerd::Handler for WithTrailers {
    async fn handle(&self, ex: &mut ptth_workerd::Exchange<'_>) -> Result<(), ptth_workerd::Error> {
        ex.start(200, &[("trailer", "x-checksum")]).await?;
        ex.send(b"part 1, ").await?;
        ex.send(b"part 2").await?;
        ex.finish_with_trailers(&[("x-checksum", "abc123")]).await
    }
}

#[test]
fn trailers_reach_h2_and_h1_clients() {
    for inner in [InnerProtocol::H2, InnerProtocol::Http11] {
        let lb = start_lb(1, |_| {});
        let mut cfg = worker_config(&lb, "t", 1);
        cfg.protocols = vec![inner];
        let _w = start_worker(cfg, || WithTrailers);
        {
            // h2c client: trailers arrive as trailers, from an h2 tunnel's
            // trailing HEADERS or an h1 tunnel's chunked trailer section.
            let addr = lb.client_addr();
            block_on(async move {
                let c = h2_connect(addr).await;
                let req = http::Request::builder().uri("http://test/").body(()).unwrap();
                let (resp, _) = c.ready().await.unwrap().send_request(req, true).unwrap();
                let mut body = resp.await.unwrap().into_body();
                let mut data = Vec::new();
                while let Some(d) = ptth_proto::rt::h2io::recv_data(&mut body).await {
                    data.extend_from_slice(&d.unwrap());
                }
                assert_eq!(data, b"part 1, part 2");
                let t = body.trailers().await.unwrap().expect("trailers");
                assert_eq!(t.get("x-checksum").unwrap(), "abc123");
            });
        }
        // HTTP/1.1 client: the trailer section of the last chunk.
        let mut c = Client::connect(lb.client_addr());
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        // Read until the trailer section has arrived (the head names the
        // trailer too, and may arrive in a read of its own).
        while !(raw.ends_with(b"\r\n\r\n") && String::from_utf8_lossy(&raw).to_ascii_lowercase().contains("x-checksum: abc123")) {
            let n = match c.stream.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r.unwrap(),
            };
            assert!(n > 0, "{inner:?}: {}", String::from_utf8_lossy(&raw));
            raw.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
        assert!(text.contains("transfer-encoding: chunked"), "{inner:?}: {text}");
        assert!(text.ends_with("0\r\nx-checksum: abc123\r\n\r\n"), "{inner:?}: {text}");
    }
}

#[test]
fn oversized_header_list_is_refused() {
    let lb = start_lb(1, |c| c.profile.limits.max_head = 8192);
    let _w = worker(&lb, InnerProtocol::H2, Responder::Hello);
    let big = "v".repeat(20_000);
    let fields = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "t"), ("x-big", big.as_str())];
    let mut s = raw_h2(lb.client_addr());
    s.write_all(&frame(1, 0x5, 1, &hpack(&fields))).unwrap();
    // h2 answers 431 on the stream, or refuses the stream or connection.
    loop {
        let mut h = [0u8; 9];
        s.read_exact(&mut h).expect("an answer to the oversized headers");
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let mut p = vec![0u8; len];
        s.read_exact(&mut p).unwrap();
        let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        match h[3] {
            // HEADERS on stream 1: a response. :status 431 is not in HPACK's
            // static table, so it comes as a literal: "431" plain or
            // Huffman-coded (0x69 0x90 0xff, RFC 7541 Appendix B).
            1 if id == 1 => {
                let plain = p.windows(3).any(|w| w == b"431");
                let huffman = p.windows(3).any(|w| w == [0x69, 0x90, 0xff]);
                assert!(plain || huffman, "a response other than 431: {p:?}");
                break;
            }
            3 | 7 => break,
            _ => {}
        }
    }
    assert_eq!(lb.status().workers[0].requests, 0, "the oversized request never reached the worker");
}

#[test]
fn request_trailers_cross_both_tunnel_kinds() {
    for inner in [InnerProtocol::H2, InnerProtocol::Http11] {
        let lb = start_lb(1, |_| {});
        let _w = worker(&lb, inner, Responder::Echo);
        // HTTP/1.1 client, chunked with a trailer section: the echo worker
        // returns the trailers it received as its own.
        let mut c = Client::connect(lb.client_addr());
        c.send(b"POST /t HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\r\n4\r\nbody\r\n0\r\nX-Req-Trailer: one\r\n\r\n");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        while !(raw.ends_with(b"\r\n\r\n") && String::from_utf8_lossy(&raw).to_ascii_lowercase().contains("x-req-trailer: one\r\n\r\n")) {
            let n = match c.stream.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r.unwrap(),
            };
            assert!(n > 0, "{inner:?}: {}", String::from_utf8_lossy(&raw));
            raw.extend_from_slice(&buf[..n]);
        }
        // h2c client with trailers: they come back as trailers.
        let addr = lb.client_addr();
        block_on(async move {
            let c = h2_connect(addr).await;
            let req = http::Request::builder().method("POST").uri("http://test/t").body(()).unwrap();
            let (resp, mut tx) = c.ready().await.unwrap().send_request(req, false).unwrap();
            ptth_proto::rt::h2io::send_data(&mut tx, bytes::Bytes::from_static(b"body"), false).await.unwrap();
            let mut t = http::HeaderMap::new();
            t.insert("x-req-trailer", http::HeaderValue::from_static("two"));
            tx.send_trailers(t).unwrap();
            let mut body = resp.await.unwrap().into_body();
            while let Some(d) = ptth_proto::rt::h2io::recv_data(&mut body).await {
                d.unwrap();
            }
            let got = body.trailers().await.unwrap().expect("trailers");
            assert_eq!(got.get("x-req-trailer").unwrap(), "two", "{inner:?}");
        });
    }
}

/// The keep-alive deadline counts from when the connection went idle: a
/// stream that outlasts it does not shorten the idle time that follows, and
/// an idle connection does get its GOAWAY and close.
#[test]
fn keepalive_counts_from_the_last_stream() {
    let keepalive = Duration::from_millis(300);
    let lb = start_lb(1, |c| c.profile.keepalive_timeout = keepalive);
    // Longer than the deadline: the connection is busy past it.
    let _w = worker(&lb, InnerProtocol::H2, Responder::Delay(Duration::from_millis(500)));
    let addr = lb.client_addr();
    block_on(async move {
        use monoio::io::IntoPollIo;
        let s = monoio::net::TcpStream::connect(addr).await.expect("connect");
        let (send, conn) = h2::client::handshake(s.into_poll_io().expect("poll io")).await.expect("h2 handshake");
        let closed = monoio::spawn(async move {
            let _ = conn.await;
            std::time::Instant::now()
        });
        let mut send = send;
        let (status, _, _) = h2_request(&mut send, "GET", "/", b"").await;
        assert_eq!(status, 200);
        let ended = std::time::Instant::now();
        let closed = ptth_proto::rt::deadline::within(Duration::from_secs(5), closed).await.expect("an idle connection closes");
        let idle = closed.saturating_duration_since(ended);
        // The lb ended the stream a moment before the client saw it end.
        assert!(idle >= keepalive - Duration::from_millis(50), "closed after {idle:?} idle, deadline {keepalive:?}");
    });
}
