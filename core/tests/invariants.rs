//! Property test: any sequence of commands keeps every aggregate's invariants,
//! and the versions a decision expects are the versions the model holds.

use berth_core::events::{ContainerSpec, VchSpec};
use berth_core::model::DomainModel;
use berth_core::{Command, CommandEnvelope, Context, StreamVersion};
use proptest::prelude::*;
use std::collections::BTreeMap;

const NAMES: [&str; 4] = ["aa", "bb", "cc", "dd"];
const IDS: [&str; 4] = ["c1", "c2", "c3", "c4"];
const IMAGES: [&str; 2] = [
    "sha256:1111111111111111111111111111111111111111111111111111111111111111",
    "sha256:2222222222222222222222222222222222222222222222222222222222222222",
];

fn command() -> impl Strategy<Value = Command> {
    let id = prop::sample::select(IDS.to_vec()).prop_map(String::from);
    let name = prop::sample::select(NAMES.to_vec()).prop_map(String::from);
    let image = prop::sample::select(IMAGES.to_vec()).prop_map(String::from);
    let network = prop::sample::select(vec!["n-bridge", "n-back", "n-front"]).prop_map(String::from);
    let tag = prop::sample::select(vec!["app:1", "app:2", "web"]).prop_map(String::from);
    prop_oneof![
        (id.clone(), name.clone(), image.clone(), prop::sample::select(vec!["", "back", "host", "front"])).prop_map(
            |(id, name, image_id, mode)| {
                Command::CreateContainer {
                    id,
                    name,
                    vch: "default".into(),
                    image_id,
                    spec: ContainerSpec {
                        host: berth_core::events::HostSpec { network_mode: mode.into(), ..Default::default() },
                        ..Default::default()
                    },
                }
            }
        ),
        id.clone().prop_map(|id| Command::StartContainer { id }),
        id.clone().prop_map(|id| Command::StopContainer { id, timeout_s: None }),
        id.clone().prop_map(|id| Command::KillContainer { id, signal: "KILL".into() }),
        (id.clone(), -1i64..3).prop_map(|(id, exit_code)| Command::RecordContainerExited { id, exit_code }),
        id.clone().prop_map(|id| Command::PauseContainer { id }),
        id.clone().prop_map(|id| Command::UnpauseContainer { id }),
        (id.clone(), name.clone()).prop_map(|(id, new_name)| Command::RenameContainer { id, new_name }),
        (id.clone(), any::<bool>()).prop_map(|(id, force)| Command::RemoveContainer { id, force }),
        (image.clone(), tag.clone()).prop_map(|(id, tag)| Command::RegisterImage {
            id,
            reference_tags: vec![tag],
            size_bytes: 1,
            layer_digests: vec![]
        }),
        (image.clone(), tag.clone()).prop_map(|(id, reference)| Command::TagImage { id, reference }),
        tag.prop_map(|reference| Command::UntagImage { reference }),
        (image, any::<bool>()).prop_map(|(id, force)| Command::RemoveImage { id, force }),
        (
            network.clone(),
            prop::sample::select(vec!["back", "front", "bridge"]),
            prop::sample::select(vec!["10.1.0.0/29", "10.2.0.0/30", "10.1.0.0/24"])
        )
            .prop_map(|(id, name, subnet)| {
                let gateway = subnet.replace(".0/29", ".1").replace(".0/30", ".1").replace(".0/24", ".1");
                Command::CreateNetwork {
                    id,
                    name: name.into(),
                    driver: "bridge".into(),
                    subnet: subnet.into(),
                    gateway,
                    internal: false,
                    labels: BTreeMap::new(),
                }
            }),
        network.clone().prop_map(|id| Command::RemoveNetwork { id }),
        (network.clone(), id.clone()).prop_map(|(network_id, container_id)| Command::ConnectNetwork {
            network_id,
            container_id,
            ipv4_address: None
        }),
        (network, id, any::<bool>()).prop_map(|(network_id, container_id, force)| Command::DisconnectNetwork {
            network_id,
            container_id,
            force
        }),
        any::<bool>().prop_map(|force| Command::DeleteVch { name: "default".into(), force }),
        Just(Command::CreateVch {
            name: "default".into(),
            spec: VchSpec { target: "local".into(), container_count_max: 3, ..Default::default() }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn any_command_sequence_keeps_the_invariants(commands in prop::collection::vec(command(), 1..80)) {
        let mut model = DomainModel::default();
        for (index, command) in commands.into_iter().enumerate() {
            let Ok(decision) = model.decide(&CommandEnvelope::new("prop", command.clone()), &Context { now_ms: index as u64 }) else { continue };
            for append in decision.appends {
                prop_assert_eq!(model.version(&append.stream), append.expected, "decision expects the model's version");
                let mut version = append.expected.0;
                for event in append.events {
                    version += 1;
                    model.apply(&append.stream, StreamVersion(version), &event);
                }
            }
            if let Err(broken) = model.check_invariants() {
                prop_assert!(false, "after {:?}: {}", command, broken);
            }
        }
    }
}
