//! TLS termination for client listeners: certificates chosen by SNI, ALPN
//! (`h2`, `http/1.1`), TLS 1.2 and 1.3, session resumption, and certificate
//! reload without dropping connections.
//!
//! Place in the request path: between a TLS listener's accept and the
//! HTTP/1.1-or-h2 connection code (`proxy::serve`), which runs on the
//! handshaken `ptth_proto::rt::tls::TlsStream` exactly as on a plain socket.
//!
//! One [`ServerTls`] serves every core: its `rustls::ServerConfig` is shared
//! (rustls configs are `Send + Sync` and read-only), and its certificate
//! resolver reads the current [`CertSet`] once per handshake, so a reload
//! swaps the set and new handshakes get the new certificates while
//! established sessions go on with theirs. Session tickets are encrypted
//! with keys shared by all cores (a client resumes on any core) and rotated
//! by rustls.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use ptth_proto::rt::tls::read_certs;

/// ALPN protocol ids offered to clients, most preferred first (RFC 7301;
/// RFC 9113 §3.2 for `h2`).
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// One certificate as configured: PEM files and the SNI names it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// SNI names (exact, or `*.example.com` for one label). Empty: the names
    /// the certificate itself is valid for.
    pub names: Vec<String>,
}

/// What went wrong loading certificates; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: {why}")]
    File { file: PathBuf, why: String },
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// Loaded certificates, in configured order (the first is the default).
#[derive(Debug)]
pub struct CertSet {
    certs: Vec<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Lower-case names; `*.x` matches one label in front of `.x`.
    names: Vec<String>,
}

impl CertSet {
    /// Reads and checks every certificate and key.
    pub fn load(specs: &[CertSpec]) -> Result<CertSet, TlsError> {
        if specs.is_empty() {
            return Err(TlsError::Rustls("no certificate configured".into()));
        }
        let provider = provider();
        let mut certs = Vec::with_capacity(specs.len());
        for s in specs {
            let file = |p: &Path, why: String| TlsError::File { file: p.to_path_buf(), why };
            let chain = read_certs(&s.cert).map_err(|why| file(&s.cert, why))?;
            let key = PrivateKeyDer::from_pem_file(&s.key).map_err(|e| file(&s.key, format!("reading the private key: {e}")))?;
            let signer = provider.key_provider.load_private_key(key).map_err(|e| file(&s.key, format!("unusable private key: {e}")))?;
            let ck = CertifiedKey::new(chain, signer);
            ck.keys_match().map_err(|e| file(&s.key, format!("does not belong to {}: {e}", s.cert.display())))?;
            let names = s.names.iter().map(|n| n.trim_end_matches('.').to_ascii_lowercase()).collect();
            certs.push(Loaded { key: Arc::new(ck), names });
        }
        Ok(CertSet { certs })
    }

    /// The certificate for an SNI name: a configured name (exact first,
    /// then one wildcard label), then one valid for the name by its own
    /// subjectAltName (among those with no configured names), else the
    /// first. Without SNI: the first.
    fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let first = &self.certs[0].key;
        let Some(name) = sni.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else { return first };
        if let Some(c) = self.certs.iter().find(|c| c.names.contains(&name)) {
            return &c.key;
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(c) = self.certs.iter().find(|c| c.names.iter().any(|n| n.strip_prefix("*.") == Some(parent))) {
                return &c.key;
            }
        }
        let Ok(server_name) = ServerName::try_from(name.as_str()) else { return first };
        for c in self.certs.iter().filter(|c| c.names.is_empty()) {
            let Some(leaf) = c.key.cert.first() else { continue };
            let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf) else { continue };
            if rustls::client::verify_server_name(&parsed, &server_name).is_ok() {
                return &c.key;
            }
        }
        first
    }
}

/// The resolver rustls asks once per handshake.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertSet>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a whole set (it is only ever replaced).
        let set = self.current.read().unwrap_or_else(|p| p.into_inner()).clone();
        Some(set.pick(hello.server_name()).clone())
    }
}

/// How the tunnel listener treats worker certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerCerts {
    /// CA certificates (PEM) worker certificates must chain to; `None`: no
    /// worker certificates are asked for.
    pub ca: Option<PathBuf>,
    /// A worker without a valid certificate is refused at the handshake.
    pub required: bool,
}

/// The names a worker certificate carries, for mapping it to an identity:
/// its subject's common names, then its DNS and URI subjectAltNames. Only
/// called on a certificate the verifier accepted.
pub fn cert_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else { return Vec::new() };
    let mut names: Vec<String> = cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_string).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) | x509_parser::extensions::GeneralName::URI(d) => {
                    names.push(d.to_string())
                }
                _ => {}
            }
        }
    }
    names
}

