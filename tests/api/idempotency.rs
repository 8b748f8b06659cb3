//! Idempotency keys (per webhook): a repeated key answers the original message's id (200,
//! `duplicate: true`) and stores nothing new, even when the repeats race. A producer's
//! `idempotencyKey` holds 24 hours; on ingestion nothing is deduplicated unless the webhook
//! sets `dedupKey` (a header or a JSON pointer into the body), for its `dedupWindowSeconds`.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{spawn_app, uuid_of, Reply, TestApp};

async fn ingest_with(app: &TestApp, wh: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    app.ingest_with_headers(wh, headers, body.as_bytes().to_vec()).await
}

#[tokio::test]
async fn publishing_the_same_key_twice_stores_one_message() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let first = app.publish(&wh, json!({"payload": {"v": 1}, "idempotencyKey": "order-1"})).await;
    first.expect(StatusCode::CREATED);
    assert_eq!(first.body["duplicate"], false, "{}", first.body);
    let (id, seq) = (first.str("id"), first.i64("seq"));

    // A different payload under the same key: the original stands.
    let again = app.publish(&wh, json!({"payload": {"v": 2}, "idempotencyKey": "order-1"})).await;
    again.expect(StatusCode::OK);
    assert_eq!(again.body["duplicate"], true, "{}", again.body);
    assert_eq!((again.str("id"), again.i64("seq")), (id.clone(), seq));
    assert_eq!(app.stored(&wh).await, 1);

    // Another key is another message.
    let other = app.publish(&wh, json!({"payload": {"v": 3}, "idempotencyKey": "order-2"})).await;
    other.expect(StatusCode::CREATED);
    assert_eq!(other.body["duplicate"], false);
    assert_ne!(other.str("id"), id);
    assert!(other.i64("seq") > seq);
    // So is a message without a key, each time.
    for _ in 0..2 {
        app.publish(&wh, json!({"payload": {"v": 4}})).await.expect(StatusCode::CREATED);
    }
    assert_eq!(app.stored(&wh).await, 4);

    let d = app.dequeue_ok(&wh).await;
    assert_eq!((d.id.as_str(), d.json()), (id.as_str(), json!({"v": 1})));
    app.commit_ok(&wh, &d).await;
    // Still a duplicate after the original was consumed.
    let late = app.publish(&wh, json!({"payload": {"v": 5}, "idempotencyKey": "order-1"})).await;
    late.expect(StatusCode::OK);
    assert_eq!((late.str("id"), late.body["duplicate"].clone()), (id, json!(true)));
    assert_eq!(app.stored(&wh).await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_publishes_with_one_key_store_one_message() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let mut tasks = Vec::new();
    for n in 0..20 {
        let (app, wh) = (app.clone_handle(), wh.clone());
        tasks.push(tokio::spawn(async move {
            app.publish(&wh, json!({"payload": {"attempt": n}, "idempotencyKey": "exactly-once"})).await
        }));
    }
    let (mut created, mut duplicates) = (0, 0);
    let mut ids = HashSet::new();
    let mut seqs = HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            StatusCode::CREATED => {
                created += 1;
                assert_eq!(r.body["duplicate"], false, "{}", r.body);
            }
            StatusCode::OK => {
                duplicates += 1;
                assert_eq!(r.body["duplicate"], true, "{}", r.body);
            }
            other => panic!("{other}: {}", r.body),
        }
        ids.insert(r.str("id"));
        seqs.insert(r.i64("seq"));
    }
    assert_eq!((created, duplicates), (1, 19));
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(seqs.len(), 1, "{seqs:?}");
    assert_eq!(app.stored(&wh).await, 1);
    let d = app.dequeue_ok(&wh).await;
    assert!(ids.contains(&d.id));
    app.commit_ok(&wh, &d).await;
    app.dequeue_none(&wh).await;
}

#[tokio::test]
async fn keys_are_per_webhook() {
    let app = spawn_app().await;
    let a = app.create_webhook(json!({"dedupKey": "header:Idempotency-Key"})).await;
    let b = app.create_webhook(json!({"dedupKey": "header:Idempotency-Key"})).await;
    let on_a = app.publish(&a, json!({"payload": 1, "idempotencyKey": "shared"})).await;
    let on_b = app.publish(&b, json!({"payload": 1, "idempotencyKey": "shared"})).await;
    on_a.expect(StatusCode::CREATED);
    on_b.expect(StatusCode::CREATED);
    assert_ne!(on_a.str("id"), on_b.str("id"));
    let headers = [("idempotency-key", "shared-ingest")];
    ingest_with(&app, &a, &headers, "{}").await.expect(StatusCode::ACCEPTED);
    ingest_with(&app, &b, &headers, "{}").await.expect(StatusCode::ACCEPTED);
    assert_eq!((app.stored(&a).await, app.stored(&b).await), (2, 2));
}

