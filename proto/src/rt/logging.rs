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

/// Installs the process-wide subscriber with `PTTH_LOG`'s filter, or
/// `default` (a level such as `info`) when it is not set. Returns an error
/// naming a bad `PTTH_LOG`.
pub fn init(format: LogFormat, default: &str) -> Result<(), String> {
    let filter = match std::env::var("PTTH_LOG") {
        Ok(spec) => EnvFilter::try_new(&spec).map_err(|e| format!("PTTH_LOG={spec:?}: {e}"))?,
        Err(_) => EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(Stderr).with_ansi(false);
    let done = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A subscriber already set (a test harness, an embedding program) wins.
    let _ = done;
    Ok(())
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
