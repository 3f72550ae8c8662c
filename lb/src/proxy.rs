//! The request path for one HTTP/1.1 client connection, top to bottom:
//!
//! read head (strict RFC 9112 parse, header deadline) → route key (Host or
//! absolute-form authority, path) → forwarded head (hop-by-hop fields
//! dropped, `Forwarded` added) → a tunnel from this core's pool (or wait in
//! the bounded queue; or hand the connection to a core that has tunnels for
//! the route) → `100 Continue` if asked → the attempts (`attempts::serve`),
//! each an exchange on a lease (`exchange::run`) with this connection as the
//! client side: its body as an `rt::body` source, its write half as the
//! responder.
//!
//! Requests on a connection are handled one after another, so pipelined
//! requests are answered in order. Bodies stream through the connection's read
//! buffers; memory per connection is bounded by them whatever the body size.
//! When a request body is still arriving, the body upload and the response
//! download run concurrently, so a worker may answer before reading it all.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, IntoPollIo, Split};
use monoio::net::TcpStream;
use ptth_proto::h1::{self, BodyDecoder, ClientAddr, Forwarding, Framing, Parsed, RequestHead, TargetForm, Version};
use ptth_proto::rt::body::{AnySource, H1Source};
use ptth_proto::rt::io::{split, write_all, Prefixed, ReadBuf, ReadHalf};
use ptth_proto::rt::signal::Wait;
use ptth_proto::rt::tls::{TlsPoll, TlsStream};

use crate::attempts::{self, Ended, Outcome};
use crate::error::Error;
use crate::exchange::{self, Ctx, Done, ReqHead, Responder};
use crate::failure::Failure;
use crate::inbox::{CoreMsg, Detached};
use crate::percore::{self, Core};
use crate::stats;
use crate::tunnel::acquire::For;
use crate::tunnel::pool::Lease;

struct Client<S> {
    /// `None` once the connection went elsewhere (h2c, another core).
    stream: Option<S>,
    rb: ReadBuf,
    out: Vec<u8>,
    /// The forwarded request head, kept until the exchange succeeds so a
    /// retry can resend it.
    fwd: Vec<u8>,
    /// Route key of the current request: host bytes, then path bytes.
    key: Vec<u8>,
    /// The current request's normalized target.
    target: Vec<u8>,
    head: RequestHead,
    /// Parse space for building h2 requests from `fwd`.
    scratch: RequestHead,
    peer: SocketAddr,
    /// The peer as the forwarding fields write it.
    addr: ClientAddr,
    /// Handed over from another core: requests here are not core-local.
    migrated: bool,
    /// The core's graceful stop, awaited between requests: one waiter for
    /// the connection's life, not one per request.
    stop: Wait,
}

/// What the attempts need to know about the current request once its head
/// bytes are consumed.
#[derive(Debug, Clone, Copy)]
struct ReqInfo {
    version: Version,
    is_head: bool,
    /// RFC 9110 §9.2.2 (for the failure model).
    idempotent: bool,
    /// The client asked to close after this request (or it is an upgrade).
    close: bool,
    expect_continue: bool,
    framing: Framing,
    /// Lengths of the host and method parts of the route key (host, path,
    /// method).
    host_len: usize,
    method_len: usize,
    /// The client's RFC 9218 `Priority` urgency.
    urgency: Option<u8>,
}

enum Next {
    Continue,
    Close,
    /// Hand the connection to that core (it has tunnels for the route); the
    /// error is the answer if the connection cannot move.
    HandOff(usize, Error),
}

/// A client connection's byte stream: plain TCP or TLS over it, so the
/// HTTP/1.1 path, the h2 path (and the exchange under them) are written once
/// for both.
pub(crate) trait ClientStream: AsyncReadRent + AsyncWriteRent + Split + Sized + 'static {
    /// The stream as the h2 server drives it (poll-style I/O).
    type Poll: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static;
    /// The scheme the client used (`Forwarded: proto=`, `:scheme`).
    const SCHEME: &'static str;
    fn into_poll(self) -> io::Result<Self::Poll>;
    fn tcp(&self) -> &TcpStream;
    /// Resolves when the client closes or resets the connection while it
    /// sends nothing (its request waits in the queue).
    fn gone(&self) -> impl std::future::Future<Output = ()> + '_ {
        ptth_proto::rt::io::peer_gone(self.tcp())
    }
    /// After an idle read filled the small buffer: what already waits on
    /// the connection goes into the full one too (`ReadBuf::take_queued`),
    /// so a request that arrived whole is judged whole before any of it is
    /// forwarded, as one full-size read would have it.
    async fn take_queued(&mut self, rb: &mut ReadBuf) {
        if rb.idle_read_full() {
            rb.take_queued(self.tcp());
        }
    }
    /// The connection for another core to adopt; the stream back when it
    /// cannot move.
    fn detach(self) -> Result<Detached, Self>;
}

