//! API keys: a public prefix to find the row, an argon2id hash to check the secret, the
//! scopes the key grants and the webhooks it is limited to (None: all of its project's).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::{Context, Refusal, StoreError, StoreResult};
use crate::domain::{ApiKeyId, Plan, ProjectId, Scopes, WebhookId};

/// Sent with a revoked key's id, so every replica forgets it at once.
pub const REVOKED_CHANNEL: &str = "hookline_key_revoked";

pub struct StoredKey {
    pub id: ApiKeyId,
    pub project_id: ProjectId,
    pub hash: String,
    pub scopes: Scopes,
    pub webhooks: Option<Vec<WebhookId>>,
}

pub struct NewKey<'a> {
    pub project: ProjectId,
    pub prefix: &'a str,
    pub hash: &'a str,
    pub name: Option<&'a str>,
    pub scopes: Scopes,
    pub webhooks: Option<&'a [WebhookId]>,
}

/// Refuses a new key past `max` live keys of the project. The project row is locked first,
/// in its own statement, so the count (a later statement, a later snapshot) sees every key a
/// concurrent creator committed before it let go.
pub async fn check_quota(tx: &mut PgConnection, project: ProjectId, max: u32, plan: Plan) -> StoreResult<()> {
    super::projects::lock(&mut *tx, project).await?;
    let live = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM api_keys WHERE project_id = $1 AND revoked_at IS NULL"#,
        project.0
    )
    .fetch_one(&mut *tx)
    .await
    .context("counting a project's API keys")?;
    if live >= i64::from(max) {
        return Err(Refusal::PlanLimit { what: "API keys", max, plan }.into());
    }
    Ok(())
}

pub async fn insert(db: impl PgExecutor<'_>, key: &NewKey<'_>) -> StoreResult<ApiKeyId> {
    let id = sqlx::query_scalar!(
        "INSERT INTO api_keys (project_id, prefix, hash, name, scopes, webhook_ids)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        key.project.0,
        key.prefix,
        key.hash,
        key.name,
        &key.scopes.names() as _,
        key.webhooks.map(uuids) as _
    )
    .fetch_one(db)
    .await
    .context("storing an API key")?;
    Ok(ApiKeyId(id))
}

fn uuids(ids: &[WebhookId]) -> Vec<Uuid> {
    ids.iter().map(|w| *w.as_uuid()).collect()
}

/// The live (not revoked) key with this prefix.
pub async fn find_live(db: impl PgExecutor<'_>, prefix: &str) -> StoreResult<Option<StoredKey>> {
    let row = sqlx::query!(
        "SELECT id, project_id, hash, scopes, webhook_ids FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL",
        prefix
    )
    .fetch_optional(db)
    .await
    .context("finding an API key")?;
    Ok(row.map(|r| StoredKey {
        id: ApiKeyId(r.id),
        project_id: ProjectId(r.project_id),
        hash: r.hash,
        // The schema's check (api_keys_scopes_known) admits only known scopes.
        scopes: Scopes::parse(&r.scopes).unwrap_or(Scopes::NONE),
        webhooks: r.webhook_ids.map(|ids| ids.into_iter().map(WebhookId::from_uuid).collect()),
    }))
}

pub async fn touch(db: impl PgExecutor<'_>, id: ApiKeyId) -> StoreResult<()> {
    sqlx::query!("UPDATE api_keys SET last_used_at = now() WHERE id = $1", id.0)
        .execute(db)
        .await
        .context("recording an API key's use")?;
    Ok(())
}

/// Whether the key still exists and is not revoked.
pub async fn is_live(db: impl PgExecutor<'_>, id: ApiKeyId) -> StoreResult<bool> {
    let live = sqlx::query_scalar!(r#"SELECT revoked_at IS NULL AS "live!" FROM api_keys WHERE id = $1"#, id.0)
        .fetch_optional(db)
        .await
        .context("checking an API key")?;
    Ok(live == Some(true))
}

/// A key as listed: never its secret or hash.
#[derive(Debug)]
pub struct KeyInfo {
    pub prefix: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub webhook_ids: Option<Vec<Uuid>>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub async fn list(db: impl PgExecutor<'_>, project: ProjectId) -> StoreResult<Vec<KeyInfo>> {
    sqlx::query_as!(
        KeyInfo,
        "SELECT prefix, name, scopes, webhook_ids, created_at, last_used_at, revoked_at
         FROM api_keys WHERE project_id = $1 ORDER BY id",
        project.0
    )
    .fetch_all(db)
    .await
    .context("listing API keys")
}

/// Revokes the key with this prefix (of `project`, or of any project for an operator) and
/// tells every replica, in one transaction.
pub async fn revoke(db: impl PgExecutor<'_>, project: Option<ProjectId>, prefix: &str) -> StoreResult<ApiKeyId> {
    let id = sqlx::query_scalar!(
        r#"WITH revoked AS (
               UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
               WHERE ($1::bigint IS NULL OR project_id = $1) AND prefix = $2 RETURNING id
           )
           SELECT r.id AS "id!" FROM revoked r CROSS JOIN LATERAL pg_notify($3, r.id::text)"#,
        project.map(|p| p.0),
        prefix,
        REVOKED_CHANNEL
    )
    .fetch_optional(db)
    .await
    .context("revoking an API key")?;
    id.map(ApiKeyId).ok_or(StoreError::NotFound("API key"))
}
