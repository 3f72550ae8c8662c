//! A message body as every leg relays it, whatever its protocol: a
//! [`Source`] yields [`Piece`]s (payload, trailers, end), a [`Sink`] writes
//! them in its own protocol, and [`relay`] moves one to the other with
//! backpressure (a piece is written before the next one is read). The four
//! kinds of end are here once:
//!
//! - [`H1Source`]: an HTTP/1.1 body in its received framing, checked by a
//!   [`BodyDecoder`] (chunk framing removed, the trailer section kept whole);
//!   or the same over bytes already held whole ([`H1Source::held`]), which
//!   leaves them in place so a request can be sent again.
//! - [`H2Source`]: DATA frames and trailers of an HTTP/2 stream, flow-control
//!   capacity released as payload is taken.
//! - [`H1Sink`]: HTTP/1.1 payload as is, or in chunked coding with the last
//!   chunk carrying the trailers (RFC 9112 §7.1); what is written is coalesced
//!   (a response head and the first payload go out in one write).
//! - [`H2Sink`]: DATA frames within the peer's flow-control window, END_STREAM
//!   on the last one, trailers as a HEADERS frame (RFC 9113 §8.1).
//!
//! The lb relays client bodies to tunnels and responses back with these, the
//! worker's sidecar tunnel requests to its origin and responses back: every
//! HTTP/1.1 ↔ HTTP/2 body conversion of the project is this module.

use std::cell::Cell;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use monoio::io::{AsyncReadRent, AsyncWriteRent};

use crate::error::BodyError;
use crate::h1::{self, BodyDecoder};
use crate::rt::h2io;
use crate::rt::io::{write_all, ReadBuf};

