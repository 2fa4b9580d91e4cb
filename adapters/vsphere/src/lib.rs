//! The vSphere adapter: a VIM25 SOAP client for vCenter and ESX (see ADR 0006).
//!
//! [`VimClient`] logs in, reads the inventory and enacts folders, resource pools, port groups,
//! disks, datastore files and VMs through vSphere tasks; every failure is a typed [`VimError`].

pub mod client;
pub mod datastore;
pub mod devices;
pub mod image_disk;
pub mod infrastructure;
pub mod inventory;
pub mod placement;
pub mod simulator;
pub mod soap;
pub mod thumbprint;
pub mod watch;
pub mod xml;

pub use client::{ConnectOptions, ResourcePoolLimits, TaskWait, VimClient, VimError, VmReconfigSpec, VmSpec};
pub use devices::{AttachedDisk, DiskMode, DiskSpec, NetworkBacking, NicSpec, VirtualDevice};
pub use inventory::{
    ComputeResource, Datacenter, Datastore, Inventory, ManagedObjectRef, NamedObject, Network, PowerState, VirtualMachine,
};
pub use thumbprint::Thumbprint;
pub use watch::{ChangeKind, VmChange, VmWatch};
