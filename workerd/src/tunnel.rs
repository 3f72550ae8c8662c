//! Serving requests on one tunnel (inner protocol HTTP/1.1, roles transposed:
//! the lb sends requests, we answer). One request at a time per tunnel.
//!
//! Place in the request path: lb → **tunnel** → [`Handler`] (a built-in
//! responder, the sidecar's origin forwarder, or an application's own code) →
//! response back on the same tunnel.

use std::io;
use std::rc::Rc;

use ptth_proto::h1::{self, BodyDecoder, Framing, Parsed, RequestHead};
use ptth_proto::rt::io::{write_all, ReadBuf};
use ptth_proto::rt::signal::{Signal, Wait};

use crate::config::Config;
use crate::error::Error;

/// Application code answering requests that arrive over tunnels. One handler
/// value per worker thread; it may keep thread-local state.
pub trait Handler: 'static {
    /// Answers one request. Call one of [`Exchange::respond`] or
    /// [`Exchange::start`]…[`Exchange::finish`]; a handler that returns without
    /// answering gets a 500 sent for it, and an error before the head went out
    /// is answered with the error's status.
    #[allow(async_fn_in_trait)]
    async fn handle(&self, ex: &mut Exchange<'_>) -> Result<(), Error>;
}

/// Read buffer per tunnel: holds a whole request head, and body slices.
const TUNNEL_BUF: usize = 64 * 1024;
/// Unread request body a handler left behind that is drained to keep the
/// tunnel; more than this and the tunnel is closed instead.
const MAX_DRAIN: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resp {
    /// Nothing sent yet.
    Pending,
    /// Head sent with chunked framing; chunks follow.
    Chunked,
    /// The whole response went out.
    Done,
}

/// One tunnel's connection state, reused across its requests.
pub(crate) struct Conn {
    pub(crate) stream: crate::TunnelStream,
    pub(crate) rb: ReadBuf,
    pub(crate) out: Vec<u8>,
    /// Copy of the current request head, so handlers can read it while the
    /// body streams through `rb`.
    pub(crate) head_bytes: Vec<u8>,
    pub(crate) head: RequestHead,
    pub(crate) body: BodyDecoder,
    pub(crate) resp: Resp,
    /// Answer with `Connection: close` and end the tunnel after this request.
    pub(crate) close_after: bool,
    /// The request's trailer section, as read (chunked bodies only).
    pub(crate) trailers: Vec<u8>,
    pub(crate) cfg: Rc<Config>,
}

/// How a tunnel ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The lb closed it (or it was idle at shutdown).
    Closed,
    /// We closed it after a response (drain, or the request asked).
    Finished,
}

impl Conn {
    pub(crate) fn new(stream: crate::TunnelStream, leftover: Vec<u8>, cfg: Rc<Config>) -> Conn {
        Conn {
            stream,
            rb: ReadBuf::from_vec(leftover, TUNNEL_BUF),
            out: Vec::with_capacity(4096),
            head_bytes: Vec::with_capacity(1024),
            head: RequestHead::default(),
            body: BodyDecoder::new(Framing::Empty),
            resp: Resp::Pending,
            close_after: false,
            trailers: Vec::new(),
            cfg,
        }
    }

    pub(crate) async fn write_out(&mut self) -> io::Result<()> {
        let out = std::mem::take(&mut self.out);
        let (res, out) = write_all(&mut self.stream, out, self.cfg.io_timeout).await;
        self.out = out;
        res
    }

