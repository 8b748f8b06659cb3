//! Plans and rate limits: each plan's quotas hold per webhook and per key, a refused
//! request stores nothing, and settings outside the plan are refused naming the limit.

use std::num::NonZeroU32;

use hookline::domain::{LimitOverrides, Plan};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, Reply, TestApp};

/// The most requests a `per_second` quota lets through from `started` until now: its burst
/// plus what the time taken could refill.
fn most_passing(per_second: u64, started: std::time::Instant) -> u64 {
    per_second + (started.elapsed().as_secs_f64() * per_second as f64).ceil() as u64
}

/// Sends requests one after another until one is refused with 429 (at most 500), and checks
/// how many passed against a `per_second` quota: at least its burst, at most the burst
/// plus what the time taken could refill, however slow the machine. Returns the refusal
/// and how many passed.
async fn until_refused<F, Fut>(per_second: u64, mut send: F) -> (Reply, u64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let started = std::time::Instant::now();
    let mut passed = 0;
    loop {
        let r = send().await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            let most = most_passing(per_second, started);
            assert!((per_second..=most).contains(&passed), "{passed} passed, quota {per_second}, most {most}");
            return (r, passed);
        }
        assert!(r.status.is_success() || r.status.is_client_error(), "{}: {}", r.status, r.body);
        passed += 1;
        assert!(passed < 500, "never refused");
    }
}

/// Sends the requests at once; returns how many passed (were not 429) and the most that
/// may pass against a `per_second` quota: the burst plus what the time taken could refill.
async fn burst<Fut: std::future::Future<Output = Reply>>(
    per_second: u64,
    requests: impl IntoIterator<Item = Fut>,
) -> (u64, u64) {
    let started = std::time::Instant::now();
    let replies = futures_util::future::join_all(requests).await;
    let most = most_passing(per_second, started);
    let passed = replies.iter().filter(|r| r.status != StatusCode::TOO_MANY_REQUESTS).count() as u64;
    (passed, most)
}

/// Moves the test project to `plan`.
async fn on_plan(app: &TestApp, plan: Plan) {
    hookline::store::projects::set_limits(&app.pool, "test", Some(plan), &LimitOverrides::default()).await.unwrap();
}

async fn stored(app: &TestApp, webhook: &str) -> i64 {
    let id = webhook.trim_start_matches("wh_");
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM messages WHERE webhook_id = '{id}'"))
        .fetch_one(&app.pool)
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn ingestion_past_the_free_quota_is_429_with_headers_and_not_stored() {
    let app = spawn_app().await;
    on_plan(&app, Plan::Free).await;
    let wh = app.create_webhook(json!({})).await;

    let (r, passed) = until_refused(10, || app.ingest(&wh, "{}")).await;
    assert_eq!(r.error_code(), "rate_limited");
    assert_eq!(r.headers["ratelimit-limit"], "10");
    assert_eq!(r.headers["ratelimit-remaining"], "0");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.headers["ratelimit-reset"], "1");
    assert_eq!(stored(&app, &wh).await, passed as i64);
}

/// Publishing through the API spends the same per-webhook budget as ingestion.
#[tokio::test]
async fn publish_and_ingest_share_the_ingestion_quota() {
    let app = spawn_app().await;
    on_plan(&app, Plan::Free).await;
    let wh = app.create_webhook(json!({})).await;
    let requests = (0..20).map(|i| {
        let app = app.clone_handle();
        let wh = wh.clone();
        async move {
            if i % 2 == 0 {
                app.ingest(&wh, "{}").await
            } else {
                app.publish(&wh, json!({"payload": i})).await
            }
        }
    });
    let (passed, most) = burst(10, requests).await;
    assert!((10..=most).contains(&passed), "{passed} of 20 ingests and publishes passed, at most {most}");
    assert_eq!(stored(&app, &wh).await, passed as i64);
}

