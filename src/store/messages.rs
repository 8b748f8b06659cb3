//! Messages: ingestion (a batch per transaction), the strict-FIFO dequeue, and the
//! commit / error transitions of a locked message.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::{not_found_as, StoreError, StoreResult};
use crate::crypto::{KeyId, Sealed};
use crate::domain::{LockToken, MessageId, MessageState, ProjectId, Seq, WebhookId};

/// A message ready to insert: its id chosen and its payload sealed by the caller.
pub struct NewMessage {
    pub id: MessageId,
    pub sealed: Sealed,
}

/// Inserts messages, possibly for many webhooks, each webhook's in input order, in one
/// statement (one round trip, atomic). Seq ranges come from the webhooks' counter rows,
/// locked in webhook-id order before any is updated (the aggregate over `locked` consumes it
/// whole first), so two concurrent batches never deadlock. Returns each item's seq in input
/// order, None where the webhook does not exist.
pub async fn insert_many(pool: &PgPool, items: &[(WebhookId, NewMessage)]) -> StoreResult<Vec<Option<Seq>>> {
    let webhooks: Vec<Uuid> = items.iter().map(|(w, _)| *w.as_uuid()).collect();
    let ids: Vec<Uuid> = items.iter().map(|(_, m)| *m.id.as_uuid()).collect();
    let key_ids: Vec<i32> = items.iter().map(|(_, m)| m.sealed.key_id.0).collect();
    let nonces: Vec<&[u8]> = items.iter().map(|(_, m)| m.sealed.nonce.as_slice()).collect();
    let ciphertexts: Vec<&[u8]> = items.iter().map(|(_, m)| m.sealed.ciphertext.as_slice()).collect();
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "WITH item AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::bytea[], $5::bytea[])
                 WITH ORDINALITY AS i(webhook_id, id, key_id, nonce, ciphertext, ord)
         ), locked AS MATERIALIZED (
             SELECT webhook_id FROM webhook_sequences WHERE webhook_id = ANY($1)
             ORDER BY webhook_id FOR UPDATE
         ), counter AS (
             UPDATE webhook_sequences s SET last_seq = s.last_seq + n.count
             FROM (SELECT item.webhook_id, count(*) AS count
                   FROM item JOIN locked ON locked.webhook_id = item.webhook_id
                   GROUP BY item.webhook_id) n
             WHERE s.webhook_id = n.webhook_id
             -- Long-poll consumers of these webhooks wake once this commits.
             RETURNING s.webhook_id, s.last_seq - n.count AS base, hookline_wake(s.webhook_id)
         )
         INSERT INTO messages (webhook_id, seq, id, expires_at, key_id, nonce, ciphertext)
         SELECT item.webhook_id,
                counter.base + row_number() OVER (PARTITION BY item.webhook_id ORDER BY item.ord),
                item.id, now() + make_interval(days => w.ttl_days), item.key_id, item.nonce, item.ciphertext
         FROM item
         JOIN counter ON counter.webhook_id = item.webhook_id
         JOIN webhooks w ON w.id = item.webhook_id
         RETURNING id, seq",
    )
    .bind(&webhooks)
    .bind(&ids)
    .bind(&key_ids)
    .bind(&nonces)
    .bind(&ciphertexts)
    .fetch_all(pool)
    .await?;
    let seqs: std::collections::HashMap<Uuid, i64> = rows.into_iter().collect();
    Ok(ids.iter().map(|id| seqs.get(id).map(|s| Seq(*s))).collect())
}

/// A message handed out by dequeue, still sealed.
pub struct LockedMessage {
    pub id: MessageId,
    pub seq: Seq,
    pub retry_count: i32,
    pub max_retries: i32,
    pub lock_token: LockToken,
    pub lock_expires_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub sealed: Sealed,
}

