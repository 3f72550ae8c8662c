//! Worker identities and what each may claim (plain data, unit-tested).
//!
//! Place in the request path: in the tunnel setup, before placement
//! (`tunnel::accept`). A setup's bearer token names an identity; the
//! identity's grant bounds everything the setup declares: claimed origins,
//! routes, classes (names, urgency, limits), worker ids, and how many
//! tunnels it holds. The PTTH BoF's worry, and draft-kazuho-ptth-ptth-01
//! §5.1's MUST: nothing a worker claims may exceed what it was granted.
//!
//! Tokens are kept as SHA-256 digests (the config may hold the digest only),
//! and a presented token is compared with every identity's digest in
//! constant time, without stopping at a match, so timing tells nothing about
//! which or how many identities exist.

use std::sync::Arc;

use ptth_proto::setup::{Claim, SetupRequest};

use crate::config::{ClassPolicy, OriginPolicy};

/// What an identity may declare.
#[derive(Debug, Clone)]
pub struct Grant {
    pub origins: OriginPolicy,
    /// Path prefixes its routes must lie under; `None`: any (a worker that
    /// declares no routes serves every path, so it needs `None`).
    pub routes: Option<Vec<String>>,
    pub classes: ClassPolicy,
    /// Tunnels the identity holds at most, over all its workers and cores.
    pub max_tunnels: u32,
    /// Worker ids it may use: exact, or a prefix ending in `*`. `None`: any.
    pub worker_ids: Option<Vec<String>>,
}

/// One named identity: a token (as its digest) and/or the names of its
/// worker certificates, and a grant.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: Arc<str>,
    digest: Option<[u8; 32]>,
    /// Certificate names that are this identity: exact, or `prefix*`.
    pub cert_names: Vec<String>,
    pub grant: Grant,
}

impl Identity {
    /// An identity known by its token.
    pub fn new(name: &str, digest: [u8; 32], grant: Grant) -> Identity {
        Identity::with_digest(name, Some(digest), grant)
    }

    pub fn with_digest(name: &str, digest: Option<[u8; 32]>, grant: Grant) -> Identity {
        Identity { name: Arc::from(name), digest, cert_names: Vec::new(), grant }
    }

    /// Its token's SHA-256 as 64 hex digits (`token_sha256`), if it has one.
    pub fn digest_hex(&self) -> Option<String> {
        self.digest.map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// SHA-256 of a token, as identities store it.
pub fn digest(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Parses a token digest written as 64 hex digits.
pub fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let b = hex.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nibble(b[2 * i])? << 4 | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

/// Constant-time equality of two byte strings of public length.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The identity a token names, if any: every digest is compared.
pub fn find<'a>(identities: &'a [Identity], token: &[u8]) -> Option<&'a Identity> {
    let d = digest(token);
    let mut found = None;
    for i in identities {
        if i.digest.is_some_and(|x| same_secret(&d, &x)) {
            found = Some(i);
        }
    }
    found
}

/// The identity a verified worker certificate's names map to: the first
/// whose `cert_names` matches one of them.
pub fn find_by_cert<'a>(identities: &'a [Identity], names: &[String]) -> Option<&'a Identity> {
    identities.iter().find(|i| names.iter().any(|n| id_allowed(&i.cert_names, n)))
}

/// Whether worker id `id` is one of `patterns` (exact, or `prefix*`).
fn id_allowed(patterns: &[String], id: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => p == id,
    })
}

impl Grant {
    /// The default worker ids of identity `name`: `name` and `name-*`.
    pub fn default_ids(name: &str) -> Vec<String> {
        vec![name.to_string(), format!("{name}-*")]
    }

