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
use std::time::Instant;

use bytes::Bytes;
use monoio::io::{IntoPollIo, Splitable};
use monoio::net::TcpStream;
use ptth_proto::h1::{self, BodyDecoder, Parsed};
use ptth_proto::rt::h2io::{self, MAX_FRAME};
use ptth_proto::rt::io::{duplex, write_all, Duplex, Prefixed};

use crate::error::{Error, TunnelFault};
use crate::failure::{self, Decision, Failure};
use crate::percore::{self, Core};
use crate::stats;
use crate::tunnel::pool::{H1Tunnel, H2Tunnel, Lease};

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves an h2c connection whose first bytes (`buffered`) were already read.
pub(crate) async fn serve_h2c(core: Rc<Core>, stream: TcpStream, buffered: Vec<u8>, peer: SocketAddr, migrated: bool) {
    let Ok(io) = stream.into_poll_io() else { return };
    serve(core, Prefixed::new(buffered, io), peer, migrated).await;
}

/// Serves HTTP/2 on any byte stream: cleartext here, TLS (ALPN `h2`) later.
pub(crate) async fn serve<IO>(core: Rc<Core>, io: IO, peer: SocketAddr, migrated: bool)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + 'static,
{
    let p = &core.shared.cfg.profile;
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
    let mut conn = match monoio::time::timeout(p.header_timeout, b.handshake::<_, Bytes>(io)).await {
        Ok(Ok(c)) => c,
        _ => return,
    };
    let active = Rc::new(Cell::new(0u32));
    let mut draining = false;
    loop {
        let next = if draining {
            // GOAWAY went out; streams in flight finish. With none left, the
            // client gets a moment to read the GOAWAY, then the connection
            // closes even if it never answers (a dead peer must not hold the drain).
            monoio::select! {
                n = conn.accept() => n,
                _ = monoio::time::sleep(std::time::Duration::from_millis(500)), if active.get() == 0 => return,
            }
        } else {
            monoio::select! {
                n = conn.accept() => n,
                _ = core.stop.wait() => {
                    conn.graceful_shutdown();
                    draining = true;
                    continue;
                }
                _ = monoio::time::sleep(p.keepalive_timeout) => {
                    if active.get() == 0 {
                        // Idle past the keep-alive deadline: say goodbye.
                        conn.graceful_shutdown();
                        draining = true;
                    }
                    continue;
                }
            }
        };
        let (req, respond) = match next {
            Some(Ok(pair)) => pair,
            _ => return,
        };
        active.set(active.get() + 1);
        let (c, a) = (core.clone(), active.clone());
        percore::spawn_killable(&core, async move {
            handle(&c, req, respond, peer, migrated).await;
            a.set(a.get() - 1);
        });
    }
}

/// How one attempt on a tunnel ended.
enum Attempt {
    /// `reusable`: the tunnel may carry another request.
    Done { status: u16, reusable: bool },
    /// It failed; [`failure::decide`] says what follows.
    Failed(Failure),
}

