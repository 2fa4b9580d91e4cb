//! `berth bench vsphere`: containers created and powered on per second on a
//! vSphere VCH, against vcsim (govmomi's simulator), with 1 and 32 parallel
//! Docker API clients, and where that time goes: waiting for vSphere's SOAP
//! replies or berth's own work.
//!
//! The benchmark starts vcsim and a `berth serve` of its own, creates a VCH
//! through the admin API, imports a busybox image, and per client count
//! runs `docker run -d --name` equivalents (create, then start) over plain HTTP/1.1
//! until N containers exist. A container counts once vSphere itself says so:
//! its VM is listed with `berth.generation` >= 1 and powered on (berth's
//! start returns when the start is recorded, long before the VM exists).
//!
//! The share of vSphere is the summed time of berth's SOAP calls over that
//! sum plus the CPU time of the `berth serve` process. Wall time is not the
//! denominator: the reconciler runs up to 16 actions at once, so the calls
//! overlap and their sum exceeds the wall time. vcsim's CPU time is shown
//! too: on one machine, the two processes compete for the same cores.

use super::bench_http::{percentile, Connection};
use anyhow::{bail, Context as _};
use berth_vsphere::infrastructure::{KEY_CONTAINER_ID, KEY_GENERATION, KEY_ROLE, KEY_VCH, ROLE_CONTAINER};
use berth_vsphere::simulator::Simulator;
use berth_vsphere::{ConnectOptions, PowerState, VimClient};
use clap::Args;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// The VCH the benchmark creates.
const VCH_NAME: &str = "bench";
/// Reconcile actions a vSphere VCH runs at once (`VSPHERE_RECONCILE_PARALLELISM` of the server).
const RECONCILE_PARALLELISM: usize = 16;
/// The longest wait for every container to be powered on, or every VM gone.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(900);
/// The pause between two reads of vSphere's inventory while the containers go.
const CLEANUP_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Inventory reads that measure what one read costs vcsim.
const CALIBRATION_READ_COUNT: usize = 10;
/// Connections that remove the containers between runs.
const CLEANUP_CONNECTION_COUNT: usize = 8;
/// The server's default bridge and its address pool: subnets no test and no
/// other benchmark uses (tests take 10.10-10.249, `bench docker` 10.250-10.251).
/// A vSphere VCH's containers take their addresses from the embedded VCH's
/// bridge network, so its size bounds --containers: a /20 holds 4093.
const BRIDGE_BIP: &str = "10.252.0.1/20";
const ADDRESS_POOL: &str = "base=10.253.0.0/16,size=24";
/// Addresses in those subnets, as an awk/grep pattern.
const SUBNET_PATTERN: &str = "10\\.25[23]\\.";

/// How long an API reply may take: creating a VCH waits for its objects in
/// vSphere, deleting one too.
const API_READ_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Args)]
pub struct BenchVsphereArgs {
    /// Containers created and started per run.
    #[arg(long, default_value_t = 200)]
    containers: usize,
    /// Parallel Docker API clients, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    clients: Vec<usize>,
    /// The vcsim binary (default: $BERTH_VCSIM, else what scripts/vcsim.sh builds).
    #[arg(long)]
    vcsim: Option<PathBuf>,
    /// Milliseconds between two reads of vSphere's inventory while waiting
    /// (each read also loads vcsim, which berth is waiting for).
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// Distinct images (busybox variants) the containers are spread over.
    #[arg(long, default_value_t = 1)]
    images: usize,
    /// Runs per client count; the table shows the median run (by containers/s) and the range.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

fn sorted(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(f64::total_cmp);
    samples
}

/// CPU seconds (user, system; all threads) a process has used so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').context("bad /proc stat")?.1.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), counted from the state (field 3).
    let ticks = |index: usize| fields.get(index).and_then(|t| t.parse::<u64>().ok()).unwrap_or(0) as f64;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11) / per_second, ticks(12) / per_second))
}

/// Waits for `child` to end; false if it is still running after `timeout`.
fn wait_for_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The `berth serve` under measurement.
struct Server {
    process: Child,
    docker: String,
    portal: String,
}

