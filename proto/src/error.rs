//! Errors of the protocol layer. Each variant names what was wrong with the
//! input; the lb and the worker map them to an HTTP status in one place each.

use thiserror::Error;

/// A message head that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeadError {
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    #[error("request line too long")]
    RequestLineTooLong,
    #[error("head too large")]
    HeadTooLarge,
    #[error("too many header fields")]
    TooManyFields,
    #[error("ambiguous or invalid message framing: {0}")]
    BadFraming(&'static str),
    #[error("transfer coding not supported (only chunked is)")]
    UnsupportedCoding,
    #[error("HTTP version not supported (HTTP/1.0 and HTTP/1.1 are)")]
    VersionNotSupported,
    #[error("unsupported Expect value (only 100-continue is)")]
    ExpectationFailed,
}

impl HeadError {
    /// The status a server answers this error with (RFC 9110 §15, RFC 9112).
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed(_) | HeadError::BadFraming(_) => 400,
            HeadError::RequestLineTooLong => 414,
            HeadError::HeadTooLarge | HeadError::TooManyFields => 431,
            HeadError::UnsupportedCoding => 501,
            HeadError::VersionNotSupported => 505,
            HeadError::ExpectationFailed => 417,
        }
    }
}

/// A message body whose framing is broken.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BodyError {
    #[error("invalid chunked coding: {0}")]
    BadChunk(&'static str),
    #[error("body truncated by end of connection")]
    Truncated,
}

/// A PTTH setup request that the lb must refuse before authentication.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SetupError {
    /// 404: not the PTTH endpoint.
    #[error("unknown endpoint {0}; PTTH setup requests go to /.well-known/ptth/<origins>/")]
    NotFound(String),
    /// 426: no `Upgrade: ptth`.
    #[error("this endpoint needs Upgrade: ptth (and Connection: Upgrade)")]
    UpgradeRequired,
    /// 400: the request is malformed; the text says which part.
    #[error("{0}")]
    Malformed(String),
}

impl SetupError {
    pub fn status(&self) -> u16 {
        match self {
            SetupError::NotFound(_) => 404,
            SetupError::UpgradeRequired => 426,
            SetupError::Malformed(_) => 400,
        }
    }
}
