//! Sidecar mode: forward every request that arrives on a tunnel to a local
//! HTTP/1.1 origin over a keep-alive pool, and relay the response back.
//!
//! Place in the request path: lb → tunnel → **this** → origin (loopback) and
//! back. The head is written again for the origin from the parser's
//! decisions (framing, Host, normalized target; hop-by-hop fields dropped),
//! never copied through, and every pooled connection is checked for bytes the
//! origin sent unasked before it is reused.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;
use ptth_proto::h1::{self, BodyDecoder, Parsed, Persist, ResponseHead, Version};
use ptth_proto::rt::body::{relay, Fault, H1Sink, H1Source, H1SourceError, H2Sink, H2Source, RelayError};
use ptth_proto::rt::h2io;
use ptth_proto::rt::io::{write_all, ReadBuf};

use crate::config::Config;
use crate::error::{Error, OriginFailure};
use crate::tunnel::{Conn, Exchange, Handler, Inner, Resp};
use crate::tunnel_h2::H2Exchange;

const ORIGIN_BUF: usize = 64 * 1024;
/// Idle origin connections kept per worker thread.
const POOL_MAX: usize = 1024;

/// An origin given as `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginAddr {
    pub authority: String,
}

impl OriginAddr {
    pub fn parse(url: &str) -> Result<OriginAddr, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--origin {url:?}: expected http://host:port (TLS origins are not supported)"))?;
        let authority = rest.trim_end_matches('/');
        if authority.contains('/') || authority.is_empty() {
            return Err(format!("--origin {url:?}: expected http://host:port without a path"));
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) && !authority.ends_with(']') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(OriginAddr { authority })
    }
}

struct OriginConn {
    stream: TcpStream,
    rb: ReadBuf,
    out: Vec<u8>,
    head: ResponseHead,
    /// The current request's normalized target.
    target: Vec<u8>,
}

/// The sidecar handler: one per worker thread, with that thread's pool.
pub struct Sidecar {
    origin: OriginAddr,
    idle: RefCell<Vec<OriginConn>>,
    health: Option<Arc<OriginHealth>>,
}

/// How the sidecar checks its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginCheck {
    /// `GET` this path; up while it answers 2xx or 3xx. `None`: up while a
    /// TCP connect succeeds.
    pub path: Option<String>,
    /// Time between checks.
    pub every: Duration,
    /// Deadline of one check (connect, then the whole response head).
    pub timeout: Duration,
}

/// The origin's state as the health check last saw it, shared by the
/// worker's threads. While it is down the sidecar withdraws: every request
/// is answered at once with 503, `Tunnel-Unprocessed: ?1` and `Retry-After`
/// (the lb takes the worker out of selection for that long and sends the
/// request elsewhere, docs/PROTOCOL.md §5); its tunnels stay up, and it
/// rejoins when a check passes.
#[derive(Debug)]
pub struct OriginHealth {
    down: AtomicBool,
    stop: Arc<AtomicBool>,
}

impl OriginHealth {
    /// Starts checking `origin` on a thread of its own (blocking sockets,
    /// off the tunnels' runtimes); the check stops when this is dropped.
    pub fn start(origin: &OriginAddr, check: OriginCheck, quiet: bool) -> Arc<OriginHealth> {
        let h = Arc::new(OriginHealth { down: AtomicBool::new(false), stop: Arc::new(AtomicBool::new(false)) });
        let (weak, stop, authority) = (Arc::downgrade(&h), h.stop.clone(), origin.authority.clone());
        let spawned = std::thread::Builder::new().name("ptth-workerd-check".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let verdict = probe(&authority, &check);
                let Some(h) = weak.upgrade() else { return };
                let was_down = h.down.swap(verdict.is_err(), Ordering::AcqRel);
                match (&verdict, was_down) {
                    (Err(why), false) if !quiet => tracing::warn!(origin = %authority, "origin down ({why}): withdrawing until it is back"),
                    (Ok(()), true) if !quiet => tracing::info!(origin = %authority, "origin back: taking requests again"),
                    _ => {}
                }
                drop(h);
                std::thread::sleep(check.every);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("origin health check not started: {e}");
        }
        h
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }
}

