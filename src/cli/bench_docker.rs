//! `berth bench docker`: the Docker API's figures beside their yardsticks,
//! measured in one run against a `berth serve` started for the purpose:
//! create latency beside one raw synced write on the same disk, creates/s
//! with 64 keep-alive clients beside the same server's `/_ping` rate, 50
//! parallel creates, and run-to-exit of a trivial command. Plain HTTP/1.1
//! over TCP, no CLI process in the measured path.

use super::bench_http::{percentile, Connection};
use anyhow::{bail, Context as _};
use clap::Args;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// How long a Docker API reply may take in the benchmark.
const DOCKER_READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct BenchDockerArgs {
    /// A directory on the disk to measure (default: a temporary directory under the current one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Sequential creates for the latency figures.
    #[arg(long, default_value_t = 500)]
    creates: usize,
    /// Seconds per throughput figure.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Keep-alive clients for the throughput figures.
    #[arg(long, default_value_t = 64)]
    clients: usize,
}

fn busybox_tarball(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("the benchmark needs Debian's busybox-static (/bin/busybox)")?;
    std::os::unix::fs::symlink("busybox", root.join("bin/true"))?;
    let tarball = dir.join("busybox.tar");
    let status = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tarball).arg(".").status()?;
    if !status.success() {
        bail!("tar failed");
    }
    Ok(tarball)
}

