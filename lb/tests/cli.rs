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

/// `ptth-lb … 2>&1 | head -1`: once the log pipe's reader is gone, log lines
/// (here: refused tunnel setups) are lost, and the lb keeps serving.
#[test]
fn a_closed_log_pipe_does_not_stop_the_lb() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_ptth-lb"))
        .args(["--listen", "127.0.0.1:0", "--tunnel-listen", "127.0.0.1:0", "--admin-listen", "off", "--cores", "1"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains(" started ") {
        line.clear();
        assert!(log.read_line(&mut line).unwrap() > 0, "lb exited before starting");
    }
    let field = |name: &str| -> std::net::SocketAddr {
        line.split_whitespace().find_map(|f| f.strip_prefix(name)).unwrap_or_else(|| panic!("{name} in {line}")).parse().unwrap()
    };
    let (client, tunnel) = (field("clients="), field("tunnels="));
    drop(log);
    for _ in 0..3 {
        let mut s = std::net::TcpStream::connect(tunnel).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /.well-known/ptth/*/ HTTP/1.1\r\nHost: lb\r\nConnection: Upgrade\r\nUpgrade: ptth\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    let mut c = std::net::TcpStream::connect(client).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(child.try_wait().unwrap().is_none(), "the lb died");
    child.kill().unwrap();
    let _ = child.wait();
}
