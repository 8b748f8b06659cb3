//! The raw-SQL baseline: the same durable work the broker does, driven by pgbench against
//! the same PostgreSQL cluster, so each broker figure can be read as a ratio to it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use tokio::process::Command;

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pgbench");

/// One pgbench run: a script, its clients, and the webhook range it draws from.
pub struct Run {
    pub name: &'static str,
    pub script: &'static str,
    pub clients: u32,
    pub webhooks: (u32, u32),
    /// Messages per transaction, to turn transactions into messages.
    pub per_txn: u32,
}

pub const RUNS: &[Run] = &[
    Run { name: "ingest-many", script: "ingest_one_row.sql", clients: 64, webhooks: (1, 1000), per_txn: 1 },
    Run { name: "ingest-one", script: "ingest_one_row.sql", clients: 64, webhooks: (1, 1), per_txn: 1 },
    Run { name: "ingest-batch64", script: "ingest_batch64.sql", clients: 8, webhooks: (1, 1000), per_txn: 64 },
    Run { name: "fifo-one", script: "fifo_pair.sql", clients: 1, webhooks: (1, 1), per_txn: 1 },
    Run { name: "fifo-many", script: "fifo_pair.sql", clients: 64, webhooks: (2, 1000), per_txn: 1 },
];

/// Prepares the `baseline` database on the cluster and runs every script for `secs`.
/// Returns (name, messages per second).
pub async fn run_all(hookline: &Path, cluster: &Path, secs: u64) -> anyhow::Result<Vec<(&'static str, f64)>> {
    let bin = pg_bin_dir().context("PostgreSQL binaries not found")?;
    let url = |db: &str| format!("postgres://postgres@localhost/{db}?host={}&port=5432", cluster.display());
    psql(&bin, cluster, "postgres", &["-c", "DROP DATABASE IF EXISTS baseline"]).await?;
    psql(&bin, cluster, "postgres", &["-c", "CREATE DATABASE baseline"]).await?;
    let migrate = Command::new(hookline).arg("migrate").env("DATABASE_URL", url("baseline")).output().await?;
    if !migrate.status.success() {
        bail!("migrating the baseline database: {}", String::from_utf8_lossy(&migrate.stderr));
    }
    psql(&bin, cluster, "baseline", &["-f", &format!("{SCRIPTS}/setup.sql")]).await?;
    let mut out = Vec::new();
    for run in RUNS {
        let tps = pgbench(&bin, cluster, run, secs).await?;
        out.push((run.name, tps * run.per_txn as f64));
    }
    Ok(out)
}

async fn pgbench(bin: &Path, cluster: &Path, run: &Run, secs: u64) -> anyhow::Result<f64> {
    let out = Command::new(bin.join("pgbench"))
        .args(["-n", "-h"])
        .arg(cluster)
        .args(["-p", "5432", "-U", "postgres", "-j", "2", "-c", &run.clients.to_string(), "-T", &secs.to_string()])
        .args(["-D", &format!("lo={}", run.webhooks.0), "-D", &format!("hi={}", run.webhooks.1)])
        .arg("-f")
        .arg(format!("{SCRIPTS}/{}", run.script))
        .arg("baseline")
        .stdin(Stdio::null())
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok());
    match tps {
        Some(t) if out.status.success() => Ok(t),
        _ => bail!("pgbench {} failed: {}{}", run.script, text, String::from_utf8_lossy(&out.stderr)),
    }
}

/// Runs SQL on the broker's own database in the cluster.
pub async fn broker_sql(cluster: &Path, sql: &str) -> anyhow::Result<()> {
    let bin = pg_bin_dir().context("PostgreSQL binaries not found")?;
    psql(&bin, cluster, "hookline", &["-c", sql]).await
}

/// Runs a query on the broker's own database and returns its rows, unaligned (`|` between
/// columns, a line per row).
pub async fn broker_query(cluster: &Path, sql: &str) -> anyhow::Result<String> {
    let bin = pg_bin_dir().context("PostgreSQL binaries not found")?;
    let out = psql_command(&bin, cluster, "hookline").args(["-At", "-c", sql]).output().await?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn psql_command(bin: &Path, cluster: &Path, db: &str) -> Command {
    let mut cmd = Command::new(bin.join("psql"));
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"]).arg(cluster).args(["-p", "5432", "-U", "postgres", "-d", db]);
    cmd
}

async fn psql(bin: &Path, cluster: &Path, db: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = psql_command(bin, cluster, db).args(args).output().await?;
    if !out.status.success() {
        bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The newest Debian PostgreSQL binaries, or HOOKLINE_PG_BIN_DIR.
pub fn pg_bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("HOOKLINE_PG_BIN_DIR") {
        return Some(d.into());
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, d)| d)
}

/// pg_ctl refuses root: run it as `postgres` when we are root, like the broker does.
pub fn as_cluster_owner(program: &Path) -> Command {
    let root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")));
    let mut cmd = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.current_dir("/");
    cmd
}
