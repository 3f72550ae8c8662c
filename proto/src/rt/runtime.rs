//! Builds the one monoio runtime each pinned thread runs: io_uring with the
//! ring flags measured fastest here (COOP_TASKRUN, or DEFER_TASKRUN), falling
//! back to the legacy epoll driver where io_uring is unavailable or forced off.
//! Timers are always enabled: every network wait in ptth carries a deadline.

use std::future::Future;
use std::io;

use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

/// Which I/O driver to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    /// io_uring where the kernel supports it, else legacy.
    Auto,
    /// io_uring or fail.
    Uring,
    /// The epoll-based legacy driver.
    Legacy,
}

impl DriverChoice {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(DriverChoice::Auto),
            "uring" | "io_uring" => Some(DriverChoice::Uring),
            "legacy" | "epoll" => Some(DriverChoice::Legacy),
            _ => None,
        }
    }
}

/// io_uring setup flags (see notes: SQPOLL is slower on small hosts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingFlags {
    None,
    /// IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG.
    CoopTaskrun,
    /// IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN.
    DeferTaskrun,
}

impl RingFlags {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(RingFlags::None),
            "coop_taskrun" => Some(RingFlags::CoopTaskrun),
            "defer_taskrun" => Some(RingFlags::DeferTaskrun),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            RingFlags::None => "none",
            RingFlags::CoopTaskrun => "coop_taskrun",
            RingFlags::DeferTaskrun => "defer_taskrun",
        }
    }
}

/// How to build a core's runtime.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeSpec {
    pub driver: DriverChoice,
    pub flags: RingFlags,
    /// Submission queue entries (monoio raises values below 256).
    pub entries: u32,
}

impl Default for RuntimeSpec {
    fn default() -> Self {
        RuntimeSpec { driver: DriverChoice::Auto, flags: RingFlags::CoopTaskrun, entries: 1024 }
    }
}

/// Environment variable that forces the legacy driver (as does monoio's own
/// `MONOIO_FORCE_LEGACY_DRIVER`).
pub const FORCE_LEGACY_ENV: &str = "PTTH_FORCE_LEGACY";

/// A built runtime, on whichever driver was available.
pub enum Runtime {
    Uring(monoio::Runtime<TimeDriver<IoUringDriver>>),
    Legacy(monoio::Runtime<TimeDriver<LegacyDriver>>),
}

/// Which driver a runtime got, and why it is not io_uring when it could
/// have been.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Driver {
    /// e.g. `io_uring (1024 entries, flags coop_taskrun)` or `legacy epoll`.
    pub description: String,
    /// Set when `auto` fell back to epoll: the kernel's answer and how to
    /// get io_uring back.
    pub fallback: Option<String>,
}

impl std::fmt::Display for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.fallback {
            Some(why) => write!(f, "{} (io_uring unavailable: {why})", self.description),
            None => f.write_str(&self.description),
        }
    }
}

/// Why `io_uring_setup` failed, in the terms an operator can act on.
pub fn uring_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        // Before Linux 5.12 rings are charged to RLIMIT_MEMLOCK.
        Some(12) => "the locked-memory limit is too low for the ring: raise it (ulimit -l, systemd LimitMEMLOCK=, memlock in /etc/security/limits.conf) or lower runtime.ring_entries",
        Some(1) => "io_uring is forbidden for this process: sysctl kernel.io_uring_disabled, or a seccomp profile (Docker's default blocks io_uring_setup; allow it, or run with --security-opt seccomp=...)",
        Some(38) => "the kernel has no io_uring (Linux 5.6 or later is needed), or a seccomp filter hides it",
        Some(22) => "the kernel refused the ring parameters: try runtime.ring_flags = \"none\" or fewer runtime.ring_entries",
        _ => "see the kernel's error",
    }
}

