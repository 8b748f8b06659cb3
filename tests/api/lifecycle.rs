//! The message life cycle, one transition at a time, through the HTTP API:
//! queued -> locked -> committed | queued (error) | dead; dead -> queued (retry) | gone (discard).

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{base64, random_id, spawn_app};

#[tokio::test]
async fn dequeue_locks_the_head_and_hands_out_its_payload() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let r = app
        .ingest_with_headers(
            &wh,
            &[("content-type", "application/json"), ("x-custom", "custom value"), ("x-multi", "a"), ("x-multi", "b")],
            br#"{"hello":"world"}"#.to_vec(),
        )
        .await;
    r.expect(StatusCode::ACCEPTED);
    let (id, seq) = (r.str("id"), r.i64("seq"));
    assert!(id.starts_with("msg_"), "{id}");
    assert_eq!(seq, 1);
    assert_eq!(app.message_status(&wh, &id).await, "queued");

    let got = app.dequeue(&wh).await;
    got.expect(StatusCode::OK);
    let b = &got.body;
    assert_eq!(b["id"], id.as_str());
    assert_eq!(b["seq"], 1);
    assert_eq!(b["status"], "locked");
    assert!(got.str("lockToken").starts_with("lt_"), "{b}");
    assert!(b["lockExpiresAt"].is_string(), "{b}");
    assert_eq!(b["retryCount"], 0);
    assert_eq!(b["maxRetries"], 10);
    assert!(b["receivedAt"].is_string(), "{b}");
    assert_eq!(b["contentType"], "application/json");
    assert_eq!(b["body"], r#"{"hello":"world"}"#);
    assert!(b.get("bodyBase64").is_none(), "a UTF-8 body also came as base64: {b}");
    assert_eq!(b["headers"]["x-custom"], "custom value");
    assert_eq!(b["headers"]["x-multi"], "a, b");
    assert_eq!(b["headers"]["content-type"], "application/json");
    for hop in ["content-length", "connection", "transfer-encoding"] {
        assert!(b["headers"].get(hop).is_none(), "hop-by-hop header {hop} was kept: {b}");
    }

    // GET shows the lock.
    let m = app.message(&wh, &id).await;
    m.expect(StatusCode::OK);
    assert_eq!(m.body["status"], "locked");
    assert_eq!(m.body["seq"], 1);
    assert_eq!(m.body["retryCount"], 0);
    assert_eq!(m.body["maxRetries"], 10);
    assert_eq!(m.body["lockExpiresAt"], b["lockExpiresAt"]);
    assert_eq!(m.body["receivedAt"], b["receivedAt"]);
    assert!(m.body["lastError"].is_null());
    assert!(m.body["committedAt"].is_null());
    assert!(m.body["deadAt"].is_null());
}

#[tokio::test]
async fn a_non_utf8_body_is_delivered_as_base64() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let bytes = vec![0x00, 0x9f, 0x92, 0x96, 0xff, 0xfe, b'a'];
    let r = app.post_raw(&format!("/ingest/{wh}"), "application/octet-stream", bytes.clone()).await;
    r.expect(StatusCode::ACCEPTED);

    let got = app.dequeue(&wh).await;
    got.expect(StatusCode::OK);
    assert_eq!(got.str("bodyBase64"), base64(&bytes));
    assert!(got.body.get("body").is_none(), "a binary body also came as text: {}", got.body);
    assert_eq!(got.str("contentType"), "application/octet-stream");
}

#[tokio::test]
async fn an_empty_body_is_delivered_as_empty_text() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_ok(&wh, "").await;
    let d = app.dequeue_ok(&wh).await;
    assert_eq!(d.body.as_deref(), Some(""));
}

