//! Messages: ingestion (a batch per transaction), the strict-FIFO dequeue, and the
//! commit / error transitions of a locked message.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::{not_found_as, StoreError, StoreResult};
use crate::crypto::{KeyId, Sealed};
use crate::domain::{
    DelaySeconds, DeliveryMode, IdempotencyKey, LockTimeout, LockToken, MaxMessages, MessageId, MessageState, Priority,
    ProjectId, Seq, TtlSeconds, WebhookId,
};

/// A message ready to insert: its id chosen and its payload sealed by the caller.
pub struct NewMessage {
    pub id: MessageId,
    pub sealed: Sealed,
    pub options: DeliveryOptions,
}

/// What a producer may ask of one message's delivery.
#[derive(Debug, Default, Clone)]
pub struct DeliveryOptions {
    pub priority: Priority,
    pub delay: Option<DelaySeconds>,
    /// Capped by the webhook's ttlDays.
    pub ttl: Option<TtlSeconds>,
    pub idempotency_key: Option<IdempotencyKey>,
}

/// Where an accepted message stands: newly stored, or (`duplicate`) the message an earlier
/// request with the same idempotency key stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub id: MessageId,
    pub seq: Seq,
    pub duplicate: bool,
}

/// Inserts messages, possibly for many webhooks, each webhook's in input order, atomically.
/// Returns each item's outcome in input order, None where the webhook does not exist.
///
/// Without idempotency keys this is one statement. With them, one transaction that first
/// claims the keys (in key order, so concurrent claimants cannot deadlock: a repeated key
/// waits for the first claim to commit or roll back, then sees it), then inserts the
/// messages whose keys it won.
pub async fn insert_many(pool: &PgPool, items: &[(WebhookId, NewMessage)]) -> StoreResult<Vec<Option<Stored>>> {
    if items.iter().all(|(_, m)| m.options.idempotency_key.is_none()) {
        let seqs = insert_rows(pool, items.iter()).await?;
        return Ok(items.iter().map(|(_, m)| stored_new(&seqs, &m.id)).collect());
    }
    // The first item of the batch to use a key claims it; later ones are its duplicates.
    let mut claims: BTreeMap<(Uuid, &str), Uuid> = BTreeMap::new();
    for (webhook, m) in items {
        if let Some(key) = &m.options.idempotency_key {
            claims.entry((*webhook.as_uuid(), key.as_str())).or_insert(*m.id.as_uuid());
        }
    }
    let (claim_webhooks, claim_keys): (Vec<Uuid>, Vec<&str>) = claims.keys().copied().unzip();
    let claim_ids: Vec<Uuid> = claims.values().copied().collect();

    let mut tx = pool.begin().await?;
    let won: HashSet<Uuid> = sqlx::query_scalar(
        "INSERT INTO idempotency_keys AS k (webhook_id, key, message_id)
         SELECT c.webhook_id, c.key, c.message_id
         FROM unnest($1::uuid[], $2::text[], $3::uuid[]) WITH ORDINALITY AS c(webhook_id, key, message_id, ord)
         WHERE EXISTS (SELECT 1 FROM webhooks w WHERE w.id = c.webhook_id)
         ORDER BY c.ord
         -- An expired key (over 24 hours old) is free to claim again.
         ON CONFLICT (webhook_id, key) DO UPDATE SET message_id = EXCLUDED.message_id, seq = NULL, created_at = now()
             WHERE k.created_at <= now() - interval '24 hours'
         RETURNING message_id",
    )
    .bind(&claim_webhooks)
    .bind(&claim_keys)
    .bind(&claim_ids)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let fresh = items.iter().filter(|(_, m)| m.options.idempotency_key.is_none() || won.contains(m.id.as_uuid()));
    let seqs = insert_rows(&mut *tx, fresh).await?;
    let won_ids: Vec<Uuid> = won.iter().copied().collect();
    let won_seqs: Vec<i64> = won_ids.iter().map(|id| seqs.get(id).copied().unwrap_or(0)).collect();
    sqlx::query(
        "UPDATE idempotency_keys k SET seq = w.seq
         FROM unnest($1::uuid[], $2::int8[]) AS w(message_id, seq), messages m
         WHERE m.id = w.message_id AND k.webhook_id = m.webhook_id AND k.message_id = w.message_id",
    )
    .bind(&won_ids)
    .bind(&won_seqs)
    .execute(&mut *tx)
    .await?;
    let originals: Vec<(Uuid, String, Uuid, Option<i64>)> = sqlx::query_as(
        "SELECT k.webhook_id, k.key, k.message_id, k.seq
         FROM idempotency_keys k JOIN unnest($1::uuid[], $2::text[]) AS c(webhook_id, key)
           ON k.webhook_id = c.webhook_id AND k.key = c.key",
    )
    .bind(&claim_webhooks)
    .bind(&claim_keys)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;

    let originals: HashMap<(Uuid, &str), (Uuid, i64)> =
        originals.iter().map(|(webhook, key, id, seq)| ((*webhook, key.as_str()), (*id, seq.unwrap_or(0)))).collect();
    Ok(items
        .iter()
        .map(|(webhook, m)| match &m.options.idempotency_key {
            None => stored_new(&seqs, &m.id),
            Some(key) => {
                let &(id, seq) = originals.get(&(*webhook.as_uuid(), key.as_str()))?;
                Some(Stored { id: MessageId::from_uuid(id), seq: Seq(seq), duplicate: id != *m.id.as_uuid() })
            }
        })
        .collect())
}

