//! The head of a webhook's queue as an operator sees it (why nothing moves) and the one
//! action on it, skipping it to the dead-letter queue. Everything is read from the webhook
//! row, primary-key probes and the partial indexes: nothing scans a queue of millions.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::stats::{self, QueueStats};
use super::{Context, Refusal, StoreError, StoreResult};
use crate::domain::{DeliveryMode, MessageId, Priority, ProjectId, QueueState, Seq, WebhookId};

/// How many messages behind the head the view lists.
const BEHIND: i64 = 5;

/// A queued message as the head view shows it (its payload stays sealed).
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub id: MessageId,
    pub seq: Seq,
    pub priority: Priority,
    pub retry_count: i32,
    pub error_attempts: i32,
    pub expiry_attempts: i32,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    /// Sealed bytes stored.
    pub size: i32,
    /// Leased with the head, in its FIFO window.
    pub leased: bool,
    /// On a keyed webhook, its ordering key ('' the fallback key).
    pub key: Option<String>,
}

/// A key of a keyed webhook with a message in flight: nothing else of it moves.
#[derive(Debug, Clone)]
pub struct BlockedKey {
    pub key: String,
    pub id: MessageId,
    pub seq: Seq,
    pub lock_expires_at: DateTime<Utc>,
    pub retry_count: i32,
    pub last_error: Option<String>,
}

/// How many blocked keys the view lists.
const BLOCKED_KEYS: i64 = 10;

/// A FIFO webhook's lock.
#[derive(Debug, Clone)]
pub struct HeadLock {
    pub acquired_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    pub extensions: i32,
    /// Messages under it: the head and the rest of its window.
    pub messages: i32,
}

#[derive(Debug, Clone)]
pub struct HeadView {
    pub mode: DeliveryMode,
    pub max_retries: i32,
    pub paused_at: Option<DateTime<Utc>>,
    pub held_until: Option<DateTime<Utc>>,
    pub head: Option<QueuedMessage>,
    pub lock: Option<HeadLock>,
    /// The next few deliverable messages after the head, in delivery order.
    pub behind: Vec<QueuedMessage>,
    /// When the first delayed message joins the line.
    pub next_delayed_at: Option<DateTime<Utc>>,
    /// A keyed webhook's keys with a message in flight, oldest first (at most ten).
    pub blocked_keys: Vec<BlockedKey>,
    pub stats: QueueStats,
}

impl HeadView {
    pub fn state(&self, now: DateTime<Utc>) -> QueueState {
        let lock_live = self.lock.as_ref().is_some_and(|l| l.expires_at > now);
        if self.paused_at.is_some() {
            QueueState::Paused
        } else if self.held_until.is_some_and(|until| until > now) {
            QueueState::Held
        } else if lock_live {
            QueueState::Locked
        } else if self.head.is_some() {
            QueueState::Ready
        } else if self.stats.locked > 0 {
            QueueState::Locked
        } else if self.next_delayed_at.is_some() {
            QueueState::Delayed
        } else {
            QueueState::Empty
        }
    }

    /// When the head may next be delivered: None while paused or with nothing to deliver.
    pub fn next_eligible_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // A keyed webhook's keys each have their own lock: the first to expire frees one.
        let key_expiry = self.blocked_keys.iter().map(|k| k.lock_expires_at).min();
        let lock_expiry = self.lock.as_ref().map(|l| l.expires_at).or(key_expiry);
        match self.state(now) {
            QueueState::Paused | QueueState::Empty => None,
            QueueState::Held => self.held_until.max(lock_expiry),
            QueueState::Locked => lock_expiry,
            QueueState::Ready => Some(now),
            QueueState::Delayed => self.next_delayed_at,
        }
    }

    /// Deliverable messages waiting behind the head (the head itself not counted).
    pub fn waiting(&self) -> i64 {
        let head_counted = self.head.as_ref().is_some_and(|_| self.lock.is_none());
        (self.stats.queued - i64::from(head_counted)).max(0)
    }
}

