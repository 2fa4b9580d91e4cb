//! Integration tests of the VIM25 client against a real vcsim built by scripts/vcsim.sh.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_vsphere::image_disk::{build_flat_vmdk, image_disk_exists, upload_image_disk};
use berth_vsphere::{
    ChangeKind, ConnectOptions, DiskMode, DiskSpec, Inventory, ManagedObjectRef, NetworkBacking, NicSpec, PowerState, ResourcePoolLimits,
    TaskWait, VimClient, VimError, VmChange, VmReconfigSpec, VmSpec,
};

/// vcsim on a free port, stopped when dropped.
type Vcsim = berth_vsphere::simulator::Simulator;

fn start_vcsim(args: &[&str]) -> Vcsim {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let binary = Vcsim::binary(&root).expect("scripts/vcsim.sh builds vcsim");
    Vcsim::start(&binary, args).expect("vcsim starts")
}

#[test]
fn logs_in_reads_the_inventory_and_logs_out() {
    let vcsim = start_vcsim(&["-username", "alice", "-password", "s3cret&<"]);
    let client = VimClient::connect(&vcsim.connect_options()).expect("login");
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
    let vcsim = start_vcsim(&["-username", "alice", "-password", "right"]);
    let mut options = vcsim.connect_options();
    options.password = "wrong".to_string();
    match VimClient::connect(&options) {
        Err(VimError::InvalidLogin { user }) => assert_eq!(user, "alice"),
        Err(other) => panic!("expected InvalidLogin, got {other}"),
        Ok(_) => panic!("a wrong password logged in"),
    }
}

