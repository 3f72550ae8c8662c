//! Worker identities end to end: named tokens, each identity's grant
//! (origins, routes, classes, worker ids, tunnel count) enforced at setup
//! with the refusal's reason reaching the worker, and a worker id owned by
//! one identity while it is live (the impostor of issue 9 is refused and the
//! real worker's entry stays as it was).

use std::io::{Read, Write};

use ptth_lb::identity::{digest, Grant, Identity};
use ptth_tests::*;
use ptth_workerd::Responder;

const BILLING: &str = "billing-token-0123456789";
const PAYROLL: &str = "payroll-token-0123456789";

fn lb_with_identities(billing_tunnels: u32) -> ptth_lb::Lb {
    start_lb(2, |c| {
        let any = |tunnels: u32, ids: Option<Vec<String>>, routes: &str| Grant {
            origins: ptth_lb::config::OriginPolicy::Any,
            routes: Some(vec![routes.into()]),
            classes: ptth_lb::config::ClassPolicy { allowed: None, most_urgent: 0, max_limit: 8 },
            max_tunnels: tunnels,
            worker_ids: ids,
        };
        c.identities = vec![
            Identity::new("billing", digest(BILLING.as_bytes()), any(billing_tunnels, Some(Grant::default_ids("billing")), "/billing/")),
            // Payroll may use any id: it can try to take billing's.
            Identity::new("payroll", digest(PAYROLL.as_bytes()), any(64, None, "/payroll/")),
        ];
    })
}

fn worker(lb: &ptth_lb::Lb, id: &str, token: &str, route: &str, per_core: u32) -> ptth_workerd::Config {
    let mut c = worker_config(lb, id, per_core);
    c.token = Some(token.into());
    c.meta.routes = vec![route.into()];
    c
}

