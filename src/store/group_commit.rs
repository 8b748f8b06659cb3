//! Group commit for ingestion: concurrent ingests (of one webhook or many) are written in
//! one transaction per batch, and each request is answered after its batch commits.
//!
//! Batches form as `batching` describes: they grow with load, and a lone request is written
//! at once. A batch never waits long on another transaction's row lock
//! (`hookline_ingest` has a lock timeout): the blocked webhook's items fail alone. If a batch
//! fails otherwise, its items are retried one by one, so a bad item fails only its own
//! request.

use futures_util::StreamExt as _;
use sqlx::PgPool;
use tokio::sync::oneshot;

pub use super::batching::GroupCommitConfig;
use super::batching::{split_by, Pending, Queue, SPLIT_RETRIES};
use super::messages::{self, NewMessage, Stored};
use super::{Context, Refusal, StoreError, StoreResult};
use crate::domain::WebhookId;
use crate::telemetry::Throttle;

/// Failed batches logged a minute (the rest counted).
static BATCH_FAILURES: Throttle = Throttle::new(10);

/// The ingestion writer. Cloning shares it; it stops once every clone is dropped and the
/// queue is drained.
#[derive(Clone)]
pub struct GroupCommitter {
    queue: Queue<(WebhookId, NewMessage), Stored>,
}

impl GroupCommitter {
    pub fn start(pool: PgPool, config: GroupCommitConfig) -> Self {
        let queue = Queue::start(config, move |batch| {
            let pool = pool.clone();
            async move { write(&pool, batch).await }
        });
        Self { queue }
    }

    /// Writes the message durably and returns where it stands, once its batch has committed.
    pub async fn submit(&self, webhook: WebhookId, message: NewMessage) -> StoreResult<Stored> {
        match self.queue.submit((webhook, message)).await {
            Some(outcome) => outcome,
            None => Err(sqlx::Error::PoolClosed).context_for("ingesting: the writer stopped", &webhook),
        }
    }
}

/// One batch's messages and, in the same order, the requests waiting for them.
struct Batch {
    items: Vec<(WebhookId, NewMessage)>,
    replies: Vec<oneshot::Sender<StoreResult<Stored>>>,
}

impl Batch {
    /// Answers every request that its webhook is busy.
    fn busy(self) {
        for reply in self.replies {
            let _ = reply.send(Err(StoreError::Busy));
        }
    }

    /// The batch split by webhook, each part in arrival order.
    fn per_webhook(self) -> Vec<Batch> {
        let pairs = self.items.into_iter().zip(self.replies);
        split_by(pairs, |(item, _)| item.0)
            .into_iter()
            .map(|part| {
                let (items, replies) = part.into_iter().unzip();
                Batch { items, replies }
            })
            .collect()
    }
}

/// Writes the batch in one transaction and answers each request. When that fails because a
/// row lock held by another transaction (a long operation on one webhook) outlasted the
/// lock timeout (a second per lock wait), each webhook's part is retried alone, a few at a
/// time, so only the blocked webhook's requests fail (503, retry later). Any other failure
/// retries the items one by one, so a bad item fails only itself.
async fn write(pool: &PgPool, batch: Vec<Pending<(WebhookId, NewMessage), Stored>>) {
    let (items, replies) = batch.into_iter().map(|p| (p.item, p.reply)).unzip();
    let batch = Batch { items, replies };
    match messages::insert_many(pool, &batch.items).await {
        Ok(stored) => answer(batch, stored),
        Err(StoreError::Busy) => {
            let parts = batch.per_webhook();
            if parts.len() == 1 {
                parts.into_iter().for_each(Batch::busy);
            } else {
                // A few at a time: a batch spans up to max_batch webhooks, the pool is shared.
                futures_util::stream::iter(parts)
                    .for_each_concurrent(SPLIT_RETRIES, |part| write_part(pool, part))
                    .await;
            }
        }
        Err(e) if batch.items.len() > 1 => {
            if let Some(suppressed) = BATCH_FAILURES.permit() {
                tracing::warn!(error = ?e, size = batch.items.len(), suppressed, "ingestion batch failed; retrying its messages one by one");
            }
            one_by_one(pool, batch).await;
        }
        Err(e) => {
            // A batch of one: its only request gets the error.
            if let Some(reply) = batch.replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// One webhook's part of a batch that could not get its locks.
async fn write_part(pool: &PgPool, part: Batch) {
    match messages::insert_many(pool, &part.items).await {
        Ok(stored) => answer(part, stored),
        Err(StoreError::Busy) => part.busy(),
        Err(_) => one_by_one(pool, part).await,
    }
}

/// Each item in its own statement. A batch whose COMMIT failed may have committed after
/// all (the connection broke after the server did it): an item whose id is then already
/// stored in its webhook (its insert refused as a duplicate id, or its signature claim as a
/// replay of itself) is that very message, and is answered as stored.
async fn one_by_one(pool: &PgPool, batch: Batch) {
    for (item, reply) in batch.items.into_iter().zip(batch.replies) {
        let result = messages::insert_many(pool, std::slice::from_ref(&item))
            .await
            .and_then(|mut s| s.pop().unwrap_or(Err(StoreError::NotFound("webhook"))));
        let result = match result {
            Err(e) if e.violates("messages_id_key") || matches!(e, StoreError::Refused(Refusal::Replayed)) => {
                match messages::stored(pool, &item.0, &item.1.id).await {
                    Ok(Some(stored)) => Ok(stored),
                    Ok(None) => Err(e),
                    Err(lookup) => Err(lookup),
                }
            }
            result => result,
        };
        let _ = reply.send(result);
    }
}

fn answer(batch: Batch, outcomes: Vec<StoreResult<Stored>>) {
    for (reply, outcome) in batch.replies.into_iter().zip(outcomes) {
        let _ = reply.send(outcome);
    }
}
