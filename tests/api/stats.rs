//! `GET /api/webhooks/{id}/stats`: the counts by state (queued = deliverable now, locked,
//! delayed, dead, committed), the age of the oldest queued message, and the messages
//! stored and acknowledged in the last minute and hour, followed through scripted
//! sequences in standard and fifo mode.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{delivery, random_id, spawn_app, uuid_of, Delivery, Reply, TestApp};

#[derive(Debug, PartialEq)]
struct Counts {
    queued: i64,
    locked: i64,
    delayed: i64,
    dead: i64,
    committed: i64,
}

/// (ingestedLastMinute, ingestedLastHour, deliveredLastMinute, deliveredLastHour)
type Windows = (i64, i64, i64, i64);

async fn stats(app: &TestApp, wh: &str) -> Value {
    let r = app.api(Method::GET, &format!("/api/webhooks/{wh}/stats"), None).await;
    r.expect(StatusCode::OK);
    r.body
}

fn int(s: &Value, field: &str) -> i64 {
    s[field].as_i64().unwrap_or_else(|| panic!("no integer {field:?} in {s}"))
}

fn counts(s: &Value) -> Counts {
    Counts {
        queued: int(s, "queued"),
        locked: int(s, "locked"),
        delayed: int(s, "delayed"),
        dead: int(s, "dead"),
        committed: int(s, "committed"),
    }
}

fn windows(s: &Value) -> Windows {
    (
        int(s, "ingestedLastMinute"),
        int(s, "ingestedLastHour"),
        int(s, "deliveredLastMinute"),
        int(s, "deliveredLastHour"),
    )
}

/// What folding must leave unchanged (the oldest age moves on by itself).
fn totals(s: &Value) -> (Counts, Windows) {
    (counts(s), windows(s))
}

fn c(queued: i64, locked: i64, delayed: i64, dead: i64, committed: i64) -> Counts {
    Counts { queued, locked, delayed, dead, committed }
}

/// The age of the oldest queued message, asserted present.
fn oldest(s: &Value) -> f64 {
    s["oldestQueuedAgeSeconds"].as_f64().unwrap_or_else(|| panic!("no oldestQueuedAgeSeconds in {s}"))
}

async fn error(app: &TestApp, wh: &str, d: &Delivery, requeue: bool) -> Reply {
    let body = json!({"lockToken": d.lock_token, "reason": "failed", "requeue": requeue});
    let r = app.error(wh, &d.id, Some(body)).await;
    r.expect(StatusCode::OK);
    r
}

#[tokio::test]
async fn stats_follow_a_scripted_standard_sequence() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"mode": "standard", "maxRetries": 1})).await;

    let s = stats(&app, &wh).await;
    assert_eq!(counts(&s), c(0, 0, 0, 0, 0), "{s}");
    assert_eq!(windows(&s), (0, 0, 0, 0), "{s}");
    assert!(s["oldestQueuedAgeSeconds"].is_null(), "{s}");

    // Ten messages, the 3rd and the 8th delayed by an hour.
    let items: Vec<Value> = (0..10)
        .map(|i| if i == 2 || i == 7 { json!({"payload": i, "delaySeconds": 3600}) } else { json!({ "payload": i }) })
        .collect();
    let r = app.publish_batch(&wh, items).await;
    r.expect(StatusCode::CREATED);
    let s = stats(&app, &wh).await;
    assert_eq!(counts(&s), c(8, 0, 2, 0, 0), "{s}");
    assert_eq!(windows(&s), (10, 10, 0, 0), "{s}");

    let r = app.dequeue_with(&wh, "maxMessages=3").await;
    r.expect(StatusCode::OK);
    let got: Vec<Delivery> = r.body["messages"].as_array().unwrap().iter().map(delivery).collect();
    assert_eq!(got.iter().map(|d| d.seq).collect::<Vec<_>>(), [1, 2, 4]);
    app.commit_ok(&wh, &got[0]).await;
    assert_eq!(error(&app, &wh, &got[1], false).await.body["status"], "dead");
    // got[2] stays locked.
    let s = stats(&app, &wh).await;
    assert_eq!(counts(&s), c(5, 1, 2, 1, 1), "{s}");
    assert_eq!(windows(&s), (10, 10, 1, 1), "{s}");
    assert!(oldest(&s) >= 0.0, "{s}");

    // An ingested message counts as stored too.
    app.ingest_ok(&wh, "{}").await;
    let s = stats(&app, &wh).await;
    assert_eq!(counts(&s), c(6, 1, 2, 1, 1), "{s}");
    assert_eq!(windows(&s), (11, 11, 1, 1), "{s}");

    app.commit_ok(&wh, &got[2]).await;
    let s = stats(&app, &wh).await;
    assert_eq!(counts(&s), c(6, 0, 2, 1, 2), "{s}");
    assert_eq!(windows(&s), (11, 11, 2, 2), "{s}");

    // A delayed message falls due; the dead letter is retried.
    let due = app
        .sql(&format!(
            "UPDATE messages SET deliver_at = now() - interval '1 second' WHERE webhook_id = '{}' AND seq = 3",
            uuid_of(&wh)
        ))
        .await;
    assert_eq!(due.rows_affected(), 1);
    let r = app.api(Method::POST, &format!("/api/webhooks/{wh}/errors/retry"), None).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.i64("retried"), 1);
    let s = stats(&app, &wh).await;
    assert_eq!(counts(&s), c(8, 0, 1, 0, 2), "{s}");

    // The age is the oldest queued message's (seq 2, back from the dead-letter queue).
    let aged = app
        .sql(&format!(
            "UPDATE messages SET received_at = now() - interval '2 minutes' WHERE webhook_id = '{}' AND seq = 2",
            uuid_of(&wh)
        ))
        .await;
    assert_eq!(aged.rows_affected(), 1);
    let s = stats(&app, &wh).await;
    assert!((120.0..3600.0).contains(&oldest(&s)), "{s}");
}

