//! The "mixed" scenario's origin: a small HTTP/1.1 server per backend
//! ("server" in HAProxy's words, "worker" in ptth's), each on its own port,
//! answering `/light` at once and `/heavy` after a fixed wait, and counting
//! how many heavy requests it runs at once: the concurrency each system let
//! through to each backend. With a heavy capacity, a backend runs at most
//! that many heavy requests and queues the rest inside (their latency grows
//! with the concurrency let through, as a real backend's does).
//!
//! Thread per connection, keep-alive, GET only: the proxies in front hold
//! the connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One backend's counts.
#[derive(Debug, Default)]
pub(crate) struct Backend {
    /// Heavy requests inside the backend now, running or queued in it.
    heavy_now: AtomicU32,
    /// Heavy requests running (at most the capacity, when there is one).
    running: std::sync::Mutex<u32>,
    freed: std::sync::Condvar,
    /// Most heavy requests running at once since the last [`Origin::reset`].
    pub(crate) heavy_peak: AtomicU32,
    pub(crate) requests: AtomicU64,
}

pub(crate) struct Origin {
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) backends: Vec<Arc<Backend>>,
    stop: Arc<AtomicBool>,
}

impl Origin {
    /// `n` backends on ephemeral loopback ports; `/heavy` takes `heavy`, at
    /// most `capacity` at once per backend (0: no bound).
    pub(crate) fn start(n: usize, heavy: Duration, capacity: u32) -> Result<Origin, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::new();
        let mut backends = Vec::new();
        for _ in 0..n {
            let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("origin: {e}"))?;
            addrs.push(l.local_addr().map_err(|e| e.to_string())?);
            let b = Arc::new(Backend::default());
            backends.push(b.clone());
            let stop = stop.clone();
            std::thread::spawn(move || {
                for s in l.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(s) = s else { continue };
                    let b = b.clone();
                    std::thread::spawn(move || serve(s, &b, heavy, capacity));
                }
            });
        }
        Ok(Origin { addrs, backends, stop })
    }

    /// Starts counting peaks afresh.
    pub(crate) fn reset(&self) {
        for b in &self.backends {
            b.heavy_peak.store(b.heavy_now.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }

    pub(crate) fn peaks(&self) -> Vec<u32> {
        self.backends.iter().map(|b| b.heavy_peak.load(Ordering::SeqCst)).collect()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loops so they see the flag.
        for a in &self.addrs {
            let _ = TcpStream::connect(a);
        }
    }
}

fn serve(mut s: TcpStream, b: &Backend, heavy: Duration, capacity: u32) {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let is_heavy = buf.starts_with(b"GET /heavy");
        buf.drain(..end);
        b.requests.fetch_add(1, Ordering::Relaxed);
        let body: &[u8] = if is_heavy {
            let now = b.heavy_now.fetch_add(1, Ordering::SeqCst) + 1;
            b.heavy_peak.fetch_max(now, Ordering::SeqCst);
            if capacity > 0 {
                let mut running = b.running.lock().unwrap_or_else(|p| p.into_inner());
                while *running >= capacity {
                    running = b.freed.wait(running).unwrap_or_else(|p| p.into_inner());
                }
                *running += 1;
            }
            std::thread::sleep(heavy);
            if capacity > 0 {
                *b.running.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
                b.freed.notify_one();
            }
            b.heavy_now.fetch_sub(1, Ordering::SeqCst);
            b"heavy\n"
        } else {
            b"light\n"
        };
        let mut out = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        out.extend_from_slice(body);
        if s.write_all(&out).is_err() {
            return;
        }
    }
}
