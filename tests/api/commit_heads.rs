//! The set-based path of consumer group commit (`hookline_commit_heads`): the plain
//! commit-and-next of many webhooks' heads in one batch leases exactly what a lone call
//! would (priorities, due delayed messages, an empty queue), and everything else in the
//! batch still gets its own answer from the per-call path.

use std::time::Duration;

use hookline::domain::{MaxMessages, ProjectId, WebhookId};
use hookline::store::batching::GroupCommitConfig;
use hookline::store::consumer_batch::ConsumerBatcher;
use hookline::store::messages::{ConsumerAction, ConsumerCall, HeldLock};
use hookline::store::{Refusal, StoreError};
use serde_json::json;

use crate::helpers::{spawn_app, uuid_of, Delivery, TestApp};

async fn commit_next(app: &TestApp, wh: &str, d: &Delivery, token: Option<&str>) -> ConsumerCall {
    let webhook: WebhookId = wh.parse().unwrap();
    let project = ProjectId(
        sqlx::query_scalar("SELECT project_id FROM webhooks WHERE id = $1")
            .bind(webhook.as_uuid())
            .fetch_one(&app.pool)
            .await
            .unwrap(),
    );
    let lock = HeldLock { message: d.id.parse().unwrap(), token: token.map(|t| t.parse().unwrap()) };
    ConsumerCall { project, webhook, action: ConsumerAction::Commit { lock, next: Some(MaxMessages::DEFAULT) } }
}

#[tokio::test]
async fn heads_committed_together_lease_what_lone_calls_would() {
    let app = spawn_app().await;
    // Priorities: after seq 1 (dequeued first, alone), the priority-9 message (seq 3) comes
    // before seq 2.
    let ranked = app.create_webhook(json!({"priorities": true})).await;
    app.publish_ok(&ranked, json!({"payload": {}})).await;
    let ranked_head = app.dequeue_ok(&ranked).await;
    for priority in [0, 9] {
        app.publish_ok(&ranked, json!({"payload": {}, "priority": priority})).await;
    }
    // A delayed message that is due by now joins the line at its seq (2, before 3).
    let delayed = app.create_webhook(json!({})).await;
    app.publish_ok(&delayed, json!({"payload": {}})).await;
    app.publish_ok(&delayed, json!({"payload": {}, "delaySeconds": 3600})).await;
    app.publish_ok(&delayed, json!({"payload": {}})).await;
    app.sql(&format!(
        "UPDATE messages SET deliver_at = now() - interval '1 second' WHERE webhook_id = '{}' AND seq = 2",
        uuid_of(&delayed)
    ))
    .await;
    // Nothing after the head: committed, nothing leased, the lock released.
    let lone = app.create_webhook(json!({})).await;
    app.ingest_many(&lone, 1).await;
    // Refused ones go the per-call way: a stale token, and a missing one where it is required.
    let stale = app.create_webhook(json!({})).await;
    app.ingest_many(&stale, 2).await;
    let strict = app.create_webhook(json!({"requireLockToken": true})).await;
    app.ingest_many(&strict, 2).await;

    let mut heads = vec![ranked_head];
    for wh in [&delayed, &lone, &stale, &strict] {
        heads.push(app.dequeue_ok(wh).await);
    }
    let batcher = ConsumerBatcher::start(
        app.pool.clone(),
        GroupCommitConfig { max_batch: 64, max_wait: Duration::from_millis(300), flushers: 1 },
    );
    let calls = vec![
        commit_next(&app, &ranked, &heads[0], Some(&heads[0].lock_token)).await,
        commit_next(&app, &delayed, &heads[1], None).await,
        commit_next(&app, &lone, &heads[2], Some(&heads[2].lock_token)).await,
        commit_next(&app, &stale, &heads[3], Some("lt_00000000000000000000000000000000")).await,
        commit_next(&app, &strict, &heads[4], None).await,
    ];
    let mut answers = futures_util::future::join_all(calls.into_iter().map(|c| batcher.commit(c))).await.into_iter();
    let mut next_seq = || answers.next().unwrap().map(|next| next.iter().map(|m| m.seq.0).collect::<Vec<_>>());

    assert_eq!(next_seq().unwrap(), [3], "the priority-9 message first");
    assert_eq!(next_seq().unwrap(), [2], "the due delayed message at its seq");
    assert_eq!(next_seq().unwrap(), Vec::<i64>::new());
    assert!(matches!(next_seq(), Err(StoreError::Refused(Refusal::LockMismatch))));
    assert!(matches!(next_seq(), Err(StoreError::Refused(Refusal::LockTokenRequired))));

    for (wh, d) in [(&ranked, &heads[0]), (&delayed, &heads[1]), (&lone, &heads[2])] {
        assert_eq!(app.message_status(wh, &d.id).await, "committed");
    }
    for (wh, d) in [(&stale, &heads[3]), (&strict, &heads[4])] {
        assert_eq!(app.message_status(wh, &d.id).await, "locked", "a refused commit changes nothing");
    }
    // The leased messages are locked, and nobody else gets one of those webhooks.
    for wh in [&ranked, &delayed, &stale, &strict] {
        app.dequeue_none(wh).await;
    }
    // The empty one's lock was released: its next message goes out at once.
    app.ingest_many(&lone, 1).await;
    assert_eq!(app.dequeue_ok(&lone).await.seq, 2);
    let stats = app.api(reqwest::Method::GET, &format!("/api/webhooks/{ranked}/stats"), None).await;
    assert_eq!((stats.body["committed"].as_i64(), stats.body["locked"].as_i64()), (Some(1), Some(1)), "{}", stats.body);
}

