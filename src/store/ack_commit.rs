//! Group commit for consumers: concurrent commits and commit-and-next calls, of one webhook
//! or many, by any consumers, run in one transaction per batch (see `batching`), each
//! answered after its batch commits with its own outcome (a 409 for one never fails its
//! neighbours). A lone commit runs as it always did, in its own statement.
//!
//! When a batch fails before its COMMIT (a lock held elsewhere past a second, a webhook
//! deleted meanwhile, any error), nothing of it was written: its commits are retried apart,
//! each webhook's in arrival order, a few webhooks at a time, so each request gets the
//! answer it would have had alone. When the COMMIT itself fails, its outcome is unknown:
//! every request is told so (500), as a lone commit whose answer was lost would be, and
//! retrying finds the message committed (409, state committed) or still locked.

use futures_util::StreamExt as _;
use sqlx::PgPool;

use super::batching::{GroupCommitConfig, Pending, Queue};
use super::messages::{self, LockedMessage, QueuedCommit};
use super::{Context, StoreResult};
use crate::telemetry::Throttle;

/// Webhooks whose commits are retried at once after a failed batch.
const SPLIT_RETRIES: usize = 4;

/// Failed batches logged a minute (the rest counted).
static BATCH_FAILURES: Throttle = Throttle::new(10);

type Outcome = Option<LockedMessage>;

/// The consumers' commit writer. Cloning shares it.
#[derive(Clone)]
pub struct AckCommitter {
    queue: Queue<QueuedCommit, Outcome>,
}

impl AckCommitter {
    pub fn start(pool: PgPool, config: GroupCommitConfig) -> Self {
        let queue = Queue::start(config, move |batch| {
            let pool = pool.clone();
            async move { write(&pool, batch).await }
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

async fn write(pool: &PgPool, batch: Vec<Pending<QueuedCommit, Outcome>>) {
    if batch.len() == 1 {
        return alone(pool, batch).await;
    }
    let (commits, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.item, p.reply)).unzip();
    let written = async {
        let mut tx = super::begin(pool).await?;
        let outcomes = messages::commit_set(&mut tx, &commits).await?;
        Ok::<_, super::StoreError>((tx, outcomes))
    }
    .await;
    match written {
        Ok((tx, outcomes)) => match super::commit(tx).await {
            Ok(()) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(e) => {
                tracing::error!(error = ?e, size = replies.len(), "the COMMIT of a batch of commits failed; its outcome is unknown");
                for reply in replies {
                    let unknown =
                        Err(sqlx::Error::Protocol("the batch's COMMIT failed; its outcome is unknown".into()));
                    let _ = reply.send(unknown.context("committing a batch of messages"));
                }
            }
        },
        Err(e) => {
            if let Some(suppressed) = BATCH_FAILURES.permit() {
                tracing::warn!(error = ?e, size = commits.len(), suppressed, "a batch of commits failed; retrying them apart");
            }
            let batch = commits.into_iter().zip(replies).map(|(item, reply)| Pending { item, reply });
            let mut parts: Vec<Vec<Pending<QueuedCommit, Outcome>>> = Vec::new();
            for pending in batch {
                match parts.iter_mut().find(|p| p[0].item.webhook == pending.item.webhook) {
                    Some(part) => part.push(pending),
                    None => parts.push(vec![pending]),
                }
            }
            futures_util::stream::iter(parts).for_each_concurrent(SPLIT_RETRIES, |part| alone(pool, part)).await;
        }
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
