//! ptth-bench: runs one benchmark scenario against ptth and, in the same
//! invocation, against nginx and HAProxy as plain reverse proxies to the same
//! origin, and records the result under bench/results/.
//!
//! Scenario `h1-wrk`: wrk (HTTP/1.1 keep-alive, 64 connections by default) →
//! proxy → nginx origin answering `hello\n`. The proxies:
//! - ptth: `ptth-lb` + `ptth-workerd --origin` (the worker dials the lb; the
//!   request crosses two hops: lb → tunnel → workerd → origin);
//! - nginx: `proxy_pass` with an upstream keep-alive pool;
//! - HAProxy: `mode http` with connection reuse.
//!
//! For each it reports req/s, p50/p99 latency (from wrk), and requests per
//! CPU-second of the proxy processes (utime+stime from /proc, summed over
//! the processes and their threads). Rounds are interleaved so drift on a
//! noisy host hits every target alike; the medians are compared.

mod idle;
mod loadgen;
mod mixed;
mod origin;
mod soak;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: ptth-bench h1-wrk|h2-h2load|mixed|idle|soak [--duration SECS] [--connections N] [--streams N] [--threads N] [--rounds N]
                     [--tunnels-per-core N] [--h2-tunnels-per-core N] [--workerd-threads N] [--lb-cores N] [--only ptth,ptth-h1,nginx,haproxy] [--tls] [--tunnel-tls] [--new-conns]
                     [--baseline DIR --baseline-label REV] [--out DIR]
Run from the repository root after `cargo build --release` (bench/run.sh does both).
--tls: clients over TLS (wrk https, h2load h2 by ALPN); ptth, nginx and HAProxy terminate it with
one certificate from `ptth-lb certs dev` (not with --baseline).
--tunnel-tls: ptth's tunnels over TLS too (workerd verifies the lb), as off loopback.
--new-conns (h1-wrk): a new connection per request (Connection: close); with --tls, a full
handshake per request.
--baseline DIR adds ptth@base and ptth-h1@base: the same setups with DIR/ptth-lb and
DIR/ptth-workerd (another commit's binaries), interleaved in the same rounds.
`ptth-bench mixed --help`: the heavy-flood scenario's own flags; `ptth-bench idle --help`: idle and
slow clients; `ptth-bench soak --help`: minutes of load with worker restarts and lb reloads.";

/// What drives the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// wrk, HTTP/1.1 clients.
    H1Wrk,
    /// h2load, h2c clients (`-c` connections × `-m` streams each).
    H2Load,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::H1Wrk => "h1-wrk",
            Scenario::H2Load => "h2-h2load",
        }
    }
}

struct Opts {
    scenario: Scenario,
    streams: u32,
    duration: u64,
    connections: u32,
    threads: u32,
    rounds: u32,
    tunnels_per_core: u32,
    h2_tunnels_per_core: u32,
    workerd_threads: u32,
    lb_cores: u32,
    only: Vec<String>,
    out: PathBuf,
    /// Directory holding another build's ptth-lb and ptth-workerd.
    baseline: Option<PathBuf>,
    baseline_label: String,
    /// Clients over TLS (HTTP/1.1 or h2 by ALPN); every proxy terminates it
    /// with one certificate (`ptth-lb certs dev`).
    tls: bool,
    /// h1-wrk: a new connection per request (`Connection: close`), so with
    /// `--tls` every request pays a full handshake.
    new_conns: bool,
    /// Connections each proxy is configured to hold (nginx
    /// worker_connections, HAProxy maxconn).
    max_conns: u32,
    /// ptth's tunnels over TLS too (the worker verifies the lb), as a
    /// deployment off loopback runs them.
    tunnel_tls: bool,
}

impl Opts {
    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}

