//! HTTP/2 tunnels at the lb: the setup's other half (client preface, the
//! connection task with PING liveness) and one HTTP/1.1 client request sent
//! as one h2 stream.
//!
//! Place in the request path: proxy (client side, HTTP/1.1) → **a stream on
//! an h2 tunnel** → worker. The worker's SETTINGS_MAX_CONCURRENT_STREAMS
//! bounds the streams per tunnel (checked in `tunnel::pool`); the first
//! GOAWAY stops new streams on the tunnel, and streams the worker did not
//! process (above its last stream id, or refused) are retried elsewhere
//! (RFC 9113 §8.7).

use std::io;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use monoio::io::{AsyncWriteRent, IntoPollIo, Splitable};
use monoio::net::TcpStream;
use ptth_proto::h1::{self, BodyDecoder, Framing, Parsed, RequestHead, Version};
use ptth_proto::rt::h2io::{self, BodyRelayError, Windows, MAX_FRAME};
use ptth_proto::rt::io::{duplex, write_all, Duplex, Prefixed, ReadBuf};
use ptth_proto::BodyError;

use crate::error::{Error, TunnelFault};
use crate::failure::{Failure, Stage};
use crate::percore::Core;
use crate::tunnel::pool::H2Tunnel;

/// The byte stream under an h2 tunnel.
pub(crate) type H2Io = Prefixed<monoio::net::tcp::stream_poll::TcpStreamPoll>;

/// Completes the client side of an h2 tunnel after the `101`: sends the
/// preface and SETTINGS, then runs the connection (with a PING every
/// `ping_every`, each answered within `ping_timeout`) until it ends.
pub(crate) async fn handshake(
    stream: TcpStream,
    windows: Windows,
) -> Result<(h2::client::SendRequest<Bytes>, h2::client::Connection<H2Io, Bytes>), io::Error> {
    let io = Prefixed::new(Vec::new(), stream.into_poll_io()?);
    h2::client::Builder::new()
        .initial_window_size(windows.stream)
        .initial_connection_window_size(windows.connection)
        .max_frame_size(MAX_FRAME)
        .enable_push(false)
        .handshake(io)
        .await
        .map_err(io::Error::other)
}

/// Drives an h2 tunnel's connection until it closes, a PING goes unanswered,
/// or the core is killed; then tells the pool.
pub(crate) async fn drive(core: Rc<Core>, mut conn: h2::client::Connection<H2Io, Bytes>, tunnel: Rc<H2Tunnel>, worker: Rc<str>) {
    let p = &core.shared.cfg.profile;
    let mut pinger = conn.ping_pong();
    let kill = core.kill.clone();
    let mut conn = std::pin::pin!(conn);
    let why = loop {
        let tick = monoio::time::sleep(p.ping_every);
        monoio::select! {
            r = &mut conn => break r.err().map(|e| e.to_string()),
            _ = kill.wait() => break None,
            _ = tick => {
                let Some(pp) = pinger.as_mut() else { continue };
                // The connection must keep being driven while we wait for the pong.
                let pong = monoio::time::timeout(p.ping_timeout, pp.ping(h2::Ping::opaque()));
                monoio::select! {
                    r = &mut conn => break r.err().map(|e| e.to_string()),
                    _ = kill.wait() => break None,
                    r = pong => match r {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break Some(format!("ping failed: {e}")),
                        Err(_) => break Some(format!("no PING answer within {:?}", p.ping_timeout)),
                    },
                }
            }
        }
    };
    if let Some(why) = why {
        tracing::info!(core = core.id, worker = %worker, "h2 tunnel closed: {why}");
    }
    core.pool.borrow_mut().h2_closed(&tunnel);
}

/// What the caller needs about the client connection.
pub(crate) struct ClientSide<'a> {
    pub(crate) stream: &'a mut Option<TcpStream>,
    pub(crate) rb: &'a mut ReadBuf,
    pub(crate) out: &'a mut Vec<u8>,
    /// The forwarded HTTP/1.1 head, re-read to build the h2 request.
    pub(crate) fwd: &'a [u8],
    pub(crate) scratch: &'a mut RequestHead,
}

