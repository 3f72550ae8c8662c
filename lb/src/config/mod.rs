//! Configuration in two layers: serde `*File` structs that mirror the TOML
//! (`deny_unknown_fields`, so a typo is an error), converted into the validated
//! [`Config`] the cores run with (typed `Duration`s, checked ranges).
//!
//! Two files: the deployment config (`--config`: listeners, tunnel auth and
//! policy) and the per-core profile (`--profile`: runtime, buffers, limits,
//! queues, timeouts). The built-in profile is `tuning/default.toml`, compiled
//! in; a profile given on the command line overlays only the keys it sets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ptth_proto::h1::Limits;
use ptth_proto::rt::runtime::{DriverChoice, RingFlags, RuntimeSpec};
use serde::Deserialize;

pub mod effective;
pub mod locate;

/// The profile ptth-lb runs with unless told otherwise.
pub const DEFAULT_PROFILE: &str = include_str!("../../../tuning/default.toml");

pub const DEFAULT_CLIENT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_TUNNEL_LISTEN: &str = "127.0.0.1:7000";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";

/// `--config FILE`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub listen: ListenFile,
    #[serde(default)]
    pub tunnel: TunnelFile,
    #[serde(default)]
    pub forwarding: ForwardingFile,
    #[serde(default)]
    pub classes: ClassesFile,
    #[serde(default)]
    pub routes: RoutesFile,
    #[serde(default)]
    pub tls: TlsFile,
    #[serde(default)]
    pub log: LogFile,
    /// `[[identities]]`: named worker tokens, each with its grant.
    pub identities: Option<Vec<IdentityFile>>,
    /// Path of a profile to load (the `--profile` flag wins).
    pub profile: Option<String>,
    /// The directory relative paths in the file are taken from (the file's
    /// own; set by whoever read it).
    #[serde(skip)]
    pub dir: Option<PathBuf>,
}

/// `[[identities]]`: one worker identity. Unset grant keys take the
/// lb-wide policy (`tunnel.allowed_origins`, `[classes]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    pub name: String,
    /// The token itself, or (better) its SHA-256 as 64 hex digits.
    pub token: Option<String>,
    pub token_sha256: Option<String>,
    /// Worker certificate names (subject CN, DNS or URI subjectAltName)
    /// that are this identity: exact, or a prefix ending in `*`. Needs
    /// `tunnel.client_ca`.
    pub cert_names: Option<Vec<String>>,
    /// Origins it may claim ("*": any).
    pub origins: Option<Vec<String>>,
    /// Path prefixes its routes must lie under (default: any path).
    pub routes: Option<Vec<String>>,
    /// Class names it may declare.
    pub classes: Option<Vec<String>>,
    pub most_urgent: Option<u8>,
    pub max_limit: Option<u32>,
    /// Tunnels over all its workers (default 1024).
    pub max_tunnels: Option<u32>,
    /// Worker ids it may use: exact, or a prefix ending in `*` (default:
    /// its name, and its name followed by `-*`); `["*"]`: any.
    pub worker_ids: Option<Vec<String>>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogFile {
    /// Which events are logged, in the `RUST_LOG` syntax (`info`,
    /// `warn,ptth_lb=debug`); default `info`. `PTTH_LOG` in the environment
    /// wins over it, `--quiet` too.
    pub level: Option<String>,
}

/// `[tls]`: certificates for the TLS client listeners.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// The first is served to clients that send no SNI name or one that no
    /// certificate answers.
    pub certificates: Option<Vec<CertFile>>,
}

/// `[[tls.certificates]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    /// PEM certificate chain, leaf first.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// SNI names it answers (`*.example.com` for one label); default: the
    /// names the certificate is valid for.
    pub names: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// Client listeners (default 127.0.0.1:8080).
    pub client: Option<Vec<String>>,
    /// TLS client listeners (HTTP/1.1 and h2 by ALPN); need `[tls]`
    /// certificates.
    pub client_tls: Option<Vec<String>>,
    /// Worker tunnel listener (default 127.0.0.1:7000).
    pub tunnel: Option<String>,
    /// Admin listener (default 127.0.0.1:9901); "" disables it.
    pub admin: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelFile {
    /// Bearer token workers must present. Without one, only loopback workers
    /// are accepted.
    pub token: Option<String>,
    /// Origins workers may claim, e.g. "https://app.example"; "*" allows any
    /// (the default), including catch-all workers.
    pub allowed_origins: Option<Vec<String>>,
    /// Tunnels one worker id may hold across all cores (default 1024).
    pub max_tunnels_per_worker: Option<u32>,
    /// Tunnels one peer IP address may hold across all cores (default 4096).
    pub max_tunnels_per_peer: Option<u32>,
    /// Tunnels the lb holds in all (default 16384).
    pub max_tunnels: Option<u32>,
    /// TLS on the tunnel listener, with the `[[tls.certificates]]`: "on" or
    /// "off"; default on unless the listener is on a loopback address.
    pub tls: Option<String>,
    /// Allows a cleartext tunnel listener on a non-loopback address (tokens
    /// and traffic then cross the network unencrypted).
    pub insecure_cleartext: Option<bool>,
    /// CA certificates (PEM) that worker client certificates must chain to
    /// (mutual TLS on the tunnel listener); relative to this file.
    pub client_ca: Option<String>,
    /// Refuse workers without a valid client certificate at the handshake
    /// (default false: token workers still connect).
    pub require_client_cert: Option<bool>,
}

/// `[forwarding]`: what the lb says about the client to the worker.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardingFile {
    /// Client addresses (IPs or CIDR blocks) whose own `Forwarded` and
    /// `X-Forwarded-*` fields are kept; from anyone else they are dropped.
    pub trusted_proxies: Option<Vec<String>>,
    /// Also send `X-Forwarded-For` and `X-Forwarded-Proto` (default false).
    pub x_forwarded: Option<bool>,
}