pub(crate) fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        scenario: Scenario::H1Wrk,
        streams: 8,
        duration: 10,
        connections: 64,
        threads: 1,
        rounds: 3,
        tunnels_per_core: 32,
        h2_tunnels_per_core: 1,
        workerd_threads: 1,
        lb_cores: 0,
        only: vec!["ptth".into(), "ptth-h1".into(), "nginx".into(), "haproxy".into()],
        out: PathBuf::from("bench/results"),
        baseline: None,
        baseline_label: "baseline".into(),
        tls: false,
        new_conns: false,
        tunnel_tls: false,
        max_conns: 4096,
    };
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("h1-wrk") => {}
        Some("h2-h2load") => {
            o.scenario = Scenario::H2Load;
            o.connections = 8;
        }
        Some(other) => return Err(format!("unknown scenario {other:?}; available: h1-wrk, h2-h2load, mixed")),
        None => return Err("name a scenario: h1-wrk, h2-h2load or mixed".into()),
    }
    while let Some(flag) = it.next() {
        if flag == "--tls" {
            o.tls = true;
            continue;
        }
        if flag == "--new-conns" {
            o.new_conns = true;
            continue;
        }
        if flag == "--tunnel-tls" {
            o.tunnel_tls = true;
            continue;
        }
        let v = it.next().ok_or_else(|| format!("{flag}: missing value"))?;
        let num = |lo: u64, hi: u64| crate::flag_num(flag, v, lo, hi);
        match flag.as_str() {
            "--duration" => o.duration = num(1, 3600)?,
            "--connections" => o.connections = num(1, 100_000)? as u32,
            "--streams" => o.streams = num(1, 10_000)? as u32,
            "--threads" => o.threads = num(1, 1024)? as u32,
            "--rounds" => o.rounds = num(1, 100)? as u32,
            "--tunnels-per-core" => o.tunnels_per_core = num(1, 1024)? as u32,
            "--h2-tunnels-per-core" => o.h2_tunnels_per_core = num(1, 1024)? as u32,
            "--workerd-threads" => o.workerd_threads = num(1, 1024)? as u32,
            "--lb-cores" => o.lb_cores = num(0, 1024)? as u32,
            "--only" => o.only = v.split(',').map(String::from).collect(),
            "--out" => o.out = PathBuf::from(v),
            "--baseline" => o.baseline = Some(PathBuf::from(v)),
            "--baseline-label" => o.baseline_label = v.clone(),
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    if o.new_conns && o.scenario != Scenario::H1Wrk {
        return Err("--new-conns is for h1-wrk".into());
    }
    if (o.tls || o.tunnel_tls) && o.baseline.is_some() {
        // Its binaries may predate TLS; compare builds without --tls.
        return Err("--tls and --baseline do not go together".into());
    }
    if let Some(b) = &o.baseline {
        check_baseline(b)?;
        for t in ["ptth", "ptth-h1"] {
            if o.only.iter().any(|n| n == t) {
                o.only.push(format!("{t}@base"));
            }
        }
    }
    Ok(o)
}

/// Ports used on 127.0.0.1. Fixed because the external servers need them in
/// their configs; each is checked free before use.
pub(crate) const ORIGIN: u16 = 18080;
pub(crate) const NGINX: u16 = 18081;
pub(crate) const HAPROXY: u16 = 18082;
pub(crate) const PTTH: u16 = 18083;
pub(crate) const PTTH_TUNNEL: u16 = 17000;
/// ptth's plain listener while its TLS one takes `PTTH` (`--tls`).
const PTTH_PLAIN: u16 = 18084;

pub(crate) fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

pub(crate) fn wait_port(port: u16) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("nothing listens on 127.0.0.1:{port} after 10 s"))
}

/// A started process tree; killed on drop.
pub(crate) struct Proc {
    name: &'static str,
    pub(crate) child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first (nginx and HAProxy clean up their workers on it).
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn spawn(name: &'static str, cmd: &mut Command) -> Result<Proc, String> {
    let child =
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| format!("starting {name}: {e}"))?;
    Ok(Proc { name, child })
}

/// CPU seconds used so far by `pid` and all its descendants.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    let mut stack = vec![pid];
    let all: Vec<(u32, u32, u64)> = std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|p| {
                    let s = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
                    let rest = &s[s.rfind(')')? + 2..];
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    // fields after the name: state(0) ppid(1) ... utime(11) stime(12)
                    Some((p, f.get(1)?.parse().ok()?, f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?))
                })
                .collect()
        })
        .unwrap_or_default();
    while let Some(p) = stack.pop() {
        for &(q, ppid, t) in &all {
            if q == p {
                total += t;
            }
            if ppid == p {
                stack.push(q);
            }
        }
    }
    total as f64 / tick
}