impl Drop for OriginHealth {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One check: a connect, and with a path a `GET` whose status must be 2xx or 3xx.
fn probe(authority: &str, check: &OriginCheck) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let addr = authority.to_socket_addrs().map_err(|e| format!("resolving: {e}"))?.next().ok_or("no address")?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, check.timeout).map_err(|e| format!("connect: {e}"))?;
    let Some(path) = &check.path else { return Ok(()) };
    s.set_read_timeout(Some(check.timeout)).and_then(|_| s.set_write_timeout(Some(check.timeout))).map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: ptth-workerd-check\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("sending the check: {e}"))?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).map_err(|e| format!("reading the check's answer: {e}"))?;
    match std::str::from_utf8(&head[9..12]).ok().and_then(|c| c.parse::<u16>().ok()) {
        Some(200..=399) if head.starts_with(b"HTTP/1.") => Ok(()),
        Some(status) => Err(format!("GET {path} answered {status}")),
        None => Err(format!("GET {path}: not an HTTP response")),
    }
}

impl Sidecar {
    pub fn new(origin: OriginAddr) -> Sidecar {
        Sidecar { origin, idle: RefCell::new(Vec::new()), health: None }
    }

    /// A sidecar that withdraws while `health` says the origin is down.
    pub fn with_health(origin: OriginAddr, health: Arc<OriginHealth>) -> Sidecar {
        Sidecar { origin, idle: RefCell::new(Vec::new()), health: Some(health) }
    }

    /// An idle pooled connection that can carry the next request: one that
    /// holds no unread bytes and whose origin neither closed it nor sent
    /// anything since its last response (see `idle_conn_unusable`).
    fn pooled(&self) -> Option<OriginConn> {
        let mut idle = self.idle.borrow_mut();
        while let Some(oc) = idle.pop() {
            if oc.rb.is_empty() && !ptth_proto::rt::io::idle_conn_unusable(&oc.stream) {
                return Some(oc);
            }
        }
        None
    }

    fn err(&self, kind: OriginFailure, why: impl std::fmt::Display) -> Error {
        Error::Origin { origin: self.origin.authority.clone(), kind, why: why.to_string() }
    }

    async fn connect(&self, cfg: &Config) -> Result<OriginConn, Error> {
        let t = cfg.connect_timeout;
        let stream = match ptth_proto::rt::deadline::within(t, TcpStream::connect(self.origin.authority.as_str())).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(self.err(OriginFailure::Connect, format!("connect: {e}"))),
            Err(_) => return Err(self.err(OriginFailure::Timeout, "connect timed out")),
        };
        let _ = stream.set_nodelay(true);
        Ok(OriginConn {
            stream,
            rb: ReadBuf::with_capacity(ORIGIN_BUF),
            out: Vec::with_capacity(4096),
            head: ResponseHead::default(),
            target: Vec::with_capacity(256),
        })
    }

    /// Sends the request head and body; reads the response head.
    /// `Ok(false)`: a pooled connection turned out dead before anything of the
    /// request could have been processed, and the request can be replayed.
    async fn exchange_once(&self, c: &mut Conn, oc: &mut OriginConn, reused: bool) -> Result<bool, Error> {
        let io = c.cfg.io_timeout;
        let replayable = reused && c.body.is_done();
        let mut out = std::mem::take(&mut oc.out);
        // The head is rewritten, not copied: whatever lb sent it (ptth-lb
        // normalized it already; another PTTH proxy may not have), the origin
        // gets framing and Host from the parser's decisions and no hop-by-hop
        // fields (RFC 9110 §7.6.1).
        let hb = &c.head_bytes;
        oc.target.clear();
        h1::write_normalized_target(&mut oc.target, h1::origin_form(c.head.target(hb)))?;
        let fwd = h1::Forwarding {
            client: None,
            proto: "http",
            host: h1::request_authority(hb, &c.head),
            target: &oc.target,
            keep_client_forwarded: true,
            x_forwarded: false,
        };
        h1::write_request_head(&mut out, hb, &c.head, &fwd);
        oc.out = out;
        let chunked = c.head.framing() == h1::Framing::Chunked;
        let wrote = Cell::new(false);
        let mut sink = H1Sink::new(&mut oc.stream, &mut oc.out, chunked, io, &wrote);
        let res = relay(&mut H1Source::new(&mut c.stream, &mut c.rb, &mut c.body, io), &mut sink).await;
        match res {
            Ok(()) => {}
            Err(RelayError::Sink(_)) if replayable => return Ok(false),
            Err(RelayError::Sink(e)) => return Err(self.err(OriginFailure::Closed, format!("sending the request: {e}"))),
            Err(RelayError::Source(e)) => return Err(Error::Relay(e.into())),
        }
        let is_head = c.head.is_head(&c.head_bytes);
        self.read_head(oc, &c.cfg, is_head, replayable).await
    }
}