/// `[classes]`: the most any worker may declare in `Tunnel-Classes`
/// (docs/PROTOCOL.md §1); a setup declaring more is refused with 403.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassesFile {
    /// Class names a worker may declare (`default` is always allowed);
    /// absent: any name.
    pub allowed: Option<Vec<String>>,
    /// The most urgent level (RFC 9218 urgency, 0 most urgent to 7) a worker
    /// may give a class (default 0: any).
    pub most_urgent: Option<u8>,
    /// The largest per-class limit a worker may declare (default 1000000).
    pub max_limit: Option<u32>,
}

/// The profile's `[health]`: outlier detection (`tunnel/health.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Failed attempts in a row that eject a worker (0: never eject).
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; each further one in a row doubles
    /// it, up to `max_ejection`.
    pub ejection: Duration,
    pub max_ejection: Duration,
}

/// `[routes]`: path prefixes only the workers claiming them may serve.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    /// Prefixes (any host) that never fall through to a worker serving a
    /// shorter prefix: with no worker claiming one connected, its requests
    /// get 503 + Retry-After. E.g. ["/admin/"].
    pub reserved: Option<Vec<String>>,
}

/// The validated `[classes]` section.
#[derive(Debug, Clone)]
pub struct ClassPolicy {
    pub allowed: Option<Vec<String>>,
    pub most_urgent: u8,
    pub max_limit: u32,
}

impl ClassPolicy {
    fn parse(f: ClassesFile) -> Result<ClassPolicy, ConfigError> {
        if let Some(names) = &f.allowed {
            for n in names {
                if !ptth_proto::setup::is_class_name(n) {
                    return Err(cerr(
                        "classes.allowed",
                        format!("{n:?} is not a class name (a lowercase letter or *, then lowercase letters, digits, _-.*; at most 32)"),
                    ));
                }
            }
        }
        Ok(ClassPolicy {
            allowed: f.allowed,
            most_urgent: range("classes.most_urgent", Some(f.most_urgent.unwrap_or(0)), 0, ptth_proto::setup::LEAST_URGENT)?,
            max_limit: range(
                "classes.max_limit",
                Some(f.max_limit.unwrap_or(ptth_proto::setup::MAX_CLASS_LIMIT)),
                1,
                ptth_proto::setup::MAX_CLASS_LIMIT,
            )?,
        })
    }

    /// What in `classes` exceeds the policy, said so the worker's operator
    /// knows what to change. `max_wait`: the profile's `queue.max_wait_ms`,
    /// which a class's `wait` may shorten, never lengthen.
    pub fn check(&self, classes: &[ptth_proto::setup::ClassDecl], max_wait: std::time::Duration) -> Result<(), String> {
        for c in classes {
            if let Some(allowed) = &self.allowed {
                if c.name != ptth_proto::setup::DEFAULT_CLASS && !allowed.contains(&c.name) {
                    return Err(format!("class {:?} is not allowed here (allowed: {})", c.name, allowed.join(", ")));
                }
            }
            if c.urgency < self.most_urgent {
                return Err(format!(
                    "class {}: urgency u={} is more urgent than this lb allows (u={} at most)",
                    c.name, c.urgency, self.most_urgent
                ));
            }
            if let Some(l) = c.limit.filter(|&l| l > self.max_limit) {
                return Err(format!("class {}: limit {l} is above this lb's cap of {}", c.name, self.max_limit));
            }
            if let Some(w) = c.wait_ms.filter(|&w| u128::from(w) > max_wait.as_millis()) {
                return Err(format!(
                    "class {}: wait={w} ms is longer than this lb lets a request wait (queue.max_wait_ms = {})",
                    c.name,
                    max_wait.as_millis()
                ));
            }
        }
        Ok(())
    }
}

/// The validated `[forwarding]` section.
#[derive(Debug, Clone, Default)]
pub struct ForwardingPolicy {
    /// (network, prefix length) pairs.
    pub trusted: Vec<(std::net::IpAddr, u8)>,
    pub x_forwarded: bool,
}

impl ForwardingPolicy {
    /// True when `ip` is inside one of the trusted blocks.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.trusted.iter().any(|&(net, len)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), len),
            _ => false,
        })
    }

    fn parse(f: ForwardingFile) -> Result<ForwardingPolicy, ConfigError> {
        let key = "forwarding.trusted_proxies";
        let mut trusted = Vec::new();
        for s in f.trusted_proxies.unwrap_or_default() {
            let (addr, len) = match s.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (s.as_str(), None),
            };
            let ip: std::net::IpAddr =
                addr.parse().map_err(|_| cerr(key, format!("expected an IP or CIDR block such as 10.0.0.0/8, got {s:?}")))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                None => max,
                Some(l) => l
                    .parse::<u8>()
                    .ok()
                    .filter(|&l| l <= max)
                    .ok_or_else(|| cerr(key, format!("prefix length of {s:?} must be 0 to {max}")))?,
            };
            trusted.push((ip, len));
        }
        Ok(ForwardingPolicy { trusted, x_forwarded: f.x_forwarded.unwrap_or(false) })
    }
}

fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let (whole, bits) = (usize::from(len / 8), len % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    bits == 0 || (a[whole] ^ b[whole]) >> (8 - bits) == 0
}

