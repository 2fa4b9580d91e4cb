//! Virtual devices: the disks and NICs berth gives a VM, written as `deviceChange` entries of a
//! VirtualMachineConfigSpec, and the devices a VM has, read back from `config.hardware.device`.

use std::collections::BTreeSet;

use crate::xml::{escape, XmlElement};

/// The SCSI unit number the controller itself occupies; disks never use it.
const SCSI_CONTROLLER_UNIT: i32 = 7;
/// Units 0..=15 on one SCSI bus (7 excepted): at most 15 disks per controller.
const SCSI_UNITS_PER_BUS: i32 = 16;
/// A VM has at most four SCSI controllers (buses 0 to 3).
const SCSI_BUSES: i32 = 4;
/// The SCSI controller types vSphere knows; any of them can take berth's disks.
const SCSI_CONTROLLER_TYPES: &[&str] =
    &["VirtualLsiLogicController", "VirtualLsiLogicSASController", "ParaVirtualSCSIController", "VirtualBusLogicController"];

/// How a disk behaves with snapshots and on power-off (the backing's `diskMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DiskMode {
    /// Changes are written at once and are part of snapshots.
    #[default]
    Persistent,
    /// Changes are written at once and are left out of snapshots (image and volume disks).
    IndependentPersistent,
    /// Changes are dropped at power-off.
    IndependentNonpersistent,
}

impl DiskMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskMode::Persistent => "persistent",
            DiskMode::IndependentPersistent => "independent_persistent",
            DiskMode::IndependentNonpersistent => "independent_nonpersistent",
        }
    }

    pub fn parse(text: &str) -> Option<DiskMode> {
        match text {
            "persistent" => Some(DiskMode::Persistent),
            "independent_persistent" => Some(DiskMode::IndependentPersistent),
            "independent_nonpersistent" => Some(DiskMode::IndependentNonpersistent),
            _ => None,
        }
    }
}

/// One disk to give a VM: a new one, a new child of an existing disk, or an existing `.vmdk`
/// to attach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskSpec {
    /// The datastore path of the `.vmdk`, e.g. `[LocalDS_0] berth/vch1/c1/c1.vmdk`; its directory must exist.
    pub file_name: String,
    /// The size of a new disk; ignored by vSphere when an existing file is attached, and not
    /// sent for a child disk, which has its parent's size.
    pub capacity_kib: u64,
    /// `true`: create a new (thin) disk of `capacity_kib`; `false`: attach the existing file.
    pub create: bool,
    pub mode: DiskMode,
    /// The datastore path of the parent disk of a new disk (`create`): the new disk is then a
    /// delta disk that holds only the blocks written through it, on top of the parent (which
    /// it opens read-only, so that many children can share it: a container's writable layer
    /// on its image's disk). Ignored when an existing file is attached.
    pub parent: Option<String>,
}

/// One network card to give a VM (a VMXNET3 adapter).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NicSpec {
    pub network: NetworkBacking,
}

/// What a NIC connects to: a standard network by name, or a distributed port group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NetworkBacking {
    Standard { name: String },
    Distributed { switch_uuid: String, portgroup_key: String },
}

impl NetworkBacking {
    /// The `backing` element of a virtual ethernet card.
    fn to_xml(&self) -> String {
        match self {
            NetworkBacking::Standard { name } => {
                format!(r#"<backing xsi:type="VirtualEthernetCardNetworkBackingInfo"><deviceName>{}</deviceName></backing>"#, escape(name))
            }
            NetworkBacking::Distributed { switch_uuid, portgroup_key } => format!(
                r#"<backing xsi:type="VirtualEthernetCardDistributedVirtualPortBackingInfo"><port><switchUuid>{}</switchUuid><portgroupKey>{}</portgroupKey></port></backing>"#,
                escape(switch_uuid),
                escape(portgroup_key)
            ),
        }
    }

    /// Reads the backing of an ethernet card; other backings (opaque networks...) are `None`.
    fn from_backing(backing: &XmlElement) -> Option<NetworkBacking> {
        match backing.xsi_type.as_deref()? {
            "VirtualEthernetCardNetworkBackingInfo" => {
                Some(NetworkBacking::Standard { name: backing.child_text("deviceName")?.to_string() })
            }
            "VirtualEthernetCardDistributedVirtualPortBackingInfo" => {
                let port = backing.child("port")?;
                Some(NetworkBacking::Distributed {
                    switch_uuid: port.child_text("switchUuid")?.to_string(),
                    portgroup_key: port.child_text("portgroupKey").unwrap_or_default().to_string(),
                })
            }
            _ => None,
        }
    }
}

/// The disk part of a device read back from a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedDisk {
    pub file_name: String,
    pub capacity_kib: Option<u64>,
    pub mode: Option<DiskMode>,
    pub thin_provisioned: Option<bool>,
    /// The file of the disk's parent, for a delta (child) disk.
    pub parent: Option<String>,
}

