//! The lb's errors: [`StartupError`] for what stops it from starting, and
//! [`Error`] for everything that happens to a request or a tunnel setup, with
//! the one place that maps each to the HTTP status a client or worker
//! receives ([`Error::status`]) and to which side failed and how
//! ([`Error::side`], [`Error::kind`]: log fields, and what the failure model
//! and the counters are told).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ptth_proto::{BodyError, HeadError, SetupError};

use crate::config::ConfigError;

/// Why the lb did not start; the CLI prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: io::Error },
    #[error("starting core {core}: {source}")]
    Runtime { core: usize, source: io::Error },
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Why a reload (SIGHUP, [`crate::Lb::reload`]) was refused; the config
/// in force keeps serving, unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Settings fixed at start (listeners, cores, the runtime).
    #[error("{} cannot change while ptth-lb runs (a restart applies it: start the new ptth-lb with --share-listeners beside this one, then SIGTERM this one; docs/OPERATIONS.md)", .0.join(", "))]
    NeedsRestart(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- client side (downstream) ----
    #[error("{0}")]
    Head(#[from] HeadError),
    #[error("request body: {0}")]
    ClientBody(BodyError),
    #[error("client connection: {0}")]
    ClientIo(io::Error),
    #[error("the client went away while its request waited")]
    ClientGone,
    #[error("the request head did not arrive within {0:?}")]
    HeaderTimeout(Duration),
    #[error("{0} is not supported by this lb")]
    NotImplemented(&'static str),
    #[error("no worker serves host {host:?} path {path:?}")]
    NoRoute { host: String, path: String },
    /// The path's best route is a prefix kept for workers not connected now
    /// (`timeouts.route_hold_ms` after they left, or `[routes] reserved`).
    #[error("the workers serving path {path:?} are not connected; its route is reserved for them")]
    Reserved { path: String },
    /// The request's class's queue (or this core's) has no room.
    #[error("too many requests of class {class} are waiting for a tunnel ({why})")]
    QueueFull { class: Box<str>, why: String },
    #[error("no tunnel became free for class {class} within {after:?}")]
    QueueTimeout { class: Box<str>, after: Duration },

    // ---- tunnel side (upstream) ----
    #[error("tunnel to worker {worker} failed ({fault}): {cause}")]
    Tunnel {
        worker: String,
        fault: TunnelFault,
        #[source]
        cause: Cause,
    },
    #[error("worker {worker} sent an invalid response: {why}")]
    BadResponse { worker: String, why: String },
    #[error(
        "worker {worker} did not process the request ({why}), but its body had already streamed to it and cannot be sent \
         again (HTTP/1.1 request bodies up to buffers.replay_max bytes are held for that)"
    )]
    NotReplayable { worker: String, why: String },
    /// The worker answered without passing the request on (its origin was
    /// unreachable), and said so with `Tunnel-Unprocessed`.
    /// `retry_after`: it also said when to come back (it withdrew itself).
    #[error("worker {worker} could not pass the request on (it answered {status} with Tunnel-Unprocessed)")]
    Unprocessed { worker: String, status: u16, retry_after: Option<Duration> },
    #[error("worker {worker} sent no response head within {after:?}")]
    ResponseTimeout { worker: String, after: Duration },

    // ---- tunnel setup ----
    #[error("{0}")]
    Setup(#[from] SetupError),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooManyTunnels(String),
    /// A worker id live under another identity (it is not this one's).
    #[error("{0}")]
    WorkerIdTaken(String),
    #[error("the lb is shutting down")]
    Draining,
}

/// The error underneath a tunnel failure, kept as it was raised.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    H2(#[from] h2::Error),
    #[error("{0}")]
    Body(#[from] BodyError),
    /// No error value: a condition the lb found (a close, a head that does
    /// not convert).
    #[error("{0}")]
    Text(String),
}

impl From<&str> for Cause {
    fn from(s: &str) -> Cause {
        Cause::Text(s.to_string())
    }
}

impl From<String> for Cause {
    fn from(s: String) -> Cause {
        Cause::Text(s)
    }
}

/// What went wrong on a tunnel (the worker's side), for logs and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelFault {
    /// The worker closed the tunnel.
    Closed,
    /// Reading or writing the tunnel failed (reset, broken pipe).
    Io,
    /// The HTTP/2 stream or connection failed (RST_STREAM, GOAWAY, a
    /// protocol error).
    Stream,
    /// The lb could not put the request on this tunnel: it was closing, or
    /// the request cannot be expressed in HTTP/2.
    Unusable,
}