/// One part of a body on its way from a source to a sink.
#[derive(Debug)]
pub enum Piece<'a> {
    /// Payload lent from the source's read buffer.
    Data(&'a [u8]),
    /// Payload as the HTTP/2 stack delivered it.
    Bytes(Bytes),
    /// The trailer section; it ends the body.
    Trailers(Trailers<'a>),
    /// The body ended.
    End,
}

/// A trailer section in the form its source received it.
#[derive(Debug)]
pub enum Trailers<'a> {
    /// HTTP/1.1 trailer field lines and the empty line that ends them, as
    /// received and checked by the chunked decoder.
    H1(&'a [u8]),
    /// HTTP/2 trailers.
    H2(http::HeaderMap),
}

impl Trailers<'_> {
    /// As HTTP/2 trailers, without the fields banned in trailers
    /// ([`h2io::is_banned_in_trailers`]).
    fn into_h2(self) -> http::HeaderMap {
        match self {
            Trailers::H1(section) => h2io::trailers_from_h1(section),
            Trailers::H2(mut map) => {
                let banned: Vec<http::HeaderName> =
                    map.keys().filter(|k| h2io::is_banned_in_trailers(k.as_str().as_bytes())).cloned().collect();
                for k in banned {
                    map.remove(k);
                }
                map
            }
        }
    }

    /// As an HTTP/1.1 trailer section ending in the empty line, without the
    /// fields banned in trailers (a section as received is passed on byte
    /// for byte when it has none).
    fn write_h1(&self, out: &mut Vec<u8>) {
        match self {
            Trailers::H1(section) => {
                let fields = h1::trailer_fields(section);
                if !fields.iter().any(|(k, _)| h2io::is_banned_in_trailers(k)) {
                    out.extend_from_slice(section);
                    return;
                }
                for (k, v) in fields.into_iter().filter(|(k, _)| !h2io::is_banned_in_trailers(k)) {
                    h1::write_field(out, k, v);
                }
                out.extend_from_slice(b"\r\n");
            }
            Trailers::H2(map) => {
                h2io::write_h1_trailer_fields(out, map);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// Where a body comes from.
#[allow(async_fn_in_trait)]
pub trait Source {
    type Error;
    /// Whether [`Source::next`] can answer without waiting for the peer. A
    /// relay flushes its sink before a piece it would have to wait for, and
    /// only then: a response head and a payload that arrived together leave
    /// in one write.
    fn ready(&mut self) -> bool;
    /// The next piece; after [`Piece::End`] or [`Piece::Trailers`], nothing.
    async fn next(&mut self) -> Result<Piece<'_>, Self::Error>;
}

/// Where a body goes.
#[allow(async_fn_in_trait)]
pub trait Sink {
    type Error;
    /// Takes one piece; may keep it buffered until [`Sink::flush`].
    async fn put(&mut self, piece: Piece<'_>) -> Result<(), Self::Error>;
    /// Writes out whatever is buffered.
    async fn flush(&mut self) -> Result<(), Self::Error>;
    /// Before waiting on the source: writes what is buffered (a sink may
    /// hold a response head alone back for its first payload, see
    /// [`H1Sink::holding_head`]).
    async fn flush_before_wait(&mut self) -> Result<(), Self::Error> {
        self.flush().await
    }
}

/// Which end of a relay failed.
#[derive(Debug)]
pub enum RelayError<S, K> {
    Source(S),
    Sink(K),
}

/// Relays a body from `src` to `sink` until it ends, one piece at a time:
/// memory is bounded by the two ends' buffers whatever the body's size, and
/// what is buffered is flushed before waiting on the source.
pub async fn relay<S: Source, K: Sink>(src: &mut S, sink: &mut K) -> Result<(), RelayError<S::Error, K::Error>> {
    loop {
        if !src.ready() {
            sink.flush_before_wait().await.map_err(RelayError::Sink)?;
        }
        let piece = src.next().await.map_err(RelayError::Source)?;
        let end = matches!(piece, Piece::End | Piece::Trailers(_));
        sink.put(piece).await.map_err(RelayError::Sink)?;
        if end {
            return sink.flush().await.map_err(RelayError::Sink);
        }
    }
}

/// A body with nothing in it.
pub struct Empty;

impl Source for Empty {
    type Error = std::convert::Infallible;
    fn ready(&mut self) -> bool {
        true
    }
    async fn next(&mut self) -> Result<Piece<'_>, Self::Error> {
        Ok(Piece::End)
    }
}

/// How reading an HTTP/1.1 body failed.
#[derive(Debug, thiserror::Error)]
pub enum H1SourceError {
    #[error("reading the body: {0}")]
    Read(io::Error),
    /// Invalid framing, or [`BodyError::Truncated`]: the peer closed mid-body.
    #[error("{0}")]
    Body(#[from] BodyError),
}

enum Input<'a, R> {
    /// Read from `r` after what `rb` holds; consumed as relayed.
    Stream { r: &'a mut R, rb: &'a mut ReadBuf, deadline: Duration },
    /// A body already held whole; left where it is.
    Held { data: &'a [u8], at: usize },
}

/// An HTTP/1.1 body in its received framing.
pub struct H1Source<'a, R> {
    input: Input<'a, R>,
    dec: &'a mut BodyDecoder,
    /// Bytes of the last step, consumed when the next piece is asked for
    /// (the piece lent them out).
    pending: usize,
    /// The trailer section, gathered whole before it is passed on.
    section: Vec<u8>,
    ended: bool,
}

impl<'a, R: AsyncReadRent> H1Source<'a, R> {
    /// The body read from `r`, starting with the bytes `rb` holds, framed as
    /// `dec` says. Bytes are consumed from `rb` as they are relayed.
    pub fn new(r: &'a mut R, rb: &'a mut ReadBuf, dec: &'a mut BodyDecoder, deadline: Duration) -> Self {
        H1Source { input: Input::Stream { r, rb, deadline }, dec, pending: 0, section: Vec::new(), ended: false }
    }
}

impl<'a> H1Source<'a, &'a [u8]> {
    /// A body already received whole (`data`, framed as `dec` says, which is
    /// advanced on a copy the caller keeps): nothing is consumed, so the same
    /// bytes can be relayed again.
    pub fn held(data: &'a [u8], dec: &'a mut BodyDecoder) -> Self {
        H1Source { input: Input::Held { data, at: 0 }, dec, pending: 0, section: Vec::new(), ended: false }
    }
}

/// The bytes received and not yet relayed.
fn buffered<'b, R>(input: &'b Input<'_, R>) -> &'b [u8] {
    match input {
        Input::Stream { rb, .. } => rb.data(),
        Input::Held { data, at } => &data[*at..],
    }
}

fn consume<R>(input: &mut Input<'_, R>, n: usize) {
    match input {
        Input::Stream { rb, .. } => rb.consume(n),
        Input::Held { at, .. } => *at += n,
    }
}

impl<R: AsyncReadRent> Source for H1Source<'_, R> {
    type Error = H1SourceError;

    fn ready(&mut self) -> bool {
        self.ended || self.dec.is_done() || buffered(&self.input).len() > self.pending
    }

    async fn next(&mut self) -> Result<Piece<'_>, H1SourceError> {
        let n = std::mem::take(&mut self.pending);
        consume(&mut self.input, n);
        loop {
            if self.ended {
                return Ok(Piece::End);
            }
            if self.dec.is_done() {
                self.ended = true;
                return Ok(if self.section.is_empty() { Piece::End } else { Piece::Trailers(Trailers::H1(&self.section)) });
            }
            if buffered(&self.input).is_empty() {
                let got = match &mut self.input {
                    Input::Stream { r, rb, deadline } => rb.fill(&mut **r, *deadline).await.map_err(H1SourceError::Read)?,
                    Input::Held { .. } => 0,
                };
                if got == 0 {
                    // A close-delimited body ends here; any other is cut short.
                    self.dec.eof()?;
                    continue;
                }
            }
            let in_trailers = self.dec.in_trailers();
            let step = self.dec.decode(buffered(&self.input))?;
            if in_trailers {
                let s = &buffered(&self.input)[..step.consumed];
                self.section.extend_from_slice(s);
                consume(&mut self.input, step.consumed);
                // A section with no field lines is just the body's end.
                if self.dec.is_done() && self.section == b"\r\n" {
                    self.section.clear();
                }
                continue;
            }
            if step.data.is_empty() {
                consume(&mut self.input, step.consumed);
                continue;
            }
            // Lend the payload; its bytes (and the framing before them) are
            // consumed on the next call.
            self.pending = step.consumed;
            let data = step.data;
            return Ok(Piece::Data(&buffered(&self.input)[data]));
        }
    }
}

/// An HTTP/2 stream's body: DATA payloads, then trailers or the end.
pub struct H2Source<'a> {
    body: &'a mut h2::RecvStream,
    /// What [`Source::ready`] found already received, handed out next.
    peeked: Option<Result<Peeked, h2::Error>>,
    ended: bool,
}

