//! The periodic jobs, driven step by step with `run_once`: the lock reaper and the TTL purger.

use std::collections::BTreeSet;
use std::time::Duration;

use hookline::jobs::{LockReaper, TtlPurger};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection as _;

use crate::helpers::{spawn_app, spawn_app_on, uuid_of, TestApp};

#[tokio::test]
async fn the_lock_reaper_releases_expired_locks_as_failed_attempts() {
    let app = spawn_app().await;
    let retried = app.create_webhook(json!({"lockTimeoutSeconds": 1})).await;
    let killed = app.create_webhook(json!({"lockTimeoutSeconds": 1, "maxRetries": 1})).await;
    let held = app.create_webhook(json!({})).await;
    for wh in [&retried, &killed, &held] {
        app.ingest_many(wh, 2).await;
    }
    let lost = app.dequeue_ok(&retried).await;
    let lost_too = app.dequeue_ok(&killed).await;
    let kept = app.dequeue_ok(&held).await;

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(LockReaper::new(app.pool.clone()).run_once().await.unwrap(), 2);

    let m = app.message(&retried, &lost.id).await;
    assert_eq!(m.body["status"], "queued");
    assert_eq!(m.body["retryCount"], 1);
    assert_eq!(m.body["lastError"], "lock expired");
    assert!(m.body["lockExpiresAt"].is_null(), "{}", m.body);
    let m = app.message(&killed, &lost_too.id).await;
    assert_eq!(m.body["status"], "dead");
    assert_eq!(m.body["retryCount"], 1);
    assert_eq!(m.body["lastError"], "lock expired");
    assert!(m.body["deadAt"].is_string(), "{}", m.body);
    assert_eq!(app.dead_letters(&killed, "").await.body["data"][0]["id"], lost_too.id.as_str());
    // A lock that has not expired is left alone.
    assert_eq!(app.message_status(&held, &kept.id).await, "locked");

    // Nothing left to do; the late consumers are refused.
    assert_eq!(LockReaper::new(app.pool.clone()).run_once().await.unwrap(), 0);
    app.commit(&retried, &lost.id, Some(&lost.lock_token)).await.expect_error(StatusCode::CONFLICT, "conflict");
    app.commit(&killed, &lost_too.id, None).await.expect_error(StatusCode::CONFLICT, "conflict");

    let again = app.dequeue_ok(&retried).await;
    assert_eq!((again.id.as_str(), again.retry_count), (lost.id.as_str(), 1));
    assert_eq!(app.dequeue_ok(&killed).await.seq, 2);
    app.commit_ok(&held, &kept).await;
}

#[tokio::test]
async fn the_lock_reaper_works_through_many_locks_in_batches() {
    let app = spawn_app().await;
    // Five expiring locks (two of them at their last attempt) and one that is not expiring.
    let mut expiring = Vec::new();
    for max_retries in [5, 5, 5, 1, 1] {
        let wh = app.create_webhook(json!({"lockTimeoutSeconds": 1, "maxRetries": max_retries})).await;
        app.ingest_many(&wh, 2).await;
        let d = app.dequeue_ok(&wh).await;
        expiring.push((wh, d, max_retries));
    }
    let held = app.create_webhook(json!({})).await;
    app.ingest_many(&held, 1).await;
    let kept = app.dequeue_ok(&held).await;

    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Batches of 2: 2 + 2 + 1.
    assert_eq!(LockReaper::new(app.pool.clone()).with_batch(2).run_once().await.unwrap(), 5);
    assert_eq!(LockReaper::new(app.pool.clone()).with_batch(2).run_once().await.unwrap(), 0);
    for (wh, d, max_retries) in &expiring {
        let m = app.message(wh, &d.id).await;
        let expected = if *max_retries == 1 { "dead" } else { "queued" };
        assert_eq!(m.body["status"], expected, "{}", m.body);
        assert_eq!(m.body["retryCount"], 1);
        assert_eq!(m.body["lastError"], "lock expired");
        // The next delivery: the same message again, or the one after the dead one.
        let next = app.dequeue_ok(wh).await;
        assert_eq!(next.seq, if *max_retries == 1 { 2 } else { 1 });
    }
    assert_eq!(app.message_status(&held, &kept.id).await, "locked");
}

/// Moves these messages' TTL into the past.
async fn expire(app: &TestApp, wh: &str, seqs: &[i64]) {
    let list: Vec<String> = seqs.iter().map(i64::to_string).collect();
    let done = app
        .sql(&format!(
            "UPDATE messages SET expires_at = now() - interval '1 second' WHERE webhook_id = '{}' AND seq IN ({})",
            uuid_of(wh),
            list.join(",")
        ))
        .await;
    assert_eq!(done.rows_affected(), seqs.len() as u64);
}

/// (webhook uuid, seq) of every stored message.
async fn remaining(app: &TestApp) -> BTreeSet<(String, i64)> {
    let rows: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT webhook_id, seq FROM messages").fetch_all(&app.pool).await.unwrap();
    rows.into_iter().map(|(w, s)| (w.to_string(), s)).collect()
}

