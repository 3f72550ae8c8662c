//! Taking a lease for a request, for both client protocols: pick a tunnel
//! (or an h2 stream slot) from this core's pool, or wait in the bounded
//! queue for one; an idle h1 tunnel is checked before it is trusted.
//!
//! Place in the request path: after routing, before the exchange.

use std::rc::Rc;

use crate::config::Profile;
use crate::error::Error;
use crate::percore::Core;
use crate::stats;
use crate::tunnel::pool::{Lease, Pick, Pool};
use crate::tunnel::queue::Waiter;

/// Takes a tunnel for this route from the core's pool, waiting in the bounded
/// queue when every eligible tunnel is busy.
pub(crate) async fn acquire(core: &Rc<Core>, host: &[u8], path: &[u8], avoid: Option<usize>) -> Result<Lease, Error> {
    let p = &core.shared.cfg.profile;
    loop {
        let pick = core.pool.borrow_mut().try_pick(host, path, avoid);
        let t = match pick {
            Pick::Got(t) => t,
            Pick::NoRoute => {
                return Err(Error::NoRoute {
                    host: String::from_utf8_lossy(host).into_owned(),
                    path: String::from_utf8_lossy(path).into_owned(),
                })
            }
            Pick::Busy => wait_for_tunnel(core, host, path, p).await?,
        };
        // An idle tunnel may have been closed by its worker, or hold bytes
        // it sent unasked (which would be read as this request's response):
        // check every time before trusting it with a request.
        if let Lease::H1(h1t) = &t {
            if Pool::is_stale(h1t) {
                core.pool.borrow_mut().discard(t);
                continue;
            }
        }
        return Ok(t);
    }
}

async fn wait_for_tunnel(core: &Rc<Core>, host: &[u8], path: &[u8], p: &Profile) -> Result<Lease, Error> {
    let w = core.pool.borrow_mut().enqueue(host, path, p.queue_max).map_err(|_| Error::QueueFull)?;
    stats::add(&core.stats().queued, 1);
    // Leaves the queue however the wait ends, the client's going away
    // (this future dropped) included.
    let _leave = LeaveQueue { core, w: &w };
    match monoio::time::timeout(p.queue_wait, w.wait()).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => {
            Err(Error::NoRoute { host: String::from_utf8_lossy(host).into_owned(), path: String::from_utf8_lossy(path).into_owned() })
        }
        Err(_) => Err(Error::QueueTimeout(p.queue_wait)),
    }
}

struct LeaveQueue<'a> {
    core: &'a Core,
    w: &'a Rc<Waiter<Lease>>,
}

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.core.pool.borrow_mut().leave_queue(self.w);
    }
}
