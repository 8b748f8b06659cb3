//! Keeps the stats counters small: merges the count rows older than two minutes of each
//! webhook with something to fold into minute buckets (the last hour) and one base row
//! (everything before), a bounded number of webhooks per transaction.

use futures_util::FutureExt as _;
use sqlx::PgPool;

use super::Batched;
use crate::store::{stats, StoreResult};

#[derive(Clone)]
pub struct CountFolder(Batched);

impl CountFolder {
    pub fn new(pool: PgPool) -> Self {
        Self(Batched { pool, lock_key: super::FOLDER_LOCK, size: 1000 })
    }

    /// Candidate rows looked at per transaction.
    pub fn with_batch(self, size: i32) -> Self {
        Self(Batched { size, ..self.0 })
    }

    /// Folds every webhook that has something to fold; returns how many candidate rows it
    /// found (0 if another replica is folding).
    #[tracing::instrument(skip_all, name = "count_folder")]
    pub async fn run_once(&self) -> StoreResult<u64> {
        self.0.run(|tx, size| stats::fold_counts(tx, size).boxed()).await
    }
}
