//! One core's tunnels and the choice among them.
//!
//! Place in the request path: route (Host, then longest path prefix) → pick a
//! worker (power of two choices on in-flight requests, weighted) → take one of
//! its idle tunnels; if every eligible tunnel is busy, wait in this core's
//! bounded FIFO queue; a freed tunnel goes straight to the first waiter it can
//! serve. Everything here is owned by one core: no locks, no atomics except a
//! worker's cross-core concurrency permit when it declared a limit
//! (`tunnel::permits`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::tunnel::TunnelStream;
use bytes::Bytes;
use ptth_proto::h1::ResponseHead;
use ptth_proto::rt::io::ReadBuf;
use ptth_proto::rt::FastRng;

use crate::inbox::{CoreMsg, Inbox};
use crate::stats::{self, WorkerCoreStats};
use crate::tunnel::adaptive::AdaptiveLimit;
use crate::tunnel::class_queue::ClassQueue;
use crate::tunnel::health::{self, Health, Verdict};
use crate::tunnel::permits::{self, Permits, Place, Refused};
use crate::tunnel::placement::{PeerTicket, Placed, Placement};
use crate::tunnel::queue::{Full, HeldBack, Reroute, WaitQueue, Waiter, Want};
use crate::tunnel::routes;
use crate::tunnel::select::{power_of_two, Choice, Latency, Occupancy};
use crate::tunnel::Meta;

/// An established HTTP/1.1 tunnel with its reusable buffers.
pub(crate) struct H1Tunnel {
    pub(crate) stream: TunnelStream,
    pub(crate) rb: ReadBuf,
    pub(crate) out: Vec<u8>,
    pub(crate) head: ResponseHead,
    /// The worker entry this tunnel belongs to, in this core's pool.
    pub(crate) slot: usize,
    pub(crate) idle_since: Instant,
    /// Held for its drop: the peer's tunnel count.
    _ticket: PeerTicket,
}

/// An HTTP/2 tunnel: many requests at once, up to the worker's
/// SETTINGS_MAX_CONCURRENT_STREAMS.
pub(crate) struct H2Tunnel {
    pub(crate) send: RefCell<h2::client::SendRequest<Bytes>>,
    in_flight: Cell<u32>,
    /// The stream limit as last read from h2 (the worker's
    /// SETTINGS_MAX_CONCURRENT_STREAMS, capped): reading it takes h2's lock,
    /// so choosing among a worker's tunnels compares against this copy and
    /// only the chosen one is asked (`has_room`), which refreshes it.
    max_streams: Cell<u32>,
    /// GOAWAY received (or the connection failed): no new streams.
    draining: Cell<bool>,
    /// The connection task ended.
    closed: Cell<bool>,
    pub(crate) slot: usize,
    _ticket: PeerTicket,
}

/// How long a worker whose tunnels on this core all closed stays routable,
/// its requests waiting in the queue for it to redial.
const RECONNECT_GRACE: Duration = Duration::from_secs(2);

/// Most streams the lb opens on one h2 tunnel, whatever the worker allows.
const H2_STREAMS_CAP: usize = 4096;

impl H2Tunnel {
    /// Whether a new stream may go on this tunnel now. A GOAWAY shows up as an
    /// error from `poll_ready` (h2 records it as the connection's error), so
    /// the lb stops sending new streams at the first GOAWAY (RFC 9113 §6.8).
    fn has_room(&self) -> bool {
        if self.draining.get() {
            return false;
        }
        let mut send = self.send.borrow_mut();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(Err(_)) = send.poll_ready(&mut cx) {
            self.draining.set(true);
            return false;
        }
        let max = send.current_max_send_streams().min(H2_STREAMS_CAP) as u32;
        self.max_streams.set(max);
        self.in_flight.get() < max
    }

    /// `has_room` without h2's lock, from the last stream limit read: true
    /// may be stale (a GOAWAY not yet seen, a lowered limit), so a lease is
    /// only taken after `has_room` on the one chosen. A tunnel at its known
    /// limit is asked afresh, so a raised limit is seen at once.
    fn may_have_room(&self) -> bool {
        !self.draining.get() && (self.in_flight.get() < self.max_streams.get() || self.has_room())
    }

    /// Marks the tunnel as taking no new streams (GOAWAY seen on a request).
    pub(crate) fn drain(&self) {
        self.draining.set(true);
    }
}

/// A tunnel lent to one request, with the class it counts against. Not
/// boxed: a lease moves a few times per request, a box would allocate on
/// every one.
pub(crate) struct Lease {
    pub(crate) kind: Leased,
    /// The request's class on the worker (index in its `Meta::classes`).
    class: Option<u8>,
}

/// An h1 tunnel whole, or a stream slot on an h2 tunnel.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Leased {
    H1(H1Tunnel),
    H2(Rc<H2Tunnel>),
}

impl Leased {
    fn slot(&self) -> usize {
        match self {
            Leased::H1(t) => t.slot,
            Leased::H2(t) => t.slot,
        }
    }
}

impl Lease {
    pub(crate) fn slot(&self) -> usize {
        self.kind.slot()
    }
}

/// Why [`Pool::take`] lent nothing.
enum NoTake {
    /// The worker has no free tunnel or stream slot here.
    Room,
    /// A cross-core permit refused: the worker's own (`class` false: no
    /// request can go to it now) or the request's class's (another class
    /// may still fit). At its limit, or a waiter stands ahead in line.
    Permit { class: bool, held: HeldBack },
}

/// What a lease is taken for.
pub(crate) struct For<'a> {
    pub(crate) host: &'a [u8],
    pub(crate) path: &'a [u8],
    /// With the path, what finds the request's class on a worker.
    pub(crate) method: &'a [u8],
    /// The client's RFC 9218 `Priority` urgency, if it sent one.
    pub(crate) urgency: Option<u8>,
}

/// Where a request taking a permit stands in line.
#[derive(Clone, Copy)]
pub(crate) enum At {
    /// Just arrived, with the client's RFC 9218 urgency if it sent one: its
    /// place is now, at its class's urgency (lowered by the client's).
    Arrival(Option<u8>),
    /// Waiting in the queue since its place.
    Waiting(Place),
}

struct LocalWorker {
    id: Arc<str>,
    /// The id again, as this core's own `Rc` so naming a worker in an error
    /// never touches the shared `Arc`'s counter.
    name: Rc<str>,
    meta: Arc<Meta>,
    idle: Vec<H1Tunnel>,
    h2: Vec<Rc<H2Tunnel>>,
    /// Live tunnels on this core, idle or busy.
    tunnels: u32,
    /// When the last tunnel closed. The entry stays routable (requests wait
    /// in the queue) for [`RECONNECT_GRACE`], so a worker that is redialing
    /// does not turn into a burst of "no worker serves" 503s.
    empty_since: Option<Instant>,
    in_flight: u32,
    permits: Option<Arc<Permits>>,
    /// Per class of `meta.classes`: the cross-core counter of a class that
    /// declared a limit.
    class_permits: Vec<Option<Arc<Permits>>>,
    /// Per class of `meta.classes`: its queue's shared counts.
    class_queues: Vec<Arc<ClassQueue>>,
    /// Per class of `meta.classes`: the estimate of a class declared `adaptive`.
    class_adaptive: Vec<Option<Arc<AdaptiveLimit>>>,
    stats: Arc<WorkerCoreStats>,
    health: Health,
    /// Its recent time to a response head, as this core saw it: per class
    /// (index 0 for requests in no declared class, then one per class of
    /// `meta.classes`), so its heavy requests do not make it look slow to
    /// light ones.
    latency: Vec<Latency>,
}

impl LocalWorker {
    /// The counter and limit of `class`, when it declared one (an adaptive
    /// class's: the current estimate).
    fn class_permit(&self, class: Option<usize>) -> Option<(&Arc<Permits>, u32)> {
        let i = class?;
        let permits = self.class_permits.get(i)?.as_ref()?;
        match self.class_adaptive.get(i).and_then(Option::as_deref) {
            Some(a) => Some((permits, a.limit())),
            None => Some((permits, self.meta.class_limit(Some(i))?)),
        }
    }

    /// Its recent response time for requests of `class`, microseconds (0:
    /// none seen yet).
    fn latency_of(&self, class: Option<usize>) -> u32 {
        self.latency.get(class.map_or(0, |c| c + 1)).map_or(0, |l| l.micros())
    }

