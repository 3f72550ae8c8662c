//! `ptth-lb`: command line → validated [`ptth_lb::Config`] → [`ptth_lb::run`],
//! then serve until SIGTERM/SIGINT (graceful drain; a second signal exits).

use std::process::ExitCode;
use std::time::Duration;

use ptth_lb::config::parse_addr;
use ptth_lb::Config;
use ptth_proto::rt::logging::{self, say, LogFormat};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: ptth-lb [demo] [--config FILE] [--profile FILE] [--listen ADDR]...
               [--tunnel-listen ADDR] [--admin-listen ADDR] [--cores N] [--token TOKEN]
               [--tls-listen ADDR]... [--tls-cert FILE --tls-key FILE]
               [--tunnel-tls on|off] [--insecure-cleartext-tunnels] [--share-listeners]
               [--driver auto|uring|legacy] [--log-format text|json] [--quiet]
       ptth-lb check [the same options]   (or -t): validate, print the effective config, exit 0 or 2
       ptth-lb certs dev DIR [--name NAME]... [--worker ID]...

  demo                 also run two in-process workers with a small app, and print curl commands
  --config FILE        TOML config (listeners, tunnel token and policy); see docs/OPERATIONS.md
  --profile FILE       per-core profile overlaying tuning/default.toml (built in)
  --listen ADDR        client listener (repeat for several; default 127.0.0.1:8080)
  --tls-listen ADDR    TLS client listener, HTTP/1.1 and h2 by ALPN (repeat for several)
  --tls-cert FILE      PEM certificate chain for the TLS listeners (with --tls-key; served
                       first, before any [[tls.certificates]] of the config file)
  --tls-key FILE       its PEM private key
  --tunnel-tls on|off  TLS on the tunnel listener with the same certificates (default: on unless
                       the listener is on loopback)
  --insecure-cleartext-tunnels  allow a cleartext tunnel listener off loopback
  --share-listeners    bind the client and tunnel ports even when another ptth-lb holds them
                       (SO_REUSEPORT): start the new lb beside the old, then SIGTERM the old
  --tunnel-listen ADDR worker tunnel listener (default 127.0.0.1:7000)
  --admin-listen ADDR  admin listener for /status and /healthz (default 127.0.0.1:9901; \"off\" disables)
  --cores N            cores to run (default: every allowed CPU)
  --token TOKEN        bearer token workers must present (or env PTTH_TOKEN); without one,
                       only loopback workers are accepted
  --log-format F       text (default) or json, one line per event on stderr; the filter is
                       env PTTH_LOG (RUST_LOG syntax, default info)
  --quiet              log errors only
";

struct Cli {
    demo: bool,
    config: Option<String>,
    profile: Option<String>,
    listen: Vec<String>,
    tls_listen: Vec<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
    tunnel_tls: Option<bool>,
    insecure_cleartext: bool,
    share_listeners: bool,
    tunnel: Option<String>,
    admin: Option<String>,
    cores: Option<usize>,
    token: Option<String>,
    driver: Option<String>,
    log_format: LogFormat,
    quiet: bool,
}

fn parse_cli(args: Vec<String>) -> Result<Cli, String> {
    let mut cli = Cli {
        demo: false,
        config: None,
        profile: None,
        listen: vec![],
        tls_listen: vec![],
        tls_cert: None,
        tls_key: None,
        tunnel_tls: None,
        insecure_cleartext: false,
        share_listeners: false,
        tunnel: None,
        admin: None,
        cores: None,
        token: None,
        driver: None,
        log_format: LogFormat::Text,
        quiet: false,
    };
    let mut it = args.into_iter().peekable();
    if it.peek().map(String::as_str) == Some("demo") {
        it.next();
        cli.demo = true;
    }
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag}: missing value"));
        match flag.as_str() {
            "--config" => cli.config = Some(value()?),
            "--profile" => cli.profile = Some(value()?),
            "--listen" => cli.listen.push(value()?),
            "--tls-listen" => cli.tls_listen.push(value()?),
            "--tls-cert" => cli.tls_cert = Some(value()?),
            "--tls-key" => cli.tls_key = Some(value()?),
            "--tunnel-tls" => {
                let v = value()?;
                cli.tunnel_tls = Some(match v.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(format!("--tunnel-tls: expected on or off, got {v:?}")),
                });
            }
            "--insecure-cleartext-tunnels" => cli.insecure_cleartext = true,
            "--share-listeners" => cli.share_listeners = true,
            "--tunnel-listen" => cli.tunnel = Some(value()?),
            "--admin-listen" => cli.admin = Some(value()?),
            "--cores" => {
                let v = value()?;
                cli.cores = Some(
                    v.parse().ok().filter(|n| (1..=1024).contains(n)).ok_or_else(|| format!("--cores: expected 1 to 1024, got {v:?}"))?,
                );
            }
            "--token" => cli.token = Some(value()?),
            "--driver" => cli.driver = Some(value()?),
            "--log-format" => {
                let v = value()?;
                cli.log_format = LogFormat::parse(&v).ok_or_else(|| format!("--log-format: expected text or json, got {v:?}"))?;
            }
            "--quiet" => cli.quiet = true,
            other => return Err(format!("unknown argument {other:?} (see --help)")),
        }
    }
    Ok(cli)
}

