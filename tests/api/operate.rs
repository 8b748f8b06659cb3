//! Operating an ordered queue: the head view (why a webhook is blocked) and skipping the
//! head to the dead-letter queue, with its fencing of the skipped lock.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{delivery, spawn_app, time, uuid_of, Delivery, Reply, TestApp};

async fn head(app: &TestApp, wh: &str) -> Value {
    let r = app.api(Method::GET, &format!("/api/webhooks/{wh}/head"), None).await;
    r.expect(StatusCode::OK);
    r.body
}

async fn skip(app: &TestApp, wh: &str, body: Value) -> Reply {
    app.api(Method::POST, &format!("/api/webhooks/{wh}/head/skip"), Some(body)).await
}

fn seqs_of(list: &Value) -> Vec<i64> {
    list.as_array().expect("a list").iter().map(|m| m["seq"].as_i64().expect("a seq")).collect()
}

/// Lets the webhook's lock run out, as time would.
async fn expire_lock(app: &TestApp, wh: &str) {
    let expired = app
        .sql(&format!(
            "UPDATE webhooks SET lock_expires_at = now() - interval '1 second' WHERE id = '{}' AND locked_seq IS NOT NULL",
            uuid_of(wh)
        ))
        .await;
    assert_eq!(expired.rows_affected(), 1, "no lock to expire");
}

#[tokio::test]
async fn the_head_view_says_why_nothing_moves_and_counts_attempts_by_cause() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 5})).await;
    let empty = head(&app, &wh).await;
    assert_eq!(empty["state"], "empty");
    assert!(empty["head"].is_null() && empty["lock"].is_null() && empty["nextEligibleAt"].is_null());
    assert_eq!(empty["waiting"]["count"], 0);

    let ids = app.ingest_many(&wh, 3).await;
    let ready = head(&app, &wh).await;
    assert_eq!(ready["state"], "ready");
    assert_eq!(ready["head"]["id"], ids[0].as_str());
    assert_eq!(ready["head"]["seq"], 1);
    assert_eq!(ready["head"]["maxRetries"], 5);
    assert!(ready["head"]["sizeBytes"].as_i64().unwrap() > 0);
    assert_eq!(ready["waiting"]["count"], 2);
    assert_eq!(seqs_of(&ready["waiting"]["next"]), [2, 3]);
    assert!(ready["lock"].is_null());
    assert!(!ready["nextEligibleAt"].is_null());

    // Locked: the lock's times and extensions; the head stays the same message.
    let d = app.dequeue_ok(&wh).await;
    let path = format!("/api/webhooks/{wh}/messages/{}/extend", d.id);
    app.api(Method::POST, &path, Some(json!({"seconds": 600, "lockToken": d.lock_token}))).await.expect(StatusCode::OK);
    let locked = head(&app, &wh).await;
    assert_eq!(locked["state"], "locked");
    assert_eq!(locked["head"]["seq"], 1);
    assert_eq!(locked["lock"]["extensions"], 1);
    assert_eq!(locked["lock"]["messages"], 1);
    assert!(time(&locked["lock"]["acquiredAt"]) < time(&locked["lock"]["expiresAt"]));
    assert_eq!(locked["nextEligibleAt"], locked["lock"]["expiresAt"]);
    assert_eq!(locked["waiting"]["inFlight"], 1);
    assert_eq!(locked["waiting"]["count"], 2, "the locked head is not waiting");

    // An error and a lock expiry, counted apart.
    app.error_ok(&wh, &d, "downstream answered 502").await;
    let errored = head(&app, &wh).await;
    assert_eq!(errored["head"]["retryCount"], 1);
    assert_eq!(errored["head"]["attempts"], json!({"errors": 1, "lockExpiries": 0}));
    assert_eq!(errored["head"]["lastError"], "downstream answered 502");
    assert!(!errored["head"]["lastErrorAt"].is_null());
    let again = app.dequeue_ok(&wh).await;
    assert_eq!(again.seq, 1);
    expire_lock(&app, &wh).await;
    assert_eq!(head(&app, &wh).await["state"], "ready", "an expired lock no longer blocks");
    let third = app.dequeue_ok(&wh).await;
    assert_eq!(third.seq, 1);
    let counted = head(&app, &wh).await;
    assert_eq!(counted["head"]["retryCount"], 2);
    assert_eq!(counted["head"]["attempts"], json!({"errors": 1, "lockExpiries": 1}));
    assert_eq!(counted["head"]["lastError"], "lock expired");
    assert_eq!(counted["lock"]["extensions"], 0, "a new lock starts its own history");

    // Only delayed messages: delayed, eligible when the first joins the line.
    let later = app.create_webhook(json!({})).await;
    app.publish(&later, json!({"payload": {}, "delaySeconds": 600})).await.expect(StatusCode::CREATED);
    let delayed = head(&app, &later).await;
    assert_eq!(delayed["state"], "delayed");
    assert!(delayed["head"].is_null());
    assert_eq!(delayed["waiting"]["delayed"], 1);
    assert!(time(&delayed["nextEligibleAt"]) > chrono::Utc::now() + chrono::Duration::seconds(500));
}

