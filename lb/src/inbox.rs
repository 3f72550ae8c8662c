//! Owned messages between cores (docs/ARCHITECTURE.md: cross-core traffic
//! only as owned messages). Used off the per-request path: a tunnel placed on
//! another core, a client connection handed to a core that has tunnels for
//! its route, and a worker's concurrency permit freed while another core
//! waited for it.
//!
//! crossbeam's channel has no async receive; the receiver parks its waker in
//! a mutex between two `try_recv`s, and senders wake it (monoio's `sync`
//! feature makes that cross-thread wake legal).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use ptth_proto::rt::tls::{MaybeTls, TlsStream};

use crate::tunnel::{Meta, TunnelStream};

pub(crate) enum CoreMsg {
    /// A tunnel whose setup another core read and placed here; this core
    /// sends the `101` and adopts it.
    Tunnel { stream: Detached, id: std::sync::Arc<str>, meta: std::sync::Arc<Meta>, setup: TunnelSetup },
    /// A client connection with the bytes already read from it.
    Client { stream: Detached, peer: std::net::SocketAddr, buffered: Vec<u8> },
    /// A concurrency permit of this worker was given back on another core
    /// while a request here waited for one (`tunnel::permits`).
    Capacity { worker: std::sync::Arc<str> },
    /// A reload: serve new work with this config.
    Config(std::sync::Arc<crate::Config>),
}

/// A client connection taken off its core's driver.
pub(crate) enum Detached {
    Plain(std::net::TcpStream),
    /// A TLS session goes with its rustls state and the ciphertext read
    /// but not yet decrypted.
    Tls {
        stream: std::net::TcpStream,
        conn: Box<rustls::ServerConnection>,
        unread: Vec<u8>,
    },
}

impl Detached {
    /// A connection off this core's driver (its socket duplicated, a TLS
    /// session with it); the stream back when that fails.
    pub(crate) fn of(s: TunnelStream) -> Result<Detached, TunnelStream> {
        match s {
            MaybeTls::Plain(s) => Detached::plain(s).map_err(MaybeTls::Plain),
            MaybeTls::Tls(s) => Detached::tls(s).map_err(MaybeTls::Tls),
        }
    }

    pub(crate) fn plain(s: monoio::net::TcpStream) -> Result<Detached, monoio::net::TcpStream> {
        crate::percore::detach(s).map(Detached::Plain)
    }

    pub(crate) fn tls(s: Box<TlsStream<rustls::ServerConnection>>) -> Result<Detached, Box<TlsStream<rustls::ServerConnection>>> {
        let (io, conn, unread) = s.into_parts();
        match crate::percore::detach(io) {
            Ok(stream) => Ok(Detached::Tls { stream, conn: Box::new(conn), unread }),
            Err(io) => Err(Box::new(TlsStream::from_parts(io, conn, unread))),
        }
    }

    /// The stream registered with this core's driver, TLS session and all.
    pub(crate) fn adopt(self) -> std::io::Result<TunnelStream> {
        Ok(match self {
            Detached::Plain(s) => MaybeTls::Plain(crate::percore::adopt(s)?),
            Detached::Tls { stream, conn, unread } => {
                MaybeTls::Tls(Box::new(TlsStream::from_parts(crate::percore::adopt(stream)?, *conn, unread)))
            }
        })
    }
}

/// What the adopting core needs to answer a setup.
pub(crate) struct TunnelSetup {
    pub(crate) token: ptth_proto::setup::UpgradeToken,
    pub(crate) protocol: ptth_proto::setup::InnerProtocol,
    pub(crate) placed: crate::tunnel::placement::Placed,
    /// Counts against the per-peer and total tunnel caps while the tunnel lives.
    pub(crate) ticket: crate::tunnel::placement::PeerTicket,
}

pub(crate) struct Inbox {
    tx: Sender<CoreMsg>,
    rx: Receiver<CoreMsg>,
    waker: Mutex<Option<Waker>>,
}

impl Inbox {
    pub(crate) fn new() -> Inbox {
        let (tx, rx) = crossbeam_channel::unbounded();
        Inbox { tx, rx, waker: Mutex::new(None) }
    }

    pub(crate) fn send(&self, msg: CoreMsg) {
        if self.tx.send(msg).is_ok() {
            if let Some(w) = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take() {
                w.wake();
            }
        }
    }

    pub(crate) fn recv(&self) -> Recv<'_> {
        Recv { inbox: self }
    }
}

pub(crate) struct Recv<'a> {
    inbox: &'a Inbox,
}

impl Future for Recv<'_> {
    type Output = Option<CoreMsg>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<CoreMsg>> {
        let inbox = self.inbox;
        match inbox.rx.try_recv() {
            Ok(m) => return Poll::Ready(Some(m)),
            Err(TryRecvError::Disconnected) => return Poll::Ready(None),
            Err(TryRecvError::Empty) => {}
        }
        *inbox.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        match inbox.rx.try_recv() {
            Ok(m) => Poll::Ready(Some(m)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => Poll::Pending,
        }
    }
}
