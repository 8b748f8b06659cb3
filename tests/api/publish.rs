//! Publishing through the API: `POST /api/webhooks/{id}/messages` and `.../messages/batch`.
//! A JSON payload is delivered as JSON text, a base64 payload as its bytes, custom headers
//! come along; a batch of up to 100 is stored in input order, and any bad item (or a batch
//! of none or too many) refuses the whole batch, naming the item, with nothing stored.

use std::collections::HashSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{base64, priority, random_id, refused, spawn_app, spawn_app_with};

fn good_item(i: usize) -> Value {
    json!({"payload": {"i": i}, "priority": 1})
}

#[tokio::test]
async fn a_published_json_payload_is_delivered_as_json_with_its_headers() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let payload = json!({"order": 7, "items": ["a", "b"], "note": "ünïcødé", "nested": {"ok": true}});
    let r = app.publish(&wh, json!({"payload": payload, "headers": {"X-Source": "billing", "x-trace": "abc-1"}})).await;
    r.expect(StatusCode::CREATED);
    assert_eq!(r.body["duplicate"], false, "{}", r.body);
    let id = r.str("id");
    assert!(id.starts_with("msg_"), "{id}");
    assert_eq!(r.i64("seq"), 1);
    assert_eq!(app.message_status(&wh, &id).await, "queued");

    let d = app.dequeue_ok(&wh).await;
    assert_eq!(d.id, id);
    assert_eq!(d.json(), payload);
    assert_eq!(d.raw["contentType"], "application/json", "{}", d.raw);
    assert_eq!(d.raw["headers"]["x-source"], "billing", "{}", d.raw);
    assert_eq!(d.raw["headers"]["x-trace"], "abc-1", "{}", d.raw);
    assert!(d.raw["bodyBase64"].is_null(), "{}", d.raw);
    app.commit_ok(&wh, &d).await;

    // Any JSON value.
    for payload in [json!("hello"), json!(42), json!([1, {"a": null}]), json!(true)] {
        let r = app.publish(&wh, json!({ "payload": payload })).await;
        r.expect(StatusCode::CREATED);
        assert_eq!(r.body["duplicate"], false, "{}", r.body);
        let (id, _) = (r.str("id"), r.i64("seq"));
        let d = app.dequeue_ok(&wh).await;
        assert_eq!(d.id, id);
        assert_eq!(d.json(), payload);
        assert_eq!(d.raw["contentType"], "application/json", "{}", d.raw);
        app.commit_ok(&wh, &d).await;
    }
    // Ingested and published messages share one sequence.
    assert_eq!(app.ingest_ok(&wh, "{}").await.1, 6);
}

#[tokio::test]
async fn a_base64_payload_is_delivered_as_its_bytes() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let binary = [0xffu8, 0x00, 0xfe, 0x80, 0x01];
    let mut ids = Vec::new();
    for body in [
        json!({"payloadBase64": base64(b"plain text")}),
        json!({"payloadBase64": base64(&binary)}),
        json!({"payloadBase64": base64(b"a,b\n1,2\n"), "headers": {"Content-Type": "text/csv"}}),
    ] {
        let r = app.publish(&wh, body).await;
        r.expect(StatusCode::CREATED);
        assert_eq!(r.body["duplicate"], false, "{}", r.body);
        let (id, _) = (r.str("id"), r.i64("seq"));
        ids.push(id);
    }
    let [text, bin, csv]: [String; 3] = ids.try_into().unwrap();

    let d = app.dequeue_ok(&wh).await;
    assert_eq!(d.id, text);
    assert_eq!(d.body.as_deref(), Some("plain text"));
    assert_eq!(d.raw["contentType"], "application/octet-stream", "{}", d.raw);
    app.commit_ok(&wh, &d).await;

    let d = app.dequeue_ok(&wh).await;
    assert_eq!(d.id, bin);
    assert_eq!(d.body, None, "{}", d.raw);
    assert_eq!(d.raw["bodyBase64"], base64(&binary).as_str(), "{}", d.raw);
    assert_eq!(d.raw["contentType"], "application/octet-stream", "{}", d.raw);
    app.commit_ok(&wh, &d).await;

    let d = app.dequeue_ok(&wh).await;
    assert_eq!(d.id, csv);
    assert_eq!(d.body.as_deref(), Some("a,b\n1,2\n"));
    assert_eq!(d.raw["contentType"], "text/csv", "{}", d.raw);
    assert_eq!(d.raw["headers"]["content-type"], "text/csv", "{}", d.raw);
    app.commit_ok(&wh, &d).await;
}

