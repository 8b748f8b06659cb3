//! Many commits (plain and commit-and-next) and errors in one transaction, for consumer
//! group commit (`store::consumer_batch`): the plain commit of a FIFO head set-based for all
//! of them (`hookline_commit_heads`), every other one through `hookline_commit_next` or
//! `hookline_nack` exactly as a lone call runs it, so each outcome is today's, and the
//! transaction pays one commit record and one flush for all.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

use super::transitions::{commit_heads, commit_rows, per_call, CommitCalls, LeaseRow, LockRefusal, NackRow};
use super::{ErrorOutcome, Failure, LockedMessage, LockedRef};
use crate::domain::{LockToken, MaxMessages, MessageId, MessageState, ProjectId, WebhookId};
use crate::store::{Context, StoreError, StoreResult};

/// What a consumer asks of its locked message.
pub enum ConsumerAction {
    /// Commit the message; with `next`, also lease up to that many messages once its lock
    /// is released, and answer them.
    Commit { lock: HeldLock, next: Option<MaxMessages> },
    /// A failed attempt, or a hold (see `messages::error`).
    Error { lock: HeldLock, failure: Failure },
}

/// The locked message an acknowledgement is for, and the token its consumer claims.
pub struct HeldLock {
    pub message: MessageId,
    pub token: Option<LockToken>,
}

/// What a call did.
pub enum ConsumerOutcome {
    /// Committed; the messages leased next when asked (none when nothing could be).
    Committed(Vec<LockedMessage>),
    Errored(ErrorOutcome),
}

/// A consumer's call waiting for its batch.
pub struct ConsumerCall {
    pub project: ProjectId,
    pub webhook: WebhookId,
    pub action: ConsumerAction,
}

impl ConsumerCall {
    pub fn commit(target: &LockedRef<'_>, next: Option<MaxMessages>) -> Self {
        Self::ack(target, |lock| ConsumerAction::Commit { lock, next })
    }

    pub fn error(target: &LockedRef<'_>, failure: Failure) -> Self {
        Self::ack(target, |lock| ConsumerAction::Error { lock, failure })
    }

    fn ack(target: &LockedRef<'_>, action: impl FnOnce(HeldLock) -> ConsumerAction) -> Self {
        let lock = HeldLock { message: *target.message, token: target.token.copied() };
        Self { project: target.project, webhook: *target.webhook, action: action(lock) }
    }

    /// The lock the call claims.
    pub fn lock(&self) -> &HeldLock {
        match &self.action {
            ConsumerAction::Commit { lock, .. } | ConsumerAction::Error { lock, .. } => lock,
        }
    }

    fn target<'a>(&'a self, lock: &'a HeldLock) -> LockedRef<'a> {
        LockedRef { project: self.project, webhook: &self.webhook, message: &lock.message, token: lock.token.as_ref() }
    }

    /// As a lone call, in its own statement.
    pub async fn run_alone(&self, db: impl sqlx::PgExecutor<'_>) -> StoreResult<ConsumerOutcome> {
        match &self.action {
            ConsumerAction::Commit { lock, next: Some(next) } => {
                super::commit_next(db, &self.target(lock), *next).await.map(ConsumerOutcome::Committed)
            }
            ConsumerAction::Commit { lock, next: None } => {
                super::commit(db, &self.target(lock)).await.map(|()| ConsumerOutcome::Committed(Vec::new()))
            }
            ConsumerAction::Error { lock, failure } => {
                super::error(db, &self.target(lock), failure).await.map(ConsumerOutcome::Errored)
            }
        }
    }
}

/// Runs every call in `tx` and answers each: first the commits, in order, then the errors,
/// in order (requests that raced each other have no order of their own). First the rows
/// they will lock are locked in a fixed order (FIFO webhooks by id, then standard-mode
/// messages by webhook and id), so two batches never wait on each other in a cycle; a lock
/// held elsewhere past a second fails the whole call (`StoreError::Busy`), and the caller
/// retries them apart. One whose webhook is gone (or another project's) is answered 404
/// without running.
#[tracing::instrument(skip_all, fields(calls = calls.len()))]
pub async fn consumer_set(
    tx: &mut PgConnection,
    calls: &[ConsumerCall],
) -> StoreResult<Vec<StoreResult<ConsumerOutcome>>> {
    sqlx::query_scalar!(r#"SELECT set_config('lock_timeout', '1s', true) AS "set!""#)
        .fetch_one(&mut *tx)
        .await
        .context("bounding a batch's lock waits")?;
    let webhooks: Vec<Uuid> = calls.iter().map(|c| *c.webhook.as_uuid()).collect();
    let messages: Vec<Uuid> = calls.iter().map(|c| *c.lock().message.as_uuid()).collect();
    // count(*) makes each CTE lock its rows without sending them.
    let present: HashSet<(Uuid, i64)> = sqlx::query!(
        r#"WITH fifo AS (
             SELECT id FROM webhooks WHERE id = ANY ($1) AND mode = 'fifo' ORDER BY id FOR NO KEY UPDATE
           ), standard AS (
             SELECT id FROM messages
             WHERE id = ANY ($2) AND webhook_id IN (SELECT id FROM webhooks WHERE id = ANY ($1) AND mode = 'standard')
             ORDER BY webhook_id, id FOR UPDATE OF messages
           )
           SELECT w.id AS "id!", w.project_id AS "project!" FROM webhooks w
           WHERE w.id = ANY ($1) AND (SELECT count(*) FROM fifo) >= 0 AND (SELECT count(*) FROM standard) >= 0"#,
        &webhooks,
        &messages
    )
    .fetch_all(&mut *tx)
    .await
    .context("locking a batch's rows")?
    .into_iter()
    .map(|r| (r.id, r.project))
    .collect();
    let runs = |a: &ConsumerCall| present.contains(&(*a.webhook.as_uuid(), a.project.0));
    let commits: Vec<&ConsumerCall> =
        calls.iter().filter(|a| runs(a) && matches!(a.action, ConsumerAction::Commit { .. })).collect();
    let errors: Vec<&ConsumerCall> =
        calls.iter().filter(|a| runs(a) && matches!(a.action, ConsumerAction::Error { .. })).collect();
    let mut committed = run_commits(tx, &commits).await?.into_iter();
    let mut errored = run_errors(tx, &errors).await?.into_iter();
    Ok(calls
        .iter()
        .map(|a| match a.action {
            _ if !runs(a) => Err(StoreError::NotFound("webhook")),
            ConsumerAction::Commit { .. } => committed.next().expect("one answer per commit run"),
            ConsumerAction::Error { .. } => errored.next().expect("one answer per error run"),
        })
        .collect())
}

