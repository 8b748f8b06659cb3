//! The embedded cluster's bootstrap: its one database, created on first start.

use sqlx::PgConnection;

use super::{Context, StoreResult};

/// The embedded cluster's database.
pub const DATABASE: &str = "hookline";

/// Creates the database `hookline` (DATABASE) on the server `conn` is connected to, unless
/// it exists. (The name is written out in the statements: an identifier cannot be bound.)
pub async fn ensure_hookline_database(conn: &mut PgConnection) -> StoreResult<()> {
    let exists =
        sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "e!""#, DATABASE)
            .fetch_one(&mut *conn)
            .await
            .context("looking for the hookline database")?;
    if exists {
        return Ok(());
    }
    match sqlx::query!("CREATE DATABASE hookline").execute(&mut *conn).await {
        // A concurrent creator is fine (duplicate_database); anything else is not.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(()),
        other => other.map(drop).context("creating the hookline database"),
    }
}