impl ClientStream for TcpStream {
    type Poll = monoio::net::tcp::stream_poll::TcpStreamPoll;
    const SCHEME: &'static str = "http";
    fn into_poll(self) -> io::Result<Self::Poll> {
        self.into_poll_io()
    }
    fn tcp(&self) -> &TcpStream {
        self
    }
    fn detach(self) -> Result<Detached, Self> {
        Detached::plain(self)
    }
}

/// A TLS client connection. Its queue watch sees the socket: a client that
/// sends close_notify before closing counts as still there (the alert is
/// data it cannot read without taking it), so it leaves the queue when its
/// wait ends rather than at once.
impl ClientStream for TlsStream<rustls::ServerConnection> {
    type Poll = TlsPoll<rustls::ServerConnection>;
    const SCHEME: &'static str = "https";
    /// The socket holds ciphertext: what rustls has decrypted already is
    /// taken (reads that never wait on the socket).
    async fn take_queued(&mut self, rb: &mut ReadBuf) {
        if !rb.idle_read_full() {
            return;
        }
        // The first fill takes the full-size buffer back.
        while self.plaintext_pending() {
            if !matches!(rb.fill(self, std::time::Duration::from_secs(1)).await, Ok(n) if n > 0) || rb.is_full() {
                return;
            }
        }
    }
    fn into_poll(self) -> io::Result<Self::Poll> {
        TlsStream::into_poll(self)
    }
    fn tcp(&self) -> &TcpStream {
        TlsStream::tcp(self)
    }
    fn detach(self) -> Result<Detached, Self> {
        Detached::tls(Box::new(self)).map_err(|s| *s)
    }
}

pub(crate) async fn serve<S: ClientStream>(core: Rc<Core>, stream: S, peer: SocketAddr, buffered: Vec<u8>, migrated: bool) {
    let cfg = core.cfg();
    let p = &cfg.profile;
    let mut c = Client {
        stream: Some(stream),
        rb: ReadBuf::from_vec(buffered, p.client_read),
        out: Vec::with_capacity(4096),
        fwd: Vec::with_capacity(1024),
        key: Vec::with_capacity(256),
        target: Vec::with_capacity(256),
        head: RequestHead::default(),
        scratch: RequestHead::default(),
        peer,
        addr: ClientAddr::new(peer),
        migrated,
        stop: core.stop.wait(),
    };
    // One port serves HTTP/1.1 and h2c: a connection that opens with the
    // HTTP/2 preface (RFC 9113 §3.4) goes to the h2 server.
    match sniff_preface(&core, &mut c).await {
        Sniff::H2 => {
            let Some(stream) = c.stream.take() else { return };
            let buffered = c.rb.take_unconsumed();
            let Ok(io) = stream.into_poll() else { return };
            return crate::downstream_h2::serve(core, Prefixed::new(buffered, io), peer, migrated, S::SCHEME).await;
        }
        Sniff::Closed => return,
        Sniff::H1 => {}
    }
    loop {
        match read_head(&core, &mut c).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                send_error(&core, &mut c, &e, true).await;
                return;
            }
        }
        match handle(&core, &mut c).await {
            Next::Continue => {}
            Next::Close => return,
            Next::HandOff(to, no_route) => {
                let Some(stream) = c.stream.take() else { return };
                match stream.detach() {
                    Ok(stream) => {
                        stats::add(&core.stats().clients_handed_off, 1);
                        let buffered = c.rb.take_unconsumed();
                        percore::send_to(&core.shared, to, CoreMsg::Client { stream, peer, buffered });
                    }
                    // It cannot move: this core has no tunnel for the route.
                    Err(stream) => {
                        c.stream = Some(stream);
                        send_error(&core, &mut c, &no_route, true).await;
                    }
                }
                return;
            }
        }
    }
}

