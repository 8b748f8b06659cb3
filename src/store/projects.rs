//! Projects: the tenants.

use sqlx::PgExecutor;

use super::StoreResult;
use crate::domain::ProjectId;

/// The project of that name, created if it does not exist yet.
pub async fn ensure(db: impl PgExecutor<'_>, name: &str) -> StoreResult<ProjectId> {
    let id = sqlx::query_scalar(
        "INSERT INTO projects (name) VALUES ($1)
         ON CONFLICT ON CONSTRAINT projects_name_key DO UPDATE SET name = EXCLUDED.name
         RETURNING id",
    )
    .bind(name)
    .fetch_one(db)
    .await?;
    Ok(ProjectId(id))
}
