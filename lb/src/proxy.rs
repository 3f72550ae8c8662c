//! The request path for one HTTP/1.1 client connection, top to bottom:
//!
//! read head (strict RFC 9112 parse, header deadline) → route key (Host or
//! absolute-form authority, path) → forwarded head (hop-by-hop fields
//! dropped, `Forwarded` added) → a tunnel from this core's pool (or wait in
//! the bounded queue; or hand the connection to a core that has tunnels for
//! the route) → `100 Continue` if asked → request head and body to the tunnel
//! → response head (response deadline) → response to the client → tunnel back
//! to the pool.
//!
//! Requests on a connection are handled one after another, so pipelined
//! requests are answered in order. Bodies stream through the connection's read
//! buffers; memory per connection is bounded by them whatever the body size.
//! When a request body is still arriving, the body upload and the response
//! download run concurrently, so a worker may answer before reading it all.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, Splitable};
use monoio::net::TcpStream;
use ptth_proto::h1::{self, BodyDecoder, Forwarding, Framing, Parsed, Persist, RequestHead, ResponseHead, TargetForm, Version};
use ptth_proto::rt::io::{duplex, send_message, write_all, BodyMode, Duplex, ReadBuf, RelayError};

use crate::error::{Error, TunnelFault};
use crate::failure::{self, Decision, Failure};
use crate::h2_tunnel;
use crate::inbox::CoreMsg;
use crate::percore::{self, Core};
use crate::request::ReqInfo;
use crate::stats;
use crate::tunnel::acquire::acquire;
use crate::tunnel::pool::{H1Tunnel, Lease};

struct Client {
    /// `None` only while a request splits it into read and write halves.
    stream: Option<TcpStream>,
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
    /// Handed over from another core: requests here are not core-local.
    migrated: bool,
}

enum Next {
    Continue,
    Close,
    HandOff(usize),
}

