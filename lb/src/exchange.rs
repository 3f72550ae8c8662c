//! The exchange engine: one attempt of one request on one lease, for all four
//! protocol pairs (an HTTP/1.1 connection or an h2 stream on the client side,
//! an HTTP/1.1 tunnel or a stream on an h2 tunnel on the worker side).
//!
//! Place in the request path: after a lease is taken (`tunnel::acquire`),
//! before the outcome is decided and recorded (`attempts`). The client side
//! hands over its request head ([`ReqHead`]), its body as a source of
//! `ptth_proto::rt::body` pieces, and a [`Responder`]; the engine puts the
//! head on the lease in the tunnel's protocol, then runs the one duplex loop:
//! the body relayed up while the response head is awaited (response
//! deadline) and its body relayed down. Every way it can fail is reported as
//! a [`Failure`] saying where it stopped; `failure::decide` does the rest.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use ptth_proto::h1::{self, BodyDecoder, Framing, Parsed, Persist, RequestHead, ResponseHead, Version};
use ptth_proto::rt::body::{relay, AnySink, AnySource, Fault, H1Sink, H1Source, H2Sink, H2Source, RelayError};
use ptth_proto::rt::h2io;
use ptth_proto::rt::io::{duplex, split, write_all, Duplex, ReadBuf, ReadHalf};
use ptth_proto::{setup, BodyError};

use crate::error::{Cause, Error, TunnelFault};
use crate::failure::{Failure, Stage};
use crate::percore::{self, Core};
use crate::tunnel::pool::{Lease, Leased};
use crate::tunnel::TunnelStream;

/// What the engine knows of the attempt besides the request itself.
pub(crate) struct Ctx<'a> {
    pub(crate) core: &'a Core,
    /// The worker the lease belongs to (for errors and logs).
    pub(crate) worker: &'a str,
    /// The request is a HEAD: its response has no body whatever it says.
    pub(crate) is_head: bool,
    /// When the worker's response head arrived (for selection's latency).
    pub(crate) head_at: Cell<Option<Instant>>,
    /// When the last byte of a request body went up: a worker that waits
    /// for the whole body is timed from there, so a slow upload does not
    /// make it look slow.
    pub(crate) upload_done_at: Cell<Option<Instant>>,
}

impl Ctx<'_> {
    /// How long the worker took to answer an attempt sent at `sent` (see
    /// [`answer_time`]).
    pub(crate) fn answer_time(&self, sent: Instant) -> Option<std::time::Duration> {
        Some(answer_time(sent, self.upload_done_at.get(), self.head_at.get()?))
    }
}

/// How long a worker took to answer: from sending the request to its
/// response head, or from the end of the upload when the head came after it
/// (a worker that waits for the whole body is not timed on the client's
/// upload speed; one that answered before the body ended, on its own).
fn answer_time(sent: Instant, upload_done: Option<Instant>, head: Instant) -> std::time::Duration {
    let from = upload_done.filter(|&u| u <= head).unwrap_or(sent);
    head.saturating_duration_since(from)
}

impl Ctx<'_> {
    fn tunnel_err(&self, fault: TunnelFault, cause: impl Into<Cause>) -> Error {
        Error::Tunnel { worker: self.worker.to_string(), fault, cause: cause.into() }
    }
    fn bad_response(&self, why: impl ToString) -> Failure {
        Failure::answered(Error::BadResponse { worker: self.worker.to_string(), why: why.to_string() })
    }
    /// `retry_after`: the response's `Retry-After` field (RFC 9110 §10.2.3,
    /// delay-seconds; a date is not honoured), its withdrawal time.
    fn unprocessed(&self, status: u16, retry_after: Option<&[u8]>) -> Error {
        let retry_after = retry_after
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        Error::Unprocessed { worker: self.worker.to_string(), status, retry_after }
    }
    fn timed_out(&self) -> Failure {
        Failure::sent(Error::ResponseTimeout { worker: self.worker.to_string(), after: self.core.cfg().profile.response_timeout })
    }
}