fn stored_new(seqs: &HashMap<Uuid, i64>, id: &MessageId) -> Option<Stored> {
    seqs.get(id.as_uuid()).map(|&seq| Stored { id: *id, seq: Seq(seq), duplicate: false })
}

/// The insert itself, one statement. Seq ranges come from the webhooks' counter rows,
/// locked in webhook-id order before any is updated (the aggregate over `locked` consumes
/// it whole first), so two concurrent batches never deadlock. Returns id -> seq.
async fn insert_rows<'a>(
    db: impl PgExecutor<'_>,
    items: impl Iterator<Item = &'a (WebhookId, NewMessage)>,
) -> StoreResult<HashMap<Uuid, i64>> {
    let mut columns = InsertColumns::default();
    for (webhook, m) in items {
        columns.push(webhook, m);
    }
    if columns.ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "WITH item AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::bytea[], $5::bytea[], $6::int2[],
                                  $7::int4[], $8::int4[])
                 WITH ORDINALITY AS i(webhook_id, id, key_id, nonce, ciphertext, priority, delay, ttl, ord)
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
         INSERT INTO messages (webhook_id, seq, id, expires_at, key_id, nonce, ciphertext, priority, deliver_at)
         SELECT item.webhook_id,
                counter.base + row_number() OVER (PARTITION BY item.webhook_id ORDER BY item.ord),
                item.id,
                now() + CASE WHEN item.ttl IS NULL THEN make_interval(days => w.ttl_days)
                             ELSE least(make_interval(days => w.ttl_days), make_interval(secs => item.ttl)) END,
                item.key_id, item.nonce, item.ciphertext, item.priority,
                CASE WHEN item.delay > 0 THEN now() + make_interval(secs => item.delay) END
         FROM item
         JOIN counter ON counter.webhook_id = item.webhook_id
         JOIN webhooks w ON w.id = item.webhook_id
         RETURNING id, seq",
    )
    .bind(&columns.webhooks)
    .bind(&columns.ids)
    .bind(&columns.key_ids)
    .bind(&columns.nonces)
    .bind(&columns.ciphertexts)
    .bind(&columns.priorities)
    .bind(&columns.delays)
    .bind(&columns.ttls)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Messages as parallel arrays, one per column, for `unnest`.
#[derive(Default)]
struct InsertColumns<'a> {
    webhooks: Vec<Uuid>,
    ids: Vec<Uuid>,
    key_ids: Vec<i32>,
    nonces: Vec<&'a [u8]>,
    ciphertexts: Vec<&'a [u8]>,
    priorities: Vec<i16>,
    delays: Vec<Option<i32>>,
    ttls: Vec<Option<i32>>,
}

