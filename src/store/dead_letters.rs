//! The dead-letter queue: messages whose retries ran out, inspected, redriven or discarded.
//! A dead message keeps its seq, so a retried one goes back to its original position. Which
//! dead letters a filter covers is one SQL function, `hookline_dead_letters`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::{Context, Refusal, StoreError, StoreResult};
use crate::domain::{MessageId, MessageState, ProjectId, Seq, WebhookId};

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
    let rows = sqlx::query!(
        r#"SELECT id AS "id!", seq AS "seq!", last_error, retry_count AS "retry_count!",
                  received_at AS "received_at!", dead_at AS "dead_at!"
           FROM hookline_dead_letters($1, $2, $3, $4)
           WHERE seq > $5 ORDER BY seq LIMIT $6"#,
        webhook.as_uuid(),
        filter.since,
        filter.until,
        filter.error.as_deref(),
        after.map_or(0, |s| s.0),
        limit
    )
    .fetch_all(&mut *db)
    .await
    .context_for("listing dead letters", webhook)?;
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
    db: impl PgExecutor<'_>,
    project: ProjectId,
    webhook: &WebhookId,
    message: &MessageId,
) -> StoreResult<()> {
    let found = sqlx::query!(
        r#"SELECT state AS "state!: MessageState", locked AS "locked!" FROM hookline_retry_dead($1, $2, $3)"#,
        webhook.as_uuid(),
        project.0,
        message.as_uuid()
    )
    .fetch_optional(db)
    .await
    .context_for("retrying a dead letter", webhook)?;
    was_dead(found.map(|f| (f.state, f.locked)))
}

/// dead -> gone.
pub async fn discard(
    db: impl PgExecutor<'_>,
    project: ProjectId,
    webhook: &WebhookId,
    message: &MessageId,
) -> StoreResult<()> {
    let found = sqlx::query!(
        r#"SELECT state AS "state!: MessageState", locked AS "locked!" FROM hookline_discard_dead($1, $2, $3)"#,
        webhook.as_uuid(),
        project.0,
        message.as_uuid()
    )
    .fetch_optional(db)
    .await
    .context_for("discarding a dead letter", webhook)?;
    was_dead(found.map(|f| (f.state, f.locked)))
}

/// Whether the message an action found was dead (and so was acted on).
fn was_dead(found: Option<(MessageState, bool)>) -> StoreResult<()> {
    match found {
        None => Err(StoreError::NotFound("message")),
        Some((MessageState::Dead, _)) => Ok(()),
        Some((_, true)) => Err(Refusal::NotDead { state: MessageState::Locked }.into()),
        Some((state, false)) => Err(Refusal::NotDead { state }.into()),
    }
}

/// Every dead letter the filter covers -> queued at its original seq, retries reset.
/// Returns how many.
pub async fn retry_all(
    db: &mut PgConnection,
    project: ProjectId,
    webhook: &WebhookId,
    filter: &DeadLetterFilter,
) -> StoreResult<u64> {
    super::webhooks::get(&mut *db, project, webhook).await?;
    let done = sqlx::query!(
        "UPDATE messages SET state = 'queued', retry_count = 0, dead_at = NULL
         WHERE webhook_id = $1 AND seq IN (SELECT seq FROM hookline_dead_letters($1, $2, $3, $4))",
        webhook.as_uuid(),
        filter.since,
        filter.until,
        filter.error.as_deref()
    )
    .execute(&mut *db)
    .await
    .context_for("retrying dead letters", webhook)?;
    Ok(done.rows_affected())
}

/// Every dead letter the filter covers -> gone. Returns how many.
pub async fn discard_all(
    db: &mut PgConnection,
    project: ProjectId,
    webhook: &WebhookId,
    filter: &DeadLetterFilter,
) -> StoreResult<u64> {
    super::webhooks::get(&mut *db, project, webhook).await?;
    let done = sqlx::query!(
        "DELETE FROM messages
         WHERE webhook_id = $1 AND seq IN (SELECT seq FROM hookline_dead_letters($1, $2, $3, $4))",
        webhook.as_uuid(),
        filter.since,
        filter.until,
        filter.error.as_deref()
    )
    .execute(&mut *db)
    .await
    .context_for("discarding dead letters", webhook)?;
    Ok(done.rows_affected())
}
