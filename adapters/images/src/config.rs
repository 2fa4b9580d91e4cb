//! Image configs (the JSON blob whose sha256 is the image id): the typed view
//! the Docker API needs, and the config `docker import` writes.
//!
//! Parsing is tolerant the way Docker's is: unknown fields are ignored and
//! `null` stands for empty, because configs come from many tools.

use crate::digest::sha256_hex;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;

/// The part of an image config that configures containers (`config` in the
/// JSON), with Docker's field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(rename = "ExposedPorts", default, deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "Env", default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(rename = "Entrypoint", default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Volumes", default, deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "WorkingDir", default, deserialize_with = "null_as_default", skip_serializing_if = "String::is_empty")]
    pub working_dir: String,
    #[serde(rename = "Labels", default, deserialize_with = "null_as_default", skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "OnBuild", default, deserialize_with = "null_as_default", skip_serializing_if = "Vec::is_empty")]
    pub on_build: Vec<String>,
    #[serde(rename = "StopSignal", default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

pub(crate) fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Deserialize)]
struct ConfigWire {
    #[serde(default, deserialize_with = "null_as_default")]
    architecture: String,
    #[serde(default, deserialize_with = "null_as_default")]
    os: String,
    #[serde(default)]
    variant: Option<String>,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    author: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    config: RunConfig,
    rootfs: RootFsWire,
    #[serde(default, deserialize_with = "null_as_default")]
    history: Vec<HistoryWire>,
}

#[derive(Debug, Deserialize)]
struct RootFsWire {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    diff_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct HistoryWire {
    #[serde(default)]
    created: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    created_by: String,
    #[serde(default, deserialize_with = "null_as_default")]
    comment: String,
    #[serde(default, deserialize_with = "null_as_default")]
    author: String,
    #[serde(default, deserialize_with = "null_as_default")]
    empty_layer: bool,
}

/// Why a config blob cannot be an image config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the image config is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the image config's rootfs type is {0:?}, not \"layers\"")]
    RootFsType(String),
    #[error("the image config names layer {0:?}, which is not a sha256 digest")]
    DiffId(String),
}

/// One line of `docker history`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub created: Option<String>,
    pub created_unix_s: Option<i64>,
    pub created_by: String,
    pub comment: String,
    pub author: String,
    /// True when the step made no layer (ENV, CMD...): it has no size.
    pub empty_layer: bool,
    /// Size of the layer this step made (0 for empty layers).
    pub size_bytes: u64,
}

/// An image's config, typed for the Docker API, with the parsed JSON in `raw`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageConfig {
    /// `sha256:<hex>` of the config blob.
    pub id: String,
    pub architecture: String,
    pub os: String,
    pub variant: Option<String>,
    /// RFC 3339 as written in the config.
    pub created: Option<String>,
    pub created_unix_s: Option<i64>,
    pub author: Option<String>,
    pub comment: Option<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// `port/protocol`, e.g. `80/tcp`, sorted.
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub on_build: Vec<String>,
    /// Digests of the uncompressed layers, bottom first.
    pub diff_ids: Vec<String>,
    /// Size of each layer, in `diff_ids` order.
    pub layer_sizes_bytes: Vec<u64>,
    pub history: Vec<HistoryEntry>,
    /// The whole config: the container config section is `raw["config"]`.
    pub raw: serde_json::Value,
}

/// Parses and checks a config blob; `layer_sizes_bytes` is filled with zeros
/// (the store knows the sizes, the blob does not).
pub(crate) fn parse_config(id: &str, bytes: &[u8]) -> Result<ImageConfig, ConfigError> {
    let raw: serde_json::Value = serde_json::from_slice(bytes)?;
    let wire: ConfigWire = serde_json::from_value(raw.clone())?;
    if wire.rootfs.kind != "layers" {
        return Err(ConfigError::RootFsType(wire.rootfs.kind));
    }
    if let Some(bad) = wire.rootfs.diff_ids.iter().find(|d| sha256_hex(d).is_none()) {
        return Err(ConfigError::DiffId(bad.clone()));
    }
    let history = wire
        .history
        .into_iter()
        .map(|h| HistoryEntry {
            created_unix_s: h.created.as_deref().and_then(parse_rfc3339_unix_s),
            created: h.created,
            created_by: h.created_by,
            comment: h.comment,
            author: h.author,
            empty_layer: h.empty_layer,
            size_bytes: 0,
        })
        .collect();
    let run = wire.config;
    Ok(ImageConfig {
        id: id.to_string(),
        architecture: wire.architecture,
        os: wire.os,
        variant: wire.variant,
        created_unix_s: wire.created.as_deref().and_then(parse_rfc3339_unix_s),
        created: wire.created,
        author: wire.author,
        comment: wire.comment,
        cmd: run.cmd,
        entrypoint: run.entrypoint,
        env: run.env,
        working_dir: run.working_dir,
        user: run.user,
        exposed_ports: run.exposed_ports.into_keys().collect(),
        volumes: run.volumes.into_keys().collect(),
        labels: run.labels,
        stop_signal: run.stop_signal,
        on_build: run.on_build,
        layer_sizes_bytes: vec![0; wire.rootfs.diff_ids.len()],
        diff_ids: wire.rootfs.diff_ids,
        history,
        raw,
    })
}

