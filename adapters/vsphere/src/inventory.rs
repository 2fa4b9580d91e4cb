//! The vSphere objects berth reads: managed object references and an inventory snapshot.

use std::collections::BTreeMap;
use std::fmt;

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualMachine {
    pub object: NamedObject,
    pub power_state: Option<PowerState>,
    pub resource_pool: Option<ManagedObjectRef>,
    pub extra_config: BTreeMap<String, String>,
}

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
    /// Standard networks and distributed port groups.
    pub networks: Vec<NamedObject>,
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
    pub fn network_named(&self, name: &str) -> Option<&NamedObject> {
        self.networks.iter().find(|network| network.name == name)
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

    /// Reads `config.extraConfig` (an ArrayOfOptionValue) into a map.
    pub fn extra_config(&self) -> BTreeMap<String, String> {
        self.properties
            .get("config.extraConfig")
            .map(|array| {
                array
                    .children
                    .iter()
                    .filter_map(|option| {
                        Some((option.child_text("key")?.to_string(), option.child_text("value").unwrap_or_default().to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