    /// The fullest cross-core limit a request of `class` counts against
    /// here (the worker's, the class's), for selection. `None` for a worker
    /// that declared no limit: then nothing shared is read.
    fn occupancy(&self, class: Option<usize>) -> Option<Occupancy> {
        if self.permits.is_none() && self.class_permits.iter().all(Option::is_none) {
            return None;
        }
        let fill = |(p, limit): (&Arc<Permits>, u32)| Occupancy { in_use: p.in_use(), limit };
        let worker = self.meta.max_concurrency.and_then(|max| Some(fill((self.permits.as_ref()?, max))));
        let class = self.class_permit(class).map(fill);
        match (worker, class) {
            (Some(a), Some(b)) => Some(a.fuller(b)),
            (a, b) => a.or(b),
        }
    }

    /// A free h1 tunnel or room on an h2 tunnel.
    fn has_room(&self) -> bool {
        !self.idle.is_empty() || self.h2.iter().any(|t| t.may_have_room())
    }
}

/// Milliseconds since the Unix epoch (as `/status` shows times).
fn epoch_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Outcome of [`Pool::try_pick`]. Not boxed: it lives for one call and the
/// tunnel moves straight on to its request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Pick {
    Got(Lease),
    /// Workers serve this route here, but none has a free tunnel (or
    /// permit): the permits that refused, for the queue.
    Busy(Vec<HeldBack>),
    /// No worker on this core serves it.
    NoRoute,
    /// The best route for it is a prefix reserved for workers that are not
    /// connected (they left within `timeouts.route_hold_ms`, or the operator
    /// reserved it): it must not fall through to a shorter prefix.
    Reserved,
}

/// A path prefix kept for the workers that claimed it.
struct Reservation {
    /// The claim and routes of the worker that held it.
    meta: Arc<Meta>,
    /// `None`: reserved by the operator, for good.
    until: Option<Instant>,
}

pub(crate) struct Pool {
    core: usize,
    placement: Arc<Placement>,
    /// Every core's inbox, to tell one that a permit it waits for is free.
    inboxes: Arc<[Inbox]>,
    workers: Vec<Option<LocalWorker>>,
    queue: WaitQueue<Lease>,
    rng: FastRng,
    cand: Vec<usize>,
    avail: Vec<usize>,
    choices: Vec<Choice>,
    reserved: Vec<Reservation>,
    route_hold: Duration,
    health: health::Policy,
    /// The queue of requests no declared class matches.
    default_queue: Arc<ClassQueue>,
    /// Classes whose oldest waiter this core last published (the sweep
    /// clears those it no longer holds).
    published_oldest: Vec<Arc<ClassQueue>>,
    /// The cross-core permits on which this core published the place of its
    /// first waiter held back by each (tunnel/permits.rs), with that place.
    heads: Vec<Head>,
}

/// This core's first waiter for one cross-core permit, as published.
struct Head {
    permits: Arc<Permits>,
    worker: Arc<str>,
    place: Place,
}

/// A request now waiting in this core's queue.
pub(crate) struct Queued {
    pub(crate) waiter: Rc<Waiter<Lease>>,
    /// How long it may wait: its class's `wait`, at most `queue.max_wait_ms`.
    pub(crate) wait: Duration,
}

/// Why a request could not wait: 503.
#[derive(Debug)]
pub(crate) enum Shed {
    /// Its class already has as many waiting as it declared (`queue=`), over all cores.
    ClassFull { class: Arc<ClassQueue>, bound: u32 },
    /// This core's queue is at `queue.max_waiting`.
    CoreFull { class: Arc<ClassQueue>, max: usize },
}

impl Pool {
    pub(crate) fn new(core: usize, placement: Arc<Placement>, inboxes: Arc<[Inbox]>) -> Pool {
        // Places compare across cores from one epoch, fixed before anything waits.
        Place::epoch();
        Pool {
            core,
            default_queue: placement.classes.get(ptth_proto::setup::DEFAULT_CLASS),
            published_oldest: Vec::new(),
            heads: Vec::new(),
            placement,
            inboxes,
            workers: Vec::new(),
            queue: WaitQueue::default(),
            rng: FastRng::seeded(core as u64 + 1),
            cand: Vec::new(),
            avail: Vec::new(),
            choices: Vec::new(),
            reserved: Vec::new(),
            route_hold: Duration::ZERO,
            health: health::Policy { consecutive_failures: 0, ejection: Duration::ZERO, max_ejection: Duration::ZERO },
        }
    }

    /// Outlier detection's thresholds (the profile's `[health]`).
    pub(crate) fn with_health(mut self, p: health::Policy) -> Pool {
        self.health = p;
        self
    }

    /// What an attempt on a lease of `slot` says about its worker. Logs an
    /// ejection (rare: once per backoff period at most).
    pub(crate) fn judge(&mut self, slot: usize, v: Verdict, why: &dyn std::fmt::Display) {
        let p = self.health;
        let Some(w) = self.workers[slot].as_mut() else { return };
        // A success needs no clock read (it is the common case, per request).
        let now = match v {
            Verdict::Ok => None,
            Verdict::Failed => Some(Instant::now()),
        };
        if let Some(d) = w.health.record(v, now, &p) {
            let reason = format!("{} failed attempts in a row; last: {why}", p.consecutive_failures);
            stats::add(&w.stats.ejections, 1);
            stats::set_u64(&w.stats.ejected_until_ms, epoch_ms(std::time::SystemTime::now() + d));
            tracing::warn!(worker = %w.name, core = self.core, for_ms = d.as_millis() as u64, "worker ejected after {reason}");
            *w.stats.last_ejection.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        }
    }

    /// Worker `slot` said it cannot serve for `d` (503 + `Tunnel-Unprocessed`
    /// + `Retry-After`): out of selection here for that long, no failure.
    pub(crate) fn withdraw(&mut self, slot: usize, d: Duration) {
        let Some(w) = self.workers[slot].as_mut() else { return };
        let d = w.health.withdraw(Instant::now(), d);
        stats::set_u64(&w.stats.withdrawn_until_ms, epoch_ms(std::time::SystemTime::now() + d));
        tracing::info!(worker = %w.name, core = self.core, for_ms = d.as_millis() as u64, "worker withdrew (its origin is unavailable)");
    }

    /// Whether a worker other than `not` would serve this route now (none
    /// ejected or withdrawn), so that sending the request again can help.
    pub(crate) fn another_serves(&mut self, host: &[u8], path: &[u8], not: usize) -> bool {
        Self::candidates(&self.workers, &mut self.cand, host, path);
        let now = Instant::now();
        self.cand.iter().any(|&i| i != not && self.workers[i].as_ref().is_some_and(|w| !w.health.out(now)))
    }

    /// How long the worker of `lease` took to start answering its request:
    /// for selection (a slower worker gets proportionally less), and for the
    /// estimate of the request's class if it is adaptive. A limit that grew
    /// is told to the cores with requests waiting for it.
    pub(crate) fn observe(&mut self, lease: &Lease, took: Duration) {
        let Some(w) = self.workers[lease.slot()].as_mut() else { return };
        if let Some(l) = w.latency.get_mut(lease.class.map_or(0, |c| usize::from(c) + 1)) {
            l.observe(took);
        }
        let Some(i) = lease.class.map(usize::from) else { return };
        let (Some(Some(a)), Some(Some(p))) = (w.class_adaptive.get(i), w.class_permits.get(i)) else { return };
        let (before, after) = a.observe(took, p.in_use());
        if after > before {
            let waiting = p.take_waiting(self.core);
            let id = w.id.clone();
            self.tell(waiting, &id);
            // And this core's own waiters, as many as now fit.
            self.offer_all(lease.slot());
        }
    }

    /// Tells the cores of `mask` (other than this one) that a permit of
    /// worker `id` may be free for a request they hold waiting: an owned
    /// message, only when one waits.
    fn tell(&self, mask: u64, id: &Arc<str>) {
        for c in permits::cores(mask, self.inboxes.len()).filter(|&c| c != self.core) {
            self.inboxes[c].send(CoreMsg::Capacity { worker: id.clone() });
        }
    }

    /// Prefixes the operator reserved (any host), and how long a departed
    /// worker's prefixes stay reserved.
    pub(crate) fn with_reserved(mut self, prefixes: &[String], hold: Duration) -> Pool {
        self.set_reserved(prefixes, hold);
        self
    }

    /// The operator's reserved prefixes (`[routes] reserved`) become
    /// `prefixes`, and a departed worker's prefixes are held for `hold` from
    /// now on (a reload); the holds of workers already gone keep their end.
    pub(crate) fn set_reserved(&mut self, prefixes: &[String], hold: Duration) {
        self.route_hold = hold;
        self.reserved.retain(|r| r.until.is_some());
        for p in prefixes {
            let meta =
                Meta { claim: ptth_proto::setup::Claim::Any, routes: vec![p.clone()], weight: 1, max_concurrency: None, classes: vec![] };
            self.reserved.push(Reservation { meta: Arc::new(meta), until: None });
        }
    }