/// A per-core profile file; every key optional so a profile can overlay the
/// built-in one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    #[serde(default)]
    pub runtime: RuntimeFile,
    #[serde(default)]
    pub buffers: BuffersFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub queue: QueueFile,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    #[serde(default)]
    pub h2: H2File,
    #[serde(default)]
    pub health: HealthFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct H2File {
    pub max_streams: Option<u32>,
    pub stream_window: Option<u32>,
    pub connection_window: Option<u32>,
    pub ping_ms: Option<u64>,
    pub ping_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFile {
    pub cores: Option<usize>,
    pub pin: Option<bool>,
    pub driver: Option<String>,
    pub ring_flags: Option<String>,
    pub ring_entries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuffersFile {
    pub client_read: Option<usize>,
    pub tunnel_read: Option<usize>,
    pub replay_max: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_request_line: Option<usize>,
    pub max_head: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_clients: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub consecutive_failures: Option<u32>,
    pub ejection_ms: Option<u64>,
    pub max_ejection_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    pub max_waiting: Option<usize>,
    pub max_wait_ms: Option<u64>,
    pub retry_after_s: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    pub header_ms: Option<u64>,
    pub keepalive_ms: Option<u64>,
    pub response_ms: Option<u64>,
    pub io_ms: Option<u64>,
    pub handshake_ms: Option<u64>,
    pub drain_ms: Option<u64>,
    pub route_hold_ms: Option<u64>,
}

macro_rules! overlay {
    ($base:expr, $top:expr, $($field:ident),+) => {
        $( if $top.$field.is_some() { $base.$field = $top.$field; } )+
    };
}

impl ProfileFile {
    /// Keys set in `top` replace those of `self`.
    pub fn overlay(mut self, top: ProfileFile) -> ProfileFile {
        overlay!(self.runtime, top.runtime, cores, pin, driver, ring_flags, ring_entries);
        overlay!(self.buffers, top.buffers, client_read, tunnel_read, replay_max);
        overlay!(self.limits, top.limits, max_request_line, max_head, max_headers, max_clients);
        overlay!(self.queue, top.queue, max_waiting, max_wait_ms, retry_after_s);
        overlay!(self.timeouts, top.timeouts, header_ms, keepalive_ms, response_ms, io_ms, handshake_ms, drain_ms, route_hold_ms);
        overlay!(self.h2, top.h2, max_streams, stream_window, connection_window, ping_ms, ping_timeout_ms);
        overlay!(self.health, top.health, consecutive_failures, ejection_ms, max_ejection_ms);
        self
    }
}

/// Which origins workers may claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    Any,
    /// Allowed origins, as `Origin` values.
    Only(Vec<ptth_proto::setup::Origin>),
}

/// The validated per-core profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Cores to run; resolved against the CPUs allowed at start.
    pub cores: usize,
    pub pin: bool,
    pub runtime: RuntimeSpec,
    pub client_read: usize,
    pub tunnel_read: usize,
    /// Request bodies up to this size are held whole for replay.
    pub replay_max: usize,
    pub limits: Limits,
    /// Client connections one core serves at once; past it, new ones are shed.
    pub max_clients: u64,
    pub queue_max: usize,
    pub queue_wait: Duration,
    pub retry_after_s: u32,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub response_timeout: Duration,
    pub io_timeout: Duration,
    pub handshake_timeout: Duration,
    pub drain_timeout: Duration,
    /// How long a departed worker's path prefixes stay reserved.
    pub route_hold: Duration,
    pub health: HealthPolicy,
    /// SETTINGS_MAX_CONCURRENT_STREAMS offered to h2 clients.
    pub h2_max_streams: u32,
    /// Flow-control windows on h2 connections (clients and tunnels).
    pub h2_windows: ptth_proto::rt::h2io::Windows,
    /// How often the lb PINGs each h2 tunnel.
    pub ping_every: Duration,
    /// How long a PING may go unanswered before the tunnel is closed.
    pub ping_timeout: Duration,
}

/// Everything the lb runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub client_listen: Vec<SocketAddr>,
    /// TLS client listeners (served with `tls_certs`).
    pub client_tls_listen: Vec<SocketAddr>,
    /// Certificates for the TLS listeners, the default first.
    pub tls_certs: Vec<crate::tls::CertSpec>,
    /// Named worker identities (`[[identities]]`).
    pub identities: Vec<crate::tunnel::identity::Identity>,
    /// Worker certificates on the tunnel listener (`tunnel.client_ca`).
    pub worker_certs: crate::tls::WorkerCerts,
    pub tunnel_listen: SocketAddr,
    /// TLS on the tunnel listener; `None`: on unless it is on loopback.
    pub tunnel_tls: Option<bool>,
    /// `tunnel.insecure_cleartext`.
    pub insecure_cleartext: bool,
    pub admin_listen: Option<SocketAddr>,
    pub token: Option<String>,
    pub origins: OriginPolicy,
    pub max_tunnels_per_worker: u32,
    pub max_tunnels_per_peer: u32,
    pub max_tunnels: u32,
    pub forwarding: ForwardingPolicy,
    pub classes: ClassPolicy,
    /// `[routes] reserved`: prefixes reserved for good.
    pub reserved_routes: Vec<String>,
    pub profile: Profile,
    /// The profile file read over the built-in one, if any.
    pub profile_file: Option<PathBuf>,
    /// `[log] level`: the event filter (`RUST_LOG` syntax).
    pub log_level: String,
    /// `--share-listeners`: bind the client and tunnel ports even when
    /// another process holds them (SO_REUSEPORT), to restart beside it.
    pub share_listeners: bool,
    /// Print nothing but errors.
    pub quiet: bool,
}

/// A configuration error: which key or flag, where it was set (file and
/// line, when it came from a file), and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The key or flag; empty for a TOML syntax error outside any key.
    pub key: String,
    pub what: String,
    /// `FILE line N` (or `FILE` when the line is unknown); `None` for flags.
    pub at: Option<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for part in [self.at.as_deref(), Some(self.key.as_str()).filter(|k| !k.is_empty())].into_iter().flatten() {
            write!(f, "{part}: ")?;
        }
        f.write_str(&self.what)
    }
}

fn cerr(key: &str, what: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_string(), what: what.into(), at: None }
}

