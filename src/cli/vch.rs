//! `berth vch create|ls|inspect|configure|upgrade|delete`: the administrator's
//! tool for virtual container hosts, vic-machine's successor. It is a thin
//! client of the admin REST API a running `berth serve` exposes on its portal
//! listener (`berth_api::admin`): it turns vic-machine-style flags into one
//! HTTP request, and the server's answer into vic-machine-style output.
//!
//! The server validates everything against vSphere; this side checks only
//! what it can know alone (options berth does not support yet, missing
//! credentials, TLS files that do not fit together, an empty configure), so
//! that a mistake fails before a minutes-long call starts.
//!
//! TLS files are read here and sent as PEM text, so that this tool and the
//! server may run on different machines (vic-machine took paths too).

use crate::tls::{self, TlsMaterial};
use anyhow::{anyhow, bail, Context as _};
use berth_api::admin::{VchConfigureRequest, VchCreateRequest, VchInfo};
use clap::{Args, Subcommand};
use std::io::{BufRead as _, Read as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

/// Where the admin API listens unless told otherwise: the portal's default listener.
const SERVER_DEFAULT: &str = "http://127.0.0.1:8080";
/// vic-machine's default VCH name.
const NAME_DEFAULT: &str = "virtual-container-host";
/// Calls that change vSphere objects (create, configure, upgrade, delete) may take minutes.
const CHANGE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10 * 60);
/// Calls that only read berth's views answer at once.
const READ_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// Connecting never needs long: a slow connect means a wrong address, not a busy server.
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(30);
/// How much of a server answer that is not the expected JSON an error message quotes.
const QUOTED_BODY_CHARS_MAX: usize = 500;
/// What TLS options that would need a generated certificate (vic-machine made one) are told.
const NO_CERTIFICATE_GENERATION: &str = "berth does not generate certificates yet: pass --tls-server-cert and --tls-server-key";
/// PEM files are a few KiB; a bigger one is the wrong file, and would be sent whole.
const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

#[derive(Args)]
pub struct VchCommand {
    /// Where berth's admin API is: the portal listener of a running `berth serve`.
    #[arg(long, global = true, env = "BERTH_SERVER", default_value = SERVER_DEFAULT)]
    server: String,
    /// How long to wait for the server's answer (e.g. 90s, 10m); default 10m for create, configure, upgrade and delete, 1m for ls and inspect.
    #[arg(long, global = true, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    #[command(subcommand)]
    action: VchAction,
}

#[derive(Subcommand)]
enum VchAction {
    /// Create a VCH on a vCenter or ESX host and print its DOCKER_HOST.
    Create(Box<CreateArgs>),
    /// List the VCHs this berth hosts.
    Ls(ListArgs),
    /// Show one VCH's settings, state and Docker endpoint.
    Inspect(InspectArgs),
    /// Change a VCH's credentials, limits, volume stores or container networks.
    Configure(ConfigureArgs),
    /// Upgrade a VCH to the running berth's version.
    Upgrade(NameArgs),
    /// Delete a VCH and its vSphere objects.
    Delete(DeleteArgs),
}

