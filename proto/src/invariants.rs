//! Properties of the parsers that must hold for every input: what the fuzz
//! targets (`proto/fuzz/`) check, and what `cargo test` checks again on every
//! file of the checked-in corpus and every crash ever found, so a fixed bug
//! stays fixed without a fuzzer installed.
//!
//! The central one is [`forward_agrees`], the differential check: the lb and
//! the worker (one hop later, reading what the lb wrote) agree on every
//! message boundary. Each function panics when its property fails; an error
//! result from a parser is fine (the input was refused).

use crate::h1::{self, BodyDecoder, Forwarding, Framing, Limits, Parsed, RequestHead, ResponseHead, Version};

/// Bodies are decoded in one pass and byte by byte, and both agree: the
/// payload, where the body ends, and whether it is valid do not depend on how
/// the bytes were split into reads.
pub fn chunked_split_invariant(input: &[u8]) {
    let whole = decode_body(Framing::Chunked, &[input]);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    let split = decode_body(Framing::Chunked, &bytes);
    assert_eq!(whole, split, "chunked decoding depends on read boundaries");
    if let Some(at) = input.len().checked_div(2) {
        let halves = decode_body(Framing::Chunked, &[&input[..at], &input[at..]]);
        assert_eq!(whole, halves, "chunked decoding depends on read boundaries");
    }
}

/// (payload, bytes consumed, trailer section, done) or the error's text.
type BodyOutcome = Result<(Vec<u8>, usize, Vec<u8>, bool), String>;

fn decode_body(framing: Framing, parts: &[&[u8]]) -> BodyOutcome {
    let mut d = BodyDecoder::new(framing);
    let (mut payload, mut trailers, mut consumed) = (Vec::new(), Vec::new(), 0);
    for part in parts {
        let mut at = 0;
        while at < part.len() && !d.is_done() {
            let in_trailers = d.in_trailers();
            let step = d.decode(&part[at..]).map_err(|e| e.to_string())?;
            assert!(step.consumed <= part.len() - at && step.data.end <= step.consumed, "step out of bounds");
            if in_trailers {
                trailers.extend_from_slice(&part[at..at + step.consumed]);
            }
            payload.extend_from_slice(&part[at..][step.data.clone()]);
            at += step.consumed;
            if step.consumed == 0 && !d.is_done() {
                panic!("decoder made no progress");
            }
        }
        consumed += at;
        if d.is_done() {
            break;
        }
    }
    Ok((payload, consumed, trailers, d.is_done()))
}

/// A request head the parser accepts is written back in a form the parser
/// accepts again with the same method, framing and target.
pub fn request_head_round_trip(input: &[u8]) {
    let mut head = RequestHead::default();
    let Ok(Parsed::Complete) = h1::parse_request(input, &Limits::default(), &mut head) else { return };
    assert!(head.len <= input.len());
    let Some(out) = forward(input, &head, Some("192.0.2.1:1".parse().expect("literal"))) else { return };
    let mut again = RequestHead::default();
    let r = h1::parse_request(&out, &h1::TUNNEL_LIMITS, &mut again);
    assert_eq!(r, Ok(Parsed::Complete), "forwarded head does not parse: {:?}", String::from_utf8_lossy(&out));
    assert_eq!(again.len, out.len());
    assert_eq!(again.method(&out), head.method(input));
    assert_eq!(again.framing(), head.framing());
    assert_eq!(again.version(), Version::Http11);
    assert!(!again.conn.upgrade, "an upgrade survived the hop");
}

