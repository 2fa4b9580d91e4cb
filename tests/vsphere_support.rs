//! Tests of the vSphere test support against a real vcsim: the pyvmomi inventory
//! (tests/support/vcsim.rs) sees vcsim's model and what berth's client creates, and the
//! fault-injecting SOAP proxy (tests/support/soap_proxy.rs) forwards sessions, injects
//! typed faults, delays, stalls and drops calls, and counts them.

mod support;
use support::{soap_proxy, vcsim};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_vsphere::{ConnectOptions, ManagedObjectRef, ResourcePoolLimits, VimClient, VimError, VmSpec};
use soap_proxy::{read_chunked, soap_method, SoapFaultProxy};
use vcsim::{inventory_snapshot, Vcsim};

/// Options for berth's client through `proxy` to `vcsim`.
fn proxied_options(vcsim: &Vcsim, proxy: &SoapFaultProxy) -> ConnectOptions {
    let mut options = vcsim.connect_options();
    options.target_url = proxy.url();
    options
}

fn spec(name: &str, extra_config: &[(&str, &str)]) -> VmSpec {
    VmSpec {
        name: name.to_string(),
        datastore_name: "LocalDS_0".to_string(),
        cpu_count: 2,
        memory_mib: 512,
        guest_id: "otherGuest64".to_string(),
        extra_config: extra_config.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect::<BTreeMap<_, _>>(),
        ..Default::default()
    }
}

/// Creates a powered-off VM named `name` in DC0's VM folder and DC0_C0's root pool.
fn create_vm(client: &VimClient, name: &str) -> ManagedObjectRef {
    let inventory = client.inventory().expect("inventory");
    let folder = inventory.datacenter_named("DC0").and_then(|dc| dc.vm_folder.clone()).expect("DC0's vm folder");
    let pool = inventory.compute_resource_named("DC0_C0").and_then(|c| c.resource_pool.clone()).expect("DC0_C0's pool");
    client.create_vm(&folder, &pool, &spec(name, &[])).expect("create vm")
}

fn power_state_of(vcsim: &Vcsim, name: &str) -> String {
    let snapshot = vcsim.snapshot();
    snapshot.vm(name).unwrap_or_else(|| panic!("pyvmomi lists no {name}: {snapshot:?}")).power_state.clone()
}

#[test]
fn pyvmomi_lists_the_default_vms_pools_and_folders() {
    let vcsim = Vcsim::start_plain();
    let snapshot = vcsim.snapshot();
    let names: Vec<&str> = snapshot.virtual_machines.iter().map(|vm| vm.name.as_str()).collect();
    for expected in ["DC0_H0_VM0", "DC0_H0_VM1", "DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1"] {
        assert!(names.contains(&expected), "no {expected} in {names:?}");
    }
    let vm = snapshot.vm("DC0_H0_VM0").expect("DC0_H0_VM0");
    assert_eq!(vm.power_state, "poweredOn");
    assert_eq!(vm.folder.as_deref(), Some("vm"));
    assert_eq!(vm.resource_pool.as_deref(), Some("Resources"));
    assert!(vm.memory_mib.unwrap_or(0) > 0 && vm.num_cpu.unwrap_or(0) > 0, "{vm:?}");
    assert!(vm.disks.iter().any(|disk| disk.starts_with("[LocalDS_0] DC0_H0_VM0/")), "{vm:?}");
    assert!(!vm.networks.is_empty(), "{vm:?}");
    assert!(snapshot.resource_pools.iter().any(|pool| pool.name == "Resources" && pool.parent.as_deref() == Some("DC0_C0")));
    assert_eq!(snapshot.folders.first().map(|folder| (folder.name.as_str(), folder.parent.as_deref())), Some(("Datacenters", None)));
    assert!(snapshot.folder("vm").is_some_and(|folder| folder.child_types.iter().any(|kind| kind == "VirtualMachine")));
    assert_eq!(vcsim.inventory().len(), snapshot.virtual_machines.len());
    assert!(vcsim.pools().contains(&"Resources".to_string()));
    assert!(vcsim.folders().contains(&"vm".to_string()));
}

