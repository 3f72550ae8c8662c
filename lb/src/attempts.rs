//! The attempts of one request, for both client protocols: take a lease
//! (`tunnel::acquire`), run the exchange on it (`exchange`), give the lease
//! back, and after a failure let `failure::decide` say what follows: the
//! request again on another worker, an error answer, or closing the client.
//! [`record`] is the one place an outcome is counted and logged.
//!
//! Place in the request path: route → **attempts** (pick → exchange →
//! decide → record).

use std::rc::Rc;

use crate::error::{Error, Side};
use crate::exchange::{Ctx, Done};
use crate::failure::{self, Decision, Failure};
use crate::percore::Core;
use crate::stats;
use crate::tunnel::acquire::{acquire, For};
use crate::tunnel::health::Verdict;
use crate::tunnel::pool::Lease;

/// How a request's attempts ended.
pub(crate) enum Ended {
    /// A worker's response was relayed (already recorded).
    Served(Done),
    /// No lease could be had for the first attempt (no route, queue full or
    /// timed out): the client side may still hand the connection to another
    /// core before answering.
    NoLease(Error),
    /// Answer the client with this error.
    Answer(Error),
    /// Close the client connection (HTTP/1.1) or reset the stream (h2).
    Abort,
}

/// What a request's attempts need to know about it.
pub(crate) struct Request<'a> {
    /// What a lease is taken for: route, method, the client's urgency.
    pub(crate) to: For<'a>,
    pub(crate) idempotent: bool,
    pub(crate) bodyless: bool,
    pub(crate) is_head: bool,
    /// Handed over from another core (counted apart).
    pub(crate) migrated: bool,
}

/// Runs `attempt` on leases until the request is served or
/// [`failure::decide`] says to stop. `gone` watches for the client leaving
/// while the request waits for a lease (it ends the request at once).
pub(crate) async fn serve<G: std::future::Future<Output = ()>>(
    core: &Rc<Core>,
    req: &Request<'_>,
    gone: impl Fn() -> G,
    mut attempt: impl AsyncFnMut(&Ctx<'_>, &mut Lease) -> Result<Done, Failure>,
) -> Ended {
    let mut avoid = None;
    let mut retries = 0;
    loop {
        let lease = match acquire(core, &req.to, avoid, gone()).await {
            Ok(l) => l,
            Err(Error::ClientGone) => return Ended::Abort,
            Err(e) if retries == 0 => return Ended::NoLease(e),
            Err(e) => return Ended::Answer(e),
        };
        let slot = lease.slot();
        let worker = core.pool.borrow().worker_id(slot);
        // The lease goes back to the pool however the attempt ends, this
        // future being dropped (client reset, core killed) included.
        let mut held = Held { core, lease: Some(lease) };
        let x = Ctx {
            core,
            worker: &worker,
            is_head: req.is_head,
            head_at: std::cell::Cell::new(None),
            upload_done_at: std::cell::Cell::new(None),
        };
        let sent_at = std::time::Instant::now();
        // The attempt's state (the exchange and its duplex, about 4.8 KB)
        // stays inline here: an HTTP/1.1 connection builds it in place once
        // per request, and a heap block would cost an allocation on top of
        // the same copy (measured). The h2c side boxes its own, where the
        // whole path is a task spawned per stream.
        let result = match held.lease.as_mut() {
            Some(l) => attempt(&x, l).await,
            None => unreachable!("the lease is held until here"),
        };
        let lease = held.lease.take().expect("the lease is held until here");
        let f = match result {
            Ok(done) => {
                let mut pool = core.pool.borrow_mut();
                // A worker relaying its origin's failure (or its own) is failing.
                match done.status {
                    502..=504 => pool.judge(slot, Verdict::Failed, &format_args!("it answered {}", done.status)),
                    _ => pool.judge(slot, Verdict::Ok, &""),
                }
                if let Some(took) = x.answer_time(sent_at) {
                    pool.observe(&lease, took);
                }
                pool.release(lease, done.reusable);
                drop(pool);
                record(core, Outcome::Served { status: done.status, migrated: req.migrated });
                return Ended::Served(done);
            }
            Err(f) => f,
        };
        let mut pool = core.pool.borrow_mut();
        // A worker that withdrew itself (503 + Tunnel-Unprocessed +
        // Retry-After) is out for that long; it did not fail.
        let withdrew = match &f.err {
            Error::Unprocessed { retry_after: Some(d), .. } => {
                pool.withdraw(slot, *d);
                true
            }
            _ => false,
        };
        if f.err.side() == Side::Worker && !withdrew {
            pool.judge(slot, Verdict::Failed, &f.err);
        }
        pool.release(lease, f.tunnel_reusable);
        // Sent again only where another worker can take it.
        let elsewhere = !withdrew || pool.another_serves(req.to.host, req.to.path, slot);
        drop(pool);
        let facts = failure::Request { idempotent: req.idempotent, bodyless: req.bodyless, retries };
        match failure::decide(&f, &facts) {
            Decision::Abort => return Ended::Abort,
            Decision::Answer => return Ended::Answer(f.into_answer(&facts)),
            Decision::Retry if !elsewhere => return Ended::Answer(f.into_answer(&facts)),
            Decision::Retry => {
                retries += 1;
                avoid = Some(slot);
                record(core, Outcome::Retried { worker: &worker, attempt: retries, why: &f.err });
            }
        }
    }
}

/// A lease lent to an attempt; given back unused (not counted as served) if
/// the attempt is dropped before it ends.
struct Held<'a> {
    core: &'a Core,
    lease: Option<Lease>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.lease.take() {
            // An h1 tunnel left mid-exchange closes; an h2 stream slot frees
            // (dropping the stream's handles reset it on the tunnel).
            self.core.pool.borrow_mut().discard(l);
        }
    }
}

/// An outcome worth a counter or a log line.
pub(crate) enum Outcome<'a> {
    /// A worker's response went to the client.
    Served { status: u16, migrated: bool },
    /// The lb answered itself with an error status.
    Answered { status: u16, err: &'a Error, client: Option<std::net::SocketAddr> },
    /// The request goes out again after a failed attempt.
    Retried { worker: &'a str, attempt: u32, why: &'a Error },
}

/// The one place outcomes are counted and logged.
pub(crate) fn record(core: &Core, o: Outcome<'_>) {
    let s = core.stats();
    match o {
        Outcome::Served { status, migrated } => s.record_served(status, migrated),
        Outcome::Answered { status, err, client } => {
            s.count_status(status);
            if status >= 500 {
                let (side, kind) = (err.side(), err.kind());
                match client {
                    Some(c) => tracing::warn!(client = %c, status, %side, %kind, "{err}"),
                    None => tracing::warn!(status, %side, %kind, "{err}"),
                }
            }
        }
        Outcome::Retried { worker, attempt, why } => {
            stats::add(&s.retries, 1);
            tracing::info!(worker = %worker, attempt, side = %why.side(), kind = %why.kind(), "request sent again after: {why}");
        }
    }
}
