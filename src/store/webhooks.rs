//! Webhooks: a project's endpoints and their queue settings.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::{Context, Refusal, StoreError, StoreResult};
use crate::crypto::Sealed;
use crate::domain::SignatureScheme;
use crate::domain::{
    DedupWindow, DeliveryMode, FifoWindow, LockTimeout, MaxRetries, Plan, ProjectId, RequestKey, TtlDays, WebhookId,
    WebhookName,
};

#[derive(Debug, Clone)]
pub struct Webhook {
    pub id: WebhookId,
    pub name: String,
    pub lock_timeout_seconds: i32,
    pub max_retries: i32,
    pub ttl_days: i32,
    /// The signing scheme senders must use, if any (the secret is never read back out).
    pub signature_scheme: Option<String>,
    pub signature_tolerance_seconds: i32,
    pub mode: DeliveryMode,
    pub priorities: bool,
    /// Where a repeated delivery's key is found (None: no deduplication of ingests).
    pub dedup_key: Option<RequestKey>,
    pub dedup_window: DedupWindow,
    /// Where each message's ordering key is found (None: one order for the whole webhook).
    pub ordering_key: Option<RequestKey>,
    /// Commit, error and extend must name the lock token.
    pub require_lock_token: bool,
    /// FIFO: how many messages one consumer may lease at once, in order.
    pub fifo_window: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Paused by an operator: delivers nothing until resumed.
    pub paused_at: Option<DateTime<Utc>>,
    /// Held by a consumer's error: delivers nothing until then (past times mean nothing).
    pub held_until: Option<DateTime<Utc>>,
}

struct Row {
    id: Uuid,
    name: String,
    lock_timeout_seconds: i32,
    max_retries: i32,
    ttl_days: i32,
    signature_scheme: Option<String>,
    signature_tolerance_seconds: i32,
    mode: DeliveryMode,
    priorities: bool,
    dedup_key: Option<String>,
    dedup_window_seconds: i32,
    ordering_key: Option<String>,
    require_lock_token: bool,
    fifo_window: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    paused_at: Option<DateTime<Utc>>,
    held_until: Option<DateTime<Utc>>,
}

impl From<Row> for Webhook {
    fn from(r: Row) -> Self {
        Self {
            id: WebhookId::from_uuid(r.id),
            name: r.name,
            lock_timeout_seconds: r.lock_timeout_seconds,
            max_retries: r.max_retries,
            ttl_days: r.ttl_days,
            signature_scheme: r.signature_scheme,
            signature_tolerance_seconds: r.signature_tolerance_seconds,
            mode: r.mode,
            priorities: r.priorities,
            // The schema checks the form; a value this release cannot read deduplicates nothing.
            dedup_key: r.dedup_key.and_then(|k| RequestKey::parse("dedupKey", &k).ok()),
            dedup_window: DedupWindow::parse(r.dedup_window_seconds.into()).unwrap_or_default(),
            ordering_key: r.ordering_key.and_then(|k| RequestKey::parse("orderingKey", &k).ok()),
            require_lock_token: r.require_lock_token,
            fifo_window: r.fifo_window,
            created_at: r.created_at,
            updated_at: r.updated_at,
            paused_at: r.paused_at,
            held_until: r.held_until.filter(|until| *until > Utc::now()),
        }
    }
}

pub struct NewWebhook {
    pub name: WebhookName,
    pub lock_timeout: LockTimeout,
    pub max_retries: MaxRetries,
    pub ttl_days: TtlDays,
    pub mode: DeliveryMode,
    pub priorities: bool,
    pub dedup_key: Option<RequestKey>,
    pub dedup_window: DedupWindow,
    pub ordering_key: Option<RequestKey>,
    pub require_lock_token: bool,
    pub fifo_window: FifoWindow,
}

/// The most webhooks a project may have, and the plan that says so.
#[derive(Debug, Clone, Copy)]
pub struct WebhookQuota {
    pub max: u32,
    pub plan: Plan,
}

