//! Virtual disks and datastore files, by datacenter-relative datastore paths
//! (`[datastore] dir/file`), through the VirtualDiskManager, the FileManager and a datastore's
//! HostDatastoreBrowser; and the contents of datastore files, moved over HTTP at
//! `/folder/<path>?dcPath=<datacenter>&dsName=<datastore>` with the SOAP session's cookie.

use std::io::{BufReader, Read};
use std::time::Duration;

use crate::client::{VimClient, VimError};
use crate::inventory::ManagedObjectRef;
use crate::xml::escape;

/// The adapter type written into new disks' descriptors; any SCSI controller can use them.
const DISK_ADAPTER_TYPE: &str = "lsiLogic";
/// New disks take datastore space as they are written.
const DISK_TYPE: &str = "thin";
/// The URL path under which vCenter and ESX serve datastore files.
const FOLDER_PREFIX: &str = "/folder/";
/// The slowest upload that is still making progress: an upload may take the request timeout
/// plus its length at this rate before it is given up (the agent's own timeout covers a whole
/// request, which a disk image of hundreds of MiB would overrun).
const MIN_UPLOAD_BYTES_PER_SECOND: u64 = 1024 * 1024;
/// Uploads are read from the caller's reader in chunks of this size.
const UPLOAD_BUFFER_BYTES: usize = 1024 * 1024;
/// How much of an error reply's body goes into the error.
const ERROR_BODY_CHARS: usize = 200;

/// File operations report a name clash as DuplicateName on some endpoints; for a file that is
/// the same as FileAlreadyExists.
fn file_error(error: VimError) -> VimError {
    match error {
        VimError::DuplicateName { message } => VimError::AlreadyExists { message },
        other => other,
    }
}

/// `scheme://host[:port]` of an `/sdk` endpoint URL.
fn server_base(endpoint: &str) -> Result<&str, VimError> {
    let (scheme, rest) =
        endpoint.split_once("://").ok_or_else(|| VimError::InvalidUrl { url: endpoint.to_string(), reason: "no scheme".to_string() })?;
    let host_length = rest.find('/').unwrap_or(rest.len());
    Ok(&endpoint[..scheme.len() + 3 + host_length])
}

/// Percent-encodes a datastore-relative path for the URL, keeping its slashes. Absolute paths,
/// empty segments and `.`/`..` segments are refused: the path names a file inside the datastore,
/// and servers would normalise such a path into another one (or out of the datastore).
fn encode_datastore_path(path: &str) -> Result<String, VimError> {
    let invalid = || VimError::InvalidSpec { message: format!("{path:?} is not a relative path of a file in a datastore") };
    if path.is_empty() || path.starts_with('/') || path.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return Err(invalid());
    }
    let mut encoded = String::with_capacity(path.len());
    for byte in path.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => encoded.push(byte as char),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    Ok(encoded)
}

/// The typed error of a non-success HTTP status of a datastore file request.
fn file_status_error(status: u16, path: &str, body: &str) -> VimError {
    let body_start: String = body.chars().take(ERROR_BODY_CHARS).collect();
    match status {
        404 => VimError::NotFound { message: format!("datastore file {path:?}") },
        // vSphere's own names for these faults, so that callers can match them like SOAP faults.
        401 => VimError::Fault {
            fault_type: "NotAuthenticated".to_string(),
            message: format!("HTTP 401 for datastore file {path:?}: the session is not logged in or has expired"),
        },
        403 => VimError::Fault {
            fault_type: "NoPermission".to_string(),
            message: format!("HTTP 403 for datastore file {path:?}: the user may not access this datastore"),
        },
        507 => VimError::NoSpace { message: format!("HTTP 507 for datastore file {path:?}: {body_start}") },
        _ => VimError::UnexpectedReply(format!("HTTP {status} for datastore file {path:?}: {body_start}")),
    }
}

/// How long an upload of `length` bytes may take.
fn upload_timeout(request_timeout: Duration, length: u64) -> Duration {
    request_timeout.saturating_add(Duration::from_secs(length / MIN_UPLOAD_BYTES_PER_SECOND))
}

