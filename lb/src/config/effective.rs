//! The effective configuration as TOML, every default filled in: what
//! `ptth-lb check` prints. Rendered from the validated [`Config`], so what
//! it shows is what the cores would run with; it reads back as the same
//! config (tested), secrets aside: a token is shown by its SHA-256.

use toml::{Table, Value};

use super::{Config, OriginPolicy, Profile};

fn s(v: impl ToString) -> Value {
    Value::String(v.to_string())
}

fn int(v: impl TryInto<i64>) -> Value {
    Value::Integer(v.try_into().unwrap_or(i64::MAX))
}

fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> Value {
    Value::Array(items.into_iter().map(s).collect())
}

fn ms(d: std::time::Duration) -> Value {
    int(d.as_millis())
}

fn origins(o: &OriginPolicy) -> Value {
    match o {
        OriginPolicy::Any => list(["*"]),
        OriginPolicy::Only(list_) => list(list_.iter()),
    }
}

fn table(entries: Vec<(&str, Value)>) -> Value {
    Value::Table(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// The deployment config (`--config`), flags applied, defaults filled.
/// `tunnel_tls`: the tunnel listener's TLS as resolved. The shared
/// `tunnel.token` is replaced by a comment line naming its length.
pub fn config_toml(c: &Config, tunnel_tls: bool) -> String {
    let mut t = Table::new();
    t.insert(
        "listen".into(),
        table(vec![
            ("client", list(&c.client_listen)),
            ("client_tls", list(&c.client_tls_listen)),
            ("tunnel", s(c.tunnel_listen)),
            ("admin", s(c.admin_listen.map_or(String::new(), |a| a.to_string()))),
        ]),
    );
    let mut tunnel = vec![
        ("allowed_origins", origins(&c.origins)),
        ("max_tunnels_per_worker", int(c.max_tunnels_per_worker)),
        ("max_tunnels_per_peer", int(c.max_tunnels_per_peer)),
        ("max_tunnels", int(c.max_tunnels)),
        ("tls", s(if tunnel_tls { "on" } else { "off" })),
        ("insecure_cleartext", Value::Boolean(c.insecure_cleartext)),
        ("require_client_cert", Value::Boolean(c.worker_certs.required)),
    ];
    if let Some(ca) = &c.worker_certs.ca {
        tunnel.push(("client_ca", s(ca.display())));
    }
    t.insert("tunnel".into(), table(tunnel));
    t.insert(
        "forwarding".into(),
        table(vec![
            ("trusted_proxies", list(c.forwarding.trusted.iter().map(|(ip, len)| format!("{ip}/{len}")))),
            ("x_forwarded", Value::Boolean(c.forwarding.x_forwarded)),
        ]),
    );
    let mut classes = vec![("most_urgent", int(c.classes.most_urgent)), ("max_limit", int(c.classes.max_limit))];
    if let Some(a) = &c.classes.allowed {
        classes.push(("allowed", list(a)));
    }
    t.insert("classes".into(), table(classes));
    t.insert("routes".into(), table(vec![("reserved", list(&c.reserved_routes))]));
    let certs: Vec<Value> = c
        .tls_certs
        .iter()
        .map(|cs| table(vec![("cert", s(cs.cert.display())), ("key", s(cs.key.display())), ("names", list(&cs.names))]))
        .collect();
    if !certs.is_empty() {
        t.insert("tls".into(), table(vec![("certificates", Value::Array(certs))]));
    }
    let ids: Vec<Value> = c
        .identities
        .iter()
        .map(|id| {
            let g = &id.grant;
            let mut e = vec![("name", s(&id.name))];
            if let Some(h) = id.digest_hex() {
                e.push(("token_sha256", s(h)));
            }
            if !id.cert_names.is_empty() {
                e.push(("cert_names", list(&id.cert_names)));
            }
            e.push(("origins", origins(&g.origins)));
            if let Some(r) = &g.routes {
                e.push(("routes", list(r)));
            }
            if let Some(a) = &g.classes.allowed {
                e.push(("classes", list(a)));
            }
            e.push(("most_urgent", int(g.classes.most_urgent)));
            e.push(("max_limit", int(g.classes.max_limit)));
            e.push(("max_tunnels", int(g.max_tunnels)));
            e.push(("worker_ids", g.worker_ids.as_ref().map_or_else(|| list(["*"]), list)));
            table(e)
        })
        .collect();
    if !ids.is_empty() {
        t.insert("identities".into(), Value::Array(ids));
    }
    let mut out = String::new();
    if let Some(tok) = &c.token {
        out.push_str(&format!("# tunnel.token is set ({} characters; not shown)\n", tok.len()));
    }
    out.push_str(&toml::to_string(&t).unwrap_or_else(|e| format!("# could not render: {e}\n")));
    out
}

/// The per-core profile, every key set (the built-in one with the given
/// profile over it).
pub fn profile_toml(p: &Profile) -> String {
    let mut t = Table::new();
    t.insert(
        "runtime".into(),
        table(vec![
            ("cores", int(p.cores)),
            ("pin", Value::Boolean(p.pin)),
            (
                "driver",
                s(match p.runtime.driver {
                    ptth_proto::rt::runtime::DriverChoice::Auto => "auto",
                    ptth_proto::rt::runtime::DriverChoice::Uring => "uring",
                    ptth_proto::rt::runtime::DriverChoice::Legacy => "legacy",
                }),
            ),
            ("ring_flags", s(p.runtime.flags.as_str())),
            ("ring_entries", int(p.runtime.entries)),
        ]),
    );
    t.insert(
        "buffers".into(),
        table(vec![("client_read", int(p.client_read)), ("tunnel_read", int(p.tunnel_read)), ("replay_max", int(p.replay_max))]),
    );
    t.insert(
        "limits".into(),
        table(vec![
            ("max_request_line", int(p.limits.max_request_line)),
            ("max_head", int(p.limits.max_head)),
            ("max_headers", int(p.limits.max_headers)),
            ("max_clients", int(p.max_clients)),
        ]),
    );
    t.insert(
        "queue".into(),
        table(vec![("max_waiting", int(p.queue_max)), ("max_wait_ms", ms(p.queue_wait)), ("retry_after_s", int(p.retry_after_s))]),
    );
    t.insert(
        "timeouts".into(),
        table(vec![
            ("header_ms", ms(p.header_timeout)),
            ("keepalive_ms", ms(p.keepalive_timeout)),
            ("response_ms", ms(p.response_timeout)),
            ("io_ms", ms(p.io_timeout)),
            ("handshake_ms", ms(p.handshake_timeout)),
            ("drain_ms", ms(p.drain_timeout)),
            ("route_hold_ms", ms(p.route_hold)),
        ]),
    );
    t.insert(
        "h2".into(),
        table(vec![
            ("max_streams", int(p.h2_max_streams)),
            ("stream_window", int(p.h2_windows.stream)),
            ("connection_window", int(p.h2_windows.connection)),
            ("ping_ms", ms(p.ping_every)),
            ("ping_timeout_ms", ms(p.ping_timeout)),
        ]),
    );
    t.insert(
        "health".into(),
        table(vec![
            ("consecutive_failures", int(p.health.consecutive_failures)),
            ("ejection_ms", ms(p.health.ejection)),
            ("max_ejection_ms", ms(p.health.max_ejection)),
        ]),
    );
    toml::to_string(&t).unwrap_or_else(|e| format!("# could not render: {e}\n"))
}

/// What differs from `old` to `new`, as `key = value` lines (`key
/// changed` for tables in arrays, such as identities; the shared token by
/// name only).
pub fn changes(old: &Config, new: &Config, tunnel_tls: bool) -> Vec<String> {
    let parse = |c: &Config| -> Value {
        // The profile's tables (runtime, timeouts, ...) are not the config's.
        let text = format!("{}\n{}", config_toml(c, tunnel_tls), profile_toml(&c.profile));
        text.parse::<Table>().map(Value::Table).unwrap_or(Value::Table(Table::new()))
    };
    let mut out = Vec::new();
    diff("", &parse(old), &parse(new), &mut out);
    if old.token != new.token {
        out.push("tunnel.token changed".into());
    }
    if old.log_level != new.log_level {
        out.push(format!("log.level = {:?}", new.log_level));
    }
    out
}

fn diff(key: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    let key_of = |k: &str| if key.is_empty() { k.to_string() } else { format!("{key}.{k}") };
    match (a, b) {
        (Value::Table(x), Value::Table(y)) => {
            for (k, v) in y {
                match x.get(k) {
                    Some(u) => diff(&key_of(k), u, v, out),
                    None => out.push(format!("{} added", key_of(k))),
                }
            }
            for k in x.keys().filter(|k| !y.contains_key(*k)) {
                out.push(format!("{} removed", key_of(k)));
            }
        }
        (x, y) if x == y => {}
        (_, Value::Array(items)) if items.iter().any(Value::is_table) => out.push(format!("{key} changed")),
        (_, y) => out.push(format!("{key} = {y}")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    /// What `check` prints reads back as the same config: rendering the
    /// reread config gives the same text.
    #[test]
    fn the_effective_config_reads_back_as_itself() {
        let text = r#"
[listen]
client = ["127.0.0.1:8080", "127.0.0.1:8081"]
tunnel = "127.0.0.1:7000"
admin = ""

[tunnel]
allowed_origins = ["https://app.example"]
max_tunnels = 99
client_ca = "/etc/ptth/ca.pem"

[forwarding]
trusted_proxies = ["10.0.0.0/8", "::1"]

[classes]
allowed = ["heavy"]
most_urgent = 2

[routes]
reserved = ["/admin/"]

[[tls.certificates]]
cert = "/etc/ptth/lb.pem"
key = "/etc/ptth/lb.key"
names = ["app.example"]

[[identities]]
name = "team-a"
token = "0123456789abcdef0123"
routes = ["/a/"]
max_tunnels = 8

[[identities]]
name = "team-b"
cert_names = ["b-*"]
worker_ids = ["*"]
"#;
        let profile_text = "[timeouts]\nheader_ms = 1234\n[runtime]\ncores = 3\n";
        let c = Config::from_file(parse_toml("c", text).unwrap(), Profile::load(Some(("p", profile_text))).unwrap()).unwrap();
        let (once, p_once) = (config_toml(&c, false), profile_toml(&c.profile));
        assert!(once.contains("token_sha256") && !once.contains("0123456789abcdef0123"), "no token in clear:\n{once}");
        let again = Config::from_file(parse_toml("again", &once).unwrap(), Profile::load(Some(("p", &p_once))).unwrap()).unwrap();
        assert_eq!(config_toml(&again, false), once);
        assert_eq!(profile_toml(&again.profile), p_once);
        assert!(p_once.contains("header_ms = 1234") && p_once.contains("cores = 3"), "{p_once}");
        assert_eq!(changes(&c, &again, false), Vec::<String>::new());
    }

    #[test]
    fn changes_name_each_key_that_moved() {
        let load = |config: &str, profile: &str| {
            Config::from_file(parse_toml("c", config).unwrap(), Profile::load(Some(("p", profile))).unwrap()).unwrap()
        };
        let a = load("[tunnel]\ntoken = \"aaaaaaaaaaaaaaaa\"\n", "");
        let b = load(
            "[tunnel]\ntoken = \"bbbbbbbbbbbbbbbb\"\nmax_tunnels = 7\n[[identities]]\nname = \"x\"\ntoken = \"0123456789abcdef\"\n[log]\nlevel = \"warn\"\n",
            "[timeouts]\nheader_ms = 5\n",
        );
        assert_eq!(
            changes(&a, &b, false),
            vec!["identities added", "timeouts.header_ms = 5", "tunnel.max_tunnels = 7", "tunnel.token changed", "log.level = \"warn\""]
        );
    }
}