#[tokio::test]
async fn without_a_dedup_key_every_ingest_is_a_new_message_whatever_its_headers() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    assert!(app.get_webhook(&wh).await.body["dedupKey"].is_null());
    let headers = [("idempotency-key", "evt-1"), ("webhook-id", "evt-1"), ("x-github-delivery", "evt-1")];
    let first = ingest_with(&app, &wh, &headers, r#"{"id": "evt-1"}"#).await;
    let again = ingest_with(&app, &wh, &headers, r#"{"id": "evt-1"}"#).await;
    first.expect(StatusCode::ACCEPTED);
    again.expect(StatusCode::ACCEPTED);
    assert_ne!(first.str("id"), again.str("id"));
    assert_eq!(again.body["duplicate"], false);
    // A key that is no key at all (a space, non-ASCII) is not refused either.
    ingest_with(&app, &wh, &[("idempotency-key", "a b")], "{}").await.expect(StatusCode::ACCEPTED);
    assert_eq!(app.drain(&wh).await, [1, 2, 3]);
}

#[tokio::test]
async fn a_dedup_key_header_deduplicates_ingestion() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"dedupKey": "header:Idempotency-Key"})).await;
    assert_eq!(app.get_webhook(&wh).await.body["dedupKey"], "header:idempotency-key");
    let first = ingest_with(&app, &wh, &[("idempotency-key", "evt-1")], "first").await;
    first.expect(StatusCode::ACCEPTED);
    let again = ingest_with(&app, &wh, &[("idempotency-key", "evt-1")], "second").await;
    again.expect(StatusCode::OK);
    assert_eq!(again.str("id"), first.str("id"));
    let other = ingest_with(&app, &wh, &[("idempotency-key", "evt-2")], "third").await;
    other.expect(StatusCode::ACCEPTED);
    assert_ne!(other.str("id"), first.str("id"));
    assert_eq!(app.stored(&wh).await, 2);

    let d = app.dequeue_ok(&wh).await;
    assert_eq!((d.id.as_str(), d.body.as_deref()), (first.str("id").as_str(), Some("first")));
    app.commit_ok(&wh, &d).await;
    let d = app.dequeue_ok(&wh).await;
    assert_eq!(d.body.as_deref(), Some("third"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ingests_with_one_idempotency_key_store_one_message() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"dedupKey": "header:Idempotency-Key"})).await;
    let mut tasks = Vec::new();
    for n in 0..10 {
        let (app, wh) = (app.clone_handle(), wh.clone());
        tasks.push(tokio::spawn(async move {
            ingest_with(&app, &wh, &[("idempotency-key", "delivery-77")], &n.to_string()).await
        }));
    }
    let mut statuses = Vec::new();
    let mut ids = HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        statuses.push(r.status.as_u16());
        ids.insert(r.str("id"));
    }
    statuses.sort_unstable();
    let mut expected = vec![200; 9];
    expected.push(202);
    assert_eq!(statuses, expected);
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(app.stored(&wh).await, 1);
}

#[tokio::test]
async fn the_webhook_id_header_is_the_key_only_when_the_webhook_says_so() {
    let app = spawn_app().await;
    let plain = app.create_webhook(json!({})).await;
    let r = app.create_webhook_raw(json!({"name": "standard webhooks", "idempotencyFromWebhookId": true})).await;
    r.expect(StatusCode::CREATED);
    assert_eq!(r.body["idempotencyFromWebhookId"], true, "{}", r.body);
    assert_eq!(r.body["dedupKey"], "header:webhook-id", "{}", r.body);
    let keyed = r.str("id");

    // Without the setting, the header is just a header.
    for _ in 0..2 {
        ingest_with(&app, &plain, &[("webhook-id", "evt_1")], "{}").await.expect(StatusCode::ACCEPTED);
    }
    assert_eq!(app.stored(&plain).await, 2);

    let first = ingest_with(&app, &keyed, &[("webhook-id", "evt_1")], "{}").await;
    first.expect(StatusCode::ACCEPTED);
    let again = ingest_with(&app, &keyed, &[("webhook-id", "evt_1")], "{}").await;
    again.expect(StatusCode::OK);
    assert_eq!(again.str("id"), first.str("id"));
    ingest_with(&app, &keyed, &[("webhook-id", "evt_2")], "{}").await.expect(StatusCode::ACCEPTED);
    // No header, no key: each one is stored.
    for _ in 0..2 {
        ingest_with(&app, &keyed, &[], "{}").await.expect(StatusCode::ACCEPTED);
    }
    assert_eq!(app.stored(&keyed).await, 4);

    // Switched on later by patch.
    let r = app.patch_webhook(&plain, json!({"idempotencyFromWebhookId": true})).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["idempotencyFromWebhookId"], true, "{}", r.body);
    let first = ingest_with(&app, &plain, &[("webhook-id", "evt_9")], "{}").await;
    first.expect(StatusCode::ACCEPTED);
    let again = ingest_with(&app, &plain, &[("webhook-id", "evt_9")], "{}").await;
    again.expect(StatusCode::OK);
    assert_eq!(again.str("id"), first.str("id"));
    assert_eq!(app.stored(&plain).await, 3);
}

