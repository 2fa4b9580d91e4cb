//! Recovery: berth is killed with SIGKILL while containers run. After it
//! restarts, a container that kept running is found again and obeys `stop`,
//! one that exited while berth was down is recorded as exited with its code,
//! and none is left orphaned.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::Server;

fn docker(server: &Server, config: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new("docker").args(args).env("DOCKER_HOST", server.docker_host()).env("DOCKER_CONFIG", config).output().unwrap();
    assert!(output.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn containers_survive_a_sigkilled_berth_and_are_found_again() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "echo"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let tarball = work.path().join("rootfs.tar");
    assert!(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tarball).arg(".").status().unwrap().success());

    let mut first = Server::start_in(data.path(), &[]);
    docker(&first, work.path(), &["import", tarball.to_str().unwrap(), "busybox:latest"]);
    docker(&first, work.path(), &["run", "-d", "--name", "keeper", "busybox", "sleep", "1000"]);
    docker(&first, work.path(), &["run", "-d", "--name", "shortlived", "busybox", "sh", "-c", "sleep 2; exit 4"]);
    first.child.kill().unwrap(); // SIGKILL: no shutdown path runs.
    first.child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(3));

    // The first server's address slot (its bridge) stays claimed until the end.
    let second = Server::start_in(data.path(), &[]);
    let started = Instant::now();
    loop {
        let state = docker(&second, work.path(), &["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", "shortlived"]);
        if state == "exited 4" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the exit during the outage was not recorded: {state}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(docker(&second, work.path(), &["inspect", "--format", "{{.State.Status}}", "keeper"]), "running");
    assert!(docker(&second, work.path(), &["inspect", "--format", "{{.State.Pid}}", "keeper"]).parse::<u32>().unwrap() > 0);
    docker(&second, work.path(), &["stop", "-t", "1", "keeper"]);
    assert_eq!(docker(&second, work.path(), &["inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", "keeper"]), "exited 137");
    docker(&second, work.path(), &["rm", "keeper", "shortlived"]);
    // Nothing is left in the runtime once the log says the containers are gone.
    let containers_dir = data.path().join("containers");
    let started = Instant::now();
    while std::fs::read_dir(&containers_dir).map(|mut d| d.next().is_some()).unwrap_or(false) {
        assert!(started.elapsed() < Duration::from_secs(30), "containers left behind in {}", containers_dir.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(second);
    drop(first);
}
