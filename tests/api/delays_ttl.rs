//! Delayed delivery (`delaySeconds`) and per-message TTL (`ttlSeconds`) on publish: a
//! delayed message is not handed out before its time, does not hold up the fifo queue
//! behind it, and wakes a long-poll when it falls due; an expired message is never
//! delivered and the TTL purge job deletes it.

use std::time::{Duration, Instant};

use hookline::jobs::TtlPurger;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{spawn_app, time, uuid_of, TestApp};

/// How long a message lives: expiresAt - receivedAt, in milliseconds.
async fn lifetime_ms(app: &TestApp, wh: &str, id: &str) -> i64 {
    let m = app.message(wh, id).await;
    m.expect(StatusCode::OK);
    (time(&m.body["expiresAt"]) - time(&m.body["receivedAt"])).num_milliseconds()
}

/// Makes a delayed message due now, without waiting for it.
async fn make_due(app: &TestApp, wh: &str, seq: i64) {
    let done = app
        .sql(&format!(
            "UPDATE messages SET deliver_at = now() - interval '1 second' WHERE webhook_id = '{}' AND seq = {seq}",
            uuid_of(wh)
        ))
        .await;
    assert_eq!(done.rows_affected(), 1);
}

#[tokio::test]
async fn a_delayed_message_is_held_back_until_its_time_in_both_modes() {
    let app = spawn_app().await;
    let fifo = app.create_webhook(json!({})).await;
    let standard = app.create_webhook(json!({"mode": "standard"})).await;
    let mut ids = Vec::new();
    for wh in [&fifo, &standard] {
        // Two seconds: the checks below that it is held back have that long to run.
        let (id, _) = app.publish_ok(wh, json!({"payload": {"late": true}, "delaySeconds": 2})).await;
        ids.push(id);
    }
    // Timed from after the publishes: each is due within a second of its own answer.
    let published = Instant::now();
    for wh in [&fifo, &standard] {
        app.dequeue_none(wh).await;
        let r = app.dequeue_with(wh, "maxMessages=10").await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    }

    tokio::time::sleep((published + Duration::from_millis(2300)).saturating_duration_since(Instant::now())).await;

    for (wh, id) in [&fifo, &standard].into_iter().zip(&ids) {
        let d = app.dequeue_ok(wh).await;
        assert_eq!(&d.id, id);
        assert_eq!(d.json(), json!({"late": true}));
        assert_eq!(d.retry_count, 0);
        app.commit_ok(wh, &d).await;
        app.dequeue_none(wh).await;
    }
}

#[tokio::test]
async fn a_delayed_message_does_not_hold_up_the_fifo_queue_behind_it() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let (later, later_seq) = app.publish_ok(&wh, json!({"payload": "later", "delaySeconds": 3600})).await;
    let (now, _) = app.publish_ok(&wh, json!({"payload": "now"})).await;
    let (after, after_seq) = app.ingest_ok(&wh, r#""after""#).await;

    let d = app.dequeue_ok(&wh).await;
    assert_eq!(d.id, now, "the delayed message is not yet in line");
    app.dequeue_none(&wh).await;

    // Once due it takes its place by seq, behind the lock that is held now.
    make_due(&app, &wh, later_seq).await;
    app.dequeue_none(&wh).await;
    app.commit_ok(&wh, &d).await;
    let d = app.dequeue_ok(&wh).await;
    assert_eq!((d.id.as_str(), d.seq), (later.as_str(), later_seq));
    assert_eq!(d.json(), json!("later"));
    app.commit_ok(&wh, &d).await;
    let d = app.dequeue_ok(&wh).await;
    assert_eq!((d.id.as_str(), d.seq), (after.as_str(), after_seq));
    app.commit_ok(&wh, &d).await;
    app.dequeue_none(&wh).await;
}

#[tokio::test]
async fn a_delayed_message_is_skipped_by_standard_consumers_until_due() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"mode": "standard", "priorities": true})).await;
    let (delayed, delayed_seq) = app.publish_ok(&wh, json!({"payload": 0, "priority": 10, "delaySeconds": 3600})).await;
    for i in 1..=3 {
        app.publish_ok(&wh, json!({ "payload": i })).await;
    }
    let r = app.dequeue_with(&wh, "maxMessages=10").await;
    r.expect(StatusCode::OK);
    let seqs: Vec<i64> = r.body["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(app.dequeue_with(&wh, "maxMessages=10").await.status, StatusCode::NO_CONTENT);

    make_due(&app, &wh, delayed_seq).await;
    let r = app.dequeue_with(&wh, "maxMessages=10").await;
    r.expect(StatusCode::OK);
    let got = r.body["messages"].as_array().unwrap();
    assert_eq!(got.len(), 1, "{}", r.body);
    assert_eq!(got[0]["id"], delayed.as_str());
}