enum Sniff {
    H1,
    H2,
    Closed,
}

/// Reads until the first bytes tell HTTP/2's preface from an HTTP/1.1
/// request line (they differ within the first few bytes for any real method).
async fn sniff_preface<S: ClientStream>(core: &Core, c: &mut Client<S>) -> Sniff {
    let preface = crate::downstream_h2::PREFACE;
    loop {
        let d = c.rb.data();
        let n = d.len().min(preface.len());
        if d[..n] != preface[..n] {
            return Sniff::H1;
        }
        if n == preface.len() {
            return Sniff::H2;
        }
        let Some(stream) = c.stream.as_mut() else { return Sniff::Closed };
        let r = if d.is_empty() {
            // Nothing yet: the small idle buffer (`ReadBuf::fill_idle`).
            let wait = core.cfg().profile.keepalive_timeout;
            let r = monoio::select! {
                r = c.rb.fill_idle(stream, wait) => r,
                _ = &mut c.stop => return Sniff::Closed,
            };
            stream.take_queued(&mut c.rb).await;
            r
        } else {
            let wait = core.cfg().profile.header_timeout;
            monoio::select! {
                r = c.rb.fill(stream, wait) => r,
                _ = &mut c.stop => return Sniff::Closed,
            }
        };
        match r {
            Ok(0) | Err(_) => return Sniff::Closed,
            Ok(_) => {}
        }
    }
}

/// Reads until a complete request head is buffered. `Ok(false)`: the
/// connection ended or idled out between requests (nothing to answer).
async fn read_head<S: ClientStream>(core: &Core, c: &mut Client<S>) -> Result<bool, Error> {
    let cfg = core.cfg();
    let p = &cfg.profile;
    let mut started = (!c.rb.is_empty()).then(Instant::now);
    loop {
        match h1::parse_request(c.rb.data(), &p.limits, &mut c.head) {
            Ok(Parsed::Complete) => return Ok(true),
            Ok(Parsed::Partial) => {}
            Err(e) => return Err(Error::Head(e)),
        }
        let idle = c.rb.is_empty();
        let wait = match started {
            None => p.keepalive_timeout,
            Some(t) => p.header_timeout.saturating_sub(t.elapsed()),
        };
        let Some(stream) = c.stream.as_mut() else { return Ok(false) };
        let r = if idle && started.is_none() {
            // Between requests: the small idle buffer, so an idle
            // keep-alive connection holds no full-size one
            // (`ReadBuf::fill_idle`; docs/OPERATIONS.md, capacity notes).
            let r = monoio::select! {
                r = c.rb.fill_idle(stream, wait) => r,
                _ = &mut c.stop => return Ok(false),
            };
            stream.take_queued(&mut c.rb).await;
            r
        } else {
            monoio::select! {
                r = c.rb.fill(stream, wait) => r,
                _ = &mut c.stop, if idle => return Ok(false),
            }
        };
        match r {
            Ok(0) => return Ok(false),
            Ok(_) => {
                started.get_or_insert_with(Instant::now);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut && started.is_none() => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(Error::HeaderTimeout(p.header_timeout)),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(Error::Head(ptth_proto::HeadError::HeadTooLarge)),
            Err(e) => return Err(Error::ClientIo(e)),
        }
    }
}

fn upgrade_is_h2c(v: Option<&[u8]>) -> bool {
    v.is_some_and(|v| h1::list_items(v).all(|t| t.eq_ignore_ascii_case(b"h2c")))
}

/// The authority to route on (RFC 9112 §3.2.2: an absolute-form target's
/// replaces `Host`), checked; the normalized origin-form target is written
/// into `target`. Routing and the forwarded head both use what this returns,
/// so the worker sees the host and path the request was routed on.
fn route_target<'b>(buf: &'b [u8], head: &RequestHead, target: &mut Vec<u8>) -> Result<&'b [u8], Error> {
    let raw = head.target(buf);
    let host = h1::request_authority(buf, head);
    if !h1::is_valid_authority(host) {
        return Err(Error::Head(ptth_proto::HeadError::Malformed("invalid Host")));
    }
    target.clear();
    h1::write_normalized_target(target, h1::origin_form(raw))?;
    Ok(host)
}

