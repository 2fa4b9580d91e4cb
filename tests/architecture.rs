//! Architecture rules, checked on the source tree: dependencies point inward,
//! `core` has no I/O or async runtime, and every Rust file starts with a `//!`
//! doc that says what it is for.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dependencies(manifest: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(manifest).unwrap();
    let parsed: toml::Value = toml::from_str(&text).unwrap();
    let mut names = Vec::new();
    for section in ["dependencies", "build-dependencies"] {
        if let Some(table) = parsed.get(section).and_then(|t| t.as_table()) {
            names.extend(table.keys().cloned());
        }
    }
    names
}

fn members() -> Vec<String> {
    let parsed: toml::Value = toml::from_str(&std::fs::read_to_string(root().join("Cargo.toml")).unwrap()).unwrap();
    parsed["workspace"]["members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect()
}

#[test]
fn core_has_no_io_or_async_runtime_dependency() {
    let allowed = ["serde", "thiserror"];
    for dependency in dependencies(&root().join("core/Cargo.toml")) {
        assert!(allowed.contains(&dependency.as_str()), "core must stay pure; it depends on {dependency}");
    }
}

#[test]
fn dependencies_point_inward() {
    // Which workspace crates each layer may use.
    let rules: &[(&str, &[&str])] = &[
        ("core", &[]),
        ("projections", &["berth-core"]),
        ("engine", &["berth-core", "berth-projections"]),
        ("api", &["berth-core", "berth-projections", "berth-engine"]),
        ("simulations", &["berth-core", "berth-projections", "berth-engine"]),
    ];
    for member in members() {
        let deps: Vec<String> =
            dependencies(&root().join(&member).join("Cargo.toml")).into_iter().filter(|d| d.starts_with("berth")).collect();
        let allowed: Vec<&str> = if member.starts_with("adapters/") {
            vec!["berth-core", "berth-projections", "berth-engine"]
        } else {
            rules.iter().find(|(name, _)| *name == member).unwrap_or_else(|| panic!("no dependency rule for {member}")).1.to_vec()
        };
        for dep in deps {
            assert!(allowed.contains(&dep.as_str()), "{member} must not depend on {dep}");
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let mut files = Vec::new();
    for dir in ["src", "core", "projections", "engine", "adapters", "api", "simulations", "tests"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 10);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let first = text.lines().find(|line| !line.trim().is_empty()).unwrap_or("");
        assert!(first.starts_with("//!"), "{} must start with a //! doc", file.display());
    }
}