/// TLS for the client listeners and the tunnel listener, shared by all
/// cores. A reload swaps what new handshakes get; established sessions
/// keep theirs, and the ticket keys and session cache carry over, so a
/// client resumes across a reload.
#[derive(Debug)]
pub struct ServerTls {
    current: RwLock<Configs>,
    resolver: Arc<Resolver>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
}

#[derive(Debug)]
struct Configs {
    client: Arc<rustls::ServerConfig>,
    /// The tunnel listener's: the same certificates, ALPN `http/1.1` (the
    /// PTTH setup is an HTTP/1.1 request), worker certificates checked when
    /// a CA is configured.
    tunnel: Arc<rustls::ServerConfig>,
    specs: Vec<CertSpec>,
}

/// The crypto provider: ring (no OpenSSL, no C toolchain beyond cc).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How the tunnel listener checks worker certificates, from the CA file.
fn worker_verifier(workers: &WorkerCerts) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, TlsError> {
    let Some(ca) = &workers.ca else { return Ok(None) };
    let file = |why: String| TlsError::File { file: ca.clone(), why };
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca).map_err(file)? {
        roots.add(c).map_err(|e| file(e.to_string()))?;
    }
    let b = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    // Optional unless required: token workers connect without one.
    let b = if workers.required { b } else { b.allow_unauthenticated() };
    Ok(Some(b.build().map_err(|e| file(e.to_string()))?))
}

impl ServerTls {
    /// Loads the certificates and builds the server configs. `workers`:
    /// how the tunnel listener checks worker certificates (mutual TLS).
    pub fn new(specs: Vec<CertSpec>, workers: &WorkerCerts) -> Result<ServerTls, TlsError> {
        let set = CertSet::load(&specs)?;
        let resolver = Arc::new(Resolver { current: RwLock::new(Arc::new(set)) });
        // Resumption: stateless tickets (TLS 1.2 and 1.3), keys shared by
        // every core; the stateful cache stays for clients without.
        let ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Rustls(e.to_string()))?;
        let sessions: Arc<dyn rustls::server::StoresServerSessions> = rustls::server::ServerSessionMemoryCache::new(256);
        let current = RwLock::new(build_configs(&resolver, &ticketer, &sessions, specs, workers)?);
        Ok(ServerTls { current, resolver, ticketer, sessions })
    }

    /// A server connection for one accepted tunnel socket.
    pub fn accept_tunnel(&self) -> Result<rustls::ServerConnection, rustls::Error> {
        let config = self.current.read().unwrap_or_else(|p| p.into_inner()).tunnel.clone();
        rustls::ServerConnection::new(config)
    }

    /// A server connection for one accepted socket.
    pub fn accept(&self) -> Result<rustls::ServerConnection, rustls::Error> {
        let config = self.current.read().unwrap_or_else(|p| p.into_inner()).client.clone();
        rustls::ServerConnection::new(config)
    }

    /// Reads the certificate files again; on success new handshakes use
    /// them (established connections keep theirs). On failure nothing
    /// changes and the error says which file.
    pub fn reload(&self) -> Result<(), TlsError> {
        let specs = self.current.read().unwrap_or_else(|p| p.into_inner()).specs.clone();
        let set = Arc::new(CertSet::load(&specs)?);
        *self.resolver.current.write().unwrap_or_else(|p| p.into_inner()) = set;
        Ok(())
    }

    /// A reload with new settings: other certificate files or names, and
    /// another worker CA. Everything is read and checked before anything
    /// changes; on failure the old settings stay.
    pub fn reconfigure(&self, specs: Vec<CertSpec>, workers: &WorkerCerts) -> Result<(), TlsError> {
        let set = Arc::new(CertSet::load(&specs)?);
        let configs = build_configs(&self.resolver, &self.ticketer, &self.sessions, specs, workers)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *self.resolver.current.write().unwrap_or_else(|p| p.into_inner()) = set;
        *current = configs;
        Ok(())
    }
}