enum Peeked {
    Data(Bytes),
    Trailers(http::HeaderMap),
    End,
}

impl<'a> H2Source<'a> {
    pub fn new(body: &'a mut h2::RecvStream) -> Self {
        H2Source { body, peeked: None, ended: false }
    }

    /// The next frame's worth, if h2 has it received already (one poll with
    /// a no-op waker: the real wait re-registers the task's own).
    fn poll_now(&mut self) -> Option<Result<Peeked, h2::Error>> {
        use std::task::{Context, Poll, Waker};
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            match self.body.poll_data(&mut cx) {
                Poll::Ready(Some(Ok(d))) => {
                    let _ = self.body.flow_control().release_capacity(d.len());
                    if d.is_empty() {
                        continue;
                    }
                    return Some(Ok(Peeked::Data(d)));
                }
                Poll::Ready(Some(Err(e))) => return Some(Err(e)),
                Poll::Ready(None) => break,
                Poll::Pending => return None,
            }
        }
        match self.body.poll_trailers(&mut cx) {
            Poll::Ready(Ok(Some(t))) => Some(Ok(Peeked::Trailers(t))),
            Poll::Ready(Ok(None)) => Some(Ok(Peeked::End)),
            Poll::Ready(Err(e)) => Some(Err(e)),
            Poll::Pending => None,
        }
    }

    /// A payload; when its frame carried END_STREAM, the end is known now
    /// (no trailers can follow), so it is handed out next without asking
    /// h2 twice more.
    fn data(&mut self, d: Bytes) -> Piece<'static> {
        if self.body.is_end_stream() {
            self.peeked = Some(Ok(Peeked::End));
        }
        Piece::Bytes(d)
    }

    fn hand_out(&mut self, p: Peeked) -> Piece<'_> {
        match p {
            Peeked::Data(d) => self.data(d),
            Peeked::Trailers(t) => {
                self.ended = true;
                Piece::Trailers(Trailers::H2(t))
            }
            Peeked::End => {
                self.ended = true;
                Piece::End
            }
        }
    }
}

