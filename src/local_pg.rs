//! The embedded default: with no DATABASE_URL, hookline runs its own PostgreSQL cluster
//! from the machine's PostgreSQL binaries, listening only on a Unix socket inside its data
//! directory. `initdb` and `postgres` refuse to run as root, so as root they run as the
//! `postgres` system user (through `runuser`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{anyhow, bail, Context};

/// The socket file is `.s.PGSQL.<port>` in the cluster directory; nothing listens on TCP.
const SOCKET_PORT: u16 = 5432;
const SERVICE_USER: &str = "postgres";

pub struct LocalPostgres {
    bin_dir: PathBuf,
    dir: PathBuf,
    run_as: Option<&'static str>,
    started_here: bool,
}

pub const INSTALL_HINT: &str = "PostgreSQL's server binaries were not found. Install them (Debian/Ubuntu: \
     `apt-get install postgresql`, run as root or with sudo), set HOOKLINE_PG_BIN_DIR to the directory \
     holding initdb and pg_ctl, or set DATABASE_URL to use an existing server.";

impl LocalPostgres {
    /// Initializes the cluster in `dir` if needed and starts it unless it already runs.
    /// `settings` are extra `-c name=value` server settings.
    pub fn start(dir: &Path, settings: &[&str]) -> anyhow::Result<Self> {
        let bin_dir = find_bin_dir().ok_or_else(|| anyhow!(INSTALL_HINT))?;
        let run_as = running_as_root().then_some(SERVICE_USER);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let mut pg = Self { bin_dir, dir, run_as, started_here: false };
        let initialized = pg.dir.join("PG_VERSION").exists();
        // An initialized cluster already belongs to its user; walking a running one's files
        // would race with the server creating and removing them.
        if let Some(user) = run_as.filter(|_| !initialized) {
            pg.check(Command::new("chown").arg("-R").arg(format!("{user}:")).arg(&pg.dir))
                .with_context(|| format!("giving {} to the `{user}` user (does it exist?)", pg.dir.display()))?;
        }
        pg.check(pg.command("chmod").arg("700").arg(&pg.dir))?;
        if !initialized {
            tracing::info!(dir = %pg.dir.display(), "initializing a local PostgreSQL cluster");
            pg.check(
                pg.command(pg.tool("initdb"))
                    .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "-D"])
                    .arg(&pg.dir),
            )
            .context("initdb failed")?;
        }
        if pg.is_running() {
            return Ok(pg);
        }
        let mut options =
            format!("-c listen_addresses='' -c unix_socket_directories='{}' -p {SOCKET_PORT}", pg.dir.display());
        for s in settings {
            options.push_str(" -c ");
            options.push_str(s);
        }
        let log = pg.dir.join("server.log");
        let started = pg.run(
            pg.command(pg.tool("pg_ctl"))
                .arg("start")
                .arg("-w")
                .arg("-D")
                .arg(&pg.dir)
                .arg("-l")
                .arg(&log)
                .arg("-o")
                .arg(&options),
        )?;
        // Another process may have started it between our check and our start.
        if !started.status.success() && !pg.is_running() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(15).collect();
            bail!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&started.stderr),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        pg.started_here = started.status.success();
        Ok(pg)
    }

    /// A connection URL for `database` over the cluster's socket.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@localhost/{database}?host={}&port={SOCKET_PORT}", self.dir.display())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the cluster if this process started it.
    pub fn stop_if_started_here(&self) {
        if self.started_here {
            let _ = self.run(self.command(self.tool("pg_ctl")).args(["stop", "-m", "fast", "-w", "-D"]).arg(&self.dir));
        }
    }

    fn is_running(&self) -> bool {
        self.run(self.command(self.tool("pg_ctl")).arg("status").arg("-D").arg(&self.dir))
            .is_ok_and(|o| o.status.success())
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    /// A command run as the cluster's owner, from a directory that owner can enter.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.current_dir("/");
        cmd
    }

    fn run(&self, cmd: &mut Command) -> anyhow::Result<Output> {
        cmd.output().with_context(|| format!("running {cmd:?}"))
    }

    fn check(&self, cmd: &mut Command) -> anyhow::Result<()> {
        let out = self.run(cmd)?;
        if !out.status.success() {
            bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    }
}

/// Creates the `hookline` database on the server behind `admin_url` if it does not exist.
pub async fn ensure_database(admin_url: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(admin_url).await.context("connecting to the local PostgreSQL")?;
    crate::store::cluster::ensure_hookline_database(&mut conn).await?;
    Ok(())
}

/// The newest PostgreSQL server binaries on this machine.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HOOKLINE_PG_BIN_DIR") {
        return Some(PathBuf::from(dir));
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Some(bin);
    }
    let mut candidates = vec![PathBuf::from("/usr/local/pgsql/bin")];
    candidates.extend(std::env::var_os("PATH").iter().flat_map(std::env::split_paths));
    candidates.into_iter().find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
}

/// Whether this process runs as root (uid 0), read from /proc so no unsafe call is needed.
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            .is_some_and(|uid| uid == "0")
    })
}
