//! Built-in responders for tests and benchmarks (`--respond SPEC`): `hello`,
//! `echo`, and `delay=MS`, a stand-in for heavy requests.

use std::time::Duration;

use crate::error::Error;
use crate::tunnel::{Exchange, Handler};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Responder {
    /// 200 `hello\n`.
    Hello,
    /// 200 with the request line, the header fields, a blank line, then the
    /// request body, streamed back as it arrives (chunked); the request's
    /// trailers come back as the response's trailers.
    Echo,
    /// Waits, then answers like `Hello`.
    Delay(Duration),
}

impl Responder {
    pub fn parse(spec: &str) -> Result<Responder, String> {
        match spec {
            "hello" => Ok(Responder::Hello),
            "echo" => Ok(Responder::Echo),
            _ => match spec.strip_prefix("delay=").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms <= 3_600_000 => Ok(Responder::Delay(Duration::from_millis(ms))),
                _ => Err(format!("--respond {spec:?}: expected hello, echo or delay=MS (0 to 3600000)")),
            },
        }
    }
}

impl Handler for Responder {
    async fn handle(&self, ex: &mut Exchange<'_>) -> Result<(), Error> {
        match self {
            Responder::Hello => ex.respond(200, &[("Content-Type", "text/plain")], b"hello\n").await,
            Responder::Delay(d) => {
                monoio::time::sleep(*d).await;
                ex.respond(200, &[("Content-Type", "text/plain")], b"hello\n").await
            }
            Responder::Echo => {
                let mut text = format!("{} {}\n", ex.method(), ex.target()).into_bytes();
                for (k, v) in ex.headers() {
                    text.extend_from_slice(k.as_bytes());
                    text.extend_from_slice(b": ");
                    text.extend_from_slice(v);
                    text.push(b'\n');
                }
                text.push(b'\n');
                ex.start(200, &[("Content-Type", "text/plain")]).await?;
                ex.send(&text).await?;
                let mut buf = Vec::with_capacity(64 * 1024);
                loop {
                    buf.clear();
                    if ex.read_body(&mut buf).await? == 0 {
                        break;
                    }
                    ex.send(&buf).await?;
                }
                let trailers = ex.trailers().await?;
                let trailers: Vec<(&str, &str)> = trailers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                ex.finish_with_trailers(&trailers).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(Responder::parse("hello").unwrap(), Responder::Hello);
        assert_eq!(Responder::parse("delay=250").unwrap(), Responder::Delay(Duration::from_millis(250)));
        assert!(Responder::parse("delay=x").unwrap_err().contains("--respond"));
        assert!(Responder::parse("nope").is_err());
    }
}
