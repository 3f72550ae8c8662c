//! TLS client listeners end to end: HTTP/1.1 and h2 chosen by ALPN on one
//! port, the certificate chosen by SNI, certificate reload while a session
//! stays open, a TLS connection handed to another core mid-session, and real
//! clients (curl, h2load, wrk) over TLS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ptth_lb::certs::{write_dev, DevCerts};
use ptth_lb::tls::CertSpec;
use ptth_tests::*;
use ptth_workerd::Responder;
use rustls::pki_types::pem::PemObject;

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ptth-tls-e2e-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A dev CA and an lb certificate for `names` in a fresh directory.
fn dev(tag: &str, names: &[&str]) -> PathBuf {
    let d = dir(tag);
    write_dev(&DevCerts { names: names.iter().map(|s| s.to_string()).collect(), ..DevCerts::new(d.clone()) }).expect("certs");
    d
}

fn spec(d: &Path) -> CertSpec {
    CertSpec { cert: d.join("lb.pem"), key: d.join("lb.key"), names: vec![] }
}

fn tls_lb(certs: Vec<CertSpec>) -> ptth_lb::Lb {
    start_lb(2, |c| {
        c.client_tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.tls_certs = certs;
    })
}

fn tls_addr(lb: &ptth_lb::Lb) -> SocketAddr {
    lb.client_tls_addrs[0]
}

fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(ca).expect("ca")).expect("root");
    let mut c = rustls::ClientConfig::builder_with_provider(ptth_lb::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

/// A blocking TLS connection from the test.
struct TlsClient {
    s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsClient {
    fn connect(addr: SocketAddr, sni: &str, ca: &Path) -> Result<TlsClient, std::io::Error> {
        TlsClient::connect_with(addr, sni, client_config(ca, &[b"http/1.1"]))
    }

    fn connect_with(addr: SocketAddr, sni: &str, cfg: Arc<rustls::ClientConfig>) -> Result<TlsClient, std::io::Error> {
        let conn = rustls::ClientConnection::new(cfg, sni.to_string().try_into().unwrap()).unwrap();
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(STEP))?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        // Finish the handshake now, so a certificate the client refuses
        // shows here.
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(TlsClient { s })
    }

    /// One request on the session; the whole response as text.
    fn get(&mut self, path: &str) -> String {
        write!(self.s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        self.s.flush().unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = self.s.read(&mut buf).expect("response");
            assert!(n > 0, "closed mid-response: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got);
            if let Some(end) = text.find("\r\n\r\n") {
                let head = text[..end].to_ascii_lowercase();
                let done = match head.lines().find_map(|l| l.strip_prefix("content-length:")) {
                    Some(len) => got.len() >= end + 4 + len.trim().parse::<usize>().unwrap(),
                    None => head.contains("transfer-encoding: chunked") && text.ends_with("\r\n0\r\n\r\n"),
                };
                if done {
                    return text.into_owned();
                }
            }
        }
    }
}

#[test]
fn http11_over_tls_tells_the_worker_https() {
    let d = dev("h1", &["localhost"]);
    let lb = tls_lb(vec![spec(&d)]);
    let _w = responder(&lb, "w", Responder::Echo);
    let mut c = TlsClient::connect(tls_addr(&lb), "localhost", &d.join("ca.pem")).expect("handshake");
    for i in 0..3 {
        let r = c.get(&format!("/tls/{i}"));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains(&format!("GET /tls/{i}\n")), "{r}");
        // RFC 7239 §5.4: the worker learns the client came over TLS.
        assert!(r.to_ascii_lowercase().contains("proto=https"), "{r}");
    }
    // The plain listener still answers beside it.
    assert_eq!(get(lb.client_addr(), "/plain").status, 200);
}

#[test]
fn sessions_resume_on_any_core() {
    let d = dev("resume", &["localhost"]);
    let lb = tls_lb(vec![spec(&d)]);
    let _w = responder(&lb, "w", Responder::Hello);
    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from_pem_file(d.join("ca.pem")).unwrap()).unwrap();
        let cfg = Arc::new(
            rustls::ClientConfig::builder_with_provider(ptth_lb::tls::provider())
                .with_protocol_versions(&[versions])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let mut kinds = Vec::new();
        for _ in 0..8 {
            let mut c = TlsClient::connect_with(tls_addr(&lb), "localhost", cfg.clone()).expect("handshake");
            // The response also delivers the TLS 1.3 tickets.
            assert!(c.get("/").starts_with("HTTP/1.1 200"));
            kinds.push(c.s.conn.handshake_kind());
        }
        // Eight connections land on both cores; all after the first resume.
        assert_eq!(kinds[0], Some(rustls::HandshakeKind::Full), "{versions:?}");
        assert!(kinds[1..].iter().all(|k| *k == Some(rustls::HandshakeKind::Resumed)), "{versions:?}: {kinds:?}");
    }
}