#[tokio::test]
async fn publish_needs_exactly_one_payload_and_fields_in_range() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"ttlDays": 1})).await;
    let cases = [
        json!({}),
        json!({"headers": {"x-a": "b"}}),
        json!({"payload": {"a": 1}, "payloadBase64": "aGk="}),
        json!({"payload": 1, "priority": 3}), // the webhook has no priorities
        json!({"payload": 1, "delaySeconds": 604_801}),
        json!({"payload": 1, "ttlSeconds": 0}),
        json!({"payload": 1, "ttlSeconds": 86_401}), // past the webhook's 1 day
        json!({"payload": 1, "idempotencyKey": ""}),
        json!({"payload": 1, "idempotencyKey": "k".repeat(256)}),
    ];
    for body in cases {
        let r = app.publish(&wh, body.clone()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", r.body);
        assert_eq!(r.error_code(), "validation_failed", "{body}");
    }
    for body in [
        json!({"payload": 1, "delaySeconds": -1}),
        json!({"payload": 1, "ttlSeconds": -5}),
        json!({"payloadBase64": "this is not base64!"}),
    ] {
        refused(&app.publish(&wh, body).await);
    }
    let r = app.send(app.request(Method::POST, &format!("/api/webhooks/{wh}/messages")).body("{")).await;
    r.expect_error(StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(app.stored(&wh).await, 0);
    app.dequeue_none(&wh).await;

    // The edges pass, each as a new message with an id and a seq.
    let week = app.create_webhook(json!({"ttlDays": 30})).await;
    for (hook, body) in [
        (&wh, json!({"payload": 1, "ttlSeconds": 86_400})),
        (&wh, json!({"payload": 1, "ttlSeconds": 1})),
        (&wh, json!({"payload": 1, "delaySeconds": 0})),
        (&wh, json!({"payload": 1, "idempotencyKey": "k".repeat(255)})),
        (&week, json!({"payload": 1, "delaySeconds": 604_800})),
    ] {
        let r = app.publish(hook, body).await;
        r.expect(StatusCode::CREATED);
        assert_eq!(r.body["duplicate"], false, "{}", r.body);
        let _ = (r.str("id"), r.i64("seq"));
    }
    assert_eq!(app.stored(&wh).await, 4);

    app.publish(&random_id("wh_"), json!({"payload": 1})).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    app.publish_batch(&random_id("wh_"), vec![json!({"payload": 1})])
        .await
        .expect_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn a_batch_of_a_hundred_is_stored_and_delivered_in_input_order() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let items: Vec<Value> = (0..100).map(|i| json!({"payload": {"i": i}})).collect();
    let r = app.publish_batch(&wh, items).await;
    r.expect(StatusCode::CREATED);
    let answers = r.body["messages"].as_array().unwrap_or_else(|| panic!("no messages list: {}", r.body)).clone();
    assert_eq!(answers.len(), 100);
    assert!(answers.iter().all(|a| a["duplicate"] == false), "{}", r.body);
    let seqs: Vec<i64> = answers.iter().map(|a| a["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<i64>>());
    let ids: HashSet<&str> = answers.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 100);
    assert_eq!(app.stored(&wh).await, 100);

    for (i, a) in answers.iter().enumerate() {
        let d = app.dequeue_ok(&wh).await;
        assert_eq!(d.id, a["id"].as_str().unwrap());
        assert_eq!(d.json(), json!({ "i": i }));
        app.commit_ok(&wh, &d).await;
    }
    app.dequeue_none(&wh).await;
}

#[tokio::test]
async fn a_batch_of_none_or_of_a_hundred_and_one_stores_nothing() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let too_many: Vec<Value> = (0..101).map(|i| json!({"payload": {"i": i}})).collect();
    app.publish_batch(&wh, too_many).await.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    app.publish_batch(&wh, vec![]).await.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(app.stored(&wh).await, 0);
    app.dequeue_none(&wh).await;
}

#[tokio::test]
async fn one_bad_item_refuses_the_whole_batch_and_is_named() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"priorities": true})).await;
    let cases = [
        (3, json!({"payload": 1, "priority": 11})),
        (0, json!({"payload": 1, "payloadBase64": "aGk="})),
        (4, json!({"payload": 1, "delaySeconds": 604_801})),
        (2, json!({})),
        (1, json!({"payload": 1, "idempotencyKey": ""})),
    ];
    for (bad_at, bad) in cases {
        let mut items: Vec<Value> = (0..5).map(good_item).collect();
        items[bad_at] = bad.clone();
        let r = app.publish_batch(&wh, items).await;
        let message = r.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert!(message.contains(&format!("messages[{bad_at}]")), "{bad}: {message}");
    }
    assert_eq!(app.stored(&wh).await, 0);
    app.dequeue_none(&wh).await;

    // The same batch without the bad item goes through.
    let r = app.publish_batch(&wh, (0..5).map(good_item).collect()).await;
    r.expect(StatusCode::CREATED);
    assert_eq!(r.body["messages"].as_array().unwrap().len(), 5);
    assert_eq!(app.stored(&wh).await, 5);
}