impl Cli {
    fn sources(&self) -> ptth_lb::config::Sources {
        ptth_lb::config::Sources { config: self.config.as_ref().map(Into::into), profile: self.profile.as_ref().map(Into::into) }
    }
}

/// Files first, then flags on top.
fn build_config(cli: &Cli) -> Result<Config, String> {
    let mut cfg = cli.sources().load().map_err(|e| e.to_string())?;
    let profile = &mut cfg.profile;
    if let Some(n) = cli.cores {
        profile.cores = n;
    }
    if let Some(d) = &cli.driver {
        profile.runtime.driver = ptth_proto::rt::runtime::DriverChoice::parse(d)
            .ok_or_else(|| format!("--driver: expected auto, uring or legacy, got {d:?}"))?;
    }
    if !cli.listen.is_empty() {
        cfg.client_listen = cli.listen.iter().map(|a| parse_addr("--listen", a)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    }
    if !cli.tls_listen.is_empty() {
        cfg.client_tls_listen =
            cli.tls_listen.iter().map(|a| parse_addr("--tls-listen", a)).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    }
    match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => {
            let spec = ptth_lb::tls::CertSpec { cert: cert.into(), key: key.into(), names: vec![] };
            cfg.tls_certs.insert(0, spec);
        }
        (None, None) => {}
        (Some(_), None) => return Err("--tls-cert: needs --tls-key FILE too".into()),
        (None, Some(_)) => return Err("--tls-key: needs --tls-cert FILE too".into()),
    }
    if cli.tunnel_tls.is_some() {
        cfg.tunnel_tls = cli.tunnel_tls;
    }
    cfg.insecure_cleartext |= cli.insecure_cleartext;
    cfg.share_listeners = cli.share_listeners;
    if let Some(t) = &cli.tunnel {
        cfg.tunnel_listen = parse_addr("--tunnel-listen", t).map_err(|e| e.to_string())?;
    }
    if let Some(a) = &cli.admin {
        cfg.admin_listen = if a == "off" { None } else { Some(parse_addr("--admin-listen", a).map_err(|e| e.to_string())?) };
    }
    if let Some(t) = cli.token.clone().or_else(|| std::env::var("PTTH_TOKEN").ok()).filter(|t| !t.is_empty()) {
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("--token: must be printable ASCII without spaces".into());
        }
        cfg.token = Some(t);
    }
    cfg.quiet = cli.quiet;
    Ok(cfg)
}

/// `ptth-lb certs dev DIR [--name NAME]... [--worker ID]...`
fn certs_command(args: &[String]) -> ExitCode {
    let usage = "usage: ptth-lb certs dev DIR [--name NAME]... [--worker ID]...\n  \
                 writes a development CA, an lb certificate for the names (default localhost and 127.0.0.1)\n  \
                 and a client certificate per worker id (default worker-1) into DIR";
    let (Some("dev"), Some(dir)) = (args.first().map(String::as_str), args.get(1)) else {
        complain(format_args!("{usage}"));
        return ExitCode::from(2);
    };
    let mut d = ptth_lb::certs::DevCerts::new(dir.into());
    let (mut names, mut workers) = (Vec::new(), Vec::new());
    let mut it = args[2..].iter();
    while let Some(flag) = it.next() {
        let Some(v) = it.next() else {
            complain(format_args!("{flag}: missing value\n{usage}"));
            return ExitCode::from(2);
        };
        match flag.as_str() {
            "--name" => names.push(v.clone()),
            "--worker" => workers.push(v.clone()),
            other => {
                complain(format_args!("unknown argument {other:?}\n{usage}"));
                return ExitCode::from(2);
            }
        }
    }
    if !names.is_empty() {
        d.names = names;
    }
    if !workers.is_empty() {
        d.workers = workers;
    }
    match ptth_lb::certs::write_dev(&d) {
        Ok(files) => {
            for f in &files {
                say(format_args!("wrote {}", f.display()));
            }
            let p = |f: &str| d.dir.join(f).display().to_string();
            say(format_args!("serve TLS:  ptth-lb --tls-listen 127.0.0.1:8443 --tls-cert {} --tls-key {}", p("lb.pem"), p("lb.key")));
            say(format_args!("try it:     curl --cacert {} https://localhost:8443/", p("ca.pem")));
            ExitCode::SUCCESS
        }
        Err(e) => {
            complain(format_args!("{e}"));
            ExitCode::from(1)
        }
    }
}

