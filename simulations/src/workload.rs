//! The workload: Docker-like operations drawn from the seed, mostly aimed at
//! objects that exist (so that most are accepted and state grows), sometimes
//! at ones that do not or in the wrong state (so that refusals are checked
//! too). Names come from small pools, so collisions happen often.

use crate::reference::{Op, Reference};
use crate::world::SimRng;

/// VCH names the workload uses; the reconciler serves exactly these.
pub const VCH_NAMES: [&str; 3] = ["vch-0", "vch-1", "vch-2"];
/// How many container names there are to collide on.
pub const CONTAINER_NAME_COUNT: u64 = 24;
/// How many distinct images the workload registers.
pub const IMAGE_COUNT: u64 = 5;
/// How many repositories and tags images are tagged with.
pub const REPOSITORY_COUNT: u64 = 3;
pub const TAG_COUNT: u64 = 3;
pub const VOLUME_COUNT: u64 = 5;
pub const NETWORK_NAME_COUNT: u64 = 5;
/// /28 subnets the workload draws from (fewer than names: overlaps happen).
pub const SUBNET_COUNT: u64 = 4;

/// The id of the `index`-th simulated image.
pub fn image_id(index: u64) -> String {
    format!("sha256:{index:064x}")
}

fn reference_name(rng: &SimRng) -> String {
    format!("app{}:v{}", rng.below(REPOSITORY_COUNT), rng.below(TAG_COUNT))
}

fn container_name(rng: &SimRng) -> String {
    format!("c-{}", rng.below(CONTAINER_NAME_COUNT))
}

/// Picks an existing key most of the time, otherwise something that is not there.
fn existing_or<'a, I: Iterator<Item = &'a String>>(rng: &SimRng, keys: I, count: usize, miss: impl FnOnce() -> String) -> String {
    if count == 0 || rng.chance(0.08) {
        return miss();
    }
    keys.into_iter().nth(rng.below(count as u64) as usize).cloned().unwrap_or_else(miss)
}

fn container_id(rng: &SimRng, reference: &Reference) -> String {
    existing_or(rng, reference.containers.keys(), reference.containers.len(), || rng.hex_id())
}

fn network_id(rng: &SimRng, reference: &Reference) -> String {
    existing_or(rng, reference.networks.keys(), reference.networks.len(), || rng.hex_id())
}

fn vch_name(rng: &SimRng) -> String {
    rng.pick(&VCH_NAMES).map(|name| name.to_string()).unwrap_or_default()
}

fn container_count_max(rng: &SimRng) -> u64 {
    [0, 0, 4, 10][rng.below(4) as usize]
}

/// Draws the next operation.
pub fn next_op(rng: &SimRng, reference: &Reference) -> Op {
    let roll = rng.below(100);
    match roll {
        0..=1 => Op::CreateVch { name: vch_name(rng), container_count_max: container_count_max(rng) },
        2 => Op::ConfigureVch { name: vch_name(rng), container_count_max: container_count_max(rng) },
        3 => Op::DeleteVch { name: vch_name(rng), force: rng.chance(0.5) },
        4..=17 => {
            let mounts = if rng.chance(0.2) { vec![format!("vol-{}", rng.below(VOLUME_COUNT))] } else { Vec::new() };
            let network_mode = match rng.below(10) {
                0 => "none".to_string(),
                1..=2 => format!("net-{}", rng.below(NETWORK_NAME_COUNT)),
                _ => String::new(),
            };
            Op::CreateContainer {
                id: rng.hex_id(),
                name: container_name(rng),
                vch: vch_name(rng),
                image_id: image_id(rng.below(IMAGE_COUNT)),
                mounts,
                network_mode,
            }
        }
        18..=33 => Op::Start { id: container_id(rng, reference) },
        34..=40 => {
            Op::Stop { id: container_id(rng, reference), timeout_s: if rng.chance(0.5) { Some(rng.below(20) as i64) } else { None } }
        }
        41..=44 => Op::Kill { id: container_id(rng, reference), signal: if rng.chance(0.8) { "SIGKILL".into() } else { "SIGTERM".into() } },
        45..=49 => Op::Pause { id: container_id(rng, reference) },
        50..=54 => Op::Unpause { id: container_id(rng, reference) },
        55..=57 => Op::Rename { id: container_id(rng, reference), new_name: container_name(rng) },
        58..=67 => Op::Remove { id: container_id(rng, reference), force: rng.chance(0.5) },
        68..=71 => Op::RegisterImage {
            id: image_id(rng.below(IMAGE_COUNT)),
            tags: (0..rng.below(3)).map(|_| reference_name(rng)).collect::<std::collections::BTreeSet<_>>().into_iter().collect(),
        },
        72..=74 => Op::TagImage { id: image_id(rng.below(IMAGE_COUNT)), reference: reference_name(rng) },
        75..=76 => Op::UntagImage { reference: reference_name(rng) },
        77..=78 => Op::RemoveImage { id: image_id(rng.below(IMAGE_COUNT)), force: rng.chance(0.5) },
        79..=81 => Op::CreateVolume { name: format!("vol-{}", rng.below(VOLUME_COUNT)) },
        82..=83 => Op::RemoveVolume { name: format!("vol-{}", rng.below(VOLUME_COUNT)), force: rng.chance(0.3) },
        84..=86 => Op::CreateNetwork {
            id: rng.hex_id(),
            name: format!("net-{}", rng.below(NETWORK_NAME_COUNT)),
            subnet: format!("10.0.{}.0/28", rng.below(SUBNET_COUNT) * 16),
        },
        87..=89 => Op::RemoveNetwork { id: network_id(rng, reference) },
        90..=94 => Op::Connect { network_id: network_id(rng, reference), container_id: container_id(rng, reference) },
        _ => Op::Disconnect { network_id: network_id(rng, reference), container_id: container_id(rng, reference), force: rng.chance(0.3) },
    }
}