#[tokio::test]
async fn batch_items_carry_their_own_priority_delay_and_headers() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"priorities": true})).await;
    let items = vec![
        json!({"payload": "a", "priority": 1}),
        json!({"payload": "b", "priority": 5}),
        json!({"payloadBase64": base64(b"c"), "priority": 5, "headers": {"X-Kind": "raw"}}),
        json!({"payload": "d", "priority": 9, "delaySeconds": 3600}),
    ];
    let r = app.publish_batch(&wh, items).await;
    r.expect(StatusCode::CREATED);
    let answers = r.body["messages"].as_array().unwrap().clone();
    let seqs: Vec<i64> = answers.iter().map(|a| a["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4], "answers follow the input order");
    let id = |i: usize| answers[i]["id"].as_str().unwrap().to_owned();

    let mut got = Vec::new();
    for _ in 0..3 {
        let d = app.dequeue_ok(&wh).await;
        got.push((d.id.clone(), priority(&d)));
        if d.id == id(2) {
            assert_eq!(d.body.as_deref(), Some("c"));
            assert_eq!(d.raw["headers"]["x-kind"], "raw", "{}", d.raw);
        }
        app.commit_ok(&wh, &d).await;
    }
    assert_eq!(got, [(id(1), 5), (id(2), 5), (id(0), 1)]);
    // The delayed one, though of the highest priority, is not due.
    app.dequeue_none(&wh).await;
    assert_eq!(app.stored(&wh).await, 4);
}

#[tokio::test]
async fn a_waiting_consumer_is_woken_by_a_publish() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let waiting = {
        let (app, wh) = (app.clone_handle(), wh.clone());
        tokio::spawn(async move { app.dequeue_with(&wh, "wait=10").await })
    };
    app.until_waiting(&wh, 1).await;
    let r = app.publish_batch(&wh, vec![json!({"payload": 1}), json!({"payload": 2})]).await;
    r.expect(StatusCode::CREATED);
    let first = r.body["messages"][0]["id"].as_str().unwrap().to_owned();

    let r = waiting.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.str("id"), first);
}

#[tokio::test]
async fn a_delay_as_long_as_the_messages_lifetime_is_refused() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"ttlDays": 1})).await;
    let r = app.publish(&wh, json!({"payload": 1, "delaySeconds": 60, "ttlSeconds": 60})).await;
    let message = r.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert!(message.contains("delaySeconds"), "{message}");
    refused(&app.publish(&wh, json!({"payload": 1, "delaySeconds": 86_400})).await);
    assert_eq!(app.stored(&wh).await, 0);
    app.publish(&wh, json!({"payload": 1, "delaySeconds": 59, "ttlSeconds": 60})).await.expect(StatusCode::CREATED);
}

/// A batch request's body is capped by the per-message limit times the batch size, and by
/// 16 MiB whatever that limit: past either, 413 before the body is parsed, nothing stored.
#[tokio::test]
async fn a_batch_body_past_its_cap_is_413_and_stores_nothing() {
    // 1 KiB messages: a batch request may carry (2 KiB + 4 KiB) x 100 = 614,400 bytes.
    let app = spawn_app_with(|c| c.max_body_bytes = 1024).await;
    let wh = app.create_webhook(json!({})).await;
    let path = format!("/api/webhooks/{wh}/messages/batch");
    let item = json!({"payload": "x".repeat(1000)});
    let full = json!({"messages": vec![item; 100]}).to_string();
    assert!(full.len() < 614_400);
    app.post_raw(&path, "application/json", full.into_bytes()).await.expect(StatusCode::CREATED);
    let padded = format!("{}{}", " ".repeat(614_401), r#"{"messages":[]}"#);
    assert!(padded.len() > 614_400);
    app.post_raw(&path, "application/json", padded.into_bytes())
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // A large per-message limit: the 16 MiB cap still holds.
    let app = spawn_app_with(|c| c.max_body_bytes = 8 * 1024 * 1024).await;
    let wh = app.create_webhook(json!({})).await;
    let huge = format!("{}{}", " ".repeat(16 * 1024 * 1024), r#"{"messages":[{"payload":1}]}"#);
    app.post_raw(&format!("/api/webhooks/{wh}/messages/batch"), "application/json", huge.into_bytes())
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(app.stored(&wh).await, 0);
}
