//! Holes a release review found (issue 13): hostile text is a 4xx naming the field, a purge
//! never clears a lock it did not take away, junk signatures do not spend a real sender's
//! budget, and junk API keys never reach argon2.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Connection;

use hmac::{Hmac, Mac};
use hookline::domain::{LimitOverrides, Plan};
use sha2::Sha256;

use crate::helpers::{spawn_app, uuid_of};

#[tokio::test]
async fn a_nul_character_in_text_bound_for_the_database_is_400_naming_the_field() {
    let app = spawn_app().await;
    let r = app.create_webhook_raw(json!({"name": "bad\u{0}name"})).await;
    assert!(r.expect_error(StatusCode::BAD_REQUEST, "bad_request").contains("name"));
    let wh = app.create_webhook(json!({})).await;
    let r = app.patch_webhook(&wh, json!({"name": "bad\u{0}name"})).await;
    assert!(r.expect_error(StatusCode::BAD_REQUEST, "bad_request").contains("name"));
    assert_eq!(app.get_webhook(&wh).await.str("name"), "test hook", "the name did not change");

    let r = app.api(Method::POST, "/api/keys", Some(json!({"name": "k\u{0}"}))).await;
    assert!(r.expect_error(StatusCode::BAD_REQUEST, "bad_request").contains("name"));
    let r = app.api(Method::DELETE, "/api/keys/%00%00%00%00%00%00%00%00%00%00", None).await;
    r.expect_error(StatusCode::NOT_FOUND, "not_found");

    let login = app.client.post(app.url("/api/session")).json(&json!({"email": "a\u{0}@b.c", "password": "x"}));
    let r = app.send(login).await;
    assert!(r.expect_error(StatusCode::BAD_REQUEST, "bad_request").contains("email"));

    // A refused error call leaves the message locked by its consumer, who can still commit.
    app.ingest_ok(&wh, "{}").await;
    let d = app.dequeue_ok(&wh).await;
    let r = app.error(&wh, &d.id, Some(json!({"lockToken": d.lock_token, "reason": "boom\u{0}"}))).await;
    assert!(r.expect_error(StatusCode::BAD_REQUEST, "bad_request").contains("reason"));
    assert_eq!(app.message_status(&wh, &d.id).await, "locked");
    app.commit_ok(&wh, &d).await;
}

/// The purge meets a dequeue that, while the purge runs, hands a consumer a message ingested
/// after the purge began. Whatever the purge deletes, the message that consumer holds must
/// not be handed to a second consumer.
#[tokio::test]
async fn a_purge_meeting_a_dequeue_never_frees_the_lock_a_consumer_holds() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let (first, _) = app.ingest_ok(&wh, r#"{"n":1}"#).await;
    assert_eq!(app.dequeue_ok(&wh).await.id, first);
    let webhook = uuid_of(&wh);
    // That consumer went quiet: its lock has expired.
    app.sql(&format!("UPDATE webhooks SET lock_expires_at = now() - interval '1 second' WHERE id = '{webhook}'")).await;

    // A dequeue in progress holds the webhook row while the purge starts.
    let mut dequeuer = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut dequeuer).await.unwrap();
    sqlx::query(&format!("SELECT 1 FROM webhooks WHERE id = '{webhook}' FOR NO KEY UPDATE"))
        .execute(&mut dequeuer)
        .await
        .unwrap();
    let purger = app.clone_handle();
    let purge_path = format!("/api/webhooks/{wh}/purge");
    let purge = tokio::spawn(async move { purger.api(Method::POST, &purge_path, None).await });
    wait_for_a_lock_wait(&app).await;

    // A message arrives meanwhile; the dequeue hands out the head (the first message again,
    // its expired lock counted as an attempt, or, had the purge deleted it first, the new
    // one) and commits.
    app.ingest_ok(&wh, r#"{"n":2}"#).await;
    let project = hookline::store::projects::find(&app.pool, "test").await.unwrap();
    let held: uuid::Uuid = sqlx::query_scalar(&format!("SELECT id FROM hookline_dequeue('{webhook}', $1, 1, NULL)"))
        .bind(project.0)
        .fetch_one(&mut dequeuer)
        .await
        .unwrap();
    sqlx::query("COMMIT").execute(&mut dequeuer).await.unwrap();
    let purged = purge.await.unwrap();
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.body);

    // The held message is either purged with its lock, or still locked: never free.
    let held_id = format!("msg_{}", held.simple());
    let r = app.dequeue(&wh).await;
    if r.status == StatusCode::OK {
        assert_ne!(r.str("id"), held_id, "a second consumer got the message the first one holds");
    }
    let exists = app.sql_i64(&format!("SELECT count(*) FROM messages WHERE id = '{held}'")).await;
    let locked_seq = app.sql_i64(&format!("SELECT coalesce(locked_seq, 0) FROM webhooks WHERE id = '{webhook}'")).await;
    let held_seq = app.sql_i64(&format!("SELECT coalesce(max(seq), 0) FROM messages WHERE id = '{held}'")).await;
    assert!(exists == 0 || locked_seq == held_seq, "the held message {held_seq} is live but unlocked ({locked_seq})");
}