#[tokio::test]
async fn the_ttl_purger_deletes_expired_messages_in_every_state_and_nothing_else() {
    let app = spawn_app().await;
    let a = app.create_webhook(json!({"maxRetries": 1})).await;
    let a_ids = app.ingest_many(&a, 8).await;
    // a: 1 committed, 2 dead, 3 committed, 4 dead, 5 locked, 6..8 queued.
    for seq in 1..=4 {
        let d = app.dequeue_ok(&a).await;
        assert_eq!(d.seq, seq);
        if seq % 2 == 1 {
            app.commit_ok(&a, &d).await;
        } else {
            app.error_ok(&a, &d, "fatal").await;
        }
    }
    assert_eq!(app.dequeue_ok(&a).await.seq, 5);
    // b: 1 locked (fresh), 2 queued.
    let b = app.create_webhook(json!({})).await;
    let b_ids = app.ingest_many(&b, 2).await;
    app.dequeue_ok(&b).await;

    let mut states = Vec::new();
    for (wh, id) in a_ids.iter().map(|id| (&a, id)).chain(b_ids.iter().map(|id| (&b, id))) {
        states.push(app.message_status(wh, id).await);
    }
    let expected_states = ["committed", "dead", "committed", "dead", "locked", "queued", "queued", "queued"]
        .into_iter()
        .chain(["locked", "queued"])
        .collect::<Vec<_>>();
    assert_eq!(states, expected_states);

    expire(&app, &a, &[1, 2, 5, 6, 7]).await; // committed, dead, locked, queued, queued
    expire(&app, &b, &[2]).await; // queued

    assert_eq!(TtlPurger::new(app.pool.clone()).with_batch(2).run_once().await.unwrap(), 6);
    let (ua, ub) = (uuid_of(&a), uuid_of(&b));
    let expected: BTreeSet<_> = [(ua.clone(), 3), (ua.clone(), 4), (ua, 8), (ub, 1)].into_iter().collect();
    assert_eq!(remaining(&app).await, expected);
    for (wh, id) in [(&a, &a_ids[0]), (&a, &a_ids[1]), (&a, &a_ids[4]), (&a, &a_ids[5]), (&b, &b_ids[1])] {
        app.message(wh, id).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    }
    assert_eq!(app.message_status(&a, &a_ids[2]).await, "committed");
    assert_eq!(app.message_status(&a, &a_ids[3]).await, "dead");
    assert_eq!(app.message_status(&b, &b_ids[0]).await, "locked");
    assert_eq!(TtlPurger::new(app.pool.clone()).with_batch(2).run_once().await.unwrap(), 0);

    // The purged locked head no longer blocks: the next live message is 8.
    assert_eq!(app.drain(&a).await, vec![8]);
    assert_eq!(app.dead_letters(&a, "").await.body["data"].as_array().unwrap().len(), 1);
    app.dequeue_none(&b).await;
}

#[tokio::test]
async fn the_ttl_purger_counts_exactly_across_batches() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_many(&wh, 12).await;

    // An exact multiple of the batch (the last batch comes back empty)...
    expire(&app, &wh, &[1, 2, 3, 4]).await;
    assert_eq!(TtlPurger::new(app.pool.clone()).with_batch(2).run_once().await.unwrap(), 4);
    // ...and a remainder.
    expire(&app, &wh, &[5, 7, 9, 10, 11]).await;
    assert_eq!(TtlPurger::new(app.pool.clone()).with_batch(2).run_once().await.unwrap(), 5);
    let left: Vec<i64> = remaining(&app).await.into_iter().map(|(_, s)| s).collect();
    assert_eq!(left, vec![6, 8, 12]);
    assert_eq!(TtlPurger::new(app.pool.clone()).run_once().await.unwrap(), 0);
}

