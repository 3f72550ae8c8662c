//! Support for the end-to-end tests: start a real lb and real workers
//! in-process on 127.0.0.1:0, and talk to them over real sockets with a small
//! blocking HTTP/1.1 client. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ptth_lb::{Config, Lb};
use ptth_proto::h1::{self, BodyDecoder, Parsed, ResponseHead};
use ptth_workerd::{Handler, Responder, Worker};

pub use ptth_lb;
pub use ptth_workerd;

pub mod recording;

/// Generates one test per tunnel kind for each named function taking an
/// [`ptth_workerd::InnerProtocol`]: `h1_tunnels::f` and `h2_tunnels::f`, so a
/// failure names its variant (no `for kind in …` loop inside one test).
#[macro_export]
macro_rules! on_both_tunnel_kinds {
    ($($case:ident),* $(,)?) => {
        mod h1_tunnels {
            $( #[test] fn $case() { super::$case(ptth_workerd::InnerProtocol::Http11) } )*
        }
        mod h2_tunnels {
            $( #[test] fn $case() { super::$case(ptth_workerd::InnerProtocol::H2) } )*
        }
    };
}

/// Longest any single test step waits.
pub const STEP: Duration = Duration::from_secs(10);

/// An lb on ephemeral loopback ports with `cores` cores; `tweak` adjusts the
/// config first.
pub fn start_lb(cores: usize, tweak: impl FnOnce(&mut Config)) -> Lb {
    ptth_lb::run(lb_config(cores, tweak)).expect("lb starts")
}

/// The config [`start_lb`] starts with (a reload test builds the next one
/// the same way).
pub fn lb_config(cores: usize, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = Config::ephemeral();
    cfg.profile.cores = cores;
    cfg.profile.pin = false;
    cfg.quiet = true;
    tweak(&mut cfg);
    cfg
}

/// Worker config dialing `lb`, quiet, with id `id`.
pub fn worker_config(lb: &Lb, id: &str, tunnels_per_core: u32) -> ptth_workerd::Config {
    let mut c = ptth_workerd::Config {
        lbs: vec![lb.tunnel_addr.to_string()],
        tunnels_per_core,
        quiet: true,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..Default::default()
    };
    c.meta.id = Some(id.to_string());
    c.protocols = tunnel_protocols();
    c
}

/// Inner protocols test workers offer: h2 then http/1.1 by default;
/// `PTTH_TEST_TUNNEL=http/1.1` (or `h2`) runs the suite on one kind only.
pub fn tunnel_protocols() -> Vec<ptth_workerd::InnerProtocol> {
    use ptth_workerd::InnerProtocol::{Http11, H2};
    match std::env::var("PTTH_TEST_TUNNEL").as_deref() {
        Ok("http/1.1") | Ok("h1") => vec![Http11],
        Ok("h2") => vec![H2],
        _ => vec![H2, Http11],
    }
}

/// Starts a worker and waits until it covers every lb core.
pub fn start_worker<H: Handler, F: Fn() -> H + Send + Sync + 'static>(cfg: ptth_workerd::Config, make: F) -> Worker {
    let w = ptth_workerd::serve(cfg, make).expect("worker starts");
    wait_until("worker covers every lb core", || w.is_covered());
    w
}

/// A worker running a built-in responder.
pub fn responder(lb: &Lb, id: &str, r: Responder) -> Worker {
    start_worker(worker_config(lb, id, 4), move || r.clone())
}

/// Whether a third-party client is installed. .ci/run sets
/// PTTH_REQUIRE_TOOLS=1, so there a missing tool fails the test; elsewhere
/// the caller skips with a note.
pub fn tool(name: &str) -> bool {
    let found =
        std::process::Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().map(|o| o.status.success()).unwrap_or(false);
    if !found {
        assert!(std::env::var_os("PTTH_REQUIRE_TOOLS").is_none(), "{name} is required here but not installed");
        eprintln!("skipping: {name} not installed");
    }
    found
}

/// Starts a worker whose setups the lb refuses, waits for the first
/// refusal and returns it as the worker logged it (status and reason).
pub fn refused_setup(cfg: ptth_workerd::Config) -> String {
    let w = ptth_workerd::serve(cfg, || Responder::Hello).expect("worker starts");
    wait_until("the setup is refused", || w.last_error(0).is_some());
    let why = w.last_error(0).expect("a refusal");
    assert_eq!(w.tunnels(), 0, "{why}");
    w.kill();
    why
}

pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + STEP;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A response as the test client read it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// False when the connection closed before the body's framing ended.
    pub complete: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A blocking client connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).expect("connect")
    }

    /// A connection, or `None` when it is refused (an lb that stopped).
    pub fn try_connect(addr: SocketAddr) -> Option<Client> {
        let stream = TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(STEP)).unwrap();
        stream.set_write_timeout(Some(STEP)).unwrap();
        stream.set_nodelay(true).unwrap();
        Some(Client { stream, buf: Vec::new() })
    }

    /// A keep-alive GET that the server may refuse by closing the
    /// connection before answering any byte (an lb draining between
    /// requests): `None` then. A response it started is read whole.
    pub fn try_get(&mut self, path: &str) -> Option<Response> {
        if self.stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes()).is_err() {
            return None;
        }
        if self.buf.is_empty() && self.fill() == 0 {
            return None;
        }
        Some(self.read_response(false))
    }

    pub fn send(&mut self, bytes: &[u8]) {
        // write_all retries EINTR itself.
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends `raw` (one request) and returns the response body as text.
    pub fn send_and_read(&mut self, raw: &[u8]) -> String {
        self.send(raw);
        self.read_response(false).text()
    }

    /// Sends `GET path` with keep-alive.
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.read_response(false)
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return n;
                }
                // A test thread that also ran an io_uring runtime can see
                // EINTR from the kernel's task-work notification.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => return 0,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Reads one response (the body whole). `head_request`: it answers a HEAD.
    pub fn read_response(&mut self, head_request: bool) -> Response {
        self.read_response_with(head_request, |_| {}).0
    }

    /// Reads one response, passing body payload to `sink` instead of keeping
    /// it when `sink` wants it; returns the response and the body length.
    pub fn read_response_with(&mut self, head_request: bool, mut sink: impl FnMut(&[u8])) -> (Response, u64) {
        let mut head = ResponseHead::default();
        let limits = h1::Limits::default();
        loop {
            match h1::parse_response(&self.buf, &limits, head_request, &mut head).expect("valid response head") {
                Parsed::Complete => break,
                Parsed::Partial => {
                    assert!(self.fill() > 0, "connection closed before a response head; got {:?}", String::from_utf8_lossy(&self.buf));
                }
            }
        }
        let headers = head
            .fields
            .iter()
            .map(|f| {
                (
                    String::from_utf8_lossy(&self.buf[f.name.clone()]).into_owned(),
                    String::from_utf8_lossy(&self.buf[f.value.clone()]).into_owned(),
                )
            })
            .collect();
        let status = head.status;
        self.buf.drain(..head.len);
        let mut dec = BodyDecoder::new(head.framing());
        let mut body = Vec::new();
        let mut total = 0u64;
        let mut complete = true;
        loop {
            while !self.buf.is_empty() && !dec.is_done() {
                let step = dec.decode(&self.buf).expect("valid body framing");
                let data = &self.buf[step.data.clone()];
                total += data.len() as u64;
                if body.len() < 16 << 20 {
                    body.extend_from_slice(data);
                }
                sink(data);
                self.buf.drain(..step.consumed);
            }
            if dec.is_done() {
                break;
            }
            if self.fill() == 0 {
                complete = dec.eof().is_ok();
                break;
            }
        }
        (Response { status, headers, body, complete }, total)
    }

    /// True when the server closed the connection (EOF with nothing pending).
    pub fn is_closed(&mut self) -> bool {
        self.stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let closed = self.buf.is_empty() && self.fill() == 0;
        self.stream.set_read_timeout(Some(STEP)).unwrap();
        closed
    }
}

