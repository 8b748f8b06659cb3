//! Deleting live messages on request, and expired messages and idempotency keys for the
//! TTL purger; each call is one bounded batch or a loop of them.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::domain::{ProjectId, WebhookId};
use crate::store::{Context, StoreResult};

/// Deletes every live message (queued, delayed or locked) of the webhook; returns how many.
/// In short batches, each under the webhook row lock (taken as a dequeue takes it, so the
/// two wait for each other but never deadlock) that skip rows a standard-mode consumer is
/// committing this instant (the commit wins). A FIFO lock on a message it deleted is
/// released with it (`hookline_purge_live`).
pub async fn purge(db: &mut PgConnection, project: ProjectId, webhook: &WebhookId) -> StoreResult<u64> {
    const BATCH: i32 = 5000;
    crate::store::webhooks::get(&mut *db, project, webhook).await?;
    let mut purged = 0;
    loop {
        let done = sqlx::query_scalar!(r#"SELECT hookline_purge_live($1, $2) AS "n!""#, webhook.as_uuid(), BATCH)
            .fetch_one(&mut *db)
            .await
            .context_for("purging a queue", webhook)?;
        purged += done as u64;
        if done < BATCH {
            break;
        }
    }
    Ok(purged)
}

/// Where a run of the TTL purge has got to: everything expired before `from` is purged or
/// belongs to a `busy` webhook (its row, or a message row, held by another transaction:
/// looked past for the rest of the run, so it cannot fill every batch). With `only`, the
/// batches take that webhook's messages alone, waiting up to a second for its row (then
/// `StoreError::Busy`).
#[derive(Debug, Default)]
pub struct PurgeCursor {
    pub from: Option<DateTime<Utc>>,
    pub busy: Vec<WebhookId>,
    pub only: Option<WebhookId>,
}

/// One batch of the TTL purge.
#[derive(Debug)]
pub struct ExpiredBatch {
    pub purged: u64,
    /// Candidates looked at: fewer than the limit means there are no more.
    pub candidates: u64,
}

/// Up to `limit` messages past their TTL, in any state, from where `cursor` points;
/// moves the cursor on.
pub async fn purge_expired(db: impl PgExecutor<'_>, limit: i32, cursor: &mut PurgeCursor) -> StoreResult<ExpiredBatch> {
    let skip: Vec<uuid::Uuid> = cursor.busy.iter().map(|w| *w.as_uuid()).collect();
    let row = sqlx::query!(
        r#"SELECT purged AS "purged!", candidates AS "candidates!", busy AS "busy!", reached
           FROM hookline_purge_expired_skipping($1, $2, $3, $4)"#,
        limit,
        &skip,
        cursor.from,
        cursor.only.as_ref().map(WebhookId::as_uuid)
    )
    .fetch_one(db)
    .await
    .context("purging expired messages")?;
    cursor.from = row.reached;
    cursor.busy.extend(row.busy.into_iter().map(WebhookId::from_uuid));
    Ok(ExpiredBatch { purged: row.purged as u64, candidates: row.candidates as u64 })
}

/// Up to `limit` idempotency keys past their 24 hours; returns how many.
pub async fn purge_idempotency_keys(db: impl PgExecutor<'_>, limit: i32) -> StoreResult<u64> {
    let purged = sqlx::query_scalar!(r#"SELECT hookline_purge_idempotency_keys($1) AS "n!""#, limit)
        .fetch_one(db)
        .await
        .context("purging expired idempotency keys")?;
    Ok(purged as u64)
}

/// Up to `limit` replay claims past their window; returns how many.
pub async fn purge_seen_signatures(db: impl PgExecutor<'_>, limit: i32) -> StoreResult<u64> {
    let purged = sqlx::query_scalar!(r#"SELECT hookline_purge_seen_signatures($1) AS "n!""#, limit)
        .fetch_one(db)
        .await
        .context("purging expired replay claims")?;
    Ok(purged as u64)
}
