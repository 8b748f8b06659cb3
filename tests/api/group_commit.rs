//! Group-commit ingestion: batches keep per-webhook order, lose nothing, and a failed
//! batch fails only the requests that caused it.

use std::time::Duration;

use hookline::crypto::KeyRing;
use hookline::domain::{MessageId, WebhookId};
use hookline::store::group_commit::{GroupCommitConfig, GroupCommitter};
use hookline::store::messages::NewMessage;
use hookline::store::StoreError;
use serde_json::json;

use crate::helpers::{spawn_app, TestApp};

/// One writer that lingers, so everything submitted together lands in one batch.
fn lingering_committer(app: &TestApp) -> GroupCommitter {
    let config = GroupCommitConfig { max_batch: 64, max_wait: Duration::from_millis(300), flushers: 1 };
    GroupCommitter::start(app.pool.clone(), config)
}

fn sealed(app: &TestApp, webhook: &WebhookId, id: MessageId) -> NewMessage {
    let keys = KeyRing::from_base64(&app.encryption_key, &[]).unwrap();
    NewMessage { id, sealed: keys.seal(webhook, &id, b"payload"), options: Default::default(), replay: None }
}

async fn seqs_of(app: &TestApp, webhook: &WebhookId) -> Vec<i64> {
    sqlx::query_scalar("SELECT seq FROM messages WHERE webhook_id = $1 ORDER BY seq")
        .bind(webhook.as_uuid())
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn concurrent_ingests_across_webhooks_get_contiguous_seqs_in_one_batch_each() {
    let app = spawn_app().await;
    let a: WebhookId = app.create_webhook(json!({})).await.parse().unwrap();
    let b: WebhookId = app.create_webhook(json!({})).await.parse().unwrap();
    let committer = lingering_committer(&app);

    let mut tasks = Vec::new();
    for i in 0..40 {
        let webhook = if i % 2 == 0 { a } else { b };
        let message = sealed(&app, &webhook, MessageId::new_random());
        let c = committer.clone();
        tasks.push(tokio::spawn(async move { c.submit(webhook, message).await }));
    }
    let mut results = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        results.push((i % 2, t.await.unwrap().expect("every ingest succeeds").seq.0));
    }

    assert_eq!(seqs_of(&app, &a).await, (1..=20).collect::<Vec<_>>());
    assert_eq!(seqs_of(&app, &b).await, (1..=20).collect::<Vec<_>>());
    // Each webhook's 20 requests were told 20 different seqs: no two the same.
    for webhook in [0, 1] {
        let mut answered: Vec<i64> = results.iter().filter(|(w, _)| *w == webhook).map(|(_, s)| *s).collect();
        answered.sort_unstable();
        assert_eq!(answered, (1..=20).collect::<Vec<_>>(), "each seq answered once per webhook");
    }
}

#[tokio::test]
async fn a_failing_item_fails_only_its_own_request() {
    let app = spawn_app().await;
    let webhook: WebhookId = app.create_webhook(json!({})).await.parse().unwrap();
    // A message id taken by another webhook violates messages_id_key and fails the whole
    // batch's statement.
    let other = app.create_webhook(json!({})).await;
    let (existing, _) = app.ingest_ok(&other, "{}").await;
    let existing: MessageId = existing.parse().unwrap();
    let committer = lingering_committer(&app);

    let good_1 = committer.submit(webhook, sealed(&app, &webhook, MessageId::new_random()));
    let bad = committer.submit(webhook, sealed(&app, &webhook, existing));
    let good_2 = committer.submit(webhook, sealed(&app, &webhook, MessageId::new_random()));
    let (good_1, bad, good_2) = tokio::join!(good_1, bad, good_2);

    assert!(matches!(bad, Err(StoreError::Database(_))), "the duplicate fails: {bad:?}");
    let mut seqs = vec![good_1.unwrap().seq.0, good_2.unwrap().seq.0];
    seqs.sort_unstable();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(seqs_of(&app, &webhook).await, vec![1, 2], "nothing lost, no gap from the failed item");
}

/// A batch retried item by item after its COMMIT failed may find its messages stored
/// already (the server committed, the answer was lost): each is answered as stored, once.
#[tokio::test]
async fn a_retried_item_already_stored_in_its_webhook_is_answered_as_stored() {
    let app = spawn_app().await;
    let webhook: WebhookId = app.create_webhook(json!({})).await.parse().unwrap();
    let (existing, seq) = app.ingest_ok(&webhook.to_string(), "{}").await;
    let existing: MessageId = existing.parse().unwrap();
    let committer = lingering_committer(&app);

    let fresh = committer.submit(webhook, sealed(&app, &webhook, MessageId::new_random()));
    let again = committer.submit(webhook, sealed(&app, &webhook, existing));
    let (fresh, again) = tokio::join!(fresh, again);

    let again = again.expect("the stored message, not an error");
    assert_eq!((again.id, again.seq.0, again.duplicate), (existing, seq, false));
    assert_eq!(fresh.unwrap().seq.0, 2);
    assert_eq!(seqs_of(&app, &webhook).await, vec![1, 2], "stored once");
}

#[tokio::test]
async fn an_unknown_webhook_in_a_batch_is_not_found_and_the_rest_are_stored() {
    let app = spawn_app().await;
    let webhook: WebhookId = app.create_webhook(json!({})).await.parse().unwrap();
    let unknown = WebhookId::new_random();
    let committer = lingering_committer(&app);

    let known = committer.submit(webhook, sealed(&app, &webhook, MessageId::new_random()));
    let missing = committer.submit(unknown, sealed(&app, &unknown, MessageId::new_random()));
    let (known, missing) = tokio::join!(known, missing);

    assert_eq!(known.unwrap().seq.0, 1);
    assert!(matches!(missing, Err(StoreError::NotFound("webhook"))), "{missing:?}");
    assert_eq!(seqs_of(&app, &webhook).await, vec![1]);
}