#[test]
fn pyvmomi_sees_what_berths_client_creates_powers_and_destroys() {
    let vcsim = Vcsim::start(&["-username", "alice", "-password", "s3cret&<"]);
    let client = VimClient::connect(&vcsim.connect_options()).expect("login");
    let inventory = client.inventory().expect("inventory");
    let vm_folder = inventory.datacenter_named("DC0").and_then(|dc| dc.vm_folder.clone()).expect("vm folder");
    let root_pool = inventory.compute_resource_named("DC0_C0").and_then(|c| c.resource_pool.clone()).expect("root pool");
    let limits = ResourcePoolLimits { cpu_limit_mhz: Some(2000), memory_limit_mib: Some(4096) };
    let pool = client.create_resource_pool(&root_pool, "berth-vch1", limits).expect("pool");
    let folder = client.create_folder(&vm_folder, "berth-vch1-folder").expect("folder");
    let vm = client.create_vm(&folder, &pool, &spec("berth-c1", &[("berth.container.id", "c1 <&>")])).expect("create vm");

    let snapshot = vcsim.snapshot();
    let record = snapshot.vm("berth-c1").expect("pyvmomi lists the new VM");
    assert_eq!(record.power_state, "poweredOff");
    assert_eq!(record.extra_config.get("berth.container.id").map(String::as_str), Some("c1 <&>"));
    assert_eq!(record.folder.as_deref(), Some("berth-vch1-folder"));
    assert_eq!(record.resource_pool.as_deref(), Some("berth-vch1"));
    assert_eq!((record.memory_mib, record.num_cpu), (Some(512), Some(2)));
    let pool_record = snapshot.pool("berth-vch1").expect("pyvmomi lists the new pool");
    assert_eq!(pool_record.parent.as_deref(), Some("Resources"));
    assert_eq!((pool_record.cpu_limit_mhz, pool_record.memory_limit_mib), (Some(2000), Some(4096)));
    assert_eq!(snapshot.folder("berth-vch1-folder").and_then(|folder| folder.parent.as_deref()), Some("vm"));

    client.power_on_vm(&vm).expect("power on");
    assert_eq!(power_state_of(&vcsim, "berth-c1"), "poweredOn");
    client.power_off_vm(&vm).expect("power off");
    assert_eq!(power_state_of(&vcsim, "berth-c1"), "poweredOff");
    client.destroy(&vm).expect("destroy");
    client.destroy(&pool).expect("destroy pool");
    client.destroy(&folder).expect("destroy folder");
    let snapshot = vcsim.snapshot();
    assert!(snapshot.vm("berth-c1").is_none() && snapshot.pool("berth-vch1").is_none() && snapshot.folder("berth-vch1-folder").is_none());
}

#[test]
fn pyvmomi_and_berth_reach_a_tls_vcsim() {
    let vcsim = Vcsim::start_tls();
    assert!(vcsim.url.starts_with("https://127.0.0.1:"), "{}", vcsim.url);
    let client = VimClient::connect(&vcsim.connect_options()).expect("login with the pinned thumbprint");
    let berth_names: Vec<String> = client.inventory().expect("inventory").virtual_machines.into_iter().map(|vm| vm.object.name).collect();
    let pyvmomi_names: Vec<String> = vcsim.inventory().into_iter().map(|vm| vm.name).collect();
    assert_eq!(pyvmomi_names.len(), 4, "{pyvmomi_names:?}");
    for name in &pyvmomi_names {
        assert!(berth_names.contains(name), "berth lists no {name}: {berth_names:?}");
    }
}

