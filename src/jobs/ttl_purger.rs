//! Deletes messages past their TTL, in every state, then expired idempotency keys, replay
//! claims and dashboard sessions: a bounded batch per transaction, so a large backlog never becomes
//! one huge delete.

use futures_util::FutureExt as _;
use sqlx::PgPool;

use super::Batched;
use crate::store::{self, accounts, messages, StoreError, StoreResult};

#[derive(Clone)]
pub struct TtlPurger(Batched);

/// Busy webhooks taken once more at the end of a run.
const BUSY_RETRIED: usize = 100;

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
    /// found busy, so those cannot fill every batch; then each busy one alone, waiting a
    /// moment for its row.
    async fn purge_messages(&self) -> StoreResult<u64> {
        let size = self.0.size;
        let (mut purged, mut cursor) = (0, messages::PurgeCursor::default());
        loop {
            let Some(mut tx) = self.0.begin().await? else { return Ok(purged) };
            let batch = messages::purge_expired(&mut *tx, size, &mut cursor).await?;
            store::commit(tx).await?;
            purged += batch.purged;
            if batch.candidates < size as u64 {
                break;
            }
        }
        // At most a second's wait each, for a bounded number of them; the rest wait for
        // the next run.
        for webhook in cursor.busy.into_iter().take(BUSY_RETRIED) {
            let mut alone = messages::PurgeCursor { only: Some(webhook), ..Default::default() };
            loop {
                let Some(mut tx) = self.0.begin().await? else { return Ok(purged) };
                let batch = match messages::purge_expired(&mut *tx, size, &mut alone).await {
                    Ok(batch) => batch,
                    // Still held: the next run takes it (the transaction rolls back).
                    Err(StoreError::Busy) => break,
                    Err(e) => return Err(e),
                };
                store::commit(tx).await?;
                purged += batch.purged;
                // Nothing purged: its message rows are held; the next run takes them.
                if batch.candidates < size as u64 || batch.purged == 0 {
                    break;
                }
            }
        }
        Ok(purged)
    }
}
