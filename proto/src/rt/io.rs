//! Owned-buffer I/O around the framing in [`crate::h1`]: a reusable read
//! buffer, deadline-bounded reads and writes, the idle-connection probe, the
//! in-place split of a stream and the duplex of an upload and a download
//! (bodies themselves are relayed by [`crate::rt::body`]).
//!
//! Buffers follow monoio's rent model: a buffer is lent to the kernel for each
//! operation and handed back, so one allocation per connection serves all its
//! requests.

use std::io;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

/// A connection's read buffer: bytes `[pos..len)` are received and unconsumed.
#[derive(Debug)]
pub struct ReadBuf {
    buf: Vec<u8>,
    pos: usize,
    /// Capacity to restore after a cancelled read kept the old allocation.
    cap: usize,
}

impl ReadBuf {
    pub fn with_capacity(cap: usize) -> Self {
        ReadBuf { buf: Vec::with_capacity(cap), pos: 0, cap }
    }

    /// A buffer that starts with bytes already received elsewhere (a
    /// connection handed over from another core).
    pub fn from_vec(mut buf: Vec<u8>, cap: usize) -> Self {
        if buf.capacity() < cap {
            buf.reserve(cap - buf.len());
        }
        ReadBuf { buf, pos: 0, cap }
    }

    /// Unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Takes the unconsumed bytes out (for handing a connection to another core).
    pub fn take_unconsumed(&mut self) -> Vec<u8> {
        let v = self.buf.split_off(self.pos);
        self.buf.clear();
        self.pos = 0;
        v
    }

    /// Reads more bytes after the unconsumed ones. Returns 0 at end of stream.
    /// Fails with `InvalidData` when the buffer is full of unconsumed bytes.
    pub async fn fill<R: AsyncReadRent>(&mut self, r: &mut R, deadline: Duration) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            // A deadline cancelled the last operation, which kept the buffer.
            self.buf.reserve(self.cap);
        }
        if self.buf.len() == self.buf.capacity() {
            if self.pos == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "read buffer full"));
            }
            self.buf.copy_within(self.pos.., 0);
            self.buf.truncate(self.buf.len() - self.pos);
            self.pos = 0;
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let (res, slice) = match crate::rt::deadline::within(deadline, r.read(buf.slice_mut(len..))).await {
            Ok(r) => r,
            Err(_) => {
                self.pos = 0;
                return Err(io::Error::new(io::ErrorKind::TimedOut, "read deadline passed"));
            }
        };
        self.buf = slice.into_inner();
        res
    }

    /// Writes the first `n` unconsumed bytes to `w` without copying, then
    /// consumes them.
    pub async fn write_prefix<W: AsyncWriteRent>(&mut self, w: &mut W, n: usize, deadline: Duration) -> io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let (start, end) = (self.pos, self.pos + n);
        let (res, slice) = match crate::rt::deadline::within(deadline, w.write_all(buf.slice(start..end))).await {
            Ok(r) => r,
            Err(_) => {
                self.pos = 0;
                return Err(io::Error::new(io::ErrorKind::TimedOut, "write deadline passed"));
            }
        };
        self.buf = slice.into_inner();
        res?;
        self.consume(n);
        Ok(())
    }
}

/// True when a pooled connection that should be silent cannot carry another
/// message: the peer closed or reset it, or it sent bytes while no request
/// was outstanding. Such bytes (data after a complete response, a body after
/// a HEAD, 204 or 304, a rogue worker's unsolicited response) would otherwise
/// be read as the next request's response and served to another client, so
/// the lb checks every idle tunnel and the sidecar every idle origin
/// connection before reuse.
pub fn idle_conn_unusable(s: &impl std::os::fd::AsRawFd) -> bool {
    peer_state(s) != PeerState::Quiet
}

/// What a peer left in a socket, seen without taking anything from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Nothing to read, and still open.
    Quiet,
    /// Bytes wait to be read.
    Data,
    /// The peer closed or reset the connection.
    Closed,
}

