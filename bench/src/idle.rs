//! Scenario `idle`: what idle and slow clients cost each proxy, and whether
//! they slow everyone else (docs/OPERATIONS.md, capacity notes).
//!
//! For each system in turn (ptth, nginx, HAProxy, as in `h1-wrk`): wrk
//! measures p50/p99 alone; then N idle keep-alive connections (one request
//! each, then nothing) and M slow readers (each asks for a 1 MiB response
//! and drains it at `--slow-rate` bytes a second, with a small receive
//! buffer so the backpressure reaches the proxy) are opened; the proxy's
//! resident memory is read before and after each step, and wrk runs again
//! beside them. For ptth it also measures what an idle tunnel costs the lb
//! (a second worker holding `--idle-tunnels` tunnels per core, answering
//! nothing). Memory is the resident set of the proxy's processes (all of
//! nginx's, HAProxy's; ptth-lb alone).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{rss_kib, run_facts, run_wrk, spawn, start_origin, start_target, PTTH_TUNNEL};

pub(crate) const USAGE: &str = "usage: ptth-bench idle [--idle N] [--slow N] [--slow-rate BYTES] [--idle-tunnels N] [--duration SECS]
                  [--connections N] [--lb-cores N] [--only ptth,ptth-h1,nginx,haproxy] [--out DIR]
  --idle N          idle keep-alive client connections (default 10000)
  --slow N          slow readers of a 1 MiB response (default 1000)
  --slow-rate B     bytes a second each slow reader drains (default 1024)
  --idle-tunnels N  ptth only: idle tunnels per lb core from a second worker (default 256)
  --duration SECS   each wrk run (default 10)
  --connections N   wrk connections (default 16)
Needs an open-file limit above idle + slow + a few hundred (ulimit -n).";

struct Opts {
    idle: u32,
    slow: u32,
    slow_rate: u64,
    idle_tunnels: u32,
    duration: u64,
    connections: u32,
    lb_cores: u32,
    only: Vec<String>,
    out: PathBuf,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        idle: 10_000,
        slow: 1000,
        slow_rate: 1024,
        idle_tunnels: 256,
        duration: 10,
        connections: 16,
        lb_cores: 0,
        only: vec!["ptth".into(), "nginx".into(), "haproxy".into()],
        out: PathBuf::from("bench/results"),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag}: missing value"))?;
        let num = |lo: u64, hi: u64| crate::flag_num(flag, v, lo, hi);
        match flag.as_str() {
            "--idle" => o.idle = num(0, 1_000_000)? as u32,
            "--slow" => o.slow = num(0, 100_000)? as u32,
            "--slow-rate" => o.slow_rate = num(1, 1 << 30)?,
            "--idle-tunnels" => o.idle_tunnels = num(0, 100_000)? as u32,
            "--duration" => o.duration = num(1, 3600)?,
            "--connections" => o.connections = num(1, 10_000)? as u32,
            "--lb-cores" => o.lb_cores = num(0, 1024)? as u32,
            "--only" => o.only = v.split(',').map(String::from).collect(),
            "--out" => o.out = PathBuf::from(v),
            _ => return Err(format!("unknown flag {flag:?}\n{USAGE}")),
        }
    }
    Ok(o)
}

/// One request on a fresh connection, the response read whole; the
/// connection stays open (keep-alive).
fn one_request(port: u16) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    // The origin answers `hello\n`.
    while !got.ends_with(b"hello\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the response ended"));
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(s)
}

/// Slow readers: each asks for `/big` and drains it at `rate` bytes a
/// second. Returns the readers' thread, which stops when `stop` is set.
fn slow_readers(port: u16, n: u32, rate: u64, stop: Arc<AtomicBool>, read: Arc<AtomicU64>) -> std::io::Result<std::thread::JoinHandle<()>> {
    let mut socks = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        set_small_rcvbuf(&s);
        let mut s = s;
        s.write_all(b"GET /big HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        s.set_nonblocking(true)?;
        socks.push(s);
    }
    Ok(std::thread::spawn(move || {
        let tick = Duration::from_millis(100);
        let per_tick = (rate / 10).max(1) as usize;
        let mut buf = vec![0u8; per_tick];
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            for s in socks.iter_mut() {
                if let Ok(k) = s.read(&mut buf) {
                    read.fetch_add(k as u64, Ordering::Relaxed);
                }
            }
            std::thread::sleep(tick.saturating_sub(t.elapsed()));
        }
    }))
}

