//! The `hookline` command: serve | migrate | admin | openapi.
#![forbid(unsafe_code)]

use std::path::Path;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hookline::local_pg::{self, LocalPostgres};
use hookline::{auth, crypto::KeyRing, store, telemetry, Application, Config};

#[derive(Parser)]
#[command(name = "hookline", version, about = "Webhook ingestion broker: per-webhook strict FIFO queues on PostgreSQL")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (with no DATABASE_URL, on its own local PostgreSQL).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Operator tasks.
    Admin {
        #[command(subcommand)]
        task: AdminTask,
    },
    /// Print the OpenAPI document.
    Openapi,
}

#[derive(Subcommand)]
enum AdminTask {
    /// Create an API key (and its project, if new); the key is the last line printed.
    CreateKey {
        #[arg(long, default_value = "default")]
        project: String,
    },
}

/// The embedded database's name inside its cluster.
const LOCAL_DATABASE: &str = "hookline";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = dotenvy::dotenv();
    telemetry::init();
    let cli = Cli::parse();
    let mut config = Config::from_env()?;
    match cli.command {
        Command::Openapi => println!("{}", hookline::http::openapi::document()),
        Command::Serve => {
            if config.database_url.is_none() {
                let key_file = config.data_dir.join("encryption.key");
                config.encryption_key = Some(load_or_create_key(&key_file, config.encryption_key.take())?);
            } else if config.encryption_key.is_none() {
                anyhow::bail!(
                    "HOOKLINE_ENCRYPTION_KEY is required when DATABASE_URL is set: base64 of 32 random bytes \
                     (for example `openssl rand -base64 32`). Keep it safe: messages cannot be read without it."
                );
            }
            let local = resolve_database(&mut config).await?;
            let result = async { Application::build(&config).await?.run_until_stopped().await }.await;
            if let Some(pg) = local {
                pg.stop_if_started_here();
            }
            result?;
        }
        Command::Migrate => {
            let local = resolve_database(&mut config).await?;
            let pool = store::connect(config.database_url.as_deref().unwrap_or_default(), 2).await?;
            store::MIGRATOR.run(&pool).await.context("applying migrations")?;
            println!("migrations applied");
            local.inspect(|pg| pg.stop_if_started_here());
        }
        Command::Admin { task: AdminTask::CreateKey { project } } => {
            let local = resolve_database(&mut config).await?;
            let pool = store::connect(config.database_url.as_deref().unwrap_or_default(), 2).await?;
            store::MIGRATOR.run(&pool).await.context("applying migrations")?;
            let (_, key) = auth::create_key(&pool, &project).await?;
            local.inspect(|pg| pg.stop_if_started_here());
            println!("Created an API key for project {project:?}. It is shown only once:");
            println!("{}", key.expose());
        }
    }
    Ok(())
}

/// With no DATABASE_URL, starts (or joins) the local cluster under the data directory.
async fn resolve_database(config: &mut Config) -> anyhow::Result<Option<LocalPostgres>> {
    if config.database_url.is_some() {
        return Ok(None);
    }
    let data_dir = config.data_dir.clone();
    let cluster = data_dir.join("postgres");
    let pg = tokio::task::spawn_blocking(move || LocalPostgres::start(&cluster, &[])).await??;
    local_pg::ensure_database(&pg.url("postgres"), LOCAL_DATABASE).await?;
    tracing::info!(cluster = %pg.dir().display(), "using the local PostgreSQL cluster (set DATABASE_URL to use another)");
    config.database_url = Some(pg.url(LOCAL_DATABASE));
    Ok(Some(pg))
}

/// The embedded default keeps its encryption key next to its cluster, created once.
fn load_or_create_key(path: &Path, from_env: Option<String>) -> anyhow::Result<String> {
    if let Some(key) = from_env {
        return Ok(key);
    }
    if let Ok(key) = std::fs::read_to_string(path) {
        return Ok(key.trim().to_owned());
    }
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    let key = KeyRing::generate_base64();
    write_private(path, &key).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "hookline: generated an encryption key and kept it in {} (back it up: messages cannot be read without it)",
        path.display()
    );
    Ok(key)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())
}
