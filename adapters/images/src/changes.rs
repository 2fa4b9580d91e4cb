//! `docker import --change`: Dockerfile instructions applied to the new image's
//! container config (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, STOPSIGNAL,
//! USER, VOLUME, WORKDIR: the set Docker accepts there).
//!
//! Quotes and backslashes are processed as in a Dockerfile; `$VAR`
//! substitution is not done (the values are stored as written).

use crate::config::RunConfig;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("{instruction} is not supported by docker import --change (supported: {SUPPORTED})")]
    Unsupported { instruction: String },
    #[error("{instruction} needs an argument")]
    MissingArgument { instruction: &'static str },
    #[error("{instruction}: {reason}")]
    Invalid { instruction: &'static str, reason: String },
}

const SUPPORTED: &str = "CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR";

/// Applies `changes` in order to `run`.
pub fn apply_changes(run: &mut RunConfig, changes: &[String]) -> Result<(), ChangeError> {
    // Docker: ENTRYPOINT clears an inherited CMD, but not one set by an earlier
    // instruction in the same set of changes.
    let mut cmd_set = false;
    for change in changes {
        let change = change.trim();
        if change.is_empty() {
            continue;
        }
        let (keyword, rest) = match change.split_once(char::is_whitespace) {
            Some((keyword, rest)) => (keyword, rest.trim()),
            None => (change, ""),
        };
        match keyword.to_ascii_uppercase().as_str() {
            "CMD" => {
                run.cmd = Some(exec_or_shell_form(rest));
                cmd_set = true;
            }
            "ENTRYPOINT" => {
                run.entrypoint = Some(exec_or_shell_form(rest));
                if !cmd_set {
                    run.cmd = None;
                }
            }
            "ENV" => {
                for (key, value) in name_value_pairs("ENV", rest)? {
                    let prefix = format!("{key}=");
                    let entry = format!("{key}={value}");
                    match run.env.iter_mut().find(|e| e.starts_with(&prefix)) {
                        Some(existing) => *existing = entry,
                        None => run.env.push(entry),
                    }
                }
            }
            "LABEL" => {
                for (key, value) in name_value_pairs("LABEL", rest)? {
                    run.labels.insert(key, value);
                }
            }
            "EXPOSE" => {
                let words = words("EXPOSE", rest)?;
                if words.is_empty() {
                    return Err(ChangeError::MissingArgument { instruction: "EXPOSE" });
                }
                for word in words {
                    for port in expand_port_spec(&word)? {
                        run.exposed_ports.insert(port, serde_json::json!({}));
                    }
                }
            }
            "VOLUME" => {
                let paths = match serde_json::from_str::<Vec<String>>(rest) {
                    Ok(paths) if rest.starts_with('[') => paths,
                    _ => words("VOLUME", rest)?,
                };
                if paths.is_empty() || paths.iter().any(|p| p.trim().is_empty()) {
                    return Err(ChangeError::MissingArgument { instruction: "VOLUME" });
                }
                for path in paths {
                    run.volumes.insert(path, serde_json::json!({}));
                }
            }
            "USER" => run.user = single_argument("USER", rest)?,
            "WORKDIR" => {
                let dir = single_argument("WORKDIR", rest)?;
                let joined = if dir.starts_with('/') {
                    dir
                } else {
                    let base = if run.working_dir.is_empty() { "/" } else { run.working_dir.as_str() };
                    format!("{base}/{dir}")
                };
                run.working_dir = clean_absolute_path(&joined);
            }
            "STOPSIGNAL" => {
                let signal = single_argument("STOPSIGNAL", rest)?;
                if signal.contains(char::is_whitespace) {
                    return Err(ChangeError::Invalid { instruction: "STOPSIGNAL", reason: "takes one signal".into() });
                }
                run.stop_signal = Some(signal);
            }
            "ONBUILD" => {
                let (trigger, trigger_rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                let trigger = trigger.to_ascii_uppercase();
                if trigger.is_empty() {
                    return Err(ChangeError::MissingArgument { instruction: "ONBUILD" });
                }
                if matches!(trigger.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                    return Err(ChangeError::Invalid { instruction: "ONBUILD", reason: format!("{trigger} is not allowed as a trigger") });
                }
                run.on_build.push(format!("{trigger} {}", trigger_rest.trim()).trim_end().to_string());
            }
            _ => return Err(ChangeError::Unsupported { instruction: keyword.to_string() }),
        }
    }
    Ok(())
}

/// `["a", "b"]` (exec form) or anything else, run by `/bin/sh -c` (shell form);
/// like Docker, text that fails to parse as a JSON array is shell form.
fn exec_or_shell_form(rest: &str) -> Vec<String> {
    if rest.starts_with('[') {
        if let Ok(args) = serde_json::from_str::<Vec<String>>(rest) {
            return args;
        }
    }
    vec!["/bin/sh".to_string(), "-c".to_string(), rest.to_string()]
}

fn single_argument(instruction: &'static str, rest: &str) -> Result<String, ChangeError> {
    if rest.is_empty() {
        return Err(ChangeError::MissingArgument { instruction });
    }
    Ok(rest.to_string())
}

/// Splits on unquoted whitespace, keeping quotes and backslashes in the words
/// (they are removed by `unquote`, after `key=value` is split).
fn raw_words(instruction: &'static str, text: &str) -> Result<Vec<String>, ChangeError> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
                continue;
            }
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (Some('\''), _) => {}
            (_, '\\') => {
                current.push(c);
                if let Some(escaped) = chars.next() {
                    current.push(escaped);
                }
                in_word = true;
                continue;
            }
            _ => {}
        }
        current.push(c);
        in_word = true;
    }
    if quote.is_some() {
        return Err(ChangeError::Invalid { instruction, reason: format!("unterminated quote in {text:?}") });
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

/// Removes quotes and backslash escapes the way a Dockerfile does.
fn unquote(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut quote: Option<char> = None;
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => out.push(c),
            (Some('"'), '\\') => match chars.peek() {
                // Inside double quotes only these are escapes; other backslashes stay.
                Some(&next @ ('"' | '\\' | '$')) => {
                    out.push(next);
                    chars.next();
                }
                _ => out.push('\\'),
            },
            (None, '\\') => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            (_, c) => out.push(c),
        }
    }
    out
}

