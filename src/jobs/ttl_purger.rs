//! Deletes messages past their TTL, in every state, a bounded batch per transaction so a
//! large backlog never becomes one huge delete.

use futures_util::FutureExt as _;
use sqlx::PgPool;

use crate::store::{messages, StoreResult};

#[derive(Clone)]
pub struct TtlPurger {
    pool: PgPool,
    batch: i32,
}

impl TtlPurger {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, batch: 5000 }
    }

    pub fn with_batch(mut self, batch: i32) -> Self {
        self.batch = batch;
        self
    }

    /// Purges every message expired by now, and idempotency keys past their 24 hours;
    /// returns how many messages.
    #[tracing::instrument(skip_all, name = "ttl_purger")]
    pub async fn run_once(&self) -> StoreResult<u64> {
        let purged = super::in_batches(&self.pool, super::PURGER_LOCK, self.batch, |tx, batch| {
            messages::purge_expired(tx, batch).boxed()
        })
        .await?;
        super::in_batches(&self.pool, super::PURGER_LOCK, self.batch, |tx, batch| {
            messages::purge_idempotency_keys(tx, batch).boxed()
        })
        .await?;
        Ok(purged)
    }
}
