//! Lock control: extending a lock, and an error that skips the retries.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn an_extended_lock_does_not_expire_at_the_old_time() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"lockTimeoutSeconds": 1})).await;
    app.ingest_ok(&wh, "1").await;
    app.ingest_ok(&wh, "2").await;
    let first = app.dequeue(&wh).await;
    let (id, token) = (first.str("id"), first.str("lockToken"));

    let path = format!("/api/webhooks/{wh}/messages/{id}/extend");
    let r = app.api(Method::POST, &path, Some(json!({"seconds": 30, "lockToken": token}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.str("status"), "locked");
    tokio::time::sleep(Duration::from_millis(1300)).await;

    assert_eq!(app.dequeue(&wh).await.status, StatusCode::NO_CONTENT, "still locked past the old expiry");
    assert_eq!(hookline::jobs::LockReaper::new(app.pool.clone()).run_once().await.unwrap(), 0);
    assert_eq!(app.commit(&wh, &id, Some(&token)).await.status, StatusCode::OK);
    assert_eq!(app.message(&wh, &id).await.i64("retryCount"), 0);
}

#[tokio::test]
async fn extend_needs_the_lock_and_a_valid_duration() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let (id, _) = app.ingest_ok(&wh, "1").await;
    let path = format!("/api/webhooks/{wh}/messages/{id}/extend");
    let r = app.api(Method::POST, &path, Some(json!({"seconds": 30}))).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "not locked yet: {}", r.body);

    let token = app.dequeue(&wh).await.str("lockToken");
    let expiry = app.message(&wh, &id).await.str("lockExpiresAt");
    let stale = "lt_00000000000000000000000000000000";
    assert_eq!(
        app.api(Method::POST, &path, Some(json!({"seconds": 30, "lockToken": stale}))).await.status,
        StatusCode::CONFLICT
    );
    for seconds in [0, 43_201] {
        let r = app.api(Method::POST, &path, Some(json!({"seconds": seconds, "lockToken": token}))).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{seconds}: {}", r.body);
    }
    assert_eq!(app.api(Method::POST, &path, None).await.status, StatusCode::BAD_REQUEST);
    // None of the refused extends moved the expiry.
    assert_eq!(app.message(&wh, &id).await.str("lockExpiresAt"), expiry);
}

#[tokio::test]
async fn an_error_without_requeue_goes_straight_to_the_dead_letter_queue() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 10})).await;
    let (poison, _) = app.ingest_ok(&wh, "poison").await;
    let (next, _) = app.ingest_ok(&wh, "next").await;
    let token = app.dequeue(&wh).await.str("lockToken");

    let r =
        app.error(&wh, &poison, Some(json!({"reason": "cannot parse", "requeue": false, "lockToken": token}))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.str("status"), "dead");
    assert_eq!(r.i64("retryCount"), 1);
    let dead = app.dead_letters(&wh, "").await;
    assert_eq!(dead.body["data"][0]["id"], poison.as_str());
    assert_eq!(dead.body["data"][0]["lastError"], "cannot parse");
    assert_eq!(app.dequeue(&wh).await.str("id"), next, "the next message is not blocked");
}
