//! The `hookline` command: serve | migrate | admin | openapi.
#![forbid(unsafe_code)]

use std::num::NonZeroU32;
use std::path::Path;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hookline::domain::{LimitOverrides, Plan, Scopes, WebhookId};
use hookline::local_pg::{self, LocalPostgres};
use hookline::store::accounts::Role;
use hookline::{auth, crypto::KeyRing, store, telemetry, Application, Config};
use secrecy::{ExposeSecret, SecretString};

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
        /// free, pro, enterprise or unlimited. A new project without it gets
        /// HOOKLINE_DEFAULT_PLAN; an existing one is moved to it.
        #[arg(long)]
        plan: Option<Plan>,
        /// Comma-separated: manage, consume, publish (default: all).
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// Comma-separated webhook ids the key is limited to (default: all of the project's).
        #[arg(long, value_delimiter = ',')]
        webhooks: Option<Vec<WebhookId>>,
        /// A label for the key.
        #[arg(long)]
        name: Option<String>,
    },
    /// Create a dashboard user (or reset their password) as a member of a project. The
    /// password is read from the first line of standard input.
    CreateUser {
        #[arg(long)]
        email: String,
        #[arg(long)]
        project: String,
        /// owner or member.
        #[arg(long, default_value = "member")]
        role: Role,
    },
    /// List a project's keys (prefix, scopes, created, last used, revoked).
    ListKeys {
        #[arg(long)]
        project: String,
    },
    /// Revoke a key by its prefix (the part after `hl_`); it stops working at once everywhere.
    RevokeKey {
        #[arg(long)]
        prefix: String,
    },
    /// Set a project's plan and override its limits (an omitted limit reverts to the plan's).
    SetLimits {
        #[arg(long)]
        project: String,
        #[arg(long)]
        plan: Option<Plan>,
        /// Ingestions per second per webhook.
        #[arg(long)]
        ingest_per_second: Option<NonZeroU32>,
        /// Dequeues per second per webhook.
        #[arg(long)]
        dequeue_per_second: Option<NonZeroU32>,
        /// Commits and errors per second per webhook.
        #[arg(long)]
        ack_per_second: Option<NonZeroU32>,
        #[arg(long)]
        max_webhooks: Option<u32>,
        /// Largest ingestion body (HOOKLINE_MAX_BODY_BYTES still caps it).
        #[arg(long)]
        max_body_bytes: Option<usize>,
    },
}

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
                config.encryption_key = Some(load_or_create_key(&key_file, config.encryption_key.take())?.into());
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
            let pool = store::connect(config.database_url.as_ref().map_or("", |u| u.expose_secret()), 2).await?;
            store::migrate(&pool).await.context("applying migrations")?;
            println!("migrations applied");
            local.inspect(|pg| pg.stop_if_started_here());
        }
        Command::Admin { task } => {
            let local = resolve_database(&mut config).await?;
            let pool = store::connect(config.database_url.as_ref().map_or("", |u| u.expose_secret()), 2).await?;
            store::migrate(&pool).await.context("applying migrations")?;
            let result = admin(&pool, &config, task).await;
            local.inspect(|pg| pg.stop_if_started_here());
            result?;
        }
    }
    Ok(())
}

async fn admin(pool: &sqlx::PgPool, config: &Config, task: AdminTask) -> anyhow::Result<()> {
    match task {
        AdminTask::CreateKey { project, plan, scopes, webhooks, name } => {
            let scopes = match scopes {
                Some(names) => Scopes::parse(&names)?,
                None => Scopes::ALL,
            };
            let mut tx = store::begin(pool).await?;
            let id = store::projects::ensure(&mut *tx, &project, plan.unwrap_or(config.default_plan), plan.is_some())
                .await?;
            let grant = auth::KeyGrant { name: name.as_deref(), scopes, webhooks: webhooks.as_deref() };
            let key = auth::mint_key(&mut tx, id, &grant).await?;
            store::commit(tx).await?;
            println!(
                "Created an API key for project {project:?} ({}). It is shown only once:",
                scopes.names().join(", ")
            );
            println!("{}", key.expose());
        }
        AdminTask::CreateUser { email, project, role } => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']).to_owned();
            anyhow::ensure!(password.chars().count() >= 12, "the password must be at least 12 characters");
            let email = hookline::http::normalize_email(&email);
            anyhow::ensure!(email.contains('@'), "{email:?} is not an email address");
            let hash = tokio::task::spawn_blocking(move || hookline::crypto::password::hash_secret(&password)).await?;
            let mut tx = store::begin(pool).await?;
            let id = store::projects::ensure(&mut *tx, &project, config.default_plan, false).await?;
            let user = store::accounts::upsert_user(&mut *tx, &email, &hash).await?;
            store::accounts::add_member(&mut *tx, user, id, role).await?;
            store::commit(tx).await?;
            println!("User {email} is now {role:?} of project {project:?}.");
        }
        AdminTask::ListKeys { project } => {
            let id = store::projects::find(pool, &project).await?;
            for k in store::keys::list(pool, id).await? {
                let state = k.revoked_at.map_or("live".to_owned(), |at| format!("revoked {at}"));
                let used = k.last_used_at.map_or("never used".to_owned(), |at| format!("last used {at}"));
                println!("{}  [{}]  created {}  {used}  {state}", k.prefix, k.scopes.join(","), k.created_at);
            }
        }
        AdminTask::RevokeKey { prefix } => {
            store::keys::revoke(pool, None, &prefix).await?;
            println!("Key {prefix} revoked.");
        }
        AdminTask::SetLimits {
            project,
            plan,
            ingest_per_second,
            dequeue_per_second,
            ack_per_second,
            max_webhooks,
            max_body_bytes,
        } => {
            let overrides =
                LimitOverrides { ingest_per_second, dequeue_per_second, ack_per_second, max_webhooks, max_body_bytes };
            store::projects::set_limits(pool, &project, plan, &overrides).await?;
            println!("Project {project:?} updated (replicas apply it within HOOKLINE_PLAN_CACHE_SECONDS).");
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
    local_pg::ensure_database(&pg.url("postgres")).await?;
    tracing::info!(cluster = %pg.dir().display(), "using the local PostgreSQL cluster (set DATABASE_URL to use another)");
    config.database_url = Some(pg.url(store::cluster::DATABASE).into());
    Ok(Some(pg))
}

/// The embedded default keeps its encryption key next to its cluster, created once.
fn load_or_create_key(path: &Path, from_env: Option<SecretString>) -> anyhow::Result<String> {
    if let Some(key) = from_env {
        return Ok(key.expose_secret().to_owned());
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
