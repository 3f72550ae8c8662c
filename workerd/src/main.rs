//! `ptth-workerd`: the sidecar worker binary. Parses the command line into a
//! [`ptth_workerd::Config`], then serves until SIGTERM/SIGINT (graceful; a
//! second signal exits at once).

use std::process::ExitCode;

use ptth_proto::rt::logging::{self, say, LogFormat};
use ptth_workerd::{Claim, Config, Exchange, Handler, Origin, OriginAddr, OriginCheck, OriginHealth, Responder, Sidecar};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: ptth-workerd --lb ADDR [--lb ADDR]... (--origin URL | --respond SPEC)
         [--claim ORIGIN]... [--route PREFIX]... [--id ID] [--token TOKEN]
         [--tls] [--ca FILE] [--tls-name NAME] [--tls-cert FILE --tls-key FILE]
         [--tunnels-per-core N] [--max-concurrency N] [--weight N] [--class DECL]...
         [--inner h2,http/1.1] [--max-streams N] [--stream-window BYTES]
         [--connection-window BYTES] [--threads N] [--pin]
         [--origin-health PATH] [--origin-check-ms N]
         [--driver auto|uring|legacy] [--log-format text|json] [--verbose] [--quiet]

  --lb ADDR              lb tunnel listener, host:port (repeat for several lbs)
  --origin URL           forward requests to this HTTP/1.1 origin (http://host:port)
  --origin-health PATH   check the origin with GET PATH (2xx/3xx = up); default: a TCP connect
  --origin-check-ms N    time between checks (default 1000; 0: no check). While a check fails
                         the worker withdraws (503 + Retry-After, its tunnels stay up)
  --respond SPEC         built-in responder: hello | echo | delay=MS
  --claim ORIGIN         origin served, e.g. https://app.example (repeat); none = any Host
  --route PREFIX         path prefix served, e.g. /api/ (repeat); none = every path
  --id ID                worker identity (default: hostname-pid)
  --token TOKEN          bearer token for the lb (or env PTTH_TOKEN)
  --tls                  TLS to the lb, verified against the system's root certificates
  --ca FILE              TLS to the lb, verified against the PEM certificates in FILE
  --tls-name NAME        the name the lb's certificate must carry (default: the --lb host)
  --tls-cert FILE        client certificate (PEM chain) for an lb that identifies workers by it
  --tls-key FILE         its private key
  --tunnels-per-core N   tunnels kept on each lb core (default 8)
  --max-concurrency N    requests at once across all tunnels and lb cores
  --weight N             relative share of requests, 1..1000 (default 1)
  --class DECL           a request class (repeat), as in Tunnel-Classes (docs/PROTOCOL.md):
                         'heavy=(\"POST /report/\");u=6;limit=4;queue=100;wait=2000' or 'default;u=3'
  --inner LIST           inner protocols to offer, in order (default h2,http/1.1)
  --max-streams N        concurrent streams per h2 tunnel (default 256)
  --stream-window BYTES  h2 stream flow-control window (default 1048576)
  --connection-window BYTES  h2 connection window (default 8388608)
  --threads N            worker threads (default 1)
  --log-format F         text (default) or json, one line per event on stderr; the filter is
                         env PTTH_LOG (RUST_LOG syntax; default info, debug with --verbose)
  --verbose              also log every tunnel
  --quiet                log errors only
";

/// The two kinds of worker the binary runs.
enum App {
    Respond(Responder),
    Origin(Sidecar),
}

impl Handler for App {
    async fn handle(&self, ex: &mut Exchange<'_>) -> Result<(), ptth_workerd::Error> {
        match self {
            App::Respond(r) => r.handle(ex).await,
            App::Origin(s) => s.handle(ex).await,
        }
    }
}

#[derive(Clone, Debug)]
enum Mode {
    Respond(Responder),
    /// The origin, and how to check it (`None`: never withdraw).
    Origin(OriginAddr, Option<OriginCheck>),
}

fn parse(args: Vec<String>) -> Result<(Config, Mode, LogFormat), String> {
    let mut cfg = Config { lbs: Vec::new(), ..Config::default() };
    let mut log_format = LogFormat::Text;
    let mut mode = None;
    let mut claims = Vec::new();
    let (mut health_path, mut check_ms) = (None, 1000u64);
    let (mut tls, mut ca) = (false, None::<String>);
    let (mut client_cert, mut client_key) = (None::<String>, None::<String>);
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag}: missing value"));
        let int = |v: String, lo: u64, hi: u64| -> Result<u64, String> {
            v.parse::<u64>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| format!("{flag}: expected an integer from {lo} to {hi}, got {v:?}"))
        };
        match flag.as_str() {
            "--lb" => cfg.lbs.push(value()?),
            "--origin" | "--respond" if mode.is_some() => return Err(format!("{flag}: give exactly one of --origin and --respond")),
            "--origin" => mode = Some(Mode::Origin(OriginAddr::parse(&value()?)?, None)),
            "--origin-health" => {
                let p = value()?;
                if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(format!("--origin-health {p:?}: a path starting with '/', without spaces"));
                }
                health_path = Some(p);
            }
            "--origin-check-ms" => check_ms = int(value()?, 0, 3_600_000)?,
            "--respond" => mode = Some(Mode::Respond(Responder::parse(&value()?)?)),
            "--claim" => claims.push(Origin::parse(&value()?).map_err(|e| format!("--claim: {e}"))?),
            "--route" => {
                let r = value()?;
                if !r.starts_with('/') || r.contains(' ') {
                    return Err(format!("--route {r:?}: a path prefix starts with '/' and has no spaces"));
                }
                cfg.meta.routes.push(r);
            }
            "--id" => {
                let id = value()?;
                if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                    return Err("--id: 1 to 128 printable ASCII characters".into());
                }
                cfg.meta.id = Some(id);
            }
            "--token" => cfg.token = Some(value()?),
            "--tls" => tls = true,
            "--ca" => ca = Some(value()?),
            "--tls-name" => cfg.tls_name = Some(value()?),
            "--tls-cert" => client_cert = Some(value()?),
            "--tls-key" => client_key = Some(value()?),
            "--tunnels-per-core" => cfg.tunnels_per_core = int(value()?, 1, 1024)? as u32,
            "--max-concurrency" => cfg.meta.max_concurrency = Some(int(value()?, 1, 1_000_000)? as u32),
            "--weight" => cfg.meta.weight = int(value()?, 1, 1000)? as u32,
            "--class" => {
                let v = value()?;
                let decl = ptth_proto::setup::parse_classes(v.as_bytes()).map_err(|e| format!("--class {v:?}: {e}"))?;
                for c in decl {
                    if cfg.meta.classes.iter().any(|x| x.name == c.name) {
                        return Err(format!("--class: class {} is declared twice", c.name));
                    }
                    cfg.meta.classes.push(c);
                }
                if cfg.meta.classes.len() > ptth_proto::setup::MAX_CLASSES {
                    return Err(format!("--class: at most {} classes", ptth_proto::setup::MAX_CLASSES));
                }
            }
            "--threads" => cfg.threads = int(value()?, 1, 1024)? as usize,
            "--max-streams" => cfg.max_streams = int(value()?, 1, 1_000_000)? as u32,
            "--stream-window" => cfg.windows.stream = int(value()?, 65_535, i32::MAX as u64)? as u32,
            "--connection-window" => cfg.windows.connection = int(value()?, 65_535, i32::MAX as u64)? as u32,
            "--inner" => {
                let v = value()?;
                cfg.protocols = v
                    .split(',')
                    .map(|p| match p.trim() {
                        "h2" => Ok(ptth_workerd::InnerProtocol::H2),
                        "http/1.1" | "http1.1" | "h1" => Ok(ptth_workerd::InnerProtocol::Http11),
                        other => Err(format!("--inner: unknown protocol {other:?}; use h2 and/or http/1.1")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--pin" => cfg.pin = true,
            "--driver" => {
                let v = value()?;
                cfg.runtime.driver = ptth_proto_driver(&v).ok_or_else(|| format!("--driver: expected auto, uring or legacy, got {v:?}"))?;
            }
            "--verbose" => cfg.verbose = true,
            "--log-format" => {
                let v = value()?;
                log_format = LogFormat::parse(&v).ok_or_else(|| format!("--log-format: expected text or json, got {v:?}"))?;
            }
            "--quiet" => cfg.quiet = true,
            other => return Err(format!("unknown flag {other:?} (see --help)")),
        }
    }
    if cfg.lbs.is_empty() {
        return Err("--lb: at least one lb address is needed".into());
    }
    let mut mode = mode.ok_or("give one of --origin URL or --respond SPEC")?;
    match &mut mode {
        Mode::Origin(_, check) if check_ms > 0 => {
            *check = Some(OriginCheck {
                path: health_path,
                every: std::time::Duration::from_millis(check_ms),
                timeout: cfg.connect_timeout.min(std::time::Duration::from_millis(check_ms.max(100))),
            });
        }
        Mode::Origin(..) if health_path.is_some() => return Err("--origin-health: checks are off (--origin-check-ms 0)".into()),
        Mode::Respond(_) if health_path.is_some() => return Err("--origin-health: only with --origin".into()),
        _ => {}
    }
    if !claims.is_empty() {
        cfg.claim = Claim::Origins(claims);
    }
    if cfg.token.is_none() {
        cfg.token = std::env::var("PTTH_TOKEN").ok().filter(|t| !t.is_empty());
    }
    let cert = match (&client_cert, &client_key) {
        (Some(c), Some(k)) => Some((std::path::Path::new(c.as_str()), std::path::Path::new(k.as_str()))),
        (None, None) => None,
        (Some(_), None) => return Err("--tls-cert: needs --tls-key FILE too".into()),
        (None, Some(_)) => return Err("--tls-key: needs --tls-cert FILE too".into()),
    };
    if tls || ca.is_some() || cert.is_some() {
        cfg.tls = Some(ptth_workerd::client_tls(ca.as_deref().map(std::path::Path::new), cert)?);
    } else if cfg.tls_name.is_some() {
        return Err("--tls-name: only with --tls or --ca".into());
    }
    if cfg.meta.id.is_none() {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let host = if host.is_empty() { "worker".to_string() } else { host };
        cfg.meta.id = Some(format!("{host}-{}", std::process::id()));
    }
    cfg.validate()?;
    Ok((cfg, mode, log_format))
}

fn ptth_proto_driver(s: &str) -> Option<ptth_proto::rt::runtime::DriverChoice> {
    ptth_proto::rt::runtime::DriverChoice::parse(s)
}

/// A message for the operator before logging is set up (bad flags).
fn complain(msg: std::fmt::Arguments<'_>) {
    ptth_proto::rt::logging::complain("ptth-workerd", msg);
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        say(format_args!("{}", USAGE.trim_end()));
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--version") {
        say(format_args!("ptth-workerd {}", env!("CARGO_PKG_VERSION")));
        return ExitCode::SUCCESS;
    }
    let (cfg, mode, log_format) = match parse(args.clone()) {
        Ok(v) => v,
        Err(e) => {
            complain(format_args!("{e}"));
            return ExitCode::from(2);
        }
    };
    // --verbose lines are debug events; --quiet keeps errors only.
    let level = if cfg.quiet {
        "error"
    } else if cfg.verbose {
        "debug"
    } else {
        "info"
    };
    if let Err(e) = logging::init(log_format, level) {
        complain(format_args!("{e}"));
        return ExitCode::from(2);
    }
    // Tunnels and origin connections are descriptors.
    ptth_proto::rt::runtime::raise_open_files();
    let what = match &mode {
        Mode::Respond(r) => format!("built-in responder {r:?}"),
        Mode::Origin(o, _) => format!("origin http://{}", o.authority),
    };
    let health = match &mode {
        Mode::Origin(o, Some(check)) => Some(OriginHealth::start(o, check.clone(), cfg.quiet)),
        _ => None,
    };
    tracing::info!(
        worker = cfg.meta.id.as_deref().unwrap_or("?"),
        lbs = %cfg.lbs.join(", "),
        tunnels_per_core = cfg.tunnels_per_core,
        "serving {what}"
    );
    let worker = match ptth_workerd::serve(cfg, move || match &mode {
        Mode::Respond(r) => App::Respond(r.clone()),
        Mode::Origin(o, _) => App::Origin(match &health {
            Some(h) => Sidecar::with_health(o.clone(), h.clone()),
            None => Sidecar::new(o.clone()),
        }),
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let stop = worker.stop_flag();
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal while draining exits at once.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 1, stop.clone());
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    // SIGHUP: the files named on the command line (--ca, --tls-cert,
    // --tls-key) are read again for new dials; it never ends the process.
    let hup = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone());
    while !stop.load(std::sync::atomic::Ordering::Acquire) && !worker.finished() {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if hup.swap(false, std::sync::atomic::Ordering::AcqRel) {
            reload(&worker, &args);
        }
    }
    worker.wait();
    ExitCode::SUCCESS
}