#[tokio::test]
async fn a_long_poll_is_answered_when_a_delayed_message_falls_due() {
    let app = spawn_app().await;
    let fifo = app.create_webhook(json!({})).await;
    let standard = app.create_webhook(json!({"mode": "standard"})).await;
    let published = Instant::now();
    let mut waiting = Vec::new();
    for wh in [&fifo, &standard] {
        let (id, _) = app.publish_ok(wh, json!({"payload": "soon", "delaySeconds": 2})).await;
        let (app, wh) = (app.clone_handle(), wh.clone());
        waiting.push((
            id,
            tokio::spawn(async move {
                let r = app.dequeue_with(&wh, "wait=10").await;
                (r, Instant::now())
            }),
        ));
    }
    for (id, handle) in waiting {
        let (r, answered) = handle.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "the wait ran out: {}", r.body);
        assert_eq!(r.str("id"), id);
        let after = answered - published;
        assert!(after >= Duration::from_millis(1500), "delivered {after:?} after a 2 s delay was set");
    }
}

#[tokio::test]
async fn a_message_past_its_ttl_is_never_delivered_and_the_purge_deletes_it() {
    let app = spawn_app().await;
    let fifo = app.create_webhook(json!({})).await;
    let standard = app.create_webhook(json!({"mode": "standard"})).await;
    let mut messages = Vec::new();
    for wh in [&fifo, &standard] {
        let (short, _) = app.publish_ok(wh, json!({"payload": "short-lived", "ttlSeconds": 1})).await;
        let (kept, _) = app.publish_ok(wh, json!({"payload": "kept"})).await;
        let short_life = lifetime_ms(&app, wh, &short).await;
        assert!((800..=1200).contains(&short_life), "a 1 s TTL lives {short_life} ms");
        let kept_life = lifetime_ms(&app, wh, &kept).await;
        let week = 7 * 86_400_000;
        assert!((week - 1000..=week + 1000).contains(&kept_life), "the default TTL lives {kept_life} ms");
        messages.push((wh.clone(), short, kept));
    }
    // Timed from after the publishes: each expires within a second of its own answer.
    let published = Instant::now();

    tokio::time::sleep((published + Duration::from_millis(1300)).saturating_duration_since(Instant::now())).await;

    for (wh, _, kept) in &messages {
        let d = app.dequeue_ok(wh).await;
        assert_eq!(&d.id, kept, "an expired message was delivered");
        app.commit_ok(wh, &d).await;
        app.dequeue_none(wh).await;
    }
    assert_eq!(TtlPurger::new(app.pool.clone()).run_once().await.unwrap(), 2);
    for (wh, short, kept) in &messages {
        app.message(wh, short).await.expect_error(StatusCode::NOT_FOUND, "not_found");
        assert_eq!(app.message_status(wh, kept).await, "committed");
    }
    assert_eq!(app.sql_i64("SELECT count(*) FROM messages").await, 2);
    assert_eq!(TtlPurger::new(app.pool.clone()).run_once().await.unwrap(), 0);
}

#[tokio::test]
async fn a_message_ttl_is_bounded_by_the_webhooks_ttl() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"ttlDays": 2})).await;
    let (id, _) = app.publish_ok(&wh, json!({"payload": 1, "ttlSeconds": 172_800})).await;
    let life = lifetime_ms(&app, &wh, &id).await;
    assert!((172_799_000..=172_801_000).contains(&life), "lives {life} ms");
    for ttl in [0, 172_801] {
        let r = app.publish(&wh, json!({"payload": 1, "ttlSeconds": ttl})).await;
        r.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
    let (id, _) = app.publish_ok(&wh, json!({"payload": 1, "ttlSeconds": 60})).await;
    let life = lifetime_ms(&app, &wh, &id).await;
    assert!((59_800..=60_200).contains(&life), "lives {life} ms");
    assert_eq!(app.stored(&wh).await, 2);
}
