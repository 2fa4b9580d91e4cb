//! End to end on vSphere: `berth vch ...` against a running `berth serve`,
//! the docker CLI against the VCH's own Docker API, and vcsim's inventory
//! read independently through pyvmomi (tests/support/vcsim.rs). Faults are
//! injected by a SOAP proxy between berth and vcsim (tests/support/soap_proxy.rs).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::soap_proxy::SoapFaultProxy;
use support::vcsim::{InventorySnapshot, Vcsim, VmRecord};
use support::{berth_binary, wait_for_line, Server};

/// How long berth may take to make vSphere match the log in these tests.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A berth serve, the vcsim it manages, optionally a fault proxy between them.
struct Setup {
    server: Server,
    portal: String,
    vcsim: Vcsim,
    proxy: Option<SoapFaultProxy>,
    _image_dir: tempfile::TempDir,
}

impl Setup {
    fn start(with_proxy: bool) -> Setup {
        Self::start_in(None, with_proxy)
    }

    fn start_in(data_dir: Option<&Path>, with_proxy: bool) -> Setup {
        let vcsim = Vcsim::start_plain();
        let proxy = with_proxy.then(|| SoapFaultProxy::start(&vcsim.url));
        let server = match data_dir {
            Some(dir) => Server::start_in(dir, &[]),
            None => Server::start(),
        };
        let portal = portal_of(&server);
        let image_dir = tempfile::tempdir().expect("temp dir");
        let setup = Setup { server, portal, vcsim, proxy, _image_dir: image_dir };
        setup.import_busybox();
        setup
    }

    /// The URL berth is given for vSphere: the proxy's when there is one.
    fn target(&self) -> String {
        self.proxy.as_ref().map_or_else(|| self.vcsim.url.clone(), |proxy| proxy.url())
    }

    fn import_busybox(&self) {
        let root = self._image_dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static must be installed (scripts/test.sh installs it)");
        let tarball = self._image_dir.path().join("busybox.tar");
        let status = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tarball).arg(".").status().unwrap();
        assert!(status.success());
        let output = docker(&self.server.docker_host(), &["import", tarball.to_str().unwrap(), "busybox:latest"]);
        assert!(output.status.success(), "import: {}", text(&output));
    }

    /// Runs `berth vch ARGS` against this server.
    fn vch(&self, args: &[&str]) -> Output {
        Command::new(berth_binary()).arg("vch").args(args).env("BERTH_SERVER", &self.portal).output().expect("runs berth vch")
    }

    /// Creates a VCH on vcsim (through the proxy when there is one); returns its DOCKER_HOST.
    fn create_vch(&self, name: &str, extra: &[&str]) -> String {
        let target = self.target();
        let mut args = vec![
            "create",
            "--target",
            &target,
            "--user",
            &self.vcsim.user,
            "--password",
            &self.vcsim.password,
            "--name",
            name,
            "--compute-resource",
            "DC0_C0",
            "--bridge-network",
            "DC0_DVPG0",
            "--public-network",
            "VM Network",
        ];
        args.extend_from_slice(extra);
        let output = self.vch(&args);
        assert!(output.status.success(), "vch create failed: {}", text(&output));
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix("export DOCKER_HOST="))
            .unwrap_or_else(|| panic!("no DOCKER_HOST line in {stdout}"))
            .to_string()
    }

    fn snapshot(&self) -> InventorySnapshot {
        self.vcsim.snapshot()
    }
}