pub(crate) async fn serve(core: Rc<Core>, stream: TcpStream, peer: SocketAddr, buffered: Vec<u8>, migrated: bool) {
    let _ = stream.set_nodelay(true);
    let p = &core.shared.cfg.profile;
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
        migrated,
    };
    // One port serves HTTP/1.1 and h2c: a connection that opens with the
    // HTTP/2 preface (RFC 9113 §3.4) goes to the h2 server.
    match sniff_preface(&core, &mut c).await {
        Sniff::H2 => {
            let Some(stream) = c.stream.take() else { return };
            let buffered = c.rb.take_unconsumed();
            return crate::downstream_h2::serve_h2c(core, stream, buffered, peer, migrated).await;
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
            Next::HandOff(to) => {
                let Some(stream) = c.stream.take() else { return };
                stats::add(&core.stats().clients_handed_off, 1);
                let buffered = c.rb.take_unconsumed();
                percore::send_to(&core.shared, to, CoreMsg::Client { stream: percore::detach(stream), peer, buffered });
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
async fn sniff_preface(core: &Core, c: &mut Client) -> Sniff {
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
        let wait = if d.is_empty() { core.shared.cfg.profile.keepalive_timeout } else { core.shared.cfg.profile.header_timeout };
        let r = monoio::select! {
            r = c.rb.fill(stream, wait) => r,
            _ = core.stop.wait() => return Sniff::Closed,
        };
        match r {
            Ok(0) | Err(_) => return Sniff::Closed,
            Ok(_) => {}
        }
    }
}

/// Reads until a complete request head is buffered. `Ok(false)`: the
/// connection ended or idled out between requests (nothing to answer).
async fn read_head(core: &Core, c: &mut Client) -> Result<bool, Error> {
    let p = &core.shared.cfg.profile;
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
        let r = monoio::select! {
            r = c.rb.fill(stream, wait) => r,
            _ = core.stop.wait(), if idle => return Ok(false),
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

async fn handle(core: &Rc<Core>, c: &mut Client) -> Next {
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
    };
    let policy = &core.shared.cfg.forwarding;
    let fwd = Forwarding {
        client: Some(c.peer),
        proto: "http",
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
    let (host, path) = key.split_at(info.host_len);
    let mut lease = match acquire(core, host, path, None).await {
        Ok(t) => t,
        Err(e) => {
            let next = match &e {
                Error::NoRoute { .. } if !c.migrated => core.shared.placement.core_for(host, path, core.id).map(Next::HandOff),
                _ => None,
            };
            c.key = key;
            if let Some(n) = next {
                return n;
            }
            c.rb.consume(head_len);
            // The body was not read: only a bodyless request leaves the
            // connection in a state to carry the next one. (HTTP/1.0 clients
            // would need keep-alive said explicitly: just close.)
            let close = !bodyless || info.close || info.version == Version::Http10;
            send_error(core, c, &e, close).await;
            return if close { Next::Close } else { Next::Continue };
        }
    };
    c.rb.consume(head_len);
    let mut dec = BodyDecoder::new(info.framing);
    if info.expect_continue && !dec.is_done() && c.rb.is_empty() && info.version == Version::Http11 {
        // RFC 9110 §10.1.1: we answer the expectation ourselves once a tunnel
        // is ready, and forward the request without Expect.
        c.out.clear();
        c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if write_client(core, c).await.is_err() {
            core.pool.borrow_mut().discard(lease);
            c.key = key;
            return Next::Close;
        }
    }
    let mut attempt = 0;
    let next = loop {
        let (result, l) = exchange_on(core, c, lease, &mut dec, &info).await;
        lease = l;
        let f = match result {
            Ok(done) => {
                core.pool.borrow_mut().release(lease, done.reusable);
                core.stats().record_served(done.status, c.migrated);
                break if done.client_close { Next::Close } else { Next::Continue };
            }
            Err(f) => f,
        };
        let failed = lease.slot();
        core.pool.borrow_mut().release(lease, false);
        let req = failure::Request { idempotent: info.idempotent, bodyless, retries: attempt };
        match failure::decide(&f, &req) {
            Decision::Abort => break Next::Close,
            Decision::Answer => {
                send_error(core, c, &f.into_answer(&req), true).await;
                break Next::Close;
            }
            Decision::Retry => {
                attempt += 1;
                stats::add(&core.stats().retries, 1);
                tracing::info!(worker = %core.pool.borrow().worker_id(failed), attempt, "request sent again after: {}", f.err);
                match acquire(core, host, path, Some(failed)).await {
                    Ok(t) => lease = t,
                    Err(e) => {
                        send_error(core, c, &e, true).await;
                        break Next::Close;
                    }
                }
            }
        }
    };
    c.key = key;
    next
}

/// Runs the exchange on whichever kind of tunnel the lease is.
async fn exchange_on(core: &Core, c: &mut Client, lease: Lease, dec: &mut BodyDecoder, info: &ReqInfo) -> (Result<Done, Failure>, Lease) {
    match lease {
        Lease::H1(t) => {
            let (r, t) = exchange(core, c, t, dec, info).await;
            (r, Lease::H1(t))
        }
        Lease::H2(t) => {
            let worker = core.pool.borrow().worker_id(t.slot);
            let side =
                h2_tunnel::ClientSide { stream: &mut c.stream, rb: &mut c.rb, out: &mut c.out, fwd: &c.fwd, scratch: &mut c.scratch };
            let r = h2_tunnel::exchange(core, side, &t, dec, info, &worker).await;
            let r = r.map(|s| Done { status: s.status, reusable: true, client_close: s.client_close });
            (r, Lease::H2(t))
        }
    }
}

struct Done {
    status: u16,
    reusable: bool,
    client_close: bool,
}

/// Sends the request on `t` and relays the response. A request whose body is
/// still arriving is uploaded while the response downloads.
async fn exchange(
    core: &Core,
    c: &mut Client,
    mut t: H1Tunnel,
    dec: &mut BodyDecoder,
    info: &ReqInfo,
) -> (Result<Done, Failure>, H1Tunnel) {
    let p = &core.shared.cfg.profile;
    let worker = core.pool.borrow().worker_id(t.slot);
    t.out.clear();
    t.out.extend_from_slice(&c.fwd);
    let body_buffered = {
        let mut probe = dec.clone();
        probe.scan(c.rb.data()).is_ok() && probe.is_done()
    };
    let Some(cs) = c.stream.as_mut() else {
        return (Err(Failure::client_gone()), t);
    };
    if body_buffered {
        let out = std::mem::take(&mut t.out);
        let (res, out) = send_message(&mut t.stream, out, cs, &mut c.rb, dec, BodyMode::Pass, p.io_timeout).await;
        t.out = out;
        let fail = match res {
            Ok(_) => None,
            Err(RelayError::Write(e)) => {
                Some(Failure::sent(Error::Tunnel { worker: worker.to_string(), fault: TunnelFault::Io, why: e.to_string() }))
            }
            Err(RelayError::Body(e)) => Some(Failure::sent(Error::ClientBody(e))),
            Err(RelayError::Read(e)) => Some(Failure::relayed(Error::ClientIo(e))),
        };
        if let Some(f) = fail {
            return (Err(f), t);
        }
        let started = std::cell::Cell::new(false);
        let r = response(core, &mut t.stream, &mut t.rb, &mut t.head, cs, &mut c.out, info, &worker, &started).await;
        return (r, t);
    }

    // Body still arriving: split both connections and run both directions.
    let Some(client) = c.stream.take() else {
        return (Err(Failure::client_gone()), t);
    };
    let (mut cr, mut cw) = client.into_split();
    let H1Tunnel { stream: tunnel, rb: mut trb, out: tout, head: mut thead, slot, idle_since, ticket } = t;
    let (mut tr, mut tw) = tunnel.into_split();
    let started = std::cell::Cell::new(false);
    let (result, out) = {
        let send = async {
            match send_message(&mut tw, tout, &mut cr, &mut c.rb, dec, BodyMode::Pass, p.io_timeout).await {
                (Ok(_), out) => Ok(out),
                (Err(e), out) => Err((e, out)),
            }
        };
        let resp = response(core, &mut tr, &mut trb, &mut thead, &mut cw, &mut c.out, info, &worker, &started);
        match duplex(send, resp).await {
            Duplex::Both(out, r) => (r, out),
            // Once response bytes went to the client, an error can only
            // end the connection.
            Duplex::UploadFailed((_, out)) if started.get() => (Err(Failure::client_gone()), out),
            Duplex::UploadFailed((e, out)) => {
                let fail = match e {
                    RelayError::Write(e) => {
                        Failure::sent(Error::Tunnel { worker: worker.to_string(), fault: TunnelFault::Io, why: e.to_string() })
                    }
                    RelayError::Body(e) => Failure::sent(Error::ClientBody(e)),
                    RelayError::Read(e) => Failure::relayed(Error::ClientIo(e)),
                };
                (Err(fail), out)
            }
            // The worker answered before the whole body arrived: the rest
            // of the body is abandoned, so neither connection can be reused.
            Duplex::AnsweredEarly(r) => (r.map(|d| Done { reusable: false, client_close: true, ..d }), Vec::new()),
        }
    };
    // Reuniting halves of one split cannot fail; the futures borrowing them
    // have ended above.
    c.stream = cr.reunite(cw).ok();
    let stream = tr.reunite(tw).expect("halves of one tunnel stream");
    (result, H1Tunnel { stream, rb: trb, out, head: thead, slot, idle_since, ticket })
}

/// Reads the response head (skipping or relaying 1xx) and relays the
/// response to the client.
#[allow(clippy::too_many_arguments)]
async fn response<TR: AsyncReadRent, CW: AsyncWriteRent>(
    core: &Core,
    tr: &mut TR,
    trb: &mut ReadBuf,
    thead: &mut ResponseHead,
    cw: &mut CW,
    cout: &mut Vec<u8>,
    info: &ReqInfo,
    worker: &str,
    started: &std::cell::Cell<bool>,
) -> Result<Done, Failure> {
    let p = &core.shared.cfg.profile;
    let deadline = Instant::now() + p.response_timeout;
    let mut interim_sent = false;
    let limits = h1::Limits { max_head: p.tunnel_read.min(p.limits.max_head.max(64 * 1024)), ..p.limits };
    let tunnel_err = |fault, why: String| Error::Tunnel { worker: worker.to_string(), fault, why };
    let invalid = |why: String| Failure::answered(Error::BadResponse { worker: worker.to_string(), why });
    loop {
        match h1::parse_response(trb.data(), &limits, info.is_head, thead) {
            Ok(Parsed::Complete) if thead.status == 101 => {
                return Err(invalid("101 Switching Protocols to a request that asked for no upgrade".into()));
            }
            Ok(Parsed::Complete) if thead.status < 200 => {
                // RFC 9110 §15.2: forward interim responses to HTTP/1.1
                // clients; HTTP/1.0 clients cannot take them.
                if info.version == Version::Http11 && thead.status != 100 {
                    started.set(true);
                    cout.clear();
                    h1::write_response_head(cout, trb.data(), thead, Version::Http11, Persist::KeepAlive, false);
                    let (res, out) = write_all(cw, std::mem::take(cout), p.io_timeout).await;
                    *cout = out;
                    res.map_err(|e| Failure::relayed(Error::ClientIo(e)))?;
                }
                interim_sent = true;
                trb.consume(thead.len);
                continue;
            }
            Ok(Parsed::Complete) => break,
            Ok(Parsed::Partial) => {}
            Err(e) => return Err(invalid(e.to_string())),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let nothing_yet = trb.is_empty() && !interim_sent;
        match trb.fill(tr, left).await {
            Ok(0) => return Err(Failure::lost(tunnel_err(TunnelFault::Closed, "closed before the response".into()), nothing_yet)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(Failure::sent(Error::ResponseTimeout { worker: worker.to_string(), after: p.response_timeout }))
            }
            Err(e) => return Err(Failure::lost(tunnel_err(TunnelFault::Io, e.to_string()), nothing_yet)),
        }
    }
    let framing = thead.framing();
    // An HTTP/1.0 client cannot take chunked coding: send the payload and
    // close to delimit it (RFC 9112 §6.3 item 8).
    let dechunk = info.version == Version::Http10 && framing == Framing::Chunked;
    // Shutting down: this is the connection's last response.
    let draining = percore::draining(&core.shared) || core.stop.is_fired();
    let client_close = info.close || draining || framing == Framing::UntilClose || dechunk;
    cout.clear();
    let persist = if client_close { Persist::Close } else { Persist::KeepAlive };
    h1::write_response_head(cout, trb.data(), thead, info.version, persist, dechunk);
    let status = thead.status;
    let tunnel_close = thead.conn.close;
    trb.consume(thead.len);
    let mut dec = BodyDecoder::new(framing);
    let mode = if dechunk { BodyMode::Dechunk } else { BodyMode::Pass };
    started.set(true);
    let (res, out) = send_message(cw, std::mem::take(cout), tr, trb, &mut dec, mode, p.io_timeout).await;
    *cout = out;
    match res {
        Ok(_) => {}
        Err(RelayError::Write(e)) => return Err(Failure::relayed(Error::ClientIo(e))),
        // The head is out: a broken body can only end the client connection.
        Err(e @ (RelayError::Read(_) | RelayError::Body(_))) => return Err(Failure::relayed(tunnel_err(TunnelFault::Io, e.to_string()))),
    }
    // RFC 9112 §9.6: a worker's Connection: close drains this tunnel.
    let reusable = !tunnel_close && framing != Framing::UntilClose && trb.is_empty();
    Ok(Done { status, reusable, client_close })
}

async fn write_client(core: &Core, c: &mut Client) -> io::Result<()> {
    let Some(s) = c.stream.as_mut() else { return Err(io::Error::other("client stream missing")) };
    let (res, out) = write_all(s, std::mem::take(&mut c.out), core.shared.cfg.profile.io_timeout).await;
    c.out = out;
    res
}

/// Answers an error generated here (the one place client errors become
/// responses; the status comes from [`Error::status`]).
async fn send_error(core: &Core, c: &mut Client, e: &Error, close: bool) {
    let Some(status) = e.status() else { return };
    core.stats().count_status(status);
    if status >= 500 {
        tracing::warn!(client = %c.peer, status, "{e}");
    }
    let retry = core.shared.cfg.profile.retry_after_s.to_string();
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
async fn linger(c: &mut Client) {
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