impl ConfigError {
    pub fn new(key: &str, what: impl Into<String>) -> ConfigError {
        cerr(key, what)
    }

    /// Says where the key was set: the line of `file` (named `name`) that
    /// sets it, or just the file.
    pub fn in_file(mut self, name: &str, text: &str) -> ConfigError {
        if self.at.is_none() {
            self.at = Some(match locate::line_of(text, &self.key) {
                Some(l) => format!("{name} line {l}"),
                None => name.to_string(),
            });
        }
        self
    }
}

/// Parses TOML text; an error names the file, the line, and the key that
/// line sets where there is one.
pub fn parse_toml<T: serde::de::DeserializeOwned>(name: &str, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
        let what = e.message().lines().next().unwrap_or("invalid TOML").to_string();
        let key = line.and_then(|l| locate::key_at(text, l)).unwrap_or_default();
        ConfigError { key, what, at: Some(line.map_or(name.to_string(), |l| format!("{name} line {l}"))) }
    })
}

impl Config {
    /// Whether the tunnel listener runs TLS, and the refusal when the
    /// choice would leave a routable listener in cleartext unasked.
    pub fn tunnel_tls(&self) -> Result<bool, ConfigError> {
        let routable = !self.tunnel_listen.ip().is_loopback();
        let tls = self.tunnel_tls.unwrap_or(routable);
        if tls && self.tls_certs.is_empty() {
            let why = if self.tunnel_tls.is_some() { "tunnel.tls = \"on\"" } else { "a tunnel listener off loopback" };
            return Err(cerr(
                "tunnel.tls",
                format!("{why} ({}) needs a certificate: [[tls.certificates]] in the config, or --tls-cert and --tls-key; or tunnel.tls = \"off\" with tunnel.insecure_cleartext = true", self.tunnel_listen),
            ));
        }
        if !tls && routable && !self.insecure_cleartext {
            return Err(cerr(
                "tunnel.tls",
                format!("the tunnel listener {} is not on loopback: workers' tokens and requests would cross the network in cleartext. Give it TLS (tunnel.tls = \"on\" with [[tls.certificates]]), or set tunnel.insecure_cleartext = true (--insecure-cleartext-tunnels) to accept that", self.tunnel_listen),
            ));
        }
        Ok(tls)
    }
}

/// One `[[identities]]` entry, validated; errors name `identities[i].key`.
fn identity(
    i: usize,
    f: IdentityFile,
    origins: &OriginPolicy,
    classes: &ClassPolicy,
) -> Result<crate::tunnel::identity::Identity, ConfigError> {
    use crate::tunnel::identity::{digest, parse_digest, Grant, Identity};
    let key = |k: &str| format!("identities[{i}].{k}");
    if !(1..=64).contains(&f.name.len()) || !f.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        return Err(cerr(&key("name"), format!("{:?}: expected 1 to 64 of A-Z a-z 0-9 - _ .", f.name)));
    }
    let cert_names = f.cert_names.unwrap_or_default();
    if cert_names.iter().any(|n| n.is_empty() || n == "*") {
        return Err(cerr(&key("cert_names"), "each is a name, or a prefix ending in * (not * alone)"));
    }
    let d = match (&f.token, &f.token_sha256) {
        (Some(t), None) if t.len() >= 16 && t.bytes().all(|b| b.is_ascii_graphic()) => Some(digest(t.as_bytes())),
        (Some(_), None) => return Err(cerr(&key("token"), "expected at least 16 printable ASCII characters without spaces")),
        (None, Some(h)) => {
            Some(parse_digest(h).ok_or_else(|| cerr(&key("token_sha256"), "expected 64 hex digits (sha256sum of the token)"))?)
        }
        (None, None) if !cert_names.is_empty() => None,
        _ => return Err(cerr(&key("token"), "give one of token or token_sha256 (or cert_names)")),
    };
    let origins = match f.origins {
        None => origins.clone(),
        Some(list) if list.iter().any(|o| o == "*") => OriginPolicy::Any,
        Some(list) => OriginPolicy::Only(
            list.iter().map(|o| ptth_proto::setup::Origin::parse(o).map_err(|e| cerr(&key("origins"), e))).collect::<Result<_, _>>()?,
        ),
    };
    if let Some(r) = f.routes.iter().flatten().find(|r| !ptth_proto::setup::is_route_prefix(r)) {
        return Err(cerr(&key("routes"), format!("{r:?}: each is a path prefix starting with '/', without spaces")));
    }
    let classes = ClassPolicy::parse(ClassesFile {
        allowed: f.classes.or_else(|| classes.allowed.clone()),
        most_urgent: Some(f.most_urgent.unwrap_or(classes.most_urgent)),
        max_limit: Some(f.max_limit.unwrap_or(classes.max_limit)),
    })
    .map_err(|e| ConfigError { key: e.key.replace("classes.", &key("")), ..e })?;
    let worker_ids = match f.worker_ids {
        None => Some(Grant::default_ids(&f.name)),
        Some(list) if list.iter().any(|p| p == "*") => None,
        Some(list) => Some(list),
    };
    let grant = Grant {
        origins,
        routes: f.routes,
        classes,
        max_tunnels: range(&key("max_tunnels"), Some(f.max_tunnels.unwrap_or(1024)), 1, 1 << 20)?,
        worker_ids,
    };
    let mut id = Identity::with_digest(&f.name, d, grant);
    id.cert_names = cert_names;
    Ok(id)
}

/// A DNS name, or `*.` followed by one (RFC 6125 §6.4.3: the wildcard is
/// the whole left-most label).
fn is_sni_pattern(n: &str) -> bool {
    let name = n.strip_prefix("*.").unwrap_or(n);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

pub fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| cerr(key, format!("expected IP:PORT such as 127.0.0.1:8080, got {s:?}")))
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(key: &str, v: Option<T>, lo: T, hi: T) -> Result<T, ConfigError> {
    let v = v.ok_or_else(|| cerr(key, "missing from the profile"))?;
    if v < lo || v > hi {
        return Err(cerr(key, format!("expected {lo} to {hi}, got {v}")));
    }
    Ok(v)
}

