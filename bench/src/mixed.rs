//! Scenario `mixed`: heavy requests concurrency-limited, light ones kept
//! fast, under a heavy flood above capacity.
//!
//! Two backends (bench/src/origin.rs): `/light` answers at once, `/heavy`
//! after `--heavy-ms` (200 ms). An open-loop generator (bench/src/loadgen.rs)
//! sends light requests at a steady rate, first alone ("idle" phase), then
//! together with heavy requests at a rate above what 2 backends × 4 at once
//! can serve ("flood" phase). The systems, one after the other, in front of
//! the same two backends:
//! - ptth: `ptth-lb` and one `ptth-workerd` per backend, each declaring
//!   `heavy=("/heavy");u=6;limit=4;queue=100;wait=2000` (light requests are
//!   the default class, more urgent, without a limit);
//! - ptth-adaptive: the same with `limit=16;adaptive`: the lb estimates the
//!   limit from the heavy class's latency (lb/src/tunnel/adaptive.rs). Run it
//!   with `--heavy-capacity N`, so that a backend's latency grows past N at
//!   once, and the estimate has something to find;
//! - haproxy: `maxconn 4 maxqueue 50` per server, `timeout queue 2s`,
//!   `balance leastconn`, as its operators limit a slow backend;
//! - haproxy-prio: the same, plus `http-request set-priority-class`, so
//!   light requests leave the queue first;
//! - nginx: a plain `proxy_pass` to both (open source nginx has no queue).
//!
//! Reported per system and class: throughput, p50/p99/p99.9 from the time
//! each request was due, 503s (shed), errors, the most heavy requests each
//! backend ran at once, and the proxies' memory after the flood; an SVG
//! draws light and heavy p99 per second of the flood.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::loadgen::{self, ClassLoad, ClassResult};
use crate::origin::Origin;
use crate::{
    cpu_seconds, nginx_conf, preflight, rss_kib, run_facts, sh, spawn, wait_port, Proc, RunFacts, HAPROXY, NGINX, PTTH, PTTH_TUNNEL,
};

pub(crate) const USAGE: &str = "usage: ptth-bench mixed [--duration SECS] [--idle-duration SECS] [--light-rate N] [--heavy-rate N]
                         [--heavy-ms N] [--heavy-capacity N] [--lb-cores N] [--haproxy PATH] [--tag NAME] [--out DIR]
                         [--only ptth,ptth-adaptive,haproxy,haproxy-prio,nginx] [--baseline DIR --baseline-label REV]
