//! Change notification through the PropertyCollector's WaitForUpdatesEx: the update sets it
//! returns, the dedicated collectors that keep concurrent waits apart, and [`VmWatch`], which
//! reports VMs' power state and extraConfig changes since the previous call.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::client::{VimClient, VimError};
use crate::inventory::{extra_config_from, ManagedObjectRef, PowerState};
use crate::xml::{escape, XmlElement};

/// The shortest round of an empty wait: maxWaitSeconds 0 returns at once on vCenter, so
/// without a pause a wait under a second (or a short request timeout) would be a busy loop.
const MIN_WAIT_ROUND: Duration = Duration::from_millis(100);

/// How an object changed between two update sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The object is new to the watch (every object on the first call).
    Enter,
    /// Some watched properties of the object changed.
    Modify,
    /// The object is gone (destroyed, or out of the watched container).
    Leave,
}

impl ChangeKind {
    fn parse(text: &str) -> Option<ChangeKind> {
        match text {
            "enter" => Some(ChangeKind::Enter),
            "modify" => Some(ChangeKind::Modify),
            "leave" => Some(ChangeKind::Leave),
            _ => None,
        }
    }
}

/// One property change of an update set; `value` is `None` when the property was removed or unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PropertyChange {
    pub name: String,
    pub value: Option<XmlElement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectUpdate {
    pub kind: ChangeKind,
    pub object: ManagedObjectRef,
    pub changes: Vec<PropertyChange>,
}

/// The reply of WaitForUpdatesEx: the version to pass next time and the objects that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UpdateSet {
    pub version: String,
    pub objects: Vec<ObjectUpdate>,
    /// More updates are waiting: call again at once with the new version.
    pub truncated: bool,
}

impl UpdateSet {
    fn from_element(element: &XmlElement) -> Result<UpdateSet, VimError> {
        let version = element
            .child_text("version")
            .ok_or_else(|| VimError::UnexpectedReply("WaitForUpdatesEx returned an update set without a version".to_string()))?
            .to_string();
        let mut objects = Vec::new();
        for object in element.children_named("filterSet").flat_map(|filter| filter.children_named("objectSet")) {
            let (Some(kind), Some(reference)) =
                (object.child_text("kind").and_then(ChangeKind::parse), object.child("obj").and_then(ManagedObjectRef::from_element))
            else {
                return Err(VimError::UnexpectedReply("WaitForUpdatesEx returned an object update without kind or obj".to_string()));
            };
            let changes = object
                .children_named("changeSet")
                .filter_map(|change| {
                    let removed = matches!(change.child_text("op"), Some("remove") | Some("indirectRemove"));
                    Some(PropertyChange {
                        name: change.child_text("name")?.to_string(),
                        value: if removed { None } else { change.child("val").cloned() },
                    })
                })
                .collect();
            objects.push(ObjectUpdate { kind, object: reference, changes });
        }
        Ok(UpdateSet { version, objects, truncated: element.child_text("truncated") == Some("true") })
    }
}

impl VimClient {
    /// A new PropertyCollector of this session, so that its filters and update versions are
    /// not shared with other waits (a collector reports the changes of all its filters).
    pub(crate) fn create_property_collector(&self) -> Result<ManagedObjectRef, VimError> {
        let reply = self.call(&format!(
            r#"<CreatePropertyCollector xmlns="urn:vim25">{}</CreatePropertyCollector>"#,
            self.service_content().property_collector.to_xml("_this")
        ))?;
        reply
            .child("returnval")
            .and_then(ManagedObjectRef::from_element)
            .ok_or_else(|| VimError::UnexpectedReply("CreatePropertyCollector returned no collector".to_string()))
    }