/// The request head as the client side hands it over.
pub(crate) enum ReqHead<'a> {
    /// An HTTP/1.1 client's head as rewritten for the next hop
    /// (`h1::write_request_head`: framing and Host from the parse), with
    /// parse space to turn it into an HTTP/2 request. `chunked`: its body is
    /// in chunked coding.
    /// `https`: the client came over TLS (the `:scheme` toward an h2 tunnel).
    H1 { fwd: &'a [u8], scratch: &'a mut RequestHead, chunked: bool, https: bool },
    /// An h2 client's request, checked and rewritten (`downstream_h2::prepare`).
    H2 { parts: &'a http::request::Parts },
}

/// Where the response goes: the client side's half of the exchange.
pub(crate) enum Responder<'a, W> {
    /// An HTTP/1.1 connection's write half and its reusable output buffer.
    /// `close`: the client asked for this to be the last response.
    H1 { w: W, out: &'a mut Vec<u8>, version: Version, close: bool },
    /// An h2 stream.
    H2 { respond: &'a RefCell<h2::server::SendResponse<Bytes>> },
}

/// How an attempt ended well.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done {
    pub(crate) status: u16,
    /// The lease's tunnel may carry another request.
    pub(crate) reusable: bool,
    /// An HTTP/1.1 client's connection must close after this response.
    pub(crate) client_close: bool,
}

/// Sends the request on `lease` and relays the response to the client.
pub(crate) async fn run<R: AsyncReadRent, W: AsyncWriteRent>(
    x: &Ctx<'_>,
    head: ReqHead<'_>,
    mut body: AnySource<'_, R>,
    mut resp: Responder<'_, W>,
    lease: &mut Lease,
) -> Result<Done, Failure> {
    let cfg = x.core.cfg();
    let p = &cfg.profile;
    // The request can go out again only while its body is still whole here.
    let held = matches!(body, AnySource::Empty | AnySource::Held(_));
    let has_body = !matches!(body, AnySource::Empty);
    let started = Cell::new(false);
    let sent = Cell::new(false);
    let result = match &mut lease.kind {
        Leased::H1(t) => {
            t.out.clear();
            let chunked = match head {
                ReqHead::H1 { fwd, chunked, .. } => {
                    t.out.extend_from_slice(fwd);
                    chunked
                }
                ReqHead::H2 { parts } => {
                    let chunked = has_body && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
                    h2io::write_h1_request_head(&mut t.out, &parts.method, &parts.uri, &parts.headers, chunked);
                    chunked
                }
            };
            let (tr, mut tw) = split(&mut t.stream);
            let mut sink = AnySink::H1(H1Sink::new(&mut tw, &mut t.out, chunked, p.io_timeout, &sent));
            let mut reader = UpReader::H1 { r: tr, rb: &mut t.rb, head: &mut t.head };
            let r = exchange(x, &mut body, &mut sink, &mut reader, &mut resp, &started).await;
            let before_head = matches!(&sink, AnySink::H1(s) if s.failed_before_head());
            match r {
                Err(Upload::Failed(e)) => Err(upload_failed(x, e, before_head, started.get())),
                Err(Upload::Down(f)) => Err(f),
                // The tunnel carries another request only after a clean end:
                // the whole body went up and nothing is left unread.
                Ok((done, clean)) => {
                    let UpReader::H1 { rb, .. } = &reader else { unreachable!("an h1 lease reads an h1 tunnel") };
                    Ok(Done { reusable: done.reusable && clean && rb.is_empty(), ..done })
                }
            }
        }
        Leased::H2(t) => {
            let req = match head {
                ReqHead::H1 { fwd, scratch, https, .. } => request_from_h1(fwd, scratch, https),
                ReqHead::H2 { parts } => Ok(request_from_h2(parts)),
            };
            let req = req.map_err(|why| Failure::not_sent(x.tunnel_err(TunnelFault::Unusable, why)))?;
            let mut send = t.send.borrow().clone();
            let (fut, mut tx) = match send.send_request(req, !has_body) {
                Ok(pair) => pair,
                Err(e) => {
                    // Refused before anything went out (the tunnel is closing).
                    t.drain();
                    return Err(Failure::not_sent(x.tunnel_err(TunnelFault::Unusable, e)));
                }
            };
            let mut reader = UpReader::H2 { resp: Some(fut) };
            let r = if has_body {
                let mut sink: AnySink<'_, TcpStream> = AnySink::H2(H2Sink::new(&mut tx, false, &sent));
                exchange(x, &mut body, &mut sink, &mut reader, &mut resp, &started).await
            } else {
                // The HEADERS frame ended the stream: nothing goes up, only
                // the answer is awaited (no duplex to poll).
                download(x, &mut reader, &mut resp, &started).await.map(|d| (d, true)).map_err(Upload::Down)
            };
            match r {
                Err(Upload::Failed(e)) => Err(upload_failed(x, e, false, started.get())),
                Err(Upload::Down(f)) => Err(f),
                Ok((done, _)) => Ok(done),
            }
        }
    };
    result.map_err(|mut f| {
        // Whether it can go out again is a fact of the body, not of the
        // tunnel. Nothing sent means the source gave nothing up (a head that
        // failed to go out whole was written alone), so the body is as it was.
        if f.stage == Stage::Sent {
            f.body_held = held;
        }
        f
    })
}