impl VimClient {
    fn manager(&self, manager: Option<&ManagedObjectRef>, name: &str) -> Result<ManagedObjectRef, VimError> {
        manager.cloned().ok_or_else(|| VimError::NotSupported { message: format!("the endpoint has no {name}") })
    }

    /// Creates a thin disk of `capacity_kib` at `path` (`[ds] dir/disk.vmdk`; `dir` must exist).
    pub fn create_virtual_disk(&self, datacenter: &ManagedObjectRef, path: &str, capacity_kib: u64) -> Result<(), VimError> {
        let manager = self.manager(self.service_content().virtual_disk_manager.as_ref(), "VirtualDiskManager")?;
        self.call_task(&format!(
            r#"<CreateVirtualDisk_Task xmlns="urn:vim25">{}<name>{}</name>{}<spec xsi:type="FileBackedVirtualDiskSpec"><diskType>{DISK_TYPE}</diskType><adapterType>{DISK_ADAPTER_TYPE}</adapterType><capacityKb>{capacity_kib}</capacityKb></spec></CreateVirtualDisk_Task>"#,
            manager.to_xml("_this"),
            escape(path),
            datacenter.to_xml("datacenter")
        ))
        .map_err(file_error)?;
        Ok(())
    }

    /// Deletes a disk (its descriptor and extents); `NotFound` if there is none.
    pub fn delete_virtual_disk(&self, datacenter: &ManagedObjectRef, path: &str) -> Result<(), VimError> {
        let manager = self.manager(self.service_content().virtual_disk_manager.as_ref(), "VirtualDiskManager")?;
        self.call_task(&format!(
            r#"<DeleteVirtualDisk_Task xmlns="urn:vim25">{}<name>{}</name>{}</DeleteVirtualDisk_Task>"#,
            manager.to_xml("_this"),
            escape(path),
            datacenter.to_xml("datacenter")
        ))?;
        Ok(())
    }

    /// Makes a directory `path` (`[ds] a/b`), with its parents when `create_parents`;
    /// `AlreadyExists` if it exists (vcsim says so only without `create_parents`; callers that
    /// only need the directory to exist should accept `AlreadyExists` either way).
    pub fn make_directory(&self, datacenter: &ManagedObjectRef, path: &str, create_parents: bool) -> Result<(), VimError> {
        let manager = self.manager(self.service_content().file_manager.as_ref(), "FileManager")?;
        self.call(&format!(
            r#"<MakeDirectory xmlns="urn:vim25">{}<name>{}</name>{}<createParentDirectories>{create_parents}</createParentDirectories></MakeDirectory>"#,
            manager.to_xml("_this"),
            escape(path),
            datacenter.to_xml("datacenter")
        ))
        .map_err(file_error)?;
        Ok(())
    }

    /// Deletes a file or a directory with all it holds; `NotFound` if there is none. Disks are
    /// better deleted with [`VimClient::delete_virtual_disk`], which also removes their extents.
    pub fn delete_datastore_file(&self, datacenter: &ManagedObjectRef, path: &str) -> Result<(), VimError> {
        let manager = self.manager(self.service_content().file_manager.as_ref(), "FileManager")?;
        self.call_task(&format!(
            r#"<DeleteDatastoreFile_Task xmlns="urn:vim25">{}<name>{}</name>{}</DeleteDatastoreFile_Task>"#,
            manager.to_xml("_this"),
            escape(path),
            datacenter.to_xml("datacenter")
        ))?;
        Ok(())
    }

    /// The datacenter named `name`; `NotFound` if there is none.
    pub fn find_datacenter(&self, name: &str) -> Result<ManagedObjectRef, VimError> {
        self.retrieve_all(&[("Datacenter", &["name"])])?
            .into_iter()
            .find(|object| object.reference.kind == "Datacenter" && object.text("name") == Some(name))
            .map(|object| object.reference)
            .ok_or_else(|| VimError::NotFound { message: format!("datacenter {name:?}") })
    }

