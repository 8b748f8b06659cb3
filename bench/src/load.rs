//! The HTTP load loops: closed-loop senders and consumers (each waits for its answer before
//! the next request), and an open-loop sender at a fixed offered rate. Latencies are
//! recorded in microseconds.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use reqwest::{Client, StatusCode};
use serde_json::Value;
use tokio::task::JoinSet;

pub const PAYLOAD_BYTES: usize = 1024;

#[derive(Clone)]
pub struct Target {
    pub client: Client,
    pub base: Arc<str>,
    pub key: Arc<str>,
}

pub struct Outcome {
    /// Messages ingested (202) or committed.
    pub done: u64,
    pub failures: u64,
    /// Dequeues that found nothing (204).
    pub empty: u64,
    /// Deliveries out of seq order within a FIFO webhook, or of a message already delivered
    /// (standard mode): must be 0.
    pub out_of_order: u64,
    /// Acknowledged messages missing: seqs a FIFO consumer skipped, or ingests answered 202
    /// that the queue does not hold (counted by the caller from stats). Must be 0.
    pub lost: u64,
    pub latency: Histogram<u64>,
    pub elapsed: Duration,
}

impl Outcome {
    fn new() -> Self {
        Self { done: 0, failures: 0, empty: 0, out_of_order: 0, lost: 0, latency: histogram(), elapsed: Duration::ZERO }
    }

    fn merge(&mut self, other: Outcome) {
        self.done += other.done;
        self.failures += other.failures;
        self.empty += other.empty;
        self.out_of_order += other.out_of_order;
        self.lost += other.lost;
        self.latency.add(&other.latency).expect("same histogram bounds");
    }

    pub fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64()
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// A 1 KiB JSON body.
pub fn body(n: u64) -> String {
    let head = format!("{{\"type\":\"bench.event\",\"n\":{n},\"pad\":\"");
    let pad = PAYLOAD_BYTES - head.len() - 2;
    format!("{head}{}\"}}", "x".repeat(pad))
}

/// `senders` closed-loop senders POST to /ingest, round-robin over `webhooks`.
pub async fn ingest(target: &Target, webhooks: Arc<Vec<String>>, senders: usize, secs: u64) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for s in 0..senders {
        let (t, webhooks) = (target.clone(), webhooks.clone());
        tasks.spawn(async move {
            let mut out = Outcome::new();
            let mut i = s;
            while Instant::now() < deadline {
                let url = format!("{}/ingest/{}", t.base, webhooks[i % webhooks.len()]);
                i += senders;
                let sent = Instant::now();
                let r = t.client.post(url).header("content-type", "application/json").body(body(i as u64)).send().await;
                match r {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => {
                        let _ = r.bytes().await;
                        out.done += 1;
                        out.latency.saturating_record(sent.elapsed().as_micros() as u64);
                    }
                    _ => out.failures += 1,
                }
            }
            out
        });
    }
    collect(tasks, started).await
}

/// `consumers` strict-FIFO consumers; consumer i serves webhooks i, i+consumers, ... (so no
/// two share a webhook and order can be checked), dequeue then commit, or with `next` the
/// combined commit-and-lock-next call. Latency is per delivered message.
pub async fn fifo(target: &Target, webhooks: Arc<Vec<String>>, consumers: usize, secs: u64, next: bool) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for c in 0..consumers.min(webhooks.len()) {
        let mine: Vec<String> = webhooks.iter().skip(c).step_by(consumers).cloned().collect();
        let t = target.clone();
        tasks.spawn(async move { consume(t, mine, deadline, next).await });
    }
    collect(tasks, started).await
}

