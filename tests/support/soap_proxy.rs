//! A fault-injecting HTTP proxy for vSphere SOAP: [`SoapFaultProxy::start`] listens on
//! 127.0.0.1 and forwards every request to a plain-http upstream (vcsim), one upstream
//! connection per client connection, cookies and all; rules keyed by the SOAP method name
//! (the first element inside the envelope's Body) answer a SOAP fault instead, delay the
//! call, never answer it, or drop the connection. It counts every call it sees.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long the proxy waits for the upstream's answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// The largest request or response head the proxy accepts.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers that concern one hop only; the proxy sets its own framing.
const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "content-length", "te", "trailer", "upgrade", "host"];

/// A fault to answer instead of forwarding.
struct FaultRule {
    method: String,
    fault_type: String,
    message: String,
    detail_xml: String,
    /// How many more calls it answers; None: every call.
    remaining: Option<usize>,
}

#[derive(Default)]
struct Rules {
    faults: Vec<FaultRule>,
    delays: HashMap<String, Duration>,
    stalls: HashSet<String>,
    /// Close the connection without an answer, `Option<usize>` more times.
    disconnects: Vec<(String, Option<usize>)>,
}

#[derive(Default)]
struct State {
    rules: Rules,
    /// Every call seen, in order.
    calls: Vec<String>,
    /// The client connections that are open, to shut them down on drop.
    connections: HashMap<u64, TcpStream>,
    next_connection: u64,
    stopped: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on every call, rule change and on stop.
    changed: Condvar,
    /// `host:port` of the upstream.
    upstream: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sleeps `duration`, or less when the proxy stops; false when it stopped.
    fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut state = self.lock();
        while !state.stopped {
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
        false
    }
}

fn matches(rule_method: &str, method: &str) -> bool {
    rule_method == "*" || rule_method == method
}

/// Takes one use of the first rule in `rules` that matches `method`.
fn take_counted<T>(rules: &mut [T], method: &str, key: impl Fn(&mut T) -> (&str, &mut Option<usize>)) -> Option<usize> {
    let index = rules.iter_mut().position(|rule| {
        let (rule_method, remaining) = key(rule);
        matches(rule_method, method) && remaining.is_none_or(|remaining| remaining > 0)
    })?;
    let (_, remaining) = key(&mut rules[index]);
    if let Some(remaining) = remaining {
        *remaining -= 1;
    }
    Some(index)
}

/// What the proxy does with one call.
enum Action {
    Forward,
    Fault { status_body: Vec<u8> },
    Stall,
    Disconnect,
}