#[tokio::test]
async fn a_key_repeated_inside_a_batch_answers_the_first_items_message() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let items = vec![
        json!({"payload": "a", "idempotencyKey": "k1"}),
        json!({"payload": "b", "idempotencyKey": "k2"}),
        json!({"payload": "c", "idempotencyKey": "k1"}),
        json!({"payload": "d"}),
    ];
    let r = app.publish_batch(&wh, items).await;
    r.expect(StatusCode::CREATED);
    let m = r.body["messages"].as_array().unwrap().clone();
    assert_eq!(m.len(), 4);
    let dup: Vec<bool> = m.iter().map(|a| a["duplicate"].as_bool().unwrap()).collect();
    assert_eq!(dup, [false, false, true, false]);
    assert_eq!(m[2]["id"], m[0]["id"]);
    assert_eq!(m[2]["seq"], m[0]["seq"]);
    let new_seqs: Vec<i64> = [0, 1, 3].iter().map(|&i| m[i]["seq"].as_i64().unwrap()).collect();
    assert!(new_seqs.windows(2).all(|w| w[0] < w[1]), "{new_seqs:?}");
    let new_ids: HashSet<&str> = [0, 1, 3].iter().map(|&i| m[i]["id"].as_str().unwrap()).collect();
    assert_eq!(new_ids.len(), 3);
    assert_eq!(app.stored(&wh).await, 3);

    // A later batch: a key seen before answers the earlier message.
    let items = vec![json!({"payload": "e", "idempotencyKey": "k3"}), json!({"payload": "f", "idempotencyKey": "k2"})];
    let r = app.publish_batch(&wh, items).await;
    r.expect(StatusCode::CREATED);
    let later = r.body["messages"].as_array().unwrap().clone();
    assert_eq!(later[0]["duplicate"], false);
    assert_eq!((&later[1]["duplicate"], &later[1]["id"]), (&json!(true), &m[1]["id"]));
    assert_eq!(app.stored(&wh).await, 4);

    // And a single publish sees keys that came in a batch.
    let r = app.publish(&wh, json!({"payload": "g", "idempotencyKey": "k1"})).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["id"], m[0]["id"]);
    let bodies: Vec<String> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            let d = app.dequeue_ok(&wh).await;
            out.push(d.json().as_str().unwrap().to_owned());
            app.commit_ok(&wh, &d).await;
        }
        out
    };
    assert_eq!(bodies, ["a", "b", "d", "e"]);
}

#[tokio::test]
async fn a_key_holds_for_24_hours_and_is_free_again_after() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let first = app.publish(&wh, json!({"payload": 1, "idempotencyKey": "daily"})).await;
    first.expect(StatusCode::CREATED);
    app.publish(&wh, json!({"payload": 2, "idempotencyKey": "daily"})).await.expect(StatusCode::OK);

    // First seen 23 hours ago: still inside the window, and the TTL purger keeps it.
    let aged = app
        .sql(&format!(
            "UPDATE idempotency_keys SET created_at = now() - interval '23 hours' WHERE webhook_id = '{}'",
            uuid_of(&wh)
        ))
        .await;
    assert_eq!(aged.rows_affected(), 1);
    hookline::jobs::TtlPurger::new(app.pool.clone()).run_once().await.unwrap();
    let late = app.publish(&wh, json!({"payload": 2, "idempotencyKey": "daily"})).await;
    late.expect(StatusCode::OK);
    assert_eq!((late.body["duplicate"].clone(), late.str("id")), (json!(true), first.str("id")));

    // The key was first seen 25 hours ago (the broker keeps keys in idempotency_keys).
    let aged = app
        .sql(&format!(
            "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE webhook_id = '{}'",
            uuid_of(&wh)
        ))
        .await;
    assert_eq!(aged.rows_affected(), 1);
    let later = app.publish(&wh, json!({"payload": 3, "idempotencyKey": "daily"})).await;
    later.expect(StatusCode::CREATED);
    assert_eq!(later.body["duplicate"], false, "{}", later.body);
    assert_ne!(later.str("id"), first.str("id"));
    // ...and from then on it answers the new message.
    let again = app.publish(&wh, json!({"payload": 4, "idempotencyKey": "daily"})).await;
    again.expect(StatusCode::OK);
    assert_eq!(again.str("id"), later.str("id"));
    assert_eq!(app.stored(&wh).await, 2);
}

