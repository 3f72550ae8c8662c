//! PTTH tunnel setup (draft-kazuho-ptth-ptth-01 §3), both directions, sans-IO.
//!
//! Place in the request path: before any request flows, a worker opens a TCP
//! connection to the lb's tunnel listener and sends a setup request built by
//! [`write_setup_request`]; the lb parses it with [`SetupRequest::parse`],
//! authorizes it, and answers with [`write_accept`] (`101`) or [`write_reject`].
//! The worker reads that answer with [`SetupResponse::parse`]. After the `101`
//! the connection carries the inner protocol with roles transposed: the lb sends
//! requests, the worker answers them.
//!
//! Our metadata rides in `Tunnel-*` fields as Structured Fields (RFC 9651); the
//! draft defines none, and the prefix keeps clear of the WG's `Ptth-` namespace.

use std::fmt::Write as _;

use crate::error::SetupError;
use crate::h1::{list_items, trim, RequestHead, ResponseHead};
use crate::sf;

/// Path prefix of the setup endpoint (draft-kazuho-ptth-ptth-01 §3: the
/// `ptth` well-known URI suffix).
pub const WELL_KNOWN: &str = "/.well-known/ptth/";
/// Origin list standing for "any origin" (our extension for catch-all workers).
pub const ANY_ORIGIN: &str = "*";

pub const FIELD_WORKER_ID: &str = "Tunnel-Worker-Id";
pub const FIELD_ROUTES: &str = "Tunnel-Routes";
pub const FIELD_WEIGHT: &str = "Tunnel-Weight";
pub const FIELD_MAX_CONCURRENCY: &str = "Tunnel-Max-Concurrency";
pub const FIELD_CLASSES: &str = "Tunnel-Classes";
pub const FIELD_CORE: &str = "Tunnel-Core";
/// On a 5xx response (worker → lb): `?1` when the worker did not pass the
/// request on (its origin was unreachable), so the lb may send it to
/// another worker (docs/PROTOCOL.md §5).
pub const FIELD_UNPROCESSED: &str = "Tunnel-Unprocessed";

/// Whether a worker's response says it did not act on the request: a 5xx
/// with `Tunnel-Unprocessed: ?1`. `field` looks the field up, only for a 5xx
/// (every response passes here; few are 5xx).
pub fn says_unprocessed<'a>(status: u16, field: impl FnOnce() -> Option<&'a [u8]>) -> bool {
    (500..600).contains(&status) && field().is_some_and(sf::is_true)
}
pub const FIELD_CORES: &str = "Tunnel-Cores";

/// Bounds on what a worker may declare.
pub const MAX_ROUTES: usize = 64;
pub const MAX_ROUTE_LEN: usize = 1024;
pub const MAX_ORIGINS: usize = 64;
pub const MAX_WORKER_ID_LEN: usize = 128;
pub const MAX_WEIGHT: u32 = 1000;
pub const MAX_CLASSES: usize = 16;
pub const MAX_CLASS_RULES: usize = 32;
pub const MAX_CLASS_NAME_LEN: usize = 32;
/// Largest class limit a worker can declare (the operator's cap may be lower).
pub const MAX_CLASS_LIMIT: u32 = 1_000_000;
/// Largest class queue bound a worker can declare (the lb's own bound on
/// waiting requests applies as well).
pub const MAX_CLASS_QUEUE: u32 = 1 << 20;
/// Longest class wait a worker can declare, in milliseconds (the lb refuses
/// one above its `queue.max_wait_ms`).
pub const MAX_CLASS_WAIT_MS: u32 = 3_600_000;

/// Which upgrade token the worker used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeToken {
    /// `Upgrade: ptth`, answered with an `ALPN` field (ptth-ptth-01).
    Ptth,
    /// `Upgrade: reverse`, answered with `Selected-ALPN`
    /// (draft-kazuho-httpbis-reverse-tunnel-00, what h2o's reverse listener sends).
    Reverse,
}

impl UpgradeToken {
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeToken::Ptth => "ptth",
            UpgradeToken::Reverse => "reverse",
        }
    }
}

/// The protocol run inside the tunnel after the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InnerProtocol {
    Http11,
    H2,
}

impl InnerProtocol {
    /// The ALPN id percent-encoded as RFC 7639 §2 requires (`/` is not a tchar).
    pub fn alpn_field(self) -> &'static str {
        match self {
            InnerProtocol::Http11 => "http%2F1.1",
            InnerProtocol::H2 => "h2",
        }
    }
    fn from_id(id: &str) -> Option<Self> {
        match id {
            "http/1.1" => Some(InnerProtocol::Http11),
            "h2" => Some(InnerProtocol::H2),
            _ => None,
        }
    }
}

/// An origin (RFC 6454 serialization) a worker claims.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub scheme: String,
    /// Lower-cased host; IPv6 literals keep their brackets.
    pub host: String,
    pub port: u16,
}

