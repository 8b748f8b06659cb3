//! API-key verification: the cache after argon2, revalidation, and bursts of a new key.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn a_burst_of_requests_with_a_new_key_all_pass() {
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, url, key) = (app.client.clone(), app.url("/api/webhooks"), app.key.clone());
        tasks
            .push(tokio::spawn(async move { client.get(url).header("x-api-key", key).send().await.unwrap().status() }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
}

#[tokio::test]
async fn a_cached_key_is_rechecked_against_the_database_after_its_ttl() {
    let app = spawn_app_with(|c| c.api_key_cache_ttl = Duration::ZERO).await;
    assert_eq!(app.api(Method::GET, "/api/webhooks", None).await.status, StatusCode::OK);
    assert_eq!(app.api(Method::GET, "/api/webhooks", None).await.status, StatusCode::OK);

    app.sql("UPDATE api_keys SET revoked_at = now()").await;

    let r = app.api(Method::GET, "/api/webhooks", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error_code(), "unauthorized");
}

#[tokio::test]
async fn a_wrong_secret_with_a_real_prefix_is_refused() {
    let app = spawn_app().await;
    let (prefix, _) = app.key.rsplit_once('_').unwrap();
    let forged = format!("{prefix}_{}", "A".repeat(32));
    let r = app.api_as(&forged, Method::GET, "/api/webhooks", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The real key still works after a forged one was tried.
    assert_eq!(app.api(Method::GET, "/api/webhooks", None).await.status, StatusCode::OK);
}