    /// What in the setup exceeds the grant, said so the worker's operator
    /// knows what to change (the 403's reason). `id`: the worker id the
    /// setup will use. `max_wait`: the profile's `queue.max_wait_ms`.
    pub fn check(&self, who: &str, req: &SetupRequest, id: &str, max_wait: std::time::Duration) -> Result<(), String> {
        match (&self.origins, &req.claim) {
            (OriginPolicy::Any, _) => {}
            (OriginPolicy::Only(_), Claim::Any) => {
                return Err(format!("identity {who} may not claim every origin (*); claim the origins it serves"));
            }
            (OriginPolicy::Only(allowed), Claim::Origins(list)) => {
                if let Some(o) = list.iter().find(|o| !allowed.contains(o)) {
                    return Err(format!("identity {who} may not claim origin {o}"));
                }
            }
        }
        if let Some(prefixes) = &self.routes {
            if req.meta.routes.is_empty() {
                return Err(format!("identity {who} may serve only paths under {}: declare routes (Tunnel-Routes)", prefixes.join(", ")));
            }
            if let Some(r) = req.meta.routes.iter().find(|r| !prefixes.iter().any(|p| r.starts_with(p.as_str()))) {
                return Err(format!("identity {who} may not route {r} (allowed under: {})", prefixes.join(", ")));
            }
        }
        if let Some(ids) = &self.worker_ids {
            if !id_allowed(ids, id) {
                return Err(format!("identity {who} may not use worker id {id:?} (allowed: {})", ids.join(", ")));
            }
        }
        self.classes.check(&req.meta.classes, max_wait).map_err(|e| format!("identity {who}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ptth_proto::setup::{InnerProtocol, Origin, UpgradeToken};
    use std::time::Duration;

    fn grant() -> Grant {
        Grant {
            origins: OriginPolicy::Only(vec![Origin::parse("https://billing.example").unwrap()]),
            routes: Some(vec!["/billing/".into()]),
            classes: ClassPolicy { allowed: Some(vec!["heavy".into()]), most_urgent: 2, max_limit: 8 },
            max_tunnels: 16,
            worker_ids: Some(Grant::default_ids("billing")),
        }
    }

    fn req(claim: &str, routes: &[&str], classes: &str) -> SetupRequest {
        let mut meta = ptth_proto::setup::WorkerMeta { routes: routes.iter().map(|r| r.to_string()).collect(), ..Default::default() };
        if !classes.is_empty() {
            meta.classes = ptth_proto::setup::parse_classes(classes.as_bytes()).unwrap();
        }
        SetupRequest {
            token: UpgradeToken::Ptth,
            claim: if claim == "*" { Claim::Any } else { Claim::Origins(vec![Origin::parse(claim).unwrap()]) },
            offered: vec![InnerProtocol::H2],
            bearer: None,
            meta,
        }
    }

    #[test]
    fn every_over_claim_is_refused_by_name() {
        let g = grant();
        let w = Duration::from_secs(5);
        let ok = req("https://billing.example", &["/billing/api/"], r#"heavy=("POST /billing/run");u=3;limit=4"#);
        assert_eq!(g.check("billing", &ok, "billing-7", w), Ok(()));
        for (r, id, needle) in [
            (req("https://other.example", &["/billing/"], ""), "billing", "may not claim origin https://other.example"),
            (req("*", &["/billing/"], ""), "billing", "may not claim every origin"),
            (req("https://billing.example", &["/admin/"], ""), "billing", "may not route /admin/"),
            (req("https://billing.example", &[], ""), "billing", "declare routes"),
            (req("https://billing.example", &["/billing/"], ""), "payroll-1", "may not use worker id \"payroll-1\""),
            (req("https://billing.example", &["/billing/"], ""), "billingx", "may not use worker id"),
            (req("https://billing.example", &["/billing/"], r#"bulk=("/billing/x")"#), "billing", "class \"bulk\" is not allowed"),
            (req("https://billing.example", &["/billing/"], r#"heavy=("/billing/x");u=1"#), "billing", "urgency u=1"),
            (req("https://billing.example", &["/billing/"], r#"heavy=("/billing/x");limit=9"#), "billing", "limit 9 is above"),
        ] {
            let e = g.check("billing", &r, id, w).expect_err(needle);
            assert!(e.contains(needle) && e.starts_with("identity billing"), "{needle}: {e}");
        }
    }

    #[test]
    fn tokens_match_by_digest_only() {
        let ids = vec![
            Identity::new("a", digest(b"token-a"), grant()),
            Identity::new("b", parse_digest(&hex(&digest(b"token-b"))).unwrap(), grant()),
        ];
        assert_eq!(find(&ids, b"token-a").map(|i| &*i.name), Some("a"));
        assert_eq!(find(&ids, b"token-b").map(|i| &*i.name), Some("b"), "a digest from the config");
        assert!(find(&ids, b"token-c").is_none());
        assert!(find(&ids, b"").is_none());
        assert!(parse_digest("00").is_none() && parse_digest(&"g".repeat(64)).is_none());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
    }

    fn hex(d: &[u8]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }
}
