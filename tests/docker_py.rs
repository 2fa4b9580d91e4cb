//! The Python docker SDK (docker-py 7.x) against a `berth serve` started by
//! the test: containers.run with output, logs, exec_run, images.load,
//! volumes, networks and events (tests/python/sdk_check.py).

mod support;

use std::process::Command;
use support::Server;

#[test]
fn the_python_docker_sdk_works() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    // Build a busybox image with the docker CLI, save it, and let the SDK load it.
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed by scripts/test.sh");
    let applets = Command::new(root.join("bin/busybox")).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&applets.stdout).lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let tarball = dir.path().join("rootfs.tar");
    assert!(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tarball).arg(".").status().unwrap().success());
    let docker = |args: &[&str]| {
        let output =
            Command::new("docker").args(args).env("DOCKER_HOST", server.docker_host()).env("DOCKER_CONFIG", dir.path()).output().unwrap();
        assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    docker(&["import", tarball.to_str().unwrap(), "busybox:latest"]);
    let archive = dir.path().join("busybox-saved.tar");
    docker(&["save", "-o", archive.to_str().unwrap(), "busybox:latest"]);
    docker(&["rmi", "busybox"]);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/sdk_check.py");
    let output = Command::new("python3").arg(script).arg(&archive).env("DOCKER_HOST", server.docker_host()).output().unwrap();
    assert!(
        output.status.success(),
        "sdk_check.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("all checks passed"));
}
