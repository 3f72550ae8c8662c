//! The ptth-workerd command line: bad input is one line naming what to fix, exit 2.

use std::process::Command;

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    for (args, needle) in [
        (vec!["--respond", "hello"], "--lb"),
        (vec!["--lb", "127.0.0.1:1"], "--origin"),
        (vec!["--lb", "127.0.0.1:1", "--respond", "fast"], "--respond"),
        (vec!["--lb", "127.0.0.1:1", "--respond", "hello", "--weight", "0"], "--weight"),
        (vec!["--lb", "127.0.0.1:1", "--respond", "hello", "--claim", "ftp://x"], "--claim"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ptth-workerd")).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