#[test]
fn creates_powers_and_destroys_a_pool_a_folder_and_a_vm() {
    let vcsim = start_vcsim(&[]);
    let client = VimClient::connect(&vcsim.connect_options()).expect("login");
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
        ..VmSpec::default()
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
    let vcsim = start_vcsim(&["-tls"]);
    assert!(vcsim.url.starts_with("https://"));
    let mut options = vcsim.connect_options();

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
    // Datastore files go over the same pinned TLS connection settings as the SOAP calls.
    client.upload_file("DC0", "LocalDS_0", "berth/tls.txt", &mut &b"over https"[..], 10).expect("upload over https");
    assert_eq!(client.download_file("DC0", "LocalDS_0", "berth/tls.txt").expect("download over https"), b"over https");
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

/// A vcsim, a client logged in to it, and its inventory.
fn vcsim_session() -> (Vcsim, VimClient, Inventory) {
    let vcsim = start_vcsim(&[]);
    let client = VimClient::connect(&vcsim.connect_options()).expect("login");
    let inventory = client.inventory().expect("inventory");
    (vcsim, client, inventory)
}

fn datacenter(inventory: &Inventory) -> ManagedObjectRef {
    inventory.datacenter_named("DC0").expect("DC0").object.reference.clone()
}

/// Creates a powered-off VM named `name` in DC0's VM folder and DC0_C0's root pool.
fn create_vm(client: &VimClient, inventory: &Inventory, spec: VmSpec) -> ManagedObjectRef {
    let vm_folder = inventory.datacenter_named("DC0").and_then(|dc| dc.vm_folder.clone()).expect("vm folder");
    let root_pool = inventory.compute_resource_named("DC0_C0").and_then(|c| c.resource_pool.clone()).expect("root pool");
    client.create_vm(&vm_folder, &root_pool, &spec).expect("create vm")
}

fn small_vm(name: &str) -> VmSpec {
    VmSpec {
        name: name.to_string(),
        datastore_name: "LocalDS_0".to_string(),
        cpu_count: 1,
        memory_mib: 256,
        guest_id: "otherGuest64".to_string(),
        ..VmSpec::default()
    }
}

fn power_state(client: &VimClient, vm: &ManagedObjectRef) -> Option<PowerState> {
    client.retrieve_one(vm, &["runtime.powerState"]).expect("power state").text("runtime.powerState").and_then(PowerState::parse)
}

#[test]
fn creates_a_vm_with_a_new_disk_an_attached_disk_and_two_nics() {
    let (_vcsim, client, inventory) = vcsim_session();
    let dc = datacenter(&inventory);
    let datastore = inventory.datastore_named("LocalDS_0").expect("LocalDS_0");
    assert!(datastore.browser.is_some(), "datastores name their browser");
    assert!(datastore.url.as_deref().is_some_and(|url| !url.is_empty()), "datastores have a url");
    let dc0 = inventory.datacenter_named("DC0").expect("DC0");
    assert!(dc0.host_folder.is_some() && dc0.datastore_folder.is_some() && dc0.network_folder.is_some());

    client.make_directory(&dc, "[LocalDS_0] berth/vch1/volumes", true).expect("make the volume directory and its parents");
    assert!(matches!(client.make_directory(&dc, "[LocalDS_0] berth/vch1/volumes", false), Err(VimError::AlreadyExists { .. })));
    client.make_directory(&dc, "[LocalDS_0] berth/vch1/c1", false).expect("make the container directory");
    client.create_virtual_disk(&dc, "[LocalDS_0] berth/vch1/volumes/v1.vmdk", 4096).expect("create a volume disk");
    match client.create_virtual_disk(&dc, "[LocalDS_0] berth/vch1/volumes/v1.vmdk", 4096) {
        Err(VimError::AlreadyExists { .. }) => {}
        other => panic!("creating a disk twice should be AlreadyExists, got {other:?}"),
    }

    let standard = inventory.network_named("VM Network").expect("VM Network");
    assert_eq!(standard.backing, NetworkBacking::Standard { name: "VM Network".to_string() });
    let portgroup = inventory.network_named("DC0_DVPG0").expect("DC0_DVPG0");
    let dvs = inventory.distributed_switch_named("DVS0").expect("DVS0 (vcsim names its switch so)");
    let dvs_uuid = inventory.distributed_switch_uuids.get(&dvs.reference).expect("the switch's uuid").clone();
    match &portgroup.backing {
        NetworkBacking::Distributed { switch_uuid, portgroup_key } => {
            assert_eq!(switch_uuid, &dvs_uuid);
            assert_eq!(portgroup_key, &portgroup.object.reference.value);
        }
        other => panic!("DC0_DVPG0 should be a distributed port group, got {other:?}"),
    }

    let spec = VmSpec {
        disks: vec![
            DiskSpec {
                file_name: "[LocalDS_0] berth/vch1/c1/c1.vmdk".to_string(),
                capacity_kib: 2048,
                create: true,
                mode: DiskMode::Persistent,
                parent: None,
            },
            DiskSpec {
                file_name: "[LocalDS_0] berth/vch1/volumes/v1.vmdk".to_string(),
                capacity_kib: 0,
                create: false,
                mode: DiskMode::IndependentPersistent,
                parent: None,
            },
        ],
        nics: vec![NicSpec { network: standard.backing.clone() }, NicSpec { network: portgroup.backing.clone() }],
        ..small_vm("berth-c1")
    };
    let vm = create_vm(&client, &inventory, spec);

    let devices = client.vm_devices(&vm).expect("devices");
    let disks: Vec<_> = devices.iter().filter(|device| device.kind == "VirtualDisk").collect();
    let files: Vec<(&str, Option<DiskMode>)> =
        disks.iter().filter_map(|device| device.disk.as_ref()).map(|disk| (disk.file_name.as_str(), disk.mode)).collect();
    assert_eq!(
        files,
        [
            ("[LocalDS_0] berth/vch1/c1/c1.vmdk", Some(DiskMode::Persistent)),
            ("[LocalDS_0] berth/vch1/volumes/v1.vmdk", Some(DiskMode::IndependentPersistent))
        ]
    );
    let controller = devices.iter().find(|device| device.kind == "VirtualLsiLogicController").expect("a SCSI controller was added");
    assert!(disks.iter().all(|disk| disk.controller_key == Some(controller.key)), "the disks are on the new controller");
    assert_eq!(disks.iter().map(|disk| disk.unit_number).collect::<Vec<_>>(), [Some(0), Some(1)]);
    let nics: Vec<_> = devices.iter().filter(|device| device.kind == "VirtualVmxnet3").collect();
    assert_eq!(
        nics.iter().map(|nic| nic.network.clone()).collect::<Vec<_>>(),
        [Some(standard.backing.clone()), Some(portgroup.backing.clone())]
    );
    assert!(nics.iter().all(|nic| nic.mac_address.as_deref().is_some_and(|mac| !mac.is_empty())), "the NICs got MAC addresses");

    let volumes = client.search_datastore(&datastore.object.reference, "[LocalDS_0] berth/vch1/volumes", None).expect("search volumes");
    assert!(volumes.iter().any(|name| name == "v1.vmdk"), "v1.vmdk is listed: {volumes:?}");
    let vch = client.search_datastore(&datastore.object.reference, "[LocalDS_0] berth/vch1", None).expect("search the VCH directory");
    assert!(vch.iter().any(|name| name == "c1") && vch.iter().any(|name| name == "volumes"), "both directories are listed: {vch:?}");
    let disks_only = client.search_datastore(&datastore.object.reference, "[LocalDS_0] berth/vch1/c1", Some("c1*.vmdk")).expect("search");
    assert!(disks_only.iter().any(|name| name == "c1.vmdk"), "the new disk is listed: {disks_only:?}");
    assert!(disks_only.iter().all(|name| name.ends_with(".vmdk")), "the pattern filters: {disks_only:?}");
}

#[test]
fn reconfigures_extra_config_memory_cpus_and_disks() {
    let (_vcsim, client, inventory) = vcsim_session();
    let spec = VmSpec {
        extra_config: BTreeMap::from([("berth.a".to_string(), "1".to_string()), ("berth.b".to_string(), "2".to_string())]),
        ..small_vm("berth-r1")
    };
    let vm = create_vm(&client, &inventory, spec);

    let change = VmReconfigSpec {
        extra_config: BTreeMap::from([("berth.a".to_string(), String::new()), ("berth.c".to_string(), "3 <&>".to_string())]),
        memory_mib: Some(1024),
        cpu_count: Some(2),
        ..VmReconfigSpec::default()
    };
    client.reconfigure_vm(&vm, &change).expect("reconfigure");
    let vms = client.virtual_machines().expect("virtual machines");
    assert!(vms.iter().all(|listed| listed.object.reference.kind == "VirtualMachine"));
    let read = vms.iter().find(|listed| listed.object.reference == vm).expect("the VM is listed");
    assert_eq!(read.extra_config.get("berth.a"), None, "an empty value removes the key");
    assert_eq!(read.extra_config.get("berth.b").map(String::as_str), Some("2"));
    assert_eq!(read.extra_config.get("berth.c").map(String::as_str), Some("3 <&>"));
    assert_eq!(read.config_memory_mib, Some(1024));
    assert_eq!(read.config_cpu_count, Some(2));

    let disk = |name: &str, create: bool| DiskSpec {
        file_name: format!("[LocalDS_0] berth-r1/{name}.vmdk"),
        capacity_kib: 1024,
        create,
        mode: DiskMode::IndependentNonpersistent,
        parent: None,
    };
    client.reconfigure_vm(&vm, &VmReconfigSpec { add_disks: vec![disk("extra1", true)], ..VmReconfigSpec::default() }).expect("add a disk");
    client
        .reconfigure_vm(&vm, &VmReconfigSpec { add_disks: vec![disk("extra2", true)], ..VmReconfigSpec::default() })
        .expect("add another");
    let devices = client.vm_devices(&vm).expect("devices");
    let disks: Vec<_> = devices.iter().filter(|device| device.disk.is_some()).collect();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0].controller_key, disks[1].controller_key, "the second disk reuses the controller added for the first");
    assert_eq!(disks.iter().map(|disk| disk.unit_number).collect::<Vec<_>>(), [Some(0), Some(1)]);
    assert!(disks.iter().all(|device| device.disk.as_ref().and_then(|disk| disk.mode) == Some(DiskMode::IndependentNonpersistent)));
    assert_eq!(devices.iter().filter(|device| device.kind == "VirtualLsiLogicController").count(), 1);

    match client.reconfigure_vm(&vm, &VmReconfigSpec { add_disks: vec![disk("missing", false)], ..VmReconfigSpec::default() }) {
        Err(VimError::NotFound { .. }) => {}
        other => panic!("attaching a missing disk should be NotFound, got {other:?}"),
    }
}

