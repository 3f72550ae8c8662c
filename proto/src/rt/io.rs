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
///
/// An idle connection (waiting for its next request, [`fill_idle`]) reads
/// into a small buffer of its own and parks the full-size one in its core's
/// spares, so ten thousand idle keep-alive connections hold ten thousand
/// small buffers, not ten thousand full ones. The full one comes back (from
/// the spares: no allocation in steady state) when a read needs more room.
///
/// [`fill_idle`]: ReadBuf::fill_idle
#[derive(Debug)]
pub struct ReadBuf {
    buf: Vec<u8>,
    pos: usize,
    /// Capacity of the full-size buffer (restored after a cancelled read
    /// kept the old allocation).
    cap: usize,
    /// The small buffer while `buf` is the full one; empty while parked.
    small: Vec<u8>,
    /// `buf` is the small buffer; the full one is in the spares.
    parked: bool,
}

/// What an idle connection reads into: most request heads fit.
pub const IDLE_READ: usize = 2048;

/// Full-size buffers that idle or closed connections gave back, by size,
/// per thread: each core is one thread, so this is per-core owned state (no
/// sharing, no locks). At most `SPARES_MAX` of each size are kept.
const SPARES_MAX: usize = 256;

thread_local! {
    static SPARES: std::cell::RefCell<Vec<(usize, Vec<Vec<u8>>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A full-size buffer of capacity `cap` (at least), empty: a spare if there is one.
fn spare(cap: usize) -> Vec<u8> {
    let got = SPARES.with(|s| s.borrow_mut().iter_mut().find(|(c, _)| *c == cap).and_then(|(_, v)| v.pop()));
    got.unwrap_or_else(|| Vec::with_capacity(cap))
}

/// Keeps `buf` for another connection of this core, or frees it.
fn give_back(mut buf: Vec<u8>, cap: usize) {
    if buf.capacity() != cap {
        return;
    }
    buf.clear();
    SPARES.with(|s| {
        let mut s = s.borrow_mut();
        match s.iter_mut().find(|(c, _)| *c == cap) {
            Some((_, v)) if v.len() < SPARES_MAX => v.push(buf),
            Some(_) => {}
            None => s.push((cap, vec![buf])),
        }
    });
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        if !self.parked {
            give_back(std::mem::take(&mut self.buf), self.cap);
        }
    }
}

impl ReadBuf {
    pub fn with_capacity(cap: usize) -> Self {
        ReadBuf { buf: spare(cap), pos: 0, cap, small: Vec::new(), parked: false }
    }

    /// A buffer that starts with bytes already received elsewhere (a
    /// connection handed over from another core).
    pub fn from_vec(mut buf: Vec<u8>, cap: usize) -> Self {
        if buf.is_empty() {
            return ReadBuf::with_capacity(cap);
        }
        if buf.capacity() < cap {
            buf.reserve(cap - buf.len());
        }
        ReadBuf { buf, pos: 0, cap, small: Vec::new(), parked: false }
    }

    /// Bytes this buffer holds allocated now (the small and full ones).
    pub fn allocated(&self) -> usize {
        self.buf.capacity() + self.small.capacity()
    }

    /// Whether the buffer in use has no room left after its bytes.
    pub fn is_full(&self) -> bool {
        self.buf.len() == self.buf.capacity()
    }

    /// Whether the last idle read filled the small buffer: more of the
    /// message may wait in the socket ([`take_queued`](Self::take_queued)).
    pub fn idle_read_full(&self) -> bool {
        self.parked && self.buf.len() == self.buf.capacity()
    }

    /// Takes what already waits in the socket `s` into the full-size buffer
    /// (non-blocking `recv` until it would block, the peer closed, or the
    /// buffer is full), so that a message arriving at once is seen at once
    /// as with one full-size read: the lb checks the body bytes it holds
    /// before it forwards a head. Returns the bytes taken.
    #[allow(unsafe_code)]
    pub fn take_queued(&mut self, s: &impl std::os::fd::AsRawFd) -> usize {
        self.unpark();
        if self.buf.capacity() == 0 {
            self.buf.reserve(self.cap);
        }
        let mut taken = 0;
        while self.buf.len() < self.buf.capacity() {
            let spare = self.buf.spare_capacity_mut();
            // SAFETY: the fd belongs to `s`, borrowed for the whole call, so
            // it stays open; `spare` is the vector's uninitialized capacity,
            // valid for `spare.len()` bytes, and recv writes at most that
            // many; MSG_DONTWAIT keeps the call from blocking.
            let n = unsafe { libc::recv(s.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) };
            if n <= 0 {
                break;
            }
            // SAFETY: recv initialized the first `n` bytes of the spare capacity.
            unsafe { self.buf.set_len(self.buf.len() + n as usize) };
            taken += n as usize;
        }
        taken
    }

    /// For a connection that goes idle without a read posted (a pooled
    /// tunnel): with nothing buffered, the full-size buffer goes to the
    /// spares until the next [`fill`](Self::fill). With bytes buffered,
    /// nothing changes.
    pub fn park_idle(&mut self) {
        if self.is_empty() {
            self.park();
        }
    }

    /// Nothing buffered: the full-size buffer goes to the spares and the
    /// small one takes its place.
    fn park(&mut self) {
        debug_assert!(self.is_empty());
        if self.parked {
            if self.buf.capacity() == 0 {
                // A deadline cancelled the last idle read, which kept it.
                self.buf.reserve(IDLE_READ);
            }
            return;
        }
        let full = std::mem::take(&mut self.buf);
        give_back(full, self.cap);
        self.buf = std::mem::take(&mut self.small);
        self.buf.clear();
        if self.buf.capacity() == 0 {
            self.buf.reserve(IDLE_READ);
        }
        self.pos = 0;
        self.parked = true;
    }

    /// The full-size buffer back, with the unconsumed bytes moved into it.
    fn unpark(&mut self) {
        if !self.parked {
            return;
        }
        let mut full = spare(self.cap);
        full.extend_from_slice(&self.buf[self.pos..]);
        self.small = std::mem::replace(&mut self.buf, full);
        self.small.clear();
        self.pos = 0;
        self.parked = false;
    }

    /// [`fill`](Self::fill) for a connection with nothing buffered, waiting
    /// for its next request: it reads into the small buffer (see the type's
    /// docs); the next `fill` takes the full one back if it needs room.
    pub async fn fill_idle<R: AsyncReadRent>(&mut self, r: &mut R, deadline: Duration) -> io::Result<usize> {
        self.park();
        self.read_more(r, deadline).await
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
        self.unpark();
        if self.buf.capacity() == 0 {
            // A deadline cancelled the last operation, which kept the buffer.
            self.buf.reserve(self.cap);
        }
        self.read_more(r, deadline).await
    }

    /// [`fill_idle`](Self::fill_idle) with no deadline: for a connection
    /// that waits as long as its peer keeps it (a worker's idle tunnel) and
    /// goes on after the wait. A deadline there would cancel the read and
    /// read again, and a read cancelled just as bytes arrive loses them
    /// (io_uring completes it with nobody to take the bytes).
    pub async fn fill_idle_unbounded<R: AsyncReadRent>(&mut self, r: &mut R) -> io::Result<usize> {
        self.park();
        let buf = std::mem::take(&mut self.buf);
        let (res, buf) = r.read(buf).await;
        self.buf = buf;
        res
    }

    /// One read after the unconsumed bytes, into whichever buffer is in use.
    async fn read_more<R: AsyncReadRent>(&mut self, r: &mut R, deadline: Duration) -> io::Result<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its chunks one read at a time, then end of stream.
    struct Chunks(std::collections::VecDeque<&'static [u8]>);

    impl AsyncReadRent for Chunks {
        async fn read<T: IoBufMut>(&mut self, mut buf: T) -> monoio::BufResult<usize, T> {
            let Some(c) = self.0.pop_front() else { return (Ok(0), buf) };
            let n = c.len().min(buf.bytes_total());
            #[allow(unsafe_code)]
            // SAFETY: `n` is within the buffer's writable bytes, and `c` is
            // a separate allocation.
            unsafe {
                std::ptr::copy_nonoverlapping(c.as_ptr(), buf.write_ptr(), n);
                buf.set_init(n);
            }
            (Ok(n), buf)
        }
        async fn readv<T: monoio::buf::IoVecBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
            (Ok(0), buf)
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().expect("runtime").block_on(async {
            let _scope = crate::rt::deadline::Scope::enter();
            f.await
        })
    }

    const FULL: usize = 32 * 1024;
    const T: Duration = Duration::from_secs(5);

    #[test]
    fn an_idle_read_holds_the_small_buffer_and_a_fill_takes_the_full_one_back() {
        run(async {
            let mut r = Chunks(vec![&b"GET / HT"[..], &b"TP/1.1\r\n\r\n"[..]].into());
            let mut rb = ReadBuf::with_capacity(FULL);
            assert_eq!(rb.allocated(), FULL);
            assert_eq!(rb.fill_idle(&mut r, T).await.unwrap(), 8);
            assert_eq!(rb.allocated(), IDLE_READ, "idle: the full buffer is parked");
            // The head goes on: the full buffer comes back with what was read.
            assert_eq!(rb.fill(&mut r, T).await.unwrap(), 10);
            assert_eq!(rb.data(), b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(rb.allocated(), FULL + IDLE_READ, "the small one is kept for the next idle wait");
            rb.consume(18);
            // The next idle wait parks it again, and the end of stream reads as 0.
            assert_eq!(rb.fill_idle(&mut r, T).await.unwrap(), 0);
            assert_eq!(rb.allocated(), IDLE_READ);
        });
    }

    #[test]
    fn an_unbounded_idle_read_parks_the_full_buffer_too() {
        run(async {
            let mut r = Chunks(vec![&b"GET / HTTP/1.1\r\n\r\n"[..]].into());
            let mut rb = ReadBuf::with_capacity(FULL);
            assert_eq!(rb.fill_idle_unbounded(&mut r).await.unwrap(), 18);
            assert_eq!((rb.data(), rb.allocated()), (&b"GET / HTTP/1.1\r\n\r\n"[..], IDLE_READ));
        });
    }

    #[test]
    fn full_buffers_are_reused_by_the_next_connection_of_the_core() {
        run(async {
            let mut r = Chunks(vec![&b"x"[..]].into());
            let mut a = ReadBuf::with_capacity(FULL + 1);
            a.fill(&mut r, T).await.unwrap();
            let at = a.data().as_ptr();
            drop(a);
            let mut b = ReadBuf::with_capacity(FULL + 1);
            let mut r = Chunks(vec![&b"y"[..]].into());
            b.fill(&mut r, T).await.unwrap();
            assert_eq!(b.data().as_ptr(), at, "the closed connection's buffer, not a new allocation");
            // A parked buffer serves another connection while its owner idles.
            let mut r = Chunks(vec![&b"z"[..]].into());
            b.consume(1);
            b.fill_idle(&mut r, T).await.unwrap();
            let c = ReadBuf::with_capacity(FULL + 1);
            assert_eq!(c.allocated(), FULL + 1);
            drop(c);
        });
    }
}
