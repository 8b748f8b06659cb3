//! Group commit for consumers: concurrent commits and commit-and-next calls, of one webhook
//! or many, by any consumers, run in one transaction per batch (see `batching`), each
//! answered after its batch commits with its own outcome (a 409 for one never fails its
//! neighbours). A lone commit runs as it always did, in its own statement. Nothing a
//! flusher hands on waits on it: a row held elsewhere holds up only its own commits.
//!
//! When a batch fails before its COMMIT (a lock held elsewhere past a second, any error),
//! nothing of it was written: its commits are retried apart, each webhook's in arrival
//! order, a bounded number at once. When the COMMIT itself fails, its outcome is unknown: every
//! request is told so (500), as a lone commit whose answer was lost would be, and retrying
//! finds the message committed (409, state committed) or still locked.

use std::sync::Arc;

use futures_util::StreamExt as _;
use sqlx::PgPool;
use tokio::sync::{oneshot, Semaphore};

use super::batching::{split_by, GroupCommitConfig, Pending, Queue, SPLIT_RETRIES};
use super::messages::{self, LockedMessage, QueuedCommit};
use super::{Context, StoreResult};
use crate::telemetry::Throttle;

/// Failed batches logged a minute (the rest counted).
static BATCH_FAILURES: Throttle = Throttle::new(10);

/// Commits retried apart at once, across all failed batches.
const RETRIES_AT_ONCE: usize = 4 * SPLIT_RETRIES;

type Outcome = Option<LockedMessage>;
type Reply = oneshot::Sender<StoreResult<Outcome>>;

/// The consumers' commit writer. Cloning shares it.
#[derive(Clone)]
pub struct AckCommitter {
    queue: Queue<QueuedCommit, Outcome>,
}

impl AckCommitter {
    pub fn start(pool: PgPool, config: GroupCommitConfig) -> Self {
        let retries = Arc::new(Semaphore::new(RETRIES_AT_ONCE));
        let queue = Queue::start(config, move |batch| {
            let (pool, retries) = (pool.clone(), retries.clone());
            async move { write(pool, retries, batch).await }
        });
        Self { queue }
    }

    /// Commits the message (and with `next`, locks the next one), once its batch has
    /// committed. Ok(None): committed, nothing next (or not asked).
    pub async fn commit(&self, commit: QueuedCommit) -> StoreResult<Outcome> {
        let webhook = commit.webhook;
        match self.queue.submit(commit).await {
            Some(outcome) => outcome,
            None => Err(sqlx::Error::PoolClosed).context_for("committing: the writer stopped", &webhook),
        }
    }
}

#[tracing::instrument(skip_all, fields(size = batch.len()))]
async fn write(pool: PgPool, retries: Arc<Semaphore>, batch: Vec<Pending<QueuedCommit, Outcome>>) {
    if batch.len() == 1 {
        // Off the flusher too: a lone commit waiting on a row held elsewhere must not keep
        // the flusher from the next batch.
        tokio::spawn(async move { alone(&pool, batch).await });
        return;
    }
    let (commits, replies): (Vec<QueuedCommit>, Vec<Reply>) = batch.into_iter().map(|p| (p.item, p.reply)).unzip();
    let written = async {
        let mut tx = super::begin(&pool).await?;
        let outcomes = messages::commit_set(&mut tx, &commits).await?;
        Ok::<_, super::StoreError>((tx, outcomes))
    }
    .await;
    match written {
        Ok((tx, outcomes)) => match super::commit(tx).await {
            Ok(()) => answer(replies, outcomes),
            Err(e) => unknown(replies, e),
        },
        Err(e) => {
            if let Some(suppressed) = BATCH_FAILURES.permit() {
                tracing::warn!(error = ?e, size = commits.len(), suppressed, "a batch of commits failed; retrying them apart");
            }
            let pending = commits.into_iter().zip(replies).map(|(item, reply)| Pending { item, reply });
            let parts = split_by(pending, |p| p.item.webhook);
            tokio::spawn(async move {
                futures_util::stream::iter(parts)
                    .for_each_concurrent(None, |part| async {
                        let _permit = retries.acquire().await.expect("the semaphore is never closed");
                        alone(&pool, part).await;
                    })
                    .await;
            });
        }
    }
}

fn answer(replies: Vec<Reply>, outcomes: Vec<StoreResult<Outcome>>) {
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        let _ = reply.send(outcome);
    }
}

/// The COMMIT failed: the batch may or may not have been written.
fn unknown(replies: Vec<Reply>, error: super::StoreError) {
    if let Some(suppressed) = BATCH_FAILURES.permit() {
        tracing::error!(error = ?error, size = replies.len(), suppressed, "the COMMIT of a batch of commits failed; its outcome is unknown");
    }
    for reply in replies {
        let lost = Err(sqlx::Error::Protocol("the batch's COMMIT failed; its outcome is unknown".into()));
        let _ = reply.send(lost.context("committing a batch of messages"));
    }
}

/// Each commit in its own statement, in order: the path of a lone commit.
async fn alone(pool: &PgPool, part: Vec<Pending<QueuedCommit, Outcome>>) {
    for Pending { item, reply } in part {
        let outcome = if item.next {
            messages::commit_next(pool, &item.target()).await
        } else {
            messages::commit(pool, &item.target()).await.map(|()| None)
        };
        let _ = reply.send(outcome);
    }
}
