//! The worker's validated configuration. The CLI (main.rs) and library users
//! build a [`Config`]; [`Config::validate`] rejects what cannot work, naming the
//! setting to fix.

use std::time::Duration;

use ptth_proto::h1::Limits;
use ptth_proto::rt::runtime::RuntimeSpec;
use ptth_proto::setup::{Claim, InnerProtocol, WorkerMeta};

#[derive(Debug, Clone)]
pub struct Config {
    /// lb tunnel addresses, `host:port`; the worker keeps tunnels to each.
    pub lbs: Vec<String>,
    /// Origins claimed; [`Claim::Any`] serves every `Host`.
    pub claim: Claim,
    /// Identity, routes, weight and concurrency declared at setup.
    pub meta: WorkerMeta,
    /// Bearer token sent in `Authorization`.
    pub token: Option<String>,
    /// Tunnels to keep on each lb core (an h1 tunnel carries one request at a
    /// time; an h2 tunnel up to `max_streams`).
    pub tunnels_per_core: u32,
    /// Inner protocols offered in the setup's `ALPN`, in order of preference.
    pub protocols: Vec<InnerProtocol>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS on h2 tunnels: each tunnel's capacity.
    pub max_streams: u32,
    /// Flow-control windows on h2 tunnels.
    pub windows: ptth_proto::rt::h2io::Windows,
    /// Worker threads, each with its own runtime (default: 1).
    pub threads: usize,
    /// Pin each thread to a CPU.
    pub pin: bool,
    pub runtime: RuntimeSpec,
    /// Limits on request heads read from tunnels (and response heads from
    /// the origin): [`ptth_proto::h1::TUNNEL_LIMITS`], above any lb profile.
    pub limits: Limits,
    /// TCP connect to an lb or origin.
    pub connect_timeout: Duration,
    /// Setup request to its 101.
    pub setup_timeout: Duration,
    /// Any one read or write once a request is under way.
    pub io_timeout: Duration,
    /// First reconnect delay; doubles per failure up to `backoff_max`, with jitter.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Log every tunnel, not only coverage changes.
    pub verbose: bool,
    /// Print nothing (tests, benchmarks).
    pub quiet: bool,
    /// TLS to the lb: the verifier's trust anchors and client settings
    /// ([`client_tls`]). `None`: cleartext.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The name the lb's certificate must carry (and the SNI sent);
    /// default: the host part of each `--lb` address.
    pub tls_name: Option<String>,
}

/// A TLS client config trusting the PEM certificates in `ca`, or the
/// system's roots without one; ALPN `http/1.1` (the PTTH setup is an
/// HTTP/1.1 request). `cert`: a client certificate chain and its key (PEM)
/// for lbs that identify workers by certificate. Errors name the file.
pub fn client_tls(
    ca: Option<&std::path::Path>,
    cert: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use ptth_proto::rt::tls::read_certs;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for c in read_certs(path).map_err(|why| format!("--ca {}: {why}", path.display()))? {
                roots.add(c).map_err(|e| format!("--ca {}: {e}", path.display()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err("--tls: no system root certificates found; give the lb's CA with --ca FILE".into());
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut c = match cert {
        None => b.with_no_client_auth(),
        Some((chain, key)) => {
            let certs = read_certs(chain).map_err(|why| format!("--tls-cert {}: {why}", chain.display()))?;
            let k = rustls::pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
            b.with_client_auth_cert(certs, k).map_err(|e| format!("--tls-key {}: {e}", key.display()))?
        }
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(c))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lbs: vec!["127.0.0.1:7000".into()],
            claim: Claim::Any,
            meta: WorkerMeta::default(),
            token: None,
            tunnels_per_core: 8,
            protocols: vec![InnerProtocol::H2, InnerProtocol::Http11],
            max_streams: 256,
            windows: Default::default(),
            threads: 1,
            pin: false,
            runtime: RuntimeSpec::default(),
            // Room for what the lb adds to heads within its own limits.
            limits: ptth_proto::h1::TUNNEL_LIMITS,
            connect_timeout: Duration::from_secs(5),
            setup_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(60),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            tls: None,
            tls_name: None,
            verbose: false,
            quiet: false,
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        if self.lbs.is_empty() {
            return Err("--lb: at least one lb address is needed".into());
        }
        for lb in &self.lbs {
            if lb.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                return Err(format!("--lb {lb:?}: expected host:port"));
            }
        }
        if self.tunnels_per_core == 0 || self.tunnels_per_core > 1024 {
            return Err("--tunnels-per-core: expected 1 to 1024".into());
        }
        if self.protocols.is_empty() {
            return Err("--inner: offer at least one of h2, http/1.1".into());
        }
        if self.max_streams == 0 {
            return Err("--max-streams: expected at least 1".into());
        }
        if self.threads == 0 || self.threads > 1024 {
            return Err("--threads: expected 1 to 1024".into());
        }
        if self.backoff_base.is_zero() || self.backoff_max < self.backoff_base {
            return Err("backoff: base must be > 0 and <= max".into());
        }
        Ok(())
    }
}
