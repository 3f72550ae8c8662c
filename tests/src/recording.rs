//! A recording origin for the hostile-input tests: a strict HTTP/1.1 server
//! (the project's own parser) that keeps the exact bytes it received and the
//! requests it framed from them, and answers by script:
//!
//! - `/r/<case>` sends one of the hostile responses of [`hostile_response`];
//! - anything else gets `200` with the body
//!   `origin <METHOD> <target> host=<Host> body=<length>` and the request's
//!   `Forwarded` / `X-Forwarded-For` fields, so a test can tell what reached
//!   the origin and that a response belongs to its request.
//!
//! Responses that send bytes after a complete response do so after
//! [`LATE`], then report on [`Recorder::late_sent`], so tests wait on that
//! event instead of sleeping.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ptth_proto::h1::{self, BodyDecoder, Parsed, RequestHead};

/// Delay before the bytes some scripted responses send after a complete
/// response (the hostile-input suite's 80 ms).
pub const LATE: Duration = Duration::from_millis(80);

/// One request as the origin framed it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// The whole head as received.
    pub head: String,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn field(&self, name: &str) -> Option<String> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

#[derive(Default)]
struct Log {
    raw: Vec<u8>,
    seen: Vec<Seen>,
}

/// Handle to a running recording origin.
pub struct Recorder {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    late: mpsc::Receiver<String>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let (tx, late) = mpsc::channel();
        let lg = log.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let (lg, tx) = (lg.clone(), tx.clone());
                std::thread::spawn(move || serve(s, lg, tx));
            }
        });
        Recorder { addr, log, late }
    }

    /// Every request the origin framed so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().seen.clone()
    }

    /// Every byte the origin received so far, all connections.
    pub fn raw(&self) -> Vec<u8> {
        self.log.lock().unwrap().raw.clone()
    }

    /// Forgets what was recorded (between cases).
    pub fn clear(&self) {
        let mut g = self.log.lock().unwrap();
        g.raw.clear();
        g.seen.clear();
    }

    /// Waits until the late bytes of case `case` went out.
    pub fn wait_late(&self, case: &str) {
        loop {
            let got = self.late.recv_timeout(crate::STEP).expect("late bytes sent in time");
            if got == case {
                return;
            }
        }
    }

    /// The request whose target is `target`, if the origin saw one.
    pub fn find(&self, target: &str) -> Option<Seen> {
        self.seen().into_iter().find(|s| s.target == target)
    }
}

/// What the origin sends for `/r/<case>`: the response bytes, and bytes sent
/// [`LATE`] after them on the same connection (if any).
pub fn hostile_response(case: &str) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    let stolen = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSTOLEN".to_vec();
    Some(match case {
        // Framing fields named by Connection: the lb must keep them.
        "conn-cl" => (b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello".to_vec(), None),
        "conn-te" => (
            b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
            None,
        ),
        // Framing no hop may guess at: a 502.
        "cl-te" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), None),
        "cl-differ" => (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(), None),
        "te-gzip" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx".to_vec(), None),
        "cl-negative" => (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n".to_vec(), None),
        "status-004" => (b"HTTP/1.1 004 Odd\r\nContent-Length: 0\r\n\r\n".to_vec(), None),
        // A reason phrase in obs-text (not UTF-8).
        "obs-reason" => (b"HTTP/1.1 200 O\xb5K\r\nContent-Length: 5\r\n\r\nhello".to_vec(), None),
        // Invalid chunk framing in a response body.
        "bad-ext" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;\x01\x7f\r\nhello\r\n0\r\n\r\n".to_vec(), None),
        "junk-size" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5 junk\r\nhello\r\n0\r\n\r\n".to_vec(), None),
        "trailer-reqline" => {
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nGET /x HTTP/1.1\r\n\r\n".to_vec(), None)
        }
        "trailer-nul" => (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: a\x00b\r\n\r\n".to_vec(), None),
        // Bytes after a complete response, sent late.
        "extra" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), Some(stolen)),
        "head-body" => (b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n".to_vec(), Some(b"STOLEN".to_vec())),
        "204-body" => (b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(), Some(stolen)),
        "304-body" => (b"HTTP/1.1 304 Not Modified\r\n\r\n".to_vec(), Some(stolen)),
        // A 101 nobody asked for, followed by what would be served.
        "101" => {
            let mut r = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n".to_vec();
            r.extend_from_slice(&stolen);
            (r, None)
        }
        // No length: the body ends when the connection does.
        "until-close" => (b"HTTP/1.1 200 OK\r\n\r\nuntil-close-body".to_vec(), None),
        _ => return None,
    })
}

fn serve(mut s: TcpStream, log: Arc<Mutex<Log>>, late: mpsc::Sender<String>) {
    s.set_read_timeout(Some(crate::STEP)).unwrap();
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let limits = h1::TUNNEL_LIMITS;
    let mut head = RequestHead::default();
    loop {
        // Read a head.
        let parsed = loop {
            match h1::parse_request(&buf, &limits, &mut head) {
                Ok(Parsed::Complete) => break true,
                Ok(Parsed::Partial) => {}
                Err(_) => break false,
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    log.lock().unwrap().raw.extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        };
        if !parsed {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
        let text = |r: std::ops::Range<usize>| String::from_utf8_lossy(&buf[r]).into_owned();
        let method = text(head.method.clone());
        let target = text(head.target.clone());
        let head_text = text(0..head.len);
        let is_head = method == "HEAD";
        buf.drain(..head.len);
        // Read the body by the framing the head declares.
        let mut dec = BodyDecoder::new(head.framing());
        let mut body = Vec::new();
        while !dec.is_done() {
            if buf.is_empty() {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        log.lock().unwrap().raw.extend_from_slice(&chunk[..n]);
                        buf.extend_from_slice(&chunk[..n]);
                    }
                }
            }
            let Ok(step) = dec.decode(&buf) else {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                return;
            };
            body.extend_from_slice(&buf[step.data.clone()]);
            buf.drain(..step.consumed);
        }
        let seen = Seen { method: method.clone(), target: target.clone(), head: head_text, body };
        log.lock().unwrap().seen.push(seen.clone());
        if let Some(case) = target.strip_prefix("/r/") {
            if let Some((resp, after)) = hostile_response(case) {
                if s.write_all(&resp).is_err() {
                    return;
                }
                if case == "until-close" {
                    return;
                }
                if let Some(after) = after {
                    std::thread::sleep(LATE);
                    let _ = s.write_all(&after);
                    let _ = late.send(case.to_string());
                }
                continue;
            }
        }
        let fwd = seen.field("forwarded").unwrap_or_default();
        let xff = seen.field("x-forwarded-for").unwrap_or_default();
        let host = seen.field("host").unwrap_or_default();
        let body = format!("origin {method} {target} host={host} body={} fwd=[{fwd}] xff=[{xff}]", seen.body.len());
        let len = if is_head { 0 } else { body.len() };
        let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        out.extend_from_slice(&body.as_bytes()[..len]);
        if s.write_all(&out).is_err() {
            return;
        }
    }
}
