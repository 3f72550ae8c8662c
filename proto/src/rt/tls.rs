//! TLS over monoio, the project's own: one stream type for a rustls
//! connection (server or client side) on a TCP socket, with the two faces
//! the data path needs.
//!
//! - [`TlsStream`] is completion-style (`AsyncReadRent` / `AsyncWriteRent`
//!   and `Split`): the HTTP/1.1 path and the exchange engine run on it as on
//!   a plain `TcpStream`, upload and download at once.
//! - [`TlsPoll`] is poll-style (tokio's `AsyncRead` / `AsyncWrite`) for the
//!   `h2` crate, made from a `TlsStream` after the handshake
//!   ([`TlsStream::into_poll`]), over monoio's poll-io socket.
//!
//! Both keep the rustls connection in reach, so the peer's certificate, the
//! SNI name and the ALPN protocol can be read after the handshake, and
//! [`TlsStream::into_parts`] takes it apart (socket, connection, ciphertext
//! read but not yet given to rustls) so that a connection can move to another
//! core and go on there ([`TlsStream::from_parts`]); rustls connections are
//! `Send`.
//!
//! Why not monoio-rustls: it gives no access to the session (no peer
//! certificate, no SNI), and its poll adapter lets h2's read, write and flush
//! reach one write buffer at once (a panic under h2).
//!
//! Buffers: ciphertext in and out go through one reused buffer each, lent to
//! the kernel as monoio's rent model wants; plaintext is copied once, between
//! rustls and the caller's buffer.

use std::cell::{Ref, RefCell};
use std::io::{self, Read, Write};
use std::ops::DerefMut;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, IntoPollIo};
use monoio::net::TcpStream;
use rustls::{ConnectionCommon, SideData};

/// Ciphertext read from the socket at once (a TLS record is at most 16 KiB
/// of payload plus its overhead).
const CIPHERTEXT_READ: usize = 18 * 1024;

/// The certificates in a PEM file, in order; an error (what is wrong, for
/// the caller to put after the file's name) when it cannot be read or holds
/// none.
pub fn read_certs(path: &std::path::Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block in the file".into());
    }
    Ok(certs)
}

/// A TLS connection over a monoio TCP socket (completion-style I/O).
pub struct TlsStream<C> {
    io: TcpStream,
    /// Borrowed only between awaits: the read and the write side of a split
    /// stream both reach it, never across a suspension.
    tls: RefCell<C>,
    /// Ciphertext received and not yet given to rustls: `rd[rd_pos..]`.
    /// Read side only.
    rd: Vec<u8>,
    rd_pos: usize,
    /// Ciphertext to send. Write side only (and the handshake).
    wr: Vec<u8>,
}

/// How a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake did not finish within {0:?}")]
    Timeout(Duration),
    #[error("peer closed the connection during the TLS handshake")]
    Closed,
    /// The peer's messages were refused (bad certificate, no shared
    /// protocol version or cipher suite, ...); the alert was sent.
    #[error("TLS handshake refused: {0}")]
    Tls(rustls::Error),
    #[error("TLS handshake: {0}")]
    Io(io::Error),
}

