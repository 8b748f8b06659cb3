//! Payloads at rest: sealed with AES-256-GCM, bound to their message, readable with an old
//! key after rotation; a row that does not open is dead-lettered instead of blocking.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_on, spawn_app_with, uuid_of, TestApp};

const MARKER: &str = "PLAINTEXT-MARKER-4b1d9e";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Ingests a message whose body and a custom header carry the marker.
async fn ingest_marked(app: &TestApp, wh: &str, n: u32) -> String {
    let body = json!({"secret": format!("{MARKER}-body-{n}")}).to_string().into_bytes();
    let header = format!("{MARKER}-header-{n}");
    let r = app.ingest_with_headers(wh, &[("content-type", "application/json"), ("x-secret", &header)], body).await;
    r.expect(StatusCode::ACCEPTED);
    r.str("id")
}

#[tokio::test]
async fn payloads_and_headers_never_reach_the_database_in_clear() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    for n in 0..3 {
        ingest_marked(&app, &wh, n).await;
    }
    // Identical payloads still seal differently (a fresh nonce each).
    app.ingest_ok(&wh, "same").await;
    app.ingest_ok(&wh, "same").await;

    let rows: Vec<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT ciphertext, nonce FROM messages ORDER BY seq").fetch_all(&app.pool).await.unwrap();
    assert_eq!(rows.len(), 5);
    for (ciphertext, nonce) in &rows {
        assert_eq!(nonce.len(), 12);
        assert!(!contains(ciphertext, MARKER.as_bytes()), "the marker is in a ciphertext");
        assert!(!contains(ciphertext, b"x-secret"), "a header name is in a ciphertext");
        assert!(!contains(nonce, MARKER.as_bytes()));
    }
    assert_ne!(rows[3].0, rows[4].0, "two messages with the same payload have the same ciphertext");
    assert_ne!(rows[3].1, rows[4].1, "a nonce was reused");
    let escaped = app.sql_strings("SELECT encode(ciphertext, 'escape') FROM messages").await;
    assert!(escaped.iter().all(|c| !c.contains(MARKER)));
    // Nowhere else in the row either.
    let whole_rows = app.sql_strings("SELECT m::text FROM messages m").await;
    assert_eq!(whole_rows.len(), 5);
    assert!(whole_rows.iter().all(|r| !r.contains(MARKER) && !r.contains("x-secret")));

    // ...and the consumer gets it all back.
    let d = app.dequeue_ok(&wh).await;
    assert_eq!(d.json()["secret"], format!("{MARKER}-body-0"));
    assert_eq!(d.raw["headers"]["x-secret"], format!("{MARKER}-header-0"));
}

/// Dequeue of an unreadable head: 500 payload_unreadable naming it; it is then dead.
async fn assert_unreadable(app: &TestApp, wh: &str, id: &str) {
    let r = app.dequeue(wh).await;
    let msg = r.expect_error(StatusCode::INTERNAL_SERVER_ERROR, "payload_unreadable");
    assert!(msg.contains(id), "the error does not name {id}: {msg}");
    let m = app.message(wh, id).await;
    assert_eq!(m.body["status"], "dead", "{}", m.body);
    assert!(m.body["deadAt"].is_string(), "{}", m.body);
    let last_error = m.str("lastError");
    assert!(last_error.contains("unreadable"), "{last_error}");
}

