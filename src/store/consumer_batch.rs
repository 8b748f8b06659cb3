//! Group commit for consumers: concurrent commits, commit-and-next calls and errors, of one
//! webhook or many, by any consumers, run in one transaction per batch (see `batching`),
//! each answered after its batch commits with its own outcome (a 409 for one never fails
//! its neighbours). A lone one runs as it always did, in its own statement.
//!
//! Flushers never wait on a row held elsewhere: a lone call, and the parts of a batch that
//! failed before its COMMIT (a lock held elsewhere past a second, any error; nothing of it
//! was written), run in tasks of their own, each webhook's part in arrival order, so a
//! held row holds up only its own requests, as it did when each request ran alone. When
//! the COMMIT itself fails, its outcome is unknown: every request is told so (500), as a
//! lone commit whose answer was lost would be, and retrying finds the message committed
//! (409, state committed) or still locked.

use sqlx::PgPool;
use tokio::sync::oneshot;

use super::batching::{split_by, GroupCommitConfig, Pending, Queue};
use super::messages::{self, ConsumerCall, ConsumerOutcome, ErrorOutcome, LockedMessage};
use super::{Context, StoreResult};
use crate::telemetry::Throttle;

/// Failed batches logged a minute (the rest counted).
static BATCH_FAILURES: Throttle = Throttle::new(10);

type Outcome = ConsumerOutcome;
type Reply = oneshot::Sender<StoreResult<Outcome>>;

/// The consumers' batcher. Cloning shares it.
#[derive(Clone)]
pub struct ConsumerBatcher {
    queue: Queue<ConsumerCall, Outcome>,
}

impl ConsumerBatcher {
    pub fn start(pool: PgPool, config: GroupCommitConfig) -> Self {
        let queue = Queue::start(config, move |batch| {
            let pool = pool.clone();
            async move { write(pool, batch).await }
        });
        Self { queue }
    }

    /// Commits the message (and with `next`, leases what follows), once its batch has
    /// committed. Empty: committed, nothing leased (or not asked).
    pub async fn commit(&self, commit: ConsumerCall) -> StoreResult<Vec<LockedMessage>> {
        match self.submit(commit).await? {
            ConsumerOutcome::Committed(next) => Ok(next),
            _ => Err(mismatched()),
        }
    }

    /// Records a failed attempt, once its batch has committed.
    pub async fn error(&self, error: ConsumerCall) -> StoreResult<ErrorOutcome> {
        match self.submit(error).await? {
            ConsumerOutcome::Errored(outcome) => Ok(outcome),
            _ => Err(mismatched()),
        }
    }

    async fn submit(&self, call: ConsumerCall) -> StoreResult<Outcome> {
        let webhook = call.webhook;
        match self.queue.submit(call).await {
            Some(outcome) => outcome,
            None => Err(sqlx::Error::PoolClosed).context_for("consuming: the batcher stopped", &webhook),
        }
    }
}

/// An answer of the other kind than asked: a bug, reported as a database failure rather
/// than handed out.
fn mismatched() -> super::StoreError {
    let source = sqlx::Error::Protocol("a consumer's call answered as another kind".into());
    super::StoreError::Database(super::DbError { operation: "consuming a message", webhook: None, source })
}

#[tracing::instrument(skip_all, fields(size = batch.len()))]
async fn write(pool: PgPool, batch: Vec<Pending<ConsumerCall, Outcome>>) {
    if batch.len() == 1 {
        tokio::spawn(async move { alone(&pool, batch).await });
        return;
    }
    let (calls, replies): (Vec<ConsumerCall>, Vec<Reply>) = batch.into_iter().map(|p| (p.item, p.reply)).unzip();
    let written = async {
        let mut tx = super::begin(&pool).await?;
        let outcomes = messages::consumer_set(&mut tx, &calls).await?;
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
                tracing::warn!(error = ?e, size = calls.len(), suppressed, "a batch of consumers' calls failed; retrying them apart");
            }
            let pending = calls.into_iter().zip(replies).map(|(item, reply)| Pending { item, reply });
            for part in split_by(pending, |p| p.item.webhook) {
                let pool = pool.clone();
                tokio::spawn(async move { alone(&pool, part).await });
            }
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
        tracing::error!(error = ?error, size = replies.len(), suppressed, "the COMMIT of a batch of consumers' calls failed; its outcome is unknown");
    }
    for reply in replies {
        let lost = Err(sqlx::Error::Protocol("the batch's COMMIT failed; its outcome is unknown".into()));
        let _ = reply.send(lost.context("consuming a batch of messages"));
    }
}

/// Each in its own statement, in order: the path of a lone call.
async fn alone(pool: &PgPool, part: Vec<Pending<ConsumerCall, Outcome>>) {
    for Pending { item, reply } in part {
        let _ = reply.send(item.run_alone(pool).await);
    }
}
