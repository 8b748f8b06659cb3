//! The schema as a reviewed artifact: committed migrations never change, `schema.sql` is
//! what they produce, and a database left by the replaced pre-release migrations is refused
//! before anything is applied.

use std::path::Path;
use std::process::Command;

use sqlx::PgPool;

use crate::helpers::{empty_database, migrated_database};

/// The committed list: `<version> <sha384 hex> <file>` per migration, in order.
const CHECKSUMS: &str = include_str!("../../migrations/checksums.txt");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn committed_migrations_are_never_edited_and_every_one_is_listed() {
    let listed: Vec<(i64, String)> = CHECKSUMS
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut fields = l.split_whitespace();
            (fields.next().unwrap().parse().unwrap(), fields.next().unwrap().to_owned())
        })
        .collect();
    let migrations: Vec<_> = hookline::store::MIGRATOR.iter().collect();
    for (version, checksum) in &listed {
        let m = migrations.iter().find(|m| m.version == *version);
        let m = m.unwrap_or_else(|| panic!("migration {version} was removed; committed migrations stay"));
        assert_eq!(
            &hex(&m.checksum),
            checksum,
            "migration {version} ({}) changed after it was committed: write a new migration instead \
             (migrations/README.md)",
            m.description
        );
    }
    for m in &migrations {
        assert!(
            listed.iter().any(|(v, _)| *v == m.version),
            "migration {} is not in migrations/checksums.txt: append `{} {} <file>`",
            m.version,
            m.version,
            hex(&m.checksum)
        );
    }
}

#[tokio::test]
async fn a_database_of_the_replaced_migrations_is_refused_and_left_untouched() {
    let url = empty_database().await;
    let pool = PgPool::connect(&url).await.unwrap();
    // What the pre-release migration files left: their versions in sqlx's table.
    sqlx::query(
        "CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL,
             installed_on TIMESTAMPTZ NOT NULL DEFAULT now(), success BOOLEAN NOT NULL, checksum BYTEA NOT NULL,
             execution_time BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO _sqlx_migrations VALUES (20261129000001, 'core', now(), true, '\\x00', 1)")
        .execute(&pool)
        .await
        .unwrap();

    let refused = hookline::store::migrate(&pool).await.expect_err("an old database is refused");
    let message = refused.to_string();
    assert!(message.contains("pre-release migrations") && message.contains("new, empty database"), "{message}");
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tables, 1, "nothing but the migrations table: never half-migrated");

    // A new database migrates, and a second run is a no-op.
    let fresh = PgPool::connect(&empty_database().await).await.unwrap();
    hookline::store::migrate(&fresh).await.unwrap();
    hookline::store::migrate(&fresh).await.unwrap();
}

/// `schema.sql` is pg_dump's schema of a migrated database, normalised. Regenerate it with
/// `HOOKLINE_WRITE_SCHEMA=1 cargo test --test api schema_sql`.
#[tokio::test]
async fn schema_sql_is_what_the_migrations_produce() {
    let url = migrated_database().await;
    let dump = pg_dump(&url);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.sql");
    if std::env::var_os("HOOKLINE_WRITE_SCHEMA").is_some() {
        std::fs::write(&path, &dump).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    // Another major version of pg_dump prints the same schema a little differently.
    let header = |text: &str| text.lines().nth(2).map(str::to_owned);
    if header(&committed) != header(&dump) {
        eprintln!(
            "schema.sql was dumped by another pg_dump ({:?}, here {:?}): not compared",
            header(&committed),
            header(&dump)
        );
        return;
    }
    if committed != dump {
        let new = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/schema.sql.new");
        std::fs::write(&new, &dump).unwrap();
        panic!(
            "schema.sql differs from what the migrations produce (written to {}): review the difference and \
             regenerate with `HOOKLINE_WRITE_SCHEMA=1 cargo test --test api schema_sql`",
            new.display()
        );
    }
}

/// The dump without what varies from run to run or machine to machine: comments, settings,
/// pg_dump's random \restrict key, the migrator's own table, runs of blank lines.
fn pg_dump(url: &str) -> String {
    let bin = hookline::local_pg::find_bin_dir().expect("PostgreSQL's binaries (pg_dump)");
    let out = Command::new(bin.join("pg_dump"))
        .args(["--schema-only", "--no-owner", "--no-privileges", "--no-comments"])
        .args(["--exclude-table=_sqlx_migrations", "--dbname", url])
        .output()
        .expect("running pg_dump");
    assert!(out.status.success(), "pg_dump failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let version = Command::new(bin.join("pg_dump")).arg("--version").output().expect("pg_dump --version").stdout;
    let version = String::from_utf8_lossy(&version);
    let major = version.split_whitespace().nth(2).and_then(|v| v.split('.').next()).unwrap_or("?");
    let mut normalised = String::from("-- hookline's schema as the migrations leave it: generated, do not edit.\n");
    normalised.push_str("-- Regenerate: HOOKLINE_WRITE_SCHEMA=1 cargo test --test api schema_sql\n");
    normalised.push_str(&format!("-- Dumped by pg_dump {major}.\n"));
    let mut blank = true;
    for line in text.lines().map(str::trim_end) {
        let skipped = line.starts_with("--")
            || line.starts_with("SET ")
            || line.starts_with("SELECT pg_catalog.set_config")
            || line.starts_with("\\restrict")
            || line.starts_with("\\unrestrict");
        if skipped || (line.is_empty() && blank) {
            continue;
        }
        blank = line.is_empty();
        normalised.push_str(line);
        normalised.push('\n');
    }
    normalised
}
