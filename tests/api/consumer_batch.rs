//! Group commit for consumers: concurrent commits (plain and commit-and-next) and errors,
//! across webhooks and consumers, run in one transaction per batch with exactly a lone
//! call's outcome each: order per webhook, each message committed once, a refusal or a
//! failing item fails only itself, and a webhook locked elsewhere holds up only its own
//! requests.

use std::time::Duration;

use hookline::domain::{LockToken, MaxMessages, MessageId, ProjectId, WebhookId};
use hookline::store::batching::GroupCommitConfig;
use hookline::store::consumer_batch::ConsumerBatcher;
use hookline::store::messages::{ConsumerAction, ConsumerCall, Failure, HeldLock};
use hookline::store::{Refusal, StoreError};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::Connection as _;
use tokio::task::JoinSet;

use crate::helpers::{join_within, spawn_app, Delivery, TestApp};

/// One writer that lingers, so everything submitted together lands in one batch.
fn lingering(app: &TestApp) -> ConsumerBatcher {
    ConsumerBatcher::start(
        app.pool.clone(),
        GroupCommitConfig { max_batch: 64, max_wait: Duration::from_millis(300), flushers: 1 },
    )
}

async fn project_of(app: &TestApp, webhook: &WebhookId) -> ProjectId {
    ProjectId(
        sqlx::query_scalar("SELECT project_id FROM webhooks WHERE id = $1")
            .bind(webhook.as_uuid())
            .fetch_one(&app.pool)
            .await
            .unwrap(),
    )
}

/// How many transactions last wrote these messages' rows (their distinct xmin).
async fn writers(app: &TestApp, deliveries: &[&Delivery]) -> usize {
    let ids: Vec<uuid::Uuid> = deliveries.iter().map(|d| *d.id.parse::<MessageId>().unwrap().as_uuid()).collect();
    let xmins: Vec<String> = sqlx::query_scalar("SELECT DISTINCT xmin::text FROM messages WHERE id = ANY ($1)")
        .bind(&ids)
        .fetch_all(&app.pool)
        .await
        .unwrap();
    xmins.len()
}

async fn queued(app: &TestApp, wh: &str, d: &Delivery, next: bool) -> ConsumerCall {
    let webhook: WebhookId = wh.parse().unwrap();
    ConsumerCall {
        project: project_of(app, &webhook).await,
        webhook,
        action: ConsumerAction::Commit { lock: held(d), next: next.then_some(MaxMessages::DEFAULT) },
    }
}

fn held(d: &Delivery) -> HeldLock {
    HeldLock { message: d.id.parse().unwrap(), token: Some(d.lock_token.parse().unwrap()) }
}

/// Twenty webhooks drained at once by commit-and-next, with stale commits thrown in: each
/// webhook's messages come out in seq order, each committed once, and every stale commit is
/// refused without failing its batch.
#[tokio::test]
async fn concurrent_commit_next_across_webhooks_keeps_order_and_commits_each_once() {
    let app = spawn_app().await;
    let mut hooks = Vec::new();
    for _ in 0..20 {
        let wh = app.create_webhook(json!({})).await;
        app.ingest_many(&wh, 10).await;
        hooks.push(wh);
    }
    let mut consumers = JoinSet::new();
    for wh in &hooks {
        let (app, wh) = (app.clone_handle(), wh.clone());
        consumers.spawn(async move {
            let mut seen = Vec::new();
            let mut current = app.dequeue_ok(&wh).await;
            loop {
                seen.push(current.seq);
                // A stale token for the same message: refused, changes nothing.
                let stale = app.commit(&wh, &current.id, Some("lt_00000000000000000000000000000000")).await;
                assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.body);
                let r = app.commit_next(&wh, &current.id, Some(&current.lock_token)).await;
                match r.status {
                    StatusCode::OK => current = Delivery::from_reply(&r),
                    StatusCode::NO_CONTENT => return (wh, seen),
                    other => panic!("commit-and-next answered {other}: {}", r.body),
                }
            }
        });
    }
    for (wh, seen) in join_within(consumers, Duration::from_secs(120)).await {
        assert_eq!(seen, (1..=10).collect::<Vec<_>>(), "{wh}");
        let committed = app
            .sql_i64(&format!(
                "SELECT count(*) FROM messages WHERE webhook_id = '{}' AND state = 'committed'",
                crate::helpers::uuid_of(&wh)
            ))
            .await;
        assert_eq!(committed, 10);
    }
}

