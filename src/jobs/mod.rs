//! Maintenance: each periodic job is a named component with a `run_once` that tests call
//! directly; tokio-cron-scheduler only decides when. Each run holds a PostgreSQL advisory
//! lock, so with many replicas one of them does the work.

mod count_folder;
mod lock_reaper;
mod ttl_purger;
mod webhook_sweeper;

use std::future::Future;
use std::time::Duration;

pub use count_folder::CountFolder;
use futures_util::future::BoxFuture;
pub use lock_reaper::LockReaper;
use sqlx::PgPool;
use tokio_cron_scheduler::{Job, JobScheduler};
pub use ttl_purger::TtlPurger;
pub use webhook_sweeper::WebhookSweeper;

use crate::store::{self, StoreResult};

/// Advisory lock keys, one per job (arbitrary constants, "hl" + job number).
pub const REAPER_LOCK: i64 = 0x686c_0001;
const PURGER_LOCK: i64 = 0x686c_0002;
const FOLDER_LOCK: i64 = 0x686c_0003;
const SWEEPER_LOCK: i64 = 0x686c_0004;

pub const REAPER_EVERY: Duration = Duration::from_secs(60);
pub const PURGER_EVERY: Duration = Duration::from_secs(15 * 60);
pub const FOLDER_EVERY: Duration = Duration::from_secs(60);
pub const SWEEPER_EVERY: Duration = Duration::from_secs(30);

/// Starts the scheduler with every job. Shut it down with `JobScheduler::shutdown`.
pub async fn start(pool: PgPool) -> anyhow::Result<JobScheduler> {
    let scheduler = JobScheduler::new().await?;
    let reaper = LockReaper::new(pool.clone());
    schedule(&scheduler, REAPER_EVERY, "lock reaper", Some("released expired locks"), move || {
        let reaper = reaper.clone();
        async move { reaper.run_once().await }
    })
    .await?;
    let folder = CountFolder::new(pool.clone());
    schedule(&scheduler, FOLDER_EVERY, "count folder", None, move || {
        let folder = folder.clone();
        async move { folder.run_once().await }
    })
    .await?;
    let sweeper = WebhookSweeper::new(pool.clone());
    schedule(&scheduler, SWEEPER_EVERY, "webhook sweeper", Some("removed deleted webhooks' rows"), move || {
        let sweeper = sweeper.clone();
        async move { sweeper.run_once().await }
    })
    .await?;
    let purger = TtlPurger::new(pool);
    schedule(&scheduler, PURGER_EVERY, "TTL purger", Some("purged expired messages"), move || {
        let purger = purger.clone();
        async move { purger.run_once().await }
    })
    .await?;
    scheduler.start().await?;
    Ok(scheduler)
}

/// Runs `job` every `every`, logging `done` with the rows it handled (when it did any) or
/// why it failed.
async fn schedule<F, R>(
    scheduler: &JobScheduler,
    every: Duration,
    name: &'static str,
    done: Option<&'static str>,
    job: F,
) -> anyhow::Result<()>
where
    F: Fn() -> R + Send + Sync + 'static,
    R: Future<Output = StoreResult<u64>> + Send + 'static,
{
    let run = move |_, _| -> BoxFuture<'static, ()> {
        let run = job();
        Box::pin(async move {
            match (run.await, done) {
                (Ok(rows), Some(done)) if rows > 0 => tracing::info!(job = name, rows, "{done}"),
                (Ok(_), _) => {}
                (Err(e), _) => tracing::error!(job = name, error = ?e, "{name} failed"),
            }
        })
    };
    scheduler.add(Job::new_repeated_async(every, run)?).await?;
    Ok(())
}

/// A job that works in bounded batches, each in its own short transaction holding the job's
/// advisory lock, so a large backlog never becomes one huge transaction.
#[derive(Clone)]
struct Batched {
    pool: PgPool,
    lock_key: i64,
    size: i32,
}

impl Batched {
    /// Runs `step` batch after batch until one comes back short. Returns the rows handled,
    /// 0 if another replica holds the lock.
    async fn run<F>(&self, step: F) -> StoreResult<u64>
    where
        F: for<'c> Fn(&'c mut sqlx::PgConnection, i32) -> BoxFuture<'c, StoreResult<u64>>,
    {
        let mut total = 0;
        loop {
            let Some(mut tx) = self.begin().await? else { return Ok(total) };
            let n = step(&mut tx, self.size).await?;
            store::commit(tx).await?;
            total += n;
            if n < self.size as u64 {
                return Ok(total);
            }
        }
    }

    /// A transaction holding the job's lock; None when another replica holds it.
    async fn begin(&self) -> StoreResult<Option<sqlx::Transaction<'static, sqlx::Postgres>>> {
        let mut tx = store::begin(&self.pool).await?;
        let taken = store::maintenance::try_job_lock(&mut tx, self.lock_key).await?;
        Ok(taken.then_some(tx))
    }
}