#[tokio::test]
async fn commit_ends_the_lock_and_a_second_commit_conflicts() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_many(&wh, 1).await;
    let d = app.dequeue_ok(&wh).await;

    let c = app.commit(&wh, &d.id, Some(&d.lock_token)).await;
    c.expect(StatusCode::OK);
    assert_eq!(c.body, json!({"id": d.id, "status": "committed"}));

    let m = app.message(&wh, &d.id).await;
    assert_eq!(m.body["status"], "committed");
    assert!(m.body["committedAt"].is_string(), "{}", m.body);
    assert!(m.body["lockExpiresAt"].is_null(), "{}", m.body);

    // Again, with or without the token, and error after commit: 409, nothing changes.
    app.commit(&wh, &d.id, Some(&d.lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
    app.commit(&wh, &d.id, None).await.expect_error(StatusCode::CONFLICT, "conflict");
    app.error(&wh, &d.id, Some(json!({"lockToken": d.lock_token})))
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
    let after = app.message(&wh, &d.id).await;
    assert_eq!(after.body, m.body, "a refused transition changed the message");
    app.dequeue_none(&wh).await;
}

#[tokio::test]
async fn commit_or_error_of_a_message_never_dequeued_conflicts() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&wh, 2).await;

    let msg = app.commit(&wh, &ids[0], None).await.expect_error(StatusCode::CONFLICT, "conflict");
    assert!(msg.contains("queued"), "{msg}");
    app.error(&wh, &ids[0], Some(json!({"reason": "x"}))).await.expect_error(StatusCode::CONFLICT, "conflict");
    // A message behind a locked head is just as unlocked.
    let head = app.dequeue_ok(&wh).await;
    app.commit(&wh, &ids[1], None).await.expect_error(StatusCode::CONFLICT, "conflict");

    let m = app.message(&wh, &ids[1]).await;
    assert_eq!(m.body["status"], "queued");
    assert_eq!(m.body["retryCount"], 0);
    assert!(m.body["lastError"].is_null());
    app.commit_ok(&wh, &head).await;
    assert_eq!(app.dequeue_ok(&wh).await.id, ids[1]);
}

#[tokio::test]
async fn error_requeues_at_the_same_position_with_one_more_retry() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&wh, 2).await;
    let first = app.dequeue_ok(&wh).await;

    let e = app.error_ok(&wh, &first, "downstream said 503").await;
    assert_eq!(e.body, json!({"id": ids[0], "status": "queued", "retryCount": 1, "maxRetries": 10}));

    let m = app.message(&wh, &ids[0]).await;
    assert_eq!(m.body["status"], "queued");
    assert_eq!(m.body["seq"], 1);
    assert_eq!(m.body["retryCount"], 1);
    assert_eq!(m.body["lastError"], "downstream said 503");
    assert!(m.body["lockExpiresAt"].is_null());

    let again = app.dequeue_ok(&wh).await;
    assert_eq!((again.id.as_str(), again.seq, again.retry_count), (ids[0].as_str(), 1, 1));
    assert_ne!(again.lock_token, first.lock_token, "a new delivery reuses the old lock token");
    assert_eq!(again.body, first.body);
}

#[tokio::test]
async fn errors_up_to_max_retries_make_a_message_dead() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 3})).await;
    let ids = app.ingest_many(&wh, 1).await;

    for attempt in 1..=3 {
        let d = app.dequeue_ok(&wh).await;
        assert_eq!((d.id.as_str(), d.seq, d.retry_count, d.max_retries), (ids[0].as_str(), 1, attempt - 1, 3));
        let e = app.error_ok(&wh, &d, &format!("failure {attempt}")).await;
        let expected = if attempt < 3 { "queued" } else { "dead" };
        assert_eq!(e.body, json!({"id": ids[0], "status": expected, "retryCount": attempt, "maxRetries": 3}));
    }

    let m = app.message(&wh, &ids[0]).await;
    assert_eq!(m.body["status"], "dead");
    assert_eq!(m.body["retryCount"], 3);
    assert_eq!(m.body["lastError"], "failure 3");
    assert!(m.body["deadAt"].is_string(), "{}", m.body);
    app.dequeue_none(&wh).await;

    let dlq = app.dead_letters(&wh, "").await;
    dlq.expect(StatusCode::OK);
    let data = dlq.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{}", dlq.body);
    let dead = &data[0];
    assert_eq!(dead["id"], ids[0].as_str());
    assert_eq!(dead["seq"], 1);
    assert_eq!(dead["lastError"], "failure 3");
    assert_eq!(dead["retryCount"], 3);
    assert_eq!(dead["receivedAt"], m.body["receivedAt"]);
    assert_eq!(dead["deadAt"], m.body["deadAt"]);
    assert!(dlq.body["nextCursor"].is_null(), "{}", dlq.body);
}