async fn handle<S: ClientStream>(core: &Rc<Core>, c: &mut Client<S>) -> Next {
    let data = c.rb.data();
    let head = &c.head;
    if head.form == TargetForm::Authority {
        // CONNECT (RFC 9110 §9.3.6) is not relayed yet; refusing it here
        // means the client's next bytes are never parsed as a request.
        let e = Error::NotImplemented("CONNECT");
        send_error(core, c, &e, true).await;
        return Next::Close;
    }
    let host = match route_target(data, head, &mut c.target) {
        Ok(h) => h,
        Err(e) => {
            send_error(core, c, &e, true).await;
            return Next::Close;
        }
    };
    c.key.clear();
    c.key.extend_from_slice(host);
    c.key.extend_from_slice(h1::target_path(&c.target));
    let method = head.method(data);
    c.key.extend_from_slice(method);
    let info = ReqInfo {
        version: head.version(),
        is_head: head.is_head(data),
        idempotent: head.is_idempotent(data),
        // Upgrades (WebSocket) are not relayed yet: the request is forwarded
        // as a plain one and the connection closes after. `Upgrade: h2c` is
        // simply ignored (RFC 9113 §3.1) and the connection stays.
        close: head.conn.close || (head.conn.upgrade && !upgrade_is_h2c(head.field(data, "upgrade"))),
        expect_continue: head.expect_continue,
        framing: head.framing(),
        host_len: host.len(),
        method_len: method.len(),
        urgency: head.field(data, "priority").and_then(ptth_proto::sf::priority_urgency),
    };
    let cfg = core.cfg();
    let policy = &cfg.forwarding;
    let fwd = Forwarding {
        client: Some(&c.addr),
        proto: S::SCHEME,
        host,
        target: &c.target,
        keep_client_forwarded: policy.trusts(c.peer.ip()),
        x_forwarded: policy.x_forwarded,
    };
    c.fwd.clear();
    h1::write_request_head(&mut c.fwd, data, head, &fwd);
    let head_len = head.len;
    let bodyless = !info.framing.has_body();
    // The body bytes already received are checked before anything goes to a
    // worker: a request whose framing is invalid in what we hold is refused
    // whole, not forwarded head first and cut off later.
    if let Err(e) = BodyDecoder::new(info.framing).scan(&data[head_len..]) {
        send_error(core, c, &Error::ClientBody(e), true).await;
        return Next::Close;
    }

    let key = std::mem::take(&mut c.key);
    let (host, rest) = key.split_at(info.host_len);
    let (path, method) = rest.split_at(rest.len() - info.method_len);
    let req = attempts::Request {
        to: For { host, path, method, urgency: info.urgency },
        idempotent: info.idempotent,
        bodyless,
        is_head: info.is_head,
        migrated: c.migrated,
    };
    let cfg = core.cfg();
    let p = &cfg.profile;
    let mut dec = BodyDecoder::new(info.framing);
    let mut first = true;
    // The attempts and the watch for a client that leaves while its request
    // waits take turns with the connection: the watch runs only inside the
    // queue wait, before an attempt starts.
    let client = RefCell::new(&mut *c);
    #[allow(clippy::await_holding_refcell_ref)]
    let gone = || async {
        // Held while the request waits for a lease, never while an attempt runs.
        let c = client.borrow();
        match c.stream.as_ref() {
            Some(s) => s.gone().await,
            None => std::future::pending().await,
        }
    };
    #[allow(clippy::await_holding_refcell_ref)]
    let ended = attempts::serve(core, &req, gone, async |x, lease| {
        // Held for the attempt; the queue watch above is over by then.
        let mut c = client.borrow_mut();
        let c = &mut **c;
        if first {
            first = false;
            c.rb.consume(head_len);
            if info.expect_continue && !dec.is_done() && c.rb.is_empty() && info.version == Version::Http11 {
                // RFC 9110 §10.1.1: we answer the expectation ourselves once
                // a tunnel is ready, and forward the request without Expect.
                c.out.clear();
                c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                write_client(core, c).await.map_err(|_| Failure::client_gone())?;
            }
            if !dec.is_done() {
                read_whole_if_small(c, &dec, info.framing, p.replay_max, p.io_timeout).await?;
            }
        }
        attempt(x, c, lease, &mut dec, &info).await
    })
    .await;
    c.key = key;
    match ended {
        Ended::Served(done) if done.client_close => Next::Close,
        Ended::Served(_) => Next::Continue,
        Ended::NoLease(e) => {
            let (host, path) = c.key.split_at(info.host_len);
            if let (Error::NoRoute { .. }, false) = (&e, c.migrated) {
                if let Some(to) = core.shared.placement.core_for(host, path, core.id) {
                    return Next::HandOff(to, e);
                }
            }
            c.rb.consume(head_len);
            // The body was not read: only a bodyless request leaves the
            // connection in a state to carry the next one. (HTTP/1.0 clients
            // would need keep-alive said explicitly: just close.)
            let close = !bodyless || info.close || info.version == Version::Http10;
            send_error(core, c, &e, close).await;
            if close {
                Next::Close
            } else {
                Next::Continue
            }
        }
        Ended::Answer(e) => {
            send_error(core, c, &e, true).await;
            Next::Close
        }
        Ended::Abort => Next::Close,
    }
}