#[test]
fn updates_and_reads_resource_pool_limits() {
    let (_vcsim, client, inventory) = vcsim_session();
    let root_pool = inventory.compute_resource_named("DC0_C0").and_then(|c| c.resource_pool.clone()).expect("root pool");
    let compute = inventory.compute_resource_named("DC0_C0").expect("DC0_C0").clone();
    let limits = ResourcePoolLimits { cpu_limit_mhz: Some(2000), memory_limit_mib: Some(4096) };
    let pool = client.create_resource_pool(&root_pool, "berth-vch1", limits).expect("pool");
    assert_eq!(client.resource_pool_limits(&pool).expect("limits"), limits);

    let changed = ResourcePoolLimits { cpu_limit_mhz: None, memory_limit_mib: Some(1024) };
    client.update_resource_pool(&pool, changed).expect("update");
    assert_eq!(client.resource_pool_limits(&pool).expect("limits"), changed);
    client.update_resource_pool(&pool, ResourcePoolLimits::default()).expect("unlimited");
    assert_eq!(client.resource_pool_limits(&pool).expect("limits"), ResourcePoolLimits::default());

    let inventory = client.inventory().expect("inventory");
    assert_eq!(inventory.resource_pool_in(&compute, "berth-vch1").map(|found| &found.reference), Some(&pool));
    let other = inventory.compute_resources.iter().find(|other| other.object.name != "DC0_C0").expect("another compute resource");
    assert!(inventory.resource_pool_in(other, "berth-vch1").is_none(), "the pool is not under another compute resource");
}

