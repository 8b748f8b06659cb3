//! The ordered in-flight window (`fifoWindow`): a FIFO webhook leases up to N messages from
//! its head to one consumer under one lock token; they are committed in order, an error or
//! an expiry returns the rest at their positions, and order holds exactly as with one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookline::jobs::{LockReaper, TtlPurger};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::helpers::{delivery, spawn_app, uuid_of, Delivery, TestApp};

/// The messages of a DeliveredBatch answer (200), or none for a 204.
async fn lease(app: &TestApp, wh: &str, max: usize) -> Vec<Delivery> {
    let r = app.dequeue_with(wh, &format!("maxMessages={max}")).await;
    batch(&r.status, &r.body)
}

fn batch(status: &StatusCode, body: &Value) -> Vec<Delivery> {
    match *status {
        StatusCode::NO_CONTENT => Vec::new(),
        StatusCode::OK => body["messages"].as_array().expect("a DeliveredBatch").iter().map(delivery).collect(),
        other => panic!("dequeue answered {other}: {body}"),
    }
}

/// Commits with next=true&maxMessages=3.
async fn commit_leasing(app: &TestApp, wh: &str, d: &Delivery) -> crate::helpers::Reply {
    let path = format!("/api/webhooks/{wh}/messages/{}/commit?next=true&maxMessages=3", d.id);
    app.api(Method::POST, &path, Some(json!({"lockToken": d.lock_token}))).await
}

fn seqs(window: &[Delivery]) -> Vec<i64> {
    window.iter().map(|d| d.seq).collect()
}

async fn locked_count(app: &TestApp, wh: &str) -> i64 {
    let r = app.api(Method::GET, &format!("/api/webhooks/{wh}/stats"), None).await;
    r.expect(StatusCode::OK);
    r.body["locked"].as_i64().expect("locked")
}

#[tokio::test]
async fn a_window_leases_the_head_and_what_follows_under_one_token_and_blocks_everyone_else() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"fifoWindow": 5})).await;
    assert_eq!(app.get_webhook(&wh).await.body["fifoWindow"], 5);
    let ids = app.ingest_many(&wh, 8).await;

    let window = lease(&app, &wh, 3).await;
    assert_eq!(seqs(&window), [1, 2, 3]);
    assert!(window.iter().all(|d| d.lock_token == window[0].lock_token), "one token for the window");
    // Nobody else gets a message of the webhook while the window is out, however they ask.
    app.dequeue_none(&wh).await;
    assert!(lease(&app, &wh, 10).await.is_empty());
    assert_eq!(app.message_status(&wh, &ids[1]).await, "locked");
    assert_eq!(app.message_status(&wh, &ids[3]).await, "queued");
    assert_eq!(locked_count(&app, &wh).await, 3);

    // A window is at most fifoWindow long.
    for d in &window {
        app.commit_ok(&wh, d).await;
    }
    assert_eq!(seqs(&lease(&app, &wh, 100).await), [4, 5, 6, 7, 8]);
}

#[tokio::test]
async fn a_window_is_committed_in_order_and_an_early_commit_is_refused() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"fifoWindow": 4})).await;
    app.ingest_many(&wh, 6).await;
    let window = lease(&app, &wh, 4).await;
    assert_eq!(seqs(&window), [1, 2, 3, 4]);

    let r = app.commit(&wh, &window[1].id, Some(&window[1].lock_token)).await;
    r.expect_error(StatusCode::CONFLICT, "out_of_order");
    assert_eq!(app.message_status(&wh, &window[1].id).await, "locked", "a refused commit changes nothing");
    app.commit_ok(&wh, &window[0]).await;
    app.commit_ok(&wh, &window[1]).await;

    // A batch commit takes its entries in turn: out of order fails alone.
    let entries = |ds: &[&Delivery]| json!({"messages": ds.iter().map(|d| json!({"id": d.id, "lockToken": d.lock_token})).collect::<Vec<_>>()});
    let path = format!("/api/webhooks/{wh}/messages/commit");
    let r = app.api(Method::POST, &path, Some(entries(&[&window[3], &window[2]]))).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["committed"], json!([window[2].id]));
    assert_eq!(r.body["failed"][0]["id"], window[3].id.as_str());
    assert_eq!(r.body["failed"][0]["error"]["code"], "out_of_order");
    let r = app.api(Method::POST, &path, Some(entries(&[&window[3]]))).await;
    assert_eq!(r.body["committed"], json!([window[3].id]), "{}", r.body);
    assert_eq!(seqs(&lease(&app, &wh, 4).await), [5, 6]);
}