fn ms(key: &str, v: Option<u64>) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(range(key, v, 1, 86_400_000)?))
}

impl TryFrom<ProfileFile> for Profile {
    type Error = ConfigError;
    fn try_from(f: ProfileFile) -> Result<Profile, ConfigError> {
        let r = &f.runtime;
        let driver = r.driver.as_deref().unwrap_or("auto");
        let driver =
            DriverChoice::parse(driver).ok_or_else(|| cerr("runtime.driver", format!("expected auto, uring or legacy, got {driver:?}")))?;
        let flags = r.ring_flags.as_deref().unwrap_or("coop_taskrun");
        let flags = RingFlags::parse(flags)
            .ok_or_else(|| cerr("runtime.ring_flags", format!("expected coop_taskrun, defer_taskrun or none, got {flags:?}")))?;
        // What a worker accepts, less what the lb adds to a forwarded head:
        // a request within the lb's limits is always within the worker's.
        let (peer, reserve) = (ptth_proto::h1::TUNNEL_LIMITS, ptth_proto::h1::FORWARD_RESERVE);
        let limits = Limits {
            max_request_line: range("limits.max_request_line", f.limits.max_request_line, 256, peer.max_request_line)?,
            max_head: range("limits.max_head", f.limits.max_head, 1024, peer.max_head - reserve.max_head)?,
            max_headers: range("limits.max_headers", f.limits.max_headers, 8, peer.max_headers - reserve.max_headers)?,
        };
        let client_read = range("buffers.client_read", f.buffers.client_read, 4096, 16 << 20)?;
        if client_read < limits.max_head {
            return Err(cerr("buffers.client_read", format!("must be at least limits.max_head ({})", limits.max_head)));
        }
        Ok(Profile {
            cores: range("runtime.cores", r.cores, 0, 1024)?,
            pin: r.pin.unwrap_or(true),
            runtime: RuntimeSpec { driver, flags, entries: range("runtime.ring_entries", r.ring_entries, 256, 32768)? },
            client_read,
            tunnel_read: range("buffers.tunnel_read", f.buffers.tunnel_read, 4096, 16 << 20)?,
            replay_max: range("buffers.replay_max", f.buffers.replay_max, 0, client_read)?,
            limits,
            max_clients: range("limits.max_clients", f.limits.max_clients, 1, 1 << 20)?,
            queue_max: range("queue.max_waiting", f.queue.max_waiting, 0, 1 << 20)?,
            queue_wait: ms("queue.max_wait_ms", f.queue.max_wait_ms)?,
            retry_after_s: range("queue.retry_after_s", f.queue.retry_after_s, 0, 3600)?,
            header_timeout: ms("timeouts.header_ms", f.timeouts.header_ms)?,
            keepalive_timeout: ms("timeouts.keepalive_ms", f.timeouts.keepalive_ms)?,
            response_timeout: ms("timeouts.response_ms", f.timeouts.response_ms)?,
            io_timeout: ms("timeouts.io_ms", f.timeouts.io_ms)?,
            handshake_timeout: ms("timeouts.handshake_ms", f.timeouts.handshake_ms)?,
            drain_timeout: ms("timeouts.drain_ms", f.timeouts.drain_ms)?,
            route_hold: ms("timeouts.route_hold_ms", f.timeouts.route_hold_ms)?,
            health: HealthPolicy {
                consecutive_failures: range("health.consecutive_failures", f.health.consecutive_failures, 0, 1_000_000)?,
                ejection: ms("health.ejection_ms", f.health.ejection_ms)?,
                max_ejection: ms("health.max_ejection_ms", f.health.max_ejection_ms)?,
            },
            h2_max_streams: range("h2.max_streams", f.h2.max_streams, 1, 65536)?,
            // RFC 9113 §6.9.1: windows are at most 2^31-1; below 64 KiB they stall.
            h2_windows: ptth_proto::rt::h2io::Windows {
                stream: range("h2.stream_window", f.h2.stream_window, 65535, i32::MAX as u32)?,
                connection: range("h2.connection_window", f.h2.connection_window, 65535, i32::MAX as u32)?,
            },
            ping_every: ms("h2.ping_ms", f.h2.ping_ms)?,
            ping_timeout: ms("h2.ping_timeout_ms", f.h2.ping_timeout_ms)?,
        })
    }
}

impl Profile {
    /// The built-in profile with `overlay` (a profile file's text) on top.
    pub fn load(overlay: Option<(&str, &str)>) -> Result<Profile, ConfigError> {
        let base: ProfileFile = parse_toml("tuning/default.toml", DEFAULT_PROFILE)?;
        let merged = match overlay {
            Some((name, text)) => base.overlay(parse_toml(name, text)?),
            None => base,
        };
        Profile::try_from(merged)
    }
}

/// The files a config is read from: kept, so that a reload reads the same
/// ones again.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--profile FILE` (relative to the working directory); without it, the
    /// config file's `profile` key (relative to that file).
    pub profile: Option<PathBuf>,
}

fn read_file(path: &Path, key: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| cerr(key, format!("{}: {e}", path.display())))
}

