//! Dashboard users, their project memberships and login sessions.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::{StoreError, StoreResult};
use crate::domain::ProjectId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "member_role", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Member,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "owner" => Ok(Self::Owner),
            "member" => Ok(Self::Member),
            other => Err(format!("unknown role {other:?}: expected owner or member")),
        }
    }
}

pub struct StoredUser {
    pub id: i64,
    pub password_hash: String,
}

/// Creates the user, or resets the password of an existing one.
pub async fn upsert_user(db: impl PgExecutor<'_>, email: &str, password_hash: &str) -> StoreResult<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO users (email, password_hash) VALUES ($1, $2)
         ON CONFLICT ON CONSTRAINT users_email_key DO UPDATE SET password_hash = EXCLUDED.password_hash
         RETURNING id",
    )
    .bind(email)
    .bind(password_hash)
    .fetch_one(db)
    .await?)
}

pub async fn add_member(db: impl PgExecutor<'_>, user: i64, project: ProjectId, role: Role) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO memberships (user_id, project_id, role) VALUES ($1, $2, $3)
         ON CONFLICT ON CONSTRAINT memberships_pkey DO UPDATE SET role = EXCLUDED.role",
    )
    .bind(user)
    .bind(project)
    .bind(role)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn find_user(db: impl PgExecutor<'_>, email: &str) -> StoreResult<Option<StoredUser>> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT id, password_hash FROM users WHERE email = $1").bind(email).fetch_optional(db).await?;
    Ok(row.map(|(id, password_hash)| StoredUser { id, password_hash }))
}

pub async fn create_session(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
    user: i64,
    expires_at: DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query("INSERT INTO sessions (token_hash, user_id, expires_at) VALUES ($1, $2, $3)")
        .bind(token_hash)
        .bind(user)
        .bind(expires_at)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn end_session(db: impl PgExecutor<'_>, token_hash: &[u8]) -> StoreResult<()> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(token_hash).execute(db).await?;
    Ok(())
}

/// A signed-in user as the dashboard sees them.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SessionUser {
    pub email: String,
    pub projects: Vec<Membership>,
}

#[derive(Debug, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Membership {
    pub project: String,
    pub role: Role,
}

/// The user behind an unexpired session.
pub async fn session_user(db: &mut sqlx::PgConnection, token_hash: &[u8]) -> StoreResult<SessionUser> {
    let row: Option<(i64, String)> = sqlx::query_as(
        "SELECT u.id, u.email FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.token_hash = $1 AND s.expires_at > now()",
    )
    .bind(token_hash)
    .fetch_optional(&mut *db)
    .await?;
    let (id, email) = row.ok_or(StoreError::NotFound("session"))?;
    let projects = sqlx::query_as(
        "SELECT p.name AS project, m.role FROM memberships m JOIN projects p ON p.id = m.project_id
         WHERE m.user_id = $1 ORDER BY p.name",
    )
    .bind(id)
    .fetch_all(&mut *db)
    .await?;
    Ok(SessionUser { email, projects })
}