/// `ptth-lb check ...` / `ptth-lb -t ...`: everything `ptth-lb` would check
/// before binding (files, keys, ranges, certificates), then the effective
/// config on stdout. Exit 0 when it would start, 2 when not.
fn check_command(args: Vec<String>) -> ExitCode {
    let checked = parse_cli(args).and_then(|cli| {
        let cfg = build_config(&cli)?;
        let tunnel_tls = cfg.tunnel_tls().map_err(|e| e.to_string())?;
        if !cfg.client_tls_listen.is_empty() || tunnel_tls {
            if cfg.tls_certs.is_empty() {
                return Err("listen.client_tls: a TLS listener needs a certificate: [[tls.certificates]] in the config, or --tls-cert and --tls-key".into());
            }
            ptth_lb::tls::ServerTls::new(cfg.tls_certs.clone(), &cfg.worker_certs).map_err(|e| e.to_string())?;
        }
        Ok((cli, cfg, tunnel_tls))
    });
    // As ptth-lb would run: with the open-file limit raised.
    ptth_proto::rt::runtime::raise_open_files();
    let (cli, cfg, tunnel_tls) = match checked {
        Ok(c) => c,
        Err(e) => {
            complain(format_args!("{e}"));
            complain(format_args!("the config is NOT valid"));
            return ExitCode::from(2);
        }
    };
    for w in ptth_lb::config_warnings(&cfg) {
        complain(format_args!("warning: {w}"));
    }
    let from = |p: &Option<String>, what: &str| p.as_deref().map_or_else(|| format!("{what} (none given)"), String::from);
    say(format_args!("# ptth-lb check: the effective config, every default filled in"));
    say(format_args!("# config: {}", from(&cli.config, "built-in defaults")));
    say(format_args!("{}", ptth_lb::config::effective::config_toml(&cfg, tunnel_tls)));
    let overlay = cfg.profile_file.as_ref().map(|p| format!(", then {}", p.display())).unwrap_or_default();
    say(format_args!("# profile: tuning/default.toml (built in){overlay}"));
    if cfg.profile.cores == 0 {
        say(format_args!("# runtime.cores = 0: one core per allowed CPU ({} here)", ptth_lb::resolve_cores(0)));
    }
    say(format_args!("{}", ptth_lb::config::effective::profile_toml(&cfg.profile)));
    complain(format_args!("the config is valid"));
    ExitCode::SUCCESS
}

