//! The VIM25 client: login, service content, inventory, and the tasks that create,
//! reconfigure, power and destroy folders, resource pools, port groups and VMs, with faults
//! as typed errors. Tasks are awaited with WaitForUpdatesEx (see [`TaskWait`]).

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use crate::devices::{device_changes, DeviceSpecError, VirtualDevice};
// The device specs are part of VmSpec and VmReconfigSpec, so they are also named from here.
pub use crate::devices::{DiskMode, DiskSpec, NetworkBacking, NicSpec};
use crate::inventory::{
    ComputeResource, Datacenter, Datastore, Inventory, ManagedObjectRef, Network, ObjectContent, VirtualMachine, VIRTUAL_MACHINE_PATHS,
};
use crate::soap::{SoapError, SoapTransport};
use crate::thumbprint::{Thumbprint, ThumbprintError};
use crate::watch::ChangeKind;
use crate::xml::{escape, XmlElement};

/// The first pause between two polls of a running task; it doubles up to the maximum.
const TASK_POLL_FIRST_INTERVAL: Duration = Duration::from_millis(10);
const TASK_POLL_MAX_INTERVAL: Duration = Duration::from_millis(500);
/// WaitForUpdatesEx may hold a request this much less than the request timeout, so that the
/// server's reply (after maxWaitSeconds) arrives before the client gives up on the request.
const UPDATE_WAIT_MARGIN: Duration = Duration::from_secs(5);
/// The ports a new distributed port group starts with; it grows past them (autoExpand).
const DV_PORTGROUP_PORTS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum VimError {
    #[error("invalid target URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error(transparent)]
    Thumbprint(#[from] ThumbprintError),
    #[error("{endpoint} is unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("{endpoint} presented a certificate with thumbprint {actual}, not the expected {expected}")]
    ThumbprintMismatch { endpoint: String, expected: Thumbprint, actual: Thumbprint },
    #[error("{endpoint} presented an untrusted certificate (thumbprint {actual}); pass --thumbprint {actual} if you trust it")]
    UntrustedCertificate { endpoint: String, actual: Thumbprint },
    #[error("login as {user:?} failed: wrong user name or password")]
    InvalidLogin { user: String },
    #[error("not found: {message}")]
    NotFound { message: String },
    #[error("an object with that name already exists: {message}")]
    DuplicateName { message: String },
    /// A datastore file or directory that was to be created exists already.
    #[error("the file already exists: {message}")]
    AlreadyExists { message: String },
    #[error("the datastore is full: {message}")]
    NoSpace { message: String },
    /// The endpoint lacks a manager or method that the call needs.
    #[error("not supported by this endpoint: {message}")]
    NotSupported { message: String },
    /// The request cannot be written as asked (e.g. more disks than a VM's SCSI controllers hold).
    #[error("invalid specification: {message}")]
    InvalidSpec { message: String },
    #[error("vSphere fault {fault_type}: {message}")]
    Fault { fault_type: String, message: String },
    #[error("task {task} failed with {fault_type}: {message}")]
    TaskFailed { task: ManagedObjectRef, fault_type: String, message: String },
    #[error("task {task} did not finish within {waited:?}")]
    TaskTimedOut { task: ManagedObjectRef, waited: Duration },
    #[error("unexpected reply from vSphere: {0}")]
    UnexpectedReply(String),
}

impl VimError {
    /// Maps a fault by its vSphere type, as raised by a method or a task.
    fn from_fault(fault_type: &str, message: String, task: Option<&ManagedObjectRef>) -> VimError {
        match fault_type {
            "ManagedObjectNotFound" | "NotFound" | "InvalidDatastorePath" | "FileNotFound" => VimError::NotFound { message },
            "DuplicateName" | "AlreadyExists" => VimError::DuplicateName { message },
            "FileAlreadyExists" => VimError::AlreadyExists { message },
            // InsufficientDisks is left out: it is vSAN lacking disks to claim, not a full datastore.
            "NoDiskSpace" | "InsufficientStorageSpace" => VimError::NoSpace { message },
            _ => match task {
                Some(task) => VimError::TaskFailed { task: task.clone(), fault_type: fault_type.to_string(), message },
                None => VimError::Fault { fault_type: fault_type.to_string(), message },
            },
        }
    }
}

impl From<SoapError> for VimError {
    fn from(error: SoapError) -> VimError {
        match error {
            SoapError::Unreachable { endpoint, reason } => VimError::Unreachable { endpoint, reason },
            SoapError::ThumbprintMismatch { endpoint, expected, actual } => VimError::ThumbprintMismatch { endpoint, expected, actual },
            SoapError::UntrustedCertificate { endpoint, actual } => VimError::UntrustedCertificate { endpoint, actual },
            SoapError::HttpStatus { endpoint, status, body_start } => {
                VimError::UnexpectedReply(format!("{endpoint} answered HTTP {status}: {body_start}"))
            }
            SoapError::Fault { fault_type, message, detail } => {
                let message = match detail.as_ref().and_then(|detail| detail.child("obj")) {
                    Some(object) if message.is_empty() => {
                        format!("{} {}", object.reference_type.as_deref().unwrap_or("object"), object.text)
                    }
                    _ => message,
                };
                VimError::from_fault(&fault_type, message, None)
            }
            SoapError::Malformed(reason) => VimError::UnexpectedReply(reason),
            SoapError::Xml(error) => VimError::UnexpectedReply(error.to_string()),
            SoapError::Thumbprint(error) => VimError::Thumbprint(error),
        }
    }
}

impl From<DeviceSpecError> for VimError {
    fn from(error: DeviceSpecError) -> VimError {
        VimError::InvalidSpec { message: error.to_string() }
    }
}

/// How [`VimClient::wait_for_task`] learns that a task finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TaskWait {
    /// Read `info` once, and if the task is still running wait for its end with
    /// WaitForUpdatesEx on a collector of its own: one call for tasks that end at once (all of
    /// vcsim's), prompt notice without polling for long ones.
    #[default]
    ReadThenUpdates,
    /// Only WaitForUpdatesEx: create a collector and a filter, wait, destroy the collector.
    Updates,
    /// Read `info` with a doubling pause (10 ms to 500 ms) until the task ends.
    Poll,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `https://host[:port][/sdk]`, `http://...`, or a bare host (https is assumed).
    pub target_url: String,
    pub username: String,
    pub password: String,
    /// The server certificate's SHA-1 or SHA-256 thumbprint, to trust a self-signed certificate.
    pub thumbprint: Option<String>,
    pub request_timeout: Duration,
    /// How long a task may run before [`VimError::TaskTimedOut`].
    pub task_timeout: Duration,
    pub task_wait: TaskWait,
}

