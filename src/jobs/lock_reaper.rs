//! Releases locks whose holder went quiet (FIFO and standard mode alike): each expired lock is a failed attempt, so the
//! message goes back to its position with retry_count + 1, or dead at max_retries.
//! Dequeue does the same for its own webhook; this catches queues nobody is polling.

use futures_util::FutureExt as _;
use sqlx::PgPool;

#[derive(Clone)]
pub struct LockReaper {
    pool: PgPool,
    batch: i64,
}

impl LockReaper {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, batch: 1000 }
    }

    pub fn with_batch(mut self, batch: i64) -> Self {
        self.batch = batch;
        self
    }

    /// Releases every lock expired by now; returns how many.
    #[tracing::instrument(skip_all, name = "lock_reaper")]
    pub async fn run_once(&self) -> Result<u64, sqlx::Error> {
        super::in_batches(&self.pool, super::REAPER_LOCK, self.batch, |tx, batch| {
            async move {
                // FIFO locks live on webhook rows, standard-mode locks on message rows.
                let (fifo, standard): (i32, i32) = sqlx::query_as(
                    "SELECT hookline_release_expired_locks($1::int), hookline_release_expired_message_locks(NULL, $1::int)",
                )
                .bind(batch)
                .fetch_one(tx)
                .await?;
                Ok((fifo + standard) as u64)
            }
            .boxed()
        })
        .await
    }
}
