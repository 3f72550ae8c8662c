//! Which core owns which tunnels: the one structure the cores share, used only
//! on the control path (tunnel setup and teardown, the rare client hand-off,
//! admin scrapes), never per request.
//!
//! A fresh tunnel goes to the core holding the fewest tunnels of its worker,
//! ties to the core that accepted it, so each worker's tunnels spread evenly
//! and every core can serve every route locally (docs/ARCHITECTURE.md,
//! "Tunnel placement"). The worker learns the core from the `101` and keeps
//! dialing until each core holds its target.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Error;
use crate::stats::WorkerCoreStats;
use crate::tunnel::adaptive::AdaptiveLimit;
use crate::tunnel::class_queue::{ClassQueue, Registry};
use crate::tunnel::permits::Permits;
use crate::tunnel::Meta;

/// What a worker's tunnels share across cores.
#[derive(Debug)]
pub(crate) struct WorkerEntry {
    pub(crate) per_core: Vec<u32>,
    /// The identity whose setups made the entry: a worker id belongs to one
    /// identity while it has tunnels.
    pub(crate) owner: Arc<str>,
    /// Metadata of the most recent setup (for status and hand-off decisions).
    pub(crate) meta: Arc<Meta>,
    /// In-flight requests across all cores, when the worker declared
    /// `Tunnel-Max-Concurrency` (its limit is per worker, not per core).
    pub(crate) permits: Option<Arc<Permits>>,
    /// In-flight requests of each class that declared a limit, across all
    /// cores, by class name.
    pub(crate) class_permits: HashMap<String, Arc<Permits>>,
    /// The estimated limit of each class declared `adaptive`, by class name.
    pub(crate) class_adaptive: HashMap<String, Arc<AdaptiveLimit>>,
    pub(crate) stats: Vec<Arc<WorkerCoreStats>>,
}

/// Where a new tunnel goes, and the shared handles its core needs.
#[derive(Debug)]
pub(crate) struct Placed {
    pub(crate) core: usize,
    pub(crate) permits: Option<Arc<Permits>>,
    /// One per class of the tunnel's `Meta::classes`, in order: the shared
    /// counter of a class that declared a limit.
    pub(crate) class_permits: Vec<Option<Arc<Permits>>>,
    /// One per class of the tunnel's `Meta::classes`, in order: its queue's
    /// shared counts (by class name, over every worker declaring it).
    pub(crate) class_queues: Vec<Arc<ClassQueue>>,
    /// One per class, in order: the shared estimate of an adaptive class.
    pub(crate) class_adaptive: Vec<Option<Arc<AdaptiveLimit>>>,
    pub(crate) stats: Arc<WorkerCoreStats>,
}

#[derive(Debug)]
pub(crate) struct Placement {
    cores: usize,
    workers: Mutex<HashMap<Arc<str>, WorkerEntry>>,
    peers: Arc<PeerCounts>,
    /// Every request class's queue counts, by name.
    pub(crate) classes: Registry,
}

/// Tunnels held per peer IP address, per identity and in all, against the
/// operator's caps (`tunnel.max_tunnels_per_peer`, an identity's
/// `max_tunnels`, `tunnel.max_tunnels`): a peer dialing in under ever new
/// worker ids cannot grow the lb without bound, nor can one identity.
#[derive(Debug, Default)]
pub(crate) struct PeerCounts {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    peers: HashMap<IpAddr, u32>,
    identities: HashMap<Arc<str>, u32>,
    total: u32,
}

/// One tunnel's share of [`PeerCounts`], given back when the tunnel (which
/// owns it) is dropped, however it ends.
#[derive(Debug)]
pub(crate) struct PeerTicket {
    counts: Arc<PeerCounts>,
    ip: IpAddr,
    identity: Option<Arc<str>>,
}

impl PeerCounts {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One less under `key`; the key goes when it reaches zero.
fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Drop for PeerTicket {
    fn drop(&mut self) {
        let mut g = self.counts.lock();
        g.total = g.total.saturating_sub(1);
        decrement(&mut g.peers, &self.ip);
        if let Some(i) = &self.identity {
            decrement(&mut g.identities, i);
        }
    }
}

impl Placement {
    pub(crate) fn new(cores: usize) -> Placement {
        Placement { cores, workers: Mutex::new(HashMap::new()), peers: Arc::default(), classes: Registry::new(cores) }
    }