impl Handler for Sidecar {
    async fn handle(&self, ex: &mut Exchange<'_>) -> Result<(), Error> {
        if self.health.as_ref().is_some_and(|h| h.is_down()) {
            return Err(self.err(OriginFailure::Down, "its health check fails"));
        }
        match &mut ex.inner {
            Inner::H1(c) => self.handle_h1(c).await,
            Inner::H2(x) => self.handle_h2(x).await,
        }
    }
}

impl Sidecar {
    /// HTTP/1.1 tunnel: the request head goes to the origin as received,
    /// bodies are relayed in their received framing.
    async fn handle_h1(&self, c: &mut Conn) -> Result<(), Error> {
        let replayed = match self.pooled() {
            Some(mut oc) => self.exchange_once(c, &mut oc, true).await?.then_some(oc),
            None => None,
        };
        let mut oc = match replayed {
            Some(oc) => oc,
            None => {
                let mut fresh = self.connect(&c.cfg).await?;
                if !self.exchange_once(c, &mut fresh, false).await? {
                    return Err(self.err(OriginFailure::Closed, "closed the connection before a response"));
                }
                fresh
            }
        };
        let framing = oc.head.framing();
        let until_close = framing == h1::Framing::UntilClose;
        // A close-delimited origin body can only be relayed close-delimited:
        // the tunnel ends with it (the worker redials).
        c.close_after |= until_close;
        let persist = if c.close_after { Persist::Close } else { Persist::KeepAlive };
        c.out.clear();
        h1::write_response_head(&mut c.out, oc.rb.data(), &oc.head, Version::Http11, persist, false);
        let origin_close = oc.head.conn.close;
        oc.rb.consume(oc.head.len);
        let mut dec = BodyDecoder::new(framing);
        c.resp = Resp::Done;
        let io = c.cfg.io_timeout;
        let wrote = Cell::new(false);
        let mut sink = H1Sink::new(&mut c.stream, &mut c.out, framing == h1::Framing::Chunked, io, &wrote).holding_head();
        relay(&mut H1Source::new(&mut oc.stream, &mut oc.rb, &mut dec, io), &mut sink).await.map_err(|e| {
            Error::Relay(match e {
                RelayError::Source(e) => e.into(),
                RelayError::Sink(e) => Fault::Io(e),
            })
        })?;
        let reusable = !origin_close && dec.is_done() && oc.rb.is_empty();
        self.put_back(oc, reusable);
        Ok(())
    }

    /// Reads the origin's final response head (interim 1xx responses end
    /// here: the lb already answered any Expect: 100-continue). A 101 is not
    /// interim: no request the sidecar forwards asks for an upgrade, so it is
    /// a broken origin (502) and the connection is dropped. `Ok(false)`:
    /// the connection was dead before any response byte and the request may
    /// be replayed on a fresh one.
    async fn read_head(&self, oc: &mut OriginConn, cfg: &Config, is_head: bool, replayable: bool) -> Result<bool, Error> {
        loop {
            match h1::parse_response(oc.rb.data(), &cfg.limits, is_head, &mut oc.head) {
                Ok(Parsed::Complete) if oc.head.status == 101 => {
                    return Err(self.err(OriginFailure::Protocol, "101 Switching Protocols to a request that asked for no upgrade"));
                }
                Ok(Parsed::Complete) if (100..200).contains(&oc.head.status) => {
                    oc.rb.consume(oc.head.len);
                    continue;
                }
                Ok(Parsed::Complete) => return Ok(true),
                Ok(Parsed::Partial) => {}
                Err(e) => return Err(self.err(OriginFailure::Protocol, format!("invalid response head: {e}"))),
            }
            match oc.rb.fill(&mut oc.stream, cfg.io_timeout).await {
                Ok(0) if replayable && oc.rb.is_empty() => return Ok(false),
                Ok(0) => return Err(self.err(OriginFailure::Closed, "closed the connection before a response")),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(self.err(OriginFailure::Timeout, "response timed out")),
                Err(_) if replayable && oc.rb.is_empty() => return Ok(false),
                Err(e) => return Err(self.err(OriginFailure::Closed, format!("reading the response: {e}"))),
            }
        }
    }

