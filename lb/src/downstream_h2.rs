//! HTTP/2 clients: h2c with prior knowledge on the client listener.
//!
//! Place in the request path: `proxy::serve` sees the HTTP/2 connection
//! preface (RFC 9113 §3.4) as the first bytes of a connection and hands the
//! connection here, so one port serves HTTP/1.1 and h2c. Each stream is routed
//! like an HTTP/1.1 request and goes out on a tunnel of either kind: as a
//! stream on an h2 tunnel, or as an HTTP/1.1 request on an h1 tunnel.
//!
//! The `h2` crate validates each request (RFC 9113 §8.2: connection-specific
//! fields, uppercase names, pseudo-header rules → stream error) and bounds the
//! work a client can cause: concurrent streams, header list size, and streams
//! reset before they are accepted (rapid reset).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use monoio::net::TcpStream;
use ptth_proto::h1;
use ptth_proto::rt::body::{AnySource, H2Source};
use ptth_proto::rt::h2io::MAX_FRAME;

use crate::attempts::{self, Ended, Outcome};
use crate::error::Error;
use crate::exchange::{self, ReqHead, Responder};
use crate::percore::{self, Core};
use crate::tunnel::acquire::For;

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves HTTP/2 on any byte stream: cleartext here, TLS (ALPN `h2`) later.
/// `scheme`: how the client reached us, `http` (h2c) or `https` (h2 by ALPN).
pub(crate) async fn serve<IO>(core: Rc<Core>, io: IO, peer: SocketAddr, migrated: bool, scheme: &'static str)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let cfg = core.cfg();
    let p = &cfg.profile;
    let mut b = h2::server::Builder::new();
    b.initial_window_size(p.h2_windows.stream)
        .initial_connection_window_size(p.h2_windows.connection)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(p.h2_max_streams)
        .max_header_list_size(p.limits.max_head as u32)
        // Rapid reset (CVE-2023-44487): streams reset before we accept them,
        // and streams we must reset, are bounded; past the bounds the
        // connection gets GOAWAY.
        .max_pending_accept_reset_streams(p.h2_max_streams as usize)
        .max_local_error_reset_streams(Some(1024));
    let mut conn = match ptth_proto::rt::deadline::within(p.header_timeout, b.handshake::<_, Bytes>(io)).await {
        Ok(Ok(c)) => c,
        _ => return,
    };
    let activity = Rc::new(Activity { active: Cell::new(0), idle_since: Cell::new(Instant::now()) });
    // Formatted once for every stream's forwarding fields.
    let addr = Rc::new(h1::ClientAddr::new(peer));
    // Made once for the connection, not once per stream: each would register
    // a waker slot or a timer for every request.
    let mut stop = core.stop.wait();
    let mut idle = std::pin::pin!(monoio::time::sleep(p.keepalive_timeout));
    let mut draining = false;
    loop {
        let next = if draining {
            // GOAWAY went out; streams in flight finish. With none left, the
            // client gets a moment to read the GOAWAY, then the connection
            // closes even if it never answers (a dead peer must not hold the drain).
            monoio::select! {
                n = conn.accept() => n,
                _ = monoio::time::sleep(Duration::from_millis(500)), if activity.active.get() == 0 => return,
            }
        } else {
            monoio::select! {
                biased;
                n = conn.accept() => n,
                _ = &mut stop => {
                    conn.graceful_shutdown();
                    draining = true;
                    continue;
                }
                _ = idle.as_mut() => {
                    // The timer runs from the last time the connection went
                    // idle; it fires early when streams kept it busy since.
                    let now = Instant::now();
                    match activity.idle_for(now) {
                        Some(d) if d >= p.keepalive_timeout => {
                            // Idle past the keep-alive deadline: say goodbye.
                            conn.graceful_shutdown();
                            draining = true;
                        }
                        Some(d) => idle.as_mut().reset((now + (p.keepalive_timeout - d)).into()),
                        None => idle.as_mut().reset((now + p.keepalive_timeout).into()),
                    }
                    continue;
                }
            }
        };
        let (req, respond) = match next {
            Some(Ok(pair)) => pair,
            _ => return,
        };
        activity.active.set(activity.active.get() + 1);
        let (c, a, addr) = (core.clone(), activity.clone(), addr.clone());
        percore::spawn_killable(&core, async move {
            handle(&c, req, respond, peer, &addr, migrated, scheme).await;
            a.ended();
        });
    }
}