#[tokio::test]
async fn a_tampered_row_is_dead_lettered_and_the_next_message_is_delivered() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(ingest_marked(&app, &wh, n).await);
    }
    let row = |seq: i64| format!("webhook_id = '{}' AND seq = {seq}", uuid_of(&wh));
    // 1: one ciphertext bit flipped.
    app.sql(&format!(
        "UPDATE messages SET ciphertext = set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 1) WHERE {}",
        row(1)
    ))
    .await;
    // 2: the last byte (inside the authentication tag) flipped.
    app.sql(&format!(
        "UPDATE messages SET ciphertext = set_byte(ciphertext, length(ciphertext) - 1,
                                                   get_byte(ciphertext, length(ciphertext) - 1) # 128)
         WHERE {}",
        row(2)
    ))
    .await;
    // 3: another message's sealed payload (nonce and ciphertext) copied onto it.
    app.sql(&format!(
        "UPDATE messages m SET nonce = o.nonce, ciphertext = o.ciphertext FROM messages o
         WHERE m.webhook_id = '{}' AND m.seq = 3 AND o.webhook_id = m.webhook_id AND o.seq = 6",
        uuid_of(&wh)
    ))
    .await;
    // 4: another message's nonce alone. (A key id the broker does not have is not tampering
    // but a key it lacks: see an_old_key_still_opens_messages_after_rotation.)
    app.sql(&format!(
        "UPDATE messages m SET nonce = o.nonce FROM messages o
         WHERE m.webhook_id = '{}' AND m.seq = 4 AND o.webhook_id = m.webhook_id AND o.seq = 6",
        uuid_of(&wh)
    ))
    .await;
    // 5: a truncated nonce.
    app.sql(&format!("UPDATE messages SET nonce = substring(nonce from 1 for 8) WHERE {}", row(5))).await;

    for id in &ids[..5] {
        assert_unreadable(&app, &wh, id).await;
    }
    // Seq 6 was the source of the copy: it still opens, under its own id only.
    let d = app.dequeue_ok(&wh).await;
    assert_eq!((d.id.as_str(), d.seq), (ids[5].as_str(), 6));
    assert_eq!(d.json()["secret"], format!("{MARKER}-body-5"));
    assert_eq!(d.raw["headers"]["x-secret"], format!("{MARKER}-header-5"));
    app.commit_ok(&wh, &d).await;

    let dlq = app.dead_letters(&wh, "").await;
    let dead: Vec<_> =
        dlq.body["data"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(dead, ids[..5]);
    app.dequeue_none(&wh).await;
}

#[tokio::test]
async fn a_sealed_payload_copied_across_webhooks_does_not_open() {
    let app = spawn_app().await;
    let a = app.create_webhook(json!({})).await;
    let b = app.create_webhook(json!({})).await;
    ingest_marked(&app, &a, 1).await;
    let victim = ingest_marked(&app, &b, 2).await;
    app.ingest_ok(&b, "after").await;
    app.sql(&format!(
        "UPDATE messages m SET nonce = o.nonce, ciphertext = o.ciphertext, key_id = o.key_id FROM messages o
         WHERE m.webhook_id = '{}' AND m.seq = 1 AND o.webhook_id = '{}' AND o.seq = 1",
        uuid_of(&b),
        uuid_of(&a)
    ))
    .await;
    assert_unreadable(&app, &b, &victim).await;
    assert_eq!(app.dequeue_ok(&b).await.body.as_deref(), Some("after"));
    // The original still opens where it belongs.
    assert_eq!(app.dequeue_ok(&a).await.json()["secret"], format!("{MARKER}-body-1"));
}

