//! Dashboard users, their project memberships and login sessions.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::{Context, StoreError, StoreResult};
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
    sqlx::query_scalar!(
        "INSERT INTO users (email, password_hash) VALUES ($1, $2)
         ON CONFLICT ON CONSTRAINT users_email_key DO UPDATE SET password_hash = EXCLUDED.password_hash
         RETURNING id",
        email,
        password_hash
    )
    .fetch_one(db)
    .await
    .context("storing a user")
}

pub async fn add_member(db: impl PgExecutor<'_>, user: i64, project: ProjectId, role: Role) -> StoreResult<()> {
    sqlx::query!(
        "INSERT INTO memberships (user_id, project_id, role) VALUES ($1, $2, $3)
         ON CONFLICT ON CONSTRAINT memberships_pkey DO UPDATE SET role = EXCLUDED.role",
        user,
        project.0,
        role as _
    )
    .execute(db)
    .await
    .context("storing a membership")?;
    Ok(())
}

pub async fn find_user(db: impl PgExecutor<'_>, email: &str) -> StoreResult<Option<StoredUser>> {
    sqlx::query_as!(StoredUser, "SELECT id, password_hash FROM users WHERE email = $1", email)
        .fetch_optional(db)
        .await
        .context("finding a user")
}

pub async fn create_session(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
    user: i64,
    expires_at: DateTime<Utc>,
) -> StoreResult<()> {
    sqlx::query!(
        "INSERT INTO sessions (token_hash, user_id, expires_at) VALUES ($1, $2, $3)",
        token_hash,
        user,
        expires_at
    )
    .execute(db)
    .await
    .context("starting a session")?;
    Ok(())
}

pub async fn end_session(db: impl PgExecutor<'_>, token_hash: &[u8]) -> StoreResult<()> {
    sqlx::query!("DELETE FROM sessions WHERE token_hash = $1", token_hash)
        .execute(db)
        .await
        .context("ending a session")?;
    Ok(())
}

/// Up to `limit` sessions past their expiry; returns how many.
pub async fn purge_expired_sessions(db: impl PgExecutor<'_>, limit: i32) -> StoreResult<u64> {
    let purged = sqlx::query_scalar!(r#"SELECT hookline_purge_sessions($1) AS "n!""#, limit)
        .fetch_one(db)
        .await
        .context("purging expired sessions")?;
    Ok(purged as u64)
}

/// A signed-in user as the dashboard sees them.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SessionUser {
    pub email: String,
    pub projects: Vec<Membership>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Membership {
    pub project: String,
    pub role: Role,
}

/// The user behind an unexpired session.
pub async fn session_user(db: &mut sqlx::PgConnection, token_hash: &[u8]) -> StoreResult<SessionUser> {
    let user = sqlx::query!(
        "SELECT u.id, u.email FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.token_hash = $1 AND s.expires_at > now()",
        token_hash
    )
    .fetch_optional(&mut *db)
    .await
    .context("reading a session")?
    .ok_or(StoreError::NotFound("session"))?;
    let (id, email) = (user.id, user.email);
    let projects = sqlx::query_as!(
        Membership,
        r#"SELECT p.name AS project, m.role AS "role: Role" FROM memberships m JOIN projects p ON p.id = m.project_id
           WHERE m.user_id = $1 ORDER BY p.name"#,
        id
    )
    .fetch_all(&mut *db)
    .await
    .context("reading a user's projects")?;
    Ok(SessionUser { email, projects })
}
