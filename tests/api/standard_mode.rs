//! Standard mode (`mode: "standard"`, chosen at creation): many messages of one webhook in
//! flight at once, each under its own lock token, never the same one to two consumers while
//! it is locked, handed out in priority-then-seq order. `maxMessages` makes a dequeue answer
//! a list (fifo still hands out one); `visibilityTimeout` sets how long its locks last.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{delivery, join_within, priority, spawn_app, time, Delivery, Reply, TestApp};

/// The deliveries of a dequeue answered with a list (`maxMessages`); none on 204.
fn deliveries(r: &Reply) -> Vec<Delivery> {
    if r.status == StatusCode::NO_CONTENT {
        assert!(r.body.is_null(), "a 204 with a body: {}", r.body);
        return Vec::new();
    }
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let list = r.body["messages"].as_array().unwrap_or_else(|| panic!("no messages list: {}", r.body));
    assert!(!list.is_empty(), "a 200 with no message in it: {}", r.body);
    list.iter().map(delivery).collect()
}

async fn dequeue_list(app: &TestApp, wh: &str, query: &str) -> Vec<Delivery> {
    deliveries(&app.dequeue_with(wh, query).await)
}

/// Publishes a batch and asserts 201 with fresh messages; returns (id, seq) in input order.
async fn publish_batch_ok(app: &TestApp, wh: &str, items: Vec<Value>) -> Vec<(String, i64)> {
    let n = items.len();
    let r = app.publish_batch(wh, items).await;
    r.expect(StatusCode::CREATED);
    let answers = r.body["messages"].as_array().unwrap_or_else(|| panic!("no messages list: {}", r.body));
    assert_eq!(answers.len(), n, "{}", r.body);
    answers
        .iter()
        .map(|a| {
            assert_eq!(a["duplicate"], false, "{a}");
            (a["id"].as_str().unwrap().to_owned(), a["seq"].as_i64().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn mode_is_chosen_at_creation_and_cannot_be_changed() {
    let app = spawn_app().await;
    let r = app.create_webhook_raw(json!({"name": "plain"})).await;
    r.expect(StatusCode::CREATED);
    assert_eq!(r.body["mode"], "fifo", "{}", r.body);
    assert_eq!(r.body["priorities"], false, "{}", r.body);
    assert_eq!(r.body["idempotencyFromWebhookId"], false, "{}", r.body);
    let explicit = app.create_webhook_raw(json!({"name": "explicit", "mode": "fifo"})).await;
    explicit.expect(StatusCode::CREATED);
    assert_eq!(explicit.body["mode"], "fifo");

    let r = app
        .create_webhook_raw(
            json!({"name": "std", "mode": "standard", "priorities": true, "idempotencyFromWebhookId": true}),
        )
        .await;
    r.expect(StatusCode::CREATED);
    assert_eq!(
        (&r.body["mode"], &r.body["priorities"], &r.body["idempotencyFromWebhookId"]),
        (&json!("standard"), &json!(true), &json!(true)),
        "{}",
        r.body
    );
    let wh = r.str("id");
    assert_eq!(app.get_webhook(&wh).await.body, r.body);

    for mode in ["fifo", "standard"] {
        app.patch_webhook(&wh, json!({ "mode": mode }))
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
    for mode in ["lifo", ""] {
        app.create_webhook_raw(json!({"name": "bad", "mode": mode}))
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
    assert_eq!(app.list_webhooks("").await.body["data"].as_array().unwrap().len(), 3, "a refused webhook was created");

    // The other two settings can be changed; the mode stays.
    let r = app.patch_webhook(&wh, json!({"priorities": false, "idempotencyFromWebhookId": false})).await;
    r.expect(StatusCode::OK);
    assert_eq!(
        (&r.body["mode"], &r.body["priorities"], &r.body["idempotencyFromWebhookId"]),
        (&json!("standard"), &json!(false), &json!(false)),
        "{}",
        r.body
    );
    assert_eq!(app.get_webhook(&wh).await.body["mode"], "standard");
    let listed = app.list_webhooks("").await;
    let modes: Vec<&str> =
        listed.body["data"].as_array().unwrap().iter().map(|w| w["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["fifo", "fifo", "standard"]);
}

#[tokio::test]
async fn two_messages_are_in_flight_at_once_where_fifo_would_wait() {
    let app = spawn_app().await;
    let standard = app.create_webhook(json!({"mode": "standard"})).await;
    let fifo = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&standard, 3).await;
    app.ingest_many(&fifo, 3).await;

    let first = app.dequeue_ok(&standard).await;
    let second = app.dequeue_ok(&standard).await;
    assert_eq!((first.id.as_str(), first.seq), (ids[0].as_str(), 1));
    assert_eq!((second.id.as_str(), second.seq), (ids[1].as_str(), 2));
    assert_ne!(first.lock_token, second.lock_token);
    assert_eq!(first.raw["status"], "locked");
    assert_eq!(second.json(), json!({"n": 2}));
    assert_eq!(app.message_status(&standard, &ids[0]).await, "locked");
    assert_eq!(app.message_status(&standard, &ids[1]).await, "locked");
    assert_eq!(app.message_status(&standard, &ids[2]).await, "queued");

    // The same two calls on a fifo webhook: the second one waits behind the first.
    assert_eq!(app.dequeue_ok(&fifo).await.seq, 1);
    app.dequeue_none(&fifo).await;

    // A lock token opens its own message only; messages are committed in any order.
    app.commit(&standard, &first.id, Some(&second.lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
    app.commit_ok(&standard, &second).await;
    let third = app.dequeue_ok(&standard).await;
    assert_eq!((third.id.as_str(), third.seq), (ids[2].as_str(), 3));
    app.dequeue_none(&standard).await;

    // An error puts the message back; it is handed out again with the attempt counted.
    let r = app.error_ok(&standard, &first, "try later").await;
    assert_eq!((r.str("status").as_str(), r.i64("retryCount")), ("queued", 1));
    let again = app.dequeue_ok(&standard).await;
    assert_eq!((again.id.as_str(), again.seq, again.retry_count), (ids[0].as_str(), 1, 1));
    assert_ne!(again.lock_token, first.lock_token);
    app.commit(&standard, &first.id, Some(&first.lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
    app.commit_ok(&standard, &again).await;
    app.commit_ok(&standard, &third).await;
    app.dequeue_none(&standard).await;
    assert_eq!(app.stored_where(&standard, "state = 'committed'").await, 3);
    assert_eq!(app.stored_where(&standard, "state <> 'committed'").await, 0);
}

#[tokio::test]
async fn with_max_messages_standard_hands_out_a_list_and_fifo_only_one() {
    let app = spawn_app().await;
    let standard = app.create_webhook(json!({"mode": "standard"})).await;
    let fifo = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&standard, 5).await;
    app.ingest_many(&fifo, 5).await;

    let got = dequeue_list(&app, &fifo, "maxMessages=10").await;
    assert_eq!(got.iter().map(|d| d.seq).collect::<Vec<_>>(), [1], "fifo hands out one message at a time");
    assert!(dequeue_list(&app, &fifo, "maxMessages=10").await.is_empty());
    app.dequeue_none(&fifo).await;

    let first = dequeue_list(&app, &standard, "maxMessages=3").await;
    assert_eq!(first.iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 2, 3]);
    let rest = dequeue_list(&app, &standard, "maxMessages=10").await;
    assert_eq!(rest.iter().map(|d| d.seq).collect::<Vec<_>>(), [4, 5]);
    assert!(dequeue_list(&app, &standard, "maxMessages=10").await.is_empty());
    app.dequeue_none(&standard).await;

    let all: Vec<Delivery> = first.into_iter().chain(rest).collect();
    let tokens: HashSet<&str> = all.iter().map(|d| d.lock_token.as_str()).collect();
    assert_eq!(tokens.len(), 5, "each message has its own lock token");
    for (i, d) in all.iter().enumerate() {
        assert_eq!(d.id, ids[i]);
        assert_eq!(d.raw["status"], "locked", "{}", d.raw);
        assert_eq!((d.retry_count, d.max_retries, priority(d)), (0, 10, 0));
        assert!(d.raw["lockExpiresAt"].is_string() && d.raw["receivedAt"].is_string(), "{}", d.raw);
        assert_eq!(d.raw["contentType"], "application/json", "{}", d.raw);
        assert!(d.raw["headers"].is_object(), "{}", d.raw);
        assert_eq!(d.json(), json!({"n": i + 1}));
    }
    // Committed in reverse order, each with its own token.
    for d in all.iter().rev() {
        app.commit_ok(&standard, d).await;
    }
    assert_eq!(app.stored_where(&standard, "state = 'committed'").await, 5);
    app.commit_ok(&fifo, &got[0]).await;
    assert_eq!(dequeue_list(&app, &fifo, "maxMessages=100").await[0].seq, 2);
}

#[tokio::test]
async fn max_messages_and_visibility_timeout_out_of_range_are_422() {
    let app = spawn_app().await;
    let standard = app.create_webhook(json!({"mode": "standard"})).await;
    let fifo = app.create_webhook(json!({})).await;
    for wh in [&standard, &fifo] {
        app.ingest_many(wh, 2).await;
        for query in [
            "maxMessages=0",
            "maxMessages=101",
            "visibilityTimeout=0",
            "visibilityTimeout=43201",
            "maxMessages=0&visibilityTimeout=30",
            "maxMessages=5&visibilityTimeout=43201",
        ] {
            let r = app.dequeue_with(wh, query).await;
            assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {}", r.body);
            assert_eq!(r.error_code(), "validation_failed", "{query}");
        }
    }
    // Nothing was locked by the refused calls; the edges of the ranges are accepted.
    let before = chrono::Utc::now();
    let got = dequeue_list(&app, &standard, "maxMessages=100&visibilityTimeout=43200").await;
    assert_eq!(got.iter().map(|d| (d.seq, d.retry_count)).collect::<Vec<_>>(), [(1, 0), (2, 0)]);
    for d in &got {
        let lock = (time(&d.raw["lockExpiresAt"]) - before).num_seconds();
        assert!(lock > 43_000, "a 43200 s visibility timeout gave a lock of {lock} s");
    }
    let got = dequeue_list(&app, &fifo, "maxMessages=1&visibilityTimeout=1").await;
    assert_eq!(got.iter().map(|d| (d.seq, d.retry_count)).collect::<Vec<_>>(), [(1, 0)]);
}

#[tokio::test]
async fn a_visibility_timeout_replaces_the_lock_timeout_and_its_expiry_hands_the_message_out_again() {
    let app = spawn_app().await;
    // Both with the default 300 s lock timeout.
    let standard = app.create_webhook(json!({"mode": "standard"})).await;
    let fifo = app.create_webhook(json!({})).await;
    let ids = app.ingest_many(&standard, 2).await;
    let fifo_ids = app.ingest_many(&fifo, 2).await;

    let short = dequeue_list(&app, &standard, "maxMessages=1&visibilityTimeout=1").await;
    assert_eq!(short.len(), 1);
    let short = short[0].clone();
    assert_eq!(short.seq, 1);
    let long = app.dequeue_ok(&standard).await;
    assert_eq!(long.seq, 2);
    let gap = (time(&long.raw["lockExpiresAt"]) - time(&short.raw["lockExpiresAt"])).num_seconds();
    assert!(gap > 250, "the 1 s lock expires only {gap} s before the 300 s one");
    // Without maxMessages the answer is the single message object.
    let fifo_short = app.dequeue_with(&fifo, "visibilityTimeout=1").await;
    fifo_short.expect(StatusCode::OK);
    let fifo_short = Delivery::from_reply(&fifo_short);
    assert_eq!(fifo_short.id, fifo_ids[0]);
    app.dequeue_none(&fifo).await;

    tokio::time::sleep(Duration::from_millis(1500)).await;

    let back = app.dequeue_ok(&standard).await;
    assert_eq!((back.id.as_str(), back.seq, back.retry_count), (ids[0].as_str(), 1, 1));
    assert_ne!(back.lock_token, short.lock_token);
    assert_eq!(app.message_status(&standard, &ids[1]).await, "locked", "the 300 s lock is still held");
    app.dequeue_none(&standard).await;
    app.commit(&standard, &short.id, Some(&short.lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
    app.commit_ok(&standard, &back).await;
    app.commit_ok(&standard, &long).await;

    let fifo_back = app.dequeue_ok(&fifo).await;
    assert_eq!((fifo_back.id.as_str(), fifo_back.retry_count), (fifo_ids[0].as_str(), 1));
    app.commit(&fifo, &fifo_short.id, Some(&fifo_short.lock_token))
        .await
        .expect_error(StatusCode::CONFLICT, "conflict");
    app.commit_ok(&fifo, &fifo_back).await;
    assert_eq!(app.drain(&fifo).await, vec![2]);
}

#[tokio::test]
async fn an_extended_standard_lock_outlives_its_neighbours_expired_lock() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"mode": "standard"})).await;
    let ids = app.ingest_many(&wh, 3).await;
    let got = dequeue_list(&app, &wh, "maxMessages=2&visibilityTimeout=1").await;
    assert_eq!(got.iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 2]);
    let (kept, lost) = (&got[0], &got[1]);

    let path = format!("/api/webhooks/{wh}/messages/{}/extend", kept.id);
    let r = app.api(Method::POST, &path, Some(json!({"seconds": 30, "lockToken": lost.lock_token}))).await;
    r.expect_error(StatusCode::CONFLICT, "conflict");
    let r = app.api(Method::POST, &path, Some(json!({"seconds": 30, "lockToken": kept.lock_token}))).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.str("status"), "locked");

    tokio::time::sleep(Duration::from_millis(1300)).await;

    // Only the lock that was not extended expired: its message comes back, before seq 3.
    let next = dequeue_list(&app, &wh, "maxMessages=10").await;
    assert_eq!(
        next.iter().map(|d| (d.id.as_str(), d.seq, d.retry_count)).collect::<Vec<_>>(),
        [(ids[1].as_str(), 2, 1), (ids[2].as_str(), 3, 0)]
    );
    assert_eq!(app.message_status(&wh, &ids[0]).await, "locked");
    app.commit_ok(&wh, kept).await;
    app.commit(&wh, &lost.id, Some(&lost.lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
    for d in &next {
        app.commit_ok(&wh, d).await;
    }
    assert_eq!(app.stored_where(&wh, "state = 'committed'").await, 3);
}

#[tokio::test]
async fn an_expired_standard_lock_at_its_last_attempt_goes_dead() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"mode": "standard", "maxRetries": 1})).await;
    let ids = app.ingest_many(&wh, 2).await;
    let lost = dequeue_list(&app, &wh, "maxMessages=1&visibilityTimeout=1").await;
    assert_eq!(lost[0].seq, 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let next = dequeue_list(&app, &wh, "maxMessages=10").await;
    assert_eq!(next.iter().map(|d| (d.id.as_str(), d.retry_count)).collect::<Vec<_>>(), [(ids[1].as_str(), 0)]);
    let m = app.message(&wh, &ids[0]).await;
    assert_eq!((m.str("status").as_str(), m.i64("retryCount")), ("dead", 1), "{}", m.body);
    assert_eq!(app.dead_letters(&wh, "").await.body["data"][0]["id"], ids[0].as_str());
    app.commit_ok(&wh, &next[0]).await;
    app.dequeue_none(&wh).await;
}

#[tokio::test]
async fn one_consumer_gets_thirty_mixed_priority_messages_in_priority_then_seq_order() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"mode": "standard", "priorities": true})).await;
    let priorities: Vec<i64> = (0..30).map(|i| (i * 7 % 11) as i64).collect();
    let items: Vec<Value> =
        priorities.iter().enumerate().map(|(i, p)| json!({"payload": {"i": i}, "priority": p})).collect();
    let published = publish_batch_ok(&app, &wh, items).await;
    assert!(published.windows(2).all(|w| w[0].1 < w[1].1), "{published:?}");

    let mut expected: Vec<(i64, i64, String)> =
        published.iter().zip(&priorities).map(|((id, seq), p)| (-p, *seq, id.clone())).collect();
    expected.sort();
    let got = dequeue_list(&app, &wh, "maxMessages=100").await;
    let got: Vec<(i64, i64, String)> = got.iter().map(|d| (-priority(d), d.seq, d.id.clone())).collect();
    assert_eq!(got, expected);
    assert!(dequeue_list(&app, &wh, "maxMessages=100").await.is_empty());
}