/// Throughput of `request` from `clients` keep-alive connections for `duration`.
fn rate(
    address: &str,
    clients: usize,
    duration: Duration,
    method: &'static str,
    path: &'static str,
    body: &'static str,
) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut threads = Vec::new();
    for _ in 0..clients {
        let mut connection = Connection::open(address, DOCKER_READ_TIMEOUT)?;
        let (stop, count, barrier) = (stop.clone(), count.clone(), barrier.clone());
        threads.push(std::thread::spawn(move || {
            barrier.wait();
            while !stop.load(Ordering::Relaxed) {
                match connection.request(method, path, body) {
                    Ok((status, _)) if status < 300 => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
        }));
    }
    barrier.wait();
    let started = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let total = count.load(Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    Ok(total as f64 / elapsed)
}

pub fn run(args: BenchDockerArgs) -> anyhow::Result<ExitCode> {
    let base = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            tempfile::tempdir_in(dir)?
        }
        None => tempfile::tempdir_in(".")?,
    };
    // The yardstick: one raw synced RocksDB write of 200 bytes, many times.
    let raw_samples_ms = {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        let db = rocksdb::DB::open(&options, base.path().join("raw"))?;
        let mut write_options = rocksdb::WriteOptions::default();
        write_options.set_sync(true);
        let mut samples = Vec::new();
        for key in 0..args.creates as u64 {
            let started = Instant::now();
            db.put_opt(key.to_be_bytes(), [0x5au8; 200], &write_options)?;
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        samples.sort_by(f64::total_cmp);
        samples
    };

    let data_dir = base.path().join("data");
    let mut server = Command::new(std::env::current_exe()?)
        .args(["serve", "--docker-listen", "127.0.0.1:0", "--portal-listen", "127.0.0.1:0", "--bip", "10.250.0.1/24"])
        .args(["--default-address-pool", "base=10.251.0.0/16,size=24", "--data-dir"])
        .arg(&data_dir)
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting berth serve")?;
    let mut lines = BufReader::new(server.stdout.take().context("server stdout")?).lines();
    let address = loop {
        let line = lines.next().context("berth serve ended before it listened")??;
        if let Some(rest) = line.split("Docker API listening on tcp://").nth(1) {
            break rest.split_whitespace().next().unwrap_or_default().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let result = measure(&args, &address, base.path(), &raw_samples_ms);
    // Remove what the benchmark made, then stop the server.
    if let Ok(mut connection) = Connection::open(&address, DOCKER_READ_TIMEOUT) {
        if let Ok((_, body)) = connection.request("GET", "/containers/json?all=1", "") {
            if let Ok(serde_json::Value::Array(containers)) = serde_json::from_str::<serde_json::Value>(&body) {
                for container in containers {
                    let id = container["Id"].as_str().unwrap_or_default().to_string();
                    let _ = connection.request("DELETE", &format!("/containers/{id}?force=1"), "");
                }
            }
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(server.id() as i32, libc::SIGTERM) };
    let _ = server.wait();
    result.map(|()| ExitCode::SUCCESS)
}

fn measure(args: &BenchDockerArgs, address: &str, dir: &std::path::Path, raw_samples_ms: &[f64]) -> anyhow::Result<()> {
    let tarball = busybox_tarball(dir)?;
    let bytes = std::fs::read(&tarball)?;
    let mut connection = Connection::open(address, DOCKER_READ_TIMEOUT)?;
    let (status, response) =
        connection.request_bytes("POST", "/v1.47/images/create?fromSrc=-&repo=bench&tag=latest", "application/x-tar", &bytes)?;
    if status != 200 {
        bail!("importing the image failed: HTTP {status}: {response}");
    }
    drop(connection);
    let create_body = r#"{"Image":"bench","Cmd":["true"],"HostConfig":{"NetworkMode":"none"}}"#;

    let mut connection = Connection::open(address, DOCKER_READ_TIMEOUT)?;
    // Run to exit first, before thousands of created containers exist: create, wait for the next exit, start, read the exit.
    let mut run_samples = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let (_, body) = connection.request("POST", "/v1.47/containers/create", create_body)?;
        let id = serde_json::from_str::<serde_json::Value>(&body)?["Id"].as_str().unwrap_or_default().to_string();
        let mut waiter = Connection::open(address, DOCKER_READ_TIMEOUT)?;
        let wait_path = format!("/v1.47/containers/{id}/wait?condition=next-exit");
        let wait = std::thread::spawn(move || waiter.request("POST", &wait_path, ""));
        std::thread::sleep(Duration::from_millis(5));
        let (status, body) = connection.request("POST", &format!("/v1.47/containers/{id}/start"), "")?;
        if status != 204 {
            bail!("start failed: {status} {body}");
        }
        let (_, result) = wait.join().map_err(|_| anyhow::anyhow!("the wait thread panicked"))??;
        if !result.contains("\"StatusCode\":0") {
            bail!("the trivial command did not exit 0: {result}");
        }
        run_samples.push(started.elapsed().as_secs_f64() * 1000.0);
        connection.request("DELETE", &format!("/v1.47/containers/{id}?force=1"), "")?;
    }
    run_samples.sort_by(f64::total_cmp);
    let mut samples = Vec::new();
    for _ in 0..args.creates {
        let started = Instant::now();
        let (status, body) = connection.request("POST", "/v1.47/containers/create", create_body)?;
        if status != 201 {
            bail!("create failed: {status} {body}");
        }
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    let duration = Duration::from_secs_f64(args.seconds);
    let ping_rate = rate(address, args.clients, duration, "GET", "/_ping", "")?;
    let create_rate = rate(
        address,
        args.clients,
        duration,
        "POST",
        "/v1.47/containers/create",
        r#"{"Image":"bench","Cmd":["true"],"HostConfig":{"NetworkMode":"none"}}"#,
    )?;

    // 50 parallel creates, each on its own connection, released together.
    let barrier = Arc::new(Barrier::new(51));
    let mut threads = Vec::new();
    for _ in 0..50 {
        let mut connection = Connection::open(address, DOCKER_READ_TIMEOUT)?;
        let barrier = barrier.clone();
        threads.push(std::thread::spawn(move || {
            barrier.wait();
            connection
                .request("POST", "/v1.47/containers/create", r#"{"Image":"bench","Cmd":["true"],"HostConfig":{"NetworkMode":"none"}}"#)
                .map(|(s, _)| s)
        }));
    }
    barrier.wait();
    let started = Instant::now();
    for thread in threads {
        let status = thread.join().map_err(|_| anyhow::anyhow!("a create thread panicked"))??;
        if status != 201 {
            bail!("a parallel create failed with {status}");
        }
    }
    let parallel_ms = started.elapsed().as_secs_f64() * 1000.0;

    println!("# berth bench docker ({} sequential creates, {} clients, {:.1} s per rate)", args.creates, args.clients, args.seconds);
    println!();
    println!("| figure | berth | yardstick (same run) | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| create latency p50 | {:.2} ms | raw synced 200-byte write p50 {:.2} ms | {:.1}x |",
        percentile(&samples, 0.5),
        percentile(raw_samples_ms, 0.5),
        percentile(&samples, 0.5) / percentile(raw_samples_ms, 0.5).max(1e-9)
    );
    println!(
        "| create latency p99 | {:.2} ms | raw synced 200-byte write p99 {:.2} ms | {:.1}x |",
        percentile(&samples, 0.99),
        percentile(raw_samples_ms, 0.99),
        percentile(&samples, 0.99) / percentile(raw_samples_ms, 0.99).max(1e-9)
    );
    println!(
        "| creates/s, {} keep-alive clients | {create_rate:.0} | /_ping/s {ping_rate:.0} | {:.0}% |",
        args.clients,
        100.0 * create_rate / ping_rate.max(1e-9)
    );
    println!("| 50 parallel creates | {parallel_ms:.1} ms | VIC: 3.2 s; goal ≤ 100 ms | |");
    println!("| run to exit (`true`) p50 | {:.0} ms | VIC create alone: 295 ms | |", percentile(&run_samples, 0.5));
    Ok(())
}