--heavy-capacity N: each backend runs at most N heavy requests at once and queues the rest inside
(default 0: no bound); ptth-adaptive is not in the default list.
--haproxy PATH: the HAProxy binary to run (default: haproxy from PATH).
--tag NAME: appended to the result files' names (a variant of the scenario).
--baseline DIR: after each ptth system, the same setup with DIR/ptth-lb and DIR/ptth-workerd
(another commit's binaries), named SYSTEM@REV.";
const SYSTEMS: [&str; 5] = ["ptth", "ptth-adaptive", "haproxy", "haproxy-prio", "nginx"];

struct Opts {
    /// Seconds of the flood phase (light + heavy).
    duration: u64,
    /// Seconds of the light-only phase.
    idle_duration: u64,
    light_rate: f64,
    heavy_rate: f64,
    heavy: Duration,
    heavy_capacity: u32,
    lb_cores: u32,
    /// The HAProxy binary.
    haproxy: String,
    /// Appended to the result files' names.
    tag: String,
    only: Vec<String>,
    out: PathBuf,
    /// Another commit's ptth binaries, and that commit's name.
    baseline: Option<(PathBuf, String)>,
}

/// Heavy requests each backend may run at once, in every system that limits.
const HEAVY_LIMIT: u32 = 4;
/// The most an adaptive heavy class may reach.
const ADAPTIVE_MAX: u32 = 16;
/// ptth-lb's admin listener (for the adaptive estimate in `/status`).
const ADMIN: u16 = 17090;
const BACKENDS: usize = 2;

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        duration: 20,
        idle_duration: 10,
        light_rate: 400.0,
        heavy_rate: 80.0,
        heavy: Duration::from_millis(200),
        heavy_capacity: 0,
        lb_cores: 0,
        haproxy: "haproxy".into(),
        tag: String::new(),
        only: ["ptth", "haproxy", "haproxy-prio", "nginx"].map(String::from).to_vec(),
        out: PathBuf::from("bench/results"),
        baseline: None,
    };
    let (mut base_dir, mut base_label) = (None, "base".to_string());
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag}: missing value"))?;
        let num = |lo: u64, hi: u64| crate::flag_num(flag, v, lo, hi);
        match flag.as_str() {
            "--duration" => o.duration = num(2, 3600)?,
            "--idle-duration" => o.idle_duration = num(2, 3600)?,
            "--light-rate" => o.light_rate = num(1, 100_000)? as f64,
            "--heavy-rate" => o.heavy_rate = num(1, 100_000)? as f64,
            "--heavy-ms" => o.heavy = Duration::from_millis(num(1, 60_000)?),
            "--heavy-capacity" => o.heavy_capacity = num(0, 10_000)? as u32,
            "--lb-cores" => o.lb_cores = num(0, 1024)? as u32,
            "--haproxy" => o.haproxy = v.clone(),
            "--tag" if v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => o.tag = format!("-{v}"),
            "--tag" => return Err("--tag: letters, digits and '-' only".into()),
            "--only" => o.only = v.split(',').map(String::from).collect(),
            "--out" => o.out = PathBuf::from(v),
            "--baseline" => base_dir = Some(PathBuf::from(v)),
            "--baseline-label" => base_label = v.clone(),
            _ => return Err(format!("unknown flag {flag:?}\n{USAGE}")),
        }
    }
    for s in &o.only {
        if !SYSTEMS.contains(&s.as_str()) {
            return Err(format!("--only: unknown system {s:?} ({})", SYSTEMS.join(", ")));
        }
    }
    if let Some(dir) = base_dir {
        crate::check_baseline(&dir)?;
        // Each ptth system, then the same with the other binaries.
        o.only = o
            .only
            .iter()
            .flat_map(|s| {
                let base = s.starts_with("ptth").then(|| format!("{s}@{base_label}"));
                std::iter::once(s.clone()).chain(base)
            })
            .collect();
        o.baseline = Some((dir, base_label));
    }
    Ok(o)
}

/// A system under test, started.
struct System {
    name: String,
    port: u16,
    procs: Vec<Proc>,
    note: String,
}