/// A running proxy; it stops (and closes every client connection) on drop.
pub struct SoapFaultProxy {
    address: SocketAddr,
    path: String,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl SoapFaultProxy {
    /// Proxies `upstream_url` (`http://host:port/path`; https is not supported) from a free
    /// port of 127.0.0.1.
    pub fn start(upstream_url: &str) -> SoapFaultProxy {
        let rest =
            upstream_url.strip_prefix("http://").unwrap_or_else(|| panic!("the proxy needs a plain http upstream, not {upstream_url}"));
        let (upstream, path) = match rest.split_once('/') {
            Some((host, path)) => (host.to_string(), format!("/{path}")),
            None => (rest.to_string(), "/".to_string()),
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("the proxy binds a free port");
        let address = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), changed: Condvar::new(), upstream });
        let acceptor = {
            let shared = shared.clone();
            thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let mut state = shared.lock();
                    if state.stopped {
                        break;
                    }
                    let id = state.next_connection;
                    state.next_connection += 1;
                    if let Ok(clone) = stream.try_clone() {
                        state.connections.insert(id, clone);
                    }
                    drop(state);
                    let shared = shared.clone();
                    thread::spawn(move || {
                        let _ = serve_connection(&shared, stream);
                        shared.lock().connections.remove(&id);
                    });
                }
            })
        };
        SoapFaultProxy { address, path, shared, acceptor: Some(acceptor) }
    }

    /// The proxied endpoint: the upstream's path on the proxy, e.g. `http://127.0.0.1:PORT/sdk`.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.address, self.path)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Answers calls of `method` (`"*"`: any) with HTTP 500 and a SOAP fault of the vSphere
    /// fault type `fault_type` (e.g. "InvalidState", "HostCommunication", "NoDiskSpace",
    /// "NotAuthenticated"), `times` times (None: always). Rules apply in the order added.
    pub fn fail(&self, method: &str, fault_type: &str, times: Option<usize>) {
        let message = format!("{fault_type} injected by the test proxy on {method}");
        self.fail_with(method, fault_type, &message, "", times);
    }

    /// Like [`fail`](Self::fail) with the fault's `faultstring` and the XML of the fault's
    /// fields (inside `<{fault_type}Fault xmlns="urn:vim25" xsi:type="{fault_type}">`), e.g.
    /// `<obj type="VirtualMachine">vm-42</obj>` for ManagedObjectNotFound.
    pub fn fail_with(&self, method: &str, fault_type: &str, message: &str, detail_xml: &str, times: Option<usize>) {
        let mut state = self.shared.lock();
        state.rules.faults.push(FaultRule {
            method: method.to_string(),
            fault_type: fault_type.to_string(),
            message: message.to_string(),
            detail_xml: detail_xml.to_string(),
            remaining: times,
        });
        self.shared.changed.notify_all();
    }

    /// Holds calls of `method` (`"*"`: any) for `delay` before answering (or faulting) them.
    pub fn delay(&self, method: &str, delay: Duration) {
        self.shared.lock().rules.delays.insert(method.to_string(), delay);
        self.shared.changed.notify_all();
    }

    /// While on, calls of `method` (`"*"`: any) are never answered: the client sees its own
    /// timeout. Turning it off (or dropping the proxy) closes the held connections unanswered.
    pub fn stall(&self, method: &str, on: bool) {
        let mut state = self.shared.lock();
        if on {
            state.rules.stalls.insert(method.to_string());
        } else {
            state.rules.stalls.remove(method);
        }
        self.shared.changed.notify_all();
    }

    /// Closes the connection without an answer on calls of `method` (`"*"`: any), `times`
    /// times (None: always): the client sees the connection reset mid-call.
    pub fn disconnect(&self, method: &str, times: Option<usize>) {
        self.shared.lock().rules.disconnects.push((method.to_string(), times));
        self.shared.changed.notify_all();
    }

    /// Removes every rule (held stalled calls are then closed); the counts stay.
    pub fn clear(&self) {
        self.shared.lock().rules = Rules::default();
        self.shared.changed.notify_all();
    }

    /// How many calls of `method` (`"*"`: all) the proxy has seen, injected or forwarded.
    /// Requests without a SOAP body count as `"GET /path"` (HTTP method and path).
    pub fn calls(&self, method: &str) -> usize {
        self.shared.lock().calls.iter().filter(|call| matches(method, call)).count()
    }

    /// How many client connections the proxy has accepted (keep-alive clients reuse theirs).
    pub fn connections_accepted(&self) -> usize {
        self.shared.lock().next_connection as usize
    }

    /// Every call seen so far, in order.
    pub fn call_log(&self) -> Vec<String> {
        self.shared.lock().calls.clone()
    }

    /// Waits until `calls(method) >= count`; false after `timeout`.
    pub fn wait_for_calls(&self, method: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if state.calls.iter().filter(|call| matches(method, call)).count() >= count {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || state.stopped {
                return false;
            }
            state = self.shared.changed.wait_timeout(state, deadline - now).unwrap_or_else(|poisoned| poisoned.into_inner()).0;
        }
    }
}

impl Drop for SoapFaultProxy {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.stopped = true;
        for connection in state.connections.values() {
            let _ = connection.shutdown(Shutdown::Both);
        }
        drop(state);
        self.shared.changed.notify_all();
        // Wake the acceptor, which then sees `stopped`.
        let _ = TcpStream::connect(self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// One HTTP request or response: its first line, headers and (de-chunked) body.
struct Message {
    start_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .any(|(_, value)| value.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
    }

    /// The headers worth passing on (end-to-end ones, e.g. Cookie, Set-Cookie, SOAPAction).
    fn end_to_end_headers(&self) -> String {
        self.headers
            .iter()
            .filter(|(name, _)| !HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop)))
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect()
    }
}

