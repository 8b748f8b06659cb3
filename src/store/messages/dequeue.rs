//! Dequeue: lock what can be delivered now (`hookline_dequeue`), and when something may
//! become deliverable without a write to wake anyone.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::{LockedMessage, LockedRow};
use crate::domain::{LockTimeout, MaxMessages, ProjectId, WebhookId};
use crate::store::{Context, StoreResult};

/// Locks and returns what can be delivered now, in delivery order: in a FIFO webhook the
/// head (none while it is locked), in a standard one up to `max` messages. `visibility`
/// replaces the webhook's lock timeout for these locks.
pub async fn dequeue(
    db: impl PgExecutor<'_>,
    project: ProjectId,
    webhook: &WebhookId,
    max: MaxMessages,
    visibility: Option<LockTimeout>,
) -> StoreResult<Vec<LockedMessage>> {
    let rows = sqlx::query_as!(
        LockedRow,
        r#"SELECT id AS "id!", seq AS "seq!", retry_count AS "retry_count!", max_retries AS "max_retries!",
                  lock_token AS "lock_token!", lock_expires_at AS "lock_expires_at!", received_at AS "received_at!",
                  key_id AS "key_id!", nonce AS "nonce!", ciphertext AS "ciphertext!", priority AS "priority!"
           FROM hookline_dequeue($1, $2, $3, $4)"#,
        webhook.as_uuid(),
        project.0,
        max.get(),
        visibility.map(LockTimeout::get)
    )
    .fetch_all(db)
    .await
    .context_for("dequeuing", webhook)?;
    Ok(in_delivery_order(rows.into_iter().map(LockedMessage::from)))
}

/// Highest priority first, then seq: the order a consumer is handed what one dequeue locked
/// (a standard dequeue's UPDATE returns its rows in no particular order).
pub(super) fn in_delivery_order(locked: impl Iterator<Item = LockedMessage>) -> Vec<LockedMessage> {
    let mut locked: Vec<LockedMessage> = locked.collect();
    locked.sort_by_key(|m| (std::cmp::Reverse(m.priority.get()), m.seq));
    locked
}

/// When something of the webhook may become deliverable with no write to wake anyone: a
/// delay running out or a lock expiring. None: only a write can change anything.
pub async fn next_due(db: impl PgExecutor<'_>, webhook: &WebhookId) -> StoreResult<Option<DateTime<Utc>>> {
    sqlx::query_scalar!("SELECT hookline_next_due($1)", webhook.as_uuid())
        .fetch_one(db)
        .await
        .context_for("reading when the queue is next due", webhook)
}
