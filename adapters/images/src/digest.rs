//! sha256 digests as Docker and OCI write them (`sha256:<64 lowercase hex>`),
//! and a reader that hashes (and optionally copies) everything read through it.

use sha2::{Digest as _, Sha256};
use std::io::{self, Read, Write};

pub(crate) const SHA256_PREFIX: &str = "sha256:";

/// True for exactly 64 lowercase hex digits, the only form used in blob names
/// (so a digest can never smuggle `/` or `..` into a path).
pub(crate) fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The hex part of a `sha256:<hex>` digest, or None when it is not one.
pub(crate) fn sha256_hex(digest: &str) -> Option<&str> {
    digest.strip_prefix(SHA256_PREFIX).filter(|hex| is_sha256_hex(hex))
}

pub(crate) fn sha256_digest_of(bytes: &[u8]) -> String {
    format!("{SHA256_PREFIX}{}", hex::encode(Sha256::digest(bytes)))
}

/// Reads from `inner`, hashing every byte and copying it to `sink`.
/// A failure to write the copy is kept apart from read failures so callers can
/// tell "the input is bad" from "the store's disk failed".
pub(crate) struct HashingReader<R, W> {
    inner: R,
    sink: W,
    hasher: Sha256,
    size_bytes: u64,
    sink_error: Option<io::Error>,
}

impl<R: Read, W: Write> HashingReader<R, W> {
    pub(crate) fn new(inner: R, sink: W) -> Self {
        HashingReader { inner, sink, hasher: Sha256::new(), size_bytes: 0, sink_error: None }
    }

    /// Reads whatever the consumer left unread (e.g. padding after a tar's
    /// end-of-archive blocks), so the digest covers the whole stream.
    pub(crate) fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    /// The error from writing the copy, if one happened.
    pub(crate) fn take_sink_error(&mut self) -> Option<io::Error> {
        self.sink_error.take()
    }

    /// `("sha256:<hex>", size in bytes, the sink)` of everything read so far.
    pub(crate) fn finish(self) -> (String, u64, W) {
        (format!("{SHA256_PREFIX}{}", hex::encode(self.hasher.finalize())), self.size_bytes, self.sink)
    }
}

impl<R: Read, W: Write> Read for HashingReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buf)?;
        let chunk = &buf[..count];
        if let Err(error) = self.sink.write_all(chunk) {
            let message = format!("writing a copy failed: {error}");
            self.sink_error = Some(error);
            return Err(io::Error::other(message));
        }
        self.hasher.update(chunk);
        self.size_bytes += count as u64;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parsing_accepts_only_canonical_sha256() {
        let hex = "a".repeat(64);
        assert_eq!(sha256_hex(&format!("sha256:{hex}")), Some(hex.as_str()));
        assert_eq!(sha256_hex(&format!("sha256:{}", "A".repeat(64))), None);
        assert_eq!(sha256_hex(&format!("sha512:{hex}")), None);
        assert_eq!(sha256_hex("sha256:../../etc"), None);
        assert_eq!(sha256_hex(&hex), None);
    }

    #[test]
    fn hashing_reader_hashes_and_copies() {
        let mut reader = HashingReader::new(&b"hello"[..], Vec::new());
        reader.drain().expect("reading a slice cannot fail");
        let (digest, size_bytes, copy) = reader.finish();
        assert_eq!(digest, sha256_digest_of(b"hello"));
        assert_eq!(size_bytes, 5);
        assert_eq!(copy, b"hello");
    }
}