const CONSUMERS: usize = 16;
const MESSAGES: usize = 2_000;
const BATCH: usize = 100;
const PER_DEQUEUE: usize = 10;

fn priority_of(i: usize) -> i64 {
    (i * 7 % 11) as i64
}

/// One dequeue call of one consumer: when it was sent, when it was answered, and what it
/// got as (id, seq, priority) in answer order.
struct Call {
    consumer: usize,
    n: usize,
    started: Instant,
    ended: Instant,
    got: Vec<(String, i64, i64)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_standard_consumers_take_two_thousand_messages_once_each_by_priority() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"mode": "standard", "priorities": true})).await;

    // Everything is published before any consumer starts, and nothing is ever requeued.
    let mut published: HashMap<String, (i64, i64)> = HashMap::new();
    let mut last_seq = 0;
    for b in 0..MESSAGES / BATCH {
        let items: Vec<Value> =
            (b * BATCH..(b + 1) * BATCH).map(|i| json!({"payload": {"i": i}, "priority": priority_of(i)})).collect();
        for (k, (id, seq)) in publish_batch_ok(&app, &wh, items).await.into_iter().enumerate() {
            assert!(seq > last_seq, "seq {seq} after {last_seq}");
            last_seq = seq;
            assert!(published.insert(id, (priority_of(b * BATCH + k), seq)).is_none(), "an id handed out twice");
        }
    }
    assert_eq!(published.len(), MESSAGES);

    let handed_out = Arc::new(AtomicUsize::new(0));
    let mut consumers = tokio::task::JoinSet::new();
    for c in 0..CONSUMERS {
        let (app, wh, handed_out) = (app.clone_handle(), wh.clone(), handed_out.clone());
        consumers.spawn(async move {
            let path = format!("/api/webhooks/{wh}/messages/dequeue?maxMessages={PER_DEQUEUE}");
            let mut calls: Vec<Call> = Vec::new();
            let mut idle = 0u32;
            while handed_out.load(Ordering::SeqCst) < MESSAGES {
                let started = Instant::now();
                let r = app.api(Method::POST, &path, None).await;
                let ended = Instant::now();
                if r.status == StatusCode::NO_CONTENT {
                    idle += 1;
                    assert!(
                        idle < 2_000,
                        "consumer {c}: nothing to take {idle} times in a row with {} of {MESSAGES} handed out",
                        handed_out.load(Ordering::SeqCst)
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                idle = 0;
                let got = deliveries(&r);
                assert!(got.len() <= PER_DEQUEUE, "{} messages for maxMessages={PER_DEQUEUE}", got.len());
                handed_out.fetch_add(got.len(), Ordering::SeqCst);
                let n = calls.len();
                calls.push(Call {
                    consumer: c,
                    n,
                    started,
                    ended,
                    got: got.iter().map(|d| (d.id.clone(), d.seq, priority(d))).collect(),
                });
                for d in &got {
                    assert_eq!(d.retry_count, 0, "seq {} delivered again: {}", d.seq, d.raw);
                    let r = app.commit(&wh, &d.id, Some(&d.lock_token)).await;
                    assert_eq!(r.status, StatusCode::OK, "consumer {c}: commit of seq {}: {}", d.seq, r.body);
                }
            }
            calls
        });
    }
    let calls: Vec<Call> = join_within(consumers, Duration::from_secs(120)).await.into_iter().flatten().collect();

    // Every message delivered exactly once, as it was published.
    let mut delivered: HashMap<&str, usize> = HashMap::new();
    for call in &calls {
        for (id, seq, p) in &call.got {
            *delivered.entry(id.as_str()).or_default() += 1;
            let want = published.get(id).unwrap_or_else(|| panic!("delivered an unknown message {id}"));
            assert_eq!((*p, *seq), *want, "message {id} changed on the way");
        }
    }
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(delivered.len(), MESSAGES, "not every message was delivered");
    assert_eq!(app.stored_where(&wh, "state = 'committed'").await, MESSAGES as i64);
    assert_eq!(app.stored_where(&wh, "state <> 'committed'").await, 0);
    app.dequeue_none(&wh).await;

    // Within one answer: priority descending, then seq.
    for call in &calls {
        let keys: Vec<(i64, i64)> = call.got.iter().map(|(_, seq, p)| (-p, *seq)).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted, "consumer {} call {}: answer out of priority/seq order", call.consumer, call.n);
    }
    // Across answers: a call that handed out priority p ran while no message of a higher
    // priority was still waiting, so each of those was taken by a call that had started by
    // the time this one ended.
    let mut latest_start: BTreeMap<i64, Instant> = BTreeMap::new();
    for call in &calls {
        for (_, _, p) in &call.got {
            let e = latest_start.entry(*p).or_insert(call.started);
            if call.started > *e {
                *e = call.started;
            }
        }
    }
    assert_eq!(latest_start.keys().copied().collect::<Vec<_>>(), (0..=10).collect::<Vec<i64>>());
    for call in &calls {
        let lowest = call.got.iter().map(|(_, _, p)| *p).min().unwrap();
        for (&higher, &taken) in latest_start.range(lowest + 1..) {
            assert!(
                taken <= call.ended,
                "consumer {} call {} handed out priority {lowest} while a priority {higher} message was still \
                 waiting (taken by a call started after this one ended)",
                call.consumer,
                call.n
            );
        }
    }
}

