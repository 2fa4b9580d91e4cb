//! Ports for time and randomness: the production adapters read the system
//! clock and the OS random source; the simulator supplies seeded doubles.

/// Wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// A source of unpredictable bytes (ids, event ids).
pub trait Entropy: Send + Sync {
    fn fill(&self, bytes: &mut [u8]);

    /// 64 lowercase hex characters, the shape of a Docker object id.
    fn hex_id(&self) -> String {
        let mut bytes = [0u8; 32];
        self.fill(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
