//! Sidecar mode: forward every request that arrives on a tunnel to a local
//! HTTP/1.1 origin over a keep-alive pool, and relay the response back.
//!
//! Place in the request path: lb → tunnel → **this** → origin (loopback) and
//! back. The lb has already normalized the request (hop-by-hop fields gone,
//! `Forwarded` added), so the head goes to the origin as received.

use std::cell::RefCell;

use monoio::net::TcpStream;
use ptth_proto::h1::{self, BodyDecoder, Parsed, Persist, ResponseHead, Version};
use ptth_proto::rt::io::{send_message, BodyMode, ReadBuf, RelayError};

use crate::error::Error;
use crate::tunnel::{Exchange, Handler, Resp};

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
}

/// The sidecar handler: one per worker thread, with that thread's pool.
pub struct Sidecar {
    origin: OriginAddr,
    idle: RefCell<Vec<OriginConn>>,
}

impl Sidecar {
    pub fn new(origin: OriginAddr) -> Sidecar {
        Sidecar { origin, idle: RefCell::new(Vec::new()) }
    }

    fn err(&self, why: impl std::fmt::Display) -> Error {
        Error::Origin { origin: self.origin.authority.clone(), why: why.to_string() }
    }

    async fn connect(&self, ex: &Exchange<'_>) -> Result<OriginConn, Error> {
        let t = ex.c.cfg.connect_timeout;
        let stream = match monoio::time::timeout(t, TcpStream::connect(self.origin.authority.as_str())).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(self.err(format!("connect: {e}"))),
            Err(_) => return Err(self.err("connect timed out")),
        };
        let _ = stream.set_nodelay(true);
        Ok(OriginConn { stream, rb: ReadBuf::with_capacity(ORIGIN_BUF), out: Vec::with_capacity(4096), head: ResponseHead::default() })
    }

    /// Sends the request head and body; reads the response head.
    /// `Ok(false)`: a pooled connection turned out dead before anything of the
    /// request could have been processed, and the request can be replayed.
    async fn exchange_once(&self, ex: &mut Exchange<'_>, oc: &mut OriginConn, reused: bool) -> Result<bool, Error> {
        let c = &mut *ex.c;
        let io = c.cfg.io_timeout;
        let replayable = reused && c.body.is_done();
        let mut out = std::mem::take(&mut oc.out);
        out.extend_from_slice(&c.head_bytes);
        let (res, out) = send_message(&mut oc.stream, out, &mut c.stream, &mut c.rb, &mut c.body, BodyMode::Pass, io).await;
        oc.out = out;
        match res {
            Ok(_) => {}
            Err(RelayError::Write(_)) if replayable => return Ok(false),
            Err(RelayError::Write(e)) => return Err(self.err(format!("sending the request: {e}"))),
            Err(e) => return Err(e.into()),
        }
        let is_head = c.head.is_head(&c.head_bytes);
        loop {
            match h1::parse_response(oc.rb.data(), &c.cfg.limits, is_head, &mut oc.head) {
                Ok(Parsed::Complete) if (100..200).contains(&oc.head.status) => {
                    // Interim responses end here: the lb already answered any
                    // Expect: 100-continue toward its client.
                    oc.rb.consume(oc.head.len);
                    continue;
                }
                Ok(Parsed::Complete) => return Ok(true),
                Ok(Parsed::Partial) => {}
                Err(e) => return Err(self.err(format!("invalid response head: {e}"))),
            }
            match oc.rb.fill(&mut oc.stream, io).await {
                Ok(0) if replayable && oc.rb.is_empty() => return Ok(false),
                Ok(0) => return Err(self.err("closed the connection before a response")),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(self.err("response timed out")),
                Err(e) if replayable && oc.rb.is_empty() => {
                    let _ = e;
                    return Ok(false);
                }
                Err(e) => return Err(self.err(format!("reading the response: {e}"))),
            }
        }
    }
}

impl Handler for Sidecar {
    async fn handle(&self, ex: &mut Exchange<'_>) -> Result<(), Error> {
        let pooled = self.idle.borrow_mut().pop();
        let replayed = match pooled {
            Some(mut oc) => self.exchange_once(ex, &mut oc, true).await?.then_some(oc),
            None => None,
        };
        let mut oc = match replayed {
            Some(oc) => oc,
            None => {
                let mut fresh = self.connect(ex).await?;
                if !self.exchange_once(ex, &mut fresh, false).await? {
                    return Err(self.err("closed the connection before a response"));
                }
                fresh
            }
        };
        let c = &mut *ex.c;
        let framing = oc.head.framing();
        let until_close = framing == h1::Framing::UntilClose;
        // A close-delimited origin body can only be relayed close-delimited:
        // the tunnel ends with it (the worker redials).
        c.close_after |= until_close;
        let persist = if c.close_after { Persist::Close } else { Persist::KeepAlive };
        let mut out = std::mem::take(&mut c.out);
        out.clear();
        h1::write_response_head(&mut out, oc.rb.data(), &oc.head, Version::Http11, persist, false);
        let origin_close = oc.head.conn.close;
        oc.rb.consume(oc.head.len);
        let mut dec = BodyDecoder::new(framing);
        c.resp = Resp::Done;
        let (res, out) = send_message(&mut c.stream, out, &mut oc.stream, &mut oc.rb, &mut dec, BodyMode::Pass, c.cfg.io_timeout).await;
        c.out = out;
        res?;
        if !origin_close && dec.is_done() && oc.rb.is_empty() {
            let mut idle = self.idle.borrow_mut();
            if idle.len() < POOL_MAX {
                idle.push(oc);
            }
        }
        Ok(())
    }
}
