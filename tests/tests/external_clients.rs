//! Real third-party clients against ptth: curl (HTTP/1.1 and h2c prior
//! knowledge) and h2load. .ci/run installs them and sets PTTH_REQUIRE_TOOLS=1,
//! so there a missing tool fails the test; elsewhere it is skipped with a note.

use std::process::Command;

use ptth_tests::*;
use ptth_workerd::{InnerProtocol, Responder};

#[test]
fn curl_http11_and_h2c() {
    if !tool("curl") {
        return;
    }
    for inner in [InnerProtocol::H2, InnerProtocol::Http11] {
        let lb = start_lb(2, |_| {});
        let mut cfg = worker_config(&lb, "w", 2);
        cfg.protocols = vec![inner];
        let _w = start_worker(cfg, || Responder::Echo);
        let url = format!("http://{}/curl", lb.client_addr());
        for extra in [&[][..], &["--http2-prior-knowledge"][..]] {
            let out = Command::new("curl")
                .args(["-s", "-S", "--max-time", "10", "-d", "from curl", "-w", "\n%{http_code} %{http_version}"])
                .args(extra)
                .arg(&url)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let want = if extra.is_empty() { "200 1.1" } else { "200 2" };
            assert!(text.trim_end().ends_with(want), "{inner:?} {extra:?}: {text}");
            assert!(text.contains("POST /curl\n") && text.contains("from curl"), "{text}");
        }
    }
}

#[test]
fn h2load_all_requests_succeed() {
    if !tool("h2load") {
        return;
    }
    for inner in [InnerProtocol::H2, InnerProtocol::Http11] {
        let lb = start_lb(2, |_| {});
        let mut cfg = worker_config(&lb, "w", 2);
        cfg.protocols = vec![inner];
        let _w = start_worker(cfg, || Responder::Hello);
        let out = Command::new("timeout")
            .args(["30", "h2load", "-n", "4000", "-c", "4", "-m", "16"])
            .arg(format!("http://{}/", lb.client_addr()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("4000 succeeded, 0 failed, 0 errored"), "{inner:?}: {text}");
        assert!(text.contains("4000 2xx"), "{text}");
    }
}