    /// Destroys a collector made by [`VimClient::create_property_collector`] and its filters.
    pub(crate) fn destroy_property_collector(&self, collector: &ManagedObjectRef) -> Result<(), VimError> {
        self.call(&format!(r#"<DestroyPropertyCollector xmlns="urn:vim25">{}</DestroyPropertyCollector>"#, collector.to_xml("_this")))?;
        Ok(())
    }

    /// Adds a filter to `collector`: the properties `paths` of objects of `kind`, either `object`
    /// itself or, with `through_view`, the objects of that ContainerView.
    pub(crate) fn create_filter(
        &self,
        collector: &ManagedObjectRef,
        kind: &str,
        paths: &[&str],
        object: &ManagedObjectRef,
        through_view: bool,
    ) -> Result<(), VimError> {
        let path_set: String = paths.iter().map(|path| format!("<pathSet>{}</pathSet>", escape(path))).collect();
        let object_set = if through_view {
            format!(
                r#"<objectSet>{}<skip>true</skip><selectSet xsi:type="TraversalSpec"><name>view</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet></objectSet>"#,
                object.to_xml("obj")
            )
        } else {
            format!("<objectSet>{}<skip>false</skip></objectSet>", object.to_xml("obj"))
        };
        self.call(&format!(
            r#"<CreateFilter xmlns="urn:vim25">{}<spec><propSet><type>{}</type>{path_set}</propSet>{object_set}</spec><partialUpdates>false</partialUpdates></CreateFilter>"#,
            collector.to_xml("_this"),
            escape(kind)
        ))?;
        Ok(())
    }

    /// One WaitForUpdatesEx on `collector`: `version` `None` returns the current state at once;
    /// otherwise it waits up to `max_wait_seconds` for changes and returns `None` if there were none.
    pub(crate) fn wait_for_updates(
        &self,
        collector: &ManagedObjectRef,
        version: Option<&str>,
        max_wait_seconds: u32,
    ) -> Result<Option<UpdateSet>, VimError> {
        let version = version.map(|version| format!("<version>{}</version>", escape(version))).unwrap_or_default();
        let reply = self.call(&format!(
            r#"<WaitForUpdatesEx xmlns="urn:vim25">{}{version}<options><maxWaitSeconds>{max_wait_seconds}</maxWaitSeconds></options></WaitForUpdatesEx>"#,
            collector.to_xml("_this")
        ))?;
        reply.child("returnval").map(UpdateSet::from_element).transpose()
    }

    /// Waits for updates on `collector` until there are some or `deadline` passes, never longer
    /// than a request may take; returns the update sets (several when they were truncated).
    pub(crate) fn wait_for_updates_until(
        &self,
        collector: &ManagedObjectRef,
        version: &mut Option<String>,
        deadline: Instant,
    ) -> Result<Vec<UpdateSet>, VimError> {
        let mut sets = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            // After a truncated set the rest is already waiting: fetch it without waiting.
            let seconds = if sets.is_empty() { self.update_wait_seconds(remaining) } else { 0 };
            let started = Instant::now();
            match self.wait_for_updates(collector, version.as_deref(), seconds)? {
                Some(set) => {
                    *version = Some(set.version.clone());
                    let truncated = set.truncated;
                    sets.push(set);
                    if !truncated {
                        return Ok(sets);
                    }
                }
                None if !sets.is_empty() => return Ok(sets),
                None => {
                    // A reply that came back at once (maxWaitSeconds 0, or a server that does
                    // not wait) is followed by a pause, so that this never spins.
                    let pause = MIN_WAIT_ROUND.saturating_sub(started.elapsed());
                    thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                    if Instant::now() >= deadline {
                        return Ok(sets);
                    }
                }
            }
        }
    }

    /// Starts watching every VM's power state and extraConfig with its own collector and view.
    pub fn watch_virtual_machines(&self) -> Result<VmWatch, VimError> {
        let collector = self.create_property_collector()?;
        let view = match self.create_container_view(&["VirtualMachine"]) {
            Ok(view) => view,
            Err(error) => {
                // The first error is the one to report; the collector dies with the session anyway.
                let _ = self.destroy_property_collector(&collector);
                return Err(error);
            }
        };
        let watch = VmWatch { collector, view, version: Mutex::new(None) };
        if let Err(error) = self.create_filter(&watch.collector, "VirtualMachine", VM_WATCH_PATHS, &watch.view, true) {
            let _ = watch.close(self);
            return Err(error);
        }
        Ok(watch)
    }
}

/// The VM properties a [`VmWatch`] reports.
const VM_WATCH_PATHS: &[&str] = &["runtime.powerState", "config.extraConfig"];

/// A change of one VM seen by a [`VmWatch`]; a property is `Some` when it is part of the change
/// (always for [`ChangeKind::Enter`], never for [`ChangeKind::Leave`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmChange {
    pub vm: ManagedObjectRef,
    pub kind: ChangeKind,
    pub power_state: Option<PowerState>,
    /// The whole extraConfig after the change (keys with empty values are removed, as in vSphere).
    pub extra_config: Option<BTreeMap<String, String>>,
}

/// A watch of all VMs' power state and extraConfig through WaitForUpdatesEx, with its own
/// PropertyCollector and ContainerView; close it with [`VmWatch::close`].
///
/// vcsim (govmomi 0.24) reports power state changes and new and destroyed VMs, but not
/// extraConfig changes made by ReconfigVM_Task (it changes them without telling its
/// collectors); vCenter reports both.
#[derive(Debug)]
pub struct VmWatch {
    collector: ManagedObjectRef,
    view: ManagedObjectRef,
    /// The version of the last update set; `None` until the first call. The lock also keeps two
    /// calls on one watch from sharing a version.
    version: Mutex<Option<String>>,
}