/// The streams of one connection in flight, for the keep-alive deadline.
struct Activity {
    active: Cell<u32>,
    /// When `active` last fell to zero (one clock read per idle spell, not
    /// per stream).
    idle_since: Cell<Instant>,
}

impl Activity {
    fn ended(&self) {
        let n = self.active.get() - 1;
        self.active.set(n);
        if n == 0 {
            self.idle_since.set(Instant::now());
        }
    }

    /// How long the connection has been idle; `None` while a stream runs.
    fn idle_for(&self, now: Instant) -> Option<Duration> {
        (self.active.get() == 0).then(|| now.saturating_duration_since(self.idle_since.get()))
    }
}

async fn handle(
    core: &Rc<Core>,
    req: http::Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    peer: SocketAddr,
    addr: &h1::ClientAddr,
    migrated: bool,
    scheme: &'static str,
) {
    let (mut parts, mut body) = req.into_parts();
    // `respond` is shared between the work and the reset watcher; borrowed
    // only between awaits.
    let respond = RefCell::new(respond);
    let (host, target) = match prepare(core, &mut parts, peer, addr, scheme) {
        Ok(ht) => ht,
        Err(e) => return send_error(core, &respond, &e),
    };
    // Decided once: after a failed attempt consumed the body, the stream
    // looks ended, but the request was not bodyless.
    let bodyless = body.is_end_stream();
    let urgency = parts.headers.get(PRIORITY).and_then(|v| ptth_proto::sf::priority_urgency(v.as_bytes()));
    let req = attempts::Request {
        to: For { host: &host, path: h1::target_path(&target), method: parts.method.as_str().as_bytes(), urgency },
        idempotent: h1::is_idempotent_method(parts.method.as_str().as_bytes()),
        bodyless,
        is_head: parts.method == http::Method::HEAD,
        migrated,
    };
    // Pinned where it is made: moved into the `select!` below, it would be
    // held twice in this stream's task.
    // A client leaving resets its stream: the reset watch below ends the
    // work, queue wait included.
    let mut work = std::pin::pin!(attempts::serve(core, &req, std::future::pending, async |x, lease| {
        let src: AnySource<'_, TcpStream> = if bodyless { AnySource::Empty } else { AnySource::H2(H2Source::new(&mut body)) };
        let resp: Responder<'_, TcpStream> = Responder::H2 { respond: &respond };
        // In one heap block: kept inline, the exchange's state (about 4.8 KB)
        // would be copied into every stream's task as it is spawned.
        Box::pin(exchange::run(x, ReqHead::H2 { parts: &parts }, src, resp, lease)).await
    }));
    // A client that resets its stream stops the work for it at once, so
    // streams opened and reset in a loop cost no more than their frames.
    // (Once the response head is sent, h2 answers poll_reset with an error;
    // from then on a reset shows as a failed send instead.) The lease goes
    // back to the pool as the work is dropped.
    let reset = std::future::poll_fn(|cx| match respond.borrow_mut().poll_reset(cx) {
        std::task::Poll::Ready(Ok(_)) => std::task::Poll::Ready(()),
        _ => std::task::Poll::Pending,
    });
    let ended = monoio::select! {
        biased;
        e = work.as_mut() => e,
        _ = reset => return,
    };
    match ended {
        Ended::Served(_) => {}
        Ended::NoLease(e) | Ended::Answer(e) => send_error(core, &respond, &e),
        Ended::Abort => respond.borrow_mut().send_reset(h2::Reason::INTERNAL_ERROR),
    }
}

/// RFC 9218 §5.
const PRIORITY: http::HeaderName = http::HeaderName::from_static("priority");
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");