#[tokio::test]
async fn stats_follow_a_scripted_fifo_sequence() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_many(&wh, 4).await;
    let r = app.publish(&wh, json!({"payload": 5, "delaySeconds": 3600})).await;
    r.expect(StatusCode::CREATED);
    let s = stats(&app, &wh).await;
    assert_eq!(counts(&s), c(4, 0, 1, 0, 0), "{s}");
    assert_eq!(windows(&s), (5, 5, 0, 0), "{s}");
    assert!(oldest(&s) >= 0.0, "{s}");

    let head = app.dequeue_ok(&wh).await;
    assert_eq!(counts(&stats(&app, &wh).await), c(3, 1, 1, 0, 0));
    // Requeued: back in the queue.
    assert_eq!(error(&app, &wh, &head, true).await.body["status"], "queued");
    assert_eq!(counts(&stats(&app, &wh).await), c(4, 0, 1, 0, 0));

    let head = app.dequeue_ok(&wh).await;
    assert_eq!((head.seq, head.retry_count), (1, 1));
    app.commit_ok(&wh, &head).await;
    let s = stats(&app, &wh).await;
    assert_eq!(counts(&s), c(3, 0, 1, 0, 1), "{s}");
    assert_eq!(windows(&s), (5, 5, 1, 1), "{s}");

    let head = app.dequeue_ok(&wh).await;
    assert_eq!(error(&app, &wh, &head, false).await.body["status"], "dead");
    assert_eq!(counts(&stats(&app, &wh).await), c(2, 0, 1, 1, 1));

    assert_eq!(app.drain(&wh).await, vec![3, 4]);
    let s = stats(&app, &wh).await;
    assert_eq!(counts(&s), c(0, 0, 1, 1, 3), "{s}");
    assert_eq!(windows(&s), (5, 5, 3, 3), "{s}");
    // Only the delayed message is left: nothing is queued, so there is no oldest.
    assert!(s["oldestQueuedAgeSeconds"].is_null(), "nothing is queued: {s}");
}

#[tokio::test]
async fn stats_are_per_webhook_and_404_for_an_unknown_one() {
    let app = spawn_app().await;
    let busy = app.create_webhook(json!({})).await;
    let idle = app.create_webhook(json!({})).await;
    app.ingest_many(&busy, 3).await;
    assert_eq!(counts(&stats(&app, &busy).await), c(3, 0, 0, 0, 0));
    let s = stats(&app, &idle).await;
    assert_eq!(counts(&s), c(0, 0, 0, 0, 0), "{s}");
    assert_eq!(windows(&s), (0, 0, 0, 0), "{s}");

    for unknown in [random_id("wh_"), "nonsense".to_owned()] {
        let r = app.api(Method::GET, &format!("/api/webhooks/{unknown}/stats"), None).await;
        r.expect_error(StatusCode::NOT_FOUND, "not_found");
    }
}

/// A message past its TTL that the purger has not reached yet is never delivered, so it is
/// not counted as waiting (nor as the oldest waiting).
#[tokio::test]
async fn messages_past_their_ttl_are_not_counted_as_queued() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let (expired, _) = app.ingest_ok(&wh, "{}").await;
    app.ingest_ok(&wh, "{}").await;
    // Expired, and received an hour ago: were it counted, it would be the oldest.
    let expire = format!(
        "UPDATE messages SET expires_at = now() - interval '1 second', received_at = now() - interval '1 hour'
         WHERE id = '{}'",
        uuid_of(&expired)
    );
    app.sql(&expire).await;
    let s = stats(&app, &wh).await;
    assert_eq!(counts(&s), c(1, 0, 0, 0, 0), "{s}");
    assert!(oldest(&s) < 60.0, "{s}");
    // The one that is still alive is what a dequeue hands out.
    assert_ne!(app.dequeue_ok(&wh).await.id, expired);
}

