//! Errors of the worker: one enum, and the one place that says which of them
//! end a tunnel and which only fail a request.

use std::io;

use ptth_proto::rt::body::Fault;
use ptth_proto::HeadError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("connecting to lb {lb}: {source}")]
    Connect { lb: String, source: io::Error },
    #[error("lb {lb} refused the tunnel with {status}: {reason}")]
    Rejected { lb: String, status: u16, retry_after: Option<u32>, reason: String },
    /// The lb could not be authenticated (or the handshake failed): the
    /// worker never sends it anything.
    #[error("TLS with lb {lb}: {why}")]
    Tls { lb: String, why: String },
    #[error("lb {lb} sent an invalid setup response: {why}")]
    BadSetupResponse { lb: String, why: String },
    #[error("tunnel I/O: {0}")]
    Io(#[from] io::Error),
    #[error("bad request on tunnel: {0}")]
    Head(#[from] HeadError),
    #[error("request body: {0}")]
    Body(#[from] ptth_proto::BodyError),
    #[error("relaying a body: {0}")]
    Relay(#[from] Fault),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("{0}")]
    Handler(String),
    #[error("origin {origin}: {why}")]
    Origin { origin: String, kind: OriginFailure, why: String },
}

/// What went wrong with the sidecar's origin, for the status it maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginFailure {
    /// Connecting failed or was refused.
    Connect,
    /// A connect or response deadline passed: 504.
    Timeout,
    /// The connection closed or broke mid-exchange.
    Closed,
    /// The origin's response was invalid (head, framing, a 101 nobody asked for).
    Protocol,
    /// Its health check says it is down: the request is not tried (503, the
    /// worker withdraws until the check passes again).
    Down,
}

impl Error {
    /// Status the worker answers with when this error happens before the
    /// response head was sent.
    pub fn status(&self) -> u16 {
        match self {
            Error::Head(h) => h.status(),
            Error::Body(_) => 400,
            Error::Origin { kind: OriginFailure::Timeout, .. } => 504,
            Error::Origin { kind: OriginFailure::Down, .. } => 503,
            Error::Origin { .. } => 502,
            _ => 500,
        }
    }
}

impl Error {
    /// The body of the error response a client gets: what failed, never
    /// where (an origin's address or a socket error stays in the worker's
    /// log, see [`Error::log_answered`]).
    pub fn client_body(&self) -> String {
        let what = match self {
            // About the request itself: the client may know.
            Error::Head(e) => return format!("{e}\n"),
            Error::Body(e) => return format!("request body: {e}\n"),
            Error::Origin { kind: OriginFailure::Connect, .. } => "the origin is unreachable",
            Error::Origin { kind: OriginFailure::Timeout, .. } => "the origin did not answer in time",
            Error::Origin { kind: OriginFailure::Closed, .. } => "the origin closed the connection",
            Error::Origin { kind: OriginFailure::Protocol, .. } => "the origin sent an invalid response",
            Error::Origin { kind: OriginFailure::Down, .. } => "the origin is unavailable",
            _ => "the worker failed to handle the request",
        };
        format!("{what}\n")
    }

    /// Whether nothing of the request went past the worker (its origin
    /// could not be reached): said to the lb with `Tunnel-Unprocessed: ?1`,
    /// so the request may go to another worker (docs/PROTOCOL.md §5).
    pub fn unprocessed(&self) -> bool {
        matches!(self, Error::Origin { kind: OriginFailure::Connect | OriginFailure::Down, .. })
    }

    /// The fields of the error response the worker answers with.
    pub fn answer_fields(&self) -> &'static [(&'static str, &'static str)] {
        const PLAIN: &[(&str, &str)] = &[("Content-Type", "text/plain")];
        const UNPROCESSED: &[(&str, &str)] = &[("Content-Type", "text/plain"), (ptth_proto::setup::FIELD_UNPROCESSED, "?1")];
        // Withdrawn: the lb keeps it out of selection this long (the health
        // check runs more often; the lb looks again after it).
        const WITHDRAWN: &[(&str, &str)] =
            &[("Content-Type", "text/plain"), (ptth_proto::setup::FIELD_UNPROCESSED, "?1"), ("Retry-After", "1")];
        match self {
            Error::Origin { kind: OriginFailure::Down, .. } => WITHDRAWN,
            e if e.unprocessed() => UNPROCESSED,
            _ => PLAIN,
        }
    }

    /// Logs an error the worker answered a request with (its detail, which
    /// the client's body leaves out), at most one line a second per thread
    /// so that a dead origin does not flood the log.
    pub fn log_answered(&self) {
        thread_local! {
            static THROTTLE: ptth_proto::rt::logging::LogThrottle = ptth_proto::rt::logging::LogThrottle::default();
        }
        if matches!(self, Error::Head(_) | Error::Body(_)) {
            return;
        }
        THROTTLE.with(|t| {
            if let Some(suppressed) = t.admit(std::time::Instant::now()) {
                tracing::warn!(status = self.status(), suppressed, "answered a request with an error: {self}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_statuses_come_from_the_kind() {
        let e = |kind| Error::Origin { origin: "o:1".into(), kind, why: "anything, even 'timed out'".into() };
        assert_eq!(e(OriginFailure::Timeout).status(), 504);
        for k in [OriginFailure::Connect, OriginFailure::Closed, OriginFailure::Protocol] {
            assert_eq!(e(k).status(), 502, "{k:?}");
        }
        // Down by its health check: the worker withdraws, saying for how long.
        let down = e(OriginFailure::Down);
        assert_eq!(down.status(), 503);
        assert!(down.unprocessed());
        assert!(down.answer_fields().contains(&("Retry-After", "1")));
        assert!(!e(OriginFailure::Connect).answer_fields().iter().any(|(n, _)| *n == "Retry-After"));
    }

    #[test]
    fn client_bodies_name_no_internal_address() {
        for kind in [OriginFailure::Connect, OriginFailure::Timeout, OriginFailure::Closed, OriginFailure::Protocol, OriginFailure::Down] {
            let e = Error::Origin { origin: "10.1.2.3:8080".into(), kind, why: "connect: Connection refused (os error 111)".into() };
            let body = e.client_body();
            assert!(body.starts_with("the origin ") && !body.contains("10.1.2.3") && !body.contains("os error"), "{body}");
        }
        let io = Error::Io(std::io::Error::other("reading 127.0.0.1:9: reset"));
        assert!(!io.client_body().contains("127.0.0.1"), "{}", io.client_body());
    }
}