#[derive(Args)]
struct CreateArgs {
    /// The vCenter or ESX host: https://HOST[/sdk], http://HOST or HOST. Credentials in it (https://USER:PASSWORD@HOST) are sent as --user and --password, never kept in the target.
    #[arg(long, env = "BERTH_TARGET")]
    target: String,
    /// The vSphere user.
    #[arg(long, env = "BERTH_USER")]
    user: Option<String>,
    /// The vSphere user's password (prefer BERTH_PASSWORD or --password-stdin: command lines are visible to other users).
    #[arg(long, env = "BERTH_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// The SHA-1 thumbprint of the target's certificate, for a target whose certificate no CA vouches for.
    #[arg(long)]
    thumbprint: Option<String>,
    /// The VCH's name.
    #[arg(long, default_value = NAME_DEFAULT)]
    name: String,
    /// The cluster, host or resource pool the VCH runs in (the only one when absent).
    #[arg(long, value_name = "NAME")]
    compute_resource: Option<String>,
    /// The datastore for images and container VMs (the first one when absent).
    #[arg(long, value_name = "DATASTORE")]
    image_store: Option<String>,
    /// A volume store, DATASTORE[/PATH]:LABEL (repeatable); `docker volume create --opt VolumeStore=LABEL` picks it.
    #[arg(long, value_name = "DATASTORE/PATH:LABEL")]
    volume_store: Vec<String>,
    /// The port group container VMs' bridge NICs use.
    #[arg(long, value_name = "PORTGROUP")]
    bridge_network: Option<String>,
    /// The port group for the VCH's public network.
    #[arg(long, value_name = "PORTGROUP")]
    public_network: Option<String>,
    /// The port group Docker clients reach the VCH on.
    #[arg(long, value_name = "PORTGROUP")]
    client_network: Option<String>,
    /// The port group the VCH reaches vSphere on.
    #[arg(long, value_name = "PORTGROUP")]
    management_network: Option<String>,
    /// A port group offered to containers as a Docker network, PORTGROUP[:ALIAS] (repeatable).
    #[arg(long, value_name = "PORTGROUP:ALIAS")]
    container_network: Vec<String>,
    /// The VCH's memory limit in MiB (unlimited when absent).
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    /// The VCH's CPU limit in MHz (unlimited when absent).
    #[arg(long, value_name = "MHZ")]
    cpu: Option<u64>,
    /// The most containers the VCH may hold.
    #[arg(long, value_name = "COUNT")]
    containers: Option<u64>,
    /// Where the VCH's Docker API listens, HOST:PORT (port 0 picks a free port; a non-loopback address needs TLS). Default 127.0.0.1:0.
    #[arg(long, value_name = "HOST:PORT")]
    docker_listen: Option<String>,
    /// Serve the VCH's Docker API as plain HTTP (loopback only); the default without --tls-server-cert.
    #[arg(long)]
    no_tls: bool,
    /// The PEM file of the Docker API's server certificate (then any intermediates); needs --tls-server-key.
    #[arg(long, value_name = "PATH")]
    tls_server_cert: Option<String>,
    /// The PEM file of the server certificate's unencrypted private key; needs --tls-server-cert.
    #[arg(long, value_name = "PATH")]
    tls_server_key: Option<String>,
    /// A CA's PEM file (repeatable): clients must present a certificate it signed (docker --tlsverify).
    #[arg(long, value_name = "PATH")]
    tls_ca: Vec<String>,
    /// Not supported: berth does not generate certificates yet (use --tls-server-cert and --tls-server-key).
    #[arg(long, value_name = "NAME")]
    tls_cname: Option<String>,
    /// Serve TLS without asking clients for certificates (docker --tls); the default without --tls-ca.
    #[arg(long)]
    no_tlsverify: bool,
}

