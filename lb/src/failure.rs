//! The one failure model of the request path. Whatever the client protocol
//! and the tunnel kind, a failed attempt on a tunnel is described as plain
//! data — where it stopped, whether the worker can have acted on it, whether
//! the request is still held whole — and [`decide`] alone turns that into
//! "send it again elsewhere", "answer with the error's status" or "close the
//! client". No I/O here: the table test below covers every combination.
//!
//! The rule it encodes (RFC 9110 §9.2.2, RFC 9113 §8.7): a request the worker
//! may have acted on is never sent again unless its method is idempotent and
//! no byte of a response arrived; one the worker provably did not process
//! (never sent, refused with REFUSED_STREAM, above a GOAWAY's last stream id)
//! may be sent again whatever its method. Either way the request must still
//! be whole: a body that has partly streamed to the failed tunnel is gone.

use crate::error::Error;

/// Most times one request is sent again after failed attempts.
pub(crate) const MAX_RETRIES: u32 = 2;

/// How far an attempt got before it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Nothing of the request reached the tunnel.
    NotSent,
    /// The request was written, in part or whole; no response byte arrived.
    Sent,
    /// Response bytes arrived from the worker (an interim response, an
    /// invalid or partial head), but nothing of them reached the client.
    Answered,
    /// Response bytes reached the client, or the client itself went away:
    /// nothing can be answered any more, only closing is left.
    Relayed,
}

/// Whether the worker can have acted on the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Processed {
    /// It never reached the worker.
    No,
    /// The worker said it did not process it: REFUSED_STREAM, or a GOAWAY
    /// whose last stream id is below the stream (RFC 9113 §8.7).
    Refused,
    /// It may have: the tunnel broke or went silent with the request on it.
    Unknown,
}

/// A failed attempt, as the exchange code reports it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) err: Error,
    pub(crate) stage: Stage,
    pub(crate) processed: Processed,
    /// The request body is still held whole (kept for replay), so the
    /// request can be sent again as it was.
    pub(crate) body_held: bool,
    /// The tunnel is clean (the worker's whole answer was read) and can
    /// carry another request.
    pub(crate) tunnel_reusable: bool,
}

impl Failure {
    /// The request never reached the tunnel.
    pub(crate) fn not_sent(err: Error) -> Failure {
        Failure { err, stage: Stage::NotSent, processed: Processed::No, body_held: true, tunnel_reusable: false }
    }
    /// The request went out and nothing came back: the worker may have acted.
    pub(crate) fn sent(err: Error) -> Failure {
        Failure { err, stage: Stage::Sent, processed: Processed::Unknown, body_held: false, tunnel_reusable: false }
    }
    /// The worker said it did not process the request; `body_held`: it can
    /// go out again whole.
    pub(crate) fn refused(err: Error, body_held: bool) -> Failure {
        Failure { err, stage: Stage::Sent, processed: Processed::Refused, body_held, tunnel_reusable: false }
    }
    /// The worker answered that it did not pass the request on
    /// (`Tunnel-Unprocessed`): as refused; `tunnel_reusable` when its whole
    /// answer was read.
    pub(crate) fn unprocessed(err: Error, tunnel_reusable: bool) -> Failure {
        Failure { tunnel_reusable, ..Failure::refused(err, false) }
    }
    /// The worker answered, invalidly or partly; the client has nothing yet.
    pub(crate) fn answered(err: Error) -> Failure {
        Failure { err, stage: Stage::Answered, processed: Processed::Unknown, body_held: false, tunnel_reusable: false }
    }
    /// The tunnel closed or broke while waiting for the response head:
    /// nothing came back yet (`nothing_yet`: the worker may have acted), or
    /// part of a response did.
    pub(crate) fn lost(err: Error, nothing_yet: bool) -> Failure {
        if nothing_yet {
            Failure::sent(err)
        } else {
            Failure::answered(err)
        }
    }
    /// The client must be closed: its response was under way, or it failed.
    pub(crate) fn relayed(err: Error) -> Failure {
        Failure { err, stage: Stage::Relayed, processed: Processed::Unknown, body_held: false, tunnel_reusable: false }
    }
    /// The client went away (its connection is gone or unusable).
    pub(crate) fn client_gone() -> Failure {
        Failure::relayed(Error::ClientIo(std::io::Error::from(std::io::ErrorKind::BrokenPipe)))
    }
}

impl Failure {
    /// The error to answer with. A request the worker refused unprocessed
    /// but that cannot go out again (its body streamed and is not held) says
    /// why, rather than passing for an ordinary tunnel failure.
    pub(crate) fn into_answer(self, req: &Request) -> Error {
        if self.processed == Processed::Refused && !(req.bodyless || self.body_held) {
            if let Error::Tunnel { worker, cause, .. } = self.err {
                return Error::NotReplayable { worker, why: cause.to_string() };
            }
        }
        self.err
    }
}

