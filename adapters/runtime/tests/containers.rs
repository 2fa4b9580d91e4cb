//! Container lifecycle against real runc: run, log, exit codes, stop, kill, pause, exec,
//! attach, limits and recovery after the runtime is reopened.

mod common;

use berth_runtime::*;
use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// A long-running init that honours SIGTERM: as PID 1 of its namespace, a process without a
/// handler ignores TERM (as with Docker, `sleep` alone would only go at the SIGKILL).
const TERM_AWARE_SLEEPER: &str = "trap 'exit 143' TERM; echo up; while true; do sleep 0.1; done";

#[test]
fn echo_output_lands_in_the_log_with_exit_code_zero() {
    let fixture = Fixture::new();
    let id = unique_id("echo");
    let spec = fixture.spec(&id, "echo $GREETING world; echo oops >&2");
    let _guard = fixture.create(&spec);
    assert_eq!(fixture.runtime.state(&id).unwrap(), RuntimeState::Created);
    let started = fixture.runtime.start(&id).unwrap();
    assert!(started.pid > 0);
    assert_eq!(fixture.runtime.wait_exit(&id, Some(TEST_WAIT_TIMEOUT)).unwrap(), Some(0));
    let entries = read_log(&fixture.runtime.log_path(&id)).unwrap();
    assert!(entries.iter().any(|entry| entry.log == "hello world\n" && entry.stream == OutputStream::Stdout), "{entries:?}");
    assert!(entries.iter().any(|entry| entry.log == "oops\n" && entry.stream == OutputStream::Stderr), "{entries:?}");
    match fixture.runtime.state(&id).unwrap() {
        RuntimeState::Exited { exit_code: 0, finished_at_unix_ms } => assert!(finished_at_unix_ms > 0),
        other => panic!("unexpected state {other:?}"),
    }
}

#[test]
fn exit_codes_are_recorded_and_a_restart_appends_to_the_log() {
    let fixture = Fixture::new();
    let id = unique_id("exit3");
    let _guard = fixture.create(&fixture.spec(&id, "echo run; exit 3"));
    fixture.runtime.start(&id).unwrap();
    assert_eq!(fixture.runtime.wait_exit(&id, Some(TEST_WAIT_TIMEOUT)).unwrap(), Some(3));
    fixture.runtime.start(&id).unwrap();
    assert_eq!(fixture.runtime.wait_exit(&id, Some(TEST_WAIT_TIMEOUT)).unwrap(), Some(3));
    assert_eq!(fixture.log_text(&id), "run\nrun\n");
}

#[test]
fn stop_sends_term_and_reports_143() {
    let fixture = Fixture::new();
    let id = unique_id("stopterm");
    let _guard = fixture.create(&fixture.spec(&id, TERM_AWARE_SLEEPER));
    fixture.runtime.start(&id).unwrap();
    assert!(matches!(fixture.runtime.state(&id).unwrap(), RuntimeState::Running { .. }));
    eventually("the trap to be installed", || fixture.log_text(&id).contains("up"));
    assert!(matches!(fixture.runtime.start(&id), Err(RuntimeError::AlreadyRunning { .. })));
    let began = Instant::now();
    assert_eq!(fixture.runtime.stop(&id, 0, Duration::from_secs(10)).unwrap(), 143);
    assert!(began.elapsed() < Duration::from_secs(5));
    // Stopping an exited container answers its recorded exit code.
    assert_eq!(fixture.runtime.stop(&id, 0, Duration::from_secs(1)).unwrap(), 143);
}

#[test]
fn stop_kills_after_the_timeout_when_term_is_ignored() {
    let fixture = Fixture::new();
    let id = unique_id("stopkill");
    let _guard = fixture.create(&fixture.spec(&id, "trap '' TERM; echo ready; while true; do sleep 1; done"));
    fixture.runtime.start(&id).unwrap();
    eventually("the trap to be installed", || fixture.log_text(&id).contains("ready"));
    let began = Instant::now();
    assert_eq!(fixture.runtime.stop(&id, 0, Duration::from_millis(500)).unwrap(), 137);
    assert!(began.elapsed() >= Duration::from_millis(500));
}

