//! HTTP/1.1 message heads and body framing (RFC 9112), sans-IO.
//!
//! Place in the request path: the lb parses every client request head with
//! [`parse_request`] and every tunnel response head with [`parse_response`], then
//! rewrites them with [`write_request_head`] / [`write_response_head`]; bodies on
//! both legs are delimited by a [`BodyDecoder`]. The worker uses the same parser
//! on the tunnel. Heads are kept as offsets into the caller's read buffer, so
//! parsing allocates nothing once a [`RequestHead`]'s header vector has grown.

use std::ops::Range;

use crate::error::{BodyError, HeadError};

/// Size limits applied while a head is being read.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest request line (method, target, version) accepted; longer → 414.
    pub max_request_line: usize,
    /// Longest head (request line plus header fields) accepted; longer → 431.
    pub max_head: usize,
    /// Most header fields accepted; more → 431.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_request_line: 8 * 1024, max_head: 32 * 1024, max_headers: 100 }
    }
}

/// The most header fields any parse looks at; `Limits::max_headers` may only lower it.
pub const MAX_HEADERS: usize = 128;

/// What a worker accepts on a tunnel: the upper bound of any lb profile's
/// limits plus [`FORWARD_RESERVE`].
pub const TUNNEL_LIMITS: Limits = Limits { max_request_line: 64 * 1024, max_head: 64 * 1024, max_headers: MAX_HEADERS };

/// Room for what the lb adds to a forwarded head (`Forwarded`,
/// `X-Forwarded-For`, `X-Forwarded-Proto`, `Host` when the client sent an
/// absolute-form target): an lb profile's limits are at most
/// [`TUNNEL_LIMITS`] less this, so a request the lb accepts never exceeds the
/// worker's limits one hop later.
pub const FORWARD_RESERVE: Limits = Limits { max_request_line: 0, max_head: 1024, max_headers: 8 };

/// HTTP version of a message (only HTTP/1.x is spoken over these connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    Empty,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Responses only: the body runs until the connection closes.
    UntilClose,
}

impl Framing {
    pub fn has_body(self) -> bool {
        !matches!(self, Framing::Empty | Framing::Length(0))
    }
}

/// The form of a request target (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TargetForm {
    /// `/path?query`.
    #[default]
    Origin,
    /// `http://authority/path?query`, as sent to proxies.
    Absolute,
    /// `host:port`, CONNECT only.
    Authority,
    /// `*`, OPTIONS only.
    Asterisk,
}

/// One header field as byte offsets into the buffer the head was parsed from.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// Connection-level options taken from the `Connection` header and the version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnOptions {
    /// `close` was listed, or HTTP/1.0 without `keep-alive`.
    pub close: bool,
    /// `upgrade` was listed and an `Upgrade` field is present.
    pub upgrade: bool,
    /// `Connection` named fields other than close/keep-alive/upgrade; they are
    /// hop-by-hop and must be dropped when forwarding (RFC 9110 §7.6.1).
    pub extra_hop_fields: bool,
}

impl ConnOptions {
    /// Takes in one header field; `keep_alive` records an explicit
    /// `keep-alive` token (it matters only for HTTP/1.0).
    fn observe(&mut self, name: &[u8], value: &[u8], keep_alive: &mut bool) {
        if !name.eq_ignore_ascii_case(b"connection") {
            return;
        }
        for tok in list_items(value) {
            if tok.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                *keep_alive = true;
            } else if tok.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                self.extra_hop_fields = true;
            }
        }
    }
}

/// A parsed request head. Reuse one per connection: `parse_request` clears it.
#[derive(Debug, Default, Clone)]
pub struct RequestHead {
    /// Bytes of the head including the final CRLF CRLF.
    pub len: usize,
    pub method: Range<usize>,
    pub target: Range<usize>,
    pub form: TargetForm,
    pub version: Option<Version>,
    pub fields: Vec<Field>,
    pub framing: Option<Framing>,
    pub conn: ConnOptions,
    /// The `Host` field's value, when present.
    pub host: Option<Range<usize>>,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
}

/// A parsed response head. Reuse one per tunnel: `parse_response` clears it.
#[derive(Debug, Default, Clone)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub reason: Range<usize>,
    pub version: Option<Version>,
    pub fields: Vec<Field>,
    pub framing: Option<Framing>,
    pub conn: ConnOptions,
}

impl RequestHead {
    pub fn version(&self) -> Version {
        self.version.unwrap_or(Version::Http11)
    }
    pub fn framing(&self) -> Framing {
        self.framing.unwrap_or(Framing::Empty)
    }
    /// The method; empty if `buf` is not the buffer the head was parsed from.
    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        buf.get(self.method.clone()).unwrap_or(b"")
    }
    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        buf.get(self.target.clone()).unwrap_or(b"")
    }
    /// True for methods RFC 9110 §9.2.2 calls idempotent: safe to retry when no
    /// response byte was seen.
    pub fn is_idempotent(&self, buf: &[u8]) -> bool {
        is_idempotent_method(self.method(buf))
    }
    pub fn is_head(&self, buf: &[u8]) -> bool {
        self.method(buf) == b"HEAD"
    }
    /// Value of the first field called `name` (ASCII case-insensitive).
    pub fn field<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        find_field(&self.fields, buf, name)
    }
}

impl ResponseHead {
    pub fn version(&self) -> Version {
        self.version.unwrap_or(Version::Http11)
    }
    pub fn framing(&self) -> Framing {
        self.framing.unwrap_or(Framing::Empty)
    }
    pub fn field<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        find_field(&self.fields, buf, name)
    }
}

/// The methods RFC 9110 §9.2.2 calls idempotent, for every path's retry
/// decision.
pub fn is_idempotent_method(method: &[u8]) -> bool {
    matches!(method, b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE")
}

fn find_field<'b>(fields: &[Field], buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
    fields.iter().find(|f| buf[f.name.clone()].eq_ignore_ascii_case(name.as_bytes())).map(|f| &buf[f.value.clone()])
}

/// Outcome of a parse over the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The head is complete; its length is in the head's `len`.
    Complete,
    /// More bytes are needed.
    Partial,
}

/// Where `part` lies in `base`. httparse hands back a static `""` for a
/// reason phrase that is not UTF-8 (obs-text), which lies outside `base`:
/// that, and anything else outside, is an empty range instead of an
/// out-of-bounds one (a worker's response must never panic the lb).
fn offset_of(base: &[u8], part: &[u8]) -> Range<usize> {
    let (b, p) = (base.as_ptr() as usize, part.as_ptr() as usize);
    if p < b || p + part.len() > b + base.len() {
        return 0..0;
    }
    let start = p - b;
    start..start + part.len()
}

