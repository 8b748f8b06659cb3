//! Replay: committed messages of a seq range delivered again, in order: copies at the tail
//! naming their originals, or the originals themselves at the head.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{random_id, spawn_app, uuid_of, Reply, TestApp};

async fn replay(app: &TestApp, wh: &str, body: Value) -> Reply {
    app.api(Method::POST, &format!("/api/webhooks/{wh}/replay"), Some(body)).await
}

fn seqs(r: &Reply) -> Vec<i64> {
    r.body["messages"].as_array().expect("messages").iter().map(|m| m["seq"].as_i64().unwrap()).collect()
}

/// Ingests `n` messages with bodies "0".."n-1"; returns their ids.
async fn ingest_numbered(app: &TestApp, wh: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for k in 0..n {
        ids.push(app.ingest_ok(wh, &k.to_string()).await.0);
    }
    ids
}

#[tokio::test]
async fn a_tail_replay_appends_copies_in_order_that_name_their_originals() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let ids = ingest_numbered(&app, &wh, 5).await;
    assert_eq!(app.drain(&wh).await, [1, 2, 3, 4, 5]);

    let r = replay(&app, &wh, json!({"fromSeq": 2, "toSeq": 4})).await;
    r.expect(StatusCode::OK);
    assert_eq!((r.body["replayed"].as_i64(), r.str("position")), (Some(3), "tail".to_owned()));
    assert_eq!(seqs(&r), [6, 7, 8]);
    let originals: Vec<&str> =
        r.body["messages"].as_array().unwrap().iter().map(|m| m["replayOf"].as_str().unwrap()).collect();
    assert_eq!(originals, [&ids[1], &ids[2], &ids[3]]);

    let copy = r.body["messages"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(app.message(&wh, &copy).await.body["replayOf"], ids[1].as_str());
    let mut bodies = Vec::new();
    for expected_seq in [6, 7, 8] {
        let d = app.dequeue_ok(&wh).await;
        assert_eq!(d.seq, expected_seq);
        bodies.push(d.body.clone().unwrap());
        app.commit_ok(&wh, &d).await;
    }
    assert_eq!(bodies, ["1", "2", "3"], "the copies carry the originals' payloads");
    app.dequeue_none(&wh).await;
}

#[tokio::test]
async fn a_head_replay_returns_the_originals_ahead_of_what_arrived_after_them() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 3})).await;
    let ids = ingest_numbered(&app, &wh, 5).await;
    for _ in 0..3 {
        let d = app.dequeue_ok(&wh).await;
        app.commit_ok(&wh, &d).await;
    }
    let r = replay(&app, &wh, json!({"fromSeq": 1, "toSeq": 2, "position": "head"})).await;
    r.expect(StatusCode::OK);
    assert_eq!(seqs(&r), [1, 2]);
    assert_eq!(r.body["messages"][0]["replayOf"], ids[0].as_str());
    assert_eq!(app.message_status(&wh, &ids[0]).await, "queued");
    assert_eq!(app.drain(&wh).await, [1, 2, 4, 5]);
}

#[tokio::test]
async fn only_committed_messages_within_their_ttl_are_replayed() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 1})).await;
    ingest_numbered(&app, &wh, 4).await;
    let d = app.dequeue_ok(&wh).await;
    app.error_ok(&wh, &d, "boom").await; // seq 1: dead
    let d = app.dequeue_ok(&wh).await;
    app.commit_ok(&wh, &d).await; // seq 2: committed
    let d = app.dequeue_ok(&wh).await;
    app.commit_ok(&wh, &d).await; // seq 3: committed, then past its TTL
    app.sql(&format!(
        "UPDATE messages SET expires_at = now() - interval '1 second' WHERE webhook_id = '{}' AND seq = 3",
        uuid_of(&wh)
    ))
    .await;
    // seq 4 is still queued.
    for position in ["tail", "head"] {
        let r = replay(&app, &wh, json!({"fromSeq": 1, "toSeq": 4, "position": position})).await;
        r.expect(StatusCode::OK);
        // The tail's copy leaves its original committed: the head replays that one.
        let expected: &[i64] = if position == "tail" { &[5] } else { &[2] };
        assert_eq!(seqs(&r), expected, "{position}: {}", r.body);
    }
    assert_eq!(app.stored_where(&wh, "state = 'dead'").await, 1);
    assert_eq!(app.stored(&wh).await, 5);
}

#[tokio::test]
async fn a_replay_refuses_bad_ranges_and_unknown_webhooks() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    for bad in [
        json!({}),
        json!({"fromSeq": 1}),
        json!({"fromSeq": 0, "toSeq": 3}),
        json!({"fromSeq": 5, "toSeq": 4}),
        json!({"fromSeq": 1, "toSeq": 1001}),
        json!({"fromSeq": 1, "toSeq": 2, "position": "middle"}),
    ] {
        replay(&app, &wh, bad.clone()).await.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
    assert_eq!(replay(&app, &wh, json!({"fromSeq": 1, "toSeq": 1000})).await.body["replayed"], 0);
    let r = replay(&app, &random_id("wh_"), json!({"fromSeq": 1, "toSeq": 2})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_head_replay_wakes_a_waiting_consumer_and_is_not_counted_as_undelivered() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    ingest_numbered(&app, &wh, 2).await;
    assert_eq!(app.drain(&wh).await, [1, 2]);
    let delivered = |r: Reply| r.body["deliveredLastMinute"].as_i64().unwrap();
    let before = delivered(app.api(Method::GET, &format!("/api/webhooks/{wh}/stats"), None).await);
    let waiter = {
        let app = app.clone_handle();
        let wh = wh.clone();
        tokio::spawn(async move { app.dequeue_with(&wh, "wait=15").await })
    };
    app.until_waiting(&wh, 1).await;
    replay(&app, &wh, json!({"fromSeq": 1, "toSeq": 2, "position": "head"})).await.expect(StatusCode::OK);
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await.expect("woken").unwrap();
    assert_eq!(r.i64("seq"), 1);
    let after = delivered(app.api(Method::GET, &format!("/api/webhooks/{wh}/stats"), None).await);
    assert_eq!(after, before, "a replay takes no delivery back");
}
