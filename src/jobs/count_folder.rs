//! Keeps the stats counters small: merges each webhook's count rows older than two minutes
//! into minute buckets (the last hour) and one base row (everything before).

use sqlx::PgPool;

use crate::store::{self, StoreResult};

#[derive(Clone)]
pub struct CountFolder {
    pool: PgPool,
}

impl CountFolder {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Folds once; returns how many rows were merged (0 if another replica is folding).
    #[tracing::instrument(skip_all, name = "count_folder")]
    pub async fn run_once(&self) -> StoreResult<u64> {
        let mut tx = store::begin(&self.pool).await?;
        if !store::maintenance::try_job_lock(&mut tx, super::FOLDER_LOCK).await? {
            return Ok(0);
        }
        let folded = store::stats::fold_counts(&mut *tx).await?;
        store::commit(tx).await?;
        Ok(folded)
    }
}
