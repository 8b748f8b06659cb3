//! Dead letters in bulk and purging: `POST .../errors/retry` and `.../errors/discard`
//! (all dead letters, or those dead since a time) answer how many they moved; the listing
//! filters by `since`, `until` and `error`; `POST .../purge` removes every live message
//! (queued, locked, delayed) and leaves dead and committed ones alone.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{delivery, random_id, spawn_app, time, uuid_of, Delivery, Reply, TestApp};

async fn bulk(app: &TestApp, wh: &str, action: &str, body: Option<Value>) -> Reply {
    app.api(Method::POST, &format!("/api/webhooks/{wh}/errors/{action}"), body).await
}

/// A bulk retry or discard that must succeed; returns its count.
async fn bulk_ok(app: &TestApp, wh: &str, action: &str, body: Option<Value>) -> i64 {
    let r = bulk(app, wh, action, body).await;
    r.expect(StatusCode::OK);
    let field = if action == "retry" { "retried" } else { "discarded" };
    r.i64(field)
}

async fn purge(app: &TestApp, wh: &str) -> Reply {
    app.api(Method::POST, &format!("/api/webhooks/{wh}/purge"), None).await
}

/// The seqs the dead-letter listing shows for this query string.
async fn dead_seqs(app: &TestApp, wh: &str, query: &str) -> Vec<i64> {
    let r = app.dead_letters(wh, query).await;
    assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.body);
    r.body["data"].as_array().unwrap().iter().map(|d| d["seq"].as_i64().unwrap()).collect()
}

/// Dequeues the head and errors it without requeue: straight to the dead-letter queue.
async fn kill_head(app: &TestApp, wh: &str, reason: &str) -> Delivery {
    let d = app.dequeue_ok(wh).await;
    let r = app.error(wh, &d.id, Some(json!({"lockToken": d.lock_token, "reason": reason, "requeue": false}))).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["status"], "dead", "{}", r.body);
    d
}

/// Sets when a dead letter died.
async fn dead_at(app: &TestApp, wh: &str, seq: i64, at: &str) {
    let done = app
        .sql(&format!(
            "UPDATE messages SET dead_at = '{at}' WHERE webhook_id = '{}' AND seq = {seq} AND state = 'dead'",
            uuid_of(wh)
        ))
        .await;
    assert_eq!(done.rows_affected(), 1, "seq {seq} is not dead");
}

#[tokio::test]
async fn a_bulk_retry_puts_every_dead_letter_back_at_its_position() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 3})).await;
    let ids = app.ingest_many(&wh, 6).await;
    kill_head(&app, &wh, "fatal").await; // 1
    let two = app.dequeue_ok(&wh).await;
    app.commit_ok(&wh, &two).await; // 2
    let three = app.dequeue_ok(&wh).await;
    app.error_ok(&wh, &three, "once").await;
    let three = kill_head(&app, &wh, "twice").await; // 3, after two attempts
    assert_eq!((three.seq, three.retry_count), (3, 1));
    kill_head(&app, &wh, "fatal").await; // 4
    assert_eq!(dead_seqs(&app, &wh, "").await, [1, 3, 4]);

    assert_eq!(bulk_ok(&app, &wh, "retry", None).await, 3);
    assert_eq!(dead_seqs(&app, &wh, "").await, Vec::<i64>::new());
    for id in [&ids[0], &ids[2], &ids[3]] {
        let m = app.message(&wh, id).await;
        assert_eq!((m.str("status").as_str(), m.i64("retryCount")), ("queued", 0), "{}", m.body);
    }
    // Redriven ones go before the later queued ones, retry counters reset.
    let mut order = Vec::new();
    loop {
        let r = app.dequeue(&wh).await;
        if r.status == StatusCode::NO_CONTENT {
            break;
        }
        let d = Delivery::from_reply(&r);
        order.push((d.seq, d.retry_count));
        app.commit_ok(&wh, &d).await;
    }
    assert_eq!(order, [(1, 0), (3, 0), (4, 0), (5, 0), (6, 0)]);
    // Nothing left to retry, with or without a body.
    assert_eq!(bulk_ok(&app, &wh, "retry", None).await, 0);
    assert_eq!(bulk_ok(&app, &wh, "retry", Some(json!({}))).await, 0);
}