/// The tunnel side of the download.
enum UpReader<'a> {
    H1 { r: ReadHalf<'a, TunnelStream>, rb: &'a mut ReadBuf, head: &'a mut ResponseHead },
    H2 { resp: Option<h2::client::ResponseFuture> },
}

/// How the duplex loop failed.
enum Upload {
    /// The upload failed (the download was dropped).
    Failed(RelayError<Fault, Fault>),
    /// The download failed.
    Down(Failure),
}

/// The one duplex loop: the body goes up while the response comes down.
/// `Ok((done, clean))`: `clean` when the whole body went up.
async fn exchange<R: AsyncReadRent, W: AsyncWriteRent, K: AsyncWriteRent>(
    x: &Ctx<'_>,
    body: &mut AnySource<'_, R>,
    sink: &mut AnySink<'_, K>,
    reader: &mut UpReader<'_>,
    resp: &mut Responder<'_, W>,
    started: &Cell<bool>,
) -> Result<(Done, bool), Upload> {
    // The clock is read once more only for a body.
    let timed = !matches!(body, AnySource::Empty);
    let up = std::pin::pin!(async {
        relay(body, sink).await?;
        if timed {
            x.upload_done_at.set(Some(Instant::now()));
        }
        Ok(())
    });
    let down = std::pin::pin!(download(x, reader, resp, started));
    match duplex(up, down).await {
        Duplex::Both((), d) => d.map(|d| (d, true)).map_err(Upload::Down),
        Duplex::UploadFailed(e) => Err(Upload::Failed(e)),
        // The worker answered before it read the whole body: the rest of the
        // body is abandoned, so neither connection carries another message.
        Duplex::AnsweredEarly(d) => d.map(|d| (Done { client_close: true, ..d }, false)).map_err(|mut f| {
            // Part of the body may still be unsent: the tunnel is not clean.
            f.tunnel_reusable = false;
            Upload::Down(f)
        }),
    }
}

/// Classifies a failed upload by the side that failed and how far it got.
fn upload_failed(x: &Ctx<'_>, e: RelayError<Fault, Fault>, before_head: bool, started: bool) -> Failure {
    // Once response bytes went to the client, an error can only end it.
    if started {
        return Failure::client_gone();
    }
    match e {
        // The client closed or reset mid-body: nobody to answer.
        RelayError::Source(Fault::Body(BodyError::Truncated) | Fault::H2(_)) => Failure::client_gone(),
        RelayError::Source(Fault::Io(e)) => Failure::relayed(Error::ClientIo(e)),
        RelayError::Source(Fault::Body(e)) => Failure::sent(Error::ClientBody(e)),
        // A write that did not deliver a whole head: the worker cannot have
        // acted on the request.
        RelayError::Sink(Fault::Io(e)) if before_head => Failure::not_sent(x.tunnel_err(TunnelFault::Io, e)),
        RelayError::Sink(Fault::Io(e)) => Failure::sent(x.tunnel_err(TunnelFault::Io, e)),
        RelayError::Sink(Fault::H2(e)) => stream_failed(x, e),
        RelayError::Sink(Fault::Body(e)) => Failure::sent(x.tunnel_err(TunnelFault::Io, e)),
    }
}

