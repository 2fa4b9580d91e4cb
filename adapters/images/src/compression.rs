//! Detects how a stream is compressed from its first bytes (the way Docker
//! does: callers never say) and wraps it in the matching decompressor.

use std::io::{self, Cursor, Read};

#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    #[error("{format}-compressed streams are not supported (use plain tar, gzip or xz)")]
    Unsupported { format: &'static str },
    #[error("reading the stream: {0}")]
    Read(#[source] io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
    Bzip2,
}

/// The longest magic number we look at (xz's).
const MAGIC_LENGTH: usize = 6;

pub(crate) fn detect(prefix: &[u8]) -> Compression {
    if prefix.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if prefix.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if prefix.starts_with(b"BZh") {
        Compression::Bzip2
    } else {
        Compression::None
    }
}

/// A reader yielding the decompressed stream, and whether the stream was empty (an empty stream is never a valid archive, and
/// the tar reader would otherwise take it for one with no entries).
pub(crate) struct Decompressed<'a> {
    pub(crate) reader: Box<dyn Read + 'a>,
    pub(crate) is_empty: bool,
}

pub(crate) fn decompress<'a, R: Read + 'a>(mut input: R) -> Result<Decompressed<'a>, CompressionError> {
    let mut prefix = Vec::with_capacity(MAGIC_LENGTH);
    (&mut input).take(MAGIC_LENGTH as u64).read_to_end(&mut prefix).map_err(CompressionError::Read)?;
    let compression = detect(&prefix);
    let is_empty = prefix.is_empty();
    let whole = Cursor::new(prefix).chain(input);
    let reader: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(whole),
        // Multi-member decoders: pigz and concatenated .gz/.xz files are common.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(whole)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(whole)),
        Compression::Zstd => return Err(CompressionError::Unsupported { format: "zstd" }),
        Compression::Bzip2 => return Err(CompressionError::Unsupported { format: "bzip2" }),
    };
    Ok(Decompressed { reader, is_empty })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn decompressed_bytes(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut decompressed = decompress(input).expect("supported");
        decompressed.reader.read_to_end(&mut out).expect("valid stream");
        out
    }

    #[test]
    fn plain_gzip_and_xz_all_decompress_to_the_same_bytes() {
        let plain = b"some tar bytes".to_vec();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(&plain).expect("in memory");
        let gzip = gzip.finish().expect("in memory");
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&plain).expect("in memory");
        let xz = xz.finish().expect("in memory");
        assert_eq!(detect(&gzip), Compression::Gzip);
        assert_eq!(detect(&xz), Compression::Xz);
        assert_eq!(decompressed_bytes(&plain), plain);
        assert_eq!(decompressed_bytes(&gzip), plain);
        assert_eq!(decompressed_bytes(&xz), plain);
    }

    #[test]
    fn zstd_is_refused_with_a_clear_error() {
        let error = decompress(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0][..]).err().expect("refused");
        assert!(error.to_string().contains("zstd"), "{error}");
    }

    #[test]
    fn empty_input_is_reported() {
        assert!(decompress(&b""[..]).expect("no error").is_empty);
    }
}
