//! The subset of Structured Field Values (RFC 9651) our metadata uses:
//! Items that are sf-strings or sf-integers, Lists of sf-strings, and
//! Dictionaries of Inner Lists of sf-strings (the class declaration). Items'
//! parameters (§3.1.2) are validated and ignored: RFC 9651 lets a sender add
//! parameters a receiver does not know; a Dictionary member's parameters are
//! handed to the caller, whose field defines them.
//!
//! A field that fails to parse fails as a whole (§4.2). Several lines of an
//! Item field are combined before parsing and so fail; several lines of a
//! List field are combined into one List (§4.2).

/// Parses an sf-string Item (`"..."` with `\"` and `\\` escapes,
/// printable ASCII), with optional parameters.
pub fn parse_string(v: &[u8]) -> Option<String> {
    let (s, rest) = parse_string_prefix(trim_sp(v))?;
    skip_params(rest)?.is_empty().then_some(s)
}

/// Leading and trailing SP (RFC 9651 §4.2: parsing discards them).
fn trim_sp(mut v: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' '] = v {
        v = rest;
    }
    v
}

/// Skips `*( ";" *SP key [ "=" bare-item ] )` (RFC 9651 §3.1.2), returning
/// what follows; `None` when a parameter is malformed.
fn skip_params(v: &[u8]) -> Option<&[u8]> {
    walk_params(v, |_, _| {})
}

/// A parameter's value as far as our fields use them: an sf-integer, or
/// some other valid bare item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamValue {
    Integer(i64),
    /// `;key` alone: boolean true (§3.1.2).
    True,
    Other,
}

/// Parameters in order: key and value.
pub type Params = Vec<(String, ParamValue)>;

/// Parses `*( ";" *SP key [ "=" bare-item ] )` (RFC 9651 §3.1.2) into its
/// keys and values, returning what follows; `None` when malformed.
fn parse_params(v: &[u8]) -> Option<(Params, &[u8])> {
    let mut out: Params = Vec::new();
    let rest = walk_params(v, |key, value| {
        // A repeated key keeps its place and takes the later value (§4.2.3.2).
        match out.iter_mut().find(|(k, _)| k.as_bytes() == key) {
            Some(slot) => slot.1 = value,
            None => out.push((String::from_utf8_lossy(key).into_owned(), value)),
        }
    })?;
    Some((out, rest))
}

/// Walks parameters, handing each key and value to `each` without
/// allocating (what `Priority` parsing per request and the Items' ignored
/// parameters need); returns what follows.
fn walk_params(mut v: &[u8], mut each: impl FnMut(&[u8], ParamValue)) -> Option<&[u8]> {
    while let Some(rest) = v.strip_prefix(b";") {
        let rest = rest.iter().position(|&b| b != b' ').map_or(&rest[rest.len()..], |i| &rest[i..]);
        let (key, after) = parse_key(rest)?;
        v = after;
        let value = match v.strip_prefix(b"=") {
            Some(val) => {
                let after = skip_bare_item(val)?;
                let item = &val[..val.len() - after.len()];
                v = after;
                match parse_integer(item) {
                    Some(n) => ParamValue::Integer(n),
                    None => ParamValue::Other,
                }
            }
            None => ParamValue::True,
        };
        each(key, value);
    }
    Some(v)
}

/// `key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`.
fn parse_key(v: &[u8]) -> Option<(&[u8], &[u8])> {
    let first = *v.first()?;
    if !(first.is_ascii_lowercase() || first == b'*') {
        return None;
    }
    let end = v.iter().position(|&b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b))).unwrap_or(v.len());
    Some(v.split_at(end))
}

/// One member of a Dictionary (RFC 9651 §3.2) as [`parse_string_dictionary`]
/// reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub key: String,
    /// The member's Inner List of sf-strings; `None` for a bare key
    /// (boolean true, §3.2).
    pub strings: Option<Vec<String>>,
    /// The member's parameters, in order.
    pub params: Params,
}

/// Parses a Dictionary whose values are Inner Lists of sf-strings or bare
/// keys, each with parameters, e.g. `heavy=("POST /report/");u=6, default;u=3`.
/// A repeated key keeps its first place and takes the later value
/// (§4.2.2). `None` when the field fails to parse (as a whole, §4.2).
pub fn parse_string_dictionary(v: &[u8]) -> Option<Vec<Member>> {
    let mut out: Vec<Member> = Vec::new();
    let mut rest = crate::h1::trim(v);
    if rest.is_empty() {
        return Some(out);
    }
    loop {
        let (key, r) = parse_key(rest)?;
        let (strings, r) = match r.strip_prefix(b"=") {
            Some(r) => {
                let (list, r) = parse_inner_string_list(r)?;
                (Some(list), r)
            }
            None => (None, r),
        };
        let (params, r) = parse_params(r)?;
        let m = Member { key: String::from_utf8_lossy(key).into_owned(), strings, params };
        match out.iter_mut().find(|x| x.key == m.key) {
            Some(slot) => *slot = m,
            None => out.push(m),
        }
        let r = crate::h1::trim(r);
        if r.is_empty() {
            return Some(out);
        }
        rest = crate::h1::trim(r.strip_prefix(b",")?);
        if rest.is_empty() {
            return None;
        }
    }
}

