//! API keys: a public prefix to find the row, an argon2id hash to check the secret.

use sqlx::PgExecutor;

use super::StoreResult;
use crate::domain::{ApiKeyId, ProjectId};

pub struct StoredKey {
    pub id: ApiKeyId,
    pub project_id: ProjectId,
    pub hash: String,
}

pub async fn insert(db: impl PgExecutor<'_>, project: ProjectId, prefix: &str, hash: &str) -> StoreResult<ApiKeyId> {
    let id = sqlx::query_scalar("INSERT INTO api_keys (project_id, prefix, hash) VALUES ($1, $2, $3) RETURNING id")
        .bind(project)
        .bind(prefix)
        .bind(hash)
        .fetch_one(db)
        .await?;
    Ok(ApiKeyId(id))
}

/// The live (not revoked) key with this prefix.
pub async fn find_live(db: impl PgExecutor<'_>, prefix: &str) -> StoreResult<Option<StoredKey>> {
    let row: Option<(i64, i64, String)> =
        sqlx::query_as("SELECT id, project_id, hash FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL")
            .bind(prefix)
            .fetch_optional(db)
            .await?;
    Ok(row.map(|(id, project, hash)| StoredKey { id: ApiKeyId(id), project_id: ProjectId(project), hash }))
}

pub async fn touch(db: impl PgExecutor<'_>, id: ApiKeyId) -> StoreResult<()> {
    sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = $1").bind(id).execute(db).await?;
    Ok(())
}

/// Whether the key still exists and is not revoked.
pub async fn is_live(db: impl PgExecutor<'_>, id: ApiKeyId) -> StoreResult<bool> {
    let live: Option<bool> =
        sqlx::query_scalar("SELECT revoked_at IS NULL FROM api_keys WHERE id = $1").bind(id).fetch_optional(db).await?;
    Ok(live == Some(true))
}