/// The head the lb forwards for `head`, or `None` when the lb refuses the
/// request before forwarding (invalid Host, bad percent-encoding, CONNECT).
fn forward(input: &[u8], head: &RequestHead, client: Option<std::net::SocketAddr>) -> Option<Vec<u8>> {
    if head.form == h1::TargetForm::Authority {
        return None;
    }
    let host = h1::request_authority(input, head);
    if !h1::is_valid_authority(host) {
        return None;
    }
    let mut target = Vec::new();
    h1::write_normalized_target(&mut target, h1::origin_form(head.target(input))).ok()?;
    let client = client.map(h1::ClientAddr::new);
    let fwd = Forwarding { client: client.as_ref(), proto: "http", host, target: &target, keep_client_forwarded: false, x_forwarded: true };
    let mut out = Vec::new();
    h1::write_request_head(&mut out, input, head, &fwd);
    Some(out)
}

/// The differential check on message boundaries. `input` is what a client
/// sent on one connection. The lb frames the first request (head and body)
/// and forwards it; the worker, reading the forwarded bytes, must frame
/// exactly one request with the same method, target, framing and payload,
/// ending exactly where the forwarded bytes end. Whatever the client sent
/// after the lb's boundary never reaches the worker as part of this request:
/// no input can make the two hops disagree on where a message ends.
pub fn forward_agrees(input: &[u8]) {
    let mut head = RequestHead::default();
    let Ok(Parsed::Complete) = h1::parse_request(input, &Limits::default(), &mut head) else { return };
    let Some(mut wire) = forward(input, &head, Some("192.0.2.1:1".parse().expect("literal"))) else { return };
    let head_len = wire.len();
    // The lb relays the body in its received framing, as far as it is valid.
    let rest = &input[head.len..];
    let mut dec = BodyDecoder::new(head.framing());
    let Ok(n) = dec.scan(rest) else { return };
    if !dec.is_done() {
        // Incomplete: the lb would wait for more; nothing to compare yet.
        return;
    }
    wire.extend_from_slice(&rest[..n]);
    let Ok((lb_payload, _, lb_trailers, _)) = decode_body(head.framing(), &[&rest[..n]]) else { unreachable!("scan accepted it") };

    // One hop later: the worker's parse of exactly what the lb wrote.
    let mut w = RequestHead::default();
    assert_eq!(h1::parse_request(&wire, &h1::TUNNEL_LIMITS, &mut w), Ok(Parsed::Complete), "worker refuses the lb's head");
    assert_eq!(w.len, head_len, "worker and lb disagree on where the head ends");
    assert_eq!(w.method(&wire), head.method(input));
    assert_eq!(w.framing(), head.framing(), "worker frames the body differently");
    let body = &wire[w.len..];
    let (payload, consumed, trailers, done) = decode_body(w.framing(), &[body]).expect("worker refuses a body the lb accepted");
    assert!(done, "worker sees the body unfinished");
    assert_eq!(consumed, body.len(), "worker sees bytes after the body: a second request");
    assert_eq!(payload, lb_payload);
    assert_eq!(trailers, lb_trailers);

    // And the sidecar's rewrite toward the origin is a fixed point of it.
    let Some(again) = forward(&wire, &w, None) else { panic!("the sidecar refuses the lb's head") };
    let mut o = RequestHead::default();
    assert_eq!(h1::parse_request(&again, &h1::TUNNEL_LIMITS, &mut o), Ok(Parsed::Complete));
    assert_eq!(o.target(&again), w.target(&wire), "normalization is not idempotent");
    assert_eq!(o.framing(), w.framing());
}

/// A response head the parser accepts is written in a form it accepts again,
/// with the same status and framing (the framing field comes from the
/// decision, so `Connection` cannot change it).
pub fn response_head_round_trip(input: &[u8]) {
    for request_was_head in [false, true] {
        let mut head = ResponseHead::default();
        let Ok(Parsed::Complete) = h1::parse_response(input, &Limits::default(), request_was_head, &mut head) else { continue };
        let mut out = Vec::new();
        h1::write_response_head(&mut out, input, &head, Version::Http11, h1::Persist::KeepAlive, false);
        let mut again = ResponseHead::default();
        let r = h1::parse_response(&out, &h1::TUNNEL_LIMITS, request_was_head, &mut again);
        assert_eq!(r, Ok(Parsed::Complete), "relayed head does not parse: {:?}", String::from_utf8_lossy(&out));
        assert_eq!(again.status, head.status);
        assert_eq!(again.len, out.len());
        // A close-delimited body stays close-delimited; everything else keeps its framing.
        assert_eq!(again.framing(), head.framing(), "{:?}", String::from_utf8_lossy(&out));
    }
}