    pub(crate) fn set_health(&mut self, p: health::Policy) {
        self.health = p;
    }

    /// Whether a reservation matches the request better than the workers
    /// that would serve it (`cand`, all equally good).
    fn reserved_beats(&self, host: &[u8], path: &[u8]) -> bool {
        // A worker with no tunnel left (redialing, or past its reconnect
        // grace and not yet swept out) holds its prefixes as a reservation
        // would; within the grace it is also a candidate, so it never beats
        // itself. The clock is read only for a reservation that ends.
        let hold = !self.route_hold.is_zero();
        let gone = self.workers.iter().flatten().filter(|w| hold && w.tunnels == 0).map(|w| &*w.meta);
        let kept = self.reserved.iter().filter(|r| r.until.is_none_or(|u| Instant::now() < u)).map(|r| &*r.meta);
        let mut held = kept.chain(gone).filter_map(|m| m.specificity(host, path)).peekable();
        if held.peek().is_none() {
            return false;
        }
        let best_live = self.cand.first().and_then(|&i| self.workers[i].as_ref()).and_then(|w| w.meta.specificity(host, path));
        held.any(|s| best_live.is_none_or(|b| s > b))
    }

    /// The worker entry for a new tunnel, created if needed; counts the tunnel.
    fn slot_for(&mut self, id: Arc<str>, meta: Arc<Meta>, placed: Placed) -> usize {
        let Placed { permits, class_permits, class_queues, class_adaptive, stats: wstats, .. } = placed;
        let slot = match self.workers.iter().position(|w| w.as_ref().is_some_and(|w| w.id == id && w.meta == meta)) {
            Some(s) => {
                if let Some(w) = self.workers[s].as_mut().filter(|w| w.tunnels == 0) {
                    // Back within the grace: the placement entry may be new.
                    w.permits = permits;
                    w.class_permits = class_permits;
                    w.class_queues = class_queues;
                    w.class_adaptive = class_adaptive;
                    w.stats = wstats;
                }
                s
            }
            None => {
                let name = Rc::from(&*id);
                let classes = meta.classes.len();
                let w = LocalWorker {
                    id,
                    name,
                    meta,
                    idle: Vec::new(),
                    h2: Vec::new(),
                    tunnels: 0,
                    empty_since: None,
                    in_flight: 0,
                    permits,
                    class_permits,
                    class_queues,
                    class_adaptive,
                    stats: wstats,
                    health: Health::default(),
                    latency: vec![Latency::default(); classes + 1],
                };
                match self.workers.iter().position(Option::is_none) {
                    Some(s) => {
                        self.workers[s] = Some(w);
                        s
                    }
                    None => {
                        self.workers.push(Some(w));
                        self.workers.len() - 1
                    }
                }
            }
        };
        let w = self.workers[slot].as_mut().expect("slot just filled");
        w.tunnels += 1;
        w.empty_since = None;
        stats::set32(&w.stats.tunnels, w.tunnels);
        slot
    }

    /// Registers a freshly set-up HTTP/1.1 tunnel and offers it to the queue.
    pub(crate) fn add(
        &mut self,
        id: Arc<str>,
        meta: Arc<Meta>,
        placed: Placed,
        ticket: PeerTicket,
        stream: TunnelStream,
        tunnel_read: usize,
    ) {
        let slot = self.slot_for(id, meta, placed);
        let t = H1Tunnel {
            stream,
            rb: ReadBuf::with_capacity(tunnel_read),
            out: Vec::with_capacity(4096),
            head: ResponseHead::default(),
            slot,
            idle_since: Instant::now(),
            _ticket: ticket,
        };
        self.offer(Leased::H1(t));
    }

    /// Registers an HTTP/2 tunnel; its connection task reports its end with
    /// [`Pool::h2_closed`].
    pub(crate) fn add_h2(
        &mut self,
        id: Arc<str>,
        meta: Arc<Meta>,
        placed: Placed,
        ticket: PeerTicket,
        send: h2::client::SendRequest<Bytes>,
    ) -> Rc<H2Tunnel> {
        let slot = self.slot_for(id, meta, placed);
        let t = Rc::new(H2Tunnel {
            send: RefCell::new(send),
            in_flight: Cell::new(0),
            max_streams: Cell::new(0),
            draining: Cell::new(false),
            closed: Cell::new(false),
            slot,
            _ticket: ticket,
        });
        if let Some(w) = self.workers[slot].as_mut() {
            w.h2.push(t.clone());
        }
        self.offer_capacity(slot);
        t
    }

    /// An h2 tunnel's connection ended.
    pub(crate) fn h2_closed(&mut self, t: &Rc<H2Tunnel>) {
        t.closed.set(true);
        t.draining.set(true);
        if t.in_flight.get() == 0 {
            self.remove_h2(t);
        }
    }

    fn remove_h2(&mut self, t: &Rc<H2Tunnel>) {
        let slot = t.slot;
        let Some(w) = self.workers[slot].as_mut() else { return };
        let before = w.h2.len();
        w.h2.retain(|x| !Rc::ptr_eq(x, t));
        if w.h2.len() < before {
            self.closed(slot);
        }
    }

    /// The worker id a tunnel belongs to (for errors and logs).
    pub(crate) fn worker_id(&self, slot: usize) -> Rc<str> {
        self.workers[slot].as_ref().map(|w| w.name.clone()).unwrap_or_else(|| Rc::from("?"))
    }

    /// Fills `cand` with the workers that best match host and path
    /// (`tunnel::routes`), leaving out those gone longer than the grace.
    fn candidates(workers: &[Option<LocalWorker>], cand: &mut Vec<usize>, host: &[u8], path: &[u8]) {
        let routable = workers.iter().enumerate().filter_map(|(i, w)| {
            let w = w.as_ref()?;
            let expired = w.tunnels == 0 && w.empty_since.is_some_and(|t| t.elapsed() >= RECONNECT_GRACE);
            (!expired).then_some((i, &*w.meta))
        });
        routes::best_matches(routable, host, path, cand);
        // Ejected and withdrawn workers sit out, among those that match
        // best only (a route never falls through to a less specific worker),
        // and never all of them: the last ones of a route keep serving it.
        let out = |i: &usize, now| workers[*i].as_ref().is_some_and(|w| w.health.out(now));
        if cand.len() > 1 && cand.iter().any(|&i| workers[i].as_ref().is_some_and(|w| w.health.ever_out())) {
            let now = Instant::now();
            if cand.iter().any(|i| !out(i, now)) {
                cand.retain(|i| !out(i, now));
            }
        }
    }

    /// Picks a tunnel for a request standing `at` its place in line, or says
    /// why it cannot now. `avoid`: a worker whose tunnel just failed this
    /// request, used only if no other worker has a free tunnel.
    pub(crate) fn try_pick(&mut self, host: &[u8], path: &[u8], method: &[u8], at: At, avoid: Option<usize>) -> Pick {
        Self::candidates(&self.workers, &mut self.cand, host, path);
        if self.reserved_beats(host, path) {
            return Pick::Reserved;
        }
        if self.cand.is_empty() {
            return Pick::NoRoute;
        }
        self.avail.clear();
        for &i in &self.cand {
            if self.workers[i].as_ref().is_some_and(LocalWorker::has_room) {
                self.avail.push(i);
            }
        }
        if let Some(a) = avoid {
            if self.avail.iter().any(|&i| i != a) {
                self.avail.retain(|&i| i != a);
            }
        }
        // Weighted power of two choices (tunnel/select.rs); a worker that
        // turns out to have no tunnel or permit left is dropped and the
        // choice made again among the rest.
        let mut held_back = Vec::new();
        while !self.avail.is_empty() {
            self.choices.clear();
            for &i in &self.avail {
                let w = self.workers[i].as_ref().expect("candidate exists");
                let class = w.meta.class_of(method, path);
                self.choices.push(Choice {
                    weight: w.meta.weight,
                    in_flight: w.in_flight,
                    latency_us: w.latency_of(class),
                    limit: w.occupancy(class),
                });
            }
            let Some(pick) = power_of_two(&self.choices, &mut self.rng) else { break };
            let slot = self.avail[pick];
            match self.take(slot, method, path, at) {
                Ok(t) => return Pick::Got(t),
                Err(NoTake::Permit { held, .. }) => held_back.push(held),
                Err(NoTake::Room) => {}
            }
            self.avail.swap_remove(pick);
        }
        Pick::Busy(held_back)
    }

