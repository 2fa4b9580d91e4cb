"""Lists a vSphere inventory through pyvmomi, independently of berth's own VIM25 client.

Usage: python3 vsphere_inventory.py --url http://127.0.0.1:PORT/sdk --user U --password P

Prints one JSON object on stdout:
  {"virtual_machines": [{"name", "power_state", "extra_config": {key: value},
                         "resource_pool", "folder", "memory_mib", "num_cpu",
                         "disks": [fileName...], "networks": [name...]}...],
   "resource_pools": [{"name", "parent", "cpu_limit_mhz", "memory_limit_mib"}...],
   "folders": [{"name", "parent", "child_types": [...]}...]}  (the root folder first, its parent null)
https targets are accepted without checking their certificate (vcsim's is self-signed).
Exits non-zero with a message on stderr when it cannot connect.
"""

import argparse
import json
import sys
from urllib.parse import urlsplit

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl


def connect(url: str, user: str, password: str):
    parts = urlsplit(url)
    protocol = parts.scheme or "https"
    port = parts.port or (80 if protocol == "http" else 443)
    arguments = dict(protocol=protocol, host=parts.hostname, port=port, user=user, pwd=password, path=parts.path or "/sdk")
    if protocol == "https":
        arguments["disableSslCertValidation"] = True
    return SmartConnect(**arguments)


def objects_of(content, kind):
    view = content.viewManager.CreateContainerView(content.rootFolder, [kind], True)
    try:
        return list(view.view)
    finally:
        view.Destroy()


def name_of(entity):
    return entity.name if entity is not None else None


def limit_of(allocation):
    if allocation is None or allocation.limit is None or allocation.limit < 0:
        return None
    return allocation.limit


def virtual_machine(vm):
    config = vm.config
    devices = config.hardware.device if config is not None and config.hardware is not None else []
    disks = [
        device.backing.fileName
        for device in devices
        if isinstance(device, vim.vm.device.VirtualDisk) and getattr(device.backing, "fileName", None)
    ]
    return {
        "name": vm.name,
        "power_state": str(vm.runtime.powerState),
        "extra_config": {option.key: str(option.value) for option in (config.extraConfig if config is not None else [])},
        "resource_pool": name_of(vm.resourcePool),
        "folder": name_of(vm.parent),
        "memory_mib": config.hardware.memoryMB if config is not None else None,
        "num_cpu": config.hardware.numCPU if config is not None else None,
        "disks": disks,
        "networks": [network.name for network in vm.network],
    }


def resource_pool(pool):
    config = pool.config
    return {
        "name": pool.name,
        "parent": name_of(pool.parent),
        "cpu_limit_mhz": limit_of(config.cpuAllocation if config is not None else None),
        "memory_limit_mib": limit_of(config.memoryAllocation if config is not None else None),
    }


def folder(entry, is_root=False):
    # Reading the root folder's unset parent crashes vcsim's handler (it drops the connection).
    parent = None if is_root else name_of(entry.parent)
    return {"name": entry.name, "parent": parent, "child_types": list(entry.childType)}


def still_there(describe, objects):
    """Describes each object, skipping those destroyed between the listing and the read
    (the system under test keeps changing the inventory while it is read)."""
    described = []
    for entry in objects:
        try:
            described.append(describe(entry))
        except vmodl.fault.ManagedObjectNotFound:
            continue
    return described


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    arguments = parser.parse_args()
    try:
        instance = connect(arguments.url, arguments.user, arguments.password)
    except Exception as error:  # noqa: BLE001 - any failure to connect is reported the same way
        print(f"cannot connect to {arguments.url}: {error!r}", file=sys.stderr)
        sys.exit(2)
    try:
        content = instance.RetrieveContent()
        # VirtualApp is a ResourcePool subtype; vApps are listed among the pools.
        snapshot = {
            "virtual_machines": still_there(virtual_machine, objects_of(content, vim.VirtualMachine)),
            "resource_pools": still_there(resource_pool, objects_of(content, vim.ResourcePool)),
            "folders": [folder(content.rootFolder, is_root=True)] + still_there(folder, objects_of(content, vim.Folder)),
        }
    finally:
        Disconnect(instance)
    json.dump(snapshot, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
