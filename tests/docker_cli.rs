//! The real docker CLI against a `berth serve` started by the test: every
//! command the issue lists, with Docker's output shapes and exit codes,
//! attach and exec over hijacked connections, stdin, `logs --follow`,
//! events from the log, networks that really connect containers, and bad
//! input answered in Docker's words.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::Server;

/// A berth with a busybox image, and the docker CLI pointed at it.
struct Docker {
    server: Server,
    _image_dir: tempfile::TempDir,
}

impl Docker {
    fn start() -> Docker {
        let server = Server::start();
        let image_dir = tempfile::tempdir().unwrap();
        let tarball = busybox_tarball(image_dir.path());
        let docker = Docker { server, _image_dir: image_dir };
        let imported = docker.ok(&["import", tarball.to_str().unwrap(), "busybox:latest"]);
        assert!(imported.trim().starts_with("sha256:"), "{imported}");
        docker
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("docker");
        command
            .args(args)
            .env("DOCKER_HOST", self.server.docker_host())
            .env_remove("DOCKER_CONTEXT")
            .env("DOCKER_CONFIG", self._image_dir.path());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running the docker CLI")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "docker {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).to_string()
    }

    /// Runs a command that must fail; returns (exit code, stderr).
    fn fails(&self, args: &[&str]) -> (i32, String) {
        let output = self.run(args);
        assert!(!output.status.success(), "docker {args:?} should fail: {}", String::from_utf8_lossy(&output.stdout));
        (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).to_string())
    }

    fn with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self.command(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    fn inspect(&self, format: &str, object: &str) -> String {
        self.ok(&["inspect", "--format", format, object]).trim().to_string()
    }
}

