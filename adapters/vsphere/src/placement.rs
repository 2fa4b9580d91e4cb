//! Where a VCH goes on a vSphere target: the named objects of a
//! [`VchSpec`] (compute resource, datastores, port groups) resolved against
//! one inventory snapshot, before anything is created.
//!
//! Pure: it reads an [`Inventory`] and returns either a [`Placement`] or an
//! error that names the missing object and what the target has instead, the
//! way vic-machine's validation did. The admin API runs it before recording a
//! VCH, and the adapter runs it again before enacting one.

use crate::devices::NetworkBacking;
use crate::inventory::{Inventory, ManagedObjectRef};
use berth_core::events::VchSpec;
use std::fmt;

/// The datastore folder a VCH keeps its files in: `[DS] berth/<vch>/...`.
pub const DATASTORE_ROOT_DIRECTORY: &str = "berth";

/// A volume store: VMDKs for volumes under `[datastore] path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeStore {
    pub label: String,
    pub datastore: String,
    pub path: String,
}

/// A port group offered to containers, under the alias Docker users see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerNetwork {
    pub port_group: String,
    pub alias: String,
    pub backing: NetworkBacking,
}

/// Every object a VCH needs, resolved to references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub datacenter: ManagedObjectRef,
    /// Its name, as datastore file URLs (`dcPath`) need it.
    pub datacenter_name: String,
    /// The datacenter's VM folder, in which the VCH's folder goes.
    pub vm_folder: ManagedObjectRef,
    /// The resource pool in which the VCH's pool goes (a cluster's or host's
    /// root pool, or the pool named by --compute-resource).
    pub parent_pool: ManagedObjectRef,
    /// The image store: where container VMs and their disks live.
    pub datastore: String,
    pub datastore_ref: ManagedObjectRef,
    pub volume_stores: Vec<VolumeStore>,
    pub bridge_network: Option<NetworkBacking>,
    pub public_network: Option<NetworkBacking>,
    pub client_network: Option<NetworkBacking>,
    pub management_network: Option<NetworkBacking>,
    pub container_networks: Vec<ContainerNetwork>,
}

impl Placement {
    /// `[DS] berth/<vch>`: the VCH's own directory on the image store.
    pub fn vch_directory(&self, vch: &str) -> String {
        format!("[{}] {DATASTORE_ROOT_DIRECTORY}/{vch}", self.datastore)
    }
}

/// Why a VCH cannot be placed on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// A named object does not exist; `available` lists what does.
    NotFound {
        kind: &'static str,
        name: String,
        option: &'static str,
        available: Vec<String>,
    },
    /// The option was left out and the target offers more than one choice.
    Required {
        option: &'static str,
        kind: &'static str,
        available: Vec<String>,
    },
    Invalid(String),
}

impl fmt::Display for PlacementError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |available: &[String]| if available.is_empty() { "none".to_string() } else { available.join(", ") };
        match self {
            PlacementError::NotFound { kind, name, option, available } => {
                write!(formatter, "{kind} {name:?} ({option}) not found on the target; it has: {}", list(available))
            }
            PlacementError::Required { option, kind, available } => {
                write!(formatter, "{option} is required: the target has more than one {kind} ({})", list(available))
            }
            PlacementError::Invalid(reason) => formatter.write_str(reason),
        }
    }
}

impl std::error::Error for PlacementError {}

/// Parses a volume store: `[ds://]DATASTORE[/PATH]:LABEL` (vic-machine's form).
pub fn parse_volume_store(vch: &str, text: &str) -> Result<VolumeStore, PlacementError> {
    let invalid = |reason: &str| PlacementError::Invalid(format!("--volume-store {text:?}: {reason}"));
    if text.starts_with("nfs://") {
        return Err(invalid("NFS volume stores are not supported; use a datastore (ds://DATASTORE/PATH:LABEL)"));
    }
    let rest = text.strip_prefix("ds://").unwrap_or(text);
    let (location, label) = rest.rsplit_once(':').ok_or_else(|| invalid("want DATASTORE[/PATH]:LABEL"))?;
    if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
        return Err(invalid("the label must be letters, digits, '-', '_' or '.'"));
    }
    let (datastore, path) = location.split_once('/').unwrap_or((location, ""));
    if datastore.is_empty() {
        return Err(invalid("no datastore"));
    }
    let path = path.trim_matches('/');
    let path = if path.is_empty() { format!("{DATASTORE_ROOT_DIRECTORY}/{vch}/volumes/{label}") } else { path.to_string() };
    if path.split('/').any(|part| part == "..") {
        return Err(invalid("the path must not contain '..'"));
    }
    Ok(VolumeStore { label: label.to_string(), datastore: datastore.to_string(), path })
}