/// Waits until some session of the test database waits for a row lock (the purge blocked).
async fn wait_for_a_lock_wait(app: &crate::helpers::TestApp) {
    for _ in 0..200 {
        let waiting = app
            .sql_i64(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await;
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the purge never waited for the webhook row");
}

/// On the free plan (10 ingestions a second), a flood of bad signatures is refused without
/// spending the webhook's ingestion budget: the real sender's next request is accepted.
#[tokio::test]
async fn rejected_signatures_do_not_spend_the_senders_ingestion_budget() {
    let app = spawn_app().await;
    hookline::store::projects::set_limits(&app.pool, "test", Some(Plan::Free), &LimitOverrides::default())
        .await
        .unwrap();
    let secret = "a-github-secret-of-some-length";
    let signature = json!({"scheme": "github", "secret": secret});
    let wh = app.create_webhook(json!({"signature": signature})).await;
    let body = r#"{"real":true}"#;
    let sign = |content: &str| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(content.as_bytes());
        let hex: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256={hex}")
    };
    let wrong = sign("something else");
    let mut statuses = Vec::new();
    for _ in 0..15 {
        let junk = [("x-hub-signature-256", wrong.as_str())];
        statuses.push(app.ingest_with_headers(&wh, &junk, body.as_bytes().to_vec()).await.status);
    }
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS));
    assert!(statuses.contains(&StatusCode::UNAUTHORIZED), "{statuses:?}");
    let good = sign(body);
    let r = app.ingest_with_headers(&wh, &[("x-hub-signature-256", good.as_str())], body.as_bytes().to_vec()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "the real sender's request: {}", r.body);
    assert_eq!(app.stored(&wh).await, 1, "only the signed request was stored");
}

/// Malformed keys and unknown prefixes are refused without argon2; a real key pays it once,
/// and after missed notifications it is re-checked by lookup, not by argon2 again.
#[tokio::test]
async fn junk_api_keys_never_reach_argon2() {
    let app = spawn_app().await;
    app.api(Method::GET, "/api/webhooks", None).await.expect(StatusCode::OK);
    let after_first = app.verifier.argon2_runs();
    assert_eq!(after_first, 1, "the real key was verified once");
    let unknown_prefix = format!("hl_{}_{}", "Z".repeat(10), "s".repeat(32));
    for junk in ["x", "hl_short_secret", "hl_0123456789_tooshort", unknown_prefix.as_str(), unknown_prefix.as_str()] {
        let r = app.api_as(junk, Method::GET, "/api/webhooks", None).await;
        r.expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    assert_eq!(app.verifier.argon2_runs(), after_first, "no junk key reached argon2");

    // Notifications missed (the listener reconnected): the key is re-checked by a lookup.
    app.verifier.recheck_all();
    app.api(Method::GET, "/api/webhooks", None).await.expect(StatusCode::OK);
    assert_eq!(app.verifier.argon2_runs(), after_first, "a cached key does not pay argon2 again");
}

/// Wrong secrets sent with a real key's prefix (public: listed, logged) each cost argon2,
/// but only a few per prefix: past the burst they are refused with 503 before argon2, and
/// the key itself, once cached, and other keys go on working.
#[tokio::test]
async fn argon2_runs_per_key_prefix_are_capped() {
    let app = spawn_app().await;
    app.api(Method::GET, "/api/webhooks", None).await.expect(StatusCode::OK);
    let before = app.verifier.argon2_runs();
    let prefix = app.key.split('_').nth(1).unwrap().to_owned();
    let started = std::time::Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for n in 0..30 {
        let (app, wrong) = (app.clone_handle(), format!("hl_{prefix}_{:0>32}", n));
        requests.spawn(async move { app.api_as(&wrong, Method::GET, "/api/webhooks", None).await });
    }
    let (mut refused, mut throttled) = (0, 0);
    while let Some(r) = requests.join_next().await {
        let r = r.unwrap();
        match r.status {
            StatusCode::UNAUTHORIZED => refused += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.error_code(), "overloaded");
                assert!(r.headers.contains_key("retry-after"));
                throttled += 1;
            }
            other => panic!("a wrong key got {other}: {}", r.body),
        }
    }
    // A burst of 5, then 2 a second: what the flood's own duration could refill, no more.
    let allowed = 5 + (2.0 * started.elapsed().as_secs_f64()).ceil() as u64;
    let runs = app.verifier.argon2_runs() - before;
    assert_eq!(runs, refused, "each refused wrong secret ran argon2 once");
    assert!(runs <= allowed, "{runs} argon2 runs for one prefix, at most {allowed} allowed");
    assert_eq!(refused + throttled, 30);

    // The real key, cached, is not affected; another key pays its own argon2 once.
    app.api(Method::GET, "/api/webhooks", None).await.expect(StatusCode::OK);
    let (_, other) =
        hookline::auth::create_key(&app.pool, "another", hookline::domain::Plan::Free, false).await.unwrap();
    app.api_as(other.expose(), Method::GET, "/api/webhooks", None).await.expect(StatusCode::OK);
    assert_eq!(app.verifier.argon2_runs() - before, runs + 1);
}