#[tokio::test]
async fn an_old_key_still_opens_messages_after_rotation() {
    let old = spawn_app_with(|_| {}).await;
    let wh = old.create_webhook(json!({})).await;
    let sealed_with_old = ingest_marked(&old, &wh, 1).await;
    ingest_marked(&old, &wh, 2).await;

    // The same database, restarted with a new key and the old one as an old key.
    let old_key = old.encryption_key.clone();
    let rotated = spawn_app_on(&old.db_url, |c| c.encryption_old_keys = vec![old_key.into()]).await;
    assert_ne!(rotated.encryption_key, old.encryption_key);
    ingest_marked(&rotated, &wh, 3).await;
    assert_eq!(rotated.sql_i64("SELECT count(DISTINCT key_id) FROM messages").await, 2, "new messages use the new key");

    let d = rotated.dequeue_ok(&wh).await;
    assert_eq!((d.id.as_str(), d.seq), (sealed_with_old.as_str(), 1));
    assert_eq!(d.json()["secret"], format!("{MARKER}-body-1"));
    assert_eq!(d.raw["headers"]["x-secret"], format!("{MARKER}-header-1"));
    rotated.commit_ok(&wh, &d).await;

    // A broker missing the old key (a rolling restart) cannot open seq 2: it answers 503
    // key_unavailable and releases the lock without counting an attempt, every time, so
    // seq 3 never overtakes it and nothing is dead-lettered.
    let forgetful = spawn_app_on(&old.db_url, |c| c.encryption_key = Some(rotated.encryption_key.clone().into())).await;
    for _ in 0..3 {
        let r = forgetful.dequeue(&wh).await;
        let msg = r.expect_error(StatusCode::SERVICE_UNAVAILABLE, "key_unavailable");
        assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
        assert!(msg.contains("HOOKLINE_ENCRYPTION_OLD_KEYS"), "{msg}");
    }
    assert_eq!(forgetful.dead_letters(&wh, "").await.body["data"], json!([]), "nothing dead-lettered");

    // A broker with the key delivers it next, in order, with no attempt counted.
    let two = rotated.dequeue_ok(&wh).await;
    assert_eq!((two.seq, two.retry_count), (2, 0));
    assert_eq!(two.json()["secret"], format!("{MARKER}-body-2"));
    rotated.commit_ok(&wh, &two).await;
    // The new key's message is readable by the forgetful broker.
    let three = forgetful.dequeue_ok(&wh).await;
    assert_eq!(three.json()["secret"], format!("{MARKER}-body-3"));
    forgetful.commit_ok(&wh, &three).await;
    assert_eq!(rotated.drain(&wh).await, Vec::<i64>::new());
}

/// Standard mode: a broker missing a message's key releases it for 5 s (no attempt
/// counted), so it does not hand the same message back to itself at once and a replica that
/// has the key gets it first; the rest of the queue goes on meanwhile.
#[tokio::test]
async fn a_standard_message_sealed_with_a_missing_key_waits_for_a_replica_that_has_it() {
    let old = spawn_app_with(|_| {}).await;
    let wh = old.create_webhook(json!({"mode": "standard"})).await;
    let sealed_with_old = ingest_marked(&old, &wh, 1).await;
    let forgetful = spawn_app_on(&old.db_url, |_| {}).await;
    let fresh = ingest_marked(&forgetful, &wh, 2).await;

    let r = forgetful.dequeue_with(&wh, "maxMessages=10").await;
    r.expect(StatusCode::OK);
    let got: Vec<&str> = r.body["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(got, [fresh.as_str()], "the readable one is delivered, the other left out");
    let m = forgetful.message(&wh, &sealed_with_old).await;
    assert_eq!((m.str("status").as_str(), m.i64("retryCount")), ("queued", 0));
    assert!(m.body["deliverAt"].is_string(), "released with a 5 s pause: {}", m.body);
    forgetful.dequeue_none(&wh).await;
    // The replica with the key gets it once the pause is over.
    old.sql(&format!(
        "UPDATE messages SET deliver_at = now() - interval '1 second' WHERE id = '{}'",
        uuid_of(&sealed_with_old)
    ))
    .await;
    let d = old.dequeue_ok(&wh).await;
    assert_eq!((d.id.as_str(), d.retry_count), (sealed_with_old.as_str(), 0));
}

/// A batch dequeue (standard mode) that meets an unreadable message dead-letters it and
/// hands out the readable ones it locked: nothing is lost, nothing stays locked.
#[tokio::test]
async fn an_unreadable_message_inside_a_batch_dequeue_is_dead_lettered_and_the_rest_delivered() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"mode": "standard"})).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(ingest_marked(&app, &wh, n).await);
    }
    app.corrupt_payload(&wh, 2).await;

    let r = app.dequeue_with(&wh, "maxMessages=10").await;
    r.expect(StatusCode::OK);
    let got: Vec<_> =
        r.body["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got, [ids[0].clone(), ids[2].clone()]);
    let m = app.message(&wh, &ids[1]).await;
    assert_eq!(m.body["status"], "dead", "{}", m.body);
    assert!(m.str("lastError").contains("unreadable"), "{}", m.body);
    assert_eq!(app.dead_letters(&wh, "").await.body["data"][0]["id"], ids[1].as_str());
    for id in [&ids[0], &ids[2]] {
        assert_eq!(app.message(&wh, id).await.body["status"], "locked");
    }
}
