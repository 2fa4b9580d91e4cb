//! Given/when/then tests for every command and every rejection of the domain.

use berth_core::events::{ContainerSpec, HostSpec, VchSpec, VolumeMount};
use berth_core::model::DomainModel;
use berth_core::{Command, CommandEnvelope, Context, DomainEvent, Rejection, StreamId, StreamKind, StreamVersion};
use std::collections::BTreeMap;

const NOW_MS: u64 = 1_700_000_000_000;
const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const IMAGE_2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

struct Scenario {
    model: DomainModel,
}

fn given(commands: &[Command]) -> Scenario {
    let mut model = DomainModel::default();
    for command in commands {
        let decision = model
            .decide(&CommandEnvelope::new("test", command.clone()), &Context { now_ms: NOW_MS })
            .unwrap_or_else(|rejection| panic!("given {command:?} was rejected: {rejection}"));
        for append in decision.appends {
            let mut version = append.expected.0;
            for event in append.events {
                version += 1;
                model.apply(&append.stream, StreamVersion(version), &event);
            }
        }
    }
    model.check_invariants().expect("invariants after given");
    Scenario { model }
}

impl Scenario {
    fn when(&self, command: Command) -> Result<Vec<(String, DomainEvent)>, Rejection> {
        self.when_envelope(CommandEnvelope::new("test", command))
    }

    fn when_envelope(&self, envelope: CommandEnvelope) -> Result<Vec<(String, DomainEvent)>, Rejection> {
        let decision = self.model.decide(&envelope, &Context { now_ms: NOW_MS })?;
        Ok(decision
            .appends
            .into_iter()
            .flat_map(|append| {
                let stream = append.stream.to_string();
                append.events.into_iter().map(move |event| (stream.clone(), event))
            })
            .collect())
    }
}

fn rejected_with(result: Result<Vec<(String, DomainEvent)>, Rejection>, code: &str) {
    match result {
        Err(rejection) => assert_eq!(rejection.code(), code, "{rejection}"),
        Ok(events) => panic!("expected a {code} rejection, got {events:?}"),
    }
}

fn vch() -> Command {
    Command::CreateVch { name: "default".into(), spec: VchSpec { target: "local".into(), ..VchSpec::default() } }
}

fn bridge() -> Command {
    Command::CreateNetwork {
        id: "n-bridge".into(),
        name: "bridge".into(),
        driver: "bridge".into(),
        subnet: "172.30.0.0/24".into(),
        gateway: "172.30.0.1".into(),
        internal: false,
        labels: BTreeMap::new(),
    }
}

fn image() -> Command {
    Command::RegisterImage { id: IMAGE.into(), reference_tags: vec!["busybox".into()], size_bytes: 10, layer_digests: vec![] }
}

fn create(id: &str, name: &str) -> Command {
    Command::CreateContainer {
        id: id.into(),
        name: name.into(),
        vch: "default".into(),
        image_id: IMAGE.into(),
        spec: ContainerSpec { image: "busybox".into(), ..ContainerSpec::default() },
    }
}

fn base() -> Vec<Command> {
    vec![vch(), bridge(), image()]
}

fn with(mut commands: Vec<Command>, more: &[Command]) -> Vec<Command> {
    commands.extend_from_slice(more);
    commands
}

#[test]
fn creating_a_container_records_it_and_connects_it_to_the_bridge() {
    let events = given(&base()).when(create("c1", "web")).unwrap();
    assert_eq!(events.len(), 2);
    assert!(matches!(&events[0], (s, DomainEvent::ContainerCreated { name, .. }) if s == "container/c1" && name == "web"));
    assert_eq!(
        events[1],
        (
            "network/n-bridge".into(),
            DomainEvent::NetworkContainerConnected { container_id: "c1".into(), ipv4_address: "172.30.0.2".into() }
        )
    );
}