/// The setup parser never panics, and what it accepts is within the bounds
/// the docs give.
pub fn setup_bounds(input: &[u8]) {
    let mut head = RequestHead::default();
    let Ok(Parsed::Complete) = h1::parse_request(input, &Limits::default(), &mut head) else { return };
    let Ok(req) = crate::setup::SetupRequest::parse(input, &head) else { return };
    assert!((1..=crate::setup::MAX_WEIGHT).contains(&req.meta.weight));
    assert!(req.meta.routes.len() <= crate::setup::MAX_ROUTES);
    assert!(req.meta.id.as_ref().is_none_or(|id| !id.is_empty() && id.len() <= crate::setup::MAX_WORKER_ID_LEN));
    if let crate::setup::Claim::Origins(o) = &req.claim {
        assert!(!o.is_empty() && o.len() <= crate::setup::MAX_ORIGINS);
    }
}

/// Structured Field parsers never panic; an sf-string, a list or a class
/// declaration they accept serializes back to something they parse to the
/// same value.
pub fn sf_round_trip(input: &[u8]) {
    if let Some(s) = crate::sf::parse_string(input) {
        let back = crate::sf::string(&s).expect("a parsed sf-string serializes");
        assert_eq!(crate::sf::parse_string(back.as_bytes()).as_deref(), Some(s.as_str()));
    }
    let _ = crate::sf::parse_integer(input);
    if let Some(list) = crate::sf::parse_string_list(input) {
        let joined: Vec<String> = list.iter().map(|s| crate::sf::string(s).expect("serializes")).collect();
        assert_eq!(crate::sf::parse_string_list(joined.join(", ").as_bytes()), Some(list));
    }
    let _ = crate::sf::parse_string_dictionary(input);
    let _ = crate::sf::is_true(input);
    if let Some(u) = crate::sf::priority_urgency(input) {
        assert!(u <= 7);
    }
    // A class declaration the lb accepts is written back as one it reads
    // the same (workerd writes what its flags parsed).
    if let Ok(classes) = crate::setup::parse_classes(input) {
        assert!(classes.len() <= crate::setup::MAX_CLASSES);
        let back = crate::setup::write_classes(&classes);
        assert_eq!(crate::setup::parse_classes(back.as_bytes()), Ok(classes), "{back}");
    }
}

/// Every property above, for inputs of unknown kind (the corpus replay).
pub fn all(input: &[u8]) {
    chunked_split_invariant(input);
    request_head_round_trip(input);
    forward_agrees(input);
    response_head_round_trip(input);
    setup_bounds(input);
    sf_round_trip(input);
}

#[cfg(test)]
mod tests {
    /// Replays the checked-in fuzz corpus and every kept crash through every
    /// property (`proto/fuzz/corpus/*/*`, `proto/fuzz/regressions/*/*`).
    #[test]
    fn corpus_and_regressions_replay() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz");
        let mut files = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(targets) = std::fs::read_dir(format!("{root}/{dir}")) else { continue };
            for t in targets.flatten() {
                for f in std::fs::read_dir(t.path()).into_iter().flatten().flatten() {
                    let bytes = std::fs::read(f.path()).expect("readable corpus file");
                    let r = std::panic::catch_unwind(|| super::all(&bytes));
                    assert!(r.is_ok(), "{} fails a property", f.path().display());
                    files += 1;
                }
            }
        }
        assert!(files >= 20, "corpus missing: found {files} files under {root}");
    }
}
