//! Many commits (plain and commit-and-next) and errors in one transaction, for consumer
//! group commit (`store::ack_commit`): each runs `hookline_commit` or `hookline_error`
//! exactly as a lone call does, so its outcome is today's, and the transaction pays one
//! commit record and one flush for all.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

use super::transitions::{commit_rows, error_outcome, CommitCalls, CommitRow, LockRefusal};
use super::{ErrorOutcome, LockedMessage, LockedRef};
use crate::domain::{LockToken, MaxMessages, MessageId, MessageState, ProjectId, WebhookId};
use crate::store::{Context, StoreError, StoreResult};

/// What a consumer asks of its locked message.
pub enum AckAction {
    /// Commit it; with `next`, also lease up to that many messages once its lock is
    /// released, and answer them.
    Commit { next: Option<MaxMessages> },
    /// A failed attempt (see `messages::error`).
    Error { reason: Option<String>, requeue: bool },
}

/// What an acknowledgement did.
pub enum AckOutcome {
    /// Committed; the messages leased next when asked (none when nothing could be).
    Committed(Vec<LockedMessage>),
    Errored(ErrorOutcome),
}

/// An acknowledgement waiting for its batch: the message, the lock its consumer claims,
/// and what to do.
pub struct QueuedAck {
    pub project: ProjectId,
    pub webhook: WebhookId,
    pub message: MessageId,
    pub token: Option<LockToken>,
    pub action: AckAction,
}

impl QueuedAck {
    pub fn new(target: &LockedRef<'_>, action: AckAction) -> Self {
        Self {
            project: target.project,
            webhook: *target.webhook,
            message: *target.message,
            token: target.token.copied(),
            action,
        }
    }

    pub fn target(&self) -> LockedRef<'_> {
        LockedRef { project: self.project, webhook: &self.webhook, message: &self.message, token: self.token.as_ref() }
    }

    /// As a lone call, in its own statement.
    pub async fn run_alone(&self, db: impl sqlx::PgExecutor<'_>) -> StoreResult<AckOutcome> {
        match &self.action {
            AckAction::Commit { next: Some(next) } => {
                super::commit_next(db, &self.target(), *next).await.map(AckOutcome::Committed)
            }
            AckAction::Commit { next: None } => {
                super::commit(db, &self.target()).await.map(|()| AckOutcome::Committed(Vec::new()))
            }
            AckAction::Error { reason, requeue } => {
                super::error(db, &self.target(), reason.as_deref(), *requeue).await.map(AckOutcome::Errored)
            }
        }
    }
}