fn invalid(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

/// The start line and the headers of a message.
type Head = (String, Vec<(String, String)>);

/// Reads a head; None on a clean end of stream before it.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut start_line = String::new();
    loop {
        start_line.clear();
        if reader.read_line(&mut start_line)? == 0 {
            return Ok(None);
        }
        // Tolerate stray empty lines between messages.
        if !start_line.trim().is_empty() {
            break;
        }
    }
    let mut headers = Vec::new();
    let mut size = start_line.len();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(invalid("the stream ended inside a head"));
        }
        size += line.len();
        if size > MAX_HEAD_BYTES {
            return Err(invalid("the head is too large"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').ok_or_else(|| invalid(format!("a malformed header line: {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(Some((start_line.trim_end().to_string(), headers)))
}

/// Decodes a `Transfer-Encoding: chunked` body, trailers skipped.
pub fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line)? == 0 {
            return Err(invalid("the stream ended inside a chunked body"));
        }
        let size_text = size_line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid(format!("a malformed chunk size: {size_line:?}")))?;
        if size == 0 {
            // Skip the trailers up to the empty line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}

/// Reads a body framed by Transfer-Encoding: chunked or Content-Length; without either, a
/// request has none and a response runs to the end of the stream.
fn read_body(reader: &mut impl BufRead, headers: &[(String, String)], is_response: bool) -> io::Result<Vec<u8>> {
    let header = |name: &str| headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str());
    if header("transfer-encoding").is_some_and(|value| value.to_ascii_lowercase().contains("chunked")) {
        return read_chunked(reader);
    }
    if let Some(length) = header("content-length") {
        let length: usize = length.parse().map_err(|_| invalid(format!("a malformed Content-Length: {length:?}")))?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    if is_response {
        reader.read_to_end(&mut body)?;
    }
    Ok(body)
}

fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Message>> {
    let Some((start_line, headers)) = read_head(reader)? else {
        return Ok(None);
    };
    let body = read_body(reader, &headers, false)?;
    Ok(Some(Message { start_line, headers, body }))
}

/// The local name of the first element inside the envelope's Body, e.g. `PowerOnVM_Task`.
pub fn soap_method(envelope: &str) -> Option<String> {
    let mut in_body = false;
    let mut rest = envelope;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        // Skip the XML declaration, comments, CDATA and closing tags.
        if rest.starts_with('?') || rest.starts_with('!') || rest.starts_with('/') {
            continue;
        }
        let end = rest.find(|c: char| c.is_whitespace() || c == '>' || c == '/').unwrap_or(rest.len());
        let local = rest[..end].rsplit(':').next().unwrap_or_default();
        if in_body {
            return Some(local.to_string());
        }
        in_body = local == "Body";
    }
    None
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A SOAP 1.1 fault as vcsim (and vCenter) shape it.
fn fault_envelope(fault_type: &str, message: &str, detail_xml: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            "\n",
            r#"<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" "#,
            r#"xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
            r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault>"#,
            "<faultcode>ServerFaultCode</faultcode><faultstring>{message}</faultstring>",
            r#"<detail><{kind}Fault xmlns="urn:vim25" xsi:type="{kind}">{detail}</{kind}Fault></detail>"#,
            "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
        ),
        message = escape(message),
        kind = fault_type,
        detail = detail_xml
    )
}

fn write_response(client: &mut TcpStream, status: &str, headers: &str, body: &[u8], keep_alive: bool) -> io::Result<()> {
    let connection = if keep_alive { "" } else { "Connection: close\r\n" };
    let head = format!("HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\n{connection}\r\n", body.len());
    client.write_all(head.as_bytes())?;
    client.write_all(body)?;
    client.flush()
}

/// Decides what to do with a call of `method`, counting it.
fn decide(shared: &Shared, method: &str) -> (Option<Duration>, Action) {
    let mut state = shared.lock();
    state.calls.push(method.to_string());
    shared.changed.notify_all();
    let rules = &mut state.rules;
    let delay = rules.delays.iter().find(|(rule, _)| matches(rule, method)).map(|(_, delay)| *delay);
    if rules.stalls.iter().any(|rule| matches(rule, method)) {
        return (delay, Action::Stall);
    }
    if take_counted(&mut rules.disconnects, method, |(rule, remaining)| (rule.as_str(), remaining)).is_some() {
        return (delay, Action::Disconnect);
    }
    if let Some(index) = take_counted(&mut rules.faults, method, |rule| (rule.method.as_str(), &mut rule.remaining)) {
        let rule = &rules.faults[index];
        let body = fault_envelope(&rule.fault_type, &rule.message, &rule.detail_xml);
        return (delay, Action::Fault { status_body: body.into_bytes() });
    }
    (delay, Action::Forward)
}