/// A webhook whose row another transaction holds is skipped; when its expired messages are
/// the oldest they used to fill every batch, and the purger stopped before the others'.
#[tokio::test]
async fn a_busy_webhook_does_not_stall_the_ttl_purge_of_the_others() {
    let app = spawn_app().await;
    let (busy, other) = (app.create_webhook(json!({})).await, app.create_webhook(json!({})).await);
    app.ingest_many(&busy, 3).await;
    app.ingest_many(&other, 3).await;
    expire(&app, &other, &[1, 2, 3]).await;
    // busy's expired first: the oldest candidates.
    let done = app
        .sql(&format!(
            "UPDATE messages SET expires_at = now() - interval '1 hour' WHERE webhook_id = '{}'",
            uuid_of(&busy)
        ))
        .await;
    assert_eq!(done.rows_affected(), 3);

    let mut holder = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    let hold = format!("SELECT 1 FROM webhooks WHERE id = '{}' FOR NO KEY UPDATE", uuid_of(&busy));
    sqlx::query(&hold).execute(&mut holder).await.unwrap();
    let purger = TtlPurger::new(app.pool.clone()).with_batch(2);
    assert_eq!(purger.run_once().await.unwrap(), 3, "all of the other webhook's");
    let ub = uuid_of(&busy);
    let left: BTreeSet<_> = (1..=3).map(|seq| (ub.clone(), seq)).collect();
    assert_eq!(remaining(&app).await, left);

    // Its row free, but its oldest expired message row held (as a standard-mode commit
    // holds it): the run marks the webhook busy and ends instead of retrying that row.
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let spread = format!(
        "UPDATE messages SET expires_at = now() - seq * interval '1 hour' WHERE webhook_id = '{}'",
        uuid_of(&busy)
    );
    assert_eq!(app.sql(&spread).await.rows_affected(), 3);
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    let hold = format!("SELECT 1 FROM messages WHERE webhook_id = '{}' AND seq = 3 FOR UPDATE", uuid_of(&busy));
    sqlx::query(&hold).execute(&mut holder).await.unwrap();
    let one_by_one = TtlPurger::new(app.pool.clone()).with_batch(1);
    let run = tokio::time::timeout(Duration::from_secs(30), one_by_one.run_once()).await;
    assert_eq!(run.expect("the run ends").unwrap(), 0);

    // Once it is free, the next run takes them.
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    assert_eq!(purger.run_once().await.unwrap(), 3);
    assert!(remaining(&app).await.is_empty());
}

/// A webhook held at the instant its batch passed is taken once more at the end of the run,
/// waiting a moment for its row: one whose consumers lock it many times a second is purged.
#[tokio::test]
async fn a_webhook_busy_during_the_run_is_purged_once_its_row_is_free() {
    let app = spawn_app().await;
    let hot = app.create_webhook(json!({})).await;
    app.ingest_many(&hot, 3).await;
    expire(&app, &hot, &[1, 2, 3]).await;
    let mut holder = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    let hold = format!("SELECT 1 FROM webhooks WHERE id = '{}' FOR NO KEY UPDATE", uuid_of(&hot));
    sqlx::query(&hold).execute(&mut holder).await.unwrap();

    let purger = TtlPurger::new(app.pool.clone());
    let run = tokio::spawn(async move { purger.run_once().await });
    // The main pass skips it; the final pass waits for its row: release it then.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND query LIKE '%hookline_purge_expired_skipping%'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the purger never waited for the webhook's row");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    assert_eq!(run.await.unwrap().unwrap(), 3);
    assert!(remaining(&app).await.is_empty());
}

#[tokio::test]
async fn an_expired_message_is_not_delivered_even_before_the_purge() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_many(&wh, 3).await;
    expire(&app, &wh, &[1]).await;
    assert_eq!(app.drain(&wh).await, vec![2, 3]);
}

#[tokio::test]
async fn a_message_expires_after_its_webhooks_ttl() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"ttlDays": 3})).await;
    app.ingest_many(&wh, 1).await;
    app.patch_webhook(&wh, json!({"ttlDays": 30})).await.expect(StatusCode::OK);
    app.ingest_many(&wh, 1).await;
    let ttl = app.sql_strings("SELECT (expires_at - received_at)::text FROM messages ORDER BY seq").await;
    // The TTL is fixed when a message arrives.
    assert_eq!(ttl, ["3 days", "30 days"]);
}

/// Two replicas on one database: while one holds a job's advisory lock, the other's run does
/// nothing; run at once, every expired lock is released once (one attempt counted, not
/// two), by the advisory lock and the row locks of the reaper's SQL together.
#[tokio::test]
async fn two_replicas_running_a_job_at_once_do_its_work_once() {
    let first = spawn_app().await;
    let key = first.encryption_key.clone();
    let second = spawn_app_on(&first.db_url, |c| c.encryption_key = Some(key.into())).await;
    let mut hooks = Vec::new();
    for _ in 0..30 {
        let wh = first.create_webhook(json!({"maxRetries": 5})).await;
        let (id, _) = first.ingest_ok(&wh, "{}").await;
        first.dequeue_ok(&wh).await;
        hooks.push((wh, id));
    }
    let expire = "UPDATE webhooks SET lock_expires_at = now() - interval '1 second' WHERE locked_seq IS NOT NULL";
    assert_eq!(first.sql(expire).await.rows_affected(), 30);

    // While a replica holds the reaper's lock, the other's run does nothing.
    let mut holder = sqlx::PgConnection::connect(&first.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(hookline::jobs::REAPER_LOCK)
        .execute(&mut holder)
        .await
        .unwrap();
    assert_eq!(LockReaper::new(second.pool.clone()).run_once().await.unwrap(), 0);
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    let reapers = [&first, &second].map(|app| LockReaper::new(app.pool.clone()).with_batch(4));
    let (a, b) = tokio::join!(reapers[0].run_once(), reapers[1].run_once());
    assert_eq!(a.unwrap() + b.unwrap(), 30, "each expired lock released by one replica");
    for (wh, id) in &hooks {
        let m = first.message(wh, id).await;
        assert_eq!((m.str("status").as_str(), m.i64("retryCount")), ("queued", 1), "{}", m.body);
    }
}
