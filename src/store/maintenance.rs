//! What the periodic jobs (`src/jobs/`) do to the database, each step one bounded
//! statement inside a transaction that holds the job's advisory lock.

use sqlx::{PgConnection, PgExecutor};

use super::{Context, StoreResult};

/// Takes the job's advisory lock for this transaction; false when another replica holds it.
pub async fn try_job_lock(tx: &mut PgConnection, key: i64) -> StoreResult<bool> {
    sqlx::query_scalar!(r#"SELECT pg_try_advisory_xact_lock($1) AS "taken!""#, key)
        .fetch_one(tx)
        .await
        .context("taking a job's advisory lock")
}

/// Releases up to `limit` expired locks of each kind (FIFO and standard mode), each a failed
/// attempt; returns how many.
pub async fn release_expired_locks(db: impl PgExecutor<'_>, limit: i32) -> StoreResult<u64> {
    let released = sqlx::query_scalar!(r#"SELECT hookline_release_expired_locks($1) AS "n!""#, limit)
        .fetch_one(db)
        .await
        .context("releasing expired locks")?;
    Ok(released as u64)
}

/// Removes up to `limit` rows (messages, idempotency keys) of deleted webhooks; returns how
/// many. A webhook's delete only removes its row; this clears what it left behind.
pub async fn sweep_deleted_webhooks(db: impl PgExecutor<'_>, limit: i32) -> StoreResult<u64> {
    let swept = sqlx::query_scalar!(r#"SELECT hookline_sweep_deleted_webhooks($1) AS "n!""#, limit)
        .fetch_one(db)
        .await
        .context("sweeping deleted webhooks")?;
    Ok(swept as u64)
}