impl Source for H2Source<'_> {
    type Error = h2::Error;

    fn ready(&mut self) -> bool {
        if self.ended || self.peeked.is_some() {
            return true;
        }
        self.peeked = self.poll_now();
        self.peeked.is_some()
    }

    async fn next(&mut self) -> Result<Piece<'_>, h2::Error> {
        if self.ended {
            return Ok(Piece::End);
        }
        if let Some(p) = self.peeked.take() {
            let p = p?;
            return Ok(self.hand_out(p));
        }
        while let Some(d) = h2io::recv_data(self.body).await {
            let d = d?;
            if !d.is_empty() {
                return Ok(self.data(d));
            }
        }
        let p = match self.body.trailers().await? {
            Some(t) => Peeked::Trailers(t),
            None => Peeked::End,
        };
        Ok(self.hand_out(p))
    }
}

/// Most bytes an [`H1Sink`] buffers before writing.
const COALESCE_MAX: usize = 64 * 1024;

/// HTTP/1.1 payload to a byte stream, as is or chunked.
pub struct H1Sink<'a, W> {
    w: &'a mut W,
    out: &'a mut Vec<u8>,
    chunked: bool,
    deadline: Duration,
    /// Set once a write went out whole.
    wrote: &'a Cell<bool>,
    /// Bytes at the start of `out` that are the message's head: a write
    /// that fails before any write went out, holding only them, failed to
    /// deliver a whole head.
    head: usize,
    head_only_failed: bool,
    /// See [`H1Sink::holding_head`].
    hold_head: bool,
}

impl<'a, W: AsyncWriteRent> H1Sink<'a, W> {
    /// A sink whose first write starts with the bytes already in `out` (a
    /// head). `chunked`: payload goes in chunked coding.
    pub fn new(w: &'a mut W, out: &'a mut Vec<u8>, chunked: bool, deadline: Duration, wrote: &'a Cell<bool>) -> Self {
        let head = out.len();
        H1Sink { w, out, chunked, deadline, wrote, head, head_only_failed: false, hold_head: false }
    }

    /// A response sink: its head waits for the first payload (or the end)
    /// rather than leaving alone, so a head and a body that arrive a moment
    /// apart still go out in one write. Request sinks do not hold theirs: a
    /// worker may answer a request head before its body arrives.
    pub fn holding_head(mut self) -> Self {
        self.hold_head = true;
        self
    }

    /// A write failed before anything went out whole, and it held the head
    /// alone: the peer cannot have received a complete message head.
    pub fn failed_before_head(&self) -> bool {
        self.head_only_failed
    }
}

impl<W: AsyncWriteRent> Sink for H1Sink<'_, W> {
    type Error = io::Error;

    async fn put(&mut self, piece: Piece<'_>) -> io::Result<()> {
        match piece {
            Piece::Data(d) => self.payload(d),
            Piece::Bytes(d) => self.payload(&d),
            Piece::Trailers(t) if self.chunked => {
                self.out.extend_from_slice(b"0\r\n");
                t.write_h1(self.out);
            }
            // Without chunked coding HTTP/1.1 has nowhere to put trailers
            // (RFC 9110 §6.5: they may be dropped).
            Piece::Trailers(_) => {}
            Piece::End if self.chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
            Piece::End => {}
        }
        if self.out.len() >= COALESCE_MAX {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush_before_wait(&mut self) -> io::Result<()> {
        if self.hold_head && !self.wrote.get() && self.out.len() == self.head {
            return Ok(());
        }
        self.flush().await
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let head_only = !self.wrote.get() && self.out.len() == self.head;
        let (res, buf) = write_all(self.w, std::mem::take(self.out), self.deadline).await;
        *self.out = buf;
        match res {
            Ok(()) => {
                self.wrote.set(true);
                Ok(())
            }
            Err(e) => {
                self.head_only_failed = head_only;
                Err(e)
            }
        }
    }
}

impl<W> H1Sink<'_, W> {
    fn payload(&mut self, d: &[u8]) {
        if self.chunked {
            h1::write_chunk(self.out, d);
        } else {
            self.out.extend_from_slice(d);
        }
    }
}

