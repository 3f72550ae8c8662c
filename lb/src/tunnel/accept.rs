//! The tunnel listener: PTTH setup (draft-kazuho-ptth-ptth-01 §3).
//!
//! Place in the request path: before any request. A worker connects (and,
//! on a TLS tunnel listener, completes the TLS handshake first, within the
//! same deadline as the setup), sends
//! `GET /.well-known/ptth/<origins>/` with `Upgrade: ptth`; we read it under
//! the handshake deadline, authenticate it (bearer token, or loopback when no
//! token is configured), authorize every claimed origin (the draft's MUST),
//! choose the core that will own it ([`Placement::place`]) and answer `101`
//! from that core. Every refusal carries its reason in the body and closes.
//!
//! [`Placement::place`]: crate::tunnel::placement::Placement::place

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use monoio::net::{TcpListener, TcpStream};
use ptth_proto::h1::{self, Parsed, RequestHead};
use ptth_proto::rt::io::{write_all, ReadBuf};
use ptth_proto::rt::tls::TlsStream;
use ptth_proto::setup::{write_accept, write_reject, Accepted, Claim, InnerProtocol, SetupRequest};

use crate::config::{Config, OriginPolicy};
use crate::error::Error;
use crate::inbox::{CoreMsg, Detached, TunnelSetup};
use crate::percore::{self, Core};
use crate::stats;
use crate::tunnel::identity::{self, Identity};
use crate::tunnel::{Meta, TunnelStream};

/// Inner protocols this lb speaks on tunnels (the worker's order decides).
const SUPPORTED: &[InnerProtocol] = &[InnerProtocol::H2, InnerProtocol::Http11];
/// A setup request is small; this bounds what a connecting peer can make us hold.
const SETUP_BUF: usize = 16 * 1024;

pub(crate) async fn accept_loop(core: Rc<Core>, listener: TcpListener) {
    let c = core.clone();
    percore::accept_each(&core, listener, "tunnel", core.stop.clone(), move |stream, peer| {
        percore::spawn_killable(&c, setup(c.clone(), stream, peer));
    })
    .await;
}

/// Who set a tunnel up.
#[derive(Debug)]
enum Who<'a> {
    /// A named identity (`[[identities]]`): its grant bounds the setup.
    Named(&'a Identity),
    /// The lb-wide `tunnel.token`: the lb-wide policy bounds the setup.
    SharedToken,
    /// No token configured and the worker is on loopback.
    Loopback,
}

impl Who<'_> {
    /// The name a worker id belongs to while it has tunnels.
    fn owner(&self) -> Arc<str> {
        match self {
            Who::Named(i) => i.name.clone(),
            Who::SharedToken => Arc::from("token"),
            Who::Loopback => Arc::from("loopback"),
        }
    }
}

/// The identity a setup's certificate or token names, if any (for the log
/// of a refused setup; `authorize` decides).
fn identified(cfg: &Config, req: &SetupRequest, cert: &[String]) -> Option<Arc<str>> {
    identity::find_by_cert(&cfg.identities, cert)
        .or_else(|| req.bearer.as_ref().and_then(|b| identity::find(&cfg.identities, b.as_bytes())))
        .map(|i| i.name.clone())
}