#[derive(Args)]
struct ListArgs {
    /// table, or json for the server's answer as it is.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

#[derive(Args)]
struct InspectArgs {
    /// The VCH's name.
    #[arg(long)]
    name: String,
    /// text, or json for the server's answer as it is.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
}

#[derive(Args)]
struct ConfigureArgs {
    /// The VCH's name.
    #[arg(long)]
    name: String,
    /// A new vSphere user (checked before it is kept).
    #[arg(long)]
    user: Option<String>,
    // Unlike create, no BERTH_PASSWORD here: a variable exported for create
    // would otherwise turn every configure into a credential change.
    /// A new vSphere password (checked before it is kept; prefer --password-stdin).
    #[arg(long)]
    password: Option<String>,
    /// Read the new password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
    /// The SHA-1 thumbprint of the target's certificate.
    #[arg(long)]
    thumbprint: Option<String>,
    /// The VCH's memory limit in MiB.
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    /// The VCH's CPU limit in MHz.
    #[arg(long, value_name = "MHZ")]
    cpu: Option<u64>,
    /// The most containers the VCH may hold.
    #[arg(long, value_name = "COUNT")]
    containers: Option<u64>,
    /// The volume stores, DATASTORE[/PATH]:LABEL (repeatable; replaces the list, which must keep the existing ones).
    #[arg(long, value_name = "DATASTORE/PATH:LABEL")]
    volume_store: Vec<String>,
    /// The container networks, PORTGROUP[:ALIAS] (repeatable; replaces the list).
    #[arg(long, value_name = "PORTGROUP:ALIAS")]
    container_network: Vec<String>,
}

#[derive(Args)]
struct NameArgs {
    /// The VCH's name.
    #[arg(long)]
    name: String,
}

#[derive(Args)]
struct DeleteArgs {
    /// The VCH's name.
    #[arg(long)]
    name: String,
    /// Delete the VCH even if it holds containers (they go too).
    #[arg(long)]
    force: bool,
}

/// Runs one `berth vch` command. Failures are printed here as `Error: ...`
/// (vic-machine's and docker's form), not by the caller, so that a server's
/// refusal reads as the server wrote it.
pub fn run(command: VchCommand) -> anyhow::Result<ExitCode> {
    match execute(command) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "Error: {error:#}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn execute(command: VchCommand) -> anyhow::Result<()> {
    let VchCommand { server, timeout, action } = command;
    let changes = !matches!(action, VchAction::Ls(_) | VchAction::Inspect(_));
    let timeout = timeout.unwrap_or(if changes { CHANGE_TIMEOUT_DEFAULT } else { READ_TIMEOUT_DEFAULT });
    let client = Client::new(&server, timeout)?;
    match action {
        VchAction::Create(args) => create(&client, *args),
        VchAction::Ls(args) => list(&client, &args),
        VchAction::Inspect(args) => inspect(&client, &args),
        VchAction::Configure(args) => configure(&client, args),
        VchAction::Upgrade(args) => upgrade(&client, &args),
        VchAction::Delete(args) => delete(&client, &args),
    }
}

fn create(client: &Client, args: CreateArgs) -> anyhow::Result<()> {
    let tls = tls_material(&args)?;
    if args.name.trim().is_empty() {
        bail!("--name must not be empty");
    }
    let (target, target_user, target_password) = split_credentials(&args.target);
    if target.trim().is_empty() {
        bail!("--target must name a vCenter or ESX host");
    }
    let password = if args.password_stdin { Some(read_password_from_stdin()?) } else { args.password.or(target_password) };
    let Some(password) = password else {
        bail!("--password or BERTH_PASSWORD is required (or pipe it to --password-stdin)");
    };
    let Some(user) = args.user.or(target_user) else {
        bail!("--user or BERTH_USER is required");
    };
    let request = VchCreateRequest {
        name: args.name,
        target,
        user,
        password,
        thumbprint: args.thumbprint,
        compute_resource: args.compute_resource,
        image_store: args.image_store,
        volume_stores: args.volume_store,
        bridge_network: args.bridge_network,
        public_network: args.public_network,
        client_network: args.client_network,
        management_network: args.management_network,
        container_networks: args.container_network,
        memory_mib: args.memory,
        cpu_mhz: args.cpu,
        containers: args.containers,
        docker_listen: args.docker_listen,
        tls_server_cert_pem: tls.as_ref().map(|tls| tls.server_cert_pem.clone()),
        tls_server_key_pem: tls.as_ref().map(|tls| tls.server_key_pem.clone()),
        tls_ca_pem: tls.and_then(|tls| tls.client_ca_pem),
    };
    // Stderr: the wait can be long, and stdout stays the result alone.
    let _ = writeln!(
        std::io::stderr(),
        "Creating VCH {:?} on {} (waiting up to {})...",
        request.name,
        request.target,
        humantime::format_duration(client.timeout)
    );
    let body = client.call("POST", "/api/vchs", Some(without_nulls(&request)?))?;
    let info: VchInfo = client.parse(&body, "/api/vchs")?;
    let mut text = format!("VCH name: {}\nVCH version: {}\n", info.name, info.version.as_deref().unwrap_or("unknown"));
    text.push_str(&docker_lines(&info, "export "));
    if let Some(error) = &info.last_error {
        text.push_str(&format!("Warning: the VCH reports a failing action: {error}\n"));
    }
    text.push_str("Completed successfully\n");
    print(&text);
    Ok(())
}

/// The TLS files of `create`, read and checked against each other, or None for plain HTTP.
fn tls_material(args: &CreateArgs) -> anyhow::Result<Option<TlsMaterial>> {
    if args.tls_cname.is_some() {
        bail!("--tls-cname: {NO_CERTIFICATE_GENERATION}");
    }
    let tls_flags: Vec<&str> = [
        ("--tls-server-cert", args.tls_server_cert.is_some()),
        ("--tls-server-key", args.tls_server_key.is_some()),
        ("--tls-ca", !args.tls_ca.is_empty()),
        ("--no-tlsverify", args.no_tlsverify),
    ]
    .into_iter()
    .filter_map(|(flag, given)| given.then_some(flag))
    .collect();
    if args.no_tls && !tls_flags.is_empty() {
        bail!("--no-tls serves plain HTTP; it cannot go with {}", tls_flags.join(", "));
    }
    if args.no_tlsverify && !args.tls_ca.is_empty() {
        bail!("--no-tlsverify lets clients in without a certificate; it cannot go with --tls-ca, which requires one");
    }
    let (cert_path, key_path) = match (&args.tls_server_cert, &args.tls_server_key) {
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => bail!("--tls-server-cert needs --tls-server-key: give both or neither"),
        (None, Some(_)) => bail!("--tls-server-key needs --tls-server-cert: give both or neither"),
        (None, None) if tls_flags.is_empty() => return Ok(None),
        (None, None) => {
            bail!("{} {} TLS, and {NO_CERTIFICATE_GENERATION}", tls_flags.join(", "), if tls_flags.len() == 1 { "needs" } else { "need" })
        }
    };
    let mut client_ca_pem = None::<String>;
    for path in &args.tls_ca {
        let pem = read_pem_file("--tls-ca", path)?;
        let all = client_ca_pem.get_or_insert_with(String::new);
        if !all.is_empty() && !all.ends_with('\n') {
            all.push('\n');
        }
        all.push_str(&pem);
    }
    let material = TlsMaterial {
        server_cert_pem: read_pem_file("--tls-server-cert", cert_path)?,
        server_key_pem: read_pem_file("--tls-server-key", key_path)?,
        client_ca_pem,
    };
    // The server checks them too; here the mistake shows before the long call, next to the files.
    let files: Vec<&str> = tls_flags.into_iter().filter(|flag| *flag != "--no-tlsverify").collect();
    tls::server_config(&material).with_context(|| format!("checking {}", files.join(", ")))?;
    Ok(Some(material))
}

/// A PEM file's text; the flag and path name it in errors.
fn read_pem_file(flag: &str, path: &str) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).map_err(|error| anyhow!("{flag} {path}: {error}"))?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(|error| anyhow!("{flag} {path}: {error}"))?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        bail!("{flag} {path}: larger than {PEM_FILE_BYTES_MAX} bytes, so not a PEM file");
    }
    String::from_utf8(bytes).map_err(|_| {
        anyhow!("{flag} {path}: not a PEM text file (a DER file? convert it with `openssl x509 -inform der` or `openssl pkey -inform der`)")
    })
}