#[tokio::test]
async fn the_listing_filters_dead_letters_by_time_and_error() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 1})).await;
    app.ingest_many(&wh, 5).await;
    for reason in ["Timeout from upstream", "bad payload", "upstream TIMEOUT again", "schema mismatch"] {
        kill_head(&app, &wh, reason).await;
    }
    for seq in 1..=4 {
        dead_at(&app, &wh, seq, &format!("2024-01-0{seq}T00:00:00Z")).await;
    }

    let all = app.dead_letters(&wh, "").await;
    assert_eq!(time(&all.body["data"][2]["deadAt"]), time(&json!("2024-01-03T00:00:00Z")), "{}", all.body);
    let cases: [(&str, &[i64]); 9] = [
        ("", &[1, 2, 3, 4]),
        ("?since=2024-01-02T12:00:00Z", &[3, 4]),
        ("?until=2024-01-02T12:00:00Z", &[1, 2]),
        ("?since=2024-01-01T12:00:00Z&until=2024-01-03T12:00:00Z", &[2, 3]),
        ("?since=2024-01-02T13:00:00%2B01:00", &[3, 4]),
        ("?error=timeout", &[1, 3]),
        ("?error=TIMEOUT&since=2024-01-02T12:00:00Z", &[3]),
        ("?error=PAYLOAD&until=2024-01-03T12:00:00Z", &[2]),
        ("?error=nothing%20like%20this", &[]),
    ];
    for (query, expected) in cases {
        assert_eq!(dead_seqs(&app, &wh, query).await, expected, "{query}");
    }
    // Filters and pages together.
    let page = app.dead_letters(&wh, "?since=2024-01-01T12:00:00Z&limit=2").await;
    page.expect(StatusCode::OK);
    let seqs: Vec<i64> = page.body["data"].as_array().unwrap().iter().map(|d| d["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [2, 3]);
    let cursor = page.str("nextCursor");
    assert_eq!(dead_seqs(&app, &wh, &format!("?since=2024-01-01T12:00:00Z&limit=2&cursor={cursor}")).await, [4]);

    for bad in ["?since=yesterday", "?until=2024-13-45T00:00:00Z"] {
        let r = app.dead_letters(&wh, bad).await;
        assert!(
            r.status == StatusCode::UNPROCESSABLE_ENTITY || r.status == StatusCode::BAD_REQUEST,
            "{bad}: {} {}",
            r.status,
            r.body
        );
        r.error_code();
    }
}

#[tokio::test]
async fn a_bulk_retry_since_a_time_takes_only_the_later_dead_letters() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 1})).await;
    app.ingest_many(&wh, 5).await;
    for _ in 1..=4 {
        kill_head(&app, &wh, "fatal").await;
    }
    for seq in 1..=4 {
        dead_at(&app, &wh, seq, &format!("2024-01-0{seq}T00:00:00Z")).await;
    }

    // A bad `since` changes nothing.
    for body in [json!({"since": "yesterday"}), json!({"since": 17})] {
        let r = bulk(&app, &wh, "retry", Some(body.clone())).await;
        assert!(
            r.status == StatusCode::UNPROCESSABLE_ENTITY || r.status == StatusCode::BAD_REQUEST,
            "{body}: {} {}",
            r.status,
            r.body
        );
        r.error_code();
    }
    let path = format!("/api/webhooks/{wh}/errors/retry");
    let r = app.send(app.request(Method::POST, &path).header("content-type", "application/json").body("{")).await;
    r.expect_error(StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(dead_seqs(&app, &wh, "").await, [1, 2, 3, 4]);

    // `since` is inclusive: died at or after it.
    assert_eq!(bulk_ok(&app, &wh, "retry", Some(json!({"since": "2024-01-03T00:00:00Z"}))).await, 2);
    assert_eq!(dead_seqs(&app, &wh, "").await, [1, 2]);
    assert_eq!(bulk_ok(&app, &wh, "retry", Some(json!({"since": "2024-01-03T00:00:00Z"}))).await, 0);
    // An offset is a time like any other: 02:00+01:00 is 01:00Z, after seq 1 died and before seq 2.
    assert_eq!(bulk_ok(&app, &wh, "retry", Some(json!({"since": "2024-01-01T02:00:00+01:00"}))).await, 1);
    assert_eq!(dead_seqs(&app, &wh, "").await, [1]);
    assert_eq!(app.drain(&wh).await, vec![2, 3, 4, 5]);
    assert_eq!(app.stored_where(&wh, "state = 'dead'").await, 1);
}

