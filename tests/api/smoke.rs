use reqwest::StatusCode;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_message_goes_from_ingestion_to_commit() {
    let app = spawn_app().await;
    let wh = app.create_webhook(serde_json::json!({})).await;
    let (id, seq) = app.ingest_ok(&wh, r#"{"a":1}"#).await;
    assert_eq!(seq, 1);
    let got = app.dequeue(&wh).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.str("id"), id);
    assert_eq!(got.str("body"), r#"{"a":1}"#);
    let c = app.commit(&wh, &id, Some(&got.str("lockToken"))).await;
    assert_eq!(c.status, StatusCode::OK);
    assert_eq!(c.str("status"), "committed");
}