fn list(client: &Client, args: &ListArgs) -> anyhow::Result<()> {
    let body = client.call("GET", "/api/vchs", None)?;
    if args.format == "json" {
        return print_json(client, &body, "/api/vchs");
    }
    let vchs: Vec<VchInfo> = client.parse(&body, "/api/vchs")?;
    let mut rows = vec![["NAME", "TARGET", "VERSION", "CONTAINERS", "DOCKER_HOST"].map(String::from)];
    for vch in &vchs {
        rows.push([
            vch.name.clone(),
            vch.target.clone(),
            vch.version.clone().unwrap_or_else(|| "-".into()),
            vch.container_count.to_string(),
            vch.docker_host.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print(&table(&rows));
    Ok(())
}

fn inspect(client: &Client, args: &InspectArgs) -> anyhow::Result<()> {
    let path = vch_path(&args.name, "");
    let body = client.call("GET", &path, None)?;
    if args.format == "json" {
        return print_json(client, &body, &path);
    }
    let info: VchInfo = client.parse(&body, &path)?;
    print(&describe(&info));
    Ok(())
}

fn configure(client: &Client, args: ConfigureArgs) -> anyhow::Result<()> {
    let password = if args.password_stdin { Some(read_password_from_stdin()?) } else { args.password };
    let request = VchConfigureRequest {
        user: args.user,
        password,
        thumbprint: args.thumbprint,
        memory_mib: args.memory,
        cpu_mhz: args.cpu,
        containers: args.containers,
        // No flag means "keep the list"; the flags given are the whole new list.
        volume_stores: (!args.volume_store.is_empty()).then_some(args.volume_store),
        container_networks: (!args.container_network.is_empty()).then_some(args.container_network),
    };
    if request == VchConfigureRequest::default() {
        bail!(
            "nothing to configure: give at least one of --user, --password, --password-stdin, --thumbprint, --memory, --cpu, --containers, --volume-store, --container-network"
        );
    }
    let path = vch_path(&args.name, "");
    let body = client.call("PUT", &path, Some(without_nulls(&request)?))?;
    let info: VchInfo = client.parse(&body, &path)?;
    let mut text = format!("VCH {:?} configured\n", info.name);
    if let Some(error) = &info.last_error {
        text.push_str(&format!("Warning: the VCH reports a failing action: {error}\n"));
    }
    print(&text);
    Ok(())
}

fn upgrade(client: &Client, args: &NameArgs) -> anyhow::Result<()> {
    let path = vch_path(&args.name, "/upgrade");
    let body = client.call("POST", &path, None)?;
    let info: VchInfo = client.parse(&body, &path)?;
    print(&format!("VCH {:?} upgraded to version {}\n", info.name, info.version.as_deref().unwrap_or("unknown")));
    Ok(())
}

fn delete(client: &Client, args: &DeleteArgs) -> anyhow::Result<()> {
    let mut path = vch_path(&args.name, "");
    if args.force {
        path.push_str("?force=true");
    }
    client.call("DELETE", &path, None)?;
    print(&format!("VCH {:?} deleted\n", args.name));
    Ok(())
}

/// The admin API's address and the patience for one call.
struct Client {
    base: String,
    agent: ureq::Agent,
    timeout: Duration,
}

impl Client {
    fn new(server: &str, timeout: Duration) -> anyhow::Result<Client> {
        if timeout.is_zero() {
            bail!("--timeout must be longer than 0s");
        }
        let server = server.trim();
        let (scheme, rest) = server.split_once("://").unwrap_or(("http", server));
        let rest = rest.trim_end_matches('/');
        if !matches!(scheme, "http" | "https") || rest.is_empty() {
            bail!("--server {server:?}: want http://HOST:PORT");
        }
        let base = format!("{scheme}://{rest}");
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .timeout_connect(timeout.min(CONNECT_TIMEOUT_MAX))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Client { base, agent, timeout })
    }

    /// One request; the answer's body when the status is a success, the server's message otherwise.
    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let request = self.agent.request(method, &url).set("Accept", "application/json");
        let result = match body {
            Some(body) => request.set("Content-Type", "application/json").send_string(&body.to_string()),
            None => request.call(),
        };
        match result {
            Ok(response) => response.into_string().with_context(|| format!("reading the answer of berth's admin API at {}", self.base)),
            Err(ureq::Error::Status(status, response)) => {
                let reason = response.status_text().to_string();
                let text = response.into_string().unwrap_or_default();
                Err(anyhow!("{} (HTTP {status} {reason})", server_message(status, &text)))
            }
            Err(ureq::Error::Transport(transport)) => Err(self.transport_error(method, path, transport)),
        }
    }

    fn transport_error(&self, method: &str, path: &str, transport: ureq::Transport) -> anyhow::Error {
        use ureq::ErrorKind;
        let timed_out = std::error::Error::source(&transport)
            .and_then(|source| source.downcast_ref::<std::io::Error>())
            .is_some_and(|error| matches!(error.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock));
        match transport.kind() {
            ErrorKind::InvalidUrl | ErrorKind::UnknownScheme => anyhow!("--server {}: want http://HOST:PORT ({transport})", self.base),
            ErrorKind::Dns | ErrorKind::ConnectionFailed => anyhow!(
                "cannot reach berth's admin API at {}: {transport} (is `berth serve` running? set --server or BERTH_SERVER)",
                self.base
            ),
            // The request went out: a change may still be under way on the server.
            _ if timed_out => anyhow!(
                "berth's admin API at {} did not answer {method} {path} within {} (--timeout); the server may still be working on it: see `berth vch ls`",
                self.base,
                humantime::format_duration(self.timeout)
            ),
            _ => anyhow!("talking to berth's admin API at {}: {transport}", self.base),
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, body: &str, path: &str) -> anyhow::Result<T> {
        serde_json::from_str(body).map_err(|error| {
            anyhow!("berth's admin API at {} answered {path} with something unexpected ({error}): {}", self.base, quote(body))
        })
    }
}

/// The server's `{"message": ...}`, or the start of whatever else it sent.
fn server_message(status: u16, body: &str) -> String {
    let message = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|value| value["message"].as_str().map(str::to_string));
    match message {
        // The portal's fallback route: a berth that predates the admin API.
        Some(message) if status == 404 && message == "page not found" => {
            format!("{message}: this berth has no admin API (is it older than `berth vch`?)")
        }
        Some(message) => message,
        None if body.trim().is_empty() => "the server gave no reason".to_string(),
        None => quote(body),
    }
}

fn quote(body: &str) -> String {
    let body = body.trim();
    if body.chars().count() <= QUOTED_BODY_CHARS_MAX {
        return body.to_string();
    }
    format!("{}...", body.chars().take(QUOTED_BODY_CHARS_MAX).collect::<String>())
}

/// A request as JSON without its absent fields, so that the server sees only
/// what was given (a configure that names no memory limit leaves it alone).
fn without_nulls(request: &impl serde::Serialize) -> anyhow::Result<serde_json::Value> {
    let mut value = serde_json::to_value(request).context("encoding the request")?;
    if let Some(fields) = value.as_object_mut() {
        fields.retain(|_, field| !field.is_null());
    }
    Ok(value)
}

/// `/api/vchs/{name}{suffix}`, with the name percent-encoded as one path segment.
fn vch_path(name: &str, suffix: &str) -> String {
    let mut path = String::from("/api/vchs/");
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            path.push(byte as char);
        } else {
            path.push_str(&format!("%{byte:02X}"));
        }
    }
    path.push_str(suffix);
    path
}

