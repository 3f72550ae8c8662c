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

impl Runtime {
    /// Builds the runtime and says which driver and flags it got.
    pub fn build(spec: &RuntimeSpec) -> io::Result<(Runtime, String)> {
        let forced = std::env::var_os(FORCE_LEGACY_ENV).is_some_and(|v| v != "0")
            || std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_some_and(|v| v != "0");
        let driver = if forced { DriverChoice::Legacy } else { spec.driver };
        if driver != DriverChoice::Legacy {
            let mut last_err = None;
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
                    Ok(rt) => return Ok((Runtime::Uring(rt), format!("io_uring ({} entries, flags {})", spec.entries, flags.as_str()))),
                    Err(e) => last_err = Some(e),
                }
            }
            if driver == DriverChoice::Uring {
                return Err(last_err.unwrap_or_else(|| io::Error::other("io_uring unavailable")));
            }
        }
        let rt = RuntimeBuilder::<LegacyDriver>::new().enable_timer().build()?;
        let why = if forced {
            "legacy epoll (forced)"
        } else if driver == DriverChoice::Legacy {
            "legacy epoll"
        } else {
            "legacy epoll (io_uring unavailable)"
        };
        Ok((Runtime::Legacy(rt), why.to_string()))
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
