//! Many commits (plain and commit-and-next) in one transaction, for consumer group commit
//! (`store::ack_commit`): each runs `hookline_commit` exactly as a lone commit does, so its
//! outcome is today's, and the transaction pays one commit record and one flush for all.

use sqlx::PgConnection;
use uuid::Uuid;

use super::transitions::{refused, CommitRow, LockRefusal};
use super::{LockedMessage, LockedRef};
use crate::domain::{LockToken, MessageId, MessageState, ProjectId, WebhookId};
use crate::store::{Context, StoreResult};

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

/// Runs every commit in `tx`, in order, and answers each (Ok(None): committed, nothing
/// next). First the FIFO webhooks' rows are locked in id order, so two batches never wait
/// on each other in a cycle; a lock held elsewhere past a second fails the whole call
/// (`StoreError::Busy`) and the caller retries the items apart. A webhook that does not
/// exist fails the whole call too (the caller retries apart, where it is a 404).
pub async fn commit_set(
    tx: &mut PgConnection,
    commits: &[QueuedCommit],
) -> StoreResult<Vec<StoreResult<Option<LockedMessage>>>> {
    sqlx::query_scalar!(r#"SELECT set_config('lock_timeout', '1s', true) AS "set!""#)
        .fetch_one(&mut *tx)
        .await
        .context("bounding a batch's lock waits")?;
    let mut webhooks: Vec<Uuid> = commits.iter().map(|c| *c.webhook.as_uuid()).collect();
    webhooks.sort_unstable();
    webhooks.dedup();
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM (
             SELECT 1 FROM webhooks WHERE id = ANY ($1) AND mode = 'fifo' ORDER BY id FOR NO KEY UPDATE
           ) locked"#,
        &webhooks
    )
    .fetch_one(&mut *tx)
    .await
    .context("locking a batch's webhooks")?;
    let column = |f: fn(&QueuedCommit) -> Uuid| commits.iter().map(f).collect::<Vec<Uuid>>();
    let projects: Vec<i64> = commits.iter().map(|c| c.project.0).collect();
    let tokens: Vec<Option<Uuid>> = commits.iter().map(|c| c.token.map(|t| *t.as_uuid())).collect();
    let next: Vec<bool> = commits.iter().map(|c| c.next).collect();
    let rows = sqlx::query_as!(
        CommitRow,
        r#"SELECT c.refusal AS "refusal: LockRefusal", c.state AS "state: MessageState", c.id, c.seq,
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
    if rows.len() != commits.len() {
        // hookline_commit answers one row per call: anything else must not be matched up.
        let wrong = format!("{} rows for {} commits", rows.len(), commits.len());
        return Err(sqlx::Error::Protocol(wrong)).context("committing a batch of messages");
    }
    Ok(rows.into_iter().map(|row| refused(row.refusal, row.state).map(|()| row.next())).collect())
}