impl Sources {
    /// Reads and validates the files; every error names the key, and the
    /// file and line that set it.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let (file, text, name) = match &self.config {
            Some(p) => {
                let name = p.display().to_string();
                let text = read_file(p, "--config")?;
                let mut f: ConfigFile = parse_toml(&name, &text)?;
                // Paths in the file are relative to the file.
                f.dir = Some(p.parent().map_or_else(PathBuf::new, Path::to_path_buf));
                (f, text, name)
            }
            None => (ConfigFile::default(), String::new(), String::new()),
        };
        let profile_path = match (&self.profile, &file.profile) {
            (Some(p), _) => Some((p.clone(), "--profile", None)),
            (None, Some(p)) => Some((file.resolve(p), "profile", Some((&name, &text)))),
            (None, None) => None,
        };
        let profile_file = profile_path.as_ref().map(|(p, _, _)| p.clone());
        let profile = match profile_path {
            Some((path, key, from)) => {
                let ptext = read_file(&path, key).map_err(|e| match from {
                    Some((n, t)) => e.in_file(n, t),
                    None => e,
                })?;
                let pname = path.display().to_string();
                Profile::load(Some((&pname, &ptext))).map_err(|e| e.in_file(&pname, &ptext))?
            }
            None => Profile::load(None)?,
        };
        let mut c = Config::from_file(file, profile).map_err(|e| if self.config.is_some() { e.in_file(&name, &text) } else { e })?;
        c.profile_file = profile_file;
        Ok(c)
    }
}

impl ConfigFile {
    /// A path named in this file: relative ones are taken from the file's
    /// directory.
    pub fn resolve(&self, p: &str) -> PathBuf {
        match &self.dir {
            Some(d) if Path::new(p).is_relative() => d.join(p),
            _ => PathBuf::from(p),
        }
    }
}

