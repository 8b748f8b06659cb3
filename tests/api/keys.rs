//! Scoped API keys and tenant isolation: every `/api` route, walked from the OpenAPI
//! document so a new route cannot be forgotten, refuses a missing or revoked key (401), a
//! key without the route's scope (403), and never shows one project's data to another.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_on, TestApp};

/// Mints a key of the test project through the API.
async fn mint(app: &TestApp, body: Value) -> String {
    let r = app.api(Method::POST, "/api/keys", Some(body)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.str("key")
}

fn prefix(key: &str) -> String {
    key.strip_prefix("hl_").unwrap().split('_').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_key_only_does_what_its_scopes_allow() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_ok(&wh, "{}").await;
    let consume = mint(&app, json!({"scopes": ["consume"]})).await;

    let path = format!("/api/webhooks/{wh}/messages/dequeue");
    assert_eq!(app.api_as(&consume, Method::POST, &path, None).await.status, StatusCode::OK);
    let r = app.api_as(&consume, Method::GET, "/api/webhooks", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.body["error"]["message"].as_str().unwrap().contains("manage"), "{}", r.body);
    let r = app.api_as(&consume, Method::POST, "/api/keys", Some(json!({"scopes": ["manage"]}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_key_limited_to_webhooks_sees_and_touches_only_those() {
    let app = spawn_app().await;
    let (a, b) = (app.create_webhook(json!({"name": "a"})).await, app.create_webhook(json!({"name": "b"})).await);
    let limited = mint(&app, json!({"webhookIds": [a]})).await;

    assert_eq!(
        app.api_as(&limited, Method::POST, &format!("/api/webhooks/{a}/messages/dequeue"), None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.api_as(&limited, Method::POST, &format!("/api/webhooks/{b}/messages/dequeue"), None).await.status,
        StatusCode::FORBIDDEN
    );
    let listed = app.api_as(&limited, Method::GET, "/api/webhooks", None).await;
    let ids: Vec<&str> = listed.body["data"].as_array().unwrap().iter().map(|w| w["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![a.as_str()]);
    // It cannot create project-wide things, nor grant what it does not have.
    assert_eq!(
        app.api_as(&limited, Method::POST, "/api/webhooks", Some(json!({"name": "c"}))).await.status,
        StatusCode::FORBIDDEN
    );
    let r = app.api_as(&limited, Method::POST, "/api/keys", Some(json!({"webhookIds": [b]}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A key it mints inherits its limit.
    let child = app.api_as(&limited, Method::POST, "/api/keys", Some(json!({}))).await;
    assert_eq!(child.status, StatusCode::CREATED);
    assert_eq!(child.body["webhookIds"], json!([a]));
}

#[tokio::test]
async fn keys_are_listed_without_secrets_and_bad_grants_are_refused() {
    let app = spawn_app().await;
    let key = mint(&app, json!({"name": "ci", "scopes": ["publish", "consume"]})).await;
    let r = app.api(Method::GET, "/api/keys", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let listed = r.body["data"].as_array().unwrap().iter().find(|k| k["prefix"] == prefix(&key)).unwrap().clone();
    assert_eq!(listed["name"], "ci");
    assert_eq!(listed["scopes"], json!(["consume", "publish"]));
    assert!(listed.get("key").is_none() && !r.body.to_string().contains(&key), "a listing never shows a secret");
    let stored: String =
        sqlx::query_scalar("SELECT hash FROM api_keys ORDER BY id DESC LIMIT 1").fetch_one(&app.pool).await.unwrap();
    assert!(stored.starts_with("$argon2id$"));

    for bad in [json!({"scopes": []}), json!({"scopes": ["root"]}), json!({"webhookIds": ["wh_nope"]})] {
        let r = app.api(Method::POST, "/api/keys", Some(bad.clone())).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {}", r.body);
    }
    // Another project's webhook in the same database: the grant check must refuse it.
    let (_, theirs) =
        hookline::auth::create_key(&app.pool, "other", hookline::domain::Plan::Unlimited, false).await.unwrap();
    let r = app.api_as(theirs.expose(), Method::POST, "/api/webhooks", Some(json!({"name": "theirs"}))).await;
    r.expect(StatusCode::CREATED);
    let other = r.str("id");
    let r = app.api(Method::POST, "/api/keys", Some(json!({"webhookIds": [other]}))).await;
    let message = r.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert!(message.contains("not a webhook of this project"), "another project's webhook: {message}");
}

#[tokio::test]
async fn a_revoked_key_stops_at_once_on_every_replica() {
    let first = spawn_app().await;
    let second = spawn_app_on(&first.db_url, |_| {}).await;
    let key = mint(&first, json!({})).await;
    // Both replicas have verified and cached it (their cache lasts 30 s).
    assert_eq!(first.api_as(&key, Method::GET, "/api/webhooks", None).await.status, StatusCode::OK);
    assert_eq!(second.api_as(&key, Method::GET, "/api/webhooks", None).await.status, StatusCode::OK);

    let r = first.api(Method::DELETE, &format!("/api/keys/{}", prefix(&key)), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    assert_eq!(first.api_as(&key, Method::GET, "/api/webhooks", None).await.status, StatusCode::UNAUTHORIZED);
    // The other replica hears of it through NOTIFY, well within a second.
    let mut refused = false;
    for _ in 0..20 {
        if second.api_as(&key, Method::GET, "/api/webhooks", None).await.status == StatusCode::UNAUTHORIZED {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the second replica still accepts a revoked key");
    let listed = first.api(Method::GET, "/api/keys", None).await;
    let entry = listed.body["data"].as_array().unwrap().iter().find(|k| k["prefix"] == prefix(&key)).unwrap().clone();
    assert!(entry["revokedAt"].is_string());
}

/// Concrete values for a templated OpenAPI path, all owned by `app`'s project.
struct Fixture {
    webhook: String,
    message: String,
    key_prefix: String,
}

fn fill(path: &str, f: &Fixture) -> String {
    path.replace("{webhook_id}", &f.webhook).replace("{message_id}", &f.message).replace("{prefix}", &f.key_prefix)
}

fn api_routes() -> Vec<(Method, String)> {
    let doc: Value = serde_json::from_str(&hookline::http::openapi::document()).unwrap();
    let mut routes = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        // /api/session is the dashboard's login, by email and password, not by API key.
        if !path.starts_with("/api/") || path == "/api/session" {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            routes.push((method.to_uppercase().parse().unwrap(), path.clone()));
        }
    }
    assert!(routes.len() >= 15, "the document lists the API: {routes:?}");
    routes
}

#[tokio::test]
async fn every_api_route_refuses_missing_revoked_and_wrong_scope_keys_and_hides_other_tenants() {
    let app = spawn_app().await;
    let webhook = app.create_webhook(json!({})).await;
    let (message, _) = app.ingest_ok(&webhook, "{}").await;
    let spare = mint(&app, json!({"name": "spare"})).await;
    let fixture = Fixture { webhook: webhook.clone(), message, key_prefix: prefix(&spare) };
    let revoked = mint(&app, json!({})).await;
    app.api(Method::DELETE, &format!("/api/keys/{}", prefix(&revoked)), None).await;
    let publish_only = mint(&app, json!({"scopes": ["publish"]})).await;
    let consume_only = mint(&app, json!({"scopes": ["consume"]})).await;
    let (_, other) =
        hookline::auth::create_key(&app.pool, "other", hookline::domain::Plan::Unlimited, false).await.unwrap();
    let other = other.expose().to_owned();

    for (method, template) in api_routes() {
        let path = fill(&template, &fixture);
        // A well-formed body where the route needs one, so each answer is about the key.
        let body = if template.ends_with("/extend") {
            Some(json!({"seconds": 30}))
        } else if template.ends_with("/messages") {
            Some(json!({"payload": {"probe": true}}))
        } else if template.ends_with("/messages/batch") {
            Some(json!({"messages": [{"payload": {"probe": true}}]}))
        } else if template.ends_with("/messages/commit") {
            Some(json!({"messages": [{"id": fixture.message}]}))
        } else if template.ends_with("/errors/retry") || template.ends_with("/errors/discard") {
            Some(json!({}))
        } else if (method == Method::POST || method == Method::PATCH) && !template.contains("{message_id}") {
            Some(json!({"name": "probe"}))
        } else {
            None
        };
        let what = format!("{method} {template}");

        let r = app.send(app.client.request(method.clone(), app.url(&path))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what} without a key");
        assert_eq!(r.error_code(), "unauthorized", "{what}");
        let r = app.api_as(&revoked, method.clone(), &path, body.clone()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what} with a revoked key");
        let publishes = template.ends_with("/messages") || template.ends_with("/messages/batch");
        let lacking = if publishes { &consume_only } else { &publish_only };
        let r = app.api_as(lacking, method.clone(), &path, body.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{what} with a key lacking its scope: {}", r.body);
        assert_eq!(r.error_code(), "forbidden", "{what}");

        let r = app.api_as(&other, method.clone(), &path, body.clone()).await;
        if template.contains('{') {
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{what} with another project's key: {}", r.body);
        } else {
            assert!(r.status.is_success(), "{what} with another project's key: {}", r.body);
            let text = r.body.to_string();
            assert!(!text.contains(&webhook) && !text.contains(&fixture.key_prefix), "{what} leaks: {text}");
        }
    }
    // Nothing of the first project was changed by the others.
    assert_eq!(app.api(Method::GET, &format!("/api/webhooks/{webhook}"), None).await.status, StatusCode::OK);
    assert_eq!(app.api_as(&spare, Method::GET, "/api/webhooks", None).await.status, StatusCode::OK);
}