/// One SIGHUP: the same flags, parsed again; the TLS files they name are
/// read again and new dials use them. What the worker declares stays (a
/// worker id's tunnels agree on their claims; docs/OPERATIONS.md): a change
/// there is a rolling restart.
fn reload(worker: &ptth_workerd::Worker, args: &[String]) {
    match parse(args.to_vec()) {
        Ok((cfg, _, _)) => match cfg.tls {
            Some(tls) => match worker.set_tls(tls) {
                Ok(()) => tracing::info!("reloaded: TLS files read again; new tunnels use them"),
                Err(e) => tracing::error!("reload refused: {e}"),
            },
            None => tracing::info!("reloaded: nothing to read again (no TLS to the lb)"),
        },
        Err(e) => tracing::error!("reload refused, the running settings stay: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags() {
        let (cfg, _, _) =
            parse(args("--lb 127.0.0.1:7000 --respond hello --route /api/ --claim https://a.example --max-concurrency 4")).unwrap();
        assert_eq!(cfg.meta.routes, ["/api/"]);
        assert_eq!(cfg.meta.max_concurrency, Some(4));
        assert!(matches!(cfg.claim, Claim::Origins(ref o) if o.len() == 1));
        for (bad, needle) in [
            ("--respond hello", "--lb"),
            ("--lb 1.2.3.4:1", "--origin"),
            ("--lb x --respond hello", "--lb"),
            ("--lb a:1 --respond hello --tunnels-per-core 0", "--tunnels-per-core"),
            ("--lb a:1 --respond nope", "--respond"),
            ("--lb a:1 --origin https://x", "--origin"),
            ("--lb a:1 --respond hello --bogus", "--bogus"),
        ] {
            let e = parse(args(bad)).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn origin_check_flags() {
        let check = |a: &str| match parse(args(a)).map(|(_, m, _)| m) {
            Ok(Mode::Origin(_, c)) => Ok(c),
            Ok(Mode::Respond(_)) => panic!("{a}: not an origin"),
            Err(e) => Err(e),
        };
        let c = check("--lb a:1 --origin http://o:80").unwrap().expect("a connect check by default");
        assert_eq!((c.path, c.every), (None, std::time::Duration::from_secs(1)));
        let c = check("--lb a:1 --origin http://o:80 --origin-health /healthz --origin-check-ms 250").unwrap().unwrap();
        assert_eq!((c.path.as_deref(), c.every), (Some("/healthz"), std::time::Duration::from_millis(250)));
        assert_eq!(check("--lb a:1 --origin http://o:80 --origin-check-ms 0").unwrap(), None, "0: never withdraw");
        for (bad, needle) in [
            ("--lb a:1 --origin http://o:80 --origin-health healthz", "starting with '/'"),
            ("--lb a:1 --origin http://o:80 --origin-health /h --origin-check-ms 0", "checks are off"),
            ("--lb a:1 --respond hello --origin-health /h", "only with --origin"),
        ] {
            let e = check(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn class_flags() {
        let with = |extra: &[&str]| {
            args("--lb 127.0.0.1:7000 --respond hello").into_iter().chain(extra.iter().map(|s| s.to_string())).collect::<Vec<_>>()
        };
        let (cfg, _, _) = parse(with(&["--class", r#"heavy=("POST /report/");u=6;limit=4"#, "--class", "default;u=2"])).unwrap();
        let got: Vec<_> = cfg.meta.classes.iter().map(|c| (c.name.as_str(), c.urgency, c.limit)).collect();
        assert_eq!(got, [("heavy", 6, Some(4)), ("default", 2, None)]);
        let e = parse(with(&["--class", r#"heavy=("/r/");u=9"#])).unwrap_err();
        assert!(e.contains("--class") && e.contains("0 to 7"), "{e}");
        let e = parse(with(&["--class", "default", "--class", "default"])).unwrap_err();
        assert!(e.contains("declared twice"), "{e}");
    }
}