impl Origin {
    pub fn parse(s: &str) -> Result<Origin, String> {
        let (scheme, rest) = s.split_once("://").ok_or_else(|| format!("origin {s:?} has no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("origin {s:?}: scheme must be http or https")),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!("origin {s:?} must be scheme://host[:port] without a path"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| format!("origin {s:?}: unclosed IPv6 literal"))?;
            (format!("[{h}]"), after.strip_prefix(':'))
        } else {
            match rest.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._[]:".contains(&b)) {
            return Err(format!("origin {s:?} has an invalid host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| format!("origin {s:?} has an invalid port"))?,
            None => default_port,
        };
        Ok(Origin { scheme, host: host.to_ascii_lowercase(), port })
    }

    /// True when a request's `Host` names this origin. Only the host name is
    /// compared: the lb's listening port rarely equals the origin's public port.
    pub fn matches_host(&self, host: &[u8]) -> bool {
        host_name(host).eq_ignore_ascii_case(self.host.as_bytes())
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let default = matches!((self.scheme.as_str(), self.port), ("http", 80) | ("https", 443));
        if default {
            write!(f, "{}://{}", self.scheme, self.host)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

/// The host name of a `Host` value, without the port.
pub fn host_name(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(i) => &host[..i],
        None => host,
    }
}

/// What origins a tunnel serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Any `Host` (setup path `/.well-known/ptth/*/`, or `Upgrade: reverse`
    /// without a PTTH path).
    Any,
    Origins(Vec<Origin>),
}

/// What the worker declares about itself in the setup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerMeta {
    /// Stable identity; tunnels with the same id count as one worker.
    pub id: Option<String>,
    /// Path prefixes served; empty means every path.
    pub routes: Vec<String>,
    /// Relative share of requests (1..=1000).
    pub weight: u32,
    /// Requests this worker takes at once across all its tunnels and lb cores.
    pub max_concurrency: Option<u32>,
    /// Request classes, in matching order (`Tunnel-Classes`).
    pub classes: Vec<ClassDecl>,
}

impl Default for WorkerMeta {
    fn default() -> Self {
        WorkerMeta { id: None, routes: Vec::new(), weight: 1, max_concurrency: None, classes: Vec::new() }
    }
}

/// The class of requests no declared class matches; a worker may declare it
/// (without rules) to set its urgency or limit.
pub const DEFAULT_CLASS: &str = "default";
/// Urgency of a class that declares none (RFC 9218 §4.1's default).
pub const DEFAULT_URGENCY: u8 = 3;
/// Least urgent level (RFC 9218 §4.1: urgency is 0 to 7, 0 most urgent).
pub const LEAST_URGENT: u8 = 7;

/// A class of requests a worker declares: which requests belong to it, how
/// urgent they are, and how many of them the worker runs at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassDecl {
    /// An sf-key: lowercase letters, digits, `_-.*`, at most 32 characters.
    pub name: String,
    /// RFC 9218 urgency, 0 (most urgent) to 7.
    pub urgency: u8,
    /// Requests of this class the worker runs at once across all its tunnels
    /// and lb cores; `None`: only the worker's overall limit applies.
    pub limit: Option<u32>,
    /// Requests of this class that may wait for room at once, over all lb
    /// cores (`queue=`; 0: never wait); `None`: only the lb's own bound.
    pub queue: Option<u32>,
    /// The longest a request of this class waits for room, in milliseconds
    /// (`wait=`); `None`: the lb's `queue.max_wait_ms`.
    pub wait_ms: Option<u32>,
    /// `adaptive`: the lb estimates the limit from the class's latency, up
    /// to `limit` (which an adaptive class must declare).
    pub adaptive: bool,
    /// A request belongs to the class when any rule matches; empty only for
    /// [`DEFAULT_CLASS`].
    pub rules: Vec<ClassRule>,
}

/// `"METHOD /prefix"` or `"/prefix"` (any method).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRule {
    /// Compared case-sensitively (RFC 9110 §9.1).
    pub method: Option<String>,
    /// Compared against the start of the request's path, as route prefixes are.
    pub prefix: String,
}

impl ClassRule {
    pub fn matches(&self, method: &[u8], path: &[u8]) -> bool {
        self.method.as_ref().is_none_or(|m| m.as_bytes() == method) && path.starts_with(self.prefix.as_bytes())
    }
}

impl std::fmt::Display for ClassRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.method {
            Some(m) => write!(f, "{m} {}", self.prefix),
            None => f.write_str(&self.prefix),
        }
    }
}

/// A path prefix as `Tunnel-Routes`, class rules and the lb's reserved
/// routes take it: starts with `/`, no spaces, at most [`MAX_ROUTE_LEN`] bytes.
pub fn is_route_prefix(p: &str) -> bool {
    p.starts_with('/') && !p.contains(' ') && p.len() <= MAX_ROUTE_LEN
}

/// An sf-key (RFC 9651 §3.1.2) of at most [`MAX_CLASS_NAME_LEN`] characters.
pub fn is_class_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_CLASS_NAME_LEN
        && (b[0].is_ascii_lowercase() || b[0] == b'*')
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c))
}

/// The first declared class (in order) a request belongs to; `None`: the
/// default class.
pub fn classify(classes: &[ClassDecl], method: &[u8], path: &[u8]) -> Option<usize> {
    classes.iter().position(|c| c.rules.iter().any(|r| r.matches(method, path)))
}