async fn handle(
    core: &Rc<Core>,
    req: http::Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
    peer: SocketAddr,
    migrated: bool,
) {
    let (mut parts, mut body) = req.into_parts();
    let respond = RefCell::new(respond);
    let (host, target) = match prepare(core, &mut parts, peer) {
        Ok(ht) => ht,
        Err(e) => return send_error(core, &respond, &e),
    };
    let path = h1::target_path(&target).to_vec();
    let idempotent = h1::is_idempotent_method(parts.method.as_str().as_bytes());
    // `respond` is shared between the work and the reset watcher; borrowed
    // only between awaits.
    let mut avoid = None;
    let mut attempt = 0;
    // Decided once: after a failed attempt consumed the body, the stream
    // looks ended, but the request was not bodyless.
    let bodyless = body.is_end_stream();
    loop {
        let lease = match crate::tunnel::acquire::acquire(core, &host, &path, avoid).await {
            Ok(l) => l,
            Err(e) => return send_error(core, &respond, &e),
        };
        let slot = lease.slot();
        let h2_tunnel = match &lease {
            Lease::H2(t) => Some(t.clone()),
            Lease::H1(_) => None,
        };
        let work = async {
            match lease {
                Lease::H2(t) => (via_h2(core, &t, &parts, &mut body, &respond, slot).await, Lease::H2(t)),
                Lease::H1(t) => {
                    let (o, t) = via_h1(core, t, &parts, &mut body, &respond).await;
                    (o, Lease::H1(t))
                }
            }
        };
        // A client that resets its stream stops the work for it at once, so
        // streams opened and reset in a loop cost no more than their frames.
        // (Once the response head is sent, h2 answers poll_reset with an
        // error; from then on a reset shows as a failed send instead.)
        let reset = std::future::poll_fn(|cx| match respond.borrow_mut().poll_reset(cx) {
            std::task::Poll::Ready(Ok(_)) => std::task::Poll::Ready(()),
            _ => std::task::Poll::Pending,
        });
        let finished = monoio::select! {
            biased;
            r = work => Some(r),
            _ = reset => None,
        };
        let Some((outcome, lease)) = finished else {
            let mut pool = core.pool.borrow_mut();
            match h2_tunnel {
                // Dropping the stream's handles reset it on the tunnel too.
                Some(t) => pool.release(Lease::H2(t), true),
                // An h1 tunnel left mid-exchange cannot be reused.
                None => pool.forget(slot),
            }
            return;
        };
        match outcome {
            Attempt::Done { status, reusable } => {
                core.pool.borrow_mut().release(lease, reusable);
                core.stats().record_served(status, migrated);
                return;
            }
            Attempt::Failed(f) => {
                core.pool.borrow_mut().release(lease, false);
                let req = failure::Request { idempotent, bodyless, retries: attempt };
                match failure::decide(&f, &req) {
                    Decision::Retry => {
                        attempt += 1;
                        avoid = Some(slot);
                        stats::add(&core.stats().retries, 1);
                        tracing::info!(worker = %core.pool.borrow().worker_id(slot), attempt, "request sent again after: {}", f.err);
                        continue;
                    }
                    Decision::Answer => return send_error(core, &respond, &f.into_answer(&req)),
                    Decision::Abort => {
                        respond.borrow_mut().send_reset(h2::Reason::INTERNAL_ERROR);
                        return;
                    }
                }
            }
        }
    }
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: http::HeaderName = http::HeaderName::from_static("x-forwarded-host");

/// Checks and rewrites a client's request for the next hop, as the HTTP/1.1
/// path does: CONNECT is refused (501), the authority routed on is checked,
/// the path normalized (RFC 3986 §6.2.2), `Host` dropped in favour of
/// `:authority` (RFC 9113 §8.3.1), the client's own `Forwarded` /
/// `X-Forwarded-*` dropped unless it is a trusted proxy, and this hop's added.
/// Returns the host and the normalized target.
fn prepare(core: &Core, parts: &mut http::request::Parts, peer: SocketAddr) -> Result<(Vec<u8>, Vec<u8>), Error> {
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
    let policy = &core.shared.cfg.forwarding;
    if !policy.trusts(peer.ip()) {
        // Names made once: removing by a `&str` parses it on every request.
        for name in [&http::header::FORWARDED, &X_FORWARDED_FOR, &X_FORWARDED_PROTO, &X_FORWARDED_HOST] {
            h.remove(name);
        }
    }
    use std::fmt::Write as _;
    let mut forwarded = String::with_capacity(64 + host.len());
    let _ = write!(forwarded, "for=\"{peer}\";proto=http");
    if !host.is_empty() && host.len() <= 300 {
        let _ = write!(forwarded, ";host=\"{}\"", String::from_utf8_lossy(&host));
    }
    let value = |s: String| http::HeaderValue::try_from(s).map_err(|_| malformed("invalid :authority or Host"));
    h.append(http::header::FORWARDED, value(forwarded)?);
    if policy.x_forwarded {
        h.append(X_FORWARDED_FOR, value(peer.ip().to_string())?);
        h.append(X_FORWARDED_PROTO, http::HeaderValue::from_static("http"));
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

/// The response was under way: the stream is reset.
fn broken() -> Attempt {
    Attempt::Failed(Failure::client_gone())
}

/// Answers a stream with an error generated here.
fn send_error(core: &Core, respond: &RefCell<h2::server::SendResponse<Bytes>>, e: &Error) {
    let mut respond = respond.borrow_mut();
    let Some(status) = e.status() else {
        respond.send_reset(h2::Reason::INTERNAL_ERROR);
        return;
    };
    core.stats().count_status(status);
    if status >= 500 {
        tracing::warn!(status, "{e}");
    }
    let body = Bytes::from(format!("{status} {}: {e}\n", h1::reason(status)));
    let mut r = http::Response::builder().status(status).header(http::header::CONTENT_TYPE, "text/plain");
    if e.is_retryable() {
        r = r.header(http::header::RETRY_AFTER, core.shared.cfg.profile.retry_after_s);
    }
    let Ok(r) = r.header(http::header::CONTENT_LENGTH, body.len()).body(()) else { return };
    if let Ok(mut s) = respond.send_response(r, false) {
        // Small: fits the initial window, no need to wait for capacity.
        let _ = s.send_data(body, true);
    }
}

/// Relays the stream as a stream on an h2 tunnel.
async fn via_h2(
    core: &Core,
    t: &H2Tunnel,
    parts: &http::request::Parts,
    body: &mut h2::RecvStream,
    respond: &RefCell<h2::server::SendResponse<Bytes>>,
    slot: usize,
) -> Attempt {
    let p = &core.shared.cfg.profile;
    let worker = core.pool.borrow().worker_id(slot);
    let tunnel_err = |fault, why: String| Error::Tunnel { worker: worker.to_string(), fault, why };
    let mut req = http::Request::builder().method(parts.method.clone()).uri(parts.uri.clone());
    for (k, v) in &parts.headers {
        req = req.header(k, v);
    }
    let Ok(req) = req.body(()) else {
        return Attempt::Failed(Failure::not_sent(tunnel_err(TunnelFault::Unusable, "request not valid for HTTP/2".into())));
    };
    let end = body.is_end_stream();
    let mut send = t.send.borrow().clone();
    let (resp, mut tx) = match send.send_request(req, end) {
        Ok(pair) => pair,
        Err(e) => {
            // Refused before anything went out (the tunnel is closing).
            t.drain();
            return Attempt::Failed(Failure::not_sent(tunnel_err(TunnelFault::Unusable, e.to_string())));
        }
    };
    let upload = async {
        let mut ended = end;
        while let Some(d) = h2io::recv_data(body).await {
            let d = d.map_err(|e| e.to_string())?;
            // The last DATA frame carries END_STREAM itself (no empty frame after).
            ended = body.is_end_stream();
            h2io::send_data(&mut tx, d, ended).await.map_err(|e| e.to_string())?;
        }
        if !ended {
            // Request trailers go on as trailers (RFC 9113 §8.1).
            match body.trailers().await.map_err(|e| e.to_string())? {
                Some(t) => tx.send_trailers(t).map_err(|e| e.to_string())?,
                None => h2io::send_data(&mut tx, Bytes::new(), true).await.map_err(|e| e.to_string())?,
            }
        }
        Ok::<(), String>(())
    };
    let download = async {
        let response = match monoio::time::timeout(p.response_timeout, resp).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Attempt::Failed(crate::h2_tunnel::stream_failed(tunnel_err(TunnelFault::Stream, e.to_string()), &e)),
            Err(_) => {
                return Attempt::Failed(Failure::sent(Error::ResponseTimeout { worker: worker.to_string(), after: p.response_timeout }))
            }
        };
        let (rparts, mut rbody) = response.into_parts();
        let status = rparts.status.as_u16();
        let end = rbody.is_end_stream();
        let sent = respond.borrow_mut().send_response(http::Response::from_parts(rparts, ()), end);
        let mut out = match sent {
            Ok(s) => s,
            Err(_) => return broken(),
        };
        let mut ended = end;
        while let Some(d) = h2io::recv_data(&mut rbody).await {
            let Ok(d) = d else { return broken() };
            ended = rbody.is_end_stream();
            if h2io::send_data(&mut out, d, ended).await.is_err() {
                return broken();
            }
        }
        if !ended {
            let sent = match rbody.trailers().await {
                Ok(Some(t)) => out.send_trailers(t).is_ok(),
                Ok(None) => h2io::send_data(&mut out, Bytes::new(), true).await.is_ok(),
                Err(_) => false,
            };
            if !sent {
                return broken();
            }
        }
        Attempt::Done { status, reusable: true }
    };
    if end {
        return download.await;
    }
    match duplex(upload, download).await {
        Duplex::Both((), d) | Duplex::AnsweredEarly(d) => d,
        Duplex::UploadFailed(e) => Attempt::Failed(Failure::sent(tunnel_err(TunnelFault::Stream, format!("request body: {e}")))),
    }
}

/// Relays the stream as an HTTP/1.1 request on an h1 tunnel.
async fn via_h1(
    core: &Core,
    mut t: H1Tunnel,
    parts: &http::request::Parts,
    body: &mut h2::RecvStream,
    respond: &RefCell<h2::server::SendResponse<Bytes>>,
) -> (Attempt, H1Tunnel) {
    let p = &core.shared.cfg.profile;
    let worker = core.pool.borrow().worker_id(t.slot);
    let tunnel_err = |fault, why: String| Error::Tunnel { worker: worker.to_string(), fault, why };
    let end = body.is_end_stream();
    let chunked = !end && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
    let mut out = std::mem::take(&mut t.out);
    out.clear();
    h2io::write_h1_request_head(&mut out, &parts.method, &parts.uri, &parts.headers, chunked);
    let is_head = parts.method == http::Method::HEAD;
    let H1Tunnel { stream, rb: mut trb, out: _, head: mut thead, slot, idle_since, ticket } = t;
    let (mut tr, mut tw) = stream.into_split();
    let sent_head = Cell::new(false);
    let upload = async {
        // The head alone first: a failure there means nothing was acted on.
        let (res, o) = write_all(&mut tw, out, p.io_timeout).await;
        res.map_err(|e| e.to_string())?;
        sent_head.set(true);
        let (res, o) = h2io::relay_h2_body_to_h1(body, &mut tw, o, chunked, p.io_timeout, &Cell::new(false)).await;
        match res {
            Ok(()) => Ok::<Vec<u8>, String>(o),
            Err(h2io::ToH1Error::Recv(e)) => Err(e.to_string()),
            Err(h2io::ToH1Error::Write(e)) => Err(e.to_string()),
        }
    };
    let download = async {
        let deadline = Instant::now() + p.response_timeout;
        loop {
            match h1::parse_response(trb.data(), &p.limits, is_head, &mut thead) {
                Ok(Parsed::Complete) if thead.status == 101 => {
                    // No upgrade was asked for (h2 has none): a 101 is a
                    // broken worker, not an interim response.
                    let why = "101 Switching Protocols to a request that asked for no upgrade".into();
                    return (Attempt::Failed(Failure::answered(Error::BadResponse { worker: worker.to_string(), why })), false);
                }
                Ok(Parsed::Complete) if thead.status < 200 => {
                    trb.consume(thead.len);
                    continue;
                }
                Ok(Parsed::Complete) => break,
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    return (
                        Attempt::Failed(Failure::answered(Error::BadResponse { worker: worker.to_string(), why: e.to_string() })),
                        false,
                    )
                }
            }
            let nothing_yet = trb.is_empty();
            match trb.fill(&mut tr, deadline.saturating_duration_since(Instant::now())).await {
                Ok(0) => {
                    let err = tunnel_err(TunnelFault::Closed, "closed before the response".into());
                    return (Attempt::Failed(Failure::lost(err, nothing_yet)), false);
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    let err = Error::ResponseTimeout { worker: worker.to_string(), after: p.response_timeout };
                    return (Attempt::Failed(Failure::sent(err)), false);
                }
                Err(e) => return (Attempt::Failed(Failure::lost(tunnel_err(TunnelFault::Io, e.to_string()), nothing_yet)), false),
            }
        }
        let Ok(r) = h2io::response_from_h1(trb.data(), &thead) else {
            let why = "head not valid for HTTP/2".into();
            return (Attempt::Failed(Failure::answered(Error::BadResponse { worker: worker.to_string(), why })), false);
        };
        let status = thead.status;
        let framing = thead.framing();
        let tunnel_close = thead.conn.close;
        trb.consume(thead.len);
        let mut dec = BodyDecoder::new(framing);
        let sent = respond.borrow_mut().send_response(r, dec.is_done());
        let mut s = match sent {
            Ok(s) => s,
            Err(_) => return (broken(), false),
        };
        // The response body, trailers and a close-delimited end included.
        if !dec.is_done() && h2io::relay_h1_body_to_h2(&mut tr, &mut trb, &mut dec, &mut s, p.io_timeout).await.is_err() {
            return (broken(), false);
        }
        let reusable = !tunnel_close && framing != h1::Framing::UntilClose && trb.is_empty();
        (Attempt::Done { status, reusable }, reusable)
    };
    let (attempt, reusable, out) = match duplex(upload, download).await {
        Duplex::Both(o, (a, r)) => (a, r, o),
        Duplex::UploadFailed(e) => {
            // A head that did not go out whole cannot have been acted on.
            let err = tunnel_err(TunnelFault::Io, e);
            let f = if sent_head.get() { Failure::sent(err) } else { Failure::not_sent(err) };
            (Attempt::Failed(f), false, Vec::new())
        }
        // The worker answered before the body was all sent: the tunnel is
        // left mid-request and cannot be reused.
        Duplex::AnsweredEarly((a, _)) => (a, false, Vec::new()),
    };
    let stream = tr.reunite(tw).expect("halves of one tunnel stream");
    let t = H1Tunnel { stream, rb: trb, out, head: thead, slot, idle_since, ticket };
    // A tunnel whose exchange did not end cleanly must not carry another request.
    let attempt = match attempt {
        Attempt::Done { status, .. } => Attempt::Done { status, reusable },
        a => a,
    };
    (attempt, t)
}
