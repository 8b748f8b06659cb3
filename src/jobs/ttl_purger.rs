//! Deletes messages past their TTL, in every state, a bounded batch per transaction so a
//! large backlog never becomes one huge delete.

use futures_util::FutureExt as _;
use sqlx::PgPool;

#[derive(Clone)]
pub struct TtlPurger {
    pool: PgPool,
    batch: i64,
}

impl TtlPurger {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, batch: 5000 }
    }

    pub fn with_batch(mut self, batch: i64) -> Self {
        self.batch = batch;
        self
    }

    /// Purges every message expired by now, and idempotency keys past their 24 hours;
    /// returns how many messages.
    #[tracing::instrument(skip_all, name = "ttl_purger")]
    pub async fn run_once(&self) -> Result<u64, sqlx::Error> {
        let messages = self.purge_messages().await?;
        super::in_batches(&self.pool, super::PURGER_LOCK, self.batch, |tx, batch| {
            async move {
                let done = sqlx::query(
                    "DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
                         SELECT ctid FROM idempotency_keys WHERE created_at <= now() - interval '24 hours' LIMIT $1))",
                )
                .bind(batch)
                .execute(tx)
                .await?;
                Ok(done.rows_affected())
            }
            .boxed()
        })
        .await?;
        Ok(messages)
    }

    async fn purge_messages(&self) -> Result<u64, sqlx::Error> {
        super::in_batches(&self.pool, super::PURGER_LOCK, self.batch, |tx, batch| {
            async move {
                let done = sqlx::query(
                    "DELETE FROM messages m USING (
                         SELECT webhook_id, seq FROM messages WHERE expires_at <= now()
                         ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
                     ) expired
                     WHERE m.webhook_id = expired.webhook_id AND m.seq = expired.seq",
                )
                .bind(batch)
                .execute(&mut *tx)
                .await?;
                // A purged message may have held its webhook's lock: release such locks
                // now rather than making the queue wait out the timeout.
                sqlx::query(
                    "UPDATE webhooks w SET locked_seq = NULL, lock_token = NULL, lock_expires_at = NULL
                     WHERE w.locked_seq IS NOT NULL
                       AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.webhook_id = w.id AND m.seq = w.locked_seq)",
                )
                .execute(&mut *tx)
                .await?;
                Ok(done.rows_affected())
            }
            .boxed()
        })
        .await
    }
}