/// Parses a `Tunnel-Classes` value (an sf-dictionary, see docs/PROTOCOL.md):
/// `heavy=("POST /report/" "GET /export/");u=6;limit=4, default;u=2`.
/// The error says what to fix.
pub fn parse_classes(v: &[u8]) -> Result<Vec<ClassDecl>, String> {
    use crate::sf::ParamValue;
    let members =
        sf::parse_string_dictionary(v).ok_or("expected an sf-dictionary like heavy=(\"POST /report/\");u=6;limit=4, default;u=3")?;
    if members.len() > MAX_CLASSES {
        return Err(format!("more than {MAX_CLASSES} classes"));
    }
    let mut out = Vec::with_capacity(members.len());
    for m in members {
        let name = m.key;
        if name.len() > MAX_CLASS_NAME_LEN {
            return Err(format!("class {name:?}: names are at most {MAX_CLASS_NAME_LEN} characters"));
        }
        let mut c =
            ClassDecl { name, urgency: DEFAULT_URGENCY, limit: None, queue: None, wait_ms: None, adaptive: false, rules: Vec::new() };
        for (k, v) in &m.params {
            match (k.as_str(), *v) {
                ("u", ParamValue::Integer(u)) if (0..=i64::from(LEAST_URGENT)).contains(&u) => c.urgency = u as u8,
                ("u", _) => return Err(format!("class {}: u (urgency) is an integer from 0 to 7", c.name)),
                ("limit", ParamValue::Integer(n)) if (1..=i64::from(MAX_CLASS_LIMIT)).contains(&n) => c.limit = Some(n as u32),
                ("limit", _) => return Err(format!("class {}: limit is an integer from 1 to {MAX_CLASS_LIMIT}", c.name)),
                ("queue", ParamValue::Integer(n)) if (0..=i64::from(MAX_CLASS_QUEUE)).contains(&n) => c.queue = Some(n as u32),
                ("queue", _) => return Err(format!("class {}: queue is an integer from 0 to {MAX_CLASS_QUEUE}", c.name)),
                ("wait", ParamValue::Integer(n)) if (0..=i64::from(MAX_CLASS_WAIT_MS)).contains(&n) => c.wait_ms = Some(n as u32),
                ("wait", _) => return Err(format!("class {}: wait is an integer from 0 to {MAX_CLASS_WAIT_MS} (milliseconds)", c.name)),
                ("adaptive", ParamValue::True) => c.adaptive = true,
                ("adaptive", _) => return Err(format!("class {}: adaptive takes no value (;adaptive)", c.name)),
                (other, _) => {
                    return Err(format!("class {}: unknown parameter {other:?} (known: u, limit, queue, wait, adaptive)", c.name))
                }
            }
        }
        if c.adaptive && c.limit.is_none() {
            return Err(format!("class {}: an adaptive class declares the most it may reach with limit=N", c.name));
        }
        let rules = m.strings.unwrap_or_default();
        if c.name == DEFAULT_CLASS {
            if !rules.is_empty() {
                return Err(format!("class {DEFAULT_CLASS} takes what no other class matches: declare it without rules (default;u=3)"));
            }
        } else if rules.is_empty() {
            return Err(format!("class {}: list at least one rule, e.g. {}=(\"POST /report/\")", c.name, c.name));
        }
        if rules.len() > MAX_CLASS_RULES {
            return Err(format!("class {}: more than {MAX_CLASS_RULES} rules", c.name));
        }
        for r in rules {
            c.rules.push(parse_rule(&r).map_err(|why| format!("class {}: rule {r:?}: {why}", c.name))?);
        }
        out.push(c);
    }
    Ok(out)
}

fn parse_rule(r: &str) -> Result<ClassRule, &'static str> {
    let (method, prefix) = match r.split_once(' ') {
        Some((m, p)) => (Some(m), p),
        None => (None, r),
    };
    if let Some(m) = method {
        // RFC 9110 §9.1: a method is a token.
        if m.is_empty() || !m.bytes().all(crate::h1::is_tchar) {
            return Err("expected \"METHOD /prefix\" or \"/prefix\"");
        }
    }
    if !is_route_prefix(prefix) {
        return Err("the path prefix starts with '/', has no spaces and is at most 1024 bytes");
    }
    Ok(ClassRule { method: method.map(str::to_string), prefix: prefix.to_string() })
}

/// Serializes classes as a `Tunnel-Classes` value (the inverse of
/// [`parse_classes`]).
pub fn write_classes(classes: &[ClassDecl]) -> String {
    let mut s = String::new();
    for (i, c) in classes.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&c.name);
        if !c.rules.is_empty() {
            s.push_str("=(");
            let rules: Vec<String> = c.rules.iter().filter_map(|r| sf::string(&r.to_string())).collect();
            s.push_str(&rules.join(" "));
            s.push(')');
        }
        let _ = write!(s, ";u={}", c.urgency);
        if let Some(l) = c.limit {
            let _ = write!(s, ";limit={l}");
        }
        if let Some(q) = c.queue {
            let _ = write!(s, ";queue={q}");
        }
        if let Some(w) = c.wait_ms {
            let _ = write!(s, ";wait={w}");
        }
        if c.adaptive {
            s.push_str(";adaptive");
        }
    }
    s
}