/// Sends `request` on the upstream connection (opening it when needed) and reads the reply;
/// a reused connection that the upstream closed meanwhile is reopened once.
fn exchange(shared: &Shared, upstream: &mut Option<BufReader<TcpStream>>, request: &Message) -> io::Result<Message> {
    let head = format!(
        "{}\r\nHost: {}\r\n{}Content-Length: {}\r\n\r\n",
        request.start_line,
        shared.upstream,
        request.end_to_end_headers(),
        request.body.len()
    );
    for attempt in 0..2 {
        let reused = upstream.is_some();
        if upstream.is_none() {
            let stream = TcpStream::connect(&shared.upstream)?;
            stream.set_read_timeout(Some(UPSTREAM_TIMEOUT))?;
            *upstream = Some(BufReader::new(stream));
        }
        let connection = upstream.as_mut().expect("an upstream connection");
        let sent = connection.get_mut().write_all(head.as_bytes()).and_then(|_| connection.get_mut().write_all(&request.body));
        let reply = sent.and_then(|_| read_head(connection)).and_then(|head| {
            let (start_line, headers) = head.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "the upstream closed"))?;
            // A reply to HEAD has no body, whatever its Content-Length says.
            let body = if request.start_line.starts_with("HEAD ") { Vec::new() } else { read_body(connection, &headers, true)? };
            Ok(Message { start_line, headers, body })
        });
        match reply {
            Ok(reply) => {
                let closes = reply.has_token("connection", "close")
                    || (reply.header("content-length").is_none() && reply.header("transfer-encoding").is_none());
                if closes {
                    *upstream = None;
                }
                return Ok(reply);
            }
            Err(error) => {
                *upstream = None;
                if !(reused && attempt == 0) {
                    return Err(error);
                }
            }
        }
    }
    unreachable!("the second attempt returns")
}

/// Serves one client connection until it closes, the proxy stops or a rule drops it.
fn serve_connection(shared: &Shared, client: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let mut upstream: Option<BufReader<TcpStream>> = None;
    while let Some(request) = read_request(&mut reader)? {
        let keep_alive = request.start_line.ends_with("HTTP/1.1") && !request.has_token("connection", "close");
        let method = soap_method(&String::from_utf8_lossy(&request.body)).unwrap_or_else(|| {
            let mut parts = request.start_line.split_whitespace();
            format!("{} {}", parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
        });
        let (delay, action) = decide(shared, &method);
        if let Some(delay) = delay {
            if !shared.sleep(delay) {
                return Ok(());
            }
        }
        match action {
            Action::Stall => {
                let mut state = shared.lock();
                while !state.stopped && state.rules.stalls.iter().any(|rule| matches(rule, &method)) {
                    state = shared.changed.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                return Ok(());
            }
            Action::Disconnect => return Ok(()),
            Action::Fault { status_body } => {
                let headers = "Content-Type: text/xml; charset=utf-8\r\n";
                write_response(&mut client, "500 Internal Server Error", headers, &status_body, keep_alive)?;
            }
            Action::Forward => match exchange(shared, &mut upstream, &request) {
                Ok(reply) => {
                    let status = reply.start_line.split_once(' ').map(|(_, status)| status).unwrap_or("502 Bad Gateway");
                    write_response(&mut client, status, &reply.end_to_end_headers(), &reply.body, keep_alive)?;
                }
                Err(error) => {
                    let body = format!("the test proxy could not reach {}: {error}", shared.upstream);
                    write_response(&mut client, "502 Bad Gateway", "Content-Type: text/plain\r\n", body.as_bytes(), false)?;
                    return Ok(());
                }
            },
        }
        if !keep_alive || shared.lock().stopped {
            return Ok(());
        }
    }
    Ok(())
}