/// GET on a fresh connection.
/// Client connections sorted by the lb core that accepted each, at least
/// `each` per core (a connection lands on a core by the kernel's
/// SO_REUSEPORT hash: it is opened, then the core's `clients_accepted` that
/// moved says where it went). Nothing has been sent on them.
pub fn clients_on_cores(lb: &Lb, each: usize) -> Vec<Vec<Client>> {
    let accepted = |lb: &Lb| lb.status().per_core.iter().map(|c| c.clients_accepted).collect::<Vec<_>>();
    let mut by_core: Vec<Vec<Client>> = (0..lb.status().cores).map(|_| Vec::new()).collect();
    let until = Instant::now() + STEP;
    while by_core.iter().any(|c| c.len() < each) {
        assert!(Instant::now() < until, "connections did not land on every core: {:?}", by_core.iter().map(Vec::len).collect::<Vec<_>>());
        let before = accepted(lb);
        let c = Client::connect(lb.client_addr());
        let mut now = accepted(lb);
        wait_until("the lb accepts the connection", || {
            now = accepted(lb);
            now.iter().sum::<u64>() > before.iter().sum::<u64>()
        });
        let core = (0..now.len()).find(|&i| now[i] > before[i]).expect("a core's count moved");
        by_core[core].push(c);
    }
    by_core
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    Client::connect(addr).get(path)
}