/// A 4 KiB receive buffer, so a slow reader's backlog sits in the proxy.
#[allow(unsafe_code)]
fn set_small_rcvbuf(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = 4096;
    // SAFETY: setsockopt reads a c_int through a valid pointer of that
    // size, on a socket this function borrows (open for the whole call).
    let _ = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

struct Row {
    name: String,
    note: String,
    base: crate::WrkResult,
    loaded: crate::WrkResult,
    idle_held: u32,
    idle_kib: f64,
    slow_held: u32,
    slow_kib: f64,
    slow_read: u64,
    tunnel_kib: Option<(u32, f64)>,
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    crate::preflight(
        &[("wrk", "wrk"), ("nginx", "nginx-light"), ("haproxy", "haproxy")],
        &[crate::ORIGIN, crate::NGINX, crate::HAPROXY, crate::PTTH, PTTH_TUNNEL],
    )?;
    let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let cores = if o.lb_cores == 0 { cpus } else { o.lb_cores };
    let dir = std::env::temp_dir().join(format!("ptth-bench-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let _origin = start_origin(&dir)?;
    let mut wrk_opts = crate::parse(&["h1-wrk".to_string(), "--connections".into(), o.connections.to_string()])?;
    wrk_opts.max_conns = o.idle + o.slow + 1000;
    let mut rows = Vec::new();
    for name in &o.only {
        let t = start_target(name, &dir, &wrk_opts, cores)?;
        let pid = t.procs[0].child.id();
        run_wrk(&wrk_opts, t.port, 2)?;
        let base = run_wrk(&wrk_opts, t.port, o.duration)?;
        let per = |kib: u64, n: u32| if n == 0 { 0.0 } else { kib as f64 / f64::from(n) };
        // Idle tunnels first, on a fresh lb: nothing freed yet to reuse.
        let mut tunnel_worker = None;
        let tunnel_kib = if name.starts_with("ptth") && o.idle_tunnels > 0 {
            let before = rss_kib(pid);
            let w = spawn(
                "ptth-workerd (idle tunnels)",
                Command::new("target/release/ptth-workerd").args([
                    "--lb",
                    &format!("127.0.0.1:{PTTH_TUNNEL}"),
                    "--respond",
                    "hello",
                    "--route",
                    "/idle-tunnels/",
                    "--id",
                    "idle-tunnels",
                    "--tunnels-per-core",
                    &o.idle_tunnels.to_string(),
                    "--inner",
                    if name == "ptth-h1" { "http/1.1" } else { "h2" },
                    "--quiet",
                ]),
            )?;
            std::thread::sleep(Duration::from_secs(3));
            let after = rss_kib(pid);
            // Kept until this system is done: memory its tunnels give back
            // would be reused by the idle connections and hide their cost.
            tunnel_worker = Some(w);
            Some((o.idle_tunnels * cores, per(after.saturating_sub(before), o.idle_tunnels * cores)))
        } else {
            None
        };
        let rss0 = rss_kib(pid);
        let mut idle = Vec::with_capacity(o.idle as usize);
        for _ in 0..o.idle {
            match one_request(t.port) {
                Ok(s) => idle.push(s),
                Err(e) => {
                    eprintln!("{name}: idle connection {}: {e}", idle.len());
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        let rss1 = rss_kib(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let read = Arc::new(AtomicU64::new(0));
        let readers =
            slow_readers(t.port, o.slow, o.slow_rate, stop.clone(), read.clone()).map_err(|e| format!("{name}: slow readers: {e}"))?;
        std::thread::sleep(Duration::from_secs(2));
        let rss2 = rss_kib(pid);
        let loaded = run_wrk(&wrk_opts, t.port, o.duration)?;
        stop.store(true, Ordering::Relaxed);
        let _ = readers.join();
        let held = idle.len() as u32;
        drop(idle);
        eprintln!(
            "{name:>8}: p99 {:.3} → {:.3} ms; {:.1} KiB per idle connection ({held}), {:.1} KiB per slow reader ({}); {}",
            base.p99_ms,
            loaded.p99_ms,
            per(rss1.saturating_sub(rss0), held),
            per(rss2.saturating_sub(rss1), o.slow),
            o.slow,
            tunnel_kib.map_or(String::new(), |(n, k)| format!("{k:.1} KiB per idle tunnel ({n})")),
        );
        rows.push(Row {
            name: name.clone(),
            note: t.note.clone(),
            idle_kib: per(rss1.saturating_sub(rss0), held),
            slow_kib: per(rss2.saturating_sub(rss1), o.slow),
            idle_held: held,
            slow_held: o.slow,
            slow_read: read.load(Ordering::Relaxed),
            base,
            loaded,
            tunnel_kib,
        });
        drop(tunnel_worker);
        drop(t);
        std::thread::sleep(Duration::from_millis(300));
    }
    report(&o, cpus, &rows)
}

fn report(o: &Opts, cpus: u32, rows: &[Row]) -> Result<(), String> {
    let facts = run_facts(cpus);
    let mut md = format!("# idle and slow clients\n\n{}", facts.lines);
    md.push_str(&format!(
        "- load: wrk -c{} for {} s alone, then again beside {} idle keep-alive connections and {} slow readers of a 1 MiB response at {} B/s each (4 KiB receive buffers)\n- memory: resident set of the proxy (ptth-lb alone; nginx and HAProxy, all processes), before and after each step\n\n",
        o.connections, o.duration, o.idle, o.slow, o.slow_rate
    ));
    md.push_str("| system | p50 / p99 alone (ms) | p50 / p99 beside idle + slow (ms) | p99 ratio | KiB per idle connection | KiB per slow reader | KiB per idle tunnel | wrk errors |\n|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.3} / {:.3} | {:.3} / {:.3} | {:.2} | {:.1} ({} held) | {:.1} ({} held, {} KiB drained) | {} | {} |\n",
            r.name,
            r.base.p50_ms,
            r.base.p99_ms,
            r.loaded.p50_ms,
            r.loaded.p99_ms,
            r.loaded.p99_ms / r.base.p99_ms.max(0.001),
            r.idle_kib,
            r.idle_held,
            r.slow_kib,
            r.slow_held,
            r.slow_read / 1024,
            r.tunnel_kib.map_or("-".into(), |(n, k)| format!("{k:.1} ({n})")),
            if r.loaded.errors.is_empty() { "-".to_string() } else { r.loaded.errors.clone() },
        ));
    }
    md.push_str("\nSetups:\n\n");
    for r in rows {
        md.push_str(&format!("- {}: {}\n", r.name, r.note));
    }
    std::fs::create_dir_all(&o.out).map_err(|e| e.to_string())?;
    let path = o.out.join(format!("{}-{}-idle.md", &facts.date[..10], facts.commit));
    std::fs::write(&path, &md).map_err(|e| e.to_string())?;
    eprintln!("wrote {}", path.display());
    print!("{md}");
    Ok(())
}