/// A message for the operator before logging is set up (bad flags).
fn complain(msg: std::fmt::Arguments<'_>) {
    ptth_proto::rt::logging::complain("ptth-lb", msg);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        say(format_args!("{}", USAGE.trim_end()));
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--version") {
        say(format_args!("ptth-lb {}", env!("CARGO_PKG_VERSION")));
        return ExitCode::SUCCESS;
    }
    if args.first().map(String::as_str) == Some("certs") {
        return certs_command(&args[1..]);
    }
    if args.first().map(String::as_str) == Some("check") || args.iter().any(|a| a == "-t") {
        return check_command(args.into_iter().filter(|a| a != "check" && a != "-t").collect());
    }
    let cli = match parse_cli(args) {
        Ok(c) => c,
        Err(e) => {
            complain(format_args!("{e}"));
            return ExitCode::from(2);
        }
    };
    let cfg = match build_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            complain(format_args!("{e}"));
            return ExitCode::from(2);
        }
    };
    if let Err(e) = logging::init(cli.log_format, if cfg.quiet { "error" } else { &cfg.log_level }) {
        complain(format_args!("{e}"));
        return ExitCode::from(2);
    }
    ptth_proto::rt::runtime::raise_open_files();
    for w in ptth_lb::config_warnings(&cfg) {
        tracing::warn!("{w}");
    }
    // Identities authenticate workers too (by token or certificate).
    let no_token = cfg.token.is_none() && cfg.identities.is_empty();
    let lb = match ptth_lb::run(cfg) {
        Ok(lb) => lb,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let clients: Vec<String> = lb.client_addrs.iter().map(|a| a.to_string()).collect();
    let tls: Vec<String> = lb.client_tls_addrs.iter().map(|a| a.to_string()).collect();
    for (core, info) in lb.per_core.iter().enumerate() {
        if let Some(why) = &info.driver.fallback {
            tracing::warn!(core, "running on epoll, not io_uring: {why}");
        }
    }
    let runtime = lb.per_core.iter().map(|c| c.describe()).collect::<Vec<_>>().join("; ");
    tracing::info!(cores = lb.cores, runtime = %runtime, clients = %clients.join(", "), tls_clients = %tls.join(", "), tunnels = %lb.tunnel_addr, "started");
    if let Some(a) = lb.admin_addr {
        tracing::info!("admin on http://{a}/status");
    }
    if no_token {
        tracing::warn!("no --token given: accepting workers from loopback only");
    }
    if !lb.tunnel_tls && !lb.tunnel_addr.ip().is_loopback() {
        tracing::warn!(tunnels = %lb.tunnel_addr, "the tunnel listener is cleartext on a routable address (tunnel.insecure_cleartext): tokens and requests cross the network unencrypted");
    }
    let _workers = if cli.demo {
        match ptth_lb::demo::start_workers(lb.tunnel_addr, Duration::from_secs(5)) {
            Ok(w) => {
                let c = lb.client_addr();
                say(format_args!("ptth demo: lb on http://{c}, workers demo-1 and demo-2 dialed in over tunnels to {}", lb.tunnel_addr));
                say(format_args!("try:"));
                say(format_args!("  curl http://{c}/                       # hello from demo-1 or demo-2"));
                say(format_args!("  curl -d 'hi there' http://{c}/echo     # the request as the worker saw it"));
                say(format_args!("  curl http://{c}/slow                   # a 1 s request"));
                say(format_args!("  curl --http2-prior-knowledge http://{c}/   # the same port speaks h2c"));
                if let Some(a) = lb.admin_addr {
                    say(format_args!("  curl http://{a}/status               # cores, tunnels per worker per core, in-flight"));
                }
                say(format_args!("Ctrl-C stops it."));
                w
            }
            Err(e) => {
                tracing::error!("demo workers: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        Vec::new()
    };
    let stop = lb.stop_flag();
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone());
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    // SIGHUP: read the config and profile files again and apply what may
    // change live (docs/OPERATIONS.md, reload); it never ends the process.
    let hup = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone());
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
        if hup.swap(false, std::sync::atomic::Ordering::AcqRel) {
            reload(&lb, &cli);
        }
    }
    tracing::info!("draining");
    drop(_workers);
    lb.shutdown();
    ExitCode::SUCCESS
}

/// One SIGHUP: the same files and flags as at start, read again. One log
/// line either way; a refused reload leaves everything as it was.
fn reload(lb: &ptth_lb::Lb, cli: &Cli) {
    let cfg = match build_config(cli) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused, the running config stays: {e}");
            return;
        }
    };
    for w in ptth_lb::config_warnings(&cfg) {
        tracing::warn!("{w}");
    }
    match lb.reload(cfg) {
        Ok(changes) if changes.is_empty() => tracing::info!("reloaded: nothing changed (certificate files read again)"),
        Ok(changes) => tracing::info!(changes = changes.len(), "reloaded: {}", changes.join(", ")),
        Err(e) => tracing::error!("reload refused, the running config stays: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(s: &str) -> Result<Config, String> {
        build_config(&parse_cli(s.split_whitespace().map(String::from).collect())?)
    }

    #[test]
    fn flags_override_and_errors_name_the_flag() {
        let c = cli("--listen 127.0.0.1:1 --listen 127.0.0.1:2 --cores 3 --admin-listen off --token abc").unwrap();
        assert_eq!(c.client_listen.len(), 2);
        assert_eq!(c.profile.cores, 3);
        assert!(c.admin_listen.is_none());
        let c = cli("--tls-listen 127.0.0.1:8443 --tls-cert a.pem --tls-key a.key").unwrap();
        assert_eq!(c.client_tls_listen, vec!["127.0.0.1:8443".parse().unwrap()]);
        assert_eq!(c.tls_certs[0].cert, std::path::PathBuf::from("a.pem"));
        for (bad, needle) in [
            ("--cores 0", "--cores"),
            ("--listen nope", "--listen"),
            ("--tunnel-listen 1.2.3.4", "--tunnel-listen"),
            ("--driver fast", "--driver"),
            ("--config /nonexistent.toml", "--config"),
            ("--tls-cert a.pem", "--tls-key"),
            ("--tls-key a.key", "--tls-cert"),
            ("--tls-listen 8443", "--tls-listen"),
            ("--bogus", "--bogus"),
        ] {
            let e = cli(bad).err().unwrap();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
