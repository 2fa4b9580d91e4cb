//! The attach socket's wire format between the shim and its clients.
//!
//! Every message is a frame: one kind byte, a big-endian u32 payload length, the payload.
//! Shim to client: `HELLO` once registered, `STDOUT`/`STDERR` output, `EXIT` (i64 code) last.
//! Client to shim: `STDIN` bytes, `RESIZE` (u16 width, u16 height), `CLOSE_STDIN`.

use std::io::{self, Read, Write};

/// Largest frame payload accepted: bounds memory a misbehaving peer can make us allocate.
pub const MAX_FRAME_PAYLOAD_BYTES: usize = 1024 * 1024;

pub const KIND_STDIN: u8 = 0;
pub const KIND_STDOUT: u8 = 1;
pub const KIND_STDERR: u8 = 2;
pub const KIND_EXIT: u8 = 3;
pub const KIND_RESIZE: u8 = 4;
pub const KIND_CLOSE_STDIN: u8 = 5;
pub const KIND_HELLO: u8 = 6;

/// Errors reading frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("attach socket: {0}")]
    Io(#[from] io::Error),
    #[error("attach socket: frame of {size} bytes exceeds the {MAX_FRAME_PAYLOAD_BYTES}-byte limit")]
    FrameTooLarge { size: usize },
}

/// Encodes one frame into a single buffer so it goes out in one write.
pub fn encode_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(kind);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

pub fn write_frame(writer: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    writer.write_all(&encode_frame(kind, payload))
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame(reader: &mut impl Read) -> Result<Option<(u8, Vec<u8>)>, ProtocolError> {
    let mut header = [0u8; 5];
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(ProtocolError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error.into()),
        }
    }
    let size = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if size > MAX_FRAME_PAYLOAD_BYTES {
        return Err(ProtocolError::FrameTooLarge { size });
    }
    let mut payload = vec![0u8; size];
    reader.read_exact(&mut payload)?;
    Ok(Some((header[0], payload)))
}

pub fn encode_resize(width: u16, height: u16) -> [u8; 4] {
    let [w0, w1] = width.to_be_bytes();
    let [h0, h1] = height.to_be_bytes();
    [w0, w1, h0, h1]
}

pub fn decode_resize(payload: &[u8]) -> Option<(u16, u16)> {
    match payload {
        [w0, w1, h0, h1] => Some((u16::from_be_bytes([*w0, *w1]), u16::from_be_bytes([*h0, *h1]))),
        _ => None,
    }
}

pub fn decode_exit(payload: &[u8]) -> Option<i64> {
    <[u8; 8]>::try_from(payload).ok().map(i64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_end_cleanly() {
        let mut wire = Vec::new();
        write_frame(&mut wire, KIND_STDOUT, b"hello").unwrap();
        write_frame(&mut wire, KIND_EXIT, &7i64.to_be_bytes()).unwrap();
        let mut reader = wire.as_slice();
        assert_eq!(read_frame(&mut reader).unwrap(), Some((KIND_STDOUT, b"hello".to_vec())));
        let (kind, payload) = read_frame(&mut reader).unwrap().unwrap();
        assert_eq!((kind, decode_exit(&payload)), (KIND_EXIT, Some(7)));
        assert_eq!(read_frame(&mut reader).unwrap(), None);
    }

    #[test]
    fn truncated_and_oversized_frames_are_errors_not_panics() {
        let mut truncated: &[u8] = &[KIND_STDOUT, 0, 0];
        assert!(read_frame(&mut truncated).is_err());
        let mut huge: &[u8] = &[KIND_STDIN, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(read_frame(&mut huge), Err(ProtocolError::FrameTooLarge { .. })));
        assert_eq!(decode_resize(&encode_resize(80, 24)), Some((80, 24)));
        assert_eq!(decode_resize(&[1, 2, 3]), None);
        assert_eq!(decode_exit(&[1]), None);
    }
}
