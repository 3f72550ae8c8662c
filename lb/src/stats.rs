//! Counters kept per core on the hot path and read by the admin listener.
//!
//! Each counter is written only by its own core, with a relaxed load and store
//! (no read-modify-write, no contention); the admin core sums them at scrape
//! time. Cache padding keeps cores from sharing lines.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Adds `n` to a counter owned by the calling core.
#[inline]
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

#[inline]
pub(crate) fn set32(c: &AtomicU32, v: u32) {
    c.store(v, Ordering::Relaxed);
}

#[inline]
pub(crate) fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// One core's counters.
#[derive(Debug, Default)]
pub struct CoreStats {
    /// Requests answered (any status).
    pub requests: AtomicU64,
    /// Answered by a tunnel on the core that accepted the client connection.
    pub served_local: AtomicU64,
    /// Answered after the client connection was handed to this core because
    /// the accepting core had no tunnel for the route.
    pub served_migrated: AtomicU64,
    pub status_2xx: AtomicU64,
    pub status_3xx: AtomicU64,
    pub status_4xx: AtomicU64,
    pub status_5xx: AtomicU64,
    /// Requests retried on another tunnel after a tunnel failed before any
    /// response byte.
    pub retries: AtomicU64,
    pub clients_accepted: AtomicU64,
    /// Client connections refused because the core had `limits.max_clients`.
    pub clients_shed: AtomicU64,
    pub clients_handed_off: AtomicU64,
    /// TLS handshakes on client listeners that failed or timed out.
    pub tls_handshakes_failed: AtomicU64,
    pub active_clients: AtomicU64,
    pub tunnels_accepted: AtomicU64,
    pub setups_rejected: AtomicU64,
    pub queued: AtomicU64,
}

impl CoreStats {
    /// The one place a proxied response is counted, whatever the client
    /// protocol and tunnel kind: its status, and whether it was served on
    /// the core that accepted the client (`migrated`: after a hand-off).
    pub(crate) fn record_served(&self, status: u16, migrated: bool) {
        self.count_status(status);
        add(if migrated { &self.served_migrated } else { &self.served_local }, 1);
    }

    pub(crate) fn count_status(&self, status: u16) {
        let c = match status {
            200..=299 => &self.status_2xx,
            300..=399 => &self.status_3xx,
            400..=499 => &self.status_4xx,
            _ => &self.status_5xx,
        };
        add(c, 1);
        add(&self.requests, 1);
    }
}

/// One worker's numbers on one core.
#[derive(Debug, Default)]
pub struct WorkerCoreStats {
    pub tunnels: AtomicU32,
    pub in_flight: AtomicU32,
    pub requests: AtomicU64,
    /// Times this core ejected the worker (outlier detection).
    pub ejections: AtomicU64,
    /// Until when this core keeps it out of selection, in ms since the Unix
    /// epoch (0: never ejected).
    pub ejected_until_ms: AtomicU64,
    /// Until when the worker withdrew itself on this core (its
    /// `Retry-After`), ms since the Unix epoch (0: never).
    pub withdrawn_until_ms: AtomicU64,
    /// Why this core last ejected it (written on an ejection only, a rare
    /// event; read by `/status`).
    pub last_ejection: std::sync::Mutex<String>,
}

#[inline]
pub(crate) fn set_u64(c: &AtomicU64, v: u64) {
    c.store(v, Ordering::Relaxed);
}