/// Checks the size limits on a head that is not complete yet (or is complete,
/// with `len` its size), so an oversized head is refused without waiting for it.
fn check_limits(buf: &[u8], head_len: Option<usize>, limits: &Limits) -> Result<(), HeadError> {
    let line_end = memchr(b'\n', buf);
    match line_end {
        Some(i) if i > limits.max_request_line => return Err(HeadError::RequestLineTooLong),
        None if buf.len() > limits.max_request_line => return Err(HeadError::RequestLineTooLong),
        _ => {}
    }
    let len = head_len.unwrap_or(buf.len());
    if len > limits.max_head {
        return Err(HeadError::HeadTooLarge);
    }
    Ok(())
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

fn map_httparse(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyFields,
        httparse::Error::Version => HeadError::VersionNotSupported,
        httparse::Error::HeaderName => HeadError::Malformed("invalid header field name"),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid header field value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Status => HeadError::Malformed("invalid status code"),
        httparse::Error::Token => HeadError::Malformed("invalid token in request line"),
    }
}

/// Parses a request head from the start of `buf` into `head`.
///
/// Enforces RFC 9112 framing strictly: a `Transfer-Encoding` and a
/// `Content-Length` together, several differing `Content-Length`s, a transfer
/// coding other than a final `chunked`, obs-fold, a missing or repeated `Host`
/// in HTTP/1.1 are all errors, so no request can be framed two ways by two hops.
pub fn parse_request(buf: &[u8], limits: &Limits, head: &mut RequestHead) -> Result<Parsed, HeadError> {
    // Uninitialized header slots: this runs for every request (twice on the
    // h2 tunnel path), and zeroing 128 slots (4 KiB) each time is wasted work.
    let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let max = limits.max_headers.min(MAX_HEADERS);
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(buf, &mut storage[..max]) {
        Ok(s) => s,
        Err(e) => {
            // A too-long line shows up to httparse as a token error before we
            // see it complete; report the limit, which is what the client must fix.
            check_limits(buf, None, limits)?;
            return Err(map_httparse(e));
        }
    };
    let len = match status {
        httparse::Status::Partial => {
            check_limits(buf, None, limits)?;
            return Ok(Parsed::Partial);
        }
        httparse::Status::Complete(n) => n,
    };
    check_limits(buf, Some(len), limits)?;
    head.len = len;
    head.method = offset_of(buf, req.method.unwrap_or("").as_bytes());
    head.target = offset_of(buf, req.path.unwrap_or("").as_bytes());
    head.form = target_form(req.method.unwrap_or("").as_bytes(), req.path.unwrap_or("").as_bytes())?;
    let version = if req.version == Some(0) { Version::Http10 } else { Version::Http11 };
    head.version = Some(version);
    head.fields.clear();
    head.host = None;
    head.expect_continue = false;
    let mut framing = FramingFields::default();
    let mut conn = ConnOptions::default();
    let mut keep_alive = false;
    let mut has_upgrade_field = false;
    for h in req.headers.iter() {
        let name = offset_of(buf, h.name.as_bytes());
        let value = offset_of(buf, h.value);
        let n = h.name.as_bytes();
        if n.eq_ignore_ascii_case(b"host") {
            if head.host.is_some() {
                // RFC 9112 §3.2: more than one Host → 400.
                return Err(HeadError::Malformed("more than one Host field"));
            }
            head.host = Some(value.clone());
        } else if n.eq_ignore_ascii_case(b"expect") {
            if trim(h.value).eq_ignore_ascii_case(b"100-continue") {
                head.expect_continue = true;
            } else {
                return Err(HeadError::ExpectationFailed);
            }
        } else if n.eq_ignore_ascii_case(b"upgrade") {
            has_upgrade_field = true;
        }
        framing.observe(h.name.as_bytes(), h.value)?;
        conn.observe(h.name.as_bytes(), h.value, &mut keep_alive);
        head.fields.push(Field { name, value });
    }
    conn.upgrade &= has_upgrade_field;
    if version == Version::Http10 && !keep_alive {
        conn.close = true;
    }
    if version == Version::Http11 && head.host.is_none() {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host → 400.
        return Err(HeadError::Malformed("missing Host field"));
    }
    if framing.te_seen && version == Version::Http10 {
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means the
        // framing is faulty; treat it as an error and close.
        return Err(HeadError::BadFraming("Transfer-Encoding in an HTTP/1.0 request"));
    }
    head.framing = Some(framing.request_framing()?);
    head.conn = conn;
    Ok(Parsed::Complete)
}

/// Parses a response head; `request_was_head` and the status decide bodyless
/// responses (RFC 9112 §6.3 items 1–2).
pub fn parse_response(buf: &[u8], limits: &Limits, request_was_head: bool, head: &mut ResponseHead) -> Result<Parsed, HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let max = limits.max_headers.min(MAX_HEADERS);
    let mut res = httparse::Response::new(&mut storage[..max]);
    let len = match res.parse(buf).map_err(map_httparse)? {
        httparse::Status::Partial => {
            if buf.len() > limits.max_head {
                return Err(HeadError::HeadTooLarge);
            }
            return Ok(Parsed::Partial);
        }
        httparse::Status::Complete(n) => n,
    };
    if len > limits.max_head {
        return Err(HeadError::HeadTooLarge);
    }
    head.len = len;
    head.status = res.code.unwrap_or(0);
    if !(100..=599).contains(&head.status) {
        // RFC 9110 §15: a status code is three digits, 100 to 599. `004`
        // would be relayed as `4`, which no client parses.
        return Err(HeadError::Malformed("status code out of range 100-599"));
    }
    head.reason = offset_of(buf, res.reason.unwrap_or("").as_bytes());
    let version = if res.version == Some(0) { Version::Http10 } else { Version::Http11 };
    head.version = Some(version);
    head.fields.clear();
    let mut framing = FramingFields::default();
    let mut conn = ConnOptions::default();
    let mut keep_alive = false;
    for h in res.headers.iter() {
        framing.observe(h.name.as_bytes(), h.value)?;
        conn.observe(h.name.as_bytes(), h.value, &mut keep_alive);
        head.fields.push(Field { name: offset_of(buf, h.name.as_bytes()), value: offset_of(buf, h.value) });
    }
    if version == Version::Http10 && !keep_alive {
        conn.close = true;
    }
    let status = head.status;
    let f = if request_was_head || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else {
        framing.response_framing()?
    };
    if f == Framing::UntilClose {
        conn.close = true;
    }
    head.framing = Some(f);
    head.conn = conn;
    Ok(Parsed::Complete)
}