/// One attempt of the current request on `lease`. A body already held whole
/// in the read buffer is relayed from where it lies and consumed only once
/// the exchange succeeded, so a failed attempt leaves it whole for the next.
async fn attempt<S: ClientStream>(
    x: &Ctx<'_>,
    c: &mut Client<S>,
    lease: &mut Lease,
    dec: &mut BodyDecoder,
    info: &ReqInfo,
) -> Result<Done, Failure> {
    let io = x.core.cfg().profile.io_timeout;
    let Some(stream) = c.stream.as_mut() else { return Err(Failure::client_gone()) };
    let (mut cr, cw) = split(stream);
    let resp = Responder::H1 { w: cw, out: &mut c.out, version: info.version, close: info.close };
    let head = ReqHead::H1 { fwd: &c.fwd, scratch: &mut c.scratch, chunked: info.framing == Framing::Chunked, https: S::SCHEME == "https" };
    if dec.is_done() {
        return exchange::run(x, head, AnySource::<ReadHalf<'_, S>>::Empty, resp, lease).await;
    }
    match whole_body(dec, c.rb.data()).ok().flatten() {
        Some(n) => {
            let mut probe = dec.clone();
            let body = AnySource::<ReadHalf<'_, S>>::Held(H1Source::held(&c.rb.data()[..n], &mut probe));
            let r = exchange::run(x, head, body, resp, lease).await;
            if r.is_ok() {
                c.rb.consume(n);
                *dec = probe;
            }
            r
        }
        None => exchange::run(x, head, AnySource::H1(H1Source::new(&mut cr, &mut c.rb, dec, io)), resp, lease).await,
    }
}

/// The length of the whole body `dec` expects if `data` holds all of it;
/// `None` while more is to come.
fn whole_body(dec: &BodyDecoder, data: &[u8]) -> Result<Option<usize>, ptth_proto::BodyError> {
    let mut probe = dec.clone();
    let n = probe.scan(data)?;
    Ok(probe.is_done().then_some(n))
}

/// Reads a small request body whole into the client's read buffer before
/// the request goes out, so it is held for replay if the attempt fails
/// before the worker can have acted on it (profile `buffers.replay_max`). A
/// larger body, or one that stops arriving, is left to stream as usual.
async fn read_whole_if_small<S: ClientStream>(
    c: &mut Client<S>,
    dec: &BodyDecoder,
    framing: Framing,
    max: usize,
    wait: Duration,
) -> Result<(), Failure> {
    match framing {
        Framing::Length(n) if n <= max as u64 => {}
        Framing::Chunked => {}
        _ => return Ok(()),
    }
    loop {
        match whole_body(dec, c.rb.data()) {
            Ok(None) if c.rb.data().len() < max => {}
            // Whole, too big to hold, or invalid (the relay reports that).
            _ => return Ok(()),
        }
        let Some(s) = c.stream.as_mut() else { return Err(Failure::client_gone()) };
        match c.rb.fill(s, wait).await {
            Ok(n) if n > 0 => {}
            // End of stream, a full buffer or a slow client: the relay
            // reports whatever is wrong when it gets there.
            _ => return Ok(()),
        }
    }
}

async fn write_client<S: ClientStream>(core: &Core, c: &mut Client<S>) -> io::Result<()> {
    let Some(s) = c.stream.as_mut() else { return Err(io::Error::other("client stream missing")) };
    let (res, out) = write_all(s, std::mem::take(&mut c.out), core.cfg().profile.io_timeout).await;
    c.out = out;
    res
}

/// Answers an error generated here (the one place client errors become
/// responses; the status comes from [`Error::status`]).
async fn send_error<S: ClientStream>(core: &Core, c: &mut Client<S>, e: &Error, close: bool) {
    let Some(status) = e.status() else { return };
    attempts::record(core, Outcome::Answered { status, err: e, client: Some(c.peer) });
    let retry = core.cfg().profile.retry_after_s.to_string();
    let mut extra: Vec<(&str, &str)> = Vec::new();
    if e.is_retryable() {
        extra.push(("Retry-After", &retry));
    }
    let body = format!("{status} {}: {e}\n", h1::reason(status));
    c.out.clear();
    h1::write_simple_response(&mut c.out, status, h1::reason(status), &extra, "text/plain", body.as_bytes(), close);
    if write_client(core, c).await.is_ok() && close {
        linger(c).await;
    }
}

/// Longest a closing connection is drained after an error response.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes drained after an error response before closing anyway.
const LINGER_BYTES: usize = 8 << 20;

/// Lingering close (nginx's `lingering_close`): after an error response the
/// client may still be sending (a 100 KB request line, a body nobody will
/// read). Closing with those bytes unread makes the kernel answer with a
/// reset, which can destroy the response before the client reads it. So:
/// half-close, then read and drop what still arrives, bounded in time and
/// size, until the client closes its side.
async fn linger<S: ClientStream>(c: &mut Client<S>) {
    let Some(stream) = c.stream.as_mut() else { return };
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut drained = 0;
    while drained < LINGER_BYTES {
        drained += c.rb.data().len();
        let all = c.rb.data().len();
        c.rb.consume(all);
        let left = deadline.saturating_duration_since(Instant::now());
        match c.rb.fill(stream, left).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(req: &str) -> Result<(String, String), Error> {
        let mut h = RequestHead::default();
        h1::parse_request(req.as_bytes(), &h1::Limits::default(), &mut h)?;
        let mut target = Vec::new();
        let host = route_target(req.as_bytes(), &h, &mut target)?;
        Ok((String::from_utf8(host.to_vec()).unwrap(), String::from_utf8(h1::target_path(&target).to_vec()).unwrap()))
    }

    #[test]
    fn route_keys() {
        let k = |r: &str| key(r).unwrap();
        assert_eq!(k("GET /a/b?x=1 HTTP/1.1\r\nHost: h:80\r\n\r\n"), ("h:80".into(), "/a/b".into()));
        // RFC 9112 §3.2.2: the absolute form's authority replaces Host.
        assert_eq!(k("GET http://abs.example/p?q HTTP/1.1\r\nHost: other\r\n\r\n"), ("abs.example".into(), "/p".into()));
        assert_eq!(k("GET http://abs.example HTTP/1.1\r\nHost: other\r\n\r\n"), ("abs.example".into(), "/".into()));
        assert_eq!(k("GET / HTTP/1.0\r\n\r\n"), ("".into(), "/".into()));
        // Dot segments and encoded unreserved bytes cannot dodge a prefix.
        assert_eq!(k("GET /api/../index.html HTTP/1.1\r\nHost: h\r\n\r\n").1, "/index.html");
        assert_eq!(k("GET /api/%2e%2E/admin HTTP/1.1\r\nHost: h\r\n\r\n").1, "/admin");
        assert_eq!(k("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").1, "/");
        assert!(key("GET / HTTP/1.1\r\nHost: a b\r\n\r\n").is_err());
        assert!(key("GET /%zz HTTP/1.1\r\nHost: h\r\n\r\n").is_err());
    }
}