/// A root filesystem tarball with Debian's static busybox and its applets.
fn busybox_tarball(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for sub in ["tmp", "etc", "root", "var/www"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static must be installed (scripts/test.sh installs it)");
    // Relative links: `busybox --install -s` would point them at this host path.
    let applets = Command::new(root.join("bin/busybox")).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&applets.stdout).lines().filter(|a| *a != "busybox") {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    std::fs::write(root.join("var/www/index.html"), "hello from berth\n").unwrap();
    let tarball = dir.join("busybox.tar");
    let status = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tarball).arg(".").status().unwrap();
    assert!(status.success());
    tarball
}

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn containers_run_with_their_output_exit_codes_and_lifecycle() {
    let docker = Docker::start();
    assert!(docker.ok(&["version", "--format", "{{.Server.APIVersion}}"]).trim() >= "1.44");
    assert!(docker.ok(&["info", "--format", "{{.Images}} {{.OSType}}"]).contains("1 linux"));

    // run attached: output and exit code.
    assert_eq!(docker.ok(&["run", "--rm", "busybox", "echo", "hello", "world"]), "hello world\n");
    let output = docker.run(&["run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(output.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");
    // -e, -w, --entrypoint, --name
    assert_eq!(docker.ok(&["run", "--rm", "-e", "GREETING=hi", "-w", "/tmp", "busybox", "sh", "-c", "echo $GREETING $(pwd)"]), "hi /tmp\n");
    assert_eq!(docker.ok(&["run", "--rm", "--entrypoint", "/bin/echo", "busybox", "via", "entrypoint"]), "via entrypoint\n");
    // -i with stdin
    let piped = docker.with_stdin(&["run", "--rm", "-i", "busybox", "sh", "-c", "cat; echo done"], b"line one\nline two\n");
    assert_eq!(String::from_utf8_lossy(&piped.stdout), "line one\nline two\ndone\n", "{}", String::from_utf8_lossy(&piped.stderr));
    // -t without a terminal still runs
    assert!(docker.ok(&["run", "--rm", "-t", "busybox", "echo", "tty"]).contains("tty"));

    // run -d, ps, logs, stop, start, restart, kill, wait, rm
    let id = docker
        .ok(&["run", "-d", "--name", "sleeper", "busybox", "sh", "-c", "trap 'exit 0' TERM; echo started; while true; do sleep 1; done"])
        .trim()
        .to_string();
    assert_eq!(id.len(), 64);
    wait_for("the sleeper's first line", || docker.ok(&["logs", "sleeper"]).contains("started"));
    let ps = docker.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.contains("sleeper Up"), "{ps}");
    assert_eq!(docker.ok(&["ps", "-q"]).trim(), &id[..12]);
    assert_eq!(docker.ok(&["ps", "-a", "--filter", "name=sleeper", "--format", "{{.ID}}"]).trim(), &id[..12]);
    assert!(docker.ok(&["ps", "--filter", "status=exited", "-q"]).trim().is_empty());
    assert_eq!(docker.inspect("{{.State.Status}} {{.Name}}", "sleeper"), "running /sleeper");
    let pid: u32 = docker.inspect("{{.State.Pid}}", "sleeper").parse().unwrap();
    assert!(pid > 0);
    docker.ok(&["stop", "-t", "5", "sleeper"]);
    assert_eq!(docker.inspect("{{.State.Status}} {{.State.ExitCode}}", "sleeper"), "exited 0");
    docker.ok(&["start", "sleeper"]);
    assert_eq!(docker.inspect("{{.State.Status}}", "sleeper"), "running");
    docker.ok(&["restart", "-t", "5", "sleeper"]);
    assert_eq!(docker.inspect("{{.State.Status}} {{.RestartCount}}", "sleeper"), "running 2");
    docker.ok(&["kill", "sleeper"]);
    assert_eq!(docker.ok(&["wait", "sleeper"]).trim(), "137");
    assert!(docker.ok(&["ps", "-a", "--filter", "exited=137", "--format", "{{.Names}}"]).contains("sleeper"));
    let logs = docker.ok(&["logs", "--tail", "1", "sleeper"]);
    assert_eq!(logs, "started\n");
    let stamped = docker.ok(&["logs", "--timestamps", "sleeper"]);
    assert!(stamped.lines().all(|l| l.len() > 30 && l.ends_with("started")), "{stamped}");
    docker.ok(&["rename", "sleeper", "dozer"]);
    assert_eq!(docker.inspect("{{.Name}}", "dozer"), "/dozer");
    docker.ok(&["rm", "dozer"]);
    docker.fails(&["inspect", "dozer"]);

    // logs --follow ends when the container exits.
    docker.ok(&["run", "-d", "--name", "counter", "busybox", "sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.2; done"]);
    let followed = docker.ok(&["logs", "--follow", "counter"]);
    assert_eq!(followed, "1\n2\n3\n");
    // start -a attaches and returns the exit code.
    let output = docker.run(&["start", "-a", "counter"]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "1\n2\n3\n",
        "start -a exited {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    // docker attach to a running container sees its output until it exits.
    docker.ok(&["run", "-d", "--name", "talker", "busybox", "sh", "-c", "sleep 1; echo attached-out; exit 3"]);
    let attached = docker.run(&["attach", "talker"]);
    assert_eq!(String::from_utf8_lossy(&attached.stdout), "attached-out\n");
    assert_eq!(attached.status.code(), Some(3));
    docker.ok(&["create", "--name", "made", "busybox", "echo", "created"]);
    assert_eq!(docker.inspect("{{.State.Status}}", "made"), "created");
    assert_eq!(docker.ok(&["start", "-a", "made"]), "created\n");
    docker.ok(&["container", "prune", "-f"]);
    assert!(docker.ok(&["ps", "-aq"]).trim().is_empty());
}

#[test]
fn exec_pause_top_stats_update_port_diff_cp_and_export() {
    let docker = Docker::start();
    docker.ok(&["run", "-d", "--name", "box", "-p", "18080:80", "busybox", "httpd", "-f", "-p", "80", "-h", "/var/www"]);
    // exec with output and exit code, and with stdin.
    assert_eq!(docker.ok(&["exec", "box", "echo", "inside"]), "inside\n");
    assert_eq!(docker.run(&["exec", "box", "sh", "-c", "exit 5"]).status.code(), Some(5));
    let piped = docker.with_stdin(&["exec", "-i", "box", "sh", "-c", "cat > /tmp/in; cat /tmp/in"], b"via stdin\n");
    assert_eq!(String::from_utf8_lossy(&piped.stdout), "via stdin\n");
    assert!(docker.ok(&["exec", "-t", "box", "echo", "tty"]).contains("tty"));
    // top, stats, port
    let top = docker.ok(&["top", "box"]);
    assert!(top.contains("httpd"), "{top}");
    let stats = docker.ok(&["stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", "box"]);
    assert!(stats.starts_with("box "), "{stats}");
    assert_eq!(docker.ok(&["port", "box", "80"]).trim(), "0.0.0.0:18080");
    // The published port reaches httpd inside.
    let mut body = String::new();
    wait_for("the published port", || {
        body = Command::new("bash")
            .args(["-c", "exec 3<>/dev/tcp/127.0.0.1/18080 && printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        body.contains("hello from berth")
    });
    // pause/unpause
    docker.ok(&["pause", "box"]);
    assert_eq!(docker.inspect("{{.State.Status}}", "box"), "paused");
    let (code, message) = docker.fails(&["exec", "box", "true"]);
    assert_eq!(code, 1);
    assert!(message.contains("paused"), "{message}");
    docker.ok(&["unpause", "box"]);
    // update
    docker.ok(&["update", "--memory", "64m", "box"]);
    assert_eq!(docker.inspect("{{.HostConfig.Memory}}", "box"), (64 * 1024 * 1024).to_string());
    // cp both ways, diff, export
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("note.txt");
    std::fs::write(&local, "copied in\n").unwrap();
    docker.ok(&["cp", local.to_str().unwrap(), "box:/tmp/note.txt"]);
    assert_eq!(docker.ok(&["exec", "box", "cat", "/tmp/note.txt"]), "copied in\n");
    let back = dir.path().join("back.txt");
    docker.ok(&["cp", "box:/tmp/note.txt", back.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied in\n");
    let diff = docker.ok(&["diff", "box"]);
    assert!(diff.lines().any(|l| l == "A /tmp/note.txt"), "{diff}");
    let exported = dir.path().join("export.tar");
    docker.ok(&["export", "-o", exported.to_str().unwrap(), "box"]);
    let listing = Command::new("tar").arg("-tf").arg(&exported).output().unwrap();
    assert!(String::from_utf8_lossy(&listing.stdout).lines().any(|l| l.trim_start_matches("./") == "bin/busybox"));
    // exec in a stopped container is refused.
    docker.ok(&["stop", "-t", "1", "box"]);
    let (code, message) = docker.fails(&["exec", "box", "true"]);
    assert_eq!(code, 1);
    assert!(message.contains("is not running"), "{message}");
    docker.ok(&["rm", "box"]);
}

#[test]
fn images_tag_history_save_load_rmi_and_prune() {
    let docker = Docker::start();
    docker.ok(&["tag", "busybox", "registry.local/team/tool:1.0"]);
    let images = docker.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.contains("busybox:latest") && images.contains("registry.local/team/tool:1.0"), "{images}");
    let id = docker.inspect("{{.Id}}", "busybox");
    assert!(id.starts_with("sha256:"));
    assert!(docker.ok(&["history", "busybox"]).contains("Imported from -"));
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("saved.tar");
    docker.ok(&["save", "-o", archive.to_str().unwrap(), "busybox:latest"]);
    let (code, message) = docker.fails(&["rmi", &id]);
    assert_eq!(code, 1);
    assert!(message.contains("must be forced"), "{message}");
    let removed = docker.ok(&["rmi", "registry.local/team/tool:1.0"]);
    assert!(removed.contains("Untagged: registry.local/team/tool:1.0"));
    let removed = docker.ok(&["rmi", "busybox"]);
    assert!(removed.contains("Deleted: sha256:"), "{removed}");
    let loaded = docker.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains("Loaded image: busybox:latest"), "{loaded}");
    assert_eq!(docker.inspect("{{.Id}}", "busybox"), id);
    assert_eq!(docker.ok(&["run", "--rm", "busybox", "echo", "loaded"]), "loaded\n");
    // A dangling image goes with prune.
    docker.ok(&["tag", "busybox", "spare:1"]);
    docker.ok(&["rmi", "busybox"]);
    docker.ok(&["rmi", "spare:1"]);
    assert!(docker.ok(&["images", "-q"]).trim().is_empty());
    docker.ok(&["load", "-i", archive.to_str().unwrap()]);
    docker.ok(&["image", "prune", "-f"]);
    assert!(!docker.ok(&["images", "-q"]).trim().is_empty(), "tagged images survive prune");
    let (code, message) = docker.fails(&["run", "--rm", "nosuchimage"]);
    assert_eq!(code, 125);
    assert!(message.contains("nosuchimage"), "{message}");
}

#[test]
fn volumes_keep_data_across_containers() {
    let docker = Docker::start();
    docker.ok(&["volume", "create", "--label", "team=a", "data"]);
    assert!(docker.ok(&["volume", "ls", "--format", "{{.Name}}"]).lines().any(|l| l == "data"));
    assert_eq!(docker.inspect("{{.Labels.team}}", "data"), "a");
    docker.ok(&["run", "--rm", "-v", "data:/data", "busybox", "sh", "-c", "echo kept > /data/file"]);
    assert_eq!(docker.ok(&["run", "--rm", "-v", "data:/data:ro", "busybox", "cat", "/data/file"]), "kept\n");
    docker.ok(&["create", "--name", "user", "-v", "data:/data", "busybox", "true"]);
    let (code, message) = docker.fails(&["volume", "rm", "data"]);
    assert_eq!(code, 1);
    assert!(message.contains("volume is in use"), "{message}");
    docker.ok(&["rm", "user"]);
    docker.ok(&["volume", "rm", "data"]);
    docker.fails(&["volume", "inspect", "data"]);
    docker.ok(&["run", "--name", "anon", "-v", "/scratch", "busybox", "true"]);
    docker.ok(&["rm", "-v", "anon"]);
    docker.ok(&["volume", "create", "spare"]);
    docker.ok(&["volume", "prune", "-f", "--all"]);
    assert!(docker.ok(&["volume", "ls", "-q"]).trim().is_empty());
    let (code, message) = docker.fails(&["run", "--rm", "-v", "/etc:/host", "busybox", "true"]);
    assert_eq!(code, 125);
    assert!(message.contains("named volume"), "{message}");
}

#[test]
fn networks_connect_containers_by_name() {
    let docker = Docker::start();
    docker.ok(&["network", "create", "backend"]);
    let subnet = docker.inspect("{{(index .IPAM.Config 0).Subnet}}", "backend");
    assert!(subnet.ends_with("/24"), "{subnet}");
    docker.ok(&["run", "-d", "--name", "server", "--network", "backend", "busybox", "httpd", "-f", "-p", "80", "-h", "/var/www"]);
    let fetched = docker.ok(&["run", "--rm", "--network", "backend", "busybox", "wget", "-q", "-O", "-", "http://server/index.html"]);
    assert_eq!(fetched, "hello from berth\n");
    // connect/disconnect a running container.
    docker.ok(&["run", "-d", "--name", "client", "busybox", "sleep", "1000"]);
    docker.ok(&["network", "connect", "backend", "client"]);
    wait_for("client to reach server", || {
        docker.run(&["exec", "client", "wget", "-q", "-O", "-", "http://server/index.html"]).status.success()
    });
    assert!(docker.ok(&["network", "inspect", "backend", "--format", "{{range .Containers}}{{.Name}} {{end}}"]).contains("client"));
    docker.ok(&["network", "disconnect", "backend", "client"]);
    let (code, message) = docker.fails(&["network", "rm", "backend"]);
    assert_eq!(code, 1);
    assert!(message.contains("active endpoints"), "{message}");
    // host and none
    let none = docker.ok(&["run", "--rm", "--network", "none", "busybox", "ip", "-o", "link"]);
    assert_eq!(none.lines().count(), 1, "{none}");
    let host_links = docker.ok(&["run", "--rm", "--network", "host", "busybox", "ip", "-o", "link"]);
    assert!(host_links.lines().count() > 1);
    docker.ok(&["rm", "-f", "server", "client"]);
    docker.ok(&["network", "rm", "backend"]);
    docker.ok(&["network", "create", "spare"]);
    docker.ok(&["network", "prune", "-f"]);
    let names = docker.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert_eq!(names.lines().collect::<std::collections::BTreeSet<_>>(), ["bridge", "host", "none"].into_iter().collect());
    let (_, message) = docker.fails(&["network", "rm", "bridge"]);
    assert!(message.contains("pre-defined"), "{message}");
}

#[test]
fn events_come_from_the_log_with_filters() {
    let docker = Docker::start();
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 1;
    docker.ok(&["run", "--name", "evented", "busybox", "true"]);
    docker.ok(&["rm", "evented"]);
    docker.ok(&["volume", "create", "evvol"]);
    let until = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1;
    let events = docker.ok(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        "type=container",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    ]);
    let lines: Vec<&str> = events.lines().collect();
    for expected in ["create evented", "start evented", "die evented", "destroy evented"] {
        assert!(lines.contains(&expected), "missing {expected:?} in {events}");
    }
    assert!(!events.contains("evvol"));
    let volumes = docker.ok(&[
        "events",
        "--since",
        "0",
        "--until",
        &until.to_string(),
        "--filter",
        "type=volume",
        "--format",
        "{{.Action}} {{.Actor.ID}}",
    ]);
    assert!(volumes.contains("create evvol"), "{volumes}");
    assert!(docker.ok(&["system", "df"]).contains("Images"));
}

#[test]
fn bad_input_gets_dockers_errors() {
    let docker = Docker::start();
    let server = &docker.server;
    let (status, _, body) = server.post("/v1.47/containers/create", "{not json");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("message"));
    let (status, _, body) = server.post("/v1.47/containers/create", r#"{"Image":"busybox","Cmd":42}"#);
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = server.post("/v1.47/containers/create?name=bad%20name", r#"{"Image":"busybox","Cmd":["true"]}"#);
    assert_eq!(status, 400);
    let (status, _, body) = server.post("/v1.47/containers/create", r#"{"Image":"missing","Cmd":["true"]}"#);
    assert_eq!(status, 404);
    assert!(body.contains("No such image"), "{body}");
    docker.ok(&["create", "--name", "taken", "busybox", "true"]);
    let (code, message) = docker.fails(&["create", "--name", "taken", "busybox", "true"]);
    assert_eq!(code, 1);
    assert!(message.contains("is already in use"), "{message}");
    docker.ok(&["run", "-d", "--name", "busy", "busybox", "sleep", "1000"]);
    let (code, message) = docker.fails(&["rm", "busy"]);
    assert_eq!(code, 1);
    assert!(message.contains("stop the container before removing or force remove"), "{message}");
    docker.ok(&["rm", "-f", "busy"]);
    let (_, message) = docker.fails(&["start", "busy"]);
    assert!(message.contains("No such container"), "{message}");
    let (status, _, _) = server.post("/v1.47/networks/create", r#"{"Name":"n1","IPAM":{"Config":[{"Subnet":"300.1.0.0/24"}]}}"#);
    assert_eq!(status, 400);
    let (status, _, _) = server.post("/v1.47/volumes/create", r#"{"Name":"-bad"}"#);
    assert_eq!(status, 400);
    let (status, _, _) = server.post("/v1.47/containers/taken/exec", r#"{"Cmd":["true"]}"#);
    assert_eq!(status, 409);
    // The server is still healthy after all of it.
    assert_eq!(server.get("/_ping").0, 200);
}
