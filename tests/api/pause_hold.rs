//! Withholding delivery: an operator's pause (until resumed) and a consumer's hold (an error
//! with holdSeconds: the downstream is down, not the message, so no attempt is counted).

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, uuid_of, Reply, TestApp};

async fn post(app: &TestApp, wh: &str, action: &str) -> Reply {
    app.api(Method::POST, &format!("/api/webhooks/{wh}/{action}"), None).await
}

fn queue_state(r: &Reply) -> Option<&str> {
    r.headers.get("hookline-queue-state").and_then(|v| v.to_str().ok())
}

async fn head_state(app: &TestApp, wh: &str) -> String {
    app.api(Method::GET, &format!("/api/webhooks/{wh}/head"), None).await.str("state")
}

/// Ends a hold now, as time would.
async fn end_hold(app: &TestApp, wh: &str) {
    let ended = app
        .sql(&format!("UPDATE webhooks SET held_until = now() - interval '1 second' WHERE id = '{}'", uuid_of(wh)))
        .await;
    assert_eq!(ended.rows_affected(), 1);
}

#[tokio::test]
async fn a_paused_webhook_stores_but_delivers_nothing_and_resume_drains_in_order() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_many(&wh, 2).await;
    let in_flight = app.dequeue_ok(&wh).await;

    let paused = post(&app, &wh, "pause").await;
    paused.expect(StatusCode::OK);
    assert_eq!(paused.body["paused"], true);
    let since = paused.body["pausedAt"].clone();
    assert!(!since.is_null());
    assert_eq!(post(&app, &wh, "pause").await.body["pausedAt"], since, "pausing again keeps the first time");
    app.ingest_many(&wh, 2).await;
    assert_eq!(app.stored(&wh).await, 4, "ingestion goes on");

    // The lock out may still be committed, but nothing is leased next, by any path.
    let r = app.commit_next(&wh, &in_flight.id, Some(&in_flight.lock_token)).await;
    r.expect(StatusCode::NO_CONTENT);
    let r = app.dequeue(&wh).await;
    r.expect(StatusCode::NO_CONTENT);
    assert_eq!(queue_state(&r), Some("paused"));
    assert_eq!(app.dequeue_with(&wh, "maxMessages=5").await.status, StatusCode::NO_CONTENT);
    assert_eq!(head_state(&app, &wh).await, "paused");
    let listed = app.list_webhooks("").await;
    assert_eq!(listed.body["data"][0]["paused"], true);

    let resumed = post(&app, &wh, "resume").await;
    resumed.expect(StatusCode::OK);
    assert_eq!(resumed.body["paused"], false);
    assert!(resumed.body["pausedAt"].is_null());
    assert_eq!(app.drain(&wh).await, [2, 3, 4]);
    assert_eq!(queue_state(&app.dequeue(&wh).await), None, "an empty queue is not withheld");
}

#[tokio::test]
async fn resuming_wakes_a_waiting_long_poll() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    post(&app, &wh, "pause").await.expect(StatusCode::OK);
    app.ingest_many(&wh, 1).await;
    let waiter = {
        let app = app.clone_handle();
        let wh = wh.clone();
        tokio::spawn(async move { app.dequeue_with(&wh, "wait=15").await })
    };
    app.until_waiting(&wh, 1).await;
    post(&app, &wh, "resume").await.expect(StatusCode::OK);
    let r = tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("the long-poll answered").unwrap();
    r.expect(StatusCode::OK);
    assert_eq!(r.i64("seq"), 1);
}

