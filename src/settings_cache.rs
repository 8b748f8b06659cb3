//! What hot paths need to know of tenants, cached for a few seconds so they do not ask the
//! database on every request: each project's limits (its plan with the operator's
//! overrides), and each webhook's ingestion settings (owner, limits, signing secret). A
//! change takes effect within the cache's time to live.

use std::hash::Hash;
use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;

use crate::domain::{Limits, ProjectId, WebhookId};
use crate::store::projects::IngestTarget;
use crate::store::{self, StoreResult};

/// Project limits and webhook owners, cached for `ttl` so hot paths do not ask the database
/// each time: a plan change takes effect within `ttl`.
pub struct SettingsCache {
    pool: PgPool,
    projects: Expiring<ProjectId, Limits>,
    targets: Expiring<WebhookId, IngestTarget>,
}

impl SettingsCache {
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self { pool, projects: Expiring::new(ttl), targets: Expiring::new(ttl) }
    }

    pub async fn project(&self, project: ProjectId) -> StoreResult<Limits> {
        if let Some(limits) = self.projects.fresh(&project) {
            return Ok(limits);
        }
        let limits = store::projects::limits(&self.pool, project).await?;
        self.projects.put(project, limits.clone());
        Ok(limits)
    }

    /// Who owns `webhook`, their limits and its signing requirement; None for an unknown
    /// webhook (not cached).
    pub async fn ingest_target(&self, webhook: WebhookId) -> StoreResult<Option<IngestTarget>> {
        if let Some(target) = self.targets.fresh(&webhook) {
            return Ok(Some(target));
        }
        let target = store::projects::ingest_target(&self.pool, &webhook).await?;
        match &target {
            Some(t) => self.targets.put(webhook, t.clone()),
            None => self.targets.remove(&webhook),
        }
        Ok(target)
    }

    /// The project that owns `webhook`; None for an unknown webhook.
    pub async fn owner(&self, webhook: WebhookId) -> StoreResult<Option<ProjectId>> {
        Ok(self.ingest_target(webhook).await?.map(|t| t.project))
    }

    /// Forgets a deleted or re-signed webhook at once on this replica (others within `ttl`).
    pub fn forget_webhook(&self, webhook: &WebhookId) {
        self.targets.remove(webhook);
    }
}

/// A map whose entries count for `ttl` after they were put, bounded in size.
/// Bounded by its capacity: past it, the entries least worth keeping (quick_cache's
/// S3-FIFO) make room, never the whole map at once, so a flood of unknown ids cannot empty
/// the cache of the ids in use.
struct Expiring<K, V> {
    ttl: Duration,
    map: quick_cache::sync::Cache<K, (V, Instant)>,
}

const EXPIRING_CAPACITY: usize = 100_000;

impl<K: Eq + Hash, V: Clone> Expiring<K, V> {
    fn new(ttl: Duration) -> Self {
        Self { ttl, map: quick_cache::sync::Cache::new(EXPIRING_CAPACITY) }
    }

    fn fresh(&self, key: &K) -> Option<V> {
        self.map.get(key).filter(|(_, at)| at.elapsed() < self.ttl).map(|(v, _)| v)
    }

    fn put(&self, key: K, value: V) {
        self.map.insert(key, (value, Instant::now()));
    }

    fn remove(&self, key: &K) {
        self.map.remove(key);
    }
}
