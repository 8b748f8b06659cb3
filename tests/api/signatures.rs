//! Signed ingestion: each scheme's valid signature passes; a wrong secret, a stale
//! timestamp, a replay or a missing header is 401 and stores nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sha2::Sha256;

use crate::helpers::{spawn_app, spawn_app_on, Reply, TestApp};

const BODY: &str = r#"{"type":"invoice.paid"}"#;

fn mac(secret: &[u8], content: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    m.update(content.as_bytes());
    m.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

async fn signed_webhook(app: &TestApp, scheme: &str, secret: &str) -> String {
    let r = app
        .api(
            Method::POST,
            "/api/webhooks",
            Some(json!({"name": "signed", "signature": {"scheme": scheme, "secret": secret}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["signature"], json!({"scheme": scheme, "toleranceSeconds": 300}));
    assert!(!r.body.to_string().contains(secret), "the secret is never shown");
    r.str("id")
}

async fn post(app: &TestApp, webhook: &str, headers: &[(&str, String)]) -> Reply {
    let mut req = app.client.post(app.url(&format!("/ingest/{webhook}"))).body(BODY);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    app.send(req).await
}

async fn stored(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages").fetch_one(&app.pool).await.unwrap()
}

fn refused(r: &Reply) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    assert_eq!(r.error_code(), "invalid_signature");
}

#[tokio::test]
async fn standard_webhooks_signatures() {
    let app = spawn_app().await;
    let key = b"0123456789abcdef0123456789abcdef";
    let secret = format!("whsec_{}", BASE64.encode(key));
    let wh = signed_webhook(&app, "standard-webhooks", &secret).await;
    let sign = |id: &str, ts: u64, k: &[u8]| BASE64.encode(mac(k, &format!("{id}.{ts}.{BODY}")));
    let headers = |id: &str, ts: u64, sig: String| {
        vec![("webhook-id", id.to_owned()), ("webhook-timestamp", ts.to_string()), ("webhook-signature", sig)]
    };

    let ok = headers("msg_1", now(), format!("v1,{}", sign("msg_1", now(), key)));
    assert_eq!(post(&app, &wh, &ok).await.status, StatusCode::ACCEPTED);
    // Several signatures (a rotation) pass when one matches.
    let rotated = format!("v1,{} v1,{}", BASE64.encode([0u8; 32]), sign("msg_2", now(), key));
    assert_eq!(post(&app, &wh, &headers("msg_2", now(), rotated)).await.status, StatusCode::ACCEPTED);

    refused(&post(&app, &wh, &ok).await); // replayed
    refused(
        &post(
            &app,
            &wh,
            &headers("msg_3", now(), format!("v1,{}", sign("msg_3", now(), b"another-secret-another-secret!!"))),
        )
        .await,
    );
    let stale = now() - 301;
    refused(&post(&app, &wh, &headers("msg_4", stale, format!("v1,{}", sign("msg_4", stale, key)))).await);
    refused(&post(&app, &wh, &[("webhook-id", "msg_5".into()), ("webhook-timestamp", now().to_string())]).await);
    refused(&post(&app, &wh, &[]).await);
    assert_eq!(stored(&app).await, 2);
}

#[tokio::test]
async fn stripe_signatures() {
    let app = spawn_app().await;
    let secret = "whsec_stripe_test_secret_1234";
    let wh = signed_webhook(&app, "stripe", secret).await;
    let header = |ts: u64, k: &str| format!("t={ts},v1={}", hex(&mac(k.as_bytes(), &format!("{ts}.{BODY}"))));

    let ts = now();
    let ok = vec![("stripe-signature", header(ts, secret))];
    assert_eq!(post(&app, &wh, &ok).await.status, StatusCode::ACCEPTED);
    refused(&post(&app, &wh, &ok).await); // replayed
                                          // The same signature spelled differently (upper-case hex) is the same replay.
    let shouted = format!("t={ts},v1={}", hex(&mac(secret.as_bytes(), &format!("{ts}.{BODY}"))).to_uppercase());
    refused(&post(&app, &wh, &[("stripe-signature", shouted)]).await);
    refused(&post(&app, &wh, &[("stripe-signature", header(now() + 1, "whsec_wrong_secret_wrong_secret"))]).await);
    refused(&post(&app, &wh, &[("stripe-signature", header(now() - 400, secret))]).await);
    refused(&post(&app, &wh, &[("stripe-signature", "v1=abcd".into())]).await);
    refused(&post(&app, &wh, &[]).await);
    assert_eq!(stored(&app).await, 1);
}

#[tokio::test]
async fn github_signatures() {
    let app = spawn_app().await;
    let secret = "github-webhook-secret";
    let wh = signed_webhook(&app, "github", secret).await;
    let ok = vec![("x-hub-signature-256", format!("sha256={}", hex(&mac(secret.as_bytes(), BODY))))];

    assert_eq!(post(&app, &wh, &ok).await.status, StatusCode::ACCEPTED);
    // GitHub signs only the body, so a redelivery is accepted.
    assert_eq!(post(&app, &wh, &ok).await.status, StatusCode::ACCEPTED);
    refused(&post(&app, &wh, &[("x-hub-signature-256", format!("sha256={}", hex(&mac(b"wrong", BODY))))]).await);
    refused(&post(&app, &wh, &[("x-hub-signature-256", "md5=00".into())]).await);
    refused(&post(&app, &wh, &[]).await);
    assert_eq!(stored(&app).await, 2);
}

#[tokio::test]
async fn the_secret_is_encrypted_at_rest_and_can_be_removed() {
    let app = spawn_app().await;
    let secret = "github-webhook-secret-marker";
    let wh = signed_webhook(&app, "github", secret).await;
    let raw: Vec<u8> = sqlx::query_scalar("SELECT signature_secret FROM webhooks").fetch_one(&app.pool).await.unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("marker"));

    let r = app.api(Method::PATCH, &format!("/api/webhooks/{wh}"), Some(json!({"signature": null}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body["signature"].is_null());
    assert_eq!(post(&app, &wh, &[]).await.status, StatusCode::ACCEPTED, "unsigned requests pass again");

    for bad in [
        json!({"scheme": "md5", "secret": "0123456789abcdef"}),
        json!({"scheme": "github", "secret": "short"}),
        json!({"scheme": "standard-webhooks", "secret": "whsec_not base64!"}),
        json!({"scheme": "stripe", "secret": "0123456789abcdef", "toleranceSeconds": 0}),
    ] {
        let r = app.api(Method::PATCH, &format!("/api/webhooks/{wh}"), Some(json!({"signature": bad}))).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {}", r.body);
    }
}

/// Replay protection is held in PostgreSQL: a second replica, a restarted broker and two
/// copies of one request sent at once all store it once.
#[tokio::test]
async fn a_replay_is_refused_by_every_replica_and_after_a_restart() {
    let app = spawn_app().await;
    let secret = "whsec_stripe_test_secret_1234";
    let wh = signed_webhook(&app, "stripe", secret).await;
    let header = |ts: u64| format!("t={ts},v1={}", hex(&mac(secret.as_bytes(), &format!("{ts}.{BODY}"))));
    let same_key = |c: &mut hookline::config::Config| c.encryption_key = Some(app.encryption_key.clone().into());

    let ok = vec![("stripe-signature", header(now()))];
    assert_eq!(post(&app, &wh, &ok).await.status, StatusCode::ACCEPTED);
    let replica = spawn_app_on(&app.db_url, same_key).await;
    refused(&post(&replica, &wh, &ok).await);
    // A fresh broker (a restart) on the same database remembers it too.
    let restarted = spawn_app_on(&app.db_url, same_key).await;
    refused(&post(&restarted, &wh, &ok).await);
    assert_eq!(stored(&app).await, 1);

    // Two copies of a new request at once, one to each replica: exactly one is stored.
    let copy = vec![("stripe-signature", header(now() + 1))];
    let (a, b) = tokio::join!(post(&app, &wh, &copy), post(&replica, &wh, &copy));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::ACCEPTED, StatusCode::UNAUTHORIZED], "{} {}", a.body, b.body);
    assert_eq!(stored(&app).await, 2);

    // Claims leave with the TTL purger once past their window, and only then.
    hookline::jobs::TtlPurger::new(app.pool.clone()).run_once().await.unwrap();
    assert_eq!(app.sql_i64("SELECT count(*) FROM seen_signatures").await, 2);
    app.sql("UPDATE seen_signatures SET expires_at = now() - interval '1 second'").await;
    hookline::jobs::TtlPurger::new(app.pool.clone()).run_once().await.unwrap();
    assert_eq!(app.sql_i64("SELECT count(*) FROM seen_signatures").await, 0);
}