/// Classifies and checks a request target against its method (RFC 9112 §3.2):
/// `*` is for OPTIONS only (§3.2.4), CONNECT takes the authority form and
/// nothing else does (§3.2.3), an absolute form names `http` or `https`
/// with a non-empty authority and no userinfo (RFC 9110 §4.2.4).
fn target_form(method: &[u8], target: &[u8]) -> Result<TargetForm, HeadError> {
    if method == b"CONNECT" {
        let ok = !target.is_empty() && !target.contains(&b'/') && !target.contains(&b'@') && target.contains(&b':');
        return if ok {
            Ok(TargetForm::Authority)
        } else {
            Err(HeadError::Malformed("CONNECT needs an authority-form target (host:port)"))
        };
    }
    if target.first() == Some(&b'/') {
        return Ok(TargetForm::Origin);
    }
    if target == b"*" {
        return if method == b"OPTIONS" {
            Ok(TargetForm::Asterisk)
        } else {
            Err(HeadError::Malformed("an asterisk-form target is only allowed with OPTIONS"))
        };
    }
    let authority = absolute_authority(target);
    if authority.is_empty() {
        return Err(HeadError::Malformed("request target is not origin-form or absolute-form http(s)"));
    }
    if authority.contains(&b'@') {
        return Err(HeadError::Malformed("userinfo in the request target"));
    }
    Ok(TargetForm::Absolute)
}

/// The authority a request is for: an absolute-form target's, which
/// replaces `Host` (RFC 9112 §3.2.2), else the `Host` field's (empty when
/// there is none, as in an HTTP/1.0 request).
pub fn request_authority<'b>(buf: &'b [u8], head: &RequestHead) -> &'b [u8] {
    match head.form {
        TargetForm::Absolute => absolute_authority(head.target(buf)),
        _ => head.host.as_ref().map_or(&b""[..], |r| &buf[r.clone()]),
    }
}

/// The path and query of an origin-form or absolute-form target (`/` when
/// an absolute form has no path); the asterisk form as is.
pub fn origin_form(target: &[u8]) -> &[u8] {
    let authority = absolute_authority(target);
    if authority.is_empty() {
        return target;
    }
    let start = authority.as_ptr() as usize - target.as_ptr() as usize + authority.len();
    match &target[start..] {
        b"" => b"/",
        rest => rest,
    }
}

/// The path of a normalized target, without its query; `/` for the
/// asterisk form (what routing matches route prefixes against).
pub fn target_path(target: &[u8]) -> &[u8] {
    if target == b"*" {
        return b"/";
    }
    &target[..target.iter().position(|&b| b == b'?').unwrap_or(target.len())]
}

/// Writes `target` (origin-form: a path, then an optional query) normalized
/// per RFC 3986 §6.2.2: percent-encoded unreserved characters decoded,
/// remaining percent-encodings in upper case, dot segments removed (§5.2.4).
/// The query is kept as received. Routing and the worker both see the result,
/// so `/api/../admin` cannot be routed as `/api/` and served as `/admin`.
pub fn write_normalized_target(out: &mut Vec<u8>, target: &[u8]) -> Result<(), HeadError> {
    if target == b"*" {
        // The asterisk form has nothing to normalize.
        out.extend_from_slice(target);
        return Ok(());
    }
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (&target[..q], &target[q..]),
        None => (target, &b""[..]),
    };
    // An absolute form without a path (`http://h?q`) means the path `/`
    // (RFC 9112 §3.2.1); any other path must be absolute.
    let path = match path {
        b"" => &b"/"[..],
        [b'/', ..] => path,
        _ => return Err(HeadError::Malformed("request target is not origin-form or absolute-form http(s)")),
    };
    let base = out.len();
    let mut segments = path[1..].split(|&b| b == b'/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        let start = out.len();
        out.push(b'/');
        write_normalized_segment(out, seg)?;
        let written = &out[start + 1..];
        if written == b"." || written == b".." {
            let up = written == b"..";
            out.truncate(start);
            if up {
                // Remove the previous segment with its slash.
                let prev = out[base..].iter().rposition(|&b| b == b'/').map_or(base, |p| base + p);
                out.truncate(prev);
            }
            if last {
                out.push(b'/');
            }
        }
    }
    if out.len() == base {
        out.push(b'/');
    }
    out.extend_from_slice(query);
    Ok(())
}

fn write_normalized_segment(out: &mut Vec<u8>, seg: &[u8]) -> Result<(), HeadError> {
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (seg.get(i + 1).copied().and_then(hex), seg.get(i + 2).copied().and_then(hex)) else {
            return Err(HeadError::Malformed("invalid percent-encoding in the request target"));
        };
        let c = h << 4 | l;
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c);
        } else {
            out.extend_from_slice(&[b'%', seg[i + 1].to_ascii_uppercase(), seg[i + 2].to_ascii_uppercase()]);
        }
        i += 3;
    }
    Ok(())
}

/// Collects the framing fields of one message.
#[derive(Default)]
struct FramingFields {
    length: Option<u64>,
    te_seen: bool,
    chunked_last: bool,
    other_coding: bool,
}

impl FramingFields {
    fn observe(&mut self, name: &[u8], value: &[u8]) -> Result<(), HeadError> {
        if name.eq_ignore_ascii_case(b"content-length") {
            // RFC 9112 §6.3 item 5: a list of identical values may be folded to one;
            // differing or invalid values are unrecoverable.
            for item in value.split(|&b| b == b',') {
                let n = parse_decimal(trim(item)).ok_or(HeadError::BadFraming("invalid Content-Length"))?;
                match self.length {
                    Some(prev) if prev != n => return Err(HeadError::BadFraming("conflicting Content-Length values")),
                    _ => self.length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in list_items(value) {
                if self.chunked_last {
                    // RFC 9112 §6.1: chunked must be the final coding, applied once.
                    return Err(HeadError::BadFraming("chunked is not the final transfer coding"));
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    self.chunked_last = true;
                } else {
                    self.other_coding = true;
                }
                self.te_seen = true;
            }
            if value.iter().all(|b| b.is_ascii_whitespace() || *b == b',') {
                return Err(HeadError::BadFraming("empty Transfer-Encoding"));
            }
        }
        Ok(())
    }

    fn request_framing(&self) -> Result<Framing, HeadError> {
        if self.te_seen {
            if self.length.is_some() {
                // RFC 9112 §6.3 item 3: both present is a smuggling vector; refuse.
                return Err(HeadError::BadFraming("both Transfer-Encoding and Content-Length"));
            }
            if self.other_coding && !self.chunked_last {
                // RFC 9112 §6.3 item 4: a request whose final coding is not chunked → 400.
                return Err(HeadError::BadFraming("final transfer coding is not chunked"));
            }
            if self.other_coding {
                return Err(HeadError::UnsupportedCoding);
            }
            return Ok(Framing::Chunked);
        }
        // An explicit `Content-Length: 0` stays `Length(0)`, so the forwarded
        // head says it again (a POST without it may get 411 from the origin).
        Ok(match self.length {
            None => Framing::Empty,
            Some(n) => Framing::Length(n),
        })
    }

    fn response_framing(&self) -> Result<Framing, HeadError> {
        if self.te_seen {
            if self.length.is_some() {
                return Err(HeadError::BadFraming("both Transfer-Encoding and Content-Length"));
            }
            if self.other_coding {
                // We relay bodies as they are, so only plain chunked can be re-framed.
                return Err(HeadError::UnsupportedCoding);
            }
            return Ok(Framing::Chunked);
        }
        Ok(match self.length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        })
    }
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Trims optional whitespace (RFC 9110 §5.6.3).
pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Iterates the non-empty items of a comma-separated field value.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim).filter(|s| !s.is_empty())
}

