//! Large bodies stream through with bounded memory: 1 GiB up, 1 GiB down,
//! and a full-duplex echo (the worker answers while the upload goes on).

use std::io::Write;
use std::time::Duration;

use ptth_tests::*;
use ptth_workerd::{Exchange, Handler, Responder};

const GIB: u64 = 1 << 30;
const CHUNK: usize = 256 * 1024;

/// `/down/N`: N bytes, chunked. Anything else: reads the body, answers its length.
#[derive(Clone)]
struct Bulk;

impl Handler for Bulk {
    async fn handle(&self, ex: &mut Exchange<'_>) -> Result<(), ptth_workerd::Error> {
        if let Some(n) = ex.target().strip_prefix("/down/").and_then(|n| n.parse::<u64>().ok()) {
            ex.start(200, &[]).await?;
            let block = vec![b'x'; CHUNK];
            let mut left = n;
            while left > 0 {
                let k = left.min(CHUNK as u64) as usize;
                ex.send(&block[..k]).await?;
                left -= k as u64;
            }
            return ex.finish().await;
        }
        let mut buf = Vec::with_capacity(CHUNK);
        let mut total = 0u64;
        loop {
            buf.clear();
            let n = ex.read_body(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        ex.respond(200, &[], total.to_string().as_bytes()).await
    }
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()).unwrap()
}

/// Samples this process's RSS until dropped; reports the peak.
struct Peak {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    t: Option<std::thread::JoinHandle<u64>>,
}

impl Peak {
    fn start() -> Peak {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib());
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        Peak { stop, t: Some(t) }
    }
    fn end(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.t.take().unwrap().join().unwrap()
    }
}

/// Memory may grow by buffers per connection, not with the body size.
const MAX_GROWTH_KIB: u64 = 64 * 1024;

#[test]
fn one_gib_upload_and_download_in_bounded_memory() {
    let lb = start_lb(2, |_| {});
    let _w = start_worker(worker_config(&lb, "bulk", 2), || Bulk);
    let before = rss_kib();
    let peak = Peak::start();

    let mut c = Client::connect(lb.client_addr());
    c.send(format!("POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {GIB}\r\n\r\n").as_bytes());
    let block = vec![b'u'; CHUNK];
    let mut left = GIB;
    while left > 0 {
        let k = left.min(CHUNK as u64) as usize;
        c.send(&block[..k]);
        left -= k as u64;
    }
    let r = c.read_response(false);
    assert_eq!(r.text(), GIB.to_string());

    let (r, n) = {
        c.send(format!("GET /down/{GIB} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        c.read_response_with(false, |_| {})
    };
    assert_eq!((r.status, n, r.complete), (200, GIB, true));

    let peak = peak.end();
    assert!(peak.saturating_sub(before) < MAX_GROWTH_KIB, "RSS grew from {before} KiB to a peak of {peak} KiB");
}

#[test]
fn full_duplex_echo_of_a_large_body() {
    let lb = start_lb(1, |_| {});
    let _w = start_worker(worker_config(&lb, "echo", 1), || Responder::Echo);
    const SIZE: u64 = 64 << 20;
    let mut c = Client::connect(lb.client_addr());
    let mut writer = c.stream.try_clone().unwrap();
    // The echo streams the body back while it is still being uploaded; the
    // upload only finishes if the lb reads the response meanwhile.
    let up = std::thread::spawn(move || {
        writer.write_all(format!("POST /e HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n").as_bytes()).unwrap();
        let block = vec![b'e'; CHUNK];
        let mut left = SIZE;
        while left > 0 {
            let k = left.min(CHUNK as u64) as usize;
            writer.write_all(&block[..k]).unwrap();
            left -= k as u64;
        }
    });
    let (r, n) = c.read_response_with(false, |_| {});
    up.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(n > SIZE && r.complete, "echoed {n} bytes");
}