impl Server {
    fn start(data_dir: &Path, stderr_path: &Path) -> anyhow::Result<Server> {
        let stderr = std::fs::File::create(stderr_path)?;
        let mut process = Command::new(std::env::current_exe()?)
            .args(["serve", "--docker-listen", "127.0.0.1:0", "--portal-listen", "127.0.0.1:0", "--bip", BRIDGE_BIP])
            .args(["--default-address-pool", ADDRESS_POOL, "--data-dir"])
            .arg(data_dir)
            .env("BERTH_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("starting berth serve")?;
        let mut lines = BufReader::new(process.stdout.take().context("server stdout")?).lines();
        let mut server = Server { process, docker: String::new(), portal: String::new() };
        while server.docker.is_empty() || server.portal.is_empty() {
            let line = lines.next().context("berth serve ended before it listened")??;
            if let Some(rest) = line.split("Docker API listening on tcp://").nth(1) {
                server.docker = rest.split_whitespace().next().unwrap_or_default().to_string();
            }
            if let Some(rest) = line.split("portal listening on http://").nth(1) {
                server.portal = rest.split_whitespace().next().unwrap_or_default().to_string();
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.process.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.process.id() as i32, libc::SIGTERM) };
        if !wait_for_exit(&mut self.process, Duration::from_secs(60)) {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
        remove_bridges();
    }
}

/// Deletes the bridges and firewall rules the server's local runtime left
/// on the benchmark's subnets: `berth serve` keeps them when it stops (its
/// local containers keep running), and the temporary data directory that
/// named them is gone.
fn remove_bridges() {
    let script = format!(
        "for dev in $(ip -o -4 addr show | awk '$4 ~ /^{SUBNET_PATTERN}/ {{print $2}}'); do \
           for table in nat filter; do iptables -t $table -S 2>/dev/null | grep -- \"$dev\" | sed 's/^-A /-D /' | \
             while read -r rule; do eval iptables -t $table $rule 2>/dev/null; done; done; \
           ip link del \"$dev\" 2>/dev/null; done; \
         for table in nat filter; do iptables -t $table -S 2>/dev/null | grep -E -- ' {SUBNET_PATTERN}' | sed 's/^-A /-D /' | \
         while read -r rule; do eval iptables -t $table $rule 2>/dev/null; done; done; true"
    );
    let _ = Command::new("sh").args(["-c", &script]).status();
}

/// The portal's `berth_vsphere_calls_total` and `berth_vsphere_call_seconds_total`.
fn vsphere_metrics(portal: &str) -> anyhow::Result<(u64, f64)> {
    let (status, text) = Connection::open(portal, API_READ_TIMEOUT)?.request("GET", "/metrics", "")?;
    if status != 200 {
        bail!("GET /metrics: {status}");
    }
    let value = |name: &str| -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
    };
    let calls = value("berth_vsphere_calls_total").context("no berth_vsphere_calls_total in /metrics")?;
    let seconds = value("berth_vsphere_call_seconds_total").context("no berth_vsphere_call_seconds_total in /metrics")?;
    Ok((calls as u64, seconds))
}

/// The container VMs of the VCH in vSphere: container id and whether it is
/// powered on for a run (generation >= 1, written after the power-on).
fn container_vms(client: &VimClient) -> anyhow::Result<Vec<(String, bool)>> {
    let vms = client.virtual_machines().context("listing vSphere's VMs")?;
    Ok(vms
        .iter()
        .filter(|vm| vm.extra_config.get(KEY_VCH).map(String::as_str) == Some(VCH_NAME))
        .filter(|vm| vm.extra_config.get(KEY_ROLE).map(String::as_str) == Some(ROLE_CONTAINER))
        .map(|vm| {
            let generation: u64 = vm.extra_config.get(KEY_GENERATION).and_then(|text| text.parse().ok()).unwrap_or(0);
            let on = vm.power_state == Some(PowerState::PoweredOn) && generation >= 1;
            (vm.extra_config.get(KEY_CONTAINER_ID).cloned().unwrap_or_default(), on)
        })
        .collect())
}

/// A busybox root filesystem; `variant` is written into it, so that each
/// variant is an image of its own.
fn busybox_tarball(dir: &Path, variant: usize) -> anyhow::Result<Vec<u8>> {
    let root = dir.join(format!("rootfs-{variant}"));
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("the benchmark needs Debian's busybox-static (/bin/busybox)")?;
    std::fs::write(root.join("etc/bench-image"), format!("{variant}\n"))?;
    let tarball = dir.join(format!("busybox-{variant}.tar"));
    let status = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tarball).arg(".").status()?;
    if !status.success() {
        bail!("tar failed");
    }
    Ok(std::fs::read(&tarball)?)
}