#[tokio::test]
async fn a_json_pointer_takes_the_key_from_the_body_as_stripe_sends_it() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"dedupKey": "/id"})).await;
    let event = r#"{"id": "evt_1N2", "type": "invoice.paid"}"#;
    let first = ingest_with(&app, &wh, &[], event).await;
    first.expect(StatusCode::ACCEPTED);
    let again = ingest_with(&app, &wh, &[], event).await;
    again.expect(StatusCode::OK);
    assert_eq!((again.str("id"), again.i64("seq"), &again.body["duplicate"]), (first.str("id"), 1, &json!(true)));
    // Numbers are keys too; a body without the key, or not JSON, is always new.
    ingest_with(&app, &wh, &[], r#"{"id": 7}"#).await.expect(StatusCode::ACCEPTED);
    ingest_with(&app, &wh, &[], r#"{"id": 7}"#).await.expect(StatusCode::OK);
    for body in [r#"{"type": "ping"}"#, r#"{"type": "ping"}"#, "plain text", "plain text"] {
        ingest_with(&app, &wh, &[], body).await.expect(StatusCode::ACCEPTED);
    }
    assert_eq!(app.stored(&wh).await, 6);

    // Switched off by patch: repeats are new messages again.
    let r = app.patch_webhook(&wh, json!({"dedupKey": null})).await;
    r.expect(StatusCode::OK);
    assert!(r.body["dedupKey"].is_null());
    ingest_with(&app, &wh, &[], event).await.expect(StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_repeat_outside_the_window_is_a_new_message() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"dedupKey": "header:X-GitHub-Delivery", "dedupWindowSeconds": 60})).await;
    assert_eq!(app.get_webhook(&wh).await.body["dedupWindowSeconds"], 60);
    let delivery = [("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")];
    let first = ingest_with(&app, &wh, &delivery, "{}").await;
    first.expect(StatusCode::ACCEPTED);
    app.sql(&format!(
        "UPDATE idempotency_keys SET created_at = now() - interval '59 seconds' WHERE webhook_id = '{}'",
        uuid_of(&wh)
    ))
    .await;
    ingest_with(&app, &wh, &delivery, "{}").await.expect(StatusCode::OK);
    app.sql(&format!(
        "UPDATE idempotency_keys SET created_at = now() - interval '61 seconds' WHERE webhook_id = '{}'",
        uuid_of(&wh)
    ))
    .await;
    let later = ingest_with(&app, &wh, &delivery, "{}").await;
    later.expect(StatusCode::ACCEPTED);
    assert_ne!(later.str("id"), first.str("id"));
    // A producer's own key keeps its 24 hours on the same webhook.
    app.publish(&wh, json!({"payload": 1, "idempotencyKey": "job-1"})).await.expect(StatusCode::CREATED);
    app.sql(&format!(
        "UPDATE idempotency_keys SET created_at = now() - interval '2 hours' WHERE key = 'job-1' AND webhook_id = '{}'",
        uuid_of(&wh)
    ))
    .await;
    app.publish(&wh, json!({"payload": 1, "idempotencyKey": "job-1"})).await.expect(StatusCode::OK);
}

#[tokio::test]
async fn dedup_settings_are_checked() {
    let app = spawn_app().await;
    for bad in [
        json!({"dedupKey": "id"}),
        json!({"dedupKey": "header:"}),
        json!({"dedupKey": "header:two words"}),
        json!({"dedupKey": "/a~2"}),
        json!({"dedupKey": "/id", "idempotencyFromWebhookId": true}),
        json!({"dedupKey": "/id", "dedupWindowSeconds": 0}),
        json!({"dedupKey": "/id", "dedupWindowSeconds": 86401}),
    ] {
        let mut body = bad.clone();
        body["name"] = json!("x");
        let r = app.create_webhook_raw(body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {}", r.body);
        r.error_code();
    }
    // The earlier setting's false clears only the key it set.
    let wh = app.create_webhook(json!({"dedupKey": "/id"})).await;
    let r = app.patch_webhook(&wh, json!({"idempotencyFromWebhookId": false})).await;
    assert_eq!(r.body["dedupKey"], "/id");
    let r = app.patch_webhook(&wh, json!({"idempotencyFromWebhookId": true})).await;
    assert_eq!((&r.body["dedupKey"], &r.body["idempotencyFromWebhookId"]), (&json!("header:webhook-id"), &json!(true)));
    let r = app.patch_webhook(&wh, json!({"idempotencyFromWebhookId": false})).await;
    assert!(r.body["dedupKey"].is_null(), "{}", r.body);
}
