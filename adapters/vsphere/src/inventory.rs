//! The vSphere objects berth reads: managed object references and an inventory snapshot.

use std::collections::BTreeMap;
use std::fmt;

use crate::devices::NetworkBacking;
use crate::xml::{escape, XmlElement};

/// A managed object reference: its type (e.g. `VirtualMachine`) and its id (e.g. `vm-42`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManagedObjectRef {
    pub kind: String,
    pub value: String,
}

impl ManagedObjectRef {
    pub fn new(kind: &str, value: &str) -> ManagedObjectRef {
        ManagedObjectRef { kind: kind.to_string(), value: value.to_string() }
    }

    /// Reads a reference from an element carrying a `type` attribute.
    pub fn from_element(element: &XmlElement) -> Option<ManagedObjectRef> {
        let kind = element.reference_type.as_deref()?;
        Some(ManagedObjectRef::new(kind, element.text.trim()))
    }

    /// The reference as an element named `element_name`.
    pub fn to_xml(&self, element_name: &str) -> String {
        format!(r#"<{element_name} type="{}">{}</{element_name}>"#, escape(&self.kind), escape(&self.value))
    }
}

impl fmt::Display for ManagedObjectRef {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.kind, self.value)
    }
}

/// A VM's power state as vSphere reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    PoweredOn,
    PoweredOff,
    Suspended,
}

impl PowerState {
    pub fn parse(text: &str) -> Option<PowerState> {
        match text {
            "poweredOn" => Some(PowerState::PoweredOn),
            "poweredOff" => Some(PowerState::PoweredOff),
            "suspended" => Some(PowerState::Suspended),
            _ => None,
        }
    }
}

/// Any named object of the inventory, with its parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedObject {
    pub reference: ManagedObjectRef,
    pub name: String,
    pub parent: Option<ManagedObjectRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datacenter {
    pub object: NamedObject,
    pub vm_folder: Option<ManagedObjectRef>,
    pub host_folder: Option<ManagedObjectRef>,
    pub datastore_folder: Option<ManagedObjectRef>,
    pub network_folder: Option<ManagedObjectRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeResource {
    pub object: NamedObject,
    /// The root resource pool of the cluster or standalone host.
    pub resource_pool: Option<ManagedObjectRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datastore {
    pub object: NamedObject,
    pub capacity_bytes: Option<i64>,
    pub free_space_bytes: Option<i64>,
    /// The HostDatastoreBrowser that searches this datastore's files.
    pub browser: Option<ManagedObjectRef>,
    /// Where the datastore is mounted, e.g. `ds:///vmfs/volumes/<uuid>/` (`summary.url`).
    pub url: Option<String>,
}

/// A network a NIC can connect to, and the backing that connects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub object: NamedObject,
    /// `Standard` for a standard network, `Distributed` for a distributed port group.
    pub backing: NetworkBacking,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualMachine {
    pub object: NamedObject,
    pub power_state: Option<PowerState>,
    pub resource_pool: Option<ManagedObjectRef>,
    pub extra_config: BTreeMap<String, String>,
    /// `config.hardware.memoryMB`; `None` when the VM has no config (e.g. while it is created).
    pub config_memory_mib: Option<u64>,
    /// `config.hardware.numCPU`.
    pub config_cpu_count: Option<u32>,
}

impl VirtualMachine {
    /// Reads a VM from the properties of [`VIRTUAL_MACHINE_PATHS`].
    pub(crate) fn from_content(object: &ObjectContent) -> VirtualMachine {
        VirtualMachine {
            object: object.named_object(),
            power_state: object.text("runtime.powerState").and_then(PowerState::parse),
            resource_pool: object.reference_property("resourcePool"),
            extra_config: object.extra_config(),
            config_memory_mib: object.text("config.hardware.memoryMB").and_then(|text| text.trim().parse().ok()),
            config_cpu_count: object.text("config.hardware.numCPU").and_then(|text| text.trim().parse().ok()),
        }
    }
}

/// The VM properties the inventory and [`crate::VimClient::virtual_machines`] read.
pub(crate) const VIRTUAL_MACHINE_PATHS: &[&str] =
    &["name", "parent", "runtime.powerState", "resourcePool", "config.extraConfig", "config.hardware.memoryMB", "config.hardware.numCPU"];

/// Everything berth reads from one vCenter or ESX, in one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub datacenters: Vec<Datacenter>,
    pub hosts: Vec<NamedObject>,
    /// Clusters and standalone hosts' compute resources.
    pub compute_resources: Vec<ComputeResource>,
    pub resource_pools: Vec<NamedObject>,
    pub folders: Vec<NamedObject>,
    pub datastores: Vec<Datastore>,
    /// Standard networks and distributed port groups (opaque NSX networks are left out: berth
    /// has no backing for them).
    pub networks: Vec<Network>,
    pub distributed_switches: Vec<NamedObject>,
    /// The `uuid` of each distributed switch, which NIC backings name.
    pub distributed_switch_uuids: BTreeMap<ManagedObjectRef, String>,
    pub virtual_machines: Vec<VirtualMachine>,
}

impl Inventory {
    pub fn datacenter_named(&self, name: &str) -> Option<&Datacenter> {
        self.datacenters.iter().find(|datacenter| datacenter.object.name == name)
    }
    pub fn compute_resource_named(&self, name: &str) -> Option<&ComputeResource> {
        self.compute_resources.iter().find(|compute| compute.object.name == name)
    }
    pub fn resource_pool_named(&self, name: &str) -> Option<&NamedObject> {
        self.resource_pools.iter().find(|pool| pool.name == name)
    }
    pub fn folder_named(&self, name: &str) -> Option<&NamedObject> {
        self.folders.iter().find(|folder| folder.name == name)
    }
    pub fn datastore_named(&self, name: &str) -> Option<&Datastore> {
        self.datastores.iter().find(|datastore| datastore.object.name == name)
    }
    pub fn network_named(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|network| network.object.name == name)
    }
    pub fn distributed_switch_named(&self, name: &str) -> Option<&NamedObject> {
        self.distributed_switches.iter().find(|switch| switch.name == name)
    }
    /// The resource pool named `name` anywhere under the root pool of `compute` (pool names
    /// are unique only among siblings, so a name alone may match pools of other clusters).
    pub fn resource_pool_in(&self, compute: &ComputeResource, name: &str) -> Option<&NamedObject> {
        let root = compute.resource_pool.as_ref()?;
        self.resource_pools.iter().filter(|pool| pool.name == name).find(|pool| {
            let mut parent = pool.parent.as_ref();
            // Bounded by the number of pools, so a malformed parent cycle cannot loop forever.
            for _ in 0..=self.resource_pools.len() {
                match parent {
                    Some(reference) if reference == root => return true,
                    Some(reference) => {
                        parent = self.resource_pools.iter().find(|pool| &pool.reference == reference).and_then(|pool| pool.parent.as_ref())
                    }
                    None => return false,
                }
            }
            false
        })
    }
    pub fn virtual_machine_named(&self, name: &str) -> Option<&VirtualMachine> {
        self.virtual_machines.iter().find(|vm| vm.object.name == name)
    }
}

