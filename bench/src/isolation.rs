//! The isolation scenario: does one webhook with a million waiting messages and a poisoned
//! head slow the others? 99 webhooks at a trickle are measured alone, then beside one whose
//! head a crash-looping consumer keeps leasing and never acknowledges, while an operator
//! reads its head view.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::StatusCode;
use serde_json::json;

use crate::baseline::broker_sql;
use crate::load::{self, Outcome, Target};

/// What the scenario measured: the small webhooks' deliveries alone and beside the big
/// one, and the big one's head view (its latency; `done` the reads that answered 200).
pub struct Isolation {
    pub alone: Outcome,
    pub beside: Outcome,
    pub head_view: Outcome,
}

/// `waiting` messages behind the big webhook's head; `rate` messages per second over the 99.
pub async fn run(target: &Target, cluster: &Path, waiting: u64, rate: u64, secs: u64) -> anyhow::Result<Isolation> {
    let small = Arc::new(load::create_webhooks(target, 99, 300).await?);
    // Warm (connections, caches) before the run compared against, so it is not the cold one.
    load::delivery(target, small.clone(), rate, 3).await;
    let alone = load::delivery(target, small.clone(), rate, secs).await;

    let settings = json!({"name": "bench-poisoned", "maxRetries": 100, "lockTimeoutSeconds": 2});
    let big = load::create_webhook(target, settings).await?;
    // The head is a real message; behind it, rows written straight to the table (never
    // opened: the head never moves).
    let ingested = target.client.post(format!("{}/ingest/{big}", target.base)).body(load::body(0)).send().await?;
    anyhow::ensure!(ingested.status() == StatusCode::ACCEPTED, "ingesting the poisoned head: {}", ingested.status());
    let id = big.trim_start_matches("wh_");
    eprintln!("isolation: adding {waiting} waiting messages behind a poisoned head...");
    let sql = format!(
        "INSERT INTO messages (webhook_id, seq, id, expires_at, key_id, nonce, ciphertext)
         SELECT '{id}', s, gen_random_uuid(), now() + interval '7 days', 0,
                '\\x000000000000000000000000'::bytea, decode(repeat('ab', 512), 'hex')
         FROM generate_series(2, {last}) s;
         UPDATE webhook_sequences SET last_seq = {last} WHERE webhook_id = '{id}';",
        last = waiting + 1
    );
    broker_sql(cluster, &sql).await?;
    // Vacuumed and checkpointed here, not by autovacuum or a checkpoint of the bulk insert in
    // the middle of the run: the load is what is measured.
    broker_sql(cluster, "VACUUM (ANALYZE) messages").await?;
    broker_sql(cluster, "CHECKPOINT").await?;

    let stop = Arc::new(AtomicBool::new(false));
    let poison = tokio::spawn(crash_loop(target.clone(), big.clone(), stop.clone()));
    let operator = tokio::spawn(read_head(target.clone(), big, stop.clone()));
    let beside = load::delivery(target, small, rate, secs).await;
    stop.store(true, Ordering::Relaxed);
    poison.await?;
    let head_view = operator.await?;
    Ok(Isolation { alone, beside, head_view })
}

/// A consumer that leases the head whenever its lock has expired and never answers: it
/// long-polls, as every consumer of the bench does, so it is handed the head the moment
/// the last lease expires.
async fn crash_loop(target: Target, webhook: String, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let _ = load::post(&target, &format!("/api/webhooks/{webhook}/messages/dequeue?wait=1"), None).await;
    }
}

/// An operator asking why the webhook is blocked, ten times a second.
async fn read_head(target: Target, webhook: String, stop: Arc<AtomicBool>) -> Outcome {
    let started = Instant::now();
    let mut latency = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let (mut done, mut failures) = (0, 0);
    let url = format!("{}/api/webhooks/{webhook}/head", target.base);
    while !stop.load(Ordering::Relaxed) {
        let asked = Instant::now();
        let answer = target.client.get(&url).header("x-api-key", &*target.key).send().await;
        let ok = match answer {
            Ok(r) if r.status() == StatusCode::OK => r.bytes().await.is_ok(),
            _ => false,
        };
        latency.saturating_record(asked.elapsed().as_micros() as u64);
        if ok {
            done += 1;
        } else {
            failures += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Outcome { done, failures, empty: 0, out_of_order: 0, lost: 0, latency, elapsed: started.elapsed() }
}
