//! Where a key sits in a TOML file, so a config error can name the line:
//! [`line_of`] finds the line that sets a dotted key (`timeouts.header_ms`,
//! `identities[1].token`), [`key_at`] names the key a line sets (for the
//! parser's own errors, which give a position and no key).
//!
//! A line scanner, not a parser: it follows `[table]` and `[[array]]`
//! headers and `key = value` lines and skips the lines of multi-line arrays
//! and strings. The file has already been parsed by the time it is asked, so
//! it only needs to find things, never to judge them; where it cannot tell,
//! the error goes without a line.

/// One `key = value` line: its full dotted key and 1-based line number.
struct Entry {
    key: String,
    line: usize,
    /// The value's last line (a multi-line array or string).
    end: usize,
}

fn entries(text: &str) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut table = String::new();
    let mut arrays: Vec<(String, usize)> = Vec::new();
    // Inside a multi-line value: unclosed brackets, or a `"""` string.
    let (mut depth, mut in_string) = (0i32, false);
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if in_string || depth > 0 {
            if let Some(e) = out.last_mut() {
                e.end = i + 1;
            }
            if in_string {
                in_string = !(line.contains("\"\"\"") || line.contains("'''"));
            } else {
                depth += brackets(line);
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = unquote(name);
            let n = match arrays.iter_mut().find(|(a, _)| *a == name) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    arrays.push((name.clone(), 0));
                    0
                }
            };
            table = format!("{name}[{n}]");
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = unquote(name);
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let key = unquote(key);
        out.push(Entry { key: if table.is_empty() { key } else { format!("{table}.{key}") }, line: i + 1, end: i + 1 });
        let value = value.trim();
        if value.starts_with("\"\"\"") || value.starts_with("'''") {
            in_string = value.len() < 6 || !(value[3..].contains("\"\"\"") || value[3..].contains("'''"));
        } else {
            depth = brackets(value);
        }
    }
    out
}

/// Net `[` minus `]` outside strings and comments.
fn brackets(s: &str) -> i32 {
    let (mut n, mut quote) = (0, None);
    for c in s.chars() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') => break,
            (None, '[') => n += 1,
            (None, ']') => n -= 1,
            _ => {}
        }
    }
    n
}

/// `a . "b"` → `a.b`.
fn unquote(k: &str) -> String {
    k.split('.').map(|p| p.trim().trim_matches('"').trim_matches('\'')).collect::<Vec<_>>().join(".")
}

/// Drops `[n]` indexes: `tls.certificates[0].names` → `tls.certificates.names`.
fn without_indexes(k: &str) -> String {
    let mut out = String::with_capacity(k.len());
    let mut skipping = false;
    for c in k.chars() {
        match c {
            '[' => skipping = true,
            ']' => skipping = false,
            c if !skipping => out.push(c),
            _ => {}
        }
    }
    out
}

/// The line that sets `key` (exactly, or, for a key given without array
/// indexes, its first occurrence in any element).
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let all = entries(text);
    all.iter()
        .find(|e| e.key == key)
        .or_else(|| (!key.contains('[')).then(|| all.iter().find(|e| without_indexes(&e.key) == key)).flatten())
        .map(|e| e.line)
}

/// The dotted key set on `line` (1-based), if a `key = value` starts there
/// or the line is inside its value.
pub fn key_at(text: &str, line: usize) -> Option<String> {
    entries(text).into_iter().find(|e| (e.line..=e.end).contains(&line)).map(|e| e.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# a comment
profile = "p.toml"

[listen]
client = [
  "127.0.0.1:8080",
  "127.0.0.1:8081",
]
tunnel = "0.0.0.0:7000"

[[identities]]
name = "a"
token = "x = y [not a table]"

[[identities]]
name = "b"
"token_sha256" = "00"

[timeouts]
header_ms = 0
"#;

    #[test]
    fn finds_the_line_of_each_key() {
        assert_eq!(line_of(TEXT, "profile"), Some(2));
        assert_eq!(line_of(TEXT, "listen.client"), Some(5));
        assert_eq!(line_of(TEXT, "listen.tunnel"), Some(9));
        assert_eq!(line_of(TEXT, "identities[0].token"), Some(13));
        assert_eq!(line_of(TEXT, "identities[1].name"), Some(16));
        assert_eq!(line_of(TEXT, "identities[1].token_sha256"), Some(17));
        assert_eq!(line_of(TEXT, "identities.name"), Some(12), "without an index: the first");
        assert_eq!(line_of(TEXT, "timeouts.header_ms"), Some(20));
        assert_eq!(line_of(TEXT, "timeouts.io_ms"), None);
    }

    #[test]
    fn names_the_key_a_line_sets() {
        assert_eq!(key_at(TEXT, 7).as_deref(), Some("listen.client"), "inside a multi-line array");
        assert_eq!(key_at(TEXT, 20).as_deref(), Some("timeouts.header_ms"));
        assert_eq!(key_at(TEXT, 1), None);
        assert_eq!(key_at(TEXT, 19), None, "a table header sets no key");
    }
}