#[derive(sqlx::FromRow)]
struct LockedRow {
    id: Uuid,
    seq: i64,
    retry_count: i32,
    max_retries: i32,
    lock_token: Uuid,
    lock_expires_at: DateTime<Utc>,
    received_at: DateTime<Utc>,
    key_id: i32,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

/// Locks and returns the head of the queue, or None when nothing can be delivered
/// (empty, or the head is locked).
pub async fn dequeue(
    db: impl PgExecutor<'_>,
    project: ProjectId,
    webhook: &WebhookId,
) -> StoreResult<Option<LockedMessage>> {
    let row: Option<LockedRow> = sqlx::query_as("SELECT * FROM hookline_dequeue($1, $2)")
        .bind(webhook.as_uuid())
        .bind(project)
        .fetch_optional(db)
        .await
        .map_err(|e| not_found_as(e, "webhook"))?;
    Ok(row.map(LockedMessage::from))
}

impl From<LockedRow> for LockedMessage {
    fn from(r: LockedRow) -> Self {
        Self {
            id: MessageId::from_uuid(r.id),
            seq: Seq(r.seq),
            retry_count: r.retry_count,
            max_retries: r.max_retries,
            lock_token: LockToken::from_uuid(r.lock_token),
            lock_expires_at: r.lock_expires_at,
            received_at: r.received_at,
            sealed: Sealed { key_id: KeyId(r.key_id), nonce: r.nonce, ciphertext: r.ciphertext },
        }
    }
}

/// Commits a locked message and locks the next head in one transaction (one round trip).
/// Ok(None): committed, nothing to deliver next.
pub async fn commit_next(db: &mut PgConnection, target: &LockedRef<'_>) -> StoreResult<Option<LockedMessage>> {
    let row: Result<Option<LockedRow>, sqlx::Error> =
        sqlx::query_as("SELECT * FROM hookline_commit_next($1, $2, $3, $4)")
            .bind(target.webhook.as_uuid())
            .bind(target.project)
            .bind(target.message.as_uuid())
            .bind(target.token.map(|t| *t.as_uuid()))
            .fetch_optional(&mut *db)
            .await;
    match row {
        Ok(row) => Ok(row.map(LockedMessage::from)),
        Err(e) => Err(refusal(db, target, e).await),
    }
}

/// Which message a transition is for, and the lock the caller claims to hold (if it says).
pub struct LockedRef<'a> {
    pub project: ProjectId,
    pub webhook: &'a WebhookId,
    pub message: &'a MessageId,
    pub token: Option<&'a LockToken>,
}

/// locked -> committed, releasing the webhook's lock.
pub async fn commit(db: &mut PgConnection, target: &LockedRef<'_>) -> StoreResult<()> {
    let done = sqlx::query("SELECT 1 FROM hookline_commit($1, $2, $3, $4)")
        .bind(target.webhook.as_uuid())
        .bind(target.project)
        .bind(target.message.as_uuid())
        .bind(target.token.map(|t| *t.as_uuid()))
        .execute(&mut *db)
        .await;
    match done {
        Ok(_) => Ok(()),
        Err(e) => Err(refusal(db, target, e).await),
    }
}

/// What an error (NACK) did to the message.
pub struct ErrorOutcome {
    pub state: MessageState,
    pub retry_count: i32,
    pub max_retries: i32,
}

/// locked -> queued at the same position (retry_count + 1), or dead at max_retries.
/// With `requeue` false, dead at once (the consumer knows retrying cannot help).
pub async fn error(
    db: &mut PgConnection,
    target: &LockedRef<'_>,
    reason: Option<&str>,
    requeue: bool,
) -> StoreResult<ErrorOutcome> {
    let row: Result<(MessageState, i32, i32), sqlx::Error> =
        sqlx::query_as("SELECT new_state, new_retry_count, max_retries FROM hookline_error($1, $2, $3, $4, $5, $6)")
            .bind(target.webhook.as_uuid())
            .bind(target.project)
            .bind(target.message.as_uuid())
            .bind(target.token.map(|t| *t.as_uuid()))
            .bind(reason)
            .bind(requeue)
            .fetch_one(&mut *db)
            .await;
    match row {
        Ok((state, retry_count, max_retries)) => Ok(ErrorOutcome { state, retry_count, max_retries }),
        Err(e) => Err(refusal(db, target, e).await),
    }
}