async fn commit_batch(app: &TestApp, wh: &str, entries: Value) -> Reply {
    app.api(Method::POST, &format!("/api/webhooks/{wh}/messages/commit"), Some(json!({ "messages": entries }))).await
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_batch_commit_commits_each_held_lock_and_reports_each_refusal() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"mode": "standard"})).await;
    for i in 0..5 {
        app.publish_ok(&wh, json!({"payload": {"i": i}})).await;
    }
    let got = dequeue_list(&app, &wh, "maxMessages=5").await;
    assert_eq!(got.len(), 5);
    let unknown = crate::helpers::random_id("msg_");
    let mut entries: Vec<Value> = got[..4].iter().map(|d| json!({"id": d.id, "lockToken": d.lock_token})).collect();
    entries.push(json!({"id": got[4].id, "lockToken": crate::helpers::random_id("lt_")}));
    entries.push(json!({"id": unknown}));

    let r = commit_batch(&app, &wh, Value::Array(entries)).await;
    r.expect(StatusCode::OK);
    assert_eq!(ids(&r.body["committed"]), got[..4].iter().map(|d| d.id.clone()).collect::<Vec<_>>());
    let failed = r.body["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 2, "{}", r.body);
    assert_eq!(failed[0]["id"], got[4].id.as_str());
    assert_eq!(failed[0]["error"]["code"], "conflict");
    assert_eq!(failed[1]["id"], unknown.as_str());
    assert_eq!(failed[1]["error"]["code"], "not_found");

    for d in &got[..4] {
        assert_eq!(app.message_status(&wh, &d.id).await, "committed");
    }
    // The refused one still holds its lock, and its own token still commits it.
    assert_eq!(app.message_status(&wh, &got[4].id).await, "locked");
    let r = commit_batch(&app, &wh, json!([{"id": got[4].id, "lockToken": got[4].lock_token}])).await;
    assert_eq!(ids(&r.body["committed"]), vec![got[4].id.clone()]);
    assert_eq!(app.stored_where(&wh, "state = 'committed'").await, 5);
}