impl<'a> InsertColumns<'a> {
    fn push(&mut self, webhook: &WebhookId, m: &'a NewMessage) {
        self.webhooks.push(*webhook.as_uuid());
        self.ids.push(*m.id.as_uuid());
        self.key_ids.push(m.sealed.key_id.0);
        self.nonces.push(&m.sealed.nonce);
        self.ciphertexts.push(&m.sealed.ciphertext);
        self.priorities.push(m.options.priority.get() as i16);
        self.delays.push(m.options.delay.map(DelaySeconds::get));
        self.ttls.push(m.options.ttl.map(TtlSeconds::get));
    }
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
    pub priority: Priority,
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
    priority: i16,
}

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
    let rows: Vec<LockedRow> = sqlx::query_as("SELECT * FROM hookline_dequeue($1, $2, $3, $4)")
        .bind(webhook.as_uuid())
        .bind(project)
        .bind(max.get())
        .bind(visibility.map(LockTimeout::get))
        .fetch_all(db)
        .await
        .map_err(|e| not_found_as(e, "webhook"))?;
    let mut locked: Vec<LockedMessage> = rows.into_iter().map(LockedMessage::from).collect();
    locked.sort_by_key(|m| (std::cmp::Reverse(m.priority.get()), m.seq));
    Ok(locked)
}

/// When something of the webhook may become deliverable with no write to wake anyone: a
/// delay running out or a lock expiring. None: only a write can change anything.
pub async fn next_due(db: impl PgExecutor<'_>, webhook: &WebhookId) -> StoreResult<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar("SELECT hookline_next_due($1)").bind(webhook.as_uuid()).fetch_one(db).await?)
}

/// Deletes every live message (queued, delayed or locked) of the webhook; returns how many.
/// In short batches that skip rows a consumer is committing this instant (the commit wins),
/// so a purge never waits on, or deadlocks with, consumers.
pub async fn purge(db: &mut PgConnection, project: ProjectId, webhook: &WebhookId) -> StoreResult<u64> {
    const BATCH: i64 = 5000;
    super::webhooks::get(&mut *db, project, webhook).await?;
    let mut purged = 0;
    // Live rows are ready, delayed or in flight: one partial index each.
    for which in ["deliver_at IS NULL AND lock_token IS NULL", "deliver_at IS NOT NULL", "lock_token IS NOT NULL"] {
        loop {
            let done = sqlx::query(&format!(
                "WITH doomed AS (
                     SELECT ctid AS row_id FROM messages WHERE webhook_id = $1 AND state = 'queued' AND {which}
                     LIMIT $2 FOR UPDATE SKIP LOCKED
                 )
                 DELETE FROM messages WHERE ctid = ANY (ARRAY(SELECT row_id FROM doomed))"
            ))
            .bind(webhook.as_uuid())
            .bind(BATCH)
            .execute(&mut *db)
            .await?;
            purged += done.rows_affected();
            if done.rows_affected() == 0 {
                break;
            }
        }
    }
    // Last: a FIFO head locked meanwhile was deleted, and must not block what comes next.
    sqlx::query(
        "UPDATE webhooks w SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL
         WHERE w.id = $1 AND w.locked_seq IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.webhook_id = w.id AND m.seq = w.locked_seq)",
    )
    .bind(webhook.as_uuid())
    .execute(&mut *db)
    .await?;
    Ok(purged)
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
            priority: Priority::parse(r.priority.into()).unwrap_or_default(),
            sealed: Sealed { key_id: KeyId(r.key_id), nonce: r.nonce, ciphertext: r.ciphertext },
        }
    }
}