#[test]
fn named_tokens_bound_what_each_worker_claims() {
    let lb = lb_with_identities(64);
    let _b = start_worker(worker(&lb, "billing-1", BILLING, "/billing/", 2), || Responder::Hello);
    let _p = start_worker(worker(&lb, "payroll-1", PAYROLL, "/payroll/", 2), || Responder::Echo);
    assert_eq!(get(lb.client_addr(), "/billing/x").status, 200);
    let r = get(lb.client_addr(), "/payroll/x");
    assert_eq!(r.status, 200);
    // No credential goes to the worker.
    assert!(!r.text().to_ascii_lowercase().contains("authorization"), "{}", r.text());
    let s = status(&lb);
    let identity = |id: &str| s["workers"].as_array().unwrap().iter().find(|w| w["id"] == id).map(|w| w["identity"].clone());
    assert_eq!(identity("billing-1"), Some("billing".into()));
    assert_eq!(identity("payroll-1"), Some("payroll".into()));

    // Over-claims: 403 with what was refused.
    let why = refused_setup(worker(&lb, "billing-2", BILLING, "/payroll/", 1));
    assert!(why.contains("403") && why.contains("identity billing may not route /payroll/"), "{why}");
    let why = refused_setup(worker(&lb, "payroll-9", BILLING, "/billing/", 1));
    assert!(why.contains("403") && why.contains("may not use worker id \"payroll-9\""), "{why}");
    let mut heavy = worker(&lb, "billing-3", BILLING, "/billing/", 1);
    heavy.meta.classes = ptth_proto::setup::parse_classes(br#"heavy=("/billing/run");limit=9"#).unwrap();
    let why = refused_setup(heavy);
    assert!(why.contains("403") && why.contains("identity billing: class heavy: limit 9 is above this lb's cap of 8"), "{why}");
    let why = refused_setup(worker(&lb, "billing-4", "not-a-known-token-at-all", "/billing/", 1));
    assert!(why.contains("401") && why.contains("invalid bearer token"), "{why}");
    let mut none = worker(&lb, "billing-5", BILLING, "/billing/", 1);
    none.token = None;
    let why = refused_setup(none);
    assert!(why.contains("401") && why.contains("missing Authorization"), "{why}");
}

#[test]
fn a_live_worker_id_belongs_to_its_identity() {
    let lb = lb_with_identities(64);
    let _b = start_worker(worker(&lb, "billing", BILLING, "/billing/", 2), || Responder::Hello);
    // The impostor holds a valid token of another identity and calls
    // itself by the live worker's id, claiming other routes.
    let why = refused_setup(worker(&lb, "billing", PAYROLL, "/payroll/", 1));
    assert!(why.contains("409") && why.contains("worker id \"billing\" is live under another identity"), "{why}");
    let s = status(&lb);
    let w = s["workers"].as_array().unwrap().iter().find(|w| w["id"] == "billing").unwrap().clone();
    assert_eq!(w["routes"], serde_json::json!(["/billing/"]), "the real worker's entry is unchanged: {w}");
    assert_eq!(w["identity"], "billing");
    let refused_setups: u64 = s["per_core"].as_array().unwrap().iter().map(|c| c["setups_rejected"].as_u64().unwrap()).sum();
    assert!(refused_setups >= 1, "{s}");
}

#[test]
fn an_identity_past_its_tunnel_cap_gets_429_with_retry_after() {
    let lb = lb_with_identities(3);
    // Two workers of one identity want 2 × 2 cores × 1 tunnels = 4; the
    // identity may hold 3.
    let a = ptth_workerd::serve(worker(&lb, "billing-a", BILLING, "/billing/", 1), || Responder::Hello).unwrap();
    wait_until("a covers the lb", || a.is_covered());
    let b = ptth_workerd::serve(worker(&lb, "billing-b", BILLING, "/billing/", 1), || Responder::Hello).unwrap();
    wait_until("b is refused once", || b.last_error(0).is_some());
    let why = b.last_error(0).unwrap();
    assert!(why.contains("429") && why.contains("identity billing already holds 3 tunnels (its max_tunnels = 3)"), "{why}");
    assert_eq!(a.tunnels() + b.tunnels(), 3);
    // The refusal carries Retry-After (the cap frees when tunnels close).
    let mut raw = std::net::TcpStream::connect(lb.tunnel_addr).unwrap();
    raw.set_read_timeout(Some(STEP)).unwrap();
    write!(
        raw,
        "GET /.well-known/ptth/*/ HTTP/1.1\r\nHost: lb\r\nConnection: Upgrade\r\nUpgrade: ptth\r\nALPN: h2\r\n\
         Authorization: Bearer {BILLING}\r\nTunnel-Worker-Id: \"billing-c\"\r\nTunnel-Routes: \"/billing/\"\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 429 ") && answer.contains("Retry-After: "), "{answer}");
    a.kill();
    b.kill();
}

#[test]
fn tunnels_of_one_id_declare_the_same_and_a_restart_takes_over_cleanly() {
    let lb = lb_with_identities(64);
    let first = start_worker(worker(&lb, "billing", BILLING, "/billing/a/", 2), || Responder::Hello);
    // A second process, same identity and id, other routes: refused while
    // the first lives, so nothing routes by two sets of claims at once.
    let second_cfg = || worker(&lb, "billing", BILLING, "/billing/b/", 2);
    let why = refused_setup(second_cfg());
    assert!(why.contains("409") && why.contains("live with other claims"), "{why}");
    let routes = |lb: &ptth_lb::Lb| lb.status().workers.iter().find(|w| w.id == "billing").map(|w| w.routes.clone());
    assert_eq!(routes(&lb), Some(vec!["/billing/a/".to_string()]), "/status shows the live claims");
    // The first one goes (a restart): the new claims take over.
    first.kill();
    let _second = ptth_workerd::serve(second_cfg(), || Responder::Hello).unwrap();
    wait_until("the restarted worker covers the lb", || _second.is_covered());
    assert_eq!(routes(&lb), Some(vec!["/billing/b/".to_string()]));
    assert_eq!(get(lb.client_addr(), "/billing/b/x").status, 200);
    assert_eq!(get(lb.client_addr(), "/billing/a/x").status, 503, "the old routes left with the old tunnels");
}
