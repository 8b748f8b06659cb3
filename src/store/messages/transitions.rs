//! The transitions of a locked message: commit (alone, with the next message, or many at
//! once), error, extend, and bury. Each answers with a typed refusal when the message does
//! not hold the lock the caller claims, decided in the same statement.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::{LockedMessage, LockedRef, LockedRow};
use crate::domain::{DeliveryMode, HoldSeconds, LockToken, MaxMessages, MessageId, MessageState, ProjectId, WebhookId};
use crate::store::{Context, Refusal, StoreError, StoreResult};

/// Why the baseline's lock check refused a transition (`lock_refusal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "lock_refusal", rename_all = "snake_case")]
pub(super) enum LockRefusal {
    NoMessage,
    NotLocked,
    LockMismatch,
    TokenRequired,
    OutOfOrder,
    LockSuperseded,
}

/// A refusal and the message's stored state as the store's answer.
pub(super) fn refused(refusal: Option<LockRefusal>, state: Option<MessageState>) -> StoreResult<()> {
    match refusal {
        None => Ok(()),
        Some(LockRefusal::NoMessage) => Err(StoreError::NotFound("message")),
        Some(LockRefusal::NotLocked) => Err(Refusal::NotLocked { state: state.unwrap_or(MessageState::Queued) }.into()),
        Some(LockRefusal::LockMismatch) => Err(Refusal::LockMismatch.into()),
        Some(LockRefusal::TokenRequired) => Err(Refusal::LockTokenRequired.into()),
        Some(LockRefusal::OutOfOrder) => Err(Refusal::OutOfOrder.into()),
        Some(LockRefusal::LockSuperseded) => Err(Refusal::LockSuperseded.into()),
    }
}

/// One answer row of a commit, and the call (1-based, in input order) it answers: the
/// refusal and the message's state, and the columns of one message leased next, if any.
pub(super) struct LeaseRow {
    pub(super) i: i64,
    pub(super) refusal: Option<LockRefusal>,
    pub(super) state: Option<MessageState>,
    pub(super) id: Option<Uuid>,
    pub(super) seq: Option<i64>,
    pub(super) retry_count: Option<i32>,
    pub(super) max_retries: Option<i32>,
    pub(super) lock_token: Option<Uuid>,
    pub(super) lock_expires_at: Option<DateTime<Utc>>,
    pub(super) received_at: Option<DateTime<Utc>>,
    pub(super) key_id: Option<i32>,
    pub(super) nonce: Option<Vec<u8>>,
    pub(super) ciphertext: Option<Vec<u8>>,
    pub(super) priority: Option<i16>,
}

impl LeaseRow {
    pub(super) fn leased(self) -> Option<LockedMessage> {
        Some(
            LockedRow {
                id: self.id?,
                seq: self.seq?,
                retry_count: self.retry_count?,
                max_retries: self.max_retries?,
                lock_token: self.lock_token?,
                lock_expires_at: self.lock_expires_at?,
                received_at: self.received_at?,
                key_id: self.key_id?,
                nonce: self.nonce?,
                ciphertext: self.ciphertext?,
                priority: self.priority?,
            }
            .into(),
        )
    }

    /// One commit's rows as its answer: refused, or committed with the messages leased next.
    pub(super) fn committed(rows: Vec<LeaseRow>) -> StoreResult<Vec<LockedMessage>> {
        let first = rows.first().ok_or(StoreError::NotFound("message"))?;
        refused(first.refusal, first.state)?;
        Ok(super::in_delivery_order(rows.into_iter().filter_map(LeaseRow::leased)))
    }
}

/// The columns of `hookline_commit_next` calls, one entry per call.
pub(super) struct CommitCalls {
    pub(super) webhooks: Vec<Uuid>,
    pub(super) projects: Vec<i64>,
    pub(super) messages: Vec<Uuid>,
    pub(super) tokens: Vec<Option<Uuid>>,
    /// How many messages to lease after the commit (0: none).
    pub(super) next: Vec<i32>,
}