/// One batch with a good commit-and-next, a wrong token and a webhook that does not exist:
/// each gets the answer it would have had alone (the unknown webhook a 404, without
/// failing the batch).
#[tokio::test]
async fn a_failing_commit_fails_alone_and_its_neighbours_get_their_own_answers() {
    let app = spawn_app().await;
    let (a, b) = (app.create_webhook(json!({})).await, app.create_webhook(json!({})).await);
    app.ingest_many(&a, 2).await;
    app.ingest_many(&b, 2).await;
    let (head_a, head_b) = (app.dequeue_ok(&a).await, app.dequeue_ok(&b).await);
    let committer = lingering(&app);
    let good = queued(&app, &a, &head_a, true).await;
    let mut wrong = queued(&app, &b, &head_b, false).await;
    let stale = HeldLock { message: head_b.id.parse().unwrap(), token: Some(LockToken::new_random()) };
    wrong.action = ConsumerAction::Commit { lock: stale, next: None };
    let mut unknown = queued(&app, &a, &head_a, false).await;
    unknown.webhook = WebhookId::new_random();
    let nothing = HeldLock { message: MessageId::new_random(), token: None };
    unknown.action = ConsumerAction::Commit { lock: nothing, next: None };

    let (good, wrong, unknown) =
        tokio::join!(committer.commit(good), committer.commit(wrong), committer.commit(unknown));
    let next = good.expect("the good commit").pop().expect("a next message");
    assert_eq!(next.seq.0, 2);
    assert!(matches!(wrong, Err(StoreError::Refused(Refusal::LockMismatch))), "{:?}", wrong.as_ref().err());
    assert!(matches!(unknown, Err(StoreError::NotFound(_))), "{:?}", unknown.as_ref().err());
    assert_eq!(app.message_status(&a, &head_a.id).await, "committed");
    assert_eq!(app.message_status(&b, &head_b.id).await, "locked");
}

/// A webhook whose row another transaction holds past the batch's one-second lock wait
/// holds up only its own commit: the other webhook's commit in the same batch is answered,
/// and the held one completes once the row is free.
#[tokio::test]
async fn a_webhook_locked_elsewhere_holds_up_only_its_own_commits() {
    let app = spawn_app().await;
    let (held, free) = (app.create_webhook(json!({})).await, app.create_webhook(json!({})).await);
    app.ingest_many(&held, 1).await;
    app.ingest_many(&free, 1).await;
    let (head_held, head_free) = (app.dequeue_ok(&held).await, app.dequeue_ok(&free).await);
    let mut holder = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    let hold = format!("SELECT 1 FROM webhooks WHERE id = '{}' FOR NO KEY UPDATE", crate::helpers::uuid_of(&held));
    sqlx::query(&hold).execute(&mut holder).await.unwrap();

    let committer = lingering(&app);
    let (to_held, to_free) =
        (queued(&app, &held, &head_held, false).await, queued(&app, &free, &head_free, false).await);
    let waiting = {
        let committer = committer.clone();
        tokio::spawn(async move { committer.commit(to_held).await })
    };
    let answered = tokio::time::timeout(Duration::from_secs(20), committer.commit(to_free)).await;
    assert!(answered.expect("the free webhook's commit is answered").is_ok());
    assert_eq!(app.message_status(&free, &head_free.id).await, "committed");
    assert!(!waiting.is_finished(), "the held webhook's commit waits for its row");

    // The one flusher is not stuck behind it: another batch meeting the held webhook again
    // (a retry) still answers its other commit.
    let other = app.create_webhook(json!({})).await;
    app.ingest_many(&other, 1).await;
    let head_other = app.dequeue_ok(&other).await;
    let (retry, to_other) =
        (queued(&app, &held, &head_held, false).await, queued(&app, &other, &head_other, false).await);
    let retrying = {
        let committer = committer.clone();
        tokio::spawn(async move { committer.commit(retry).await })
    };
    let answered = tokio::time::timeout(Duration::from_secs(20), committer.commit(to_other)).await;
    assert!(answered.expect("answered while the webhook is still held").is_ok());

    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("answered").unwrap();
    let retried = tokio::time::timeout(Duration::from_secs(20), retrying).await.expect("answered").unwrap();
    // One of the two commits of the held head got it; the other finds it committed.
    let outcomes = [outcome.map(drop), retried.map(drop)];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{:?}",
        outcomes.iter().map(|o| o.as_ref().err()).collect::<Vec<_>>()
    );
    assert!(outcomes.iter().any(|o| matches!(
        o,
        Err(StoreError::Refused(Refusal::NotLocked { state: hookline::domain::MessageState::Committed }))
    )));
    assert_eq!(app.message_status(&held, &head_held.id).await, "committed");
}

