//! Webhooks: a project's endpoints and their queue settings.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::{StoreError, StoreResult};
use crate::crypto::Sealed;
use crate::domain::{DeliveryMode, LockTimeout, MaxRetries, ProjectId, TtlDays, WebhookId, WebhookName};
use crate::signature::Scheme;

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
    pub idempotency_from_webhook_id: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
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
    idempotency_from_webhook_id: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
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
            idempotency_from_webhook_id: r.idempotency_from_webhook_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const COLUMNS: &str = "id, name, lock_timeout_seconds, max_retries, ttl_days, signature_scheme, \
                       signature_tolerance_seconds, mode, priorities, idempotency_from_webhook_id, created_at, updated_at";

pub struct NewWebhook {
    pub name: WebhookName,
    pub lock_timeout: LockTimeout,
    pub max_retries: MaxRetries,
    pub ttl_days: TtlDays,
    pub mode: DeliveryMode,
    pub priorities: bool,
    pub idempotency_from_webhook_id: bool,
}

/// Creates the webhook and its sequence counter together, unless the project already has
/// `max` webhooks (Conflict). The project row lock makes the count hold under concurrency.
pub async fn create(
    tx: &mut PgConnection,
    project: ProjectId,
    new: &NewWebhook,
    max: Option<u32>,
) -> StoreResult<Webhook> {
    if let Some(max) = max {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhooks WHERE project_id = (SELECT id FROM projects WHERE id = $1 FOR UPDATE)",
        )
        .bind(project)
        .fetch_one(&mut *tx)
        .await?;
        if count >= max as i64 {
            return Err(StoreError::Conflict(format!("a project may have at most {max} webhooks")));
        }
    }
    let row: Row = sqlx::query_as(&format!(
        "INSERT INTO webhooks (id, project_id, name, lock_timeout_seconds, max_retries, ttl_days, mode, priorities,
                               idempotency_from_webhook_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    ))
    .bind(WebhookId::new_random().as_uuid())
    .bind(project)
    .bind(new.name.as_str())
    .bind(new.lock_timeout.get())
    .bind(new.max_retries.get())
    .bind(new.ttl_days.get())
    .bind(new.mode)
    .bind(new.priorities)
    .bind(new.idempotency_from_webhook_id)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO webhook_sequences (webhook_id) VALUES ($1)").bind(row.id).execute(&mut *tx).await?;
    Ok(row.into())
}

pub async fn get(db: impl PgExecutor<'_>, project: ProjectId, id: &WebhookId) -> StoreResult<Webhook> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM webhooks WHERE id = $1 AND project_id = $2"))
        .bind(id.as_uuid())
        .bind(project)
        .fetch_optional(db)
        .await?;
    row.map(Webhook::from).ok_or(StoreError::NotFound("webhook"))
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
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM webhooks
         WHERE project_id = $1
           AND ($2::uuid IS NULL OR (created_at, id) >
                (SELECT c.created_at, c.id FROM webhooks c WHERE c.id = $2 AND c.project_id = $1))
           AND ($4::uuid[] IS NULL OR id = ANY($4))
         ORDER BY created_at, id
         LIMIT $3"
    ))
    .bind(project)
    .bind(after.map(|a| *a.as_uuid()))
    .bind(limit)
    .bind(only.map(|ids| ids.iter().map(|w| *w.as_uuid()).collect::<Vec<Uuid>>()))
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Webhook::from).collect())
}

#[derive(Default)]
pub struct WebhookChanges {
    pub name: Option<WebhookName>,
    pub lock_timeout: Option<LockTimeout>,
    pub max_retries: Option<MaxRetries>,
    pub ttl_days: Option<TtlDays>,
    pub priorities: Option<bool>,
    pub idempotency_from_webhook_id: Option<bool>,
}

/// Changes apply to messages from now on; a message's TTL was fixed when it arrived.
pub async fn update(
    db: impl PgExecutor<'_>,
    project: ProjectId,
    id: &WebhookId,
    changes: &WebhookChanges,
) -> StoreResult<Webhook> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "UPDATE webhooks SET
             name = COALESCE($3, name),
             lock_timeout_seconds = COALESCE($4, lock_timeout_seconds),
             max_retries = COALESCE($5, max_retries),
             ttl_days = COALESCE($6, ttl_days),
             priorities = COALESCE($7, priorities),
             idempotency_from_webhook_id = COALESCE($8, idempotency_from_webhook_id),
             updated_at = now()
         WHERE id = $1 AND project_id = $2
         RETURNING {COLUMNS}"
    ))
    .bind(id.as_uuid())
    .bind(project)
    .bind(changes.name.as_ref().map(WebhookName::as_str))
    .bind(changes.lock_timeout.map(LockTimeout::get))
    .bind(changes.max_retries.map(MaxRetries::get))
    .bind(changes.ttl_days.map(TtlDays::get))
    .bind(changes.priorities)
    .bind(changes.idempotency_from_webhook_id)
    .fetch_optional(db)
    .await?;
    row.map(Webhook::from).ok_or(StoreError::NotFound("webhook"))
}

/// Deletes the webhook with every message in its queue.
pub async fn delete(db: impl PgExecutor<'_>, project: ProjectId, id: &WebhookId) -> StoreResult<()> {
    let done = sqlx::query("DELETE FROM webhooks WHERE id = $1 AND project_id = $2")
        .bind(id.as_uuid())
        .bind(project)
        .execute(db)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound("webhook"));
    }
    Ok(())
}

/// A webhook's signing requirement as stored: the secret sealed by the key ring.
pub struct StoredSignature {
    pub scheme: Scheme,
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
    let done = sqlx::query(
        "UPDATE webhooks SET signature_scheme = $3, signature_tolerance_seconds = COALESCE($4, 300),
             signature_key_id = $5, signature_nonce = $6, signature_secret = $7, updated_at = now()
         WHERE id = $1 AND project_id = $2",
    )
    .bind(id.as_uuid())
    .bind(project)
    .bind(signature.map(|s| s.scheme.name()))
    .bind(signature.map(|s| s.tolerance_seconds))
    .bind(signature.map(|s| s.sealed.key_id.0))
    .bind(signature.map(|s| s.sealed.nonce.as_slice()))
    .bind(signature.map(|s| s.sealed.ciphertext.as_slice()))
    .execute(db)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound("webhook"));
    }
    Ok(())
}
