//! The subset of Structured Field Values (RFC 9651) our metadata uses:
//! Items that are sf-strings or sf-integers, and Lists of sf-strings. Each
//! may carry parameters (§3.1.2), which are validated and ignored: RFC 9651
//! lets a sender add parameters a receiver does not know.
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
fn skip_params(mut v: &[u8]) -> Option<&[u8]> {
    while let Some(rest) = v.strip_prefix(b";") {
        let rest = rest.iter().position(|&b| b != b' ').map_or(&rest[rest.len()..], |i| &rest[i..]);
        // key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )
        let first = *rest.first()?;
        if !(first.is_ascii_lowercase() || first == b'*') {
            return None;
        }
        let end = rest.iter().position(|&b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b))).unwrap_or(rest.len());
        v = &rest[end..];
        if let Some(val) = v.strip_prefix(b"=") {
            v = skip_bare_item(val)?;
        }
    }
    Some(v)
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