#[tokio::test]
async fn a_bulk_discard_deletes_dead_letters_and_nothing_else() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 1})).await;
    let ids = app.ingest_many(&wh, 6).await;
    kill_head(&app, &wh, "fatal").await; // 1
    let two = app.dequeue_ok(&wh).await;
    app.commit_ok(&wh, &two).await; // 2
    kill_head(&app, &wh, "fatal").await; // 3
    kill_head(&app, &wh, "fatal").await; // 4
    for (seq, day) in [(1, 1), (3, 3), (4, 4)] {
        dead_at(&app, &wh, seq, &format!("2024-01-0{day}T00:00:00Z")).await;
    }

    assert_eq!(bulk_ok(&app, &wh, "discard", Some(json!({"since": "2024-01-02T00:00:00Z"}))).await, 2);
    assert_eq!(dead_seqs(&app, &wh, "").await, [1]);
    app.message(&wh, &ids[2]).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    app.message(&wh, &ids[3]).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(bulk_ok(&app, &wh, "discard", None).await, 1);
    assert_eq!(bulk_ok(&app, &wh, "discard", None).await, 0);
    assert_eq!(dead_seqs(&app, &wh, "").await, Vec::<i64>::new());

    assert_eq!(app.stored(&wh).await, 3);
    assert_eq!(app.message_status(&wh, &ids[1]).await, "committed");
    assert_eq!(app.drain(&wh).await, vec![5, 6]);
}

#[tokio::test]
async fn purge_removes_every_live_message_of_a_fifo_webhook() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 1})).await;
    let ids = app.ingest_many(&wh, 6).await;
    let one = app.dequeue_ok(&wh).await;
    app.commit_ok(&wh, &one).await; // 1 committed
    kill_head(&app, &wh, "fatal").await; // 2 dead
    let held = app.dequeue_ok(&wh).await; // 3 locked; 4, 5, 6 queued
    assert_eq!(held.seq, 3);
    let r = app.publish(&wh, json!({"payload": 7, "delaySeconds": 3600})).await;
    r.expect(StatusCode::CREATED); // 7 delayed

    let r = purge(&app, &wh).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.i64("purged"), 5);
    app.dequeue_none(&wh).await;
    app.commit(&wh, &held.id, Some(&held.lock_token)).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.message_status(&wh, &ids[0]).await, "committed");
    assert_eq!(dead_seqs(&app, &wh, "").await, [2]);
    assert_eq!(app.stored(&wh).await, 2);
    assert_eq!(purge(&app, &wh).await.i64("purged"), 0);

    // The queue works on: the purged lock does not block a new message.
    let (fresh, _) = app.ingest_ok(&wh, "{}").await;
    let d = app.dequeue_ok(&wh).await;
    assert_eq!(d.id, fresh);
    app.commit_ok(&wh, &d).await;
}