impl<C, S> TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<S>>,
    S: SideData,
{
    /// Runs the handshake on `io` within `limit`. `conn` is a fresh rustls
    /// connection (a server one for accepted sockets, a client one for
    /// dialled ones).
    pub async fn handshake(io: TcpStream, conn: C, limit: Duration) -> Result<TlsStream<C>, HandshakeError> {
        let mut s = TlsStream::from_parts(io, conn, Vec::new());
        match crate::rt::deadline::within(limit, s.drive_handshake()).await {
            Ok(Ok(())) => Ok(s),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(HandshakeError::Timeout(limit)),
        }
    }

    /// A stream from its parts (see [`TlsStream::into_parts`]).
    pub fn from_parts(io: TcpStream, conn: C, unread: Vec<u8>) -> TlsStream<C> {
        let mut rd = unread;
        if rd.capacity() < CIPHERTEXT_READ {
            rd.reserve(CIPHERTEXT_READ - rd.len());
        }
        TlsStream { io, tls: RefCell::new(conn), rd, rd_pos: 0, wr: Vec::with_capacity(CIPHERTEXT_READ) }
    }

    /// The socket, the rustls connection, and ciphertext received but not
    /// yet given to rustls (to be handed to [`TlsStream::from_parts`]).
    pub fn into_parts(mut self) -> (TcpStream, C, Vec<u8>) {
        let unread = self.rd.split_off(self.rd_pos);
        (self.io, self.tls.into_inner(), unread)
    }

    /// The rustls connection (peer certificates, SNI, ALPN, version).
    pub fn conn(&self) -> Ref<'_, C> {
        self.tls.borrow()
    }

    /// The TCP socket under the TLS session.
    pub fn tcp(&self) -> &TcpStream {
        &self.io
    }

    /// Whether the peer sent anything this side has not read yet: ciphertext
    /// read from the socket but not given to rustls, or plaintext rustls
    /// holds. A pooled connection that should be silent checks this as well
    /// as its socket (`rt::io::idle_conn_unusable`), since such bytes never
    /// show there.
    pub fn has_unread(&self) -> bool {
        if self.rd_pos < self.rd.len() {
            return true;
        }
        // No new data is given: this only reports what is buffered.
        self.tls.borrow_mut().process_new_packets().map_or(true, |s| s.plaintext_bytes_to_read() > 0)
    }

    /// Whether rustls holds decrypted bytes not read yet (a read returns
    /// them without touching the socket).
    pub fn plaintext_pending(&self) -> bool {
        self.tls.borrow_mut().process_new_packets().is_ok_and(|s| s.plaintext_bytes_to_read() > 0)
    }

    /// The poll-style face for the `h2` crate.
    pub fn into_poll(self) -> io::Result<TlsPoll<C>> {
        let (io, conn, unread) = self.into_parts();
        Ok(TlsPoll { io: io.into_poll_io()?, tls: conn, unread, unread_pos: 0 })
    }

    async fn drive_handshake(&mut self) -> Result<(), HandshakeError> {
        loop {
            self.flush_tls().await.map_err(HandshakeError::Io)?;
            if !self.tls.borrow().is_handshaking() {
                return Ok(());
            }
            match self.feed().await {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(_) => {}
                Err(Fed::Tls(e)) => {
                    // Tell the peer why (the alert rustls queued), best effort.
                    let _ = self.flush_tls().await;
                    return Err(HandshakeError::Tls(e));
                }
                Err(Fed::Io(e)) => return Err(HandshakeError::Io(e)),
            }
        }
    }

    /// Gives rustls more ciphertext: what is left from the last socket read,
    /// or a new read. `Ok(0)`: the peer closed the socket.
    async fn feed(&mut self) -> Result<usize, Fed> {
        if self.rd_pos == self.rd.len() {
            self.rd.clear();
            self.rd_pos = 0;
            let buf = std::mem::take(&mut self.rd);
            let (res, buf) = self.io.read(buf.slice_mut(0..)).await;
            self.rd = buf.into_inner();
            let n = res.map_err(Fed::Io)?;
            if n == 0 {
                // rustls learns of the end (a close without close_notify is
                // then reported as an unexpected end of stream).
                let mut tls = self.tls.borrow_mut();
                let _ = tls.read_tls(&mut &[][..]);
                return Ok(0);
            }
        }
        let mut tls = self.tls.borrow_mut();
        let mut pending = &self.rd[self.rd_pos..];
        let before = pending.len();
        // rustls takes what fits in its buffer of received plaintext; the
        // rest waits here for the next call.
        let taken = tls.read_tls(&mut pending).map_err(Fed::Io)?;
        self.rd_pos += before - pending.len();
        tls.process_new_packets().map_err(Fed::Tls)?;
        Ok(taken.max(1))
    }

    /// Sends every TLS record rustls has queued.
    async fn flush_tls(&mut self) -> io::Result<()> {
        loop {
            self.wr.clear();
            {
                let mut tls = self.tls.borrow_mut();
                if !tls.wants_write() {
                    return Ok(());
                }
                while tls.wants_write() {
                    tls.write_tls(&mut self.wr)?;
                }
            }
            let buf = std::mem::take(&mut self.wr);
            let (res, buf) = self.io.write_all(buf).await;
            self.wr = buf;
            res?;
        }
    }

    /// Plaintext into `dst` (initialized bytes), reading and decrypting as
    /// needed. `Ok(0)`: the peer ended the session (close_notify).
    async fn read_plain(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut tls = self.tls.borrow_mut();
                match tls.reader().read(dst) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            match self.feed().await {
                Ok(_) => {}
                Err(Fed::Io(e)) => return Err(e),
                // Not `InvalidData`: the read paths take that for a full
                // buffer (431). A broken session is an aborted connection.
                Err(Fed::Tls(e)) => return Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)),
            }
        }
    }

    /// Plaintext into the `cap` writable bytes at `ptr`, which belong to a
    /// buffer the caller's future owns for the whole call.
    async fn read_raw(&mut self, ptr: *mut u8, cap: usize) -> io::Result<usize> {
        // rustls copies into initialized memory: zero the room first (cheap
        // next to decryption).
        #[allow(unsafe_code)]
        // SAFETY: `ptr` points to `cap` writable bytes that nothing else
        // touches until the caller hands its buffer back, after this
        // returns; zeroing makes them initialized for the slice.
        let dst = unsafe {
            std::ptr::write_bytes(ptr, 0, cap);
            std::slice::from_raw_parts_mut(ptr, cap)
        };
        self.read_plain(dst).await
    }

    /// Encrypts `src` (as much as rustls takes) and sends it.
    async fn write_plain(&mut self, src: &[u8]) -> io::Result<usize> {
        loop {
            let n = self.tls.borrow_mut().writer().write(src)?;
            self.flush_tls().await?;
            if n > 0 || src.is_empty() {
                return Ok(n);
            }
        }
    }
}