    /// Lends a tunnel of `slot` (the least busy h2 tunnel with room, else an
    /// idle h1 tunnel) to a request of `method` and `path` standing `at` its
    /// place, accounting for it as in flight, if the worker's and the
    /// request's class's cross-core limits allow.
    fn take(&mut self, slot: usize, method: &[u8], path: &[u8], at: At) -> Result<Lease, NoTake> {
        let w = self.workers[slot].as_ref().ok_or(NoTake::Room)?;
        // The least busy h2 tunnel that may have room, confirmed by h2; one
        // that turns out full or gone away no longer `may_have_room`, so
        // this ends.
        let h2 = loop {
            match w.h2.iter().filter(|t| t.may_have_room()).min_by_key(|t| t.in_flight.get()) {
                Some(t) if t.has_room() => break Some(t.clone()),
                Some(_) => continue,
                None => break None,
            }
        };
        if h2.is_none() && w.idle.is_empty() {
            return Err(NoTake::Room);
        }
        let class = w.meta.class_of(method, path);
        self.take_permits(slot, class, at)?;
        let w = self.workers[slot].as_mut().ok_or(NoTake::Room)?;
        let kind = match h2 {
            Some(t) => {
                t.in_flight.set(t.in_flight.get() + 1);
                Leased::H2(t)
            }
            None => Leased::H1(w.idle.pop().ok_or(NoTake::Room)?),
        };
        w.in_flight += 1;
        stats::set32(&w.stats.in_flight, w.in_flight);
        Ok(Lease { kind, class: class.map(|c| c as u8) })
    }

    /// Takes the worker's cross-core permit and the class's, both or none.
    /// Neither is taken past a waiter ahead in line: on another core (the
    /// place it published), or, for a request just arrived, this core's own
    /// first waiter for that permit.
    fn take_permits(&self, slot: usize, class: Option<usize>, at: At) -> Result<(), NoTake> {
        let Some(w) = self.workers[slot].as_ref() else { return Err(NoTake::Room) };
        let worker = w.meta.max_concurrency.and_then(|max| Some((w.permits.as_ref()?, max)));
        let class_permit = w.class_permit(class);
        if worker.is_none() && class_permit.is_none() {
            return Ok(());
        }
        // The clock is read only for a request that takes a limited permit.
        let place = match at {
            At::Waiting(p) => p,
            At::Arrival(client) => Place::new(w.meta.urgency(class).max(client.unwrap_or(0)), Instant::now()),
        };
        let held = |p: &Arc<Permits>| HeldBack { slot, worker: w.id.clone(), permits: p.clone() };
        if let Some((p, max)) = worker {
            if self.try_take(p, max, place, at).is_err() {
                return Err(NoTake::Permit { class: false, held: held(p) });
            }
        }
        if let Some((p, max)) = class_permit {
            if self.try_take(p, max, place, at).is_err() {
                if let Some((p, _)) = worker {
                    self.give_permit(p, &w.id);
                }
                return Err(NoTake::Permit { class: true, held: held(p) });
            }
        }
        Ok(())
    }

    fn try_take(&self, p: &Permits, max: u32, place: Place, at: At) -> Result<(), Refused> {
        if matches!(at, At::Arrival(_)) && self.heads.iter().any(|h| std::ptr::eq(&*h.permits, p) && h.place < place) {
            return Err(Refused::Behind);
        }
        p.try_take(self.core, max, place)
    }

    /// Gives a permit back; cores waiting for one of `id`'s are told (an
    /// owned message, only when one waits).
    fn give_permit(&self, p: &Permits, id: &Arc<str>) {
        let waiting = p.give_back(self.core);
        self.tell(waiting, id);
    }

    /// A request is done with its tunnel. A reusable h1 tunnel goes to the
    /// first waiter it can serve, else back to the idle list; a broken one
    /// closes. An h2 stream slot frees room for a waiter.
    pub(crate) fn release(&mut self, lease: Lease, reusable: bool) {
        self.settle(&lease, true);
        self.give_back(lease.kind, reusable);
    }

    /// Undoes the in-flight accounting of a lease. A permit given back may
    /// be what a request queued on another core waits for: those cores are
    /// told (an owned message, only when one waits).
    fn settle(&mut self, lease: &Lease, count: bool) {
        let Some(w) = self.workers[lease.slot()].as_mut() else { return };
        w.in_flight -= 1;
        stats::set32(&w.stats.in_flight, w.in_flight);
        if count {
            stats::add(&w.stats.requests, 1);
        }
        let w = self.workers[lease.slot()].as_ref().expect("present above");
        if let Some(p) = &w.permits {
            self.give_permit(p, &w.id);
        }
        if let Some((p, _)) = w.class_permit(lease.class.map(usize::from)) {
            self.give_permit(p, &w.id);
        }
    }

    /// A permit of worker `id` was given back on another core (or its limit
    /// grew, or a waiter ahead of ours left the line): offer what is free to
    /// the requests here that wait for that worker, first in line first.
    pub(crate) fn capacity_freed(&mut self, id: &str) {
        for slot in 0..self.workers.len() {
            if self.workers[slot].as_ref().is_some_and(|w| &*w.id == id) {
                self.offer_all(slot);
            }
        }
    }

    /// Offers room on worker `slot` to waiters until one cannot be served:
    /// for news that may free more than one (a limit that grew).
    fn offer_all(&mut self, slot: usize) {
        while self.offer_capacity(slot) {}
    }

    fn give_back(&mut self, kind: Leased, reusable: bool) {
        let slot = kind.slot();
        match kind {
            Leased::H1(t) if reusable => self.offer(Leased::H1(t)),
            Leased::H1(t) => {
                drop(t);
                self.closed(slot);
            }
            Leased::H2(t) => {
                // A failed stream says nothing about its tunnel: connection
                // failures show in `has_room` (poll_ready) and in the end of
                // the connection task.
                t.in_flight.set(t.in_flight.get() - 1);
                if t.closed.get() && t.in_flight.get() == 0 {
                    self.remove_h2(&t);
                } else {
                    self.offer_capacity(slot);
                }
            }
        }
    }

    /// Room freed on worker `slot` (an idle h1 tunnel or an h2 stream slot):
    /// lend it to the first waiter it can serve. Returns whether one was.
    fn offer_capacity(&mut self, slot: usize) -> bool {
        if self.queue.is_empty() {
            return false;
        }
        let mut queue = std::mem::take(&mut self.queue);
        // Most urgent first; a waiter whose class is at its limit lets the
        // room go to the next one; once the worker itself has no room left
        // (no tunnel, or its own permit refused), nobody else can use it.
        let (mut room, mut no_tunnel, mut moved) = (true, false, false);
        let served = queue.offer(|w| {
            if !room {
                return None;
            }
            Self::candidates(&self.workers, &mut self.cand, &w.host, &w.path);
            if !self.cand.contains(&slot) {
                return None;
            }
            match self.take(slot, &w.method, &w.path, At::Waiting(w.place)) {
                Ok(lease) => {
                    // It leaves the queue: its places come off with it, once.
                    moved |= !std::mem::take(&mut *w.held_back.borrow_mut()).is_empty();
                    Some(lease)
                }
                Err(NoTake::Permit { class, held }) => {
                    moved |= w.hold(held);
                    room = class;
                    None
                }
                Err(NoTake::Room) => {
                    (room, no_tunnel) = (false, true);
                    None
                }
            }
        });
        // With no tunnel free here, this core's waiters cannot use a permit
        // of this worker: their places come off it, so a waiter on another
        // core that can use one is not held behind them.
        if no_tunnel {
            queue.each(|w| moved |= w.unhold(slot));
        }
        self.queue = queue;
        if moved {
            self.publish_heads();
        }
        served
    }

    /// Publishes, per cross-core permit, the place of this core's first
    /// waiter it holds back (tunnel/permits.rs), withdrawing those no waiter
    /// here needs any more. A place that moved back may leave a free permit
    /// to a waiter on another core: the cores recorded as waiting are told.
    /// Run when a waiter held back by a permit comes or goes, or what holds
    /// it back changes.
    fn publish_heads(&mut self) {
        let mut heads: Vec<Head> = Vec::with_capacity(self.heads.len());
        // The queue's order is place order: a permit's first waiter met is its head.
        self.queue.each(|w| {
            for h in w.held_back.borrow().iter() {
                if !heads.iter().any(|x| Arc::ptr_eq(&x.permits, &h.permits)) {
                    heads.push(Head { permits: h.permits.clone(), worker: h.worker.clone(), place: w.place });
                }
            }
        });
        let old = std::mem::take(&mut self.heads);
        for o in &old {
            let now = heads.iter().find(|h| Arc::ptr_eq(&h.permits, &o.permits)).map(|h| h.place);
            if now != Some(o.place) && o.permits.publish(self.core, now) {
                self.tell(o.permits.take_waiting(self.core), &o.worker);
            }
        }
        for h in heads.iter().filter(|h| !old.iter().any(|o| Arc::ptr_eq(&o.permits, &h.permits))) {
            // A first place moves nothing back.
            h.permits.publish(self.core, Some(h.place));
        }
        self.heads = heads;
    }

