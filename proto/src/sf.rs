//! The small subset of Structured Field Values (RFC 9651) our metadata uses:
//! sf-string, sf-integer and lists of sf-strings, without parameters.

/// Parses an sf-string (`"..."` with `\"` and `\\` escapes, printable ASCII).
pub fn parse_string(v: &[u8]) -> Option<String> {
    let (s, rest) = parse_string_prefix(v)?;
    rest.is_empty().then_some(s)
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

/// Parses an sf-integer (at most 15 digits, optional leading `-`).
pub fn parse_integer(v: &[u8]) -> Option<i64> {
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
}