pub(crate) struct Sent {
    pub(crate) status: u16,
    pub(crate) client_close: bool,
}

/// A stream that failed before its response head: refused by the worker
/// (RFC 9113 §8.7: REFUSED_STREAM, or a GOAWAY covering the stream, means it
/// did no work for it), or lost with the worker maybe having acted. The body
/// is not held here; the caller that holds it says so.
pub(crate) fn stream_failed(err: Error, e: &h2::Error) -> Failure {
    if e.reason() == Some(h2::Reason::REFUSED_STREAM) || e.is_go_away() {
        Failure::refused(err, false)
    } else {
        Failure::sent(err)
    }
}

/// Builds the h2 request from the forwarded HTTP/1.1 head.
fn build_request(fwd: &[u8], scratch: &mut RequestHead) -> Result<http::Request<()>, String> {
    let limits = h1::Limits { max_request_line: usize::MAX, max_head: usize::MAX, max_headers: h1::MAX_HEADERS };
    match h1::parse_request(fwd, &limits, scratch) {
        Ok(Parsed::Complete) => {}
        _ => return Err("forwarded head does not parse".into()),
    }
    // One copy of the head; every field value, the authority and the path
    // are slices of it (no allocation per field).
    let shared = Bytes::copy_from_slice(fwd);
    let target = scratch.target.clone();
    // Origin form, or `*` for OPTIONS (RFC 9113 §8.3.1 allows it as :path).
    let t = &fwd[target.clone()];
    let uri = if t.starts_with(b"/") || t == b"*" {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(match scratch.host.as_ref().filter(|r| !r.is_empty()) {
            Some(r) => http::uri::Authority::from_maybe_shared(shared.slice(r.clone())).map_err(|e| e.to_string())?,
            None => http::uri::Authority::from_static("localhost"),
        });
        parts.path_and_query = Some(http::uri::PathAndQuery::from_maybe_shared(shared.slice(target)).map_err(|e| e.to_string())?);
        http::Uri::from_parts(parts).map_err(|e| e.to_string())?
    } else {
        http::Uri::from_maybe_shared(shared.slice(target)).map_err(|e| e.to_string())?
    };
    let mut req = http::Request::new(());
    *req.method_mut() = http::Method::from_bytes(scratch.method(fwd)).map_err(|e| e.to_string())?;
    *req.uri_mut() = uri;
    let headers = req.headers_mut();
    headers.reserve(scratch.fields.len());
    for f in &scratch.fields {
        let name = &fwd[f.name.clone()];
        if h2io::is_h1_only(name) {
            continue;
        }
        let name = http::HeaderName::from_bytes(name).map_err(|e| e.to_string())?;
        let value = http::HeaderValue::from_maybe_shared(shared.slice(f.value.clone())).map_err(|e| e.to_string())?;
        headers.append(name, value);
    }
    Ok(req)
}