    /// Puts a request in this core's wait queue, in its class's queue, at
    /// the urgency of its class on the workers that serve it, lowered to
    /// `client_urgency` if the client asked for less (RFC 9218 `Priority`: a
    /// client may lower its request's priority, never raise it above its
    /// class's). Where those workers put the request in different classes,
    /// the most urgent class decides (urgency, `queue`, `wait`). Bounded by
    /// the class's `queue` over all cores and by `max` on this core; waits at
    /// most the class's `wait`, and never longer than `max_wait`.
    /// `held_back`: the permits that refused it (from the [`Pick::Busy`] that
    /// sent it here), on which its place is published while it is first.
    pub(crate) fn enqueue(&mut self, req: &For<'_>, held_back: Vec<HeldBack>, max: usize, max_wait: Duration) -> Result<Queued, Shed> {
        let (host, path, method, client_urgency) = (req.host, req.path, req.method, req.urgency);
        Self::candidates(&self.workers, &mut self.cand, host, path);
        let mut best: Option<(u8, &LocalWorker, Option<usize>)> = None;
        for w in self.cand.iter().filter_map(|&i| self.workers[i].as_ref()) {
            let class = w.meta.class_of(method, path);
            let u = w.meta.urgency(class);
            if best.is_none_or(|(b, _, _)| u < b) {
                best = Some((u, w, class));
            }
        }
        let (urgency, decl, class) = match best {
            Some((u, w, Some(i))) => (u, Some(&w.meta.classes[i]), w.class_queues.get(i).unwrap_or(&self.default_queue).clone()),
            Some((u, _, None)) => (u, None, self.default_queue.clone()),
            None => (ptth_proto::setup::DEFAULT_URGENCY, None, self.default_queue.clone()),
        };
        let here = class.core(self.core);
        let bound = decl.and_then(|d| d.queue);
        let Some(ticket) = class.try_enter(bound) else {
            stats::add(&here.shed_full, 1);
            return Err(Shed::ClassFull { class, bound: bound.unwrap_or(0) });
        };
        let wait = decl.and_then(|d| d.wait_ms).map_or(max_wait, |ms| Duration::from_millis(ms.into()).min(max_wait));
        let urgency = urgency.max(client_urgency.unwrap_or(0));
        let held = !held_back.is_empty();
        match self.queue.enqueue(&Want { host, path, method, urgency }, max, Some(ticket), held_back) {
            Ok(waiter) => {
                if held {
                    self.publish_heads();
                }
                stats::add(&here.queued, 1);
                if stats::get(&here.oldest_since_ms) == 0 {
                    stats::set_u64(&here.oldest_since_ms, epoch_ms(std::time::SystemTime::now()));
                    self.published_oldest.push(class);
                }
                Ok(Queued { waiter, wait })
            }
            Err(Full) => {
                stats::add(&here.shed_full, 1);
                Err(Shed::CoreFull { class, max })
            }
        }
    }

    /// Publishes, per class, when this core's oldest waiter started waiting
    /// (for `/status`); classes with none here now read 0.
    fn publish_oldest(&mut self) {
        let now = (Instant::now(), std::time::SystemTime::now());
        let mut oldest: Vec<(Arc<ClassQueue>, Instant)> = Vec::new();
        self.queue.each(|w| {
            let Some(q) = w.ticket.as_ref().map(|t| t.class()) else { return };
            match oldest.iter_mut().find(|(c, _)| Arc::ptr_eq(c, q)) {
                Some((_, since)) => *since = (*since).min(w.since),
                None => oldest.push((q.clone(), w.since)),
            }
        });
        for q in self.published_oldest.drain(..) {
            stats::set_u64(&q.core(self.core).oldest_since_ms, 0);
        }
        for (q, since) in oldest {
            let at = now.1.checked_sub(now.0.saturating_duration_since(since)).unwrap_or(now.1);
            stats::set_u64(&q.core(self.core).oldest_since_ms, epoch_ms(at).max(1));
            self.published_oldest.push(q);
        }
    }

    /// A wait ended, however: the waiter leaves the queue, and a lease handed
    /// to it at the last moment goes back to the pool.
    pub(crate) fn leave_queue(&mut self, w: &Rc<Waiter<Lease>>) {
        let got = self.queue.cancel(w);
        if !w.held_back.borrow().is_empty() {
            w.held_back.borrow_mut().clear();
            self.publish_heads();
        }
        if let Some(t) = got {
            self.release(t, true);
        }
    }

    /// Parks a free h1 tunnel (or notes a freed h2 stream slot), then lends
    /// the room to the first waiter it can serve: one scan of the queue for
    /// both kinds of tunnel.
    fn offer(&mut self, kind: Leased) {
        let slot = kind.slot();
        if let Leased::H1(mut t) = kind {
            t.idle_since = Instant::now();
            // Its read buffer waits in the core's spares while it idles.
            t.rb.park_idle();
            if let Some(w) = self.workers[slot].as_mut() {
                w.idle.push(t);
            }
        }
        self.offer_capacity(slot);
    }

    /// A tunnel of `slot` is gone: update counts, forget an empty worker, and
    /// release its placement.
    fn closed(&mut self, slot: usize) {
        let Some(w) = self.workers[slot].as_mut() else { return };
        w.tunnels -= 1;
        stats::set32(&w.stats.tunnels, w.tunnels);
        let id = w.id.clone();
        if w.tunnels == 0 {
            w.empty_since = Some(Instant::now());
        }
        self.placement.release(&id, self.core);
    }

    /// Forgets workers whose last tunnel closed more than the grace ago, and
    /// re-routes the requests that were waiting for them.
    fn expire_empty(&mut self) {
        let mut expired = false;
        let now = Instant::now();
        self.reserved.retain(|r| r.until.is_none_or(|u| now < u));
        for w in self.workers.iter_mut() {
            if w.as_ref().is_some_and(|x| x.tunnels == 0 && x.empty_since.is_some_and(|t| t.elapsed() >= RECONNECT_GRACE)) {
                // Its path prefixes stay its own for a while: their requests
                // get 503 rather than a catch-all worker.
                if let Some(gone) = w.take().filter(|g| !g.meta.routes.is_empty() && !self.route_hold.is_zero()) {
                    self.reserved.push(Reservation { meta: gone.meta, until: Some(now + self.route_hold) });
                }
                expired = true;
            }
        }
        if expired {
            self.reroute_waiters();
        }
    }

    /// Gives each waiting request a tunnel of whichever worker now serves its
    /// route, or tells it none does.
    fn reroute_waiters(&mut self) {
        let mut queue = std::mem::take(&mut self.queue);
        queue.reroute(|w| match self.try_pick(&w.host, &w.path, &w.method, At::Waiting(w.place), None) {
            Pick::Busy(held) => {
                *w.held_back.borrow_mut() = held;
                Reroute::Wait
            }
            // It leaves the queue: its places come off with it (below).
            Pick::Got(lease) => {
                w.held_back.borrow_mut().clear();
                Reroute::Give(lease)
            }
            Pick::NoRoute | Pick::Reserved => {
                w.held_back.borrow_mut().clear();
                Reroute::NoRoute
            }
        });
        self.queue = queue;
        self.publish_heads();
    }

    /// Closes idle tunnels whose worker hung up, so routing and /status stop
    /// counting them. Tunnels idle for less than `min_idle` are left alone.
    pub(crate) fn sweep(&mut self, min_idle: Duration) {
        self.expire_empty();
        self.publish_oldest();
        let now = Instant::now();
        let mut dead = Vec::new();
        for (slot, w) in self.workers.iter_mut().enumerate() {
            let Some(w) = w else { continue };
            let mut i = 0;
            while i < w.idle.len() {
                if now.duration_since(w.idle[i].idle_since) >= min_idle && w.idle[i].stream.idle_unusable() {
                    w.idle.swap_remove(i);
                    dead.push(slot);
                } else {
                    i += 1;
                }
            }
        }
        for slot in dead {
            self.closed(slot);
        }
        // h2 tunnels that got a GOAWAY and have nothing in flight are done.
        let mut drained = Vec::new();
        for w in self.workers.iter().flatten() {
            for t in &w.h2 {
                if !t.has_room() && t.draining.get() && t.in_flight.get() == 0 {
                    drained.push(t.clone());
                }
            }
        }
        for t in drained {
            self.remove_h2(&t);
        }
    }

