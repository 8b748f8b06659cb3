//! Keeps the stats counters small: merges each webhook's count rows older than two minutes
//! into minute buckets (the last hour) and one base row (everything before).

use sqlx::PgPool;

use crate::store::{self, StoreError};

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
    pub async fn run_once(&self) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(super::FOLDER_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !got {
            return Ok(0);
        }
        let folded = store::stats::fold_counts(&mut *tx).await?;
        tx.commit().await?;
        Ok(folded)
    }
}