/// Two commits of one head in one batch run in arrival order, each seeing the other's
/// writes: the first commits and locks the next message, the second finds it committed.
#[tokio::test]
async fn two_commits_of_one_head_in_a_batch_answer_as_if_one_after_the_other() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    app.ingest_many(&wh, 2).await;
    let head = app.dequeue_ok(&wh).await;
    let committer = lingering(&app);
    let (first, second) = (queued(&app, &wh, &head, true).await, queued(&app, &wh, &head, false).await);
    let (first, second) = tokio::join!(committer.commit(first), committer.commit(second));
    assert_eq!(first.expect("committed").pop().expect("the next message").seq.0, 2);
    assert!(
        matches!(
            second,
            Err(StoreError::Refused(Refusal::NotLocked { state: hookline::domain::MessageState::Committed }))
        ),
        "{:?}",
        second.as_ref().err()
    );
}

/// Standard-mode commits join a batch with FIFO ones: every held lock commits, in one
/// transaction.
#[tokio::test]
async fn standard_and_fifo_commits_share_a_batch() {
    let app = spawn_app().await;
    let (standard, fifo) = (app.create_webhook(json!({"mode": "standard"})).await, app.create_webhook(json!({})).await);
    app.ingest_many(&standard, 2).await;
    app.ingest_many(&fifo, 1).await;
    let r = app.dequeue_with(&standard, "maxMessages=2").await;
    let held: Vec<Delivery> = r.body["messages"].as_array().unwrap().iter().map(crate::helpers::delivery).collect();
    assert_eq!(held.len(), 2);
    let head = app.dequeue_ok(&fifo).await;
    let committer = lingering(&app);
    let mut commits = Vec::new();
    for d in &held {
        commits.push(committer.commit(queued(&app, &standard, d, false).await));
    }
    commits.push(committer.commit(queued(&app, &fifo, &head, false).await));
    for outcome in futures_util::future::join_all(commits).await {
        assert!(outcome.is_ok(), "{:?}", outcome.as_ref().err());
    }
    let transactions = writers(&app, &held.iter().chain([&head]).collect::<Vec<_>>()).await;
    assert_eq!(transactions, 1, "three commits, {transactions} transactions");
}

/// Commits submitted together are written by one transaction (one commit record and one
/// flush for all): their rows carry the same transaction id.
#[tokio::test]
async fn commits_submitted_together_share_one_transaction() {
    let app = spawn_app().await;
    let mut heads = Vec::new();
    for _ in 0..3 {
        let wh = app.create_webhook(json!({})).await;
        app.ingest_many(&wh, 2).await;
        let head = app.dequeue_ok(&wh).await;
        heads.push((wh, head));
    }
    let committer = lingering(&app);
    let mut commits = Vec::new();
    for (wh, head) in &heads {
        commits.push(committer.commit(queued(&app, wh, head, true).await));
    }
    for outcome in futures_util::future::join_all(commits).await {
        assert_eq!(outcome.expect("committed").pop().expect("the next one").seq.0, 2);
    }
    let transactions = writers(&app, &heads.iter().map(|(_, h)| h).collect::<Vec<_>>()).await;
    assert_eq!(transactions, 1, "three commits, {transactions} transactions");
}