struct MessageRow {
    id: Uuid,
    seq: i64,
    priority: i16,
    retry_count: i32,
    error_attempts: i32,
    expiry_attempts: i32,
    last_error: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
    size: Option<i32>,
    ordering_key: Option<String>,
}

impl MessageRow {
    fn shown(self, leased: &[i64]) -> QueuedMessage {
        QueuedMessage {
            id: MessageId::from_uuid(self.id),
            seq: Seq(self.seq),
            priority: Priority::parse(self.priority.into()).unwrap_or_default(),
            retry_count: self.retry_count,
            error_attempts: self.error_attempts,
            expiry_attempts: self.expiry_attempts,
            last_error: self.last_error,
            last_error_at: self.last_error_at,
            received_at: self.received_at,
            size: self.size.unwrap_or_default(),
            leased: leased.contains(&self.seq),
            key: self.ordering_key,
        }
    }
}

/// The head view of one webhook of the project.
pub async fn view(db: &mut PgConnection, project: ProjectId, webhook: &WebhookId) -> StoreResult<HeadView> {
    let hook = sqlx::query!(
        r#"SELECT mode AS "mode: DeliveryMode", max_retries, paused_at, held_until, locked_seq, lock_acquired_at,
                  lock_expires_at, lock_extensions, coalesce(window_rest, '{}') AS "window_rest!",
                  -- A keyed webhook's head: the oldest head of a key with nothing in flight.
                  CASE WHEN w.ordering_key IS NOT NULL THEN (hookline_key_heads(w, 1))[1] END AS key_head,
                  w.ordering_key IS NOT NULL AS "ordering_key_set!"
           FROM webhooks w WHERE id = $1 AND project_id = $2"#,
        webhook.as_uuid(),
        project.0
    )
    .fetch_optional(&mut *db)
    .await
    .context_for("reading a webhook's lock", webhook)?
    .ok_or(StoreError::NotFound("webhook"))?;
    let stats = stats::get(&mut *db, project, webhook).await?;
    let leased: Vec<i64> = hook.locked_seq.into_iter().chain(hook.window_rest.iter().copied()).collect();
    // The locked head by its key; then the line, in delivery order (a FIFO lock's messages
    // stay in the ready index, so the line starts with them).
    let locked_head = match hook.locked_seq.or(hook.key_head) {
        None => None,
        Some(seq) => sqlx::query_as!(
            MessageRow,
            r#"SELECT id, seq, priority, retry_count, error_attempts, expiry_attempts, last_error, last_error_at,
                      received_at, octet_length(ciphertext) AS size, ordering_key
               FROM messages WHERE webhook_id = $1 AND seq = $2"#,
            webhook.as_uuid(),
            seq
        )
        .fetch_optional(&mut *db)
        .await
        .context_for("reading a webhook's head", webhook)?,
    };
    let line = sqlx::query_as!(
        MessageRow,
        r#"SELECT id, seq, priority, retry_count, error_attempts, expiry_attempts, last_error, last_error_at,
                  received_at, octet_length(ciphertext) AS size, ordering_key
           FROM messages
           WHERE webhook_id = $1 AND state = 'queued' AND deliver_at IS NULL AND lock_token IS NULL
             AND expires_at > now()
           ORDER BY priority DESC, seq LIMIT $2"#,
        webhook.as_uuid(),
        BEHIND + 1 + i64::from(hook.locked_seq.is_some())
    )
    .fetch_all(&mut *db)
    .await
    .context_for("reading a webhook's line", webhook)?;
    let next_delayed_at = sqlx::query_scalar!(
        "SELECT min(deliver_at) FROM messages WHERE webhook_id = $1 AND state = 'queued' AND deliver_at > now()",
        webhook.as_uuid()
    )
    .fetch_one(&mut *db)
    .await
    .context_for("reading a webhook's next delayed message", webhook)?;

    let blocked_keys = sqlx::query!(
        r#"SELECT coalesce(ordering_key, '') AS "key!", id, seq, lock_expires_at AS "lock_expires_at!", retry_count,
                  last_error
           FROM messages WHERE webhook_id = $1 AND lock_token IS NOT NULL AND ordering_key IS NOT NULL
           ORDER BY seq LIMIT $2"#,
        webhook.as_uuid(),
        BLOCKED_KEYS
    )
    .fetch_all(&mut *db)
    .await
    .context_for("reading a webhook's blocked keys", webhook)?
    .into_iter()
    .map(|r| BlockedKey {
        key: r.key,
        id: MessageId::from_uuid(r.id),
        seq: Seq(r.seq),
        lock_expires_at: r.lock_expires_at,
        retry_count: r.retry_count,
        last_error: r.last_error,
    })
    .collect();

    let mut line: Vec<QueuedMessage> = line.into_iter().map(|m| m.shown(&leased)).collect();
    let keyed = hook.ordering_key_set;
    let head = match locked_head {
        Some(locked) => Some(locked.shown(&leased)),
        // A keyed webhook whose every key in line is busy has no head to deliver.
        None if line.is_empty() || keyed => None,
        None => Some(line.remove(0)),
    };
    let head_seq = head.as_ref().map(|h| h.seq);
    line.retain(|m| Some(m.seq) != head_seq);
    line.truncate(BEHIND as usize);
    let lock = match (hook.locked_seq, hook.lock_expires_at) {
        (Some(_), Some(expires_at)) => Some(HeadLock {
            acquired_at: hook.lock_acquired_at,
            expires_at,
            extensions: hook.lock_extensions,
            messages: leased.len() as i32,
        }),
        _ => None,
    };
    Ok(HeadView {
        mode: hook.mode,
        max_retries: hook.max_retries,
        paused_at: hook.paused_at,
        held_until: hook.held_until,
        head,
        lock,
        behind: line,
        next_delayed_at,
        blocked_keys,
        stats,
    })
}