#[test]
fn the_proxy_forwards_sessions_and_counts_calls() {
    let vcsim = Vcsim::start_plain();
    let proxy = SoapFaultProxy::start(&vcsim.url);
    assert!(proxy.url().starts_with("http://127.0.0.1:") && proxy.url().ends_with("/sdk"), "{}", proxy.url());
    let client = VimClient::connect(&proxied_options(&vcsim, &proxy)).expect("login through the proxy");
    assert_eq!(proxy.calls("RetrieveServiceContent"), 1);
    assert_eq!(proxy.calls("Login"), 1);
    // Only a forwarded session cookie makes these calls work: vcsim refuses them otherwise.
    let vm = create_vm(&client, "through-the-proxy");
    client.power_on_vm(&vm).expect("power on through the proxy");
    assert_eq!(proxy.calls("CreateVM_Task"), 1);
    assert_eq!(proxy.calls("PowerOnVM_Task"), 1);
    assert!(proxy.calls("RetrievePropertiesEx") >= 2, "{:?}", proxy.call_log());
    assert_eq!(proxy.calls("*"), proxy.call_log().len());
    assert_eq!(power_state_of(&vcsim, "through-the-proxy"), "poweredOn");
    // ureq keeps its connection alive, and the proxy serves every call on it.
    assert_eq!(proxy.connections_accepted(), 1, "{} calls", proxy.calls("*"));
    // pyvmomi (http.client, its own GETs of /sdk/vimServiceVersions.xml) through it too.
    let before = proxy.calls("*");
    let snapshot = inventory_snapshot(&proxy.url(), &vcsim.user, &vcsim.password);
    assert!(snapshot.vm("through-the-proxy").is_some());
    assert!(proxy.calls("*") > before);
    assert_eq!(proxy.calls("Login"), 2);
}