    /// Drops every idle tunnel (shutdown).
    pub(crate) fn close_all(&mut self) {
        for slot in 0..self.workers.len() {
            let (idle, h2) = match self.workers[slot].as_mut() {
                Some(w) => (std::mem::take(&mut w.idle), std::mem::take(&mut w.h2)),
                None => continue,
            };
            for _ in 0..idle.len() + h2.len() {
                self.closed(slot);
            }
        }
    }

    /// Idle tunnels must be checked before use: has the worker closed it?
    /// An idle h1 tunnel that hung up or sent bytes while no request was
    /// outstanding: closed before reuse, never trusted with a request.
    pub(crate) fn is_stale(t: &H1Tunnel) -> bool {
        !t.rb.is_empty() || t.stream.idle_unusable()
    }

    /// Gives back a lease whose tunnel turned out unusable before the request
    /// was sent on it (no request counted).
    pub(crate) fn discard(&mut self, lease: Lease) {
        self.settle(&lease, false);
        self.give_back(lease.kind, false);
    }
}

#[cfg(test)]
mod tests {
    //! Leases end to end through the pool, on loopback socket pairs (an h1
    //! tunnel owns its stream); no worker, no I/O on them beyond the idle
    //! check.
    use super::*;
    use crate::tunnel::placement::Placement;
    use ptth_proto::setup::Claim;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    struct Rig {
        pool: Pool,
        placement: Arc<Placement>,
        stats: Vec<Arc<WorkerCoreStats>>,
        /// The worker ends of the tunnels, kept open.
        peers: Vec<std::net::TcpStream>,
    }

    fn meta(routes: &[&str], classes: &[u8], max_concurrency: Option<u32>) -> Arc<Meta> {
        Arc::new(Meta {
            claim: Claim::Any,
            routes: routes.iter().map(|r| r.to_string()).collect(),
            weight: 1,
            max_concurrency,
            classes: ptth_proto::setup::parse_classes(classes).unwrap(),
        })
    }