/// A parsed setup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupRequest {
    pub token: UpgradeToken,
    pub claim: Claim,
    /// Protocols the worker offered, in its order of preference.
    pub offered: Vec<InnerProtocol>,
    /// The bearer token from `Authorization`, if any.
    pub bearer: Option<String>,
    pub meta: WorkerMeta,
}

impl SetupRequest {
    /// Validates a setup request head (parsed by `h1::parse_request` from `buf`).
    pub fn parse(buf: &[u8], head: &RequestHead) -> Result<SetupRequest, SetupError> {
        let target = std::str::from_utf8(head.target(buf)).map_err(|_| SetupError::Malformed("request target is not ASCII".into()))?;
        let path = target.split('?').next().unwrap_or("");
        let upgrade = head.field(buf, "upgrade").unwrap_or(b"");
        let token = if list_items(upgrade).any(|t| t.eq_ignore_ascii_case(b"ptth")) {
            UpgradeToken::Ptth
        } else if list_items(upgrade).any(|t| t.eq_ignore_ascii_case(b"reverse")) {
            UpgradeToken::Reverse
        } else if path.starts_with(WELL_KNOWN) {
            return Err(SetupError::UpgradeRequired);
        } else {
            return Err(SetupError::NotFound(path.to_string()));
        };
        let claim = match path.strip_prefix(WELL_KNOWN) {
            Some(rest) => parse_claim(rest)?,
            None if token == UpgradeToken::Reverse => Claim::Any,
            None => return Err(SetupError::NotFound(path.to_string())),
        };
        if head.method(buf) != b"GET" {
            return Err(SetupError::Malformed("setup requests use GET".into()));
        }
        if head.version() != crate::h1::Version::Http11 {
            // RFC 9110 §7.8: a server must ignore Upgrade in an HTTP/1.0 request.
            return Err(SetupError::Malformed("setup requests need HTTP/1.1 (Upgrade is ignored in HTTP/1.0)".into()));
        }
        if !head.conn.upgrade {
            return Err(SetupError::Malformed("Connection must list upgrade".into()));
        }
        if head.framing().has_body() {
            return Err(SetupError::Malformed("setup requests have no body".into()));
        }
        let alpn = head.field(buf, "alpn").ok_or_else(|| SetupError::Malformed("missing ALPN field (e.g. ALPN: http%2F1.1)".into()))?;
        let mut offered = Vec::new();
        for item in list_items(alpn) {
            let id = percent_decode(item).ok_or_else(|| SetupError::Malformed("ALPN entry is not valid percent-encoding".into()))?;
            if let Some(p) = InnerProtocol::from_id(&id) {
                offered.push(p);
            }
        }
        let bearer = match single(buf, head, "authorization")? {
            None => None,
            Some(v) => {
                let v = trim(v);
                let tok = v
                    .get(..7)
                    .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
                    .map(|_| trim(&v[7..]))
                    .ok_or_else(|| SetupError::Malformed("Authorization must use the Bearer scheme".into()))?;
                Some(String::from_utf8_lossy(tok).into_owned())
            }
        };
        let meta = parse_meta(buf, head)?;
        Ok(SetupRequest { token, claim, offered, bearer, meta })
    }

    /// The protocol the lb picks among those it `supports`, in the worker's order.
    pub fn choose(&self, supports: &[InnerProtocol]) -> Option<InnerProtocol> {
        self.offered.iter().copied().find(|p| supports.contains(p))
    }
}

fn parse_claim(rest: &str) -> Result<Claim, SetupError> {
    let list = rest.strip_suffix('/').ok_or_else(|| SetupError::Malformed("setup path must end with '/' after the origin list".into()))?;
    if list.is_empty() {
        return Err(SetupError::Malformed("the origin list is empty (use * for any origin)".into()));
    }
    if list == ANY_ORIGIN {
        return Ok(Claim::Any);
    }
    let mut origins = Vec::new();
    for item in list.split(',') {
        let decoded = percent_decode(item.as_bytes())
            .ok_or_else(|| SetupError::Malformed(format!("origin {item:?} is not valid percent-encoding")))?;
        origins.push(Origin::parse(&decoded).map_err(SetupError::Malformed)?);
    }
    if origins.len() > MAX_ORIGINS {
        return Err(SetupError::Malformed(format!("more than {MAX_ORIGINS} origins")));
    }
    Ok(Claim::Origins(origins))
}

/// The value of a field that may appear once: a second line is a 400
/// (for an sf Item, RFC 9651 §4.2: the combined value fails to parse).
fn single<'b>(buf: &'b [u8], head: &RequestHead, name: &str) -> Result<Option<&'b [u8]>, SetupError> {
    let mut lines = head.fields.iter().filter(|f| buf[f.name.clone()].eq_ignore_ascii_case(name.as_bytes()));
    let first = lines.next().map(|f| &buf[f.value.clone()]);
    if lines.next().is_some() {
        return Err(SetupError::Malformed(format!("{name}: appears more than once")));
    }
    Ok(first)
}