/// The client and tunnel server configs over one resolver, ticketer and
/// session cache.
fn build_configs(
    resolver: &Arc<Resolver>,
    ticketer: &Arc<dyn rustls::server::ProducesTickets>,
    sessions: &Arc<dyn rustls::server::StoresServerSessions>,
    specs: Vec<CertSpec>,
    workers: &WorkerCerts,
) -> Result<Configs, TlsError> {
    let verifier = worker_verifier(workers)?;
    let config = |verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, alpn: &[&[u8]]| {
        let b = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let mut config = match verifier {
            Some(v) => b.with_client_cert_verifier(v).with_cert_resolver(resolver.clone()),
            None => b.with_no_client_auth().with_cert_resolver(resolver.clone()),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config.ticketer = ticketer.clone();
        config.session_storage = sessions.clone();
        Ok::<_, TlsError>(Arc::new(config))
    };
    Ok(Configs { client: config(None, &ALPN)?, tunnel: config(verifier, &[b"http/1.1"])?, specs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> (String, String) {
        let k = rcgen::KeyPair::generate().expect("key");
        let p = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        let c = p.self_signed(&k).expect("cert");
        (c.pem(), k.serialize_pem())
    }

    fn write(dir: &Path, name: &str, names: &[&str], configured: &[&str]) -> CertSpec {
        let (c, k) = cert(names);
        let (cp, kp) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&cp, c).expect("write");
        std::fs::write(&kp, k).expect("write");
        CertSpec { cert: cp, key: kp, names: configured.iter().map(|s| s.to_string()).collect() }
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ptth-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("tmp");
        d
    }

    #[test]
    fn sni_picks_by_configured_name_wildcard_own_names_then_the_first() {
        let d = tmp("pick");
        let a = write(&d, "a", &["a.test"], &[]);
        let b = write(&d, "b", &["whatever.test"], &["b.test", "*.wild.test"]);
        let c = write(&d, "c", &["c.test", "*.c.test"], &[]);
        let set = CertSet::load(&[a, b, c]).expect("load");
        let which = |sni: Option<&str>| {
            let k = set.pick(sni);
            set.certs.iter().position(|c| Arc::ptr_eq(&c.key, k)).expect("one of them")
        };
        assert_eq!(which(None), 0);
        assert_eq!(which(Some("b.test")), 1);
        assert_eq!(which(Some("B.Test.")), 1, "case and a trailing dot do not matter");
        assert_eq!(which(Some("x.wild.test")), 1);
        assert_eq!(which(Some("x.y.wild.test")), 0, "a wildcard covers one label");
        assert_eq!(which(Some("c.test")), 2, "the certificate's own names");
        assert_eq!(which(Some("deep.c.test")), 2);
        assert_eq!(which(Some("a.test")), 0);
        assert_eq!(which(Some("nobody.test")), 0, "unknown names get the first");
    }

    /// Bytes a peer sent that the TLS layer holds (decrypted but not yet
    /// read) make a pooled connection unusable, though its socket is quiet:
    /// a worker's extra bytes must never be read as the next response.
    #[test]
    fn plaintext_held_by_the_tls_layer_counts_as_unread() {
        use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
        let d = tmp("unread");
        let spec = write(&d, "s", &["localhost"], &[]);
        let tls = ServerTls::new(vec![spec.clone()], &WorkerCerts::default()).expect("tls");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(&spec.cert).unwrap()).unwrap();
        let client_cfg = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().expect("runtime");
        rt.block_on(async move {
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let client = monoio::spawn(async move {
                let tcp = monoio::net::TcpStream::connect(addr).await.unwrap();
                let conn = rustls::ClientConnection::new(client_cfg, "localhost".try_into().unwrap()).unwrap();
                let mut s = ptth_proto::rt::tls::TlsStream::handshake(tcp, conn, std::time::Duration::from_secs(5)).await.unwrap();
                // One write: one record carrying a "response" and extra bytes.
                let (r, _) = s.write_all(b"okEXTRA".to_vec()).await;
                r.unwrap();
                s
            });
            let (tcp, _) = listener.accept().await.unwrap();
            let mut s =
                ptth_proto::rt::tls::TlsStream::handshake(tcp, tls.accept().unwrap(), std::time::Duration::from_secs(5)).await.unwrap();
            let _client = client.await;
            // Read exactly the "response".
            let (r, buf) = s.read(Vec::with_capacity(2)).await;
            assert_eq!((r.unwrap(), &buf[..]), (2, &b"ok"[..]));
            assert!(s.has_unread(), "EXTRA is held by rustls, not on the socket");
            let (r, buf) = s.read(Vec::with_capacity(64)).await;
            assert_eq!((r.unwrap(), &buf[..]), (5, &b"EXTRA"[..]));
            assert!(!s.has_unread());
        });
    }

    #[test]
    fn bad_files_name_the_file_and_what_is_wrong() {
        let d = tmp("bad");
        let good = write(&d, "g", &["g.test"], &[]);
        let other = write(&d, "o", &["o.test"], &[]);
        let missing = CertSpec { cert: d.join("nope.pem"), ..good.clone() };
        let e = CertSet::load(&[missing]).expect_err("missing").to_string();
        assert!(e.contains("nope.pem") && e.contains("reading certificates"), "{e}");
        let notpem = d.join("empty.pem");
        std::fs::write(&notpem, "hello\n").expect("write");
        let e = CertSet::load(&[CertSpec { cert: notpem, ..good.clone() }]).expect_err("empty").to_string();
        assert!(e.contains("empty.pem") && e.contains("no CERTIFICATE"), "{e}");
        let e = CertSet::load(&[CertSpec { key: other.key.clone(), ..good.clone() }]).expect_err("mismatch").to_string();
        assert!(e.contains("o.key") && e.contains("does not belong to"), "{e}");
        assert!(CertSet::load(&[good]).is_ok());
    }
}