/// Which calls the set-based path takes (called directly, so a fallback cannot hide it): a
/// head committed by its holder with nothing or one message next, on a webhook whose window
/// is wider than its lock, or whose lock expired without being handed out again; not a stale
/// token, a missing required one, a webhook named twice, or more than one message next.
#[tokio::test]
async fn the_set_based_path_takes_the_plain_heads_and_only_them() {
    let app = spawn_app().await;
    let settings = [
        json!({}),
        json!({}),
        json!({"fifoWindow": 4}),
        json!({}),
        json!({}),
        json!({"requireLockToken": true}),
        json!({}),
        json!({}),
    ];
    let mut hooks = Vec::new();
    for s in settings {
        let wh = app.create_webhook(s).await;
        app.ingest_many(&wh, 3).await;
        let head = app.dequeue_ok(&wh).await;
        hooks.push((wh, head));
    }
    app.sql(&format!(
        "UPDATE webhooks SET lock_expires_at = now() - interval '1 second' WHERE id = '{}'",
        uuid_of(&hooks[3].0)
    ))
    .await;
    let stale = "lt_00000000000000000000000000000000".to_owned();
    // (webhook, token, next) per call; the seventh webhook is named twice.
    let calls: Vec<(usize, Option<String>, i32)> = vec![
        (0, Some(hooks[0].1.lock_token.clone()), 0),
        (1, None, 1),
        (2, Some(hooks[2].1.lock_token.clone()), 1),
        (3, Some(hooks[3].1.lock_token.clone()), 1),
        (4, Some(stale), 1),
        (5, None, 1),
        (6, None, 0),
        (6, None, 1),
        (7, None, 2),
    ];
    let uuid = |s: &str| uuid::Uuid::parse_str(&uuid_of(s)).unwrap();
    let webhooks: Vec<uuid::Uuid> = calls.iter().map(|c| uuid(&hooks[c.0].0)).collect();
    let project: i64 =
        sqlx::query_scalar("SELECT project_id FROM webhooks LIMIT 1").fetch_one(&app.pool).await.unwrap();
    let messages: Vec<uuid::Uuid> = calls.iter().map(|c| uuid(&hooks[c.0].1.id)).collect();
    let tokens: Vec<Option<uuid::Uuid>> = calls.iter().map(|c| c.1.as_deref().map(uuid)).collect();
    let next: Vec<i32> = calls.iter().map(|c| c.2).collect();
    let mut tx = app.pool.begin().await.unwrap();
    let mut taken: Vec<(i64, Option<i64>)> =
        sqlx::query_as("SELECT i, seq FROM hookline_commit_heads($1, $2, $3, $4, $5)")
            .bind(&webhooks)
            .bind(vec![project; calls.len()])
            .bind(&messages)
            .bind(&tokens)
            .bind(&next)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    taken.sort();
    assert_eq!(taken, [(1, None), (2, Some(2)), (3, Some(2)), (4, Some(2))]);
}