async fn consume(t: Target, webhooks: Vec<String>, deadline: Instant, next: bool) -> Outcome {
    let mut out = Outcome::new();
    let mut last_seq: HashMap<usize, i64> = HashMap::new();
    let mut w = 0;
    let mut held: Option<Value> = None;
    let mut empty_streak = 0;
    while Instant::now() < deadline {
        let sent = Instant::now();
        let message = match held.take() {
            Some(m) => m,
            None => match post(&t, &format!("/api/webhooks/{}/messages/dequeue", webhooks[w]), None).await {
                Some((StatusCode::OK, m)) => m,
                Some((StatusCode::NO_CONTENT, _)) => {
                    out.empty += 1;
                    w = (w + 1) % webhooks.len();
                    empty_streak += 1;
                    if empty_streak >= webhooks.len() {
                        // Everything drained: stop rather than spin.
                        break;
                    }
                    continue;
                }
                _ => {
                    out.failures += 1;
                    continue;
                }
            },
        };
        empty_streak = 0;
        let seq = message["seq"].as_i64().unwrap_or(0);
        match last_seq.insert(w, seq) {
            Some(prev) if prev >= seq => out.out_of_order += 1,
            // Every message is committed in order, so the next seq is the one after.
            Some(prev) if seq > prev + 1 => out.lost += (seq - prev - 1) as u64,
            _ => {}
        }
        let id = message["id"].as_str().unwrap_or_default();
        let token = message["lockToken"].as_str().unwrap_or_default();
        let q = if next { "?next=true" } else { "" };
        let path = format!("/api/webhooks/{}/messages/{id}/commit{q}", webhooks[w]);
        match post(&t, &path, Some(serde_json::json!({ "lockToken": token }))).await {
            Some((StatusCode::OK, following)) => {
                out.done += 1;
                out.latency.saturating_record(sent.elapsed().as_micros() as u64);
                if next {
                    held = Some(following);
                }
            }
            Some((StatusCode::NO_CONTENT, _)) => {
                out.done += 1;
                out.latency.saturating_record(sent.elapsed().as_micros() as u64);
                w = (w + 1) % webhooks.len();
            }
            _ => out.failures += 1,
        }
    }
    // A message handed out by the last commit?next=true goes back by a plain commit.
    if let Some(m) = held {
        let id = m["id"].as_str().unwrap_or_default();
        let path = format!("/api/webhooks/{}/messages/{id}/commit", webhooks[w]);
        let _ = post(&t, &path, Some(serde_json::json!({ "lockToken": m["lockToken"] }))).await;
    }
    out
}

/// One consumer leasing ordered windows of up to `window` messages from one FIFO webhook
/// (its fifoWindow set that large): a dequeue with maxMessages, then one batch commit of the
/// window in order. Latency is per message, from the dequeue to its window's commit.
pub async fn fifo_window(target: &Target, webhook: String, window: usize, secs: u64) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut out = Outcome::new();
    let mut last_seq = None;
    let dequeue = format!("/api/webhooks/{webhook}/messages/dequeue?maxMessages={window}");
    let commit = format!("/api/webhooks/{webhook}/messages/commit");
    while Instant::now() < deadline {
        let sent = Instant::now();
        let Some(messages) = dequeue_batch(target, &dequeue, &mut out).await else { break };
        let mut entries = Vec::with_capacity(messages.len());
        for m in &messages {
            let seq = m["seq"].as_i64().unwrap_or(0);
            match last_seq.replace(seq) {
                Some(prev) if prev >= seq => out.out_of_order += 1,
                Some(prev) if seq > prev + 1 => out.lost += (seq - prev - 1) as u64,
                _ => {}
            }
            entries.push(serde_json::json!({ "id": m["id"], "lockToken": m["lockToken"] }));
        }
        commit_batch(target, &commit, entries, sent, &mut out).await;
    }
    out.elapsed = started.elapsed();
    out
}

/// `consumers` concurrent consumers on one standard-mode webhook, each locking up to `batch`
/// messages per dequeue and committing them with one batch commit. Latency is per message,
/// from the dequeue that handed it out to its commit.
pub async fn standard(target: &Target, webhook: String, consumers: usize, batch: usize, secs: u64) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let mut tasks = JoinSet::new();
    for _ in 0..consumers {
        let (t, webhook, seen) = (target.clone(), webhook.clone(), seen.clone());
        tasks.spawn(async move { consume_standard(t, webhook, batch, deadline, seen).await });
    }
    collect(tasks, started).await
}

