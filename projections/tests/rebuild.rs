//! Property test: folding events one at a time, from a checkpoint taken
//! anywhere, gives the same views as a rebuild from position 0; and the views
//! agree with the domain model they are derived from.

use berth_core::events::{ContainerSpec, VchSpec};
use berth_core::model::DomainModel;
use berth_core::{Command, CommandEnvelope, Context, EventId, Position, RecordedEvent, StreamVersion};
use berth_projections::DockerViews;
use proptest::prelude::*;
use std::collections::BTreeMap;

const IMAGES: [&str; 2] = [
    "sha256:1111111111111111111111111111111111111111111111111111111111111111",
    "sha256:2222222222222222222222222222222222222222222222222222222222222222",
];

fn command() -> impl Strategy<Value = Command> {
    let id = prop::sample::select(vec!["c1", "c2", "c3"]).prop_map(String::from);
    let name = prop::sample::select(vec!["aa", "bb", "cc"]).prop_map(String::from);
    let image = prop::sample::select(IMAGES.to_vec()).prop_map(String::from);
    let tag = prop::sample::select(vec!["app:1", "web"]).prop_map(String::from);
    prop_oneof![
        (id.clone(), name.clone(), image.clone()).prop_map(|(id, name, image_id)| Command::CreateContainer {
            id,
            name,
            vch: "default".into(),
            image_id,
            spec: ContainerSpec::default()
        }),
        id.clone().prop_map(|id| Command::StartContainer { id }),
        (id.clone(), 0i64..3).prop_map(|(id, exit_code)| Command::RecordContainerExited { id, exit_code }),
        id.clone().prop_map(|id| Command::PauseContainer { id }),
        id.clone().prop_map(|id| Command::UnpauseContainer { id }),
        (id.clone(), name).prop_map(|(id, new_name)| Command::RenameContainer { id, new_name }),
        (id.clone(), any::<bool>()).prop_map(|(id, force)| Command::RemoveContainer { id, force }),
        (image.clone(), tag.clone()).prop_map(|(id, tag)| Command::RegisterImage {
            id,
            reference_tags: vec![tag],
            size_bytes: 3,
            layer_digests: vec![]
        }),
        (image.clone(), tag.clone()).prop_map(|(id, reference)| Command::TagImage { id, reference }),
        tag.prop_map(|reference| Command::UntagImage { reference }),
        (image, any::<bool>()).prop_map(|(id, force)| Command::RemoveImage { id, force }),
        prop::sample::select(vec!["v1", "v2"]).prop_map(|name| Command::CreateVolume {
            name: name.into(),
            driver: "local".into(),
            labels: BTreeMap::new()
        }),
        prop::sample::select(vec!["v1", "v2"]).prop_map(|name| Command::RemoveVolume { name: name.into(), force: false }),
        (prop::sample::select(vec!["n1", "n2"]), id.clone()).prop_map(|(network_id, container_id)| Command::ConnectNetwork {
            network_id: network_id.into(),
            container_id,
            ipv4_address: None
        }),
        (prop::sample::select(vec!["n1", "n2"]), id).prop_map(|(network_id, container_id)| Command::DisconnectNetwork {
            network_id: network_id.into(),
            container_id,
            force: true
        }),
    ]
}

fn setup() -> Vec<Command> {
    let network = |id: &str, name: &str, subnet: &str, gateway: &str| Command::CreateNetwork {
        id: id.into(),
        name: name.into(),
        driver: "bridge".into(),
        subnet: subnet.into(),
        gateway: gateway.into(),
        internal: false,
        labels: BTreeMap::new(),
    };
    vec![
        Command::CreateVch { name: "default".into(), spec: VchSpec { target: "local".into(), ..Default::default() } },
        network("n1", "bridge", "10.1.0.0/24", "10.1.0.1"),
        network("n2", "back", "10.2.0.0/24", "10.2.0.1"),
    ]
}

fn record(commands: Vec<Command>) -> (DomainModel, Vec<RecordedEvent>) {
    let mut model = DomainModel::default();
    let mut events = Vec::new();
    for (index, command) in setup().into_iter().chain(commands).enumerate() {
        let Ok(decision) = model.decide(&CommandEnvelope::new("prop", command), &Context { now_ms: index as u64 }) else { continue };
        for append in decision.appends {
            let mut version = append.expected.0;
            for event in append.events {
                version += 1;
                model.apply(&append.stream, StreamVersion(version), &event);
                events.push(RecordedEvent {
                    position: Position(events.len() as u64 + 1),
                    stream: append.stream.clone(),
                    version: StreamVersion(version),
                    event_id: EventId::v7(index as u64, [0; 10]),
                    command_id: None,
                    actor: "prop".into(),
                    recorded_at_ms: index as u64,
                    schema_version: 1,
                    event,
                });
            }
        }
    }
    (model, events)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn incremental_from_any_checkpoint_equals_rebuild(commands in prop::collection::vec(command(), 1..60), split in 0usize..100) {
        let (model, events) = record(commands);
        let mut rebuilt = DockerViews::default();
        for event in &events {
            rebuilt.apply(event);
        }
        let split = split.min(events.len());
        let mut first_half = DockerViews::default();
        for event in &events[..split] {
            first_half.apply(event);
        }
        let checkpoint = rmp_serde::to_vec_named(&first_half).unwrap();
        let mut resumed: DockerViews = rmp_serde::from_slice(&checkpoint).unwrap();
        // Replaying an overlap (events already applied) must change nothing.
        for event in &events[split.saturating_sub(3)..] {
            resumed.apply(event);
        }
        prop_assert_eq!(&resumed, &rebuilt);

        // The views agree with the model on what exists and on each state.
        prop_assert_eq!(rebuilt.containers.keys().collect::<Vec<_>>(), model.containers.keys().collect::<Vec<_>>());
        for (id, container) in &model.containers {
            let view = &rebuilt.containers[id];
            prop_assert_eq!(&view.name, &container.name);
            prop_assert_eq!(view.state.as_str(), container.status.as_docker_str());
        }
        for (id, image) in &model.images {
            prop_assert_eq!(&rebuilt.images[id].tags, &image.tags);
        }
        prop_assert_eq!(rebuilt.volumes.keys().collect::<Vec<_>>(), model.volumes.keys().collect::<Vec<_>>());
        for (id, network) in &model.networks {
            prop_assert_eq!(&rebuilt.networks[id].endpoints, &network.endpoints);
        }
    }
}
