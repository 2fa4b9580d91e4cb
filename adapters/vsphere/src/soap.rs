//! The SOAP transport: wraps a VIM25 method call in an envelope, posts it to `/sdk`,
//! keeps the session cookie and turns the reply into its result element or a typed fault.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::thumbprint::{self, ObservedThumbprint, Thumbprint, ThumbprintError};
use crate::xml::{XmlElement, XmlError};

/// The vSphere API version we speak; vcsim reports 6.5.
const VIM_API_VERSION: &str = "6.5";
/// The cookie vSphere keeps the session in.
const SESSION_COOKIE_NAME: &str = "vmware_soap_session";

#[derive(Debug, thiserror::Error)]
pub enum SoapError {
    #[error("{endpoint} is unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("{endpoint} presented a certificate with thumbprint {actual}, not the expected {expected}")]
    ThumbprintMismatch { endpoint: String, expected: Thumbprint, actual: Thumbprint },
    #[error("{endpoint} presented an untrusted certificate (thumbprint {actual}); pass that thumbprint if you trust it")]
    UntrustedCertificate { endpoint: String, actual: Thumbprint },
    #[error("{endpoint} answered HTTP {status} without a SOAP reply: {body_start}")]
    HttpStatus { endpoint: String, status: u16, body_start: String },
    #[error("vSphere fault {fault_type}: {message}")]
    Fault { fault_type: String, message: String, detail: Option<Box<XmlElement>> },
    #[error("malformed SOAP reply: {0}")]
    Malformed(String),
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error(transparent)]
    Thumbprint(#[from] ThumbprintError),
}

/// SOAP calls made by this process, and the time spent waiting for their
/// replies: what a benchmark needs to tell vSphere's share of the time from
/// berth's own (process-wide, like any metrics counter).
pub static SOAP_CALL_COUNT: AtomicU64 = AtomicU64::new(0);
/// Nanoseconds spent in SOAP round trips (sending, waiting, reading, parsing).
pub static SOAP_CALL_NANOS: AtomicU64 = AtomicU64::new(0);

/// One connection to a vSphere SOAP endpoint, with its session cookie.
pub struct SoapTransport {
    agent: ureq::Agent,
    endpoint: String,
    pinned: Option<Thumbprint>,
    observed: ObservedThumbprint,
    session_cookie: Mutex<Option<String>>,
}

impl SoapTransport {
    /// A transport to `endpoint` (the full `/sdk` URL); https pins `pinned` when given.
    pub fn new(endpoint: &str, pinned: Option<Thumbprint>, request_timeout: Duration) -> Result<SoapTransport, SoapError> {
        let observed: ObservedThumbprint = Arc::new(Mutex::new(None));
        let tls = thumbprint::tls_config(pinned.clone(), observed.clone())?;
        let agent = ureq::AgentBuilder::new().tls_config(tls).timeout(request_timeout).redirects(0).build();
        Ok(SoapTransport { agent, endpoint: endpoint.to_string(), pinned, observed, session_cookie: Mutex::new(None) })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A plain HTTP request to `url` on this transport's agent (its TLS pinning and timeout)
    /// carrying the session cookie: datastore file transfers (`/folder`) are authenticated by
    /// the SOAP session, not by a method call.
    pub(crate) fn http_request(&self, method: &str, url: &str) -> ureq::Request {
        let request = self.agent.request(method, url);
        match self.session_cookie.lock().ok().and_then(|cookie| cookie.clone()) {
            Some(cookie) => request.set("Cookie", &cookie),
            None => request,
        }
    }

    /// Calls one method: `body` is the method element (in namespace urn:vim25);
    /// returns the `...Response` element, or the fault the server raised.
    pub fn call(&self, body: &str) -> Result<XmlElement, SoapError> {
        let started = Instant::now();
        let result = self.call_untimed(body);
        SOAP_CALL_COUNT.fetch_add(1, Ordering::Relaxed);
        SOAP_CALL_NANOS.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        result
    }

    fn call_untimed(&self, body: &str) -> Result<XmlElement, SoapError> {
        let envelope = format!(
            concat!(
                r#"<?xml version="1.0" encoding="UTF-8"?>"#,
                r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
                r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
                r#"<soapenv:Body>{}</soapenv:Body></soapenv:Envelope>"#
            ),
            body
        );
        let mut request = self
            .agent
            .post(&self.endpoint)
            .set("Content-Type", "text/xml; charset=utf-8")
            .set("SOAPAction", &format!("urn:vim25/{VIM_API_VERSION}"));
        if let Some(cookie) = self.session_cookie.lock().ok().and_then(|cookie| cookie.clone()) {
            request = request.set("Cookie", &cookie);
        }
        let (status, response) = match request.send_string(&envelope) {
            Ok(response) => (response.status(), response),
            Err(ureq::Error::Status(status, response)) => (status, response),
            Err(ureq::Error::Transport(transport)) => return Err(self.transport_error(&transport)),
        };
        for set_cookie in response.all("set-cookie") {
            if let Some(pair) = set_cookie.split(';').next() {
                if pair.trim_start().starts_with(SESSION_COOKIE_NAME) {
                    if let Ok(mut cookie) = self.session_cookie.lock() {
                        *cookie = Some(pair.trim().to_string());
                    }
                }
            }
        }
        let text = response
            .into_string()
            .map_err(|error| SoapError::Unreachable { endpoint: self.endpoint.clone(), reason: format!("reading the reply: {error}") })?;
        let is_xml = text.trim_start().starts_with('<');
        if !is_xml {
            return Err(SoapError::HttpStatus { endpoint: self.endpoint.clone(), status, body_start: text.chars().take(200).collect() });
        }
        let envelope = XmlElement::parse_document(&text)?;
        let body = envelope.child("Body").ok_or_else(|| SoapError::Malformed("the envelope has no Body".to_string()))?;
        let first = body.children.first().ok_or_else(|| SoapError::Malformed("the Body is empty".to_string()))?;
        if first.name == "Fault" {
            return Err(Self::fault(first));
        }
        if !(200..300).contains(&status) {
            return Err(SoapError::HttpStatus { endpoint: self.endpoint.clone(), status, body_start: text.chars().take(200).collect() });
        }
        Ok(first.clone())
    }

    fn fault(fault: &XmlElement) -> SoapError {
        let message = fault.child_text("faultstring").unwrap_or_default().to_string();
        let detail = fault.child("detail").and_then(|detail| detail.children.first()).cloned().map(Box::new);
        let fault_type = detail
            .as_ref()
            .map(|detail| detail.xsi_type.clone().unwrap_or_else(|| detail.name.trim_end_matches("Fault").to_string()))
            .unwrap_or_else(|| fault.child_text("faultcode").unwrap_or("UnknownFault").to_string());
        SoapError::Fault { fault_type, message, detail }
    }

    pub(crate) fn transport_error(&self, transport: &ureq::Transport) -> SoapError {
        let observed = self.observed.lock().ok().and_then(|observed| observed.clone());
        let reason = transport.to_string();
        let is_certificate_error = reason.contains("certificate") || reason.contains("thumbprint");
        match (observed, &self.pinned) {
            (Some(actual), Some(expected)) if is_certificate_error && &actual != expected => {
                SoapError::ThumbprintMismatch { endpoint: self.endpoint.clone(), expected: expected.clone(), actual }
            }
            (Some(actual), None) if is_certificate_error => SoapError::UntrustedCertificate { endpoint: self.endpoint.clone(), actual },
            _ => SoapError::Unreachable { endpoint: self.endpoint.clone(), reason },
        }
    }
}
