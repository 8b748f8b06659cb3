//! Many commits (plain and commit-and-next) in one transaction, for consumer group commit
//! (`store::ack_commit`): each runs `hookline_commit` exactly as a lone commit does, so its
//! outcome is today's, and the transaction pays one commit record and one flush for all.

use std::collections::HashSet;

use sqlx::PgConnection;
use uuid::Uuid;

use super::transitions::{refused, CommitRow, LockRefusal};
use super::{LockedMessage, LockedRef};
use crate::domain::{LockToken, MessageId, MessageState, ProjectId, WebhookId};
use crate::store::{Context, StoreError, StoreResult};

/// A commit waiting for its batch: the message, the lock its consumer claims, and whether
/// to lock and answer the next message too.
pub struct QueuedCommit {
    pub project: ProjectId,
    pub webhook: WebhookId,
    pub message: MessageId,
    pub token: Option<LockToken>,
    pub next: bool,
}

impl QueuedCommit {
    pub fn new(target: &LockedRef<'_>, next: bool) -> Self {
        Self {
            project: target.project,
            webhook: *target.webhook,
            message: *target.message,
            token: target.token.copied(),
            next,
        }
    }

    pub fn target(&self) -> LockedRef<'_> {
        LockedRef { project: self.project, webhook: &self.webhook, message: &self.message, token: self.token.as_ref() }
    }
}

/// One row of the batch: `hookline_commit`'s answer, and which commit it answers.
struct NumberedRow {
    i: i64,
    row: CommitRow,
}

/// Runs every commit in `tx`, in order, and answers each (Ok(None): committed, nothing
/// next). First the rows the commits will lock are locked in a fixed order (FIFO webhooks
/// by id, then standard-mode messages by webhook and id), so two batches never wait on
/// each other in a cycle; a lock held elsewhere past a second fails the whole call
/// (`StoreError::Busy`), and the caller retries the commits apart. A commit whose webhook
/// is gone (or another project's) is answered 404 without running.
#[tracing::instrument(skip_all, fields(commits = commits.len()))]
pub async fn commit_set(
    tx: &mut PgConnection,
    commits: &[QueuedCommit],
) -> StoreResult<Vec<StoreResult<Option<LockedMessage>>>> {
    sqlx::query_scalar!(r#"SELECT set_config('lock_timeout', '1s', true) AS "set!""#)
        .fetch_one(&mut *tx)
        .await
        .context("bounding a batch's lock waits")?;
    let webhooks: Vec<Uuid> = commits.iter().map(|c| *c.webhook.as_uuid()).collect();
    let messages: Vec<Uuid> = commits.iter().map(|c| *c.message.as_uuid()).collect();
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
    let runs = |c: &QueuedCommit| present.contains(&(*c.webhook.as_uuid(), c.project.0));
    let run: Vec<&QueuedCommit> = commits.iter().filter(|c| runs(c)).collect();
    let column = |f: fn(&QueuedCommit) -> Uuid| run.iter().map(|c| f(c)).collect::<Vec<Uuid>>();
    let tokens: Vec<Option<Uuid>> = run.iter().map(|c| c.token.map(|t| *t.as_uuid())).collect();
    let next: Vec<bool> = run.iter().map(|c| c.next).collect();
    let projects: Vec<i64> = run.iter().map(|c| c.project.0).collect();
    let rows = sqlx::query!(
        r#"SELECT r.i AS "i!", c.refusal AS "refusal: LockRefusal", c.state AS "state: MessageState", c.id, c.seq,
                  c.retry_count, c.max_retries, c.lock_token, c.lock_expires_at, c.received_at, c.key_id,
                  c.nonce, c.ciphertext, c.priority
           FROM unnest($1::uuid[], $2::int8[], $3::uuid[], $4::uuid[], $5::bool[])
                WITH ORDINALITY AS r(webhook, project, message, token, next, i)
           CROSS JOIN LATERAL hookline_commit(r.webhook, r.project, r.message, r.token, r.next) c
           ORDER BY r.i"#,
        &column(|c| *c.webhook.as_uuid()),
        &projects,
        &column(|c| *c.message.as_uuid()),
        &tokens as _,
        &next
    )
    .fetch_all(&mut *tx)
    .await
    .context("committing a batch of messages")?;
    let rows: Vec<NumberedRow> = rows
        .into_iter()
        .map(|r| NumberedRow {
            i: r.i,
            row: CommitRow {
                refusal: r.refusal,
                state: r.state,
                id: r.id,
                seq: r.seq,
                retry_count: r.retry_count,
                max_retries: r.max_retries,
                lock_token: r.lock_token,
                lock_expires_at: r.lock_expires_at,
                received_at: r.received_at,
                key_id: r.key_id,
                nonce: r.nonce,
                ciphertext: r.ciphertext,
                priority: r.priority,
            },
        })
        .collect();
    // hookline_commit answers one row per call: row k must answer the k-th commit run.
    if rows.len() != run.len() || rows.iter().enumerate().any(|(k, r)| r.i != k as i64 + 1) {
        let wrong = format!("{} rows for {} commits, or out of order", rows.len(), run.len());
        return Err(sqlx::Error::Protocol(wrong)).context("committing a batch of messages");
    }
    let mut answers = rows.into_iter().map(|r| refused(r.row.refusal, r.row.state).map(|()| r.row.next()));
    Ok(commits
        .iter()
        .map(|c| if runs(c) { answers.next().expect("counted above") } else { Err(StoreError::NotFound("webhook")) })
        .collect())
}