/// A List field's lines combined into one value (RFC 9651 §4.2).
fn combined_list(buf: &[u8], head: &RequestHead, name: &str) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for f in head.fields.iter().filter(|f| buf[f.name.clone()].eq_ignore_ascii_case(name.as_bytes())) {
        let v = out.get_or_insert_with(Vec::new);
        if !v.is_empty() {
            v.extend_from_slice(b", ");
        }
        v.extend_from_slice(&buf[f.value.clone()]);
    }
    out
}

fn parse_meta(buf: &[u8], head: &RequestHead) -> Result<WorkerMeta, SetupError> {
    let bad = |f: &str, what: &str| SetupError::Malformed(format!("{f}: {what}"));
    let mut meta = WorkerMeta::default();
    if let Some(v) = single(buf, head, FIELD_WORKER_ID)? {
        let id = sf::parse_string(trim(v)).ok_or_else(|| bad(FIELD_WORKER_ID, "expected an sf-string like \"w-1\""))?;
        if id.is_empty() || id.len() > MAX_WORKER_ID_LEN {
            return Err(bad(FIELD_WORKER_ID, "must be 1 to 128 characters"));
        }
        meta.id = Some(id);
    }
    if let Some(v) = combined_list(buf, head, FIELD_ROUTES) {
        let routes =
            sf::parse_string_list(&v).ok_or_else(|| bad(FIELD_ROUTES, "expected a list of sf-strings like \"/api/\", \"/img/\""))?;
        if routes.len() > MAX_ROUTES {
            return Err(bad(FIELD_ROUTES, "more than 64 routes"));
        }
        for r in &routes {
            if !is_route_prefix(r) {
                return Err(bad(FIELD_ROUTES, "each route is a path prefix starting with '/', without spaces, at most 1024 bytes"));
            }
        }
        meta.routes = routes;
    }
    if let Some(v) = single(buf, head, FIELD_WEIGHT)? {
        meta.weight = sf::parse_integer(trim(v))
            .filter(|w| (1..=i64::from(MAX_WEIGHT)).contains(w))
            .ok_or_else(|| bad(FIELD_WEIGHT, "expected an integer from 1 to 1000"))? as u32;
    }
    if let Some(v) = combined_list(buf, head, FIELD_CLASSES) {
        meta.classes = parse_classes(&v).map_err(|why| bad(FIELD_CLASSES, &why))?;
    }
    if let Some(v) = single(buf, head, FIELD_MAX_CONCURRENCY)? {
        meta.max_concurrency = Some(
            sf::parse_integer(trim(v))
                .filter(|w| (1..=1_000_000).contains(w))
                .ok_or_else(|| bad(FIELD_MAX_CONCURRENCY, "expected an integer from 1 to 1000000"))? as u32,
        );
    }
    Ok(meta)
}

/// Decodes `%XX` escapes; `None` on a bad escape or non-UTF-8 result.
pub fn percent_decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hi = (*s.get(i + 1)? as char).to_digit(16)?;
            let lo = (*s.get(i + 2)? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What a worker puts in its setup request.
#[derive(Debug, Clone)]
pub struct SetupParams<'a> {
    /// `Host` of the lb.
    pub host: &'a str,
    pub claim: &'a Claim,
    pub offer: &'a [InnerProtocol],
    pub token: Option<&'a str>,
    pub meta: &'a WorkerMeta,
}

/// Writes the setup request (draft-kazuho-ptth-ptth-01 §3 with our metadata).
pub fn write_setup_request(out: &mut Vec<u8>, p: &SetupParams<'_>) {
    let mut s = String::new();
    let origins = match p.claim {
        Claim::Any => ANY_ORIGIN.to_string(),
        Claim::Origins(list) => list.iter().map(|o| percent_encode(&o.to_string())).collect::<Vec<_>>().join(","),
    };
    let alpn: Vec<&str> = p.offer.iter().map(|i| i.alpn_field()).collect();
    let _ = write!(
        s,
        "GET {WELL_KNOWN}{origins}/ HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: ptth\r\nALPN: {}\r\n",
        p.host,
        alpn.join(", ")
    );
    if let Some(t) = p.token {
        let _ = write!(s, "Authorization: Bearer {t}\r\n");
    }
    if let Some(id) = p.meta.id.as_deref().and_then(sf::string) {
        let _ = write!(s, "{FIELD_WORKER_ID}: {id}\r\n");
    }
    if !p.meta.routes.is_empty() {
        let routes: Vec<String> = p.meta.routes.iter().filter_map(|r| sf::string(r)).collect();
        let _ = write!(s, "{FIELD_ROUTES}: {}\r\n", routes.join(", "));
    }
    let _ = write!(s, "{FIELD_WEIGHT}: {}\r\n", p.meta.weight);
    if let Some(m) = p.meta.max_concurrency {
        let _ = write!(s, "{FIELD_MAX_CONCURRENCY}: {m}\r\n");
    }
    if !p.meta.classes.is_empty() {
        let _ = write!(s, "{FIELD_CLASSES}: {}\r\n", write_classes(&p.meta.classes));
    }
    s.push_str("\r\n");
    out.extend_from_slice(s.as_bytes());
}

