//! Bridge networks on the host: one Linux bridge per network, one veth pair per
//! (container, network), the container end inside the container's network namespace,
//! and iptables rules (commented `berth:<network id>`) for NAT and forwarding.

use crate::error::RuntimeError;
use crate::layout::fnv1a;
use crate::spec::{NetworkAttachment, NetworkSpec};
use crate::tools;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Linux interface names hold at most 15 bytes.
pub const MAX_INTERFACE_NAME_LEN: usize = 15;
/// Where `ip netns` keeps its bind-mounted namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Prefix of every iptables comment the runtime writes, so cleanup can find its rules.
pub const RULE_COMMENT_PREFIX: &str = "berth:";

/// Errors of network plumbing.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid subnet {subnet:?}: expected a.b.c.d/n")]
    BadSubnet { subnet: String },
    #[error("gateway {gateway} is outside subnet {subnet}")]
    GatewayOutsideSubnet { gateway: Ipv4Addr, subnet: String },
}

impl From<NetworkError> for RuntimeError {
    fn from(error: NetworkError) -> Self {
        RuntimeError::Invalid { what: "network", reason: error.to_string() }
    }
}

/// Parses `a.b.c.d/n` into the network address and prefix length.
pub fn parse_subnet(subnet: &str) -> Result<(Ipv4Addr, u8), NetworkError> {
    let bad = || NetworkError::BadSubnet { subnet: subnet.to_string() };
    let (address, prefix) = subnet.split_once('/').ok_or_else(bad)?;
    let address: Ipv4Addr = address.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((Ipv4Addr::from(u32::from(address) & prefix_mask(prefix)), prefix))
}

fn prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

/// The bridge of a network: `brth-` and 10 characters derived from the id.
pub fn bridge_name(network_id: &str) -> String {
    let lower = network_id.to_ascii_lowercase();
    if lower.len() >= 10 && lower.chars().all(|c| c.is_ascii_hexdigit()) {
        format!("brth-{}", &lower[..10])
    } else {
        format!("brth-{:010x}", fnv1a(&[network_id]) & 0xff_ffff_ffff)
    }
}

/// The host end of a container's veth on a network (the container end is `veth_peer_name`
/// until it is moved and renamed to `ethN`).
pub fn veth_host_name(container_id: &str, network_id: &str) -> String {
    format!("vb{:011x}", fnv1a(&[container_id, network_id]) & 0x7ff_ffff_ffff)
}

fn veth_peer_name(container_id: &str, network_id: &str) -> String {
    format!("vp{:011x}", fnv1a(&[container_id, network_id]) & 0x7ff_ffff_ffff)
}

/// The named network namespace of a container.
pub fn netns_name(container_id: &str) -> String {
    format!("berth-{container_id}")
}

pub fn netns_path(container_id: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(netns_name(container_id))
}

fn rule_comment(network_id: &str) -> String {
    format!("{RULE_COMMENT_PREFIX}{network_id}")
}

/// The `ip` and `iptables` programs.
#[derive(Debug, Clone)]
pub struct NetworkTools {
    pub ip: PathBuf,
    pub iptables: PathBuf,
}

impl NetworkTools {
    pub fn find() -> Result<NetworkTools, RuntimeError> {
        Ok(NetworkTools { ip: tools::find_tool("ip")?, iptables: tools::find_tool("iptables")? })
    }

    fn ip(&self, args: &[&str]) -> Result<String, RuntimeError> {
        tools::run_checked(&self.ip, args)
    }

    fn link_exists(&self, name: &str) -> bool {
        tools::run(&self.ip, &["link", "show", "dev", name]).is_ok_and(|output| output.status.success())
    }