/// The count folder merges a webhook's count rows older than two minutes into minute
/// buckets (the last hour) and one base row (before): every total and window reads the
/// same afterwards, and a webhook with nothing old enough is left alone.
#[tokio::test]
async fn folding_count_rows_keeps_every_total_and_window() {
    let app = spawn_app().await;
    let folder = hookline::jobs::CountFolder::new(app.pool.clone()).with_batch(1);
    let (a, b, recent) =
        (app.create_webhook(json!({})).await, app.create_webhook(json!({})).await, app.create_webhook(json!({})).await);
    for wh in [&a, &b, &recent] {
        app.ingest_many(wh, 6).await;
        for _ in 0..2 {
            let head = app.dequeue_ok(wh).await;
            app.commit_ok(wh, &head).await;
        }
    }
    // a's and b's first two ingests 3 hours ago, the next two 30 minutes ago (one minute).
    for wh in [&a, &b] {
        for (offset, ago) in [(0, "3 hours"), (2, "30 minutes")] {
            let aged = app
                .sql(&format!(
                    "UPDATE webhook_counts SET at = now() - interval '{ago}' WHERE ctid IN (
                       SELECT ctid FROM webhook_counts WHERE webhook_id = '{}' AND ingested > 0
                       ORDER BY at OFFSET {offset} LIMIT 2)",
                    uuid_of(wh),
                ))
                .await;
            assert_eq!(aged.rows_affected(), 2);
        }
    }
    let rows_of = |wh: &str| {
        let (pool, id) = (app.pool.clone(), uuid_of(wh));
        async move {
            sqlx::query_as::<_, (bool, bool, i64)>(&format!(
                "SELECT folded, at = '-infinity', ingested FROM webhook_counts WHERE webhook_id = '{id}'
                 ORDER BY at, ingested"
            ))
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    // Rows as the previous release's folder left them (never marked folded): a base row and
    // a minute bucket.
    let legacy = app
        .sql(&format!(
            "INSERT INTO webhook_counts (webhook_id, at, committed, delivered) VALUES
               ('{b}', '-infinity', 5, 0), ('{b}', date_trunc('minute', now() - interval '10 minutes'), 0, 1)",
            b = uuid_of(&b)
        ))
        .await;
    assert_eq!(legacy.rows_affected(), 2);
    let mut before = Vec::new();
    for wh in [&a, &b, &recent] {
        before.push(totals(&stats(&app, wh).await));
    }
    assert_eq!(before[0], (c(4, 0, 0, 0, 2), (2, 4, 2, 2)));
    let recent_rows = rows_of(&recent).await;

    // One candidate row per batch: the folder goes on until none is left (a's four old
    // rows, b's four and its legacy bucket; a base row is never a candidate itself).
    assert_eq!(folder.run_once().await.unwrap(), 9);
    for (wh, before) in [&a, &b, &recent].into_iter().zip(&before) {
        assert_eq!(&totals(&stats(&app, wh).await), before);
    }
    // a's four old rows became a base row (no windows kept) and one bucket of 2 ingests.
    let folded: Vec<_> = rows_of(&a).await.into_iter().filter(|(folded, _, _)| *folded).collect();
    assert_eq!(folded, [(true, true, 0), (true, false, 2)]);
    assert_eq!(rows_of(&recent).await, recent_rows, "nothing of it is two minutes old");
    let bases = |wh: &str| {
        let (pool, id) = (app.pool.clone(), uuid_of(wh));
        async move {
            sqlx::query_scalar::<_, String>(&format!(
                "SELECT xmin::text FROM webhook_counts WHERE webhook_id = '{id}' AND at = '-infinity'"
            ))
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(bases(&b).await.len(), 1, "the previous release's base row was merged into the new one");

    // Nothing new: nothing to do, no base row rewritten.
    let written = bases(&a).await;
    assert_eq!(folder.run_once().await.unwrap(), 0);
    assert_eq!(bases(&a).await, written);
    // a's bucket ages past the hour: folded into the base, totals unchanged.
    let aged = app
        .sql(&format!(
            "UPDATE webhook_counts SET at = now() - interval '61 minutes'
             WHERE webhook_id = '{}' AND folded AND at > '-infinity'",
            uuid_of(&a)
        ))
        .await;
    assert_eq!(aged.rows_affected(), 1);
    let aged = totals(&stats(&app, &a).await);
    assert_eq!(aged, (c(4, 0, 0, 0, 2), (2, 2, 2, 2)));
    assert_eq!(folder.run_once().await.unwrap(), 1);
    assert_eq!(totals(&stats(&app, &a).await), aged);
    let folded: Vec<_> = rows_of(&a).await.into_iter().filter(|(folded, _, _)| *folded).collect();
    assert_eq!(folded, [(true, true, 0)], "only the base row is left of the old rows");
}
