//! The VIM25 client: login, service content, inventory, and the tasks that create,
//! power and destroy folders, resource pools and VMs, with faults as typed errors.

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use crate::inventory::{ComputeResource, Datacenter, Datastore, Inventory, ManagedObjectRef, ObjectContent, PowerState, VirtualMachine};
use crate::soap::{SoapError, SoapTransport};
use crate::thumbprint::{Thumbprint, ThumbprintError};
use crate::xml::{escape, XmlElement};

/// The first pause between two polls of a running task; it doubles up to the maximum.
const TASK_POLL_FIRST_INTERVAL: Duration = Duration::from_millis(10);
const TASK_POLL_MAX_INTERVAL: Duration = Duration::from_millis(500);

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
            "DuplicateName" | "AlreadyExists" | "FileAlreadyExists" => VimError::DuplicateName { message },
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    pub name: String,
    /// The datastore that holds the VM's files.
    pub datastore_name: String,
    pub cpu_count: u32,
    pub memory_mib: u64,
    pub guest_id: String,
    pub extra_config: BTreeMap<String, String>,
}

/// A logged-in session to one vCenter or ESX.
pub struct VimClient {
    transport: SoapTransport,
    content: ServiceContent,
    task_timeout: Duration,
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
        Ok(VimClient { transport, content, task_timeout: options.task_timeout })
    }

    pub fn service_content(&self) -> &ServiceContent {
        &self.content
    }

    /// Ends the session; the client cannot be used afterwards.
    pub fn logout(self) -> Result<(), VimError> {
        let body = format!(r#"<Logout xmlns="urn:vim25">{}</Logout>"#, self.content.session_manager.to_xml("_this"));
        self.transport.call(&body)?;
        Ok(())
    }

    /// The properties `paths` of every object of `kinds` (with their subtypes) under the root folder.
    pub fn retrieve_all(&self, kinds: &[(&str, &[&str])]) -> Result<Vec<ObjectContent>, VimError> {
        let type_list: String = kinds.iter().map(|(kind, _)| format!("<type>{}</type>", escape(kind))).collect();
        let view_reply = self.transport.call(&format!(
            r#"<CreateContainerView xmlns="urn:vim25">{}{}{}<recursive>true</recursive></CreateContainerView>"#,
            self.content.view_manager.to_xml("_this"),
            self.content.root_folder.to_xml("container"),
            type_list
        ))?;
        let view = required_reference(&view_reply, "returnval")?;
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
        let destroyed = self.transport.call(&format!(r#"<DestroyView xmlns="urn:vim25">{}</DestroyView>"#, view.to_xml("_this")));
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

    /// Reads datacenters, hosts, clusters, pools, folders, datastores, networks and VMs.
    pub fn inventory(&self) -> Result<Inventory, VimError> {
        let objects = self.retrieve_all(&[
            ("Datacenter", &["name", "parent", "vmFolder"]),
            ("HostSystem", &["name", "parent"]),
            ("ComputeResource", &["name", "parent", "resourcePool"]),
            ("ResourcePool", &["name", "parent"]),
            ("Folder", &["name", "parent"]),
            ("Datastore", &["name", "parent", "summary.capacity", "summary.freeSpace"]),
            ("Network", &["name", "parent"]),
            ("VirtualMachine", &["name", "parent", "runtime.powerState", "resourcePool", "config.extraConfig"]),
        ])?;
        let mut inventory = Inventory::default();
        for object in objects {
            match object.reference.kind.as_str() {
                "Datacenter" => inventory
                    .datacenters
                    .push(Datacenter { object: object.named_object(), vm_folder: object.reference_property("vmFolder") }),
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
                }),
                "Network" | "DistributedVirtualPortgroup" | "OpaqueNetwork" => inventory.networks.push(object.named_object()),
                "VirtualMachine" => inventory.virtual_machines.push(VirtualMachine {
                    object: object.named_object(),
                    power_state: object.text("runtime.powerState").and_then(PowerState::parse),
                    resource_pool: object.reference_property("resourcePool"),
                    extra_config: object.extra_config(),
                }),
                _ => {}
            }
        }
        Ok(inventory)
    }

    /// Creates a folder named `name` in `parent`.
    pub fn create_folder(&self, parent: &ManagedObjectRef, name: &str) -> Result<ManagedObjectRef, VimError> {
        let reply = self.transport.call(&format!(
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
        let reply = self.transport.call(&format!(
            r#"<CreateResourcePool xmlns="urn:vim25">{}<name>{}</name><spec><cpuAllocation>{}</cpuAllocation><memoryAllocation>{}</memoryAllocation></spec></CreateResourcePool>"#,
            parent.to_xml("_this"),
            escape(name),
            allocation(limits.cpu_limit_mhz),
            allocation(limits.memory_limit_mib)
        ))?;
        required_reference(&reply, "returnval")
    }

    /// Creates a VM in `folder` and `pool` and waits for the task; returns the VM.
    pub fn create_vm(&self, folder: &ManagedObjectRef, pool: &ManagedObjectRef, spec: &VmSpec) -> Result<ManagedObjectRef, VimError> {
        let extra_config: String = spec
            .extra_config
            .iter()
            .map(|(key, value)| {
                format!(r#"<extraConfig><key>{}</key><value xsi:type="xsd:string">{}</value></extraConfig>"#, escape(key), escape(value))
            })
            .collect();
        let config = format!(
            "<config><name>{}</name><guestId>{}</guestId><files><vmPathName>[{}]</vmPathName></files><numCPUs>{}</numCPUs><memoryMB>{}</memoryMB>{extra_config}</config>",
            escape(&spec.name),
            escape(&spec.guest_id),
            escape(&spec.datastore_name),
            spec.cpu_count,
            spec.memory_mib
        );
        let reply = self.transport.call(&format!(
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

    pub fn power_on_vm(&self, vm: &ManagedObjectRef) -> Result<(), VimError> {
        self.run_task("PowerOnVM_Task", vm).map(|_| ())
    }

    pub fn power_off_vm(&self, vm: &ManagedObjectRef) -> Result<(), VimError> {
        self.run_task("PowerOffVM_Task", vm).map(|_| ())
    }

    /// Destroys any managed entity (VM, folder, resource pool...) and what it contains.
    pub fn destroy(&self, entity: &ManagedObjectRef) -> Result<(), VimError> {
        self.run_task("Destroy_Task", entity).map(|_| ())
    }

    /// Calls a task method that takes only `_this`, and waits for its result.
    fn run_task(&self, method: &str, this: &ManagedObjectRef) -> Result<Option<XmlElement>, VimError> {
        let reply = self.transport.call(&format!(r#"<{method} xmlns="urn:vim25">{}</{method}>"#, this.to_xml("_this")))?;
        let task = required_reference(&reply, "returnval")?;
        self.wait_for_task(&task)
    }

    /// Polls `info` of a task until it succeeds (its result) or fails (a typed error).
    pub fn wait_for_task(&self, task: &ManagedObjectRef) -> Result<Option<XmlElement>, VimError> {
        let started = Instant::now();
        let mut interval = TASK_POLL_FIRST_INTERVAL;
        loop {
            let content = self.retrieve_one(task, &["info"])?;
            let info = content.properties.get("info").ok_or_else(|| VimError::UnexpectedReply(format!("task {task} has no info")))?;
            match info.child_text("state") {
                Some("success") => return Ok(info.child("result").cloned()),
                Some("error") => {
                    let error = info.child("error");
                    let fault_type = error
                        .and_then(|error| error.child("fault"))
                        .and_then(|fault| fault.xsi_type.clone())
                        .unwrap_or_else(|| "UnknownFault".to_string());
                    let message = error.and_then(|error| error.child_text("localizedMessage")).unwrap_or_default().to_string();
                    return Err(VimError::from_fault(&fault_type, message, Some(task)));
                }
                _ => {}
            }
            let waited = started.elapsed();
            if waited >= self.task_timeout {
                return Err(VimError::TaskTimedOut { task: task.clone(), waited });
            }
            thread::sleep(interval.min(self.task_timeout.saturating_sub(waited)));
            interval = (interval * 2).min(TASK_POLL_MAX_INTERVAL);
        }
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
    }
}