/// Runs the calls in one statement, in input order; rows in call order.
pub(super) async fn commit_rows(db: impl PgExecutor<'_>, calls: &CommitCalls) -> StoreResult<Vec<LeaseRow>> {
    sqlx::query_as!(
        LeaseRow,
        r#"SELECT r.i AS "i!", c.refusal AS "refusal: LockRefusal", c.state AS "state: MessageState", c.id, c.seq,
                  c.retry_count, c.max_retries, c.lock_token, c.lock_expires_at, c.received_at, c.key_id,
                  c.nonce, c.ciphertext, c.priority
           FROM unnest($1::uuid[], $2::int8[], $3::uuid[], $4::uuid[], $5::int4[])
                WITH ORDINALITY AS r(webhook, project, message, token, next, i)
           CROSS JOIN LATERAL hookline_commit_next(r.webhook, r.project, r.message, r.token, r.next) c
           ORDER BY r.i"#,
        &calls.webhooks,
        &calls.projects,
        &calls.messages,
        &calls.tokens as _,
        &calls.next
    )
    .fetch_all(db)
    .await
    .context("committing messages")
}

impl CommitCalls {
    /// The calls at `positions` (0-based), in that order.
    pub(super) fn only(&self, positions: &[usize]) -> CommitCalls {
        fn pick<T: Clone>(of: &[T], positions: &[usize]) -> Vec<T> {
            positions.iter().map(|&k| of[k].clone()).collect()
        }
        CommitCalls {
            webhooks: pick(&self.webhooks, positions),
            projects: pick(&self.projects, positions),
            messages: pick(&self.messages, positions),
            tokens: pick(&self.tokens, positions),
            next: pick(&self.next, positions),
        }
    }
}

/// The plain case of the calls (`hookline_commit_heads`: a FIFO head committed by its lock's
/// holder, its webhook named once, at most one message next), done set-based: a committed
/// row for each call it took, with the message leased next if any, in call order. The
/// caller runs the others through `commit_rows`.
pub(super) async fn commit_heads(db: impl PgExecutor<'_>, calls: &CommitCalls) -> StoreResult<Vec<LeaseRow>> {
    sqlx::query_as!(
        LeaseRow,
        r#"SELECT h.i AS "i!", NULL::lock_refusal AS "refusal: LockRefusal",
                  'committed'::message_state AS "state: MessageState", h.id, h.seq, h.retry_count, h.max_retries,
                  h.lock_token, h.lock_expires_at, h.received_at, h.key_id, h.nonce, h.ciphertext, h.priority
           FROM hookline_commit_heads($1, $2, $3, $4, $5) h"#,
        &calls.webhooks,
        &calls.projects,
        &calls.messages,
        &calls.tokens as _,
        &calls.next
    )
    .fetch_all(db)
    .await
    .context("committing the heads of a batch")
    .map(|mut rows: Vec<LeaseRow>| {
        rows.sort_by_key(|r| r.i);
        rows
    })
}

async fn commit_leasing(
    db: impl PgExecutor<'_>,
    target: &LockedRef<'_>,
    next: Option<MaxMessages>,
) -> StoreResult<Vec<LockedMessage>> {
    let calls = CommitCalls {
        webhooks: vec![*target.webhook.as_uuid()],
        projects: vec![target.project.0],
        messages: vec![*target.message.as_uuid()],
        tokens: vec![target.token_uuid()],
        next: vec![next.map_or(0, MaxMessages::get)],
    };
    LeaseRow::committed(commit_rows(db, &calls).await?)
}

/// locked -> committed, releasing its lock (in a window, the next message becomes its head).
pub async fn commit(db: impl PgExecutor<'_>, target: &LockedRef<'_>) -> StoreResult<()> {
    commit_leasing(db, target, None).await.map(drop)
}

/// Commits a locked message and, once its lock is released, leases up to `next` messages in
/// the same transaction (one round trip). Empty: committed, nothing leased next.
pub async fn commit_next(
    db: impl PgExecutor<'_>,
    target: &LockedRef<'_>,
    next: MaxMessages,
) -> StoreResult<Vec<LockedMessage>> {
    commit_leasing(db, target, Some(next)).await
}

