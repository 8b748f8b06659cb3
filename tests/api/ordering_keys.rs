//! Ordering keys taken from the payload: per-key strict order with one message in flight
//! per key, different keys in parallel, and a fallback key for messages without one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::helpers::{join_within, spawn_app, Delivery, TestApp};

async fn keyed(app: &TestApp) -> String {
    app.create_webhook(json!({"orderingKey": "/customer"})).await
}

/// Ingests an event for `customer` (None: no key) numbered `n`.
async fn event(app: &TestApp, wh: &str, customer: Option<&str>, n: usize) -> i64 {
    let body = match customer {
        Some(c) => json!({"customer": c, "n": n}),
        None => json!({"n": n}),
    };
    app.ingest_ok(wh, &body.to_string()).await.1
}

fn customer(d: &Delivery) -> Option<String> {
    d.json()["customer"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn each_key_is_ordered_and_blocked_on_its_own_while_other_keys_move() {
    let app = spawn_app().await;
    let wh = keyed(&app).await;
    assert_eq!(app.get_webhook(&wh).await.body["orderingKey"], "/customer");
    event(&app, &wh, Some("A"), 1).await;
    event(&app, &wh, Some("A"), 2).await;
    event(&app, &wh, Some("B"), 3).await;
    event(&app, &wh, None, 4).await;
    event(&app, &wh, None, 5).await;

    // One head per key, oldest first; A's second waits behind its first.
    let a1 = app.dequeue_ok(&wh).await;
    let b = app.dequeue_ok(&wh).await;
    let none1 = app.dequeue_ok(&wh).await;
    assert_eq!((a1.seq, b.seq, none1.seq), (1, 3, 4));
    app.dequeue_none(&wh).await;

    let view = app.api(Method::GET, &format!("/api/webhooks/{wh}/head"), None).await.body;
    let blocked: Vec<&str> =
        view["blockedKeys"].as_array().unwrap().iter().map(|k| k["key"].as_str().unwrap()).collect();
    assert_eq!(blocked, ["A", "B", ""]);
    assert_eq!(view["state"], "locked");
    assert!(view["head"].is_null(), "every key in line is busy: {view}");

    // Committing A's head lets A's next go; the fallback key is one key.
    app.commit_ok(&wh, &a1).await;
    let a2 = app.dequeue_ok(&wh).await;
    assert_eq!((a2.seq, customer(&a2).as_deref()), (2, Some("A")));
    app.dequeue_none(&wh).await;
    let r = app.error_ok(&wh, &none1, "downstream 500").await;
    assert_eq!(r.str("status"), "queued");
    let again = app.dequeue_ok(&wh).await;
    assert_eq!((again.seq, again.retry_count), (4, 1), "an errored head stays its key's head");
    for d in [&a2, &b, &again] {
        app.commit_ok(&wh, d).await;
    }
    assert_eq!(app.drain(&wh).await, [5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_consumers_keep_each_keys_order_and_never_hold_two_locks_on_one_key() {
    let app = spawn_app().await;
    let wh = keyed(&app).await;
    let keys = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"];
    let mut expected: HashMap<Option<String>, Vec<i64>> = HashMap::new();
    for n in 0..180 {
        let key = (n % 9 != 8).then(|| keys[n % 9].to_owned());
        let seq = event(&app, &wh, key.as_deref(), n).await;
        expected.entry(key).or_default().push(seq);
    }
    let in_flight: Arc<Mutex<HashSet<Option<String>>>> = Arc::default();
    let delivered: Arc<Mutex<HashMap<Option<String>, Vec<i64>>>> = Arc::default();
    let most_at_once = Arc::new(Mutex::new(0usize));
    let mut consumers = JoinSet::new();
    for _ in 0..16 {
        let (app, wh) = (app.clone_handle(), wh.clone());
        let (in_flight, delivered, most_at_once) = (in_flight.clone(), delivered.clone(), most_at_once.clone());
        consumers.spawn(async move {
            let mut idle = 0;
            while idle < 20 {
                let r = app.dequeue(&wh).await;
                if r.status == StatusCode::NO_CONTENT {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                idle = 0;
                let d = Delivery::from_reply(&r);
                let key = customer(&d);
                {
                    let mut busy = in_flight.lock().unwrap();
                    assert!(busy.insert(key.clone()), "two locks on key {key:?} at once (seq {})", d.seq);
                    let mut most = most_at_once.lock().unwrap();
                    *most = (*most).max(busy.len());
                }
                delivered.lock().unwrap().entry(key.clone()).or_default().push(d.seq);
                tokio::time::sleep(Duration::from_millis(2)).await;
                in_flight.lock().unwrap().remove(&key);
                app.commit_ok(&wh, &d).await;
            }
        });
    }
    join_within(consumers, Duration::from_secs(60)).await;
    let delivered = delivered.lock().unwrap().clone();
    assert_eq!(delivered, expected, "every key's messages, each once, in seq order");
    assert!(*most_at_once.lock().unwrap() > 1, "different keys were never in flight together");
}

#[tokio::test]
async fn a_keyed_webhook_skips_the_head_of_a_key_and_takes_keys_from_headers_and_publishes() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"orderingKey": "header:X-Tenant"})).await;
    let tenant = |t: &'static str| vec![("x-tenant", t)];
    for (t, n) in [("acme", 1), ("acme", 2), ("globex", 3)] {
        let r = app.ingest_with_headers(&wh, &tenant(t), n.to_string().into_bytes()).await;
        r.expect(StatusCode::ACCEPTED);
    }
    // A publish takes its key from its own headers.
    let r = app.publish(&wh, json!({"payload": 4, "headers": {"x-tenant": "globex"}})).await;
    r.expect(StatusCode::CREATED);
    let stuck = app.dequeue_ok(&wh).await;
    assert_eq!(stuck.seq, 1);

    let skip_path = format!("/api/webhooks/{wh}/head/skip");
    let skip = |body: Value| app.api(Method::POST, &skip_path, Some(body));
    skip(json!({"reason": "x"})).await.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    skip(json!({"reason": "x", "key": "nobody"})).await.expect_error(StatusCode::CONFLICT, "no_head");
    let r = skip(json!({"reason": "poison", "key": "acme", "expectSeq": 1})).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["lockSuperseded"], true);
    app.commit(&wh, &stuck.id, Some(&stuck.lock_token)).await.expect_error(StatusCode::CONFLICT, "lock_superseded");
    let mut seqs: Vec<i64> = Vec::new();
    for _ in 0..2 {
        let d = app.dequeue_ok(&wh).await;
        seqs.push(d.seq);
    }
    assert_eq!(seqs, [2, 3], "acme's next and globex's first, in parallel");
    app.dequeue_none(&wh).await;
    let plain = app.create_webhook(json!({})).await;
    app.ingest_many(&plain, 1).await;
    let r = app
        .api(Method::POST, &format!("/api/webhooks/{plain}/head/skip"), Some(json!({"reason": "x", "key": "a"})))
        .await;
    r.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
}

#[tokio::test]
async fn ordering_key_settings_are_checked() {
    let app = spawn_app().await;
    for bad in [
        json!({"orderingKey": "customer"}),
        json!({"orderingKey": "/customer", "mode": "standard"}),
        json!({"orderingKey": "/customer", "priorities": true}),
        json!({"orderingKey": "/customer", "fifoWindow": 5}),
    ] {
        let mut body = bad.clone();
        body["name"] = json!("x");
        let r = app.create_webhook_raw(body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {}", r.body);
        r.error_code();
    }
    let wh = keyed(&app).await;
    for change in [
        json!({"orderingKey": "/other"}),
        json!({"orderingKey": null}),
        json!({"priorities": true}),
        json!({"fifoWindow": 2}),
    ] {
        let r = app.patch_webhook(&wh, change.clone()).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{change}: {}", r.body);
    }
    let plain = app.create_webhook(json!({})).await;
    assert!(app.get_webhook(&plain).await.body["orderingKey"].is_null());
}

#[tokio::test]
async fn a_purged_locked_head_frees_its_key_for_a_waiting_consumer() {
    let app = spawn_app().await;
    let wh = keyed(&app).await;
    event(&app, &wh, Some("A"), 1).await;
    event(&app, &wh, Some("A"), 2).await;
    let head = app.dequeue_ok(&wh).await;
    assert_eq!(head.seq, 1);
    let waiter = {
        let app = app.clone_handle();
        let wh = wh.clone();
        tokio::spawn(async move { app.dequeue_with(&wh, "wait=15").await })
    };
    app.until_waiting(&wh, 1).await;
    // The locked head outlives its TTL and is purged with its lock (which runs for 300 s).
    app.sql(&format!(
        "UPDATE messages SET expires_at = now() - interval '1 second' WHERE webhook_id = '{}' AND seq = 1",
        crate::helpers::uuid_of(&wh)
    ))
    .await;
    hookline::jobs::TtlPurger::new(app.pool.clone()).run_once().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("woken").unwrap();
    r.expect(StatusCode::OK);
    assert_eq!(r.i64("seq"), 2);
}