#[tokio::test]
async fn a_message_retried_from_the_dlq_starts_over_before_later_messages() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 2})).await;
    let ids = app.ingest_many(&wh, 3).await;
    for _ in 0..2 {
        let d = app.dequeue_ok(&wh).await;
        app.error_ok(&wh, &d, "nope").await;
    }
    assert_eq!(app.message_status(&wh, &ids[0]).await, "dead");
    let second = app.dequeue_ok(&wh).await;
    assert_eq!(second.id, ids[1]);
    app.commit_ok(&wh, &second).await;

    let r = app.retry_dead(&wh, &ids[0]).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body, json!({"id": ids[0], "status": "queued"}));
    let m = app.message(&wh, &ids[0]).await;
    assert_eq!(m.body["status"], "queued");
    assert_eq!(m.body["retryCount"], 0);
    assert_eq!(m.body["seq"], 1);
    assert!(m.body["deadAt"].is_null(), "{}", m.body);
    assert_eq!(app.dead_letters(&wh, "").await.body["data"], json!([]));

    // Delivered before seq 3, with a fresh retry budget.
    let back = app.dequeue_ok(&wh).await;
    assert_eq!((back.id.as_str(), back.seq, back.retry_count), (ids[0].as_str(), 1, 0));
    let e = app.error_ok(&wh, &back, "still failing").await;
    assert_eq!(e.body["status"], "queued");
    assert_eq!(e.body["retryCount"], 1);
    let back = app.dequeue_ok(&wh).await;
    assert_eq!(back.id, ids[0]);
    app.commit_ok(&wh, &back).await;
    assert_eq!(app.drain(&wh).await, vec![3]);
}

#[tokio::test]
async fn discarding_a_dead_message_deletes_it() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 1})).await;
    let ids = app.ingest_many(&wh, 2).await;
    let d = app.dequeue_ok(&wh).await;
    app.error_ok(&wh, &d, "bad").await;

    let r = app.discard_dead(&wh, &ids[0]).await;
    r.expect(StatusCode::NO_CONTENT);
    assert!(r.body.is_null());
    app.message(&wh, &ids[0]).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(app.dead_letters(&wh, "").await.body["data"], json!([]));
    app.discard_dead(&wh, &ids[0]).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    app.retry_dead(&wh, &ids[0]).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        app.sql_i64(&format!("SELECT count(*) FROM messages WHERE id = '{}'", crate::helpers::uuid_of(&ids[0]))).await,
        0
    );
    assert_eq!(app.drain(&wh).await, vec![2]);
}

#[tokio::test]
async fn retry_and_discard_of_a_message_that_is_not_dead_conflict() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&wh, 3).await;
    let first = app.dequeue_ok(&wh).await;
    app.commit_ok(&wh, &first).await;
    let locked = app.dequeue_ok(&wh).await;
    // ids[0] committed, ids[1] locked, ids[2] queued.
    for (id, state) in [(&ids[0], "committed"), (&ids[1], "locked"), (&ids[2], "queued")] {
        let before = app.message(&wh, id).await.body;
        let msg = app.retry_dead(&wh, id).await.expect_error(StatusCode::CONFLICT, "conflict");
        assert!(msg.contains(state), "{msg}");
        app.discard_dead(&wh, id).await.expect_error(StatusCode::CONFLICT, "conflict");
        assert_eq!(app.message(&wh, id).await.body, before, "a refused retry/discard changed {state} message");
    }
    app.commit_ok(&wh, &locked).await;
    assert_eq!(app.drain(&wh).await, vec![3]);
}

#[tokio::test]
async fn a_wrong_lock_token_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&wh, 2).await;
    let d = app.dequeue_ok(&wh).await;
    let before = app.message(&wh, &d.id).await.body;

    let stranger = random_id("lt_");
    app.commit(&wh, &d.id, Some(&stranger)).await.expect_error(StatusCode::CONFLICT, "conflict");
    app.error(&wh, &d.id, Some(json!({"lockToken": stranger, "reason": "x"})))
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
    assert_eq!(app.message(&wh, &d.id).await.body, before);
    app.dequeue_none(&wh).await;

    app.commit_ok(&wh, &d).await;
    assert_eq!(app.dequeue_ok(&wh).await.id, ids[1]);
}

