//! Tunnels: worker-initiated connections after the PTTH setup.
//!
//! - [`accept`]: the tunnel listener and the setup handshake (auth, policy,
//!   placement on a core, `101`).
//! - [`acquire`]: taking a lease for a request (pick, or wait in the queue).
//! - [`permits`]: a worker's cross-core concurrency limit (plain data, unit-tested).
//! - [`placement`]: the cross-core record of which core owns which tunnels.
//! - [`pool`]: one core's tunnels and the leases of them; asks routes,
//!   select, queue and permits, and obeys.
//! - [`queue`]: one core's wait queue (plain data, unit-tested).
//! - [`routes`]: which workers serve a request (plain data, unit-tested).
//! - [`select`]: weighted power of two choices (plain data, unit-tested).

pub(crate) mod accept;
pub(crate) mod acquire;
pub(crate) mod permits;
pub(crate) mod placement;
pub(crate) mod pool;
pub(crate) mod queue;
pub(crate) mod routes;
pub(crate) mod select;

use ptth_proto::setup::{Claim, WorkerMeta};

/// What a worker declared, as routing uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) claim: Claim,
    pub(crate) routes: Vec<String>,
    pub(crate) weight: u32,
    pub(crate) max_concurrency: Option<u32>,
}

impl Meta {
    pub(crate) fn new(claim: Claim, m: &WorkerMeta) -> Meta {
        Meta { claim, routes: m.routes.clone(), weight: m.weight.max(1), max_concurrency: m.max_concurrency }
    }

    /// How well this worker matches a request: `None` if it does not serve
    /// it; otherwise (claimed this host explicitly, length of the longest
    /// matching route prefix). Larger is a better match.
    pub(crate) fn specificity(&self, host: &[u8], path: &[u8]) -> Option<(bool, usize)> {
        let specific = match &self.claim {
            Claim::Any => false,
            Claim::Origins(list) if list.iter().any(|o| o.matches_host(host)) => true,
            Claim::Origins(_) => return None,
        };
        if self.routes.is_empty() {
            return Some((specific, 0));
        }
        self.routes.iter().filter(|r| path.starts_with(r.as_bytes())).map(|r| r.len()).max().map(|len| (specific, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ptth_proto::setup::Origin;

    #[test]
    fn specificity_orders_host_then_prefix() {
        let any = Meta { claim: Claim::Any, routes: vec![], weight: 1, max_concurrency: None };
        let api = Meta { routes: vec!["/api/".into(), "/".into()], ..any.clone() };
        let host = Meta { claim: Claim::Origins(vec![Origin::parse("https://a.example").unwrap()]), ..any.clone() };
        assert_eq!(any.specificity(b"x", b"/api/1"), Some((false, 0)));
        assert_eq!(api.specificity(b"x", b"/api/1"), Some((false, 5)));
        assert_eq!(api.specificity(b"x", b"/img"), Some((false, 1)));
        assert_eq!(host.specificity(b"a.example:8080", b"/"), Some((true, 0)));
        assert_eq!(host.specificity(b"b.example", b"/"), None);
        assert!(host.specificity(b"a.example", b"/") > api.specificity(b"a.example", b"/api/"));
    }
}
