//! The vSphere adapter: a VIM25 SOAP client for vCenter and ESX (see ADR 0006).
//!
//! [`VimClient`] logs in, reads the inventory and enacts folders, resource
//! pools and VMs through vSphere tasks; every failure is a typed [`VimError`].

pub mod client;
pub mod inventory;
pub mod soap;
pub mod thumbprint;
pub mod xml;

pub use client::{ConnectOptions, ResourcePoolLimits, VimClient, VimError, VmSpec};
pub use inventory::{Inventory, ManagedObjectRef, PowerState};
pub use thumbprint::Thumbprint;