impl Runtime {
    /// Builds the runtime and says which driver and flags it got.
    pub fn build(spec: &RuntimeSpec) -> io::Result<(Runtime, Driver)> {
        let forced = std::env::var_os(FORCE_LEGACY_ENV).is_some_and(|v| v != "0")
            || std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_some_and(|v| v != "0");
        let driver = if forced { DriverChoice::Legacy } else { spec.driver };
        let mut last_err = None;
        if driver != DriverChoice::Legacy {
            let tries = if spec.flags == RingFlags::None { vec![RingFlags::None] } else { vec![spec.flags, RingFlags::None] };
            for flags in tries {
                let mut b = io_uring::IoUring::builder();
                match flags {
                    RingFlags::None => {}
                    RingFlags::CoopTaskrun => {
                        b.setup_coop_taskrun().setup_taskrun_flag();
                    }
                    RingFlags::DeferTaskrun => {
                        b.setup_single_issuer().setup_defer_taskrun();
                    }
                }
                let built = RuntimeBuilder::<IoUringDriver>::new().with_entries(spec.entries).uring_builder(b).enable_timer().build();
                match built {
                    Ok(rt) => {
                        let description = format!("io_uring ({} entries, flags {})", spec.entries, flags.as_str());
                        return Ok((Runtime::Uring(rt), Driver { description, fallback: None }));
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            if driver == DriverChoice::Uring {
                let e = last_err.unwrap_or_else(|| io::Error::other("io_uring unavailable"));
                return Err(io::Error::new(e.kind(), format!("io_uring (runtime.driver = \"uring\"): {e}; {}", uring_hint(&e))));
            }
        }
        let rt = RuntimeBuilder::<LegacyDriver>::new().enable_timer().build()?;
        let description = if forced { "legacy epoll (forced by the environment)" } else { "legacy epoll" }.to_string();
        let fallback = last_err.map(|e| format!("{e}; {}", uring_hint(&e)));
        Ok((Runtime::Legacy(rt), Driver { description, fallback }))
    }

    pub fn is_uring(&self) -> bool {
        matches!(self, Runtime::Uring(_))
    }

    pub fn block_on<F: Future>(&mut self, fut: F) -> F::Output {
        match self {
            // Waits' timers are kept for reuse while the runtime runs.
            Runtime::Uring(rt) => rt.block_on(scoped(fut)),
            Runtime::Legacy(rt) => rt.block_on(scoped(fut)),
        }
    }
}

async fn scoped<F: Future>(fut: F) -> F::Output {
    let _scope = crate::rt::deadline::Scope::enter();
    fut.await
}

/// The CPUs this process may run on (honours taskset/cpuset masks).
pub fn allowed_cpus() -> Vec<core_affinity::CoreId> {
    core_affinity::get_core_ids().unwrap_or_default()
}

/// Pins the calling thread to the `index`-th allowed CPU; a failure is
/// reported to the caller, not fatal (containers may forbid it).
pub fn pin_to(index: usize) -> Option<usize> {
    let ids = allowed_cpus();
    let id = *ids.get(index % ids.len().max(1))?;
    core_affinity::set_for_current(id).then_some(id.id)
}

/// The open-file soft limit in force, and the hard one.
#[allow(unsafe_code)]
fn open_file_limits() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one `rlimit` through a valid, exclusive pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    Some((lim.rlim_cur, lim.rlim_max))
}

/// How many descriptors this process may open (the soft limit).
pub fn open_files() -> Option<u64> {
    open_file_limits().map(|(soft, _)| soft)
}

/// Raises this process's open-file soft limit to its hard limit: every
/// client connection and tunnel is a descriptor, and the usual soft limit
/// of 1024 would cap a balancer far below its configured limits.
#[allow(unsafe_code)]
pub fn raise_open_files() {
    let Some((soft, hard)) = open_file_limits() else { return };
    if soft < hard {
        let raised = libc::rlimit { rlim_cur: hard, rlim_max: hard };
        // SAFETY: setrlimit reads one `rlimit` through a valid pointer.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    }
}
