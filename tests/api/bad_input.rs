//! Everything a client can get wrong, and the JSON error it gets back for it:
//! `{"error": {"code", "message"}}` with a stable code.

use std::io::{Read, Write};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{random_id, spawn_app, TestApp};

/// Every /api route that names a webhook (and, where it has one, a message), with a valid body.
fn webhook_routes(wh: &str, msg: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/api/webhooks/{wh}"), None),
        (Method::PATCH, format!("/api/webhooks/{wh}"), Some(json!({"name": "renamed"}))),
        (Method::DELETE, format!("/api/webhooks/{wh}"), None),
        (Method::POST, format!("/api/webhooks/{wh}/messages/dequeue"), None),
        (Method::GET, format!("/api/webhooks/{wh}/messages/{msg}"), None),
        (Method::POST, format!("/api/webhooks/{wh}/messages/{msg}/commit"), None),
        (Method::POST, format!("/api/webhooks/{wh}/messages/{msg}/error"), Some(json!({"reason": "x"}))),
        (Method::GET, format!("/api/webhooks/{wh}/errors"), None),
        (Method::POST, format!("/api/webhooks/{wh}/errors/{msg}/retry"), None),
        (Method::DELETE, format!("/api/webhooks/{wh}/errors/{msg}"), None),
    ]
}

/// Every route naming a message (on a webhook that exists).
fn message_routes(wh: &str, msg: &str) -> Vec<(Method, String, Option<Value>)> {
    webhook_routes(wh, msg).into_iter().filter(|(_, path, _)| path.contains(msg)).collect()
}

async fn expect_not_found(app: &TestApp, key: &str, routes: Vec<(Method, String, Option<Value>)>, what: &str) {
    for (method, path, body) in routes {
        let r = app.api_as(key, method.clone(), &path, body).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {path}: {}", r.body);
        let msg = r.expect_error(StatusCode::NOT_FOUND, "not_found");
        assert!(msg.contains(what), "{method} {path}: {msg}");
    }
}

#[tokio::test]
async fn unknown_webhooks_are_404_everywhere() {
    let app = spawn_app().await;
    let real = app.create_webhook(json!({})).await;
    let hex = real.trim_start_matches("wh_").to_owned();
    let msg = random_id("msg_");
    let unknown = [
        random_id("wh_"),
        "wh_nothex".to_owned(),
        "nonsense".to_owned(),
        hex.clone(),                          // no prefix
        format!("wh_{}", hex.to_uppercase()), // another spelling of a real id
        format!("msg_{hex}"),                 // another kind of id
        format!("wh_{hex}0"),                 // too long
    ];
    for wh in &unknown {
        app.ingest(wh, "{}").await.expect_error(StatusCode::NOT_FOUND, "not_found");
        expect_not_found(&app, &app.key, webhook_routes(wh, &msg), "webhook").await;
    }
    assert_eq!(app.sql_i64("SELECT count(*) FROM messages").await, 0);
    // The real one is untouched by all that.
    assert_eq!(app.get_webhook(&real).await.str("name"), "test hook");
}