    /// Returns an origin connection to the pool when it can carry another request.
    fn put_back(&self, oc: OriginConn, reusable: bool) {
        if reusable {
            let mut idle = self.idle.borrow_mut();
            if idle.len() < POOL_MAX {
                idle.push(oc);
            }
        }
    }

    /// Writes an HTTP/1.1 request head for an h2 stream and sends it with its
    /// body; reads the response head. `Ok(false)`: a pooled connection was
    /// dead before any response byte and the (bodyless) request may be replayed.
    async fn h2_once(&self, x: &mut H2Exchange, oc: &mut OriginConn, head: &[u8], chunked: bool, reused: bool) -> Result<bool, Error> {
        let cfg = x.cfg.clone();
        let replayable = reused && x.body.is_end_stream();
        let mut out = std::mem::take(&mut oc.out);
        out.clear();
        out.extend_from_slice(head);
        let (res, out) = write_all(&mut oc.stream, out, cfg.io_timeout).await;
        match res {
            Ok(()) => {}
            Err(_) if replayable => return Ok(false),
            Err(e) => return Err(self.err(OriginFailure::Closed, format!("sending the request: {e}"))),
        }
        oc.out = out;
        // A stream its HEADERS ended has no body to relay (most requests:
        // no poll of the stream, no sink).
        if !x.body.is_end_stream() {
            let wrote = Cell::new(false);
            let mut sink = H1Sink::new(&mut oc.stream, &mut oc.out, chunked, cfg.io_timeout, &wrote);
            match relay(&mut H2Source::new(&mut x.body), &mut sink).await {
                Ok(()) => {}
                Err(RelayError::Source(e)) => return Err(e.into()),
                Err(RelayError::Sink(e)) => return Err(self.err(OriginFailure::Closed, format!("sending the request body: {e}"))),
            }
        }
        let is_head = x.parts.method == http::Method::HEAD;
        self.read_head(oc, &cfg, is_head, replayable).await
    }

    /// HTTP/2 tunnel: the stream becomes an HTTP/1.1 request to the origin,
    /// and the origin's response becomes the stream's response.
    async fn handle_h2(&self, x: &mut H2Exchange) -> Result<(), Error> {
        let cfg = x.cfg.clone();
        let mut head = Vec::with_capacity(512);
        let chunked = !x.body.is_end_stream() && !x.parts.headers.contains_key(http::header::CONTENT_LENGTH);
        h2io::write_h1_request_head(&mut head, &x.parts.method, &x.parts.uri, &x.parts.headers, chunked);

        let replayed = match self.pooled() {
            Some(mut oc) => self.h2_once(x, &mut oc, &head, chunked, true).await?.then_some(oc),
            None => None,
        };
        let mut oc = match replayed {
            Some(oc) => oc,
            None => {
                let mut fresh = self.connect(&cfg).await?;
                if !self.h2_once(x, &mut fresh, &head, chunked, false).await? {
                    return Err(self.err(OriginFailure::Closed, "closed the connection before a response"));
                }
                fresh
            }
        };
        let r = h2io::response_from_h1(oc.rb.data(), &oc.head)
            .map_err(|e| self.err(OriginFailure::Protocol, format!("response head not valid for HTTP/2: {e}")))?;
        let framing = oc.head.framing();
        let origin_close = oc.head.conn.close;
        oc.rb.consume(oc.head.len);
        let mut dec = BodyDecoder::new(framing);
        x.start_parts(r, dec.is_done())?;
        if !dec.is_done() {
            // The origin's body, its trailer section as HTTP/2 trailers.
            let wrote = Cell::new(false);
            let mut src = H1Source::new(&mut oc.stream, &mut oc.rb, &mut dec, cfg.io_timeout);
            relay(&mut src, &mut H2Sink::new(x, false, &wrote)).await.map_err(|e| match e {
                RelayError::Source(H1SourceError::Read(e)) => self.err(OriginFailure::Closed, format!("reading the response body: {e}")),
                RelayError::Source(H1SourceError::Body(e @ ptth_proto::BodyError::Truncated)) => self.err(OriginFailure::Closed, e),
                RelayError::Source(H1SourceError::Body(e)) => self.err(OriginFailure::Protocol, e),
                RelayError::Sink(e) => e,
            })?;
        }
        x.finish().await?;
        let reusable = !origin_close && framing != h1::Framing::UntilClose && oc.rb.is_empty();
        self.put_back(oc, reusable);
        Ok(())
    }
}
