//! Strict FIFO: at most one message of a webhook is locked; while it is, nothing else is
//! delivered. Errored and redriven messages go back to their position; dead ones do not block.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_locked_head_blocks_the_queue_until_it_is_committed() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&wh, 6).await;

    let first = app.dequeue_ok(&wh).await;
    assert_eq!((first.id.as_str(), first.seq), (ids[0].as_str(), 1));
    for _ in 0..5 {
        app.dequeue_none(&wh).await;
    }
    for id in &ids[1..] {
        assert_eq!(app.message_status(&wh, id).await, "queued");
    }
    app.commit_ok(&wh, &first).await;

    let second = app.dequeue_ok(&wh).await;
    assert_eq!((second.id.as_str(), second.seq), (ids[1].as_str(), 2));
    app.dequeue_none(&wh).await;
    app.commit_ok(&wh, &second).await;
    assert_eq!(app.drain(&wh).await, vec![3, 4, 5, 6]);
}

#[tokio::test]
async fn an_errored_head_is_delivered_again_before_every_later_message() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&wh, 6).await;

    for attempt in 0..3 {
        let d = app.dequeue_ok(&wh).await;
        assert_eq!((d.id.as_str(), d.seq, d.retry_count), (ids[0].as_str(), 1, attempt));
        app.dequeue_none(&wh).await;
        app.error_ok(&wh, &d, "try again").await;
    }
    let d = app.dequeue_ok(&wh).await;
    assert_eq!((d.seq, d.retry_count), (1, 3));
    app.commit_ok(&wh, &d).await;

    // An error in the middle of the queue: seq 3 goes again before 4.
    let two = app.dequeue_ok(&wh).await;
    app.commit_ok(&wh, &two).await;
    let three = app.dequeue_ok(&wh).await;
    assert_eq!(three.seq, 3);
    app.error_ok(&wh, &three, "once more").await;
    assert_eq!(app.drain(&wh).await, vec![3, 4, 5, 6]);
}

#[tokio::test]
async fn an_expired_lock_releases_the_head_as_a_failed_attempt() {
    let app = spawn_app().await;
    // Two queues, one sleep: on `retried` the expired head comes back; on `killed` (one
    // attempt allowed) it goes dead and the next message is delivered in the same call.
    let retried = app.create_webhook(json!({"lockTimeoutSeconds": 1})).await;
    let killed = app.create_webhook(json!({"lockTimeoutSeconds": 1, "maxRetries": 1})).await;
    let retried_ids = app.ingest_many(&retried, 3).await;
    let killed_ids = app.ingest_many(&killed, 3).await;
    let lost = app.dequeue_ok(&retried).await;
    let lost_too = app.dequeue_ok(&killed).await;
    assert_eq!((lost.seq, lost_too.seq), (1, 1));

    tokio::time::sleep(Duration::from_millis(1200)).await;

    let again = app.dequeue_ok(&retried).await;
    assert_eq!((again.id.as_str(), again.seq, again.retry_count), (retried_ids[0].as_str(), 1, 1));
    assert_ne!(again.lock_token, lost.lock_token);
    let m = app.message(&retried, &again.id).await;
    assert_eq!(m.body["status"], "locked");
    assert_eq!(m.body["retryCount"], 1);
    assert_eq!(m.body["lastError"], "lock expired");
    // The consumer that lost the lock cannot commit or error any more.
    app.commit(&retried, &lost.id, Some(&lost.lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
    app.error(&retried, &lost.id, Some(json!({"lockToken": lost.lock_token})))
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
    app.commit_ok(&retried, &again).await;
    assert_eq!(app.dequeue_ok(&retried).await.id, retried_ids[1]);

    let next = app.dequeue_ok(&killed).await;
    assert_eq!((next.id.as_str(), next.seq), (killed_ids[1].as_str(), 2));
    let dead = app.message(&killed, &killed_ids[0]).await;
    assert_eq!(dead.body["status"], "dead");
    assert_eq!(dead.body["retryCount"], 1);
    assert_eq!(dead.body["lastError"], "lock expired");
    let dlq = app.dead_letters(&killed, "").await;
    assert_eq!(dlq.body["data"][0]["id"], killed_ids[0].as_str());
    app.commit(&killed, &lost_too.id, Some(&lost_too.lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
}

#[tokio::test]
async fn a_dead_message_does_not_block_the_queue() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 1})).await;
    let ids = app.ingest_many(&wh, 6).await;

    let first = app.dequeue_ok(&wh).await;
    assert_eq!(app.error_ok(&wh, &first, "fatal").await.body["status"], "dead");
    let next = app.dequeue_ok(&wh).await;
    assert_eq!((next.id.as_str(), next.seq), (ids[1].as_str(), 2));
    app.commit_ok(&wh, &next).await;
    // Two dead in a row in the middle.
    for seq in [3, 4] {
        let d = app.dequeue_ok(&wh).await;
        assert_eq!(d.seq, seq);
        app.error_ok(&wh, &d, "fatal").await;
    }
    assert_eq!(app.drain(&wh).await, vec![5, 6]);
    assert_eq!(app.dead_letters(&wh, "").await.body["data"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_message_retried_from_the_dlq_is_delivered_before_later_queued_ones() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 1})).await;
    let ids = app.ingest_many(&wh, 6).await;
    let first = app.dequeue_ok(&wh).await;
    app.error_ok(&wh, &first, "fatal").await;
    let second = app.dequeue_ok(&wh).await;
    app.commit_ok(&wh, &second).await;

    // Redriven while 3..6 wait: 1 goes first.
    app.retry_dead(&wh, &ids[0]).await.expect(StatusCode::OK);
    let back = app.dequeue_ok(&wh).await;
    assert_eq!((back.id.as_str(), back.seq, back.retry_count), (ids[0].as_str(), 1, 0));
    app.commit_ok(&wh, &back).await;

    // Redriven while a later message holds the lock: it waits for that lock, then goes
    // before everything still queued.
    let third = app.dequeue_ok(&wh).await;
    assert_eq!(third.seq, 3);
    app.error_ok(&wh, &third, "fatal").await;
    let fourth = app.dequeue_ok(&wh).await;
    assert_eq!(fourth.seq, 4);
    app.retry_dead(&wh, &ids[2]).await.expect(StatusCode::OK);
    app.dequeue_none(&wh).await;
    app.commit_ok(&wh, &fourth).await;
    assert_eq!(app.drain(&wh).await, vec![3, 5, 6]);
}

#[tokio::test]
async fn queues_of_different_webhooks_do_not_block_each_other() {
    let app = spawn_app().await;
    let a = app.create_webhook(json!({})).await;
    let b = app.create_webhook(json!({})).await;
    app.ingest_many(&a, 2).await;
    app.ingest_many(&b, 2).await;
    let held = app.dequeue_ok(&a).await;
    app.dequeue_none(&a).await;
    assert_eq!(app.drain(&b).await, vec![1, 2]);
    app.commit_ok(&a, &held).await;
    assert_eq!(app.drain(&a).await, vec![2]);
    // A message id of one webhook is unknown under the other.
    app.commit(&b, &held.id, None).await.expect_error(StatusCode::NOT_FOUND, "not_found");
}