/// Fetches and parses the lb's /status.
pub fn status(lb: &Lb) -> serde_json::Value {
    let mut c = Client::connect(lb.admin_addr.expect("admin listener"));
    let r = c.get("/status");
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).expect("status is JSON")
}

/// The lb's typed status once `settled` holds for it. The lb counts a
/// request after its response is written, so a client can read a response a
/// moment before the count includes it; tests asserting counts wait for them
/// here (bounded).
pub fn settled_status(lb: &Lb, what: &str, settled: impl Fn(&ptth_lb::admin::Status) -> bool) -> ptth_lb::admin::Status {
    let mut last = lb.status();
    wait_until(what, || {
        last = lb.status();
        settled(&last)
    });
    last
}

/// Runs `f` on a fresh monoio runtime on this thread (for HTTP/2 clients
/// built on the `h2` crate).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let (mut rt, _) = ptth_proto::rt::runtime::Runtime::build(&Default::default()).expect("runtime");
    rt.block_on(f)
}

/// An h2c (prior knowledge) client connection to `addr`; its connection task
/// runs on the current monoio runtime.
pub async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    use monoio::io::IntoPollIo;
    let s = monoio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    let io = s.into_poll_io().expect("poll io");
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake(io)
        .await
        .expect("h2 handshake");
    monoio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Sends one request over h2 and collects the response body.
pub async fn h2_request(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, http::HeaderMap, Vec<u8>) {
    let req = http::Request::builder().method(method).uri(format!("http://test{path}")).body(()).unwrap();
    let mut send = send.clone().ready().await.expect("ready");
    let (resp, mut tx) = send.send_request(req, body.is_empty()).expect("send");
    if !body.is_empty() {
        ptth_proto::rt::h2io::send_data(&mut tx, bytes::Bytes::copy_from_slice(body), true).await.expect("body");
    }
    let resp = ptth_proto::rt::deadline::within(STEP, resp).await.expect("response in time").expect("response");
    let (parts, mut rbody) = resp.into_parts();
    let mut out = Vec::new();
    while let Some(d) = ptth_proto::rt::h2io::recv_data(&mut rbody).await {
        out.extend_from_slice(&d.expect("body data"));
    }
    (parts.status.as_u16(), parts.headers, out)
}

