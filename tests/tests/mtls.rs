//! Workers identified by client certificate (mutual TLS on the tunnel
//! listener): a certificate from the configured CA is an identity and its
//! grant applies; missing (where required), expired, wrong-CA and
//! not-granted certificates are refused; a certificate and a token naming
//! different identities are refused.

use std::path::{Path, PathBuf};

use ptth_lb::certs::{write_dev, DevCerts};
use ptth_lb::identity::{digest, Grant, Identity};
use ptth_lb::tls::{CertSpec, WorkerCerts};
use ptth_tests::*;
use ptth_workerd::Responder;

const OTHER_TOKEN: &str = "other-identity-token-0123";

fn dev(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ptth-mtls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    write_dev(&DevCerts { workers: vec!["worker-1".into()], ..DevCerts::new(d.clone()) }).expect("certs");
    d
}

fn grant(route: &str, ids: &[&str]) -> Grant {
    Grant {
        origins: ptth_lb::config::OriginPolicy::Any,
        routes: Some(vec![route.into()]),
        classes: ptth_lb::config::ClassPolicy { allowed: None, most_urgent: 0, max_limit: 1000 },
        max_tunnels: 64,
        worker_ids: Some(ids.iter().map(|s| s.to_string()).collect()),
    }
}

fn mtls_lb(d: &Path, required: bool) -> ptth_lb::Lb {
    start_lb(2, |c| {
        c.tunnel_tls = Some(true);
        c.tls_certs = vec![CertSpec { cert: d.join("lb.pem"), key: d.join("lb.key"), names: vec![] }];
        c.worker_certs = WorkerCerts { ca: Some(d.join("ca.pem")), required };
        let mut w1 = Identity::with_digest("w1", None, grant("/w1/", &["worker-1"]));
        w1.cert_names = vec!["worker-1".into()];
        c.identities = vec![w1, Identity::new("other", digest(OTHER_TOKEN.as_bytes()), grant("/other/", &["other-*"]))];
    })
}

/// A worker trusting `ca`, presenting `cert` (chain, key) if given.
fn worker(lb: &ptth_lb::Lb, ca: &Path, cert: Option<(PathBuf, PathBuf)>, id: &str, route: &str) -> ptth_workerd::Config {
    let mut c = worker_config(lb, id, 1);
    c.meta.routes = vec![route.into()];
    let cert = cert.as_ref().map(|(a, b)| (a.as_path(), b.as_path()));
    c.tls = Some(ptth_workerd::client_tls(Some(ca), cert).expect("client TLS"));
    c
}

fn own_cert(d: &Path) -> Option<(PathBuf, PathBuf)> {
    Some((d.join("workers/worker-1.pem"), d.join("workers/worker-1.key")))
}

fn rejected(lb: &ptth_lb::Lb) -> u64 {
    status(lb)["per_core"].as_array().unwrap().iter().map(|c| c["setups_rejected"].as_u64().unwrap()).sum()
}

#[test]
fn a_certificate_from_the_ca_is_an_identity_with_its_grant() {
    let d = dev("ok");
    let lb = mtls_lb(&d, true);
    let _w = start_worker(worker(&lb, &d.join("ca.pem"), own_cert(&d), "worker-1", "/w1/"), || Responder::Hello);
    assert_eq!(get(lb.client_addr(), "/w1/x").status, 200);
    let s = status(&lb);
    let w = s["workers"].as_array().unwrap().iter().find(|w| w["id"] == "worker-1").unwrap().clone();
    assert_eq!(w["identity"], "w1", "{w}");
    // Not granted: the same certificate claiming another route.
    let why = refused_setup(worker(&lb, &d.join("ca.pem"), own_cert(&d), "worker-1", "/other/"));
    assert!(why.contains("403") && why.contains("identity w1 may not route /other/"), "{why}");
}