/// Authentication (the worker certificate the TLS handshake verified, a
/// named identity's token, the shared token, or loopback when no token is
/// configured), then what the setup claims against the grant. `cert`: the
/// verified certificate's names, empty without one. The worker id it will
/// use is decided here (a named identity's worker without
/// `Tunnel-Worker-Id` is named after it).
fn authorize<'a>(cfg: &'a Config, req: &SetupRequest, peer: SocketAddr, cert: &[String]) -> Result<(Who<'a>, Arc<str>), Error> {
    let by_cert = identity::find_by_cert(&cfg.identities, cert);
    if by_cert.is_none() && !cert.is_empty() && req.bearer.is_none() {
        return Err(Error::Forbidden(format!("the client certificate ({}) is no identity's here", cert.join(", "))));
    }
    let who = match (&req.bearer, by_cert) {
        (None, Some(i)) => Who::Named(i),
        (Some(b), by_cert) => {
            let by_token = match identity::find(&cfg.identities, b.as_bytes()) {
                Some(i) => Who::Named(i),
                None => match &cfg.token {
                    Some(t) if identity::same_secret(b.as_bytes(), t.as_bytes()) => Who::SharedToken,
                    // A wrong token is refused even beside a good certificate.
                    _ => return Err(Error::Unauthorized("invalid bearer token")),
                },
            };
            match (by_token, by_cert) {
                (Who::Named(t), Some(c)) if !Arc::ptr_eq(&t.name, &c.name) => {
                    return Err(Error::Forbidden("the client certificate and the token are different identities".into()))
                }
                (_, Some(c)) => Who::Named(c),
                (w, None) => w,
            }
        }
        (None, None) if cfg.token.is_some() || !cfg.identities.is_empty() => {
            return Err(Error::Unauthorized("missing Authorization: Bearer <token> (or a client certificate)"))
        }
        (None, None) if peer.ip().is_loopback() => Who::Loopback,
        (None, None) => return Err(Error::Forbidden("no token is configured on this lb: only loopback workers are accepted".into())),
    };
    let id: Arc<str> = match (&req.meta.id, &who) {
        (Some(id), _) => Arc::from(id.as_str()),
        (None, Who::Named(i)) => i.name.clone(),
        // Workers that do not name themselves are told apart by address.
        (None, _) => Arc::from(format!("anon@{}", peer.ip())),
    };
    if let Who::Named(i) = &who {
        i.grant.check(&i.name, req, &id, cfg.profile.queue_wait).map_err(Error::Forbidden)?;
        return Ok((who, id));
    }
    match (&cfg.origins, &req.claim) {
        (OriginPolicy::Any, _) => {}
        (OriginPolicy::Only(_), Claim::Any) => {
            return Err(Error::Forbidden("claiming every origin (*) is not allowed here; claim specific origins".into()))
        }
        (OriginPolicy::Only(allowed), Claim::Origins(list)) => {
            if let Some(o) = list.iter().find(|o| !allowed.contains(o)) {
                return Err(Error::Forbidden(format!("origin {o} is not allowed for this worker")));
            }
        }
    }
    // A worker declares its classes; the operator's caps bound what it may
    // claim (nothing a worker says may exceed what it was granted).
    cfg.classes.check(&req.meta.classes, cfg.profile.queue_wait).map_err(Error::Forbidden)?;
    Ok((who, id))
}

/// Logs a refused setup, at most so many a second (a flood of bad setups
/// must not flood the log).
/// What is known of a setup when it is refused, for its log event.
#[derive(Default)]
struct Seen<'a> {
    worker: Option<&'a str>,
    identity: Option<&'a str>,
    claims: Option<String>,
}

