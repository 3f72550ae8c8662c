//! Routing: which workers serve a request, by the origins they claimed
//! (`Tunnel-Origins`, the Host matched against them) and the longest path
//! prefix among their routes (`Tunnel-Routes`). Only the best match serves:
//! a worker that claimed the host explicitly beats one that serves any host,
//! then the longest matching prefix wins; workers that match equally well
//! are all candidates, and selection (`tunnel::select`) chooses among them.
//!
//! Plain data: the pool passes its worker entries in and gets indices back;
//! the tests below check the order without sockets.

use crate::tunnel::Meta;

/// Fills `out` with the indices of the entries that best match `host` and
/// `path`, in entry order; empty when none serves them.
pub(crate) fn best_matches<'a>(entries: impl Iterator<Item = (usize, &'a Meta)>, host: &[u8], path: &[u8], out: &mut Vec<usize>) {
    out.clear();
    let mut best = None;
    for (i, meta) in entries {
        let Some(s) = meta.specificity(host, path) else { continue };
        match best {
            Some(b) if s < b => {}
            Some(b) if s == b => out.push(i),
            _ => {
                best = Some(s);
                out.clear();
                out.push(i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ptth_proto::setup::{Claim, Origin};

    fn meta(origins: &[&str], routes: &[&str]) -> Meta {
        let claim =
            if origins.is_empty() { Claim::Any } else { Claim::Origins(origins.iter().map(|o| Origin::parse(o).unwrap()).collect()) };
        Meta { claim, routes: routes.iter().map(|r| r.to_string()).collect(), weight: 1, max_concurrency: None, classes: vec![] }
    }

    fn route(table: &[Meta], host: &str, path: &str) -> Vec<usize> {
        let mut out = Vec::new();
        best_matches(table.iter().enumerate(), host.as_bytes(), path.as_bytes(), &mut out);
        out
    }

    #[test]
    fn longest_prefix_then_claimed_host_wins() {
        let table = [
            meta(&[], &[]),                              // 0: anything
            meta(&[], &["/api/"]),                       // 1: /api/ on any host
            meta(&[], &["/api/v2/"]),                    // 2: a longer prefix
            meta(&["https://shop.example"], &[]),        // 3: one host, every path
            meta(&["https://shop.example"], &["/api/"]), // 4: that host's /api/
            meta(&[], &["/api/"]),                       // 5: same as 1
        ];
        assert_eq!(route(&table, "other.example", "/"), [0]);
        assert_eq!(route(&table, "other.example", "/api/x"), [1, 5]);
        assert_eq!(route(&table, "other.example", "/api/v2/x"), [2]);
        // A worker that claimed the host beats any that did not, however long
        // their prefix.
        assert_eq!(route(&table, "shop.example", "/api/v2/x"), [4]);
        assert_eq!(route(&table, "shop.example", "/cart"), [3]);
    }

    #[test]
    fn nothing_serves_an_unclaimed_host_or_path() {
        let table = [meta(&["https://a.example"], &[]), meta(&[], &["/only/"])];
        assert_eq!(route(&table, "b.example", "/x"), Vec::<usize>::new());
        assert_eq!(route(&table, "b.example", "/only/x"), [1]);
        assert_eq!(route(&[], "a.example", "/"), Vec::<usize>::new());
    }
}
