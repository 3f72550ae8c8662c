//! Binding the listeners. Every core gets its own SO_REUSEPORT socket for the
//! client and tunnel addresses, so the kernel spreads accepts over cores with
//! no shared accept queue. All sockets are bound up front on the main thread:
//! errors surface before any core starts, and port 0 resolves once (the first
//! socket picks the port, the others join it).

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::StartupError;

const BACKLOG: i32 = 4096;

fn socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(reuse_port)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s)
}

/// Binds `n` SO_REUSEPORT listeners on `addr`. A port another process
/// already holds is refused (SO_REUSEPORT would otherwise let us silently
/// share its traffic), by first binding a probe without the option, unless
/// `share` (`--share-listeners`: a restart beside the lb that holds them).
pub(crate) fn bind_group(what: &'static str, addr: SocketAddr, n: usize, share: bool) -> Result<Vec<TcpListener>, StartupError> {
    let err = |source| StartupError::Bind { what, addr, source };
    if addr.port() != 0 && !share {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
        probe.set_reuse_address(true).map_err(err)?;
        probe.bind(&addr.into()).map_err(err)?;
    }
    let first = socket(addr, true).map_err(err)?;
    let bound = first.local_addr().map_err(err)?.as_socket().ok_or_else(|| err(std::io::Error::other("not an inet socket")))?;
    let mut out = vec![TcpListener::from(first)];
    for _ in 1..n {
        out.push(TcpListener::from(socket(bound, true).map_err(err)?));
    }
    Ok(out)
}

/// Binds one ordinary listener (the admin listener: one core serves it).
pub(crate) fn bind_one(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartupError> {
    socket(addr, false).map(TcpListener::from).map_err(|source| StartupError::Bind { what, addr, source })
}
