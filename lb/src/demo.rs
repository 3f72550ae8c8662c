//! `ptth-lb demo`: the balancer and two in-process workers serving a small
//! built-in app, so one command shows the whole path: client → lb → tunnel
//! (dialed by the worker) → worker.

use std::time::{Duration, Instant};

use ptth_workerd::{Exchange, Handler, Responder};

/// The demo app: `/` greets with the worker's name, `/echo` echoes,
/// `/slow` answers after a second.
pub struct DemoApp {
    pub name: String,
}

impl Handler for DemoApp {
    async fn handle(&self, ex: &mut Exchange<'_>) -> Result<(), ptth_workerd::Error> {
        let path = ex.target().split('?').next().unwrap_or("").to_string();
        match path.as_str() {
            "/echo" => Responder::Echo.handle(ex).await,
            "/slow" => {
                monoio::time::sleep(Duration::from_secs(1)).await;
                ex.respond(200, &[("Content-Type", "text/plain")], format!("slow hello from {}\n", self.name).as_bytes()).await
            }
            "/" => ex.respond(200, &[("Content-Type", "text/plain")], format!("hello from {}\n", self.name).as_bytes()).await,
            _ => ex.respond(404, &[("Content-Type", "text/plain")], b"the demo app serves /, /echo and /slow\n").await,
        }
    }
}

/// Starts the demo workers against `lb`'s tunnel listener and waits until
/// they cover every core (or `wait` passes).
pub fn start_workers(tunnel: std::net::SocketAddr, wait: Duration) -> Result<Vec<ptth_workerd::Worker>, ptth_workerd::Error> {
    let mut workers = Vec::new();
    for name in ["demo-1", "demo-2"] {
        let mut cfg = ptth_workerd::Config { lbs: vec![tunnel.to_string()], tunnels_per_core: 4, quiet: true, ..Default::default() };
        cfg.meta.id = Some(name.to_string());
        let n = name.to_string();
        workers.push(ptth_workerd::serve(cfg, move || DemoApp { name: n.clone() })?);
    }
    let until = Instant::now() + wait;
    while Instant::now() < until && !workers.iter().all(|w| w.is_covered()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(workers)
}
