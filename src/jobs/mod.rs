//! Maintenance: each periodic job is a named component with a `run_once` that tests call
//! directly; tokio-cron-scheduler only decides when. Each run holds a PostgreSQL advisory
//! lock, so with many replicas one of them does the work.

mod count_folder;
mod lock_reaper;
mod ttl_purger;

use std::time::Duration;

pub use count_folder::CountFolder;
pub use lock_reaper::LockReaper;
use sqlx::PgPool;

use crate::store::{self, Context, StoreResult};
use tokio_cron_scheduler::{Job, JobScheduler};
pub use ttl_purger::TtlPurger;

/// Advisory lock keys, one per job (arbitrary constants, "hl" + job number).
const REAPER_LOCK: i64 = 0x686c_0001;
const PURGER_LOCK: i64 = 0x686c_0002;
const FOLDER_LOCK: i64 = 0x686c_0003;

pub const REAPER_EVERY: Duration = Duration::from_secs(60);
pub const PURGER_EVERY: Duration = Duration::from_secs(15 * 60);
pub const FOLDER_EVERY: Duration = Duration::from_secs(60);

/// Starts the scheduler with every job. Shut it down with `JobScheduler::shutdown`.
pub async fn start(pool: PgPool) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    let reaper = LockReaper::new(pool.clone());
    scheduler
        .add(Job::new_repeated_async(REAPER_EVERY, move |_, _| {
            let reaper = reaper.clone();
            Box::pin(async move {
                match reaper.run_once().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(released = n, "released expired locks"),
                    Err(e) => tracing::error!(error = ?e, "lock reaper failed"),
                }
            })
        })?)
        .await?;
    let folder = CountFolder::new(pool.clone());
    scheduler
        .add(Job::new_repeated_async(FOLDER_EVERY, move |_, _| {
            let folder = folder.clone();
            Box::pin(async move {
                if let Err(e) = folder.run_once().await {
                    tracing::error!(error = ?e, "count folder failed");
                }
            })
        })?)
        .await?;
    let purger = TtlPurger::new(pool);
    scheduler
        .add(Job::new_repeated_async(PURGER_EVERY, move |_, _| {
            let purger = purger.clone();
            Box::pin(async move {
                match purger.run_once().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "purged expired messages"),
                    Err(e) => tracing::error!(error = ?e, "TTL purger failed"),
                }
            })
        })?)
        .await?;
    scheduler.start().await?;
    Ok(scheduler)
}

/// Runs `step` in batches, each in its own short transaction holding the job's advisory
/// lock, until a batch comes back short. Returns the rows handled, 0 if another replica
/// holds the lock.
async fn in_batches<F>(pool: &PgPool, lock_key: i64, batch: i32, step: F) -> StoreResult<u64>
where
    F: for<'c> Fn(&'c mut sqlx::PgConnection, i32) -> futures_util::future::BoxFuture<'c, StoreResult<u64>>,
{
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await.context("beginning a job's batch")?;
        if !store::maintenance::try_job_lock(&mut tx, lock_key).await? {
            return Ok(total);
        }
        let n = step(&mut tx, batch).await?;
        tx.commit().await.context("committing a job's batch")?;
        total += n;
        if n < batch as u64 {
            return Ok(total);
        }
    }
}