/// Where an [`H2Sink`] sends: an h2 send stream, or anything else that takes
/// DATA and trailers (the worker's sidecar answering on its tunnel).
#[allow(async_fn_in_trait)]
pub trait DataSink {
    type Error;
    /// DATA with `data`; `end`: END_STREAM on this frame.
    async fn data(&mut self, data: Bytes, end: bool) -> Result<(), Self::Error>;
    /// Trailers, which end the stream (RFC 9113 §8.1).
    fn trailers(&mut self, trailers: http::HeaderMap) -> Result<(), Self::Error>;
}

impl DataSink for h2::SendStream<Bytes> {
    type Error = h2::Error;
    async fn data(&mut self, data: Bytes, end: bool) -> Result<(), h2::Error> {
        h2io::send_data(self, data, end).await
    }
    fn trailers(&mut self, trailers: http::HeaderMap) -> Result<(), h2::Error> {
        self.send_trailers(trailers)
    }
}

/// A body as HTTP/2 DATA frames. The last payload is held back one piece so
/// END_STREAM rides on it rather than on an empty frame after it.
pub struct H2Sink<'a, D> {
    s: &'a mut D,
    held: Option<Bytes>,
    /// The stream already ended (its head carried END_STREAM).
    ended: bool,
    wrote: &'a Cell<bool>,
}

impl<'a, D: DataSink> H2Sink<'a, D> {
    /// `ended`: the head went with END_STREAM, nothing more may follow.
    pub fn new(s: &'a mut D, ended: bool, wrote: &'a Cell<bool>) -> Self {
        H2Sink { s, held: None, ended, wrote }
    }

    async fn send(&mut self, data: Bytes, end: bool) -> Result<(), D::Error> {
        self.s.data(data, end).await?;
        self.wrote.set(true);
        Ok(())
    }
}

impl<D: DataSink> Sink for H2Sink<'_, D> {
    type Error = D::Error;

    async fn put(&mut self, piece: Piece<'_>) -> Result<(), D::Error> {
        if self.ended {
            return Ok(());
        }
        let next = match piece {
            Piece::Data(d) => Bytes::copy_from_slice(d),
            Piece::Bytes(d) => d,
            Piece::Trailers(t) => {
                if let Some(d) = self.held.take() {
                    self.send(d, false).await?;
                }
                self.ended = true;
                let map = t.into_h2();
                if map.is_empty() {
                    return self.send(Bytes::new(), true).await;
                }
                self.s.trailers(map)?;
                self.wrote.set(true);
                return Ok(());
            }
            Piece::End => {
                self.ended = true;
                let last = self.held.take().unwrap_or_default();
                return self.send(last, true).await;
            }
        };
        if let Some(d) = self.held.replace(next) {
            self.send(d, false).await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), D::Error> {
        match self.held.take() {
            Some(d) => self.send(d, false).await,
            None => Ok(()),
        }
    }
}

/// How either end of a relay failed, whatever its protocol.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Body(BodyError),
    #[error("{0}")]
    H2(h2::Error),
}

impl From<H1SourceError> for Fault {
    fn from(e: H1SourceError) -> Fault {
        match e {
            H1SourceError::Read(e) => Fault::Io(e),
            H1SourceError::Body(e) => Fault::Body(e),
        }
    }
}