    /// A request for the datastore file at `path` (relative to the datastore, e.g.
    /// `berth/vch1/images/x/x.vmdk`) of `datastore_name` in `datacenter_name`.
    fn datastore_file_request(
        &self,
        method: &str,
        datacenter_name: &str,
        datastore_name: &str,
        path: &str,
    ) -> Result<ureq::Request, VimError> {
        let transport = self.transport();
        let url = format!("{}{FOLDER_PREFIX}{}", server_base(transport.endpoint())?, encode_datastore_path(path)?);
        Ok(transport.http_request(method, &url).query("dcPath", datacenter_name).query("dsName", datastore_name))
    }

    /// Sends a datastore file request and returns the response, whatever its status.
    fn send_file_request(&self, request: ureq::Request, body: Option<(&mut dyn Read, u64)>) -> Result<ureq::Response, VimError> {
        let sent = match body {
            // An explicit length: vSphere's file service does not take chunked uploads.
            Some((reader, length)) => request.set("Content-Length", &length.to_string()).send(reader.take(length)),
            None => request.call(),
        };
        match sent {
            Ok(response) | Err(ureq::Error::Status(_, response)) => Ok(response),
            Err(ureq::Error::Transport(transport)) => Err(self.transport().transport_error(&transport).into()),
        }
    }

    /// The response if it is a success, its typed error if not.
    fn successful(response: ureq::Response, path: &str) -> Result<ureq::Response, VimError> {
        let status = response.status();
        if (200..300).contains(&status) {
            Ok(response)
        } else {
            Err(file_status_error(status, path, &response.into_string().unwrap_or_default()))
        }
    }

    /// Writes `length` bytes of `body` to the datastore file at `path` (relative to the
    /// datastore, e.g. `berth/vch1/images/x/x-flat.vmdk`), replacing any file there; vcsim
    /// makes missing directories, vSphere needs them made first ([`VimClient::make_directory`]).
    /// `body` must hold at least `length` bytes (the request announces that length; a shorter
    /// body ends in a timeout). `NotFound` if the datacenter or datastore is unknown.
    pub fn upload_file(
        &self,
        datacenter_name: &str,
        datastore_name: &str,
        path: &str,
        body: &mut dyn Read,
        length: u64,
    ) -> Result<(), VimError> {
        let request = self
            .datastore_file_request("PUT", datacenter_name, datastore_name, path)?
            .set("Content-Type", "application/octet-stream")
            .timeout(upload_timeout(self.request_timeout(), length));
        let mut buffered = BufReader::with_capacity(UPLOAD_BUFFER_BYTES, body);
        Self::successful(self.send_file_request(request, Some((&mut buffered, length)))?, path)?;
        Ok(())
    }

    /// The contents of the datastore file at `path`; `NotFound` if there is none. The whole
    /// file is read into memory within the request timeout: this is for descriptors and checks,
    /// not for disk extents.
    pub fn download_file(&self, datacenter_name: &str, datastore_name: &str, path: &str) -> Result<Vec<u8>, VimError> {
        let request = self.datastore_file_request("GET", datacenter_name, datastore_name, path)?;
        let response = Self::successful(self.send_file_request(request, None)?, path)?;
        let mut contents = Vec::new();
        response.into_reader().read_to_end(&mut contents).map_err(|error| VimError::Unreachable {
            endpoint: self.transport().endpoint().to_string(),
            reason: format!("reading datastore file {path:?}: {error}"),
        })?;
        Ok(contents)
    }

