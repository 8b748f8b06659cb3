//! The dead-letter queue: messages whose retries ran out, inspected, redriven or discarded.
//! A dead message keeps its seq, so a retried one goes back to its original position.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::{StoreError, StoreResult};
use crate::domain::{MessageId, MessageState, ProjectId, Seq, WebhookId};

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: Uuid,
    seq: i64,
    last_error: Option<String>,
    retry_count: i32,
    received_at: DateTime<Utc>,
    dead_at: DateTime<Utc>,
}

#[derive(Debug)]
pub struct DeadLetter {
    pub id: MessageId,
    pub seq: Seq,
    pub last_error: Option<String>,
    pub retry_count: i32,
    pub received_at: DateTime<Utc>,
    pub dead_at: DateTime<Utc>,
}

/// Which dead letters a listing or a bulk action covers; empty: all of them.
#[derive(Debug, Default, Clone)]
pub struct DeadLetterFilter {
    /// Died at or after.
    pub since: Option<DateTime<Utc>>,
    /// Died before.
    pub until: Option<DateTime<Utc>>,
    /// Case-insensitive substring of the last error.
    pub error: Option<String>,
}

/// The filter as SQL over `messages`, its parameters starting at $2 ($1 is the webhook).
const FILTERED: &str = "webhook_id = $1 AND state = 'dead'
    AND ($2::timestamptz IS NULL OR dead_at >= $2) AND ($3::timestamptz IS NULL OR dead_at < $3)
    AND ($4::text IS NULL OR strpos(lower(last_error), lower($4)) > 0)";

/// A page in seq order after the seq `after`. Checks the webhook belongs to the project.
pub async fn list(
    db: &mut PgConnection,
    project: ProjectId,
    webhook: &WebhookId,
    filter: &DeadLetterFilter,
    after: Option<Seq>,
    limit: i64,
) -> StoreResult<Vec<DeadLetter>> {
    super::webhooks::get(&mut *db, project, webhook).await?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT id, seq, last_error, retry_count, received_at, dead_at FROM messages
         WHERE {FILTERED} AND seq > $5
         ORDER BY seq LIMIT $6"
    ))
    .bind(webhook.as_uuid())
    .bind(filter.since)
    .bind(filter.until)
    .bind(filter.error.as_deref())
    .bind(after.map_or(0, |s| s.0))
    .bind(limit)
    .fetch_all(&mut *db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| DeadLetter {
            id: MessageId::from_uuid(r.id),
            seq: Seq(r.seq),
            last_error: r.last_error,
            retry_count: r.retry_count,
            received_at: r.received_at,
            dead_at: r.dead_at,
        })
        .collect())
}

/// dead -> queued with its retry counter reset, at its original seq.
pub async fn retry(
    db: &mut PgConnection,
    project: ProjectId,
    webhook: &WebhookId,
    message: &MessageId,
) -> StoreResult<()> {
    let done = sqlx::query(
        "UPDATE messages m SET state = 'queued', retry_count = 0, dead_at = NULL
         FROM webhooks w
         WHERE w.id = $1 AND w.project_id = $2 AND m.webhook_id = w.id AND m.id = $3 AND m.state = 'dead'",
    )
    .bind(webhook.as_uuid())
    .bind(project)
    .bind(message.as_uuid())
    .execute(&mut *db)
    .await?;
    if done.rows_affected() == 0 {
        return Err(not_dead(db, project, webhook, message).await);
    }
    Ok(())
}

/// dead -> gone.
pub async fn discard(
    db: &mut PgConnection,
    project: ProjectId,
    webhook: &WebhookId,
    message: &MessageId,
) -> StoreResult<()> {
    let done = sqlx::query(
        "DELETE FROM messages m USING webhooks w
         WHERE w.id = $1 AND w.project_id = $2 AND m.webhook_id = w.id AND m.id = $3 AND m.state = 'dead'",
    )
    .bind(webhook.as_uuid())
    .bind(project)
    .bind(message.as_uuid())
    .execute(&mut *db)
    .await?;
    if done.rows_affected() == 0 {
        return Err(not_dead(db, project, webhook, message).await);
    }
    Ok(())
}

/// Every dead letter the filter covers -> queued at its original seq, retries reset.
/// Returns how many.
pub async fn retry_all(
    db: &mut PgConnection,
    project: ProjectId,
    webhook: &WebhookId,
    filter: &DeadLetterFilter,
) -> StoreResult<u64> {
    apply(db, project, webhook, filter, "UPDATE messages SET state = 'queued', retry_count = 0, dead_at = NULL").await
}

/// Every dead letter the filter covers -> gone. Returns how many.
pub async fn discard_all(
    db: &mut PgConnection,
    project: ProjectId,
    webhook: &WebhookId,
    filter: &DeadLetterFilter,
) -> StoreResult<u64> {
    apply(db, project, webhook, filter, "DELETE FROM messages").await
}

/// Runs `statement` (an UPDATE or DELETE of messages) over the dead letters the filter
/// covers, once the webhook is known to be the project's.
async fn apply(
    db: &mut PgConnection,
    project: ProjectId,
    webhook: &WebhookId,
    filter: &DeadLetterFilter,
    statement: &str,
) -> StoreResult<u64> {
    super::webhooks::get(&mut *db, project, webhook).await?;
    let done = sqlx::query(&format!("{statement} WHERE {FILTERED}"))
        .bind(webhook.as_uuid())
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.error.as_deref())
        .execute(&mut *db)
        .await?;
    Ok(done.rows_affected())
}

async fn not_dead(db: impl PgExecutor<'_>, project: ProjectId, webhook: &WebhookId, message: &MessageId) -> StoreError {
    match super::messages::find(db, project, webhook, message).await {
        Err(e) => e,
        Ok(m) if m.state == MessageState::Dead => StoreError::Conflict("message changed concurrently".into()),
        Ok(m) => StoreError::Conflict(format!("message is {}, not dead", super::messages::state_name(m.state))),
    }
}