#[test]
fn container_names_are_unique_and_valid() {
    let scenario = given(&with(base(), &[create("c1", "web")]));
    rejected_with(scenario.when(create("c2", "web")), "name_in_use");
    rejected_with(scenario.when(create("c3", "x")), "invalid_name");
    rejected_with(scenario.when(create("c3", "bad name")), "invalid_name");
    rejected_with(scenario.when(create("c1", "other")), "already_exists");
}

#[test]
fn a_container_needs_its_image_vch_volume_and_network() {
    let scenario = given(&base());
    let mut missing_image = create("c1", "web");
    if let Command::CreateContainer { image_id, .. } = &mut missing_image {
        *image_id = IMAGE_2.into();
    }
    rejected_with(scenario.when(missing_image), "not_found");
    let mut missing_vch = create("c1", "web");
    if let Command::CreateContainer { vch, .. } = &mut missing_vch {
        *vch = "nope".into();
    }
    rejected_with(scenario.when(missing_vch), "not_found");
    let mut missing_volume = create("c1", "web");
    if let Command::CreateContainer { spec, .. } = &mut missing_volume {
        spec.host.mounts.push(VolumeMount { volume: "data".into(), target: "/data".into(), read_only: false });
    }
    rejected_with(scenario.when(missing_volume), "not_found");
    let mut missing_network = create("c1", "web");
    if let Command::CreateContainer { spec, .. } = &mut missing_network {
        spec.host = HostSpec { network_mode: "backend".into(), ..HostSpec::default() };
    }
    rejected_with(scenario.when(missing_network), "not_found");
}

#[test]
fn the_vch_container_limit_is_enforced() {
    let limited = Command::CreateVch {
        name: "default".into(),
        spec: VchSpec { target: "local".into(), container_count_max: 1, ..VchSpec::default() },
    };
    let scenario = given(&[limited, bridge(), image(), create("c1", "one")]);
    rejected_with(scenario.when(create("c2", "two")), "limit_reached");
}

#[test]
fn start_stop_kill_pause_follow_the_docker_state_machine() {
    let created = given(&with(base(), &[create("c1", "web")]));
    rejected_with(created.when(Command::StopContainer { id: "c1".into(), timeout_s: None }), "wrong_state");
    rejected_with(created.when(Command::KillContainer { id: "c1".into(), signal: "KILL".into() }), "wrong_state");
    rejected_with(created.when(Command::PauseContainer { id: "c1".into() }), "wrong_state");
    assert!(matches!(created.when(Command::StartContainer { id: "c1".into() }).unwrap()[0].1, DomainEvent::ContainerStarted { .. }));
    rejected_with(created.when(Command::StartContainer { id: "nope".into() }), "not_found");

    let running = given(&with(base(), &[create("c1", "web"), Command::StartContainer { id: "c1".into() }]));
    rejected_with(running.when(Command::StartContainer { id: "c1".into() }), "wrong_state");
    rejected_with(running.when(Command::UnpauseContainer { id: "c1".into() }), "wrong_state");
    rejected_with(running.when(Command::KillContainer { id: "c1".into(), signal: String::new() }), "invalid_argument");
    assert_eq!(running.when(Command::PauseContainer { id: "c1".into() }).unwrap()[0].1, DomainEvent::ContainerPaused);
    assert_eq!(
        running.when(Command::StopContainer { id: "c1".into(), timeout_s: Some(3) }).unwrap()[0].1,
        DomainEvent::ContainerStopRequested { timeout_s: Some(3) }
    );
    assert_eq!(
        running.when(Command::RecordContainerExited { id: "c1".into(), exit_code: 7 }).unwrap()[0].1,
        DomainEvent::ContainerExited { exit_code: 7, finished_ms: NOW_MS }
    );

    let paused = given(&with(
        base(),
        &[create("c1", "web"), Command::StartContainer { id: "c1".into() }, Command::PauseContainer { id: "c1".into() }],
    ));
    assert_eq!(paused.when(Command::UnpauseContainer { id: "c1".into() }).unwrap()[0].1, DomainEvent::ContainerUnpaused);
    rejected_with(paused.when(Command::PauseContainer { id: "c1".into() }), "wrong_state");
}

