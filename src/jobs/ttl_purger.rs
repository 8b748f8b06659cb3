//! Deletes messages past their TTL, in every state, then expired idempotency keys, replay
//! claims and dashboard sessions: a bounded batch per transaction, so a large backlog never becomes
//! one huge delete.

use futures_util::FutureExt as _;
use sqlx::PgPool;

use super::Batched;
use crate::store::{accounts, messages, StoreResult};

#[derive(Clone)]
pub struct TtlPurger(Batched);

impl TtlPurger {
    pub fn new(pool: PgPool) -> Self {
        Self(Batched { pool, lock_key: super::PURGER_LOCK, size: 5000 })
    }

    /// Rows deleted per transaction.
    pub fn with_batch(self, size: i32) -> Self {
        Self(Batched { size, ..self.0 })
    }

    /// Purges every message expired by now, idempotency keys past their 24 hours, replay
    /// claims past their window and expired dashboard sessions; returns how many messages.
    #[tracing::instrument(skip_all, name = "ttl_purger")]
    pub async fn run_once(&self) -> StoreResult<u64> {
        let purged = self.0.run(|tx, size| messages::purge_expired(tx, size).boxed()).await?;
        self.0.run(|tx, size| messages::purge_idempotency_keys(tx, size).boxed()).await?;
        self.0.run(|tx, size| messages::purge_seen_signatures(tx, size).boxed()).await?;
        self.0.run(|tx, size| accounts::purge_expired_sessions(tx, size).boxed()).await?;
        Ok(purged)
    }
}