async fn consume_standard(
    t: Target,
    webhook: String,
    batch: usize,
    deadline: Instant,
    seen: Arc<Mutex<HashSet<String>>>,
) -> Outcome {
    let mut out = Outcome::new();
    let dequeue = format!("/api/webhooks/{webhook}/messages/dequeue?maxMessages={batch}");
    while Instant::now() < deadline {
        let sent = Instant::now();
        // None: drained, the others hold what is left.
        let Some(messages) = dequeue_batch(&t, &dequeue, &mut out).await else { break };
        let mut entries = Vec::with_capacity(messages.len());
        for m in &messages {
            let id = m["id"].as_str().unwrap_or_default().to_owned();
            if !seen.lock().expect("seen set poisoned").insert(id.clone()) {
                out.out_of_order += 1;
            }
            entries.push(serde_json::json!({ "id": id, "lockToken": m["lockToken"] }));
        }
        let commit = format!("/api/webhooks/{webhook}/messages/commit");
        commit_batch(&t, &commit, entries, sent, &mut out).await;
    }
    out
}

/// A dequeue with maxMessages: what it locked (none when the request failed, counted as a
/// failure), or None when the queue answered 204.
async fn dequeue_batch(t: &Target, path: &str, out: &mut Outcome) -> Option<Vec<Value>> {
    match post(t, path, None).await {
        Some((StatusCode::OK, v)) => Some(v["messages"].as_array().cloned().unwrap_or_default()),
        Some((StatusCode::NO_CONTENT, _)) => {
            out.empty += 1;
            None
        }
        _ => {
            out.failures += 1;
            Some(Vec::new())
        }
    }
}

/// One batch commit; each message committed counts its latency from `sent`, each other one
/// a failure.
async fn commit_batch(t: &Target, path: &str, entries: Vec<Value>, sent: Instant, out: &mut Outcome) {
    let sent_entries = entries.len() as u64;
    if sent_entries == 0 {
        return;
    }
    match post(t, path, Some(serde_json::json!({ "messages": entries }))).await {
        Some((StatusCode::OK, v)) => {
            let committed = v["committed"].as_array().map_or(0, Vec::len) as u64;
            out.failures += sent_entries - committed;
            for _ in 0..committed {
                out.done += 1;
                out.latency.saturating_record(sent.elapsed().as_micros() as u64);
            }
        }
        _ => out.failures += sent_entries,
    }
}

/// Open loop: one request every 1/rate s regardless of answers; latency is measured from
/// the scheduled send time, so a stall is not hidden (no coordinated omission).
pub async fn offered(target: &Target, webhooks: Arc<Vec<String>>, rate: u64, secs: u64) -> Outcome {
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let total = rate * secs;
    let mut tasks = JoinSet::new();
    for n in 0..total {
        let scheduled = started + interval * n as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let t = target.clone();
        let url = format!("{}/ingest/{}", t.base, webhooks[n as usize % webhooks.len()]);
        tasks.spawn(async move {
            let mut out = Outcome::new();
            let r = t.client.post(url).header("content-type", "application/json").body(body(n)).send().await;
            match r {
                Ok(r) if r.status() == StatusCode::ACCEPTED => {
                    let _ = r.bytes().await;
                    out.done = 1;
                    out.latency.saturating_record(scheduled.elapsed().as_micros() as u64);
                }
                _ => out.failures = 1,
            }
            out
        });
    }
    collect(tasks, started).await
}

async fn collect(mut tasks: JoinSet<Outcome>, started: Instant) -> Outcome {
    let mut total = Outcome::new();
    while let Some(r) = tasks.join_next().await {
        total.merge(r.expect("load task panicked"));
    }
    total.elapsed = started.elapsed();
    total
}

pub async fn post(t: &Target, path: &str, json: Option<Value>) -> Option<(StatusCode, Value)> {
    let mut req = t.client.post(format!("{}{path}", t.base)).header("x-api-key", &*t.key);
    if let Some(j) = json {
        req = req.json(&j);
    }
    let r = req.send().await.ok()?;
    let status = r.status();
    let bytes = r.bytes().await.ok()?;
    let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).ok()? };
    Some((status, value))
}

