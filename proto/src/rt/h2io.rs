//! Glue around the `h2` crate both binaries share: flow-controlled sends,
//! capacity-releasing receives, and the HTTP/1.1 ↔ HTTP/2 field rules.
//!
//! Windows are raised well above h2's 64 KiB defaults: with the defaults,
//! many concurrent streams stall (measured 33 s vs 0.7 s for 2000 × 64 KiB,
//! shared/notes/monoio.md §4).

use std::future::poll_fn;

use bytes::Bytes;

/// Initial stream window (SETTINGS_INITIAL_WINDOW_SIZE), bytes.
pub const STREAM_WINDOW: u32 = 1 << 20;
/// Initial connection window, bytes.
pub const CONN_WINDOW: u32 = 8 << 20;
/// Largest DATA frame we send.
pub const MAX_FRAME: u32 = 64 * 1024;

/// Sends `data` on `s`, waiting for flow-control capacity as it goes, so a
/// large body never piles up in h2's send buffer. `eos` ends the stream
/// after the last byte.
pub async fn send_data(s: &mut h2::SendStream<Bytes>, mut data: Bytes, eos: bool) -> Result<(), h2::Error> {
    if data.is_empty() {
        return if eos { s.send_data(Bytes::new(), true) } else { Ok(()) };
    }
    while !data.is_empty() {
        s.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| s.poll_capacity(cx)).await {
            Some(r) => r?,
            None => return Err(h2::Error::from(h2::Reason::CANCEL)),
        };
        if granted == 0 {
            continue;
        }
        let chunk = data.split_to(granted.min(data.len()));
        s.send_data(chunk, eos && data.is_empty())?;
    }
    Ok(())
}

/// The next DATA payload of `body`, with its flow-control capacity released
/// so the peer may send more. `None` at the end of the stream.
pub async fn recv_data(body: &mut h2::RecvStream) -> Option<Result<Bytes, h2::Error>> {
    let r = body.data().await?;
    if let Ok(b) = &r {
        let _ = body.flow_control().release_capacity(b.len());
    }
    Some(r)
}

/// Fields that are connection-specific in HTTP/1.1 and forbidden in HTTP/2
/// (RFC 9113 §8.2.2), plus `Host`, which becomes `:authority`.
pub fn is_h1_only(name: &[u8]) -> bool {
    const ONLY: [&[u8]; 9] =
        [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te", b"host", b"http2-settings", b"expect"];
    ONLY.iter().any(|h| h.eq_ignore_ascii_case(name))
}