/// Renews the lock the message holds; returns when it now expires.
pub async fn extend(db: &mut PgConnection, target: &LockedRef<'_>, seconds: i32) -> StoreResult<DateTime<Utc>> {
    let expires = sqlx::query_scalar("SELECT hookline_extend($1, $2, $3, $4, $5)")
        .bind(target.webhook.as_uuid())
        .bind(target.project)
        .bind(target.message.as_uuid())
        .bind(target.token.map(|t| *t.as_uuid()))
        .bind(seconds)
        .fetch_one(&mut *db)
        .await;
    match expires {
        Ok(at) => Ok(at),
        Err(e) => Err(refusal(db, target, e).await),
    }
}

/// Maps a refused transition (SQLSTATE HL409 from the lock check) to the 409 that says why.
async fn refusal(db: &mut PgConnection, target: &LockedRef<'_>, err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(e) if e.code().as_deref() == Some("HL409") => explain_refusal(db, target).await,
        _ => not_found_as(err, "webhook"),
    }
}

/// Why a transition on a locked message changed nothing: 404 or which 409.
async fn explain_refusal(db: &mut PgConnection, target: &LockedRef<'_>) -> StoreError {
    let found = find(&mut *db, target.project, target.webhook, target.message).await;
    match found {
        Err(e) => e,
        Ok(m) if m.state != MessageState::Locked => {
            StoreError::Conflict(format!("message is {}, not locked", state_name(m.state)))
        }
        Ok(_) => StoreError::Conflict("lock token does not match: the lock expired and was handed out again".into()),
    }
}

pub fn state_name(state: MessageState) -> &'static str {
    match state {
        MessageState::Queued => "queued",
        MessageState::Locked => "locked",
        MessageState::Committed => "committed",
        MessageState::Dead => "dead",
    }
}

/// A message's state, counters and timestamps (its payload stays sealed).
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
}

/// The webhook always, the message if it exists: tells "no webhook" from "no message".
#[derive(sqlx::FromRow)]
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
}

pub async fn find(
    db: impl PgExecutor<'_>,
    project: ProjectId,
    webhook: &WebhookId,
    message: &MessageId,
) -> StoreResult<MessageInfo> {
    let row: Option<FindRow> = sqlx::query_as(
        "SELECT w.max_retries, m.id, m.seq, m.state, w.locked_seq = m.seq AS locked, m.retry_count, m.last_error,
                m.received_at, m.expires_at, w.lock_expires_at, m.committed_at, m.dead_at
         FROM webhooks w
         LEFT JOIN messages m ON m.webhook_id = w.id AND m.id = $3
         WHERE w.id = $1 AND w.project_id = $2",
    )
    .bind(webhook.as_uuid())
    .bind(project)
    .bind(message.as_uuid())
    .fetch_optional(db)
    .await?;
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
        // Stored as queued while its webhook's lock points at it.
        state: if locked { MessageState::Locked } else { state },
        retry_count,
        max_retries: row.max_retries,
        last_error: row.last_error,
        received_at,
        expires_at,
        lock_expires_at: row.lock_expires_at.filter(|_| locked),
        committed_at: row.committed_at,
        dead_at: row.dead_at,
    })
}

/// locked -> dead at once, for a message whose payload cannot be opened: it would fail
/// every retry, and must not block the queue behind it.
pub async fn bury(
    db: impl PgExecutor<'_>,
    webhook: &WebhookId,
    message: &MessageId,
    token: &LockToken,
    reason: &str,
) -> StoreResult<()> {
    sqlx::query(
        "WITH released AS (
             UPDATE webhooks SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL
             WHERE id = $1 AND lock_token = $3
             RETURNING id
         )
         UPDATE messages m SET state = 'dead', dead_at = now(), last_error = $4
         FROM released WHERE m.webhook_id = released.id AND m.id = $2 AND m.state = 'queued'",
    )
    .bind(webhook.as_uuid())
    .bind(message.as_uuid())
    .bind(token.as_uuid())
    .bind(reason)
    .execute(db)
    .await?;
    Ok(())
}
