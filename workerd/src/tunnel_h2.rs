//! Serving requests on a tunnel whose inner protocol is HTTP/2 (the lb sent
//! the client preface right after the `101`, draft-kazuho-ptth-ptth-01 §4).
//!
//! Place in the request path: lb → **h2 tunnel** → one task per stream →
//! [`Handler`] → response on the same stream. The worker's
//! SETTINGS_MAX_CONCURRENT_STREAMS is the tunnel's capacity at the lb.
//! Drain: on stop the worker sends GOAWAY (h2's graceful shutdown is the
//! two-step of RFC 9113 §6.8: GOAWAY with the highest id, a PING, then the
//! final GOAWAY), finishes the streams in flight, then closes.

use std::rc::Rc;

use bytes::Bytes;
use ptth_proto::h1;
use ptth_proto::rt::h2io::{self, MAX_FRAME};
use ptth_proto::rt::io::Prefixed;
use ptth_proto::rt::signal::Signal;

use crate::config::Config;
use crate::error::Error;
use crate::tunnel::{Ended, Exchange, Handler, Inner, Resp};

/// One stream's request and response state.
pub(crate) struct H2Exchange {
    pub(crate) parts: http::request::Parts,
    pub(crate) body: h2::RecvStream,
    respond: h2::server::SendResponse<Bytes>,
    out: Option<h2::SendStream<Bytes>>,
    pub(crate) resp: Resp,
    is_head: bool,
    pub(crate) cfg: Rc<Config>,
}

fn response(status: u16, headers: &[(&str, &str)]) -> Result<http::Response<()>, Error> {
    let mut b = http::Response::builder().status(status);
    // Connection-specific fields are illegal in HTTP/2 (RFC 9113 §8.2.2),
    // and so are the fields a Connection field names.
    let named = |name: &str| {
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
            .any(|(_, v)| h1::list_items(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(name.as_bytes())))
    };
    for (k, v) in headers {
        if !h2io::is_h1_only(k.as_bytes()) && !named(k) {
            b = b.header(*k, *v);
        }
    }
    b.body(()).map_err(|e| Error::Handler(format!("invalid response head: {e}")))
}

impl H2Exchange {
    pub(crate) async fn read_body(&mut self, out: &mut Vec<u8>) -> Result<usize, Error> {
        loop {
            match h2io::recv_data(&mut self.body).await {
                None => return Ok(0),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(b)) if b.is_empty() => continue,
                Some(Ok(b)) => {
                    out.extend_from_slice(&b);
                    return Ok(b.len());
                }
            }
        }
    }

    pub(crate) async fn respond(&mut self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Result<(), Error> {
        let mut r = response(status, headers)?;
        let empty = body.is_empty() || self.is_head;
        if status >= 200 && status != 204 && status != 304 {
            r.headers_mut().insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
        }
        self.resp = Resp::Done;
        let mut s = self.respond.send_response(r, empty)?;
        if !empty {
            h2io::send_data(&mut s, Bytes::copy_from_slice(body), true).await?;
        }
        Ok(())
    }

    pub(crate) fn start(&mut self, status: u16, headers: &[(&str, &str)]) -> Result<(), Error> {
        let r = response(status, headers)?;
        let s = self.respond.send_response(r, self.is_head)?;
        self.resp = if self.is_head { Resp::Done } else { Resp::Chunked };
        self.out = Some(s);
        Ok(())
    }

    pub(crate) async fn send(&mut self, data: &[u8]) -> Result<(), Error> {
        match (&mut self.out, self.resp) {
            (Some(s), Resp::Chunked) if !data.is_empty() => Ok(h2io::send_data(s, Bytes::copy_from_slice(data), false).await?),
            _ => Ok(()),
        }
    }

    /// Sends body bytes the caller already owns (no copy); `last` ends the
    /// stream in the same DATA frame instead of an empty one after it.
    pub(crate) async fn send_bytes(&mut self, data: Bytes, last: bool) -> Result<(), Error> {
        match (&mut self.out, self.resp) {
            (Some(s), Resp::Chunked) if !data.is_empty() || last => {
                if last {
                    self.resp = Resp::Done;
                }
                Ok(h2io::send_data(s, data, last).await?)
            }
            _ => Ok(()),
        }
    }

    pub(crate) async fn finish(&mut self) -> Result<(), Error> {
        if let (Some(s), Resp::Chunked) = (&mut self.out, self.resp) {
            self.resp = Resp::Done;
            h2io::send_data(s, Bytes::new(), true).await?;
        }
        Ok(())
    }

    pub(crate) async fn finish_with_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<(), Error> {
        if trailers.is_empty() {
            return self.finish().await;
        }
        if let (Some(s), Resp::Chunked) = (&mut self.out, self.resp) {
            self.resp = Resp::Done;
            let mut map = http::HeaderMap::new();
            for (k, v) in trailers {
                let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|e| Error::Handler(format!("trailer {k}: {e}")))?;
                let value = http::HeaderValue::from_str(v).map_err(|e| Error::Handler(format!("trailer {k}: {e}")))?;
                map.append(name, value);
            }
            s.send_trailers(map)?;
        }
        Ok(())
    }

    /// Ends a started response with trailers already in a map.
    pub(crate) fn finish_with_trailer_map(&mut self, map: http::HeaderMap) -> Result<(), Error> {
        if let (Some(s), Resp::Chunked) = (&mut self.out, self.resp) {
            self.resp = Resp::Done;
            if map.is_empty() {
                s.send_data(Bytes::new(), true)?;
            } else {
                s.send_trailers(map)?;
            }
        }
        Ok(())
    }

    /// Starts a response from parts (the sidecar relays an origin's head).
    pub(crate) fn start_parts(&mut self, r: http::Response<()>, end: bool) -> Result<(), Error> {
        let end = end || self.is_head;
        let s = self.respond.send_response(r, end)?;
        self.resp = if end { Resp::Done } else { Resp::Chunked };
        self.out = Some(s);
        Ok(())
    }
}