#[tokio::test]
async fn the_head_views_counts_match_the_store_with_a_window_out() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"fifoWindow": 3})).await;
    app.ingest_many(&wh, 10).await;
    let r = app.dequeue_with(&wh, "maxMessages=3").await;
    r.expect(StatusCode::OK);
    let window: Vec<Delivery> = r.body["messages"].as_array().unwrap().iter().map(delivery).collect();
    assert_eq!(window.len(), 3);

    let view = head(&app, &wh).await;
    assert_eq!(view["state"], "locked");
    assert_eq!(view["head"]["seq"], 1);
    assert_eq!(view["lock"]["messages"], 3);
    let queued_unleased = app.stored_where(&wh, "state = 'queued' AND seq > 3").await;
    assert_eq!(view["waiting"]["count"], queued_unleased);
    assert_eq!(view["waiting"]["inFlight"], 3);
    let next = &view["waiting"]["next"];
    assert_eq!(seqs_of(next), [2, 3, 4, 5, 6]);
    let leased: Vec<bool> = next.as_array().unwrap().iter().map(|m| m["leased"].as_bool().unwrap()).collect();
    assert_eq!(leased, [true, true, false, false, false]);
    assert!(view["waiting"]["oldestAgeSeconds"].as_f64().unwrap() >= 0.0);
}

#[tokio::test]
async fn skipping_a_locked_head_dead_letters_it_fences_its_consumer_and_the_line_moves_on() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&wh, 3).await;
    let stuck = app.dequeue_ok(&wh).await;

    let r = skip(&app, &wh, json!({"reason": "poison: schema v1", "expectSeq": 1})).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body, json!({"id": ids[0], "seq": 1, "status": "dead", "lockSuperseded": true}));

    // The consumer that held it is told its lock was superseded, on every call.
    let body = json!({"lockToken": stuck.lock_token});
    app.commit(&wh, &stuck.id, Some(&stuck.lock_token)).await.expect_error(StatusCode::CONFLICT, "lock_superseded");
    app.error(&wh, &stuck.id, Some(body.clone())).await.expect_error(StatusCode::CONFLICT, "lock_superseded");
    let extend = format!("/api/webhooks/{wh}/messages/{}/extend", stuck.id);
    app.api(Method::POST, &extend, Some(json!({"seconds": 10, "lockToken": stuck.lock_token})))
        .await
        .expect_error(StatusCode::CONFLICT, "lock_superseded");
    assert_eq!(app.message_status(&wh, &ids[0]).await, "dead");

    // Who and why are on the dead letter; the line moves on in order.
    let dead = app.dead_letters(&wh, "").await;
    assert_eq!(dead.body["data"][0]["lastError"], "poison: schema v1");
    assert!(dead.body["data"][0]["skippedBy"].as_str().unwrap().starts_with("api-key:"));
    let next = app.dequeue_ok(&wh).await;
    assert_eq!(next.seq, 2);
    app.commit_ok(&wh, &next).await;

    // Retried, it returns to its own position: first in line again.
    app.retry_dead(&wh, &ids[0]).await.expect(StatusCode::OK);
    assert_eq!(app.drain(&wh).await, [1, 3]);
}

