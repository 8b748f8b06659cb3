//! No tenant waits on another (issue 13, hole 1): deleting a webhook answers at once and its
//! rows go in bounded batches afterwards, and an ingestion batch never waits unboundedly on
//! a row lock held for another webhook.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Connection;

use hookline::domain::Plan;
use hookline::jobs::WebhookSweeper;
use hookline::store::group_commit::GroupCommitConfig;
use tokio::task::JoinSet;

use crate::helpers::{join_within, spawn_app, spawn_app_with, uuid_of, TestApp};

/// A webhook of another project than the app's own key's.
async fn other_projects_webhook(app: &TestApp) -> String {
    let (_, key) = hookline::auth::create_key(&app.pool, "other", Plan::Unlimited, false).await.unwrap();
    let r = app.api_as(key.expose(), Method::POST, "/api/webhooks", Some(json!({"name": "theirs"}))).await;
    r.expect(StatusCode::CREATED);
    r.str("id")
}

/// `n` queued messages written straight into the table (the sealed bytes are never opened).
async fn backlog(app: &TestApp, webhook: &str, n: i64) {
    let id = uuid_of(webhook);
    app.sql(&format!(
        "INSERT INTO messages (webhook_id, seq, id, expires_at, key_id, nonce, ciphertext)
         SELECT '{id}', s, gen_random_uuid(), now() + interval '1 day', 1, '\\x00', '\\x00'
         FROM generate_series(1, {n}) AS s"
    ))
    .await;
    app.sql(&format!("UPDATE webhook_sequences SET last_seq = {n} WHERE webhook_id = '{id}'")).await;
    app.sql(&format!(
        "INSERT INTO idempotency_keys (webhook_id, key, message_id, seq)
         SELECT '{id}', 'k' || s, gen_random_uuid(), s FROM generate_series(1, 10) AS s"
    ))
    .await;
}

#[tokio::test]
async fn deleting_a_webhook_answers_at_once_and_the_sweeper_removes_its_rows_in_batches() {
    let app = spawn_app().await;
    let doomed = app.create_webhook(json!({})).await;
    let theirs = other_projects_webhook(&app).await;
    backlog(&app, &doomed, 30_000).await;

    app.delete_webhook(&doomed).await.expect(StatusCode::NO_CONTENT);
    // Gone for every caller at once...
    app.get_webhook(&doomed).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    app.ingest(&doomed, "{}").await.expect_error(StatusCode::NOT_FOUND, "not_found");
    app.dequeue(&doomed).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    app.delete_webhook(&doomed).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    // ...while its rows wait for the sweeper: the delete did not remove them itself.
    assert_eq!(app.stored(&doomed).await, 30_000);
    assert_eq!(app.sql_i64("SELECT count(*) FROM deleted_webhooks").await, 1);

    // Another project's ingests go on while the sweeper works through the backlog.
    let sweeper = WebhookSweeper::new(app.pool.clone()).with_batch(1_000);
    let sweeping = tokio::spawn(async move { sweeper.run_once().await.unwrap() });
    let mut ingests = JoinSet::new();
    for i in 0..20 {
        let (app, theirs) = (app.clone_handle(), theirs.clone());
        ingests.spawn(async move { app.ingest(&theirs, &format!("{{\"n\": {i}}}")).await.status });
    }
    let statuses = join_within(ingests, Duration::from_secs(60)).await;
    assert_eq!(statuses, vec![StatusCode::ACCEPTED; 20]);
    assert_eq!(tokio::time::timeout(Duration::from_secs(120), sweeping).await.unwrap().unwrap(), 30_010);

    assert_eq!(app.stored(&doomed).await, 0);
    let gone = uuid_of(&doomed);
    for table in ["idempotency_keys", "webhook_counts", "deleted_webhooks"] {
        let left = app.sql_i64(&format!("SELECT count(*) FROM {table} WHERE webhook_id = '{gone}'")).await;
        assert_eq!(left, 0, "{table}");
    }
    assert_eq!(app.stored(&theirs).await, 20, "the other project's messages stay");
    assert_eq!(WebhookSweeper::new(app.pool.clone()).run_once().await.unwrap(), 0);
}

#[tokio::test]
async fn an_ingest_batch_never_waits_on_rows_another_transaction_holds_for_another_webhook() {
    // One flusher that lingers: the blocked webhook's and the free webhook's requests share
    // batches.
    let app = spawn_app_with(|c| {
        c.group_commit = GroupCommitConfig { max_batch: 64, max_wait: Duration::from_millis(50), flushers: 1 }
    })
    .await;
    let blocked = app.create_webhook(json!({})).await;
    let free = other_projects_webhook(&app).await;

    // A long operation on the blocked webhook holds its counter row.
    let mut holder = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    let hold = format!("SELECT 1 FROM webhook_sequences WHERE webhook_id = '{}' FOR UPDATE", uuid_of(&blocked));
    sqlx::query(&hold).execute(&mut holder).await.unwrap();

    let mut ingests = JoinSet::new();
    for i in 0..10 {
        for webhook in [&blocked, &free] {
            let (app, webhook) = (app.clone_handle(), webhook.clone());
            ingests.spawn(async move {
                let r = app.ingest(&webhook, &format!("{{\"n\": {i}}}")).await;
                let retry_after = r.headers.get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                (webhook, r.status, r.body["error"]["code"].as_str().map(str::to_owned), retry_after)
            });
        }
    }
    let answers = join_within(ingests, Duration::from_secs(60)).await;
    let (to_free, to_blocked): (Vec<_>, Vec<_>) = answers.into_iter().partition(|a| a.0 == free);
    assert!(to_free.iter().all(|a| a.1 == StatusCode::ACCEPTED), "{to_free:?}");
    assert_eq!(app.stored(&free).await, 10);
    for (_, status, code, retry_after) in &to_blocked {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(code.as_deref(), Some("busy"));
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    assert_eq!(to_blocked.len(), 10);
    assert_eq!(app.stored(&blocked).await, 0, "a refused ingest stored nothing");

    // Once the other transaction ends, the webhook takes messages again, from seq 1.
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let (_, seq) = app.ingest_ok(&blocked, "{}").await;
    assert_eq!(seq, 1);
}

/// Expired messages of a deleted webhook, waiting for the sweeper, do not stall the TTL
/// purger: it purges them and goes on to live webhooks' expired messages.
#[tokio::test]
async fn a_deleted_webhooks_expired_backlog_does_not_stall_the_ttl_purger() {
    let app = spawn_app().await;
    let doomed = app.create_webhook(json!({})).await;
    let live = app.create_webhook(json!({})).await;
    backlog(&app, &doomed, 50).await;
    app.ingest_ok(&live, "{}").await;
    // The deleted webhook's rows expired first, so they head the purger's batches.
    app.sql(&format!(
        "UPDATE messages SET expires_at = now() - interval '2 hours' WHERE webhook_id = '{}'",
        uuid_of(&doomed)
    ))
    .await;
    app.sql(&format!(
        "UPDATE messages SET expires_at = now() - interval '1 hour' WHERE webhook_id = '{}'",
        uuid_of(&live)
    ))
    .await;
    app.delete_webhook(&doomed).await.expect(StatusCode::NO_CONTENT);

    let purged = hookline::jobs::TtlPurger::new(app.pool.clone()).with_batch(10).run_once().await.unwrap();
    assert_eq!(purged, 51);
    assert_eq!(app.stored(&live).await, 0, "the live webhook's expired message is purged too");
    assert_eq!(app.stored(&doomed).await, 0);
}
