//! Every SQL statement lives here, one module per aggregate, checked against the schema at
//! compile time (`sqlx::query!`, offline data in `.sqlx/`). Functions take any executor so
//! callers can compose them in a transaction, and every one is scoped by the project or
//! webhook it belongs to. A state transition is one statement (or one function of the
//! baseline migration) whose precondition decides; a refusal comes back as a typed
//! [`Refusal`], never as error text.

pub mod accounts;
pub mod batching;
pub mod cluster;
pub mod consumer_batch;
pub mod dead_letters;
mod error;
pub mod group_commit;
pub mod head;
pub mod keys;
pub mod listener;
pub mod maintenance;
pub mod messages;
pub mod projects;
pub mod stats;
pub mod wakeups;
pub mod webhooks;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

pub use error::{Context, DbError, Refusal, StoreError, StoreResult};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // A ping before every checkout would double the round trips of a dequeue; a broken
        // connection shows up as an error on the query itself instead.
        .test_before_acquire(false)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await
}

/// The versions of the pre-release migrations that the baseline replaced.
const SUPERSEDED: std::ops::RangeInclusive<i64> = 20261129000001..=20261129000008;

/// Applies the migrations, after refusing a database that the pre-release migration files
/// (replaced by the baseline) left behind: migrating it would fail half-way.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let applied: Vec<i64> =
        sqlx::query_scalar!(r#"SELECT version AS "version!" FROM _sqlx_migrations ORDER BY version"#)
            .fetch_all(pool)
            .await
            .or_else(|e| match &e {
                // No migrations table yet: a new database.
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(Vec::new()),
                _ => Err(e),
            })?;
    if applied.iter().any(|v| SUPERSEDED.contains(v)) {
        anyhow::bail!(
            "this database was migrated by hookline's pre-release migrations (versions {}..={}), which the \
             baseline migration replaced; it cannot be upgraded in place. Point DATABASE_URL at a new, empty \
             database (or drop and recreate this one) and start again; with the embedded default (no \
             DATABASE_URL), remove the `postgres` directory under HOOKLINE_DATA_DIR. No released version ever \
             used these migrations.",
            SUPERSEDED.start(),
            SUPERSEDED.end()
        );
    }
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// A connection of the pool, for calls that run several statements on one.
pub async fn connection(pool: &PgPool) -> StoreResult<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    pool.acquire().await.context("acquiring a database connection")
}

/// A transaction, for callers that compose several store calls.
pub async fn begin(pool: &PgPool) -> StoreResult<sqlx::Transaction<'static, sqlx::Postgres>> {
    pool.begin().await.context("beginning a transaction")
}

pub async fn commit(tx: sqlx::Transaction<'_, sqlx::Postgres>) -> StoreResult<()> {
    tx.commit().await.context("committing a transaction")
}

/// Whether the database answers (readiness).
pub async fn ping(pool: &PgPool) -> StoreResult<()> {
    sqlx::query!("SELECT 1 AS one").fetch_one(pool).await.context("pinging the database")?;
    Ok(())
}