/// One run's figures.
struct RunResult {
    clients: usize,
    /// From the first request to the inventory read that showed every container powered on.
    converged_s: f64,
    /// From the first request to the last API reply.
    api_s: f64,
    create_ms: Vec<f64>,
    start_ms: Vec<f64>,
    /// Per container: from its create request to the first inventory read that showed it powered on.
    powered_on_s: Vec<f64>,
    vsphere_calls: u64,
    vsphere_s: f64,
    berth_cpu_s: f64,
    berth_system_cpu_s: f64,
    vcsim_cpu_s: f64,
    /// Removing the containers afterwards, until vSphere had none of their VMs.
    cleanup_s: f64,
    poll_count: usize,
    /// The mean duration of one inventory read of the benchmark's own.
    poll_read_ms: f64,
    /// vcsim's CPU time per such read, measured after the run.
    poll_vcsim_cpu_ms: f64,
}

/// What each run makes: its containers, spread round-robin over its images.
#[derive(Clone, Copy)]
struct Workload {
    containers: usize,
    images: usize,
}

/// Numbers the containers' names across every run of the benchmark.
static CONTAINER_SERIAL: AtomicUsize = AtomicUsize::new(0);

/// What a client thread hands back, also when it failed (its containers are removed too).
#[derive(Default)]
struct ClientRecord {
    /// Per container: its id and when its create was sent.
    made: Vec<(String, Instant)>,
    create_ms: Vec<f64>,
    start_ms: Vec<f64>,
    done: Option<Instant>,
    error: Option<anyhow::Error>,
}

fn client_thread(
    address: String,
    next: Arc<AtomicUsize>,
    workload: Workload,
    barrier: Arc<Barrier>,
    failed: Arc<AtomicBool>,
) -> ClientRecord {
    let mut record = ClientRecord::default();
    let connection = Connection::open(&address, API_READ_TIMEOUT);
    barrier.wait();
    let outcome = connection.and_then(|mut connection| client_requests(&mut connection, &next, workload, &mut record));
    record.done = Some(Instant::now());
    if let Err(error) = outcome {
        record.error = Some(error);
        failed.store(true, Ordering::Relaxed);
    }
    record
}