/// Which side of the lb an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: its request, its connection.
    Client,
    /// A worker: its tunnel, its response, its setup.
    Worker,
    /// The lb itself: no route, load shed, shutting down.
    Lb,
}

/// How something failed, whichever side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A deadline passed.
    Timeout,
    /// The connection or stream was reset or broke.
    Reset,
    /// The peer closed.
    Closed,
    /// Bytes that break the protocol (a bad head, bad framing).
    Protocol,
    /// Valid, but not something this lb does (CONNECT, for now).
    Unsupported,
    /// No worker serves the route.
    NoRoute,
    /// Refused: by policy or credentials, or by a worker that did not take
    /// the request.
    Refused,
    /// Shed by the lb's own bounds (queue, tunnel caps, draining).
    Shed,
}

impl Kind {
    fn of_io(e: &io::Error) -> Kind {
        match e.kind() {
            io::ErrorKind::TimedOut => Kind::Timeout,
            io::ErrorKind::UnexpectedEof => Kind::Closed,
            _ => Kind::Reset,
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Worker => "worker",
            Side::Lb => "lb",
        })
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Timeout => "timeout",
            Kind::Reset => "reset",
            Kind::Closed => "closed",
            Kind::Protocol => "protocol",
            Kind::Unsupported => "unsupported",
            Kind::NoRoute => "no_route",
            Kind::Refused => "refused",
            Kind::Shed => "shed",
        })
    }
}

impl std::fmt::Display for TunnelFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TunnelFault::Closed => "closed by the worker",
            TunnelFault::Io => "I/O error",
            TunnelFault::Stream => "HTTP/2 stream error",
            TunnelFault::Unusable => "not usable for this request",
        })
    }
}

impl Error {
    /// The status answered for this error (RFC 9110 §15). Client I/O errors
    /// have none: the connection is gone or broken and is just closed.
    pub fn status(&self) -> Option<u16> {
        Some(match self {
            Error::Head(h) => h.status(),
            Error::ClientBody(_) => 400,
            Error::NotImplemented(_) => 501,
            Error::HeaderTimeout(_) => 408,
            Error::NoRoute { .. } | Error::Reserved { .. } | Error::QueueFull { .. } | Error::QueueTimeout { .. } | Error::Draining => 503,
            // A worker that withdrew (its origin is down, it said when to
            // come back) is unavailable, not broken.
            Error::Unprocessed { status: 503, retry_after: Some(_), .. } => 503,
            Error::Tunnel { .. } | Error::BadResponse { .. } | Error::NotReplayable { .. } | Error::Unprocessed { .. } => 502,
            Error::ResponseTimeout { .. } => 504,
            Error::Setup(s) => s.status(),
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::TooManyTunnels(_) => 429,
            Error::WorkerIdTaken(_) => 409,
            Error::ClientIo(_) | Error::ClientGone => return None,
        })
    }

    /// Which side failed.
    pub fn side(&self) -> Side {
        match self {
            Error::Head(_)
            | Error::ClientBody(_)
            | Error::ClientIo(_)
            | Error::ClientGone
            | Error::HeaderTimeout(_)
            | Error::NotImplemented(_) => Side::Client,
            Error::Tunnel { .. }
            | Error::BadResponse { .. }
            | Error::NotReplayable { .. }
            | Error::Unprocessed { .. }
            | Error::ResponseTimeout { .. } => Side::Worker,
            Error::Setup(_) | Error::Unauthorized(_) | Error::Forbidden(_) | Error::WorkerIdTaken(_) => Side::Worker,
            Error::NoRoute { .. }
            | Error::Reserved { .. }
            | Error::QueueFull { .. }
            | Error::QueueTimeout { .. }
            | Error::TooManyTunnels(_)
            | Error::Draining => Side::Lb,
        }
    }

    /// How it failed.
    pub fn kind(&self) -> Kind {
        match self {
            Error::Head(_) | Error::BadResponse { .. } | Error::Setup(_) => Kind::Protocol,
            Error::ClientBody(BodyError::Truncated) => Kind::Closed,
            Error::ClientBody(_) => Kind::Protocol,
            Error::ClientIo(e) => Kind::of_io(e),
            Error::ClientGone => Kind::Closed,
            Error::HeaderTimeout(_) | Error::QueueTimeout { .. } | Error::ResponseTimeout { .. } => Kind::Timeout,
            Error::NotImplemented(_) => Kind::Unsupported,
            Error::NoRoute { .. } | Error::Reserved { .. } => Kind::NoRoute,
            Error::QueueFull { .. } | Error::TooManyTunnels(_) | Error::Draining => Kind::Shed,
            Error::Tunnel { fault: TunnelFault::Closed, .. } => Kind::Closed,
            Error::Tunnel { fault: TunnelFault::Io | TunnelFault::Stream, .. } => Kind::Reset,
            Error::Tunnel { fault: TunnelFault::Unusable, .. } | Error::NotReplayable { .. } | Error::Unprocessed { .. } => Kind::Refused,
            Error::Unauthorized(_) | Error::Forbidden(_) | Error::WorkerIdTaken(_) => Kind::Refused,
        }
    }