fn start(name: &str, dir: &Path, backends: &[SocketAddr], cores: u32, o: &Opts) -> Result<System, String> {
    // `SYSTEM@REV`: SYSTEM with the baseline's binaries.
    let (system, bin) = match (name.split_once('@'), &o.baseline) {
        (Some((system, _)), Some((base, _))) => (system, base.clone()),
        _ => (name, PathBuf::from("target/release")),
    };
    match system {
        "ptth" | "ptth-adaptive" => {
            let lb = spawn(
                "ptth-lb",
                Command::new(bin.join("ptth-lb")).args([
                    "--listen",
                    &format!("127.0.0.1:{PTTH}"),
                    "--tunnel-listen",
                    &format!("127.0.0.1:{PTTH_TUNNEL}"),
                    "--admin-listen",
                    &format!("127.0.0.1:{ADMIN}"),
                    "--cores",
                    &cores.to_string(),
                    "--quiet",
                ]),
            )?;
            wait_port(PTTH)?;
            let class = if system == "ptth-adaptive" {
                format!(r#"heavy=("/heavy");u=6;limit={ADAPTIVE_MAX};adaptive;queue=100;wait=2000"#)
            } else {
                format!(r#"heavy=("/heavy");u=6;limit={HEAVY_LIMIT};queue=100;wait=2000"#)
            };
            let mut procs = vec![lb];
            for (i, b) in backends.iter().enumerate() {
                procs.push(spawn(
                    "ptth-workerd",
                    Command::new(bin.join("ptth-workerd")).args([
                        "--lb",
                        &format!("127.0.0.1:{PTTH_TUNNEL}"),
                        "--id",
                        &format!("w{}", i + 1),
                        "--origin",
                        &format!("http://{b}"),
                        "--threads",
                        "1",
                        "--tunnels-per-core",
                        "1",
                        "--inner",
                        "h2",
                        "--class",
                        &class,
                        "--quiet",
                    ]),
                )?);
            }
            // Tunnels come up within the backoff window; give them a moment.
            std::thread::sleep(Duration::from_millis(500));
            Ok(System {
                name: name.into(),
                port: PTTH,
                procs,
                note: format!(
                    "ptth-lb --cores {cores} (io_uring, pinned) + {BACKENDS} × ptth-workerd --threads 1 --inner h2 --class '{class}'{}",
                    if bin.starts_with("target/release") { String::new() } else { format!("; binaries from {}", bin.display()) }
                ),
            })
        }
        "haproxy" | "haproxy-prio" => {
            let prio = if name == "haproxy-prio" {
                "  http-request set-priority-class int(10) if { path_beg /heavy }\n  http-request set-priority-class int(-10) unless { path_beg /heavy }\n"
            } else {
                ""
            };
            let servers: String =
                backends.iter().enumerate().map(|(i, b)| format!("  server s{} {b} maxconn {HEAVY_LIMIT} maxqueue 50\n", i + 1)).collect();
            let conf = format!(
                "global\n  nbthread {cores}\n  cpu-map auto:1/1-{cores} 0-{last}\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout queue 2s\n  http-reuse always\nfrontend f\n  bind 127.0.0.1:{HAPROXY}\n{prio}  default_backend b\nbackend b\n  balance leastconn\n{servers}",
                last = cores - 1
            );
            let p = dir.join(format!("{name}.cfg"));
            std::fs::write(&p, conf).map_err(|e| e.to_string())?;
            let h = spawn("haproxy", Command::new(&o.haproxy).arg("-f").arg(&p).arg("-db"))?;
            wait_port(HAPROXY)?;
            let note = format!(
                "nbthread {cores}, balance leastconn, per server maxconn {HEAVY_LIMIT} maxqueue 50, timeout queue 2s{}",
                if prio.is_empty() { "" } else { ", set-priority-class -10 light / 10 heavy" }
            );
            Ok(System { name: name.into(), port: HAPROXY, procs: vec![h], note })
        }
        "nginx" => {
            let servers: String = backends.iter().map(|b| format!("server {b}; ")).collect();
            let conf = nginx_conf(
                dir,
                "mixed-nginx",
                &format!(
                    "  upstream origin {{ {servers}keepalive 64; }}\n  server {{ listen 127.0.0.1:{NGINX}; location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
                ),
                &cores.to_string(),
            )?;
            let p = spawn("nginx", Command::new("nginx").arg("-c").arg(&conf).arg("-p").arg(dir))?;
            wait_port(NGINX)?;
            Ok(System {
                name: name.into(),
                port: NGINX,
                procs: vec![p],
                note: format!(
                    "{cores} workers, proxy_pass to both backends, keepalive 64, no concurrency limit (no queue in open source nginx)"
                ),
            })
        }
        other => Err(format!("unknown system {other:?}")),
    }
}

/// What one system did.
struct Outcome {
    name: String,
    note: String,
    idle: Vec<ClassResult>,
    flood: Vec<ClassResult>,
    /// Most heavy requests each backend ran at once during the flood.
    peaks: Vec<u32>,
    /// Resident memory of the proxy processes before and after the flood.
    rss_kib: (u64, u64),
    cpu_s: f64,
    /// ptth-adaptive: each worker's estimated heavy limit after the flood.
    adaptive: Vec<u32>,
}

/// The `adaptive_limit` values in ptth-lb's `/status` (one per worker
/// declaring the adaptive class).
fn adaptive_limits() -> Vec<u32> {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", ADMIN)) else { return Vec::new() };
    let _ = s.write_all(b"GET /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.split("\"adaptive_limit\":")
        .skip(1)
        .filter_map(|rest| rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .collect()
}

fn ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    preflight(
        &[("nginx", "nginx-light"), (o.haproxy.as_str(), "haproxy, or name one with --haproxy PATH")],
        &[NGINX, HAPROXY, PTTH, PTTH_TUNNEL, ADMIN],
    )?;
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let cores = if o.lb_cores == 0 { cpus } else { o.lb_cores };
    let dir = std::env::temp_dir().join(format!("ptth-bench-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let origin = Origin::start(BACKENDS, o.heavy, o.heavy_capacity)?;
    // Connections enough for the longest wait a class may see (2 s queue +
    // the heavy time) at its rate, so the schedule holds.
    let light = ClassLoad { name: "light", path: "/light", rate: o.light_rate, conns: ((o.light_rate * 0.1) as usize).clamp(4, 256) };
    let heavy = ClassLoad {
        name: "heavy",
        path: "/heavy",
        rate: o.heavy_rate,
        conns: ((o.heavy_rate * (2.5 + o.heavy.as_secs_f64())) as usize).clamp(4, 1024),
    };
    let mut outcomes = Vec::new();
    for name in &o.only {
        let sys = start(name, &dir, &origin.addrs, cores, &o)?;
        let addr: SocketAddr = ([127, 0, 0, 1], sys.port).into();
        eprintln!("{name}: warm-up, then {} s light alone, then {} s light + heavy flood", o.idle_duration, o.duration);
        // Pools fill, tunnels settle.
        let _ = loadgen::run(addr, "bench", std::slice::from_ref(&light), Duration::from_secs(2));
        let idle = loadgen::run(addr, "bench", std::slice::from_ref(&light), Duration::from_secs(o.idle_duration));
        origin.reset();
        let pids: Vec<u32> = sys.procs.iter().map(|p| p.child.id()).collect();
        let cpu0: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
        let rss_before: u64 = pids.iter().map(|&p| rss_kib(p)).sum();
        let flood = loadgen::run(addr, "bench", &[light.clone(), heavy.clone()], Duration::from_secs(o.duration));
        let cpu_s = pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>() - cpu0;
        let rss = pids.iter().map(|&p| rss_kib(p)).sum();
        let peaks = origin.peaks();
        let adaptive = if name.starts_with("ptth-adaptive") { adaptive_limits() } else { Vec::new() };
        for r in idle.iter().chain(&flood) {
            eprintln!(
                "  {:<5} ok {:>6} shed {:>5} errors {:>4} late {:>4}  p50 {:>8.2} ms  p99 {:>8.2} ms",
                r.name,
                r.ok,
                r.shed,
                r.errors,
                r.late,
                ms(&r.latency, 0.5),
                ms(&r.latency, 0.99)
            );
        }
        eprintln!("  heavy at once per backend: {peaks:?}; memory {} → {} MiB", rss_before / 1024, rss / 1024);
        if let Some(l) = flood.iter().find(|r| r.name == "light") {
            let per: Vec<String> = l.per_second.iter().map(|h| format!("{:.1}", ms(h, 0.99))).collect();
            eprintln!("  light p99 per second of the flood, ms: {}", per.join(" "));
            eprintln!("  light p90 {:.2} p95 {:.2} p99.9 {:.2} ms", ms(&l.latency, 0.9), ms(&l.latency, 0.95), ms(&l.latency, 0.999));
        }
        if !adaptive.is_empty() {
            eprintln!("  adaptive heavy limit per worker at the end: {adaptive:?}");
        }
        outcomes.push(Outcome {
            name: sys.name.clone(),
            note: sys.note.clone(),
            idle,
            flood,
            peaks,
            rss_kib: (rss_before, rss),
            cpu_s,
            adaptive,
        });
        drop(sys);
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(origin);
    let _ = std::fs::remove_dir_all(&dir);
    report(&o, cpus, &outcomes)
}

fn report(o: &Opts, cpus: u32, outcomes: &[Outcome]) -> Result<(), String> {
    let RunFacts { commit, date, lines } = run_facts(cpus);
    // A run against bounded backends is another scenario: its own files.
    let capacity = if o.heavy_capacity > 0 { format!("-capacity{}", o.heavy_capacity) } else { String::new() };
    let stem = format!("{}-{commit}-mixed{capacity}{}", &date[..10], o.tag);
    let mut md = String::new();
    let _ = writeln!(md, "# mixed: light requests under a heavy flood, heavy ones limited to {HEAVY_LIMIT} per backend\n");
    let _ = writeln!(md, "{lines}");
    let _ = writeln!(
        md,
        "- backends: {BACKENDS}, `/light` at once, `/heavy` after {} ms (capacity with {HEAVY_LIMIT} at once each: {:.0} heavy/s){}",
        o.heavy.as_millis(),
        BACKENDS as f64 * f64::from(HEAVY_LIMIT) / o.heavy.as_secs_f64(),
        if o.heavy_capacity > 0 {
            format!("; each backend runs at most {} heavy at once and queues the rest inside", o.heavy_capacity)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        md,
        "- load (open loop, latency from when each request was due; bench/src/loadgen.rs): light {:.0}/s alone for {} s, then light {:.0}/s + heavy {:.0}/s for {} s; generator, backends and proxies on the same host, unpinned except ptth-lb",
        o.light_rate, o.idle_duration, o.light_rate, o.heavy_rate, o.duration
    );
    let _ = writeln!(md, "- versions: {}; {}", sh("nginx -v 2>&1"), sh(&format!("{} -v | head -1", o.haproxy)));
    let _ = writeln!(md, "\n| system | setup |\n|---|---|");
    for out in outcomes {
        let _ = writeln!(md, "| {} | {} |", out.name, out.note);
    }
    let _ = writeln!(
        md,
        "\n| system | phase | class | ok/s | p50 ms | p99 ms | p99.9 ms | max ms | 503 (shed) | errors | heavy at once per backend | memory MiB, before → after the flood | CPU s, flood |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for out in outcomes {
        for (phase, list, secs) in [("idle", &out.idle, o.idle_duration), ("flood", &out.flood, o.duration)] {
            for r in list.iter() {
                let extra = if phase == "flood" && r.name == "heavy" {
                    format!(
                        "{:?} | {:.0} → {:.0} | {:.1}",
                        out.peaks,
                        out.rss_kib.0 as f64 / 1024.0,
                        out.rss_kib.1 as f64 / 1024.0,
                        out.cpu_s
                    )
                } else {
                    " | | ".to_string()
                };
                let _ = writeln!(
                    md,
                    "| {} | {phase} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {}{} | {extra} |",
                    out.name,
                    r.name,
                    r.ok as f64 / secs as f64,
                    ms(&r.latency, 0.5),
                    ms(&r.latency, 0.99),
                    ms(&r.latency, 0.999),
                    if r.latency.is_empty() { f64::NAN } else { r.latency.max() as f64 / 1000.0 },
                    r.shed,
                    r.errors,
                    if r.late > 0 { format!(" ({} sent late)", r.late) } else { String::new() },
                );
            }
        }
    }
    for out in outcomes.iter().filter(|x| !x.adaptive.is_empty()) {
        let _ = writeln!(
            md,
            "\n{}: the heavy limit the lb estimated for each worker at the end of the flood: {:?} (declared maximum {ADAPTIVE_MAX})",
            out.name, out.adaptive
        );
    }
    // The targets of the card, checked for ptth against this run.
    let light_p99 = |out: &Outcome, flood: bool| {
        let list = if flood { &out.flood } else { &out.idle };
        list.iter().find(|r| r.name == "light").map_or(f64::NAN, |r| ms(&r.latency, 0.99))
    };
    if let Some(p) = outcomes.iter().find(|x| x.name == "ptth") {
        let (idle, flood) = (light_p99(p, false), light_p99(p, true));
        let _ = writeln!(md, "\nTargets (ptth):\n");
        let ok = |b: bool| if b { "met" } else { "NOT met" };
        let _ = writeln!(
            md,
            "- light p99 under the flood {flood:.2} ms ≤ 2 × light p99 alone ({idle:.2} ms) + 1 ms = {:.2} ms: {}",
            2.0 * idle + 1.0,
            ok(flood <= 2.0 * idle + 1.0)
        );
        let _ = writeln!(
            md,
            "- heavy requests at once per backend {:?} ≤ {HEAVY_LIMIT}: {}",
            p.peaks,
            ok(p.peaks.iter().all(|&n| n <= HEAVY_LIMIT))
        );
        if let Some(h) = outcomes.iter().find(|x| x.name == "haproxy-prio") {
            let hp = light_p99(h, true);
            let _ =
                writeln!(md, "- light p99 under the flood {flood:.2} ms ≤ HAProxy with priority classes ({hp:.2} ms): {}", ok(flood <= hp));
        }
    }
    let svg = svg(outcomes, o.duration);
    std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
    let svg_file = o.out.join(format!("{stem}.svg"));
    std::fs::write(&svg_file, svg).map_err(|e| format!("writing {}: {e}", svg_file.display()))?;
    let _ = writeln!(md, "\np99 per second of the flood, light (solid) and heavy (dashed), log scale: ![]({stem}.svg)");
    println!("{md}");
    let file = o.out.join(format!("{stem}.md"));
    std::fs::write(&file, &md).map_err(|e| format!("writing {}: {e}", file.display()))?;
    eprintln!("wrote {} and {}", file.display(), svg_file.display());
    Ok(())
}

/// Light and heavy p99 per second of the flood for every system, on a log
/// scale from 0.1 ms to 10 s.
fn svg(outcomes: &[Outcome], secs: u64) -> String {
    let (w, h, left, top, bottom) = (900.0, 420.0, 70.0, 20.0, 50.0);
    let plot_w = w - left - 180.0;
    let plot_h = h - top - bottom;
    let (lo, hi) = (0.1f64.log10(), 10_000f64.log10());
    let y = |ms: f64| top + plot_h * (1.0 - (ms.max(0.1).log10() - lo) / (hi - lo));
    let x = |s: f64| left + plot_w * s / secs.max(1) as f64;
    let colors = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"];
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0] {
        let yy = y(ms);
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{ms} ms</text>"##,
            left + plot_w,
            left - 6.0,
            yy + 4.0
        );
    }
    let _ = write!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds into the flood</text>"#, left + plot_w / 2.0, h - 12.0);
    for (i, out) in outcomes.iter().enumerate() {
        let color = colors[i % colors.len()];
        for r in &out.flood {
            let pts: Vec<String> = r
                .per_second
                .iter()
                .enumerate()
                .filter(|(_, hist)| !hist.is_empty())
                .map(|(t, hist)| format!("{:.1},{:.1}", x(t as f64 + 0.5), y(ms(hist, 0.99))))
                .collect();
            let dash = if r.name == "heavy" { r#" stroke-dasharray="6,4""# } else { "" };
            let _ = write!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#, pts.join(" "));
        }
        let ly = top + 16.0 * i as f64 + 10.0;
        let lx = left + plot_w + 16.0;
        let _ = write!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            out.name
        );
    }
    s.push_str("</svg>\n");
    s
}