#[test]
fn kill_delivers_any_signal() {
    let fixture = Fixture::new();
    let id = unique_id("kill");
    let _guard = fixture.create(&fixture.spec(&id, "trap 'echo got usr1; exit 9' USR1; echo ready; while true; do sleep 0.1; done"));
    assert!(matches!(fixture.runtime.kill(&id, libc::SIGKILL), Err(RuntimeError::NotRunning { .. })));
    fixture.runtime.start(&id).unwrap();
    eventually("the trap to be installed", || fixture.log_text(&id).contains("ready"));
    fixture.runtime.kill(&id, libc::SIGUSR1).unwrap();
    assert_eq!(fixture.runtime.wait_exit(&id, Some(TEST_WAIT_TIMEOUT)).unwrap(), Some(9));
    assert!(fixture.log_text(&id).contains("got usr1"));
    assert!(fixture.runtime.kill(&id, 0).is_err());

    let sleeper = unique_id("kill9");
    let _sleeper_guard = fixture.create(&fixture.spec(&sleeper, "exec sleep 1000"));
    fixture.runtime.start(&sleeper).unwrap();
    fixture.runtime.kill(&sleeper, libc::SIGKILL).unwrap();
    assert_eq!(fixture.runtime.wait_exit(&sleeper, Some(TEST_WAIT_TIMEOUT)).unwrap(), Some(137));
}

#[test]
fn pause_freezes_and_unpause_thaws() {
    let fixture = Fixture::new();
    let id = unique_id("pause");
    let _guard = fixture.create(&fixture.spec(&id, TERM_AWARE_SLEEPER));
    fixture.runtime.start(&id).unwrap();
    eventually("the trap to be installed", || fixture.log_text(&id).contains("up"));
    fixture.runtime.pause(&id).unwrap();
    assert!(matches!(fixture.runtime.state(&id).unwrap(), RuntimeState::Paused { .. }));
    let freezer = std::fs::read_to_string(format!("/sys/fs/cgroup/freezer/berth/{id}/freezer.state")).unwrap();
    assert_eq!(freezer.trim(), "FROZEN");
    assert!(matches!(
        fixture.runtime.exec(&id, &ExecSpec { args: vec!["true".into()], ..Default::default() }),
        Err(RuntimeError::Paused { .. })
    ));
    fixture.runtime.unpause(&id).unwrap();
    assert!(matches!(fixture.runtime.state(&id).unwrap(), RuntimeState::Running { .. }));
    let freezer = std::fs::read_to_string(format!("/sys/fs/cgroup/freezer/berth/{id}/freezer.state")).unwrap();
    assert_eq!(freezer.trim(), "THAWED");
    // Stopping a paused container still works.
    fixture.runtime.pause(&id).unwrap();
    assert_eq!(fixture.runtime.stop(&id, 0, Duration::from_secs(10)).unwrap(), 143);
}

#[test]
fn exec_returns_output_and_exit_code() {
    let fixture = Fixture::new();
    let id = unique_id("exec");
    let _guard = fixture.create(&fixture.spec(&id, "exec sleep 1000"));
    fixture.runtime.start(&id).unwrap();
    let exec = ExecSpec {
        args: vec!["sh".into(), "-c".into(), "echo $GREETING $EXTRA; pwd; echo bad >&2; exit 5".into()],
        env: vec!["EXTRA=there".into()],
        working_dir: "/tmp".into(),
        ..Default::default()
    };
    let mut process = fixture.runtime.exec(&id, &exec).unwrap();
    assert!(process.pid() > 0);
    let mut stdout = String::new();
    process.take_stdout().unwrap().read_to_string(&mut stdout).unwrap();
    let mut stderr = String::new();
    process.take_stderr().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(process.wait().unwrap(), 5);
    assert_eq!(stdout, "hello there\n/tmp\n");
    assert_eq!(stderr, "bad\n");

    let with_stdin = ExecSpec { args: vec!["cat".into()], attach_stdin: true, ..Default::default() };
    let mut process = fixture.runtime.exec(&id, &with_stdin).unwrap();
    let mut stdin = process.take_stdin().unwrap();
    stdin.write_all(b"piped\n").unwrap();
    drop(stdin);
    let mut stdout = String::new();
    process.take_stdout().unwrap().read_to_string(&mut stdout).unwrap();
    assert_eq!(process.wait().unwrap(), 0);
    assert_eq!(stdout, "piped\n");

    // A missing command is Docker's 127, with runc's reason at hand.
    let mut missing = fixture.runtime.exec(&id, &ExecSpec { args: vec!["/no/such/tool".into()], ..Default::default() }).unwrap();
    let mut stderr = String::new();
    missing.take_stderr().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(missing.wait().unwrap(), COMMAND_NOT_FOUND_EXIT_CODE);
    assert!(stderr.contains("no such file"), "{stderr}");
}