/// Commit and error spend one per-webhook budget (free: 10 a second), refused or not.
#[tokio::test]
async fn commit_and_error_share_the_ack_quota() {
    let app = spawn_app().await;
    on_plan(&app, Plan::Free).await;
    let wh = app.create_webhook(json!({})).await;
    let (id, _) = app.ingest_ok(&wh, "{}").await;
    let requests = (0..24).map(|i| {
        let (app, wh, id) = (app.clone_handle(), wh.clone(), id.clone());
        async move {
            if i % 2 == 0 {
                app.commit(&wh, &id, None).await
            } else {
                app.error(&wh, &id, None).await
            }
        }
    });
    let (passed, most) = burst(10, requests).await;
    assert!((10..=most).contains(&passed), "{passed} of 24 commits and errors passed, at most {most}");
    // A second on, the budget is whole again: errors alone find the same limit.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let (r, _) = until_refused(10, || app.error(&wh, &id, None)).await;
    assert_eq!(r.headers["ratelimit-limit"], "10");
}

#[tokio::test]
async fn a_concurrent_burst_gets_no_more_than_the_quota_through() {
    let app = spawn_app().await;
    on_plan(&app, Plan::Free).await;
    let wh = app.create_webhook(json!({})).await;

    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (client, url) = (app.client.clone(), app.url(&format!("/ingest/{wh}")));
        tasks.push(tokio::spawn(async move { client.post(url).body("{}").send().await.unwrap().status() }));
    }
    let mut accepted = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::ACCEPTED {
            accepted += 1;
        }
    }
    // Free: a burst of 10, then one more every 100 ms. However long the burst took on a
    // busy machine, no more got through than the tokens that time could refill.
    let refilled = started.elapsed().as_millis() as i64 / 100 + 1;
    assert!((10..=10 + refilled).contains(&accepted), "{accepted} accepted in {:?}", started.elapsed());
    assert_eq!(stored(&app, &wh).await, accepted);
}

#[tokio::test]
async fn limits_are_per_webhook_and_per_operation() {
    let app = spawn_app().await;
    on_plan(&app, Plan::Free).await;
    let (a, b) = (app.create_webhook(json!({})).await, app.create_webhook(json!({})).await);
    // A concurrent burst, so the limit is checked within far less than the 100 ms a new
    // token takes however slow the disk is.
    let (passed, most) = burst(10, (0..20).map(|_| app.ingest(&a, "{}"))).await;
    assert!((10..=most).contains(&passed), "{passed} of 20 passed, at most {most}");
    app.ingest_ok(&b, "{}").await;

    // Dequeue on free: 5 per second per webhook; the head is locked, so each answers 204.
    let (r, _) = until_refused(5, || app.dequeue(&a)).await;
    assert_eq!(r.headers["ratelimit-limit"], "5");
    assert_eq!(app.dequeue(&b).await.status, StatusCode::OK);
}

