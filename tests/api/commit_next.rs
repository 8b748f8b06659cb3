//! POST .../commit?next=true: commit the locked message and lock the next one in one call.
//! The same rules as a commit followed by a dequeue, in one transaction.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{random_id, spawn_app, Delivery};

#[tokio::test]
async fn commit_next_commits_and_hands_out_the_next_message() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&wh, 3).await;
    let first = app.dequeue_ok(&wh).await;

    let r = app.commit_next(&wh, &first.id, Some(&first.lock_token)).await;
    r.expect(StatusCode::OK);
    let second = Delivery::from_reply(&r);
    assert_eq!((second.id.as_str(), second.seq, second.retry_count), (ids[1].as_str(), 2, 0));
    assert_eq!(r.body["status"], "locked");
    assert_eq!(second.json(), json!({"n": 2}));
    assert!(r.body["lockExpiresAt"].is_string() && r.body["headers"].is_object(), "{}", r.body);
    assert_ne!(second.lock_token, first.lock_token);
    assert_eq!(app.message_status(&wh, &ids[0]).await, "committed");
    assert_eq!(app.message_status(&wh, &ids[1]).await, "locked");
    app.dequeue_none(&wh).await;

    // Token optional, like a plain commit.
    let r = app.commit_next(&wh, &second.id, None).await;
    r.expect(StatusCode::OK);
    let third = Delivery::from_reply(&r);
    assert_eq!(third.seq, 3);

    // The last one: committed, and nothing to hand out.
    let r = app.commit_next(&wh, &third.id, Some(&third.lock_token)).await;
    r.expect(StatusCode::NO_CONTENT);
    assert!(r.body.is_null());
    assert_eq!(app.message_status(&wh, &ids[2]).await, "committed");
    app.dequeue_none(&wh).await;
}

#[tokio::test]
async fn commit_next_false_is_a_plain_commit_and_bad_values_are_400() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_many(&wh, 2).await;
    let d = app.dequeue_ok(&wh).await;
    for q in ["?next=maybe", "?next=1", "?then=true"] {
        let path = format!("/api/webhooks/{wh}/messages/{}/commit{q}", d.id);
        app.api(Method::POST, &path, None).await.expect_error(StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_eq!(app.message_status(&wh, &d.id).await, "locked");
    let path = format!("/api/webhooks/{wh}/messages/{}/commit?next=false", d.id);
    let r = app.api(Method::POST, &path, Some(json!({"lockToken": d.lock_token}))).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body, json!({"id": d.id, "status": "committed"}));
    // Nothing was locked by it.
    assert_eq!(app.dequeue_ok(&wh).await.seq, 2);
}

#[tokio::test]
async fn a_refused_commit_next_changes_nothing() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&wh, 3).await;

    // Not locked (never dequeued).
    app.commit_next(&wh, &ids[0], None).await.expect_error(StatusCode::CONFLICT, "conflict");
    let d = app.dequeue_ok(&wh).await;
    let before = app.message(&wh, &d.id).await.body;
    // A wrong token, and another message than the locked one.
    app.commit_next(&wh, &d.id, Some(&random_id("lt_"))).await.expect_error(StatusCode::CONFLICT, "conflict");
    app.commit_next(&wh, &ids[1], Some(&d.lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
    // Unknown ids.
    app.commit_next(&wh, &random_id("msg_"), None).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    app.commit_next(&random_id("wh_"), &d.id, None).await.expect_error(StatusCode::NOT_FOUND, "not_found");

    assert_eq!(app.message(&wh, &d.id).await.body, before);
    assert_eq!(app.message_status(&wh, &ids[1]).await, "queued");
    app.dequeue_none(&wh).await;
    // After a commit, committing again with next=true is refused and locks nothing.
    app.commit_ok(&wh, &d).await;
    app.commit_next(&wh, &d.id, Some(&d.lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
    assert_eq!(app.message_status(&wh, &ids[1]).await, "queued");
    assert_eq!(app.drain(&wh).await, vec![2, 3]);
}

#[tokio::test]
async fn commit_next_hands_out_an_errored_or_redriven_message_at_its_position() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 1})).await;
    let ids = app.ingest_many(&wh, 4).await;
    let first = app.dequeue_ok(&wh).await;
    app.error_ok(&wh, &first, "fatal").await;
    let second = app.dequeue_ok(&wh).await;
    assert_eq!(second.seq, 2);
    // 1 is redriven while 2 holds the lock: committing 2 hands out 1, before 3.
    app.retry_dead(&wh, &ids[0]).await.expect(StatusCode::OK);
    let r = app.commit_next(&wh, &second.id, Some(&second.lock_token)).await;
    r.expect(StatusCode::OK);
    let back = Delivery::from_reply(&r);
    assert_eq!((back.id.as_str(), back.seq, back.retry_count), (ids[0].as_str(), 1, 0));
    let r = app.commit_next(&wh, &back.id, Some(&back.lock_token)).await;
    assert_eq!(Delivery::from_reply(&r).seq, 3);
}

#[tokio::test]
async fn commit_next_skips_a_dead_message() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 1})).await;
    app.ingest_many(&wh, 4).await;
    let one = app.dequeue_ok(&wh).await;
    app.commit_ok(&wh, &one).await;
    let two = app.dequeue_ok(&wh).await;
    app.error_ok(&wh, &two, "fatal").await;
    let three = app.dequeue_ok(&wh).await;
    let r = app.commit_next(&wh, &three.id, Some(&three.lock_token)).await;
    assert_eq!(Delivery::from_reply(&r).seq, 4);
}

#[tokio::test]
async fn commit_next_onto_an_unreadable_message_keeps_the_commit_and_buries_the_next() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&wh, 3).await;
    app.corrupt_payload(&wh, 2).await;
    let first = app.dequeue_ok(&wh).await;

    let r = app.commit_next(&wh, &first.id, Some(&first.lock_token)).await;
    assert!(r.status.is_success(), "the commit must stand: {} {}", r.status, r.body);
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(app.message_status(&wh, &ids[0]).await, "committed");
    let dead = app.message(&wh, &ids[1]).await;
    assert_eq!(dead.body["status"], "dead");
    assert!(dead.str("lastError").contains("unreadable"), "{}", dead.body);
    let third = app.dequeue_ok(&wh).await;
    assert_eq!((third.id.as_str(), third.seq), (ids[2].as_str(), 3));
}