#[tokio::test]
async fn unknown_messages_are_404() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let other = app.create_webhook(json!({})).await;
    let (foreign, _) = app.ingest_ok(&other, "{}").await;
    app.ingest_ok(&wh, "{}").await;
    for msg in [random_id("msg_"), "msg_nothex".to_owned(), random_id("wh_"), foreign.clone()] {
        expect_not_found(&app, &app.key, message_routes(&wh, &msg), "message").await;
    }
    assert_eq!(app.message_status(&other, &foreign).await, "queued");
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let (id, _) = app.ingest_ok(&wh, "{}").await;
    app.dequeue_ok(&wh).await;
    let paths = [
        (Method::POST, "/api/webhooks".to_owned()),
        (Method::PATCH, format!("/api/webhooks/{wh}")),
        (Method::POST, format!("/api/webhooks/{wh}/messages/{id}/commit")),
        (Method::POST, format!("/api/webhooks/{wh}/messages/{id}/error")),
    ];
    for (method, path) in &paths {
        for body in [r#"{"name": "#, "not json", "[1, 2]", r#"{"lockToken": 5}"#, r#"{"lockToken": "lt_nothex"}"#] {
            let r =
                app.send(app.request(method.clone(), path).header("content-type", "application/json").body(body)).await;
            let msg = r.expect_error(StatusCode::BAD_REQUEST, "bad_request");
            assert!(!msg.is_empty(), "{method} {path} {body}");
        }
    }
    // Creating needs a body; an unknown field is named.
    app.send(app.request(Method::POST, "/api/webhooks")).await.expect_error(StatusCode::BAD_REQUEST, "bad_request");
    app.send(app.request(Method::PATCH, &format!("/api/webhooks/{wh}")))
        .await
        .expect_error(StatusCode::BAD_REQUEST, "bad_request");
    for (method, path) in &paths {
        let body = r#"{"colour": "red", "name": "x"}"#;
        let r = app.send(app.request(method.clone(), path).header("content-type", "application/json").body(body)).await;
        let msg = r.expect_error(StatusCode::BAD_REQUEST, "bad_request");
        assert!(msg.contains("colour"), "{method} {path}: {msg}");
    }
    let r = app.create_webhook_raw(json!({"lockTimeoutSeconds": 30})).await;
    assert!(r.expect_error(StatusCode::BAD_REQUEST, "bad_request").contains("name"));
    let r = app.create_webhook_raw(json!({"name": "x", "maxRetries": "ten"})).await;
    r.expect_error(StatusCode::BAD_REQUEST, "bad_request");
    // None of it changed anything.
    assert_eq!(app.message_status(&wh, &id).await, "locked");
    assert_eq!(app.list_webhooks("").await.body["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn out_of_range_settings_are_422_naming_the_field() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let before = app.get_webhook(&wh).await.body;
    let cases = [
        (json!({"lockTimeoutSeconds": 0}), "lockTimeoutSeconds"),
        (json!({"lockTimeoutSeconds": 43201}), "lockTimeoutSeconds"),
        (json!({"lockTimeoutSeconds": -5}), "lockTimeoutSeconds"),
        (json!({"maxRetries": 0}), "maxRetries"),
        (json!({"maxRetries": 101}), "maxRetries"),
        (json!({"ttlDays": 0}), "ttlDays"),
        (json!({"ttlDays": 100000}), "ttlDays"),
        (json!({"name": ""}), "name"),
        (json!({"name": "   "}), "name"),
        (json!({"name": "x".repeat(201)}), "name"),
    ];
    for (settings, field) in &cases {
        let mut create = json!({"name": "hook"});
        create.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
        let msg =
            app.create_webhook_raw(create).await.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert!(msg.contains(field), "{settings}: {msg}");
        let msg = app
            .patch_webhook(&wh, settings.clone())
            .await
            .expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert!(msg.contains(field), "{settings}: {msg}");
    }
    // The bounds themselves are fine.
    for ok in [json!({"lockTimeoutSeconds": 1}), json!({"lockTimeoutSeconds": 43200}), json!({"maxRetries": 100})] {
        let mut create = json!({"name": "edge"});
        create.as_object_mut().unwrap().extend(ok.as_object().unwrap().clone());
        app.create_webhook_raw(create).await.expect(StatusCode::CREATED);
    }
    assert_eq!(app.get_webhook(&wh).await.body, before, "a refused PATCH changed the webhook");
    assert_eq!(app.list_webhooks("").await.body["data"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn a_ttl_beyond_the_enterprise_plan_is_refused() {
    let app = spawn_app().await;
    let plan = Some(hookline::domain::Plan::Enterprise);
    hookline::store::projects::set_limits(&app.pool, "test", plan, &Default::default()).await.unwrap();
    let wh = app.create_webhook(json!({})).await;
    for days in [91, 365] {
        let r = app.create_webhook_raw(json!({"name": "long", "ttlDays": days})).await;
        let msg = r.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert!(msg.contains("ttlDays"), "{msg}");
        let r = app.patch_webhook(&wh, json!({"ttlDays": days})).await;
        r.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    }
}

#[tokio::test]
async fn an_oversize_ingestion_is_413_and_stores_nothing() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let limit = 64 * 1024;
    // A client of its own: the broker may close the connection after refusing a body.
    let client = reqwest::Client::new();
    let r = client.post(app.url(&format!("/ingest/{wh}"))).body(vec![b'a'; limit + 1]).send().await.unwrap();
    let r = crate::helpers::Reply::read(r).await;
    let msg = r.expect_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert!(msg.contains(&limit.to_string()), "{msg}");
    assert_eq!(app.sql_i64("SELECT count(*) FROM messages").await, 0);

    // Exactly the limit is fine, and the refused one took no seq.
    let r = app.ingest_with_headers(&wh, &[], vec![b'b'; limit]).await;
    r.expect(StatusCode::ACCEPTED);
    assert_eq!(r.i64("seq"), 1);
    let d = app.dequeue_ok(&wh).await;
    assert_eq!(d.body.unwrap().len(), limit);
}

/// Sends a chunked body of `len` bytes (no Content-Length, so the limit must be enforced
/// while reading) and returns the status line.
fn post_chunked(port: u16, path: &str, len: usize) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'c'; 4096];
    let mut sent = 0;
    while sent < len {
        let n = (len - sent).min(chunk.len());
        // The broker may answer and stop reading before the end: stop writing then.
        if s.write_all(format!("{n:x}\r\n").as_bytes()).is_err()
            || s.write_all(&chunk[..n]).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
        sent += n;
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn an_oversize_chunked_ingestion_is_413_and_stores_nothing() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let (port, path) = (app.port, format!("/ingest/{wh}"));
    let status = tokio::task::spawn_blocking(move || post_chunked(port, &path, 64 * 1024 + 1)).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 413"), "{status:?}");
    assert_eq!(app.sql_i64("SELECT count(*) FROM messages").await, 0);
    let (port, path) = (app.port, format!("/ingest/{wh}"));
    let status = tokio::task::spawn_blocking(move || post_chunked(port, &path, 64 * 1024)).await.unwrap();
    assert!(status.starts_with("HTTP/1.1 202"), "{status:?}");
    assert_eq!(app.sql_i64("SELECT count(*) FROM messages").await, 1);
}

#[tokio::test]
async fn requests_without_a_valid_key_are_401() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let path = format!("/api/webhooks/{wh}");
    let url = app.url(&path);
    let other_shape = format!("hl_{}_{}", "A".repeat(10), "b".repeat(32));
    let attempts = [
        app.client.get(&url),
        app.client.get(&url).header("x-api-key", "wrong"),
        app.client.get(&url).header("x-api-key", ""),
        app.client.get(&url).header("x-api-key", &other_shape),
        app.client.get(&url).header("x-api-key", format!("{}x", app.key)),
        app.client.get(&url).header("authorization", format!("Basic {}", app.key)),
        app.client.get(&url).header("authorization", format!("Bearer{}", app.key)),
        app.client.get(&url).header("authorization", "Bearer"),
        app.client.get(&url).header("authorization", "Bearer wrong"),
        app.client.get(&url).header("authorization", app.key.clone()),
    ];
    for (i, req) in attempts.into_iter().enumerate() {
        let r = app.send(req).await;
        r.expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(r.headers.get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"), "attempt {i}");
    }
    // The API list and the message routes too.
    app.api_as("wrong", Method::GET, "/api/webhooks", None)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");
    app.api_as("wrong", Method::POST, &format!("/api/webhooks/{wh}/messages/dequeue"), None)
        .await
        .expect_error(StatusCode::UNAUTHORIZED, "unauthorized");

    // The right key works as a bearer token too, in any case of the scheme.
    for scheme in ["Bearer", "bearer"] {
        let r = app.send(app.client.get(&url).header("authorization", format!("{scheme} {}", app.key))).await;
        r.expect(StatusCode::OK);
    }
}

#[tokio::test]
async fn another_projects_key_cannot_see_or_touch_a_webhook() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let (msg, _) = app.ingest_ok(&wh, "{}").await;
    let (_, other) =
        hookline::auth::create_key(&app.pool, "other", hookline::domain::Plan::Unlimited, false).await.unwrap();
    let other = other.expose().to_owned();

    // The other project's view: nothing there, and 404 (not 403) on every route.
    let list = app.api_as(&other, Method::GET, "/api/webhooks", None).await;
    list.expect(StatusCode::OK);
    assert_eq!(list.body["data"], json!([]));
    expect_not_found(&app, &other, webhook_routes(&wh, &msg), "webhook").await;

    // The owner sees it unchanged, with its message still queued.
    let list = app.list_webhooks("").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(list.body["data"][0]["id"], wh.as_str());
    assert_eq!(app.get_webhook(&wh).await.str("name"), "test hook");
    assert_eq!(app.message_status(&wh, &msg).await, "queued");

    // And the other project's own webhooks are invisible the other way round.
    let theirs = app.api_as(&other, Method::POST, "/api/webhooks", Some(json!({"name": "theirs"}))).await;
    theirs.expect(StatusCode::CREATED);
    let theirs = theirs.str("id");
    app.get_webhook(&theirs).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    let list = app.list_webhooks("").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn unknown_routes_are_404_json() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::GET, "/"),
        (Method::GET, "/nope"),
        (Method::GET, "/api"),
        (Method::GET, "/api/nope"),
        (Method::POST, "/api/webhooks/x/y/z/w"),
        (Method::GET, "/ingest"),
    ] {
        let r = app.api(method.clone(), path, None).await;
        r.expect_error(StatusCode::NOT_FOUND, "not_found");
    }
}