#[test]
fn sni_chooses_the_certificate() {
    let (a, b) = (dev("sni-a", &["a.test"]), dev("sni-b", &["b.test"]));
    let lb = tls_lb(vec![spec(&a), spec(&b)]);
    let _w = responder(&lb, "w", Responder::Hello);
    let addr = tls_addr(&lb);
    // Each name gets its own certificate (each from its own CA)...
    assert!(TlsClient::connect(addr, "b.test", &b.join("ca.pem")).expect("b").get("/").starts_with("HTTP/1.1 200"));
    assert!(TlsClient::connect(addr, "a.test", &a.join("ca.pem")).expect("a").get("/").starts_with("HTTP/1.1 200"));
    // ...so the other CA refuses it.
    let e = TlsClient::connect(addr, "b.test", &a.join("ca.pem")).err().expect("b's certificate is not from a's CA");
    assert!(e.to_string().contains("certificate"), "{e}");
    // An unknown name gets the first.
    assert!(TlsClient::connect(addr, "other.test", &a.join("ca.pem")).is_err(), "a's certificate does not name other.test");
    // h2 clients too: curl verifies each name against its own CA over h2.
    if tool("curl") {
        for (name, d) in [("a.test", &a), ("b.test", &b)] {
            let out = Command::new("curl")
                .args(["-s", "-S", "--max-time", "10", "--http2", "--cacert"])
                .arg(d.join("ca.pem"))
                .args(["--resolve", &format!("{name}:{}:127.0.0.1", addr.port()), "-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
                .arg(format!("https://{name}:{}/", addr.port()))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert_eq!(text, "200 2", "{name}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let s = status(&lb);
    let failed: u64 = s["per_core"].as_array().unwrap().iter().map(|c| c["tls_handshakes_failed"].as_u64().unwrap()).sum();
    assert!(failed >= 1, "refused handshakes are counted: {s}");
}

#[test]
fn reload_serves_new_certificates_and_keeps_open_sessions() {
    let (old, new) = (dev("reload-old", &["localhost"]), dev("reload-new", &["localhost"]));
    let live = dir("reload-live");
    std::fs::create_dir_all(&live).unwrap();
    for f in ["lb.pem", "lb.key"] {
        std::fs::copy(old.join(f), live.join(f)).unwrap();
    }
    let lb = tls_lb(vec![spec(&live)]);
    let _w = responder(&lb, "w", Responder::Hello);
    let addr = tls_addr(&lb);
    let mut open = TlsClient::connect(addr, "localhost", &old.join("ca.pem")).expect("old certificate");
    assert!(open.get("/1").starts_with("HTTP/1.1 200"));

    // A broken file is refused and the old certificate stays.
    std::fs::write(live.join("lb.pem"), "not a certificate\n").unwrap();
    let e = lb.reload_tls().expect_err("broken file");
    assert!(e.to_string().contains("lb.pem"), "{e}");
    assert!(TlsClient::connect(addr, "localhost", &old.join("ca.pem")).is_ok(), "old certificate still served");

    for f in ["lb.pem", "lb.key"] {
        std::fs::copy(new.join(f), live.join(f)).unwrap();
    }
    assert!(lb.reload_tls().expect("reload"), "there is TLS to reload");
    // New handshakes get the new certificate...
    assert!(TlsClient::connect(addr, "localhost", &new.join("ca.pem")).expect("new").get("/2").starts_with("HTTP/1.1 200"));
    assert!(TlsClient::connect(addr, "localhost", &old.join("ca.pem")).is_err(), "the old certificate is gone");
    // ...and the session opened before goes on.
    assert!(open.get("/3").starts_with("HTTP/1.1 200"));
}

/// A config reload may change the certificate list itself: a second
/// certificate for another SNI name is served after `Lb::reload` (what
/// SIGHUP calls), and the first still answers its own name.
#[test]
fn a_config_reload_adds_a_certificate_for_another_name() {
    let (a, b) = (dev("add-a", &["localhost"]), dev("add-b", &["b.test"]));
    let config = |certs: Vec<CertSpec>| {
        lb_config(2, |c| {
            c.client_tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
            c.tls_certs = certs;
        })
    };
    let lb = ptth_lb::run(config(vec![spec(&a)])).expect("lb starts");
    let _w = responder(&lb, "w", Responder::Hello);
    let addr = tls_addr(&lb);
    assert!(TlsClient::connect(addr, "b.test", &b.join("ca.pem")).is_err(), "no certificate for b.test yet");
    let changes = lb.reload(config(vec![spec(&a), spec(&b)])).expect("reload");
    assert_eq!(changes, vec!["tls.certificates changed"]);
    assert!(TlsClient::connect(addr, "b.test", &b.join("ca.pem")).expect("b.test").get("/").starts_with("HTTP/1.1 200"));
    assert!(TlsClient::connect(addr, "localhost", &a.join("ca.pem")).expect("localhost").get("/").starts_with("HTTP/1.1 200"));
    // A missing file: refused, nothing changes.
    let e = lb.reload(config(vec![spec(&a), spec(&dir("add-missing"))])).expect_err("missing files");
    assert!(e.to_string().contains("add-missing"), "{e}");
    assert!(TlsClient::connect(addr, "b.test", &b.join("ca.pem")).is_ok(), "b.test still served");
}

/// A TLS session idle between requests (its plaintext read into the small
/// idle buffer) serves its next request.
#[test]
fn an_idle_tls_session_serves_its_next_request() {
    let d = dev("idle", &["localhost"]);
    let lb = tls_lb(vec![spec(&d)]);
    let _w = responder(&lb, "w", Responder::Hello);
    let mut c = TlsClient::connect(tls_addr(&lb), "localhost", &d.join("ca.pem")).expect("handshake");
    assert!(c.get("/1").starts_with("HTTP/1.1 200"));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(c.get("/2").starts_with("HTTP/1.1 200"));
}

/// Counts the requests that reach it; answers 200.
struct Arrivals(Arc<std::sync::atomic::AtomicU32>);

impl ptth_workerd::Handler for Arrivals {
    async fn handle(&self, ex: &mut ptth_workerd::Exchange<'_>) -> Result<(), ptth_workerd::Error> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ex.respond(200, &[], b"ok\n").await
    }
}

/// A request refused for what its first body bytes hold never reaches a
/// worker over TLS either, although it is larger than the idle read buffer:
/// what rustls has decrypted is judged with the head.
#[test]
fn a_bad_body_in_a_large_tls_request_is_refused_before_its_head_goes_out() {
    let d = dev("bad-body", &["localhost"]);
    let lb = tls_lb(vec![spec(&d)]);
    let arrived = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let a = arrived.clone();
    let _w = start_worker(worker_config(&lb, "w", 2), move || Arrivals(a.clone()));
    let mut c = TlsClient::connect(tls_addr(&lb), "localhost", &d.join("ca.pem")).expect("handshake");
    let mut req = b"POST /c HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5;x=".to_vec();
    req.extend(std::iter::repeat_n(b'a', 5000));
    req.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
    c.s.write_all(&req).unwrap();
    c.s.flush().unwrap();
    let mut answer = Vec::new();
    let _ = c.s.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(arrived.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the worker");
}

#[test]
fn a_tls_connection_moves_to_the_core_that_has_the_tunnel() {
    let d = dev("hop", &["localhost"]);
    let lb = tls_lb(vec![spec(&d)]);
    let (mut tunnel, _core) = raw_h1_tunnel(lb.tunnel_addr, "raw");
    let server = std::thread::spawn(move || serve_raw(&mut tunnel, 40, "raw"));
    // Twenty sessions, two requests each: those the kernel put on the core
    // without the tunnel go on over there, TLS state and all.
    for _ in 0..20 {
        let mut c = TlsClient::connect(tls_addr(&lb), "localhost", &d.join("ca.pem")).expect("handshake");
        for _ in 0..2 {
            let r = c.get("/");
            assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("raw"), "{r}");
        }
    }
    server.join().unwrap();
    let s = settled_status(&lb, "every request is counted", |s| s.requests.total == 40);
    assert!(s.requests.served_migrated > 0, "some sessions moved core: {s:?}");
}

#[test]
fn plain_http_on_the_tls_port_is_refused_and_counted() {
    let d = dev("plain", &["localhost"]);
    let lb = tls_lb(vec![spec(&d)]);
    let mut c = TcpStream::connect(tls_addr(&lb)).unwrap();
    c.set_read_timeout(Some(STEP)).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // A TLS alert at most, then the end: never an HTTP answer.
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("the lb closes the connection");
    assert!(got.len() < 16 && !got.starts_with(b"HTTP/"), "{got:?}");
    wait_until("the failed handshake is counted", || {
        status(&lb)["per_core"].as_array().unwrap().iter().any(|c| c["tls_handshakes_failed"].as_u64() == Some(1))
    });
}

#[test]
fn curl_over_tls_gets_http11_and_h2_by_alpn() {
    if !tool("curl") {
        return;
    }
    let d = dev("curl", &["localhost"]);
    let lb = tls_lb(vec![spec(&d)]);
    let _w = responder(&lb, "w", Responder::Echo);
    let port = tls_addr(&lb).port();
    for (flag, want) in [("--http1.1", "200 1.1"), ("--http2", "200 2")] {
        let out = Command::new("curl")
            .args(["-s", "-S", "--max-time", "10", "--cacert"])
            .arg(d.join("ca.pem"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1"), flag, "-d", "over tls", "-w", "\n%{http_code} %{http_version}"])
            .arg(format!("https://localhost:{port}/curl"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.trim_end().ends_with(want), "{flag}: {text} {}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("POST /curl\n") && text.contains("over tls") && text.to_ascii_lowercase().contains("proto=https"), "{text}");
    }
}

#[test]
fn h2load_and_wrk_over_tls() {
    let d = dev("load", &["localhost"]);
    let lb = tls_lb(vec![spec(&d)]);
    let _w = responder(&lb, "w", Responder::Hello);
    // Neither tool verifies certificates; h2load negotiates h2 by ALPN.
    let url = format!("https://{}/", tls_addr(&lb));
    if tool("h2load") {
        let out = Command::new("timeout").args(["30", "h2load", "-n", "2000", "-c", "4", "-m", "8"]).arg(&url).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("2000 succeeded") && text.contains("Application protocol: h2"), "{text}");
    }
    if tool("wrk") {
        let out = Command::new("timeout").args(["30", "wrk", "-t1", "-c4", "-d1s"]).arg(&url).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("requests in") && !text.contains("Non-2xx") && !text.contains("Socket errors"), "{text}");
    }
}

/// An lb whose tunnel listener runs TLS with `d`'s certificate.
fn tls_tunnel_lb(d: &Path) -> ptth_lb::Lb {
    start_lb(2, |c| {
        c.tunnel_tls = Some(true);
        c.tls_certs = vec![spec(d)];
    })
}

fn tls_worker(lb: &ptth_lb::Lb, id: &str, ca: &Path, inner: ptth_workerd::InnerProtocol) -> ptth_workerd::Config {
    let mut cfg = worker_config(lb, id, 2);
    cfg.protocols = vec![inner];
    cfg.tls = Some(ptth_workerd::client_tls(Some(ca), None).expect("client TLS"));
    cfg
}

fn tunnels_over_tls_carry_requests(inner: ptth_workerd::InnerProtocol) {
    let d = dev(&format!("tunnel-{inner:?}"), &["localhost", "127.0.0.1"]);
    let lb = tls_tunnel_lb(&d);
    assert!(lb.tunnel_tls);
    // The worker verifies the lb as 127.0.0.1 (the --lb host), a name the
    // dev certificate carries.
    let _w = start_worker(tls_worker(&lb, "w", &d.join("ca.pem"), inner), || Responder::Echo);
    for i in 0..20 {
        let r = get(lb.client_addr(), &format!("/over-tls/{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains(&format!("GET /over-tls/{i}\n")), "{}", r.text());
    }
    let body = "x".repeat(300_000);
    let mut c = Client::connect(lb.client_addr());
    c.send(format!("POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    let r = c.read_response(false);
    let text = r.text();
    assert!(
        r.status == 200 && text.starts_with("POST /big\n") && text.ends_with(&body),
        "a 300 kB body each way: {}",
        &text[..text.len().min(200)]
    );
}

on_both_tunnel_kinds!(tunnels_over_tls_carry_requests);

#[test]
fn a_worker_refuses_an_lb_it_cannot_authenticate() {
    let (ours, other) = (dev("auth-lb", &["localhost", "127.0.0.1"]), dev("auth-other", &["localhost"]));
    let lb = tls_tunnel_lb(&ours);
    // Trusting another CA: the worker never sends its setup (nor its token).
    let mut cfg = tls_worker(&lb, "w", &other.join("ca.pem"), ptth_workerd::InnerProtocol::H2);
    cfg.token = Some("secret".into());
    let w = ptth_workerd::serve(cfg, || Responder::Hello).expect("worker starts");
    wait_until("the dial fails", || w.last_error(0).is_some());
    let why = w.last_error(0).unwrap();
    // Both dev CAs have one name, so rustls finds an issuer and fails its
    // signature.
    assert!(why.contains("TLS with lb") && why.contains("not trusted") && why.contains("invalid peer certificate"), "{why}");
    assert_eq!(w.tunnels(), 0);
    // Trusting the right CA but naming the lb wrongly fails the same way.
    let mut cfg = tls_worker(&lb, "w2", &ours.join("ca.pem"), ptth_workerd::InnerProtocol::H2);
    cfg.tls_name = Some("lb.elsewhere.test".into());
    let w2 = ptth_workerd::serve(cfg, || Responder::Hello).expect("worker starts");
    wait_until("the dial fails", || w2.last_error(0).is_some());
    assert!(w2.last_error(0).unwrap().contains("not valid for name \"lb.elsewhere.test\""), "{:?}", w2.last_error(0));
    w.kill();
    w2.kill();
}

#[test]
fn a_cleartext_setup_on_the_tls_tunnel_listener_is_refused() {
    let d = dev("clear-on-tls", &["localhost", "127.0.0.1"]);
    let lb = tls_tunnel_lb(&d);
    let w = ptth_workerd::serve(worker_config(&lb, "plain", 1), || Responder::Hello).expect("worker starts");
    wait_until("the dial fails", || w.last_error(0).is_some());
    assert_eq!(w.tunnels(), 0);
    wait_until("the refusal is counted", || {
        status(&lb)["per_core"].as_array().unwrap().iter().map(|c| c["setups_rejected"].as_u64().unwrap()).sum::<u64>() >= 1
    });
    w.kill();
}

#[test]
fn a_routable_cleartext_tunnel_listener_needs_an_explicit_setting() {
    let mut cfg = ptth_lb::Config::ephemeral();
    cfg.tunnel_listen = "0.0.0.0:0".parse().unwrap();
    let e = cfg.tunnel_tls().expect_err("routable and no certificate");
    assert!(e.key == "tunnel.tls" && e.what.contains("needs a certificate"), "{e}");
    cfg.tunnel_tls = Some(false);
    let e = cfg.tunnel_tls().expect_err("cleartext off loopback");
    assert!(e.what.contains("insecure_cleartext") && e.what.contains("cleartext"), "{e}");
    cfg.insecure_cleartext = true;
    assert_eq!(cfg.tunnel_tls(), Ok(false));
    let d = dev("routable", &["localhost"]);
    cfg.tunnel_tls = None;
    cfg.tls_certs = vec![spec(&d)];
    assert_eq!(cfg.tunnel_tls(), Ok(true), "TLS by default off loopback");
}

#[test]
fn certificates_reload_under_load_without_a_failed_request() {
    let (a, b) = (dev("load-a", &["localhost"]), dev("load-b", &["localhost"]));
    let live = dir("load-live");
    std::fs::create_dir_all(&live).unwrap();
    let put = |from: &Path| {
        for f in ["lb.pem", "lb.key"] {
            // Written aside and renamed: a reload never reads half a file.
            std::fs::copy(from.join(f), live.join(format!("{f}.new"))).unwrap();
            std::fs::rename(live.join(format!("{f}.new")), live.join(f)).unwrap();
        }
    };
    put(&a);
    let lb = tls_lb(vec![spec(&live)]);
    let _w = responder(&lb, "w", Responder::Hello);
    let addr = tls_addr(&lb);
    // Clients trust both CAs: every handshake must succeed whichever
    // certificate it meets, and every request on it.
    let mut roots = rustls::RootCertStore::empty();
    for d in [&a, &b] {
        roots.add(rustls::pki_types::CertificateDer::from_pem_file(d.join("ca.pem")).unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(ptth_lb::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Full handshakes only: a resumed session carries no certificate.
    cfg.resumption = rustls::client::Resumption::disabled();
    let cfg = Arc::new(cfg);
    let leaf_a = rustls::pki_types::CertificateDer::from_pem_file(a.join("lb.pem")).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (cfg, stop, leaf_a) = (cfg.clone(), stop.clone(), leaf_a.clone());
            std::thread::spawn(move || {
                // Requests served; sessions that met a's and b's certificate.
                let (mut served, mut met_a, mut met_b) = (0u32, 0u32, 0u32);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut c = TlsClient::connect_with(addr, "localhost", cfg.clone()).expect("every handshake succeeds");
                    let leaf = c.s.conn.peer_certificates().and_then(|p| p.first().cloned()).expect("a certificate");
                    if leaf == leaf_a {
                        met_a += 1;
                    } else {
                        met_b += 1;
                    }
                    for _ in 0..5 {
                        let r = c.get("/");
                        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
                        served += 1;
                    }
                }
                (served, met_a, met_b)
            })
        })
        .collect();
    for i in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(60));
        put(if i % 2 == 0 { &b } else { &a });
        lb.reload_tls().expect("reload");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut served, mut met_a, mut met_b) = (0, 0, 0);
    for c in clients {
        let (s, x, y) = c.join().expect("no client failed");
        (served, met_a, met_b) = (served + s, met_a + x, met_b + y);
    }
    assert!(served >= 20 && met_a > 0 && met_b > 0, "{served} requests; sessions on a's certificate {met_a}, on b's {met_b}");
}