#[test]
fn suspends_and_resumes_a_vm() {
    let (_vcsim, client, inventory) = vcsim_session();
    let vm = inventory.virtual_machine_named("DC0_H0_VM0").expect("DC0_H0_VM0").object.reference.clone();
    assert_eq!(power_state(&client, &vm), Some(PowerState::PoweredOn));
    client.suspend_vm(&vm).expect("suspend");
    assert_eq!(power_state(&client, &vm), Some(PowerState::Suspended));
    match client.suspend_vm(&vm) {
        Err(VimError::TaskFailed { fault_type, .. }) => assert_eq!(fault_type, "InvalidPowerState"),
        other => panic!("suspending twice should fail with InvalidPowerState, got {other:?}"),
    }
    client.power_on_vm(&vm).expect("resume");
    assert_eq!(power_state(&client, &vm), Some(PowerState::PoweredOn));
}

#[test]
fn deletes_disks_and_datastore_files() {
    let (_vcsim, client, inventory) = vcsim_session();
    let dc = datacenter(&inventory);
    let datastore = inventory.datastore_named("LocalDS_0").expect("LocalDS_0").object.reference.clone();
    client.make_directory(&dc, "[LocalDS_0] berth/gone", true).expect("directory");
    client.create_virtual_disk(&dc, "[LocalDS_0] berth/gone/d.vmdk", 1024).expect("disk");
    let listed = client.search_datastore(&datastore, "[LocalDS_0] berth/gone", Some("*.vmdk")).expect("search");
    assert!(listed.iter().any(|name| name == "d.vmdk"), "{listed:?}");

    client.delete_virtual_disk(&dc, "[LocalDS_0] berth/gone/d.vmdk").expect("delete the disk");
    assert!(matches!(client.delete_virtual_disk(&dc, "[LocalDS_0] berth/gone/d.vmdk"), Err(VimError::NotFound { .. })));
    let listed = client.search_datastore(&datastore, "[LocalDS_0] berth/gone", None).expect("search");
    assert!(listed.is_empty(), "the disk's files are gone: {listed:?}");

    client.delete_datastore_file(&dc, "[LocalDS_0] berth/gone").expect("delete the directory");
    assert!(matches!(client.delete_datastore_file(&dc, "[LocalDS_0] berth/gone"), Err(VimError::NotFound { .. })));
    assert!(matches!(client.search_datastore(&datastore, "[LocalDS_0] berth/gone", None), Err(VimError::NotFound { .. })));
    let berth = client.search_datastore(&datastore, "[LocalDS_0] berth", None).expect("search");
    assert!(!berth.iter().any(|name| name == "gone"), "{berth:?}");
}

#[test]
fn adds_and_removes_a_distributed_port_group() {
    let (_vcsim, client, inventory) = vcsim_session();
    let dvs = inventory.distributed_switch_named("DVS0").expect("DVS0 (vcsim names its switch so)").reference.clone();
    let dvs_uuid = inventory.distributed_switch_uuids.get(&dvs).expect("uuid").clone();
    client.add_dv_portgroup(&dvs, "berth-bridge").expect("add a port group");
    assert!(matches!(client.add_dv_portgroup(&dvs, "berth-bridge"), Err(VimError::DuplicateName { .. })));

    let inventory = client.inventory().expect("inventory");
    let portgroup = inventory.network_named("berth-bridge").expect("the port group is listed");
    match &portgroup.backing {
        NetworkBacking::Distributed { switch_uuid, portgroup_key } => {
            assert_eq!(switch_uuid, &dvs_uuid);
            assert!(!portgroup_key.is_empty());
        }
        other => panic!("a new port group should be distributed, got {other:?}"),
    }
    client.destroy(&portgroup.object.reference).expect("remove the port group");
    assert!(client.inventory().expect("inventory").network_named("berth-bridge").is_none());
}