#[tokio::test]
async fn a_wrong_method_on_a_known_path_gets_a_json_error() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let mut failures = Vec::new();
    for (method, path) in [
        (Method::PUT, "/api/webhooks".to_owned()),
        (Method::PUT, format!("/api/webhooks/{wh}")),
        (Method::GET, format!("/ingest/{wh}")),
        (Method::POST, "/healthz".to_owned()),
    ] {
        let r = app.api(method.clone(), &path, None).await;
        if !(r.status.is_client_error() && r.body["error"]["code"].is_string()) {
            failures.push(format!("{method} {path}: {} with body {}", r.status, r.body));
        }
    }
    assert!(failures.is_empty(), "answers without the JSON error shape:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn page_limits_out_of_range_are_422() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    for base in ["/api/webhooks".to_owned(), format!("/api/webhooks/{wh}/errors")] {
        for q in ["?limit=0", "?limit=101", "?limit=-1"] {
            let r = app.api(Method::GET, &format!("{base}{q}"), None).await;
            let msg = r.expect_error(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
            assert!(msg.contains("limit"), "{base}{q}: {msg}");
        }
        for q in ["?limit=1", "?limit=100"] {
            app.api(Method::GET, &format!("{base}{q}"), None).await.expect(StatusCode::OK);
        }
        for q in ["?limit=ten", "?cursor=garbage", "?colour=red"] {
            app.api(Method::GET, &format!("{base}{q}"), None)
                .await
                .expect_error(StatusCode::BAD_REQUEST, "bad_request");
        }
    }
}

