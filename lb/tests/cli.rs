//! The ptth-lb command line: bad input is one line naming what to fix, exit 2.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ptth-lb")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let dir = std::env::temp_dir().join(format!("ptth-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad_cfg = dir.join("bad.toml");
    std::fs::write(&bad_cfg, "[listen]\nclinet = [\"127.0.0.1:1\"]\n").unwrap();
    let bad_profile = dir.join("bad-profile.toml");
    std::fs::write(&bad_profile, "[queue]\nmax_wait_ms = 0\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--cores", "zero"], "--cores"),
        (vec!["--listen", "localhost"], "--listen"),
        (vec!["--frobnicate"], "--frobnicate"),
        (vec!["--config", bad_cfg.to_str().unwrap()], "clinet"),
        (vec!["--profile", bad_profile.to_str().unwrap()], "queue.max_wait_ms"),
        (vec!["--driver", "turbo"], "--driver"),
    ];
    for (args, needle) in cases {
        let (code, err) = run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line, got {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn help_and_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_ptth-lb")).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--tunnel-listen"));
}

#[test]
fn busy_port_is_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let (code, err) = run(&["--listen", &addr, "--tunnel-listen", "127.0.0.1:0", "--admin-listen", "off"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&addr) && err.contains("client"), "{err}");
}