fn client_requests(connection: &mut Connection, next: &AtomicUsize, workload: Workload, record: &mut ClientRecord) -> anyhow::Result<()> {
    while next.fetch_add(1, Ordering::Relaxed) < workload.containers {
        // Named, like `docker run -d --name`: a generated name can be taken
        // by a parallel create between its check and its decision (a 409 at
        // 32 clients), which would end the run.
        let serial = CONTAINER_SERIAL.fetch_add(1, Ordering::Relaxed);
        let body = format!(r#"{{"Image":"busybox:bench{}","Cmd":["/bin/busybox","sleep","1000"]}}"#, serial % workload.images);
        let sent = Instant::now();
        let (status, reply) = connection.request("POST", &format!("/v1.47/containers/create?name=bench-{serial}"), &body)?;
        if status != 201 {
            bail!("create: {status} {reply}");
        }
        record.create_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        let id = serde_json::from_str::<serde_json::Value>(&reply)?["Id"].as_str().unwrap_or_default().to_string();
        record.made.push((id.clone(), sent));
        let started = Instant::now();
        let (status, reply) = connection.request("POST", &format!("/v1.47/containers/{id}/start"), "")?;
        if status != 204 {
            bail!("start {id}: {status} {reply}");
        }
        record.start_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(())
}

fn run_once(
    server: &Server,
    vcsim: &Simulator,
    vch_docker: &str,
    client: &VimClient,
    workload: Workload,
    clients: usize,
    poll_interval: Duration,
) -> anyhow::Result<RunResult> {
    let total = workload.containers;
    let leftovers = container_vms(client)?;
    if !leftovers.is_empty() {
        bail!("vSphere still has {} container VMs of VCH {VCH_NAME} from before", leftovers.len());
    }
    let next = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(clients + 1));
    let failed = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (address, next, barrier, failed) = (vch_docker.to_string(), next.clone(), barrier.clone(), failed.clone());
            std::thread::spawn(move || client_thread(address, next, workload, barrier, failed))
        })
        .collect();
    let (calls_before, vsphere_before) = vsphere_metrics(&server.portal)?;
    let (berth_cpu_before, vcsim_cpu_before) = (cpu_seconds(server.pid())?, cpu_seconds(vcsim.pid())?);
    barrier.wait();
    let began = Instant::now();

    // Wait for vSphere to show every container powered on; note when each first was.
    let mut first_on: HashMap<String, Instant> = HashMap::new();
    let (mut poll_count, mut poll_read_s) = (0, 0.0);
    let converged = loop {
        std::thread::sleep(poll_interval);
        let read_began = Instant::now();
        let vms = container_vms(client)?;
        let read_at = Instant::now();
        poll_count += 1;
        poll_read_s += read_at.duration_since(read_began).as_secs_f64();
        for (id, on) in &vms {
            if *on {
                first_on.entry(id.clone()).or_insert(read_at);
            }
        }
        if first_on.len() >= total {
            break read_at;
        }
        // A failed client ends the run now (its error is reported after the
        // cleanup), and so does the timeout.
        if failed.load(Ordering::Relaxed) || read_at.duration_since(began) > CONVERGE_TIMEOUT {
            break read_at;
        }
    };
    let (calls_after, vsphere_after) = vsphere_metrics(&server.portal)?;
    let (berth_cpu_after, vcsim_cpu_after) = (cpu_seconds(server.pid())?, cpu_seconds(vcsim.pid())?);
    // What one of the benchmark's own reads costs vcsim, with every VM there
    // and berth idle: the benchmark's share of vcsim's CPU during the run.
    let vcsim_idle_before = cpu_seconds(vcsim.pid())?;
    for _ in 0..CALIBRATION_READ_COUNT {
        container_vms(client)?;
    }
    let vcsim_idle_after = cpu_seconds(vcsim.pid())?;
    let poll_vcsim_cpu_ms =
        1000.0 * ((vcsim_idle_after.0 + vcsim_idle_after.1) - (vcsim_idle_before.0 + vcsim_idle_before.1)) / CALIBRATION_READ_COUNT as f64;

    let (mut made, mut create_ms, mut start_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut api_done = began;
    let mut failure = None;
    for thread in threads {
        let record = thread.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        made.extend(record.made);
        create_ms.extend(record.create_ms);
        start_ms.extend(record.start_ms);
        api_done = api_done.max(record.done.unwrap_or(began));
        failure = failure.or(record.error);
    }
    let cleanup_began = Instant::now();
    remove_containers(vch_docker, made.iter().map(|(id, _)| id.clone()).collect())?;
    wait_for_no_container_vms(client)?;
    let cleanup_s = cleanup_began.elapsed().as_secs_f64();
    if let Some(error) = failure {
        return Err(error.context(format!("a client failed with {clients} clients")));
    }
    if first_on.len() < total {
        bail!("only {} of {total} containers were powered on in vSphere after {CONVERGE_TIMEOUT:?}", first_on.len());
    }
    let powered_on_s = made.iter().filter_map(|(id, sent)| first_on.get(id).map(|on| on.duration_since(*sent).as_secs_f64())).collect();
    Ok(RunResult {
        clients,
        converged_s: converged.duration_since(began).as_secs_f64(),
        api_s: api_done.duration_since(began).as_secs_f64(),
        create_ms: sorted(create_ms),
        start_ms: sorted(start_ms),
        powered_on_s: sorted(powered_on_s),
        vsphere_calls: calls_after - calls_before,
        vsphere_s: vsphere_after - vsphere_before,
        berth_cpu_s: (berth_cpu_after.0 + berth_cpu_after.1) - (berth_cpu_before.0 + berth_cpu_before.1),
        berth_system_cpu_s: berth_cpu_after.1 - berth_cpu_before.1,
        vcsim_cpu_s: (vcsim_cpu_after.0 + vcsim_cpu_after.1) - (vcsim_cpu_before.0 + vcsim_cpu_before.1),
        cleanup_s,
        poll_count,
        poll_read_ms: 1000.0 * poll_read_s / poll_count.max(1) as f64,
        poll_vcsim_cpu_ms,
    })
}