#[test]
fn exec_with_a_terminal() {
    let fixture = Fixture::new();
    let id = unique_id("exectty");
    let _guard = fixture.create(&fixture.spec(&id, "exec sleep 1000"));
    fixture.runtime.start(&id).unwrap();
    let exec = ExecSpec {
        args: vec!["sh".into(), "-c".into(), "sleep 0.3; if [ -t 0 ]; then echo tty; fi; stty size; exit 7".into()],
        tty: true,
        attach_stdin: true,
        ..Default::default()
    };
    let mut process = fixture.runtime.exec(&id, &exec).unwrap();
    process.resize(100, 30).unwrap();
    let mut terminal = process.take_terminal().unwrap();
    let mut output = String::new();
    terminal.read_to_string(&mut output).unwrap();
    assert_eq!(process.wait().unwrap(), 7);
    assert!(output.contains("tty"), "{output:?}");
    assert!(output.contains("30 100"), "{output:?}");
}

#[test]
fn attach_receives_live_output_and_stdin_reaches_cat() {
    let fixture = Fixture::new();
    let id = unique_id("attach");
    let mut spec = fixture.spec(&id, "cat; echo done");
    spec.open_stdin = true;
    let _guard = fixture.create(&spec);
    fixture.runtime.start(&id).unwrap();
    let mut attachment = fixture.runtime.attach(&id).unwrap();
    attachment.write_stdin(b"ping\n").unwrap();
    let mut seen = Vec::new();
    while !seen.ends_with(b"ping\n") {
        match attachment.next_event().unwrap() {
            Some(AttachEvent::Output { stream: OutputStream::Stdout, bytes }) => seen.extend(bytes),
            other => panic!("unexpected {other:?}"),
        }
    }
    attachment.close_stdin().unwrap();
    let mut rest = Vec::new();
    let exit = loop {
        match attachment.next_event().unwrap() {
            Some(AttachEvent::Output { bytes, .. }) => rest.extend(bytes),
            Some(AttachEvent::Exited { exit_code }) => break exit_code,
            None => panic!("stream ended without an exit"),
        }
    };
    assert_eq!(exit, 0);
    assert_eq!(rest, b"done\n");
    assert_eq!(attachment.next_event().unwrap(), None);
    assert_eq!(fixture.log_text(&id), "ping\ndone\n");
    assert!(matches!(fixture.runtime.attach(&id), Err(RuntimeError::NotRunning { .. })));
}

#[test]
fn start_attached_sees_every_byte_of_a_short_command() {
    let fixture = Fixture::new();
    let id = unique_id("startattach");
    let _guard = fixture.create(&fixture.spec(&id, "echo first; echo second >&2"));
    let (_, attachment) = fixture.runtime.start_attached(&id).unwrap();
    let (mut output, _input) = attachment.split();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let exit = loop {
        match output.next_event().unwrap() {
            Some(AttachEvent::Output { stream: OutputStream::Stdout, bytes }) => stdout.extend(bytes),
            Some(AttachEvent::Output { stream: OutputStream::Stderr, bytes }) => stderr.extend(bytes),
            Some(AttachEvent::Exited { exit_code }) => break exit_code,
            None => panic!("ended without exit"),
        }
    };
    assert_eq!((exit, stdout.as_slice(), stderr.as_slice()), (0, &b"first\n"[..], &b"second\n"[..]));
}