/// Fields that describe one hop and are never forwarded (RFC 9110 §7.6.1).
/// `Transfer-Encoding`, `Content-Length` and `Host` are not here: the
/// forwarded head writes them from the framing and routing decisions.
fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 7] =
        [b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade", b"proxy-authenticate", b"proxy-authorization"];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Fields a `Connection` option can never remove: they frame or route the
/// message, and are not hop-by-hop however the sender labels them (RFC 9110
/// §7.6.1: a sender lists only hop-by-hop fields there). Honouring
/// `Connection: content-length` would strip the framing of a body that is
/// still relayed by it: request smuggling.
fn is_protected(name: &[u8]) -> bool {
    const KEEP: [&[u8]; 4] = [b"host", b"content-length", b"transfer-encoding", b"trailer"];
    KEEP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The fields the lb writes itself for each hop (RFC 7239 and the de facto
/// `X-Forwarded-*`): a client's copies are dropped unless its address is a
/// trusted proxy.
pub fn is_forwarding_field(name: &[u8]) -> bool {
    const FWD: [&[u8]; 4] = [b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"];
    FWD.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// True when the `Connection` field (or fields) of this message names `name`.
fn named_by_connection(fields: &[Field], buf: &[u8], name: &[u8]) -> bool {
    fields
        .iter()
        .filter(|f| buf[f.name.clone()].eq_ignore_ascii_case(b"connection"))
        .any(|f| list_items(&buf[f.value.clone()]).any(|t| t.eq_ignore_ascii_case(name)))
}

/// Writes the end-to-end fields of a message: no hop-by-hop field, no field
/// a `Connection` option names (unless protected), nothing `skip` names.
fn write_fields(out: &mut Vec<u8>, buf: &[u8], fields: &[Field], extra_hop: bool, skip: impl Fn(&[u8]) -> bool) {
    for f in fields {
        let name = &buf[f.name.clone()];
        if is_hop_by_hop(name) || skip(name) {
            continue;
        }
        if extra_hop && !is_protected(name) && named_by_connection(fields, buf, name) {
            continue;
        }
        write_field(out, name, &buf[f.value.clone()]);
    }
}

/// Appends `name: value` CRLF.
pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal (the formatting machinery costs more than the
/// head it writes into).
pub fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Writes the one framing field a message with `framing` carries on the next
/// hop (RFC 9112 §6): framing is decided once, by the parser, and the
/// forwarded head is written from that decision, never copied.
fn write_framing(out: &mut Vec<u8>, framing: Framing) {
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            write_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Empty | Framing::UntilClose => {}
    }
}

/// A client's address as the forwarding fields write it, formatted once per
/// connection rather than once per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    /// `ip:port`, IPv6 in brackets: the quoted `for=` node (RFC 7239 §6).
    pub node: String,
    /// The address alone, for `X-Forwarded-For`.
    pub ip: String,
}

impl ClientAddr {
    pub fn new(a: std::net::SocketAddr) -> ClientAddr {
        ClientAddr { node: a.to_string(), ip: a.ip().to_string() }
    }
}

/// What the lb writes of a request on the next hop beyond its end-to-end fields.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The client's address, for `Forwarded: for=` (RFC 7239 §5.2); `None`
    /// adds no `Forwarded` element (a hop that does not know the client, such
    /// as the worker's sidecar forwarding to its origin).
    pub client: Option<&'a ClientAddr>,
    /// `proto=` of the `Forwarded` element.
    pub proto: &'a str,
    /// The authority the request was routed on: the absolute-form target's
    /// when there is one, else `Host` (RFC 9112 §3.2.2). Sent as `Host`.
    pub host: &'a [u8],
    /// The normalized origin-form target (or `*`), sent as the target.
    pub target: &'a [u8],
    /// Keep the client's own `Forwarded` / `X-Forwarded-*` fields (its
    /// address is a trusted proxy); otherwise they are dropped.
    pub keep_client_forwarded: bool,
    /// Also write `X-Forwarded-For` and `X-Forwarded-Proto`.
    pub x_forwarded: bool,
}

/// Writes the request head to send on the next hop: HTTP/1.1 request line
/// with the normalized target, `Host` from the routing decision, the
/// end-to-end fields, the framing field from the framing decision, a
/// `Forwarded` element for this hop, no hop-by-hop fields and no `Expect`
/// (the lb answers `100 Continue` itself).
pub fn write_request_head(out: &mut Vec<u8>, buf: &[u8], head: &RequestHead, fwd: &Forwarding<'_>) {
    out.extend_from_slice(head.method(buf));
    out.push(b' ');
    out.extend_from_slice(fwd.target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_field(out, b"Host", fwd.host);
    let keep_fwd = fwd.keep_client_forwarded;
    write_fields(out, buf, &head.fields, head.conn.extra_hop_fields, |n| {
        n.eq_ignore_ascii_case(b"host")
            || n.eq_ignore_ascii_case(b"content-length")
            || n.eq_ignore_ascii_case(b"transfer-encoding")
            || n.eq_ignore_ascii_case(b"expect")
            || (!keep_fwd && is_forwarding_field(n))
    });
    write_framing(out, head.framing());
    if let Some(client) = fwd.client {
        // RFC 7239 §6: IPv6 addresses and ports need the quoted form.
        out.extend_from_slice(b"Forwarded: for=\"");
        out.extend_from_slice(client.node.as_bytes());
        out.extend_from_slice(b"\";proto=");
        out.extend_from_slice(fwd.proto.as_bytes());
        // Bounded so the element fits in FORWARD_RESERVE (a DNS name is at most 253).
        if !fwd.host.is_empty() && fwd.host.len() <= 300 && fwd.host.iter().all(|b| b.is_ascii_graphic() && *b != b'"' && *b != b'\\') {
            out.extend_from_slice(b";host=\"");
            out.extend_from_slice(fwd.host);
            out.push(b'"');
        }
        out.extend_from_slice(b"\r\n");
        if fwd.x_forwarded {
            write_field(out, b"X-Forwarded-For", client.ip.as_bytes());
            write_field(out, b"X-Forwarded-Proto", fwd.proto.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// The authority of an absolute-form target (`http://host:port/path`), or
/// empty for any other form.
pub fn absolute_authority(target: &[u8]) -> &[u8] {
    let lower = |p: &[u8]| target.len() >= p.len() && target[..p.len()].eq_ignore_ascii_case(p);
    let rest = if lower(b"http://") {
        &target[7..]
    } else if lower(b"https://") {
        &target[8..]
    } else {
        return b"";
    };
    let end = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
    &rest[..end]
}

/// True for an authority a request may be routed on: `reg-name` or IP
/// literal characters with an optional port (RFC 3986 §3.2), or empty (an
/// HTTP/1.0 request without Host). Anything else in `Host` is a 400.
pub fn is_valid_authority(a: &[u8]) -> bool {
    a.len() <= 1024 && a.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b))
}

/// How the head of a relayed response ends the connection to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Keep the connection; HTTP/1.0 clients need `Connection: keep-alive` said.
    KeepAlive,
    /// Send `Connection: close` and close after the body.
    Close,
}

/// Writes a relayed response head for a client speaking `client_version`,
/// without hop-by-hop fields. `dechunk` drops `Transfer-Encoding` because the
/// body will be sent decoded and close-delimited (HTTP/1.0 clients). A
/// response with a body gets its framing field from the parser's decision;
/// a bodyless one (HEAD, 1xx, 204, 304) keeps its `Content-Length`, which
/// then describes the representation, not this message (RFC 9110 §8.6).
pub fn write_response_head(out: &mut Vec<u8>, buf: &[u8], head: &ResponseHead, client_version: Version, persist: Persist, dechunk: bool) {
    // RFC 9110 §6.2: answer with the highest minor version we speak, even to
    // an HTTP/1.0 client; `client_version` only decides how persistence is said.
    write_status_line(out, head.status, &buf[head.reason.clone()]);
    let framing = head.framing();
    let reframe = framing != Framing::Empty;
    write_fields(out, buf, &head.fields, head.conn.extra_hop_fields, |n| {
        (reframe && (n.eq_ignore_ascii_case(b"content-length") || n.eq_ignore_ascii_case(b"transfer-encoding")))
            || (dechunk && n.eq_ignore_ascii_case(b"trailer"))
    });
    if !(dechunk && framing == Framing::Chunked) {
        write_framing(out, framing);
    }
    write_persistence(out, persist, client_version);
    out.extend_from_slice(b"\r\n");
}

/// Appends the status line; always HTTP/1.1 (RFC 9110 §6.2: the highest
/// minor version we speak, whatever the client's).
pub fn write_status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    write_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

/// Appends the `Connection` field that says whether the connection persists,
/// in the client's version's terms (RFC 9112 §9.3: HTTP/1.0 persists only
/// when told).
pub fn write_persistence(out: &mut Vec<u8>, persist: Persist, client_version: Version) {
    match (persist, client_version) {
        (Persist::Close, _) => out.extend_from_slice(b"Connection: close\r\n"),
        (Persist::KeepAlive, Version::Http10) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        (Persist::KeepAlive, Version::Http11) => {}
    }
}

/// Writes a complete small response generated locally (errors, admin pages).
pub fn write_simple_response(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    extra: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    close: bool,
) {
    use std::io::Write;
    write_status_line(out, status, reason.as_bytes());
    for (k, v) in extra {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    if !body.is_empty() || status >= 200 {
        let _ = write!(out, "Content-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The reason phrase we send for a status we generate.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Incremental body framing: says which received bytes belong to the body and,
/// for chunked bodies, which of them are payload.
#[derive(Debug, Clone)]
pub struct BodyDecoder {
    state: BodyState,
    /// Bytes of the current chunk-size line or trailer section, bounded.
    line: usize,
    size: u64,
    digits: u8,
}

/// Chunked-coding states (RFC 9112 §7.1). Every framing byte is checked
/// against the grammar: chunk extensions are tokens or quoted strings after
/// `;`, trailer lines are `token ":" field-value`, so nothing relayed in its
/// received framing carries bytes the parser did not validate.
///
/// ```text
/// Size ─hex─▶ Size ─CR─▶ SizeLf ─LF─▶ Data(n) ─▶ DataCr ─▶ DataLf ─▶ Size
///   └─BWS / ';'─▶ SizeWs / ExtPreName ─▶ ExtName ─'='─▶ ExtPreVal ─▶ ExtVal / ExtQuoted ─▶ … ─CR─▶ SizeLf
///                         SizeLf ─LF (n = 0)─▶ TrailerStart ─CRLF─▶ Done
///                                               └─tchar─▶ TrailerName ─':'─▶ TrailerValue ─CRLF─▶ TrailerStart
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Length(u64),
    UntilClose,
    Size,
    /// Whitespace after the size, before `;` or CR.
    SizeWs,
    ExtPreName,
    ExtName,
    ExtAfterName,
    ExtPreVal,
    ExtVal,
    ExtQuoted,
    ExtQuotedEsc,
    ExtAfterVal,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// A field line that may be written as is: a token name and a value of
/// visible characters, spaces and tabs (RFC 9110 §5.5), so no CR, LF or NUL
/// can split the head it goes into.
pub fn is_valid_field(name: &[u8], value: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| is_tchar(b)) && value.iter().all(|&b| is_field_vchar(b))
}

/// `tchar` of RFC 9110 §5.6.2.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte allowed in a field value: VCHAR, SP, HTAB, obs-text (RFC 9110 §5.5).
fn is_field_vchar(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// One step of decoding: `consumed` bytes of the input belong to the body;
/// `data` is the payload among them (empty for framing bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub consumed: usize,
    pub data: Range<usize>,
}

/// Longest chunk-size line (with extensions) or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Size,
            Framing::UntilClose => BodyState::UntilClose,
        };
        BodyDecoder { state, line: 0, size: 0, digits: 0 }
    }

    pub fn is_done(&self) -> bool {
        self.state == BodyState::Done
    }

    /// True between the last chunk and the end of a chunked body: the bytes
    /// of the next steps are the trailer section (fields, then an empty line).
    pub fn in_trailers(&self) -> bool {
        matches!(
            self.state,
            BodyState::TrailerStart | BodyState::TrailerName | BodyState::TrailerValue | BodyState::TrailerLf | BodyState::EndLf
        )
    }

    /// The connection closed: fine for a close-delimited body, else truncation.
    pub fn eof(&mut self) -> Result<(), BodyError> {
        match self.state {
            BodyState::UntilClose | BodyState::Done => {
                self.state = BodyState::Done;
                Ok(())
            }
            _ => Err(BodyError::Truncated),
        }
    }

    /// Bytes of `input` (from its start) that belong to this body, in their
    /// received framing. Stops at the end of the body.
    pub fn scan(&mut self, input: &[u8]) -> Result<usize, BodyError> {
        let mut at = 0;
        while at < input.len() && !self.is_done() {
            at += self.decode(&input[at..])?.consumed;
        }
        Ok(at)
    }

    /// Decodes one step from the start of `input`.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, BodyError> {
        use BodyState::*;
        match self.state {
            Done => return Ok(Decoded { consumed: 0, data: 0..0 }),
            Length(n) => {
                let take = n.min(input.len() as u64) as usize;
                self.state = if take as u64 == n { Done } else { Length(n - take as u64) };
                return Ok(Decoded { consumed: take, data: 0..take });
            }
            UntilClose => return Ok(Decoded { consumed: input.len(), data: 0..input.len() }),
            Data(n) => {
                let take = n.min(input.len() as u64) as usize;
                self.state = if take as u64 == n { DataCr } else { Data(n - take as u64) };
                return Ok(Decoded { consumed: take, data: 0..take });
            }
            _ => {}
        }
        // Framing bytes: walk them one at a time until payload or the end.
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            let bad = |why| Err(BodyError::BadChunk(why));
            self.state = match self.state {
                Size => match hex(b) {
                    Some(d) => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return bad("chunk size too large");
                        }
                        self.size = self.size * 16 + u64::from(d);
                        Size
                    }
                    None if self.digits == 0 => return bad("missing chunk size"),
                    None => match b {
                        b';' => ExtPreName,
                        b' ' | b'\t' => SizeWs,
                        b'\r' => SizeLf,
                        _ => return bad("invalid chunk size"),
                    },
                },
                SizeWs => match b {
                    b' ' | b'\t' => SizeWs,
                    b';' => ExtPreName,
                    b'\r' => SizeLf,
                    _ => return bad("junk after the chunk size"),
                },
                ExtPreName => match b {
                    b' ' | b'\t' => ExtPreName,
                    _ if is_tchar(b) => ExtName,
                    _ => return bad("invalid chunk extension name"),
                },
                ExtName => match b {
                    _ if is_tchar(b) => ExtName,
                    b' ' | b'\t' => ExtAfterName,
                    b'=' => ExtPreVal,
                    b';' => ExtPreName,
                    b'\r' => SizeLf,
                    _ => return bad("invalid chunk extension name"),
                },
                ExtAfterName => match b {
                    b' ' | b'\t' => ExtAfterName,
                    b'=' => ExtPreVal,
                    b';' => ExtPreName,
                    b'\r' => SizeLf,
                    _ => return bad("invalid chunk extension"),
                },
                ExtPreVal => match b {
                    b' ' | b'\t' => ExtPreVal,
                    b'"' => ExtQuoted,
                    _ if is_tchar(b) => ExtVal,
                    _ => return bad("invalid chunk extension value"),
                },
                ExtVal => match b {
                    _ if is_tchar(b) => ExtVal,
                    b' ' | b'\t' => ExtAfterVal,
                    b';' => ExtPreName,
                    b'\r' => SizeLf,
                    _ => return bad("invalid chunk extension value"),
                },
                ExtQuoted => match b {
                    b'"' => ExtAfterVal,
                    b'\\' => ExtQuotedEsc,
                    _ if is_field_vchar(b) => ExtQuoted,
                    _ => return bad("control byte in a chunk extension"),
                },
                ExtQuotedEsc => match b {
                    _ if is_field_vchar(b) => ExtQuoted,
                    _ => return bad("control byte in a chunk extension"),
                },
                ExtAfterVal => match b {
                    b' ' | b'\t' => ExtAfterVal,
                    b';' => ExtPreName,
                    b'\r' => SizeLf,
                    _ => return bad("invalid chunk extension"),
                },
                SizeLf => {
                    if b != b'\n' {
                        return bad("chunk size line not ended by CRLF");
                    }
                    self.line = 0;
                    self.digits = 0;
                    let n = std::mem::take(&mut self.size);
                    // The last chunk ends the step here, so the trailer
                    // section starts a step of its own (see `in_trailers`).
                    self.state = if n == 0 { TrailerStart } else { Data(n) };
                    return Ok(Decoded { consumed: i, data: i..i });
                }
                DataCr => {
                    if b != b'\r' {
                        return bad("chunk data not followed by CRLF");
                    }
                    DataLf
                }
                DataLf => {
                    if b != b'\n' {
                        return bad("chunk data not followed by CRLF");
                    }
                    Size
                }
                TrailerStart => match b {
                    b'\r' => EndLf,
                    b' ' | b'\t' => return bad("obs-fold in the trailer section"),
                    _ if is_tchar(b) => TrailerName,
                    _ => return bad("invalid trailer field"),
                },
                TrailerName => match b {
                    _ if is_tchar(b) => TrailerName,
                    b':' => TrailerValue,
                    _ => return bad("invalid trailer field name"),
                },
                TrailerValue => match b {
                    b'\r' => TrailerLf,
                    _ if is_field_vchar(b) => TrailerValue,
                    _ => return bad("control byte in a trailer field"),
                },
                TrailerLf => {
                    if b != b'\n' {
                        return bad("trailer field not ended by CRLF");
                    }
                    TrailerStart
                }
                EndLf => {
                    if b != b'\n' {
                        return bad("chunked body not ended by CRLF");
                    }
                    self.state = Done;
                    return Ok(Decoded { consumed: i, data: i..i });
                }
                Length(_) | UntilClose | Data(_) | Done => unreachable!("handled above"),
            };
            self.line += 1;
            let limit = if self.in_trailers() { MAX_TRAILERS } else { MAX_CHUNK_LINE };
            if self.line > limit {
                return Err(BodyError::BadChunk("chunk line or trailer section too long"));
            }
        }
        Ok(Decoded { consumed: i, data: i..i })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The fields of a received trailer section (RFC 9112 §7.1.2), as
/// (name, value) pairs; malformed lines are skipped.
pub fn trailer_fields(section: &[u8]) -> Vec<(&[u8], &[u8])> {
    section
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter_map(|l| {
            let colon = l.iter().position(|&b| b == b':')?;
            let name = &l[..colon];
            (!name.is_empty() && name.iter().all(|b| b.is_ascii_graphic())).then(|| (name, trim(&l[colon + 1..])))
        })
        .collect()
}

/// Appends one chunk in chunked coding.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    use std::io::Write;
    if data.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk with an empty trailer section.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<(Parsed, RequestHead), HeadError> {
        let mut h = RequestHead::default();
        let p = parse_request(s.as_bytes(), &Limits::default(), &mut h)?;
        Ok((p, h))
    }

    #[test]
    fn parses_simple_get() {
        let s = "GET /a?b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\nrest";
        let (p, h) = req(s).unwrap();
        assert_eq!(p, Parsed::Complete);
        assert_eq!(h.len, s.len() - 4);
        assert_eq!(h.target(s.as_bytes()), b"/a?b");
        assert_eq!(h.framing(), Framing::Empty);
        assert!(!h.conn.close);
    }

    #[test]
    fn framing_table() {
        struct Case {
            head: &'static str,
            want: Result<Framing, HeadError>,
        }
        let cases = [
            Case { head: "Content-Length: 5\r\n", want: Ok(Framing::Length(5)) },
            Case { head: "Content-Length: 5, 5\r\n", want: Ok(Framing::Length(5)) },
            Case {
                head: "Content-Length: 5\r\nContent-Length: 6\r\n",
                want: Err(HeadError::BadFraming("conflicting Content-Length values")),
            },
            Case { head: "Content-Length: -1\r\n", want: Err(HeadError::BadFraming("invalid Content-Length")) },
            Case { head: "Transfer-Encoding: chunked\r\n", want: Ok(Framing::Chunked) },
            Case {
                head: "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                want: Err(HeadError::BadFraming("both Transfer-Encoding and Content-Length")),
            },
            Case { head: "Transfer-Encoding: gzip\r\n", want: Err(HeadError::BadFraming("final transfer coding is not chunked")) },
            Case {
                head: "Transfer-Encoding: chunked, gzip\r\n",
                want: Err(HeadError::BadFraming("chunked is not the final transfer coding")),
            },
            Case { head: "Transfer-Encoding: gzip, chunked\r\n", want: Err(HeadError::UnsupportedCoding) },
        ];
        for c in cases {
            let s = format!("POST / HTTP/1.1\r\nHost: x\r\n{}\r\n", c.head);
            let got = req(&s).map(|(_, h)| h.framing());
            assert_eq!(got, c.want, "{}", c.head);
        }
    }

    #[test]
    fn rejects_bad_heads() {
        assert_eq!(req("GET / HTTP/1.1\r\n\r\n").unwrap_err(), HeadError::Malformed("missing Host field"));
        assert!(matches!(req("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").unwrap_err(), HeadError::Malformed(_)));
        // obs-fold (RFC 9112 §5.2) is rejected.
        assert!(req("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n").is_err());
        assert_eq!(
            req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap_err(),
            HeadError::BadFraming("Transfer-Encoding in an HTTP/1.0 request")
        );
        assert_eq!(req("GET / HTTP/2.0\r\nHost: a\r\n\r\n").unwrap_err(), HeadError::VersionNotSupported);
        assert_eq!(req("GET / HTTP/1.1\r\nHost: a\r\nExpect: bogus\r\n\r\n").unwrap_err(), HeadError::ExpectationFailed);
    }

    #[test]
    fn limits() {
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(9000));
        assert_eq!(req(&long).unwrap_err(), HeadError::RequestLineTooLong);
        // Partial, but already over the line limit.
        assert_eq!(req(&long[..8500]).unwrap_err(), HeadError::RequestLineTooLong);
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "b".repeat(33 * 1024));
        assert_eq!(req(&big).unwrap_err(), HeadError::HeadTooLarge);
        let many: String = (0..101).map(|i| format!("X{i}: y\r\n")).collect();
        assert_eq!(req(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")).unwrap_err(), HeadError::TooManyFields);
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        assert!(req("GET / HTTP/1.0\r\n\r\n").unwrap().1.conn.close);
        assert!(!req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap().1.conn.close);
    }

    fn forward(s: &str, keep: bool, xff: bool) -> String {
        let (_, h) = req(s).unwrap();
        let buf = s.as_bytes();
        let host = request_authority(buf, &h);
        let mut target = Vec::new();
        write_normalized_target(&mut target, origin_form(h.target(buf))).unwrap();
        let fwd = Forwarding {
            client: Some(&ClientAddr::new("10.0.0.1:5".parse().unwrap())),
            proto: "http",
            host,
            target: &target,
            keep_client_forwarded: keep,
            x_forwarded: xff,
        };
        let mut out = Vec::new();
        write_request_head(&mut out, buf, &h, &fwd);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rewrite_strips_hop_by_hop_and_adds_forwarded() {
        let s = "GET / HTTP/1.1\r\nHost: h\r\nConnection: close, x-hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nExpect: 100-continue\r\nX-End: 2\r\n\r\n";
        assert_eq!(
            forward(s, false, false),
            "GET / HTTP/1.1\r\nHost: h\r\nX-End: 2\r\nForwarded: for=\"10.0.0.1:5\";proto=http;host=\"h\"\r\n\r\n"
        );
    }

    #[test]
    fn connection_cannot_strip_framing_or_host() {
        // The smuggling case: `Connection: content-length` must not leave a
        // body that is still relayed by its length without that length.
        let s = "POST /c HTTP/1.1\r\nHost: o\r\nConnection: content-length, host, transfer-encoding\r\nContent-Length: 5\r\n\r\n";
        let out = forward(s, false, false);
        assert!(out.contains("\r\nHost: o\r\n") && out.contains("\r\nContent-Length: 5\r\n"), "{out}");
        let s = "POST /c HTTP/1.1\r\nHost: o\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(forward(s, false, false).contains("\r\nTransfer-Encoding: chunked\r\n"));
        // Framing fields are written from the decision: one canonical field.
        let s = "POST /c HTTP/1.1\r\nHost: o\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(forward(s, false, false).matches("Content-Length").count(), 1);
        assert!(forward(s, false, false).contains("Content-Length: 3\r\n"));
        // An explicit zero length is said again.
        assert!(forward("POST / HTTP/1.1\r\nHost: o\r\nContent-Length: 0\r\n\r\n", false, false).contains("Content-Length: 0\r\n"));
    }

    #[test]
    fn absolute_form_authority_replaces_host() {
        let out = forward("GET http://echo.test/c/abs?q=1 HTTP/1.1\r\nHost: origin.test\r\n\r\n", false, false);
        assert!(out.starts_with("GET /c/abs?q=1 HTTP/1.1\r\nHost: echo.test\r\n"), "{out}");
        assert!(!out.contains("origin.test"), "{out}");
    }

    #[test]
    fn client_forwarded_fields_dropped_unless_trusted() {
        let s = "GET / HTTP/1.1\r\nHost: h\r\nForwarded: for=1.2.3.4\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n";
        let out = forward(s, false, true);
        assert!(!out.contains("1.2.3.4"), "{out}");
        assert!(out.contains("X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\n"), "{out}");
        let out = forward(s, true, false);
        assert!(out.contains("Forwarded: for=1.2.3.4\r\n") && out.contains("X-Forwarded-For: 1.2.3.4\r\n"), "{out}");
    }

    #[test]
    fn target_forms() {
        assert_eq!(req("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").unwrap().1.form, TargetForm::Asterisk);
        assert!(req("GET * HTTP/1.1\r\nHost: h\r\n\r\n").is_err());
        assert_eq!(req("CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n").unwrap().1.form, TargetForm::Authority);
        assert!(req("CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n").is_err());
        assert!(req("GET h:443 HTTP/1.1\r\nHost: h\r\n\r\n").is_err());
        assert!(req("GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n").is_err());
        assert!(req("GET http://u@h/x HTTP/1.1\r\nHost: h\r\n\r\n").is_err());
        assert!(req("GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n").is_err());
        assert_eq!(req("GET HTTP://H/x HTTP/1.1\r\nHost: h\r\n\r\n").unwrap().1.form, TargetForm::Absolute);
    }

    #[test]
    fn normalization_table() {
        let cases = [
            ("/", "/"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/api/../index.html", "/index.html"),
            ("/../../x", "/x"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a//b", "/a//b"),
            ("/%7euser/%41%2fb", "/~user/A%2Fb"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/p%2fq?x=/../%2e", "/p%2Fq?x=/../%2e"),
            ("*", "*"),
            ("?q", "/?q"),
        ];
        for (input, want) in cases {
            let mut out = Vec::new();
            write_normalized_target(&mut out, input.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), want, "{input}");
        }
        for bad in ["/%", "/%2", "/%zz"] {
            assert!(write_normalized_target(&mut Vec::new(), bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn response_reframed_from_decision() {
        let l = Limits::default();
        let mut h = ResponseHead::default();
        let s = b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 3\r\n\r\n";
        parse_response(s, &l, false, &mut h).unwrap();
        let mut out = Vec::new();
        write_response_head(&mut out, s, &h, Version::Http11, Persist::KeepAlive, false);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n");
        let s = b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n";
        parse_response(s, &l, false, &mut h).unwrap();
        out.clear();
        write_response_head(&mut out, s, &h, Version::Http11, Persist::KeepAlive, false);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        // A HEAD response keeps the length of what a GET would carry.
        let s = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
        parse_response(s, &l, true, &mut h).unwrap();
        out.clear();
        write_response_head(&mut out, s, &h, Version::Http11, Persist::KeepAlive, false);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n");
    }

    #[test]
    fn response_framing() {
        let mut h = ResponseHead::default();
        let l = Limits::default();
        let s = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        parse_response(s, &l, false, &mut h).unwrap();
        assert_eq!(h.framing(), Framing::Length(3));
        parse_response(s, &l, true, &mut h).unwrap();
        assert_eq!(h.framing(), Framing::Empty);
        parse_response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\n\r\n", &l, false, &mut h).unwrap();
        assert_eq!(h.framing(), Framing::Empty);
        parse_response(b"HTTP/1.1 200 OK\r\n\r\n", &l, false, &mut h).unwrap();
        assert_eq!(h.framing(), Framing::UntilClose);
        assert!(h.conn.close);
        // A reason phrase in obs-text is dropped, not a panic.
        parse_response(b"HTTP/1.1 200 O\xb5K\r\n\r\n", &l, false, &mut h).unwrap();
        assert_eq!(h.reason, 0..0);
        for bad in [&b"HTTP/1.1 004 x\r\n\r\n"[..], b"HTTP/1.1 099 x\r\n\r\n", b"HTTP/1.1 600 x\r\n\r\n"] {
            assert!(parse_response(bad, &l, false, &mut h).is_err());
        }
    }

    fn decode_all(body: &[u8], split: usize) -> Result<(Vec<u8>, usize), BodyError> {
        let mut d = BodyDecoder::new(Framing::Chunked);
        let mut payload = Vec::new();
        let mut total = 0;
        for part in [&body[..split], &body[split..]] {
            let mut at = 0;
            while at < part.len() && !d.is_done() {
                let step = d.decode(&part[at..])?;
                payload.extend_from_slice(&part[at..][step.data.clone()]);
                at += step.consumed;
            }
            total += at;
        }
        assert!(d.is_done());
        Ok((payload, total))
    }

    #[test]
    fn chunked_every_split_point() {
        let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..=body.len() {
            let (payload, consumed) = decode_all(body, split).unwrap();
            assert_eq!(payload, b"hello0123456789", "split {split}");
            assert_eq!(consumed, end, "split {split}");
        }
    }

    #[test]
    fn trailer_section_is_its_own_steps() {
        let body = b"3\r\nabc\r\n0\r\nX-A: 1\r\nX-B:  two \r\n\r\n";
        let mut d = BodyDecoder::new(Framing::Chunked);
        let (mut at, mut section) = (0, Vec::new());
        while !d.is_done() {
            let inside = d.in_trailers();
            let step = d.decode(&body[at..]).unwrap();
            if inside {
                section.extend_from_slice(&body[at..at + step.consumed]);
            }
            at += step.consumed;
        }
        assert_eq!(at, body.len());
        assert_eq!(trailer_fields(&section), vec![(&b"X-A"[..], &b"1"[..]), (&b"X-B"[..], &b"two"[..])]);
    }

    #[test]
    fn chunk_extensions_and_trailers_are_validated() {
        let good: [&[u8]; 5] = [
            b"5;a\r\nhello\r\n0\r\n\r\n",
            b"5 ; a = b ; c=\"q \\\" t\"\r\nhello\r\n0\r\n\r\n",
            b"5\t\r\nhello\r\n0\r\n\r\n",
            b"0\r\nX-T: v\t\x80\r\n\r\n",
            b"0;last\r\nA:\r\n\r\n",
        ];
        for body in good {
            let mut d = BodyDecoder::new(Framing::Chunked);
            assert_eq!(d.scan(body), Ok(body.len()), "{:?}", String::from_utf8_lossy(body));
            assert!(d.is_done());
        }
        let bad: [&[u8]; 11] = [
            b"5;\x01\x7f\x00\r\n",
            b"5 junk\r\n",
            b"5;=v\r\n",
            b"5;a=\r\n",
            b"5;a=\"x\x00\"\r\n",
            b"5;a b\r\n",
            b"0\r\nGET /smuggled HTTP/1.1\r\n\r\n",
            b"0\r\nX-T: a\x00b\r\n\r\n",
            b"0\r\nX-T: a\r\n folded\r\n\r\n",
            b"0\r\n: v\r\n\r\n",
            b"0\r\nX-T: a\rb\r\n\r\n",
        ];
        for body in bad {
            let mut d = BodyDecoder::new(Framing::Chunked);
            assert!(d.scan(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn chunked_errors() {
        for bad in [&b"x\r\n"[..], b"5\r\nhelloXX", b"5\nhello\r\n", b"fffffffffffffffff\r\n", b"0\r\nbad\n"] {
            let mut d = BodyDecoder::new(Framing::Chunked);
            assert!(d.scan(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut d = BodyDecoder::new(Framing::Chunked);
        d.scan(b"5\r\nhel").unwrap();
        assert_eq!(d.eof(), Err(BodyError::Truncated));
    }

    #[test]
    fn length_body_stops_at_end() {
        let mut d = BodyDecoder::new(Framing::Length(3));
        assert_eq!(d.scan(b"abcdef").unwrap(), 3);
        assert!(d.is_done());
    }
}
