//! Deletes messages past their TTL, in every state, then expired idempotency keys, replay
//! claims and dashboard sessions: a bounded batch per transaction, so a large backlog never becomes
//! one huge delete.

use futures_util::FutureExt as _;
use sqlx::PgPool;

use super::Batched;
use crate::store::{self, accounts, messages, StoreResult};

#[derive(Clone)]
pub struct TtlPurger(Batched);

impl TtlPurger {
    pub fn new(pool: PgPool) -> Self {
        Self(Batched { pool, lock_key: super::PURGER_LOCK, size: 5000 })
    }

    /// Candidate rows looked at per transaction.
    pub fn with_batch(self, size: i32) -> Self {
        Self(Batched { size, ..self.0 })
    }

    /// Purges every message expired by now, idempotency keys past their 24 hours, replay
    /// claims past their window and expired dashboard sessions; returns how many messages.
    #[tracing::instrument(skip_all, name = "ttl_purger")]
    pub async fn run_once(&self) -> StoreResult<u64> {
        let purged = self.purge_messages().await?;
        self.0.run(|tx, size| messages::purge_idempotency_keys(tx, size).boxed()).await?;
        self.0.run(|tx, size| messages::purge_seen_signatures(tx, size).boxed()).await?;
        self.0.run(|tx, size| accounts::purge_expired_sessions(tx, size).boxed()).await?;
        Ok(purged)
    }

    /// Batch after batch, each from where the last one ended and looking past the webhooks
    /// found busy, so those cannot fill every batch; the next run takes them.
    async fn purge_messages(&self) -> StoreResult<u64> {
        let (mut purged, mut cursor) = (0, messages::PurgeCursor::default());
        loop {
            let Some(mut tx) = self.0.begin().await? else { return Ok(purged) };
            let batch = messages::purge_expired(&mut *tx, self.0.size, &mut cursor).await?;
            store::commit(tx).await?;
            purged += batch.purged;
            if batch.candidates < self.0.size as u64 {
                return Ok(purged);
            }
        }
    }
}
