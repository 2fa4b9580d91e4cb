//! `berth events [--follow]`: prints the portal's event stream (`GET
//! /api/events`) in the terminal, one line per event, like `berth log tail`.
//!
//! It reads the server-sent events over a plain HTTP/1.1 connection; with
//! `--follow` it reconnects after a dropped connection with `Last-Event-ID`,
//! so no event is missed or printed twice.

use anyhow::{bail, Context as _};
use berth_core::RecordedEvent;
use clap::Args;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

/// How long `--follow` waits before reconnecting after a dropped connection.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// A read that waits longer than this sees the connection as dead (heartbeats come every 15 s by default).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest chunk-size or header line accepted from the server, in bytes.
const LINE_LENGTH_BYTES_MAX: usize = 64 * 1024;

#[derive(Args)]
pub struct EventsArgs {
    /// The portal's address.
    #[arg(long, env = "BERTH_PORTAL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Keep printing new events as they are committed.
    #[arg(short, long)]
    pub follow: bool,
    /// Only events of this VCH.
    #[arg(long)]
    pub vch: Option<String>,
    /// Only events of this kind of object: vch, container, image, volume, network.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only events of the object with this id (a container id, a volume name...).
    #[arg(long)]
    pub id: Option<String>,
    /// Start after this log position (default: the whole log).
    #[arg(long)]
    pub since: Option<u64>,
    /// One JSON object per event instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn host_port(server: &str) -> anyhow::Result<String> {
    let rest = server.strip_prefix("http://").unwrap_or(server);
    if server.starts_with("https://") {
        bail!("--server {server}: berth's portal speaks plain HTTP on loopback; https is not supported yet");
    }
    let host_port = rest.trim_end_matches('/');
    if host_port.is_empty() || host_port.contains('/') {
        bail!("--server {server}: want http://HOST:PORT");
    }
    Ok(host_port.to_string())
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn request_path(args: &EventsArgs) -> String {
    let mut query = Vec::new();
    for (name, value) in [("vch", &args.vch), ("kind", &args.kind), ("id", &args.id)] {
        if let Some(value) = value {
            query.push(format!("{name}={}", encode(value)));
        }
    }
    if let Some(since) = args.since {
        query.push(format!("since={since}"));
    }
    if !args.follow {
        query.push("follow=false".to_string());
    }
    if query.is_empty() {
        "/api/events".to_string()
    } else {
        format!("/api/events?{}", query.join("&"))
    }
}

fn print_event(event: &RecordedEvent, json: bool, out: &mut impl Write) -> std::io::Result<()> {
    if json {
        return writeln!(out, "{}", serde_json::to_string(event).unwrap_or_default());
    }
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(event.recorded_at_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default();
    writeln!(
        out,
        "{:>8}  {time}  {:<40} v{:<4} {:<28} {}",
        event.position.0,
        event.stream.to_string(),
        event.version.0,
        event.event.type_name(),
        event.actor
    )
}

fn read_line_limited(reader: &mut impl BufRead) -> anyhow::Result<Option<String>> {
    let mut line = Vec::new();
    let read = reader.take(LINE_LENGTH_BYTES_MAX as u64).read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") && line.len() >= LINE_LENGTH_BYTES_MAX {
        bail!("the server sent a line longer than {LINE_LENGTH_BYTES_MAX} bytes");
    }
    Ok(Some(String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string()))
}

/// Turns a chunked HTTP body into a byte stream.
struct Dechunked<R> {
    inner: R,
    remaining_bytes: usize,
    finished: bool,
}

impl<R: BufRead> Read for Dechunked<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.finished {
            return Ok(0);
        }
        if self.remaining_bytes == 0 {
            let line = read_line_limited(&mut self.inner).map_err(std::io::Error::other)?;
            let Some(line) = line else { return Ok(0) };
            // The CRLF that ends the previous chunk comes first; the connection may end right after it.
            let line = if line.is_empty() {
                match read_line_limited(&mut self.inner).map_err(std::io::Error::other)? {
                    Some(line) => line,
                    None => return Ok(0),
                }
            } else {
                line
            };
            let size_text = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| std::io::Error::other(format!("bad chunk size {size_text:?}")))?;
            if size == 0 {
                self.finished = true;
                return Ok(0);
            }
            self.remaining_bytes = size;
        }
        let wanted = buffer.len().min(self.remaining_bytes);
        let read = self.inner.read(&mut buffer[..wanted])?;
        self.remaining_bytes -= read;
        Ok(read)
    }
}

