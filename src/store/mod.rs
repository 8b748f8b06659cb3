//! Every SQL statement lives here, one module per aggregate. Functions take any executor
//! so callers can compose them in a transaction, and every one is scoped by the project or
//! webhook it belongs to. A state transition is one statement whose WHERE clause is its
//! precondition: no row changed means the transition was not allowed.

pub mod accounts;
pub mod dead_letters;
pub mod keys;
pub mod messages;
pub mod projects;
pub mod stats;
pub mod webhooks;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// What the store tells its callers, beyond rows.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

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

/// Maps the SQLSTATE a plpgsql function raises for a missing row.
pub(crate) fn not_found_as(err: sqlx::Error, what: &'static str) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("P0002") => StoreError::NotFound(what),
        _ => StoreError::Database(err),
    }
}