enum Fed {
    Io(io::Error),
    Tls(rustls::Error),
}

impl<C, S> AsyncReadRent for TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<S>>,
    S: SideData,
{
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> monoio::BufResult<usize, T> {
        let res = self.read_raw(buf.write_ptr(), buf.bytes_total()).await;
        if let Ok(n) = res {
            #[allow(unsafe_code)]
            // SAFETY: `read_raw` wrote the first `n` bytes.
            unsafe {
                buf.set_init(n)
            };
        }
        (res, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> monoio::BufResult<usize, T> {
        // Fills the first non-empty slice (as a plain socket read may).
        let (ptr, len) = (buf.write_iovec_ptr(), buf.write_iovec_len());
        #[allow(unsafe_code)]
        // SAFETY: the iovec array is `len` entries owned by `buf`.
        let iovs = unsafe { std::slice::from_raw_parts(ptr, len) };
        let Some(&iov) = iovs.iter().find(|v| v.iov_len > 0) else { return (Ok(0), buf) };
        let res = self.read_raw(iov.iov_base.cast::<u8>(), iov.iov_len).await;
        if let Ok(n) = res {
            #[allow(unsafe_code)]
            // SAFETY: `read_raw` wrote `n` bytes, at the start of the buffers.
            unsafe {
                buf.set_init(n)
            };
        }
        (res, buf)
    }
}

impl<C, S> AsyncWriteRent for TlsStream<C>
where
    C: DerefMut<Target = ConnectionCommon<S>>,
    S: SideData,
{
    async fn write<T: IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        #[allow(unsafe_code)]
        // SAFETY: `buf` owns `bytes_init()` initialized bytes at `read_ptr()`
        // and this future holds it until it is handed back.
        let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let res = self.write_plain(src).await;
        (res, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        let (ptr, len) = (buf.read_iovec_ptr(), buf.read_iovec_len());
        #[allow(unsafe_code)]
        // SAFETY: the iovec array is `len` entries owned by `buf`, each
        // pointing to initialized bytes it owns.
        let iovs = unsafe { std::slice::from_raw_parts(ptr, len) };
        let mut total = 0;
        for v in iovs {
            #[allow(unsafe_code)]
            // SAFETY: as above.
            let src = unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>().cast_const(), v.iov_len) };
            let n = match self.tls.borrow_mut().writer().write(src) {
                Ok(n) => n,
                Err(e) => return (Err(e), buf),
            };
            total += n;
            if n < src.len() {
                break;
            }
        }
        let res = self.flush_tls().await.map(|()| total);
        (res, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.flush_tls().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.tls.borrow_mut().send_close_notify();
        self.flush_tls().await?;
        self.io.shutdown().await
    }
}

// SAFETY: a split stream's read half touches `rd`, `rd_pos` and the socket's
// read side; its write half `wr` and the socket's write side (`TcpStream` is
// `Split`: reads and writes own their buffers and share only the fd). Both
// reach `tls`, a `RefCell` borrowed only between awaits, so the borrows never
// overlap in one thread; the halves never leave it.
#[allow(unsafe_code)]
unsafe impl<C> monoio::io::Split for TlsStream<C> {}

/// The poll-style face of a [`TlsStream`] (tokio `AsyncRead` /
/// `AsyncWrite`), for the `h2` crate.
pub struct TlsPoll<C> {
    io: monoio::net::tcp::stream_poll::TcpStreamPoll,
    tls: C,
    unread: Vec<u8>,
    unread_pos: usize,
}

impl<C> TlsPoll<C> {
    /// The rustls connection.
    pub fn conn(&self) -> &C {
        &self.tls
    }
}

/// `std::io` over a poll-style socket for rustls' `read_tls` / `write_tls`:
/// `Pending` becomes `WouldBlock`.
struct Sync<'a, 'b> {
    io: &'a mut monoio::net::tcp::stream_poll::TcpStreamPoll,
    cx: &'a mut Context<'b>,
}

impl Read for Sync<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = tokio::io::ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Sync<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

use tokio::io::{AsyncRead as _, AsyncWrite as _};

impl<C, S> TlsPoll<C>
where
    C: DerefMut<Target = ConnectionCommon<S>>,
    S: SideData,
{
    /// Sends queued records until done or the socket is full.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut Sync { io: &mut self.io, cx }) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<C, S> tokio::io::AsyncRead for TlsPoll<C>
where
    C: DerefMut<Target = ConnectionCommon<S>> + Unpin,
    S: SideData,
{
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            match me.tls.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            // More ciphertext: what the completion side left, then the socket.
            let fed = if me.unread_pos < me.unread.len() {
                let mut pending = &me.unread[me.unread_pos..];
                let before = pending.len();
                let r = me.tls.read_tls(&mut pending);
                me.unread_pos += before - pending.len();
                if me.unread_pos == me.unread.len() {
                    me.unread = Vec::new();
                    me.unread_pos = 0;
                }
                r
            } else {
                me.tls.read_tls(&mut Sync { io: &mut me.io, cx })
            };
            match fed {
                Ok(0) => {
                    // End of stream: rustls now answers the read (0 after a
                    // close_notify, an error otherwise).
                    continue;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = me.tls.process_new_packets() {
                // Tell the peer (best effort), then fail the read.
                let _ = me.poll_flush_tls(cx);
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, e)));
            }
            // Records the peer's messages call for (a key update answer).
            if me.tls.wants_write() {
                let _ = me.poll_flush_tls(cx);
            }
        }
    }
}