#[test]
fn an_exit_observation_is_idempotent() {
    let exited = given(&with(
        base(),
        &[
            create("c1", "web"),
            Command::StartContainer { id: "c1".into() },
            Command::RecordContainerExited { id: "c1".into(), exit_code: 0 },
        ],
    ));
    assert!(exited.when(Command::RecordContainerExited { id: "c1".into(), exit_code: 0 }).unwrap().is_empty());
    assert!(exited.when(Command::RecordContainerExited { id: "gone".into(), exit_code: 0 }).unwrap().is_empty());
}

#[test]
fn removing_a_running_container_needs_force_and_frees_its_name_and_address() {
    let running = given(&with(base(), &[create("c1", "web"), Command::StartContainer { id: "c1".into() }]));
    rejected_with(running.when(Command::RemoveContainer { id: "c1".into(), force: false }), "wrong_state");
    let events = running.when(Command::RemoveContainer { id: "c1".into(), force: true }).unwrap();
    assert_eq!(
        events,
        vec![
            ("network/n-bridge".into(), DomainEvent::NetworkContainerDisconnected { container_id: "c1".into() }),
            ("container/c1".into(), DomainEvent::ContainerRemoved),
        ]
    );
    let after =
        given(&with(base(), &[create("c1", "web"), Command::RemoveContainer { id: "c1".into(), force: false }, create("c2", "web")]));
    assert_eq!(after.model.networks["n-bridge"].endpoints["c2"], "172.30.0.2");
    rejected_with(after.when(create("c1", "again")), "already_exists");
}

#[test]
fn rename_checks_the_new_name() {
    let scenario = given(&with(base(), &[create("c1", "web"), create("c2", "db")]));
    rejected_with(scenario.when(Command::RenameContainer { id: "c1".into(), new_name: "db".into() }), "name_in_use");
    rejected_with(scenario.when(Command::RenameContainer { id: "c1".into(), new_name: "web".into() }), "invalid_argument");
    rejected_with(scenario.when(Command::RenameContainer { id: "c1".into(), new_name: "/bad".into() }), "invalid_name");
    assert_eq!(
        scenario.when(Command::RenameContainer { id: "c1".into(), new_name: "front".into() }).unwrap()[0].1,
        DomainEvent::ContainerRenamed { old_name: "web".into(), new_name: "front".into() }
    );
}

#[test]
fn a_stale_expected_version_is_rejected() {
    let scenario = given(&with(base(), &[create("c1", "web")]));
    let stale = CommandEnvelope::new("test", Command::StartContainer { id: "c1".into() }).expecting(StreamVersion(0));
    rejected_with(scenario.when_envelope(stale), "wrong_expected_version");
    let current = CommandEnvelope::new("test", Command::StartContainer { id: "c1".into() }).expecting(StreamVersion(1));
    assert!(scenario.when_envelope(current).is_ok());
}

#[test]
fn images_in_use_need_force_and_running_ones_cannot_go() {
    let scenario = given(&with(base(), &[create("c1", "web")]));
    rejected_with(scenario.when(Command::RemoveImage { id: IMAGE.into(), force: false }), "in_use");
    assert_eq!(scenario.when(Command::RemoveImage { id: IMAGE.into(), force: true }).unwrap()[0].1, DomainEvent::ImageRemoved);
    let running = given(&with(base(), &[create("c1", "web"), Command::StartContainer { id: "c1".into() }]));
    rejected_with(running.when(Command::RemoveImage { id: IMAGE.into(), force: true }), "in_use");
    rejected_with(running.when(Command::RemoveImage { id: IMAGE_2.into(), force: true }), "not_found");
}

