//! PTTH tunnel setup over real sockets: the 101 and every refusal status.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ptth_lb::config::OriginPolicy;
use ptth_tests::*;

/// Sends a raw setup request; returns the whole answer head (and any body
/// already received) as text.
fn setup_raw(addr: std::net::SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&out);
                if text.starts_with("HTTP/1.1 101") && text.contains("\r\n\r\n") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn req(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: lb\r\nConnection: Upgrade\r\nUpgrade: ptth\r\nALPN: h2, http%2F1.1\r\n{extra}\r\n")
}

#[test]
fn accepts_and_reports_the_core() {
    let lb = start_lb(2, |_| {});
    // The worker's first choice that the lb speaks wins: h2 here.
    let a = setup_raw(lb.tunnel_addr, &req("/.well-known/ptth/*/", "Tunnel-Worker-Id: \"raw\"\r\n"));
    assert!(a.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{a}");
    assert!(a.contains("Upgrade: ptth\r\n") && a.contains("ALPN: h2\r\n"), "{a}");
    assert!(a.contains("Tunnel-Cores: 2\r\n") && a.contains("Tunnel-Core: "), "{a}");
    let only_h1 = "GET /.well-known/ptth/*/ HTTP/1.1\r\nHost: lb\r\nConnection: Upgrade\r\nUpgrade: ptth\r\nALPN: http%2F1.1\r\n\r\n";
    let a = setup_raw(lb.tunnel_addr, only_h1);
    assert!(a.starts_with("HTTP/1.1 101") && a.contains("ALPN: http%2F1.1\r\n"), "{a}");
}

#[test]
fn legacy_reverse_upgrade_gets_selected_alpn() {
    let lb = start_lb(1, |_| {});
    let a = setup_raw(
        lb.tunnel_addr,
        "GET /reverse HTTP/1.1\r\nHost: lb\r\nConnection: upgrade\r\nUpgrade: reverse\r\nALPN: h2,http%2F1.1\r\n\r\n",
    );
    assert!(a.starts_with("HTTP/1.1 101"), "{a}");
    assert!(a.contains("Upgrade: reverse\r\n") && a.contains("Selected-ALPN: h2\r\n"), "{a}");
}

#[test]
fn refusals_carry_status_reason_and_close() {
    let lb = start_lb(1, |c| {
        c.token = Some("s3cret".into());
        c.max_tunnels_per_worker = 1;
        c.origins = OriginPolicy::Only(vec![ptth_proto::setup::Origin::parse("https://ok.example").unwrap()]);
    });
    let auth = "Authorization: Bearer s3cret\r\n";
    let ok = "/.well-known/ptth/https%3A%2F%2Fok.example/";
    let cases: Vec<(String, &str, &str)> = vec![
        (req("/elsewhere", auth), "404", "/.well-known/ptth/"),
        (format!("GET {ok} HTTP/1.1\r\nHost: lb\r\n{auth}\r\n"), "426", "Upgrade: ptth"),
        (format!("GET {ok} HTTP/1.1\r\nHost: lb\r\nConnection: Upgrade\r\nUpgrade: ptth\r\n{auth}\r\n"), "400", "ALPN"),
        (format!("GET {ok} HTTP/1.1\r\nHost: lb\r\nConnection: Upgrade\r\nUpgrade: ptth\r\nALPN: h3\r\n{auth}\r\n"), "400", "http%2F1.1"),
        (req(ok, ""), "401", "Bearer"),
        (req(ok, "Authorization: Bearer wrong\r\n"), "401", "invalid bearer token"),
        (req("/.well-known/ptth/https%3A%2F%2Fevil.example/", auth), "403", "evil.example"),
        (req("/.well-known/ptth/*/", auth), "403", "claim specific origins"),
        (req(ok, &format!("{auth}Tunnel-Weight: 0\r\n")), "400", "Tunnel-Weight"),
    ];
    for (r, status, reason) in cases {
        let a = setup_raw(lb.tunnel_addr, &r);
        assert!(a.starts_with(&format!("HTTP/1.1 {status} ")), "want {status} for {r:?}, got {a}");
        assert!(a.contains("Connection: close\r\n"), "{a}");
        assert!(a.contains(reason), "want {reason:?} in {a}");
    }
    // The first tunnel of worker "w" is accepted and held open; a second one
    // goes over the cap of 1: 429 with Retry-After.
    let mut first = TcpStream::connect(lb.tunnel_addr).unwrap();
    first.write_all(req(ok, &format!("{auth}Tunnel-Worker-Id: \"w\"\r\n")).as_bytes()).unwrap();
    let mut buf = [0u8; 1024];
    first.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = first.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101"));
    let a = setup_raw(lb.tunnel_addr, &req(ok, &format!("{auth}Tunnel-Worker-Id: \"w\"\r\n")));
    assert!(a.starts_with("HTTP/1.1 429 ") && a.contains("Retry-After: "), "{a}");
}

#[test]
fn without_token_only_loopback_workers_are_accepted() {
    // Loopback is what tests can reach; the non-loopback refusal is covered
    // by the unit test of `authorize`. Here: loopback works without a token.
    let lb = start_lb(1, |_| {});
    let a = setup_raw(lb.tunnel_addr, &req("/.well-known/ptth/*/", ""));
    assert!(a.starts_with("HTTP/1.1 101"), "{a}");
}