/// Splits `scheme://user:password@host/...` into the target without its
/// credentials and the credentials: the target is recorded in berth's log,
/// the password must not be.
fn split_credentials(target: &str) -> (String, Option<String>, Option<String>) {
    let (scheme, rest) = match target.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), target),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return (target.to_string(), None, None);
    };
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (percent_decode(user), Some(percent_decode(password))),
        None => (percent_decode(userinfo), None),
    };
    (format!("{scheme}{host}{path}"), (!user.is_empty()).then_some(user), password)
}

/// Decodes `%XX` escapes; a malformed escape stays as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes.get(index + 1..index + 3).and_then(|hex| std::str::from_utf8(hex).ok());
        match (bytes[index], hex.and_then(|hex| u8::from_str_radix(hex, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                index += 3;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_password_from_stdin() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("--password-stdin: standard input held no password");
    }
    Ok(password)
}

/// vic-machine's closing lines: how to point docker at the VCH, with the
/// TLS flags its Docker API wants.
fn docker_lines(info: &VchInfo, export: &str) -> String {
    let Some(host) = &info.docker_host else {
        return format!(
            "The VCH does not serve the Docker API yet; `berth vch inspect --name {}` shows DOCKER_HOST once it does\n",
            info.name
        );
    };
    match info.docker_tls.as_deref() {
        Some("tlsverify") => format!(
            "Docker environment variables:\n{export}DOCKER_HOST={host}\n{export}DOCKER_TLS_VERIFY=1\n\
             Client certificate files: ca.pem (the CA of the VCH's server certificate), cert.pem and key.pem (a client certificate the VCH's --tls-ca signed), in ~/.docker or the directory DOCKER_CERT_PATH names\n\
             Connect to docker:\ndocker -H {host} --tlsverify --tlscacert ca.pem --tlscert cert.pem --tlskey key.pem info\n"
        ),
        Some("tls") => format!(
            "Docker environment variables:\n{export}DOCKER_HOST={host}\n{export}DOCKER_TLS=1\n\
             Connect to docker:\ndocker -H {host} --tls info\n\
             To check the VCH's certificate too: docker -H {host} --tlsverify --tlscacert ca.pem info (ca.pem: the CA of the server certificate)\n"
        ),
        _ => format!("Docker environment variables:\n{export}DOCKER_HOST={host}\nConnect to docker:\ndocker -H {host} info\n"),
    }
}

/// The Docker API's security as `inspect` shows it.
fn docker_security(info: &VchInfo) -> String {
    match info.docker_tls.as_deref() {
        None => "plain HTTP".to_string(),
        Some("tlsverify") => "TLS, client certificates required (tlsverify)".to_string(),
        Some("tls") => "TLS, no client certificates (tls)".to_string(),
        Some(other) => other.to_string(),
    }
}

fn describe(info: &VchInfo) -> String {
    fn or_dash(value: &Option<String>) -> &str {
        value.as_deref().unwrap_or("-")
    }
    fn list(values: &[String]) -> String {
        if values.is_empty() {
            "-".to_string()
        } else {
            values.join(", ")
        }
    }
    fn limit(value: u64, unit: &str) -> String {
        if value == 0 {
            "unlimited".to_string()
        } else {
            format!("{value} {unit}")
        }
    }
    let containers_max = if info.containers_max == 0 { ", no limit".to_string() } else { format!(" of at most {}", info.containers_max) };
    let drift = match &info.last_drift {
        Some(last) => format!("{} (last: {last})", info.drift_count),
        None => info.drift_count.to_string(),
    };
    let rows = [
        ("name", info.name.clone()),
        ("version", or_dash(&info.version).to_string()),
        ("created", if info.created.is_empty() { "-".to_string() } else { info.created.clone() }),
        ("target", info.target.clone()),
        ("user", or_dash(&info.user).to_string()),
        ("thumbprint", or_dash(&info.thumbprint).to_string()),
        ("compute resource", or_dash(&info.compute_resource).to_string()),
        ("image store", or_dash(&info.image_store).to_string()),
        ("volume stores", list(&info.volume_stores)),
        ("bridge network", or_dash(&info.bridge_network).to_string()),
        ("public network", or_dash(&info.public_network).to_string()),
        ("client network", or_dash(&info.client_network).to_string()),
        ("management network", or_dash(&info.management_network).to_string()),
        ("container networks", list(&info.container_networks)),
        ("memory limit", limit(info.memory_mib, "MiB")),
        ("cpu limit", limit(info.cpu_mhz, "MHz")),
        ("containers", format!("{} ({} running){containers_max}", info.container_count, info.running_count)),
        ("docker host", or_dash(&info.docker_host).to_string()),
        ("docker api", docker_security(info)),
        ("last error", or_dash(&info.last_error).to_string()),
        ("drift", drift),
    ];
    let width = rows.iter().map(|(key, _)| key.len()).max().unwrap_or(0) + 1;
    let mut text = String::new();
    for (key, value) in rows {
        text.push_str(&format!("{:<width$} {value}\n", format!("{key}:")));
    }
    text.push('\n');
    text.push_str(&docker_lines(info, ""));
    text
}

fn table(rows: &[[String; 5]]) -> String {
    let mut widths = [0usize; 5];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        text.push_str(line.join("   ").trim_end());
        text.push('\n');
    }
    text
}