#[test]
fn an_injected_fault_surfaces_as_a_typed_error() {
    let vcsim = Vcsim::start_plain();
    let proxy = SoapFaultProxy::start(&vcsim.url);
    let client = VimClient::connect(&proxied_options(&vcsim, &proxy)).expect("login");
    let vm = create_vm(&client, "faulty");

    proxy.fail("PowerOnVM_Task", "InvalidState", None);
    for _ in 0..2 {
        match client.power_on_vm(&vm) {
            Err(VimError::Fault { fault_type, message }) => {
                assert_eq!(fault_type, "InvalidState");
                assert!(message.contains("injected"), "{message}");
            }
            other => panic!("expected an InvalidState fault, got {other:?}"),
        }
    }
    assert_eq!(proxy.calls("PowerOnVM_Task"), 2);
    assert_eq!(power_state_of(&vcsim, "faulty"), "poweredOff", "a faulted call must not reach vcsim");

    // Fault types with a typed variant map to it.
    let folder = client.inventory().expect("inventory").datacenter_named("DC0").and_then(|dc| dc.vm_folder.clone()).expect("folder");
    proxy.fail("CreateFolder", "DuplicateName", Some(1));
    assert!(matches!(client.create_folder(&folder, "fresh"), Err(VimError::DuplicateName { .. })));
    proxy.fail_with("Destroy_Task", "ManagedObjectNotFound", "", r#"<obj type="VirtualMachine">vm-404</obj>"#, Some(1));
    match client.destroy(&vm) {
        Err(VimError::NotFound { message }) => assert_eq!(message, "VirtualMachine vm-404"),
        other => panic!("expected NotFound, got {other:?}"),
    }

    proxy.clear();
    client.power_on_vm(&vm).expect("power on once the rule is cleared");
    assert_eq!(power_state_of(&vcsim, "faulty"), "poweredOn");

    // A fault on every method fails even the login's first call.
    proxy.fail("*", "HostCommunication", Some(1));
    match VimClient::connect(&proxied_options(&vcsim, &proxy)) {
        Err(VimError::Fault { fault_type, .. }) => assert_eq!(fault_type, "HostCommunication"),
        Err(other) => panic!("expected a HostCommunication fault, got {other}"),
        Ok(_) => panic!("connected through a failing proxy"),
    }
    VimClient::connect(&proxied_options(&vcsim, &proxy)).expect("the rule was used up");
}

#[test]
fn a_fault_for_one_call_fails_once_then_succeeds() {
    let vcsim = Vcsim::start_plain();
    let proxy = SoapFaultProxy::start(&vcsim.url);
    let client = VimClient::connect(&proxied_options(&vcsim, &proxy)).expect("login");
    let vm = create_vm(&client, "retried");
    proxy.fail("PowerOnVM_Task", "HostCommunication", Some(1));
    match client.power_on_vm(&vm) {
        Err(error) => assert!(error.to_string().contains("injected by the test proxy"), "{error}"),
        Ok(()) => panic!("the first call succeeded"),
    }
    assert_eq!(power_state_of(&vcsim, "retried"), "poweredOff");
    client.power_on_vm(&vm).expect("the second call succeeds");
    assert_eq!(proxy.calls("PowerOnVM_Task"), 2);
    assert_eq!(power_state_of(&vcsim, "retried"), "poweredOn");
}

#[test]
fn a_delay_holds_the_call_at_least_that_long() {
    let vcsim = Vcsim::start_plain();
    let proxy = SoapFaultProxy::start(&vcsim.url);
    let client = VimClient::connect(&proxied_options(&vcsim, &proxy)).expect("login");
    let vm = create_vm(&client, "slow");
    let delay = Duration::from_millis(800);
    proxy.delay("PowerOnVM_Task", delay);
    let started = Instant::now();
    client.power_on_vm(&vm).expect("a delayed call still succeeds");
    assert!(started.elapsed() >= delay, "took only {:?}", started.elapsed());
    assert_eq!(power_state_of(&vcsim, "slow"), "poweredOn");
}

#[test]
fn a_stalled_call_runs_into_the_client_timeout() {
    let vcsim = Vcsim::start_plain();
    let proxy = SoapFaultProxy::start(&vcsim.url);
    let mut options = proxied_options(&vcsim, &proxy);
    options.request_timeout = Duration::from_secs(2);
    let client = VimClient::connect(&options).expect("login");
    let vm = create_vm(&client, "stalled");
    proxy.stall("PowerOnVM_Task", true);
    let started = Instant::now();
    match client.power_on_vm(&vm) {
        Err(VimError::Unreachable { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(20), "waited {waited:?}");
    assert_eq!(proxy.calls("PowerOnVM_Task"), 1);
    proxy.stall("PowerOnVM_Task", false);
    client.power_on_vm(&vm).expect("power on once the stall is off");
    assert_eq!(power_state_of(&vcsim, "stalled"), "poweredOn");
}

#[test]
fn a_dropped_connection_is_unreachable() {
    let vcsim = Vcsim::start_plain();
    let proxy = SoapFaultProxy::start(&vcsim.url);
    let client = VimClient::connect(&proxied_options(&vcsim, &proxy)).expect("login");
    let vm = create_vm(&client, "dropped");
    proxy.disconnect("PowerOnVM_Task", Some(1));
    match client.power_on_vm(&vm) {
        Err(VimError::Unreachable { .. }) => {}
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(proxy.wait_for_calls("PowerOnVM_Task", 1, Duration::from_secs(5)));
    assert_eq!(power_state_of(&vcsim, "dropped"), "poweredOff");
    client.power_on_vm(&vm).expect("the next call goes through");
    assert_eq!(power_state_of(&vcsim, "dropped"), "poweredOn");
}

#[test]
fn the_proxy_finds_the_method_inside_the_body() {
    let envelope = concat!(
        r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="x"><soapenv:Header><a/></soapenv:Header>"#,
        r#"<soapenv:Body><!-- c --><PowerOnVM_Task xmlns="urn:vim25"><_this type="VirtualMachine">vm-1</_this></PowerOnVM_Task>"#,
        "</soapenv:Body></soapenv:Envelope>"
    );
    assert_eq!(soap_method(envelope).as_deref(), Some("PowerOnVM_Task"));
    assert_eq!(soap_method(r#"<Envelope><Body><ns0:Login xmlns:ns0="urn:vim25"/></Body></Envelope>"#).as_deref(), Some("Login"));
    assert_eq!(soap_method("<Envelope><Header/></Envelope>"), None);
    assert_eq!(soap_method(""), None);
}

#[test]
fn the_proxy_decodes_chunked_bodies() {
    let mut input: &[u8] = b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\nTrailer: 1\r\n\r\nrest";
    assert_eq!(read_chunked(&mut input).unwrap(), b"Wikipedia");
    assert_eq!(input, b"rest");
}
