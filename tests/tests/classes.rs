//! Worker-declared request classes (docs/PROTOCOL.md §1.1): a class's limit
//! holds across the lb's cores while other classes go ahead, and the
//! operator's caps refuse a declaration above them.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ptth_tests::*;
use ptth_workerd::{Exchange, Handler, InnerProtocol};

/// What the worker saw, counted by itself.
#[derive(Default)]
struct Seen {
    heavy_now: AtomicU32,
    heavy_peak: AtomicU32,
    heavy_done: AtomicU32,
    /// Heavy requests finished when each light one arrived.
    light_at: Mutex<Vec<u32>>,
    /// Heavy requests wait for this before answering.
    open: std::sync::atomic::AtomicBool,
}

/// `POST /report/…` is heavy: it runs until the test opens the gate.
/// Anything else answers at once.
struct Counting {
    seen: Arc<Seen>,
}

impl Handler for Counting {
    async fn handle(&self, ex: &mut Exchange<'_>) -> Result<(), ptth_workerd::Error> {
        let s = &self.seen;
        if ex.method() == "POST" && ex.target().starts_with("/report/") {
            let now = s.heavy_now.fetch_add(1, Ordering::SeqCst) + 1;
            s.heavy_peak.fetch_max(now, Ordering::SeqCst);
            while !s.open.load(Ordering::SeqCst) {
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
            s.heavy_now.fetch_sub(1, Ordering::SeqCst);
            s.heavy_done.fetch_add(1, Ordering::SeqCst);
        } else {
            s.light_at.lock().unwrap().push(s.heavy_done.load(Ordering::SeqCst));
        }
        ex.respond(200, &[("content-type", "text/plain")], b"ok\n").await
    }
}

/// Twelve heavy requests, six on each core of a 2-core lb, against a limit
/// of 2: the worker never runs more than 2 at once and reaches 2 (no slot
/// left idle while one waits), the other ten wait on both cores, and light
/// requests sent meanwhile are served at once instead of behind them.
fn a_class_limit_holds_across_cores_while_other_classes_go_ahead(kind: InnerProtocol) {
    let lb = start_lb(2, |c| c.profile.queue_wait = Duration::from_secs(30));
    // An HTTP/1.1 tunnel carries one request at a time and both running
    // heavy requests may be on one core: tunnels above the limit keep room
    // for light ones on every core (docs/OPERATIONS.md, capacity notes).
    let mut cfg = worker_config(&lb, "classy", 4);
    cfg.protocols = vec![kind];
    cfg.meta.classes = ptth_proto::setup::parse_classes(br#"heavy=("POST /report/");u=6;limit=2"#).unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let _w = start_worker(cfg, move || Counting { seen: s.clone() });
    let addr = lb.client_addr();
    // Which core a connection lands on is the kernel's hash: sort them, so
    // that both cores hold heavy requests whatever it chose.
    let mut on = clients_on_cores(&lb, 6);
    let mut heavy: Vec<Client> = Vec::new();
    for _ in 0..6 {
        for core in &mut on {
            heavy.push(core.pop().expect("six connections on each core"));
        }
    }
    for (i, c) in heavy.iter_mut().enumerate() {
        c.send(format!("POST /report/{i} HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\nhi").as_bytes());
    }
    // Two run, ten wait: at most two can have found a permit free, so each
    // core has at least four waiting.
    settled_status(&lb, "two heavy requests run and ten wait", |s| {
        seen.heavy_now.load(Ordering::SeqCst) == 2 && s.per_core.iter().map(|c| c.queued).sum::<u64>() == 10
    });
    let light: Vec<_> = (0..8).map(|_| std::thread::spawn(move || get(addr, "/page").status)).collect();
    let light: Vec<u16> = light.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(light.iter().all(|&s| s == 200), "light {light:?}");
    seen.open.store(true, Ordering::SeqCst);
    let heavy: Vec<u16> = heavy.iter_mut().map(|c| c.read_response(false).status).collect();
    assert!(heavy.iter().all(|&s| s == 200), "heavy {heavy:?}");
    let peak = seen.heavy_peak.load(Ordering::SeqCst);
    assert_eq!(peak, 2, "the class limit is never exceeded, and reached");
    let at = seen.light_at.lock().unwrap().clone();
    assert_eq!(at, vec![0; 8], "light requests did not wait for the heavy queue");
    // Permits go back once each response is written: wait for the last one.
    let s = settled_status(&lb, "every heavy permit given back", |s| s.workers[0].classes.iter().all(|c| c.in_flight == Some(0)));
    assert!(s.per_core.iter().all(|c| c.queued >= 4), "both cores queued heavy requests: {:?}", s.per_core);
    let classes = &s.workers[0].classes;
    assert_eq!(classes.len(), 1);
    let c = &classes[0];
    assert_eq!((c.name.as_str(), c.urgency, c.limit, c.rules.clone()), ("heavy", 6, Some(2), vec!["POST /report/".to_string()]));
    assert_eq!(c.in_flight, Some(0), "every permit given back");
}

/// Heavy requests (`POST /report/`) wait until the gate opens; the worker
/// counts those it received.
struct Gated {
    open: Arc<std::sync::atomic::AtomicBool>,
    received: Arc<AtomicU32>,
}

impl Handler for Gated {
    async fn handle(&self, ex: &mut Exchange<'_>) -> Result<(), ptth_workerd::Error> {
        if ex.method() == "POST" && ex.target().starts_with("/report/") {
            self.received.fetch_add(1, Ordering::SeqCst);
            while !self.open.load(Ordering::SeqCst) {
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        ex.respond(200, &[("content-type", "text/plain")], b"ok\n").await
    }
}

/// A heavy request sent on its own connection, its response not read yet.
fn send_heavy(addr: std::net::SocketAddr, path: &str) -> Client {
    let mut c = Client::connect(addr);
    c.send(format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\n\r\nhi").as_bytes());
    c
}

fn heavy_queue(s: &ptth_lb::admin::Status) -> ptth_lb::admin::ClassQueueStatus {
    s.classes.iter().find(|c| c.name == "heavy").cloned().expect("the heavy class is listed")
}

/// A class's queue (docs/PROTOCOL.md §1.1 `queue=` and `wait=`): as many as
/// it declared wait, over both cores, and the next is shed at once with a 503
/// and Retry-After naming the class; a waiter whose client leaves is gone
/// from the queue at once and never reaches the worker; a wait longer than
/// the class's `wait` is a 503 too; `/status` counts each.
fn a_class_queue_sheds_past_its_bounds_and_forgets_clients_that_leave(kind: InnerProtocol) {
    let lb = start_lb(2, |c| c.profile.queue_wait = Duration::from_secs(30));
    let mut cfg = worker_config(&lb, "gated", 2);
    cfg.protocols = vec![kind];
    cfg.meta.classes = ptth_proto::setup::parse_classes(br#"heavy=("POST /report/");u=6;limit=1;queue=2;wait=1500"#).unwrap();
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let received = Arc::new(AtomicU32::new(0));
    let (o, r) = (open.clone(), received.clone());
    let _w = start_worker(cfg, move || Gated { open: o.clone(), received: r.clone() });
    let addr = lb.client_addr();
    let mut running = send_heavy(addr, "/report/0");
    wait_until("the first heavy request reached the worker", || received.load(Ordering::SeqCst) == 1);
    let mut a = send_heavy(addr, "/report/1");
    let b = send_heavy(addr, "/report/2");
    settled_status(&lb, "two heavy requests wait", |s| heavy_queue(s).waiting == 2);
    let mut shed = send_heavy(addr, "/report/3");
    let r = shed.read_response(false);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert!(r.text().contains("too many requests of class heavy are waiting for a tunnel (the class allows 2 waiting)"), "{}", r.text());
    // A client that leaves takes its request out of the queue at once.
    drop(b);
    let s = settled_status(&lb, "the request of the client that left is gone", |s| heavy_queue(s).waiting == 1);
    let q = heavy_queue(&s);
    assert_eq!((q.queued, q.shed_full, q.abandoned), (2, 1, 1), "{q:?}");
    assert!(q.oldest_wait_ms.is_some() || q.waiting == 0, "{q:?}");
    open.store(true, Ordering::SeqCst);
    assert_eq!(running.read_response(false).status, 200);
    assert_eq!(a.read_response(false).status, 200);
    assert_eq!(received.load(Ordering::SeqCst), 2, "the abandoned request never reached the worker");
    // Past the class's wait (1.5 s, under the lb's 30 s): 503. The permit
    // goes back once the last response is written: wait for it, so the next
    // request runs at once instead of queueing for an instant.
    open.store(false, Ordering::SeqCst);
    settled_status(&lb, "the heavy permit is given back", |s| s.workers[0].classes[0].in_flight == Some(0));
    let mut running = send_heavy(addr, "/report/4");
    wait_until("the next heavy request reached the worker", || received.load(Ordering::SeqCst) == 3);
    let r = send_heavy(addr, "/report/5").read_response(false);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("no tunnel became free for class heavy within 1.5s"), "{}", r.text());
    open.store(true, Ordering::SeqCst);
    assert_eq!(running.read_response(false).status, 200);
    let q = heavy_queue(&settled_status(&lb, "nothing waits", |s| heavy_queue(s).waiting == 0));
    assert_eq!((q.queued, q.shed_timeout, q.oldest_wait_ms), (3, 1, None), "{q:?}");
}

on_both_tunnel_kinds!(
    a_class_limit_holds_across_cores_while_other_classes_go_ahead,
    a_class_queue_sheds_past_its_bounds_and_forgets_clients_that_leave,
    waiters_on_every_core_keep_one_order
);

/// A setup request declaring `classes`, raw, as a third-party worker sends it.
fn setup_with_classes(lb: &ptth_lb::Lb, classes: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(lb.tunnel_addr).unwrap();
    s.set_read_timeout(Some(STEP)).unwrap();
    let req = format!(
        "GET /.well-known/ptth/*/ HTTP/1.1\r\nHost: lb\r\nConnection: Upgrade\r\nUpgrade: ptth\r\nALPN: http%2F1.1\r\n\
         Tunnel-Worker-Id: \"capped\"\r\nTunnel-Classes: {classes}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // A refusal closes the connection; a 101 leaves it open (stop at its head).
    while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.starts_with(b"HTTP/1.1 101") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[test]
fn declarations_above_the_operators_caps_are_refused_naming_them() {
    let lb = start_lb(1, |c| {
        c.classes.allowed = Some(vec!["heavy".into()]);
        c.classes.most_urgent = 2;
        c.classes.max_limit = 8;
    });
    for (classes, says) in [
        (r#"heavy=("POST /r/");limit=50"#, "class heavy: limit 50 is above this lb's cap of 8"),
        (r#"heavy=("POST /r/");u=1"#, "class heavy: urgency u=1 is more urgent than this lb allows (u=2 at most)"),
        (r#"admin=("/admin/")"#, "class \"admin\" is not allowed here (allowed: heavy)"),
    ] {
        let (status, text) = setup_with_classes(&lb, classes);
        assert_eq!(status, 403, "{classes}: {text}");
        assert!(text.contains(says), "{classes}: {text}");
    }
    // Malformed is 400, naming the field; within the caps is accepted.
    let (status, text) = setup_with_classes(&lb, r#"heavy=("POST /r/");limt=4"#);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("Tunnel-Classes") && text.contains("limt"), "{text}");
    let (status, text) = setup_with_classes(&lb, r#"heavy=("POST /r/");u=6;limit=8, default;u=3"#);
    assert_eq!(status, 101, "{text}");
}

/// Records the order requests arrive in; `/first` waits for the gate.
struct Ordered {
    open: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Handler for Ordered {
    async fn handle(&self, ex: &mut Exchange<'_>) -> Result<(), ptth_workerd::Error> {
        self.seen.lock().unwrap().push(ex.target().to_string());
        if ex.target() == "/first" {
            while !self.open.load(Ordering::SeqCst) {
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        ex.respond(200, &[("content-type", "text/plain")], b"ok\n").await
    }
}

/// Waiting requests are served most urgent class first, in arrival order
/// within one, and a client's `Priority` (RFC 9218) lowers its request below
/// its class (never raises it).
#[test]
fn queued_requests_go_most_urgent_first_then_in_arrival_order() {
    serve_in_one_order(1, tunnel_protocols());
}

/// The order holds across cores: requests waiting on two cores for one
/// worker's permit are served most urgent first, then in arrival order,
/// whichever core frees the permit. The permit frees on core 0 (the request
/// holding it came in there) while the most urgent waiters sit on core 1:
/// serving the freeing core's own waiters first would start with `/l/1`.
fn waiters_on_every_core_keep_one_order(kind: InnerProtocol) {
    serve_in_one_order(2, vec![kind]);
}

/// A worker that runs one request at once, and a queue of six requests in two
/// classes, two of them with a client `Priority`; on two cores they alternate
/// between them, the first request (holding the permit) on core 0.
fn serve_in_one_order(cores: usize, protocols: Vec<InnerProtocol>) {
    let lb = start_lb(cores, |c| c.profile.queue_wait = Duration::from_secs(30));
    let mut cfg = worker_config(&lb, "one-at-a-time", 2);
    cfg.protocols = protocols;
    cfg.meta.max_concurrency = Some(1);
    cfg.meta.classes = ptth_proto::setup::parse_classes(br#"urgent=("/u/");u=1, lazy=("/l/");u=5"#).unwrap();
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (o, s) = (open.clone(), seen.clone());
    let _w = start_worker(cfg, move || Ordered { open: o.clone(), seen: s.clone() });
    let mut on = clients_on_cores(&lb, 7usize.div_ceil(cores));
    let mut first = on[0].pop().unwrap();
    first.send(b"GET /first HTTP/1.1\r\nHost: test\r\n\r\n");
    wait_until("the first request holds the worker", || seen.lock().unwrap().len() == 1);
    let waiting = |lb: &ptth_lb::Lb| lb.status().classes.iter().map(|c| c.waiting).sum::<u32>();
    let mut clients = Vec::new();
    for (i, (path, priority)) in
        [("/l/1", None), ("/u/1", None), ("/l/2", None), ("/u/2", None), ("/u/3", Some("u=6")), ("/u/4", Some("u=0"))]
            .into_iter()
            .enumerate()
    {
        let mut c = on[i % cores].pop().unwrap();
        let extra = priority.map_or(String::new(), |p| format!("Priority: {p}\r\n"));
        c.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n").as_bytes());
        // One at a time into the queue, so arrival order is known.
        wait_until("the request waits", || waiting(&lb) == i as u32 + 1);
        clients.push(c);
    }
    let s = lb.status();
    assert_eq!(s.per_core.iter().map(|c| c.queued).collect::<Vec<_>>(), vec![6 / cores as u64; cores], "as many wait on each core");
    assert_eq!(s.per_core.iter().map(|c| c.clients_handed_off).sum::<u64>(), 0, "no connection moved core");
    open.store(true, Ordering::SeqCst);
    assert_eq!(first.read_response(false).status, 200);
    for mut c in clients {
        assert_eq!(c.read_response(false).status, 200);
    }
    // u=0 cannot raise /u/4 above its class (u=1): it keeps its place there;
    // u=6 lowers /u/3 below the lazy class (u=5).
    assert_eq!(*seen.lock().unwrap(), ["/first", "/u/1", "/u/2", "/u/4", "/l/1", "/l/2", "/u/3"]);
}