fn words(instruction: &'static str, text: &str) -> Result<Vec<String>, ChangeError> {
    Ok(raw_words(instruction, text)?.iter().map(|w| unquote(w)).collect())
}

/// `k=v k2="v 2"`, or the legacy `key value with spaces` form.
fn name_value_pairs(instruction: &'static str, rest: &str) -> Result<Vec<(String, String)>, ChangeError> {
    let raw = raw_words(instruction, rest)?;
    let first = raw.first().ok_or(ChangeError::MissingArgument { instruction })?;
    if !first.contains('=') {
        let (key, value) = rest
            .split_once(char::is_whitespace)
            .ok_or_else(|| ChangeError::Invalid { instruction, reason: format!("{rest:?} has no value (use {instruction} key=value)") })?;
        return Ok(vec![(unquote(key), unquote(value.trim()))]);
    }
    raw.iter()
        .map(|word| {
            let (key, value) =
                word.split_once('=').ok_or_else(|| ChangeError::Invalid { instruction, reason: format!("{word:?} is not key=value") })?;
            let key = unquote(key);
            if key.is_empty() {
                return Err(ChangeError::Invalid { instruction, reason: format!("{word:?} has an empty name") });
            }
            Ok((key, unquote(value)))
        })
        .collect()
}

/// `80`, `80/udp`, `8000-8002/tcp` → `["8000/tcp", "8001/tcp", "8002/tcp"]`.
fn expand_port_spec(spec: &str) -> Result<Vec<String>, ChangeError> {
    let invalid = |reason: String| ChangeError::Invalid { instruction: "EXPOSE", reason };
    let (ports, protocol) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let protocol = protocol.to_ascii_lowercase();
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(invalid(format!("{spec:?}: protocol must be tcp, udp or sctp")));
    }
    let parse_port = |text: &str| match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(invalid(format!("{spec:?}: {text:?} is not a port number (1-65535)"))),
    };
    let (first, last) = match ports.split_once('-') {
        Some((first, last)) => (parse_port(first)?, parse_port(last)?),
        None => {
            let port = parse_port(ports)?;
            (port, port)
        }
    };
    if first > last {
        return Err(invalid(format!("{spec:?}: the range ends before it starts")));
    }
    Ok((first..=last).map(|port| format!("{port}/{protocol}")).collect())
}