/// Reads a small request body whole into the client's read buffer before
/// the request goes out, so it is held for replay if the worker refuses the
/// stream unprocessed (profile `buffers.replay_max`). A larger body, or one
/// that stops arriving, is left to stream as usual.
async fn read_whole_if_small(
    c: &mut ClientSide<'_>,
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
        let mut probe = dec.clone();
        match probe.scan(c.rb.data()) {
            Ok(_) if !probe.is_done() && c.rb.data().len() < max => {}
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

/// Sends one client request as a stream on `t` and relays the response.
pub(crate) async fn exchange(
    core: &Core,
    mut c: ClientSide<'_>,
    t: &H2Tunnel,
    dec: &mut BodyDecoder,
    req: &crate::request::ReqInfo,
    worker: &str,
) -> Result<Sent, Failure> {
    let (version, is_head, client_wants_close, req_framing) = (req.version, req.is_head, req.close, req.framing);
    let p = &core.shared.cfg.profile;
    let tunnel_err = |fault, why: String| Error::Tunnel { worker: worker.to_string(), fault, why };
    let req = build_request(c.fwd, c.scratch).map_err(|e| Failure::not_sent(tunnel_err(TunnelFault::Unusable, e)))?;
    let has_body = !dec.is_done();
    if has_body {
        read_whole_if_small(&mut c, dec, req_framing, p.replay_max, p.io_timeout).await?;
    }
    // A body that has already arrived whole is sent from a copy and left in
    // the read buffer until the worker answers: if the worker turns out not
    // to have processed the stream (GOAWAY race), the request, body and all,
    // can go to another tunnel (RFC 9113 §8.7).
    let buffered = if has_body {
        let mut probe = dec.clone();
        match probe.scan(c.rb.data()) {
            Ok(n) if probe.is_done() => {
                let mut payload = Vec::with_capacity(n);
                let mut section = Vec::new();
                let mut d = dec.clone();
                let mut at = 0;
                while at < n {
                    let in_trailers = d.in_trailers();
                    let Ok(step) = d.decode(&c.rb.data()[at..n]) else { break };
                    if in_trailers {
                        section.extend_from_slice(&c.rb.data()[at..at + step.consumed]);
                    }
                    payload.extend_from_slice(&c.rb.data()[at..][step.data.clone()]);
                    at += step.consumed;
                }
                Some((n, Bytes::from(payload), h2io::trailers_from_h1(&section), probe))
            }
            _ => None,
        }
    } else {
        None
    };
    let mut send = t.send.borrow().clone();
    let (resp, mut body_tx) = match send.send_request(req, !has_body) {
        Ok(pair) => pair,
        Err(e) => {
            // Refused before anything went out (the tunnel is closing).
            t.drain();
            return Err(Failure::not_sent(tunnel_err(TunnelFault::Unusable, e.to_string())));
        }
    };
    if let Some((n, payload, trailers, done)) = buffered {
        let sent = if trailers.is_empty() {
            h2io::send_data(&mut body_tx, payload, true).await
        } else {
            match h2io::send_data(&mut body_tx, payload, false).await {
                Ok(()) => body_tx.send_trailers(trailers),
                Err(e) => Err(e),
            }
        };
        let r = match sent {
            Err(e) => Err(stream_failed(tunnel_err(TunnelFault::Stream, e.to_string()), &e)),
            Ok(()) => match c.stream.as_mut() {
                None => Err(Failure::client_gone()),
                Some(cs) => {
                    let started = std::cell::Cell::new(false);
                    relay_response(core, resp, cs, c.out, version, is_head, client_wants_close, worker, &started).await
                }
            },
        };
        match r {
            // Nothing reached the client: the body stays in the buffer, whole,
            // and the request can be sent again if the failure model allows.
            Err(mut f) if matches!(f.stage, Stage::NotSent | Stage::Sent) => {
                f.body_held = true;
                return Err(f);
            }
            r => {
                c.rb.consume(n);
                *dec = done;
                return r;
            }
        }
    }
    let Some(client) = c.stream.take() else { return Err(Failure::client_gone()) };
    let (mut cr, mut cw) = client.into_split();
    let io = p.io_timeout;
    let result = {
        let upload = async {
            // The request body: payload out of the client's framing into
            // DATA frames, its trailer section into trailers.
            h2io::relay_h1_body_to_h2(&mut cr, c.rb, dec, &mut body_tx, io).await.map_err(|e| match e {
                BodyRelayError::Read(e) => Failure::relayed(Error::ClientIo(e)),
                // The client closed mid-body: nobody to answer.
                BodyRelayError::Body(BodyError::Truncated) => Failure::client_gone(),
                BodyRelayError::Body(e) => Failure::sent(Error::ClientBody(e)),
                BodyRelayError::Send(e) => stream_failed(tunnel_err(TunnelFault::Stream, e.to_string()), &e),
            })
        };
        let started = std::cell::Cell::new(false);
        let download = relay_response(core, resp, &mut cw, c.out, version, is_head, client_wants_close, worker, &started);
        if has_body {
            match duplex(upload, download).await {
                Duplex::Both((), d) => d,
                // The body has partly gone out: whatever the worker did, it
                // is not whole any more (the failure says body_held = false).
                Duplex::UploadFailed(f) if started.get() => Err(Failure::relayed(f.err)),
                Duplex::UploadFailed(f) => Err(f),
                Duplex::AnsweredEarly(d) => d.map(|s| Sent { client_close: true, ..s }),
            }
        } else {
            download.await
        }
    };
    *c.stream = cr.reunite(cw).ok();
    result
}

/// Waits for the response head (response deadline), then writes it and the
/// body to the HTTP/1.1 client.
#[allow(clippy::too_many_arguments)]
async fn relay_response<CW: AsyncWriteRent>(
    core: &Core,
    resp: h2::client::ResponseFuture,
    cw: &mut CW,
    out: &mut Vec<u8>,
    version: Version,
    is_head: bool,
    close: bool,
    worker: &str,
    started: &std::cell::Cell<bool>,
) -> Result<Sent, Failure> {
    let p = &core.shared.cfg.profile;
    let tunnel_err = |fault, why: String| Error::Tunnel { worker: worker.to_string(), fault, why };
    let response = match monoio::time::timeout(p.response_timeout, resp).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(stream_failed(tunnel_err(TunnelFault::Stream, e.to_string()), &e)),
        Err(_) => return Err(Failure::sent(Error::ResponseTimeout { worker: worker.to_string(), after: p.response_timeout })),
    };
    let (parts, mut body) = response.into_parts();
    let status = parts.status.as_u16();
    let bodyless = is_head || status == 204 || status == 304 || (100..200).contains(&status);
    let length = parts.headers.get(http::header::CONTENT_LENGTH).is_some();
    // Framing toward the client: the worker's Content-Length when it gave
    // one, chunked otherwise (HTTP/1.0: close-delimited).
    let chunked = !bodyless && !length && !body.is_end_stream() && version == Version::Http11;
    let until_close = !bodyless && !length && !body.is_end_stream() && version == Version::Http10;
    // Shutting down: this is the connection's last response.
    let draining = crate::percore::draining(&core.shared) || core.stop.is_fired();
    let client_close = close || until_close || draining;
    out.clear();
    use std::io::Write;
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status, parts.status.canonical_reason().unwrap_or(""));
    h2io::write_h1_fields(out, &parts.headers);
    if !bodyless && !length && body.is_end_stream() {
        out.extend_from_slice(b"Content-Length: 0\r\n");
    }
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    match (client_close, version) {
        (true, _) => out.extend_from_slice(b"Connection: close\r\n"),
        (false, Version::Http10) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
    let deadline = p.io_timeout;
    let mut buf = std::mem::take(out);
    if bodyless {
        started.set(true);
        let (res, b) = write_all(cw, buf, deadline).await;
        *out = b;
        res.map_err(|e| Failure::relayed(Error::ClientIo(e)))?;
        return Ok(Sent { status, client_close });
    }
    // The head goes out together with the first DATA frame; the worker's
    // trailers become the last chunk's trailer section.
    let (res, b) = h2io::relay_h2_body_to_h1(&mut body, cw, buf, chunked, deadline, started).await;
    buf = b;
    match res {
        Ok(()) => {}
        Err(h2io::ToH1Error::Write(e)) => {
            *out = buf;
            return Err(Failure::relayed(Error::ClientIo(e)));
        }
        // The worker's head arrived but the client has nothing yet: still
        // answerable.
        Err(h2io::ToH1Error::Recv(e)) if !started.get() => {
            *out = buf;
            return Err(Failure::answered(tunnel_err(TunnelFault::Stream, e.to_string())));
        }
        Err(h2io::ToH1Error::Recv(e)) => {
            *out = buf;
            return Err(Failure::relayed(tunnel_err(TunnelFault::Stream, e.to_string())));
        }
    }
    *out = buf;
    Ok(Sent { status, client_close })
}
