//! Configuration: read once from the environment (and an optional `.env`), validated at start.
//! Every field is documented in `.env.example`.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use secrecy::SecretString;

use crate::domain::{HoldSeconds, Plan};
use crate::store::group_commit::GroupCommitConfig;

/// Secrets are `SecretString`s: `Debug` shows them redacted, so logging the config is safe.
#[derive(Debug, Clone)]
pub struct Config {
    /// PostgreSQL to use. None: `serve` runs its own cluster under `data_dir`.
    pub database_url: Option<SecretString>,
    /// Address the HTTP server listens on.
    pub bind: String,
    /// Base URL clients use to reach this broker, for `ingestUrl`; derived from `bind` if unset.
    pub public_url: Option<String>,
    /// Base64 of 32 bytes; seals new payloads.
    pub encryption_key: Option<SecretString>,
    /// Older keys, comma-separated: they only decrypt, for rotation.
    pub encryption_old_keys: Vec<SecretString>,
    /// Largest accepted ingestion body.
    pub max_body_bytes: usize,
    /// Where the embedded default keeps its PostgreSQL cluster and encryption key.
    pub data_dir: PathBuf,
    /// Size of the PostgreSQL connection pool.
    pub db_max_connections: u32,
    /// How long a verified API key is trusted without asking argon2 again.
    pub api_key_cache_ttl: Duration,
    /// Plan of projects `hookline admin create-key` creates without `--plan`.
    pub default_plan: Plan,
    /// Requests per second one API key may make (projects on the unlimited plan excepted).
    pub api_key_rate_limit: Option<NonZeroU32>,
    /// How long a project's plan and limits are cached; a change takes effect within it.
    pub plan_cache_ttl: Duration,
    /// Ingestion group commit: batch size, linger and concurrent writers.
    pub group_commit: GroupCommitConfig,
    /// Consumers' commit group commit: batch size, linger and concurrent writers.
    pub consumer_batch: GroupCommitConfig,
    /// Run the periodic jobs (lock reaper, TTL purger) in this process.
    pub run_jobs: bool,
    /// Reverse proxies whose `X-Forwarded-For` names the client (for the login limiter);
    /// from any other peer the header is ignored.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Longest hold a consumer's error may ask for (`holdSeconds`).
    pub max_hold: HoldSeconds,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let number = |name: &str, default: u64| -> anyhow::Result<u64> {
            match var(name) {
                None => Ok(default),
                Some(v) => v.trim().parse().with_context(|| format!("{name} must be a whole number, got {v:?}")),
            }
        };
        let max_body_bytes = number("HOOKLINE_MAX_BODY_BYTES", 1024 * 1024)? as usize;
        if max_body_bytes == 0 {
            bail!("HOOKLINE_MAX_BODY_BYTES must be at least 1");
        }
        Ok(Self {
            database_url: var("DATABASE_URL").map(SecretString::from),
            bind: var("HOOKLINE_BIND").unwrap_or_else(|| "127.0.0.1:8080".into()),
            public_url: var("HOOKLINE_PUBLIC_URL").map(|u| u.trim_end_matches('/').to_owned()),
            encryption_key: var("HOOKLINE_ENCRYPTION_KEY").map(SecretString::from),
            encryption_old_keys: var("HOOKLINE_ENCRYPTION_OLD_KEYS")
                .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(SecretString::from).collect())
                .unwrap_or_default(),
            max_body_bytes,
            data_dir: var("HOOKLINE_DATA_DIR").map(PathBuf::from).unwrap_or_else(default_data_dir),
            db_max_connections: number("HOOKLINE_DB_MAX_CONNECTIONS", 32)? as u32,
            api_key_cache_ttl: Duration::from_secs(number("HOOKLINE_API_KEY_CACHE_SECONDS", 30)?),
            default_plan: match var("HOOKLINE_DEFAULT_PLAN") {
                None => Plan::Unlimited,
                Some(p) => p.trim().parse().map_err(|e: String| anyhow::anyhow!("HOOKLINE_DEFAULT_PLAN: {e}"))?,
            },
            api_key_rate_limit: NonZeroU32::new(number("HOOKLINE_API_KEY_RATE_LIMIT", 100)?.min(u32::MAX as u64) as u32),
            plan_cache_ttl: Duration::from_secs(number("HOOKLINE_PLAN_CACHE_SECONDS", 5)?),
            group_commit: GroupCommitConfig {
                max_batch: number("HOOKLINE_INGEST_BATCH_MAX", 256)?.clamp(1, 10_000) as usize,
                max_wait: Duration::from_micros(number("HOOKLINE_INGEST_BATCH_WAIT_MICROS", 0)?.min(100_000)),
                flushers: number("HOOKLINE_INGEST_WRITERS", 4)?.clamp(1, 64) as usize,
            },
            consumer_batch: GroupCommitConfig {
                max_batch: number("HOOKLINE_ACK_BATCH_MAX", 128)?.clamp(1, 10_000) as usize,
                max_wait: Duration::from_micros(number("HOOKLINE_ACK_BATCH_WAIT_MICROS", 0)?.min(100_000)),
                flushers: number("HOOKLINE_ACK_WRITERS", 4)?.clamp(1, 64) as usize,
            },
            run_jobs: var("HOOKLINE_RUN_JOBS").map(|v| v != "false" && v != "0").unwrap_or(true),
            trusted_proxies: var("HOOKLINE_TRUSTED_PROXIES")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|ip| {
                            ip.parse().with_context(|| format!("HOOKLINE_TRUSTED_PROXIES: {ip:?} is not an IP address"))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                })
                .transpose()?
                .unwrap_or_default(),
            max_hold: match number("HOOKLINE_MAX_HOLD_SECONDS", 3600)? {
                seconds @ 1..=86_400 => HoldSeconds::bound(seconds),
                other => bail!("HOOKLINE_MAX_HOLD_SECONDS must be between 1 and 86400, got {other}"),
            },
        })
    }
}

/// Root keeps its data where the `postgres` user can reach it; others under their home.
fn default_data_dir() -> PathBuf {
    if crate::local_pg::running_as_root() {
        return PathBuf::from("/var/lib/hookline");
    }
    match std::env::var_os("XDG_DATA_HOME")
        .or_else(|| std::env::var_os("HOME").map(|h| format!("{}/.local/share", h.to_string_lossy()).into()))
    {
        Some(base) => PathBuf::from(base).join("hookline"),
        None => PathBuf::from(".hookline"),
    }
}