/// The lb's `101` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub token: UpgradeToken,
    pub protocol: InnerProtocol,
    /// The lb core that owns this tunnel, and how many cores the lb runs.
    pub core: u32,
    pub cores: u32,
}

/// Writes the `101 Switching Protocols` that starts the inner protocol.
pub fn write_accept(out: &mut Vec<u8>, a: &Accepted) {
    let mut s = String::with_capacity(160);
    let _ = write!(s, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {}\r\n", a.token.as_str());
    match a.token {
        UpgradeToken::Ptth => {
            let _ = write!(s, "ALPN: {}\r\n", a.protocol.alpn_field());
        }
        UpgradeToken::Reverse => {
            let _ = write!(s, "Selected-ALPN: {}\r\n", a.protocol.alpn_field());
        }
    }
    let _ = write!(s, "{FIELD_CORE}: {}\r\n{FIELD_CORES}: {}\r\n\r\n", a.core, a.cores);
    out.extend_from_slice(s.as_bytes());
}

/// Writes a refusal: `status`, a one-line reason in the body, `Connection: close`.
pub fn write_reject(out: &mut Vec<u8>, status: u16, reason: &str, retry_after: Option<u32>) {
    let mut extra: Vec<(&str, String)> = Vec::new();
    match status {
        401 => extra.push(("WWW-Authenticate", "Bearer realm=\"ptth\"".into())),
        426 => extra.push(("Upgrade", "ptth".into())),
        _ => {}
    }
    if let Some(s) = retry_after {
        extra.push(("Retry-After", s.to_string()));
    }
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = format!("{reason}\n");
    crate::h1::write_simple_response(out, status, crate::h1::reason(status), &extra, "text/plain", body.as_bytes(), true);
}

/// The lb's answer as the worker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupResponse {
    Accepted(Accepted),
    /// Any other status; `retry_after` in seconds when the lb sent one.
    Rejected {
        status: u16,
        retry_after: Option<u32>,
    },
}