impl ConnectOptions {
    pub fn new(target_url: &str, username: &str, password: &str) -> ConnectOptions {
        ConnectOptions {
            target_url: target_url.to_string(),
            username: username.to_string(),
            password: password.to_string(),
            thumbprint: None,
            request_timeout: Duration::from_secs(30),
            task_timeout: Duration::from_secs(300),
            task_wait: TaskWait::default(),
        }
    }
}

/// The well-known managers of a vSphere endpoint, from RetrieveServiceContent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceContent {
    pub root_folder: ManagedObjectRef,
    pub property_collector: ManagedObjectRef,
    pub view_manager: ManagedObjectRef,
    pub session_manager: ManagedObjectRef,
    /// Creates and deletes virtual disks; `None` if the endpoint has none.
    pub virtual_disk_manager: Option<ManagedObjectRef>,
    /// Makes directories and deletes datastore files; `None` if the endpoint has none.
    pub file_manager: Option<ManagedObjectRef>,
    /// e.g. "VMware vCenter Server 6.5.0 build-5973321".
    pub full_name: String,
    pub api_version: String,
    /// "VirtualCenter" or "HostAgent".
    pub api_type: String,
}

/// CPU and memory limits of a resource pool; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourcePoolLimits {
    pub cpu_limit_mhz: Option<i64>,
    pub memory_limit_mib: Option<i64>,
}

/// What a new VM is made of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    /// The datastore that holds the VM's files.
    pub datastore_name: String,
    pub cpu_count: u32,
    pub memory_mib: u64,
    pub guest_id: String,
    pub extra_config: BTreeMap<String, String>,
    /// Disks on SCSI units 0, 1... (7 skipped) of an LSI Logic controller added for them.
    pub disks: Vec<DiskSpec>,
    /// VMXNET3 adapters, in this order.
    pub nics: Vec<NicSpec>,
}

/// Changes to an existing VM; what is left empty or `None` stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmReconfigSpec {
    /// Options to set; a value of "" removes the key (vSphere's own rule for extraConfig).
    pub extra_config: BTreeMap<String, String>,
    pub memory_mib: Option<u64>,
    pub cpu_count: Option<u32>,
    /// Disks to add, on free units of the VM's SCSI controllers (a new one if they are full).
    pub add_disks: Vec<DiskSpec>,
    /// Disks to detach (by file name) without deleting their files: volumes
    /// outlive the VMs that mount them, and destroying a VM deletes the disks
    /// still attached to it.
    pub detach_disks: Vec<String>,
}

/// A logged-in session to one vCenter or ESX. It can be shared by threads (`Send + Sync`):
/// calls are independent HTTP requests, and each task wait or watch has its own collector.
pub struct VimClient {
    transport: SoapTransport,
    content: ServiceContent,
    task_timeout: Duration,
    request_timeout: Duration,
    task_wait: TaskWait,
}

// Threads share one client and one watch; this stops compiling if a field loses Send or Sync.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<VimClient>();
    shared::<crate::watch::VmWatch>();
};

