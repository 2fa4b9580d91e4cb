//! Certificate thumbprints (SHA-1 as vSphere prints them, or SHA-256) and a TLS verifier that pins one.
//!
//! vSphere hosts usually present self-signed certificates; like vic-machine's
//! `--thumbprint`, the client trusts exactly the certificate whose digest was
//! given, and otherwise verifies against the public web PKI roots. Either way
//! the verifier remembers the thumbprint it saw, so an error can name it.

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum ThumbprintError {
    #[error("thumbprint {given:?} is not a SHA-1 (20 bytes) or SHA-256 (32 bytes) digest in hexadecimal, e.g. AB:CD:...")]
    Malformed { given: String },
    #[error("cannot set up TLS: {0}")]
    TlsSetup(String),
}

/// A certificate digest: SHA-1 (vSphere's usual form) or SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct Thumbprint {
    digest_bytes: Vec<u8>,
}

impl Thumbprint {
    /// Parses hexadecimal with or without `:` separators, in either case.
    pub fn parse(text: &str) -> Result<Thumbprint, ThumbprintError> {
        let malformed = || ThumbprintError::Malformed { given: text.to_string() };
        let hex: String = text.chars().filter(|c| *c != ':' && !c.is_whitespace()).collect();
        if !hex.len().is_multiple_of(2) || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(malformed());
        }
        let digest_bytes = (0..hex.len())
            .step_by(2)
            .map(|index| u8::from_str_radix(&hex[index..index + 2], 16).map_err(|_| malformed()))
            .collect::<Result<Vec<u8>, _>>()?;
        if digest_bytes.len() != 20 && digest_bytes.len() != 32 {
            return Err(malformed());
        }
        Ok(Thumbprint { digest_bytes })
    }

    /// The SHA-1 thumbprint of a DER certificate, as vSphere shows it.
    pub fn sha1_of(certificate_der: &[u8]) -> Thumbprint {
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, certificate_der);
        Thumbprint { digest_bytes: digest.as_ref().to_vec() }
    }

    /// Whether this thumbprint is the digest (of its own kind) of the certificate.
    pub fn matches(&self, certificate_der: &[u8]) -> bool {
        let algorithm = if self.digest_bytes.len() == 20 { &ring::digest::SHA1_FOR_LEGACY_USE_ONLY } else { &ring::digest::SHA256 };
        ring::digest::digest(algorithm, certificate_der).as_ref() == self.digest_bytes.as_slice()
    }
}

impl fmt::Display for Thumbprint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: Vec<String> = self.digest_bytes.iter().map(|byte| format!("{byte:02X}")).collect();
        formatter.write_str(&hex.join(":"))
    }
}

impl fmt::Debug for Thumbprint {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Thumbprint({self})")
    }
}

/// The thumbprint of the last certificate a server presented, shared with the transport.
pub type ObservedThumbprint = Arc<Mutex<Option<Thumbprint>>>;

/// Trusts the pinned certificate if a thumbprint is given, else the web PKI roots.
#[derive(Debug)]
struct PinningVerifier {
    pinned: Option<Thumbprint>,
    web_pki: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
    observed: ObservedThumbprint,
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut observed) = self.observed.lock() {
            *observed = Some(Thumbprint::sha1_of(end_entity.as_ref()));
        }
        match &self.pinned {
            Some(pinned) if pinned.matches(end_entity.as_ref()) => Ok(ServerCertVerified::assertion()),
            Some(_) => Err(rustls::Error::General("certificate thumbprint mismatch".to_string())),
            None => self.web_pki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, certificate, signature, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client configuration that pins `pinned` (or uses the web PKI), recording what it saw in `observed`.
pub fn tls_config(pinned: Option<Thumbprint>, observed: ObservedThumbprint) -> Result<Arc<rustls::ClientConfig>, ThumbprintError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let web_pki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|error| ThumbprintError::TlsSetup(error.to_string()))?;
    let verifier = PinningVerifier { pinned, web_pki, provider: provider.clone(), observed };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| ThumbprintError::TlsSetup(error.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_vsphere_thumbprints() {
        let text = "2C:11:ED:D7:13:87:7D:B5:74:18:B8:1C:42:C2:56:1F:0D:B9:5B:B9";
        let thumbprint = Thumbprint::parse(&text.to_lowercase()).expect("valid");
        assert_eq!(thumbprint.to_string(), text);
        assert!(Thumbprint::parse("2C:11").is_err());
        assert!(Thumbprint::parse("zz").is_err());
    }

    #[test]
    fn matches_only_its_own_certificate() {
        let certificate_der = b"not really a certificate, but bytes to digest";
        let thumbprint = Thumbprint::sha1_of(certificate_der);
        assert!(thumbprint.matches(certificate_der));
        assert!(!thumbprint.matches(b"another certificate"));
    }
}