    /// Waits for the next request head. `Ok(false)`: the tunnel ended cleanly.
    async fn next_request(&mut self, stop: &mut Wait) -> Result<bool, Error> {
        loop {
            match h1::parse_request(self.rb.data(), &self.cfg.limits, &mut self.head) {
                Ok(Parsed::Complete) => return Ok(true),
                Ok(Parsed::Partial) => {}
                Err(e) => return Err(e.into()),
            }
            let idle = self.rb.is_empty();
            // Between requests: the small idle buffer (`ReadBuf::fill_idle`),
            // so an idle tunnel holds no full-size one, and no deadline: the
            // tunnel waits as long as the lb keeps it (a dead lb is found by
            // TCP keepalive, set when the tunnel is dialed); a deadline would
            // cancel and re-post the read, and a read cancelled as a request
            // arrives would lose its first bytes.
            let n = if idle {
                monoio::select! {
                    r = self.rb.fill_idle_unbounded(&mut self.stream) => r,
                    _ = &mut *stop => return Ok(false),
                }
            } else {
                self.rb.fill(&mut self.stream, self.cfg.io_timeout).await
            };
            match n {
                Ok(0) if idle => return Ok(false),
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "tunnel closed mid-head").into()),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads and drops what the handler left of the request body.
    async fn drain_body(&mut self) -> Result<(), Error> {
        let mut dropped = 0u64;
        while !self.body.is_done() {
            if self.rb.is_empty() && self.rb.fill(&mut self.stream, self.cfg.io_timeout).await? == 0 {
                self.body.eof()?;
                break;
            }
            let n = self.body.scan(self.rb.data())?;
            self.rb.consume(n);
            dropped += n as u64;
            if dropped > MAX_DRAIN {
                self.close_after = true;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Writes a complete response generated here.
    pub(crate) async fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let is_head = self.head.is_head(&self.head_bytes);
        self.out.clear();
        let _ = write!(self.out, "HTTP/1.1 {status} {}\r\n", h1::reason(status));
        for (k, v) in headers {
            let _ = write!(self.out, "{k}: {v}\r\n");
        }
        if status >= 200 && status != 204 && status != 304 {
            let _ = write!(self.out, "Content-Length: {}\r\n", body.len());
        }
        if self.close_after {
            self.out.extend_from_slice(b"Connection: close\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        if !is_head {
            self.out.extend_from_slice(body);
        }
        self.resp = Resp::Done;
        self.write_out().await
    }
}

/// Checks the fields a handler gives for its response: each must be a token
/// name with a value free of CR, LF and other control bytes (no response
/// splitting), and none may be one the library writes itself from the
/// framing it chooses (`Content-Length`, `Transfer-Encoding`): a second,
/// differing framing field would make the lb refuse the response.
fn check_fields(fields: &[(&str, &str)]) -> Result<(), Error> {
    for (k, v) in fields {
        if !h1::is_valid_field(k.as_bytes(), v.as_bytes()) {
            return Err(Error::Handler(format!("response field {k:?}: not a valid name, or the value holds control characters")));
        }
        if ["content-length", "transfer-encoding"].iter().any(|f| k.eq_ignore_ascii_case(f)) {
            return Err(Error::Handler(format!("response field {k:?} is set by the library from the framing it chooses")));
        }
    }
    Ok(())
}

/// Serves requests on an established tunnel until it ends.
pub(crate) async fn serve<H: Handler>(mut c: Conn, handler: &H, stop: &Signal) -> Result<Ended, Error> {
    // One waiter for the tunnel's life, not one per request.
    let mut stopped = stop.wait();
    loop {
        match c.next_request(&mut stopped).await {
            Ok(true) => {}
            Ok(false) => return Ok(Ended::Closed),
            Err(Error::Head(e)) => {
                // The lb sent something we cannot parse: answer and end the tunnel.
                c.close_after = true;
                let _ = c.respond(e.status(), &[("Content-Type", "text/plain")], format!("{e}\n").as_bytes()).await;
                return Err(Error::Head(e));
            }
            Err(e) => return Err(e),
        }
        c.head_bytes.clear();
        c.head_bytes.extend_from_slice(&c.rb.data()[..c.head.len]);
        c.rb.consume(c.head.len);
        c.body = BodyDecoder::new(c.head.framing());
        c.trailers.clear();
        c.resp = Resp::Pending;
        // RFC 9112 §9.6: after a response with Connection: close the tunnel is
        // done; during shutdown that is how an h1 tunnel drains.
        c.close_after = c.head.conn.close || stop.is_fired();
        let result = handler.handle(&mut Exchange { inner: Inner::H1(&mut c) }).await;
        match (result, c.resp) {
            (Ok(()), Resp::Done) => {}
            (Ok(()), Resp::Chunked) => Exchange { inner: Inner::H1(&mut c) }.finish().await?,
            (Ok(()), Resp::Pending) => {
                c.respond(500, &[("Content-Type", "text/plain")], b"handler returned without a response\n").await?;
            }
            (Err(e), Resp::Pending) => {
                c.close_after |= matches!(e, Error::Io(_) | Error::Relay(_));
                e.log_answered();
                c.respond(e.status(), e.answer_fields(), e.client_body().as_bytes()).await?;
            }
            (Err(e), _) => return Err(e),
        }
        if !c.close_after {
            c.drain_body().await?;
        }
        if c.close_after || stop.is_fired() {
            return Ok(Ended::Finished);
        }
    }
}

/// One request and its response, as a [`Handler`] sees them, whichever
/// inner protocol the tunnel speaks.
pub struct Exchange<'a> {
    pub(crate) inner: Inner<'a>,
}

pub(crate) enum Inner<'a> {
    H1(&'a mut Conn),
    H2(&'a mut crate::tunnel_h2::H2Exchange),
}

impl Exchange<'_> {
    pub fn method(&self) -> &str {
        match &self.inner {
            Inner::H1(c) => std::str::from_utf8(c.head.method(&c.head_bytes)).unwrap_or(""),
            Inner::H2(x) => x.parts.method.as_str(),
        }
    }

    /// The request target (path and query, as the client sent it).
    pub fn target(&self) -> &str {
        match &self.inner {
            Inner::H1(c) => std::str::from_utf8(c.head.target(&c.head_bytes)).unwrap_or(""),
            Inner::H2(x) => x.parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        }
    }

    /// The first field called `name`, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        match &self.inner {
            Inner::H1(c) => c.head.field(&c.head_bytes, name).and_then(|v| std::str::from_utf8(v).ok()),
            Inner::H2(x) => x.parts.headers.get(name).and_then(|v| v.to_str().ok()),
        }
    }

    /// Every header field in order (for HTTP/2, `:authority` shows as `host`).
    pub fn headers(&self) -> Box<dyn Iterator<Item = (&str, &[u8])> + '_> {
        match &self.inner {
            Inner::H1(c) => {
                let b = &c.head_bytes;
                Box::new(c.head.fields.iter().map(move |f| (std::str::from_utf8(&b[f.name.clone()]).unwrap_or(""), &b[f.value.clone()])))
            }
            Inner::H2(x) => Box::new(
                x.parts
                    .uri
                    .authority()
                    .map(|a| ("host", a.as_str().as_bytes()))
                    .into_iter()
                    .chain(x.parts.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()))),
            ),
        }
    }

    pub fn has_body(&self) -> bool {
        match &self.inner {
            Inner::H1(c) => !c.body.is_done(),
            Inner::H2(x) => !x.body.is_end_stream(),
        }
    }

    /// Appends the next piece of the request body to `out`; returns how many
    /// bytes it added, 0 at the end of the body.
    pub async fn read_body(&mut self, out: &mut Vec<u8>) -> Result<usize, Error> {
        let c = match &mut self.inner {
            Inner::H1(c) => &mut **c,
            Inner::H2(x) => return x.read_body(out).await,
        };
        loop {
            if c.body.is_done() {
                return Ok(0);
            }
            if c.rb.is_empty() && c.rb.fill(&mut c.stream, c.cfg.io_timeout).await? == 0 {
                c.body.eof()?;
                return Ok(0);
            }
            let in_trailers = c.body.in_trailers();
            let step = c.body.decode(c.rb.data())?;
            if in_trailers {
                c.trailers.extend_from_slice(&c.rb.data()[..step.consumed]);
            }
            let data = &c.rb.data()[step.data.clone()];
            out.extend_from_slice(data);
            let n = data.len();
            c.rb.consume(step.consumed);
            if n > 0 {
                return Ok(n);
            }
        }
    }

    /// The request's trailer fields; call after [`read_body`](Self::read_body)
    /// returned 0.
    pub async fn trailers(&mut self) -> Result<Vec<(String, String)>, Error> {
        let pairs = match &mut self.inner {
            Inner::H1(c) => h1::trailer_fields(&c.trailers)
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            Inner::H2(x) => match x.body.trailers().await? {
                Some(map) => {
                    map.iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect()
                }
                None => Vec::new(),
            },
        };
        Ok(pairs)
    }

    /// Sends a complete response with a `Content-Length`.
    pub async fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), Error> {
        check_fields(headers)?;
        match &mut self.inner {
            Inner::H1(c) => Ok(c.respond(status, headers, body).await?),
            Inner::H2(x) => x.respond(status, headers, body).await,
        }
    }

    /// Sends a response head whose body follows with [`send`](Self::send)
    /// and ends with [`finish`](Self::finish) (chunked on HTTP/1.1).
    pub async fn start(&mut self, status: u16, headers: &[(&str, &str)]) -> Result<(), Error> {
        use std::io::Write;
        check_fields(headers)?;
        let c = match &mut self.inner {
            Inner::H1(c) => &mut **c,
            Inner::H2(x) => return x.start(status, headers),
        };
        c.out.clear();
        let _ = write!(c.out, "HTTP/1.1 {status} {}\r\n", h1::reason(status));
        for (k, v) in headers {
            let _ = write!(c.out, "{k}: {v}\r\n");
        }
        c.out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        if c.close_after {
            c.out.extend_from_slice(b"Connection: close\r\n");
        }
        c.out.extend_from_slice(b"\r\n");
        let head_only = c.head.is_head(&c.head_bytes);
        c.resp = if head_only { Resp::Done } else { Resp::Chunked };
        Ok(c.write_out().await?)
    }

    /// Sends one piece of a response started with [`start`](Self::start).
    pub async fn send(&mut self, data: &[u8]) -> Result<(), Error> {
        let c = match &mut self.inner {
            Inner::H1(c) => &mut **c,
            Inner::H2(x) => return x.send(data).await,
        };
        if c.resp != Resp::Chunked || data.is_empty() {
            return Ok(());
        }
        c.out.clear();
        h1::write_chunk(&mut c.out, data);
        Ok(c.write_out().await?)
    }

    /// Ends a response started with [`start`](Self::start) with trailer
    /// fields (RFC 9110 §6.5): the last chunk's trailer section on HTTP/1.1,
    /// a trailing HEADERS frame on HTTP/2.
    pub async fn finish_with_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<(), Error> {
        check_fields(trailers)?;
        let c = match &mut self.inner {
            Inner::H1(c) => &mut **c,
            Inner::H2(x) => return x.finish_with_trailers(trailers).await,
        };
        if c.resp != Resp::Chunked {
            return Ok(());
        }
        c.out.clear();
        c.out.extend_from_slice(b"0\r\n");
        for (k, v) in trailers {
            h1::write_field(&mut c.out, k.as_bytes(), v.as_bytes());
        }
        c.out.extend_from_slice(b"\r\n");
        c.resp = Resp::Done;
        Ok(c.write_out().await?)
    }

    /// Ends a response started with [`start`](Self::start).
    pub async fn finish(&mut self) -> Result<(), Error> {
        let c = match &mut self.inner {
            Inner::H1(c) => &mut **c,
            Inner::H2(x) => return x.finish().await,
        };
        if c.resp != Resp::Chunked {
            return Ok(());
        }
        c.out.clear();
        c.out.extend_from_slice(h1::LAST_CHUNK);
        c.resp = Resp::Done;
        Ok(c.write_out().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_fields_cannot_split_the_head_or_reframe_it() {
        assert!(check_fields(&[("Content-Type", "text/plain"), ("X-A", "a b\tc")]).is_ok());
        for bad in [
            ("X-A", "a\r\nSet-Cookie: x=1"),
            ("X A", "v"),
            ("", "v"),
            ("X-A", "nul\0"),
            ("Content-Length", "5"),
            ("transfer-encoding", "chunked"),
        ] {
            assert!(check_fields(&[bad]).is_err(), "{bad:?}");
        }
    }
}