/// What one connection ended with.
enum StreamEnd {
    /// The server closed the stream (a `follow=false` stream is complete).
    Closed,
    /// The connection failed; reconnecting may help.
    Broken(anyhow::Error),
}

/// Reads one connection's events; `last_position` moves with every event printed.
fn read_stream(host_port: &str, path: &str, last_position: &mut Option<u64>, json: bool) -> anyhow::Result<StreamEnd> {
    let mut stream = match TcpStream::connect(host_port) {
        Ok(stream) => stream,
        Err(error) => return Ok(StreamEnd::Broken(anyhow::Error::new(error).context(format!("connecting to the portal at {host_port}")))),
    };
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let last_event_id = last_position.map(|position| format!("Last-Event-ID: {position}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nAccept: text/event-stream\r\n{last_event_id}Connection: close\r\n\r\n")?;
    let mut reader = BufReader::new(stream);
    let status_line = read_line_limited(&mut reader)?.unwrap_or_default();
    let status: u16 = status_line.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let mut chunked = false;
    while let Some(line) = read_line_limited(&mut reader)? {
        if line.is_empty() {
            break;
        }
        if line.to_ascii_lowercase().starts_with("transfer-encoding:") && line.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    let body: Box<dyn Read> =
        if chunked { Box::new(Dechunked { inner: reader, remaining_bytes: 0, finished: false }) } else { Box::new(reader) };
    let mut body = BufReader::new(body);
    if status != 200 {
        let mut text = String::new();
        let _ = body.read_to_string(&mut text);
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|value| value["message"].as_str().map(str::to_string))
            .unwrap_or(text);
        bail!("the portal refused the event stream ({status}): {message}");
    }
    let stdout = std::io::stdout();
    let mut data = String::new();
    loop {
        let line = match read_line_limited(&mut body) {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(StreamEnd::Closed),
            Err(error) => return Ok(StreamEnd::Broken(error)),
        };
        if line.is_empty() {
            if !data.is_empty() {
                let event: RecordedEvent =
                    serde_json::from_str(&data).with_context(|| format!("the portal sent an event that is not a berth event: {data}"))?;
                let mut out = stdout.lock();
                print_event(&event, json, &mut out)?;
                out.flush()?;
                *last_position = Some(event.position.0);
                data.clear();
            }
            continue;
        }
        if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
        // `id:` repeats the position the data carries; comments (`:heartbeat`) keep the line alive.
    }
}

pub fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let host_port = host_port(&args.server)?;
    let path = request_path(&args);
    let mut last_position = args.since;
    loop {
        match read_stream(&host_port, &path, &mut last_position, args.json)? {
            StreamEnd::Closed if !args.follow => return Ok(ExitCode::SUCCESS),
            StreamEnd::Broken(error) if !args.follow => return Err(error),
            StreamEnd::Closed => tracing::warn!("the portal closed the event stream; reconnecting"),
            StreamEnd::Broken(error) => tracing::warn!("the event stream broke ({error:#}); reconnecting"),
        }
        std::thread::sleep(RECONNECT_DELAY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_a_chunked_body() {
        let body = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
        let mut text = String::new();
        Dechunked { inner: &body[..], remaining_bytes: 0, finished: false }.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello, world");
    }

    #[test]
    fn builds_the_request_from_the_filters() {
        let args = EventsArgs {
            server: String::new(),
            follow: false,
            vch: Some("a b".into()),
            kind: Some("volume".into()),
            id: None,
            since: Some(4),
            json: false,
        };
        assert_eq!(request_path(&args), "/api/events?vch=a%20b&kind=volume&since=4&follow=false");
        assert_eq!(host_port("http://127.0.0.1:8080/").unwrap(), "127.0.0.1:8080");
        assert!(host_port("https://x:1").is_err());
    }
}