/// Column `f` of the calls `of`.
fn column<T>(of: &[&ConsumerCall], f: impl Fn(&ConsumerCall) -> T) -> Vec<T> {
    of.iter().map(|a| f(a)).collect()
}

/// The locks the calls `of` claim.
fn locks<'a>(of: &[&'a ConsumerCall]) -> Vec<&'a HeldLock> {
    of.iter().map(|a| a.lock()).collect()
}

fn token(lock: &HeldLock) -> Option<Uuid> {
    lock.token.map(|t| *t.as_uuid())
}

async fn run_commits(
    tx: &mut PgConnection,
    commits: &[&ConsumerCall],
) -> StoreResult<Vec<StoreResult<ConsumerOutcome>>> {
    if commits.is_empty() {
        return Ok(Vec::new());
    }
    let held = locks(commits);
    let calls = CommitCalls {
        webhooks: column(commits, |a| *a.webhook.as_uuid()),
        projects: column(commits, |a| a.project.0),
        messages: held.iter().map(|l| *l.message.as_uuid()).collect(),
        tokens: held.iter().map(|l| token(l)).collect(),
        next: column(commits, |a| match a.action {
            ConsumerAction::Commit { next, .. } => next.map_or(0, MaxMessages::get),
            _ => 0,
        }),
    };
    // The plain case of all of them set-based; the others one by one, as lone calls run.
    let heads = commit_heads(&mut *tx, &calls).await?;
    let calls_made = commits.len() as i64;
    if heads.windows(2).any(|p| p[0].i >= p[1].i) || heads.iter().any(|r| !(1..=calls_made).contains(&r.i)) {
        let wrong = sqlx::Error::Protocol("a head commit answered twice, or for no call".into());
        return Err(wrong).context("committing the heads of a batch");
    }
    let taken: HashSet<i64> = heads.iter().map(|r| r.i).collect();
    let rest: Vec<usize> = (0..commits.len()).filter(|k| !taken.contains(&(*k as i64 + 1))).collect();
    let rest_rows = match rest.is_empty() {
        true => Vec::new(),
        false => commit_rows(&mut *tx, &calls.only(&rest)).await?,
    };
    let mut rest_answers = per_call(rest_rows, |r| r.i, rest.len(), "committing a batch of messages")?.into_iter();
    let mut head_answers = heads.into_iter();
    Ok((1..=calls_made)
        .map(|i| {
            let rows = match taken.contains(&i) {
                true => head_answers.next().into_iter().collect(),
                false => rest_answers.next().expect("one answer per commit run"),
            };
            LeaseRow::committed(rows).map(ConsumerOutcome::Committed)
        })
        .collect())
}

async fn run_errors(tx: &mut PgConnection, errors: &[&ConsumerCall]) -> StoreResult<Vec<StoreResult<ConsumerOutcome>>> {
    if errors.is_empty() {
        return Ok(Vec::new());
    }
    let failure = |a: &ConsumerCall| match &a.action {
        ConsumerAction::Error { failure, .. } => failure.clone(),
        _ => Failure::default(),
    };
    let held = locks(errors);
    let rows = sqlx::query!(
        r#"SELECT r.i AS "i!", e.refusal AS "refusal: LockRefusal", e.state AS "state: MessageState",
                  e.retry_count, e.max_retries AS "max_retries!", e.held_until
           FROM unnest($1::uuid[], $2::int8[], $3::uuid[], $4::uuid[], $5::text[], $6::bool[], $7::int4[])
                WITH ORDINALITY AS r(webhook, project, message, token, reason, requeue, hold, i)
           CROSS JOIN LATERAL hookline_nack(r.webhook, r.project, r.message, r.token, r.reason, r.requeue, r.hold) e
           ORDER BY r.i"#,
        &column(errors, |a| *a.webhook.as_uuid()),
        &column(errors, |a| a.project.0),
        &held.iter().map(|l| *l.message.as_uuid()).collect::<Vec<_>>(),
        &held.iter().map(|l| token(l)).collect::<Vec<_>>() as _,
        &column(errors, |a| failure(a).reason) as _,
        &column(errors, |a| failure(a).requeue),
        &column(errors, |a| failure(a).hold.map(|h| h.get())) as _
    )
    .fetch_all(&mut *tx)
    .await
    .context("erroring a batch of messages")?;
    Ok(per_call(rows, |r| r.i, errors.len(), "erroring a batch of messages")?
        .into_iter()
        .flat_map(|rows| rows.into_iter().take(1))
        .map(|r| {
            let row = NackRow {
                refusal: r.refusal,
                state: r.state,
                retry_count: r.retry_count,
                max_retries: r.max_retries,
                held_until: r.held_until,
            };
            row.outcome().map(ConsumerOutcome::Errored)
        })
        .collect())
}
