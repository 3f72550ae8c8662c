//! Scenario `soak`: ptth under steady mixed load for minutes while its
//! workers are restarted and the lb reloads its config, the way an edge host
//! lives (docs/OPERATIONS.md, reload; issue 10's soak).
//!
//! One ptth-lb (config file and profile, so SIGHUP has files to read) and
//! two ptth-workerd sidecars in front of an nginx origin. Load in windows of
//! `--window` seconds: wrk (HTTP/1.1 keep-alive) and h2load (h2c) side by
//! side, all GETs. Every `--restart-every` seconds one worker is replaced
//! (the new one started, seen in /status, then the old one SIGTERMed, which
//! drains); every `--reload-every` seconds the profile changes and the lb
//! gets SIGHUP. Per window: requests, errors by kind, p99 of each client,
//! the lb's resident memory. The result file has the table and an SVG of
//! p99 and RSS over time.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{rss_kib, run_facts, spawn, start_origin, wait_port, Proc, ORIGIN, PTTH, PTTH_TUNNEL};

pub(crate) const USAGE: &str = "usage: ptth-bench soak [--minutes N] [--window SECS] [--restart-every SECS] [--reload-every SECS]
                  [--connections N] [--lb-cores N] [--out DIR]
  --minutes N         how long (default 10)
  --window SECS       one measurement window (default 10)
  --restart-every S   replace one worker (start the new one, then SIGTERM the old) this often (default 30)
  --reload-every S    change the profile and SIGHUP the lb this often (default 60)
  --connections N     wrk connections; h2load gets N/4 connections x 8 streams (default 32)";

const ADMIN: u16 = 19911;

struct Opts {
    minutes: u64,
    window: u64,
    restart_every: u64,
    reload_every: u64,
    connections: u32,
    lb_cores: u32,
    out: PathBuf,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        minutes: 10,
        window: 10,
        restart_every: 30,
        reload_every: 60,
        connections: 32,
        lb_cores: 0,
        out: PathBuf::from("bench/results"),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag}: missing value"))?;
        let num = |lo: u64, hi: u64| crate::flag_num(flag, v, lo, hi);
        match flag.as_str() {
            "--minutes" => o.minutes = num(1, 24 * 60)?,
            "--window" => o.window = num(2, 600)?,
            "--restart-every" => o.restart_every = num(1, 3600)?,
            "--reload-every" => o.reload_every = num(1, 3600)?,
            "--connections" => o.connections = num(4, 10_000)? as u32,
            "--lb-cores" => o.lb_cores = num(0, 1024)? as u32,
            "--out" => o.out = PathBuf::from(v),
            _ => return Err(format!("unknown flag {flag:?}\n{USAGE}")),
        }
    }
    Ok(o)
}

fn start_worker(id: &str) -> Result<Proc, String> {
    spawn(
        "ptth-workerd",
        Command::new("target/release/ptth-workerd").args([
            "--lb",
            &format!("127.0.0.1:{PTTH_TUNNEL}"),
            "--origin",
            &format!("http://127.0.0.1:{ORIGIN}"),
            "--id",
            id,
            "--tunnels-per-core",
            "2",
            "--quiet",
        ]),
    )
}