/// Runs every acknowledgement in `tx` and answers each: first the commits, in order, then
/// the errors, in order (requests that raced each other have no order of their own). First
/// the rows they will lock are locked in a fixed order (FIFO webhooks by id, then
/// standard-mode messages by webhook and id), so two batches never wait on each other in a
/// cycle; a lock held elsewhere past a second fails the whole call (`StoreError::Busy`),
/// and the caller retries them apart. One whose webhook is gone (or another project's) is
/// answered 404 without running.
#[tracing::instrument(skip_all, fields(acks = acks.len()))]
pub async fn ack_set(tx: &mut PgConnection, acks: &[QueuedAck]) -> StoreResult<Vec<StoreResult<AckOutcome>>> {
    sqlx::query_scalar!(r#"SELECT set_config('lock_timeout', '1s', true) AS "set!""#)
        .fetch_one(&mut *tx)
        .await
        .context("bounding a batch's lock waits")?;
    let webhooks: Vec<Uuid> = acks.iter().map(|c| *c.webhook.as_uuid()).collect();
    let messages: Vec<Uuid> = acks.iter().map(|c| *c.message.as_uuid()).collect();
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
    let runs = |a: &QueuedAck| present.contains(&(*a.webhook.as_uuid(), a.project.0));
    let commits: Vec<&QueuedAck> =
        acks.iter().filter(|a| runs(a) && matches!(a.action, AckAction::Commit { .. })).collect();
    let errors: Vec<&QueuedAck> =
        acks.iter().filter(|a| runs(a) && matches!(a.action, AckAction::Error { .. })).collect();
    let mut committed = run_commits(tx, &commits).await?.into_iter();
    let mut errored = run_errors(tx, &errors).await?.into_iter();
    Ok(acks
        .iter()
        .map(|a| match a.action {
            _ if !runs(a) => Err(StoreError::NotFound("webhook")),
            AckAction::Commit { .. } => committed.next().expect("one answer per commit run"),
            AckAction::Error { .. } => errored.next().expect("one answer per error run"),
        })
        .collect())
}

/// Column `f` of the calls `of`.
fn column<T>(of: &[&QueuedAck], f: impl Fn(&QueuedAck) -> T) -> Vec<T> {
    of.iter().map(|a| f(a)).collect()
}

fn token(a: &QueuedAck) -> Option<Uuid> {
    a.token.map(|t| *t.as_uuid())
}

async fn run_commits(tx: &mut PgConnection, commits: &[&QueuedAck]) -> StoreResult<Vec<StoreResult<AckOutcome>>> {
    if commits.is_empty() {
        return Ok(Vec::new());
    }
    let calls = CommitCalls {
        webhooks: column(commits, |a| *a.webhook.as_uuid()),
        projects: column(commits, |a| a.project.0),
        messages: column(commits, |a| *a.message.as_uuid()),
        tokens: column(commits, token),
        next: column(commits, |a| match a.action {
            AckAction::Commit { next } => next.map_or(0, MaxMessages::get),
            AckAction::Error { .. } => 0,
        }),
    };
    let rows = commit_rows(&mut *tx, &calls).await?;
    let answers = per_call(rows, |r| r.i, commits.len(), "committing a batch of messages")?;
    Ok(answers.into_iter().map(|rows| CommitRow::answer(rows).map(AckOutcome::Committed)).collect())
}

async fn run_errors(tx: &mut PgConnection, errors: &[&QueuedAck]) -> StoreResult<Vec<StoreResult<AckOutcome>>> {
    if errors.is_empty() {
        return Ok(Vec::new());
    }
    let (reasons, requeues): (Vec<Option<String>>, Vec<bool>) = errors
        .iter()
        .map(|a| match &a.action {
            AckAction::Error { reason, requeue } => (reason.clone(), *requeue),
            AckAction::Commit { .. } => (None, true),
        })
        .unzip();
    let rows = sqlx::query!(
        r#"SELECT r.i AS "i!", e.refusal AS "refusal: LockRefusal", e.state AS "state: MessageState",
                  e.retry_count, e.max_retries AS "max_retries!"
           FROM unnest($1::uuid[], $2::int8[], $3::uuid[], $4::uuid[], $5::text[], $6::bool[])
                WITH ORDINALITY AS r(webhook, project, message, token, reason, requeue, i)
           CROSS JOIN LATERAL hookline_error(r.webhook, r.project, r.message, r.token, r.reason, r.requeue) e
           ORDER BY r.i"#,
        &column(errors, |a| *a.webhook.as_uuid()),
        &column(errors, |a| a.project.0),
        &column(errors, |a| *a.message.as_uuid()),
        &column(errors, token) as _,
        &reasons as _,
        &requeues
    )
    .fetch_all(&mut *tx)
    .await
    .context("erroring a batch of messages")?;
    Ok(per_call(rows, |r| r.i, errors.len(), "erroring a batch of messages")?
        .into_iter()
        .flat_map(|rows| rows.into_iter().take(1))
        .map(|r| error_outcome(r.refusal, r.state, r.retry_count, r.max_retries).map(AckOutcome::Errored))
        .collect())
}

/// The rows of each call, in call order. Every call answers at least one row, and rows come
/// numbered by call in order; otherwise none of the answers may be handed out.
fn per_call<R>(
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