/// `<extraConfig>` elements of a VirtualMachineConfigSpec.
fn extra_config_xml(options: &BTreeMap<String, String>) -> String {
    options
        .iter()
        .map(|(key, value)| {
            format!(r#"<extraConfig><key>{}</key><value xsi:type="xsd:string">{}</value></extraConfig>"#, escape(key), escape(value))
        })
        .collect()
}

/// Normalises a target into the `/sdk` endpoint URL.
fn sdk_endpoint(target_url: &str) -> Result<String, VimError> {
    let invalid = |reason: &str| VimError::InvalidUrl { url: target_url.to_string(), reason: reason.to_string() };
    let trimmed = target_url.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let with_scheme = if trimmed.contains("://") { trimmed.to_string() } else { format!("https://{trimmed}") };
    let (scheme, rest) = with_scheme.split_once("://").ok_or_else(|| invalid("no scheme"))?;
    if scheme != "http" && scheme != "https" {
        return Err(invalid("the scheme must be http or https"));
    }
    if rest.contains('@') {
        return Err(invalid("pass the user and password separately, not in the URL"));
    }
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    let path = if path.trim_matches('/').is_empty() { "sdk" } else { path.trim_matches('/') };
    Ok(format!("{scheme}://{host}/{path}"))
}

/// See [`VimClient::update_wait_seconds`].
fn update_wait_seconds(request_timeout: Duration, remaining: Duration) -> u32 {
    let request_limit = if request_timeout > UPDATE_WAIT_MARGIN * 2 { request_timeout - UPDATE_WAIT_MARGIN } else { request_timeout / 2 };
    u32::try_from(remaining.min(request_limit).as_secs()).unwrap_or(u32::MAX)
}

fn required_reference(element: &XmlElement, name: &str) -> Result<ManagedObjectRef, VimError> {
    element
        .child(name)
        .and_then(ManagedObjectRef::from_element)
        .ok_or_else(|| VimError::UnexpectedReply(format!("no {name} reference in {}", element.name)))
}

impl VimClient {
    /// Reads the service content and logs in; nothing is created.
    pub fn connect(options: &ConnectOptions) -> Result<VimClient, VimError> {
        let endpoint = sdk_endpoint(&options.target_url)?;
        let pinned = options.thumbprint.as_deref().map(Thumbprint::parse).transpose()?;
        let transport = SoapTransport::new(&endpoint, pinned, options.request_timeout)?;
        let reply = transport.call(
            r#"<RetrieveServiceContent xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></RetrieveServiceContent>"#,
        )?;
        let returned =
            reply.child("returnval").ok_or_else(|| VimError::UnexpectedReply("RetrieveServiceContent returned nothing".to_string()))?;
        let about = returned.child("about");
        let about_text = |name: &str| about.and_then(|about| about.child_text(name)).unwrap_or_default().to_string();
        let content = ServiceContent {
            root_folder: required_reference(returned, "rootFolder")?,
            property_collector: required_reference(returned, "propertyCollector")?,
            view_manager: required_reference(returned, "viewManager")?,
            session_manager: required_reference(returned, "sessionManager")?,
            virtual_disk_manager: returned.child("virtualDiskManager").and_then(ManagedObjectRef::from_element),
            file_manager: returned.child("fileManager").and_then(ManagedObjectRef::from_element),
            full_name: about_text("fullName"),
            api_version: about_text("apiVersion"),
            api_type: about_text("apiType"),
        };
        let login = format!(
            r#"<Login xmlns="urn:vim25">{}<userName>{}</userName><password>{}</password></Login>"#,
            content.session_manager.to_xml("_this"),
            escape(&options.username),
            escape(&options.password)
        );
        match transport.call(&login) {
            Ok(_) => {}
            Err(SoapError::Fault { fault_type, .. }) if fault_type == "InvalidLogin" => {
                return Err(VimError::InvalidLogin { user: options.username.clone() })
            }
            Err(error) => return Err(error.into()),
        }
        Ok(VimClient {
            transport,
            content,
            task_timeout: options.task_timeout,
            request_timeout: options.request_timeout,
            task_wait: options.task_wait,
        })
    }

    /// Calls one method (its element in namespace urn:vim25) and returns its response element.
    pub(crate) fn call(&self, body: &str) -> Result<XmlElement, VimError> {
        Ok(self.transport.call(body)?)
    }

    /// Calls a task method and waits for the task; returns its result.
    pub(crate) fn call_task(&self, body: &str) -> Result<Option<XmlElement>, VimError> {
        let reply = self.call(body)?;
        let task = required_reference(&reply, "returnval")?;
        self.wait_for_task(&task)
    }

    /// The maxWaitSeconds of one WaitForUpdatesEx that is to end within `remaining`: whole
    /// seconds, and short enough that the reply comes before the request timeout.
    pub(crate) fn update_wait_seconds(&self, remaining: Duration) -> u32 {
        update_wait_seconds(self.request_timeout, remaining)
    }

    /// A ContainerView of every object of `kinds` (and subtypes) under the root folder.
    pub(crate) fn create_container_view(&self, kinds: &[&str]) -> Result<ManagedObjectRef, VimError> {
        let type_list: String = kinds.iter().map(|kind| format!("<type>{}</type>", escape(kind))).collect();
        let reply = self.call(&format!(
            r#"<CreateContainerView xmlns="urn:vim25">{}{}{}<recursive>true</recursive></CreateContainerView>"#,
            self.content.view_manager.to_xml("_this"),
            self.content.root_folder.to_xml("container"),
            type_list
        ))?;
        required_reference(&reply, "returnval")
    }

    pub(crate) fn destroy_view(&self, view: &ManagedObjectRef) -> Result<(), VimError> {
        self.call(&format!(r#"<DestroyView xmlns="urn:vim25">{}</DestroyView>"#, view.to_xml("_this")))?;
        Ok(())
    }

    pub fn service_content(&self) -> &ServiceContent {
        &self.content
    }

    /// The SOAP transport, whose agent and session cookie datastore file transfers reuse.
    pub(crate) fn transport(&self) -> &SoapTransport {
        &self.transport
    }

    /// How long one request may take; uploads add time for their length to it.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Ends the session; the client cannot be used afterwards.
    pub fn logout(self) -> Result<(), VimError> {
        let body = format!(r#"<Logout xmlns="urn:vim25">{}</Logout>"#, self.content.session_manager.to_xml("_this"));
        self.transport.call(&body)?;
        Ok(())
    }

    /// The properties `paths` of every object of `kinds` (with their subtypes) under the root folder.
    pub fn retrieve_all(&self, kinds: &[(&str, &[&str])]) -> Result<Vec<ObjectContent>, VimError> {
        let kind_names: Vec<&str> = kinds.iter().map(|(kind, _)| *kind).collect();
        let view = self.create_container_view(&kind_names)?;
        let prop_sets: String = kinds
            .iter()
            .map(|(kind, paths)| {
                let path_set: String = paths.iter().map(|path| format!("<pathSet>{}</pathSet>", escape(path))).collect();
                format!("<propSet><type>{}</type>{path_set}</propSet>", escape(kind))
            })
            .collect();
        let object_set = format!(
            r#"<objectSet>{}<skip>true</skip><selectSet xsi:type="TraversalSpec"><name>view</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet>"#,
            view.to_xml("obj")
        );
        let retrieved = self.retrieve_properties(&format!("<specSet>{prop_sets}{object_set}</specSet>"));
        let destroyed = self.destroy_view(&view);
        let objects = retrieved?;
        destroyed?;
        Ok(objects)
    }

    /// The properties `paths` of one object.
    pub fn retrieve_one(&self, object: &ManagedObjectRef, paths: &[&str]) -> Result<ObjectContent, VimError> {
        let path_set: String = paths.iter().map(|path| format!("<pathSet>{}</pathSet>", escape(path))).collect();
        let spec = format!(
            "<specSet><propSet><type>{}</type>{path_set}</propSet><objectSet>{}</objectSet></specSet>",
            escape(&object.kind),
            object.to_xml("obj")
        );
        self.retrieve_properties(&spec)?
            .into_iter()
            .find(|content| &content.reference == object)
            .ok_or_else(|| VimError::NotFound { message: format!("{object} has no such properties or does not exist") })
    }

    /// RetrievePropertiesEx with `spec_set`, following continuation tokens.
    fn retrieve_properties(&self, spec_set: &str) -> Result<Vec<ObjectContent>, VimError> {
        let collector = self.content.property_collector.to_xml("_this");
        let mut reply = self
            .transport
            .call(&format!(r#"<RetrievePropertiesEx xmlns="urn:vim25">{collector}{spec_set}<options></options></RetrievePropertiesEx>"#))?;
        let mut objects = Vec::new();
        while let Some(result) = reply.child("returnval") {
            objects.extend(result.children_named("objects").filter_map(ObjectContent::from_element));
            let Some(token) = result.child_text("token") else {
                break;
            };
            reply = self.transport.call(&format!(
                r#"<ContinueRetrievePropertiesEx xmlns="urn:vim25">{collector}<token>{}</token></ContinueRetrievePropertiesEx>"#,
                escape(token)
            ))?;
        }
        Ok(objects)
    }

    /// Reads datacenters, hosts, clusters, pools, folders, datastores, networks, distributed
    /// switches and VMs.
    pub fn inventory(&self) -> Result<Inventory, VimError> {
        let objects = self.retrieve_all(&[
            ("Datacenter", &["name", "parent", "vmFolder", "hostFolder", "datastoreFolder", "networkFolder"]),
            ("HostSystem", &["name", "parent"]),
            ("ComputeResource", &["name", "parent", "resourcePool"]),
            ("ResourcePool", &["name", "parent"]),
            ("Folder", &["name", "parent"]),
            ("Datastore", &["name", "parent", "summary.capacity", "summary.freeSpace", "summary.url", "browser"]),
            ("Network", &["name", "parent"]),
            // A port group is also a Network; this spec adds what makes it a NIC backing.
            ("DistributedVirtualPortgroup", &["name", "parent", "key", "config.key", "config.distributedVirtualSwitch"]),
            ("DistributedVirtualSwitch", &["name", "parent", "uuid"]),
            ("VirtualMachine", VIRTUAL_MACHINE_PATHS),
        ])?;
        let mut inventory = Inventory::default();
        // Port groups name their switch by reference; its uuid is known once all are read.
        let mut portgroups = Vec::new();
        for object in objects {
            match object.reference.kind.as_str() {
                "Datacenter" => inventory.datacenters.push(Datacenter {
                    object: object.named_object(),
                    vm_folder: object.reference_property("vmFolder"),
                    host_folder: object.reference_property("hostFolder"),
                    datastore_folder: object.reference_property("datastoreFolder"),
                    network_folder: object.reference_property("networkFolder"),
                }),
                "HostSystem" => inventory.hosts.push(object.named_object()),
                "ComputeResource" | "ClusterComputeResource" => inventory
                    .compute_resources
                    .push(ComputeResource { object: object.named_object(), resource_pool: object.reference_property("resourcePool") }),
                "ResourcePool" | "VirtualApp" => inventory.resource_pools.push(object.named_object()),
                "Folder" => inventory.folders.push(object.named_object()),
                "Datastore" => inventory.datastores.push(Datastore {
                    object: object.named_object(),
                    capacity_bytes: object.text("summary.capacity").and_then(|text| text.parse().ok()),
                    free_space_bytes: object.text("summary.freeSpace").and_then(|text| text.parse().ok()),
                    browser: object.reference_property("browser"),
                    url: object.text("summary.url").map(str::to_string),
                }),
                "Network" => {
                    let object = object.named_object();
                    let backing = NetworkBacking::Standard { name: object.name.clone() };
                    inventory.networks.push(Network { object, backing });
                }
                "DistributedVirtualPortgroup" => portgroups.push(object),
                "DistributedVirtualSwitch" | "VmwareDistributedVirtualSwitch" => {
                    if let Some(uuid) = object.text("uuid") {
                        inventory.distributed_switch_uuids.insert(object.reference.clone(), uuid.to_string());
                    }
                    inventory.distributed_switches.push(object.named_object());
                }
                "VirtualMachine" => inventory.virtual_machines.push(VirtualMachine::from_content(&object)),
                // Opaque (NSX) networks have no backing berth can write yet.
                _ => {}
            }
        }
        for portgroup in portgroups {
            let switch_uuid = portgroup
                .reference_property("config.distributedVirtualSwitch")
                .and_then(|switch| inventory.distributed_switch_uuids.get(&switch).cloned());
            let portgroup_key = portgroup.text("config.key").or_else(|| portgroup.text("key")).map(str::to_string);
            // Uplink port groups carry no VM traffic but are listed too; without a switch uuid
            // or key a port group could not back a NIC, so it is left out.
            if let (Some(switch_uuid), Some(portgroup_key)) = (switch_uuid, portgroup_key) {
                inventory.networks.push(Network {
                    object: portgroup.named_object(),
                    backing: NetworkBacking::Distributed { switch_uuid, portgroup_key },
                });
            }
        }
        Ok(inventory)
    }

    /// Every VM with its name, parent, power state, pool, extraConfig, memory and CPUs: the
    /// one call a reconciler needs to see what exists.
    pub fn virtual_machines(&self) -> Result<Vec<VirtualMachine>, VimError> {
        let objects = self.retrieve_all(&[("VirtualMachine", VIRTUAL_MACHINE_PATHS)])?;
        Ok(objects.iter().filter(|object| object.reference.kind == "VirtualMachine").map(VirtualMachine::from_content).collect())
    }

    /// The devices of a VM (`config.hardware.device`), with its disks' files and NICs' backings.
    pub fn vm_devices(&self, vm: &ManagedObjectRef) -> Result<Vec<VirtualDevice>, VimError> {
        let content = self.retrieve_one(vm, &["config.hardware.device"])?;
        Ok(content.properties.get("config.hardware.device").map(VirtualDevice::list_from).unwrap_or_default())
    }

    /// Creates a folder named `name` in `parent`.
    pub fn create_folder(&self, parent: &ManagedObjectRef, name: &str) -> Result<ManagedObjectRef, VimError> {
        let reply = self.call(&format!(
            r#"<CreateFolder xmlns="urn:vim25">{}<name>{}</name></CreateFolder>"#,
            parent.to_xml("_this"),
            escape(name)
        ))?;
        required_reference(&reply, "returnval")
    }

    /// Creates a resource pool named `name` in `parent` with these limits.
    pub fn create_resource_pool(
        &self,
        parent: &ManagedObjectRef,
        name: &str,
        limits: ResourcePoolLimits,
    ) -> Result<ManagedObjectRef, VimError> {
        let allocation = |limit: Option<i64>| {
            format!(
                "<reservation>0</reservation><expandableReservation>true</expandableReservation><limit>{}</limit><shares><shares>0</shares><level>normal</level></shares>",
                limit.unwrap_or(-1)
            )
        };
        let reply = self.call(&format!(
            r#"<CreateResourcePool xmlns="urn:vim25">{}<name>{}</name><spec><cpuAllocation>{}</cpuAllocation><memoryAllocation>{}</memoryAllocation></spec></CreateResourcePool>"#,
            parent.to_xml("_this"),
            escape(name),
            allocation(limits.cpu_limit_mhz),
            allocation(limits.memory_limit_mib)
        ))?;
        required_reference(&reply, "returnval")
    }

    /// Sets the CPU and memory limits of a pool (`None`: unlimited); reservations and shares stay.
    pub fn update_resource_pool(&self, pool: &ManagedObjectRef, limits: ResourcePoolLimits) -> Result<(), VimError> {
        self.call(&format!(
            r#"<UpdateConfig xmlns="urn:vim25">{}<config><cpuAllocation><limit>{}</limit></cpuAllocation><memoryAllocation><limit>{}</limit></memoryAllocation></config></UpdateConfig>"#,
            pool.to_xml("_this"),
            limits.cpu_limit_mhz.unwrap_or(-1),
            limits.memory_limit_mib.unwrap_or(-1)
        ))?;
        Ok(())
    }

    /// The CPU and memory limits of a pool; -1 (or no limit at all) is `None`.
    pub fn resource_pool_limits(&self, pool: &ManagedObjectRef) -> Result<ResourcePoolLimits, VimError> {
        const CPU: &str = "config.cpuAllocation.limit";
        const MEMORY: &str = "config.memoryAllocation.limit";
        let content = self.retrieve_one(pool, &[CPU, MEMORY])?;
        let limit = |path: &str| -> Result<Option<i64>, VimError> {
            match content.text(path).map(str::trim) {
                None => Ok(None),
                Some(text) => match text.parse::<i64>() {
                    Ok(limit) if limit < 0 => Ok(None),
                    Ok(limit) => Ok(Some(limit)),
                    Err(_) => Err(VimError::UnexpectedReply(format!("{pool} has a {path} of {text:?}"))),
                },
            }
        };
        Ok(ResourcePoolLimits { cpu_limit_mhz: limit(CPU)?, memory_limit_mib: limit(MEMORY)? })
    }

    /// Creates a VM in `folder` and `pool` and waits for the task; returns the VM.
    pub fn create_vm(&self, folder: &ManagedObjectRef, pool: &ManagedObjectRef, spec: &VmSpec) -> Result<ManagedObjectRef, VimError> {
        // The WSDL's order: deviceChange after memoryMB, before extraConfig.
        let devices = device_changes(&[], &spec.disks, &spec.nics)?;
        let config = format!(
            "<config><name>{}</name><guestId>{}</guestId><files><vmPathName>[{}]</vmPathName></files><numCPUs>{}</numCPUs><memoryMB>{}</memoryMB>{devices}{}</config>",
            escape(&spec.name),
            escape(&spec.guest_id),
            escape(&spec.datastore_name),
            spec.cpu_count,
            spec.memory_mib,
            extra_config_xml(&spec.extra_config)
        );
        let reply = self.call(&format!(
            r#"<CreateVM_Task xmlns="urn:vim25">{}{config}{}</CreateVM_Task>"#,
            folder.to_xml("_this"),
            pool.to_xml("pool")
        ))?;
        let task = required_reference(&reply, "returnval")?;
        let result = self.wait_for_task(&task)?;
        result
            .as_ref()
            .and_then(ManagedObjectRef::from_element)
            .ok_or_else(|| VimError::UnexpectedReply(format!("task {task} created no VM reference")))
    }

    /// Changes a VM's extraConfig, memory, CPUs and adds disks (ReconfigVM_Task), and waits.
    /// Memory and CPUs can change only while the VM is off unless hot-add is enabled.
    pub fn reconfigure_vm(&self, vm: &ManagedObjectRef, spec: &VmReconfigSpec) -> Result<(), VimError> {
        let existing = if spec.add_disks.is_empty() && spec.detach_disks.is_empty() { Vec::new() } else { self.vm_devices(vm)? };
        let mut devices = if spec.add_disks.is_empty() { String::new() } else { device_changes(&existing, &spec.add_disks, &[])? };
        for device in &existing {
            let Some(disk) = device.disk.as_ref().filter(|disk| spec.detach_disks.contains(&disk.file_name)) else { continue };
            // No fileOperation: the device goes, the file stays.
            devices.push_str(&format!(
                r#"<deviceChange><operation>remove</operation><device xsi:type="VirtualDisk"><key>{}</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>{}</fileName><diskMode>{}</diskMode></backing>{}{}<capacityInKB>{}</capacityInKB></device></deviceChange>"#,
                device.key,
                escape(&disk.file_name),
                disk.mode.map_or("persistent", DiskMode::as_str),
                device.controller_key.map(|key| format!("<controllerKey>{key}</controllerKey>")).unwrap_or_default(),
                device.unit_number.map(|unit| format!("<unitNumber>{unit}</unitNumber>")).unwrap_or_default(),
                disk.capacity_kib.unwrap_or(0),
            ));
        }
        let cpus = spec.cpu_count.map(|count| format!("<numCPUs>{count}</numCPUs>")).unwrap_or_default();
        let memory = spec.memory_mib.map(|mib| format!("<memoryMB>{mib}</memoryMB>")).unwrap_or_default();
        self.call_task(&format!(
            r#"<ReconfigVM_Task xmlns="urn:vim25">{}<spec>{cpus}{memory}{devices}{}</spec></ReconfigVM_Task>"#,
            vm.to_xml("_this"),
            extra_config_xml(&spec.extra_config)
        ))?;
        Ok(())
    }

    pub fn power_on_vm(&self, vm: &ManagedObjectRef) -> Result<(), VimError> {
        self.run_task("PowerOnVM_Task", vm).map(|_| ())
    }

    pub fn power_off_vm(&self, vm: &ManagedObjectRef) -> Result<(), VimError> {
        self.run_task("PowerOffVM_Task", vm).map(|_| ())
    }

    /// Suspends a powered-on VM; powering it on resumes it.
    pub fn suspend_vm(&self, vm: &ManagedObjectRef) -> Result<(), VimError> {
        self.run_task("SuspendVM_Task", vm).map(|_| ())
    }

    /// Adds a port group named `name` (early binding, growing as needed) to a distributed
    /// switch; [`VimClient::destroy`] removes it.
    pub fn add_dv_portgroup(&self, dvs: &ManagedObjectRef, name: &str) -> Result<(), VimError> {
        self.call_task(&format!(
            r#"<AddDVPortgroup_Task xmlns="urn:vim25">{}<spec><name>{}</name><numPorts>{DV_PORTGROUP_PORTS}</numPorts><type>earlyBinding</type><autoExpand>true</autoExpand></spec></AddDVPortgroup_Task>"#,
            dvs.to_xml("_this"),
            escape(name)
        ))?;
        Ok(())
    }

    /// Destroys any managed entity (VM, folder, resource pool...) and what it contains.
    pub fn destroy(&self, entity: &ManagedObjectRef) -> Result<(), VimError> {
        self.run_task("Destroy_Task", entity).map(|_| ())
    }

    /// Calls a task method that takes only `_this`, and waits for its result.
    fn run_task(&self, method: &str, this: &ManagedObjectRef) -> Result<Option<XmlElement>, VimError> {
        self.call_task(&format!(r#"<{method} xmlns="urn:vim25">{}</{method}>"#, this.to_xml("_this")))
    }

    /// Waits until a task succeeds (its result) or fails (a typed error), as [`TaskWait`] says,
    /// at most the task timeout.
    pub fn wait_for_task(&self, task: &ManagedObjectRef) -> Result<Option<XmlElement>, VimError> {
        match self.task_wait {
            TaskWait::Poll => self.wait_for_task_by_polling(task),
            TaskWait::Updates => self.wait_for_task_by_updates(task),
            TaskWait::ReadThenUpdates => {
                let content = self.retrieve_one(task, &["info"])?;
                let info = content.properties.get("info").ok_or_else(|| VimError::UnexpectedReply(format!("task {task} has no info")))?;
                match task_outcome(task, info) {
                    Some(outcome) => outcome,
                    None => self.wait_for_task_by_updates(task),
                }
            }
        }
    }

    /// Polls `info` of a task, with a doubling pause, until it ends.
    pub fn wait_for_task_by_polling(&self, task: &ManagedObjectRef) -> Result<Option<XmlElement>, VimError> {
        let started = Instant::now();
        let mut interval = TASK_POLL_FIRST_INTERVAL;
        loop {
            let content = self.retrieve_one(task, &["info"])?;
            let info = content.properties.get("info").ok_or_else(|| VimError::UnexpectedReply(format!("task {task} has no info")))?;
            if let Some(outcome) = task_outcome(task, info) {
                return outcome;
            }
            let waited = started.elapsed();
            if waited >= self.task_timeout {
                return Err(VimError::TaskTimedOut { task: task.clone(), waited });
            }
            thread::sleep(interval.min(self.task_timeout.saturating_sub(waited)));
            interval = (interval * 2).min(TASK_POLL_MAX_INTERVAL);
        }
    }

    /// Waits for a task's end with WaitForUpdatesEx on a collector of its own, destroyed after.
    pub fn wait_for_task_by_updates(&self, task: &ManagedObjectRef) -> Result<Option<XmlElement>, VimError> {
        let started = Instant::now();
        let collector = self.create_property_collector()?;
        let outcome = self.wait_for_task_on(&collector, task, started);
        // A collector that cannot be destroyed ends with the session; the task's outcome is
        // what the caller needs, and reporting a finished task as failed would invite a retry.
        let _ = self.destroy_property_collector(&collector);
        outcome
    }

    fn wait_for_task_on(
        &self,
        collector: &ManagedObjectRef,
        task: &ManagedObjectRef,
        started: Instant,
    ) -> Result<Option<XmlElement>, VimError> {
        self.create_filter(collector, "Task", &["info"], task, false)?;
        let deadline = started + self.task_timeout;
        let mut version = None;
        loop {
            for set in self.wait_for_updates_until(collector, &mut version, deadline)? {
                for update in set.objects.iter().filter(|update| &update.object == task) {
                    if update.kind == ChangeKind::Leave {
                        return Err(VimError::NotFound { message: format!("task {task} disappeared before it ended") });
                    }
                    let info = update.changes.iter().filter(|change| change.name == "info").find_map(|change| change.value.as_ref());
                    if let Some(outcome) = info.and_then(|info| task_outcome(task, info)) {
                        return outcome;
                    }
                }
            }
            let waited = started.elapsed();
            if Instant::now() >= deadline {
                return Err(VimError::TaskTimedOut { task: task.clone(), waited });
            }
        }
    }
}

/// The outcome of a task whose `info` (a TaskInfo) says it ended; `None` while it runs.
fn task_outcome(task: &ManagedObjectRef, info: &XmlElement) -> Option<Result<Option<XmlElement>, VimError>> {
    match info.child_text("state") {
        Some("success") => Some(Ok(info.child("result").cloned())),
        Some("error") => {
            let error = info.child("error");
            let fault_type = error
                .and_then(|error| error.child("fault"))
                .and_then(|fault| fault.xsi_type.clone())
                .unwrap_or_else(|| "UnknownFault".to_string());
            let message = error.and_then(|error| error.child_text("localizedMessage")).unwrap_or_default().to_string();
            Some(Err(VimError::from_fault(&fault_type, message, Some(task))))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_targets_to_the_sdk_endpoint() {
        assert_eq!(sdk_endpoint("vc.example").ok().as_deref(), Some("https://vc.example/sdk"));
        assert_eq!(sdk_endpoint("http://127.0.0.1:8989/sdk").ok().as_deref(), Some("http://127.0.0.1:8989/sdk"));
        assert!(matches!(sdk_endpoint("ftp://x"), Err(VimError::InvalidUrl { .. })));
        assert!(matches!(sdk_endpoint("https://u:p@x/sdk"), Err(VimError::InvalidUrl { .. })));
        assert!(matches!(sdk_endpoint(""), Err(VimError::InvalidUrl { .. })));
    }

    #[test]
    fn maps_fault_types_to_typed_errors() {
        assert!(matches!(VimError::from_fault("DuplicateName", String::new(), None), VimError::DuplicateName { .. }));
        assert!(matches!(VimError::from_fault("ManagedObjectNotFound", String::new(), None), VimError::NotFound { .. }));
        let task = ManagedObjectRef::new("Task", "task-1");
        assert!(matches!(VimError::from_fault("InvalidState", String::new(), Some(&task)), VimError::TaskFailed { .. }));
        assert!(matches!(VimError::from_fault("FileAlreadyExists", String::new(), Some(&task)), VimError::AlreadyExists { .. }));
        assert!(matches!(VimError::from_fault("FileNotFound", String::new(), Some(&task)), VimError::NotFound { .. }));
        assert!(matches!(VimError::from_fault("NoDiskSpace", String::new(), Some(&task)), VimError::NoSpace { .. }));
        assert!(matches!(VimError::from_fault("InsufficientStorageSpace", String::new(), None), VimError::NoSpace { .. }));
    }

    #[test]
    fn reads_task_outcomes_from_task_info() {
        let task = ManagedObjectRef::new("Task", "task-1");
        let parse = |text: &str| XmlElement::parse_document(text).expect("xml");
        let running = parse("<info><state>running</state></info>");
        assert!(task_outcome(&task, &running).is_none());
        let done = parse(r#"<info><state>success</state><result type="VirtualMachine">vm-9</result></info>"#);
        match task_outcome(&task, &done) {
            Some(Ok(Some(result))) => {
                assert_eq!(ManagedObjectRef::from_element(&result), Some(ManagedObjectRef::new("VirtualMachine", "vm-9")))
            }
            other => panic!("expected the task's result, got {other:?}"),
        }
        let failed = parse(
            r#"<info xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><state>error</state><error><fault xsi:type="InvalidPowerState"/><localizedMessage>on</localizedMessage></error></info>"#,
        );
        match task_outcome(&task, &failed) {
            Some(Err(VimError::TaskFailed { fault_type, message, .. })) => {
                assert_eq!((fault_type.as_str(), message.as_str()), ("InvalidPowerState", "on"))
            }
            other => panic!("expected TaskFailed, got {other:?}"),
        }
    }

    #[test]
    fn update_waits_end_before_the_request_timeout() {
        let wait = |request_timeout: u64, remaining_millis: u64| {
            update_wait_seconds(Duration::from_secs(request_timeout), Duration::from_millis(remaining_millis))
        };
        assert_eq!(wait(30, 300_000), 25);
        assert_eq!(wait(30, 3_500), 3);
        assert_eq!(wait(4, 300_000), 2);
        assert_eq!(wait(30, 900), 0, "under a second is a single check");
    }
}
