//! The simulated world's shared pieces: the one seeded PRNG, the virtual
//! clock, the entropy the command bus draws event ids from, and the trace
//! hash that proves two runs of one seed were the same.
//!
//! Everything runs on one thread; the handles are `Arc`s with locks only
//! because the production ports are `Send + Sync`.

use berth_core::{Clock, Entropy};
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The simulated time at which every run starts (2024-01-01T00:00:00Z), so
/// that event ids and timestamps look like real ones.
pub const EPOCH_MS: u64 = 1_704_067_200_000;

/// The one seeded source of randomness of a run; every component draws from it.
#[derive(Clone)]
pub struct SimRng {
    inner: Arc<Mutex<SmallRng>>,
}

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng { inner: Arc::new(Mutex::new(SmallRng::seed_from_u64(seed))) }
    }

    /// True with probability `probability` (0 never draws, so a disabled
    /// fault costs no randomness and leaves the rest of the run unchanged).
    pub fn chance(&self, probability: f64) -> bool {
        probability > 0.0 && self.inner.lock().gen::<f64>() < probability
    }

    /// A number in `0..bound` (0 when `bound` is 0).
    pub fn below(&self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.inner.lock().gen_range(0..bound)
    }

    /// A number in `low..=high`.
    pub fn between(&self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        self.inner.lock().gen_range(low..=high)
    }

    pub fn unit(&self) -> f64 {
        self.inner.lock().gen::<f64>()
    }

    pub fn fill(&self, bytes: &mut [u8]) {
        self.inner.lock().fill(bytes);
    }

    /// 64 lowercase hex characters, the shape of a Docker object id.
    pub fn hex_id(&self) -> String {
        let mut bytes = [0u8; 32];
        self.fill(&mut bytes);
        let mut text = String::with_capacity(64);
        for byte in bytes {
            text.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
            text.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
        }
        text
    }

    /// Picks one item; `None` from an empty slice.
    pub fn pick<'a, T>(&self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        items.get(self.below(items.len() as u64) as usize)
    }
}

/// Virtual time: it moves only when the simulator (or a simulated latency) moves it.
#[derive(Clone)]
pub struct SimClock {
    now_ms: Arc<AtomicU64>,
}

impl SimClock {
    pub fn new() -> SimClock {
        SimClock { now_ms: Arc::new(AtomicU64::new(EPOCH_MS)) }
    }

    pub fn advance(&self, duration_ms: u64) {
        self.now_ms.fetch_add(duration_ms, Ordering::Relaxed);
    }

    pub fn now(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed)
    }
}

impl Default for SimClock {
    fn default() -> SimClock {
        SimClock::new()
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.now()
    }
}

/// The command bus's entropy, drawn from the run's PRNG.
pub struct SimEntropy {
    pub rng: SimRng,
}

impl Entropy for SimEntropy {
    fn fill(&self, bytes: &mut [u8]) {
        self.rng.fill(bytes);
    }
}

/// FNV-1a, 64 bits: stable across Rust versions and platforms, unlike the
/// standard library's hasher, so a printed trace hash means the same thing
/// everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceHash(u64);

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl TraceHash {
    pub fn new() -> TraceHash {
        TraceHash(FNV_OFFSET_BASIS)
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    pub fn number(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    pub fn text(&mut self, text: &str) {
        self.number(text.len() as u64);
        self.bytes(text.as_bytes());
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

impl Default for TraceHash {
    fn default() -> TraceHash {
        TraceHash::new()
    }
}
