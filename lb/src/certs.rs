//! `ptth-lb certs dev DIR`: a development certificate authority
//! (`ca.pem`, `ca.key`), a certificate for the lb (`lb.pem`, `lb.key`) and
//! client certificates for workers (`workers/ID.pem`, `.key`), so TLS and
//! mutual TLS run on a laptop in a minute. Not on the request path; nothing
//! here is meant for production keys (they are written unencrypted, and the
//! CA can sign anything).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

/// What to make.
#[derive(Debug, Clone)]
pub struct DevCerts {
    pub dir: PathBuf,
    /// DNS names and IP addresses the lb certificate is valid for.
    pub names: Vec<String>,
    /// Worker ids, one client certificate each (subject CN and DNS SAN).
    pub workers: Vec<String>,
}

impl DevCerts {
    pub fn new(dir: PathBuf) -> DevCerts {
        DevCerts { dir, names: vec!["localhost".into(), "127.0.0.1".into()], workers: vec!["worker-1".into()] }
    }
}

/// The files written, in order.
pub fn write_dev(d: &DevCerts) -> Result<Vec<PathBuf>, String> {
    let workers = d.dir.join("workers");
    std::fs::create_dir_all(&workers).map_err(|e| format!("{}: {e}", workers.display()))?;
    let mut files = vec![d.dir.join("ca.pem"), d.dir.join("ca.key"), d.dir.join("lb.pem"), d.dir.join("lb.key")];
    for w in &d.workers {
        files.push(workers.join(format!("{w}.pem")));
        files.push(workers.join(format!("{w}.key")));
    }
    // Never overwrite: a second run must not replace a CA others trust.
    if let Some(f) = files.iter().find(|f| f.exists()) {
        return Err(format!("{} exists; choose an empty directory (nothing was written)", f.display()));
    }
    // Ids name files and go into a DNS subjectAltName: keep them plain.
    let plain = |w: &str| (1..=63).contains(&w.len()) && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if let Some(w) = d.workers.iter().find(|w| !plain(w)) {
        return Err(format!("--worker {w:?}: expected 1 to 63 of A-Z a-z 0-9 . - (a worker id that is also a DNS name)"));
    }
    let err = |what: &str, e: rcgen::Error| format!("making the {what}: {e}");

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA", e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "ptth development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut ca_params);
    let ca_key = KeyPair::generate().map_err(|e| err("CA key", e))?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| err("CA", e))?;

    let mut lb = CertificateParams::new(d.names.clone()).map_err(|e| err("lb certificate", e))?;
    lb.distinguished_name.push(DnType::CommonName, d.names.first().map_or("ptth-lb", String::as_str));
    lb.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut lb);
    let lb_key = KeyPair::generate().map_err(|e| err("lb key", e))?;
    let lb_cert = lb.signed_by(&lb_key, &ca).map_err(|e| err("lb certificate", e))?;

    let mut out: Vec<(PathBuf, String)> = vec![
        (files[0].clone(), ca.pem()),
        (files[1].clone(), ca_key_pem),
        (files[2].clone(), lb_cert.pem()),
        (files[3].clone(), lb_key.serialize_pem()),
    ];
    for (i, w) in d.workers.iter().enumerate() {
        let mut p = CertificateParams::new(vec![w.clone()]).map_err(|e| err("worker certificate", e))?;
        p.distinguished_name.push(DnType::CommonName, w.as_str());
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut p);
        let k = KeyPair::generate().map_err(|e| err("worker key", e))?;
        let c = p.signed_by(&k, &ca).map_err(|e| err("worker certificate", e))?;
        out.push((files[4 + 2 * i].clone(), c.pem()));
        out.push((files[5 + 2 * i].clone(), k.serialize_pem()));
    }
    for (path, text) in &out {
        write_file(path, text)?;
    }
    Ok(files)
}

/// Keys readable by their owner only.
fn write_file(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = path.extension().is_some_and(|e| e == "key");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if key { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

/// Valid from the start of this year to the start of the year after next.
fn set_validity(p: &mut CertificateParams) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Good to a day or so, which the margins absorb.
    let year = 1970 + (secs / 31_556_952) as i32;
    p.not_before = rcgen::date_time_ymd(year, 1, 1);
    p.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_chain_rustls_accepts_and_never_overwrites() {
        let dir = std::env::temp_dir().join(format!("ptth-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = DevCerts { workers: vec!["wA".into(), "wB".into()], ..DevCerts::new(dir.clone()) };
        let files = write_dev(&d).expect("written");
        assert_eq!(files.len(), 8);
        // The lb's certificate loads as a server certificate...
        let spec = crate::tls::CertSpec { cert: dir.join("lb.pem"), key: dir.join("lb.key"), names: vec![] };
        crate::tls::ServerTls::new(vec![spec], &Default::default()).expect("lb certificate loads");
        // ...and verifies against the CA for its names.
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        let ca = rustls::pki_types::CertificateDer::from_pem_file(dir.join("ca.pem")).expect("ca");
        let leaf = rustls::pki_types::CertificateDer::from_pem_file(dir.join("lb.pem")).expect("leaf");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca).expect("root");
        let v =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), crate::tls::provider()).build().expect("verifier");
        for name in ["localhost", "127.0.0.1"] {
            let n = rustls::pki_types::ServerName::try_from(name).expect("name");
            v.verify_server_cert(&leaf, &[], &n, &[], rustls::pki_types::UnixTime::now()).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("workers/wA.key")).expect("key").permissions().mode();
        assert_eq!(mode & 0o077, 0, "keys are private: {mode:o}");
        let again = write_dev(&d).expect_err("second run");
        assert!(again.contains("exists") && again.contains("nothing was written"), "{again}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
