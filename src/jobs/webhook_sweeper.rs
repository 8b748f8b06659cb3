//! Removes what deleted webhooks left behind: a webhook's delete answers at once, removing
//! only its row, and this job deletes its messages and idempotency keys in bounded batches,
//! so a large backlog never becomes one long transaction that other tenants wait on.

use futures_util::FutureExt as _;
use sqlx::PgPool;

use super::Batched;
use crate::store::{self, StoreResult};

#[derive(Clone)]
pub struct WebhookSweeper(Batched);

impl WebhookSweeper {
    pub fn new(pool: PgPool) -> Self {
        Self(Batched { pool, lock_key: super::SWEEPER_LOCK, size: 5000 })
    }

    /// Rows deleted per transaction.
    pub fn with_batch(self, size: i32) -> Self {
        Self(Batched { size, ..self.0 })
    }

    /// Removes every row of every deleted webhook; returns how many.
    #[tracing::instrument(skip_all, name = "webhook_sweeper")]
    pub async fn run_once(&self) -> StoreResult<u64> {
        self.0.run(|tx, size| store::maintenance::sweep_deleted_webhooks(tx, size).boxed()).await
    }
}
