//! Dashboard users: login sets a Secure, HttpOnly, SameSite cookie; logout ends the
//! session; wrong passwords and unknown emails look the same; attempts are limited.

use std::time::{Duration, Instant};

use hookline::store::accounts::{self, Role};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{spawn_app, Reply, TestApp};

const PASSWORD: &str = "correct horse battery staple";

async fn user(app: &TestApp, email: &str) {
    let hash = hookline::crypto::password::hash_secret(PASSWORD);
    let project = hookline::store::projects::find(&app.pool, "test").await.unwrap();
    let id = accounts::upsert_user(&app.pool, email, &hash).await.unwrap();
    accounts::add_member(&app.pool, id, project, Role::Owner).await.unwrap();
}

async fn login(app: &TestApp, email: &str, password: &str) -> (Reply, Option<String>) {
    let r = app
        .client
        .post(app.url("/api/session"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let cookie = r.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned());
    (Reply::read(r).await, cookie)
}

#[tokio::test]
async fn login_sets_a_strict_cookie_and_logout_ends_the_session() {
    let app = spawn_app().await;
    user(&app, "ada@example.com").await;

    let (r, cookie) = login(&app, "  Ada@Example.com ", PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body, json!({"email": "ada@example.com", "projects": [{"project": "test", "role": "owner"}]}));
    let cookie = cookie.expect("a session cookie");
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    let pair = cookie.split(';').next().unwrap().to_owned();
    let stored: Vec<u8> = sqlx::query_scalar("SELECT token_hash FROM sessions").fetch_one(&app.pool).await.unwrap();
    assert!(!pair.contains(&String::from_utf8_lossy(&stored).to_string()), "only a hash of the token is stored");

    let me = app.send(app.client.get(app.url("/api/session")).header("cookie", &pair)).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["email"], "ada@example.com");

    let out = app.send(app.client.delete(app.url("/api/session")).header("cookie", &pair)).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let me = app.send(app.client.get(app.url("/api/session")).header("cookie", &pair)).await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users").fetch_one(&app.pool).await.unwrap();
    assert!(hash.starts_with("$argon2id$"));
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_email_look_the_same() {
    let app = spawn_app().await;
    user(&app, "ada@example.com").await;
    let (mut wrong, mut unknown) = (Duration::ZERO, Duration::ZERO);
    for i in 0..3 {
        let started = Instant::now();
        let (a, _) = login(&app, "ada@example.com", &format!("wrong password {i}")).await;
        wrong += started.elapsed();
        let started = Instant::now();
        let (b, _) = login(&app, &format!("nobody{i}@example.com"), PASSWORD).await;
        unknown += started.elapsed();
        assert_eq!((a.status, &a.body), (b.status, &b.body));
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.error_code(), "invalid_login");
    }
    // Both pay one argon2 verification; a missing account is not answered early.
    let ratio = wrong.as_secs_f64() / unknown.as_secs_f64();
    assert!((0.25..4.0).contains(&ratio), "wrong password {wrong:?} vs unknown email {unknown:?}");
}

#[tokio::test]
async fn failed_logins_are_limited_per_account() {
    let app = spawn_app().await;
    user(&app, "ada@example.com").await;
    for i in 0..5 {
        let (r, _) = login(&app, "ada@example.com", &format!("guess {i}")).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    let (r, _) = login(&app, "ada@example.com", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    // Another account from the same address still gets its own attempts.
    user(&app, "bob@example.com").await;
    assert_eq!(login(&app, "bob@example.com", PASSWORD).await.0.status, StatusCode::OK);
    let _ = app.api(Method::GET, "/api/webhooks", None).await;
}

async fn login_from(app: &TestApp, forwarded_for: &str, email: &str) -> StatusCode {
    let body = json!({"email": email, "password": "wrong"});
    let r = app.client.post(app.url("/api/session")).header("x-forwarded-for", forwarded_for).json(&body);
    r.send().await.unwrap().status()
}

/// Sends failed logins (each for a new account, so only the address limit can refuse) until
/// one is refused; returns how many were let through. The limit (20 a minute) refills one
/// every 3 s, so a slow machine may let through one more per 3 s the attempts took.
async fn attempts_until_limited(app: &TestApp, forwarded_for: impl Fn(usize) -> String) -> usize {
    let started = Instant::now();
    for i in 0..60 {
        match login_from(app, &forwarded_for(i), &format!("user{i}@example.com")).await {
            StatusCode::UNAUTHORIZED => continue,
            StatusCode::TOO_MANY_REQUESTS => {
                let refilled = started.elapsed().as_secs() as usize / 3 + 1;
                assert!((20..=20 + refilled).contains(&i), "limited after {i} attempts in {:?}", started.elapsed());
                return i;
            }
            other => panic!("attempt {i}: {other}"),
        }
    }
    panic!("60 attempts from one address were never limited")
}

/// Logins are limited per client address too; behind a trusted proxy the address is the one
/// it forwards, and from anyone else `X-Forwarded-For` is ignored.
#[tokio::test]
async fn failed_logins_are_limited_per_client_address_as_the_trusted_proxy_reports_it() {
    let app = crate::helpers::spawn_app_with(|c| c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()]).await;
    // A spoofed entry further left changes nothing: the proxy's own entry is believed.
    attempts_until_limited(&app, |i| format!("198.51.100.{i}, 203.0.113.7")).await;
    assert_eq!(login_from(&app, "203.0.113.8", "another@example.com").await, StatusCode::UNAUTHORIZED);

    // Not a trusted proxy: the header is the sender's word, and the peer is what counts.
    let direct = spawn_app().await;
    attempts_until_limited(&direct, |i| format!("203.0.113.{i}")).await;
}