#[tokio::test]
async fn purge_removes_every_live_message_of_a_standard_webhook() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"mode": "standard"})).await;
    app.ingest_many(&wh, 5).await;
    let r = app.dequeue_with(&wh, "maxMessages=3").await;
    r.expect(StatusCode::OK);
    let held: Vec<Delivery> = r.body["messages"].as_array().unwrap().iter().map(delivery).collect();
    assert_eq!(held.len(), 3);
    app.commit_ok(&wh, &held[0]).await;

    let r = purge(&app, &wh).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.i64("purged"), 4, "2 locked and 2 queued");
    for d in &held[1..] {
        app.commit(&wh, &d.id, Some(&d.lock_token)).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    }
    app.dequeue_none(&wh).await;
    assert_eq!(app.stored(&wh).await, 1);
    assert_eq!(app.message_status(&wh, &held[0].id).await, "committed");
}

#[tokio::test]
async fn bulk_routes_of_an_unknown_webhook_are_404() {
    let app = spawn_app().await;
    let unknown = random_id("wh_");
    bulk(&app, &unknown, "retry", None).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    bulk(&app, &unknown, "discard", None).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    purge(&app, &unknown).await.expect_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn an_error_filter_with_a_nul_character_is_400_not_500() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let r = app.api(Method::GET, &format!("/api/webhooks/{wh}/errors?error=%00"), None).await;
    r.expect_error(StatusCode::BAD_REQUEST, "bad_request");
    let r = bulk(&app, &wh, "retry", Some(json!({"error": "a\u{0}b"}))).await;
    r.expect_error(StatusCode::BAD_REQUEST, "bad_request");
}

/// A bulk action's preview: `dryRun` counts what `since`, `until` and `errorContains` select
/// and changes nothing; the same selection without it acts on exactly those. `error` and
/// `errorContains` are one filter under two names: giving both is refused.
#[tokio::test]
async fn a_dry_run_counts_the_selection_and_changes_nothing() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_many(&wh, 4).await;
    for (seq, reason, at) in [
        (1, "Timeout talking to billing", "2026-11-01T10:00:00Z"),
        (2, "timeout again", "2026-11-02T10:00:00Z"),
        (3, "bad signature", "2026-11-02T11:00:00Z"),
        (4, "timeout, late", "2026-11-05T10:00:00Z"),
    ] {
        kill_head(&app, &wh, reason).await;
        dead_at(&app, &wh, seq, at).await;
    }
    let selection =
        json!({"since": "2026-11-01T00:00:00Z", "until": "2026-11-03T00:00:00Z", "errorContains": "TIMEOUT"});
    for action in ["retry", "discard"] {
        let mut preview = selection.clone();
        preview["dryRun"] = json!(true);
        let r = bulk(&app, &wh, action, Some(preview)).await;
        r.expect(StatusCode::OK);
        let acted = if action == "retry" { "retried" } else { "discarded" };
        assert_eq!((r.i64("matched"), r.i64(acted), r.body["dryRun"].as_bool()), (2, 0, Some(true)), "{}", r.body);
        assert_eq!(dead_seqs(&app, &wh, "").await, [1, 2, 3, 4], "a dry run changes nothing");
    }
    let r = bulk(&app, &wh, "retry", Some(selection)).await;
    r.expect(StatusCode::OK);
    assert_eq!((r.i64("retried"), r.i64("matched"), r.body["dryRun"].as_bool()), (2, 2, Some(false)), "{}", r.body);
    assert_eq!(dead_seqs(&app, &wh, "").await, [3, 4]);

    let both = json!({"error": "timeout", "errorContains": "timeout"});
    bulk(&app, &wh, "discard", Some(both)).await.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(bulk_ok(&app, &wh, "discard", Some(json!({"error": "late"}))).await, 1);
    assert_eq!(dead_seqs(&app, &wh, "").await, [3]);
}
