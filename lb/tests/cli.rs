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

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ptth-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `ptth-lb check` (and nginx's `-t`): exit 0 with the effective config on
/// stdout, every default filled in; a bad file: exit 2, naming the file,
/// the line and the key, and the profile path taken from the config file's
/// directory.
#[test]
fn check_validates_and_prints_the_effective_config() {
    let d = temp_dir("check");
    std::fs::create_dir_all(d.join("conf")).unwrap();
    let cfg = d.join("conf/lb.toml");
    std::fs::write(&cfg, "profile = \"p.toml\"\n[listen]\nclient = [\"127.0.0.1:8080\"]\n").unwrap();
    std::fs::write(d.join("conf/p.toml"), "[timeouts]\nheader_ms = 1234\n").unwrap();
    for first in ["check", "-t"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ptth-lb")).args([first, "--config", cfg.to_str().unwrap()]).output().unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains("header_ms = 1234"), "the profile, found beside the config file:\n{stdout}");
        assert!(stdout.contains("keepalive_ms = 60000"), "defaults filled in:\n{stdout}");
        assert!(stdout.contains("client = [\"127.0.0.1:8080\"]"), "{stdout}");
        assert!(stderr.contains("the config is valid"), "{stderr}");
    }
    std::fs::write(d.join("conf/p.toml"), "[timeouts]\n\nheader_ms = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ptth-lb")).args(["check", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let p = d.join("conf/p.toml");
    assert!(stderr.contains(&format!("{} line 3: timeouts.header_ms: expected 1 to 86400000, got 0", p.display())), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout for an invalid config");
}

/// A running `ptth-lb` as a test drives it: its log lines arrive on a
/// channel, so a test waits for the one it expects (bounded).
struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_ptth-lb")).args(args).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }

    /// The next log line containing `needle`.
    fn line(&self, needle: &str) -> String {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    answer
}

/// SIGHUP reads the config and profile files again: one log line naming
/// what changed; an invalid file or a fixed setting is refused with one
/// line naming it, and the running config stays; SIGTERM still drains and
/// exits 0.
#[test]
fn sighup_reloads_the_files_and_refuses_a_bad_one() {
    let d = temp_dir("hup");
    let cfg = d.join("lb.toml");
    let base = "profile = \"p.toml\"\n[listen]\nclient = [\"127.0.0.1:0\"]\ntunnel = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n";
    std::fs::write(&cfg, base).unwrap();
    std::fs::write(d.join("p.toml"), "[queue]\nmax_waiting = 5\n").unwrap();
    let mut lb = Running::start(&["--config", cfg.to_str().unwrap(), "--cores", "2"]);
    let admin = lb.line("admin on http://");
    let admin = admin.split("http://").nth(1).and_then(|a| a.strip_suffix("/status")).unwrap().to_string();

    std::fs::write(d.join("p.toml"), "[queue]\nmax_waiting = 9\n").unwrap();
    lb.signal("-HUP");
    let l = lb.line("reload");
    assert!(l.contains("reloaded: queue.max_waiting = 9"), "{l}");
    assert!(get(&admin, "/status").contains("\"config_reloads\": 1"), "counted in /status");

    std::fs::write(d.join("p.toml"), "[queue]\nmax_wait_ms = 0\n").unwrap();
    lb.signal("-HUP");
    let l = lb.line("reload");
    assert!(l.contains("reload refused, the running config stays") && l.contains("p.toml line 2: queue.max_wait_ms"), "{l}");

    std::fs::write(d.join("p.toml"), "[queue]\nmax_waiting = 9\n").unwrap();
    std::fs::write(&cfg, base.replace("client = [\"127.0.0.1:0\"]", "client = [\"127.0.0.1:0\", \"127.0.0.1:0\"]")).unwrap();
    lb.signal("-HUP");
    let l = lb.line("reload");
    assert!(l.contains("reload refused") && l.contains("listen.client cannot change while ptth-lb runs"), "{l}");
    assert!(get(&admin, "/status").contains("\"config_reloads\": 1"), "refusals are not reloads");

    lb.signal("-TERM");
    let status = lb.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM drains and exits 0");
}

/// A restart for what a reload cannot change: the new ptth-lb binds the
/// same ports with `--share-listeners` while the old one holds them, the
/// old one is told to stop, and the new one serves. Without the flag the
/// busy port is refused (busy_port_is_a_clear_error).
#[test]
fn a_new_lb_starts_beside_the_old_one_with_share_listeners() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    let addr = format!("127.0.0.1:{port}");
    let args = ["--listen", &addr, "--tunnel-listen", "127.0.0.1:0", "--admin-listen", "off", "--cores", "1"];
    let mut old = Running::start(&args);
    old.line(" started ");
    let mut with_flag = args.to_vec();
    with_flag.push("--share-listeners");
    let new = Running::start(&with_flag);
    new.line(" started ");
    old.signal("-TERM");
    assert_eq!(old.child.wait().unwrap().code(), Some(0));
    // No worker is connected: the new lb answers 503 itself.
    assert!(get(&addr, "/").starts_with("HTTP/1.1 503"), "the new lb serves the port");
}