#[test]
fn missing_wrong_ca_and_expired_certificates_are_refused_setup() {
    let d = dev("bad");
    let lb = mtls_lb(&d, true);
    let ca = d.join("ca.pem");
    // Missing, where the listener requires one.
    let before = rejected(&lb);
    refused_setup(worker(&lb, &ca, None, "worker-1", "/w1/"));
    wait_until("the refusal is counted", || rejected(&lb) > before);
    // From another CA.
    let other = dev("bad-other");
    let before = rejected(&lb);
    refused_setup(worker(&lb, &ca, own_cert(&other), "worker-1", "/w1/"));
    wait_until("the refusal is counted", || rejected(&lb) > before);
    // Expired: signed by the right CA, valid until 2021.
    let before = rejected(&lb);
    refused_setup(worker(&lb, &ca, Some(signed_here(&d, true)), "worker-1", "/w1/"));
    wait_until("the refusal is counted", || rejected(&lb) > before);
    assert!(status(&lb)["workers"].as_array().unwrap().is_empty());
    // The control: made the same way but in date, it is accepted.
    let _w = start_worker(worker(&lb, &ca, Some(signed_here(&d, false)), "worker-1", "/w1/"), || Responder::Hello);
}

#[test]
fn without_required_certificates_tokens_still_work_and_may_not_disagree() {
    let d = dev("optional");
    let lb = mtls_lb(&d, false);
    let ca = d.join("ca.pem");
    let mut by_token = worker(&lb, &ca, None, "other-1", "/other/");
    by_token.token = Some(OTHER_TOKEN.into());
    let _t = start_worker(by_token, || Responder::Hello);
    assert_eq!(get(lb.client_addr(), "/other/x").status, 200);
    // The certificate says w1, the token says other.
    let mut both = worker(&lb, &ca, own_cert(&d), "worker-1", "/w1/");
    both.token = Some(OTHER_TOKEN.into());
    let why = refused_setup(both);
    assert!(why.contains("403") && why.contains("different identities"), "{why}");
    // Neither: 401.
    let why = refused_setup(worker(&lb, &ca, None, "anyone", "/w1/"));
    assert!(why.contains("401"), "{why}");
}

/// A worker certificate for `worker-1`, signed by `d`'s CA here (not by
/// `certs dev`), that expired, or (`expired` false) that is valid.
fn signed_here(d: &Path, expired: bool) -> (PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(d.join("ca.key")).unwrap()).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "ptth development CA");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let mut p = rcgen::CertificateParams::new(vec!["worker-1".to_string()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "worker-1");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    (p.not_before, p.not_after) = if expired {
        (rcgen::date_time_ymd(2020, 1, 1), rcgen::date_time_ymd(2021, 1, 1))
    } else {
        (rcgen::date_time_ymd(2020, 1, 1), rcgen::date_time_ymd(2100, 1, 1))
    };
    let k = rcgen::KeyPair::generate().unwrap();
    let c = p.signed_by(&k, &issuer).unwrap();
    let tag = if expired { "expired" } else { "valid" };
    let (cp, kp) = (d.join(format!("{tag}.pem")), d.join(format!("{tag}.key")));
    std::fs::write(&cp, c.pem()).unwrap();
    std::fs::write(&kp, k.serialize_pem()).unwrap();
    (cp, kp)
}

/// Certificate rotation on the worker (what ptth-workerd's SIGHUP does):
/// a worker whose certificate has expired is refused; given a fresh one
/// (`Worker::set_tls`), its next dial is accepted, with no restart.
#[test]
fn a_worker_given_a_new_certificate_dials_with_it() {
    let d = dev("rotate");
    let lb = mtls_lb(&d, true);
    let ca = d.join("ca.pem");
    let w = ptth_workerd::serve(worker(&lb, &ca, Some(signed_here(&d, true)), "worker-1", "/w1/"), || Responder::Hello).unwrap();
    wait_until("the expired certificate is refused", || w.last_error(0).is_some());
    assert_eq!(w.tunnels(), 0);
    let (cert, key) = signed_here(&d, false);
    w.set_tls(ptth_workerd::client_tls(Some(&ca), Some((&cert, &key))).unwrap()).expect("a TLS worker takes a new config");
    wait_until("the worker dials with its new certificate", || w.is_covered());
    assert_eq!(get(lb.client_addr(), "/w1/x").status, 200);
    // A cleartext worker has no TLS to replace.
    let plain = ptth_workerd::serve(worker_config(&lb, "other-1", 1), || Responder::Hello).unwrap();
    assert!(plain.set_tls(ptth_workerd::client_tls(Some(&ca), None).unwrap()).is_err());
    plain.kill();
}