#[test]
fn tags_move_between_images() {
    let scenario = given(&with(
        base(),
        &[Command::RegisterImage { id: IMAGE_2.into(), reference_tags: vec![], size_bytes: 1, layer_digests: vec![] }],
    ));
    let events = scenario.when(Command::TagImage { id: IMAGE_2.into(), reference: "busybox".into() }).unwrap();
    assert_eq!(
        events,
        vec![
            (format!("image/{IMAGE}"), DomainEvent::ImageUntagged { reference: "busybox:latest".into() }),
            (format!("image/{IMAGE_2}"), DomainEvent::ImageTagged { reference: "busybox:latest".into() }),
        ]
    );
    assert!(scenario.when(Command::TagImage { id: IMAGE.into(), reference: "busybox:latest".into() }).unwrap().is_empty());
    rejected_with(scenario.when(Command::TagImage { id: IMAGE.into(), reference: "Upper:case".into() }), "invalid_argument");
    rejected_with(scenario.when(Command::UntagImage { reference: "nothing:here".into() }), "not_found");
    rejected_with(
        scenario.when(Command::RegisterImage { id: "sha256:short".into(), reference_tags: vec![], size_bytes: 0, layer_digests: vec![] }),
        "invalid_argument",
    );
}

#[test]
fn volumes_in_use_cannot_be_removed() {
    let data = Command::CreateVolume { name: "data".into(), driver: "local".into(), labels: BTreeMap::new() };
    let mut user = create("c1", "web");
    if let Command::CreateContainer { spec, .. } = &mut user {
        spec.host.mounts.push(VolumeMount { volume: "data".into(), target: "/data".into(), read_only: false });
    }
    let scenario = given(&with(base(), &[data.clone(), user]));
    rejected_with(scenario.when(Command::RemoveVolume { name: "data".into(), force: true }), "in_use");
    assert!(scenario.when(data).unwrap().is_empty(), "creating an existing volume is a no-op");
    rejected_with(scenario.when(Command::RemoveVolume { name: "nope".into(), force: false }), "not_found");
    assert!(scenario.when(Command::RemoveVolume { name: "nope".into(), force: true }).unwrap().is_empty());
    rejected_with(
        scenario.when(Command::CreateVolume { name: "v2".into(), driver: "nfs".into(), labels: BTreeMap::new() }),
        "invalid_argument",
    );
}

#[test]
fn networks_check_names_subnets_and_endpoints() {
    let scenario = given(&with(base(), &[create("c1", "web")]));
    let network = |id: &str, name: &str, subnet: &str, gateway: &str| Command::CreateNetwork {
        id: id.into(),
        name: name.into(),
        driver: "bridge".into(),
        subnet: subnet.into(),
        gateway: gateway.into(),
        internal: false,
        labels: BTreeMap::new(),
    };
    rejected_with(scenario.when(network("n2", "bridge", "10.9.0.0/24", "10.9.0.1")), "name_in_use");
    rejected_with(scenario.when(network("n2", "back", "172.30.0.0/16", "172.30.0.1")), "forbidden");
    rejected_with(scenario.when(network("n2", "back", "10.9.0.0/33", "10.9.0.1")), "invalid_argument");
    rejected_with(scenario.when(network("n2", "back", "10.9.0.0/24", "10.8.0.1")), "invalid_argument");
    rejected_with(scenario.when(Command::RemoveNetwork { id: "n-bridge".into() }), "forbidden");
    rejected_with(
        scenario.when(Command::ConnectNetwork { network_id: "n-bridge".into(), container_id: "c1".into(), ipv4_address: None }),
        "forbidden",
    );
    rejected_with(
        scenario.when(Command::DisconnectNetwork { network_id: "nope".into(), container_id: "c1".into(), force: false }),
        "not_found",
    );

    let with_back = given(&with(base(), &[create("c1", "web"), network("n2", "back", "10.9.0.0/24", "10.9.0.1")]));
    assert_eq!(
        with_back
            .when(Command::ConnectNetwork { network_id: "n2".into(), container_id: "c1".into(), ipv4_address: Some("10.9.0.9".into()) })
            .unwrap()[0]
            .1,
        DomainEvent::NetworkContainerConnected { container_id: "c1".into(), ipv4_address: "10.9.0.9".into() }
    );
    rejected_with(
        with_back.when(Command::ConnectNetwork {
            network_id: "n2".into(),
            container_id: "c1".into(),
            ipv4_address: Some("10.9.1.9".into()),
        }),
        "invalid_argument",
    );
    rejected_with(
        with_back.when(Command::DisconnectNetwork { network_id: "n2".into(), container_id: "c1".into(), force: false }),
        "forbidden",
    );
    let connected = given(&with(
        base(),
        &[
            create("c1", "web"),
            network("n2", "back", "10.9.0.0/24", "10.9.0.1"),
            Command::ConnectNetwork { network_id: "n2".into(), container_id: "c1".into(), ipv4_address: None },
        ],
    ));
    rejected_with(connected.when(Command::RemoveNetwork { id: "n2".into() }), "in_use");
}

