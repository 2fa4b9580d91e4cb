//! Connecting to NATS: one client per relay or follower, connected in the
//! background and reconnected forever, so a NATS that is down at start or
//! restarts later only delays the copy, never stops berth.

use std::time::Duration;

/// How long a start waits for the first connection before reporting NATS as unreachable.
pub const CONNECT_WAIT: Duration = Duration::from_secs(5);
/// The longest pause between two reconnect attempts.
pub const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);
/// How often a wait for the connection looks at its state.
const CONNECTED_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// The first pause between reconnect attempts; it doubles up to [`RECONNECT_DELAY_MAX`].
const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("bad NATS address {url:?}: {reason}")]
    BadAddress { url: String, reason: String },
    #[error("cannot connect to NATS at {url}: {reason}")]
    Connect { url: String, reason: String },
}

/// A client that connects in the background; see [`wait_connected`].
pub async fn connect(url: &str, client_name: &str) -> Result<async_nats::Client, ConnectionError> {
    let options = async_nats::ConnectOptions::new()
        .name(client_name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(CONNECT_WAIT)
        .reconnect_delay_callback(|attempts| {
            let shift = attempts.min(16) as u32;
            RECONNECT_DELAY_MIN.saturating_mul(1u32 << shift).min(RECONNECT_DELAY_MAX)
        });
    // Several servers (a cluster) are given as a comma-separated list; the
    // client also learns the cluster's other members from the one it reaches.
    let mut addresses = Vec::new();
    for part in url.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let address = part
            .parse::<async_nats::ServerAddr>()
            .map_err(|error| ConnectionError::BadAddress { url: url.to_string(), reason: error.to_string() })?;
        addresses.push(address);
    }
    if addresses.is_empty() {
        return Err(ConnectionError::BadAddress { url: url.to_string(), reason: "no server given".to_string() });
    }
    options.connect(addresses).await.map_err(|error| match error.kind() {
        async_nats::ConnectErrorKind::ServerParse => ConnectionError::BadAddress { url: url.to_string(), reason: error.to_string() },
        _ => ConnectionError::Connect { url: url.to_string(), reason: error.to_string() },
    })
}

pub fn is_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Waits up to `timeout` for the client to be connected.
pub async fn wait_connected(client: &async_nats::Client, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while !is_connected(client) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(CONNECTED_POLL_INTERVAL).await;
    }
    true
}
