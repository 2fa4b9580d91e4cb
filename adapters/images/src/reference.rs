//! Image references (`[registry/]repository[:tag]`): validation and the two
//! spellings Docker uses, familiar (`busybox:latest`, in `RepoTags`) and fully
//! qualified (`docker.io/library/busybox:latest`, in OCI annotations).

use std::fmt;

const DEFAULT_DOMAIN: &str = "docker.io";
const OFFICIAL_NAMESPACE: &str = "library/";
const DEFAULT_TAG: &str = "latest";
/// Docker's limit on the repository name (without the tag).
const MAX_NAME_LENGTH: usize = 255;
const MAX_TAG_LENGTH: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference {reference:?}: {reason}")]
    Invalid { reference: String, reason: &'static str },
    #[error("reference {reference:?} names a digest; only repository:tag references can tag an image")]
    DigestNotAllowed { reference: String },
}

/// A tagged image reference, normalized: the domain and the `library/`
/// namespace are filled in, a missing tag is `latest`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageReference {
    /// Registry host (and port), `docker.io` for Docker Hub.
    pub domain: String,
    /// Repository path within the registry, e.g. `library/busybox`.
    pub path: String,
    pub tag: String,
}

impl ImageReference {
    pub fn parse(reference: &str) -> Result<ImageReference, ReferenceError> {
        let invalid = |reason| ReferenceError::Invalid { reference: reference.to_string(), reason };
        if reference.contains('@') {
            return Err(ReferenceError::DigestNotAllowed { reference: reference.to_string() });
        }
        let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match reference[last_slash..].rfind(':') {
            Some(colon) => (&reference[..last_slash + colon], &reference[last_slash + colon + 1..]),
            None => (reference, DEFAULT_TAG),
        };
        if name.is_empty() {
            return Err(invalid("the repository name is empty"));
        }
        if name.len() > MAX_NAME_LENGTH {
            return Err(invalid("the repository name is longer than 255 characters"));
        }
        if !is_valid_tag(tag) {
            return Err(invalid("a tag is 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest)) if looks_like_domain(first) => (first.to_string(), rest.to_string()),
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if !is_valid_domain(&domain) {
            return Err(invalid("the registry host is not a valid host[:port]"));
        }
        if !path.split('/').all(is_valid_path_component) {
            return Err(invalid("repository names are lowercase letters and digits, separated by '.', '_', '__', '-' or '/'"));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') { format!("{OFFICIAL_NAMESPACE}{path}") } else { path };
        Ok(ImageReference { domain, path, tag: tag.to_string() })
    }

    /// The short form Docker shows and writes in `RepoTags`: `busybox:latest`,
    /// `someone/app:1`, `registry.example:5000/app:1`.
    pub fn familiar(&self) -> String {
        format!("{}:{}", self.familiar_name(), self.tag)
    }

    /// The repository without the tag, in the familiar form.
    pub fn familiar_name(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            self.path.strip_prefix(OFFICIAL_NAMESPACE).unwrap_or(&self.path).to_string()
        } else {
            format!("{}/{}", self.domain, self.path)
        }
    }

    /// The fully qualified form: `docker.io/library/busybox:latest`.
    pub fn fully_qualified(&self) -> String {
        format!("{}/{}:{}", self.domain, self.path, self.tag)
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.familiar())
    }
}

/// Docker's rule: the first component is a registry when it has a `.` or a
/// port, is `localhost`, or has capitals (repositories never do).
fn looks_like_domain(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost" || first.bytes().any(|b| b.is_ascii_uppercase())
}

fn is_valid_domain(domain: &str) -> bool {
    let (host, port) = match domain.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let labels_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    port_ok && labels_ok
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut index = 0;
    while index < bytes.len() {
        if is_alnum(bytes[index]) {
            index += 1;
            continue;
        }
        let start = index;
        while index < bytes.len() && !is_alnum(bytes[index]) {
            index += 1;
        }
        let separator = &bytes[start..index];
        let allowed = matches!(separator, b"." | b"_" | b"__") || separator.iter().all(|&b| b == b'-');
        if !allowed {
            return false;
        }
    }
    true
}

fn is_valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_TAG_LENGTH && word(bytes[0]) && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_images_normalize_both_ways() {
        let reference = ImageReference::parse("busybox").expect("valid");
        assert_eq!(reference.fully_qualified(), "docker.io/library/busybox:latest");
        assert_eq!(reference.familiar(), "busybox:latest");
        assert_eq!(reference.familiar_name(), "busybox");
        assert_eq!(reference.to_string(), "busybox:latest");
        let same = ImageReference::parse("docker.io/library/busybox:latest").expect("valid");
        assert_eq!(same, reference);
    }

    #[test]
    fn user_and_registry_repositories_keep_their_names() {
        assert_eq!(ImageReference::parse("someone/app:1.0").expect("valid").fully_qualified(), "docker.io/someone/app:1.0");
        let private = ImageReference::parse("localhost:5000/team/app").expect("valid");
        assert_eq!(private.familiar(), "localhost:5000/team/app:latest");
        assert_eq!(private.domain, "localhost:5000");
        assert_eq!(private.familiar_name(), "localhost:5000/team/app");
        assert!(ImageReference::parse("caf\u{e9}").is_err(), "non-ASCII names are refused, not sliced");
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in ["", ":tag", "Busybox", "busy box", "app:", "app:-x", "a//b", "app@sha256:00", "-app", "app__-x"] {
            assert!(ImageReference::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(ImageReference::parse(&format!("app:{}", "t".repeat(129))).is_err());
    }
}