/// A stream that failed before its response head: refused by the worker
/// (RFC 9113 §8.7: REFUSED_STREAM, or a GOAWAY covering the stream, means it
/// did no work for it), or lost with the worker maybe having acted.
fn stream_failed(x: &Ctx<'_>, e: h2::Error) -> Failure {
    let refused = e.reason() == Some(h2::Reason::REFUSED_STREAM) || e.is_go_away();
    let err = x.tunnel_err(TunnelFault::Stream, e);
    if refused {
        Failure::refused(err, false)
    } else {
        Failure::sent(err)
    }
}

/// The response head as the tunnel delivered it.
enum RespHead<'a> {
    H1 { buf: &'a [u8], head: &'a ResponseHead },
    H2(http::response::Parts),
}

/// What the client side decided when it wrote the response head.
struct Start {
    /// HTTP/1.1 client: the body goes in chunked coding.
    chunked: bool,
    client_close: bool,
    /// h2 client: the HEADERS frame ended the stream (empty body).
    ended: bool,
}

/// Awaits the response head, writes it to the client, relays the body.
async fn download<W: AsyncWriteRent>(
    x: &Ctx<'_>,
    reader: &mut UpReader<'_>,
    resp: &mut Responder<'_, W>,
    started: &Cell<bool>,
) -> Result<Done, Failure> {
    let cfg = x.core.cfg();
    let p = &cfg.profile;
    let mut dec;
    let mut h2_body = None;
    let mut h2_out = None;
    let (status, reusable, start, mut src) = match reader {
        UpReader::H1 { r, rb, head } => {
            h1_head(x, r, rb, head, resp, started).await?;
            x.head_at.set(Some(Instant::now()));
            let framing = head.framing();
            if setup::says_unprocessed(head.status, || head.field(rb.data(), setup::FIELD_UNPROCESSED)) {
                // Read before the head is consumed: the field lies in it.
                let err = x.unprocessed(head.status, head.field(rb.data(), "retry-after"));
                // Its short answer is read whole when it is already here, so
                // the tunnel stays usable; otherwise the tunnel closes.
                let body = match framing {
                    Framing::Length(n) => usize::try_from(n).ok().filter(|&n| head.len + n <= rb.data().len()),
                    Framing::Empty => Some(0),
                    _ => None,
                };
                if let Some(n) = body {
                    rb.consume(head.len + n);
                }
                let clean = body.is_some() && !head.conn.close && rb.is_empty();
                return Err(Failure::unprocessed(err, clean));
            }
            dec = BodyDecoder::new(framing);
            let start = resp.start(x, RespHead::H1 { buf: rb.data(), head }, dec.is_done(), &mut h2_out, started)?;
            rb.consume(head.len);
            // RFC 9112 §9.6: a worker's Connection: close drains this tunnel.
            let reusable = !head.conn.close && framing != Framing::UntilClose;
            (head.status, reusable, start, AnySource::H1(H1Source::new(r, rb, &mut dec, p.io_timeout)))
        }
        UpReader::H2 { resp: fut } => {
            let Some(fut) = fut.take() else { return Err(x.bad_response("response awaited twice")) };
            let response = match ptth_proto::rt::deadline::within(p.response_timeout, fut).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(stream_failed(x, e)),
                Err(_) => return Err(x.timed_out()),
            };
            x.head_at.set(Some(Instant::now()));
            let (parts, body) = response.into_parts();
            let status = parts.status.as_u16();
            if setup::says_unprocessed(status, || parts.headers.get(setup::FIELD_UNPROCESSED).map(|v| v.as_bytes())) {
                let retry_after = parts.headers.get(http::header::RETRY_AFTER).map(|v| v.as_bytes());
                return Err(Failure::unprocessed(x.unprocessed(status, retry_after), true));
            }
            let empty = body.is_end_stream();
            let start = resp.start(x, RespHead::H2(parts), empty, &mut h2_out, started)?;
            let src = if empty { AnySource::Empty } else { AnySource::H2(H2Source::new(h2_body.insert(body))) };
            (status, true, start, src)
        }
    };
    let mut sink = resp.sink(&start, &mut h2_out, p.io_timeout, started);
    match relay(&mut src, &mut sink).await {
        Ok(()) => Ok(Done { status, reusable, client_close: start.client_close }),
        Err(RelayError::Sink(Fault::Io(e))) => Err(Failure::relayed(Error::ClientIo(e))),
        Err(RelayError::Sink(_)) => Err(Failure::client_gone()),
        // The worker's head arrived but the client has nothing yet: still
        // answerable; after that, the client connection can only end.
        Err(RelayError::Source(e)) if !started.get() => Err(x.bad_response(format!("response body: {e}"))),
        Err(RelayError::Source(e)) => Err(Failure::relayed(x.tunnel_err(TunnelFault::Io, format!("response body: {e}")))),
    }
}