#[tokio::test]
async fn a_batch_commit_in_fifo_mode_commits_the_locked_head_only() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let (first, _) = app.ingest_ok(&wh, "1").await;
    let (second, _) = app.ingest_ok(&wh, "2").await;
    let head = app.dequeue_ok(&wh).await;
    assert_eq!(head.id, first);

    let r = commit_batch(&app, &wh, json!([{"id": second}, {"id": head.id, "lockToken": head.lock_token}])).await;
    r.expect(StatusCode::OK);
    assert_eq!(ids(&r.body["committed"]), vec![first.clone()]);
    assert_eq!(r.body["failed"][0]["id"], second.as_str());
    assert_eq!(r.body["failed"][0]["error"]["code"], "conflict");
    assert_eq!(app.message_status(&wh, &first).await, "committed");
    assert_eq!(app.dequeue_ok(&wh).await.id, second);
}

#[tokio::test]
async fn a_batch_commit_of_none_or_over_a_hundred_is_422_and_commits_nothing() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"mode": "standard"})).await;
    app.publish_ok(&wh, json!({"payload": 1})).await;
    let d = dequeue_list(&app, &wh, "maxMessages=1").await.remove(0);
    commit_batch(&app, &wh, json!([])).await.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    let too_many: Vec<Value> = (0..101).map(|_| json!({"id": d.id, "lockToken": d.lock_token})).collect();
    commit_batch(&app, &wh, Value::Array(too_many))
        .await
        .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(app.message_status(&wh, &d.id).await, "locked");
    let r = commit_batch(&app, &crate::helpers::random_id("wh_"), json!([{"id": d.id}])).await;
    r.expect_error(StatusCode::NOT_FOUND, "not_found");
}