#[test]
fn vchs_are_created_configured_and_deleted() {
    let scenario = given(&with(base(), &[create("c1", "web")]));
    rejected_with(scenario.when(vch()), "already_exists");
    rejected_with(scenario.when(Command::CreateVch { name: "v2".into(), spec: VchSpec::default() }), "invalid_argument");
    rejected_with(scenario.when(Command::DeleteVch { name: "default".into(), force: false }), "in_use");
    rejected_with(scenario.when(Command::DeleteVch { name: "nope".into(), force: false }), "not_found");
    let forced = scenario.when(Command::DeleteVch { name: "default".into(), force: true }).unwrap();
    assert_eq!(forced.last().unwrap(), &("vch/default".into(), DomainEvent::VchDeleted));
    assert!(forced.iter().any(|(stream, event)| stream == "container/c1" && *event == DomainEvent::ContainerRemoved));
    let lowered = VchSpec { target: "local".into(), container_count_max: 0, memory_mib_max: 512, ..VchSpec::default() };
    assert!(scenario.when(Command::ConfigureVch { name: "default".into(), spec: lowered }).is_ok());
    let too_low = VchSpec { target: "local".into(), container_count_max: 1, ..VchSpec::default() };
    assert!(scenario.when(Command::ConfigureVch { name: "default".into(), spec: too_low }).is_ok());
    let scenario = given(&with(base(), &[create("c1", "web"), create("c2", "db")]));
    let too_low = VchSpec { target: "local".into(), container_count_max: 1, ..VchSpec::default() };
    rejected_with(scenario.when(Command::ConfigureVch { name: "default".into(), spec: too_low }), "limit_reached");
}

#[test]
fn target_streams_match_the_first_append() {
    let scenario = given(&base());
    let command = create("c1", "web");
    let decision = scenario.model.decide(&CommandEnvelope::new("t", command.clone()), &Context { now_ms: 0 }).unwrap();
    assert_eq!(decision.appends[0].stream, DomainModel::target_stream(&command));
    assert_eq!(DomainModel::target_stream(&command), StreamId::new(StreamKind::Container, "c1"));
}

#[test]
fn update_changes_resources_once_and_checks_them() {
    let scenario = given(&with(base(), &[create("c1", "web")]));
    let update =
        |memory_bytes| Command::UpdateContainer { id: "c1".into(), memory_bytes, nano_cpus: 0, cpu_shares: 0, restart_policy: "no".into() };
    assert!(
        matches!(scenario.when(update(64 << 20)).unwrap()[0].1, DomainEvent::ContainerUpdated { memory_bytes, .. } if memory_bytes == 64 << 20)
    );
    rejected_with(scenario.when(update(-1)), "invalid_argument");
    rejected_with(
        scenario.when(Command::UpdateContainer {
            id: "c1".into(),
            memory_bytes: 0,
            nano_cpus: 0,
            cpu_shares: 0,
            restart_policy: "sometimes".into(),
        }),
        "invalid_argument",
    );
    rejected_with(
        scenario.when(Command::UpdateContainer {
            id: "nope".into(),
            memory_bytes: 0,
            nano_cpus: 0,
            cpu_shares: 0,
            restart_policy: "no".into(),
        }),
        "not_found",
    );
}

