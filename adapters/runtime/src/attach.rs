//! The client side of a container's attach socket: live output, stdin and terminal resizes.

use crate::error::RuntimeError;
use crate::logfile::OutputStream;
use crate::protocol::{self, ProtocolError};
use crate::sys;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long the shim may take to greet a new client.
pub const ATTACH_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Something that happened on the container's stdio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachEvent {
    /// Output; with a terminal everything arrives as stdout.
    Output { stream: OutputStream, bytes: Vec<u8> },
    /// The container exited; nothing follows.
    Exited { exit_code: i64 },
}

/// A live connection to a container's stdio; ends when the container exits.
pub struct Attachment {
    output: AttachOutput,
    input: AttachInput,
}

/// The reading half of an attachment.
pub struct AttachOutput {
    stream: UnixStream,
    container_id: String,
    finished: bool,
}

/// The writing half of an attachment: stdin, end of stdin and terminal size.
pub struct AttachInput {
    stream: UnixStream,
}

fn protocol_error(id: &str) -> impl FnOnce(ProtocolError) -> RuntimeError + '_ {
    move |error| RuntimeError::Shim { id: id.to_string(), message: error.to_string() }
}

impl Attachment {
    /// Connects to the shim and waits until it registered us, so no later output is missed.
    pub(crate) fn connect(socket: &Path, id: &str) -> Result<Attachment, RuntimeError> {
        let (path, _directory) = sys::socket_path(socket).map_err(RuntimeError::io("attach socket path"))?;
        let stream = UnixStream::connect(&path).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => RuntimeError::NotRunning { id: id.to_string() },
            _ => RuntimeError::Io { context: format!("connecting to the attach socket of {id}"), source: error },
        })?;
        stream.set_read_timeout(Some(ATTACH_HELLO_TIMEOUT)).map_err(RuntimeError::io("attach socket"))?;
        let mut reader = &stream;
        match protocol::read_frame(&mut reader).map_err(protocol_error(id))? {
            Some((protocol::KIND_HELLO, _)) => {}
            // The shim closes late connections after the exit: the container is not running.
            None => return Err(RuntimeError::NotRunning { id: id.to_string() }),
            Some((kind, _)) => {
                return Err(RuntimeError::Shim { id: id.to_string(), message: format!("unexpected attach frame {kind} before hello") })
            }
        }
        stream.set_read_timeout(None).map_err(RuntimeError::io("attach socket"))?;
        let input = AttachInput { stream: stream.try_clone().map_err(RuntimeError::io("attach socket"))? };
        Ok(Attachment { output: AttachOutput { stream, container_id: id.to_string(), finished: false }, input })
    }

    /// The next output or the exit; `None` once the stream ended.
    pub fn next_event(&mut self) -> Result<Option<AttachEvent>, RuntimeError> {
        self.output.next_event()
    }

    pub fn write_stdin(&mut self, bytes: &[u8]) -> Result<(), RuntimeError> {
        self.input.write_stdin(bytes)
    }

    pub fn close_stdin(&mut self) -> Result<(), RuntimeError> {
        self.input.close_stdin()
    }

    pub fn resize(&mut self, width: u16, height: u16) -> Result<(), RuntimeError> {
        self.input.resize(width, height)
    }

    /// Separates the halves so output and input can be driven from different threads.
    pub fn split(self) -> (AttachOutput, AttachInput) {
        (self.output, self.input)
    }
}

impl AttachOutput {
    pub fn next_event(&mut self) -> Result<Option<AttachEvent>, RuntimeError> {
        if self.finished {
            return Ok(None);
        }
        let mut reader = &self.stream;
        let frame = protocol::read_frame(&mut reader).map_err(protocol_error(&self.container_id))?;
        match frame {
            None => {
                self.finished = true;
                Ok(None)
            }
            Some((protocol::KIND_STDOUT, bytes)) => Ok(Some(AttachEvent::Output { stream: OutputStream::Stdout, bytes })),
            Some((protocol::KIND_STDERR, bytes)) => Ok(Some(AttachEvent::Output { stream: OutputStream::Stderr, bytes })),
            Some((protocol::KIND_EXIT, payload)) => {
                self.finished = true;
                Ok(Some(AttachEvent::Exited { exit_code: protocol::decode_exit(&payload).unwrap_or(255) }))
            }
            // Kinds a newer shim may add are skipped rather than fatal.
            Some((_, _)) => self.next_event(),
        }
    }
}

impl AttachInput {
    fn send(&mut self, kind: u8, payload: &[u8]) -> Result<(), RuntimeError> {
        protocol::write_frame(&mut self.stream, kind, payload).map_err(RuntimeError::io("writing to the attach socket"))
    }

    /// Sends bytes to the container's stdin (dropped when it was created without open_stdin).
    pub fn write_stdin(&mut self, bytes: &[u8]) -> Result<(), RuntimeError> {
        for chunk in bytes.chunks(protocol::MAX_FRAME_PAYLOAD_BYTES) {
            self.send(protocol::KIND_STDIN, chunk)?;
        }
        Ok(())
    }

    /// Closes the container's stdin (its reader sees EOF), like `docker attach` with stdin_once.
    pub fn close_stdin(&mut self) -> Result<(), RuntimeError> {
        self.send(protocol::KIND_CLOSE_STDIN, &[])
    }

    /// Resizes the container's terminal (ignored without one).
    pub fn resize(&mut self, width: u16, height: u16) -> Result<(), RuntimeError> {
        self.send(protocol::KIND_RESIZE, &protocol::encode_resize(width, height))
    }
}

impl Write for AttachInput {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let size = bytes.len().min(protocol::MAX_FRAME_PAYLOAD_BYTES);
        protocol::write_frame(&mut self.stream, protocol::KIND_STDIN, &bytes[..size])?;
        Ok(size)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
