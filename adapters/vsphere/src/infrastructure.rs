//! The vSphere [`Infrastructure`]: one VCH enacted on a vCenter or ESX.
//!
//! A VCH is a resource pool (with the VCH's CPU and memory limits) and a VM
//! folder, both named after the VCH, plus an endpoint VM of the same name
//! that carries the VCH's identity and version in its extraConfig. A
//! container is a VM in them named `<name>-<id prefix>`, with its CPU and
//! memory from the container's config, a scratch disk under
//! `[image store] berth/<vch>/containers/<id>/`, a NIC on the VCH's bridge
//! port group, and extraConfig naming the container, its VCH and the run
//! (generation) it was last powered on for.
//!
//! Every call is idempotent and names objects deterministically, so a retry
//! after a lost reply, or a berth killed in the middle of a create, converges
//! to exactly one VM per container: vSphere refuses a second VM of the same
//! name in a folder, and a `DuplicateName` is answered by adopting the VM
//! that is there when its extraConfig names the same container.
//!
//! What the adapter records in extraConfig is what `inventory` reads back,
//! so after a restart the reconciler adopts VMs of known containers and
//! destroys VMs whose containers the log says are gone.
//!
//! vSphere has no signals: without a tether in the guest (berth has none
//! yet), a stop or kill powers the VM off, and berth records the exit code
//! of a process ended by that signal (143 for SIGTERM, 137 for SIGKILL) in
//! `guestinfo.berth.exit_code`, where a tether would write the real one.

use crate::client::{ConnectOptions, ResourcePoolLimits, VimClient, VimError, VmReconfigSpec, VmSpec};
use crate::devices::{DiskMode, DiskSpec, NicSpec};
use crate::image_disk;
use crate::inventory::{ManagedObjectRef, PowerState, VirtualMachine};
use crate::placement::{self, Placement, DATASTORE_ROOT_DIRECTORY};
use crate::watch::ChangeKind;
use berth_core::events::VchSpec;
use berth_core::infrastructure::{ContainerPlan, InfraError, Infrastructure, NetworkPlan, ObservedContainer, ObservedPower};
use berth_core::model::container_memory_mib;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// extraConfig keys berth writes on its VMs.
pub const KEY_ROLE: &str = "berth.role";
pub const KEY_VCH: &str = "berth.vch";
pub const KEY_CONTAINER_ID: &str = "berth.container.id";
pub const KEY_CONTAINER_NAME: &str = "berth.container.name";
pub const KEY_IMAGE_ID: &str = "berth.image.id";
pub const KEY_GENERATION: &str = "berth.generation";
/// The run being started: set before the power-on, copied to
/// [`KEY_GENERATION`] after it, so a berth killed in between neither loses
/// the run (a running VM counts as on it) nor invents an exit (a VM still
/// off counts as on the previous run and is powered on again).
pub const KEY_GENERATION_PENDING: &str = "berth.generation.pending";
pub const KEY_VERSION: &str = "berth.vch.version";
/// Where the exit code of the last run is kept (a tether would write it).
pub const KEY_EXIT_CODE: &str = "guestinfo.berth.exit_code";
pub const ROLE_CONTAINER: &str = "container";
pub const ROLE_ENDPOINT: &str = "endpoint";

/// vCPUs of a container VM without `--cpus` (VIC's default).
pub const CONTAINER_CPU_COUNT_DEFAULT: u32 = 2;
/// The scratch disk of a container VM (VIC's default base image size, 8 GiB).
pub const SCRATCH_DISK_KIB: u64 = 8 * 1024 * 1024;
/// The endpoint VM's size (VIC's defaults).
pub const ENDPOINT_MEMORY_MIB: u64 = 2048;
pub const ENDPOINT_CPU_COUNT: u32 = 1;
/// The guest OS id of berth's VMs.
pub const GUEST_ID: &str = "otherGuest64";
/// The size of a volume's VMDK (VIC's default volume size; `--opt Capacity`
/// is not supported yet).
pub const VOLUME_DISK_KIB: u64 = 1024 * 1024;
/// The volume store new volumes go to when the VCH has one of this label.
pub const DEFAULT_VOLUME_STORE_LABEL: &str = "default";
/// The exit code recorded when a VM was powered off without a known code.
pub const EXIT_CODE_POWERED_OFF: i64 = 137;

/// Where container VMs' images come from: berth's own image store, which
/// writes an image's root filesystem as a tar for the adapter to turn into
/// the image's disk on the datastore.
pub trait ImageSource: Send + Sync {
    fn write_rootfs_tar(&self, image_id: &str, out: &Path) -> Result<(), String>;
}

/// The resolved objects of the VCH, once ensured.
#[derive(Debug, Clone)]
struct Enacted {
    placement: Placement,
    pool: ManagedObjectRef,
    folder: ManagedObjectRef,
}

