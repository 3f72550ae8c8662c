//! Log setup both binaries share: `tracing` events to stderr, one line each,
//! with time, level and the emitting module, as plain text (default) or JSON
//! (one object per line, for log shippers).
//!
//! The filter comes from `PTTH_LOG` (the `RUST_LOG` syntax: `info`,
//! `warn,ptth_lb=debug`, …); without it, the binary's default (`info`;
//! `error` with `--quiet`, `debug` with ptth-workerd's `--verbose`).
//! Writing a line never panics and never stops the process: a closed or full
//! stderr (`ptth-lb 2>&1 | head -1`) only loses lines. (`eprintln!` panics
//! on a write error, and the release profile aborts on panic.)

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Option<LogFormat> {
        match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// Sets the event filter of the subscriber [`init`] installed.
type SetFilter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static SET_FILTER: std::sync::OnceLock<SetFilter> = std::sync::OnceLock::new();

/// Whether `spec` is a valid filter (`info`, `warn,ptth_lb=debug`, ...);
/// the error says what is wrong with it.
pub fn check_filter(spec: &str) -> Result<(), String> {
    EnvFilter::try_new(spec).map(|_| ()).map_err(|e| format!("{spec:?} is not a log filter (info, warn,ptth_lb=debug, ...): {e}"))
}

/// The filter that applies: `PTTH_LOG` when set, else `default`.
fn filter(default: &str) -> Result<EnvFilter, String> {
    match std::env::var("PTTH_LOG") {
        Ok(spec) => EnvFilter::try_new(&spec).map_err(|e| format!("PTTH_LOG={spec:?}: {e}")),
        Err(_) => EnvFilter::try_new(default).map_err(|e| format!("{default:?}: {e}")),
    }
}

/// Installs the process-wide subscriber with `PTTH_LOG`'s filter, or
/// `default` (a filter such as `info`) when it is not set. Returns an error
/// naming a bad `PTTH_LOG`.
pub fn init(format: LogFormat, default: &str) -> Result<(), String> {
    let builder = tracing_subscriber::fmt().with_env_filter(filter(default)?).with_writer(Stderr).with_ansi(false);
    // A subscriber already set (a test harness, an embedding program) wins.
    match format {
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.try_init().is_ok() {
                let _ = SET_FILTER.set(Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())));
            }
        }
        LogFormat::Json => {
            let builder = builder.json().flatten_event(true).with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.try_init().is_ok() {
                let _ = SET_FILTER.set(Box::new(move |f| handle.reload(f).map_err(|e| e.to_string())));
            }
        }
    }
    Ok(())
}

/// A reload's filter: `default` from now on, unless `PTTH_LOG` is set (it
/// keeps winning). `Ok(false)`: nothing to change (no subscriber of ours,
/// or `PTTH_LOG` decides).
pub fn set_filter(default: &str) -> Result<bool, String> {
    let Some(set) = SET_FILTER.get() else { return Ok(false) };
    if std::env::var_os("PTTH_LOG").is_some() {
        return Ok(false);
    }
    set(filter(default)?)?;
    Ok(true)
}

/// stderr that swallows its write errors: a line that cannot be written is
/// dropped, the process goes on.
#[derive(Debug, Clone, Copy)]
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;
    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

/// Writes a line to stdout, ignoring a closed pipe (`ptth-lb demo | head`):
/// for the few messages meant for a terminal, not the log.
pub fn say(line: std::fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    let _ = out.write_fmt(line);
    let _ = out.write_all(b"\n");
}

/// A message for the operator before logging is set up (bad flags): to
/// stderr as `program: message`, never a panic if stderr is closed.
pub fn complain(program: &str, msg: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr(), "{program}: {msg}");
}

/// At most one line per second for a kind of event that peers can cause at
/// will (refused tunnel setups come from peers that are not, or not yet,
/// authenticated): they must not flood the log. The next line that gets
/// through says how many were left out. One per core, so plain cells.
#[derive(Debug, Default)]
pub struct LogThrottle {
    last: std::cell::Cell<Option<std::time::Instant>>,
    suppressed: std::cell::Cell<u64>,
}

impl LogThrottle {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

    /// Whether to log the event now, and how many were held back before it.
    pub fn admit(&self, now: std::time::Instant) -> Option<u64> {
        match self.last.get() {
            Some(t) if now.saturating_duration_since(t) < Self::EVERY => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.replace(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_line_a_second_through() {
        let log = LogThrottle::default();
        let t = std::time::Instant::now();
        assert_eq!(log.admit(t), Some(0));
        assert_eq!(log.admit(t), None);
        assert_eq!(log.admit(t + std::time::Duration::from_millis(500)), None);
        assert_eq!(log.admit(t + std::time::Duration::from_millis(1000)), Some(2));
    }
}
