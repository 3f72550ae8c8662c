//! HTTP/2 tunnels at the lb: the setup's other half (client preface and
//! SETTINGS) and the connection task with PING liveness.
//!
//! Place in the request path: under every stream the exchange
//! (`exchange::run`) opens on an h2 tunnel. The worker's SETTINGS_MAX_CONCURRENT_STREAMS
//! bounds the streams per tunnel (checked in `tunnel::pool`); the first
//! GOAWAY stops new streams on the tunnel, and streams the worker did not
//! process (above its last stream id, or refused) are retried elsewhere
//! (RFC 9113 §8.7).

use std::io;
use std::rc::Rc;

use bytes::Bytes;
use ptth_proto::rt::h2io::{Windows, MAX_FRAME};
use ptth_proto::rt::io::Prefixed;

use crate::percore::Core;
use crate::tunnel::pool::H2Tunnel;

/// The byte stream under an h2 tunnel.
pub(crate) type H2Io = Prefixed<ptth_proto::rt::tls::MaybeTlsPoll<rustls::ServerConnection>>;

/// Completes the client side of an h2 tunnel after the `101`: sends the
/// preface and SETTINGS, then runs the connection (with a PING every
/// `ping_every`, each answered within `ping_timeout`) until it ends.
pub(crate) async fn handshake(
    stream: crate::tunnel::TunnelStream,
    windows: Windows,
) -> Result<(h2::client::SendRequest<Bytes>, h2::client::Connection<H2Io, Bytes>), io::Error> {
    let io = Prefixed::new(Vec::new(), stream.into_poll()?);
    h2::client::Builder::new()
        .initial_window_size(windows.stream)
        .initial_connection_window_size(windows.connection)
        .max_frame_size(MAX_FRAME)
        .enable_push(false)
        .handshake(io)
        .await
        .map_err(io::Error::other)
}

/// Drives an h2 tunnel's connection until it closes, a PING goes unanswered,
/// or the core is killed; then tells the pool.
pub(crate) async fn drive(core: Rc<Core>, mut conn: h2::client::Connection<H2Io, Bytes>, tunnel: Rc<H2Tunnel>, worker: Rc<str>) {
    let cfg = core.cfg();
    let p = &cfg.profile;
    let mut pinger = conn.ping_pong();
    let kill = core.kill.clone();
    let mut conn = std::pin::pin!(conn);
    let why = loop {
        let tick = monoio::time::sleep(p.ping_every);
        monoio::select! {
            r = &mut conn => break r.err().map(|e| e.to_string()),
            _ = kill.wait() => break None,
            _ = tick => {
                let Some(pp) = pinger.as_mut() else { continue };
                // The connection must keep being driven while we wait for the pong.
                let pong = ptth_proto::rt::deadline::within(p.ping_timeout, pp.ping(h2::Ping::opaque()));
                monoio::select! {
                    r = &mut conn => break r.err().map(|e| e.to_string()),
                    _ = kill.wait() => break None,
                    r = pong => match r {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break Some(format!("ping failed: {e}")),
                        Err(_) => break Some(format!("no PING answer within {:?}", p.ping_timeout)),
                    },
                }
            }
        }
    };
    if let Some(why) = why {
        tracing::info!(core = core.id, worker = %worker, "h2 tunnel closed: {why}");
    }
    core.pool.borrow_mut().h2_closed(&tunnel);
}