#[test]
fn references_are_kept_in_their_familiar_form() {
    use berth_core::model::normalize_reference;
    assert_eq!(normalize_reference("docker.io/library/busybox"), "busybox:latest");
    assert_eq!(normalize_reference("docker.io/team/app:2"), "team/app:2");
    assert_eq!(normalize_reference("registry.local:5000/app"), "registry.local:5000/app:latest");
    let scenario = given(&base());
    let events = scenario.when(Command::TagImage { id: IMAGE.into(), reference: "docker.io/library/spare:1".into() }).unwrap();
    assert_eq!(events, vec![(format!("image/{IMAGE}"), DomainEvent::ImageTagged { reference: "spare:1".into() })]);
}

fn limited_vch(memory_mib_max: u64) -> Command {
    Command::CreateVch {
        name: "default".into(),
        spec: VchSpec { target: "https://vc.example/sdk".into(), memory_mib_max, ..VchSpec::default() },
    }
}

fn create_with_memory(id: &str, name: &str, memory_bytes: i64) -> Command {
    Command::CreateContainer {
        id: id.into(),
        name: name.into(),
        vch: "default".into(),
        image_id: IMAGE.into(),
        spec: ContainerSpec { image: "busybox".into(), host: HostSpec { memory_bytes, ..HostSpec::default() }, ..ContainerSpec::default() },
    }
}

#[test]
fn the_vch_memory_limit_counts_running_containers_only() {
    let mib = 1024 * 1024;
    let scenario = given(&[
        limited_vch(1024),
        bridge(),
        image(),
        create_with_memory("c1", "one", 512 * mib),
        create_with_memory("c2", "two", 0),
        create_with_memory("c3", "three", 1),
        Command::StartContainer { id: "c1".into() },
    ]);
    // 512 MiB running; a default container (512 MiB) fits exactly.
    assert!(scenario.when(Command::StartContainer { id: "c2".into() }).is_ok());
    let full = given(&[
        limited_vch(1024),
        bridge(),
        image(),
        create_with_memory("c1", "one", 512 * mib),
        create_with_memory("c2", "two", 0),
        create_with_memory("c3", "three", 1),
        Command::StartContainer { id: "c1".into() },
        Command::StartContainer { id: "c2".into() },
    ]);
    // One byte rounds up to a whole MiB, which no longer fits.
    rejected_with(full.when(Command::StartContainer { id: "c3".into() }), "limit_reached");
    // Stopped containers do not count.
    let stopped = given(&[
        limited_vch(1024),
        bridge(),
        image(),
        create_with_memory("c1", "one", 1024 * mib),
        create_with_memory("c2", "two", 0),
        Command::StartContainer { id: "c1".into() },
        Command::RecordContainerExited { id: "c1".into(), exit_code: 0 },
    ]);
    assert!(stopped.when(Command::StartContainer { id: "c2".into() }).is_ok());
}

#[test]
fn upgrades_record_the_version_once() {
    let scenario = given(&[limited_vch(0)]);
    let events = scenario.when(Command::UpgradeVch { name: "default".into(), version: "1.2.3".into() }).unwrap();
    assert_eq!(events, vec![("vch/default".to_string(), DomainEvent::VchUpgraded { from_version: None, to_version: "1.2.3".into() })]);
    let upgraded = given(&[limited_vch(0), Command::UpgradeVch { name: "default".into(), version: "1.2.3".into() }]);
    assert_eq!(upgraded.model.vchs["default"].spec.version.as_deref(), Some("1.2.3"));
    assert_eq!(upgraded.when(Command::UpgradeVch { name: "default".into(), version: "1.2.3".into() }).unwrap(), vec![]);
    rejected_with(scenario.when(Command::UpgradeVch { name: "nope".into(), version: "1.2.3".into() }), "not_found");
    rejected_with(scenario.when(Command::UpgradeVch { name: "default".into(), version: " ".into() }), "invalid_argument");
}