/// Any of the sources, so one relay serves every protocol pair.
pub enum AnySource<'a, R> {
    Empty,
    H1(H1Source<'a, R>),
    Held(H1Source<'a, &'a [u8]>),
    H2(H2Source<'a>),
}

impl<R: AsyncReadRent> Source for AnySource<'_, R> {
    type Error = Fault;
    fn ready(&mut self) -> bool {
        match self {
            AnySource::Empty => true,
            AnySource::H1(s) => s.ready(),
            AnySource::Held(s) => s.ready(),
            AnySource::H2(s) => s.ready(),
        }
    }
    async fn next(&mut self) -> Result<Piece<'_>, Fault> {
        match self {
            AnySource::Empty => Ok(Piece::End),
            AnySource::H1(s) => Ok(s.next().await?),
            AnySource::Held(s) => Ok(s.next().await?),
            AnySource::H2(s) => s.next().await.map_err(Fault::H2),
        }
    }
}

/// Either sink, so one relay serves every protocol pair.
pub enum AnySink<'a, W> {
    H1(H1Sink<'a, W>),
    H2(H2Sink<'a, h2::SendStream<Bytes>>),
}

impl<W: AsyncWriteRent> Sink for AnySink<'_, W> {
    type Error = Fault;
    async fn put(&mut self, piece: Piece<'_>) -> Result<(), Fault> {
        match self {
            AnySink::H1(s) => s.put(piece).await.map_err(Fault::Io),
            AnySink::H2(s) => s.put(piece).await.map_err(Fault::H2),
        }
    }
    async fn flush(&mut self) -> Result<(), Fault> {
        match self {
            AnySink::H1(s) => s.flush().await.map_err(Fault::Io),
            AnySink::H2(s) => s.flush().await.map_err(Fault::H2),
        }
    }
    async fn flush_before_wait(&mut self) -> Result<(), Fault> {
        match self {
            AnySink::H1(s) => s.flush_before_wait().await.map_err(Fault::Io),
            AnySink::H2(s) => s.flush_before_wait().await.map_err(Fault::H2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::Framing;

    /// A sink that records what it was given, as HTTP/1.1 would frame it.
    #[derive(Default)]
    struct Record(Vec<String>);

    impl Sink for Record {
        type Error = ();
        async fn put(&mut self, piece: Piece<'_>) -> Result<(), ()> {
            self.0.push(match piece {
                Piece::Data(d) => format!("data {}", String::from_utf8_lossy(d)),
                Piece::Bytes(d) => format!("data {}", String::from_utf8_lossy(&d)),
                Piece::Trailers(t) => {
                    let mut out = Vec::new();
                    t.write_h1(&mut out);
                    format!("trailers {}", String::from_utf8_lossy(&out).trim_end())
                }
                Piece::End => "end".into(),
            });
            Ok(())
        }
        async fn flush(&mut self) -> Result<(), ()> {
            self.0.push("flush".into());
            Ok(())
        }
    }

    fn held(framing: Framing, body: &[u8]) -> Result<Vec<String>, RelayError<H1SourceError, ()>> {
        let mut dec = BodyDecoder::new(framing);
        let mut src = H1Source::held(body, &mut dec);
        let mut sink = Record::default();
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap().block_on(relay(&mut src, &mut sink))?;
        Ok(sink.0)
    }

    #[test]
    fn chunked_body_becomes_pieces() {
        let got = held(Framing::Chunked, b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n").unwrap();
        assert_eq!(got, ["data abc", "data de", "trailers X-T: 1", "flush"]);
        let got = held(Framing::Chunked, b"1\r\nz\r\n0\r\n\r\n").unwrap();
        assert_eq!(got, ["data z", "end", "flush"]);
        let got = held(Framing::Length(4), b"wxyz").unwrap();
        assert_eq!(got, ["data wxyz", "end", "flush"]);
    }

    /// RFC 9110 §6.5.1: fields that frame, route, authenticate or describe
    /// a message never leave in a trailer section, whichever protocol it
    /// came in and goes out on; the rest go on as they were.
    #[test]
    fn trailers_lose_the_fields_they_must_not_carry() {
        let got = held(
            Framing::Chunked,
            b"2\r\nhi\r\n0\r\nX-Checksum: 7\r\nContent-Length: 99\r\nhost: evil\r\nTransfer-Encoding: chunked\r\nX-Other: b\r\n\r\n",
        )
        .unwrap();
        assert_eq!(got, ["data hi", "trailers X-Checksum: 7\r\nX-Other: b", "flush"]);
        // Nothing to drop: byte for byte.
        let section = b"x-a:  spaced  \r\n\r\n";
        let mut out = Vec::new();
        Trailers::H1(section).write_h1(&mut out);
        assert_eq!(out, section);
        // HTTP/1.1 → HTTP/2 and HTTP/2 → either.
        let map = Trailers::H1(b"Content-Type: x\r\nAuthorization: y\r\nX-Ok: 1\r\n\r\n").into_h2();
        assert_eq!(map.len(), 1, "{map:?}");
        let mut h2 = http::HeaderMap::new();
        for (k, v) in [("content-length", "5"), ("set-cookie", "s=1"), ("grpc-status", "0")] {
            h2.insert(http::HeaderName::from_static(k), http::HeaderValue::from_static(v));
        }
        let mut out = Vec::new();
        Trailers::H2(h2.clone()).write_h1(&mut out);
        assert_eq!(out, b"grpc-status: 0\r\n\r\n");
        let map = Trailers::H2(h2).into_h2();
        assert_eq!(map.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["grpc-status"]);
    }

    #[test]
    fn a_held_body_cut_short_is_an_error() {
        assert!(matches!(held(Framing::Length(9), b"abc"), Err(RelayError::Source(H1SourceError::Body(BodyError::Truncated)))));
        assert!(matches!(held(Framing::Chunked, b"zz\r\n"), Err(RelayError::Source(H1SourceError::Body(BodyError::BadChunk(_))))));
    }

    #[test]
    fn h1_sink_rechunks_and_coalesces() {
        let rt = || monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap();
        let mut dec = BodyDecoder::new(Framing::Chunked);
        let body = b"3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
        let mut src = H1Source::held(body, &mut dec);
        let mut calls = Calls(Vec::new());
        let mut out = b"HEAD\r\n".to_vec();
        let wrote = Cell::new(false);
        {
            let mut sink = H1Sink::new(&mut calls, &mut out, true, Duration::from_secs(1), &wrote);
            rt().block_on(relay(&mut src, &mut sink)).unwrap();
        }
        let w = calls.0.concat();
        assert_eq!(w, b"HEAD\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n");
        assert!(wrote.get());
    }

    /// A source whose first piece is not there yet when asked.
    struct Late(u8);

    impl Source for Late {
        type Error = ();
        fn ready(&mut self) -> bool {
            self.0 > 0
        }
        async fn next(&mut self) -> Result<Piece<'_>, ()> {
            self.0 += 1;
            Ok(if self.0 == 1 { Piece::Data(b"body") } else { Piece::End })
        }
    }

    /// The writes made to a sink that starts with a head, holding it or not.
    fn writes(hold: bool) -> Vec<Vec<u8>> {
        let mut calls = Calls(Vec::new());
        let mut out = b"HEAD\r\n".to_vec();
        let wrote = Cell::new(false);
        {
            let sink = H1Sink::new(&mut calls, &mut out, false, Duration::from_secs(1), &wrote);
            let mut sink = if hold { sink.holding_head() } else { sink };
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap();
            rt.block_on(async { relay(&mut Late(0), &mut sink).await.map_err(|_| ()).unwrap() });
        }
        calls.0
    }

    #[test]
    fn a_response_head_waits_for_its_first_payload_a_request_head_does_not() {
        assert_eq!(writes(true), [b"HEAD\r\nbody".to_vec()]);
        assert_eq!(writes(false), [b"HEAD\r\n".to_vec(), b"body".to_vec()]);
    }

    /// A writer that keeps each write apart.
    struct Calls(Vec<Vec<u8>>);

    impl AsyncWriteRent for Calls {
        async fn write<T: monoio::buf::IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
            // SAFETY: IoBuf promises `read_ptr` is valid for `bytes_init` bytes.
            #[allow(unsafe_code)]
            let s = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
            self.0.push(s.to_vec());
            (Ok(s.len()), buf)
        }
        async fn writev<T: monoio::buf::IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
            (Ok(0), buf)
        }
        async fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        async fn shutdown(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