#[tokio::test]
async fn the_token_of_an_earlier_delivery_is_stale() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_many(&wh, 2).await;
    let first = app.dequeue_ok(&wh).await;
    app.error_ok(&wh, &first, "retry me").await;
    let second = app.dequeue_ok(&wh).await;
    assert_eq!(second.id, first.id);
    let before = app.message(&wh, &first.id).await.body;

    let msg = app.commit(&wh, &first.id, Some(&first.lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
    assert!(msg.contains("token"), "{msg}");
    app.error(&wh, &first.id, Some(json!({"lockToken": first.lock_token})))
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
    let after = app.message(&wh, &first.id).await.body;
    assert_eq!(after, before);
    assert_eq!(after["status"], "locked");
    assert_eq!(after["retryCount"], 1);

    app.commit_ok(&wh, &second).await;
    assert_eq!(app.drain(&wh).await, vec![2]);
}

#[tokio::test]
async fn commit_and_error_work_without_a_body() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&wh, 1).await;

    app.dequeue_ok(&wh).await;
    let e = app.error(&wh, &ids[0], None).await;
    e.expect(StatusCode::OK);
    assert_eq!(e.body, json!({"id": ids[0], "status": "queued", "retryCount": 1, "maxRetries": 10}));
    let m = app.message(&wh, &ids[0]).await;
    assert_eq!(m.body["retryCount"], 1);

    app.dequeue_ok(&wh).await;
    let c = app.commit(&wh, &ids[0], None).await;
    c.expect(StatusCode::OK);
    assert_eq!(c.body, json!({"id": ids[0], "status": "committed"}));
    // An empty JSON object is the same as no body.
    let ids = app.ingest_many(&wh, 1).await;
    app.dequeue_ok(&wh).await;
    let path = format!("/api/webhooks/{wh}/messages/{}/commit", ids[0]);
    app.api(reqwest::Method::POST, &path, Some(json!({}))).await.expect(StatusCode::OK);
}

#[tokio::test]
async fn an_error_reason_is_kept_up_to_2000_characters() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&wh, 1).await;
    let d = app.dequeue_ok(&wh).await;
    let long = "é".repeat(2500);
    app.error_ok(&wh, &d, &long).await;
    let m = app.message(&wh, &ids[0]).await;
    assert_eq!(m.str("lastError"), "é".repeat(2000));
}

#[tokio::test]
async fn the_dead_letter_list_pages_in_queue_order() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 1})).await;
    let ids = app.ingest_many(&wh, 6).await;
    // Kill 1, 2, 4, 5, 6; commit 3.
    for seq in 1..=6 {
        let d = app.dequeue_ok(&wh).await;
        assert_eq!(d.seq, seq);
        if seq == 3 {
            app.commit_ok(&wh, &d).await;
        } else {
            assert_eq!(app.error_ok(&wh, &d, &format!("e{seq}")).await.body["status"], "dead");
        }
    }
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    let mut pages = Vec::new();
    loop {
        let page = app.dead_letters(&wh, &query).await;
        page.expect(StatusCode::OK);
        let data = page.body["data"].as_array().unwrap().clone();
        pages.push(data.len());
        for d in &data {
            seen.push((d["seq"].as_i64().unwrap(), d["id"].as_str().unwrap().to_owned(), d["lastError"].clone()));
        }
        match page.opt_str("nextCursor") {
            Some(c) => query = format!("?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, vec![2, 2, 1]);
    let expected: Vec<_> =
        [1usize, 2, 4, 5, 6].iter().map(|&s| (s as i64, ids[s - 1].clone(), json!(format!("e{s}")))).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn get_message_reports_state_counters_and_last_error_through_the_cycle() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"maxRetries": 2})).await;
    let ids = app.ingest_many(&wh, 1).await;
    let id = &ids[0];
    let states = |m: &serde_json::Value| {
        (m["status"].as_str().unwrap().to_owned(), m["retryCount"].as_i64().unwrap(), m["lastError"].clone())
    };

    assert_eq!(states(&app.message(&wh, id).await.body), ("queued".into(), 0, json!(null)));
    let d = app.dequeue_ok(&wh).await;
    assert_eq!(states(&app.message(&wh, id).await.body), ("locked".into(), 0, json!(null)));
    app.error_ok(&wh, &d, "one").await;
    assert_eq!(states(&app.message(&wh, id).await.body), ("queued".into(), 1, json!("one")));
    let d = app.dequeue_ok(&wh).await;
    assert_eq!(states(&app.message(&wh, id).await.body), ("locked".into(), 1, json!("one")));
    app.error_ok(&wh, &d, "two").await;
    assert_eq!(states(&app.message(&wh, id).await.body), ("dead".into(), 2, json!("two")));
    app.retry_dead(&wh, id).await.expect(StatusCode::OK);
    assert_eq!(states(&app.message(&wh, id).await.body), ("queued".into(), 0, json!("two")));
    let d = app.dequeue_ok(&wh).await;
    app.commit_ok(&wh, &d).await;
    let m = app.message(&wh, id).await.body;
    assert_eq!(m["status"], "committed");
    assert_eq!(m["maxRetries"], 2);
    assert!(m["committedAt"].is_string() && m["deadAt"].is_null() && m["lockExpiresAt"].is_null(), "{m}");
}