impl SetupResponse {
    /// Reads the lb's answer to a setup request that offered `offer`.
    pub fn parse(buf: &[u8], head: &ResponseHead, offer: &[InnerProtocol]) -> Result<SetupResponse, String> {
        if head.status != 101 {
            let retry_after = head.field(buf, "retry-after").and_then(|v| std::str::from_utf8(trim(v)).ok()?.parse().ok());
            return Ok(SetupResponse::Rejected { status: head.status, retry_after });
        }
        let upgrade = head.field(buf, "upgrade").map(trim).unwrap_or(b"");
        let token = if upgrade.eq_ignore_ascii_case(b"ptth") {
            UpgradeToken::Ptth
        } else if upgrade.eq_ignore_ascii_case(b"reverse") {
            UpgradeToken::Reverse
        } else {
            return Err("101 without Upgrade: ptth".into());
        };
        let alpn = head.field(buf, "alpn").or_else(|| head.field(buf, "selected-alpn")).ok_or("101 without an ALPN field")?;
        let id = percent_decode(trim(alpn)).ok_or("101 with an invalid ALPN field")?;
        let protocol =
            InnerProtocol::from_id(&id).filter(|p| offer.contains(p)).ok_or_else(|| format!("lb chose {id:?}, which was not offered"))?;
        let int = |name: &str| head.field(buf, name).and_then(|v| sf::parse_integer(trim(v))).and_then(|v| u32::try_from(v).ok());
        let (core, cores) = match (int(FIELD_CORE), int(FIELD_CORES)) {
            (Some(c), Some(n)) if c < n => (c, n),
            // A PTTH lb that does not place tunnels per core: one pool.
            _ => (0, 1),
        };
        Ok(SetupResponse::Accepted(Accepted { token, protocol, core, cores }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::{parse_request, parse_response, Limits};

    fn setup(s: &str) -> Result<SetupRequest, SetupError> {
        let mut h = RequestHead::default();
        parse_request(s.as_bytes(), &Limits::default(), &mut h).unwrap();
        SetupRequest::parse(s.as_bytes(), &h)
    }

    #[test]
    fn round_trip() {
        let classes = parse_classes(br#"heavy=("POST /report/" "/export/");u=6;limit=4, default;u=2"#).unwrap();
        let meta = WorkerMeta {
            id: Some("w-1".into()),
            routes: vec!["/api/".into(), "/img/".into()],
            weight: 3,
            max_concurrency: Some(8),
            classes,
        };
        let claim = Claim::Origins(vec![Origin::parse("https://API.example.com").unwrap(), Origin::parse("http://b.test:8080").unwrap()]);
        let mut out = Vec::new();
        write_setup_request(
            &mut out,
            &SetupParams {
                host: "lb",
                claim: &claim,
                offer: &[InnerProtocol::H2, InnerProtocol::Http11],
                token: Some("s3cret"),
                meta: &meta,
            },
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /.well-known/ptth/https%3A%2F%2Fapi.example.com,http%3A%2F%2Fb.test%3A8080/ HTTP/1.1\r\n"), "{text}");
        let r = setup(&text).unwrap();
        assert_eq!(r.claim, claim);
        assert_eq!(r.meta, meta);
        assert_eq!(r.bearer.as_deref(), Some("s3cret"));
        assert_eq!(r.choose(&[InnerProtocol::Http11]), Some(InnerProtocol::Http11));
    }

    #[test]
    fn errors_have_their_status() {
        let base = "Host: lb\r\nConnection: Upgrade\r\n";
        let cases = [
            (format!("GET /other HTTP/1.1\r\n{base}\r\n"), 404),
            (format!("GET /.well-known/ptth/*/ HTTP/1.1\r\n{base}\r\n"), 426),
            (format!("GET /.well-known/ptth/*/ HTTP/1.1\r\n{base}Upgrade: ptth\r\n\r\n"), 400),
            (format!("GET /.well-known/ptth/ftp%3A%2F%2Fx/ HTTP/1.1\r\n{base}Upgrade: ptth\r\nALPN: h2\r\n\r\n"), 400),
            (format!("GET /.well-known/ptth/*/ HTTP/1.1\r\n{base}Upgrade: ptth\r\nALPN: h2\r\nTunnel-Weight: 0\r\n\r\n"), 400),
            (format!("GET /.well-known/ptth/*/ HTTP/1.1\r\n{base}Upgrade: ptth\r\nALPN: h2\r\nTunnel-Routes: api\r\n\r\n"), 400),
            (format!("GET /.well-known/ptth/*/ HTTP/1.1\r\n{base}Upgrade: ptth\r\nALPN: h2\r\nTunnel-Weight: 2\r\nTunnel-Weight: 3\r\n\r\n"), 400),
            (format!("GET /.well-known/ptth/*/ HTTP/1.1\r\n{base}Upgrade: ptth\r\nALPN: h2\r\nTunnel-Worker-Id: \"a\"\r\nTunnel-Worker-Id: \"b\"\r\n\r\n"), 400),
            (format!("GET /.well-known/ptth/*/ HTTP/1.0\r\n{base}Upgrade: ptth\r\nALPN: h2\r\n\r\n"), 400),
            (format!("GET /.well-known/ptth/*/ HTTP/1.1\r\n{base}Upgrade: ptth\r\nALPN: h2\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n"), 400),
        ];
        for (req, status) in cases {
            assert_eq!(setup(&req).unwrap_err().status(), status, "{req}");
        }
    }

    #[test]
    fn classes_parse_match_and_say_what_is_wrong() {
        let c = parse_classes(
            br#"heavy=("POST /report/" "/export/");u=6;limit=4;queue=20;wait=2000, api=("/api/");u=1, default;limit=100;queue=0"#,
        )
        .unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!((c[0].name.as_str(), c[0].urgency, c[0].limit), ("heavy", 6, Some(4)));
        assert_eq!((c[0].queue, c[0].wait_ms), (Some(20), Some(2000)));
        assert_eq!((c[1].queue, c[1].wait_ms), (None, None));
        assert_eq!(c[2].queue, Some(0), "queue=0: never wait");
        assert!(!c[0].adaptive);
        let a = parse_classes(br#"heavy=("/r/");limit=16;adaptive"#).unwrap();
        assert!(a[0].adaptive && a[0].limit == Some(16));
        assert_eq!(parse_classes(write_classes(&a).as_bytes()).unwrap(), a);
        assert_eq!(c[0].rules[0], ClassRule { method: Some("POST".into()), prefix: "/report/".into() });
        assert_eq!(c[0].rules[1], ClassRule { method: None, prefix: "/export/".into() });
        assert_eq!((c[1].urgency, c[1].limit), (1, None));
        assert_eq!((c[2].name.as_str(), c[2].urgency, c[2].limit), ("default", DEFAULT_URGENCY, Some(100)));
        // First matching class in declaration order; nothing matching: default.
        assert_eq!(classify(&c, b"POST", b"/report/q1"), Some(0));
        assert_eq!(classify(&c, b"GET", b"/report/q1"), None);
        assert_eq!(classify(&c, b"GET", b"/export/all"), Some(0));
        assert_eq!(classify(&c, b"post", b"/report/q1"), None, "methods are case-sensitive (RFC 9110 §9.1)");
        assert_eq!(classify(&c, b"GET", b"/api/x"), Some(1));
        assert_eq!(parse_classes(write_classes(&c).as_bytes()).unwrap(), c);
        for (bad, says) in [
            (&br#"heavy"#[..], "at least one rule"),
            (br#"heavy=()"#, "at least one rule"),
            (br#"default=("/x")"#, "without rules"),
            (br#"heavy=("/r/");u=8"#, "0 to 7"),
            (br#"heavy=("/r/");u=-1"#, "0 to 7"),
            (br#"heavy=("/r/");limit=0"#, "1 to 1000000"),
            (br#"heavy=("/r/");limt=4"#, "unknown parameter \"limt\""),
            (br#"heavy=("/r/");queue=-1"#, "queue is an integer from 0"),
            (br#"heavy=("/r/");wait=?1"#, "wait is an integer from 0 to 3600000"),
            (br#"heavy=("/r/");wait=3600001"#, "(milliseconds)"),
            (br#"heavy=("/r/");adaptive"#, "with limit=N"),
            (br#"heavy=("/r/");limit=4;adaptive=1"#, "adaptive takes no value"),
            (br#"heavy=("report/")"#, "starts with '/'"),
            (br#"heavy=("PO(ST /r/")"#, "METHOD /prefix"),
            (br#"Heavy=("/r/")"#, "sf-dictionary"),
            (br#"a-very-long-class-name-that-goes-on-and-on=("/r/")"#, "at most 32"),
        ] {
            let e = parse_classes(bad).unwrap_err();
            assert!(e.contains(says), "{}: {e}", String::from_utf8_lossy(bad));
        }
        // In a setup: the field's lines join (a Dictionary, RFC 9651 §4.2); an error names the field.
        let head = "GET /.well-known/ptth/*/ HTTP/1.1\r\nHost: lb\r\nConnection: Upgrade\r\nUpgrade: ptth\r\nALPN: h2\r\n";
        let r = setup(&format!("{head}Tunnel-Classes: heavy=(\"/r/\");limit=2\r\nTunnel-Classes: default;u=1\r\n\r\n")).unwrap();
        assert_eq!(r.meta.classes.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["heavy", "default"]);
        let e = setup(&format!("{head}Tunnel-Classes: heavy=(\"/r/\");u=9\r\n\r\n")).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("Tunnel-Classes"), "{e}");
    }

    #[test]
    fn structured_fields_with_parameters_and_split_lists() {
        let r = setup(
            "GET /.well-known/ptth/*/ HTTP/1.1\r\nHost: lb\r\nConnection: Upgrade\r\nUpgrade: ptth\r\nALPN: h2\r\n\
             Tunnel-Worker-Id: \"w-1\";zone=\"a\"\r\nTunnel-Weight: 4;x\r\nTunnel-Routes: \"/a/\"\r\nTunnel-Routes: \"/b/\";p=1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.meta.id.as_deref(), Some("w-1"));
        assert_eq!(r.meta.weight, 4);
        assert_eq!(r.meta.routes, ["/a/", "/b/"]);
    }

    #[test]
    fn reverse_token_is_accepted_anywhere() {
        let r =
            setup("GET /connect HTTP/1.1\r\nHost: lb\r\nConnection: upgrade\r\nUpgrade: reverse\r\nALPN: h2, http%2F1.1\r\n\r\n").unwrap();
        assert_eq!(r.token, UpgradeToken::Reverse);
        assert_eq!(r.claim, Claim::Any);
        let mut out = Vec::new();
        write_accept(&mut out, &Accepted { token: r.token, protocol: InnerProtocol::Http11, core: 0, cores: 1 });
        assert!(String::from_utf8(out).unwrap().contains("Selected-ALPN: http%2F1.1\r\n"));
    }

    #[test]
    fn accept_parses_back() {
        let mut out = Vec::new();
        let a = Accepted { token: UpgradeToken::Ptth, protocol: InnerProtocol::Http11, core: 1, cores: 2 };
        write_accept(&mut out, &a);
        let mut h = ResponseHead::default();
        parse_response(&out, &Limits::default(), false, &mut h).unwrap();
        assert_eq!(SetupResponse::parse(&out, &h, &[InnerProtocol::Http11]).unwrap(), SetupResponse::Accepted(a));
        let mut out = Vec::new();
        write_reject(&mut out, 429, "too many tunnels", Some(3));
        parse_response(&out, &Limits::default(), false, &mut h).unwrap();
        assert_eq!(
            SetupResponse::parse(&out, &h, &[InnerProtocol::Http11]).unwrap(),
            SetupResponse::Rejected { status: 429, retry_after: Some(3) }
        );
    }

    /// The byte-for-byte examples of docs/PROTOCOL.md §2.
    #[test]
    fn documented_bytes() {
        let mut out = Vec::new();
        write_reject(&mut out, 400, "Tunnel-Weight: appears more than once", None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 38\r\nConnection: close\r\n\r\nTunnel-Weight: appears more than once\n"
        );
        let mut out = Vec::new();
        write_accept(&mut out, &Accepted { token: UpgradeToken::Reverse, protocol: InnerProtocol::Http11, core: 0, cores: 1 });
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: reverse\r\nSelected-ALPN: http%2F1.1\r\nTunnel-Core: 0\r\nTunnel-Cores: 1\r\n\r\n"
        );
    }

    #[test]
    fn host_matching_ignores_port() {
        let o = Origin::parse("https://app.example").unwrap();
        assert!(o.matches_host(b"APP.example:8080"));
        assert!(!o.matches_host(b"other.example"));
        assert_eq!(host_name(b"[::1]:80"), b"[::1]");
    }
}