/// One VCH on one vSphere target.
pub struct VsphereInfrastructure {
    vch: String,
    options: ConnectOptions,
    /// The version the endpoint VM is stamped with when the spec names none.
    berth_version: String,
    session: Mutex<Option<Arc<VimClient>>>,
    enacted: Mutex<Option<Arc<Enacted>>>,
    /// Container id to VM, from the last inventory and the VMs created since.
    vms: Mutex<HashMap<String, ManagedObjectRef>>,
    /// The image store and a scratch directory for building image disks.
    images: Option<(Arc<dyn ImageSource>, PathBuf)>,
    /// One lock per image: two uploads of one image disk must not overlap
    /// (a late one would rewrite the extent under a finished disk).
    image_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Image disks known to be complete on the image store: checked once,
    /// not on every provision (forgotten when the VCH is removed).
    image_disks: Mutex<HashMap<String, String>>,
}

/// Maps a client error to the reconciler's classes: a refusal that retrying
/// cannot fix is permanent, anything on the way (network, timeouts, a busy
/// host) is transient.
pub fn infra_error(context: &str, error: VimError) -> InfraError {
    let message = format!("{context}: {error}");
    match &error {
        VimError::NotFound { .. } => InfraError::NotFound(message),
        VimError::Unreachable { .. } | VimError::TaskTimedOut { .. } | VimError::UnexpectedReply(_) => InfraError::Transient(message),
        VimError::Fault { fault_type, .. } | VimError::TaskFailed { fault_type, .. } if is_transient_fault(fault_type) => {
            InfraError::Transient(message)
        }
        _ => InfraError::Permanent(message),
    }
}

fn is_transient_fault(fault_type: &str) -> bool {
    matches!(
        fault_type,
        "HostCommunication"
            | "HostNotConnected"
            | "HostNotReachable"
            | "NotAuthenticated"
            | "TaskInProgress"
            | "ConcurrentAccess"
            | "Timedout"
            | "RequestCanceled"
            | "SystemError"
            | "InvalidState"
            | "ResourceInUse"
            | "InsufficientResourcesFault"
            | "InsufficientHostCapacityFault"
    )
}

/// Signal names and numbers as Linux has them, for exit codes (128 + n).
fn signal_number(signal: &str) -> i64 {
    let name = signal.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        other => other.parse().unwrap_or(9),
    }
}

impl VsphereInfrastructure {
    /// An adapter for the VCH `vch` on the target of `options`; it connects on first use.
    pub fn new(vch: &str, options: ConnectOptions, berth_version: &str) -> VsphereInfrastructure {
        VsphereInfrastructure {
            vch: vch.to_string(),
            options,
            berth_version: berth_version.to_string(),
            session: Mutex::new(None),
            enacted: Mutex::new(None),
            vms: Mutex::new(HashMap::new()),
            images: None,
            image_locks: Mutex::new(HashMap::new()),
            image_disks: Mutex::new(HashMap::new()),
        }
    }

    /// Gives container VMs their image's disk chain: the image's root
    /// filesystem as an ext4 disk on the image store, built in `work_dir`,
    /// with each container's writable disk a child of it.
    pub fn with_images(mut self, source: Arc<dyn ImageSource>, work_dir: PathBuf) -> VsphereInfrastructure {
        self.images = Some((source, work_dir));
        self
    }

    /// Makes sure the image's disk is on the image store (built and uploaded
    /// once per VCH; the descriptor, uploaded last, marks it complete) and
    /// returns its datastore path, or None without an image source.
    fn ensure_image_disk(&self, client: &VimClient, enacted: &Enacted, image_id: &str) -> Result<Option<String>, InfraError> {
        let Some((source, work_dir)) = &self.images else { return Ok(None) };
        let name = image_id.strip_prefix("sha256:").unwrap_or(image_id).to_string();
        if let Some(disk) = self.image_disks.lock().get(&name) {
            return Ok(Some(disk.clone()));
        }
        let lock = self.image_locks.lock().entry(name.clone()).or_default().clone();
        let _one_upload = lock.lock();
        if let Some(disk) = self.image_disks.lock().get(&name) {
            return Ok(Some(disk.clone()));
        }
        let placement = &enacted.placement;
        let datacenter_name = &placement.datacenter_name;
        let directory = format!("{DATASTORE_ROOT_DIRECTORY}/{}/images/{name}", self.vch);
        let disk = format!("[{}] {directory}/{name}.vmdk", placement.datastore);
        let context = format!("making the disk of image {image_id}");
        if image_disk::image_disk_exists(client, datacenter_name, &placement.datastore, &directory, &name)
            .map_err(|error| infra_error(&context, error))?
        {
            self.image_disks.lock().insert(name, disk.clone());
            return Ok(Some(disk));
        }
        std::fs::create_dir_all(work_dir).map_err(|error| InfraError::Transient(format!("{context}: {error}")))?;
        let scratch = tempfile_dir(work_dir, &name).map_err(|error| InfraError::Transient(format!("{context}: {error}")))?;
        let result = (|| {
            let tar = scratch.join("rootfs.tar");
            source.write_rootfs_tar(image_id, &tar).map_err(|error| InfraError::Permanent(format!("{context}: {error}")))?;
            let vmdk =
                image_disk::build_flat_vmdk(&tar, &scratch, &name).map_err(|error| InfraError::Permanent(format!("{context}: {error}")))?;
            let _ = std::fs::remove_file(&tar);
            image_disk::upload_image_disk(client, datacenter_name, &placement.datastore, &directory, &name, &vmdk)
                .map_err(|error| infra_error(&context, error))
        })();
        let _ = std::fs::remove_dir_all(&scratch);
        let disk = result?;
        self.image_disks.lock().insert(name, disk.clone());
        Ok(Some(disk))
    }

