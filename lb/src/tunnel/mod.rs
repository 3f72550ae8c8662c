//! Tunnels: worker-initiated connections after the PTTH setup.
//!
//! - [`accept`]: the tunnel listener and the setup handshake (auth, policy,
//!   placement on a core, `101`).
//! - [`acquire`]: taking a lease for a request (pick, or wait in the queue).
//! - [`adaptive`]: a class limit the lb estimates from latency (plain data, unit-tested).
//! - [`class_queue`]: each class's queue bound and counts across cores (plain data, unit-tested).
//! - [`identity`]: named worker tokens and the grant of each (plain data, unit-tested).
//! - [`health`]: outlier detection, a failing worker out of selection (plain data, unit-tested).
//! - [`permits`]: a worker's cross-core concurrency limit (plain data, unit-tested).
//! - [`placement`]: the cross-core record of which core owns which tunnels.
//! - [`pool`]: one core's tunnels and the leases of them; asks routes,
//!   select, queue and permits, and obeys.
//! - [`queue`]: one core's wait queue (plain data, unit-tested).
//! - [`routes`]: which workers serve a request (plain data, unit-tested).
//! - [`select`]: weighted power of two choices (plain data, unit-tested).

pub(crate) mod accept;
pub(crate) mod acquire;
pub(crate) mod adaptive;
pub(crate) mod class_queue;
pub(crate) mod health;
pub mod identity;
pub(crate) mod permits;
pub(crate) mod placement;
pub(crate) mod pool;
pub(crate) mod queue;
pub(crate) mod routes;
pub(crate) mod select;

use ptth_proto::setup::{Claim, ClassDecl, WorkerMeta, DEFAULT_CLASS, DEFAULT_URGENCY};

/// A tunnel's byte stream: TLS from the worker, or cleartext (loopback, or
/// an operator's explicit `tunnel.insecure_cleartext`).
pub(crate) type TunnelStream = ptth_proto::rt::tls::MaybeTls<rustls::ServerConnection>;

/// What a worker declared, as routing uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) claim: Claim,
    pub(crate) routes: Vec<String>,
    pub(crate) weight: u32,
    pub(crate) max_concurrency: Option<u32>,
    /// Declared request classes (`Tunnel-Classes`), in matching order.
    pub(crate) classes: Vec<ClassDecl>,
}

impl Meta {
    pub(crate) fn new(claim: Claim, m: &WorkerMeta) -> Meta {
        Meta { claim, routes: m.routes.clone(), weight: m.weight.max(1), max_concurrency: m.max_concurrency, classes: m.classes.clone() }
    }

    /// The declared class a request belongs to on this worker: the first
    /// whose rules match, else the declared `default`; `None` when neither
    /// (no class limit, default urgency).
    pub(crate) fn class_of(&self, method: &[u8], path: &[u8]) -> Option<usize> {
        if self.classes.is_empty() {
            return None;
        }
        ptth_proto::setup::classify(&self.classes, method, path).or_else(|| self.classes.iter().position(|c| c.name == DEFAULT_CLASS))
    }

    /// The urgency of `class` (RFC 9218 §4.1).
    pub(crate) fn urgency(&self, class: Option<usize>) -> u8 {
        class.map_or(DEFAULT_URGENCY, |i| self.classes[i].urgency)
    }

    /// The limit of `class`, if it declared one.
    pub(crate) fn class_limit(&self, class: Option<usize>) -> Option<u32> {
        class.and_then(|i| self.classes[i].limit)
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
        let any = Meta { claim: Claim::Any, routes: vec![], weight: 1, max_concurrency: None, classes: vec![] };
        let api = Meta { routes: vec!["/api/".into(), "/".into()], ..any.clone() };
        let host = Meta { claim: Claim::Origins(vec![Origin::parse("https://a.example").unwrap()]), ..any.clone() };
        assert_eq!(any.specificity(b"x", b"/api/1"), Some((false, 0)));
        assert_eq!(api.specificity(b"x", b"/api/1"), Some((false, 5)));
        assert_eq!(api.specificity(b"x", b"/img"), Some((false, 1)));
        assert_eq!(host.specificity(b"a.example:8080", b"/"), Some((true, 0)));
        assert_eq!(host.specificity(b"b.example", b"/"), None);
        assert!(host.specificity(b"a.example", b"/") > api.specificity(b"a.example", b"/api/"));
    }

    #[test]
    fn classes_of_requests() {
        let classes = ptth_proto::setup::parse_classes(br#"heavy=("POST /report/");u=6;limit=4, default;u=2;limit=9"#).unwrap();
        let m = Meta { claim: Claim::Any, routes: vec![], weight: 1, max_concurrency: None, classes };
        assert_eq!(m.class_of(b"POST", b"/report/1"), Some(0));
        assert_eq!((m.urgency(Some(0)), m.class_limit(Some(0))), (6, Some(4)));
        // Anything else is the declared default class.
        assert_eq!(m.class_of(b"GET", b"/report/1"), Some(1));
        assert_eq!((m.urgency(Some(1)), m.class_limit(Some(1))), (2, Some(9)));
        // No default declared: no class, default urgency, no class limit.
        let m = Meta { classes: m.classes[..1].to_vec(), ..m };
        assert_eq!(m.class_of(b"GET", b"/"), None);
        assert_eq!((m.urgency(None), m.class_limit(None)), (DEFAULT_URGENCY, None));
    }
}