    /// Creates the bridge, its gateway address, and the NAT/forwarding rules; idempotent.
    pub fn ensure_bridge(&self, network: &NetworkSpec) -> Result<(), RuntimeError> {
        let (subnet, prefix) = parse_subnet(&network.subnet)?;
        if u32::from(network.gateway) & prefix_mask(prefix) != u32::from(subnet) {
            return Err(NetworkError::GatewayOutsideSubnet { gateway: network.gateway, subnet: network.subnet.clone() }.into());
        }
        let bridge = bridge_name(&network.id);
        if !self.link_exists(&bridge) {
            self.ip(&["link", "add", "name", &bridge, "type", "bridge"])?;
        }
        self.ip(&["addr", "replace", &format!("{}/{prefix}", network.gateway), "dev", &bridge])?;
        self.ip(&["link", "set", &bridge, "up"])?;
        let subnet_text = format!("{subnet}/{prefix}");
        let comment = rule_comment(&network.id);
        let rules: Vec<(&str, &str, Vec<&str>)> = if network.internal {
            vec![
                ("filter", "FORWARD", vec!["-i", &bridge, "!", "-o", &bridge, "-j", "DROP"]),
                ("filter", "FORWARD", vec!["-o", &bridge, "!", "-i", &bridge, "-j", "DROP"]),
                ("filter", "FORWARD", vec!["-i", &bridge, "-o", &bridge, "-j", "ACCEPT"]),
            ]
        } else {
            // Containers reach the world through the host's routes; the host forwards for them.
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(RuntimeError::io("enabling IPv4 forwarding"))?;
            vec![
                ("nat", "POSTROUTING", vec!["-s", &subnet_text, "!", "-o", &bridge, "-j", "MASQUERADE"]),
                ("filter", "FORWARD", vec!["-i", &bridge, "-j", "ACCEPT"]),
                ("filter", "FORWARD", vec!["-o", &bridge, "-j", "ACCEPT"]),
            ]
        };
        for (table, chain, rule) in rules {
            self.ensure_rule(table, chain, &rule, &comment)?;
        }
        Ok(())
    }

    fn ensure_rule(&self, table: &str, chain: &str, rule: &[&str], comment: &str) -> Result<(), RuntimeError> {
        let mut check: Vec<&str> = vec!["-w", "-t", table, "-C", chain];
        check.extend_from_slice(rule);
        check.extend_from_slice(&["-m", "comment", "--comment", comment]);
        if tools::run(&self.iptables, &check)?.status.success() {
            return Ok(());
        }
        // Inserted first so a host firewall's DROP policy or rules do not shadow them.
        let mut insert: Vec<&str> = vec!["-w", "-t", table, "-I", chain, "1"];
        insert.extend_from_slice(rule);
        insert.extend_from_slice(&["-m", "comment", "--comment", comment]);
        tools::run_checked(&self.iptables, &insert).map(drop)
    }

    /// Removes the bridge and every rule commented for the network; idempotent.
    pub fn remove_bridge(&self, network_id: &str) -> Result<(), RuntimeError> {
        self.remove_rules_where(|comment| comment == rule_comment(network_id))?;
        let bridge = bridge_name(network_id);
        if self.link_exists(&bridge) {
            self.ip(&["link", "del", "dev", &bridge])?;
        }
        Ok(())
    }

    /// Deletes every iptables rule whose comment satisfies `matches` (in nat and filter).
    pub fn remove_rules_where(&self, matches: impl Fn(&str) -> bool) -> Result<(), RuntimeError> {
        for (table, chain) in [("nat", "POSTROUTING"), ("filter", "FORWARD")] {
            let listing = tools::run_checked(&self.iptables, &["-w", "-t", table, "-S", chain])?;
            for line in listing.lines() {
                let tokens: Vec<String> = line.split_whitespace().map(|token| token.trim_matches('"').to_string()).collect();
                let comment = tokens.iter().position(|token| token == "--comment").and_then(|index| tokens.get(index + 1));
                if tokens.first().map(String::as_str) != Some("-A") || !comment.is_some_and(|comment| matches(comment)) {
                    continue;
                }
                let mut delete: Vec<&str> = vec!["-w", "-t", table, "-D"];
                delete.extend(tokens[1..].iter().map(String::as_str));
                tools::run_checked(&self.iptables, &delete)?;
            }
        }
        Ok(())
    }

    /// Creates the container's named network namespace (replacing a stale one) with lo up.
    pub fn create_netns(&self, container_id: &str) -> Result<PathBuf, RuntimeError> {
        let name = netns_name(container_id);
        self.delete_netns(container_id)?;
        self.ip(&["netns", "add", &name]).map_err(|error| match error {
            RuntimeError::Command { message, .. } if message.contains("ermission") || message.contains("not permitted") => {
                RuntimeError::NamespacesUnavailable { message }
            }
            other => other,
        })?;
        self.ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(netns_path(container_id))
    }

    pub fn netns_exists(&self, container_id: &str) -> bool {
        netns_path(container_id).exists()
    }