    pub fn vch(&self) -> &str {
        &self.vch
    }

    /// True once the VCH's pool, folder and endpoint VM were ensured.
    pub fn is_enacted(&self) -> bool {
        self.enacted.lock().is_some()
    }

    /// The logged-in client, connecting (again) when there is none.
    fn client(&self) -> Result<Arc<VimClient>, InfraError> {
        if let Some(client) = self.session.lock().clone() {
            return Ok(client);
        }
        let client = Arc::new(VimClient::connect(&self.options).map_err(|error| infra_error("connecting to vSphere", error))?);
        *self.session.lock() = Some(client.clone());
        Ok(client)
    }

    /// Runs `call` with the session; a session vSphere no longer knows is
    /// dropped, so the next call logs in again.
    fn with_client<T>(&self, context: &str, call: impl FnOnce(&VimClient) -> Result<T, VimError>) -> Result<T, InfraError> {
        let client = self.client()?;
        match call(&client) {
            Ok(value) => Ok(value),
            Err(error) => {
                let lost_session = matches!(&error, VimError::Fault { fault_type, .. } if fault_type == "NotAuthenticated")
                    || matches!(&error, VimError::Unreachable { .. });
                if lost_session {
                    *self.session.lock() = None;
                }
                Err(infra_error(context, error))
            }
        }
    }

    fn enacted(&self) -> Result<Arc<Enacted>, InfraError> {
        self.enacted.lock().clone().ok_or_else(|| InfraError::Transient(format!("VCH {} is not ensured yet", self.vch)))
    }

    /// The container VM's name: the container's name and the start of its id.
    pub fn vm_name(plan_name: &str, id: &str) -> String {
        let prefix: String = id.chars().take(12).collect();
        format!("{}-{prefix}", plan_name.trim_start_matches('/'))
    }

    fn vm_of(&self, id: &str) -> Result<ManagedObjectRef, InfraError> {
        if let Some(vm) = self.vms.lock().get(id).cloned() {
            return Ok(vm);
        }
        self.inventory()?;
        self.vms.lock().get(id).cloned().ok_or_else(|| InfraError::NotFound(format!("the VM of container {id}")))
    }

    fn belongs_here(&self, vm: &VirtualMachine) -> bool {
        vm.extra_config.get(KEY_VCH).map(String::as_str) == Some(self.vch.as_str())
    }

    /// Finds a VM by name and checks that its extraConfig says `role` (and `container`).
    fn adopt(&self, client: &VimClient, name: &str, role: &str, container: Option<&str>) -> Result<Option<ManagedObjectRef>, VimError> {
        let vms = client.virtual_machines()?;
        for vm in vms.iter().filter(|vm| vm.object.name == name) {
            let same_role = vm.extra_config.get(KEY_ROLE).map(String::as_str) == Some(role) && self.belongs_here(vm);
            let same_container = container.is_none_or(|id| vm.extra_config.get(KEY_CONTAINER_ID).map(String::as_str) == Some(id));
            if same_role && same_container {
                return Ok(Some(vm.object.reference.clone()));
            }
        }
        Ok(None)
    }