/// Errors join the batch: a requeued error, a commit and an error without requeue, in one
/// transaction, each answered as alone.
#[tokio::test]
async fn errors_and_commits_share_a_batch() {
    let app = spawn_app().await;
    let mut heads = Vec::new();
    for _ in 0..3 {
        let wh = app.create_webhook(json!({"maxRetries": 3})).await;
        app.ingest_many(&wh, 2).await;
        let head = app.dequeue_ok(&wh).await;
        heads.push((wh, head));
    }
    let committer = lingering(&app);
    let error = |call: ConsumerCall, d: &Delivery, requeue: bool| ConsumerCall {
        action: ConsumerAction::Error {
            lock: held(d),
            failure: Failure { reason: Some("downstream said no".into()), requeue, hold: None },
        },
        ..call
    };
    let retried = error(queued(&app, &heads[0].0, &heads[0].1, false).await, &heads[0].1, true);
    let committed = queued(&app, &heads[1].0, &heads[1].1, false).await;
    let buried = error(queued(&app, &heads[2].0, &heads[2].1, false).await, &heads[2].1, false);
    let (retried, committed, buried) =
        tokio::join!(committer.error(retried), committer.commit(committed), committer.error(buried));
    let retried = retried.expect("errored");
    assert_eq!((retried.state, retried.retry_count), (hookline::domain::MessageState::Queued, 1));
    assert!(committed.expect("committed").is_empty());
    assert_eq!(buried.expect("errored").state, hookline::domain::MessageState::Dead);
    let m = app.message(&heads[0].0, &heads[0].1.id).await;
    assert_eq!((m.str("status").as_str(), m.str("lastError").as_str()), ("queued", "downstream said no"));
    assert_eq!(app.message_status(&heads[2].0, &heads[2].1.id).await, "dead");
    let transactions = writers(&app, &heads.iter().map(|(_, h)| h).collect::<Vec<_>>()).await;
    assert_eq!(transactions, 1, "three acknowledgements, {transactions} transactions");
}

/// A batch whose COMMIT fails (here a deferred constraint trigger refuses it at commit time)
/// tells every caller its outcome is unknown, and writes nothing: the locks stay held under
/// the same tokens, so each consumer's retry commits exactly once.
#[tokio::test]
async fn a_batch_whose_commit_fails_answers_every_caller_and_writes_nothing() {
    let app = spawn_app().await;
    let (a, b) = (app.create_webhook(json!({})).await, app.create_webhook(json!({})).await);
    app.ingest_many(&a, 2).await;
    app.ingest_many(&b, 2).await;
    let (head_a, head_b) = (app.dequeue_ok(&a).await, app.dequeue_ok(&b).await);
    app.sql(
        "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$",
    )
    .await;
    app.sql(
        "CREATE CONSTRAINT TRIGGER refuse_commits AFTER UPDATE ON messages DEFERRABLE INITIALLY DEFERRED
         FOR EACH ROW WHEN (NEW.state = 'committed') EXECUTE FUNCTION refuse_at_commit()",
    )
    .await;
    let committer = lingering(&app);
    let (first, second) = (queued(&app, &a, &head_a, true).await, queued(&app, &b, &head_b, false).await);
    let (first, second) = tokio::join!(committer.commit(first), committer.commit(second));
    for outcome in [first, second] {
        match outcome {
            Err(StoreError::Database(e)) => assert!(e.source.to_string().contains("outcome is unknown"), "{e:?}"),
            other => panic!("a failed COMMIT answered {:?}", other.map(|next| next.len())),
        }
    }
    assert_eq!(
        app.stored_where(&a, "state = 'committed'").await + app.stored_where(&b, "state = 'committed'").await,
        0
    );
    assert_eq!(app.message_status(&a, &head_a.id).await, "locked");
    assert_eq!(app.message_status(&b, &head_b.id).await, "locked");

    app.sql("DROP TRIGGER refuse_commits ON messages").await;
    let (first, second) = (queued(&app, &a, &head_a, true).await, queued(&app, &b, &head_b, false).await);
    let (first, second) = tokio::join!(committer.commit(first), committer.commit(second));
    assert_eq!(first.expect("committed on retry").pop().expect("the next message").seq.0, 2);
    assert!(second.expect("committed on retry").is_empty());
    assert_eq!(app.stored_where(&a, "state = 'committed'").await, 1);
    assert_eq!(app.stored_where(&b, "state = 'committed'").await, 1);
}