pub(crate) struct WrkResult {
    rps: f64,
    requests: u64,
    p50_ms: f64,
    p99_ms: f64,
    errors: String,
}

fn to_ms(s: &str) -> Option<f64> {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => return None,
    })
}

pub(crate) fn run_wrk(o: &Opts, port: u16, secs: u64) -> Result<WrkResult, String> {
    let out = Command::new("wrk")
        .args(["-t", &o.threads.to_string(), "-c", &o.connections.to_string(), "-d", &format!("{secs}s"), "--latency"])
        .args(if o.new_conns { &["-H", "Connection: close"][..] } else { &[][..] })
        .arg(format!("{}://127.0.0.1:{port}/", o.scheme()))
        .output()
        .map_err(|e| format!("running wrk: {e} (apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let find = |prefix: &str| text.lines().map(str::trim).find(|l| l.starts_with(prefix)).map(String::from);
    let pct = |p: &str| find(p).and_then(|l| l.split_whitespace().nth(1).and_then(to_ms)).unwrap_or(f64::NAN);
    let rps = find("Requests/sec:")
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| format!("wrk printed no rate:\n{text}"))?;
    let requests = find("")
        .and_then(|_| text.lines().find(|l| l.contains(" requests in ")).and_then(|l| l.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0);
    let mut errors = String::new();
    if let Some(l) = find("Non-2xx") {
        errors.push_str(&l);
    }
    if let Some(l) = find("Socket errors") {
        if !errors.is_empty() {
            errors.push_str("; ");
        }
        errors.push_str(&l);
    }
    Ok(WrkResult { rps, requests, p50_ms: pct("50%"), p99_ms: pct("99%"), errors })
}

/// h2load with per-request log for percentiles.
pub(crate) fn run_h2load(o: &Opts, port: u16, secs: u64, dir: &Path) -> Result<WrkResult, String> {
    let log = dir.join("h2load.log");
    let out = Command::new("h2load")
        .args(["-c", &o.connections.to_string(), "-m", &o.streams.to_string(), "-t", &o.threads.to_string(), "-D", &secs.to_string()])
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("{}://127.0.0.1:{port}/", o.scheme()))
        .output()
        .map_err(|e| format!("running h2load: {e} (apt-get install nghttp2-client)"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |p: &str| text.lines().map(str::trim).find(|l| l.starts_with(p)).map(String::from);
    let rps = line("finished in")
        .and_then(|l| l.split(", ").nth(1).and_then(|r| r.trim_end_matches(" req/s").parse().ok()))
        .ok_or_else(|| format!("h2load printed no rate:\n{text}"))?;
    let requests: u64 = line("requests:").and_then(|l| l.split_whitespace().nth(7).and_then(|n| n.parse().ok())).unwrap_or(0);
    let mut lat: Vec<f64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let pct = |q: f64| if lat.is_empty() { f64::NAN } else { lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] };
    let mut errors = String::new();
    if let Some(l) = line("requests:") {
        if !l.contains(" 0 failed, 0 errored, 0 timeout") {
            errors = l;
        }
    }
    let _ = std::fs::remove_file(&log);
    Ok(WrkResult { rps, requests, p50_ms: pct(0.5), p99_ms: pct(0.99), errors })
}

fn run_load(o: &Opts, port: u16, secs: u64, dir: &Path) -> Result<WrkResult, String> {
    match o.scenario {
        Scenario::H1Wrk => run_wrk(o, port, secs),
        Scenario::H2Load => run_h2load(o, port, secs, dir),
    }
}

pub(crate) struct Target {
    name: &'static str,
    pub(crate) port: u16,
    pub(crate) procs: Vec<Proc>,
    pub(crate) note: String,
}

pub(crate) fn nginx_conf(dir: &Path, name: &str, body: &str, workers: &str) -> Result<PathBuf, String> {
    nginx_conf_with(dir, name, body, workers, 4096)
}

pub(crate) fn nginx_conf_with(dir: &Path, name: &str, body: &str, workers: &str, connections: u32) -> Result<PathBuf, String> {
    let d = dir.join(name);
    std::fs::create_dir_all(d.join("logs")).map_err(|e| e.to_string())?;
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes {workers};\nworker_cpu_affinity auto;\npid {pid};\nerror_log {err} crit;\nevents {{ worker_connections {connections}; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;\n  keepalive_requests 1000000;\n{body}\n}}\n",
        pid = d.join("nginx.pid").display(),
        err = d.join("logs/error.log").display(),
        tmp = d.display(),
    );
    let p = d.join("nginx.conf");
    std::fs::write(&p, conf).map_err(|e| e.to_string())?;
    Ok(p)
}

pub(crate) fn start_origin(dir: &Path) -> Result<Proc, String> {
    // `/big`: 1 MiB, for the slow readers of the `idle` scenario.
    std::fs::write(dir.join("big"), vec![b'x'; 1 << 20]).map_err(|e| e.to_string())?;
    let conf = nginx_conf_with(
        dir,
        "origin",
        &format!(
            "  server {{ listen 127.0.0.1:{ORIGIN} reuseport; location / {{ return 200 \"hello\\n\"; }} location = /big {{ root {}; }} }}",
            dir.display()
        ),
        "1",
        16384,
    )?;
    let p = spawn("nginx origin", Command::new("nginx").arg("-c").arg(&conf).arg("-p").arg(dir))?;
    wait_port(ORIGIN)?;
    Ok(p)
}

pub(crate) fn start_target(name: &str, dir: &Path, o: &Opts, cores: u32) -> Result<Target, String> {
    match name {
        "nginx" => {
            let conf = nginx_conf_with(
                dir,
                "proxy",
                &format!(
                    "  upstream origin {{ server 127.0.0.1:{ORIGIN}; keepalive 256; }}\n  server {{ listen 127.0.0.1:{NGINX}{tls}{h2}; {certs}http2_max_concurrent_streams 128; location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}",
                    h2 = if o.scenario == Scenario::H2Load { " http2" } else { "" },
                    tls = if o.tls { " ssl" } else { "" },
                    certs = if o.tls {
                        format!(
                            "ssl_certificate {c}/lb.pem; ssl_certificate_key {c}/lb.key; ssl_session_tickets on; ",
                            c = dir.join("certs").display()
                        )
                    } else {
                        String::new()
                    }
                ),
                &cores.to_string(),
                o.max_conns,
            )?;
            let p = spawn("nginx", Command::new("nginx").arg("-c").arg(&conf).arg("-p").arg(dir))?;
            wait_port(NGINX)?;
            Ok(Target {
                name: "nginx",
                port: NGINX,
                procs: vec![p],
                note: format!("proxy_pass, upstream keepalive 256, {cores} workers, worker_cpu_affinity auto"),
            })
        }
        "haproxy" => {
            let conf = format!(
                "global\n  nbthread {cores}\n  cpu-map auto:1/1-{cores} 0-{last}\n  maxconn {maxconn}\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\nfrontend f\n  bind 127.0.0.1:{HAPROXY}{bind}\n  default_backend b\nbackend b\n  server o 127.0.0.1:{ORIGIN}\n",
                last = cores - 1,
                maxconn = o.max_conns,
                bind = match (o.tls, o.scenario) {
                    (true, _) => format!(" ssl crt {} alpn h2,http/1.1", dir.join("certs/haproxy.pem").display()),
                    (false, Scenario::H2Load) => " proto h2".into(),
                    (false, Scenario::H1Wrk) => String::new(),
                }
            );
            let p = dir.join("haproxy.cfg");
            std::fs::write(&p, conf).map_err(|e| e.to_string())?;
            let h = spawn("haproxy", Command::new("haproxy").arg("-f").arg(&p).arg("-db"))?;
            wait_port(HAPROXY)?;
            Ok(Target {
                name: "haproxy",
                port: HAPROXY,
                procs: vec![h],
                note: format!("mode http, http-reuse always, nbthread {cores}, cpu-map auto"),
            })
        }
        "ptth" | "ptth-h1" | "ptth@base" | "ptth-h1@base" => {
            let inner = if name.starts_with("ptth-h1") { "http/1.1" } else { "h2" };
            let base = name.ends_with("@base");
            let bin_dir = match (&o.baseline, base) {
                (Some(d), true) => d.clone(),
                _ => PathBuf::from("target/release"),
            };
            let mut lb_cmd = Command::new(bin_dir.join("ptth-lb"));
            if o.tunnel_tls {
                lb_cmd.args(["--tunnel-tls", "on"]);
                if !o.tls {
                    let c = dir.join("certs");
                    lb_cmd.arg("--tls-cert").arg(c.join("lb.pem")).arg("--tls-key").arg(c.join("lb.key"));
                }
            }
            if o.tls {
                // The TLS listener takes the client port; the plain one
                // moves out of the way.
                let c = dir.join("certs");
                lb_cmd
                    .args(["--tls-listen", &format!("127.0.0.1:{PTTH}"), "--listen", &format!("127.0.0.1:{PTTH_PLAIN}")])
                    .arg("--tls-cert")
                    .arg(c.join("lb.pem"))
                    .arg("--tls-key")
                    .arg(c.join("lb.key"));
            } else {
                lb_cmd.args(["--listen", &format!("127.0.0.1:{PTTH}")]);
            }
            let lb = spawn(
                "ptth-lb",
                lb_cmd.args([
                    "--tunnel-listen",
                    &format!("127.0.0.1:{PTTH_TUNNEL}"),
                    "--admin-listen",
                    "off",
                    "--cores",
                    &cores.to_string(),
                    "--quiet",
                ]),
            )?;
            wait_port(PTTH)?;
            let mut w_cmd = Command::new(bin_dir.join("ptth-workerd"));
            if o.tunnel_tls {
                w_cmd.arg("--ca").arg(dir.join("certs/ca.pem"));
            }
            let w = spawn(
                "ptth-workerd",
                w_cmd.args([
                    "--lb",
                    &format!("127.0.0.1:{PTTH_TUNNEL}"),
                    "--origin",
                    &format!("http://127.0.0.1:{ORIGIN}"),
                    "--tunnels-per-core",
                    &(if inner == "h2" { o.h2_tunnels_per_core } else { o.tunnels_per_core }).to_string(),
                    "--threads",
                    &o.workerd_threads.to_string(),
                    "--inner",
                    inner,
                    "--quiet",
                ]),
            )?;
            // Tunnels come up within the backoff window; give them a moment.
            std::thread::sleep(Duration::from_millis(500));
            let over = if o.tunnel_tls { " over TLS" } else { "" };
            let tunnels = if inner == "h2" {
                format!("h2 tunnels{over}, {} per core", o.h2_tunnels_per_core)
            } else {
                format!("h1 tunnels{over}, {} per core", o.tunnels_per_core)
            };
            let build = if base { format!(" [{} binaries]", o.baseline_label) } else { String::new() };
            Ok(Target {
                name: match (inner, base) {
                    ("h2", false) => "ptth",
                    ("h2", true) => "ptth@base",
                    (_, false) => "ptth-h1",
                    (_, true) => "ptth-h1@base",
                },
                port: PTTH,
                procs: vec![lb, w],
                note: format!(
                    "ptth-lb --cores {cores} (io_uring coop_taskrun, pinned) + ptth-workerd --threads {}, {tunnels}{build}",
                    o.workerd_threads
                ),
            })
        }
        other => Err(format!("unknown target {other:?}")),
    }
}

struct Sample {
    wrk: WrkResult,
    /// CPU seconds of all the target's processes.
    cpu: f64,
    /// CPU seconds of its first process alone (ptth-lb for ptth).
    cpu_first: f64,
}

/// One certificate for every proxy: `ptth-lb certs dev` into DIR/certs, and
/// the chain-plus-key file HAProxy's `crt` wants.
fn make_certs(dir: &Path) -> Result<(), String> {
    let c = dir.join("certs");
    let out =
        Command::new("target/release/ptth-lb").args(["certs", "dev"]).arg(&c).output().map_err(|e| format!("ptth-lb certs dev: {e}"))?;
    if !out.status.success() {
        return Err(format!("ptth-lb certs dev: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let read = |f: &str| std::fs::read_to_string(c.join(f)).map_err(|e| format!("{f}: {e}"));
    std::fs::write(c.join("haproxy.pem"), read("lb.pem")? + &read("lb.key")?).map_err(|e| e.to_string())
}

/// Fails unless `dir` (`--baseline DIR`) holds both ptth binaries.
pub(crate) fn check_baseline(dir: &Path) -> Result<(), String> {
    for bin in ["ptth-lb", "ptth-workerd"] {
        if !dir.join(bin).exists() {
            return Err(format!("--baseline {}: no {bin} there", dir.display()));
        }
    }
    Ok(())
}

/// Round by round, `of(new) / of(base)`: the median ratio, in how many
/// rounds it was above 1, and the number of rounds.
fn paired<T>(new: &[T], base: &[T], of: impl Fn(&T) -> f64) -> (f64, usize, usize) {
    let ratios: Vec<f64> = new.iter().zip(base).map(|(n, b)| of(n) / of(b)).collect();
    let led = ratios.iter().filter(|&&r| r > 1.0).count();
    (median_ratio(ratios.clone()), led, ratios.len())
}

/// The median of ratios (the mean of the middle two for an even count: a
/// ratio's median should not lean to one side).
fn median_ratio(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Fails naming what is missing: a release binary, a tool (with its Debian
/// package), or a port something else holds.
pub(crate) fn preflight(tools: &[(&str, &str)], ports: &[u16]) -> Result<(), String> {
    for bin in ["target/release/ptth-lb", "target/release/ptth-workerd"] {
        if !Path::new(bin).exists() {
            return Err(format!("{bin} is missing: run `cargo build --release` first (bench/run.sh does)"));
        }
    }
    for (tool, pkg) in tools {
        if sh(&format!("command -v {tool}")).is_empty() {
            return Err(format!("{tool} is not installed (apt-get install {pkg})"));
        }
    }
    for &port in ports {
        if !port_free(port) {
            return Err(format!("127.0.0.1:{port} is in use; stop what holds it"));
        }
    }
    Ok(())
}

/// What every result file says about the run: the commit (`-dirty` with
/// uncommitted changes), the date (UTC), kernel and CPUs.
pub(crate) struct RunFacts {
    pub(crate) commit: String,
    pub(crate) date: String,
    /// The `- date`, `- commit`, `- kernel` and `- CPU` lines.
    pub(crate) lines: String,
}

pub(crate) fn run_facts(cpus: u32) -> RunFacts {
    let commit = sh("git rev-parse --short HEAD");
    let dirty = if sh("git status --porcelain --untracked-files=no").is_empty() { "" } else { "-dirty" };
    let date = sh("date -u +%Y-%m-%dT%H:%M:%SZ");
    let lines = format!(
        "- date: {date}\n- commit: {commit}{dirty}\n- kernel: {}\n- CPU: {cpus} × {}",
        sh("uname -r"),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2")
    );
    RunFacts { commit, date, lines }
}

/// Resident memory of `pid` and its descendants, KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let children = sh(&format!("pgrep -P {pid}"));
    let mut pids = vec![pid];
    pids.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// A flag's value as a number in `lo..=hi`, or an error naming the flag.
pub(crate) fn flag_num(flag: &str, v: &str, lo: u64, hi: u64) -> Result<u64, String> {
    v.parse::<u64>().ok().filter(|n| (lo..=hi).contains(n)).ok_or_else(|| format!("{flag}: expected {lo}..{hi}"))
}

pub(crate) fn sh(cmd: &str) -> String {
    Command::new("sh").arg("-c").arg(cmd).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "mixed") {
        if args.iter().any(|a| a == "--help") {
            println!("{}", mixed::USAGE);
            return;
        }
        if let Err(e) = mixed::run(&args[1..]) {
            eprintln!("ptth-bench mixed: {e}");
            std::process::exit(1);
        }
        return;
    }
    type Scenario = (&'static str, &'static str, fn(&[String]) -> Result<(), String>);
    let scenarios: [Scenario; 2] = [("idle", idle::USAGE, idle::run), ("soak", soak::USAGE, soak::run)];
    if let Some((name, usage, run)) = scenarios.iter().find(|(n, _, _)| args.first().is_some_and(|a| a == n)) {
        if args.iter().any(|a| a == "--help") {
            println!("{usage}");
            return;
        }
        if let Err(e) = run(&args[1..]) {
            eprintln!("ptth-bench {name}: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.is_empty() || args.iter().any(|a| a == "--help") {
        println!("{USAGE}");
        return;
    }
    let o = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ptth-bench: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&o) {
        eprintln!("ptth-bench: {e}");
        std::process::exit(1);
    }
}

fn run(o: &Opts) -> Result<(), String> {
    preflight(
        &[("wrk", "wrk"), ("h2load", "nghttp2-client"), ("nginx", "nginx-light"), ("haproxy", "haproxy")],
        &[ORIGIN, NGINX, HAPROXY, PTTH, PTTH_TUNNEL, PTTH_PLAIN],
    )?;
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let cores = if o.lb_cores == 0 { cpus } else { o.lb_cores };
    let dir = std::env::temp_dir().join(format!("ptth-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if o.tls || o.tunnel_tls {
        make_certs(&dir)?;
    }
    let origin = start_origin(&dir)?;
    let mut samples: Vec<(String, String, Vec<Sample>)> = o.only.iter().map(|n| (n.clone(), String::new(), Vec::new())).collect();
    for round in 1..=o.rounds {
        // Every other round runs the systems in the opposite order, so a
        // system's place in the round (the host's state drifts within one)
        // favours none of them.
        let order: Vec<usize> = if round % 2 == 0 { (0..samples.len()).rev().collect() } else { (0..samples.len()).collect() };
        for i in order {
            let (name, note, list) = &mut samples[i];
            let t = start_target(name, &dir, o, cores)?;
            *note = t.note.clone();
            // Warm-up: pools fill, tunnels settle, caches heat.
            run_load(o, t.port, 2, &dir)?;
            let pids: Vec<u32> = t.procs.iter().map(|p| p.child.id()).collect();
            let before: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
            let w = run_load(o, t.port, o.duration, &dir)?;
            let after: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
            let cpu = after.iter().sum::<f64>() - before.iter().sum::<f64>();
            let cpu_first = after[0] - before[0];
            eprintln!(
                "round {round} {:>8}: {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms  {:>7.0} req/CPU-s ({}){}",
                t.name,
                w.rps,
                w.p50_ms,
                w.p99_ms,
                w.requests as f64 / cpu.max(0.001),
                t.procs.iter().map(|p| p.name).collect::<Vec<_>>().join("+"),
                if w.errors.is_empty() { String::new() } else { format!("  [{}]", w.errors) }
            );
            list.push(Sample { wrk: w, cpu, cpu_first });
            drop(t);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    drop(origin);
    let _ = std::fs::remove_dir_all(&dir);

    let RunFacts { commit, date, lines } = run_facts(cpus);
    let mut md = String::new();
    let title = match (o.scenario, o.tls) {
        (Scenario::H1Wrk, false) => "h1-wrk: wrk (HTTP/1.1) → proxy → nginx origin",
        (Scenario::H2Load, false) => "h2-h2load: h2load (h2c) → proxy → nginx origin",
        (Scenario::H1Wrk, true) => "h1-wrk --tls: wrk (HTTP/1.1 over TLS) → proxy terminating TLS → nginx origin",
        (Scenario::H2Load, true) => "h2-h2load --tls: h2load (h2 over TLS, ALPN) → proxy terminating TLS → nginx origin",
    };
    let _ = writeln!(md, "# {title}\n");
    let _ = writeln!(md, "{lines}");
    let load = match o.scenario {
        Scenario::H1Wrk => format!(
            "`wrk -t{} -c{} -d{}s --latency{}`{}",
            o.threads,
            o.connections,
            o.duration,
            if o.new_conns { " -H 'Connection: close'" } else { "" },
            if o.new_conns { " (a new connection per request)" } else { "" }
        ),
        Scenario::H2Load => {
            format!("`h2load -t{} -c{} -m{} -D{}` (h2c, percentiles from --log-file)", o.threads, o.connections, o.streams, o.duration)
        }
    };
    let _ = writeln!(
        md,
        "- load: {load}, unpinned, on the same host; {} rounds interleaved (every other round in reverse order), medians below",
        o.rounds
    );
    let _ = writeln!(md, "- origin: nginx 1 worker, `return 200 \"hello\\n\"` (its CPU is not counted)");
    let _ = writeln!(
        md,
        "- versions: {}; {}; {}; {}",
        sh("nginx -v 2>&1"),
        sh("haproxy -v | head -1"),
        sh("wrk -v 2>&1 | head -1"),
        sh("h2load --version 2>&1 | head -1")
    );
    let _ = writeln!(md, "- ptth: lb alone = ptth-lb's CPU; all = ptth-lb + ptth-workerd (utime+stime from /proc)");
    let _ = writeln!(
        md,
        "\n| proxy | setup | req/s | p50 ms | p99 ms | req per CPU-second, all proxy processes | req per CPU-second, lb alone | errors |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for (name, note, list) in &samples {
        let rps = median(list.iter().map(|s| s.wrk.rps).collect());
        let p50 = median(list.iter().map(|s| s.wrk.p50_ms).collect());
        let p99 = median(list.iter().map(|s| s.wrk.p99_ms).collect());
        let eff = median(list.iter().map(|s| s.wrk.requests as f64 / s.cpu.max(0.001)).collect());
        let lb_eff = if name.starts_with("ptth") {
            format!("{:.0}", median(list.iter().map(|s| s.wrk.requests as f64 / s.cpu_first.max(0.001)).collect()))
        } else {
            "—".into()
        };
        let errs: Vec<&str> = list.iter().map(|s| s.wrk.errors.as_str()).filter(|e| !e.is_empty()).collect();
        let _ = writeln!(
            md,
            "| {name} | {note} | {rps:.0} | {p50:.3} | {p99:.3} | {eff:.0} | {lb_eff} | {} |",
            if errs.is_empty() { "none".into() } else { errs.join("; ") }
        );
    }
    let _ = writeln!(md, "\nPer round (req/s, req per CPU-second):\n");
    for (name, _, list) in &samples {
        let rounds: Vec<String> =
            list.iter().map(|s| format!("{:.0} / {:.0}", s.wrk.rps, s.wrk.requests as f64 / s.cpu.max(0.001))).collect();
        let _ = writeln!(md, "- {name}: {}", rounds.join(", "));
    }
    let pairs: Vec<_> = samples
        .iter()
        .filter_map(|(name, _, new)| {
            let (_, _, base) = samples.iter().find(|(b, _, _)| *b == format!("{name}@base"))?;
            Some((name, new, base))
        })
        .collect();
    if !pairs.is_empty() {
        let _ = writeln!(
            md,
            "
Paired by round (this host's noise moves both of a round's runs together, so the ratio within a round is the steadier reading): new / base req per CPU-second, the median over rounds and in how many rounds the new code led.
"
        );
        let _ = writeln!(
            md,
            "| pair | all proxy processes | lb alone |
|---|---|---|"
        );
        for (name, new, base) in pairs {
            let all = paired(new, base, |s| s.wrk.requests as f64 / s.cpu.max(0.001));
            let lb = paired(new, base, |s| s.wrk.requests as f64 / s.cpu_first.max(0.001));
            let _ = writeln!(md, "| {name} vs {name}@base | {:.3}, {}/{} | {:.3}, {}/{} |", all.0, all.1, all.2, lb.0, lb.1, lb.2);
        }
    }
    println!("{md}");
    std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
    let file = o.out.join(format!(
        "{}-{commit}-{}{}{}.md",
        &date[..10],
        o.scenario.name(),
        if o.tls { "-tls" } else { "" },
        if o.new_conns { "-new-conns" } else { "" }
    ));
    let file = if o.tunnel_tls {
        file.with_file_name(file.file_name().map_or_else(String::new, |n| n.to_string_lossy().replace(".md", "-tls-tunnels.md")))
    } else {
        file
    };
    std::fs::write(&file, &md).map_err(|e| format!("writing {}: {e}", file.display()))?;
    eprintln!("wrote {}", file.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_compare_round_by_round() {
        // Round 2 is slow for both: the pair still says 1.1 there.
        let new = [110.0, 55.0, 99.0, 120.0];
        let base = [100.0, 50.0, 100.0, 100.0];
        let (median, led, n) = paired(&new, &base, |&x| x);
        assert_eq!((led, n), (3, 4));
        assert!((median - 1.1).abs() < 1e-9, "{median}");
        assert_eq!(median_ratio(vec![0.9, 1.3, 1.0]), 1.0);
        assert!(median_ratio(Vec::new()).is_nan());
    }
}