#[tokio::test]
async fn an_oversize_api_body_gets_a_json_error() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let big = json!({"name": "x".repeat(300 * 1024)}).to_string();
    let client = reqwest::Client::new();
    let mut failures = Vec::new();
    for (method, path) in [(Method::POST, "/api/webhooks".to_owned()), (Method::PATCH, format!("/api/webhooks/{wh}"))] {
        let req = client.request(method.clone(), app.url(&path)).header("x-api-key", &app.key).body(big.clone());
        let r = crate::helpers::Reply::read(req.send().await.unwrap()).await;
        if !(r.status.is_client_error() && r.body["error"]["code"].is_string()) {
            failures.push(format!("{method} {path}: {} with body {}", r.status, r.body));
        }
    }
    assert!(failures.is_empty(), "answers without the JSON error shape:\n{}", failures.join("\n"));
    assert_eq!(app.list_webhooks("").await.body["data"].as_array().unwrap().len(), 1);
}

/// What the served OpenAPI document promises about shapes: a 405 lists the methods the path
/// serves; a whole number is an integer however it is spelled; an optional body may be
/// null; a body that is not a JSON object is 400 (serde would read a struct from an array).
#[tokio::test]
async fn requests_are_read_as_the_openapi_document_describes_them() {
    let app = spawn_app().await;
    for (method, path, allow) in
        [("TRACE", "/healthz", "GET"), ("PUT", "/api/keys", "GET, POST"), ("GET", "/ingest/x", "POST")]
    {
        let r = app.send(app.request(Method::from_bytes(method.as_bytes()).unwrap(), path)).await;
        r.expect_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_eq!(r.headers.get("allow").and_then(|v| v.to_str().ok()), Some(allow), "{method} {path}");
    }
    let r = app.create_webhook_raw(json!({"name": "n", "lockTimeoutSeconds": 60.0})).await;
    r.expect(StatusCode::CREATED);
    assert_eq!(r.i64("lockTimeoutSeconds"), 60);
    let r = app.create_webhook_raw(json!({"name": "n", "lockTimeoutSeconds": 60.5})).await;
    r.expect_error(StatusCode::BAD_REQUEST, "bad_request");
    let wh = r.body["id"].as_str().map(str::to_owned).unwrap_or(app.create_webhook(json!({})).await);
    let dequeue = format!("/api/webhooks/{wh}/messages/dequeue");
    let raw =
        |body: &'static str| app.request(Method::POST, &dequeue).header("content-type", "application/json").body(body);
    assert_eq!(app.send(raw("null")).await.status, StatusCode::NO_CONTENT);
    app.send(raw("[null, null]")).await.expect_error(StatusCode::BAD_REQUEST, "bad_request");
}