/// One device of a VM's `config.hardware.device`, with what berth reads of disks and NICs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualDevice {
    pub key: i32,
    /// The device's vSphere type, e.g. `VirtualDisk`, `VirtualVmxnet3`, `VirtualLsiLogicController`.
    pub kind: String,
    pub controller_key: Option<i32>,
    pub unit_number: Option<i32>,
    /// The bus of a controller.
    pub bus_number: Option<i32>,
    /// Set for `VirtualDisk` devices with a file backing.
    pub disk: Option<AttachedDisk>,
    /// Set for ethernet cards backed by a standard network or a distributed port group.
    pub network: Option<NetworkBacking>,
    pub mac_address: Option<String>,
}

impl VirtualDevice {
    fn from_element(element: &XmlElement) -> Option<VirtualDevice> {
        let number = |name: &str| element.child_text(name).and_then(|text| text.trim().parse::<i32>().ok());
        let backing = element.child("backing");
        let kind = element.xsi_type.clone().unwrap_or_else(|| element.name.clone());
        let disk = match (kind.as_str(), backing.and_then(|backing| backing.child_text("fileName"))) {
            ("VirtualDisk", Some(file_name)) => Some(AttachedDisk {
                file_name: file_name.to_string(),
                capacity_kib: element.child_text("capacityInKB").and_then(|text| text.trim().parse().ok()),
                mode: backing.and_then(|backing| backing.child_text("diskMode")).and_then(DiskMode::parse),
                thin_provisioned: backing.and_then(|backing| backing.child_text("thinProvisioned")).map(|text| text.trim() == "true"),
                parent: backing
                    .and_then(|backing| backing.descend(&["parent", "fileName"]))
                    .map(|parent| parent.text.trim())
                    .filter(|parent| !parent.is_empty())
                    .map(str::to_string),
            }),
            _ => None,
        };
        Some(VirtualDevice {
            key: number("key")?,
            network: backing.and_then(NetworkBacking::from_backing),
            controller_key: number("controllerKey"),
            unit_number: number("unitNumber"),
            bus_number: number("busNumber"),
            mac_address: element.child_text("macAddress").map(str::to_string),
            kind,
            disk,
        })
    }

    /// Reads an `ArrayOfVirtualDevice` (the value of `config.hardware.device`).
    pub fn list_from(array: &XmlElement) -> Vec<VirtualDevice> {
        array.children.iter().filter_map(VirtualDevice::from_element).collect()
    }

    fn is_scsi_controller(&self) -> bool {
        SCSI_CONTROLLER_TYPES.contains(&self.kind.as_str())
    }
}

/// Why a device change cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceSpecError {
    #[error("no free SCSI unit for disk {file_name:?}: a VM has at most {max} disks on {SCSI_BUSES} SCSI controllers")]
    TooManyDisks { file_name: String, max: i32 },
    #[error("a disk needs a datastore path like \"[datastore] dir/disk.vmdk\", not {0:?}")]
    BadDiskPath(String),
}

/// A SCSI controller a disk can go on: an existing one, or one added by this change.
struct ScsiBus {
    key: i32,
    bus_number: Option<i32>,
    used_units: BTreeSet<i32>,
}

impl ScsiBus {
    fn free_unit(&self) -> Option<i32> {
        (0..SCSI_UNITS_PER_BUS).find(|unit| *unit != SCSI_CONTROLLER_UNIT && !self.used_units.contains(unit))
    }
}

/// Whether `path` looks like a datastore path, `[datastore] dir/file`.
fn is_datastore_path(path: &str) -> bool {
    path.trim_start().starts_with('[') && path.contains(']')
}