/// Splits a container network `PORTGROUP[:ALIAS]`; the alias defaults to the port group.
pub fn parse_container_network(text: &str) -> (&str, &str) {
    text.split_once(':').unwrap_or((text, text))
}

/// Resolves `spec` for the VCH `vch` against `inventory`.
pub fn resolve(inventory: &Inventory, vch: &str, spec: &VchSpec) -> Result<Placement, PlacementError> {
    let compute_names: Vec<String> = inventory.compute_resources.iter().map(|compute| compute.object.name.clone()).collect();
    let (parent_pool, compute_parent) = match spec.compute_resource.as_deref().map(str::trim).filter(|name| !name.is_empty()) {
        Some(name) => {
            if let Some(compute) = inventory.compute_resource_named(name) {
                let pool = compute
                    .resource_pool
                    .clone()
                    .ok_or_else(|| PlacementError::Invalid(format!("compute resource {name:?} has no resource pool")))?;
                (pool, compute.object.parent.clone())
            } else {
                let pools: Vec<_> = inventory.resource_pools.iter().filter(|pool| pool.name == name).collect();
                match pools.as_slice() {
                    [pool] => (pool.reference.clone(), None),
                    [] => {
                        let mut available = compute_names.clone();
                        available.extend(inventory.resource_pools.iter().map(|pool| pool.name.clone()).filter(|n| n != "Resources"));
                        return Err(PlacementError::NotFound {
                            kind: "compute resource",
                            name: name.to_string(),
                            option: "--compute-resource",
                            available,
                        });
                    }
                    _ => {
                        return Err(PlacementError::Invalid(format!(
                            "--compute-resource {name:?} names {} resource pools; name a cluster or host instead",
                            pools.len()
                        )))
                    }
                }
            }
        }
        None => match inventory.compute_resources.as_slice() {
            [only] => (
                only.resource_pool.clone().ok_or_else(|| PlacementError::Invalid("the target's compute resource has no pool".into()))?,
                only.object.parent.clone(),
            ),
            _ => return Err(PlacementError::Required { option: "--compute-resource", kind: "cluster or host", available: compute_names }),
        },
    };

    let datacenter =
        match compute_parent.and_then(|folder| inventory.datacenters.iter().find(|dc| dc.host_folder.as_ref() == Some(&folder))) {
            Some(datacenter) => datacenter,
            None => match inventory.datacenters.as_slice() {
                [only] => only,
                _ => {
                    return Err(PlacementError::Invalid(
                        "cannot tell which datacenter the compute resource is in; name a cluster or host".to_string(),
                    ))
                }
            },
        };
    let vm_folder = datacenter.vm_folder.clone().ok_or_else(|| PlacementError::Invalid("the datacenter has no VM folder".to_string()))?;

    let datastore_names: Vec<String> = inventory.datastores.iter().map(|datastore| datastore.object.name.clone()).collect();
    let image_store = spec.image_store.as_deref().map(|text| text.trim().trim_start_matches("ds://")).filter(|text| !text.is_empty());
    let datastore = match image_store {
        Some(text) => {
            let name = text.split('/').next().unwrap_or(text);
            inventory.datastore_named(name).ok_or_else(|| PlacementError::NotFound {
                kind: "datastore",
                name: name.to_string(),
                option: "--image-store",
                available: datastore_names.clone(),
            })?
        }
        None => match inventory.datastores.as_slice() {
            [only] => only,
            _ => return Err(PlacementError::Required { option: "--image-store", kind: "datastore", available: datastore_names }),
        },
    };

    let mut volume_stores = Vec::new();
    for text in &spec.volume_stores {
        let store = parse_volume_store(vch, text)?;
        if inventory.datastore_named(&store.datastore).is_none() {
            return Err(PlacementError::NotFound {
                kind: "datastore",
                name: store.datastore,
                option: "--volume-store",
                available: datastore_names.clone(),
            });
        }
        if volume_stores.iter().any(|existing: &VolumeStore| existing.label == store.label) {
            return Err(PlacementError::Invalid(format!("--volume-store label {:?} is given twice", store.label)));
        }
        volume_stores.push(store);
    }

    let network_names: Vec<String> = inventory.networks.iter().map(|network| network.object.name.clone()).collect();
    let network = |name: &Option<String>, option: &'static str| -> Result<Option<NetworkBacking>, PlacementError> {
        match name.as_deref().map(str::trim).filter(|name| !name.is_empty()) {
            None => Ok(None),
            Some(name) => inventory.network_named(name).map(|network| Some(network.backing.clone())).ok_or_else(|| {
                PlacementError::NotFound { kind: "network", name: name.to_string(), option, available: network_names.clone() }
            }),
        }
    };
    let bridge_network = network(&spec.bridge_network, "--bridge-network")?;
    let public_network = network(&spec.public_network, "--public-network")?;
    let client_network = network(&spec.client_network, "--client-network")?;
    let management_network = network(&spec.management_network, "--management-network")?;
    let mut container_networks = Vec::new();
    for text in &spec.container_networks {
        let (port_group, alias) = parse_container_network(text);
        let backing = network(&Some(port_group.to_string()), "--container-network")?
            .ok_or_else(|| PlacementError::Invalid(format!("--container-network {text:?}: want PORTGROUP[:ALIAS]")))?;
        if alias.is_empty() {
            return Err(PlacementError::Invalid(format!("--container-network {text:?}: the alias is empty")));
        }
        container_networks.push(ContainerNetwork { port_group: port_group.to_string(), alias: alias.to_string(), backing });
    }
    if bridge_network.is_some() && bridge_network == public_network {
        return Err(PlacementError::Invalid(
            "--bridge-network and --public-network must be different port groups (the bridge carries container traffic)".to_string(),
        ));
    }

    Ok(Placement {
        datacenter: datacenter.object.reference.clone(),
        datacenter_name: datacenter.object.name.clone(),
        vm_folder,
        parent_pool,
        datastore: datastore.object.name.clone(),
        datastore_ref: datastore.object.reference.clone(),
        volume_stores,
        bridge_network,
        public_network,
        client_network,
        management_network,
        container_networks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{ComputeResource, Datacenter, Datastore, NamedObject, Network};

    fn reference(kind: &str, value: &str) -> ManagedObjectRef {
        ManagedObjectRef::new(kind, value)
    }

    fn named(kind: &str, value: &str, name: &str, parent: Option<ManagedObjectRef>) -> NamedObject {
        NamedObject { reference: reference(kind, value), name: name.to_string(), parent }
    }

    /// One datacenter with a cluster and a standalone host, one datastore,
    /// a standard network and a distributed port group (vcsim's shape).
    fn inventory() -> Inventory {
        let host_folder = reference("Folder", "host");
        Inventory {
            datacenters: vec![Datacenter {
                object: named("Datacenter", "dc0", "DC0", None),
                vm_folder: Some(reference("Folder", "vm")),
                host_folder: Some(host_folder.clone()),
                datastore_folder: None,
                network_folder: None,
            }],
            compute_resources: vec![
                ComputeResource {
                    object: named("ClusterComputeResource", "c0", "DC0_C0", Some(host_folder.clone())),
                    resource_pool: Some(reference("ResourcePool", "rp-c0")),
                },
                ComputeResource {
                    object: named("ComputeResource", "h0", "DC0_H0", Some(host_folder)),
                    resource_pool: Some(reference("ResourcePool", "rp-h0")),
                },
            ],
            resource_pools: vec![
                named("ResourcePool", "rp-c0", "Resources", None),
                named("ResourcePool", "rp-h0", "Resources", None),
                named("ResourcePool", "rp-apps", "apps", Some(reference("ResourcePool", "rp-c0"))),
            ],
            datastores: vec![Datastore {
                object: named("Datastore", "ds0", "LocalDS_0", None),
                capacity_bytes: None,
                free_space_bytes: None,
                browser: None,
                url: None,
            }],
            networks: vec![
                Network {
                    object: named("Network", "net0", "VM Network", None),
                    backing: NetworkBacking::Standard { name: "VM Network".to_string() },
                },
                Network {
                    object: named("DistributedVirtualPortgroup", "dvpg0", "DC0_DVPG0", None),
                    backing: NetworkBacking::Distributed { switch_uuid: "uuid".to_string(), portgroup_key: "dvportgroup-1".to_string() },
                },
            ],
            ..Inventory::default()
        }
    }

    fn spec() -> VchSpec {
        VchSpec {
            target: "https://vc/sdk".to_string(),
            compute_resource: Some("DC0_C0".to_string()),
            bridge_network: Some("DC0_DVPG0".to_string()),
            public_network: Some("VM Network".to_string()),
            ..VchSpec::default()
        }
    }

    #[test]
    fn resolves_a_cluster_the_only_datastore_and_port_groups() {
        let placement = resolve(&inventory(), "vch1", &spec()).expect("placed");
        assert_eq!(placement.parent_pool, reference("ResourcePool", "rp-c0"));
        assert_eq!(placement.vm_folder, reference("Folder", "vm"));
        assert_eq!(placement.datastore, "LocalDS_0");
        assert!(matches!(placement.bridge_network, Some(NetworkBacking::Distributed { .. })));
        assert_eq!(placement.vch_directory("vch1"), "[LocalDS_0] berth/vch1");
        let in_pool = resolve(&inventory(), "vch1", &VchSpec { compute_resource: Some("apps".into()), ..spec() }).unwrap();
        assert_eq!(in_pool.parent_pool, reference("ResourcePool", "rp-apps"));
    }

    #[test]
    fn names_the_missing_object_and_what_exists() {
        let error = resolve(&inventory(), "v", &VchSpec { image_store: Some("nope".into()), ..spec() }).unwrap_err();
        assert_eq!(error.to_string(), "datastore \"nope\" (--image-store) not found on the target; it has: LocalDS_0");
        let error = resolve(&inventory(), "v", &VchSpec { bridge_network: Some("pg".into()), ..spec() }).unwrap_err();
        assert!(error.to_string().contains("network \"pg\" (--bridge-network) not found") && error.to_string().contains("DC0_DVPG0"));
        let error = resolve(&inventory(), "v", &VchSpec { compute_resource: None, ..spec() }).unwrap_err();
        assert!(matches!(error, PlacementError::Required { option: "--compute-resource", .. }), "{error}");
        let error = resolve(&inventory(), "v", &VchSpec { compute_resource: Some("x".into()), ..spec() }).unwrap_err();
        assert!(error.to_string().contains("DC0_C0, DC0_H0, apps"), "{error}");
        let error = resolve(&inventory(), "v", &VchSpec { container_networks: vec!["other:net".into()], ..spec() }).unwrap_err();
        assert!(error.to_string().contains("network \"other\" (--container-network)"), "{error}");
        let error = resolve(&inventory(), "v", &VchSpec { public_network: Some("DC0_DVPG0".into()), ..spec() }).unwrap_err();
        assert!(error.to_string().contains("must be different"), "{error}");
    }

    #[test]
    fn parses_volume_stores_like_vic_machine() {
        let store = parse_volume_store("vch1", "ds://LocalDS_0/volumes/a:default").unwrap();
        assert_eq!(store, VolumeStore { label: "default".into(), datastore: "LocalDS_0".into(), path: "volumes/a".into() });
        let store = parse_volume_store("vch1", "LocalDS_0:fast").unwrap();
        assert_eq!(store.path, "berth/vch1/volumes/fast");
        for bad in ["LocalDS_0", "nfs://host/x:l", "/x:l", "LocalDS_0/../x:l", "LocalDS_0/x:bad label"] {
            assert!(parse_volume_store("vch1", bad).is_err(), "{bad}");
        }
        let error = resolve(&inventory(), "v", &VchSpec { volume_stores: vec!["a:x".into(), "LocalDS_0:x".into()], ..spec() }).unwrap_err();
        assert!(error.to_string().contains("datastore \"a\""), "{error}");
        let twice = VchSpec { volume_stores: vec!["LocalDS_0/a:x".into(), "LocalDS_0/b:x".into()], ..spec() };
        assert!(resolve(&inventory(), "v", &twice).unwrap_err().to_string().contains("given twice"));
    }
}