/// Creates the webhook and its sequence counter together, unless the project already has
/// its quota of webhooks. The project row is locked first, in its own statement, so the
/// count (a later snapshot) sees every webhook a concurrent creator committed.
pub async fn create(
    tx: &mut PgConnection,
    project: ProjectId,
    new: &NewWebhook,
    quota: Option<WebhookQuota>,
) -> StoreResult<Webhook> {
    if let Some(quota) = quota {
        super::projects::lock(&mut *tx, project).await?;
        let count = sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM webhooks WHERE project_id = $1"#, project.0)
            .fetch_one(&mut *tx)
            .await
            .context("counting a project's webhooks")?;
        if count >= i64::from(quota.max) {
            return Err(Refusal::PlanLimit { what: "webhooks", max: quota.max, plan: quota.plan }.into());
        }
    }
    let id = WebhookId::new_random();
    let row = sqlx::query_as!(
        Row,
        r#"INSERT INTO webhooks (id, project_id, name, lock_timeout_seconds, max_retries, ttl_days, mode, priorities,
                                 dedup_key, dedup_window_seconds, idempotency_from_webhook_id, require_lock_token,
                                 fifo_window, ordering_key)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $9 IS NOT DISTINCT FROM 'header:webhook-id', $11, $12, $13)
           RETURNING id, name, lock_timeout_seconds, max_retries, ttl_days, signature_scheme,
                     signature_tolerance_seconds, mode AS "mode: DeliveryMode", priorities,
                     dedup_key, dedup_window_seconds, ordering_key, require_lock_token, fifo_window, created_at, updated_at, paused_at, held_until"#,
        id.as_uuid(),
        project.0,
        new.name.as_str(),
        new.lock_timeout.get(),
        new.max_retries.get(),
        new.ttl_days.get(),
        new.mode as _,
        new.priorities,
        new.dedup_key.as_ref().map(RequestKey::to_string),
        new.dedup_window.get(),
        new.require_lock_token,
        new.fifo_window.get(),
        new.ordering_key.as_ref().map(RequestKey::to_string)
    )
    .fetch_one(&mut *tx)
    .await
    .context("creating a webhook")?;
    sqlx::query!("INSERT INTO webhook_sequences (webhook_id) VALUES ($1)", row.id)
        .execute(&mut *tx)
        .await
        .context("creating a webhook's sequence")?;
    Ok(row.into())
}

pub async fn get(db: impl PgExecutor<'_>, project: ProjectId, id: &WebhookId) -> StoreResult<Webhook> {
    let row = sqlx::query_as!(
        Row,
        r#"SELECT id, name, lock_timeout_seconds, max_retries, ttl_days, signature_scheme, signature_tolerance_seconds,
                  mode AS "mode: DeliveryMode", priorities, dedup_key, dedup_window_seconds, ordering_key, require_lock_token, fifo_window, created_at, updated_at,
                  paused_at, held_until
           FROM webhooks WHERE id = $1 AND project_id = $2"#,
        id.as_uuid(),
        project.0
    )
    .fetch_optional(db)
    .await
    .context_for("reading a webhook", id)?;
    row.map(Webhook::from).ok_or(StoreError::NotFound("webhook"))
}

/// Pauses delivery (`paused`) or resumes it, which also ends a consumer's hold. A pause is
/// kept from its first time; resuming wakes the webhook's long-polls.
pub async fn set_paused(
    db: &mut PgConnection,
    project: ProjectId,
    id: &WebhookId,
    paused: bool,
) -> StoreResult<Webhook> {
    let row = sqlx::query_as!(
        Row,
        r#"UPDATE webhooks
           SET paused_at = CASE WHEN $3 THEN coalesce(paused_at, now()) END,
               held_until = CASE WHEN $3 THEN held_until END
           WHERE id = $1 AND project_id = $2
           RETURNING id, name, lock_timeout_seconds, max_retries, ttl_days, signature_scheme,
                     signature_tolerance_seconds, mode AS "mode: DeliveryMode", priorities,
                     dedup_key, dedup_window_seconds, ordering_key, require_lock_token, fifo_window, created_at, updated_at,
                     paused_at, held_until"#,
        id.as_uuid(),
        project.0,
        paused
    )
    .fetch_optional(&mut *db)
    .await
    .context_for("pausing or resuming a webhook", id)?
    .ok_or(StoreError::NotFound("webhook"))?;
    if !paused {
        sqlx::query!("SELECT hookline_wake($1)", id.as_uuid())
            .fetch_one(&mut *db)
            .await
            .context_for("waking a resumed webhook", id)?;
    }
    Ok(row.into())
}

/// A page in creation order, starting after the webhook `after` (a cursor), of all the
/// project's webhooks or `only` those.
pub async fn list(
    db: impl PgExecutor<'_>,
    project: ProjectId,
    only: Option<&[WebhookId]>,
    after: Option<&WebhookId>,
    limit: i64,
) -> StoreResult<Vec<Webhook>> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT id, name, lock_timeout_seconds, max_retries, ttl_days, signature_scheme, signature_tolerance_seconds,
                  mode AS "mode: DeliveryMode", priorities, dedup_key, dedup_window_seconds, ordering_key, require_lock_token, fifo_window, created_at, updated_at,
                  paused_at, held_until
           FROM webhooks
           WHERE project_id = $1
             AND ($2::uuid IS NULL OR (created_at, id) >
                  (SELECT c.created_at, c.id FROM webhooks c WHERE c.id = $2 AND c.project_id = $1))
             AND ($4::uuid[] IS NULL OR id = ANY($4))
           ORDER BY created_at, id
           LIMIT $3"#,
        project.0,
        after.map(|a| *a.as_uuid()),
        limit,
        only.map(|ids| ids.iter().map(|w| *w.as_uuid()).collect::<Vec<Uuid>>()) as _
    )
    .fetch_all(db)
    .await
    .context("listing webhooks")?;
    Ok(rows.into_iter().map(Webhook::from).collect())
}