/// Lexically cleans an absolute path: no `.`, `..` or repeated slashes.
fn clean_absolute_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(changes: &[&str]) -> Result<RunConfig, ChangeError> {
        let mut run = RunConfig::default();
        apply_changes(&mut run, &changes.iter().map(|c| c.to_string()).collect::<Vec<_>>())?;
        Ok(run)
    }

    #[test]
    fn cmd_and_entrypoint_take_json_or_shell_form() {
        let run = applied(&[r#"CMD ["echo", "hi"]"#, "entrypoint /bin/sh -c"]).expect("valid");
        assert_eq!(run.cmd, Some(vec!["echo".to_string(), "hi".to_string()]));
        assert_eq!(run.entrypoint, Some(vec!["/bin/sh".to_string(), "-c".to_string(), "/bin/sh -c".to_string()]));
        let run = applied(&["CMD echo $HOME"]).expect("valid");
        assert_eq!(run.cmd, Some(vec!["/bin/sh".into(), "-c".into(), "echo $HOME".into()]));
    }

    #[test]
    fn entrypoint_after_nothing_clears_cmd_only_when_cmd_was_not_set_here() {
        let mut run = RunConfig { cmd: Some(vec!["old".into()]), ..RunConfig::default() };
        apply_changes(&mut run, &["ENTRYPOINT [\"x\"]".to_string()]).expect("valid");
        assert_eq!(run.cmd, None);
    }

    #[test]
    fn env_and_label_handle_quotes_and_both_forms() {
        let run =
            applied(&[r#"ENV A=1 B="two words" C='it''s'"#, "ENV D legacy value here", "ENV A=replaced", r#"LABEL "com.x.y"="v 1" z=\"q"#])
                .expect("valid");
        assert_eq!(run.env, vec!["A=replaced", "B=two words", "C=its", "D=legacy value here"]);
        assert_eq!(run.labels.get("com.x.y").map(String::as_str), Some("v 1"));
        assert_eq!(run.labels.get("z").map(String::as_str), Some("\"q"));
    }

    #[test]
    fn expose_workdir_user_volume() {
        let run = applied(&[
            "EXPOSE 80 53/udp 8000-8001",
            "WORKDIR /srv",
            "WORKDIR app/../data",
            "USER 1000:1000",
            "VOLUME [\"/v1\"]",
            "VOLUME /v2 /v3",
        ])
        .expect("valid");
        let ports: Vec<&str> = run.exposed_ports.keys().map(String::as_str).collect();
        assert_eq!(ports, vec!["53/udp", "80/tcp", "8000/tcp", "8001/tcp"]);
        assert_eq!(run.working_dir, "/srv/data");
        assert_eq!(run.user, "1000:1000");
        assert_eq!(run.volumes.len(), 3);
    }

    #[test]
    fn bad_changes_are_refused_with_reasons() {
        for (change, expected) in [
            ("RUN echo", "not supported"),
            ("EXPOSE 0", "port number"),
            ("EXPOSE 80/xyz", "protocol"),
            ("EXPOSE 90-80", "range"),
            ("ENV", "needs an argument"),
            ("ENV lonely", "no value"),
            ("ENV A=\"open", "unterminated"),
            ("USER", "needs an argument"),
            ("ONBUILD FROM x", "not allowed"),
        ] {
            let error = applied(&[change]).expect_err(change).to_string();
            assert!(error.contains(expected), "{change:?} gave {error:?}");
        }
    }
}
