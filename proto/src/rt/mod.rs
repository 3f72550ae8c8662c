//! The monoio glue both binaries share (feature `rt`): building a per-core
//! runtime in one place, and the read/relay loops around the sans-IO framing.
//! Kept behind a feature so the protocol core builds without any runtime.

pub mod body;
pub mod deadline;
pub mod h2io;
pub mod io;
pub mod logging;
pub mod runtime;
pub mod signal;
pub mod tls;

/// A small per-thread xorshift generator for jitter and power-of-two choices;
/// not for anything secret.
#[derive(Debug, Clone)]
pub struct FastRng(u64);

impl FastRng {
    pub fn seeded(salt: u64) -> FastRng {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        FastRng((t ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}