impl<C, S> tokio::io::AsyncWrite for TlsPoll<C>
where
    C: DerefMut<Target = ConnectionCommon<S>> + Unpin,
    S: SideData,
{
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        loop {
            let n = me.tls.writer().write(buf)?;
            // Records that do not fit the socket now wait in rustls (bounded
            // by its buffer limit) for the next write or flush.
            match me.poll_flush_tls(cx) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending if n == 0 => return Poll::Pending,
                _ if n > 0 || buf.is_empty() => return Poll::Ready(Ok(n)),
                _ => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        std::task::ready!(me.poll_flush_tls(cx))?;
        Pin::new(&mut me.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.tls.send_close_notify();
        std::task::ready!(me.poll_flush_tls(cx))?;
        Pin::new(&mut me.io).poll_shutdown(cx)
    }
}

/// A connection that is TLS or plain TCP, decided at run time (a tunnel
/// listener or a dialled lb configured either way): one type for the code
/// above, one branch per operation.
pub enum MaybeTls<C> {
    Plain(TcpStream),
    /// Boxed: a rustls connection is about a kilobyte, and a plain stream
    /// should not carry that room.
    Tls(Box<TlsStream<C>>),
}

/// The poll-style face of a [`MaybeTls`].
pub enum MaybeTlsPoll<C> {
    Plain(monoio::net::tcp::stream_poll::TcpStreamPoll),
    Tls(TlsPoll<C>),
}

impl<C, S> MaybeTls<C>
where
    C: DerefMut<Target = ConnectionCommon<S>>,
    S: SideData,
{
    /// The TCP socket (under the TLS session, if any).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(s) => s,
            MaybeTls::Tls(s) => s.tcp(),
        }
    }

    pub fn into_poll(self) -> io::Result<MaybeTlsPoll<C>> {
        Ok(match self {
            MaybeTls::Plain(s) => MaybeTlsPoll::Plain(s.into_poll_io()?),
            MaybeTls::Tls(s) => MaybeTlsPoll::Tls(s.into_poll()?),
        })
    }

    /// Whether a connection that should be silent cannot carry another
    /// message: the peer closed it, or sent bytes (on the socket, or held
    /// by the TLS layer) while nothing was asked of it.
    pub fn idle_unusable(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => crate::rt::io::idle_conn_unusable(s),
            MaybeTls::Tls(s) => s.has_unread() || crate::rt::io::idle_conn_unusable(s.tcp()),
        }
    }

    /// The rustls connection, for a TLS one.
    pub fn tls(&self) -> Option<Ref<'_, C>> {
        match self {
            MaybeTls::Plain(_) => None,
            MaybeTls::Tls(s) => Some(s.conn()),
        }
    }
}