impl<'a> Seen<'a> {
    fn of(req: &'a SetupRequest) -> Seen<'a> {
        Seen { worker: req.meta.id.as_deref(), identity: None, claims: Some(claims(&req.claim, &req.meta.routes, &req.meta.classes)) }
    }
}

/// A setup's claims in one line: origins; routes; classes.
fn claims(claim: &Claim, routes: &[String], classes: &[ptth_proto::setup::ClassDecl]) -> String {
    let origins = match claim {
        Claim::Any => "any origin".to_string(),
        Claim::Origins(o) => o.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(", "),
    };
    let routes = if routes.is_empty() { "every path".to_string() } else { routes.join(", ") };
    let classes = if classes.is_empty() {
        String::new()
    } else {
        format!("; classes {}", classes.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "))
    };
    format!("{origins}; {routes}{classes}")
}

/// Logs a refused setup as one event (identity, peer, worker id, claims,
/// status and reason), at most so many a second (a flood of bad setups
/// must not flood the log).
fn log_refusal(core: &Core, peer: SocketAddr, seen: &Seen<'_>, status: u16, why: &dyn std::fmt::Display) {
    stats::add(&core.stats().setups_rejected, 1);
    if status == 404 {
        return;
    }
    if let Some(held) = core.refusals.admit(Instant::now()) {
        let more = if held > 0 { format!(" ({held} more refusals not logged in the last second)") } else { String::new() };
        let (worker, identity, claims) = (seen.worker.unwrap_or("-"), seen.identity.unwrap_or("-"), seen.claims.as_deref().unwrap_or("-"));
        tracing::warn!(%peer, worker, identity, claims, status, "tunnel setup refused: {why}{more}");
    }
}

async fn reject(core: &Core, stream: &mut TunnelStream, e: &Error, peer: SocketAddr, seen: &Seen<'_>) {
    let status = e.status().unwrap_or(400);
    log_refusal(core, peer, seen, status, e);
    let retry = e.is_retryable().then_some(core.cfg().profile.retry_after_s.max(1));
    let mut out = Vec::with_capacity(256);
    write_reject(&mut out, status, &e.to_string(), retry);
    let _ = write_all(stream, out, core.cfg().profile.handshake_timeout).await;
}

async fn setup(core: Rc<Core>, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_tcp_keepalive(Some(std::time::Duration::from_secs(30)), Some(std::time::Duration::from_secs(10)), Some(3));
    let cfg = core.cfg();
    let deadline = Instant::now() + cfg.profile.handshake_timeout;
    let mut stream = match (&core.shared.tls, core.shared.tunnel_tls) {
        (Some(tls), true) => {
            let conn = match tls.accept_tunnel() {
                Ok(c) => c,
                Err(e) => return tracing::error!(core = core.id, %peer, "TLS session: {e}"),
            };
            // TLS and setup share the handshake deadline.
            match TlsStream::handshake(tcp, conn, cfg.profile.handshake_timeout).await {
                Ok(s) => TunnelStream::Tls(Box::new(s)),
                // No HTTP answer is possible without TLS; the alert said why.
                Err(e) => return log_refusal(&core, peer, &Seen::default(), 400, &format_args!("TLS: {e}")),
            }
        }
        _ => TunnelStream::Plain(tcp),
    };
    let mut rb = ReadBuf::with_capacity(SETUP_BUF);
    let mut head = RequestHead::default();
    let limits = h1::Limits { max_head: SETUP_BUF, ..cfg.profile.limits };
    loop {
        match h1::parse_request(rb.data(), &limits, &mut head) {
            Ok(Parsed::Complete) => break,
            Ok(Parsed::Partial) => {}
            Err(e) => return reject(&core, &mut stream, &Error::Head(e), peer, &Seen::default()).await,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rb.fill(&mut stream, left).await {
            Ok(n) if n > 0 => {}
            // Closed or too slow: nobody to answer (the handshake deadline, docs/PROTOCOL.md §2).
            _ => return,
        }
    }
    let req = match SetupRequest::parse(rb.data(), &head) {
        Ok(r) => r,
        Err(e) => return reject(&core, &mut stream, &Error::Setup(e), peer, &Seen::default()).await,
    };
    let mut seen = Seen::of(&req);
    if rb.data().len() > head.len {
        let e = Error::Setup(ptth_proto::SetupError::Malformed("the worker sent data before the 101".into()));
        return reject(&core, &mut stream, &e, peer, &seen).await;
    }
    // The names of the worker certificate the handshake verified.
    let cert = match &stream {
        TunnelStream::Tls(s) => s.conn().peer_certificates().and_then(|c| c.first()).map(crate::tls::cert_names).unwrap_or_default(),
        TunnelStream::Plain(_) => Vec::new(),
    };
    let (who, id) = match authorize(&cfg, &req, peer, &cert) {
        Ok(w) => w,
        Err(e) => {
            // The event names who was refused, when the credentials named
            // someone (a grant refusal).
            let name = identified(&cfg, &req, &cert);
            seen.identity = name.as_deref();
            return reject(&core, &mut stream, &e, peer, &seen).await;
        }
    };
    let owner = who.owner();
    seen.identity = Some(&owner);
    seen.worker = Some(&id);
    if percore::draining(&core.shared) {
        return reject(&core, &mut stream, &Error::Draining, peer, &seen).await;
    }
    let Some(protocol) = req.choose(SUPPORTED) else {
        let e = Error::Setup(ptth_proto::SetupError::Malformed(
            "no supported inner protocol offered; this lb speaks ALPN h2 and http%2F1.1".into(),
        ));
        return reject(&core, &mut stream, &e, peer, &seen).await;
    };
    let cap = match &who {
        Who::Named(i) => Some((&i.name, i.grant.max_tunnels)),
        _ => None,
    };
    let ticket = match core.shared.placement.admit_as(peer.ip(), cfg.max_tunnels_per_peer, cfg.max_tunnels, cap) {
        Ok(t) => t,
        Err(e) => return reject(&core, &mut stream, &e, peer, &seen).await,
    };
    let meta = Arc::new(Meta::new(req.claim.clone(), &req.meta));
    let placed = match core.shared.placement.place(&id, &meta, core.id, cfg.max_tunnels_per_worker, &owner) {
        Ok(p) => p,
        Err(e) => return reject(&core, &mut stream, &e, peer, &seen).await,
    };
    log_registration(&core, &id, &meta, peer, &owner);
    let to = placed.core;
    let setup = TunnelSetup { token: req.token, protocol, placed, ticket };
    if to == core.id {
        finish(core, stream, id, meta, setup).await;
    } else {
        match Detached::of(stream) {
            Ok(stream) => percore::send_to(&core.shared, to, CoreMsg::Tunnel { stream, id, meta, setup }),
            // The worker redials.
            Err(_) => core.shared.placement.release(&id, to),
        }
    }
}

/// Logs a worker's first tunnel: a worker declaring its routes is a
/// configuration change, so it is always recorded.
fn log_registration(core: &Core, id: &str, meta: &Meta, peer: SocketAddr, identity: &str) {
    let first = core.shared.placement.lock().get(id).is_some_and(|e| e.per_core.iter().sum::<u32>() == 1);
    if first {
        let claims = claims(&meta.claim, &meta.routes, &meta.classes);
        tracing::info!(worker = %id, identity, %peer, weight = meta.weight, "worker joined: {claims}");
    }
}

/// Answers `101` from the owning core and adds the tunnel to its pool.
pub(crate) async fn finish(core: Rc<Core>, mut stream: TunnelStream, id: Arc<str>, meta: Arc<Meta>, setup: TunnelSetup) {
    let mut out = Vec::with_capacity(256);
    let acc = Accepted { token: setup.token, protocol: setup.protocol, core: core.id as u32, cores: core.shared.cores as u32 };
    write_accept(&mut out, &acc);
    let (res, _) = write_all(&mut stream, out, core.cfg().profile.handshake_timeout).await;
    if res.is_err() {
        core.shared.placement.release(&id, core.id);
        return;
    }
    let _ = stream.tcp().set_nodelay(true);
    stats::add(&core.stats().tunnels_accepted, 1);
    let TunnelSetup { placed, protocol, ticket, .. } = setup;
    match protocol {
        InnerProtocol::Http11 => {
            core.pool.borrow_mut().add(id, meta, placed, ticket, stream, core.cfg().profile.tunnel_read);
        }
        InnerProtocol::H2 => {
            // draft-kazuho-ptth-ptth-01: after the 101 the lb sends the client preface.
            let (send, conn) = match ptth_proto::rt::deadline::within(
                core.cfg().profile.handshake_timeout,
                crate::h2_tunnel::handshake(stream, core.cfg().profile.h2_windows),
            )
            .await
            {
                Ok(Ok(pair)) => pair,
                _ => {
                    core.shared.placement.release(&id, core.id);
                    return;
                }
            };
            let name: Rc<str> = Rc::from(&*id);
            let t = core.pool.borrow_mut().add_h2(id, meta, placed, ticket, send);
            crate::percore::spawn_killable(&core.clone(), crate::h2_tunnel::drive(core.clone(), conn, t, name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup_req(claim: Claim, bearer: Option<&str>) -> SetupRequest {
        SetupRequest {
            token: ptth_proto::setup::UpgradeToken::Ptth,
            claim,
            offered: vec![InnerProtocol::Http11],
            bearer: bearer.map(String::from),
            meta: Default::default(),
        }
    }

    #[test]
    fn authorization_table() {
        let mut cfg = Config::ephemeral();
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let far: SocketAddr = "10.0.0.1:1".parse().unwrap();
        assert!(authorize(&cfg, &setup_req(Claim::Any, None), lo, &[]).is_ok());
        assert!(matches!(authorize(&cfg, &setup_req(Claim::Any, None), far, &[]), Err(Error::Forbidden(_))));
        cfg.token = Some("t".into());
        assert!(authorize(&cfg, &setup_req(Claim::Any, Some("t")), far, &[]).is_ok());
        assert!(matches!(authorize(&cfg, &setup_req(Claim::Any, Some("u")), lo, &[]), Err(Error::Unauthorized(_))));
        assert!(matches!(authorize(&cfg, &setup_req(Claim::Any, None), lo, &[]), Err(Error::Unauthorized(_))));
    }

    #[test]
    fn named_identities_authenticate_and_name_their_workers() {
        use crate::tunnel::identity::{digest, Grant};
        let mut cfg = Config::ephemeral();
        let far: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let grant = Grant {
            origins: OriginPolicy::Any,
            routes: None,
            classes: cfg.classes.clone(),
            max_tunnels: 4,
            worker_ids: Some(Grant::default_ids("billing")),
        };
        cfg.identities = vec![Identity::new("billing", digest(b"billing-token-123"), grant)];
        cfg.token = Some("shared-token".into());
        let (who, id) = authorize(&cfg, &setup_req(Claim::Any, Some("billing-token-123")), far, &[]).unwrap();
        assert!(matches!(who, Who::Named(i) if &*i.name == "billing"));
        assert_eq!(&*id, "billing", "a named identity's worker without an id is named after it");
        let (who, id) = authorize(&cfg, &setup_req(Claim::Any, Some("shared-token")), far, &[]).unwrap();
        assert!(matches!(who, Who::SharedToken) && id.starts_with("anon@"));
        assert!(matches!(authorize(&cfg, &setup_req(Claim::Any, Some("nope")), far, &[]), Err(Error::Unauthorized(_))));
        // With identities configured, loopback needs a token too.
        cfg.token = None;
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(matches!(authorize(&cfg, &setup_req(Claim::Any, None), lo, &[]), Err(Error::Unauthorized(_))));
        let mut r = setup_req(Claim::Any, Some("billing-token-123"));
        r.meta.id = Some("payroll".into());
        assert!(matches!(authorize(&cfg, &r, far, &[]), Err(Error::Forbidden(why)) if why.contains("may not use worker id \"payroll\"")));
    }

    #[test]
    fn class_declarations_within_the_operators_caps() {
        let mut cfg = Config::ephemeral();
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let with = |classes: &[u8]| {
            let mut r = setup_req(Claim::Any, None);
            r.meta.classes = ptth_proto::setup::parse_classes(classes).unwrap();
            r
        };
        let heavy = with(br#"heavy=("POST /report/");u=1;limit=50, default;u=0"#);
        assert!(authorize(&cfg, &heavy, lo, &[]).is_ok(), "no caps configured: anything the protocol allows");
        cfg.classes.allowed = Some(vec!["light".into()]);
        let refused = |r: &SetupRequest, cfg: &Config| match authorize(cfg, r, lo, &[]) {
            Err(Error::Forbidden(why)) => why,
            other => panic!("expected 403, got {other:?}"),
        };
        assert!(refused(&heavy, &cfg).contains("class \"heavy\" is not allowed here (allowed: light)"));
        cfg.classes.allowed = Some(vec!["heavy".into()]);
        cfg.classes.most_urgent = 2;
        assert!(refused(&heavy, &cfg).contains("class heavy: urgency u=1 is more urgent than this lb allows (u=2 at most)"));
        cfg.classes.most_urgent = 0;
        cfg.classes.max_limit = 10;
        assert!(refused(&heavy, &cfg).contains("class heavy: limit 50 is above this lb's cap of 10"));
        cfg.classes.max_limit = 50;
        assert!(authorize(&cfg, &heavy, lo, &[]).is_ok());
        // A class may shorten the lb's queue wait, never lengthen it.
        cfg.profile.queue_wait = std::time::Duration::from_millis(2000);
        assert!(authorize(&cfg, &with(br#"heavy=("/r/");wait=2000;queue=10"#), lo, &[]).is_ok());
        assert!(refused(&with(br#"heavy=("/r/");wait=2001"#), &cfg)
            .contains("class heavy: wait=2001 ms is longer than this lb lets a request wait (queue.max_wait_ms = 2000)"));
    }
}