/// Reads an HTTP/1.1 tunnel's response head (within the response
/// deadline), passing interim responses on to HTTP/1.1 clients.
async fn h1_head<W: AsyncWriteRent>(
    x: &Ctx<'_>,
    r: &mut ReadHalf<'_, TunnelStream>,
    rb: &mut ReadBuf,
    head: &mut ResponseHead,
    resp: &mut Responder<'_, W>,
    started: &Cell<bool>,
) -> Result<(), Failure> {
    let cfg = x.core.cfg();
    let p = &cfg.profile;
    let deadline = Instant::now() + p.response_timeout;
    let limits = h1::Limits { max_head: p.tunnel_read.min(p.limits.max_head.max(64 * 1024)), ..p.limits };
    let mut interim = false;
    loop {
        match h1::parse_response(rb.data(), &limits, x.is_head, head) {
            // No upgrade was asked for: a 101 is a broken worker, not an
            // interim response.
            Ok(Parsed::Complete) if head.status == 101 => {
                return Err(x.bad_response("101 Switching Protocols to a request that asked for no upgrade"));
            }
            Ok(Parsed::Complete) if head.status < 200 => {
                resp.interim(x, rb.data(), head, started).await?;
                interim = true;
                rb.consume(head.len);
                continue;
            }
            Ok(Parsed::Complete) => return Ok(()),
            Ok(Parsed::Partial) => {}
            Err(e) => return Err(x.bad_response(e)),
        }
        let nothing_yet = rb.is_empty() && !interim;
        match rb.fill(r, deadline.saturating_duration_since(Instant::now())).await {
            Ok(0) => return Err(Failure::lost(x.tunnel_err(TunnelFault::Closed, "closed before the response"), nothing_yet)),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(x.timed_out()),
            Err(e) => return Err(Failure::lost(x.tunnel_err(TunnelFault::Io, e), nothing_yet)),
        }
    }
}