/// Commits many locked messages of one webhook at once, in one statement: in standard mode
/// all together, in FIFO mode (where a window is committed in order) each in turn. Answers per
/// entry, in input order: committed, or why not (as for a single commit).
pub async fn commit_many(
    db: &mut PgConnection,
    project: ProjectId,
    webhook: &WebhookId,
    entries: &[(MessageId, Option<LockToken>)],
) -> StoreResult<Vec<StoreResult<()>>> {
    let hook = sqlx::query!(
        r#"SELECT mode AS "mode: DeliveryMode", require_lock_token FROM webhooks WHERE id = $1 AND project_id = $2"#,
        webhook.as_uuid(),
        project.0
    )
    .fetch_optional(&mut *db)
    .await
    .context_for("reading a webhook's mode", webhook)?
    .ok_or(StoreError::NotFound("webhook"))?;
    if hook.mode == DeliveryMode::Fifo {
        // One statement, the entries in turn: a window commits in entry order.
        let calls = CommitCalls {
            webhooks: vec![*webhook.as_uuid(); entries.len()],
            projects: vec![project.0; entries.len()],
            messages: entries.iter().map(|(m, _)| *m.as_uuid()).collect(),
            tokens: entries.iter().map(|(_, t)| t.map(|t| *t.as_uuid())).collect(),
            next: vec![0; entries.len()],
        };
        let rows = commit_rows(&mut *db, &calls).await?;
        let answers = per_call(rows, |r| r.i, entries.len(), "committing messages")?;
        return Ok(answers.into_iter().map(|rows| LeaseRow::committed(rows).map(drop)).collect());
    }
    // Entries that must name a token and do not are refused before the statement.
    let refused = |token: &Option<LockToken>| hook.require_lock_token && token.is_none();
    let named = entries.iter().filter(|(_, t)| !refused(t));
    let ids: Vec<Uuid> = named.clone().map(|(m, _)| *m.as_uuid()).collect();
    let tokens: Vec<Option<Uuid>> = named.map(|(_, t)| t.map(|t| *t.as_uuid())).collect();
    let rows = sqlx::query!(
        // One unique-index probe per id (a LATERAL with FOR UPDATE is never flattened into
        // a join, which stale statistics could turn into a scan of the whole backlog), in id
        // order so two overlapping batches lock in the same order.
        r#"WITH held AS (
               SELECT m.id, m.seq, m.state, m.lock_token, c.token
               FROM (SELECT * FROM unnest($2::uuid[], $3::uuid[]) AS c(id, token) ORDER BY c.id) c
               CROSS JOIN LATERAL (
                   SELECT id, seq, state, lock_token FROM messages WHERE id = c.id AND webhook_id = $1 FOR UPDATE
               ) m
           ), done AS (
               UPDATE messages m SET state = 'committed', committed_at = now(), lock_token = NULL, lock_expires_at = NULL
               FROM held
               WHERE m.webhook_id = $1 AND m.seq = held.seq AND held.state = 'queued' AND held.lock_token IS NOT NULL
                 AND (held.token IS NULL OR held.lock_token = held.token)
               RETURNING m.id
           )
           SELECT held.id AS "id!", held.state AS "state!: MessageState",
                  bool_or(held.lock_token IS NOT NULL) AS "locked!",
                  bool_or(held.id IN (SELECT id FROM done)) AS "committed!"
           FROM held GROUP BY held.id, held.state"#,
        webhook.as_uuid(),
        &ids,
        &tokens as _
    )
    .fetch_all(&mut *db)
    .await
    .context_for("committing messages", webhook)?;
    let found: HashMap<Uuid, _> = rows.into_iter().map(|r| (r.id, r)).collect();
    Ok(entries
        .iter()
        .map(|(message, token)| match found.get(message.as_uuid()) {
            _ if refused(token) => Err(Refusal::LockTokenRequired.into()),
            None => Err(StoreError::NotFound("message")),
            Some(r) if r.committed => Ok(()),
            Some(r) if r.state != MessageState::Queued || !r.locked => {
                Err(Refusal::NotLocked { state: r.state }.into())
            }
            Some(_) => Err(Refusal::LockMismatch.into()),
        })
        .collect())
}

/// What a consumer reports with an error (NACK).
#[derive(Debug, Clone, Default)]
pub struct Failure {
    /// Kept as the message's last error.
    pub reason: Option<String>,
    /// false: dead at once (the consumer knows retrying cannot help).
    pub requeue: bool,
    /// The downstream is down, not the message: hold the webhook this long and count no
    /// attempt.
    pub hold: Option<HoldSeconds>,
}

/// What an error (NACK) did to the message.
pub struct ErrorOutcome {
    pub state: MessageState,
    pub retry_count: i32,
    pub max_retries: i32,
    /// With a hold: until when the webhook delivers nothing.
    pub held_until: Option<DateTime<Utc>>,
}