/// How many messages the webhooks hold, in any state (from their stats).
pub async fn stored(t: &Target, webhooks: &[String]) -> anyhow::Result<u64> {
    let mut total = 0;
    for w in webhooks {
        let r = t.client.get(format!("{}/api/webhooks/{w}/stats", t.base)).header("x-api-key", &*t.key).send().await?;
        let s: Value = r.error_for_status()?.json().await?;
        total += ["queued", "locked", "delayed", "dead", "committed"]
            .iter()
            .map(|k| s[k].as_u64().unwrap_or(0))
            .sum::<u64>();
    }
    Ok(total)
}

/// Creates `n` strict-FIFO webhooks and returns their ids.
pub async fn create_webhooks(t: &Target, n: usize, lock_timeout: u32) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let body = serde_json::json!({"name": format!("bench-{i}"), "lockTimeoutSeconds": lock_timeout});
        ids.push(create_webhook(t, body).await?);
    }
    Ok(ids)
}

/// Creates one webhook with these settings and returns its id.
pub async fn create_webhook(t: &Target, settings: Value) -> anyhow::Result<String> {
    let (status, v) = post(t, "/api/webhooks", Some(settings)).await.ok_or_else(|| anyhow::anyhow!("create failed"))?;
    anyhow::ensure!(status == StatusCode::CREATED, "creating a webhook answered {status}: {v}");
    Ok(v["id"].as_str().unwrap_or_default().to_owned())
}

fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Ingest-to-delivery: one long-poll consumer (`dequeue?wait=5`, then commit) per webhook,
/// and an open-loop producer at `rate` over those webhooks whose bodies carry their send
/// time. Latency is from just before the ingest request to the moment the consumer has the
/// message in hand.
pub async fn delivery(target: &Target, webhooks: Arc<Vec<String>>, rate: u64, secs: u64) -> Outcome {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut consumers = JoinSet::new();
    for w in webhooks.iter() {
        let (t, w) = (target.clone(), w.clone());
        consumers.spawn(async move {
            let mut out = Outcome::new();
            // Keep polling a little past the producer's end, to collect what it sent last.
            while Instant::now() < deadline + Duration::from_secs(1) {
                let path = format!("/api/webhooks/{w}/messages/dequeue?wait=1");
                let Some((status, m)) = post(&t, &path, None).await else {
                    out.failures += 1;
                    continue;
                };
                if status != StatusCode::OK {
                    continue;
                }
                let received = now_micros();
                let body: Value = m["body"].as_str().and_then(|b| serde_json::from_str(b).ok()).unwrap_or(Value::Null);
                if let Some(sent) = body["sent_us"].as_u64() {
                    out.latency.saturating_record(received.saturating_sub(sent));
                }
                let id = m["id"].as_str().unwrap_or_default();
                let commit = format!("/api/webhooks/{w}/messages/{id}/commit");
                match post(&t, &commit, Some(serde_json::json!({ "lockToken": m["lockToken"] }))).await {
                    Some((StatusCode::OK, _)) => out.done += 1,
                    _ => out.failures += 1,
                }
            }
            out
        });
    }
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut producers = JoinSet::new();
    for n in 0..rate * secs {
        tokio::time::sleep_until((started + interval * n as u32).into()).await;
        let t = target.clone();
        let url = format!("{}/ingest/{}", t.base, webhooks[n as usize % webhooks.len()]);
        producers.spawn(async move {
            let body = format!("{{\"type\":\"bench.delivery\",\"n\":{n},\"sent_us\":{}}}", now_micros());
            let sent = t.client.post(url).header("content-type", "application/json").body(body).send().await;
            sent.map(|r| r.status() == StatusCode::ACCEPTED).unwrap_or(false)
        });
    }
    let mut failed_ingests = 0;
    while let Some(r) = producers.join_next().await {
        if !r.unwrap_or(false) {
            failed_ingests += 1;
        }
    }
    let mut total = collect(consumers, started).await;
    total.failures += failed_ingests;
    total
}