impl Config {
    /// Builds the config from a config file (already parsed, may be default)
    /// and a profile.
    pub fn from_file(f: ConfigFile, profile: Profile) -> Result<Config, ConfigError> {
        let client = f.listen.client.unwrap_or_else(|| vec![DEFAULT_CLIENT_LISTEN.into()]);
        if client.is_empty() {
            return Err(cerr("listen.client", "at least one client listener is needed"));
        }
        let client_listen = client.iter().map(|a| parse_addr("listen.client", a)).collect::<Result<Vec<_>, _>>()?;
        let client_tls_listen =
            f.listen.client_tls.unwrap_or_default().iter().map(|a| parse_addr("listen.client_tls", a)).collect::<Result<Vec<_>, _>>()?;
        let resolver = ConfigFile { dir: f.dir.clone(), ..ConfigFile::default() };
        let path = |p: &str| resolver.resolve(p);
        let tls_certs: Vec<crate::tls::CertSpec> = f
            .tls
            .certificates
            .unwrap_or_default()
            .into_iter()
            .map(|c| crate::tls::CertSpec { cert: path(&c.cert), key: path(&c.key), names: c.names.unwrap_or_default() })
            .collect();
        if let Some(n) = tls_certs.iter().flat_map(|c| &c.names).find(|n| !is_sni_pattern(n)) {
            return Err(cerr("tls.certificates.names", format!("{n:?}: expected a DNS name such as app.example.com, or *.example.com")));
        }
        let tunnel_listen = parse_addr("listen.tunnel", f.listen.tunnel.as_deref().unwrap_or(DEFAULT_TUNNEL_LISTEN))?;
        let admin_listen = match f.listen.admin.as_deref() {
            Some("") => None,
            a => Some(parse_addr("listen.admin", a.unwrap_or(DEFAULT_ADMIN_LISTEN))?),
        };
        let origins = match f.tunnel.allowed_origins {
            None => OriginPolicy::Any,
            Some(list) if list.iter().any(|o| o == "*") => OriginPolicy::Any,
            Some(list) => OriginPolicy::Only(
                list.iter()
                    .map(|o| ptth_proto::setup::Origin::parse(o).map_err(|e| cerr("tunnel.allowed_origins", e)))
                    .collect::<Result<_, _>>()?,
            ),
        };
        let token = f.tunnel.token.filter(|t| !t.is_empty());
        if let Some(t) = &token {
            if !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(cerr("tunnel.token", "must be printable ASCII without spaces"));
            }
        }
        let origins_default = origins.clone();
        let classes_default = ClassPolicy::parse(ClassesFile {
            allowed: f.classes.allowed.clone(),
            most_urgent: f.classes.most_urgent,
            max_limit: f.classes.max_limit,
        })?;
        let identities = f
            .identities
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, id)| identity(i, id, &origins_default, &classes_default))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in identities.iter().enumerate() {
            if identities[..i].iter().any(|b| b.name == a.name) {
                return Err(cerr(&format!("identities[{i}].name"), format!("{:?} is used twice", &*a.name)));
            }
        }
        let tunnel_tls = match f.tunnel.tls.as_deref() {
            None => None,
            Some("on") => Some(true),
            Some("off") => Some(false),
            Some(other) => return Err(cerr("tunnel.tls", format!("expected \"on\" or \"off\", got {other:?}"))),
        };
        Ok(Config {
            client_listen,
            client_tls_listen,
            tls_certs,
            identities,
            worker_certs: crate::tls::WorkerCerts {
                ca: f.tunnel.client_ca.as_deref().map(path),
                required: f.tunnel.require_client_cert.unwrap_or(false),
            },
            tunnel_listen,
            tunnel_tls,
            insecure_cleartext: f.tunnel.insecure_cleartext.unwrap_or(false),
            admin_listen,
            token,
            origins,
            max_tunnels_per_worker: range(
                "tunnel.max_tunnels_per_worker",
                Some(f.tunnel.max_tunnels_per_worker.unwrap_or(1024)),
                1,
                1 << 20,
            )?,
            max_tunnels_per_peer: range("tunnel.max_tunnels_per_peer", Some(f.tunnel.max_tunnels_per_peer.unwrap_or(4096)), 1, 1 << 20)?,
            max_tunnels: range("tunnel.max_tunnels", Some(f.tunnel.max_tunnels.unwrap_or(16384)), 1, 1 << 24)?,
            forwarding: ForwardingPolicy::parse(f.forwarding)?,
            classes: ClassPolicy::parse(f.classes)?,
            reserved_routes: {
                let list = f.routes.reserved.unwrap_or_default();
                if let Some(r) = list.iter().find(|r| !ptth_proto::setup::is_route_prefix(r)) {
                    return Err(cerr("routes.reserved", format!("{r:?}: each is a path prefix starting with '/', without spaces")));
                }
                list
            },
            profile,
            profile_file: None,
            log_level: {
                let level = f.log.level.unwrap_or_else(|| "info".into());
                ptth_proto::rt::logging::check_filter(&level).map_err(|e| cerr("log.level", e))?;
                level
            },
            share_listeners: false,
            quiet: false,
        })
    }

    /// Defaults everywhere, listeners on 127.0.0.1 with ephemeral ports (for
    /// tests and the demo).
    pub fn ephemeral() -> Config {
        let mut c = Config::from_file(ConfigFile::default(), Profile::load(None).expect("built-in profile is valid"))
            .expect("default config is valid");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        c.client_listen = vec![any];
        c.tunnel_listen = any;
        c.admin_listen = Some(any);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_profile_sets_every_key() {
        let f: ProfileFile = parse_toml("default", DEFAULT_PROFILE).unwrap();
        let r = &f.runtime;
        assert!(r.cores.is_some() && r.pin.is_some() && r.driver.is_some() && r.ring_flags.is_some() && r.ring_entries.is_some());
        assert!(f.buffers.client_read.is_some() && f.buffers.tunnel_read.is_some() && f.buffers.replay_max.is_some());
        assert!(f.limits.max_request_line.is_some() && f.limits.max_head.is_some() && f.limits.max_headers.is_some());
        assert!(f.limits.max_clients.is_some());
        assert!(f.queue.max_waiting.is_some() && f.queue.max_wait_ms.is_some() && f.queue.retry_after_s.is_some());
        let t = &f.timeouts;
        assert!(t.header_ms.is_some() && t.keepalive_ms.is_some() && t.response_ms.is_some());
        assert!(t.io_ms.is_some() && t.handshake_ms.is_some() && t.drain_ms.is_some() && t.route_hold_ms.is_some());
        assert!(f.h2.max_streams.is_some() && f.h2.ping_ms.is_some() && f.h2.ping_timeout_ms.is_some());
        assert!(f.h2.stream_window.is_some() && f.h2.connection_window.is_some());
        let h = &f.health;
        assert!(h.consecutive_failures.is_some() && h.ejection_ms.is_some() && h.max_ejection_ms.is_some());
        Profile::try_from(f).unwrap();
    }

    #[test]
    fn every_tuning_profile_loads() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tuning");
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&p).unwrap();
                Profile::load(Some((p.to_str().unwrap(), &text))).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            }
        }
    }

    #[test]
    fn example_config_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/lb.example.toml");
        let c = Sources { config: Some(path.into()), profile: None }.load().unwrap();
        assert_eq!(c.profile.cores, 2, "its profile, found relative to the file");
        assert!(matches!(c.origins, OriginPolicy::Only(ref o) if o.len() == 2));
        assert!(c.token.is_some());
    }

    /// Writes `files` into a fresh directory and returns it.
    fn dir_with(files: &[(&str, &str)]) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "ptth-config-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        for (name, text) in files {
            std::fs::write(d.join(name), text).unwrap();
        }
        d
    }

    #[test]
    fn errors_name_the_key_the_file_and_the_line() {
        let load = |files: &[(&str, &str)]| {
            let d = dir_with(files);
            Sources { config: Some(d.join("lb.toml")), profile: None }
                .load()
                .map(|_| ())
                .unwrap_err()
                .to_string()
                .replace(&d.display().to_string(), "D")
        };
        // The profile's path is relative to the config file, and a missing
        // one blames the config's `profile` key, not a flag never passed.
        assert_eq!(
            load(&[("lb.toml", "# x\nprofile = \"nowhere.toml\"\n")]),
            "D/lb.toml line 2: profile: D/nowhere.toml: No such file or directory (os error 2)"
        );
        // A range error in the profile: its file and line.
        assert_eq!(
            load(&[("lb.toml", "profile = \"p.toml\"\n"), ("p.toml", "[timeouts]\n\nheader_ms = 0\n")]),
            "D/p.toml line 3: timeouts.header_ms: expected 1 to 86400000, got 0"
        );
        // A wrong type: the parser's position, and the key on that line.
        let e = load(&[("lb.toml", "[tunnel]\nmax_tunnels = \"many\"\n")]);
        assert!(e.starts_with("D/lb.toml line 2: tunnel.max_tunnels: invalid type: string"), "{e}");
        // A validation error in the config file.
        assert_eq!(
            load(&[("lb.toml", "[[identities]]\nname = \"a\"\ntoken = \"0123456789abcdef\"\n[[identities]]\nname = \"b c\"\n")]),
            "D/lb.toml line 5: identities[1].name: \"b c\": expected 1 to 64 of A-Z a-z 0-9 - _ ."
        );
        // An unknown key.
        let e = load(&[("lb.toml", "[listen]\nclinet = [\"127.0.0.1:1\"]\n")]);
        assert!(e.starts_with("D/lb.toml line 2: listen.clinet: unknown field `clinet`"), "{e}");
    }

    #[test]
    fn tls_certificates_resolve_relative_to_the_config_file() {
        let text = "[listen]\nclient_tls = [\"127.0.0.1:8443\"]\n\n[[tls.certificates]]\ncert = \"certs/lb.pem\"\nkey = \"/abs/lb.key\"\nnames = [\"app.example\", \"*.app.example\"]\n";
        let mut f: ConfigFile = parse_toml("c", text).unwrap();
        f.dir = Some(PathBuf::from("/etc/ptth"));
        let c = Config::from_file(f, Profile::load(None).unwrap()).unwrap();
        assert_eq!(c.client_tls_listen.len(), 1);
        assert_eq!(c.tls_certs[0].cert, PathBuf::from("/etc/ptth/certs/lb.pem"));
        assert_eq!(c.tls_certs[0].key, PathBuf::from("/abs/lb.key"));
        assert_eq!(c.tls_certs[0].names, ["app.example", "*.app.example"]);
        for (names, ok) in [("\"a..b\"", false), ("\"*.*.x\"", false), ("\"x y\"", false), ("\"*.x\"", true)] {
            let t = format!("[[tls.certificates]]\ncert = \"c\"\nkey = \"k\"\nnames = [{names}]\n");
            let r = Config::from_file(parse_toml("c", &t).unwrap(), Profile::load(None).unwrap());
            assert_eq!(r.is_ok(), ok, "{names}: {:?}", r.err());
        }
        let e = parse_toml::<ConfigFile>("c", "[[tls.certificates]]\ncert = \"c\"\n").unwrap_err().to_string();
        assert!(e.contains("key"), "{e}");
    }

    #[test]
    fn identities_parse_with_their_grants_and_errors_name_the_entry() {
        let text = r#"
[tunnel]
allowed_origins = ["https://a.example"]

[[identities]]
name = "billing"
token = "a-long-enough-token-1"
routes = ["/billing/"]
max_tunnels = 8

[[identities]]
name = "payroll"
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
worker_ids = ["*"]
origins = ["*"]
"#;
        let c = Config::from_file(parse_toml("c", text).unwrap(), Profile::load(None).unwrap()).unwrap();
        assert_eq!(c.identities.len(), 2);
        let (b, p) = (&c.identities[0], &c.identities[1]);
        assert_eq!(b.grant.max_tunnels, 8);
        assert_eq!(b.grant.worker_ids.as_deref(), Some(&["billing".to_string(), "billing-*".to_string()][..]), "ids under its name");
        assert!(matches!(b.grant.origins, OriginPolicy::Only(ref o) if o.len() == 1), "the lb-wide origins by default");
        assert!(p.grant.worker_ids.is_none() && p.grant.origins == OriginPolicy::Any);
        assert!(crate::identity::find(&c.identities, b"test").is_some_and(|i| &*i.name == "payroll"), "sha256(\"test\")");
        for (entry, key) in [
            ("name = \"x\"\n", "identities[0].token"),
            ("name = \"x\"\ntoken = \"short\"\n", "identities[0].token"),
            ("name = \"x\"\ntoken_sha256 = \"abc\"\n", "identities[0].token_sha256"),
            ("name = \"x y\"\ntoken = \"a-long-enough-token-1\"\n", "identities[0].name"),
            ("name = \"x\"\ntoken = \"a-long-enough-token-1\"\nroutes = [\"api\"]\n", "identities[0].routes"),
            ("name = \"x\"\ntoken = \"a-long-enough-token-1\"\nmost_urgent = 9\n", "identities[0].most_urgent"),
        ] {
            let e = Config::from_file(parse_toml("c", &format!("[[identities]]\n{entry}")).unwrap(), Profile::load(None).unwrap())
                .expect_err(entry);
            assert_eq!(e.key, key, "{entry}: {e}");
        }
        let twice = "[[identities]]\nname = \"x\"\ntoken = \"a-long-enough-token-1\"\n[[identities]]\nname = \"x\"\ntoken = \"a-long-enough-token-2\"\n";
        let e = Config::from_file(parse_toml("c", twice).unwrap(), Profile::load(None).unwrap()).unwrap_err();
        assert_eq!(e.key, "identities[1].name");
    }

    #[test]
    fn trusted_proxies() {
        let f: ConfigFile =
            parse_toml("c", "[forwarding]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]\n").unwrap();
        let c = Config::from_file(f, Profile::load(None).unwrap()).unwrap();
        let t = |s: &str| c.forwarding.trusts(s.parse().unwrap());
        assert!(t("10.1.2.3") && t("192.0.2.7") && t("2001:db8::1") && t("::ffff:10.9.9.9"));
        assert!(!t("11.0.0.1") && !t("192.0.2.8") && !t("2001:db9::1"));
        let f: ConfigFile = parse_toml("c", "[forwarding]\ntrusted_proxies = [\"10.0.0.0/33\"]\n").unwrap();
        assert_eq!(Config::from_file(f, Profile::load(None).unwrap()).unwrap_err().key, "forwarding.trusted_proxies");
    }

    #[test]
    fn overlay_and_errors_name_the_key() {
        let p = Profile::load(Some(("p", "[queue]\nmax_wait_ms = 7\n"))).unwrap();
        assert_eq!(p.queue_wait, Duration::from_millis(7));
        assert_eq!(p.io_timeout, Duration::from_secs(60));
        let e = Profile::load(Some(("p", "[queue]\nmax_wait = 7\n"))).unwrap_err();
        assert!(e.to_string().contains("p line 2") && e.to_string().contains("max_wait"), "{e}");
        let e = Profile::load(Some(("p", "[runtime]\nring_flags = \"sqpoll\"\n"))).unwrap_err();
        assert_eq!(e.key, "runtime.ring_flags");
        let e = Profile::load(Some(("p", "[buffers]\nclient_read = 8192\n"))).unwrap_err();
        assert_eq!(e.key, "buffers.client_read");
        let e = Profile::load(Some(("p", "[limits]\nmax_headers = 128\n"))).unwrap_err();
        assert_eq!(e.key, "limits.max_headers");
        let f: ConfigFile = parse_toml("c", "[tunnel]\nallowed_origins = [\"ftp://x\"]\n").unwrap();
        assert_eq!(Config::from_file(f, Profile::load(None).unwrap()).unwrap_err().key, "tunnel.allowed_origins");
    }
}