/// `commit?next=true` in standard mode commits the message and hands out the next one that
/// is not in flight (another consumer's lock is skipped, not waited for).
#[tokio::test]
async fn commit_next_in_standard_mode_hands_out_the_next_message_not_in_flight() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"mode": "standard"})).await;
    let ids = app.ingest_many(&wh, 3).await;
    let held = dequeue_list(&app, &wh, "maxMessages=2").await;
    assert_eq!(held.iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 2]);

    let r = app.commit_next(&wh, &held[0].id, Some(&held[0].lock_token)).await;
    r.expect(StatusCode::OK);
    let next = Delivery::from_reply(&r);
    assert_eq!((next.id.as_str(), next.seq), (ids[2].as_str(), 3), "seq 2 is another consumer's");
    assert_eq!(app.message_status(&wh, &ids[0]).await, "committed");
    assert_eq!(app.message_status(&wh, &ids[1]).await, "locked");

    // Everything left is in flight: committed, nothing to hand out.
    let r = app.commit_next(&wh, &held[1].id, Some(&held[1].lock_token)).await;
    r.expect(StatusCode::NO_CONTENT);
    assert_eq!(app.message_status(&wh, &ids[1]).await, "committed");
    app.commit_ok(&wh, &next).await;
    app.dequeue_none(&wh).await;
}

