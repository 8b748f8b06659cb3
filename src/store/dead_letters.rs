//! The dead-letter queue: messages whose retries ran out, inspected, redriven or discarded.
//! A dead message keeps its seq, so a retried one goes back to its original position. Which
//! dead letters a filter covers is one SQL function, `hookline_dead_letter_matches`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use super::{Context, Refusal, StoreError, StoreResult};
use crate::domain::{MessageId, MessageState, ProjectId, Seq, WebhookId};

#[derive(Debug)]
pub struct DeadLetter {
    pub id: MessageId,
    pub seq: Seq,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// Skipped to the dead-letter queue by this API key (`api-key:<id>`), not by its retries.
    pub skipped_by: Option<String>,
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
        r#"SELECT id AS "id!", seq AS "seq!", last_error, last_error_at, skipped_by, retry_count AS "retry_count!",
                  received_at AS "received_at!", dead_at AS "dead_at!"
           FROM messages
           WHERE webhook_id = $1 AND state = 'dead' AND hookline_dead_letter_matches(dead_at, last_error, $2, $3, $4)
             AND seq > $5
           ORDER BY seq LIMIT $6"#,
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
            last_error_at: r.last_error_at,
            skipped_by: r.skipped_by,
            retry_count: r.retry_count,
            received_at: r.received_at,
            dead_at: r.dead_at,
        })
        .collect())
}

/// What to do with dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redrive {
    /// dead -> queued at the original seq, retry counter reset.
    Retry,
    /// dead -> gone.
    Discard,
}

/// Retries or discards one dead letter; a message in another state is refused.
pub async fn act(
    db: impl PgExecutor<'_>,
    project: ProjectId,
    webhook: &WebhookId,
    message: &MessageId,
    action: Redrive,
) -> StoreResult<()> {
    let found = sqlx::query!(
        r#"SELECT state AS "state!: MessageState", locked AS "locked!" FROM hookline_act_on_dead($1, $2, $3, $4)"#,
        webhook.as_uuid(),
        project.0,
        message.as_uuid(),
        action == Redrive::Discard
    )
    .fetch_optional(db)
    .await
    .context_for("acting on a dead letter", webhook)?;
    match found.map(|f| (f.state, f.locked)) {
        None => Err(StoreError::NotFound("message")),
        Some((MessageState::Dead, _)) => Ok(()),
        Some((_, true)) => Err(Refusal::NotDead { state: MessageState::Locked }.into()),
        Some((state, false)) => Err(Refusal::NotDead { state }.into()),
    }
}

/// How many dead letters the filter covers (a bulk action's dry run).
pub async fn count_matching(
    db: &mut PgConnection,
    project: ProjectId,
    webhook: &WebhookId,
    filter: &DeadLetterFilter,
) -> StoreResult<u64> {
    super::webhooks::get(&mut *db, project, webhook).await?;
    let n = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM messages
           WHERE webhook_id = $1 AND state = 'dead'
             AND hookline_dead_letter_matches(dead_at, last_error, $2, $3, $4)"#,
        webhook.as_uuid(),
        filter.since,
        filter.until,
        filter.error.as_deref()
    )
    .fetch_one(&mut *db)
    .await
    .context_for("counting dead letters", webhook)?;
    Ok(n as u64)
}

/// Retries or discards every dead letter the filter covers; returns how many.
pub async fn act_on_all(
    db: &mut PgConnection,
    project: ProjectId,
    webhook: &WebhookId,
    filter: &DeadLetterFilter,
    action: Redrive,
) -> StoreResult<u64> {
    super::webhooks::get(&mut *db, project, webhook).await?;
    let acted = sqlx::query_scalar!(
        r#"SELECT hookline_act_on_dead_letters($1, $2, $3, $4, $5) AS "n!""#,
        webhook.as_uuid(),
        filter.since,
        filter.until,
        filter.error.as_deref(),
        action == Redrive::Discard
    )
    .fetch_one(&mut *db)
    .await
    .context_for("acting on dead letters", webhook)?;
    Ok(acted as u64)
}