    /// Counts one more tunnel from `ip`, or refuses it (429) past a cap.
    #[cfg(test)]
    pub(crate) fn admit(&self, ip: IpAddr, per_peer: u32, all: u32) -> Result<PeerTicket, Error> {
        self.admit_as(ip, per_peer, all, None)
    }

    /// Counts one more tunnel from `ip` of `identity` (with its cap), or
    /// refuses it (429) past a cap.
    pub(crate) fn admit_as(&self, ip: IpAddr, per_peer: u32, all: u32, identity: Option<(&Arc<str>, u32)>) -> Result<PeerTicket, Error> {
        let mut g = self.peers.lock();
        if g.total >= all {
            return Err(Error::TooManyTunnels(format!("the lb holds {} tunnels (limit tunnel.max_tunnels = {all})", g.total)));
        }
        let n = g.peers.get(&ip).copied().unwrap_or(0);
        if n >= per_peer {
            return Err(Error::TooManyTunnels(format!("{ip} already holds {n} tunnels (limit tunnel.max_tunnels_per_peer = {per_peer})")));
        }
        if let Some((name, cap)) = identity {
            let held = g.identities.get(name).copied().unwrap_or(0);
            if held >= cap {
                return Err(Error::TooManyTunnels(format!("identity {name} already holds {held} tunnels (its max_tunnels = {cap})")));
            }
            *g.identities.entry(name.clone()).or_insert(0) += 1;
        }
        *g.peers.entry(ip).or_insert(0) += 1;
        g.total += 1;
        Ok(PeerTicket { counts: self.peers.clone(), ip, identity: identity.map(|(n, _)| n.clone()) })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, WorkerEntry>> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves a slot for a new tunnel of worker `id`, set up by identity
    /// `owner`; refused (409) while the id is live under another identity.
    pub(crate) fn place(&self, id: &Arc<str>, meta: &Arc<Meta>, here: usize, cap: u32, owner: &Arc<str>) -> Result<Placed, Error> {
        let mut map = self.lock();
        let cores = self.cores;
        if let Some(e) = map.get(id) {
            if e.owner != *owner {
                tracing::debug!(worker = %id, owner = %e.owner, "worker id held by another identity");
                return Err(Error::WorkerIdTaken(format!("worker id {id:?} is live under another identity; choose another id")));
            }
            // Tunnels of one id agree on what they declare: a second process
            // with other claims would otherwise route by both, and /status
            // show only one. A restarted worker joins once its old tunnels
            // have closed (the entry goes with the last one).
            if e.per_core.iter().any(|&n| n > 0) && *e.meta != **meta {
                return Err(Error::WorkerIdTaken(format!(
                    "worker id {id:?} is live with other claims; tunnels of one id must declare the same (wait for its old tunnels to close, or use another id)"
                )));
            }
        }
        let e = map.entry(id.clone()).or_insert_with(|| WorkerEntry {
            per_core: vec![0; cores],
            owner: owner.clone(),
            meta: meta.clone(),
            permits: None,
            class_permits: HashMap::new(),
            class_adaptive: HashMap::new(),
            stats: (0..cores).map(|_| Arc::new(WorkerCoreStats::default())).collect(),
        });
        let total: u32 = e.per_core.iter().sum();
        if total >= cap {
            return Err(Error::TooManyTunnels(format!("worker {id} already holds {total} tunnels (limit {cap})")));
        }
        e.meta = meta.clone();
        if meta.max_concurrency.is_some() && e.permits.is_none() {
            e.permits = Some(Arc::new(Permits::new(cores)));
        }
        // A class's counter is shared by every tunnel of the worker that
        // declares the class, whatever core it lands on.
        let class_permits = meta
            .classes
            .iter()
            .map(|c| c.limit.map(|_| e.class_permits.entry(c.name.clone()).or_insert_with(|| Arc::new(Permits::new(cores))).clone()))
            .collect();
        let class_queues = meta.classes.iter().map(|c| self.classes.get(&c.name)).collect();
        let class_adaptive = meta
            .classes
            .iter()
            .map(|c| match (c.adaptive, c.limit) {
                (true, Some(max)) => {
                    Some(e.class_adaptive.entry(c.name.clone()).or_insert_with(|| Arc::new(AdaptiveLimit::new(max))).clone())
                }
                _ => None,
            })
            .collect();
        let min = *e.per_core.iter().min().unwrap_or(&0);
        let core = if e.per_core[here] == min { here } else { e.per_core.iter().position(|&n| n == min).unwrap_or(here) };
        e.per_core[core] += 1;
        Ok(Placed { core, permits: e.permits.clone(), class_permits, class_queues, class_adaptive, stats: e.stats[core].clone() })
    }

    /// A tunnel of `id` on `core` ended (or its setup failed after placement).
    pub(crate) fn release(&self, id: &str, core: usize) {
        let mut map = self.lock();
        if let Some(e) = map.get_mut(id) {
            e.per_core[core] = e.per_core[core].saturating_sub(1);
            if e.per_core.iter().all(|&n| n == 0) {
                map.remove(id);
                tracing::info!(worker = id, "worker left: its last tunnel closed");
            }
        }
    }

    /// A core other than `here` with tunnels of a worker serving this host and
    /// path: where to hand a client connection when `here` has none.
    pub(crate) fn core_for(&self, host: &[u8], path: &[u8], here: usize) -> Option<usize> {
        let map = self.lock();
        let mut best: Option<(usize, u32)> = None;
        for e in map.values().filter(|e| e.meta.specificity(host, path).is_some()) {
            for (core, &n) in e.per_core.iter().enumerate() {
                if core != here && n > 0 && best.is_none_or(|(_, m)| n > m) {
                    best = Some((core, n));
                }
            }
        }
        best.map(|(c, _)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ptth_proto::setup::Claim;

    fn meta() -> Arc<Meta> {
        Arc::new(Meta { claim: Claim::Any, routes: vec![], weight: 1, max_concurrency: None, classes: vec![] })
    }

    #[test]
    fn spreads_evenly_and_prefers_here() {
        let p = Placement::new(3);
        let id: Arc<str> = Arc::from("w");
        let cores: Vec<usize> = (0..6).map(|_| p.place(&id, &meta(), 1, 100, &"test".into()).unwrap().core).collect();
        assert_eq!(cores, [1, 0, 2, 1, 0, 2]);
        p.release("w", 2);
        assert_eq!(p.place(&id, &meta(), 0, 100, &"test".into()).unwrap().core, 2);
        assert!(matches!(p.place(&id, &meta(), 0, 6, &"test".into()), Err(Error::TooManyTunnels(_))));
        // Another identity, or other claims, for the live id: refused.
        assert!(matches!(p.place(&id, &meta(), 0, 100, &"other".into()), Err(Error::WorkerIdTaken(m)) if m.contains("another identity")));
        let mut other = (*meta()).clone();
        other.weight += 1;
        assert!(
            matches!(p.place(&id, &Arc::new(other), 0, 100, &"test".into()), Err(Error::WorkerIdTaken(m)) if m.contains("other claims"))
        );
        assert_eq!(p.core_for(b"any", b"/", 0), Some(1));
    }

    #[test]
    fn peer_caps_hold_and_tickets_give_back() {
        let p = Placement::new(1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t1 = p.admit(a, 2, 3).unwrap();
        let _t2 = p.admit(a, 2, 3).unwrap();
        assert!(matches!(p.admit(a, 2, 3), Err(Error::TooManyTunnels(_))));
        let _t3 = p.admit(b, 2, 3).unwrap();
        assert!(matches!(p.admit(b, 2, 3), Err(Error::TooManyTunnels(m)) if m.contains("tunnel.max_tunnels =")));
        drop(t1);
        assert!(p.admit(a, 2, 3).is_ok());
    }
}