fn print_json(client: &Client, body: &str, path: &str) -> anyhow::Result<()> {
    // Through Value rather than VchInfo: fields this client does not know yet are kept.
    let value: serde_json::Value = client.parse(body, path)?;
    print(&format!("{}\n", serde_json::to_string_pretty(&value).unwrap_or_default()));
    Ok(())
}

/// Writes to stdout, ignoring a closed pipe (`berth vch ls | head -1`) instead of panicking as `println!` would.
fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_credentials_out_of_the_target() {
        assert_eq!(
            split_credentials("https://root:p%40ss:w@vc.example/sdk"),
            ("https://vc.example/sdk".to_string(), Some("root".to_string()), Some("p@ss:w".to_string()))
        );
        assert_eq!(split_credentials("admin@vc.example"), ("vc.example".to_string(), Some("admin".to_string()), None));
        assert_eq!(split_credentials("https://vc.example/sdk"), ("https://vc.example/sdk".to_string(), None, None));
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn encodes_the_name_as_one_segment() {
        assert_eq!(vch_path("a b/c", "/upgrade"), "/api/vchs/a%20b%2Fc/upgrade");
    }

    #[test]
    fn drops_absent_fields_only() {
        let request = VchConfigureRequest { memory_mib: Some(0), volume_stores: Some(vec![]), ..Default::default() };
        assert_eq!(without_nulls(&request).unwrap(), serde_json::json!({"memory_mib": 0, "volume_stores": []}));
    }

    #[test]
    fn accepts_only_http_servers() {
        assert_eq!(Client::new("127.0.0.1:8080/", Duration::from_secs(1)).unwrap().base, "http://127.0.0.1:8080");
        assert!(Client::new("ftp://x", Duration::from_secs(1)).is_err());
        assert!(Client::new("http://", Duration::from_secs(1)).is_err());
        assert!(Client::new("http://x", Duration::ZERO).is_err());
    }
}