/// `"(" *SP [ sf-item *( 1*SP sf-item ) *SP ] ")"` of sf-strings (§3.1.1);
/// the items' own parameters are validated and ignored.
fn parse_inner_string_list(v: &[u8]) -> Option<(Vec<String>, &[u8])> {
    let mut rest = v.strip_prefix(b"(")?;
    let mut out = Vec::new();
    loop {
        rest = trim_leading_sp(rest);
        if let Some(r) = rest.strip_prefix(b")") {
            return Some((out, r));
        }
        let (s, r) = parse_string_prefix(rest)?;
        out.push(s);
        let r = skip_params(r)?;
        // Items are separated by at least one SP.
        if !(r.starts_with(b" ") || r.starts_with(b")")) {
            return None;
        }
        rest = r;
    }
}

/// The urgency of an RFC 9218 `Priority` field value (§4.1): the `u`
/// member of its sf-dictionary, an integer 0 to 7. `None` when the field
/// does not parse or `u` is absent or out of range: the request keeps its
/// default (§4: an invalid field is ignored).
pub fn priority_urgency(v: &[u8]) -> Option<u8> {
    let mut rest = crate::h1::trim(v);
    let mut u = None;
    while !rest.is_empty() {
        let (key, r) = parse_key(rest)?;
        let (value, r) = match r.strip_prefix(b"=") {
            // No member of this field is an Inner List (§4).
            Some(r) if r.starts_with(b"(") => return None,
            Some(r) => {
                let after = skip_bare_item(r)?;
                (Some(&r[..r.len() - after.len()]), after)
            }
            None => (None, r),
        };
        let r = crate::h1::trim(skip_params(r)?);
        if key == b"u" {
            // A repeated key takes the later value (RFC 9651 §4.2.2).
            u = value.and_then(parse_integer);
        }
        if r.is_empty() {
            break;
        }
        rest = crate::h1::trim(r.strip_prefix(b",")?);
        if rest.is_empty() {
            return None;
        }
    }
    u.filter(|u| (0..=7).contains(u)).map(|u| u as u8)
}

fn trim_leading_sp(v: &[u8]) -> &[u8] {
    let n = v.iter().take_while(|&&b| b == b' ').count();
    &v[n..]
}

/// Skips one bare item (§3.3): integer or decimal, string, token, byte
/// sequence or boolean.
fn skip_bare_item(v: &[u8]) -> Option<&[u8]> {
    let first = *v.first()?;
    match first {
        b'"' => parse_string_prefix(v).map(|(_, rest)| rest),
        b'-' | b'0'..=b'9' => {
            let digits = if first == b'-' { &v[1..] } else { v };
            let end = digits.iter().position(|&b| !(b.is_ascii_digit() || b == b'.')).unwrap_or(digits.len());
            let num = &digits[..end];
            let ok = !num.is_empty()
                && num[0].is_ascii_digit()
                && num.iter().filter(|&&b| b == b'.').count() <= 1
                && !num.ends_with(b".")
                && end <= 20;
            ok.then(|| &digits[end..])
        }
        b'?' => matches!(v.get(1), Some(b'0' | b'1')).then(|| &v[2..]),
        b':' => {
            let close = v[1..].iter().position(|&b| b == b':')? + 1;
            v[1..close].iter().all(|&b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)).then(|| &v[close + 1..])
        }
        _ if first.is_ascii_alphabetic() || first == b'*' => {
            let end = v.iter().position(|&b| !(b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b))).unwrap_or(v.len());
            Some(&v[end..])
        }
        _ => None,
    }
}

fn parse_string_prefix(v: &[u8]) -> Option<(String, &[u8])> {
    let mut it = v.strip_prefix(b"\"")?.iter().enumerate();
    let mut out = String::new();
    let body = &v[1..];
    while let Some((i, &b)) = it.next() {
        match b {
            b'\\' => match it.next() {
                Some((_, &e @ (b'"' | b'\\'))) => out.push(char::from(e)),
                _ => return None,
            },
            b'"' => return Some((out, &body[i + 1..])),
            0x20..=0x7e => out.push(char::from(b)),
            _ => return None,
        }
    }
    None
}

/// Parses an sf-integer Item (at most 15 digits, optional leading `-`),
/// with optional parameters.
pub fn parse_integer(v: &[u8]) -> Option<i64> {
    let v = trim_sp(v);
    let end = v.iter().position(|&b| b == b';').unwrap_or(v.len());
    skip_params(&v[end..])?.is_empty().then_some(())?;
    let v = &v[..end];
    let (neg, digits) = match v.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, v),
    };
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: i64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(if neg { -n } else { n })
}