impl<C, S> AsyncReadRent for MaybeTls<C>
where
    C: DerefMut<Target = ConnectionCommon<S>>,
    S: SideData,
{
    async fn read<T: IoBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        match self {
            MaybeTls::Plain(s) => s.read(buf).await,
            MaybeTls::Tls(s) => s.read(buf).await,
        }
    }
    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        match self {
            MaybeTls::Plain(s) => s.readv(buf).await,
            MaybeTls::Tls(s) => s.readv(buf).await,
        }
    }
}

impl<C, S> AsyncWriteRent for MaybeTls<C>
where
    C: DerefMut<Target = ConnectionCommon<S>>,
    S: SideData,
{
    async fn write<T: IoBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        match self {
            MaybeTls::Plain(s) => s.write(buf).await,
            MaybeTls::Tls(s) => s.write(buf).await,
        }
    }
    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> monoio::BufResult<usize, T> {
        match self {
            MaybeTls::Plain(s) => s.writev(buf).await,
            MaybeTls::Tls(s) => s.writev(buf).await,
        }
    }
    async fn flush(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(s) => s.flush().await,
            MaybeTls::Tls(s) => s.flush().await,
        }
    }
    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            MaybeTls::Plain(s) => s.shutdown().await,
            MaybeTls::Tls(s) => s.shutdown().await,
        }
    }
}

// SAFETY: each variant is `Split` (`TcpStream` by monoio, `TlsStream` above)
// and the variant never changes while the stream is split (the halves
// borrow it).
#[allow(unsafe_code)]
unsafe impl<C> monoio::io::Split for MaybeTls<C> {}

impl<C, S> tokio::io::AsyncRead for MaybeTlsPoll<C>
where
    C: DerefMut<Target = ConnectionCommon<S>> + Unpin,
    S: SideData,
{
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsPoll::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTlsPoll::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<C, S> tokio::io::AsyncWrite for MaybeTlsPoll<C>
where
    C: DerefMut<Target = ConnectionCommon<S>> + Unpin,
    S: SideData,
{
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsPoll::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTlsPoll::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsPoll::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTlsPoll::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsPoll::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTlsPoll::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