#[tokio::test]
async fn skipping_an_unlocked_head_or_a_window_keeps_everything_behind_it_in_order() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"fifoWindow": 3})).await;
    app.ingest_many(&wh, 5).await;
    let r = skip(&app, &wh, json!({"reason": "operator"})).await;
    r.expect(StatusCode::OK);
    assert_eq!((r.i64("seq"), r.body["lockSuperseded"].as_bool()), (1, Some(false)));

    let window = app.dequeue_with(&wh, "maxMessages=3").await;
    assert_eq!(seqs_of(&window.body["messages"]), [2, 3, 4]);
    let r = skip(&app, &wh, json!({"reason": "operator", "expectSeq": 2})).await;
    assert_eq!(r.body["lockSuperseded"], true);
    // The window's rest went back, uncounted, behind nothing.
    let again = app.dequeue_with(&wh, "maxMessages=3").await;
    assert_eq!(seqs_of(&again.body["messages"]), [3, 4, 5]);
    assert!(again.body["messages"].as_array().unwrap().iter().all(|m| m["retryCount"] == 0));
    assert_eq!(app.stored_where(&wh, "state = 'dead'").await, 2);
}

#[tokio::test]
async fn skip_refuses_a_moved_head_an_empty_queue_a_standard_webhook_and_a_blank_reason() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    skip(&app, &wh, json!({"reason": "x"})).await.expect_error(StatusCode::CONFLICT, "no_head");
    app.ingest_many(&wh, 2).await;
    let message =
        skip(&app, &wh, json!({"reason": "x", "expectSeq": 2})).await.expect_error(StatusCode::CONFLICT, "head_moved");
    assert!(message.contains("seq 1"), "{message}");
    assert_eq!(app.stored_where(&wh, "state = 'dead'").await, 0, "a refused skip changes nothing");
    for bad in
        [json!({"reason": "   "}), json!({}), json!({"reason": "x", "expectSeq": 1.5}), json!({"reason": "a\u{0}b"})]
    {
        let r = skip(&app, &wh, bad.clone()).await;
        assert!(
            r.status == StatusCode::UNPROCESSABLE_ENTITY || r.status == StatusCode::BAD_REQUEST,
            "{bad}: {}",
            r.status
        );
        r.error_code();
    }
    let standard = app.create_webhook(json!({"mode": "standard"})).await;
    app.ingest_many(&standard, 1).await;
    skip(&app, &standard, json!({"reason": "x"})).await.expect_error(StatusCode::CONFLICT, "not_fifo");
    assert_eq!(app.drain(&wh).await, [1, 2]);
}

#[tokio::test]
async fn every_skipped_lock_stays_fenced_after_later_skips() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_many(&wh, 3).await;
    let first = app.dequeue_ok(&wh).await;
    skip(&app, &wh, json!({"reason": "one"})).await.expect(StatusCode::OK);
    let second = app.dequeue_ok(&wh).await;
    skip(&app, &wh, json!({"reason": "two"})).await.expect(StatusCode::OK);
    for d in [&first, &second] {
        app.commit(&wh, &d.id, Some(&d.lock_token)).await.expect_error(StatusCode::CONFLICT, "lock_superseded");
    }
    // Through the consumer batch's set-based path too (a commit with next).
    let third = app.dequeue_ok(&wh).await;
    skip(&app, &wh, json!({"reason": "three"})).await.expect(StatusCode::OK);
    app.commit_next(&wh, &third.id, Some(&third.lock_token))
        .await
        .expect_error(StatusCode::CONFLICT, "lock_superseded");
    assert_eq!(app.stored_where(&wh, "state = 'dead'").await, 3);
}