    /// Whether the answer carries `Retry-After` (the condition is temporary).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NoRoute { .. }
                | Error::Reserved { .. }
                | Error::QueueFull { .. }
                | Error::QueueTimeout { .. }
                | Error::Draining
                | Error::TooManyTunnels(_)
                | Error::Unprocessed { status: 503, retry_after: Some(_), .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(Error::Head(HeadError::RequestLineTooLong).status(), Some(414));
        assert_eq!(Error::QueueFull { class: "default".into(), why: String::new() }.status(), Some(503));
        assert_eq!(Error::ResponseTimeout { worker: "w".into(), after: Duration::ZERO }.status(), Some(504));
        assert_eq!(Error::Unauthorized("x").status(), Some(401));
        assert_eq!(Error::ClientIo(io::Error::other("x")).status(), None);
        assert!(Error::TooManyTunnels("x".into()).is_retryable());
    }

    /// Side, kind and status of each kind of error, as one table.
    #[test]
    fn taxonomy() {
        let w = || "w".to_string();
        let tunnel = |fault| Error::Tunnel { worker: w(), fault, cause: "x".into() };
        let rows: Vec<(Error, Side, Kind, Option<u16>)> = vec![
            (Error::Head(HeadError::RequestLineTooLong), Side::Client, Kind::Protocol, Some(414)),
            (Error::ClientBody(BodyError::Truncated), Side::Client, Kind::Closed, Some(400)),
            (Error::ClientIo(io::Error::from(io::ErrorKind::ConnectionReset)), Side::Client, Kind::Reset, None),
            (Error::ClientGone, Side::Client, Kind::Closed, None),
            (Error::HeaderTimeout(Duration::ZERO), Side::Client, Kind::Timeout, Some(408)),
            (Error::NotImplemented("CONNECT"), Side::Client, Kind::Unsupported, Some(501)),
            (Error::NoRoute { host: "h".into(), path: "/".into() }, Side::Lb, Kind::NoRoute, Some(503)),
            (Error::Reserved { path: "/admin/".into() }, Side::Lb, Kind::NoRoute, Some(503)),
            (Error::QueueFull { class: "c".into(), why: String::new() }, Side::Lb, Kind::Shed, Some(503)),
            (Error::QueueTimeout { class: "c".into(), after: Duration::ZERO }, Side::Lb, Kind::Timeout, Some(503)),
            (tunnel(TunnelFault::Closed), Side::Worker, Kind::Closed, Some(502)),
            (tunnel(TunnelFault::Io), Side::Worker, Kind::Reset, Some(502)),
            (tunnel(TunnelFault::Stream), Side::Worker, Kind::Reset, Some(502)),
            (tunnel(TunnelFault::Unusable), Side::Worker, Kind::Refused, Some(502)),
            (Error::BadResponse { worker: w(), why: "x".into() }, Side::Worker, Kind::Protocol, Some(502)),
            (Error::NotReplayable { worker: w(), why: "x".into() }, Side::Worker, Kind::Refused, Some(502)),
            (Error::Unprocessed { worker: w(), status: 502, retry_after: None }, Side::Worker, Kind::Refused, Some(502)),
            (
                Error::Unprocessed { worker: w(), status: 503, retry_after: Some(Duration::from_secs(1)) },
                Side::Worker,
                Kind::Refused,
                Some(503),
            ),
            (Error::ResponseTimeout { worker: w(), after: Duration::ZERO }, Side::Worker, Kind::Timeout, Some(504)),
            (Error::Unauthorized("x"), Side::Worker, Kind::Refused, Some(401)),
            (Error::TooManyTunnels("x".into()), Side::Lb, Kind::Shed, Some(429)),
            (Error::WorkerIdTaken("x".into()), Side::Worker, Kind::Refused, Some(409)),
            (Error::Draining, Side::Lb, Kind::Shed, Some(503)),
        ];
        for (e, side, kind, status) in rows {
            assert_eq!((e.side(), e.kind(), e.status()), (side, kind, status), "{e}");
        }
    }
}
