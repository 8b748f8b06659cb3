//! Releases locks whose holder went quiet (FIFO and standard mode alike): each expired lock
//! is a failed attempt (`hookline_fail_attempts`), so the message goes back to its position
//! with retry_count + 1, or dead at max_retries. Dequeue does the same for its own webhook;
//! this catches queues nobody is polling.

use futures_util::FutureExt as _;
use sqlx::PgPool;

use super::Batched;
use crate::store::{self, StoreResult};

#[derive(Clone)]
pub struct LockReaper(Batched);

impl LockReaper {
    pub fn new(pool: PgPool) -> Self {
        Self(Batched { pool, lock_key: super::REAPER_LOCK, size: 1000 })
    }

    /// Locks of each kind released per transaction.
    pub fn with_batch(self, size: i32) -> Self {
        Self(Batched { size, ..self.0 })
    }

    /// Releases every lock expired by now; returns how many.
    #[tracing::instrument(skip_all, name = "lock_reaper")]
    pub async fn run_once(&self) -> StoreResult<u64> {
        self.0.run(|tx, size| store::maintenance::release_expired_locks(tx, size).boxed()).await
    }
}
