//! The broker under test: started from the `hookline` binary next to this one, on a fresh
//! embedded PostgreSQL cluster (fsync on, the defaults), or an already running one given by
//! URL. Samples the broker process's RSS and CPU time from /proc.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

pub struct Broker {
    pub base: String,
    pub key: String,
    /// The embedded cluster's directory (its socket lives there), when we started one.
    pub cluster_dir: Option<PathBuf>,
    child: Option<Child>,
    pid: Option<u32>,
    peak_rss_kb: Arc<AtomicU64>,
    /// How to start it again (`restart`): the binary, its data directory and port.
    serve: Option<(PathBuf, PathBuf, u16)>,
}

/// `hookline <args>` on the data directory and port, with nothing from our environment that
/// would point it elsewhere.
fn command(exe: &Path, data_dir: &Path, port: u16, args: &[&str]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("HOOKLINE_DATA_DIR", data_dir)
        .env("HOOKLINE_BIND", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        // Logged errors without backtraces, whatever our own environment asks for.
        .env("RUST_LIB_BACKTRACE", "0")
        .env_remove("DATABASE_URL")
        .env_remove("HOOKLINE_ENCRYPTION_KEY");
    cmd
}

impl Broker {
    /// Port 0: a free one, so runs on one host do not meet.
    pub async fn start(exe: &Path, data_dir: &Path, port: u16) -> anyhow::Result<Self> {
        let port = match port {
            0 => std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
            p => p,
        };
        // Absolute: the cluster's socket lives in it and pg_ctl runs from `/`.
        let data_dir = &std::path::absolute(data_dir)?;
        let cluster = data_dir.join("postgres");
        stop_cluster(&cluster).await;
        let _ = std::fs::remove_dir_all(data_dir);
        std::fs::create_dir_all(data_dir)?;
        let mut serve = command(exe, data_dir, port, &["serve"]);
        let child = serve.kill_on_drop(true).spawn().with_context(|| format!("starting {}", exe.display()))?;
        let pid = child.id();
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&base).await?;
        let out = command(exe, data_dir, port, &["admin", "create-key", "--project", "bench"]).output().await?;
        if !out.status.success() {
            bail!("create-key failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let key =
            String::from_utf8(out.stdout)?.lines().last().context("create-key printed nothing")?.trim().to_owned();
        let broker = Self {
            base,
            key,
            cluster_dir: Some(cluster),
            child: Some(child),
            pid,
            peak_rss_kb: Arc::new(AtomicU64::new(0)),
            serve: Some((exe.to_owned(), data_dir.to_owned(), port)),
        };
        broker.sample_rss();
        Ok(broker)
    }

    pub async fn existing(base: String, key: String) -> anyhow::Result<Self> {
        wait_ready(&base).await?;
        let peak_rss_kb = Arc::new(AtomicU64::new(0));
        Ok(Self { base, key, cluster_dir: None, child: None, pid: None, peak_rss_kb, serve: None })
    }

    /// CPU seconds the broker has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid?)).ok()?;
        // Fields after the parenthesized command name; utime and stime are 14th and 15th.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / 100.0)
    }

    /// Peak RSS (MiB) since the last call.
    pub fn take_peak_rss_mib(&self) -> Option<f64> {
        self.pid?;
        let current = self.current_rss_kb().unwrap_or(0);
        Some(self.peak_rss_kb.swap(current, Ordering::Relaxed).max(current) as f64 / 1024.0)
    }

    fn current_rss_kb(&self) -> Option<u64> {
        read_rss_kb(self.pid?)
    }

    fn sample_rss(&self) {
        let (Some(pid), peak) = (self.pid, self.peak_rss_kb.clone()) else { return };
        tokio::spawn(async move {
            while let Some(kb) = read_rss_kb(pid) {
                peak.fetch_max(kb, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    /// SIGKILL: the process ends at once, mid-request, leaving its cluster running.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        self.pid = None;
    }

    /// Starts the broker again on the same data directory (and so the same cluster and
    /// encryption key) and waits until it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let (exe, data_dir, port) = self.serve.clone().context("not a broker this started")?;
        let child = command(&exe, &data_dir, port, &["serve"]).kill_on_drop(true).spawn()?;
        self.pid = child.id();
        self.child = Some(child);
        wait_ready(&self.base).await
    }

    /// Stops PostgreSQL in immediate mode (a crash: no checkpoint, recovery at start) and
    /// starts it again, while the broker keeps running.
    pub async fn crash_postgres(&self) -> anyhow::Result<()> {
        let cluster = self.cluster_dir.as_ref().context("not a cluster this started")?;
        let bin = crate::baseline::pg_bin_dir().context("PostgreSQL binaries not found")?;
        let status = crate::baseline::as_cluster_owner(&bin.join("pg_ctl"))
            .args(["restart", "-m", "immediate", "-w", "-D"])
            .arg(cluster)
            .arg("-l")
            .arg(cluster.join("server.log"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "pg_ctl restart failed: {status}");
        Ok(())
    }

    /// SIGTERM (the broker then stops its own cluster), then wait; then stop the cluster if
    /// it still runs (a restarted broker found it running and leaves it be).
    pub async fn stop(mut self) {
        if let (Some(pid), Some(mut child)) = (self.pid, self.child.take()) {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
            if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        if let Some(cluster) = &self.cluster_dir {
            stop_cluster(cluster).await;
        }
    }
}

fn read_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn wait_ready(base: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the broker at {base} did not become ready in 60 s")
}

/// Stops a cluster left running by an earlier, interrupted run.
async fn stop_cluster(cluster: &Path) {
    if !cluster.join("postmaster.pid").exists() {
        return;
    }
    let Some(bin) = crate::baseline::pg_bin_dir() else { return };
    let mut cmd = crate::baseline::as_cluster_owner(&bin.join("pg_ctl"));
    let _ = cmd.args(["stop", "-m", "fast", "-D"]).arg(cluster).output().await;
}