/// Checks and rewrites a client's request for the next hop, as the HTTP/1.1
/// path does: CONNECT is refused (501), the authority routed on is checked,
/// the path normalized (RFC 3986 §6.2.2), `Host` dropped in favour of
/// `:authority` (RFC 9113 §8.3.1), the client's own `Forwarded` /
/// `X-Forwarded-*` dropped unless it is a trusted proxy, and this hop's added.
/// Returns the host and the normalized target.
fn prepare(
    core: &Core,
    parts: &mut http::request::Parts,
    peer: SocketAddr,
    addr: &h1::ClientAddr,
    scheme: &'static str,
) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let malformed = |why| Error::Head(ptth_proto::HeadError::Malformed(why));
    if parts.method == http::Method::CONNECT {
        // Not relayed yet (RFC 9113 §8.5); never forwarded as a plain request.
        return Err(Error::NotImplemented("CONNECT"));
    }
    let host: Vec<u8> = match (parts.uri.authority(), parts.headers.get(http::header::HOST)) {
        (Some(a), _) => a.as_str().as_bytes().to_vec(),
        (None, Some(h)) => h.as_bytes().to_vec(),
        (None, None) => Vec::new(),
    };
    if !h1::is_valid_authority(&host) {
        return Err(malformed("invalid :authority or Host"));
    }
    let raw = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut target = Vec::with_capacity(raw.len());
    h1::write_normalized_target(&mut target, raw.as_bytes())?;
    // The common case (an already normal path with :authority) keeps the
    // client's URI; otherwise it is rebuilt from the checked parts.
    let unchanged = target == raw.as_bytes() && parts.uri.authority().is_some_and(|a| a.as_str().as_bytes() == host.as_slice());
    if !unchanged {
        rebuild_uri(parts, &host, &target)?;
    }
    let h = &mut parts.headers;
    h.remove(http::header::HOST);
    let cfg = core.cfg();
    let policy = &cfg.forwarding;
    if !policy.trusts(peer.ip()) {
        // Names made once: removing by a `&str` parses it on every request.
        for name in [&http::header::FORWARDED, &X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST] {
            h.remove(name);
        }
    }
    use std::fmt::Write as _;
    let mut forwarded = String::with_capacity(64 + host.len());
    let _ = write!(forwarded, "for=\"{}\";proto={scheme}", addr.node);
    if !host.is_empty() && host.len() <= 300 {
        let _ = write!(forwarded, ";host=\"{}\"", String::from_utf8_lossy(&host));
    }
    let value = |s: String| http::HeaderValue::try_from(s).map_err(|_| malformed("invalid :authority or Host"));
    h.append(http::header::FORWARDED, value(forwarded)?);
    if policy.x_forwarded {
        h.append(X_FORWARDED_FOR, value(addr.ip.clone())?);
        h.append(X_FORWARDED_PROTO, http::HeaderValue::from_static(scheme));
    }
    Ok((host, target))
}

/// The request's URI from its checked authority and normalized target.
fn rebuild_uri(parts: &mut http::request::Parts, host: &[u8], target: &[u8]) -> Result<(), Error> {
    let malformed = |why| Error::Head(ptth_proto::HeadError::Malformed(why));
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(parts.uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP));
    uri.authority = Some(if host.is_empty() {
        http::uri::Authority::from_static("localhost")
    } else {
        http::uri::Authority::try_from(host).map_err(|_| malformed("invalid :authority or Host"))?
    });
    uri.path_and_query = Some(http::uri::PathAndQuery::try_from(target).map_err(|_| malformed("invalid :path"))?);
    parts.uri = http::Uri::from_parts(uri).map_err(|_| malformed("invalid request target"))?;
    Ok(())
}

/// Answers a stream with an error generated here.
fn send_error(core: &Core, respond: &RefCell<h2::server::SendResponse<Bytes>>, e: &Error) {
    let mut respond = respond.borrow_mut();
    let Some(status) = e.status() else {
        respond.send_reset(h2::Reason::INTERNAL_ERROR);
        return;
    };
    attempts::record(core, Outcome::Answered { status, err: e, client: None });
    let body = Bytes::from(format!("{status} {}: {e}\n", h1::reason(status)));
    let mut r = http::Response::builder().status(status).header(http::header::CONTENT_TYPE, "text/plain");
    if e.is_retryable() {
        r = r.header(http::header::RETRY_AFTER, core.cfg().profile.retry_after_s);
    }
    let Ok(r) = r.header(http::header::CONTENT_LENGTH, body.len()).body(()) else { return };
    if let Ok(mut s) = respond.send_response(r, false) {
        // Small: fits the initial window, no need to wait for capacity.
        let _ = s.send_data(body, true);
    }
}
