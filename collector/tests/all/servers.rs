//! Redis servers for the tests: `redis-server` on a free loopback port, in a
//! temporary directory, stopped (by PID) when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Redis {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "headcount-redis-{tag}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Redis {
    /// A standalone server; `aof`: with the append-only file.
    pub fn start(aof: bool) -> Redis {
        let dir = temp_dir("single");
        let mut r = Redis {
            port: free_port(),
            dir,
            child: None,
        };
        r.spawn(aof, &[]);
        r
    }

    fn spawn(&mut self, aof: bool, extra: &[&str]) {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", self.dir.to_str().unwrap(), "--save", ""])
            .args(["--appendonly", if aof { "yes" } else { "no" }])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} ({e}): install Debian's redis-server (./dev test does)")
            });
        self.child = Some(child);
        self.wait_ready();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).unwrap();
        loop {
            let pong = client
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} never answered",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Shuts the server down as an operator would (`SHUTDOWN`: the append-only
    /// file is written out), then starts it again on the same port and folder.
    pub fn restart(&mut self, aof: bool) {
        if let Some(mut c) = self.child.take() {
            let client = redis::Client::open(self.url()).unwrap();
            if let Ok(mut con) = client.get_connection() {
                // The server closes the connection as it exits: no reply is expected.
                let _ = redis::cmd("SHUTDOWN").query::<()>(&mut con);
            }
            let _ = c.wait();
        }
        self.spawn(aof, &[]);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three primaries (no replicas), made with `redis-cli --cluster create`.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let mut r = Redis {
                port: free_port(),
                dir: temp_dir("cluster"),
                child: None,
            };
            let conf = r.dir.join("nodes.conf");
            r.spawn(
                false,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                ],
            );
            nodes.push(r);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let cli = std::env::var("REDIS_CLI").unwrap_or_else(|_| "redis-cli".into());
        let out = Command::new(&cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cli}: {e}"));
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Cluster { nodes };
        c.wait_ok();
        c
    }

    /// Every node says `cluster_state:ok` (all slots served).
    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &self.nodes {
            let client = redis::Client::open(n.url()).unwrap();
            loop {
                let info: String = client
                    .get_connection()
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c))
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster never became ok: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

/// A `headcount-collector` process on a free port, stopped when dropped.
pub struct Collector {
    pub url: String,
    child: Child,
    _config: tempfile_path::TempPath,
}

pub mod tempfile_path {
    /// A file removed when dropped.
    pub struct TempPath(pub std::path::PathBuf);

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// A plugin configuration file for the collector.
pub fn config_file(json: &str) -> tempfile_path::TempPath {
    let path = std::env::temp_dir().join(format!(
        "headcount-collector-{}-{}.json",
        std::process::id(),
        free_port()
    ));
    std::fs::write(&path, json).unwrap();
    tempfile_path::TempPath(path)
}

/// Runs the collector binary with `args`; its exit code and stderr (for the
/// refusals, which exit at once).
pub fn run_collector(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_headcount-collector"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Collector {
    /// Starts one, and waits for its "listening on" line.
    pub fn start(store: &str, config: &str) -> Collector {
        use std::io::BufRead;
        let cfg = config_file(config);
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_headcount-collector"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--store", store])
            .args(["--config", cfg.0.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening on"), "collector said {line:?}");
        Collector {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _config: cfg,
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