#[test]
fn a_terminal_container_attaches_and_resizes() {
    let fixture = Fixture::new();
    let id = unique_id("tty");
    let mut spec = fixture.spec(&id, "read line; stty size; echo got $line; [ -t 1 ] && echo isatty");
    spec.tty = true;
    spec.open_stdin = true;
    let _guard = fixture.create(&spec);
    let (_, mut attachment) = fixture.runtime.start_attached(&id).unwrap();
    attachment.resize(120, 40).unwrap();
    attachment.write_stdin(b"abc\n").unwrap();
    let mut output = Vec::new();
    let exit = loop {
        match attachment.next_event().unwrap() {
            Some(AttachEvent::Output { bytes, .. }) => output.extend(bytes),
            Some(AttachEvent::Exited { exit_code }) => break exit_code,
            None => panic!("ended without exit"),
        }
    };
    let output = String::from_utf8_lossy(&output);
    assert_eq!(exit, 0, "{output}");
    assert!(output.contains("40 120"), "{output:?}");
    assert!(output.contains("got abc"), "{output:?}");
    assert!(output.contains("isatty"), "{output:?}");
    assert!(fixture.log_text(&id).contains("got abc"));
}

#[test]
fn memory_and_cpu_limits_reach_the_cgroup_and_can_be_updated() {
    let fixture = Fixture::new();
    let id = unique_id("limits");
    let mut spec = fixture.spec(&id, "exec sleep 1000");
    spec.resources = Resources { memory_bytes: 64 * 1024 * 1024, nano_cpus: 500_000_000, cpu_shares: 512 };
    let _guard = fixture.create(&spec);
    fixture.runtime.start(&id).unwrap();
    let read_inside = |path: &str| {
        let mut process = fixture.runtime.exec(&id, &ExecSpec { args: vec!["cat".into(), path.into()], ..Default::default() }).unwrap();
        let mut text = String::new();
        process.take_stdout().unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(process.wait().unwrap(), 0);
        text.trim().to_string()
    };
    assert_eq!(read_inside("/sys/fs/cgroup/memory/memory.limit_in_bytes"), (64 * 1024 * 1024).to_string());
    assert_eq!(read_inside("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), "50000");
    assert_eq!(read_inside("/sys/fs/cgroup/cpu/cpu.shares"), "512");
    fixture.runtime.update_resources(&id, &Resources { memory_bytes: 128 * 1024 * 1024, nano_cpus: 0, cpu_shares: 0 }).unwrap();
    assert_eq!(read_inside("/sys/fs/cgroup/memory/memory.limit_in_bytes"), (128 * 1024 * 1024).to_string());
    assert_eq!(read_inside("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), "50000");
    let stats = fixture.runtime.stats(&id).unwrap();
    assert_eq!(stats.memory_limit_bytes, 128 * 1024 * 1024);
    assert!(stats.memory_usage_bytes > 0);
    assert!(stats.pids_current >= 1);
    assert!(stats.system_cpu_ns > 0);
    let top = fixture.runtime.top(&id).unwrap();
    assert!(top.iter().any(|process| process.command.contains("sleep 1000") && process.user == "root"), "{top:?}");
}

#[test]
fn the_shim_survives_the_runtime_and_a_new_one_finds_the_container() {
    let fixture = Fixture::new();
    let id = unique_id("survive");
    fixture.runtime.create(&fixture.spec(&id, TERM_AWARE_SLEEPER)).unwrap();
    fixture.runtime.start(&id).unwrap();
    eventually("the trap to be installed", || fixture.log_text(&id).contains("up"));
    let state_path = fixture.state_path();
    let Fixture { runtime, state_dir, rootfs } = fixture;
    drop(runtime);
    let reopened = std::sync::Arc::new(LocalRuntime::open(&state_path, &shim_program()).unwrap());
    let _guard = ContainerGuard { runtime: reopened.clone(), id: id.clone() };
    let listed = reopened.list().unwrap();
    assert!(matches!(listed.as_slice(), [(listed_id, RuntimeState::Running { .. })] if *listed_id == id), "{listed:?}");
    assert_eq!(reopened.stop(&id, 0, Duration::from_secs(10)).unwrap(), 143);
    assert!(matches!(reopened.list().unwrap().as_slice(), [(_, RuntimeState::Exited { exit_code: 143, .. })]));
    drop((state_dir, rootfs));
}

#[test]
fn a_dead_shim_is_reported_as_exited_255() {
    let fixture = Fixture::new();
    let id = unique_id("deadshim");
    let _guard = fixture.create(&fixture.spec(&id, "exec sleep 1000"));
    fixture.runtime.start(&id).unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.state_path().join("containers").join(&id).join("shim.json")).unwrap()).unwrap();
    let shim_pid = record["shim_pid"].as_i64().unwrap() as i32;
    // SAFETY: kill has no memory preconditions; the pid is the shim this test started.
    assert_eq!(unsafe { libc::kill(shim_pid, libc::SIGKILL) }, 0);
    eventually("the shim to die", || {
        !std::path::Path::new(&format!("/proc/{shim_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{shim_pid}/stat")).map(|stat| stat.contains(") Z ")).unwrap_or(true)
    });
    assert!(matches!(fixture.runtime.state(&id).unwrap(), RuntimeState::Exited { exit_code: 255, .. }));
    // The container's process went with its runc state; it can run again.
    fixture.runtime.start(&id).unwrap();
    assert!(matches!(fixture.runtime.state(&id).unwrap(), RuntimeState::Running { .. }));
}

#[test]
fn clear_errors_for_missing_things() {
    let fixture = Fixture::new();
    let mut spec = fixture.spec(&unique_id("norootfs"), "true");
    spec.rootfs = "/nonexistent/rootfs".into();
    assert!(matches!(fixture.runtime.create(&spec), Err(RuntimeError::RootfsMissing { .. })));
    assert!(matches!(fixture.runtime.state("nope"), Err(RuntimeError::ContainerNotFound { .. })));
    assert!(matches!(fixture.runtime.state("../etc"), Err(RuntimeError::Invalid { .. })));
    fixture.runtime.delete("never-existed").unwrap();
    let id = unique_id("dup");
    let _guard = fixture.create(&fixture.spec(&id, "true"));
    assert!(matches!(fixture.runtime.create(&fixture.spec(&id, "true")), Err(RuntimeError::ContainerExists { .. })));
    assert!(matches!(fixture.runtime.wait_exit(&id, None), Err(RuntimeError::NotRunning { .. })));
    let mut bad_command = fixture.spec(&unique_id("badcmd"), "true");
    bad_command.args = vec!["/no/such/binary".into()];
    let _bad_guard = fixture.create(&bad_command);
    let error = fixture.runtime.start(&bad_command.id).unwrap_err().to_string();
    assert!(error.contains("no such file") || error.contains("not found"), "{error}");
}

#[test]
fn bind_mounts_and_users_apply() {
    let fixture = Fixture::new();
    let volume = tempfile::tempdir().unwrap();
    std::fs::write(volume.path().join("in.txt"), "from host\n").unwrap();
    let id = unique_id("mounts");
    let mut spec = fixture.spec(&id, "cat /data/in.txt; id -u; echo written > /data/out.txt; cat /etc/hostname");
    spec.mounts = vec![Mount { source: volume.path().to_path_buf(), target: "/data".into(), read_only: false }];
    spec.user = "nobody".into();
    std::fs::set_permissions(volume.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let _guard = fixture.create(&spec);
    fixture.runtime.start(&id).unwrap();
    assert_eq!(fixture.runtime.wait_exit(&id, Some(TEST_WAIT_TIMEOUT)).unwrap(), Some(0), "{}", fixture.log_text(&id));
    assert_eq!(fixture.log_text(&id), format!("from host\n65534\n{}\n", spec.hostname));
    assert_eq!(std::fs::read_to_string(volume.path().join("out.txt")).unwrap(), "written\n");
}

/// Environment variable carrying the state dir to `helper_start_and_hang`.
const HELPER_STATE_ENV: &str = "BERTH_RUNTIME_TEST_HELPER_STATE";
const HELPER_ROOTFS_ENV: &str = "BERTH_RUNTIME_TEST_HELPER_ROOTFS";
const HELPER_ID_ENV: &str = "BERTH_RUNTIME_TEST_HELPER_ID";

/// Not a test by itself: the body of the process `the_shim_survives_a_sigkilled_runtime`
/// starts and SIGKILLs. Without its environment it does nothing.
#[test]
#[ignore = "helper process for the_shim_survives_a_sigkilled_runtime"]
fn helper_start_and_hang() {
    let (Ok(state), Ok(rootfs), Ok(id)) = (std::env::var(HELPER_STATE_ENV), std::env::var(HELPER_ROOTFS_ENV), std::env::var(HELPER_ID_ENV))
    else {
        return;
    };
    let runtime = LocalRuntime::open(std::path::Path::new(&state), &shim_program()).unwrap();
    let spec = ContainerRunSpec {
        id: id.clone(),
        rootfs: rootfs.into(),
        args: vec!["sh".into(), "-c".into(), TERM_AWARE_SLEEPER.into()],
        env: vec!["A=1".into()],
        working_dir: String::new(),
        user: String::new(),
        hostname: "survivor".into(),
        tty: false,
        open_stdin: true,
        network_mode: NetworkMode::None,
        port_bindings: vec![],
        mounts: vec![],
        resources: Resources::default(),
        stop_signal: 0,
    };
    runtime.create(&spec).unwrap();
    runtime.start(&id).unwrap();
    println!("started");
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(600));
}

#[test]
fn the_shim_survives_a_sigkilled_runtime() {
    let fixture = Fixture::new();
    let id = unique_id("sigkilled");
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_start_and_hang", "--ignored", "--nocapture", "--test-threads=1"])
        .env(HELPER_STATE_ENV, fixture.state_path())
        .env(HELPER_ROOTFS_ENV, fixture.rootfs.path())
        .env(HELPER_ID_ENV, &id)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = ContainerGuard { runtime: fixture.runtime.clone(), id: id.clone() };
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(helper.stdout.take().unwrap()));
    assert!(lines.any(|line| line.is_ok_and(|line| line.contains("started"))), "the helper did not start the container");
    helper.kill().unwrap();
    helper.wait().unwrap();
    eventually("the container to say up", || fixture.log_text(&id).contains("up"));
    assert!(matches!(fixture.runtime.state(&id).unwrap(), RuntimeState::Running { .. }));
    // The new runtime can still drive the container's stdio through the surviving shim.
    let mut attachment = fixture.runtime.attach(&id).unwrap();
    fixture.runtime.kill(&id, libc::SIGTERM).unwrap();
    let exit = loop {
        match attachment.next_event().unwrap() {
            Some(AttachEvent::Exited { exit_code }) => break exit_code,
            Some(_) => continue,
            None => panic!("ended without exit"),
        }
    };
    assert_eq!(exit, 143);
    assert_eq!(fixture.runtime.wait_exit(&id, Some(TEST_WAIT_TIMEOUT)).unwrap(), Some(143));
}

#[test]
fn state_dirs_deeper_than_a_socket_path_still_work() {
    let fixture = Fixture::new();
    let deep_state = fixture.state_dir.path().join("d".repeat(100)).join("runtime");
    let runtime = std::sync::Arc::new(LocalRuntime::open(&deep_state, &shim_program()).unwrap());
    let id = unique_id("deepstate");
    let mut spec = fixture.spec(&id, "read line; echo got $line");
    spec.tty = true;
    spec.open_stdin = true;
    runtime.create(&spec).unwrap();
    let _guard = ContainerGuard { runtime: runtime.clone(), id: id.clone() };
    assert!(runtime.log_path(&id).parent().unwrap().join("attach.sock").as_os_str().len() > 107);
    let (_, mut attachment) = runtime.start_attached(&id).unwrap();
    attachment.write_stdin(b"deep\n").unwrap();
    let mut output = Vec::new();
    let exit = loop {
        match attachment.next_event().unwrap() {
            Some(AttachEvent::Output { bytes, .. }) => output.extend(bytes),
            Some(AttachEvent::Exited { exit_code }) => break exit_code,
            None => panic!("ended without exit"),
        }
    };
    assert_eq!(exit, 0);
    assert!(String::from_utf8_lossy(&output).contains("got deep"));
}