/// A flood of well-formed keys with real prefixes and wrong secrets (each must pay argon2)
/// finds a bounded queue: refused with 503 and Retry-After past it, never a 500.
#[tokio::test]
async fn the_argon2_queue_is_bounded() {
    let app = spawn_app().await;
    // 40 real prefixes, 3 wrong secrets each: within every prefix's own budget.
    let mut prefixes = Vec::new();
    for n in 0..40 {
        let (_, key) =
            hookline::auth::create_key(&app.pool, &format!("p{n}"), hookline::domain::Plan::Free, false).await.unwrap();
        prefixes.push(hookline::auth::prefix_of(&key).to_owned());
    }
    let mut requests = tokio::task::JoinSet::new();
    for (n, prefix) in prefixes.iter().cycle().take(120).enumerate() {
        let (app, wrong) = (app.clone_handle(), format!("hl_{prefix}_{:0>32}", n));
        requests.spawn(async move { app.api_as(&wrong, Method::GET, "/api/webhooks", None).await });
    }
    let mut overloaded = 0;
    while let Some(r) = requests.join_next().await {
        let r = r.unwrap();
        match r.status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.error_code(), "overloaded");
                assert!(r.headers.contains_key("retry-after"));
                overloaded += 1;
            }
            other => panic!("a wrong key got {other}: {}", r.body),
        }
    }
    assert!(overloaded > 0, "120 argon2 verifications at once all queued");
    assert!(app.verifier.argon2_runs() <= 120);
}

/// Expired dashboard sessions are deleted by the TTL purger; live ones stay.
#[tokio::test]
async fn the_ttl_purger_deletes_expired_sessions() {
    let app = spawn_app().await;
    let hash = hookline::crypto::password::hash_secret("a long enough password");
    let user = hookline::store::accounts::upsert_user(&app.pool, "someone@example.com", &hash).await.unwrap();
    let now = chrono::Utc::now();
    for (token, expires) in
        [(b"expired".as_slice(), now - chrono::Duration::hours(1)), (b"live", now + chrono::Duration::hours(1))]
    {
        hookline::store::accounts::create_session(&app.pool, token, user, expires).await.unwrap();
    }
    hookline::jobs::TtlPurger::new(app.pool.clone()).run_once().await.unwrap();
    let left = app.sql_strings("SELECT encode(token_hash, 'escape') FROM sessions").await;
    assert_eq!(left, vec!["live".to_owned()]);
}