/// The lock reaper's standard-mode branch: each expired message lock is released as a
/// failed attempt (queued again, or dead at its last one); live locks are left alone.
#[tokio::test]
async fn the_lock_reaper_releases_expired_standard_locks() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"mode": "standard", "maxRetries": 2})).await;
    let ids = app.ingest_many(&wh, 3).await;
    let held = dequeue_list(&app, &wh, "maxMessages=3").await;
    assert_eq!(held.len(), 3);
    // seq 1 at its last attempt, seqs 1 and 2 expired, seq 3 still held.
    let setup = format!(
        "UPDATE messages SET retry_count = CASE seq WHEN 1 THEN 1 ELSE retry_count END,
                             lock_expires_at = now() - interval '1 second'
         WHERE webhook_id = '{}' AND seq IN (1, 2)",
        crate::helpers::uuid_of(&wh)
    );
    assert_eq!(app.sql(&setup).await.rows_affected(), 2);
    assert_eq!(hookline::jobs::LockReaper::new(app.pool.clone()).run_once().await.unwrap(), 2);

    let m = app.message(&wh, &ids[0]).await;
    assert_eq!((m.str("status").as_str(), m.i64("retryCount")), ("dead", 2), "{}", m.body);
    let m = app.message(&wh, &ids[1]).await;
    assert_eq!((m.str("status").as_str(), m.i64("retryCount")), ("queued", 1), "{}", m.body);
    assert_eq!(m.str("lastError"), "lock expired");
    assert_eq!(app.message_status(&wh, &ids[2]).await, "locked");
    app.commit(&wh, &held[1].id, Some(&held[1].lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
    app.commit_ok(&wh, &held[2]).await;
    let again = dequeue_list(&app, &wh, "maxMessages=10").await;
    assert_eq!(again.iter().map(|d| (d.id.as_str(), d.retry_count)).collect::<Vec<_>>(), [(ids[1].as_str(), 1)]);
}