fn status() -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", ADMIN)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(b"GET /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// Waits until /status lists worker `id` with tunnels on every core.
fn wait_joined(id: &str) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let s = status();
        if let Some(at) = s.find(&format!("\"id\": \"{id}\"")) {
            let rest = &s[at..];
            if let Some(t) = rest.split("\"tunnels_per_core\": [").nth(1).and_then(|r| r.split(']').next()) {
                if t.split(',').all(|n| n.trim().parse::<u32>().is_ok_and(|n| n > 0)) {
                    return Ok(());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("worker {id} did not join within 10 s"))
}

fn signal(p: &Proc, sig: &str) {
    let _ = Command::new("kill").args([sig, &p.child.id().to_string()]).status();
}

struct Window {
    at_s: u64,
    h1: crate::WrkResult,
    h2: crate::WrkResult,
    rss_kib: u64,
    /// What happened during it.
    events: Vec<String>,
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    crate::preflight(&[("wrk", "wrk"), ("h2load", "nghttp2-client"), ("nginx", "nginx-light")], &[ORIGIN, PTTH, PTTH_TUNNEL, ADMIN])?;
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let cores = if o.lb_cores == 0 { cpus } else { o.lb_cores };
    let dir = std::env::temp_dir().join(format!("ptth-bench-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let _origin = start_origin(&dir)?;
    let cfg = dir.join("lb.toml");
    let profile = dir.join("profile.toml");
    std::fs::write(
        &cfg,
        format!(
            "profile = \"profile.toml\"\n[listen]\nclient = [\"127.0.0.1:{PTTH}\"]\ntunnel = \"127.0.0.1:{PTTH_TUNNEL}\"\nadmin = \"127.0.0.1:{ADMIN}\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let write_profile =
        |n: u64| std::fs::write(&profile, format!("[queue]\nmax_waiting = {}\n[timeouts]\nheader_ms = {}\n", 16000 + n, 10_000 + n));
    write_profile(0).map_err(|e| e.to_string())?;
    let lb_log = dir.join("lb.log");
    let lb = {
        let log = std::fs::File::create(&lb_log).map_err(|e| e.to_string())?;
        let child = Command::new("target/release/ptth-lb")
            .args(["--config", cfg.to_str().unwrap_or_default(), "--cores", &cores.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting ptth-lb: {e}"))?;
        Proc { name: "ptth-lb", child }
    };
    wait_port(PTTH)?;
    let mut generation = 0u32;
    let mut workers = vec![start_worker("soak-a-0")?, start_worker("soak-b-0")?];
    let mut names = ["soak-a-0".to_string(), "soak-b-0".to_string()];
    wait_joined("soak-a-0")?;
    wait_joined("soak-b-0")?;
    let start = Instant::now();
    let total = Duration::from_secs(o.minutes * 60);
    let (mut next_restart, mut next_reload) = (o.restart_every, o.reload_every);
    let mut windows: Vec<Window> = Vec::new();
    let mut reloads = 0u64;
    while start.elapsed() < total {
        let at_s = start.elapsed().as_secs();
        let secs = o.window;
        let dir2 = dir.clone();
        let (w1, w2) = (
            std::thread::spawn({
                let wrk = crate::parse(&["h1-wrk".into(), "--connections".into(), o.connections.to_string()])?;
                move || crate::run_wrk(&wrk, PTTH, secs)
            }),
            std::thread::spawn({
                let h2 = crate::parse(&[
                    "h2-h2load".into(),
                    "--connections".into(),
                    (o.connections / 4).max(1).to_string(),
                    "--streams".into(),
                    "8".into(),
                ])?;
                move || crate::run_h2load(&h2, PTTH, secs, &dir2)
            }),
        );
        let mut events = Vec::new();
        // Events land inside the window, while the load runs.
        let window_end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < window_end {
            let t = start.elapsed().as_secs();
            if t >= next_restart {
                next_restart += o.restart_every;
                generation += 1;
                let slot = (generation % 2) as usize;
                let id = format!("soak-{}-{generation}", if slot == 0 { "a" } else { "b" });
                let fresh = start_worker(&id)?;
                wait_joined(&id)?;
                let old = std::mem::replace(&mut workers[slot], fresh);
                signal(&old, "-TERM");
                drop(old);
                events.push(format!("restart {} → {id}", names[slot]));
                names[slot] = id;
            }
            if t >= next_reload {
                next_reload += o.reload_every;
                reloads += 1;
                write_profile(reloads).map_err(|e| e.to_string())?;
                signal(&lb, "-HUP");
                events.push("reload".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let h1 = w1.join().map_err(|_| "wrk thread panicked")??;
        let h2r = w2.join().map_err(|_| "h2load thread panicked")??;
        let rss = rss_kib(lb.child.id());
        eprintln!(
            "{at_s:>4} s: h1 {:>8.0} req/s p99 {:.2} ms {}| h2c {:>8.0} req/s p99 {:.2} ms {}| lb RSS {} KiB {}",
            h1.rps,
            h1.p99_ms,
            if h1.errors.is_empty() { String::new() } else { format!("[{}] ", h1.errors) },
            h2r.rps,
            h2r.p99_ms,
            if h2r.errors.is_empty() { String::new() } else { format!("[{}] ", h2r.errors) },
            rss,
            events.join(", ")
        );
        windows.push(Window { at_s, h1, h2: h2r, rss_kib: rss, events });
    }
    let log = std::fs::read_to_string(&lb_log).unwrap_or_default();
    let applied = log.lines().filter(|l| l.contains("reloaded:")).count();
    let refused = log.lines().filter(|l| l.contains("reload refused")).count();
    drop(workers);
    drop(lb);
    report(&o, cpus, cores, &windows, reloads, applied, refused, generation)
}

#[allow(clippy::too_many_arguments)]
fn report(
    o: &Opts,
    cpus: u32,
    cores: u32,
    windows: &[Window],
    reloads: u64,
    applied: usize,
    refused: usize,
    restarts: u32,
) -> Result<(), String> {
    let facts = run_facts(cpus);
    let h1_total: u64 = windows.iter().map(|w| w.h1.requests).sum();
    let h2_total: u64 = windows.iter().map(|w| w.h2.requests).sum();
    let errors: Vec<String> = windows
        .iter()
        .flat_map(|w| {
            [(&w.h1, "h1"), (&w.h2, "h2c")]
                .into_iter()
                .filter(|(r, _)| !r.errors.is_empty())
                .map(move |(r, k)| format!("{} s {k}: {}", w.at_s, r.errors))
        })
        .collect();
    // Warm-up: the first two windows.
    let steady: Vec<u64> = windows.iter().skip(2).map(|w| w.rss_kib).collect();
    let (lo, hi) = (steady.iter().min().copied().unwrap_or(0), steady.iter().max().copied().unwrap_or(0));
    let mut md = format!("# soak: mixed HTTP/1.1 and h2c load, workers restarted, lb reloaded\n\n{}", facts.lines);
    let _ = write!(
        md,
        "- ptth-lb --cores {cores} (io_uring coop_taskrun, pinned), config + profile files; two ptth-workerd --origin nginx, 2 h2 tunnels per core each\n- {} min in {} s windows; load: wrk -c{} (HTTP/1.1 keep-alive GET) and h2load -c{} -m8 (h2c GET) side by side\n- a worker replaced every {} s (new started and seen in /status, old SIGTERMed): {restarts} restarts; profile changed and SIGHUP every {} s: {reloads} sent, {applied} applied, {refused} refused\n\n",
        o.minutes,
        o.window,
        o.connections,
        (o.connections / 4).max(1),
        o.restart_every,
        o.reload_every,
    );
    let _ = write!(
        md,
        "**Totals:** {h1_total} HTTP/1.1 + {h2_total} h2c requests; windows with errors: {}; lb RSS after warm-up {:.1} to {:.1} MiB ({:+.1}% spread)\n\n",
        errors.len(),
        lo as f64 / 1024.0,
        hi as f64 / 1024.0,
        if lo > 0 { (hi as f64 - lo as f64) / lo as f64 * 100.0 } else { 0.0 }
    );
    if !errors.is_empty() {
        md.push_str("Errors by window and kind:\n\n");
        for e in &errors {
            let _ = writeln!(md, "- {e}");
        }
        md.push('\n');
    }
    md.push_str("| t (s) | h1 req/s | h1 p99 (ms) | h2c req/s | h2c p99 (ms) | lb RSS (MiB) | events |\n|---|---|---|---|---|---|---|\n");
    for w in windows {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.1} | {} |",
            w.at_s,
            w.h1.rps,
            w.h1.p99_ms,
            w.h2.rps,
            w.h2.p99_ms,
            w.rss_kib as f64 / 1024.0,
            w.events.join(", ")
        );
    }
    std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
    let base = format!("{}-{}-soak", &facts.date[..10], facts.commit);
    let svg_path = o.out.join(format!("{base}.svg"));
    std::fs::write(&svg_path, svg(windows)).map_err(|e| e.to_string())?;
    let _ = write!(md, "\n![p99 and RSS over time]({})\n", svg_path.file_name().and_then(|n| n.to_str()).unwrap_or_default());
    let path = o.out.join(format!("{base}.md"));
    std::fs::write(&path, &md).map_err(|e| e.to_string())?;
    eprintln!("wrote {} and {}", path.display(), svg_path.display());
    print!("{md}");
    Ok(())
}

/// p99 of each client (left axis, ms) and the lb's RSS (right axis, MiB)
/// per window; reloads and restarts marked.
fn svg(windows: &[Window]) -> String {
    let (w, h, left, right, top, bottom) = (900.0, 420.0, 70.0, 80.0, 20.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let t_max = windows.last().map_or(1.0, |x| x.at_s as f64 + 1.0).max(1.0);
    let p_max = windows.iter().flat_map(|x| [x.h1.p99_ms, x.h2.p99_ms]).filter(|v| v.is_finite()).fold(1.0f64, f64::max) * 1.1;
    let r_max = windows.iter().map(|x| x.rss_kib as f64 / 1024.0).fold(1.0f64, f64::max) * 1.2;
    let x = |t: f64| left + t / t_max * pw;
    let yp = |v: f64| top + ph - v / p_max * ph;
    let yr = |v: f64| top + ph - v / r_max * ph;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>"#
    );
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let yy = top + ph - f * ph;
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.1} ms</text><text x="{:.1}" y="{:.1}">{:.0} MiB</text>"##,
            left + pw,
            left - 6.0,
            yy + 4.0,
            f * p_max,
            left + pw + 6.0,
            yy + 4.0,
            f * r_max
        );
    }
    for win in windows.iter().filter(|x| !x.events.is_empty()) {
        let xx = x(win.at_s as f64);
        let _ = write!(s, r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#f0c0c0"/>"##, top + ph);
    }
    let line = |pts: Vec<String>, color: &str, dash: &str| {
        format!(r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#, pts.join(" "))
    };
    let mid = |win: &Window| win.at_s as f64 + 0.5;
    s.push_str(&line(
        windows.iter().filter(|v| v.h1.p99_ms.is_finite()).map(|v| format!("{:.1},{:.1}", x(mid(v)), yp(v.h1.p99_ms))).collect(),
        "#1f77b4",
        "",
    ));
    s.push_str(&line(
        windows.iter().filter(|v| v.h2.p99_ms.is_finite()).map(|v| format!("{:.1},{:.1}", x(mid(v)), yp(v.h2.p99_ms))).collect(),
        "#ff7f0e",
        "",
    ));
    s.push_str(&line(
        windows.iter().map(|v| format!("{:.1},{:.1}", x(mid(v)), yr(v.rss_kib as f64 / 1024.0))).collect(),
        "#2ca02c",
        r#" stroke-dasharray="6,4""#,
    ));
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds; red lines: a worker restart or an lb reload in that window</text><text x="{left}" y="{:.1}" fill="#1f77b4">h1 p99</text><text x="{:.1}" y="{:.1}" fill="#ff7f0e">h2c p99</text><text x="{:.1}" y="{:.1}" fill="#2ca02c">lb RSS (dashed)</text>"##,
        left + pw / 2.0,
        h - 12.0,
        h - 28.0,
        left + 80.0,
        h - 28.0,
        left + 170.0,
        h - 28.0
    );
    s.push_str("</svg>\n");
    s
}