#[tokio::test]
async fn an_error_returns_the_message_and_those_after_it_and_counts_only_it() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"fifoWindow": 4})).await;
    let ids = app.ingest_many(&wh, 6).await;
    let window = lease(&app, &wh, 4).await;
    app.commit_ok(&wh, &window[0]).await;

    let r = app.error_ok(&wh, &window[2], "downstream said no").await;
    assert_eq!((r.body["status"].as_str(), r.i64("retryCount")), (Some("queued"), 1));
    // Seq 2 is still leased; 3 and 4 are back at their positions, 4 with no attempt counted.
    assert_eq!(app.message_status(&wh, &ids[1]).await, "locked");
    assert_eq!(app.message_status(&wh, &ids[2]).await, "queued");
    assert_eq!(app.message_status(&wh, &ids[3]).await, "queued");
    assert_eq!(app.message(&wh, &ids[3]).await.i64("retryCount"), 0);
    // Their old lease is gone.
    app.commit(&wh, &window[3].id, Some(&window[3].lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
    app.dequeue_none(&wh).await;

    app.commit_ok(&wh, &window[1]).await;
    let again = lease(&app, &wh, 4).await;
    assert_eq!(seqs(&again), [3, 4, 5, 6]);
    assert_eq!(again.iter().map(|d| d.retry_count).collect::<Vec<_>>(), [1, 0, 0, 0]);

    // An error on the head returns the whole window.
    app.error_ok(&wh, &again[0], "again").await;
    assert_eq!(locked_count(&app, &wh).await, 0);
    let third = lease(&app, &wh, 4).await;
    assert_eq!(third.iter().map(|d| (d.seq, d.retry_count)).collect::<Vec<_>>(), [(3, 2), (4, 0), (5, 0), (6, 0)]);
}

#[tokio::test]
async fn an_expired_window_returns_every_uncommitted_message_and_counts_the_lowest() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"fifoWindow": 3})).await;
    app.ingest_many(&wh, 5).await;
    let window = lease(&app, &wh, 3).await;
    app.commit_ok(&wh, &window[0]).await;
    app.sql(&format!(
        "UPDATE webhooks SET lock_expires_at = now() - interval '1 second' WHERE id = '{}'",
        uuid_of(&wh)
    ))
    .await;

    let again = lease(&app, &wh, 3).await;
    assert_eq!(again.iter().map(|d| (d.seq, d.retry_count)).collect::<Vec<_>>(), [(2, 1), (3, 0), (4, 0)]);
    // The expired lease's token no longer commits anything.
    app.commit(&wh, &window[1].id, Some(&window[1].lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
    assert_ne!(again[0].lock_token, window[0].lock_token);
}

#[tokio::test]
async fn commit_next_on_a_windows_last_message_leases_the_next_window() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"fifoWindow": 3})).await;
    app.ingest_many(&wh, 7).await;
    let window = lease(&app, &wh, 3).await;
    // While the window holds more, nothing is leased: the rest are already the consumer's.
    for d in &window[..2] {
        commit_leasing(&app, &wh, d).await.expect(StatusCode::NO_CONTENT);
    }
    let r = commit_leasing(&app, &wh, &window[2]).await;
    let next = batch(&r.status, &r.body);
    assert_eq!(seqs(&next), [4, 5, 6]);
    assert!(next.iter().all(|d| d.lock_token == next[0].lock_token));
    for d in &next[..2] {
        commit_leasing(&app, &wh, d).await.expect(StatusCode::NO_CONTENT);
    }
    // Without maxMessages, next is one message (a window of one).
    let r = app.commit_next(&wh, &next[2].id, Some(&next[2].lock_token)).await;
    r.expect(StatusCode::OK);
    assert_eq!(Delivery::from_reply(&r).seq, 7);
    assert_eq!(app.stored_where(&wh, "state = 'committed'").await, 6);
}

#[tokio::test]
async fn window_settings_and_options_are_checked() {
    let app = spawn_app().await;
    for bad in [json!(0), json!(101), json!(2.5), json!(true)] {
        let r = app.create_webhook_raw(json!({"name": "w", "fifoWindow": bad})).await;
        assert!(r.status.is_client_error(), "fifoWindow {bad}: {} {}", r.status, r.body);
    }
    let wh = app.create_webhook(json!({})).await;
    assert_eq!(app.get_webhook(&wh).await.body["fifoWindow"], 1);
    app.patch_webhook(&wh, json!({"fifoWindow": 100})).await.expect(StatusCode::OK);
    assert_eq!(app.get_webhook(&wh).await.body["fifoWindow"], 100);
    app.patch_webhook(&wh, json!({"fifoWindow": 0}))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");

    app.ingest_many(&wh, 2).await;
    let d = app.dequeue_ok(&wh).await;
    let path = format!("/api/webhooks/{wh}/messages/{}/commit?maxMessages=2", d.id);
    app.api(Method::POST, &path, None).await.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let path = format!("/api/webhooks/{wh}/messages/{}/commit?next=true&maxMessages=101", d.id);
    app.api(Method::POST, &path, None).await.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(app.message_status(&wh, &d.id).await, "locked", "a refused request changes nothing");
}