/// Collects a watch's changes until one matches or `within` passes.
fn wait_for_change(client: &VimClient, watch: &berth_vsphere::VmWatch, within: Duration, wanted: impl Fn(&VmChange) -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let changes = watch.wait(client, deadline.saturating_duration_since(Instant::now())).expect("watch");
        if changes.iter().any(&wanted) {
            return true;
        }
    }
    false
}

#[test]
fn vm_watch_sees_changes_made_by_other_calls() {
    let (_vcsim, client, inventory) = vcsim_session();
    let vm0 = inventory.virtual_machine_named("DC0_H0_VM0").expect("DC0_H0_VM0").object.reference.clone();
    let watch = client.watch_virtual_machines().expect("watch");

    let first = watch.wait(&client, Duration::from_secs(5)).expect("first wait");
    assert_eq!(first.len(), inventory.virtual_machines.len(), "the first call enters every VM: {first:?}");
    assert!(first.iter().all(|change| change.kind == ChangeKind::Enter && change.extra_config.is_some()));
    let entered = first.iter().find(|change| change.vm == vm0).expect("VM0 entered");
    assert_eq!(entered.power_state, Some(PowerState::PoweredOn));

    // Another thread changes the VM while this one waits: the client is shared, as in berth.
    std::thread::scope(|scope| {
        let powering_off = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            client.power_off_vm(&vm0)
        });
        let seen = wait_for_change(&client, &watch, Duration::from_secs(10), |change| {
            change.vm == vm0 && change.kind == ChangeKind::Modify && change.power_state == Some(PowerState::PoweredOff)
        });
        powering_off.join().expect("the other thread ran").expect("power off");
        assert!(seen, "the watch saw VM0 power off");
    });

    let vm = create_vm(&client, &inventory, small_vm("berth-watched"));
    assert!(
        wait_for_change(&client, &watch, Duration::from_secs(10), |change| change.vm == vm && change.kind == ChangeKind::Enter),
        "the watch saw the new VM enter"
    );
    client.destroy(&vm).expect("destroy");
    assert!(
        wait_for_change(&client, &watch, Duration::from_secs(10), |change| change.vm == vm && change.kind == ChangeKind::Leave),
        "the watch saw the VM leave"
    );
    let started = Instant::now();
    let quiet = watch.wait(&client, Duration::from_secs(1)).expect("a quiet wait");
    assert!(quiet.is_empty(), "nothing changed: {quiet:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "a quiet wait ends at its deadline, took {:?}", started.elapsed());
    watch.close(&client).expect("close");
}

#[test]
fn every_task_wait_returns_typed_faults_and_is_timed() {
    let vcsim = start_vcsim(&[]);
    const CYCLES: u32 = 10;
    for strategy in [TaskWait::Poll, TaskWait::Updates, TaskWait::ReadThenUpdates] {
        let mut options = vcsim.connect_options();
        options.task_wait = strategy;
        let client = VimClient::connect(&options).expect("login");
        let inventory = client.inventory().expect("inventory");
        let vm = create_vm(&client, &inventory, small_vm(&format!("berth-{strategy:?}")));
        client.power_on_vm(&vm).expect("power on");
        match client.power_on_vm(&vm) {
            Err(VimError::TaskFailed { fault_type, .. }) => assert_eq!(fault_type, "InvalidPowerState", "{strategy:?}"),
            other => panic!("{strategy:?}: powering on twice should fail with InvalidPowerState, got {other:?}"),
        }
        let started = Instant::now();
        for _ in 0..CYCLES {
            client.power_off_vm(&vm).expect("power off");
            client.power_on_vm(&vm).expect("power on");
        }
        let per_task = started.elapsed() / (CYCLES * 2);
        println!("task wait {strategy:?}: {per_task:?} per power task against vcsim ({} tasks)", CYCLES * 2);
        assert_eq!(power_state(&client, &vm), Some(PowerState::PoweredOn));
        client.logout().expect("logout");
    }
}

