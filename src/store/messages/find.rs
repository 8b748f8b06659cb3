//! One message's state, counters and timestamps (its payload stays sealed).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::domain::{MessageId, MessageState, Priority, ProjectId, Seq, WebhookId};
use crate::store::{Context, StoreError, StoreResult};

#[derive(Debug)]
pub struct MessageInfo {
    pub id: MessageId,
    pub seq: Seq,
    pub state: MessageState,
    pub retry_count: i32,
    pub max_retries: i32,
    pub last_error: Option<String>,
    pub received_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub lock_expires_at: Option<DateTime<Utc>>,
    pub committed_at: Option<DateTime<Utc>>,
    pub dead_at: Option<DateTime<Utc>>,
    pub priority: Priority,
    /// When a delayed message joins its queue.
    pub deliver_at: Option<DateTime<Utc>>,
    /// The committed message this one replays (a copy made at the tail).
    pub replay_of: Option<MessageId>,
}

/// The webhook always, the message if it exists: tells "no webhook" from "no message".
struct FindRow {
    max_retries: i32,
    id: Option<Uuid>,
    seq: Option<i64>,
    state: Option<MessageState>,
    locked: Option<bool>,
    retry_count: Option<i32>,
    last_error: Option<String>,
    received_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    lock_expires_at: Option<DateTime<Utc>>,
    committed_at: Option<DateTime<Utc>>,
    dead_at: Option<DateTime<Utc>>,
    priority: Option<i16>,
    deliver_at: Option<DateTime<Utc>>,
    replay_of: Option<Uuid>,
}

pub async fn find(
    db: impl PgExecutor<'_>,
    project: ProjectId,
    webhook: &WebhookId,
    message: &MessageId,
) -> StoreResult<MessageInfo> {
    let row = sqlx::query_as!(
        FindRow,
        r#"SELECT w.max_retries, m.id AS "id?", m.seq AS "seq?", m.state AS "state?: MessageState",
                  m.retry_count AS "retry_count?", m.last_error, m.received_at AS "received_at?",
                  m.expires_at AS "expires_at?", m.committed_at, m.dead_at, m.priority AS "priority?", m.deliver_at, m.replay_of,
                  -- FIFO: the webhook's lock points at it; standard: it holds its own.
                  (w.locked_seq = m.seq OR m.seq = ANY (w.window_rest) OR m.lock_token IS NOT NULL) AS locked,
                  coalesce(m.lock_expires_at, w.lock_expires_at) AS lock_expires_at
           FROM webhooks w
           LEFT JOIN messages m ON m.webhook_id = w.id AND m.id = $3
           WHERE w.id = $1 AND w.project_id = $2"#,
        webhook.as_uuid(),
        project.0,
        message.as_uuid()
    )
    .fetch_optional(db)
    .await
    .context_for("reading a message", webhook)?;
    let row = row.ok_or(StoreError::NotFound("webhook"))?;
    let (Some(id), Some(seq), Some(state), Some(retry_count), Some(received_at), Some(expires_at)) =
        (row.id, row.seq, row.state, row.retry_count, row.received_at, row.expires_at)
    else {
        return Err(StoreError::NotFound("message"));
    };
    let locked = row.locked == Some(true);
    Ok(MessageInfo {
        id: MessageId::from_uuid(id),
        seq: Seq(seq),
        // Stored as queued while it is locked.
        state: if locked { MessageState::Locked } else { state },
        retry_count,
        max_retries: row.max_retries,
        last_error: row.last_error,
        received_at,
        expires_at,
        lock_expires_at: row.lock_expires_at.filter(|_| locked),
        committed_at: row.committed_at,
        dead_at: row.dead_at,
        priority: row.priority.and_then(|p| Priority::parse(p.into()).ok()).unwrap_or_default(),
        deliver_at: row.deliver_at,
        replay_of: row.replay_of.map(MessageId::from_uuid),
    })
}