    fn ensure_endpoint(&self, client: &VimClient, enacted: &Enacted, spec: &VchSpec) -> Result<(), VimError> {
        let version = spec.version.clone().unwrap_or_else(|| self.berth_version.clone());
        let placement = &enacted.placement;
        let endpoint = match self.adopt(client, &self.vch, ROLE_ENDPOINT, None)? {
            Some(vm) => {
                let content = client.retrieve_one(&vm, &["config.extraConfig", "runtime.powerState"])?;
                if content.extra_config().get(KEY_VERSION) != Some(&version) {
                    let reconfig =
                        VmReconfigSpec { extra_config: BTreeMap::from([(KEY_VERSION.to_string(), version)]), ..Default::default() };
                    client.reconfigure_vm(&vm, &reconfig)?;
                }
                if content.text("runtime.powerState").and_then(PowerState::parse) == Some(PowerState::PoweredOn) {
                    return Ok(());
                }
                vm
            }
            None => {
                let nics = [&placement.public_network, &placement.client_network, &placement.management_network, &placement.bridge_network]
                    .into_iter()
                    .flatten()
                    .fold(Vec::<NicSpec>::new(), |mut nics, backing| {
                        if !nics.iter().any(|nic| &nic.network == backing) {
                            nics.push(NicSpec { network: backing.clone() });
                        }
                        nics
                    });
                let spec = VmSpec {
                    name: self.vch.clone(),
                    datastore_name: placement.datastore.clone(),
                    cpu_count: ENDPOINT_CPU_COUNT,
                    memory_mib: ENDPOINT_MEMORY_MIB,
                    guest_id: GUEST_ID.to_string(),
                    extra_config: BTreeMap::from([
                        (KEY_ROLE.to_string(), ROLE_ENDPOINT.to_string()),
                        (KEY_VCH.to_string(), self.vch.clone()),
                        (KEY_VERSION.to_string(), version),
                    ]),
                    nics,
                    ..Default::default()
                };
                match client.create_vm(&enacted.folder, &enacted.pool, &spec) {
                    Ok(vm) => vm,
                    Err(VimError::DuplicateName { message }) => {
                        self.adopt(client, &self.vch, ROLE_ENDPOINT, None)?.ok_or(VimError::DuplicateName {
                            message: format!("{message} (a VM named {} that berth did not create)", self.vch),
                        })?
                    }
                    Err(error) => return Err(error),
                }
            }
        };
        match client.power_on_vm(&endpoint) {
            Ok(()) => Ok(()),
            Err(VimError::TaskFailed { fault_type, .. }) if fault_type == "InvalidPowerState" => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn ensure_directory(client: &VimClient, datacenter: &ManagedObjectRef, path: &str) -> Result<(), VimError> {
        match client.make_directory(datacenter, path, true) {
            Ok(()) | Err(VimError::AlreadyExists { .. }) | Err(VimError::DuplicateName { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn ensure_vch_objects(&self, client: &VimClient, spec: &VchSpec) -> Result<Enacted, InfraError> {
        let inventory = client.inventory().map_err(|error| infra_error("reading the inventory", error))?;
        let placement = placement::resolve(&inventory, &self.vch, spec)
            .map_err(|error| InfraError::Permanent(format!("placing VCH {}: {error}", self.vch)))?;
        let limits = ResourcePoolLimits {
            cpu_limit_mhz: (spec.cpu_mhz_max > 0).then_some(spec.cpu_mhz_max as i64),
            memory_limit_mib: (spec.memory_mib_max > 0).then_some(spec.memory_mib_max as i64),
        };
        let context = |what: &str| format!("ensuring the {what} of VCH {}", self.vch);
        let existing_pool =
            inventory.resource_pools.iter().find(|pool| pool.name == self.vch && pool.parent.as_ref() == Some(&placement.parent_pool));
        let pool = match existing_pool {
            Some(pool) => {
                let current =
                    client.resource_pool_limits(&pool.reference).map_err(|error| infra_error(&context("resource pool"), error))?;
                if current != limits {
                    client.update_resource_pool(&pool.reference, limits).map_err(|error| infra_error(&context("resource pool"), error))?;
                }
                pool.reference.clone()
            }
            None => client
                .create_resource_pool(&placement.parent_pool, &self.vch, limits)
                .map_err(|error| infra_error(&context("resource pool"), error))?,
        };
        let existing_folder =
            inventory.folders.iter().find(|folder| folder.name == self.vch && folder.parent.as_ref() == Some(&placement.vm_folder));
        let folder = match existing_folder {
            Some(folder) => folder.reference.clone(),
            None => client.create_folder(&placement.vm_folder, &self.vch).map_err(|error| infra_error(&context("VM folder"), error))?,
        };
        let vch_directory = placement.vch_directory(&self.vch);
        for directory in [format!("{vch_directory}/containers")]
            .into_iter()
            .chain(placement.volume_stores.iter().map(|store| format!("[{}] {}", store.datastore, store.path)))
        {
            Self::ensure_directory(client, &placement.datacenter, &directory)
                .map_err(|error| infra_error(&context("directories"), error))?;
        }
        let enacted = Enacted { placement, pool, folder };
        self.ensure_endpoint(client, &enacted, spec).map_err(|error| infra_error(&context("endpoint VM"), error))?;
        Ok(enacted)
    }

    fn container_vm_spec(&self, plan: &ContainerPlan, enacted: &Enacted, image_disk: Option<String>) -> VmSpec {
        let host = &plan.spec.host;
        let memory_mib = container_memory_mib(&plan.spec);
        let cpu_count =
            if host.nano_cpus > 0 { (host.nano_cpus as u64).div_ceil(1_000_000_000) as u32 } else { CONTAINER_CPU_COUNT_DEFAULT };
        let directory = format!("{}/containers/{}", enacted.placement.vch_directory(&self.vch), plan.id);
        let scratch = DiskSpec {
            file_name: format!("{directory}/{}.vmdk", plan.id),
            // A child of the image's disk takes the image disk's size.
            capacity_kib: if image_disk.is_some() { 0 } else { SCRATCH_DISK_KIB },
            create: true,
            mode: DiskMode::Persistent,
            parent: image_disk,
        };
        // One NIC per container network the container joined (on its port
        // group), and one on the bridge port group for all its bridge networks.
        let mut nics = Vec::new();
        let mut on_bridge = false;
        for network in &plan.networks {
            match enacted.placement.container_networks.iter().find(|container_network| container_network.alias == network.network_name) {
                Some(container_network) => nics.push(NicSpec { network: container_network.backing.clone() }),
                None => on_bridge = true,
            }
        }
        if let (true, Some(bridge)) = (on_bridge, &enacted.placement.bridge_network) {
            nics.insert(0, NicSpec { network: bridge.clone() });
        }
        VmSpec {
            name: Self::vm_name(&plan.name, &plan.id),
            datastore_name: enacted.placement.datastore.clone(),
            cpu_count,
            memory_mib,
            guest_id: GUEST_ID.to_string(),
            extra_config: BTreeMap::from([
                (KEY_ROLE.to_string(), ROLE_CONTAINER.to_string()),
                (KEY_VCH.to_string(), self.vch.clone()),
                (KEY_CONTAINER_ID.to_string(), plan.id.clone()),
                (KEY_CONTAINER_NAME.to_string(), plan.name.clone()),
                (KEY_IMAGE_ID.to_string(), plan.image_id.clone()),
                (KEY_GENERATION.to_string(), "0".to_string()),
            ]),
            disks: vec![scratch],
            nics,
        }
    }

    /// `[ds] path/<volume>.vmdk` in the volume store new volumes use: the one
    /// labelled `default`, else the first.
    fn volume_disk(&self, enacted: &Enacted, volume: &str) -> Result<String, InfraError> {
        let stores = &enacted.placement.volume_stores;
        let store = stores.iter().find(|store| store.label == DEFAULT_VOLUME_STORE_LABEL).or_else(|| stores.first()).ok_or_else(|| {
            InfraError::Permanent(format!(
                "VCH {} has no volume store for volume {volume}: add one with `berth vch configure --volume-store DATASTORE/PATH:default`",
                self.vch
            ))
        })?;
        Ok(format!("[{}] {}/{volume}.vmdk", store.datastore, store.path))
    }

    /// The datastore paths under which the VCH's volume disks live.
    fn volume_prefixes(enacted: &Enacted) -> Vec<String> {
        enacted.placement.volume_stores.iter().map(|store| format!("[{}] {}/", store.datastore, store.path)).collect()
    }

    fn set_config(client: &VimClient, vm: &ManagedObjectRef, pairs: &[(&str, String)]) -> Result<(), VimError> {
        let extra_config = pairs.iter().map(|(key, value)| (key.to_string(), value.clone())).collect();
        client.reconfigure_vm(vm, &VmReconfigSpec { extra_config, ..Default::default() })
    }

    fn power_state(client: &VimClient, vm: &ManagedObjectRef) -> Result<Option<PowerState>, VimError> {
        Ok(client.retrieve_one(vm, &["runtime.powerState"])?.text("runtime.powerState").and_then(PowerState::parse))
    }

    /// Powers the VM off (if on) after recording the exit code `exit_code`.
    fn stop_vm(&self, client: &VimClient, vm: &ManagedObjectRef, exit_code: i64) -> Result<(), VimError> {
        if Self::power_state(client, vm)? == Some(PowerState::PoweredOff) {
            return Ok(());
        }
        Self::set_config(client, vm, &[(KEY_EXIT_CODE, exit_code.to_string())])?;
        match client.power_off_vm(vm) {
            Ok(()) => Ok(()),
            Err(VimError::TaskFailed { fault_type, .. }) if fault_type == "InvalidPowerState" => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn observe(vm: &VirtualMachine) -> Option<ObservedContainer> {
        let config = &vm.extra_config;
        if config.get(KEY_ROLE).map(String::as_str) != Some(ROLE_CONTAINER) {
            return None;
        }
        let id = config.get(KEY_CONTAINER_ID)?.clone();
        let vch = config.get(KEY_VCH)?.clone();
        let committed: u64 = config.get(KEY_GENERATION).and_then(|text| text.parse().ok()).unwrap_or(0);
        let pending: u64 = config.get(KEY_GENERATION_PENDING).and_then(|text| text.parse().ok()).unwrap_or(0);
        let generation = match vm.power_state {
            Some(PowerState::PoweredOn | PowerState::Suspended) => committed.max(pending),
            _ => committed,
        };
        let power = match vm.power_state {
            Some(PowerState::PoweredOn) => ObservedPower::Running,
            Some(PowerState::Suspended) => ObservedPower::Paused,
            _ if generation == 0 => ObservedPower::Created,
            _ => ObservedPower::Exited {
                exit_code: config.get(KEY_EXIT_CODE).and_then(|text| text.trim().parse().ok()).unwrap_or(EXIT_CODE_POWERED_OFF),
            },
        };
        Some(ObservedContainer { id, vch, generation, power })
    }
}

/// How long one WaitForUpdatesEx of the watch may wait: also how long a
/// stop of the watch may take.
pub const WATCH_WAIT: Duration = Duration::from_secs(5);
/// The pause before the watch logs in again after an error.
pub const WATCH_RETRY: Duration = Duration::from_secs(2);

impl VsphereInfrastructure {
    /// Watches vSphere for changes of this VCH's VMs (WaitForUpdatesEx) and
    /// calls `on_change` for each batch, until `stop` is set: a VM powered off
    /// behind berth's back (or by a tether, when the process ends) is then
    /// reconciled at once instead of at the next periodic resync. Blocking;
    /// run it on its own thread. Errors are logged and the watch starts over.
    pub fn watch(&self, stop: &AtomicBool, on_change: &dyn Fn()) {
        while !stop.load(Ordering::Relaxed) {
            let result = (|| -> Result<(), VimError> {
                let client = VimClient::connect(&self.options)?;
                let watch = client.watch_virtual_machines()?;
                let mut ours: HashSet<ManagedObjectRef> = HashSet::new();
                let outcome = loop {
                    if stop.load(Ordering::Relaxed) {
                        break Ok(());
                    }
                    let changes = match watch.wait(&client, WATCH_WAIT) {
                        Ok(changes) => changes,
                        Err(error) => break Err(error),
                    };
                    let mut relevant = false;
                    for change in &changes {
                        let belongs = change.extra_config.as_ref().is_some_and(|config| config.get(KEY_VCH) == Some(&self.vch));
                        match change.kind {
                            ChangeKind::Enter if belongs => {
                                ours.insert(change.vm.clone());
                            }
                            ChangeKind::Leave => relevant |= ours.remove(&change.vm),
                            ChangeKind::Modify => relevant |= ours.contains(&change.vm) || belongs,
                            ChangeKind::Enter => {}
                        }
                        relevant |= belongs && change.kind != ChangeKind::Enter;
                    }
                    if relevant {
                        on_change();
                    }
                };
                let _ = watch.close(&client);
                let _ = client.logout();
                outcome
            })();
            if let Err(error) = result {
                tracing::warn!(vch = %self.vch, %error, "watching vSphere for changes failed; starting over");
                let until = Instant::now() + WATCH_RETRY;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl Infrastructure for VsphereInfrastructure {
    fn inventory(&self) -> Result<Vec<ObservedContainer>, InfraError> {
        let vms = self.with_client("listing VMs", |client| client.virtual_machines())?;
        let mut observed = Vec::new();
        let mut references = HashMap::new();
        for vm in &vms {
            if !self.belongs_here(vm) {
                continue;
            }
            if let Some(container) = Self::observe(vm) {
                references.insert(container.id.clone(), vm.object.reference.clone());
                observed.push(container);
            }
        }
        *self.vms.lock() = references;
        Ok(observed)
    }

    fn ensure_vch(&self, name: &str, spec: &VchSpec) -> Result<(), InfraError> {
        if name != self.vch {
            return Err(InfraError::Permanent(format!("this adapter serves VCH {}, not {name}", self.vch)));
        }
        let client = self.client()?;
        let enacted = self.ensure_vch_objects(&client, spec);
        if let Err(InfraError::Transient(_)) = &enacted {
            *self.session.lock() = None;
        }
        *self.enacted.lock() = Some(Arc::new(enacted?));
        Ok(())
    }

    fn remove_vch(&self, name: &str) -> Result<(), InfraError> {
        if name != self.vch {
            return Err(InfraError::Permanent(format!("this adapter serves VCH {}, not {name}", self.vch)));
        }
        self.with_client("removing the VCH's objects", |client| {
            let inventory = client.inventory()?;
            for vm in inventory.virtual_machines.iter().filter(|vm| self.belongs_here(vm)) {
                if vm.power_state != Some(PowerState::PoweredOff) {
                    match client.power_off_vm(&vm.object.reference) {
                        Ok(()) => {}
                        Err(VimError::TaskFailed { fault_type, .. }) if fault_type == "InvalidPowerState" => {}
                        Err(error) => return Err(error),
                    }
                }
                match client.destroy(&vm.object.reference) {
                    Ok(()) | Err(VimError::NotFound { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
            let enacted = self.enacted.lock().clone();
            for folder in inventory.folders.iter().filter(|folder| folder.name == self.vch) {
                let in_vm_folder = enacted.as_ref().is_none_or(|enacted| folder.parent.as_ref() == Some(&enacted.placement.vm_folder));
                if in_vm_folder {
                    match client.destroy(&folder.reference) {
                        Ok(()) | Err(VimError::NotFound { .. }) => {}
                        Err(error) => return Err(error),
                    }
                }
            }
            for pool in inventory.resource_pools.iter().filter(|pool| pool.name == self.vch) {
                let in_parent = enacted.as_ref().is_none_or(|enacted| pool.parent.as_ref() == Some(&enacted.placement.parent_pool));
                if in_parent {
                    match client.destroy(&pool.reference) {
                        Ok(()) | Err(VimError::NotFound { .. }) => {}
                        Err(error) => return Err(error),
                    }
                }
            }
            if let Some(enacted) = enacted {
                match client.delete_datastore_file(&enacted.placement.datacenter, &enacted.placement.vch_directory(&self.vch)) {
                    Ok(()) | Err(VimError::NotFound { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
            Ok(())
        })?;
        *self.enacted.lock() = None;
        self.vms.lock().clear();
        self.image_disks.lock().clear();
        Ok(())
    }

    /// Docker networks of a vSphere VCH are address ranges on the VCH's one
    /// bridge port group (as in VIC): berth allocates the addresses, and
    /// there is nothing to create in vSphere.
    fn ensure_network(&self, _network: &NetworkPlan) -> Result<(), InfraError> {
        Ok(())
    }

    fn remove_network(&self, _network_id: &str) -> Result<(), InfraError> {
        Ok(())
    }

    fn remove_volume(&self, name: &str) -> Result<(), InfraError> {
        let enacted = self.enacted()?;
        let stores = enacted.placement.volume_stores.clone();
        self.with_client(&format!("removing volume {name}"), |client| {
            for store in &stores {
                let file_name = format!("[{}] {}/{name}.vmdk", store.datastore, store.path);
                match client.delete_virtual_disk(&enacted.placement.datacenter, &file_name) {
                    Ok(()) | Err(VimError::NotFound { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
            Ok(())
        })
    }

    fn provision(&self, plan: &ContainerPlan) -> Result<(), InfraError> {
        if self.vms.lock().contains_key(&plan.id) {
            return Ok(());
        }
        let enacted = self.enacted()?;
        let client = self.client()?;
        let image_disk = self.ensure_image_disk(&client, &enacted, &plan.image_id)?;
        let mut spec = self.container_vm_spec(plan, &enacted, image_disk);
        let mut volume_disks = Vec::new();
        for mount in &plan.spec.host.mounts {
            let file_name = self.volume_disk(&enacted, &mount.volume)?;
            // Independent: snapshots of the VM leave volumes alone, as in VIC.
            spec.disks.push(DiskSpec {
                file_name: file_name.clone(),
                capacity_kib: VOLUME_DISK_KIB,
                create: false,
                mode: DiskMode::IndependentPersistent,
                parent: None,
            });
            volume_disks.push(file_name);
        }
        let directory = format!("{}/containers/{}", enacted.placement.vch_directory(&self.vch), plan.id);
        let vm = self.with_client(&format!("creating the VM of container {}", plan.id), |client| {
            // The scratch disk's directory must exist before the disk is created.
            Self::ensure_directory(client, &enacted.placement.datacenter, &directory)?;
            for file_name in &volume_disks {
                match client.create_virtual_disk(&enacted.placement.datacenter, file_name, VOLUME_DISK_KIB) {
                    Ok(()) | Err(VimError::AlreadyExists { .. }) | Err(VimError::DuplicateName { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
            match client.create_vm(&enacted.folder, &enacted.pool, &spec) {
                Ok(vm) => Ok(vm),
                // An earlier attempt created it and its reply was lost, or berth
                // died before it could record that: adopt it if it is ours.
                Err(VimError::DuplicateName { message }) => {
                    self.adopt(client, &spec.name, ROLE_CONTAINER, Some(&plan.id))?.ok_or(VimError::DuplicateName {
                        message: format!("{message} (VM {} exists and is not container {})", spec.name, plan.id),
                    })
                }
                Err(error) => Err(error),
            }
        });
        let vm = match vm {
            Ok(vm) => vm,
            Err(error) => {
                // The image disk may have gone behind berth's back: check it again next time.
                if matches!(error, InfraError::NotFound(_)) {
                    self.image_disks.lock().remove(plan.image_id.strip_prefix("sha256:").unwrap_or(&plan.image_id));
                }
                return Err(error);
            }
        };
        self.vms.lock().insert(plan.id.clone(), vm);
        Ok(())
    }

    fn power_on(&self, id: &str, generation: u64) -> Result<(), InfraError> {
        let vm = self.vm_of(id)?;
        self.with_client(&format!("powering on container {id}"), |client| {
            let generation_text = generation.to_string();
            if Self::power_state(client, &vm)? != Some(PowerState::PoweredOn) {
                Self::set_config(client, &vm, &[(KEY_GENERATION_PENDING, generation_text.clone()), (KEY_EXIT_CODE, String::new())])?;
                match client.power_on_vm(&vm) {
                    Ok(()) => {}
                    Err(VimError::TaskFailed { fault_type, .. }) if fault_type == "InvalidPowerState" => {}
                    Err(error) => return Err(error),
                }
            }
            Self::set_config(client, &vm, &[(KEY_GENERATION, generation_text)])
        })
    }

    fn power_off(&self, id: &str, signal: &str, _timeout_s: i64) -> Result<(), InfraError> {
        let vm = self.vm_of(id)?;
        let exit_code = 128 + signal_number(signal);
        self.with_client(&format!("powering off container {id}"), |client| self.stop_vm(client, &vm, exit_code))
    }

    fn signal(&self, id: &str, signal: &str) -> Result<(), InfraError> {
        if signal_number(signal) == 9 {
            return self.power_off(id, signal, 0);
        }
        Err(InfraError::Permanent(format!(
            "container {id} is a VM without a tether: it can be stopped (SIGKILL powers it off) but not sent {signal}"
        )))
    }

    fn pause(&self, id: &str) -> Result<(), InfraError> {
        let vm = self.vm_of(id)?;
        self.with_client(&format!("suspending container {id}"), |client| match client.suspend_vm(&vm) {
            Ok(()) => Ok(()),
            Err(VimError::TaskFailed { fault_type, .. }) if fault_type == "InvalidPowerState" => match Self::power_state(client, &vm)? {
                Some(PowerState::Suspended) => Ok(()),
                _ => Err(VimError::Fault { fault_type, message: format!("container {id} is not running") }),
            },
            Err(error) => Err(error),
        })
    }

    fn unpause(&self, id: &str) -> Result<(), InfraError> {
        let vm = self.vm_of(id)?;
        self.with_client(&format!("resuming container {id}"), |client| match client.power_on_vm(&vm) {
            Ok(()) => Ok(()),
            Err(VimError::TaskFailed { fault_type, .. }) if fault_type == "InvalidPowerState" => Ok(()),
            Err(error) => Err(error),
        })
    }

    fn destroy(&self, id: &str) -> Result<(), InfraError> {
        let vm = match self.vm_of(id) {
            Ok(vm) => vm,
            Err(InfraError::NotFound(_)) => return Ok(()),
            Err(error) => return Err(error),
        };
        let enacted = self.enacted.lock().clone();
        self.with_client(&format!("destroying the VM of container {id}"), |client| {
            match Self::power_state(client, &vm) {
                Ok(Some(PowerState::PoweredOff)) | Err(VimError::NotFound { .. }) => {}
                Ok(_) => match client.power_off_vm(&vm) {
                    Ok(()) => {}
                    Err(VimError::TaskFailed { fault_type, .. }) if fault_type == "InvalidPowerState" => {}
                    Err(error) => return Err(error),
                },
                Err(error) => return Err(error),
            }
            // Volumes outlive the VM: detach their disks before the destroy deletes them.
            if let Some(enacted) = &enacted {
                let prefixes = Self::volume_prefixes(enacted);
                if !prefixes.is_empty() {
                    let devices = match client.vm_devices(&vm) {
                        Ok(devices) => devices,
                        Err(VimError::NotFound { .. }) => Vec::new(),
                        Err(error) => return Err(error),
                    };
                    let detach: Vec<String> = devices
                        .iter()
                        .filter_map(|device| device.disk.as_ref().map(|disk| disk.file_name.clone()))
                        .filter(|file_name| prefixes.iter().any(|prefix| file_name.starts_with(prefix.as_str())))
                        .collect();
                    if !detach.is_empty() {
                        client.reconfigure_vm(&vm, &VmReconfigSpec { detach_disks: detach, ..Default::default() })?;
                    }
                }
            }
            match client.destroy(&vm) {
                Ok(()) | Err(VimError::NotFound { .. }) => {}
                Err(error) => return Err(error),
            }
            if let Some(enacted) = &enacted {
                let directory = format!("{}/containers/{id}", enacted.placement.vch_directory(&self.vch));
                match client.delete_datastore_file(&enacted.placement.datacenter, &directory) {
                    Ok(()) | Err(VimError::NotFound { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
            Ok(())
        })?;
        self.vms.lock().remove(id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_container_vms_after_the_container() {
        assert_eq!(VsphereInfrastructure::vm_name("/web", "0123456789abcdef"), "web-0123456789ab");
    }

    #[test]
    fn stop_signals_become_exit_codes() {
        assert_eq!(128 + signal_number("SIGTERM"), 143);
        assert_eq!(128 + signal_number("KILL"), 137);
        assert_eq!(128 + signal_number("15"), 143);
    }

    #[test]
    fn classifies_errors_for_retrying() {
        let transient = infra_error("x", VimError::Unreachable { endpoint: "e".into(), reason: "r".into() });
        assert!(matches!(transient, InfraError::Transient(_)));
        let permanent = infra_error("x", VimError::InvalidLogin { user: "u".into() });
        assert!(matches!(permanent, InfraError::Permanent(_)));
        let busy = infra_error("x", VimError::Fault { fault_type: "HostCommunication".into(), message: String::new() });
        assert!(matches!(busy, InfraError::Transient(_)));
    }
}

/// A fresh directory under `parent` for one image build (removed by the caller).
fn tempfile_dir(parent: &Path, name: &str) -> std::io::Result<PathBuf> {
    for attempt in 0..1000u32 {
        let candidate = parent.join(format!("{name}.{}.{attempt}", std::process::id()));
        match std::fs::create_dir(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(error) => return Err(error),
        }
    }
    Err(std::io::Error::other("no free scratch directory name"))
}