impl VmWatch {
    /// The changes since the previous call (the first call: every VM, as entered), waiting up
    /// to `max_wait` (in whole seconds; under one second: a single check) for some to happen.
    pub fn wait(&self, client: &VimClient, max_wait: Duration) -> Result<Vec<VmChange>, VimError> {
        let mut version = match self.version.lock() {
            Ok(version) => version,
            // A panic in another waiter cannot leave the version half-written: it is one assignment.
            Err(poisoned) => poisoned.into_inner(),
        };
        let deadline = Instant::now() + max_wait;
        let sets = client.wait_for_updates_until(&self.collector, &mut version, deadline)?;
        Ok(sets.iter().flat_map(|set| set.objects.iter()).filter(|update| update.object.kind == "VirtualMachine").map(vm_change).collect())
    }

    /// Destroys the watch's collector (with its filter) and view.
    pub fn close(self, client: &VimClient) -> Result<(), VimError> {
        let collector = client.destroy_property_collector(&self.collector);
        let view = client.destroy_view(&self.view);
        collector.and(view)
    }
}

fn vm_change(update: &ObjectUpdate) -> VmChange {
    let value = |name: &str| update.changes.iter().find(|change| change.name == name);
    let mut change = VmChange { vm: update.object.clone(), kind: update.kind, power_state: None, extra_config: None };
    match update.kind {
        ChangeKind::Leave => {}
        ChangeKind::Enter | ChangeKind::Modify => {
            if let Some(power) = value("runtime.powerState") {
                change.power_state = power.value.as_ref().and_then(|value| PowerState::parse(value.text.trim()));
            }
            let extra_config = value("config.extraConfig");
            if extra_config.is_some() || update.kind == ChangeKind::Enter {
                change.extra_config =
                    Some(extra_config.and_then(|change| change.value.as_ref()).map(extra_config_from).unwrap_or_default());
            }
        }
    }
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_update_sets_into_vm_changes() {
        let document = r#"<returnval xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><version>7</version><filterSet><filter type="PropertyFilter">f</filter>
            <objectSet><kind>modify</kind><obj type="VirtualMachine">vm-1</obj><changeSet><name>runtime.powerState</name><op>assign</op><val xsi:type="VirtualMachinePowerState">suspended</val></changeSet></objectSet>
            <objectSet><kind>enter</kind><obj type="VirtualMachine">vm-2</obj><changeSet><name>config.extraConfig</name><op>assign</op><val xsi:type="ArrayOfOptionValue"><OptionValue xsi:type="OptionValue"><key>a</key><value xsi:type="xsd:string">1</value></OptionValue><OptionValue xsi:type="OptionValue"><key>gone</key><value xsi:type="xsd:string"></value></OptionValue></val></changeSet></objectSet>
            <objectSet><kind>leave</kind><obj type="VirtualMachine">vm-3</obj></objectSet></filterSet></returnval>"#;
        let set = UpdateSet::from_element(&XmlElement::parse_document(document).expect("xml")).expect("update set");
        assert_eq!(set.version, "7");
        assert!(!set.truncated);
        let changes: Vec<VmChange> = set.objects.iter().map(vm_change).collect();
        assert_eq!(changes[0].kind, ChangeKind::Modify);
        assert_eq!(changes[0].power_state, Some(PowerState::Suspended));
        assert_eq!(changes[0].extra_config, None);
        assert_eq!(changes[1].kind, ChangeKind::Enter);
        assert_eq!(changes[1].power_state, None);
        assert_eq!(changes[1].extra_config, Some(BTreeMap::from([("a".to_string(), "1".to_string())])));
        assert_eq!(
            changes[2],
            VmChange {
                vm: ManagedObjectRef::new("VirtualMachine", "vm-3"),
                kind: ChangeKind::Leave,
                power_state: None,
                extra_config: None
            }
        );
    }

    #[test]
    fn rejects_update_sets_without_version_or_kind() {
        let no_version = XmlElement::parse_document("<returnval/>").expect("xml");
        assert!(matches!(UpdateSet::from_element(&no_version), Err(VimError::UnexpectedReply(_))));
        let no_kind = XmlElement::parse_document(r#"<returnval><version>1</version><filterSet><objectSet><obj type="VirtualMachine">vm-1</obj></objectSet></filterSet></returnval>"#)
            .expect("xml");
        assert!(matches!(UpdateSet::from_element(&no_kind), Err(VimError::UnexpectedReply(_))));
    }
}