/// Parses an sf-list whose members are all sf-strings.
pub fn parse_string_list(v: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = crate::h1::trim(v);
    if rest.is_empty() {
        return Some(out);
    }
    loop {
        let (s, r) = parse_string_prefix(rest)?;
        out.push(s);
        let r = crate::h1::trim(skip_params(r)?);
        if r.is_empty() {
            return Some(out);
        }
        rest = crate::h1::trim(r.strip_prefix(b",")?);
        if rest.is_empty() {
            return None;
        }
    }
}

/// Whether an Item is the sf-boolean true (`?1`), with optional parameters.
pub fn is_true(v: &[u8]) -> bool {
    let v = trim_sp(v);
    v.starts_with(b"?1") && skip_params(&v[2..]).is_some_and(|r| r.is_empty())
}

/// Serializes an sf-string; `None` when `s` has characters it cannot carry.
pub fn string(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => return None,
        }
    }
    out.push('"');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_round_trip() {
        for s in ["w-1", "a \"q\" \\ b", ""] {
            assert_eq!(parse_string(string(s).unwrap().as_bytes()).unwrap(), s);
        }
        assert!(string("é").is_none());
        assert!(parse_string(b"\"open").is_none());
        assert!(parse_string(b"\"a\"x").is_none());
    }

    #[test]
    fn lists_and_integers() {
        assert_eq!(parse_string_list(b"\"/a/\", \"/b\"").unwrap(), ["/a/", "/b"]);
        assert_eq!(parse_string_list(b"").unwrap(), Vec::<String>::new());
        assert!(parse_string_list(b"\"/a/\",").is_none());
        assert!(parse_string_list(b"/a/").is_none());
        assert_eq!(parse_integer(b"64"), Some(64));
        assert_eq!(parse_integer(b"-3"), Some(-3));
        assert_eq!(parse_integer(b"1x"), None);
    }

    #[test]
    fn dictionaries_of_string_lists() {
        let d =
            parse_string_dictionary(b"heavy=(\"POST /report/\" \"GET /export/\");u=6;limit=4, api=(\"/api/\");u=1, default;u=3").unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].key, "heavy");
        assert_eq!(d[0].strings.as_deref().unwrap(), ["POST /report/", "GET /export/"]);
        assert_eq!(d[0].params, [("u".to_string(), ParamValue::Integer(6)), ("limit".to_string(), ParamValue::Integer(4))]);
        assert_eq!(d[2].strings, None);
        assert_eq!(d[2].params, [("u".to_string(), ParamValue::Integer(3))]);
        // Empty inner list, inner whitespace, item parameters, flags.
        let d = parse_string_dictionary(b"a=( \"/x\";p=1  \"/y\" );f;g=tok, b=()").unwrap();
        assert_eq!(d[0].strings.as_deref().unwrap(), ["/x", "/y"]);
        assert_eq!(d[0].params, [("f".to_string(), ParamValue::True), ("g".to_string(), ParamValue::Other)]);
        assert_eq!(d[1].strings.as_deref().unwrap(), Vec::<String>::new());
        // A repeated key: first place, later value (RFC 9651 §4.2.2).
        let d = parse_string_dictionary(b"a;u=1, b, a;u=2").unwrap();
        assert_eq!((d[0].key.as_str(), d.len()), ("a", 2));
        assert_eq!(d[0].params, [("u".to_string(), ParamValue::Integer(2))]);
        assert_eq!(parse_string_dictionary(b"").unwrap(), Vec::<Member>::new());
        for bad in [&b"A=(\"/x\")"[..], b"a=(\"/x\"\"/y\")", b"a=(\"/x\"", b"a=\"/x\"", b"a,", b"a=(/x)", b"a;U=1", b"a b"] {
            assert!(parse_string_dictionary(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn priority_urgency_of_rfc_9218() {
        assert_eq!(priority_urgency(b"u=5, i"), Some(5));
        assert_eq!(priority_urgency(b"i, u=0"), Some(0));
        assert_eq!(priority_urgency(b"i"), None);
        assert_eq!(priority_urgency(b"u=1, u=6"), Some(6));
        for bad in [&b"u=8"[..], b"u=-1", b"u=1.5", b"u=(1)", b"u=1,", b"U=1", b"u=\"3\""] {
            assert_eq!(priority_urgency(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn parameters_are_validated_and_ignored() {
        assert_eq!(parse_string(b"\"w-1\";a=1;b;c=?0;d=\"x\";e=tok;f=:aGk=:;g=-1.5").unwrap(), "w-1");
        assert_eq!(parse_integer(b"3;x").unwrap(), 3);
        assert_eq!(parse_string_list(b"\"/a/\";p=1, \"/b\"").unwrap(), ["/a/", "/b"]);
        for bad in [&b"\"w\";A=1"[..], b"\"w\";=1", b"\"w\";a=", b"\"w\";a=1.", b"\"w\" x"] {
            assert!(parse_string(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        // Two lines of an Item field combine into something that is no Item.
        assert!(parse_integer(b"3, 4").is_none());
    }
}
