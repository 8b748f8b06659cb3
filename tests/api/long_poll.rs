//! Long-poll dequeue: a waiting consumer is woken by an ingest (on this broker or another
//! one on the same database), by a commit, or by a lock that expired; with nothing to
//! deliver it answers 204 when its wait runs out. Tests wake a consumer only once the
//! broker counts it as waiting (`until_waiting`), never after a guessed sleep.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_on, Reply, TestApp};

async fn long_poll(app: &TestApp, webhook: &str, wait: u64) -> (Reply, Instant) {
    let path = format!("/api/webhooks/{webhook}/messages/dequeue?wait={wait}");
    let r = app.api(reqwest::Method::POST, &path, None).await;
    (r, Instant::now())
}

async fn woken_by_ingest_through(consumer: &TestApp, producer: &TestApp) {
    let wh = consumer.create_webhook(json!({})).await;
    let waiting = {
        let (app, wh) = (consumer.clone_handle(), wh.clone());
        tokio::spawn(async move { long_poll(&app, &wh, 10).await })
    };
    consumer.until_waiting(&wh, 1).await;
    let (id, _) = producer.ingest_ok(&wh, "{}").await;
    let committed = Instant::now();

    let (r, answered) = waiting.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.str("id"), id);
    let lag = answered.saturating_duration_since(committed);
    assert!(lag < Duration::from_millis(100), "delivered {lag:?} after the ingest committed");
}

#[tokio::test]
async fn a_waiting_consumer_gets_a_message_ingested_later() {
    let app = spawn_app().await;
    woken_by_ingest_through(&app, &app).await;
}

#[tokio::test]
async fn a_waiting_consumer_is_woken_by_an_ingest_on_another_broker() {
    let first = spawn_app().await;
    let key = first.encryption_key.clone();
    let second = spawn_app_on(&first.db_url, |c| c.encryption_key = Some(key.into())).await;
    woken_by_ingest_through(&first, &second).await;
}

#[tokio::test]
async fn a_wait_with_nothing_arriving_answers_204_when_it_runs_out() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let started = Instant::now();
    let (r, answered) = long_poll(&app, &wh, 1).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let waited = answered - started;
    assert!(waited >= Duration::from_secs(1), "answered after {waited:?}");

    let r = app.api(reqwest::Method::POST, &format!("/api/webhooks/{wh}/messages/dequeue?wait=21"), None).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_commit_wakes_the_consumer_waiting_behind_the_head() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let (first, _) = app.ingest_ok(&wh, "1").await;
    let (second, _) = app.ingest_ok(&wh, "2").await;
    let token = app.dequeue(&wh).await.str("lockToken");
    let waiting = {
        let (app, wh) = (app.clone_handle(), wh.clone());
        tokio::spawn(async move { long_poll(&app, &wh, 10).await })
    };
    app.until_waiting(&wh, 1).await;
    assert_eq!(app.commit(&wh, &first, Some(&token)).await.status, StatusCode::OK);

    let (r, _) = waiting.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.str("id"), second);
}

/// A head whose lock expires is deliverable again: the lock reaper releases it, wakes the
/// consumer waiting behind it, and it gets the head, with the failed attempt counted.
#[tokio::test]
async fn a_lock_expiring_wakes_the_consumer_waiting_behind_it() {
    let app = spawn_app().await;
    // A minute's lock, expired by hand: the waiter's own timer would not fire for a
    // minute, so only the reaper's wake-up can answer it within its 15 s wait.
    let wh = app.create_webhook(json!({"lockTimeoutSeconds": 60})).await;
    let (head, _) = app.ingest_ok(&wh, "1").await;
    app.ingest_ok(&wh, "2").await;
    let first = app.dequeue(&wh).await;
    assert_eq!(first.str("id"), head);
    let waiting = {
        let (app, wh) = (app.clone_handle(), wh.clone());
        tokio::spawn(async move { long_poll(&app, &wh, 15).await })
    };
    app.until_waiting(&wh, 1).await;
    // Past the expiry, the reaper (run here as its schedule would) releases the lock.
    let expired = app
        .sql(&format!(
            "UPDATE webhooks SET lock_expires_at = now() - interval '1 second' WHERE id = '{}'",
            crate::helpers::uuid_of(&wh)
        ))
        .await;
    assert_eq!(expired.rows_affected(), 1);
    assert_eq!(hookline::jobs::LockReaper::new(app.pool.clone()).run_once().await.unwrap(), 1);

    let released = Instant::now();
    let (r, answered) = waiting.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(answered - released < Duration::from_secs(10), "answered {:?} after the release", answered - released);
    assert_eq!(r.str("id"), head, "the same head, at its position");
    assert_eq!(r.i64("retryCount"), 1);
}
