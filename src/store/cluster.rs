//! The embedded cluster's bootstrap: its one database, created on first start.

use sqlx::PgConnection;

use super::{Context, StoreResult};

/// Creates the database `hookline` on the server `conn` is connected to, unless it exists.
pub async fn ensure_hookline_database(conn: &mut PgConnection) -> StoreResult<()> {
    let exists = sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'hookline') AS "e!""#)
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