/// locked -> queued at the same position (retry_count + 1), or dead at max_retries or
/// without requeue; with a hold, queued at its position with no attempt counted.
pub async fn error(db: impl PgExecutor<'_>, target: &LockedRef<'_>, failure: &Failure) -> StoreResult<ErrorOutcome> {
    let row = sqlx::query_as!(
        NackRow,
        r#"SELECT refusal AS "refusal: LockRefusal", state AS "state: MessageState", retry_count,
                  max_retries AS "max_retries!", held_until
           FROM hookline_nack($1, $2, $3, $4, $5, $6, $7)"#,
        target.webhook.as_uuid(),
        target.project.0,
        target.message.as_uuid(),
        target.token_uuid(),
        failure.reason.as_deref(),
        failure.requeue,
        failure.hold.map(HoldSeconds::get)
    )
    .fetch_one(db)
    .await
    .context_for("erroring a message", target.webhook)?;
    row.outcome()
}

/// One row of `hookline_nack`.
pub(super) struct NackRow {
    pub(super) refusal: Option<LockRefusal>,
    pub(super) state: Option<MessageState>,
    pub(super) retry_count: Option<i32>,
    pub(super) max_retries: i32,
    pub(super) held_until: Option<DateTime<Utc>>,
}

impl NackRow {
    /// The store's answer.
    pub(super) fn outcome(self) -> StoreResult<ErrorOutcome> {
        refused(self.refusal, self.state)?;
        Ok(ErrorOutcome {
            state: self.state.unwrap_or(MessageState::Queued),
            retry_count: self.retry_count.unwrap_or_default(),
            max_retries: self.max_retries,
            held_until: self.held_until,
        })
    }
}

/// Renews the lock the message holds; returns when it now expires.
pub async fn extend(db: impl PgExecutor<'_>, target: &LockedRef<'_>, seconds: i32) -> StoreResult<DateTime<Utc>> {
    let row = sqlx::query!(
        r#"SELECT refusal AS "refusal: LockRefusal", state AS "state: MessageState", lock_expires_at
           FROM hookline_extend($1, $2, $3, $4, $5)"#,
        target.webhook.as_uuid(),
        target.project.0,
        target.message.as_uuid(),
        target.token_uuid(),
        seconds
    )
    .fetch_one(db)
    .await
    .context_for("extending a lock", target.webhook)?;
    refused(row.refusal, row.state)?;
    row.lock_expires_at.ok_or(StoreError::NotFound("message"))
}

/// locked -> queued as if the lock had never been taken (no attempt counted), for a message
/// this replica cannot open yet (its key is elsewhere): it keeps its place in line.
pub async fn release(
    db: impl PgExecutor<'_>,
    webhook: &WebhookId,
    message: &MessageId,
    token: &LockToken,
) -> StoreResult<()> {
    sqlx::query!("SELECT hookline_release_lock($1, $2, $3)", webhook.as_uuid(), message.as_uuid(), token.as_uuid())
        .fetch_one(db)
        .await
        .context_for("releasing a lock", webhook)?;
    Ok(())
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
    sqlx::query!("SELECT hookline_bury($1, $2, $3, $4)", webhook.as_uuid(), message.as_uuid(), token.as_uuid(), reason)
        .fetch_one(db)
        .await
        .context_for("burying an unreadable message", webhook)?;
    Ok(())
}

/// The rows of each call, in call order. Every call answers at least one row, and rows come
/// numbered by call in order; otherwise none of the answers may be handed out.
pub(super) fn per_call<R>(
    rows: Vec<R>,
    number: impl Fn(&R) -> i64,
    calls: usize,
    operation: &'static str,
) -> StoreResult<Vec<Vec<R>>> {
    let mut answers: Vec<Vec<R>> = Vec::with_capacity(calls);
    for row in rows {
        let i = number(&row);
        let answered = answers.len() as i64;
        match answers.last_mut() {
            Some(last) if i == answered => last.push(row),
            _ if i == answered + 1 => answers.push(vec![row]),
            _ => return Err(sqlx::Error::Protocol(format!("row for call {i} out of order"))).context(operation),
        }
    }
    if answers.len() != calls {
        let wrong = format!("answers for {} of {calls} calls", answers.len());
        return Err(sqlx::Error::Protocol(wrong)).context(operation);
    }
    Ok(answers)
}