#[test]
fn concurrent_task_waits_do_not_see_each_others_updates() {
    let vcsim = start_vcsim(&[]);
    let mut options = vcsim.connect_options();
    options.task_wait = TaskWait::Updates;
    let client = VimClient::connect(&options).expect("login");
    let inventory = client.inventory().expect("inventory");
    let vms: Vec<ManagedObjectRef> = (0..4).map(|index| create_vm(&client, &inventory, small_vm(&format!("berth-p{index}")))).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = vms
            .iter()
            .map(|vm| {
                let client = &client;
                scope.spawn(move || {
                    for _ in 0..3 {
                        client.power_on_vm(vm)?;
                        client.power_off_vm(vm)?;
                    }
                    client.power_on_vm(vm)
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("the worker ran").expect("its power tasks succeeded");
        }
    });
    for vm in &vms {
        assert_eq!(power_state(&client, vm), Some(PowerState::PoweredOn));
    }
}

/// A fresh local directory for a test's files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("berth-vcsim-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("scratch directory");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a tool of e2fsprogs (found in the sbin directories too) and returns its standard output.
fn e2fsprogs(tool: &str, arguments: &[&str]) -> Vec<u8> {
    for program in [PathBuf::from(tool), Path::new("/usr/sbin").join(tool), Path::new("/sbin").join(tool)] {
        if let Ok(output) = Command::new(&program).args(arguments).stderr(Stdio::null()).output() {
            assert!(output.status.success(), "{} {arguments:?} failed", program.display());
            return output.stdout;
        }
    }
    panic!("{tool} (e2fsprogs) is not installed");
}

#[test]
fn uploads_downloads_and_checks_datastore_files() {
    let (_vcsim, client, inventory) = vcsim_session();
    let dc = datacenter(&inventory);
    let datastore = inventory.datastore_named("LocalDS_0").expect("LocalDS_0").object.reference.clone();
    assert!(!client.datastore_file_exists("DC0", "LocalDS_0", "berth/files/a b.txt").expect("exists"));
    match client.download_file("DC0", "LocalDS_0", "berth/files/a b.txt") {
        Err(VimError::NotFound { .. }) => {}
        other => panic!("downloading a missing file should be NotFound, got {other:?}"),
    }

    client.make_directory(&dc, "[LocalDS_0] berth/files", true).expect("directory");
    let contents = b"hello <datastore> & friends\n".repeat(100);
    client.upload_file("DC0", "LocalDS_0", "berth/files/a b.txt", &mut &contents[..], contents.len() as u64).expect("upload");
    assert!(client.datastore_file_exists("DC0", "LocalDS_0", "berth/files/a b.txt").expect("exists"));
    assert_eq!(client.download_file("DC0", "LocalDS_0", "berth/files/a b.txt").expect("download"), contents);
    let listed = client.search_datastore(&datastore, "[LocalDS_0] berth/files", None).expect("search");
    assert_eq!(listed, ["a b.txt"], "the uploaded file is a datastore file like any other");

    // An upload replaces the file, and sends no more than the length it was given.
    client.upload_file("DC0", "LocalDS_0", "berth/files/a b.txt", &mut &b"shorter, and more"[..], 7).expect("replace");
    assert_eq!(client.download_file("DC0", "LocalDS_0", "berth/files/a b.txt").expect("download"), b"shorter");

    match client.upload_file("DC0", "NoSuchDS", "berth/files/x", &mut &b"x"[..], 1) {
        Err(VimError::NotFound { .. }) => {}
        other => panic!("an unknown datastore should be NotFound, got {other:?}"),
    }
    for bad in ["../escape", "/abs", "berth//x", ""] {
        match client.datastore_file_exists("DC0", "LocalDS_0", bad) {
            Err(VimError::InvalidSpec { .. }) => {}
            other => panic!("{bad:?} should be refused, got {other:?}"),
        }
    }
    client.delete_datastore_file(&dc, "[LocalDS_0] berth/files").expect("clean up");
}

#[test]
fn containers_get_a_child_disk_of_their_images_disk() {
    let (_vcsim, client, inventory) = vcsim_session();
    let scratch = Scratch::new("image-disk");
    let rootfs = scratch.0.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).expect("rootfs");
    std::fs::write(rootfs.join("hello"), "hello from the image\n").expect("a file");
    std::fs::write(rootfs.join("etc/hostname"), "berth\n").expect("another");
    let tar = scratch.0.join("rootfs.tar");
    let status = Command::new("tar").arg("-cf").arg(&tar).arg("-C").arg(&rootfs).arg(".").status().expect("tar runs");
    assert!(status.success(), "tar made the rootfs archive");

    let image_id = "0123456789abcdef".repeat(4);
    let directory = format!("berth/vch1/images/{image_id}");
    let vmdk = build_flat_vmdk(&tar, &scratch.0.join("work"), &image_id).expect("build the image disk");
    assert!(!image_disk_exists(&client, "DC0", "LocalDS_0", &directory, &image_id).expect("exists"));
    let image_disk = upload_image_disk(&client, "DC0", "LocalDS_0", &directory, &image_id, &vmdk).expect("upload the image disk");
    assert_eq!(image_disk, format!("[LocalDS_0] {directory}/{image_id}.vmdk"));
    assert!(image_disk_exists(&client, "DC0", "LocalDS_0", &directory, &image_id).expect("exists"));
    // A second upload finds the disk complete and sends nothing.
    assert_eq!(upload_image_disk(&client, "DC0", "LocalDS_0", &directory, &image_id, &vmdk).expect("again"), image_disk);

    let descriptor = client.download_file("DC0", "LocalDS_0", &format!("{directory}/{image_id}.vmdk")).expect("the descriptor");
    assert_eq!(String::from_utf8_lossy(&descriptor), vmdk.descriptor);
    let flat = client.download_file("DC0", "LocalDS_0", &format!("{directory}/{image_id}-flat.vmdk")).expect("the extent");
    assert_eq!(flat.len() as u64, vmdk.capacity_bytes);
    assert!(flat == std::fs::read(&vmdk.flat_path).expect("the local extent"), "the extent arrived unchanged");
    let downloaded = scratch.0.join("downloaded-flat.vmdk");
    std::fs::write(&downloaded, &flat).expect("write the download");
    drop(flat);
    let downloaded = downloaded.to_str().expect("a UTF-8 path");
    assert_eq!(e2fsprogs("debugfs", &["-R", "cat /hello", downloaded]), b"hello from the image\n");
    assert_eq!(e2fsprogs("debugfs", &["-R", "cat /etc/hostname", downloaded]), b"berth\n");

    // The container's disk is created as a child of the image's disk, when the VM is created
    // and when a disk is added to it.
    let dc = datacenter(&inventory);
    client.make_directory(&dc, "[LocalDS_0] berth/vch1/containers/c1", true).expect("the container's directory");
    let writable = DiskSpec {
        file_name: "[LocalDS_0] berth/vch1/containers/c1/c1.vmdk".to_string(),
        capacity_kib: 8 * 1024 * 1024,
        create: true,
        mode: DiskMode::Persistent,
        parent: Some(image_disk.clone()),
    };
    let vm = create_vm(&client, &inventory, VmSpec { disks: vec![writable], ..small_vm("berth-c1") });
    let second = DiskSpec { file_name: "[LocalDS_0] berth/vch1/containers/c1/c1-2.vmdk".to_string(), ..DiskSpec::default() };
    let second = DiskSpec { create: true, parent: Some(image_disk.clone()), ..second };
    client.reconfigure_vm(&vm, &VmReconfigSpec { add_disks: vec![second], ..VmReconfigSpec::default() }).expect("add a child disk");
    let disks: Vec<_> = client.vm_devices(&vm).expect("devices").into_iter().filter_map(|device| device.disk).collect();
    println!("vcsim read back the child disks as {disks:#?}");
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0].file_name, "[LocalDS_0] berth/vch1/containers/c1/c1.vmdk");
    assert_eq!(disks[1].file_name, "[LocalDS_0] berth/vch1/containers/c1/c1-2.vmdk");
    assert!(disks.iter().all(|disk| disk.parent.as_deref() == Some(image_disk.as_str())), "the disks' parent is the image disk: {disks:?}");
    assert!(disks.iter().all(|disk| disk.mode == Some(DiskMode::Persistent)));

    client.destroy(&vm).expect("destroy the VM");
    client.delete_datastore_file(&dc, "[LocalDS_0] berth/vch1").expect("clean up");
    assert!(!image_disk_exists(&client, "DC0", "LocalDS_0", &directory, &image_id).expect("exists"));
}