/// A non-blocking `MSG_PEEK` of one byte: one syscall, no data consumed.
#[allow(unsafe_code)]
pub fn peer_state(s: &impl std::os::fd::AsRawFd) -> PeerState {
    let mut byte = [0u8; 1];
    // SAFETY: the fd belongs to `s`, which is borrowed for the whole call, so
    // it stays open; `byte` is a live one-byte buffer and we pass its length.
    // MSG_PEEK leaves data in the socket; MSG_DONTWAIT keeps the call from
    // blocking even though io_uring-accepted sockets are in blocking mode.
    let n = unsafe { libc::recv(s.as_raw_fd(), byte.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    match n {
        0 => PeerState::Closed,
        n if n > 0 => PeerState::Data,
        _ => match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => PeerState::Quiet,
            _ => PeerState::Closed,
        },
    }
}

/// Resolves when the peer of an otherwise idle connection closes or resets
/// it (io_uring poll, no data taken). Bytes from the peer mean it is still
/// there: from then on this never resolves (it cannot see a close behind
/// data it must not consume).
pub async fn peer_gone(s: &monoio::net::TcpStream) {
    loop {
        // Not relaxed: the legacy driver confirms readiness with poll(2).
        if s.readable(false).await.is_err() {
            return;
        }
        match peer_state(s) {
            PeerState::Closed => return,
            PeerState::Data => return std::future::pending().await,
            PeerState::Quiet => {}
        }
    }
}

/// Writes all of `buf` within `deadline`; hands the buffer back for reuse
/// (cleared) unless the deadline cancelled the write.
pub async fn write_all<W: AsyncWriteRent>(w: &mut W, buf: Vec<u8>, deadline: Duration) -> (io::Result<()>, Vec<u8>) {
    match crate::rt::deadline::within(deadline, w.write_all(buf)).await {
        Ok((res, mut buf)) => {
            buf.clear();
            (res.map(|_| ()), buf)
        }
        Err(_) => (Err(io::Error::new(io::ErrorKind::TimedOut, "write deadline passed")), Vec::new()),
    }
}

/// How a request's upload and its response's download, run together, ended.
#[derive(Debug)]
pub enum Duplex<U, E, D> {
    /// The upload finished (first, or in the same wakeup as the download),
    /// then the download did.
    Both(U, D),
    /// The upload failed; the download was dropped.
    UploadFailed(E),
    /// The download finished while the upload was under way: the worker
    /// answered before it read the whole body. The upload was dropped, so
    /// the connection it wrote to is left mid-message.
    AnsweredEarly(D),
}

/// Runs a request's upload and its response's download at once, so a peer
/// may answer before it has read the whole body, with bounded memory either
/// way. The one duplex loop of every protocol pair. Upload first: when both
/// finish in one wakeup, the exchange completed cleanly ([`Duplex::Both`])
/// and the connections stay reusable.
///
/// The caller pins both futures where they are made (`std::pin::pin!`):
/// taking them by value would store each twice in this future's state, and
/// the whole request path's state is copied as it is built.
pub async fn duplex<U, E, D>(
    mut up: std::pin::Pin<&mut impl std::future::Future<Output = Result<U, E>>>,
    mut down: std::pin::Pin<&mut impl std::future::Future<Output = D>>,
) -> Duplex<U, E, D> {
    monoio::select! {
        biased;
        u = &mut up => match u {
            Ok(u) => Duplex::Both(u, down.await),
            Err(e) => Duplex::UploadFailed(e),
        },
        d = &mut down => Duplex::AnsweredEarly(d),
    }
}

/// A poll-style stream (for the `h2` crate) that first yields bytes already
/// read from the connection by the completion-style code before it (the
/// setup exchange, or protocol detection).
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    pos: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Prefixed<T> {
        Prefixed { prefix, pos: 0, inner }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.pos < me.prefix.len() {
            let n = buf.remaining().min(me.prefix.len() - me.pos);
            buf.put_slice(&me.prefix[me.pos..me.pos + n]);
            me.pos += n;
            if me.pos == me.prefix.len() {
                me.prefix = Vec::new();
                me.pos = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<T> {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The read half of a stream split in place by [`split`].
pub struct ReadHalf<'a, T>(&'a std::cell::UnsafeCell<T>);

/// The write half of a stream split in place by [`split`].
pub struct WriteHalf<'a, T>(&'a std::cell::UnsafeCell<T>);

/// Splits a stream into a read half and a write half that can be used at
/// once (an upload and a download of one exchange), borrowing it for as long
/// as they live: no allocation, unlike monoio's `into_split`, which puts the
/// stream behind an `Rc` on every call.
pub fn split<T: monoio::io::Split>(stream: &mut T) -> (ReadHalf<'_, T>, WriteHalf<'_, T>) {
    let cell = std::cell::UnsafeCell::from_mut(stream);
    (ReadHalf(cell), WriteHalf(cell))
}

#[allow(unsafe_code)]
impl<T: AsyncReadRent + monoio::io::Split> AsyncReadRent for ReadHalf<'_, T> {
    fn read<B: IoBufMut>(&mut self, buf: B) -> impl std::future::Future<Output = monoio::BufResult<usize, B>> {
        // SAFETY: `T: Split` is monoio's promise that reads and writes of the
        // stream are independent (each operation owns its buffer and the fd
        // is shared), which is what its own split halves rely on too; the
        // halves borrow the stream mutably, so nothing else touches it.
        let s = unsafe { &mut *self.0.get() };
        s.read(buf)
    }
    fn readv<B: monoio::buf::IoVecBufMut>(&mut self, buf: B) -> impl std::future::Future<Output = monoio::BufResult<usize, B>> {
        // SAFETY: as in `read`.
        let s = unsafe { &mut *self.0.get() };
        s.readv(buf)
    }
}

#[allow(unsafe_code)]
impl<T: AsyncWriteRent + monoio::io::Split> AsyncWriteRent for WriteHalf<'_, T> {
    fn write<B: IoBuf>(&mut self, buf: B) -> impl std::future::Future<Output = monoio::BufResult<usize, B>> {
        // SAFETY: as in `ReadHalf::read`.
        let s = unsafe { &mut *self.0.get() };
        s.write(buf)
    }
    fn writev<B: monoio::buf::IoVecBuf>(&mut self, buf: B) -> impl std::future::Future<Output = monoio::BufResult<usize, B>> {
        // SAFETY: as in `ReadHalf::read`.
        let s = unsafe { &mut *self.0.get() };
        s.writev(buf)
    }
    fn flush(&mut self) -> impl std::future::Future<Output = io::Result<()>> {
        // SAFETY: as in `ReadHalf::read`.
        let s = unsafe { &mut *self.0.get() };
        s.flush()
    }
    fn shutdown(&mut self) -> impl std::future::Future<Output = io::Result<()>> {
        // SAFETY: as in `ReadHalf::read`.
        let s = unsafe { &mut *self.0.get() };
        s.shutdown()
    }
}