#[derive(Default)]
pub struct WebhookChanges {
    pub name: Option<WebhookName>,
    pub lock_timeout: Option<LockTimeout>,
    pub max_retries: Option<MaxRetries>,
    pub ttl_days: Option<TtlDays>,
    pub priorities: Option<bool>,
    /// Some(None): stop deduplicating.
    pub dedup_key: Option<Option<RequestKey>>,
    pub dedup_window: Option<DedupWindow>,
    pub require_lock_token: Option<bool>,
    pub fifo_window: Option<FifoWindow>,
}

/// Changes apply to messages from now on; a message's TTL was fixed when it arrived.
pub async fn update(
    db: impl PgExecutor<'_>,
    project: ProjectId,
    id: &WebhookId,
    changes: &WebhookChanges,
) -> StoreResult<Webhook> {
    let row = sqlx::query_as!(
        Row,
        r#"UPDATE webhooks SET
               name = COALESCE($3, name),
               lock_timeout_seconds = COALESCE($4, lock_timeout_seconds),
               max_retries = COALESCE($5, max_retries),
               ttl_days = COALESCE($6, ttl_days),
               priorities = COALESCE($7, priorities),
               dedup_key = CASE WHEN $8 THEN $9 ELSE dedup_key END,
               idempotency_from_webhook_id = CASE WHEN $8 THEN $9 ELSE dedup_key END IS NOT DISTINCT FROM 'header:webhook-id',
               dedup_window_seconds = COALESCE($10, dedup_window_seconds),
               require_lock_token = COALESCE($11, require_lock_token),
               fifo_window = COALESCE($12, fifo_window),
               updated_at = now()
           WHERE id = $1 AND project_id = $2
           RETURNING id, name, lock_timeout_seconds, max_retries, ttl_days, signature_scheme,
                     signature_tolerance_seconds, mode AS "mode: DeliveryMode", priorities,
                     dedup_key, dedup_window_seconds, ordering_key, require_lock_token, fifo_window, created_at, updated_at, paused_at, held_until"#,
        id.as_uuid(),
        project.0,
        changes.name.as_ref().map(WebhookName::as_str),
        changes.lock_timeout.map(LockTimeout::get),
        changes.max_retries.map(MaxRetries::get),
        changes.ttl_days.map(TtlDays::get),
        changes.priorities,
        changes.dedup_key.is_some(),
        changes.dedup_key.as_ref().and_then(|k| k.as_ref().map(RequestKey::to_string)),
        changes.dedup_window.map(DedupWindow::get),
        changes.require_lock_token,
        changes.fifo_window.map(FifoWindow::get)
    )
    .fetch_optional(db)
    .await
    .context_for("changing a webhook", id)?;
    row.map(Webhook::from).ok_or(StoreError::NotFound("webhook"))
}

/// Deletes the webhook at once; the webhook sweeper job removes its messages afterwards.
pub async fn delete(db: impl PgExecutor<'_>, project: ProjectId, id: &WebhookId) -> StoreResult<()> {
    let done = sqlx::query!("DELETE FROM webhooks WHERE id = $1 AND project_id = $2", id.as_uuid(), project.0)
        .execute(db)
        .await
        .context_for("deleting a webhook", id)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound("webhook"));
    }
    Ok(())
}

/// A webhook's signing requirement as stored: the secret sealed by the key ring.
pub struct StoredSignature {
    pub scheme: SignatureScheme,
    pub tolerance_seconds: i32,
    pub sealed: Sealed,
}

/// Sets (Some) or removes (None) the webhook's signing requirement.
pub async fn set_signature(
    db: impl PgExecutor<'_>,
    project: ProjectId,
    id: &WebhookId,
    signature: Option<&StoredSignature>,
) -> StoreResult<()> {
    let done = sqlx::query!(
        "UPDATE webhooks SET signature_scheme = $3, signature_tolerance_seconds = COALESCE($4, 300),
             signature_key_id = $5, signature_nonce = $6, signature_secret = $7, updated_at = now()
         WHERE id = $1 AND project_id = $2",
        id.as_uuid(),
        project.0,
        signature.map(|s| s.scheme.name()),
        signature.map(|s| s.tolerance_seconds),
        signature.map(|s| s.sealed.key_id.0),
        signature.map(|s| s.sealed.nonce.as_slice()),
        signature.map(|s| s.sealed.ciphertext.as_slice())
    )
    .execute(db)
    .await
    .context_for("setting a webhook's signature", id)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound("webhook"));
    }
    Ok(())
}
