//! Integration tests of the VIM25 client against a real vcsim built by scripts/vcsim.sh.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use berth_vsphere::{ConnectOptions, PowerState, ResourcePoolLimits, VimClient, VimError, VmSpec};

/// How long vcsim may take to print its URL.
const VCSIM_START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running vcsim, killed when dropped.
struct Vcsim {
    process: Child,
    url: String,
    user: String,
    password: String,
    thumbprint: String,
}

impl Vcsim {
    fn binary() -> PathBuf {
        if let Ok(path) = std::env::var("BERTH_VCSIM") {
            return PathBuf::from(path);
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/vcsim.sh");
        let output = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().expect("runs scripts/vcsim.sh");
        assert!(output.status.success(), "scripts/vcsim.sh failed");
        PathBuf::from(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    fn start(arguments: &[&str]) -> Vcsim {
        let mut process = Command::new(Self::binary())
            .args(["-listen", "127.0.0.1:0"])
            .args(arguments)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("vcsim starts");
        let stdout = process.stdout.take().expect("piped stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = match receiver.recv_timeout(VCSIM_START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = process.kill();
                panic!("vcsim printed no URL within {VCSIM_START_TIMEOUT:?}");
            }
        };
        let fields: BTreeMap<&str, &str> = line.split_whitespace().filter_map(|field| field.split_once('=')).collect();
        let field = |name: &str| fields.get(name).copied().unwrap_or_default().to_string();
        let vcsim = Vcsim {
            url: field("VCSIM_URL"),
            user: field("VCSIM_USER"),
            password: field("VCSIM_PASSWORD"),
            thumbprint: field("VCSIM_THUMBPRINT"),
            process,
        };
        assert!(vcsim.url.starts_with("http"), "vcsim printed {line:?}");
        vcsim
    }

    fn options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new(&self.url, &self.user, &self.password);
        options.task_timeout = Duration::from_secs(30);
        options
    }
}

impl Drop for Vcsim {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[test]
fn logs_in_reads_the_inventory_and_logs_out() {
    let vcsim = Vcsim::start(&["-username", "alice", "-password", "s3cret&<"]);
    let client = VimClient::connect(&vcsim.options()).expect("login");
    assert_eq!(client.service_content().api_version, "6.5");
    assert_eq!(client.service_content().api_type, "VirtualCenter");
    let inventory = client.inventory().expect("inventory");
    assert!(inventory.datacenter_named("DC0").and_then(|dc| dc.vm_folder.clone()).is_some());
    assert!(inventory.compute_resource_named("DC0_C0").and_then(|c| c.resource_pool.clone()).is_some());
    assert!(inventory.hosts.iter().any(|host| host.name == "DC0_C0_H0"));
    let datastore = inventory.datastore_named("LocalDS_0").expect("LocalDS_0");
    assert!(datastore.capacity_bytes.unwrap_or(0) > 0);
    assert!(inventory.network_named("VM Network").is_some());
    assert!(inventory.network_named("DC0_DVPG0").is_some());
    let vm = inventory.virtual_machine_named("DC0_H0_VM0").expect("DC0_H0_VM0");
    assert_eq!(vm.power_state, Some(PowerState::PoweredOn));
    client.logout().expect("logout");
}

#[test]
fn wrong_credentials_are_an_invalid_login() {
    let vcsim = Vcsim::start(&["-username", "alice", "-password", "right"]);
    let mut options = vcsim.options();
    options.password = "wrong".to_string();
    match VimClient::connect(&options) {
        Err(VimError::InvalidLogin { user }) => assert_eq!(user, "alice"),
        Err(other) => panic!("expected InvalidLogin, got {other}"),
        Ok(_) => panic!("a wrong password logged in"),
    }
}

#[test]
fn creates_powers_and_destroys_a_pool_a_folder_and_a_vm() {
    let vcsim = Vcsim::start(&[]);
    let client = VimClient::connect(&vcsim.options()).expect("login");
    let inventory = client.inventory().expect("inventory");
    let vm_folder = inventory.datacenter_named("DC0").and_then(|dc| dc.vm_folder.clone()).expect("vm folder");
    let root_pool = inventory.compute_resource_named("DC0_C0").and_then(|c| c.resource_pool.clone()).expect("root pool");
    let limits = ResourcePoolLimits { cpu_limit_mhz: Some(2000), memory_limit_mib: Some(4096) };
    let pool = client.create_resource_pool(&root_pool, "berth-vch1", limits).expect("pool");
    let folder = client.create_folder(&vm_folder, "berth-vch1").expect("folder");
    assert!(matches!(client.create_folder(&vm_folder, "berth-vch1"), Err(VimError::DuplicateName { .. })));
    assert!(matches!(client.create_resource_pool(&root_pool, "berth-vch1", limits), Err(VimError::DuplicateName { .. })));

    let spec = VmSpec {
        name: "berth-c1".to_string(),
        datastore_name: "LocalDS_0".to_string(),
        cpu_count: 2,
        memory_mib: 512,
        guest_id: "otherGuest64".to_string(),
        extra_config: BTreeMap::from([("berth.container.id".to_string(), "c1 <&>".to_string())]),
    };
    let vm = client.create_vm(&folder, &pool, &spec).expect("create vm");
    let inventory = client.inventory().expect("inventory");
    let created = inventory.virtual_machine_named("berth-c1").expect("the new VM is listed");
    assert_eq!(created.object.reference, vm);
    assert_eq!(created.object.parent.as_ref(), Some(&folder));
    assert_eq!(created.resource_pool.as_ref(), Some(&pool));
    assert_eq!(created.power_state, Some(PowerState::PoweredOff));
    assert_eq!(created.extra_config.get("berth.container.id").map(String::as_str), Some("c1 <&>"));
    assert!(inventory.resource_pool_named("berth-vch1").is_some());
    assert!(inventory.folder_named("berth-vch1").is_some());

    let power_state = |client: &VimClient| {
        let content = client.retrieve_one(&vm, &["runtime.powerState"]).expect("power state");
        content.text("runtime.powerState").and_then(PowerState::parse)
    };
    client.power_on_vm(&vm).expect("power on");
    assert_eq!(power_state(&client), Some(PowerState::PoweredOn));
    match client.power_on_vm(&vm) {
        Err(VimError::TaskFailed { fault_type, .. }) => assert_eq!(fault_type, "InvalidPowerState"),
        other => panic!("powering on twice should fail with InvalidPowerState, got {other:?}"),
    }
    client.power_off_vm(&vm).expect("power off");
    assert_eq!(power_state(&client), Some(PowerState::PoweredOff));

    client.destroy(&vm).expect("destroy vm");
    assert!(matches!(client.destroy(&vm), Err(VimError::NotFound { .. })));
    client.destroy(&folder).expect("destroy folder");
    client.destroy(&pool).expect("destroy pool");
    let inventory = client.inventory().expect("inventory");
    assert!(inventory.virtual_machine_named("berth-c1").is_none());
    assert!(inventory.resource_pool_named("berth-vch1").is_none());
    assert!(inventory.folder_named("berth-vch1").is_none());
    client.logout().expect("logout");
}

#[test]
fn tls_trusts_only_the_pinned_thumbprint() {
    let vcsim = Vcsim::start(&["-tls"]);
    assert!(vcsim.url.starts_with("https://"));
    let mut options = vcsim.options();

    options.thumbprint = None;
    match VimClient::connect(&options) {
        Err(VimError::UntrustedCertificate { actual, .. }) => {
            assert_eq!(actual.to_string(), vcsim.thumbprint)
        }
        Err(other) => panic!("expected UntrustedCertificate, got {other}"),
        Ok(_) => panic!("a self-signed certificate was trusted without a thumbprint"),
    }

    options.thumbprint = Some("00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33".to_string());
    match VimClient::connect(&options) {
        Err(VimError::ThumbprintMismatch { actual, .. }) => {
            assert_eq!(actual.to_string(), vcsim.thumbprint)
        }
        Err(other) => panic!("expected ThumbprintMismatch, got {other}"),
        Ok(_) => panic!("a wrong thumbprint was accepted"),
    }

    options.thumbprint = Some("not-a-thumbprint".to_string());
    assert!(matches!(VimClient::connect(&options), Err(VimError::Thumbprint(_))));

    options.thumbprint = Some(vcsim.thumbprint.to_lowercase());
    let client = VimClient::connect(&options).expect("the pinned certificate is trusted");
    let before = client.inventory().expect("inventory").virtual_machines.len();
    assert!(before > 0);
    client.logout().expect("logout");
}

#[test]
fn an_unreachable_target_is_a_clear_error() {
    let free_port = TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("free port").port();
    let mut options = ConnectOptions::new(&format!("http://127.0.0.1:{free_port}/sdk"), "user", "pass");
    options.request_timeout = Duration::from_secs(5);
    match VimClient::connect(&options) {
        Err(VimError::Unreachable { endpoint, .. }) => {
            assert!(endpoint.contains(&free_port.to_string()))
        }
        Err(other) => panic!("expected Unreachable, got {other}"),
        Ok(_) => panic!("connected to a closed port"),
    }
    assert!(matches!(VimClient::connect(&ConnectOptions::new("gopher://x", "u", "p")), Err(VimError::InvalidUrl { .. })));
}