/// The retrieved properties of one object, by property path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectContent {
    pub reference: ManagedObjectRef,
    pub properties: BTreeMap<String, XmlElement>,
}

impl ObjectContent {
    /// Reads one `objects` element of a RetrievePropertiesEx reply.
    pub fn from_element(element: &XmlElement) -> Option<ObjectContent> {
        let reference = ManagedObjectRef::from_element(element.child("obj")?)?;
        let properties = element
            .children_named("propSet")
            .filter_map(|property| Some((property.child_text("name")?.to_string(), property.child("val")?.clone())))
            .collect();
        Some(ObjectContent { reference, properties })
    }

    pub fn text(&self, path: &str) -> Option<&str> {
        self.properties.get(path).map(|value| value.text.as_str())
    }

    pub fn reference_property(&self, path: &str) -> Option<ManagedObjectRef> {
        self.properties.get(path).and_then(ManagedObjectRef::from_element)
    }

    pub fn named_object(&self) -> NamedObject {
        NamedObject {
            reference: self.reference.clone(),
            name: self.text("name").unwrap_or_default().to_string(),
            parent: self.reference_property("parent"),
        }
    }

    /// Reads `config.extraConfig` (an ArrayOfOptionValue) into a map; see [`extra_config_from`].
    pub fn extra_config(&self) -> BTreeMap<String, String> {
        self.properties.get("config.extraConfig").map(extra_config_from).unwrap_or_default()
    }
}

/// Reads an ArrayOfOptionValue into a map. vSphere removes a key set to "" and replaces a key
/// set again; vcsim instead appends every option it is given, so the last value of a key wins
/// and an empty value means the key is gone, which reads the same from both.
pub fn extra_config_from(array: &XmlElement) -> BTreeMap<String, String> {
    let mut options = BTreeMap::new();
    for option in &array.children {
        let Some(key) = option.child_text("key") else { continue };
        match option.child_text("value").unwrap_or_default() {
            "" => options.remove(key),
            value => options.insert(key.to_string(), value.to_string()),
        };
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_config_reads_like_vsphere_last_value_wins_and_empty_removes() {
        let document = r#"<val><OptionValue><key>a</key><value>1</value></OptionValue><OptionValue><key>b</key><value>2</value></OptionValue><OptionValue><key>a</key><value>3</value></OptionValue><OptionValue><key>b</key><value></value></OptionValue><OptionValue><value>no key</value></OptionValue></val>"#;
        let options = extra_config_from(&XmlElement::parse_document(document).expect("xml"));
        assert_eq!(options, BTreeMap::from([("a".to_string(), "3".to_string())]));
    }

    #[test]
    fn finds_pools_only_under_the_compute_resources_root_pool() {
        let object = |kind: &str, value: &str, name: &str, parent: Option<&str>| NamedObject {
            reference: ManagedObjectRef::new(kind, value),
            name: name.to_string(),
            parent: parent.map(|parent| ManagedObjectRef::new("ResourcePool", parent)),
        };
        let compute = |value: &str, root: &str| ComputeResource {
            object: object("ClusterComputeResource", value, value, None),
            resource_pool: Some(ManagedObjectRef::new("ResourcePool", root)),
        };
        let inventory = Inventory {
            resource_pools: vec![
                object("ResourcePool", "root-a", "Resources", None),
                object("ResourcePool", "root-b", "Resources", None),
                object("ResourcePool", "mid", "tenants", Some("root-b")),
                object("ResourcePool", "vch-b", "vch", Some("mid")),
                // A parent cycle must not loop forever.
                object("ResourcePool", "x", "vch", Some("y")),
                object("ResourcePool", "y", "y", Some("x")),
            ],
            ..Inventory::default()
        };
        assert_eq!(inventory.resource_pool_in(&compute("b", "root-b"), "vch").map(|pool| pool.reference.value.as_str()), Some("vch-b"));
        assert!(inventory.resource_pool_in(&compute("a", "root-a"), "vch").is_none());
    }
}
