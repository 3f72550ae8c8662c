//! Taking a lease for a request, for both client protocols: pick a tunnel
//! (or an h2 stream slot) from this core's pool, or wait in the bounded
//! queue for one; an idle h1 tunnel is checked before it is trusted.
//!
//! Place in the request path: after routing, before the exchange.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use ptth_proto::setup::DEFAULT_CLASS;

use crate::config::Profile;
use crate::error::Error;
use crate::percore::Core;
use crate::stats;
pub(crate) use crate::tunnel::pool::For;
use crate::tunnel::pool::{At, Lease, Leased, Pick, Pool, Shed};
use crate::tunnel::queue::{HeldBack, Waiter};

/// Takes a tunnel for this route from the core's pool, waiting in the bounded
/// queue when every eligible tunnel is busy (or the request's class is at
/// its limit on every worker).
/// `gone` resolves if the client leaves; a wait in the queue ends then.
pub(crate) async fn acquire(core: &Rc<Core>, req: &For<'_>, avoid: Option<usize>, gone: impl Future<Output = ()>) -> Result<Lease, Error> {
    let mut gone = std::pin::pin!(gone);
    let cfg = core.cfg();
    let p = &cfg.profile;
    let (host, path) = (req.host, req.path);
    loop {
        let pick = core.pool.borrow_mut().try_pick(host, path, req.method, At::Arrival(req.urgency), avoid);
        let t = match pick {
            Pick::Got(t) => t,
            Pick::NoRoute => {
                return Err(Error::NoRoute {
                    host: String::from_utf8_lossy(host).into_owned(),
                    path: String::from_utf8_lossy(path).into_owned(),
                })
            }
            Pick::Reserved => return Err(Error::Reserved { path: String::from_utf8_lossy(path).into_owned() }),
            Pick::Busy(held_back) => wait_for_tunnel(core, req, held_back, p, gone.as_mut()).await?,
        };
        // An idle tunnel may have been closed by its worker, or hold bytes
        // it sent unasked (which would be read as this request's response):
        // check every time before trusting it with a request.
        if let Leased::H1(h1t) = &t.kind {
            if Pool::is_stale(h1t) {
                core.pool.borrow_mut().discard(t);
                continue;
            }
        }
        return Ok(t);
    }
}

async fn wait_for_tunnel(
    core: &Rc<Core>,
    req: &For<'_>,
    held_back: Vec<HeldBack>,
    p: &Profile,
    gone: Pin<&mut impl Future<Output = ()>>,
) -> Result<Lease, Error> {
    let (host, path) = (req.host, req.path);
    let queued = core.pool.borrow_mut().enqueue(req, held_back, p.queue_max, p.queue_wait).map_err(|s| match s {
        Shed::ClassFull { class, bound } => {
            Error::QueueFull { class: class.name.clone(), why: format!("the class allows {bound} waiting") }
        }
        Shed::CoreFull { class, max } => {
            Error::QueueFull { class: class.name.clone(), why: format!("queue.max_waiting = {max} on this core") }
        }
    })?;
    stats::add(&core.stats().queued, 1);
    let w = &queued.waiter;
    // Leaves the queue however the wait ends, the client's going away
    // (this future dropped) included.
    let mut leave = LeaveQueue { core, w, ended: false };
    let waited = monoio::select! {
        biased;
        r = ptth_proto::rt::deadline::within(queued.wait, w.wait()) => r,
        // Dropped without `ended`: counted as abandoned.
        _ = gone => return Err(Error::ClientGone),
    };
    let r = match waited {
        Ok(Some(t)) => Ok(t),
        Ok(None) => {
            Err(Error::NoRoute { host: String::from_utf8_lossy(host).into_owned(), path: String::from_utf8_lossy(path).into_owned() })
        }
        Err(_) => {
            let class = w.ticket.as_ref().map(|t| t.class());
            if let Some(c) = class {
                stats::add(&c.core(core.id).shed_timeout, 1);
            }
            Err(Error::QueueTimeout { class: class.map_or_else(|| DEFAULT_CLASS.into(), |c| c.name.clone()), after: queued.wait })
        }
    };
    leave.ended = true;
    r
}

/// Takes a waiter out of the queue when its wait ends; one whose wait did
/// not end (its client went away, or the request's future was dropped)
/// counts as abandoned.
struct LeaveQueue<'a> {
    core: &'a Core,
    w: &'a Rc<Waiter<Lease>>,
    ended: bool,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        if !self.ended {
            if let Some(t) = &self.w.ticket {
                stats::add(&t.class().core(self.core.id).abandoned, 1);
            }
        }
        self.core.pool.borrow_mut().leave_queue(self.w);
    }
}