#[test]
fn observations_are_recorded_on_live_objects_only() {
    let scenario = given(&base());
    let stream = StreamId::new(StreamKind::Vch, "default");
    let events = scenario.when(Command::RecordDrift { stream: stream.clone(), description: "a stray VM".into() }).unwrap();
    assert_eq!(events, vec![("vch/default".to_string(), DomainEvent::DriftObserved { description: "a stray VM".into() })]);
    let failure = Command::RecordReconcileFailure {
        stream: StreamId::new(StreamKind::Container, "gone"),
        action: "provision".into(),
        error: "no space".into(),
        attempts: 8,
    };
    rejected_with(scenario.when(failure), "not_found");
    let drift_on_missing_vch = Command::RecordDrift { stream: StreamId::new(StreamKind::Vch, "other"), description: "x".into() };
    rejected_with(scenario.when(drift_on_missing_vch), "not_found");
}

#[test]
fn container_networks_belong_to_their_vch() {
    let labels =
        |vch: &str| BTreeMap::from([("berth.vch".to_string(), vch.to_string()), ("berth.port_group".to_string(), "pg".to_string())]);
    let external = |id: &str, name: &str, vch: &str| Command::CreateNetwork {
        id: id.into(),
        name: name.into(),
        driver: "external".into(),
        subnet: String::new(),
        gateway: String::new(),
        internal: false,
        labels: labels(vch),
    };
    let other_vch = Command::CreateVch { name: "other".into(), spec: VchSpec { target: "https://vc/sdk".into(), ..VchSpec::default() } };
    let scenario = given(&with(base(), &[other_vch.clone(), external("n-ext", "public", "other")]));
    // A container of another VCH cannot join it.
    let mut local = create("c1", "one");
    if let Command::CreateContainer { spec, .. } = &mut local {
        spec.host.network_mode = "public".into();
    }
    rejected_with(scenario.when(local), "invalid_argument");
    // One of its own VCH joins it without an address (the port group's DHCP gives one).
    let own = Command::CreateContainer {
        id: "c2".into(),
        name: "two".into(),
        vch: "other".into(),
        image_id: IMAGE.into(),
        spec: ContainerSpec {
            image: "busybox".into(),
            host: HostSpec { network_mode: "public".into(), ..HostSpec::default() },
            ..ContainerSpec::default()
        },
    };
    let events = scenario.when(own.clone()).unwrap();
    assert!(events.contains(&(
        "network/n-ext".to_string(),
        DomainEvent::NetworkContainerConnected { container_id: "c2".into(), ipv4_address: String::new() }
    )));
    // Two containers on it are fine (no address conflict), and deleting the VCH removes it.
    let own_two = Command::CreateContainer {
        id: "c3".into(),
        name: "three".into(),
        vch: "other".into(),
        image_id: IMAGE.into(),
        spec: ContainerSpec {
            image: "busybox".into(),
            host: HostSpec { network_mode: "public".into(), ..HostSpec::default() },
            ..ContainerSpec::default()
        },
    };
    let full = given(&with(base(), &[other_vch, external("n-ext", "public", "other"), own, own_two]));
    let deleted = full.when(Command::DeleteVch { name: "other".into(), force: true }).unwrap();
    assert!(deleted.contains(&("network/n-ext".to_string(), DomainEvent::NetworkRemoved)), "{deleted:?}");
    // It needs its labels, an existing VCH and no subnet.
    rejected_with(scenario.when(external("n-2", "xx", "nope")), "not_found");
    let mut no_port_group = external("n-3", "yy", "other");
    if let Command::CreateNetwork { labels, .. } = &mut no_port_group {
        labels.remove("berth.port_group");
    }
    rejected_with(scenario.when(no_port_group), "invalid_argument");
}
