"""The Python docker SDK (docker-py 7.x) against a running berth.

Usage: DOCKER_HOST=tcp://... python3 sdk_check.py SAVED_IMAGE_TAR
Exits non-zero (with the assertion) on the first mismatch.
"""

import sys
import time

import docker


def main() -> None:
    archive = sys.argv[1]
    client = docker.from_env(timeout=60)
    assert client.ping() is True
    assert client.version()["ApiVersion"] >= "1.44"

    with open(archive, "rb") as data:
        loaded = client.images.load(data.read())
    assert any("busybox:latest" in image.tags for image in loaded), loaded
    image = client.images.get("busybox")
    assert image.id.startswith("sha256:")

    since = int(time.time()) - 1
    output = client.containers.run("busybox", ["sh", "-c", "echo from the sdk"], remove=True)
    assert output == b"from the sdk\n", output

    container = client.containers.run("busybox", ["sh", "-c", "echo ready; sleep 300"], detach=True, name="pysdk")
    deadline = time.time() + 30
    while b"ready" not in container.logs() and time.time() < deadline:
        time.sleep(0.1)
    assert container.logs() == b"ready\n", container.logs()
    container.reload()
    assert container.status == "running", container.status
    code, out = container.exec_run(["sh", "-c", "echo exec; exit 4"])
    assert (code, out) == (4, b"exec\n"), (code, out)
    assert any(c.name == "pysdk" for c in client.containers.list())

    volume = client.volumes.create(name="pyvol", labels={"sdk": "yes"})
    assert client.volumes.get("pyvol").attrs["Labels"] == {"sdk": "yes"}
    network = client.networks.create("pynet")
    network.connect(container)
    network.reload()
    assert container.id in network.attrs["Containers"], network.attrs
    network.disconnect(container)

    container.stop(timeout=1)
    container.reload()
    assert container.status == "exited"
    container.remove()
    volume.remove()
    network.remove()

    events = client.events(since=since, until=int(time.time()) + 1, decode=True, filters={"type": "container"})
    actions = [event["Action"] for event in events]
    for expected in ("create", "start", "die", "destroy"):
        assert expected in actions, (expected, actions)

    try:
        client.containers.get("nothing-here")
    except docker.errors.NotFound:
        pass
    else:
        raise AssertionError("a missing container must raise NotFound")
    try:
        client.images.get("nothing-here")
    except docker.errors.ImageNotFound:
        pass
    else:
        raise AssertionError("a missing image must raise ImageNotFound")
    print("python docker SDK: all checks passed")


if __name__ == "__main__":
    main()