/// Commits a locked message and locks the next head in one transaction (one round trip).
/// Ok(None): committed, nothing to deliver next.
pub async fn commit_next(db: &mut PgConnection, target: &LockedRef<'_>) -> StoreResult<Option<LockedMessage>> {
    let row: Result<Option<LockedRow>, sqlx::Error> =
        sqlx::query_as("SELECT * FROM hookline_commit_message($1, $2, $3, $4, true)")
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

/// locked -> committed, releasing its lock.
pub async fn commit(db: &mut PgConnection, target: &LockedRef<'_>) -> StoreResult<()> {
    let done = sqlx::query("SELECT count(*) FROM hookline_commit_message($1, $2, $3, $4, false)")
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

/// Commits many locked messages of one webhook at once. In standard mode, one statement
/// for all of them; in FIFO mode (one message in flight at most) each in turn. Answers per
/// entry, in input order: committed, or why not (404 / 409 as for a single commit).
pub async fn commit_many(
    db: &mut PgConnection,
    project: ProjectId,
    webhook: &WebhookId,
    entries: &[(MessageId, Option<LockToken>)],
) -> StoreResult<Vec<StoreResult<()>>> {
    let mode: Option<DeliveryMode> = sqlx::query_scalar("SELECT mode FROM webhooks WHERE id = $1 AND project_id = $2")
        .bind(webhook.as_uuid())
        .bind(project)
        .fetch_optional(&mut *db)
        .await?;
    let mut outcomes = Vec::with_capacity(entries.len());
    if mode.ok_or(StoreError::NotFound("webhook"))? == DeliveryMode::Fifo {
        for (message, token) in entries {
            outcomes.push(commit(db, &LockedRef { project, webhook, message, token: token.as_ref() }).await);
        }
        return Ok(outcomes);
    }
    let ids: Vec<Uuid> = entries.iter().map(|(m, _)| *m.as_uuid()).collect();
    let tokens: Vec<Option<Uuid>> = entries.iter().map(|(_, t)| t.map(|t| *t.as_uuid())).collect();
    let committed: HashSet<Uuid> = sqlx::query_scalar(
        // One unique-index probe per id (a LATERAL with FOR UPDATE is never flattened into
        // a join, which stale statistics could turn into a scan of the whole backlog), in id
        // order so two overlapping batches lock in the same order.
        "WITH held AS (
             SELECT m.webhook_id, m.seq
             FROM (SELECT * FROM unnest($2::uuid[], $3::uuid[]) AS c(id, token) ORDER BY c.id) c
             CROSS JOIN LATERAL (
                 SELECT webhook_id, seq FROM messages
                 WHERE id = c.id AND webhook_id = $1 AND state = 'queued' AND lock_token IS NOT NULL
                   AND (c.token IS NULL OR lock_token = c.token)
                 FOR UPDATE
             ) m
         )
         UPDATE messages m SET state = 'committed', committed_at = now(), lock_token = NULL, lock_expires_at = NULL
         FROM held WHERE m.webhook_id = held.webhook_id AND m.seq = held.seq
         RETURNING m.id",
    )
    .bind(webhook.as_uuid())
    .bind(&ids)
    .bind(&tokens)
    .fetch_all(&mut *db)
    .await?
    .into_iter()
    .collect();
    for (message, token) in entries {
        outcomes.push(if committed.contains(message.as_uuid()) {
            Ok(())
        } else {
            Err(explain_refusal(db, &LockedRef { project, webhook, message, token: token.as_ref() }).await)
        });
    }
    Ok(outcomes)
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
    pub priority: Priority,
    /// When a delayed message joins its queue.
    pub deliver_at: Option<DateTime<Utc>>,
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
    priority: Option<i16>,
    deliver_at: Option<DateTime<Utc>>,
}

pub async fn find(
    db: impl PgExecutor<'_>,
    project: ProjectId,
    webhook: &WebhookId,
    message: &MessageId,
) -> StoreResult<MessageInfo> {
    let row: Option<FindRow> = sqlx::query_as(
        "SELECT w.max_retries, m.id, m.seq, m.state, m.retry_count, m.last_error, m.received_at, m.expires_at,
                m.committed_at, m.dead_at, m.priority, m.deliver_at,
                -- FIFO: the webhook's lock points at it; standard: it holds its own.
                (w.locked_seq = m.seq OR m.lock_token IS NOT NULL) AS locked,
                coalesce(m.lock_expires_at, w.lock_expires_at) AS lock_expires_at
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
         UPDATE messages m
         SET state = 'dead', dead_at = now(), last_error = $4, lock_token = NULL, lock_expires_at = NULL
         WHERE m.webhook_id = $1 AND m.id = $2 AND m.state = 'queued'
           AND (m.lock_token = $3 OR EXISTS (SELECT 1 FROM released))",
    )
    .bind(webhook.as_uuid())
    .bind(message.as_uuid())
    .bind(token.as_uuid())
    .bind(reason)
    .execute(db)
    .await?;
    Ok(())
}