/// Serves an h2 tunnel until the lb closes it or the stop signal has drained it.
pub(crate) async fn serve<H: Handler>(
    stream: crate::TunnelStream,
    leftover: Vec<u8>,
    handler: Rc<H>,
    cfg: Rc<Config>,
    stop: &Signal,
) -> Result<Ended, Error> {
    let io = Prefixed::new(leftover, stream.into_poll()?);
    let handshake = h2::server::Builder::new()
        .initial_window_size(cfg.windows.stream)
        .initial_connection_window_size(cfg.windows.connection)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(cfg.max_streams)
        .handshake::<_, Bytes>(io);
    let mut conn = match ptth_proto::rt::deadline::within(cfg.setup_timeout, handshake).await {
        Ok(c) => c?,
        Err(_) => return Err(Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "h2 preface timed out"))),
    };
    let mut draining = false;
    // One waiter for the tunnel's life, not one per stream.
    let mut stopped = stop.wait();
    loop {
        let next = if draining {
            conn.accept().await
        } else {
            monoio::select! {
                biased;
                n = conn.accept() => n,
                _ = &mut stopped => {
                    conn.graceful_shutdown();
                    draining = true;
                    continue;
                }
            }
        };
        let (req, respond) = match next {
            None => return Ok(if draining { Ended::Finished } else { Ended::Closed }),
            Some(Err(e)) if draining || e.is_go_away() || e.is_io() => return Ok(Ended::Closed),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(pair)) => pair,
        };
        let (parts, body) = req.into_parts();
        let handler = handler.clone();
        let cfg = cfg.clone();
        monoio::spawn(async move {
            let is_head = parts.method == http::Method::HEAD;
            let mut x = H2Exchange { parts, body, respond, out: None, resp: Resp::Pending, is_head, cfg };
            let r = handler.handle(&mut Exchange { inner: Inner::H2(&mut x) }).await;
            finish_stream(&mut x, r).await;
        });
    }
}

/// What a handler left undone: a response if none was sent, the end of a
/// started one, or a reset after an error mid-response.
async fn finish_stream(x: &mut H2Exchange, r: Result<(), Error>) {
    match (r, x.resp) {
        (Ok(()), Resp::Done) => {}
        (Ok(()), Resp::Chunked) => {
            let _ = x.finish().await;
        }
        (Ok(()), Resp::Pending) => {
            let _ = x.respond(500, &[("content-type", "text/plain")], b"handler returned without a response\n").await;
        }
        (Err(e), Resp::Pending) => {
            e.log_answered();
            let _ = x.respond(e.status(), e.answer_fields(), e.client_body().as_bytes()).await;
        }
        (Err(_), _) => {
            if let Some(s) = &mut x.out {
                s.send_reset(h2::Reason::INTERNAL_ERROR);
            }
        }
    }
}

/// The sidecar relays an origin's HTTP/1.1 body into the stream's response
/// with the shared relay (`ptth_proto::rt::body`).
impl ptth_proto::rt::body::DataSink for H2Exchange {
    type Error = Error;
    async fn data(&mut self, data: Bytes, end: bool) -> Result<(), Error> {
        self.send_bytes(data, end).await
    }
    fn trailers(&mut self, trailers: http::HeaderMap) -> Result<(), Error> {
        self.finish_with_trailer_map(trailers)
    }
}