#[tokio::test]
async fn an_unreadable_message_ends_the_window_at_itself() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"fifoWindow": 4})).await;
    let ids = app.ingest_many(&wh, 5).await;
    app.corrupt_payload(&wh, 3).await;
    let window = lease(&app, &wh, 4).await;
    assert_eq!(seqs(&window), [1, 2], "what follows the unreadable one is not handed out");
    assert_eq!(app.message_status(&wh, &ids[2]).await, "dead");
    assert_eq!(app.message_status(&wh, &ids[3]).await, "queued");
    assert_eq!(locked_count(&app, &wh).await, 2);
    for d in &window {
        app.commit_ok(&wh, d).await;
    }
    let rest = lease(&app, &wh, 4).await;
    assert_eq!(rest.iter().map(|d| (d.seq, d.retry_count)).collect::<Vec<_>>(), [(4, 0), (5, 0)]);
}

/// Consumers racing for windows: never two windows out at once (a shared flag, set on each
/// lease and cleared before its last commit), leases in seq order one after another, each a
/// run of consecutive seqs, together every message once.
#[tokio::test]
async fn racing_consumers_lease_one_window_at_a_time_in_order() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"fifoWindow": 4})).await;
    app.ingest_many(&wh, 60).await;
    let leases = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut consumers = JoinSet::new();
    for _ in 0..5 {
        let (app, wh) = (app.clone_handle(), wh.clone());
        let (leases, out, committed) = (leases.clone(), out.clone(), committed.clone());
        consumers.spawn(async move {
            while committed.load(Ordering::SeqCst) < 60 && Instant::now() < deadline {
                let window = lease(&app, &wh, 4).await;
                if window.is_empty() {
                    tokio::task::yield_now().await;
                    continue;
                }
                assert!(!out.swap(true, Ordering::SeqCst), "a second window while one is out: {:?}", seqs(&window));
                leases.lock().unwrap().push(seqs(&window));
                for (k, d) in window.iter().enumerate() {
                    if k + 1 == window.len() {
                        out.store(false, Ordering::SeqCst);
                    }
                    app.commit_ok(&wh, d).await;
                }
                committed.fetch_add(window.len(), Ordering::SeqCst);
            }
        });
    }
    while let Some(done) = consumers.join_next().await {
        done.unwrap();
    }
    let leases = leases.lock().unwrap().clone();
    assert!(leases.iter().all(|w| w.windows(2).all(|p| p[1] == p[0] + 1)), "{leases:?}");
    assert_eq!(leases.concat(), (1..=60).collect::<Vec<_>>(), "leased in order, each message once");
    assert_eq!(app.stored_where(&wh, "state = 'committed'").await, 60);
}

/// The lock reaper treats an expired window as dequeue does: the lowest uncommitted message
/// counts the attempt, the rest return uncounted.
#[tokio::test]
async fn the_lock_reaper_returns_an_expired_window_counting_only_its_head() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"fifoWindow": 3})).await;
    app.ingest_many(&wh, 4).await;
    let window = lease(&app, &wh, 3).await;
    app.commit_ok(&wh, &window[0]).await;
    app.sql(&format!(
        "UPDATE webhooks SET lock_expires_at = now() - interval '1 second' WHERE id = '{}'",
        uuid_of(&wh)
    ))
    .await;
    assert_eq!(LockReaper::new(app.pool.clone()).run_once().await.unwrap(), 1);
    assert_eq!(locked_count(&app, &wh).await, 0);
    let retries: Vec<i64> = futures_util::future::join_all(window[1..].iter().map(|d| app.message(&wh, &d.id)))
        .await
        .iter()
        .map(|m| m.i64("retryCount"))
        .collect();
    assert_eq!(retries, [1, 0]);
    assert_eq!(seqs(&lease(&app, &wh, 3).await), [2, 3, 4]);
}

/// A TTL purge of a window's member takes it and what follows out of the window; the
/// messages before it stay with their consumer, and the next window starts after them.
#[tokio::test]
async fn purging_a_window_member_keeps_the_messages_before_it_leased() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"fifoWindow": 4})).await;
    app.ingest_many(&wh, 5).await;
    let window = lease(&app, &wh, 4).await;
    app.sql(&format!(
        "UPDATE messages SET expires_at = now() - interval '1 second' WHERE webhook_id = '{}' AND seq = 3",
        uuid_of(&wh)
    ))
    .await;
    assert_eq!(TtlPurger::new(app.pool.clone()).run_once().await.unwrap(), 1);
    assert_eq!(locked_count(&app, &wh).await, 2, "seqs 1 and 2 stay leased");
    app.dequeue_none(&wh).await;
    app.commit_ok(&wh, &window[0]).await;
    app.commit_ok(&wh, &window[1]).await;
    app.commit(&wh, &window[3].id, Some(&window[3].lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
    assert_eq!(seqs(&lease(&app, &wh, 4).await), [4, 5]);
}