#[tokio::test]
async fn a_hold_counts_no_attempt_so_an_outage_does_not_dead_letter_a_good_message() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 2})).await;
    let ids = app.ingest_many(&wh, 2).await;
    for round in 0..4 {
        let d = app.dequeue_ok(&wh).await;
        assert_eq!((d.seq, d.retry_count), (1, 0), "round {round}");
        let body = json!({"lockToken": d.lock_token, "reason": "downstream 503", "holdSeconds": 30});
        let r = app.error(&wh, &d.id, Some(body)).await;
        r.expect(StatusCode::OK);
        assert_eq!((r.str("status"), r.i64("retryCount")), ("queued".to_owned(), 0));
        assert!(!r.body["heldUntil"].is_null());
        let r = app.dequeue(&wh).await;
        r.expect(StatusCode::NO_CONTENT);
        assert_eq!(queue_state(&r), Some("held"));
        assert_eq!(head_state(&app, &wh).await, "held");
        assert!(!app.get_webhook(&wh).await.body["heldUntil"].is_null());
        end_hold(&app, &wh).await;
    }
    let view = app.api(Method::GET, &format!("/api/webhooks/{wh}/head"), None).await;
    assert_eq!(view.body["head"]["attempts"], json!({"errors": 0, "lockExpiries": 0}));
    assert_eq!(view.body["head"]["lastError"], "downstream 503");
    assert_eq!(app.message_status(&wh, &ids[0]).await, "queued");
    assert_eq!(app.drain(&wh).await, [1, 2]);
}

#[tokio::test]
async fn a_long_poll_is_answered_when_a_hold_runs_out_and_resume_ends_a_hold() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_many(&wh, 2).await;
    let d = app.dequeue_ok(&wh).await;
    app.error(&wh, &d.id, Some(json!({"lockToken": d.lock_token, "holdSeconds": 1}))).await.expect(StatusCode::OK);
    // Nothing writes when the hold ends: the long-poll wakes on its own time.
    let r = app.dequeue_with(&wh, "wait=10").await;
    r.expect(StatusCode::OK);
    assert_eq!(r.i64("seq"), 1);

    let d = crate::helpers::Delivery::from_reply(&r);
    app.error(&wh, &d.id, Some(json!({"lockToken": d.lock_token, "holdSeconds": 3600}))).await.expect(StatusCode::OK);
    app.dequeue_none(&wh).await;
    post(&app, &wh, "resume").await.expect(StatusCode::OK);
    assert_eq!(app.dequeue_ok(&wh).await.seq, 1);
}

#[tokio::test]
async fn holds_are_bounded_by_the_broker_and_refused_with_requeue_false() {
    let app = spawn_app_with(|c| c.max_hold = hookline::domain::HoldSeconds::bound(60)).await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_many(&wh, 1).await;
    let d = app.dequeue_ok(&wh).await;
    for bad in [
        json!({"lockToken": d.lock_token, "holdSeconds": 0}),
        json!({"lockToken": d.lock_token, "holdSeconds": 61}),
        json!({"lockToken": d.lock_token, "holdSeconds": 30, "requeue": false}),
        json!({"lockToken": d.lock_token, "holdSeconds": 2.5}),
    ] {
        let r = app.error(&wh, &d.id, Some(bad.clone())).await;
        assert!(
            r.status == StatusCode::UNPROCESSABLE_ENTITY || r.status == StatusCode::BAD_REQUEST,
            "{bad}: {}",
            r.status
        );
        r.error_code();
    }
    assert_eq!(app.message_status(&wh, &d.id).await, "locked", "a refused error changes nothing");
    let ok = app.error(&wh, &d.id, Some(json!({"lockToken": d.lock_token, "holdSeconds": 60}))).await;
    ok.expect(StatusCode::OK);
}

#[tokio::test]
async fn a_hold_on_a_standard_webhook_stops_new_leases_but_not_commits_in_flight() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"mode": "standard"})).await;
    app.ingest_many(&wh, 3).await;
    let r = app.dequeue_with(&wh, "maxMessages=2").await;
    let leased: Vec<_> = r.body["messages"].as_array().unwrap().iter().map(crate::helpers::delivery).collect();
    assert_eq!(leased.len(), 2);
    let held = app.error(&wh, &leased[0].id, Some(json!({"lockToken": leased[0].lock_token, "holdSeconds": 60}))).await;
    held.expect(StatusCode::OK);
    assert_eq!(held.i64("retryCount"), 0);
    app.commit_ok(&wh, &leased[1]).await;
    let r = app.dequeue_with(&wh, "maxMessages=5").await;
    r.expect(StatusCode::NO_CONTENT);
    assert_eq!(queue_state(&r), Some("held"));
    post(&app, &wh, "resume").await.expect(StatusCode::OK);
    let r = app.dequeue_with(&wh, "maxMessages=5").await;
    let seqs: Vec<i64> = r.body["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 3]);
}
