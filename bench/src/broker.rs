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
}

impl Broker {
    pub async fn start(exe: &Path, data_dir: &Path, port: u16) -> anyhow::Result<Self> {
        // Absolute: the cluster's socket lives in it and pg_ctl runs from `/`.
        let data_dir = &std::path::absolute(data_dir)?;
        let cluster = data_dir.join("postgres");
        stop_cluster(&cluster).await;
        let _ = std::fs::remove_dir_all(data_dir);
        std::fs::create_dir_all(data_dir)?;
        let env = |cmd: &mut Command| {
            cmd.env("HOOKLINE_DATA_DIR", data_dir)
                .env("HOOKLINE_BIND", format!("127.0.0.1:{port}"))
                .env("RUST_LOG", "warn")
                .env_remove("DATABASE_URL")
                .env_remove("HOOKLINE_ENCRYPTION_KEY");
        };
        let mut serve = Command::new(exe);
        serve.arg("serve").kill_on_drop(true);
        env(&mut serve);
        let child = serve.spawn().with_context(|| format!("starting {}", exe.display()))?;
        let pid = child.id();
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&base).await?;
        let mut admin = Command::new(exe);
        admin.args(["admin", "create-key", "--project", "bench"]);
        env(&mut admin);
        let out = admin.output().await?;
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
        };
        broker.sample_rss();
        Ok(broker)
    }

    pub async fn existing(base: String, key: String) -> anyhow::Result<Self> {
        wait_ready(&base).await?;
        Ok(Self { base, key, cluster_dir: None, child: None, pid: None, peak_rss_kb: Arc::new(AtomicU64::new(0)) })
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

    /// SIGTERM (the broker then stops its own cluster), then wait.
    pub async fn stop(mut self) {
        if let (Some(pid), Some(mut child)) = (self.pid, self.child.take()) {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
            if tokio::time::timeout(Duration::from_secs(30), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
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