/// What the request path does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Send the request again on another tunnel.
    Retry,
    /// Answer the client with the error's status ([`Error::status`]).
    Answer,
    /// Close the client connection (HTTP/1.1) or reset the stream (h2).
    Abort,
}

/// The facts [`decide`] needs about the request itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request {
    /// RFC 9110 §9.2.2 ([`ptth_proto::h1::is_idempotent_method`]).
    pub(crate) idempotent: bool,
    /// It has no body at all.
    pub(crate) bodyless: bool,
    /// Attempts made so far beyond the first.
    pub(crate) retries: u32,
}

/// The one retry decision of the lb.
pub(crate) fn decide(f: &Failure, req: &Request) -> Decision {
    if f.stage == Stage::Relayed {
        return Decision::Abort;
    }
    let whole = req.bodyless || f.body_held;
    let timed_out = matches!(f.err, Error::ResponseTimeout { .. });
    let safe = match f.processed {
        Processed::No | Processed::Refused => true,
        // The worker may have acted: only an idempotent request, only if no
        // response byte came back, and not after a timeout (a slow worker
        // sent the same request twice is twice as slow).
        Processed::Unknown => req.idempotent && f.stage == Stage::Sent && !timed_out,
    };
    if safe && whole && req.retries < MAX_RETRIES {
        Decision::Retry
    } else {
        Decision::Answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TunnelFault;
    use std::time::Duration;

    fn failure(stage: Stage, processed: Processed, timeout: bool, body_held: bool) -> Failure {
        let err = if timeout {
            Error::ResponseTimeout { worker: "w".into(), after: Duration::from_secs(1) }
        } else {
            Error::Tunnel { worker: "w".into(), fault: TunnelFault::Stream, cause: "closed".into() }
        };
        Failure { err, stage, processed, body_held, tunnel_reusable: false }
    }

    /// Every combination of the facts, against the rule written out plainly.
    #[test]
    fn decision_table() {
        use Decision::*;
        use Processed::*;
        use Stage::*;
        let mut rows = 0;
        for stage in [NotSent, Sent, Answered, Relayed] {
            for processed in [No, Refused, Unknown] {
                for timeout in [false, true] {
                    for body_held in [false, true] {
                        for idempotent in [false, true] {
                            for bodyless in [false, true] {
                                for retries in [0, MAX_RETRIES] {
                                    let f = failure(stage, processed, timeout, body_held);
                                    let req = Request { idempotent, bodyless, retries };
                                    let got = decide(&f, &req);
                                    let whole = bodyless || body_held;
                                    let want = if stage == Relayed {
                                        Abort
                                    } else if retries == MAX_RETRIES || !whole {
                                        Answer
                                    } else if processed != Unknown || (idempotent && stage == Sent && !timeout) {
                                        Retry
                                    } else {
                                        Answer
                                    };
                                    assert_eq!(got, want, "{f:?} {req:?}");
                                    rows += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(rows, 4 * 3 * 2 * 2 * 2 * 2 * 2);
    }

    /// The cases the issue tracker reported, by name.
    #[test]
    fn named_cases() {
        let once = |idempotent, bodyless| Request { idempotent, bodyless, retries: 0 };
        // A bodyless POST the worker received whole before its tunnel died:
        // it may have acted, so 502, never a second worker (h1 and h2c alike).
        assert_eq!(
            decide(
                &Failure::sent(Error::Tunnel { worker: "w".into(), fault: TunnelFault::Stream, cause: "reset".into() }),
                &once(false, true)
            ),
            Decision::Answer
        );
        // The same as a GET: sent again.
        assert_eq!(
            decide(
                &Failure::sent(Error::Tunnel { worker: "w".into(), fault: TunnelFault::Stream, cause: "reset".into() }),
                &once(true, true)
            ),
            Decision::Retry
        );
        // A POST refused by GOAWAY with its body held: sent again.
        assert_eq!(
            decide(
                &Failure::refused(Error::Tunnel { worker: "w".into(), fault: TunnelFault::Stream, cause: "goaway".into() }, true),
                &once(false, false)
            ),
            Decision::Retry
        );
        // The same POST whose body had partly streamed: 502.
        assert_eq!(
            decide(
                &Failure::refused(Error::Tunnel { worker: "w".into(), fault: TunnelFault::Stream, cause: "goaway".into() }, false),
                &once(false, false)
            ),
            Decision::Answer
        );
        let streamed = Failure::refused(Error::Tunnel { worker: "w".into(), fault: TunnelFault::Stream, cause: "goaway".into() }, false);
        assert!(matches!(streamed.into_answer(&once(false, false)), Error::NotReplayable { .. }));
        // Nothing sent (a draining tunnel refused the stream locally): any method.
        assert_eq!(
            decide(
                &Failure::not_sent(Error::Tunnel { worker: "w".into(), fault: TunnelFault::Stream, cause: "draining".into() }),
                &once(false, false)
            ),
            Decision::Retry
        );
    }
}