/// The setup of docs/PROTOCOL.md §1 on a raw socket offering `alpn`:
/// returns the tunnel and the `101` head, read byte by byte so nothing after
/// it (an h2 preface) is consumed.
fn raw_setup(tunnel: SocketAddr, id: &str, alpn: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(tunnel).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    // What the test writes goes out at once (no Nagle delay behind an ACK).
    s.set_nodelay(true).unwrap();
    let setup = format!(
        "GET /.well-known/ptth/*/ HTTP/1.1\r\nHost: lb\r\nConnection: Upgrade\r\nUpgrade: ptth\r\nALPN: {alpn}\r\nTunnel-Worker-Id: \"{id}\"\r\n\r\n"
    );
    s.write_all(setup.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1);
        head.push(b[0]);
    }
    let text = String::from_utf8(head).unwrap();
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    (s, text)
}

/// A worker written from docs/PROTOCOL.md alone: a raw socket that performs
/// the setup (HTTP/1.1 inner protocol) and returns the tunnel and the lb core
/// that took it.
pub fn raw_h1_tunnel(tunnel: SocketAddr, id: &str) -> (TcpStream, u32) {
    let (s, text) = raw_setup(tunnel, id, "http%2F1.1");
    let core = text.lines().find_map(|l| l.strip_prefix("Tunnel-Core: ")).unwrap().trim().parse().unwrap();
    (s, core)
}

/// Answers `n` requests on a raw tunnel with `body` (heads only; no request bodies).
pub fn serve_raw(tunnel: &mut TcpStream, n: usize, body: &str) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut served = 0;
    while served < n {
        let k = tunnel.read(&mut chunk).unwrap();
        assert!(k > 0, "lb closed the tunnel");
        buf.extend_from_slice(&chunk[..k]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            tunnel.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes()).unwrap();
            served += 1;
        }
    }
}

/// What a scripted h2 worker does with one request.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// RST_STREAM(REFUSED_STREAM) before reading anything: not processed.
    Refuse,
    /// Read the whole body, then answer 200 `got <body length>`.
    Answer,
    /// Answer 200 without a length, send `partial`, then reset the stream:
    /// a body cut short.
    Truncate,
}

/// A scripted worker written from docs/PROTOCOL.md alone: a raw socket that
/// performs the setup offering only `h2`, then runs an HTTP/2 server (the
/// `h2` crate) on the tunnel and treats each request as `script` says. Runs
/// on its own thread until the lb closes the tunnel.
pub fn scripted_h2_worker(
    tunnel: SocketAddr,
    id: &str,
    script: impl Fn(&http::request::Parts) -> Verdict + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let (s, _) = raw_setup(tunnel, id, "h2");
    s.set_read_timeout(None).unwrap();
    // The epoll driver (PTTH_FORCE_LEGACY) needs a non-blocking socket.
    s.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        block_on(async move {
            use monoio::io::IntoPollIo;
            let io = monoio::net::TcpStream::from_std(s).unwrap().into_poll_io().unwrap();
            let Ok(mut conn) = h2::server::handshake(io).await else { return };
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                let (parts, mut body) = req.into_parts();
                match script(&parts) {
                    Verdict::Refuse => respond.send_reset(h2::Reason::REFUSED_STREAM),
                    Verdict::Truncate => {
                        let resp = http::Response::builder().status(200).body(()).unwrap();
                        if let Ok(mut tx) = respond.send_response(resp, false) {
                            let _ = tx.send_data(bytes::Bytes::from_static(b"partial"), false);
                            tx.send_reset(h2::Reason::INTERNAL_ERROR);
                        }
                    }
                    Verdict::Answer => {
                        monoio::spawn(async move {
                            let mut n = 0;
                            while let Some(d) = ptth_proto::rt::h2io::recv_data(&mut body).await {
                                n += d.map(|d| d.len()).unwrap_or(0);
                            }
                            let text = bytes::Bytes::from(format!("got {n}"));
                            let resp = http::Response::builder().status(200).header("content-length", text.len()).body(()).unwrap();
                            if let Ok(mut tx) = respond.send_response(resp, false) {
                                let _ = tx.send_data(text, true);
                            }
                        });
                    }
                }
            }
        })
    })
}