/// With requireLockToken, commit, error and extend must name the lock token: without it
/// they are 422 and change nothing; with it they work. Off by default.
#[tokio::test]
async fn require_lock_token_refuses_calls_without_the_token() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"requireLockToken": true})).await;
    assert_eq!(app.get_webhook(&wh).await.body["requireLockToken"], true);
    app.ingest_ok(&wh, "{}").await;
    let d = app.dequeue_ok(&wh).await;
    let base = format!("/api/webhooks/{wh}/messages/{}", d.id);
    for (action, body) in
        [("commit", None), ("error", Some(json!({"reason": "x"}))), ("extend", Some(json!({"seconds": 60})))]
    {
        let r = app.api(Method::POST, &format!("{base}/{action}"), body).await;
        assert!(
            r.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").contains("lockToken"),
            "{action}"
        );
    }
    let batch = json!({"messages": [{"id": d.id}]});
    let r = app.api(Method::POST, &format!("/api/webhooks/{wh}/messages/commit"), Some(batch)).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["failed"][0]["error"]["code"], "validation_failed", "{}", r.body);
    let m = app.message(&wh, &d.id).await;
    assert_eq!((m.str("status"), m.i64("retryCount")), ("locked".to_owned(), 0), "nothing changed");
    app.commit_ok(&wh, &d).await;

    // A webhook without the setting takes a call without a token, as before.
    let open = app.create_webhook(json!({})).await;
    assert_eq!(app.get_webhook(&open).await.body["requireLockToken"], false);
    let (id, _) = app.ingest_ok(&open, "{}").await;
    app.dequeue_ok(&open).await;
    app.commit(&open, &id, None).await.expect(StatusCode::OK);
}

/// Dequeue takes its options in a JSON body as well as the query string; an unknown field
/// is refused as elsewhere, and an option given in both places is ambiguous (422).
#[tokio::test]
async fn dequeue_options_come_in_the_body_too() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({"mode": "standard"})).await;
    for n in 0..5 {
        app.ingest_ok(&wh, &format!("{n}")).await;
    }
    let path = format!("/api/webhooks/{wh}/messages/dequeue");
    let r = app.api(Method::POST, &path, Some(json!({"maxMessages": 3, "visibilityTimeout": 30}))).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.body["messages"].as_array().map(Vec::len), Some(3), "{}", r.body);
    let r = app.api(Method::POST, &path, Some(json!({"maxMessage": 3}))).await;
    r.expect_error(StatusCode::BAD_REQUEST, "bad_request");
    let r = app.api(Method::POST, &format!("{path}?maxMessages=2"), Some(json!({"maxMessages": 2}))).await;
    assert!(r.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed").contains("maxMessages"));
    let r = app.api(Method::POST, &path, Some(json!({"maxMessages": 0}))).await;
    r.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(app.dequeue_with(&wh, "maxMessages=10").await.body["messages"].as_array().map(Vec::len), Some(2));
}

/// The TTL purger meets a dequeue holding the webhook row of an expired, locked message:
/// neither waits for the other in a cycle (the purger used to delete the message, then wait
/// for the row the dequeue held while the dequeue waited for the message: a deadlock).
#[tokio::test]
async fn the_ttl_purger_and_a_dequeue_never_deadlock() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_ok(&wh, "{}").await;
    app.dequeue_ok(&wh).await;
    let webhook = uuid_of(&wh);
    app.sql(&format!("UPDATE webhooks SET lock_expires_at = now() - interval '1 second' WHERE id = '{webhook}'")).await;
    app.sql(&format!("UPDATE messages SET expires_at = now() - interval '1 second' WHERE webhook_id = '{webhook}'"))
        .await;

    let mut dequeuer = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut dequeuer).await.unwrap();
    sqlx::query(&format!("SELECT 1 FROM webhooks WHERE id = '{webhook}' FOR NO KEY UPDATE"))
        .execute(&mut dequeuer)
        .await
        .unwrap();
    let pool = app.pool.clone();
    let purge = tokio::spawn(async move { hookline::jobs::TtlPurger::new(pool).run_once().await });
    // Give the purger time to reach whatever it would wait for, then dequeue in the same
    // transaction that holds the row (its expired lock is a failed attempt on that message).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let project = hookline::store::projects::find(&app.pool, "test").await.unwrap();
    let dequeued = sqlx::query(&format!("SELECT * FROM hookline_dequeue('{webhook}', $1, 1, NULL)"))
        .bind(project.0)
        .fetch_all(&mut dequeuer)
        .await;
    let committed = sqlx::query("COMMIT").execute(&mut dequeuer).await;
    let purged = tokio::time::timeout(Duration::from_secs(30), purge).await.expect("the purger finished").unwrap();
    assert!(dequeued.is_ok() && committed.is_ok(), "the dequeue failed: {dequeued:?} {committed:?}");
    assert!(purged.is_ok(), "the purger failed: {purged:?}");
}