impl ImageConfig {
    /// Fills layer sizes and gives each history step that made a layer the
    /// size of that layer (steps and layers pair up in order, skipping
    /// `empty_layer` steps, as Docker does).
    pub(crate) fn set_layer_sizes(&mut self, layer_sizes_bytes: Vec<u64>) {
        let mut sizes = layer_sizes_bytes.iter();
        for entry in self.history.iter_mut().filter(|h| !h.empty_layer) {
            entry.size_bytes = sizes.next().copied().unwrap_or(0);
        }
        self.layer_sizes_bytes = layer_sizes_bytes;
    }
}

pub(crate) fn parse_rfc3339_unix_s(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok().map(|t| t.unix_timestamp())
}

pub(crate) fn format_rfc3339(unix_s: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_s)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        // Out-of-range times (beyond year 9999) cannot be written as RFC 3339;
        // the epoch is a harmless stand-in for a display-only field.
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// The platform names Go (and so every image config) uses for this machine.
pub(crate) fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

pub(crate) const HOST_OS: &str = "linux";

#[derive(Serialize)]
struct ImportConfigWire<'a> {
    architecture: &'a str,
    os: &'a str,
    created: &'a str,
    comment: &'a str,
    config: &'a RunConfig,
    rootfs: ImportRootFs<'a>,
    history: [ImportHistory<'a>; 1],
}

#[derive(Serialize)]
struct ImportRootFs<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    diff_ids: [&'a str; 1],
}

#[derive(Serialize)]
struct ImportHistory<'a> {
    created: &'a str,
    comment: &'a str,
}

/// The config blob of a one-layer image made by `docker import`.
pub(crate) fn import_config_bytes(diff_id: &str, run: &RunConfig, message: &str, created_unix_s: i64) -> Vec<u8> {
    let created = format_rfc3339(created_unix_s);
    let wire = ImportConfigWire {
        architecture: host_architecture(),
        os: HOST_OS,
        created: &created,
        comment: message,
        config: run,
        rootfs: ImportRootFs { kind: "layers", diff_ids: [diff_id] },
        history: [ImportHistory { created: &created, comment: message }],
    };
    serde_json::to_vec(&wire).expect("a struct of strings and maps always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_style_nulls_parse_as_empty() {
        let diff = format!("sha256:{}", "0".repeat(64));
        let json = format!(
            r#"{{"architecture":"amd64","os":"linux","created":"2024-05-01T10:00:00.123456789Z",
            "config":{{"Env":null,"Cmd":["sh"],"Labels":null,"ExposedPorts":{{"80/tcp":{{}}}},"Hostname":""}},
            "rootfs":{{"type":"layers","diff_ids":["{diff}"]}},
            "history":[{{"created_by":"ADD rootfs"}},{{"created_by":"CMD","empty_layer":true}}]}}"#
        );
        let mut config = parse_config("sha256:x", json.as_bytes()).expect("valid");
        config.set_layer_sizes(vec![42]);
        assert_eq!(config.cmd, Some(vec!["sh".to_string()]));
        assert!(config.env.is_empty() && config.labels.is_empty());
        assert_eq!(config.exposed_ports, vec!["80/tcp"]);
        assert_eq!(config.created_unix_s, Some(1_714_557_600));
        assert_eq!(config.history[0].size_bytes, 42);
        assert_eq!(config.history[1].size_bytes, 0);
    }

    #[test]
    fn configs_without_layers_rootfs_are_refused() {
        assert!(parse_config("x", br#"{"rootfs":{"type":"other","diff_ids":[]}}"#).is_err());
        assert!(parse_config("x", br#"{"rootfs":{"type":"layers","diff_ids":["sha256:../x"]}}"#).is_err());
        assert!(parse_config("x", b"[1,2]").is_err());
    }

    #[test]
    fn import_config_round_trips_through_the_parser() {
        let diff = format!("sha256:{}", "1".repeat(64));
        let run = RunConfig { cmd: Some(vec!["/bin/sh".into()]), ..RunConfig::default() };
        let bytes = import_config_bytes(&diff, &run, "Imported from -", 0);
        let config = parse_config("sha256:x", &bytes).expect("valid");
        assert_eq!(config.diff_ids, vec![diff]);
        assert_eq!(config.cmd, run.cmd);
        assert_eq!(config.created.as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(config.history[0].comment, "Imported from -");
    }
}