/// Why a skip changed nothing (`skip_refusal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "skip_refusal", rename_all = "snake_case")]
enum SkipRefusal {
    NoWebhook,
    NotFifo,
    NoHead,
    HeadMoved,
    KeyMismatch,
}

/// What a skip did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub id: MessageId,
    pub seq: Seq,
    /// The head was locked: its consumer's token is now refused with `lock_superseded`.
    pub superseded: bool,
}

/// Moves a FIFO webhook's head to the dead-letter queue, locked or not, with `reason` as its
/// last error and `actor` as who skipped it; with `expect`, only if that is still the head.
/// A keyed webhook skips the head of `key` (required there, refused elsewhere).
pub async fn skip(
    db: &mut PgConnection,
    project: ProjectId,
    webhook: &WebhookId,
    expect: Option<Seq>,
    key: Option<&str>,
    reason: &str,
    actor: &str,
) -> StoreResult<Skipped> {
    let row = sqlx::query!(
        r#"SELECT refusal AS "refusal: SkipRefusal", id, seq, superseded
           FROM hookline_skip_head($1, $2, $3, $4, $5, $6)"#,
        webhook.as_uuid(),
        project.0,
        expect.map(|s| s.0),
        reason,
        actor,
        key
    )
    .fetch_one(&mut *db)
    .await
    .context_for("skipping a webhook's head", webhook)?;
    match (row.refusal, row.id, row.seq) {
        (Some(SkipRefusal::NoWebhook), ..) => Err(StoreError::NotFound("webhook")),
        (Some(SkipRefusal::NotFifo), ..) => Err(Refusal::NotFifo.into()),
        (Some(SkipRefusal::NoHead), ..) => Err(Refusal::NoHead.into()),
        (Some(SkipRefusal::HeadMoved), _, Some(head)) => Err(Refusal::HeadMoved { head: Seq(head) }.into()),
        (Some(SkipRefusal::KeyMismatch), ..) => Err(Refusal::KeyMismatch.into()),
        (None, Some(id), Some(seq)) => {
            Ok(Skipped { id: MessageId::from_uuid(id), seq: Seq(seq), superseded: row.superseded == Some(true) })
        }
        _ => Err(sqlx::Error::Protocol("hookline_skip_head answered no message".into()))
            .context_for("skipping a webhook's head", webhook),
    }
}