fn portal_of(server: &Server) -> String {
    let address = wait_for_line(&server.stdout_lines, "portal listening on http://", Duration::from_secs(30));
    format!("http://{address}")
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn docker(host: &str, args: &[&str]) -> Output {
    Command::new("docker").arg("-H").arg(host).args(args).env("DOCKER_CLI_HINTS", "false").output().expect("runs the docker CLI")
}

fn docker_ok(host: &str, args: &[&str]) -> String {
    let output = docker(host, args);
    assert!(output.status.success(), "docker {args:?}: {}", text(&output));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Polls `check` until it returns Some or the timeout passes.
fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The container VMs of VCH `vch` in `snapshot`, by container id.
fn container_vms(snapshot: &InventorySnapshot, vch: &str) -> BTreeMap<String, Vec<VmRecord>> {
    let mut vms: BTreeMap<String, Vec<VmRecord>> = BTreeMap::new();
    for vm in &snapshot.virtual_machines {
        let config = &vm.extra_config;
        if config.get("berth.vch").map(String::as_str) == Some(vch) && config.get("berth.role").map(String::as_str) == Some("container") {
            let id = config.get("berth.container.id").cloned().unwrap_or_default();
            vms.entry(id).or_default().push(vm.clone());
        }
    }
    vms
}

fn full_id(host: &str, name: &str) -> String {
    docker_ok(host, &["inspect", "--format", "{{.Id}}", name])
}

fn power_of(setup: &Setup, vch: &str, id: &str) -> Option<String> {
    container_vms(&setup.snapshot(), vch).get(id).and_then(|vms| vms.first()).map(|vm| vm.power_state.clone())
}

fn wait_power(setup: &Setup, vch: &str, id: &str, state: &str) {
    eventually(&format!("container {id} to be {state} in vSphere"), CONVERGE_TIMEOUT, || {
        (power_of(setup, vch, id).as_deref() == Some(state)).then_some(())
    });
}

#[test]
fn a_vch_is_created_inspected_configured_upgraded_and_deleted() {
    let setup = Setup::start(false);
    let host =
        setup.create_vch("vch1", &["--memory", "2048", "--cpu", "3000", "--containers", "4", "--volume-store", "LocalDS_0/vols:default"]);
    assert!(host.starts_with("tcp://127.0.0.1:"), "{host}");

    let snapshot = setup.snapshot();
    let pool = snapshot.pool("vch1").expect("the VCH's resource pool");
    assert_eq!(pool.memory_limit_mib, Some(2048));
    assert_eq!(pool.cpu_limit_mhz, Some(3000));
    assert_eq!(snapshot.folder("vch1").and_then(|folder| folder.parent.clone()).as_deref(), Some("vm"));
    let endpoint = snapshot.vm("vch1").expect("the endpoint VM");
    assert_eq!(endpoint.power_state, "poweredOn");
    assert_eq!(endpoint.folder.as_deref(), Some("vch1"));
    assert_eq!(endpoint.resource_pool.as_deref(), Some("vch1"));
    assert_eq!(endpoint.extra_config.get("berth.role").map(String::as_str), Some("endpoint"));
    assert_eq!(endpoint.extra_config.get("berth.vch.version").map(String::as_str), Some(env!("CARGO_PKG_VERSION")));
    assert!(endpoint.networks.iter().any(|network| network == "VM Network"), "{:?}", endpoint.networks);

    let inspect = setup.vch(&["inspect", "--name", "vch1"]);
    assert!(inspect.status.success(), "{}", text(&inspect));
    let inspect_text = String::from_utf8_lossy(&inspect.stdout).to_string();
    assert!(inspect_text.contains(&format!("DOCKER_HOST={host}")), "{inspect_text}");
    let listed = setup.vch(&["ls"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("vch1"), "{}", text(&listed));
    let info = docker_ok(&host, &["info", "--format", "{{.ID}} {{.MemTotal}} {{.OperatingSystem}}"]);
    assert!(info.starts_with(&format!("berth-vch1 {} ", 2048u64 * 1024 * 1024)) && info.contains("vSphere"), "{info}");

    // A second VCH of the same name is refused before anything is touched.
    let again = setup.vch(&[
        "create",
        "--target",
        &setup.vcsim.url,
        "--user",
        &setup.vcsim.user,
        "--password",
        &setup.vcsim.password,
        "--name",
        "vch1",
        "--compute-resource",
        "DC0_C0",
    ]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"), "{}", text(&again));

    let configured = setup.vch(&["configure", "--name", "vch1", "--memory", "4096", "--containers", "8"]);
    assert!(configured.status.success(), "{}", text(&configured));
    eventually("the pool's new memory limit", CONVERGE_TIMEOUT, || {
        (setup.snapshot().pool("vch1").and_then(|pool| pool.memory_limit_mib) == Some(4096)).then_some(())
    });
    let upgraded = setup.vch(&["upgrade", "--name", "vch1"]);
    assert!(upgraded.status.success(), "{}", text(&upgraded));

    let id = full_id(&host, &docker_ok(&host, &["create", "--name", "web", "busybox", "/bin/busybox", "sleep", "1000"]));
    eventually("the container's VM", CONVERGE_TIMEOUT, || container_vms(&setup.snapshot(), "vch1").contains_key(&id).then_some(()));
    let refused = setup.vch(&["delete", "--name", "vch1"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("409"), "{}", text(&refused));

    let deleted = setup.vch(&["delete", "--name", "vch1", "--force"]);
    assert!(deleted.status.success(), "{}", text(&deleted));
    let snapshot = setup.snapshot();
    assert!(snapshot.pool("vch1").is_none(), "the pool is left behind");
    assert!(snapshot.folder("vch1").is_none(), "the folder is left behind");
    assert!(snapshot.vm("vch1").is_none(), "the endpoint VM is left behind");
    assert!(container_vms(&snapshot, "vch1").is_empty(), "container VMs are left behind");
    let listed = setup.vch(&["ls"]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("vch1"), "{}", text(&listed));
    let networks = docker_ok(&setup.server.docker_host(), &["network", "ls", "--format", "{{.Name}}"]);
    assert!(!networks.contains("vch1-bridge"), "the VCH's bridge network outlives it: {networks}");
    assert!(!setup.server.data_dir.join("vchs/vch1.json").exists(), "the VCH's credentials outlive it");
    // The VCH's Docker API is gone with it.
    assert!(!docker(&host, &["version"]).status.success());
}

#[test]
fn docker_commands_become_vms_and_power_operations() {
    let setup = Setup::start(false);
    let host = setup.create_vch(
        "vch2",
        &["--containers", "3", "--memory", "2048", "--volume-store", "LocalDS_0/v2:default", "--container-network", "VM Network:public"],
    );

    let id = full_id(
        &host,
        &docker_ok(&host, &["run", "-d", "--name", "app", "-m", "1g", "--cpus", "3", "busybox", "/bin/busybox", "sleep", "1000"]),
    );
    wait_power(&setup, "vch2", &id, "poweredOn");
    let vms = container_vms(&setup.snapshot(), "vch2");
    let vm = &vms[&id][0];
    assert_eq!(vms[&id].len(), 1);
    assert!(vm.name.starts_with("app-"), "{}", vm.name);
    assert_eq!(vm.memory_mib, Some(1024));
    assert_eq!(vm.num_cpu, Some(3));
    assert_eq!(vm.resource_pool.as_deref(), Some("vch2"));
    assert_eq!(vm.folder.as_deref(), Some("vch2"));
    assert_eq!(vm.extra_config.get("berth.container.name").map(String::as_str), Some("app"));
    assert!(vm.disks.iter().any(|disk| disk.contains(&id)), "{:?}", vm.disks);
    assert!(vm.networks.iter().any(|network| network == "DC0_DVPG0"), "{:?}", vm.networks);
    // The image's disk chain: the container's disk is a child of the image's
    // disk, an ext4 filesystem of the image built and uploaded once.
    let client = berth_vsphere::VimClient::connect(&setup.vcsim.connect_options()).expect("login");
    let reference =
        client.virtual_machines().unwrap().into_iter().find(|vm| vm.extra_config.get("berth.container.id") == Some(&id)).unwrap();
    let devices = client.vm_devices(&reference.object.reference).expect("devices");
    let image_hex = docker_ok(&host, &["inspect", "--format", "{{.Image}}", "app"]).trim_start_matches("sha256:").to_string();
    let image_disk = format!("[LocalDS_0] berth/vch2/images/{image_hex}/{image_hex}.vmdk");
    let child =
        devices.iter().filter_map(|device| device.disk.as_ref()).find(|disk| disk.file_name.contains(&id)).expect("the container's disk");
    assert_eq!(child.parent.as_deref(), Some(image_disk.as_str()), "{devices:?}");
    let flat = client
        .download_file("DC0", "LocalDS_0", &format!("berth/vch2/images/{image_hex}/{image_hex}-flat.vmdk"))
        .expect("the image disk's extent");
    assert_eq!(u16::from_le_bytes([flat[1024 + 56], flat[1024 + 57]]), 0xEF53, "the image disk is not ext4");

    // Its default network is the VCH's own bridge, not the embedded VCH's.
    let networks = docker_ok(&host, &["inspect", "--format", "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}", "app"]);
    assert_eq!(networks.trim(), "vch2-bridge");
    // The VCH sees its own containers; the embedded VCH does not see them.
    assert!(docker_ok(&host, &["ps", "--format", "{{.Names}}"]).contains("app"));
    assert!(!docker_ok(&setup.server.docker_host(), &["ps", "-a", "--format", "{{.Names}}"]).contains("app"));

    docker_ok(&host, &["stop", "app"]);
    wait_power(&setup, "vch2", &id, "poweredOff");
    assert_eq!(docker_ok(&host, &["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", "app"]), "exited 143");
    docker_ok(&host, &["start", "app"]);
    wait_power(&setup, "vch2", &id, "poweredOn");
    docker_ok(&host, &["pause", "app"]);
    wait_power(&setup, "vch2", &id, "suspended");
    docker_ok(&host, &["unpause", "app"]);
    wait_power(&setup, "vch2", &id, "poweredOn");
    docker_ok(&host, &["kill", "app"]);
    wait_power(&setup, "vch2", &id, "poweredOff");
    eventually("the kill's exit code", CONVERGE_TIMEOUT, || {
        (docker_ok(&host, &["inspect", "--format", "{{.State.ExitCode}}", "app"]) == "137").then_some(())
    });
    let logs = docker(&host, &["logs", "app"]);
    assert!(!logs.status.success());
    assert!(String::from_utf8_lossy(&logs.stderr).contains("without a tether"), "{}", text(&logs));

    // A VM powered off behind berth's back: the watch (WaitForUpdatesEx)
    // notices within seconds, well before the periodic resync (10 s), and the
    // run is recorded as ended, as if its process had been killed.
    docker_ok(&host, &["start", "app"]);
    wait_power(&setup, "vch2", &id, "poweredOn");
    let client = berth_vsphere::VimClient::connect(&setup.vcsim.connect_options()).expect("login");
    let vm = client.virtual_machines().expect("VMs").into_iter().find(|vm| vm.extra_config.get("berth.container.id") == Some(&id)).unwrap();
    let powered_off_at = Instant::now();
    client.power_off_vm(&vm.object.reference).expect("power off behind berth's back");
    eventually("the out-of-band power-off to be recorded", Duration::from_secs(8), || {
        (docker_ok(&host, &["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", "app"]) == "exited 137").then_some(())
    });
    assert!(powered_off_at.elapsed() < Duration::from_secs(8));

    // Limits: memory of running containers, then the container count.
    let second = full_id(&host, &docker_ok(&host, &["run", "-d", "--name", "big", "-m", "2g", "busybox", "/bin/busybox", "sleep", "1"]));
    wait_power(&setup, "vch2", &second, "poweredOn");
    let over = docker(&host, &["start", "app"]);
    assert!(!over.status.success(), "a start beyond the VCH's memory was accepted");
    assert!(String::from_utf8_lossy(&over.stderr).contains("MiB"), "{}", text(&over));
    docker_ok(&host, &["create", "--name", "third", "busybox", "/bin/busybox", "true"]);
    let fourth = docker(&host, &["create", "--name", "fourth", "busybox", "/bin/busybox", "true"]);
    assert!(!fourth.status.success(), "a fourth container in a VCH of three was accepted");
    assert!(String::from_utf8_lossy(&fourth.stderr).contains("maximum of 3"), "{}", text(&fourth));

    docker_ok(&host, &["rm", "-f", "app", "big", "third"]);
    eventually("every container VM to be destroyed", CONVERGE_TIMEOUT, || {
        container_vms(&setup.snapshot(), "vch2").is_empty().then_some(())
    });

    // A container network: a NIC on its port group instead of the bridge; for this VCH only.
    assert!(docker_ok(&host, &["network", "ls", "--format", "{{.Name}} {{.Driver}}"]).contains("public external"));
    let exposed = full_id(&host, &docker_ok(&host, &["create", "--name", "edge", "--net", "public", "busybox", "/bin/busybox", "true"]));
    eventually("the container network's NIC", CONVERGE_TIMEOUT, || {
        let vms = container_vms(&setup.snapshot(), "vch2");
        vms.get(&exposed).map(|list| list[0].networks.clone()).filter(|networks| networks == &vec!["VM Network".to_string()])
    });
    let elsewhere = docker(&setup.server.docker_host(), &["create", "--net", "public", "busybox", "/bin/busybox", "true"]);
    assert!(!elsewhere.status.success(), "a container of another VCH joined its container network");
    docker_ok(&host, &["rm", "edge"]);

    // Volumes are VMDKs in the volume store; they outlive the VMs that mount them.
    docker_ok(&host, &["volume", "create", "data"]);
    let with_volume =
        full_id(&host, &docker_ok(&host, &["run", "-d", "--name", "db", "-v", "data:/data", "busybox", "/bin/busybox", "sleep", "1000"]));
    wait_power(&setup, "vch2", &with_volume, "poweredOn");
    let disks = container_vms(&setup.snapshot(), "vch2")[&with_volume][0].disks.clone();
    assert!(disks.iter().any(|disk| disk == "[LocalDS_0] v2/data.vmdk"), "{disks:?}");
    let volume_files = || {
        let client = berth_vsphere::VimClient::connect(&setup.vcsim.connect_options()).expect("login");
        let datastore = client.inventory().expect("inventory").datastore_named("LocalDS_0").expect("datastore").object.reference.clone();
        client.search_datastore(&datastore, "[LocalDS_0] v2", None).unwrap_or_default()
    };
    docker_ok(&host, &["rm", "-f", "db"]);
    eventually("the VM to be destroyed", CONVERGE_TIMEOUT, || container_vms(&setup.snapshot(), "vch2").is_empty().then_some(()));
    assert!(volume_files().iter().any(|file| file.starts_with("data")), "the volume's disk went with the VM: {:?}", volume_files());
    docker_ok(&host, &["volume", "rm", "data"]);
    eventually("the volume's disk to be deleted", CONVERGE_TIMEOUT, || {
        (!volume_files().iter().any(|file| file.starts_with("data"))).then_some(())
    });
    let deleted = setup.vch(&["delete", "--name", "vch2"]);
    assert!(deleted.status.success(), "{}", text(&deleted));
}

#[test]
fn bad_input_is_refused_before_anything_is_created() {
    let vcsim = Vcsim::start(&["-username", "alice", "-password", "right"]);
    let tls = Vcsim::start_tls();
    let server = Server::start();
    let portal = portal_of(&server);
    let vch = |args: &[&str]| Command::new(berth_binary()).arg("vch").args(args).env("BERTH_SERVER", &portal).output().unwrap();
    let create = |target: &str, user: &str, password: &str, extra: &[&str]| {
        let mut args = vec!["create", "--target", target, "--user", user, "--password", password, "--name", "bad"];
        if !extra.contains(&"--compute-resource") {
            args.extend_from_slice(&["--compute-resource", "DC0_C0"]);
        }
        args.extend_from_slice(extra);
        let output = vch(&args);
        assert!(!output.status.success(), "accepted: {extra:?}");
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let refused = create(&vcsim.url, "alice", "wrong", &[]);
    assert!(refused.contains("wrong user name or password") && refused.contains("401"), "{refused}");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let refused = create(&format!("http://127.0.0.1:{closed_port}/sdk"), "alice", "right", &[]);
    assert!(refused.contains("unreachable"), "{refused}");
    let refused = create(&tls.url, &tls.user, &tls.password, &[]);
    assert!(refused.contains(&tls.thumbprint) && refused.contains("--thumbprint"), "{refused}");
    let refused =
        create(&tls.url, &tls.user, &tls.password, &["--thumbprint", "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33"]);
    assert!(refused.contains(&tls.thumbprint), "{refused}");
    for (option, value, named) in [
        ("--image-store", "nope", "datastore \"nope\""),
        ("--volume-store", "missing/vols:default", "datastore \"missing\""),
        ("--bridge-network", "no-such-pg", "network \"no-such-pg\""),
        ("--container-network", "other-pg:net", "network \"other-pg\""),
        ("--compute-resource", "no-cluster", "compute resource \"no-cluster\""),
    ] {
        let refused = create(&vcsim.url, "alice", "right", &[option, value]);
        assert!(refused.contains(named) && refused.contains("400"), "{option}: {refused}");
    }
    let snapshot = vcsim.snapshot();
    assert!(snapshot.pool("bad").is_none() && snapshot.folder("bad").is_none() && snapshot.vm("bad").is_none(), "something was half-built");
    let listed = vch(&["ls"]);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("bad"), "{}", text(&listed));
    assert!(!server.data_dir.join("vchs/bad.json").exists());

    // The right thumbprint is trusted.
    let output = vch(&[
        "create",
        "--target",
        &tls.url,
        "--user",
        &tls.user,
        "--password",
        &tls.password,
        "--thumbprint",
        &tls.thumbprint,
        "--name",
        "good",
        "--compute-resource",
        "DC0_C0",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(tls.snapshot().pool("good").is_some());
    let deleted = vch(&["delete", "--name", "good"]);
    assert!(deleted.status.success(), "{}", text(&deleted));
}

#[test]
fn vsphere_faults_end_in_error_events_and_bounded_retries() {
    let setup = Setup::start(true);
    let host = setup.create_vch("vch3", &[]);
    let proxy = setup.proxy.as_ref().unwrap();

    // A permanent fault: recorded on the container at once, retried slowly.
    proxy.fail("CreateVM_Task", "NoDiskSpace", None);
    let started = Instant::now();
    let id = full_id(&host, &docker_ok(&host, &["run", "-d", "--name", "full", "busybox", "/bin/busybox", "sleep", "1000"]));
    assert!(started.elapsed() < Duration::from_secs(10), "docker run waited for vSphere");
    let error = eventually("the container's State.Error", CONVERGE_TIMEOUT, || {
        let error = docker_ok(&host, &["inspect", "--format", "{{.State.Error}}", "full"]);
        (!error.is_empty()).then_some(error)
    });
    assert!(error.contains("NoDiskSpace") || error.contains("space"), "{error}");
    let calls = proxy.calls("CreateVM_Task");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(proxy.calls("CreateVM_Task"), calls, "a permanent fault is retried quickly");

    // A transient fault: retried with backoff, a bounded number of times, then recorded.
    proxy.clear();
    proxy.fail("PowerOnVM_Task", "HostCommunication", None);
    let second = full_id(&host, &docker_ok(&host, &["run", "-d", "--name", "flaky", "busybox", "/bin/busybox", "sleep", "1000"]));
    let error = eventually("the transient fault's State.Error", Duration::from_secs(40), || {
        let error = docker_ok(&host, &["inspect", "--format", "{{.State.Error}}", "flaky"]);
        (!error.is_empty()).then_some(error)
    });
    assert!(error.contains("HostCommunication"), "{error}");
    let attempts = proxy.calls("PowerOnVM_Task");
    assert!((8..=9).contains(&attempts), "{attempts} power-on attempts");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(proxy.calls("PowerOnVM_Task"), attempts, "retries go on quickly after parking");

    // A slow vSphere delays the VM, never the API.
    proxy.clear();
    proxy.delay("CreateVM_Task", Duration::from_secs(2));
    let started = Instant::now();
    let slow = full_id(&host, &docker_ok(&host, &["create", "--name", "slow", "busybox", "/bin/busybox", "true"]));
    assert!(started.elapsed() < Duration::from_secs(2), "docker create waited for a slow vSphere");
    eventually("the slow container's VM", CONVERGE_TIMEOUT, || container_vms(&setup.snapshot(), "vch3").contains_key(&slow).then_some(()));

    // With the faults gone, removals go through at once (a new action per object).
    proxy.clear();
    docker_ok(&host, &["rm", "-f", "full", "flaky", "slow"]);
    eventually("no container VMs", CONVERGE_TIMEOUT, || container_vms(&setup.snapshot(), "vch3").is_empty().then_some(()));
    let _ = (id, second);
}

#[test]
fn after_a_sigkill_during_creation_there_is_one_vm_per_container_and_drift_is_repaired() {
    let data = tempfile::tempdir().unwrap();
    let mut setup = Setup::start_in(Some(data.path()), true);
    let host = setup.create_vch("vch4", &[]);
    let proxy = setup.proxy.as_ref().unwrap();
    proxy.delay("CreateVM_Task", Duration::from_millis(300));

    // Twelve `docker run -d` in parallel; berth dies while it creates the VMs.
    let runners: Vec<_> = (0..12)
        .map(|index| {
            let host = host.clone();
            std::thread::spawn(move || {
                docker(&host, &["run", "-d", "--name", &format!("c{index}"), "busybox", "/bin/busybox", "sleep", "1000"])
            })
        })
        .collect();
    assert!(proxy.wait_for_calls("CreateVM_Task", 3, Duration::from_secs(60)), "no VM creation started");
    setup.server.child.kill().expect("SIGKILL berth");
    let _ = setup.server.child.wait();
    for runner in runners {
        let _ = runner.join();
    }
    proxy.clear();

    // While berth is down: a VM of a container the log never had, and a
    // running container VM powered off behind berth's back.
    let client = berth_vsphere::VimClient::connect(&setup.vcsim.connect_options()).expect("login");
    let inventory = client.inventory().expect("inventory");
    let folder = inventory.folder_named("vch4").expect("folder").reference.clone();
    let pool = inventory.resource_pool_named("vch4").expect("pool").reference.clone();
    let orphan_id = "0".repeat(64);
    let orphan = berth_vsphere::VmSpec {
        name: "orphan".to_string(),
        datastore_name: "LocalDS_0".to_string(),
        cpu_count: 1,
        memory_mib: 128,
        guest_id: "otherGuest64".to_string(),
        extra_config: BTreeMap::from([
            ("berth.role".to_string(), "container".to_string()),
            ("berth.vch".to_string(), "vch4".to_string()),
            ("berth.container.id".to_string(), orphan_id.clone()),
            ("berth.generation".to_string(), "0".to_string()),
        ]),
        ..Default::default()
    };
    client.create_vm(&folder, &pool, &orphan).expect("the orphan VM");
    let running_before: Vec<_> =
        inventory.virtual_machines.iter().filter(|vm| vm.extra_config.get("berth.vch").map(String::as_str) == Some("vch4")).collect();
    // A VM whose run berth recorded as started (its generation committed).
    let powered_on = running_before
        .iter()
        .find(|vm| {
            let config = &vm.extra_config;
            config.get("berth.role").map(String::as_str) == Some("container")
                && vm.power_state == Some(berth_vsphere::PowerState::PoweredOn)
                && config.get("berth.generation").is_some_and(|generation| generation != "0")
                && config.get("berth.generation") == config.get("berth.generation.pending")
        })
        .map(|vm| (vm.object.reference.clone(), vm.extra_config.get("berth.container.id").cloned().unwrap_or_default()));
    if let Some((vm, _)) = &powered_on {
        client.power_off_vm(vm).expect("power off behind berth's back");
    }

    // Restart berth on the same log: it adopts, creates what is missing, destroys the orphan.
    // The first server's address slot (its bridge, which the log keeps) stays
    // claimed until the second server is gone, as in tests/recovery.rs.
    let first = std::mem::replace(&mut setup.server, Server::start_in(data.path(), &[]));
    setup.portal = portal_of(&setup.server);
    let ids: Vec<String> = eventually("the VCH's Docker API after the restart", CONVERGE_TIMEOUT, || {
        let output = docker(&host, &["ps", "-a", "--no-trunc", "--format", "{{.ID}}"]);
        output.status.success().then(|| String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect())
    });
    assert!(!ids.is_empty(), "no container survived in the log");
    eventually("exactly one VM per container and none without one", CONVERGE_TIMEOUT, || {
        let vms = container_vms(&setup.snapshot(), "vch4");
        let one_each = ids.iter().all(|id| vms.get(id).is_some_and(|list| list.len() == 1));
        let none_else = vms.keys().all(|id| ids.contains(id));
        (one_each && none_else).then_some(())
    });
    for id in &ids {
        let state = docker_ok(&host, &["inspect", "--format", "{{.State.Status}}", id]);
        if state == "running" {
            wait_power(&setup, "vch4", id, "poweredOn");
        }
    }
    let inspect = setup.vch(&["inspect", "--name", "vch4", "--format", "json"]);
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap_or_else(|_| panic!("{}", text(&inspect)));
    assert!(info["drift_count"].as_u64().unwrap_or(0) >= 1, "the orphan VM was not recorded as drift: {info}");
    assert!(info["last_drift"].as_str().unwrap_or_default().contains(&orphan_id), "{info}");
    if let Some((_, id)) = powered_on {
        // Powered off outside berth: the container's run ended, as if killed.
        if ids.contains(&id) {
            eventually("the out-of-band power-off recorded as an exit", CONVERGE_TIMEOUT, || {
                (docker_ok(&host, &["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", &id]) == "exited 137").then_some(())
            });
        }
    }
    let removed = setup.vch(&["delete", "--name", "vch4", "--force"]);
    assert!(removed.status.success(), "{}", text(&removed));
    assert!(container_vms(&setup.snapshot(), "vch4").is_empty());
    drop(setup);
    drop(first);
}

/// Makes a CA, a server certificate for 127.0.0.1 and a client certificate with openssl.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is installed");
        assert!(output.status.success(), "openssl {args:?}: {}", text(&output));
    };
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=berth test CA",
    ]);
    for (name, subject) in [("server", "/CN=127.0.0.1"), ("client", "/CN=docker user")] {
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}-key.pem"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}

#[test]
fn a_vch_serves_its_docker_api_over_tls_with_client_certificates() {
    let setup = Setup::start(false);
    let certificates = tempfile::tempdir().unwrap();
    let dir = certificates.path();
    make_certificates(dir);
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let host = setup.create_vch(
        "secure",
        &["--tls-server-cert", &path("server.pem"), "--tls-server-key", &path("server-key.pem"), "--tls-ca", &path("ca.pem")],
    );
    let tls_args = ["--tlsverify", "--tlscacert", &path("ca.pem"), "--tlscert", &path("client.pem"), "--tlskey", &path("client-key.pem")];
    let with_tls = |args: &[&str]| {
        Command::new("docker").arg("-H").arg(&host).args(tls_args).args(args).env("DOCKER_CLI_HINTS", "false").output().unwrap()
    };
    let info = with_tls(&["info", "--format", "{{.ID}}"]);
    assert!(info.status.success(), "{}", text(&info));
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "berth-secure");
    let run = with_tls(&["run", "-d", "--name", "s1", "busybox", "/bin/busybox", "sleep", "1000"]);
    assert!(run.status.success(), "{}", text(&run));
    // Without a client certificate the server refuses the connection.
    let anonymous = Command::new("docker").args(["-H", &host, "--tls", "--tlscacert", &path("ca.pem"), "version"]).output().unwrap();
    assert!(!anonymous.status.success(), "a client without a certificate got in: {}", text(&anonymous));
    // Plain HTTP gets nothing either.
    assert!(!docker(&host, &["version"]).status.success());
    let inspect = setup.vch(&["inspect", "--name", "secure", "--format", "json"]);
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap_or_else(|_| panic!("{}", text(&inspect)));
    assert_eq!(info["docker_tls"], "tlsverify");
    let key = std::fs::read_to_string(path("server-key.pem")).unwrap();
    let key_body: String = key.lines().filter(|line| !line.starts_with("-----")).take(1).collect();
    let log_dump =
        Command::new(berth_binary()).args(["log", "tail", "-n", "1000", "--data-dir"]).arg(&setup.server.data_dir).output().unwrap();
    let log_text = String::from_utf8_lossy(&log_dump.stdout);
    assert!(log_text.contains("VchCreated"), "the log dump failed: {}", text(&log_dump));
    assert!(!log_text.contains(&key_body), "the TLS key is in the log");
    let removed = setup.vch(&["delete", "--name", "secure", "--force"]);
    assert!(removed.status.success(), "{}", text(&removed));
}