    /// Deletes the namespace (its veth ends go with it); idempotent.
    pub fn delete_netns(&self, container_id: &str) -> Result<(), RuntimeError> {
        if self.netns_exists(container_id) {
            self.ip(&["netns", "del", &netns_name(container_id)])?;
        }
        Ok(())
    }

    /// Plugs the container into a network as `interface` with the caller's address.
    pub fn attach(&self, container_id: &str, attachment: &NetworkAttachment, interface: &str) -> Result<(), RuntimeError> {
        let host = veth_host_name(container_id, &attachment.network_id);
        let peer = veth_peer_name(container_id, &attachment.network_id);
        let namespace = netns_name(container_id);
        let bridge = bridge_name(&attachment.network_id);
        if !self.link_exists(&bridge) {
            return Err(RuntimeError::NetworkNotFound { id: attachment.network_id.clone() });
        }
        self.detach(container_id, &attachment.network_id)?;
        self.ip(&["link", "add", &host, "type", "veth", "peer", "name", &peer])?;
        let address = format!("{}/{}", attachment.ip, attachment.prefix_length);
        let steps: [Vec<&str>; 6] = [
            vec!["link", "set", &host, "master", &bridge],
            vec!["link", "set", &host, "up"],
            vec!["link", "set", &peer, "netns", &namespace],
            vec!["-n", &namespace, "link", "set", &peer, "name", interface],
            vec!["-n", &namespace, "addr", "add", &address, "dev", interface],
            vec!["-n", &namespace, "link", "set", interface, "up"],
        ];
        for step in steps {
            if let Err(error) = self.ip(&step) {
                let _ = self.detach(container_id, &attachment.network_id);
                return Err(error);
            }
        }
        Ok(())
    }

    /// Unplugs the container from a network (deleting one veth end deletes both); idempotent.
    pub fn detach(&self, container_id: &str, network_id: &str) -> Result<(), RuntimeError> {
        let host = veth_host_name(container_id, network_id);
        if self.link_exists(&host) {
            self.ip(&["link", "del", "dev", &host])?;
        }
        Ok(())
    }

    /// Interface names inside the container's namespace.
    pub fn interfaces(&self, container_id: &str) -> Result<Vec<String>, RuntimeError> {
        let text = self.ip(&["-n", &netns_name(container_id), "-o", "link", "show"])?;
        Ok(text
            .lines()
            .filter_map(|line| line.split(':').nth(1))
            .map(|name| name.trim().split('@').next().unwrap_or_default().to_string())
            .collect())
    }

    /// The first `ethN` not yet used in the container's namespace.
    pub fn free_interface_name(&self, container_id: &str) -> Result<String, RuntimeError> {
        let used = self.interfaces(container_id)?;
        let name = (0..).map(|index| format!("eth{index}")).find(|name| !used.contains(name)).unwrap_or_default();
        Ok(name)
    }

    pub fn has_default_route(&self, container_id: &str) -> Result<bool, RuntimeError> {
        let text = self.ip(&["-n", &netns_name(container_id), "route", "show", "default"])?;
        Ok(!text.trim().is_empty())
    }

    pub fn set_default_route(&self, container_id: &str, gateway: Ipv4Addr) -> Result<(), RuntimeError> {
        self.ip(&["-n", &netns_name(container_id), "route", "replace", "default", "via", &gateway.to_string()]).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_normalise() {
        assert_eq!(parse_subnet("10.1.2.3/24").unwrap(), (Ipv4Addr::new(10, 1, 2, 0), 24));
        assert_eq!(parse_subnet("0.0.0.0/0").unwrap(), (Ipv4Addr::new(0, 0, 0, 0), 0));
        for bad in ["10.1.2.0", "10.1.2.0/33", "x/24", "10.1.2.0/"] {
            assert!(parse_subnet(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        let long = "f".repeat(64);
        for name in [bridge_name(&long), bridge_name("my-net"), veth_host_name(&long, &long), veth_peer_name("a", "b")] {
            assert!(name.len() <= MAX_INTERFACE_NAME_LEN, "{name}");
        }
        assert_eq!(bridge_name("0123456789abcdef"), "brth-0123456789");
        assert_ne!(veth_host_name("c1", "n1"), veth_host_name("c1", "n2"));
    }
}