impl<W: AsyncWriteRent> Responder<'_, W> {
    /// An interim (1xx) response: passed on to HTTP/1.1 clients (RFC 9110
    /// §15.2), except `100 Continue`, which the lb answers itself; HTTP/1.0
    /// clients and h2 clients get none.
    async fn interim(&mut self, x: &Ctx<'_>, buf: &[u8], head: &ResponseHead, started: &Cell<bool>) -> Result<(), Failure> {
        let Responder::H1 { w, out, version: Version::Http11, .. } = self else { return Ok(()) };
        if head.status == 100 {
            return Ok(());
        }
        started.set(true);
        out.clear();
        h1::write_response_head(out, buf, head, Version::Http11, Persist::KeepAlive, false);
        let (res, o) = write_all(w, std::mem::take(*out), x.core.cfg().profile.io_timeout).await;
        **out = o;
        res.map_err(|e| Failure::relayed(Error::ClientIo(e)))
    }

    /// Turns the response head into the client's protocol: written into the
    /// output buffer (HTTP/1.1, sent with the first payload) or sent as the
    /// stream's HEADERS (h2). `empty`: the body is known to be empty.
    fn start(
        &mut self,
        x: &Ctx<'_>,
        head: RespHead<'_>,
        empty: bool,
        h2_out: &mut Option<h2::SendStream<Bytes>>,
        started: &Cell<bool>,
    ) -> Result<Start, Failure> {
        let core = x.core;
        // Shutting down: this is the connection's last response.
        let draining = percore::draining(&core.shared) || core.stop.is_fired();
        match self {
            Responder::H1 { out, version, close, .. } => {
                out.clear();
                Ok(match head {
                    RespHead::H1 { buf, head } => {
                        let framing = head.framing();
                        // An HTTP/1.0 client cannot take chunked coding: send
                        // the payload and close to delimit it (RFC 9112 §6.3).
                        let dechunk = *version == Version::Http10 && framing == Framing::Chunked;
                        let client_close = *close || draining || framing == Framing::UntilClose || dechunk;
                        let persist = if client_close { Persist::Close } else { Persist::KeepAlive };
                        h1::write_response_head(out, buf, head, *version, persist, dechunk);
                        Start { chunked: framing == Framing::Chunked && !dechunk, client_close, ended: false }
                    }
                    RespHead::H2(parts) => {
                        let status = parts.status.as_u16();
                        let bodyless = x.is_head || status == 204 || status == 304 || (100..200).contains(&status);
                        let length = parts.headers.contains_key(http::header::CONTENT_LENGTH);
                        // Framing toward the client: the worker's length when
                        // it gave one, chunked otherwise (HTTP/1.0: close).
                        let chunked = !bodyless && !length && !empty && *version == Version::Http11;
                        let until_close = !bodyless && !length && !empty && *version == Version::Http10;
                        let client_close = *close || until_close || draining;
                        h1::write_status_line(out, status, parts.status.canonical_reason().unwrap_or("").as_bytes());
                        h2io::write_h1_fields(out, &parts.headers);
                        if !bodyless && !length && empty {
                            out.extend_from_slice(b"Content-Length: 0\r\n");
                        }
                        if chunked {
                            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
                        }
                        h1::write_persistence(out, if client_close { Persist::Close } else { Persist::KeepAlive }, *version);
                        out.extend_from_slice(b"\r\n");
                        Start { chunked, client_close, ended: false }
                    }
                })
            }
            Responder::H2 { respond } => {
                let r = match head {
                    RespHead::H1 { buf, head } => {
                        h2io::response_from_h1(buf, head).map_err(|_| x.bad_response("head not valid for HTTP/2"))?
                    }
                    RespHead::H2(parts) => http::Response::from_parts(parts, ()),
                };
                let s = respond.borrow_mut().send_response(r, empty).map_err(|_| Failure::client_gone())?;
                // The head went out as HEADERS: the client has it.
                started.set(true);
                *h2_out = Some(s);
                Ok(Start { chunked: false, client_close: false, ended: empty })
            }
        }
    }

    /// The sink for the response body, after [`Responder::start`].
    fn sink<'s>(
        &'s mut self,
        start: &Start,
        h2_out: &'s mut Option<h2::SendStream<Bytes>>,
        io: std::time::Duration,
        started: &'s Cell<bool>,
    ) -> AnySink<'s, W> {
        match self {
            Responder::H1 { w, out, .. } => AnySink::H1(H1Sink::new(w, out, start.chunked, io, started).holding_head()),
            Responder::H2 { .. } => match h2_out {
                Some(s) => AnySink::H2(H2Sink::new(s, start.ended, started)),
                None => unreachable!("start() set the h2 stream"),
            },
        }
    }
}

/// Builds the h2 request from an HTTP/1.1 client's forwarded head.
fn request_from_h1(fwd: &[u8], scratch: &mut RequestHead, https: bool) -> Result<http::Request<()>, String> {
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
        parts.scheme = Some(if https { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP });
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

/// The h2 request for an h2 client's (already checked) request.
fn request_from_h2(parts: &http::request::Parts) -> http::Request<()> {
    let mut req = http::Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.headers_mut() = parts.headers.clone();
    req
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_worker_is_timed_from_the_end_of_a_slow_upload() {
        let sent = Instant::now();
        let ms = |n| sent + Duration::from_millis(n);
        // No body: from sending.
        assert_eq!(answer_time(sent, None, ms(5)), Duration::from_millis(5));
        // A 2 s upload, answered 5 ms after it ended.
        assert_eq!(answer_time(sent, Some(ms(2000)), ms(2005)), Duration::from_millis(5));
        // Answered before the upload ended: from sending.
        assert_eq!(answer_time(sent, Some(ms(900)), ms(300)), Duration::from_millis(300));
    }
}
