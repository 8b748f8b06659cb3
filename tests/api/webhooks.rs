//! /api/webhooks: create, read, change, list (cursor pages), delete.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{spawn_app, uuid_of};

#[tokio::test]
async fn create_answers_201_with_defaults_and_an_ingest_url() {
    let app = spawn_app().await;
    let r = app.create_webhook_raw(json!({"name": "  stripe  "})).await;
    r.expect(StatusCode::CREATED);
    let id = r.str("id");
    assert!(id.starts_with("wh_") && id.len() == 35, "{id}");
    assert_eq!(r.str("name"), "stripe");
    assert_eq!(r.str("ingestUrl"), format!("{}/ingest/{id}", app.address));
    assert!(r.str("ingestUrl").ends_with(&format!("/ingest/{id}")));
    assert_eq!(r.i64("lockTimeoutSeconds"), 300);
    assert_eq!(r.i64("maxRetries"), 10);
    assert_eq!(r.i64("ttlDays"), 7);
    assert!(r.body["createdAt"].is_string() && r.body["updatedAt"].is_string(), "{}", r.body);

    // The ingest URL works as given.
    let ingested = app.client.post(r.str("ingestUrl")).body("hello").send().await.unwrap();
    assert_eq!(ingested.status(), StatusCode::ACCEPTED);

    let got = app.get_webhook(&id).await;
    got.expect(StatusCode::OK);
    assert_eq!(got.body, r.body);
}

#[tokio::test]
async fn create_takes_every_setting() {
    let app = spawn_app().await;
    let r = app
        .create_webhook_raw(json!({"name": "github", "lockTimeoutSeconds": 45, "maxRetries": 3, "ttlDays": 30}))
        .await;
    r.expect(StatusCode::CREATED);
    assert_eq!((r.i64("lockTimeoutSeconds"), r.i64("maxRetries"), r.i64("ttlDays")), (45, 3, 30));
    assert_eq!(app.get_webhook(&r.str("id")).await.body, r.body);
    // The settings reach the queue.
    let wh = r.str("id");
    app.ingest_ok(&wh, "{}").await;
    assert_eq!(app.dequeue_ok(&wh).await.max_retries, 3);
}

#[tokio::test]
async fn patch_changes_only_the_given_fields() {
    let app = spawn_app().await;
    let created = app.create_webhook_raw(json!({"name": "orders", "lockTimeoutSeconds": 60})).await.body.clone();
    let wh = created["id"].as_str().unwrap().to_owned();

    let r = app.patch_webhook(&wh, json!({"maxRetries": 4})).await;
    r.expect(StatusCode::OK);
    let mut expected = created.clone();
    expected["maxRetries"] = json!(4);
    expected["updatedAt"] = r.body["updatedAt"].clone();
    assert_eq!(r.body, expected);
    assert_eq!(app.get_webhook(&wh).await.body, r.body);

    let r = app.patch_webhook(&wh, json!({"name": " orders v2 ", "ttlDays": 14})).await;
    r.expect(StatusCode::OK);
    assert_eq!(r.str("name"), "orders v2");
    assert_eq!((r.i64("lockTimeoutSeconds"), r.i64("maxRetries"), r.i64("ttlDays")), (60, 4, 14));
    assert_eq!(r.body["createdAt"], created["createdAt"]);
    assert_eq!(r.body["ingestUrl"], created["ingestUrl"]);

    // An empty patch changes nothing but is fine.
    let r = app.patch_webhook(&wh, json!({})).await;
    r.expect(StatusCode::OK);
    assert_eq!((r.str("name").as_str(), r.i64("lockTimeoutSeconds"), r.i64("maxRetries")), ("orders v2", 60, 4));

    // A new maxRetries governs the next error.
    app.ingest_ok(&wh, "{}").await;
    app.patch_webhook(&wh, json!({"maxRetries": 1})).await.expect(StatusCode::OK);
    let d = app.dequeue_ok(&wh).await;
    assert_eq!(d.max_retries, 1);
    assert_eq!(app.error_ok(&wh, &d, "x").await.body["status"], "dead");
}

#[tokio::test]
async fn list_pages_through_webhooks_in_creation_order() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.create_webhook(json!({"name": format!("hook {i}")})).await);
    }

    let mut pages = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = app.list_webhooks(&query).await;
        page.expect(StatusCode::OK);
        let data: Vec<(String, String)> = page.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| (w["id"].as_str().unwrap().to_owned(), w["name"].as_str().unwrap().to_owned()))
            .collect();
        let next = page.opt_str("nextCursor");
        if let Some(c) = &next {
            assert_eq!(c, &data.last().unwrap().0, "the cursor is the last id of the page");
        }
        pages.push(data);
        match next {
            Some(c) => query = format!("?limit=2&cursor={c}"),
            None => break,
        }
        assert!(pages.len() < 10, "pagination does not end");
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
    let flat: Vec<_> = pages.into_iter().flatten().collect();
    let expected: Vec<_> = ids.iter().enumerate().map(|(i, id)| (id.clone(), format!("hook {i}"))).collect();
    assert_eq!(flat, expected);

    // Without a limit: all of them, one page, no cursor.
    let all = app.list_webhooks("").await;
    assert_eq!(all.body["data"].as_array().unwrap().len(), 5);
    assert!(all.body["nextCursor"].is_null());
    // A page that ends exactly at the end has no cursor either.
    let last = app.list_webhooks(&format!("?limit=2&cursor={}", ids[2])).await;
    assert_eq!(last.body["data"].as_array().unwrap().len(), 2);
    assert!(last.body["nextCursor"].is_null(), "{}", last.body);
}

#[tokio::test]
async fn delete_removes_the_webhook_and_its_messages() {
    let app = spawn_app().await;
    let doomed = app.create_webhook(json!({"maxRetries": 1})).await;
    let kept = app.create_webhook(json!({})).await;
    app.ingest_many(&doomed, 4).await;
    app.ingest_many(&kept, 2).await;
    // Messages in several states: committed, dead, locked, queued.
    let d = app.dequeue_ok(&doomed).await;
    app.commit_ok(&doomed, &d).await;
    let d = app.dequeue_ok(&doomed).await;
    app.error_ok(&doomed, &d, "x").await;
    let locked = app.dequeue_ok(&doomed).await;

    let r = app.delete_webhook(&doomed).await;
    r.expect(StatusCode::NO_CONTENT);
    assert!(r.body.is_null());
    app.get_webhook(&doomed).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    app.delete_webhook(&doomed).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    app.dequeue(&doomed).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    app.commit(&doomed, &locked.id, None).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    app.ingest(&doomed, "{}").await.expect_error(StatusCode::NOT_FOUND, "not_found");

    let count = |wh: &str| format!("SELECT count(*) FROM messages WHERE webhook_id = '{}'", uuid_of(wh));
    // The messages go in the background, by the webhook sweeper.
    assert_eq!(app.sql_i64(&count(&doomed)).await, 4);
    assert_eq!(hookline::jobs::WebhookSweeper::new(app.pool.clone()).run_once().await.unwrap(), 4);
    assert_eq!(app.sql_i64(&count(&doomed)).await, 0);
    assert_eq!(
        app.sql_i64(&format!("SELECT count(*) FROM webhook_sequences WHERE webhook_id = '{}'", uuid_of(&doomed))).await,
        0
    );
    assert_eq!(app.sql_i64(&count(&kept)).await, 2);
    let list = app.list_webhooks("").await;
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(list.body["data"][0]["id"], kept.as_str());
    assert_eq!(app.drain(&kept).await, vec![1, 2]);
}
