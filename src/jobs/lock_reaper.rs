//! Releases locks whose holder went quiet (FIFO and standard mode alike): each expired lock
//! is a failed attempt (`hookline_fail_attempt`), so the message goes back to its position
//! with retry_count + 1, or dead at max_retries. Dequeue does the same for its own webhook;
//! this catches queues nobody is polling.

use futures_util::FutureExt as _;
use sqlx::PgPool;

use crate::store::{self, StoreResult};

#[derive(Clone)]
pub struct LockReaper {
    pool: PgPool,
    batch: i32,
}

impl LockReaper {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, batch: 1000 }
    }

    pub fn with_batch(mut self, batch: i32) -> Self {
        self.batch = batch;
        self
    }

    /// Releases every lock expired by now; returns how many.
    #[tracing::instrument(skip_all, name = "lock_reaper")]
    pub async fn run_once(&self) -> StoreResult<u64> {
        super::in_batches(&self.pool, super::REAPER_LOCK, self.batch, |tx, batch| {
            store::maintenance::release_expired_locks(tx, batch).boxed()
        })
        .await
    }
}