    /// Whether the datastore file at `path` exists. Asks with HEAD, and with a one-byte GET
    /// where a server does not take HEAD (405 or 501), so that no file is transferred.
    pub fn datastore_file_exists(&self, datacenter_name: &str, datastore_name: &str, path: &str) -> Result<bool, VimError> {
        let head = self.datastore_file_request("HEAD", datacenter_name, datastore_name, path)?;
        let mut response = self.send_file_request(head, None)?;
        if matches!(response.status(), 405 | 501) {
            let ranged = self.datastore_file_request("GET", datacenter_name, datastore_name, path)?.set("Range", "bytes=0-0");
            response = self.send_file_request(ranged, None)?;
        }
        match Self::successful(response, path) {
            Ok(_) => Ok(true),
            Err(VimError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The names of the files and folders directly in `path` (`[ds] dir`) of `datastore` that
    /// match `pattern` (a glob like `*.vmdk`; `None`: all); `NotFound` if `path` does not exist.
    pub fn search_datastore(&self, datastore: &ManagedObjectRef, path: &str, pattern: Option<&str>) -> Result<Vec<String>, VimError> {
        let browser = self
            .retrieve_one(datastore, &["browser"])?
            .reference_property("browser")
            .ok_or_else(|| VimError::NotSupported { message: format!("{datastore} has no datastore browser") })?;
        // Without a match pattern vSphere matches nothing, so "all" is spelled "*".
        let result = self.call_task(&format!(
            r#"<SearchDatastore_Task xmlns="urn:vim25">{}<datastorePath>{}</datastorePath><searchSpec><matchPattern>{}</matchPattern></searchSpec></SearchDatastore_Task>"#,
            browser.to_xml("_this"),
            escape(path),
            escape(pattern.unwrap_or("*"))
        ))?;
        Ok(result
            .iter()
            .flat_map(|results| results.children_named("file"))
            .filter_map(|file| file.child_text("path"))
            .map(|name| name.trim_end_matches('/').to_string())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_clashes_of_files_are_already_exists() {
        assert!(matches!(file_error(VimError::DuplicateName { message: "x".into() }), VimError::AlreadyExists { .. }));
        assert!(matches!(file_error(VimError::NotFound { message: "x".into() }), VimError::NotFound { .. }));
    }

    #[test]
    fn datastore_file_urls_keep_the_server_and_encode_the_path() {
        assert_eq!(server_base("https://vc.example:8443/sdk").ok(), Some("https://vc.example:8443"));
        assert_eq!(server_base("http://127.0.0.1:8989/sdk").ok(), Some("http://127.0.0.1:8989"));
        assert_eq!(server_base("https://vc").ok(), Some("https://vc"));
        assert!(matches!(server_base("vc/sdk"), Err(VimError::InvalidUrl { .. })));
        assert_eq!(encode_datastore_path("berth/v 1/images/a#b?c%.vmdk").ok().as_deref(), Some("berth/v%201/images/a%23b%3Fc%25.vmdk"));
        assert_eq!(encode_datastore_path("d/é").ok().as_deref(), Some("d/%C3%A9"));
        for bad in ["", "/etc/passwd", "a/../b", "..", "a//b", "a/", "./a"] {
            assert!(matches!(encode_datastore_path(bad), Err(VimError::InvalidSpec { .. })), "{bad:?} is refused");
        }
    }

    #[test]
    fn http_statuses_of_datastore_files_are_typed() {
        assert!(matches!(file_status_error(404, "p", ""), VimError::NotFound { .. }));
        assert!(matches!(file_status_error(401, "p", ""), VimError::Fault { fault_type, .. } if fault_type == "NotAuthenticated"));
        assert!(matches!(file_status_error(403, "p", ""), VimError::Fault { fault_type, .. } if fault_type == "NoPermission"));
        assert!(matches!(file_status_error(507, "p", ""), VimError::NoSpace { .. }));
        match file_status_error(500, "p", &"x".repeat(1000)) {
            VimError::UnexpectedReply(message) => assert!(message.contains("HTTP 500") && message.len() < 300, "{message}"),
            other => panic!("expected UnexpectedReply, got {other:?}"),
        }
    }

    #[test]
    fn uploads_get_time_for_their_length() {
        let timeout = Duration::from_secs(30);
        assert_eq!(upload_timeout(timeout, 0), timeout);
        assert_eq!(upload_timeout(timeout, 600 * 1024 * 1024), Duration::from_secs(630));
        assert_eq!(upload_timeout(Duration::MAX, u64::MAX), Duration::MAX);
    }
}
