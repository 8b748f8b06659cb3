//! Priorities (a webhook with `priorities: true`): higher priority first, seq order within
//! a priority, in fifo and standard mode. Set by the `X-Hookline-Priority` header on
//! ingestion or `priority` on publish (0 to 10); anything else, or a priority on a webhook
//! without priorities, is 422 and stores nothing.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{priority, refused, spawn_app, Reply, TestApp};

async fn ingest_at(app: &TestApp, wh: &str, priority: &str, body: &str) -> Reply {
    let headers = [("content-type", "application/json"), ("x-hookline-priority", priority)];
    app.ingest_with_headers(wh, &headers, body.as_bytes().to_vec()).await
}

/// Ingests with a priority header and asserts 202; returns (id, seq).
async fn ingest_at_ok(app: &TestApp, wh: &str, priority: &str, body: &str) -> (String, i64) {
    let r = ingest_at(app, wh, priority, body).await;
    r.expect(StatusCode::ACCEPTED);
    (r.str("id"), r.i64("seq"))
}

#[tokio::test]
async fn a_priority_nine_message_ingested_behind_a_hundred_priority_zero_ones_is_next_in_fifo() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"priorities": true})).await;
    let mut zeros = Vec::new();
    for i in 1..=100 {
        let body = json!({ "n": i }).to_string();
        // Half say priority 0, half leave it to the default (0).
        let r = if i % 2 == 0 { ingest_at(&app, &wh, "0", &body).await } else { app.ingest(&wh, &body).await };
        r.expect(StatusCode::ACCEPTED);
        zeros.push(r.str("id"));
    }
    let (urgent, seq) = ingest_at_ok(&app, &wh, "9", r#"{"urgent": true}"#).await;
    assert_eq!(seq, 101);

    let d = app.dequeue_ok(&wh).await;
    assert_eq!((d.id.as_str(), d.seq, priority(&d)), (urgent.as_str(), 101, 9));
    assert_eq!(d.json(), json!({"urgent": true}));
    // Still strict FIFO: one message in flight at a time.
    app.dequeue_none(&wh).await;
    app.commit_ok(&wh, &d).await;

    let first = app.dequeue_ok(&wh).await;
    assert_eq!((first.id.as_str(), first.seq, priority(&first)), (zeros[0].as_str(), 1, 0));
    app.commit_ok(&wh, &first).await;
    assert_eq!(app.drain(&wh).await, (2..=100).collect::<Vec<i64>>());
}

#[tokio::test]
async fn a_fifo_head_is_the_highest_priority_lowest_seq_queued_message() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"priorities": true})).await;
    let (low, _) = ingest_at_ok(&app, &wh, "1", "1").await;
    let (low_too, _) = ingest_at_ok(&app, &wh, "1", "2").await;
    let head = app.dequeue_ok(&wh).await;
    assert_eq!(head.id, low);

    // A higher priority arriving does not take the lock away from the head...
    let (high, high_seq) = ingest_at_ok(&app, &wh, "8", "3").await;
    assert_eq!(high_seq, 3);
    app.dequeue_none(&wh).await;
    // ...but once the head is back in the queue, the higher priority goes first.
    assert_eq!(app.error_ok(&wh, &head, "later").await.body["status"], "queued");
    let d = app.dequeue_ok(&wh).await;
    assert_eq!((d.id.as_str(), priority(&d)), (high.as_str(), 8));
    app.commit_ok(&wh, &d).await;
    let d = app.dequeue_ok(&wh).await;
    assert_eq!((d.id.as_str(), d.retry_count), (low.as_str(), 1));
    app.commit_ok(&wh, &d).await;
    let d = app.dequeue_ok(&wh).await;
    assert_eq!(d.id, low_too);
    app.commit_ok(&wh, &d).await;
    app.dequeue_none(&wh).await;
}

#[tokio::test]
async fn published_priorities_order_delivery_in_both_modes() {
    let app = spawn_app().await;
    let priorities = [0, 10, 3, 10, 0, 7, 3];
    // Priority descending, then seq.
    let expected: Vec<(i64, i64)> = vec![(2, 10), (4, 10), (6, 7), (3, 3), (7, 3), (1, 0), (5, 0)];
    for mode in ["fifo", "standard"] {
        let wh = app.create_webhook(json!({"mode": mode, "priorities": true})).await;
        for (i, p) in priorities.iter().enumerate() {
            let r = app.publish(&wh, json!({"payload": {"i": i}, "priority": p})).await;
            r.expect(StatusCode::CREATED);
            assert_eq!(r.i64("seq"), i as i64 + 1);
        }
        let mut got = Vec::new();
        for _ in 0..priorities.len() {
            let d = app.dequeue_ok(&wh).await;
            assert_eq!(d.json(), json!({"i": d.seq - 1}));
            got.push((d.seq, priority(&d)));
            app.commit_ok(&wh, &d).await;
        }
        assert_eq!(got, expected, "{mode}");
        app.dequeue_none(&wh).await;
    }
}

#[tokio::test]
async fn a_bad_priority_or_one_without_priorities_enabled_is_422_and_stores_nothing() {
    let app = spawn_app().await;
    let with = app.create_webhook(json!({"priorities": true})).await;
    let without = app.create_webhook(json!({})).await;

    for bad in ["11", "-1", "high", "1.5", "99999"] {
        let r = ingest_at(&app, &with, bad, "{}").await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}: {}", r.body);
        assert_eq!(r.error_code(), "validation_failed");
    }
    ingest_at(&app, &without, "5", "{}").await.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");

    app.publish(&with, json!({"payload": 1, "priority": 11}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    refused(&app.publish(&with, json!({"payload": 1, "priority": -1})).await);
    app.publish(&without, json!({"payload": 1, "priority": 5}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(app.stored(&with).await, 0);
    assert_eq!(app.stored(&without).await, 0);

    // The edges of the range pass.
    ingest_at_ok(&app, &with, "0", "{}").await;
    let (top, _) = ingest_at_ok(&app, &with, "10", "{}").await;
    app.publish(&with, json!({"payload": 1, "priority": 0})).await.expect(StatusCode::CREATED);
    app.publish(&with, json!({"payload": 1, "priority": 10})).await.expect(StatusCode::CREATED);
    assert_eq!(app.stored(&with).await, 4);
    let d = app.dequeue_ok(&with).await;
    assert_eq!((d.id.as_str(), priority(&d)), (top.as_str(), 10));
}

#[tokio::test]
async fn priorities_can_be_switched_on_and_off_by_patch() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    assert_eq!(app.get_webhook(&wh).await.body["priorities"], false);
    ingest_at(&app, &wh, "5", "{}").await.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");

    let r = app.patch_webhook(&wh, json!({"priorities": true})).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["priorities"], true, "{}", r.body);
    assert_eq!(app.get_webhook(&wh).await.body["priorities"], true);
    let (plain, _) = app.ingest_ok(&wh, "{}").await;
    let (urgent, _) = ingest_at_ok(&app, &wh, "5", "{}").await;
    let d = app.dequeue_ok(&wh).await;
    assert_eq!((d.id.as_str(), priority(&d)), (urgent.as_str(), 5));
    app.commit_ok(&wh, &d).await;
    let d = app.dequeue_ok(&wh).await;
    assert_eq!((d.id.as_str(), priority(&d)), (plain.as_str(), 0));
    app.commit_ok(&wh, &d).await;

    let r = app.patch_webhook(&wh, json!({"priorities": false})).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["priorities"], false, "{}", r.body);
    ingest_at(&app, &wh, "5", "{}").await.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(app.stored(&wh).await, 2);
}
