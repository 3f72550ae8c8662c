//! Reloading the lb's config while it serves (`Lb::reload`, what SIGHUP
//! calls; docs/OPERATIONS.md, reload): new settings reach new requests and
//! new tunnel setups on every core, connections and tunnels stay, no request
//! fails during reloads under load, and a refused reload changes nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ptth_lb::identity::{digest, Grant, Identity};
use ptth_lb::ReloadError;
use ptth_tests::*;
use ptth_workerd::Responder;

const TOKEN: &str = "team-a-token-0123456789";

fn team_a() -> Identity {
    let grant = Grant {
        origins: ptth_lb::config::OriginPolicy::Any,
        routes: None,
        classes: ptth_lb::config::ClassPolicy { allowed: None, most_urgent: 0, max_limit: 8 },
        max_tunnels: 64,
        worker_ids: Some(Grant::default_ids("team-a")),
    };
    Identity::new("team-a", digest(TOKEN.as_bytes()), grant)
}

/// What an operator changes most: reserved routes (requests), identities
/// (setups), queue bounds (the profile). Each takes effect on both cores.
#[test]
fn a_reload_reaches_new_requests_and_setups_on_every_core() {
    let lb = start_lb(2, |_| {});
    let _w = responder(&lb, "catch-all", Responder::Hello);
    let mut on = clients_on_cores(&lb, 1);
    let opened: u64 = lb.status().per_core.iter().map(|c| c.clients_accepted).sum();
    for c in on.iter_mut() {
        assert_eq!(c[0].get("/admin/x").status, 200, "a catch-all worker serves any path");
    }
    // A token worker is not known yet: 401.
    let mut a = worker_config(&lb, "team-a-1", 1);
    a.token = Some(TOKEN.into());
    let why = refused_setup(a.clone());
    assert!(why.contains("401"), "{why}");

    let changes = lb
        .reload(lb_config(2, |c| {
            c.reserved_routes = vec!["/admin/".into()];
            c.identities = vec![team_a()];
            c.profile.queue_max = 77;
        }))
        .expect("a valid reload is applied");
    assert_eq!(changes, vec!["identities added", "queue.max_waiting = 77", "routes.reserved = [\"/admin/\"]"]);
    // The same keep-alive connections, on both cores, now get the reserved
    // route's 503: the connections stayed, the setting reached each core.
    for c in on.iter_mut() {
        wait_until("the reload reaches the core", || {
            let r = c[0].get("/admin/x");
            assert!(r.status == 200 || r.status == 503, "{}", r.status);
            r.status == 503
        });
        assert_eq!(c[0].get("/other").status, 200, "other paths go on");
    }
    // The new identity's workers are accepted.
    let w = start_worker(a, || Responder::Hello);
    wait_until("team-a's worker joins", || w.tunnels() > 0);
    let s = lb.status();
    assert_eq!(s.config_reloads, 1);
    assert!(s.workers.iter().any(|w| w.id == "team-a-1" && w.identity == "team-a"), "{:?}", s.workers);
    assert_eq!(s.per_core.iter().map(|c| c.clients_accepted).sum::<u64>(), opened, "no client connection was reopened");
}

/// Settings fixed at start are named and refused; so is a config that does
/// not validate at reload time. Nothing changes either way.
#[test]
fn a_refused_reload_changes_nothing() {
    let lb = start_lb(2, |c| c.reserved_routes = vec!["/admin/".into()]);
    let _w = responder(&lb, "catch-all", Responder::Hello);
    let e = lb
        .reload(lb_config(2, |c| {
            c.client_listen = vec!["127.0.0.1:1".parse().unwrap()];
            c.profile.cores = 3;
            c.reserved_routes = vec![];
        }))
        .expect_err("listeners and cores are fixed");
    match &e {
        ReloadError::NeedsRestart(keys) => assert_eq!(keys, &["listen.client", "runtime.cores"]),
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("listen.client, runtime.cores cannot change while ptth-lb runs"), "{e}");
    let e = lb
        .reload(lb_config(2, |c| {
            c.tunnel_listen = "10.1.2.3:7000".parse().unwrap();
        }))
        .expect_err("moved listener");
    assert!(e.to_string().contains("listen.tunnel"), "{e}");
    assert_eq!(lb.status().config_reloads, 0);
    assert_eq!(get(lb.client_addr(), "/admin/x").status, 503, "the old config still serves");
}

/// Reloads under load: four keep-alive HTTP/1.1 clients, two on each core,
/// send requests while the config changes 20 times. No request fails, no
/// tunnel is reopened.
#[test]
fn no_request_fails_while_the_config_reloads_under_load() {
    let lb = start_lb(2, |_| {});
    let w = responder(&lb, "w", Responder::Hello);
    let before = settled_status(&lb, "every tunnel is counted", |s| {
        s.per_core.iter().map(|c| c.tunnels_accepted).sum::<u64>() == w.tunnels() as u64
    });
    let tunnels: u64 = before.per_core.iter().map(|c| c.tunnels_accepted).sum();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let on = clients_on_cores(&lb, 2);
    let clients: Vec<_> = on
        .into_iter()
        .flatten()
        .map(|mut c| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = c.get("/x");
                    assert_eq!(r.status, 200, "{}", r.text());
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for i in 0..20u64 {
        let at = done.load(Ordering::Relaxed);
        lb.reload(lb_config(2, |c| {
            c.profile.queue_max = 1000 + i as usize;
            c.profile.header_timeout = Duration::from_millis(5000 + i);
        }))
        .expect("reload");
        wait_until("requests go on after the reload", || done.load(Ordering::Relaxed) > at + 20);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("no request failed");
    }
    let s = lb.status();
    assert_eq!(s.config_reloads, 20);
    assert_eq!(s.per_core.iter().map(|c| c.tunnels_accepted).sum::<u64>(), tunnels, "no tunnel was reopened");
    let accepted: u64 = s.per_core.iter().map(|c| c.clients_accepted).sum();
    let opened: u64 = before.per_core.iter().map(|c| c.clients_accepted).sum();
    assert!(accepted >= opened, "{accepted}");
    assert_eq!(s.per_core.iter().map(|c| c.status_5xx + c.status_4xx).sum::<u64>(), 0);
}
