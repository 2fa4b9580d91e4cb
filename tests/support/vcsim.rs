//! vcsim, govmomi's vSphere simulator, for black-box tests: [`Vcsim::start`] runs the
//! binary that scripts/vcsim.sh builds (or `$BERTH_VCSIM`) on a free port and kills it
//! on drop; [`Vcsim::snapshot`] lists its inventory through pyvmomi
//! (tests/python/vsphere_inventory.py), independently of berth's own VIM25 client.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use berth_vsphere::simulator::Simulator;
use serde::Deserialize;

/// The root of the berth package (scripts/ and tests/ live there).
fn package_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running vcsim (berth_vsphere's [`Simulator`], whose fields `url`, `user`,
/// `password` and `thumbprint` it derefs to), stopped when dropped. Its
/// default model (`simulator.VPX`) has the datacenter DC0 with the host
/// DC0_H0, the cluster DC0_C0 (hosts DC0_C0_H0, DC0_C0_H1), the datastore
/// LocalDS_0, the networks "VM Network" and DC0_DVPG0, and four powered-on
/// VMs: DC0_H0_VM0, DC0_H0_VM1, DC0_C0_RP0_VM0, DC0_C0_RP0_VM1.
pub struct Vcsim {
    simulator: Simulator,
}

impl std::ops::Deref for Vcsim {
    type Target = Simulator;
    fn deref(&self) -> &Simulator {
        &self.simulator
    }
}

/// One VM as pyvmomi sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmRecord {
    pub name: String,
    /// "poweredOn", "poweredOff" or "suspended".
    pub power_state: String,
    pub extra_config: BTreeMap<String, String>,
    /// The name of the VM's resource pool (None for a template).
    pub resource_pool: Option<String>,
    /// The name of the folder that holds the VM.
    pub folder: Option<String>,
    pub memory_mib: Option<u64>,
    pub num_cpu: Option<u32>,
    /// The backing file of every virtual disk, e.g. `[LocalDS_0] DC0_H0_VM0/disk1.vmdk`.
    pub disks: Vec<String>,
    /// The names of the networks the VM is attached to.
    pub networks: Vec<String>,
}

/// One resource pool (vApps included) as pyvmomi sees it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PoolRecord {
    pub name: String,
    /// The name of its parent: a compute resource for a root pool ("Resources"), else a pool.
    pub parent: Option<String>,
    /// None when unlimited.
    pub cpu_limit_mhz: Option<i64>,
    pub memory_limit_mib: Option<i64>,
}

/// One folder as pyvmomi sees it; the root folder ("Datacenters", no parent) comes first.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FolderRecord {
    pub name: String,
    pub parent: Option<String>,
    /// What the folder may hold, e.g. ["VirtualMachine", "VirtualApp", "Folder"].
    pub child_types: Vec<String>,
}

/// Everything tests/python/vsphere_inventory.py lists, read in one session.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InventorySnapshot {
    pub virtual_machines: Vec<VmRecord>,
    pub resource_pools: Vec<PoolRecord>,
    pub folders: Vec<FolderRecord>,
}

impl InventorySnapshot {
    pub fn vm(&self, name: &str) -> Option<&VmRecord> {
        self.virtual_machines.iter().find(|vm| vm.name == name)
    }

    pub fn pool(&self, name: &str) -> Option<&PoolRecord> {
        self.resource_pools.iter().find(|pool| pool.name == name)
    }

    pub fn folder(&self, name: &str) -> Option<&FolderRecord> {
        self.folders.iter().find(|folder| folder.name == name)
    }
}

impl Vcsim {
    /// The vcsim binary: `$BERTH_VCSIM`, or what scripts/vcsim.sh builds (and prints).
    pub fn binary() -> PathBuf {
        Simulator::binary(&package_root()).expect("scripts/vcsim.sh builds vcsim")
    }

    /// Starts vcsim on a free port of 127.0.0.1 with extra flags (see scripts/vcsim.sh:
    /// `-username U -password P`, `-tls`, `-clusters N`, `-hosts N`).
    pub fn start(args: &[&str]) -> Vcsim {
        Vcsim { simulator: Simulator::start(&Self::binary(), args).expect("vcsim starts") }
    }

    /// vcsim over plain http (`http://127.0.0.1:PORT/sdk`), any non-empty user and password.
    pub fn start_plain() -> Vcsim {
        Self::start(&[])
    }

    /// vcsim over https with a fresh self-signed certificate; `thumbprint` is its SHA-1.
    pub fn start_tls() -> Vcsim {
        let vcsim = Self::start(&["-tls"]);
        assert!(vcsim.url.starts_with("https://") && !vcsim.thumbprint.is_empty(), "vcsim -tls printed {}", vcsim.url);
        vcsim
    }

    /// Installs pyvmomi (scripts/lib.sh's `ensure_pyvmomi`) when python3 cannot import it.
    pub fn ensure_pyvmomi() {
        let importable = || {
            Command::new("python3")
                .args(["-c", "import pyVmomi"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|status| status.success())
                .unwrap_or(false)
        };
        if importable() {
            return;
        }
        let lib = package_root().join("scripts/lib.sh");
        let status = Command::new("bash")
            .arg("-c")
            .arg(r#"source "$1" && ensure_pyvmomi"#)
            .arg("ensure_pyvmomi")
            .arg(&lib)
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .expect("runs scripts/lib.sh's ensure_pyvmomi");
        assert!(status.success() && importable(), "pyvmomi could not be installed (scripts/lib.sh ensure_pyvmomi)");
    }

    /// Lists VMs, resource pools and folders through pyvmomi, in a session of its own.
    /// Panics with the script's stderr when it fails.
    pub fn snapshot(&self) -> InventorySnapshot {
        inventory_snapshot(&self.url, &self.user, &self.password)
    }

    /// Every VM, as pyvmomi sees it.
    pub fn inventory(&self) -> Vec<VmRecord> {
        self.snapshot().virtual_machines
    }

    /// The names of every resource pool (root pools are all named "Resources").
    pub fn pools(&self) -> Vec<String> {
        self.snapshot().resource_pools.into_iter().map(|pool| pool.name).collect()
    }

    /// The names of every folder, the root folder ("Datacenters") first.
    pub fn folders(&self) -> Vec<String> {
        self.snapshot().folders.into_iter().map(|folder| folder.name).collect()
    }
}

/// Lists VMs, resource pools and folders of any endpoint through pyvmomi (e.g. vcsim
/// behind a proxy); https is accepted without checking the certificate. Panics with the
/// script's stderr when it fails.
pub fn inventory_snapshot(url: &str, user: &str, password: &str) -> InventorySnapshot {
    Vcsim::ensure_pyvmomi();
    let script = package_root().join("tests/python/vsphere_inventory.py");
    let output = Command::new("python3")
        .arg(&script)
        .args(["--url", url, "--user", user, "--password", password])
        .output()
        .expect("runs python3 tests/python/vsphere_inventory.py");
    assert!(output.status.success(), "vsphere_inventory.py failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("vsphere_inventory.py printed no inventory ({error}):\n{}", String::from_utf8_lossy(&output.stdout)))
}