    /// Adds an h1 tunnel of worker `id` placed by `placed` to `pool`, over a
    /// loopback pair whose other end goes in `peers`.
    fn add_tunnel(pool: &mut Pool, placement: &Placement, peers: &mut Vec<std::net::TcpStream>, id: &str, meta: Arc<Meta>, placed: Placed) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        peers.push(l.accept().unwrap().0);
        ours.set_nonblocking(true).unwrap();
        let ticket = placement.admit("127.0.0.1".parse().unwrap(), 100, 100).unwrap();
        pool.add(id.into(), meta, placed, ticket, TunnelStream::Plain(monoio::net::TcpStream::from_std(ours).unwrap()), 4096);
    }

    fn rig() -> Rig {
        rig_with(|p| p)
    }

    /// A rig whose pool `configure` sets up (reservations, health).
    fn rig_with(configure: impl FnOnce(Pool) -> Pool) -> Rig {
        let placement = Arc::new(Placement::new(1));
        let inboxes: Arc<[Inbox]> = vec![Inbox::new()].into();
        Rig { pool: configure(Pool::new(0, placement.clone(), inboxes)), placement, stats: Vec::new(), peers: Vec::new() }
    }

    impl Rig {
        /// One h1 tunnel of worker `id` serving `routes`.
        fn tunnel(&mut self, id: &str, routes: &[&str]) {
            self.tunnel_with(id, routes, b"");
        }

        /// One h1 tunnel of worker `id` serving `routes`, declaring `classes`
        /// (a `Tunnel-Classes` value).
        fn tunnel_with(&mut self, id: &str, routes: &[&str], classes: &[u8]) {
            let meta = meta(routes, classes, None);
            let placed = self.placement.place(&id.into(), &meta, 0, 100, &"test".into()).unwrap();
            if self.stats.iter().all(|s| !Arc::ptr_eq(s, &placed.stats)) {
                self.stats.push(placed.stats.clone());
            }
            add_tunnel(&mut self.pool, &self.placement, &mut self.peers, id, meta, placed);
        }

        fn pick(&mut self, path: &str) -> Pick {
            self.pick_m("GET", path)
        }

        fn pick_m(&mut self, method: &str, path: &str) -> Pick {
            self.pool.try_pick(b"h", path.as_bytes(), method.as_bytes(), At::Arrival(None), None)
        }

        fn enqueue(&mut self, method: &str, path: &str, client_urgency: Option<u8>) -> Rc<Waiter<Lease>> {
            self.try_enqueue(method, path, client_urgency).unwrap().waiter
        }

        /// Queues a request as the request path does: after a pick that
        /// found every tunnel it could use busy.
        fn try_enqueue(&mut self, method: &str, path: &str, client_urgency: Option<u8>) -> Result<Queued, Shed> {
            let req = For { host: b"h", path: path.as_bytes(), method: method.as_bytes(), urgency: client_urgency };
            let held_back = match self.pool.try_pick(req.host, req.path, req.method, At::Arrival(req.urgency), None) {
                Pick::Busy(held) => held,
                Pick::Got(_) => panic!("{method} {path} found room: nothing to queue"),
                Pick::NoRoute | Pick::Reserved => Vec::new(),
            };
            self.pool.enqueue(&req, held_back, 8, Duration::from_secs(5))
        }

        /// Queues a request without a pick first (what the queue's own
        /// bounds do, whatever the tunnels).
        fn enqueue_unpicked(&mut self, method: &str, path: &str) -> Result<Queued, Shed> {
            let req = For { host: b"h", path: path.as_bytes(), method: method.as_bytes(), urgency: None };
            self.pool.enqueue(&req, Vec::new(), 8, Duration::from_secs(5))
        }

        fn in_flight(&self, i: usize) -> u32 {
            self.stats[i].in_flight.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// What a waiter has been handed, without waiting.
    fn handed(w: &Rc<Waiter<Lease>>) -> Option<Option<Lease>> {
        let mut f = std::pin::pin!(w.wait());
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    fn on_runtime(f: impl FnOnce()) {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().unwrap().block_on(async { f() });
    }

    #[test]
    fn a_freed_tunnel_goes_to_the_first_waiter_it_can_serve() {
        on_runtime(|| {
            let mut r = rig();
            r.tunnel("a", &["/a/"]);
            r.tunnel("b", &["/b/"]);
            let Pick::Got(a) = r.pick("/a/1") else { panic!("a has a free tunnel") };
            let Pick::Got(b) = r.pick("/b/1") else { panic!("b has a free tunnel") };
            assert!(matches!(r.pick("/a/2"), Pick::Busy(_)));
            assert!(matches!(r.pick("/c"), Pick::NoRoute));
            // In order: a waiter for b's route, then two for a's.
            let wb = r.enqueue("GET", "/b/2", None);
            let wa1 = r.enqueue("GET", "/a/2", None);
            let wa2 = r.enqueue("GET", "/a/3", None);
            assert_eq!((r.in_flight(0), r.in_flight(1)), (1, 1));
            // a's tunnel skips b's waiter and goes to the first of a's.
            r.pool.release(a, true);
            assert!(handed(&wb).is_none());
            let a = handed(&wa1).expect("handed").expect("a lease");
            assert!(handed(&wa2).is_none());
            assert_eq!(r.in_flight(0), 1, "handed over, still in flight");
            r.pool.leave_queue(&wa1);
            r.pool.release(a, true);
            let a = handed(&wa2).expect("handed").expect("a lease");
            r.pool.leave_queue(&wa2);
            r.pool.release(b, true);
            let b = handed(&wb).expect("handed").expect("b lease");
            r.pool.leave_queue(&wb);
            r.pool.release(a, true);
            r.pool.release(b, true);
            assert_eq!((r.in_flight(0), r.in_flight(1)), (0, 0));
            let served = |i: usize| r.stats[i].requests.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!((served(0), served(1)), (3, 2));
        });
    }

    #[test]
    fn a_waiter_that_leaves_gives_back_what_it_was_handed() {
        on_runtime(|| {
            let mut r = rig();
            r.tunnel("a", &[]);
            let Pick::Got(a) = r.pick("/") else { panic!("free tunnel") };
            let w = r.enqueue("GET", "/", None);
            r.pool.release(a, true);
            // Handed over, but the client went away before it looked.
            r.pool.leave_queue(&w);
            assert_eq!(r.in_flight(0), 0);
            assert!(matches!(r.pick("/"), Pick::Got(_)), "the tunnel is free again");
        });
    }

    #[test]
    fn a_broken_or_discarded_lease_closes_its_tunnel_uncounted() {
        on_runtime(|| {
            let mut r = rig();
            r.tunnel("a", &[]);
            r.tunnel("a", &[]);
            let Pick::Got(x) = r.pick("/") else { panic!("free tunnel") };
            let Pick::Got(y) = r.pick("/") else { panic!("free tunnel") };
            r.pool.release(x, false);
            r.pool.discard(y);
            assert_eq!(r.in_flight(0), 0);
            assert_eq!(r.stats[0].requests.load(std::sync::atomic::Ordering::Relaxed), 1, "a discarded lease served nothing");
            assert_eq!(r.stats[0].tunnels.load(std::sync::atomic::Ordering::Relaxed), 0);
            assert!(r.placement.lock().get("a").is_none(), "its last tunnel gone, the worker leaves the placement");
            assert!(matches!(r.pick("/"), Pick::Busy(_)), "still routable within the reconnect grace");
        });
    }

    #[test]
    fn a_class_at_its_limit_waits_while_other_classes_go_ahead() {
        on_runtime(|| {
            let mut r = rig();
            let classes = br#"heavy=("POST /report/");u=6;limit=1, default;u=2"#;
            for _ in 0..3 {
                r.tunnel_with("w", &[], classes);
            }
            let Pick::Got(h1) = r.pick_m("POST", "/report/1") else { panic!("heavy has a slot") };
            // The class is at its limit though tunnels are free...
            assert!(matches!(r.pick_m("POST", "/report/2"), Pick::Busy(_)));
            // ...and the default class is not held up by it.
            let Pick::Got(l1) = r.pick_m("GET", "/report/1") else { panic!("default class goes ahead") };
            let Pick::Got(l2) = r.pick("/x") else { panic!("default class goes ahead") };
            assert_eq!(r.in_flight(0), 3);
            // Queued: a heavy request (u=6), then a default one (u=2) that
            // outranks it, and one whose client lowered it to u=7.
            let heavy = r.enqueue("POST", "/report/2", None);
            let light = r.enqueue("GET", "/", None);
            let lowered = r.enqueue("GET", "/", Some(7));
            // A client cannot raise its request above its class (u=6).
            let raised = r.enqueue("POST", "/report/3", Some(0));
            // A default-class request ends: its tunnel goes to the most urgent
            // waiter it can serve (the default one; heavy is still at its limit).
            r.pool.release(l1, true);
            assert!(handed(&heavy).is_none());
            let got = handed(&light).expect("handed").expect("a lease");
            r.pool.leave_queue(&light);
            // The heavy request ends: the freed class permit and tunnel go
            // to the oldest heavy waiter, ahead of the lowered request.
            r.pool.release(h1, true);
            let h2 = handed(&heavy).expect("handed").expect("a lease");
            r.pool.leave_queue(&heavy);
            assert!(handed(&lowered).is_none() && handed(&raised).is_none());
            // Heavy is at its limit again: the next room goes to the lowered
            // default request even though a heavy one waits with u=6 < 7.
            r.pool.release(l2, true);
            assert!(handed(&raised).is_none());
            let l3 = handed(&lowered).expect("handed").expect("a lease");
            r.pool.leave_queue(&lowered);
            r.pool.release(h2, true);
            let h3 = handed(&raised).expect("handed").expect("a lease");
            r.pool.leave_queue(&raised);
            for l in [got, l3, h3] {
                r.pool.release(l, true);
            }
            assert_eq!(r.in_flight(0), 0);
        });
    }

    /// Selection compares latency within the request's class: a worker
    /// whose heavy requests are slow is not shunned by light ones it answers
    /// as fast as the other worker does.
    #[test]
    fn a_slow_class_does_not_make_a_worker_look_slow_to_another() {
        on_runtime(|| {
            let mut r = rig();
            for id in ["a", "b"] {
                for _ in 0..2 {
                    r.tunnel_with(id, &[], br#"heavy=("/h/")"#);
                }
            }
            // A lease of worker `id` for `path`, observed to take `took`.
            let feed = |r: &mut Rig, id: &str, path: &str, took: Duration| loop {
                let Pick::Got(l) = r.pick(path) else { panic!("idle tunnels") };
                if &*r.pool.worker_id(l.slot()) == id {
                    r.pool.observe(&l, took);
                    r.pool.release(l, true);
                    return;
                }
                r.pool.release(l, true);
            };
            for _ in 0..10 {
                feed(&mut r, "a", "/h/1", Duration::from_millis(200));
            }
            for id in ["a", "b"] {
                for _ in 0..5 {
                    feed(&mut r, id, "/page", Duration::from_millis(1));
                }
            }
            let mut to_a = 0;
            for _ in 0..1000 {
                let Pick::Got(l) = r.pick("/page") else { panic!("idle tunnels") };
                to_a += usize::from(&*r.pool.worker_id(l.slot()) == "a");
                r.pool.release(l, true);
            }
            assert!((300..=700).contains(&to_a), "a took {to_a} of 1000 light requests");
        });
    }

    /// Selection counts a declared limit as capacity: a worker declaring 12
    /// for a class takes about three times the requests of one declaring 4,
    /// where in-flight counts alone would share them evenly.
    #[test]
    fn a_worker_declaring_more_takes_more() {
        on_runtime(|| {
            let mut r = rig();
            for (id, limit, tunnels) in [("small", 4, 4), ("big", 12, 8)] {
                for _ in 0..tunnels {
                    r.tunnel_with(id, &[], format!(r#"heavy=("/h/");limit={limit}"#).as_bytes());
                }
            }
            let leases: Vec<Lease> = (0..8)
                .map(|i| match r.pick(&format!("/h/{i}")) {
                    Pick::Got(l) => l,
                    _ => panic!("room for 16"),
                })
                .collect();
            let small = leases.iter().filter(|l| &*r.pool.worker_id(l.slot()) == "small").count();
            assert!((1..=3).contains(&small), "small took {small} of 8");
            for l in leases {
                r.pool.release(l, true);
            }
        });
    }

    #[test]
    fn a_class_queue_is_bounded_and_waits_as_declared() {
        on_runtime(|| {
            let mut r = rig();
            let classes = br#"heavy=("POST /report/");u=6;limit=1;queue=2;wait=800, default;queue=0"#;
            r.tunnel_with("w", &[], classes);
            r.tunnel_with("w", &[], classes);
            let Pick::Got(running) = r.pick_m("POST", "/report/0") else { panic!("the first heavy request runs") };
            // Two may wait, over all cores; the third is shed.
            let a = r.try_enqueue("POST", "/report/1", None).unwrap();
            assert_eq!(a.wait, Duration::from_millis(800), "the class's wait, under queue.max_wait_ms");
            let b = r.try_enqueue("POST", "/report/2", None).unwrap();
            assert!(matches!(r.try_enqueue("POST", "/report/3", None), Err(Shed::ClassFull { bound: 2, .. })));
            // queue=0 on the default class: its requests never wait.
            assert!(matches!(r.enqueue_unpicked("GET", "/x"), Err(Shed::ClassFull { bound: 0, ref class }) if &*class.name == "default"));
            let heavy = r.placement.classes.get("heavy");
            let t = heavy.totals();
            assert_eq!((t.waiting, t.queued, t.shed_full), (2, 2, 1));
            // A place freed (this waiter left) lets the next one in.
            r.pool.leave_queue(&a.waiter);
            drop(a);
            assert_eq!(heavy.waiting(), 1);
            let c = r.try_enqueue("POST", "/report/3", None).unwrap();
            // The oldest waiter's start is published at the sweep.
            r.pool.sweep(Duration::from_secs(60));
            assert!(heavy.totals().oldest_since_ms.is_some());
            r.pool.release(running, true);
            assert!(handed(&b.waiter).is_some_and(|l| l.is_some()), "the freed permit goes to the oldest waiter");
            for q in [b, c] {
                r.pool.leave_queue(&q.waiter);
            }
            assert_eq!(heavy.waiting(), 0);
            r.pool.sweep(Duration::from_secs(60));
            assert_eq!(heavy.totals().oldest_since_ms, None, "nobody waits here now");
        });
    }

    #[test]
    fn a_departed_workers_prefix_does_not_fall_through_to_a_catch_all() {
        on_runtime(|| {
            let mut r = rig_with(|p| p.with_reserved(&["/admin/".into()], Duration::from_secs(30)));
            // Nobody serves /admin/ yet: the operator's reservation holds.
            r.tunnel("all", &[]);
            assert!(matches!(r.pick("/admin/users"), Pick::Reserved));
            assert!(matches!(r.pick("/"), Pick::Got(_)), "other paths are served");
            r.tunnel("slow", &["/slow/"]);
            let Pick::Got(t) = r.pick("/slow/1") else { panic!("slow serves its prefix") };
            r.pool.release(t, false);
            // Its last tunnel closed; within the reconnect grace its requests wait.
            assert!(matches!(r.pick("/slow/2"), Pick::Busy(_)));
            // Past the grace it is forgotten, and its prefix stays reserved.
            let slot = r.pool.workers.iter().position(|w| w.as_ref().is_some_and(|w| &*w.id == "slow")).unwrap();
            r.pool.workers[slot].as_mut().unwrap().empty_since = Some(Instant::now() - RECONNECT_GRACE);
            r.pool.expire_empty();
            assert!(matches!(r.pick("/slow/3"), Pick::Reserved), "not the catch-all");
            // A worker claiming it again takes it back.
            r.tunnel("slow2", &["/slow/"]);
            assert!(matches!(r.pick("/slow/4"), Pick::Got(_)));
            // The hold ends: the catch-all serves what nobody claims.
            r.pool.reserved.iter_mut().filter(|x| x.until.is_some()).for_each(|x| x.until = Some(Instant::now()));
            r.pool.expire_empty();
            assert!(r.pool.reserved.iter().all(|x| x.until.is_none()), "only the operator's reservation is left");
        });
    }

    #[test]
    fn an_ejected_worker_sits_out_unless_it_is_the_last_of_its_route() {
        on_runtime(|| {
            let policy =
                health::Policy { consecutive_failures: 3, ejection: Duration::from_secs(60), max_ejection: Duration::from_secs(60) };
            let mut r = rig_with(|p| p.with_health(policy));
            for _ in 0..4 {
                r.tunnel("sick", &[]);
                r.tunnel("well", &[]);
            }
            r.tunnel("only", &["/only/"]);
            let slot = |r: &Rig, id: &str| r.pool.workers.iter().position(|w| w.as_ref().is_some_and(|w| &*w.id == id)).unwrap();
            let (sick, only) = (slot(&r, "sick"), slot(&r, "only"));
            for s in [sick, only] {
                for _ in 0..3 {
                    r.pool.judge(s, Verdict::Failed, &"it answered 502");
                }
            }
            for _ in 0..8 {
                let Pick::Got(l) = r.pick("/") else { panic!("well has tunnels") };
                assert_ne!(l.slot(), sick, "an ejected worker is not chosen while another serves the route");
                r.pool.release(l, true);
            }
            let Pick::Got(l) = r.pick("/only/x") else { panic!("the last worker of a route keeps serving it") };
            assert_eq!(l.slot(), only);
            r.pool.release(l, true);
            let ejections = |i: usize| r.stats[i].ejections.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!((ejections(0), ejections(1), ejections(2)), (1, 0, 1));
        });
    }

    /// Two cores' pools over one placement and one set of inboxes; the
    /// messages between them are delivered when the test says.
    struct TwoCores {
        pools: [Pool; 2],
        placement: Arc<Placement>,
        inboxes: Arc<[Inbox]>,
        peers: Vec<std::net::TcpStream>,
    }

    impl TwoCores {
        fn new() -> TwoCores {
            let placement = Arc::new(Placement::new(2));
            let inboxes: Arc<[Inbox]> = vec![Inbox::new(), Inbox::new()].into();
            let pools = [0, 1].map(|c| Pool::new(c, placement.clone(), inboxes.clone()));
            TwoCores { pools, placement, inboxes, peers: Vec::new() }
        }

        /// An h1 tunnel of worker "w" (`meta`) on `core`.
        fn tunnel(&mut self, core: usize, meta: &Arc<Meta>) {
            let placed = self.placement.place(&"w".into(), meta, core, 100, &"test".into()).unwrap();
            assert_eq!(placed.core, core, "tunnels are added to keep the cores even");
            add_tunnel(&mut self.pools[core], &self.placement, &mut self.peers, "w", meta.clone(), placed);
        }

        fn pick(&mut self, core: usize, path: &str) -> Pick {
            self.pools[core].try_pick(b"h", path.as_bytes(), b"GET", At::Arrival(None), None)
        }

        fn enqueue(&mut self, core: usize, path: &str) -> Rc<Waiter<Lease>> {
            let Pick::Busy(held_back) = self.pick(core, path) else { panic!("{path} on core {core}: expected busy") };
            let req = For { host: b"h", path: path.as_bytes(), method: b"GET", urgency: None };
            self.pools[core].enqueue(&req, held_back, 8, Duration::from_secs(5)).unwrap().waiter
        }

        /// Delivers the messages the cores sent each other, until none is left.
        fn deliver(&mut self) {
            let mut cx = Context::from_waker(Waker::noop());
            loop {
                let mut any = false;
                for c in 0..2 {
                    while let Poll::Ready(Some(msg)) = std::pin::pin!(self.inboxes[c].recv()).poll(&mut cx) {
                        any = true;
                        if let CoreMsg::Capacity { worker } = msg {
                            self.pools[c].capacity_freed(&worker);
                        }
                    }
                }
                if !any {
                    return;
                }
            }
        }
    }

    /// A worker's permit freed on one core goes to the earliest waiter on any
    /// core, not to the freeing core's own; a request arriving while one
    /// waits elsewhere does not take a free permit past it.
    #[test]
    fn a_freed_permit_goes_to_the_first_waiter_on_any_core() {
        on_runtime(|| {
            let mut t = TwoCores::new();
            let m = meta(&[], b"", Some(1));
            for core in [0, 1, 0, 1] {
                t.tunnel(core, &m);
            }
            let Pick::Got(running) = t.pick(0, "/run") else { panic!("the permit is free") };
            let first = t.enqueue(1, "/first");
            let second = t.enqueue(0, "/second");
            // Freed on core 0: its own waiter came later, so it stays put...
            t.pools[0].release(running, true);
            assert!(handed(&second).is_none(), "core 0's later waiter did not jump the line");
            // ...and core 1's earlier one gets it once told.
            t.deliver();
            let got = handed(&first).expect("handed").expect("a lease");
            t.pools[1].leave_queue(&first);
            t.pools[1].release(got, true);
            // Free again, core 0's waiter first in line: a request arriving
            // on core 1 does not pass it.
            assert!(matches!(t.pick(1, "/late"), Pick::Busy(_)));
            assert!(matches!(t.pick(0, "/late"), Pick::Busy(_)), "nor one on its own core before it is told");
            t.deliver();
            let got = handed(&second).expect("handed").expect("a lease");
            t.pools[0].leave_queue(&second);
            t.pools[0].release(got, true);
            assert!(matches!(t.pick(1, "/late"), Pick::Got(_)), "nobody waits: it goes");
        });
    }

    /// Work-conserving: the first waiter in line sits on a core with no
    /// tunnel free for it, so it cannot use a free permit; its place comes
    /// off, and the next waiter, on the other core, gets the permit at once.
    #[test]
    fn a_waiter_that_cannot_use_a_permit_does_not_hold_it_from_one_that_can() {
        on_runtime(|| {
            let mut t = TwoCores::new();
            let m = meta(&[], br#"heavy=("/h/");limit=1"#, None);
            for core in [0, 1, 0] {
                t.tunnel(core, &m);
            }
            let Pick::Got(heavy) = t.pick(0, "/h/1") else { panic!("heavy has a permit") };
            let first = t.enqueue(1, "/h/2");
            // A light request takes core 1's only tunnel.
            let Pick::Got(light) = t.pick(1, "/page") else { panic!("light goes ahead") };
            let next = t.enqueue(0, "/h/3");
            t.pools[0].release(heavy, true);
            t.deliver();
            assert!(handed(&first).is_none(), "no tunnel for it on core 1");
            let got = handed(&next).expect("the permit did not sit idle").expect("a lease");
            // Core 1's tunnel frees: its waiter is in line again and goes next.
            t.pools[1].release(light, true);
            t.deliver();
            assert!(handed(&first).is_none(), "the permit is taken");
            t.pools[0].leave_queue(&next);
            t.pools[0].release(got, true);
            t.deliver();
            let got = handed(&first).expect("handed").expect("a lease");
            t.pools[1].leave_queue(&first);
            t.pools[1].release(got, true);
            let held = t.placement.lock().get("w").map(|e| e.class_permits["heavy"].in_use());
            assert_eq!(held, Some(0), "every permit given back");
        });
    }
}
