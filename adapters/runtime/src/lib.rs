//! The local runtime: containers as isolated processes on this Linux host, run by runc, each
//! supervised by its own shim process (`berth runtime-shim`) that outlives berth, with real
//! bridge networks, published ports, cgroup limits and a Docker json-file log.
//!
//! Every operation is blocking; async callers wrap them in `spawn_blocking`.

mod attach;
mod error;
mod exec;
mod layout;
mod logfile;
mod network;
mod oci;
mod protocol;
mod proxy;
mod runc;
mod runtime;
pub mod shim;
mod spec;
mod sys;
mod tools;

pub use attach::{AttachEvent, AttachInput, AttachOutput, Attachment};
pub use error::RuntimeError;
pub use exec::{ExecProcess, TerminalStream, COMMAND_NOT_EXECUTABLE_EXIT_CODE, COMMAND_NOT_FOUND_EXIT_CODE};
pub use layout::MAX_ID_LEN;
pub use logfile::{read_log, rfc3339_nano, LogEntry, OutputStream};
pub use network::{bridge_name, netns_name, veth_host_name, MAX_INTERFACE_NAME_LEN, RULE_COMMENT_PREFIX};
pub use runtime::{LocalRuntime, EXEC_START_TIMEOUT, KILL_WAIT_TIMEOUT, LOST_EXIT_CODE, SHIM_REPORT_TIMEOUT};
pub use spec::{
    ContainerRunSpec, ExecSpec, Mount, NetworkAttachment, NetworkMode, NetworkSpec, PortBinding, PortProtocol, ProcessInfo, PublishedPort,
    ResourceStats, Resources, RuntimeState, StartedContainer,
};