#[tokio::test]
async fn each_api_key_has_its_own_limit() {
    // On free, the plan's consumer budget (15 a second) is below the configured 20.
    let app = spawn_app_with(|c| c.api_key_rate_limit = NonZeroU32::new(20)).await;
    on_plan(&app, Plan::Free).await;
    let (_, second) = hookline::auth::create_key(&app.pool, "test", Plan::Free, false).await.unwrap();

    let (r, _) = until_refused(20, || app.api(Method::GET, "/api/webhooks", None)).await;
    assert_eq!(r.headers["ratelimit-limit"], "20");
    assert_eq!(app.api_as(second.expose(), Method::GET, "/api/webhooks", None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_unlimited_plan_has_no_rate_limits() {
    let app = spawn_app_with(|c| c.api_key_rate_limit = NonZeroU32::new(5)).await;
    let wh = app.create_webhook(json!({})).await;
    for _ in 0..30 {
        app.ingest_ok(&wh, "{}").await;
        let d = app.dequeue_ok(&wh).await;
        app.commit_ok(&wh, &d).await;
    }
}

#[tokio::test]
async fn ttl_outside_the_plan_is_refused_naming_the_limit() {
    let app = spawn_app().await;
    on_plan(&app, Plan::Pro).await;
    let r = app.api(Method::POST, "/api/webhooks", Some(json!({"name": "x", "ttlDays": 60}))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("between 1 and 30 on the pro plan"), "{}", r.body);

    let r = app.api(Method::POST, "/api/webhooks", Some(json!({"name": "x"}))).await;
    assert_eq!(r.i64("ttlDays"), 30, "pro defaults to its longest TTL");
    let wh = r.str("id");
    let r = app.api(Method::PATCH, &format!("/api/webhooks/{wh}"), Some(json!({"ttlDays": 31}))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);

    on_plan(&app, Plan::Free).await;
    let r = app.api(Method::POST, "/api/webhooks", Some(json!({"name": "x", "ttlDays": 8}))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("7 on the free plan"), "{}", r.body);
}

#[tokio::test]
async fn a_project_cannot_exceed_its_plans_webhook_count() {
    let app = spawn_app().await;
    on_plan(&app, Plan::Free).await;
    for _ in 0..10 {
        app.create_webhook(json!({})).await;
    }
    let r = app.api(Method::POST, "/api/webhooks", Some(json!({"name": "eleventh"}))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("at most 10 webhooks"), "{}", r.body);
}

#[tokio::test]
async fn the_plans_body_limit_applies_to_ingestion() {
    let app = spawn_app_with(|c| c.max_body_bytes = 4 * 1024 * 1024).await;
    on_plan(&app, Plan::Free).await;
    let wh = app.create_webhook(json!({})).await;
    let r = app.ingest(&wh, &"x".repeat(256 * 1024 + 1)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    app.ingest_ok(&wh, &"x".repeat(256 * 1024)).await;
}

#[tokio::test]
async fn an_operator_override_replaces_a_plan_limit() {
    let app = spawn_app().await;
    let overrides = LimitOverrides { ingest_per_second: NonZeroU32::new(3), ..Default::default() };
    hookline::store::projects::set_limits(&app.pool, "test", Some(Plan::Free), &overrides).await.unwrap();
    let wh = app.create_webhook(json!({})).await;
    let (r, _) = until_refused(3, || app.ingest(&wh, "{}")).await;
    assert_eq!(r.headers["ratelimit-limit"], "3");
}

#[tokio::test]
async fn a_batch_larger_than_the_plans_per_second_limit_is_422_not_a_429_that_never_passes() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    on_plan(&app, Plan::Free).await;
    let items: Vec<_> = (0..11).map(|i| json!({"payload": i})).collect();
    let message =
        app.publish_batch(&wh, items).await.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert!(message.contains("limit of 10 per second"), "{message}");
    assert_eq!(stored(&app, &wh).await, 0);

    let items: Vec<_> = (0..10).map(|i| json!({"payload": i})).collect();
    app.publish_batch(&wh, items).await.expect(StatusCode::CREATED);
    assert_eq!(stored(&app, &wh).await, 10);
}

/// A project holds at most its plan's number of live API keys: past it, creating one is 422
/// naming the limit, and revoking one makes room again.
#[tokio::test]
async fn api_keys_per_project_are_capped_by_the_plan() {
    let app = spawn_app().await;
    on_plan(&app, Plan::Free).await;
    let max = Plan::Free.limits().max_api_keys.unwrap() as usize;
    let mut prefixes = Vec::new();
    // The app's own key is the first; the last place is raced for below.
    for _ in 1..max - 1 {
        let r = app.api(Method::POST, "/api/keys", Some(json!({}))).await;
        r.expect(StatusCode::CREATED);
        prefixes.push(r.str("prefix"));
    }
    // Ten creators at once for the one place left: exactly one gets it.
    let racers: Vec<_> = (0..10)
        .map(|_| {
            let app = app.clone_handle();
            tokio::spawn(async move { app.api(Method::POST, "/api/keys", Some(json!({}))).await.status })
        })
        .collect();
    let mut created = 0;
    for racer in racers {
        match racer.await.unwrap() {
            StatusCode::CREATED => created += 1,
            StatusCode::UNPROCESSABLE_ENTITY => {}
            other => panic!("a racing create answered {other}"),
        }
    }
    assert_eq!(created, 1, "the plan's count holds under concurrency");
    let r = app.api(Method::POST, "/api/keys", Some(json!({}))).await;
    let message = r.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert!(message.contains(&format!("at most {max} API keys on the free plan")), "{message}");
    app.api(Method::DELETE, &format!("/api/keys/{}", prefixes[0]), None).await.expect(StatusCode::NO_CONTENT);
    app.api(Method::POST, "/api/keys", Some(json!({}))).await.expect(StatusCode::CREATED);
}