/// Writes the `deviceChange` entries that add `disks` and `nics` to a VM that has `existing`
/// devices: disks go on the free units of the existing SCSI controllers (unit 7 is the
/// controller's own), and a new LSI Logic controller is added, with a temporary negative key
/// that the disks refer to, when those are full or there are none. New devices get negative
/// keys so that vSphere assigns the real ones.
pub(crate) fn device_changes(existing: &[VirtualDevice], disks: &[DiskSpec], nics: &[NicSpec]) -> Result<String, DeviceSpecError> {
    let mut buses: Vec<ScsiBus> = existing
        .iter()
        .filter(|device| device.is_scsi_controller())
        .map(|controller| ScsiBus {
            key: controller.key,
            bus_number: controller.bus_number,
            used_units: existing
                .iter()
                .filter(|device| device.controller_key == Some(controller.key))
                .filter_map(|device| device.unit_number)
                .collect(),
        })
        .collect();
    let mut next_key = -1;
    let mut take_key = || {
        let key = next_key;
        next_key -= 1;
        key
    };
    let mut changes = String::new();
    for disk in disks {
        let parent = disk.parent.as_deref().filter(|_| disk.create);
        for path in std::iter::once(disk.file_name.as_str()).chain(parent) {
            if !is_datastore_path(path) {
                return Err(DeviceSpecError::BadDiskPath(path.to_string()));
            }
        }
        let slot = buses.iter_mut().enumerate().find_map(|(index, bus)| bus.free_unit().map(|unit| (index, unit)));
        let (index, unit) = match slot {
            Some(slot) => slot,
            None => {
                // A controller whose bus number was not reported still takes a bus.
                let taken = buses.len();
                let free_bus = (0..SCSI_BUSES).find(|number| !buses.iter().any(|bus| bus.bus_number == Some(*number)));
                let Some(bus_number) = free_bus.filter(|_| taken < SCSI_BUSES as usize) else {
                    return Err(DeviceSpecError::TooManyDisks {
                        file_name: disk.file_name.clone(),
                        max: SCSI_BUSES * (SCSI_UNITS_PER_BUS - 1),
                    });
                };
                let key = take_key();
                changes.push_str(&format!(
                    r#"<deviceChange><operation>add</operation><device xsi:type="VirtualLsiLogicController"><key>{key}</key><busNumber>{bus_number}</busNumber><sharedBus>noSharing</sharedBus></device></deviceChange>"#
                ));
                buses.push(ScsiBus { key, bus_number: Some(bus_number), used_units: BTreeSet::new() });
                (buses.len() - 1, 0)
            }
        };
        let bus = &mut buses[index];
        bus.used_units.insert(unit);
        let (file_operation, thin) =
            if disk.create { ("<fileOperation>create</fileOperation>", "<thinProvisioned>true</thinProvisioned>") } else { ("", "") };
        // The WSDL's order puts parent after thinProvisioned (and uuid, contentId, changeId,
        // which are not written). A delta disk has its parent's size: a capacity of its own
        // is refused or ignored, so 0 is sent, as VIC did.
        let (parent_backing, capacity_kib) = match parent {
            Some(parent) => (
                format!(
                    r#"<parent xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>{}</fileName><diskMode>{}</diskMode></parent>"#,
                    escape(parent.trim()),
                    DiskMode::Persistent.as_str()
                ),
                0,
            ),
            None => (String::new(), disk.capacity_kib),
        };
        changes.push_str(&format!(
            r#"<deviceChange><operation>add</operation>{file_operation}<device xsi:type="VirtualDisk"><key>{}</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>{}</fileName><diskMode>{}</diskMode>{thin}{parent_backing}</backing><controllerKey>{}</controllerKey><unitNumber>{unit}</unitNumber><capacityInKB>{capacity_kib}</capacityInKB></device></deviceChange>"#,
            take_key(),
            escape(disk.file_name.trim()),
            disk.mode.as_str(),
            bus.key,
        ));
    }
    for nic in nics {
        // Not connected until the VM powers on (startConnected); the guest may disconnect it.
        changes.push_str(&format!(
            r#"<deviceChange><operation>add</operation><device xsi:type="VirtualVmxnet3"><key>{}</key>{}<connectable><startConnected>true</startConnected><allowGuestControl>true</allowGuestControl><connected>false</connected></connectable><addressType>generated</addressType></device></deviceChange>"#,
            take_key(),
            nic.network.to_xml()
        ));
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str) -> DiskSpec {
        DiskSpec {
            file_name: format!("[ds] d/{name}.vmdk"),
            capacity_kib: 1024,
            create: true,
            mode: DiskMode::IndependentPersistent,
            parent: None,
        }
    }

    fn parse(changes: &str) -> Vec<XmlElement> {
        let document = format!(r#"<r xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">{changes}</r>"#);
        XmlElement::parse_document(&document).expect("well-formed device changes").children
    }

    #[test]
    fn disks_get_a_new_controller_and_skip_unit_seven() {
        let disks: Vec<DiskSpec> = (0..9).map(|index| disk(&format!("d{index}"))).collect();
        let changes = parse(&device_changes(&[], &disks, &[]).expect("nine disks fit"));
        let controller = changes[0].child("device").expect("device");
        assert_eq!(controller.xsi_type.as_deref(), Some("VirtualLsiLogicController"));
        let controller_key = controller.child_text("key").expect("key").to_string();
        assert!(controller_key.starts_with('-'));
        let units: Vec<&str> =
            changes[1..].iter().filter_map(|change| change.descend(&["device", "unitNumber"])).map(|u| u.text.as_str()).collect();
        assert_eq!(units, ["0", "1", "2", "3", "4", "5", "6", "8", "9"]);
        assert!(changes[1..]
            .iter()
            .all(|change| change.descend(&["device", "controllerKey"]).map(|k| k.text.as_str()) == Some(&controller_key)));
        assert_eq!(changes[1].descend(&["device", "backing", "diskMode"]).map(|m| m.text.as_str()), Some("independent_persistent"));
        assert_eq!(changes[1].child_text("fileOperation"), Some("create"));
    }

    #[test]
    fn existing_controllers_are_reused_and_attached_disks_are_not_created() {
        let existing = [
            VirtualDevice {
                key: 1000,
                kind: "ParaVirtualSCSIController".into(),
                controller_key: Some(100),
                unit_number: Some(3),
                bus_number: Some(0),
                disk: None,
                network: None,
                mac_address: None,
            },
            VirtualDevice {
                key: 2000,
                kind: "VirtualDisk".into(),
                controller_key: Some(1000),
                unit_number: Some(0),
                bus_number: None,
                disk: None,
                network: None,
                mac_address: None,
            },
        ];
        let attach = DiskSpec { create: false, ..disk("old") };
        let changes = parse(&device_changes(&existing, &[attach], &[]).expect("fits"));
        assert_eq!(changes.len(), 1, "no new controller");
        assert_eq!(changes[0].child("fileOperation"), None);
        assert_eq!(changes[0].descend(&["device", "controllerKey"]).map(|k| k.text.as_str()), Some("1000"));
        assert_eq!(changes[0].descend(&["device", "unitNumber"]).map(|k| k.text.as_str()), Some("1"));
    }

    #[test]
    fn too_many_disks_and_bad_paths_are_errors() {
        let disks: Vec<DiskSpec> = (0..61).map(|index| disk(&format!("d{index}"))).collect();
        assert!(matches!(device_changes(&[], &disks, &[]), Err(DeviceSpecError::TooManyDisks { max: 60, .. })));
        assert!(device_changes(&[], &disks[..60], &[]).is_ok());
        let bad = DiskSpec { file_name: "disk.vmdk".into(), ..disk("x") };
        assert!(matches!(device_changes(&[], &[bad], &[]), Err(DeviceSpecError::BadDiskPath(_))));
    }

    #[test]
    fn child_disks_name_their_parent_and_take_its_size() {
        let child = DiskSpec { mode: DiskMode::Persistent, parent: Some("[ds] berth/v/images/i/i.vmdk".into()), ..disk("child") };
        let changes = parse(&device_changes(&[], std::slice::from_ref(&child), &[]).expect("a child disk"));
        let device = changes[1].child("device").expect("the disk");
        let backing = device.child("backing").expect("backing");
        let names: Vec<&str> = backing.children.iter().map(|child| child.name.as_str()).collect();
        assert_eq!(names, ["fileName", "diskMode", "thinProvisioned", "parent"], "the WSDL's order");
        let parent = backing.child("parent").expect("parent");
        assert_eq!(parent.xsi_type.as_deref(), Some("VirtualDiskFlatVer2BackingInfo"));
        assert_eq!(parent.child_text("fileName"), Some("[ds] berth/v/images/i/i.vmdk"));
        assert_eq!(parent.child_text("diskMode"), Some("persistent"));
        assert_eq!(device.child_text("capacityInKB"), Some("0"));
        let read = VirtualDevice::from_element(device).and_then(|device| device.disk).expect("a disk");
        assert_eq!(read.parent.as_deref(), Some("[ds] berth/v/images/i/i.vmdk"));

        let attached = parse(&device_changes(&[], &[DiskSpec { create: false, ..child.clone() }], &[]).expect("attach"));
        assert!(attached[1].descend(&["device", "backing", "parent"]).is_none(), "an attached disk keeps the parent it has");
        let bad = DiskSpec { parent: Some("i.vmdk".into()), ..child };
        assert!(matches!(device_changes(&[], &[bad], &[]), Err(DeviceSpecError::BadDiskPath(path)) if path == "i.vmdk"));
    }

    #[test]
    fn nics_carry_their_backing() {
        let nics = [
            NicSpec { network: NetworkBacking::Standard { name: "VM <Network>".into() } },
            NicSpec { network: NetworkBacking::Distributed { switch_uuid: "u-1".into(), portgroup_key: "dvportgroup-9".into() } },
        ];
        let changes = parse(&device_changes(&[], &[], &nics).expect("nics"));
        let devices: Vec<VirtualDevice> =
            changes.iter().filter_map(|change| change.child("device")).filter_map(VirtualDevice::from_element).collect();
        assert_eq!(devices.len(), 2);
        assert!(devices.iter().all(|device| device.kind == "VirtualVmxnet3" && device.key < 0));
        assert_eq!(devices[0].network, Some(nics[0].network.clone()));
        assert_eq!(devices[1].network, Some(nics[1].network.clone()));
    }
}
