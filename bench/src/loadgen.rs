//! An open-loop HTTP/1.1 load generator: each request class arrives at a
//! fixed rate whatever the server does, and a request's latency counts from
//! when it was due to be sent, not from when a connection was free to send
//! it, so a stalled server cannot hide its stall by slowing the generator
//! down (coordinated omission, as wrk2 corrects it).
//!
//! Each class has a pool of keep-alive connections, one thread each; thread
//! `k` of `n` owns the arrivals `k`, `k + n`, `k + 2n`, … of its class's
//! schedule; its connection opens before the schedule starts. Latencies go
//! into hdrhistogram histograms (microseconds), one
//! for the whole run and one per second of it, merged over the threads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One class of requests to send.
#[derive(Debug, Clone)]
pub(crate) struct ClassLoad {
    pub(crate) name: &'static str,
    pub(crate) path: &'static str,
    /// Requests per second.
    pub(crate) rate: f64,
    /// Connections (threads): enough that every arrival finds one even at
    /// the longest latency the class may see.
    pub(crate) conns: usize,
}

/// What one class saw.
pub(crate) struct ClassResult {
    pub(crate) name: &'static str,
    /// Latency of the 2xx responses, µs from when each was due.
    pub(crate) latency: Histogram<u64>,
    /// The same, per second of the run.
    pub(crate) per_second: Vec<Histogram<u64>>,
    pub(crate) ok: u64,
    /// 503 answers (shed by the proxy).
    pub(crate) shed: u64,
    /// Other statuses, connection failures, timeouts.
    pub(crate) errors: u64,
    /// Arrivals sent at least 100 ms after they were due (the generator fell
    /// behind: more connections needed).
    pub(crate) late: u64,
}

impl ClassResult {
    fn empty(name: &'static str, secs: usize) -> ClassResult {
        ClassResult { name, latency: histogram(), per_second: (0..secs).map(|_| histogram()).collect(), ok: 0, shed: 0, errors: 0, late: 0 }
    }

    /// Adds what another connection of the class saw.
    fn merge(&mut self, p: &ClassResult) {
        let _ = self.latency.add(&p.latency);
        for (a, b) in self.per_second.iter_mut().zip(&p.per_second) {
            let _ = a.add(b);
        }
        self.ok += p.ok;
        self.shed += p.shed;
        self.errors += p.errors;
        self.late += p.late;
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// Sends `classes` to `addr` for `duration`; returns what each saw.
pub(crate) fn run(addr: SocketAddr, host: &str, classes: &[ClassLoad], duration: Duration) -> Vec<ClassResult> {
    // Every connection opens before the first arrival is due (keep-alive
    // clients already connected), so the start is not a connection storm.
    let start = Instant::now() + Duration::from_millis(500);
    let secs = duration.as_secs().max(1) as usize;
    std::thread::scope(|s| {
        let runs: Vec<_> = classes
            .iter()
            .map(|c| {
                let threads: Vec<_> =
                    (0..c.conns).map(|k| s.spawn(move || one_connection(addr, host, c, k, start, duration, secs))).collect();
                (c, threads)
            })
            .collect();
        runs.into_iter()
            .map(|(c, threads)| {
                let mut r = ClassResult::empty(c.name, secs);
                for t in threads {
                    r.merge(&t.join().expect("load thread"));
                }
                r
            })
            .collect()
    })
}

fn one_connection(addr: SocketAddr, host: &str, c: &ClassLoad, k: usize, start: Instant, duration: Duration, secs: usize) -> ClassResult {
    let mut r = ClassResult::empty(c.name, secs);
    let request = format!("GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ptth-bench\r\n\r\n", c.path);
    let interval = Duration::from_secs_f64(1.0 / c.rate);
    let mut conn: Option<Conn> = Conn::open(addr).ok();
    let mut i = k as u64;
    loop {
        let due = start + interval.mul_f64(i as f64);
        if due >= start + duration {
            return r;
        }
        i += c.conns as u64;
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        } else if now - due > Duration::from_millis(100) {
            r.late += 1;
        }
        let status = match conn.as_mut().map(|c| c.exchange(request.as_bytes())) {
            Some(Ok(s)) => Ok(s),
            // A fresh connection for the first request, or after the proxy
            // closed the last one.
            _ => Conn::open(addr).and_then(|mut c| {
                let s = c.exchange(request.as_bytes());
                conn = Some(c);
                s
            }),
        };
        let took = due.elapsed();
        match status {
            Ok((200..=299, keep)) => {
                r.ok += 1;
                let us = (took.as_micros() as u64).clamp(1, 100_000_000);
                let _ = r.latency.record(us);
                let sec = ((due - start).as_secs() as usize).min(secs - 1);
                let _ = r.per_second[sec].record(us);
                if !keep {
                    conn = None;
                }
            }
            Ok((503, keep)) => {
                r.shed += 1;
                if !keep {
                    conn = None;
                }
            }
            Ok(_) | Err(_) => {
                r.errors += 1;
                conn = None;
            }
        }
    }
}

/// One keep-alive client connection.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn { s, buf: Vec::with_capacity(4096) })
    }

    /// Sends one request and reads its whole response: (status, whether
    /// the connection stays open).
    fn exchange(&mut self, request: &[u8]) -> std::io::Result<(u16, bool)> {
        self.s.write_all(request)?;
        self.buf.clear();
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let status = head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| bad("no status line"))?;
        let field = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
        let keep = !field("connection:").is_some_and(|v| v.contains("close")) && head.starts_with("http/1.1");
        let body_start = head_end;
        if let Some(n) = field("content-length:").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < body_start + n {
                self.fill()?;
            }
            Ok((status, keep))
        } else if field("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
            // The last chunk and an empty trailer section end it.
            while !self.buf[body_start..].windows(5).any(|w| w == b"0\r\n\r\n") {
                self.fill()?;
            }
            Ok((status, keep))
        } else {
            // Delimited by the close.
            while self.fill().is_ok() {}
            Ok((status, false))
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16384];
        let n = self.s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("closed mid-response"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn bad(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string())
}
