//! Projects: the tenants, each on a plan whose limits an operator may override.

use std::num::NonZeroU32;
use std::sync::Arc;

use sqlx::PgExecutor;

use super::webhooks::StoredSignature;
use super::{Context, StoreError, StoreResult};
use crate::crypto::{KeyId, Sealed};
use crate::domain::{DedupWindow, LimitOverrides, Limits, Plan, ProjectId, RequestKey, SignatureScheme, WebhookId};

/// The project of that name, created on `plan` if it does not exist yet; with
/// `set_plan`, an existing project is moved to `plan` too.
pub async fn ensure(db: impl PgExecutor<'_>, name: &str, plan: Plan, set_plan: bool) -> StoreResult<ProjectId> {
    let id = sqlx::query_scalar!(
        "INSERT INTO projects (name, plan) VALUES ($1, $2)
         ON CONFLICT ON CONSTRAINT projects_name_key
         DO UPDATE SET plan = CASE WHEN $3 THEN EXCLUDED.plan ELSE projects.plan END
         RETURNING id",
        name,
        plan as _,
        set_plan
    )
    .fetch_one(db)
    .await
    .context("creating a project")?;
    Ok(ProjectId(id))
}

pub async fn find(db: impl PgExecutor<'_>, name: &str) -> StoreResult<ProjectId> {
    let id = sqlx::query_scalar!("SELECT id FROM projects WHERE name = $1", name)
        .fetch_optional(db)
        .await
        .context("finding a project")?;
    id.map(ProjectId).ok_or(StoreError::NotFound("project"))
}

struct LimitsRow {
    plan: Plan,
    ingest_per_second: Option<i32>,
    dequeue_per_second: Option<i32>,
    ack_per_second: Option<i32>,
    max_webhooks: Option<i32>,
    max_body_bytes: Option<i32>,
}

impl From<LimitsRow> for Limits {
    fn from(r: LimitsRow) -> Self {
        let rate = |v: Option<i32>| v.and_then(|n| NonZeroU32::new(n as u32));
        r.plan.limits().with(LimitOverrides {
            ingest_per_second: rate(r.ingest_per_second),
            dequeue_per_second: rate(r.dequeue_per_second),
            ack_per_second: rate(r.ack_per_second),
            max_webhooks: r.max_webhooks.map(|n| n as u32),
            max_body_bytes: r.max_body_bytes.map(|n| n as usize),
        })
    }
}

pub async fn limits(db: impl PgExecutor<'_>, project: ProjectId) -> StoreResult<Limits> {
    let row = sqlx::query_as!(
        LimitsRow,
        r#"SELECT plan AS "plan: Plan", ingest_per_second, dequeue_per_second, ack_per_second, max_webhooks,
                  max_body_bytes
           FROM projects WHERE id = $1"#,
        project.0
    )
    .fetch_optional(db)
    .await
    .context("reading a project's limits")?;
    row.map(Limits::from).ok_or(StoreError::NotFound("project"))
}

/// What ingestion needs to know of a webhook, which it reaches without an API key.
#[derive(Clone)]
pub struct IngestTarget {
    pub project: ProjectId,
    pub limits: Limits,
    pub signature: Option<Arc<StoredSignature>>,
    /// Whether `X-Hookline-Priority` may set a priority.
    pub priorities: bool,
    /// The longest a message may live.
    pub ttl_days: i32,
    /// Where a repeated delivery's key is found, and for how long it answers the original
    /// (None: every request is a new message).
    pub dedup: Option<(RequestKey, DedupWindow)>,
    /// Where each message's ordering key is found, on a keyed webhook.
    pub ordering_key: Option<RequestKey>,
}

/// The owner of a webhook, its limits and signing requirement; None for an unknown webhook.
pub async fn ingest_target(db: impl PgExecutor<'_>, webhook: &WebhookId) -> StoreResult<Option<IngestTarget>> {
    let row = sqlx::query!(
        r#"SELECT p.id, p.plan AS "plan: Plan", p.ingest_per_second, p.dequeue_per_second, p.ack_per_second,
                  p.max_webhooks, p.max_body_bytes, w.signature_scheme, w.signature_tolerance_seconds,
                  w.signature_key_id, w.signature_nonce, w.signature_secret, w.priorities, w.ttl_days,
                  w.dedup_key, w.dedup_window_seconds, w.ordering_key
           FROM webhooks w JOIN projects p ON p.id = w.project_id WHERE w.id = $1"#,
        webhook.as_uuid()
    )
    .fetch_optional(db)
    .await
    .context_for("reading a webhook's ingestion settings", webhook)?;
    Ok(row.map(|r| {
        let signature = match (
            r.signature_scheme.as_deref().and_then(SignatureScheme::parse),
            r.signature_key_id,
            r.signature_nonce,
            r.signature_secret,
        ) {
            (Some(scheme), Some(key_id), Some(nonce), Some(ciphertext)) => Some(Arc::new(StoredSignature {
                scheme,
                tolerance_seconds: r.signature_tolerance_seconds,
                sealed: Sealed { key_id: KeyId(key_id), nonce, ciphertext },
            })),
            _ => None,
        };
        IngestTarget {
            project: ProjectId(r.id),
            limits: LimitsRow {
                plan: r.plan,
                ingest_per_second: r.ingest_per_second,
                dequeue_per_second: r.dequeue_per_second,
                ack_per_second: r.ack_per_second,
                max_webhooks: r.max_webhooks,
                max_body_bytes: r.max_body_bytes,
            }
            .into(),
            signature,
            priorities: r.priorities,
            ttl_days: r.ttl_days,
            dedup: r
                .dedup_key
                .and_then(|k| RequestKey::parse("dedupKey", &k).ok())
                .map(|k| (k, DedupWindow::parse(r.dedup_window_seconds.into()).unwrap_or_default())),
            ordering_key: r.ordering_key.and_then(|k| RequestKey::parse("orderingKey", &k).ok()),
        }
    }))
}

/// An operator's change: the plan, and overrides (None clears one back to the plan's).
pub async fn set_limits(
    db: impl PgExecutor<'_>,
    name: &str,
    plan: Option<Plan>,
    o: &LimitOverrides,
) -> StoreResult<()> {
    let rate = |v: Option<NonZeroU32>| v.map(|n| n.get() as i32);
    let done = sqlx::query!(
        "UPDATE projects SET plan = COALESCE($2, plan), ingest_per_second = $3, dequeue_per_second = $4,
                ack_per_second = $5, max_webhooks = $6, max_body_bytes = $7
         WHERE name = $1",
        name,
        plan as _,
        rate(o.ingest_per_second),
        rate(o.dequeue_per_second),
        rate(o.ack_per_second),
        o.max_webhooks.map(|n| n as i32),
        o.max_body_bytes.map(|n| n as i32)
    )
    .execute(db)
    .await
    .context("setting a project's limits")?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound("project"));
    }
    Ok(())
}

/// Locks the project's row until the transaction ends: what creating counted things (a
/// webhook, an API key) waits on, so two creators never both pass the plan's count.
pub async fn lock(tx: &mut sqlx::PgConnection, project: ProjectId) -> StoreResult<()> {
    sqlx::query!("SELECT 1 AS locked FROM projects WHERE id = $1 FOR NO KEY UPDATE", project.0)
        .fetch_optional(tx)
        .await
        .context("locking a project")?;
    Ok(())
}