/// `docker rm -f` of every container, over a few connections.
fn remove_containers(address: &str, ids: Vec<String>) -> anyhow::Result<()> {
    let queue = Arc::new(Mutex::new(ids));
    let threads: Vec<_> = (0..CLEANUP_CONNECTION_COUNT)
        .map(|_| {
            let (address, queue) = (address.to_string(), queue.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut connection = Connection::open(&address, API_READ_TIMEOUT)?;
                loop {
                    let Some(id) = queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop() else { return Ok(()) };
                    let (status, reply) = connection.request("DELETE", &format!("/v1.47/containers/{id}?force=true"), "")?;
                    if status != 204 && status != 404 {
                        bail!("removing {id}: {status} {reply}");
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| anyhow::anyhow!("a cleanup thread panicked"))??;
    }
    Ok(())
}

fn wait_for_no_container_vms(client: &VimClient) -> anyhow::Result<()> {
    let began = Instant::now();
    loop {
        let remaining = container_vms(client)?.len();
        if remaining == 0 {
            return Ok(());
        }
        if began.elapsed() > CONVERGE_TIMEOUT {
            bail!("{remaining} container VMs are still in vSphere {CONVERGE_TIMEOUT:?} after their removal");
        }
        std::thread::sleep(CLEANUP_POLL_INTERVAL);
    }
}

pub fn run(args: BenchVsphereArgs) -> anyhow::Result<ExitCode> {
    if args.containers == 0 || args.clients.contains(&0) {
        bail!("--containers and --clients must be positive");
    }
    let base = tempfile::tempdir().context("making a temporary directory")?;
    let binary = match &args.vcsim {
        Some(path) => path.clone(),
        None => Simulator::binary(Path::new(env!("CARGO_MANIFEST_DIR"))).context("building vcsim (or pass --vcsim PATH)")?,
    };
    let vcsim = Simulator::start(&binary, &[])?;
    let stderr_path = base.path().join("berth-serve.stderr");
    let server = Server::start(&base.path().join("data"), &stderr_path)?;
    let result = measure(&args, &vcsim, &server, base.path());
    // Stop berth before vcsim, so its reconciler does not retry against a vanished target.
    let server_pid = server.pid();
    drop(server);
    drop(vcsim);
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let problems: Vec<&str> = stderr.lines().filter(|line| line.contains("WARN") || line.contains("ERROR")).collect();
    println!();
    if problems.is_empty() {
        println!("berth serve (pid {server_pid}) logged no warnings or errors.");
    } else {
        println!("berth serve (pid {server_pid}) logged {} warnings or errors; the first ones:", problems.len());
        for line in problems.iter().take(5) {
            println!("    {}", line.chars().take(300).collect::<String>());
        }
    }
    result.map(|()| ExitCode::SUCCESS)
}

fn measure(args: &BenchVsphereArgs, vcsim: &Simulator, server: &Server, dir: &Path) -> anyhow::Result<()> {
    // The VCH's Docker API shares the embedded VCH's image store: import there.
    for variant in 0..args.images.max(1) {
        let tarball = busybox_tarball(dir, variant)?;
        let (status, reply) = Connection::open(&server.docker, API_READ_TIMEOUT)?.request_bytes(
            "POST",
            &format!("/v1.47/images/create?fromSrc=-&repo=busybox&tag=bench{variant}"),
            "application/x-tar",
            &tarball,
        )?;
        if status != 200 || reply.contains("errorDetail") {
            bail!("importing the image failed: {status} {reply}");
        }
    }

    let request = serde_json::json!({
        "name": VCH_NAME,
        "target": vcsim.url,
        "user": vcsim.user,
        "password": vcsim.password,
        "compute_resource": "DC0_C0",
        "bridge_network": "DC0_DVPG0",
    });
    let vch_began = Instant::now();
    let (status, reply) = Connection::open(&server.portal, API_READ_TIMEOUT)?.request("POST", "/api/vchs", &request.to_string())?;
    if status != 201 {
        bail!("creating the VCH: {status} {reply}");
    }
    let vch_create_s = vch_began.elapsed().as_secs_f64();
    let info: serde_json::Value = serde_json::from_str(&reply)?;
    let vch_docker = info["docker_host"].as_str().context("the VCH has no docker_host")?.to_string();

    let client = VimClient::connect(&ConnectOptions::new(&vcsim.url, &vcsim.user, &vcsim.password)).context("logging in to vcsim")?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut results: Vec<Vec<RunResult>> = Vec::new();
    let mut failure = None;
    let workload = Workload { containers: args.containers, images: args.images.max(1) };
    'runs: for &clients in &args.clients {
        let mut runs = Vec::new();
        for _ in 0..args.repeat.max(1) {
            match run_once(server, vcsim, &vch_docker, &client, workload, clients, Duration::from_millis(args.poll_ms)) {
                Ok(result) => runs.push(result),
                Err(error) => {
                    failure = Some(error);
                    break 'runs;
                }
            }
        }
        // The median run by time to all powered on stands for the client count.
        runs.sort_by(|a, b| a.converged_s.total_cmp(&b.converged_s));
        results.push(runs);
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let (status, reply) =
        Connection::open(&server.portal, API_READ_TIMEOUT)?.request("DELETE", &format!("/api/vchs/{VCH_NAME}?force=true"), "")?;
    let vch_deleted = (200..300).contains(&status);
    let inventory = client.inventory().context("reading vSphere's inventory after the delete")?;
    let vms_left =
        inventory.virtual_machines.iter().filter(|vm| vm.extra_config.get(KEY_VCH).map(String::as_str) == Some(VCH_NAME)).count();
    let pools_left = inventory.resource_pools.iter().filter(|pool| pool.name == VCH_NAME).count();
    let folders_left = inventory.folders.iter().filter(|folder| folder.name == VCH_NAME).count();
    let _ = client.logout();

    print_results(args, &results, vch_create_s);
    // Other work on the machine shares its CPUs with berth and vcsim.
    let load = |text: &str| text.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    println!("Load average (1, 5, 15 min) before the runs: {}; after: {}.", load(&load_before), load(&load_after));
    if !vch_deleted {
        println!("Deleting VCH {VCH_NAME} failed: {status} {reply}");
    }
    println!(
        "After deleting VCH {VCH_NAME}: {vms_left} of its VMs, {pools_left} resource pools and {folders_left} folders named {VCH_NAME} are left in vSphere."
    );
    if let Some(error) = failure {
        return Err(error);
    }
    if !vch_deleted || vms_left + pools_left + folders_left > 0 {
        bail!("VCH {VCH_NAME} was not removed cleanly");
    }
    Ok(())
}

fn print_results(args: &BenchVsphereArgs, results: &[Vec<RunResult>], vch_create_s: f64) {
    if results.is_empty() {
        return;
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let rate = |run: &RunResult| args.containers as f64 / run.converged_s;
    // Runs are sorted by time; the middle one is the median.
    let medians: Vec<&RunResult> = results.iter().filter_map(|runs| runs.get(runs.len() / 2)).collect();
    println!(
        "# berth bench vsphere: {} containers per run (create + start) of {} busybox image(s), median of {} runs per client \
         count, vcsim on the same {cpus}-CPU machine, reconciler parallelism {RECONCILE_PARALLELISM}",
        args.containers,
        args.images.max(1),
        args.repeat.max(1)
    );
    println!();
    println!("VCH create through the admin API (validation + pool, folder, endpoint VM): {vch_create_s:.2} s");
    println!();
    println!(
        "| clients | containers/s (to all powered on in vSphere) | range over runs | time to all powered on | API calls done | \
         create p50 / p99 | start p50 / p99 | create request → powered on p50 / p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (runs, r) in results.iter().zip(&medians) {
        let (slowest, fastest) = (runs.last().map(rate).unwrap_or(0.0), runs.first().map(rate).unwrap_or(0.0));
        println!(
            "| {} | {:.0} | {slowest:.0}–{fastest:.0} | {:.2} s | {:.2} s | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.2} / {:.2} s |",
            r.clients,
            rate(r),
            r.converged_s,
            r.api_s,
            percentile(&r.create_ms, 0.5),
            percentile(&r.create_ms, 0.99),
            percentile(&r.start_ms, 0.5),
            percentile(&r.start_ms, 0.99),
            percentile(&r.powered_on_s, 0.5),
            percentile(&r.powered_on_s, 0.99),
        );
    }
    println!();
    println!("Where the time of the median run went, from the first request to the inventory read that showed all powered on:");
    println!();
    println!(
        "| clients | wall | vSphere calls | calls per container | mean call | vSphere-call time (summed) | \
         calls in flight (summed / wall) | berth CPU (of it system) | vSphere share | vcsim CPU (of it the benchmark's reads) | \
         berth CPU / (berth + vcsim CPU) | cleanup (rm -f until no VMs) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &medians {
        println!(
            "| {} | {:.2} s | {} | {:.1} | {:.1} ms | {:.2} s | {:.1} | {:.2} s ({:.2} s) | {:.0}% | {:.2} s (~{:.2} s) | {:.0}% | {:.2} s |",
            r.clients,
            r.converged_s,
            r.vsphere_calls,
            r.vsphere_calls as f64 / args.containers as f64,
            1000.0 * r.vsphere_s / (r.vsphere_calls.max(1) as f64),
            r.vsphere_s,
            r.vsphere_s / r.converged_s,
            r.berth_cpu_s,
            r.berth_system_cpu_s,
            100.0 * r.vsphere_s / (r.vsphere_s + r.berth_cpu_s).max(1e-9),
            r.vcsim_cpu_s,
            r.poll_count as f64 * r.poll_vcsim_cpu_ms / 1000.0,
            100.0 * r.berth_cpu_s / (r.berth_cpu_s + r.vcsim_cpu_s).max(1e-9),
            r.cleanup_s,
        );
    }
    println!();
    println!("vSphere share = vSphere-call time / (vSphere-call time + berth CPU time). vSphere-call time is the delta");
    println!("of berth_vsphere_call_seconds_total (SOAP round trips, summed over calls that overlap); berth CPU time is");
    println!("the user + system time of the berth serve process (/proc/PID/stat). Up to {RECONCILE_PARALLELISM} reconcile actions run at");
    println!("once, so the summed call time exceeds the wall time: it is no fraction of it.");
    let polls = medians.iter().map(|r| r.poll_count).max().unwrap_or(0);
    let read_ms = medians.iter().map(|r| r.poll_read_ms).fold(0.0, f64::max);
    println!(
        "Powered on = listed by vSphere with berth.generation >= 1 and poweredOn. The benchmark read the inventory every \
         {} ms (up to {polls} reads per run, {read_ms:.0} ms each at most on average): the times are late by up to one \
         interval plus one read.",
        args.poll_ms
    );
}
