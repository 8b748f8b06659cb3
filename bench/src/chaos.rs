//! hookline-chaos: the fault suite's driver (`deploy/chaos.sh`, RELIABILITY.md).
//!
//! Starts the broker on a fresh embedded cluster and keeps producers and consumers running
//! against it while it kills the broker with SIGKILL `--kills` times and crashes PostgreSQL
//! (immediate stop, then start) `--pg-restarts` times. After each fault the broker must serve
//! again by itself. Then it drains every queue and checks the promises: every acknowledged
//! message is committed (0 lost), no message was committed twice (two 200 answers), each
//! FIFO webhook committed in seq order, and nothing is left queued or dead.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use rand::Rng;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use hookline_bench::baseline::broker_query;
use hookline_bench::broker::Broker;
use hookline_bench::load::{self, Target};

#[derive(Parser)]
#[command(about = "Kill the broker and crash PostgreSQL under load, then check that no acknowledged message was lost")]
struct Args {
    /// Times the broker is killed with SIGKILL.
    #[arg(long, default_value_t = 20)]
    kills: u32,
    /// Times PostgreSQL is stopped in immediate mode and started again.
    #[arg(long, default_value_t = 2)]
    pg_restarts: u32,
    /// Strict-FIFO webhooks under load.
    #[arg(long, default_value_t = 4)]
    webhooks: usize,
    /// Consumers per webhook (more than one, so the head-of-line lock is what keeps order).
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Concurrent senders.
    #[arg(long, default_value_t = 8)]
    producers: usize,
    /// Mean time between faults, milliseconds.
    #[arg(long, default_value_t = 1500)]
    interval_ms: u64,
    /// The broker's port (0: a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Where the broker keeps its fresh cluster (wiped first).
    #[arg(long, default_value_os_t = std::env::temp_dir().join(format!("hookline-chaos-{}", std::process::id())))]
    data_dir: PathBuf,
    #[arg(long, default_value = "target/chaos.json")]
    json: PathBuf,
}

/// What the clients saw, shared by every task.
#[derive(Default)]
struct Ledger {
    /// Messages whose ingest was answered 202.
    acked: Mutex<Vec<(String, String)>>,
    /// 200 answers to commit, per message id.
    commits: Mutex<HashMap<String, u32>>,
    /// Messages known committed: a 200, or a commit whose answer was lost and that the
    /// message's status then showed committed.
    committed: Mutex<HashSet<String>>,
    /// Requests that failed (refused connections while the broker was down, 5xx while
    /// PostgreSQL was): expected during faults, counted for the report.
    failed: AtomicU64,
    stop_producing: AtomicBool,
    stop_consuming: AtomicBool,
}

#[derive(Serialize)]
struct Report {
    kills: u32,
    pg_restarts: u32,
    seconds: f64,
    acknowledged: usize,
    committed: usize,
    lost: usize,
    committed_twice: usize,
    fifo_order_violations: i64,
    left_queued_or_dead: i64,
    failed_requests: u64,
    /// Longest time from a fault to the first message acknowledged and committed after it.
    slowest_recovery_ms: u128,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?.with_file_name("hookline");
    let mut broker = Broker::start(&exe, &args.data_dir, args.port).await.context("starting the broker")?;
    let result = run(&args, &mut broker).await;
    broker.stop().await;
    let report = result?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    ensure!(
        report.lost == 0
            && report.committed_twice == 0
            && report.fifo_order_violations == 0
            && report.left_queued_or_dead == 0
            && report.acknowledged > 0,
        "the broker broke a promise under faults: {} lost, {} committed twice, {} out of order, {} left",
        report.lost,
        report.committed_twice,
        report.fifo_order_violations,
        report.left_queued_or_dead
    );
    Ok(())
}

async fn run(args: &Args, broker: &mut Broker) -> anyhow::Result<Report> {
    let started = Instant::now();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let target = Target { client, base: broker.base.clone().into(), key: broker.key.clone().into() };
    let mut webhooks = Vec::new();
    for i in 0..args.webhooks {
        // Locks outlive a broker restart; expiries do not exhaust the retries. Every other
        // webhook leases ordered windows.
        let window = if i % 2 == 1 { WINDOW } else { 1 };
        let settings = json!({"name": format!("chaos-{i}"), "lockTimeoutSeconds": 5, "maxRetries": 100,
                              "fifoWindow": window});
        webhooks.push((load::create_webhook(&target, settings).await?, window));
    }
    let ledger = Arc::new(Ledger::default());
    let mut load = JoinSet::new();
    for p in 0..args.producers {
        let (t, ledger, webhook) = (target.clone(), ledger.clone(), webhooks[p % webhooks.len()].0.clone());
        load.spawn(produce(t, ledger, webhook));
    }
    for (webhook, window) in &webhooks {
        for _ in 0..args.consumers {
            load.spawn(consume(target.clone(), ledger.clone(), webhook.clone(), *window));
        }
    }
    let webhooks: Vec<String> = webhooks.into_iter().map(|(w, _)| w).collect();

    let faults = args.kills + args.pg_restarts;
    // PostgreSQL crashes spread among the kills.
    let pg_every = faults.checked_div(args.pg_restarts).unwrap_or(u32::MAX);
    let mut slowest_recovery = Duration::ZERO;
    for fault in 1..=faults {
        let wait = rand::thread_rng().gen_range(args.interval_ms / 2..=args.interval_ms * 3 / 2);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let at = Instant::now();
        if fault % pg_every == 0 {
            eprintln!("fault {fault}/{faults}: PostgreSQL immediate restart");
            broker.crash_postgres().await?;
        } else {
            eprintln!("fault {fault}/{faults}: kill -9 the broker");
            broker.kill().await;
            broker.restart().await.context("restarting the broker after a kill")?;
        }
        slowest_recovery = slowest_recovery.max(recovered(&ledger, at).await?);
    }

    ledger.stop_producing.store(true, Ordering::SeqCst);
    drain(&target, &webhooks).await?;
    ledger.stop_consuming.store(true, Ordering::SeqCst);
    while load.join_next().await.is_some() {}

    let cluster = broker.cluster_dir.clone().context("no cluster")?;
    check(&target, &ledger, &cluster, args, started, slowest_recovery).await
}

/// The fifoWindow of every other webhook, and what its consumers ask for at once.
const WINDOW: usize = 5;

/// Waits until a message is acknowledged and one committed after the fault: the broker
/// serves again with nobody's help. Fails after 60 s.
async fn recovered(ledger: &Ledger, fault: Instant) -> anyhow::Result<Duration> {
    let (acked, committed) = (ledger.acked.lock().unwrap().len(), ledger.committed.lock().unwrap().len());
    while fault.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if ledger.acked.lock().unwrap().len() > acked && ledger.committed.lock().unwrap().len() > committed {
            return Ok(fault.elapsed());
        }
    }
    anyhow::bail!("the broker did not serve again within 60 s of a fault")
}

async fn produce(t: Target, ledger: Arc<Ledger>, webhook: String) {
    let mut n = 0u64;
    while !ledger.stop_producing.load(Ordering::SeqCst) {
        n += 1;
        let sent = t.client.post(format!("{}/ingest/{webhook}", t.base)).body(format!("{{\"n\":{n}}}")).send().await;
        match sent {
            Ok(r) if r.status() == StatusCode::ACCEPTED => match r.json::<Value>().await {
                Ok(v) => {
                    ledger.acked.lock().unwrap().push((webhook.clone(), v["id"].as_str().unwrap_or("").to_owned()))
                }
                // The answer was lost on the way: not acknowledged.
                Err(_) => failed(&ledger).await,
            },
            _ => failed(&ledger).await,
        }
    }
}

async fn failed(ledger: &Ledger) {
    ledger.failed.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Dequeues and commits, in order; with a window over 1, a window at a time.
async fn consume(t: Target, ledger: Arc<Ledger>, webhook: String, window: usize) {
    let dequeue = match window {
        1 => format!("/api/webhooks/{webhook}/messages/dequeue"),
        n => format!("/api/webhooks/{webhook}/messages/dequeue?maxMessages={n}"),
    };
    while !ledger.stop_consuming.load(Ordering::SeqCst) {
        let messages = match load::post(&t, &dequeue, None).await {
            Some((StatusCode::OK, m)) if window == 1 => vec![m],
            Some((StatusCode::OK, m)) => m["messages"].as_array().cloned().unwrap_or_default(),
            Some((StatusCode::NO_CONTENT, _)) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            _ => {
                failed(&ledger).await;
                continue;
            }
        };
        for message in messages {
            let id = message["id"].as_str().unwrap_or_default().to_owned();
            commit(&t, &ledger, &webhook, &id, &message["lockToken"]).await;
        }
    }
}

/// Commits until the broker answers; a 409 (the lock expired while the broker was down, or
/// an earlier attempt did commit and its answer was lost) is settled by the message's status.
async fn commit(t: &Target, ledger: &Ledger, webhook: &str, id: &str, token: &Value) {
    let path = format!("/api/webhooks/{webhook}/messages/{id}/commit");
    let give_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < give_up {
        match load::post(t, &path, Some(json!({ "lockToken": token }))).await {
            Some((StatusCode::OK | StatusCode::NO_CONTENT, _)) => {
                *ledger.commits.lock().unwrap().entry(id.to_owned()).or_default() += 1;
                ledger.committed.lock().unwrap().insert(id.to_owned());
                return;
            }
            Some((StatusCode::CONFLICT, _)) => {
                if status(t, webhook, id).await.as_deref() == Some("committed") {
                    ledger.committed.lock().unwrap().insert(id.to_owned());
                }
                return;
            }
            _ => failed(ledger).await,
        }
    }
}

/// A message's status, asked until the broker answers (None after two minutes).
async fn status(t: &Target, webhook: &str, id: &str) -> Option<String> {
    let give_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < give_up {
        let url = format!("{}/api/webhooks/{webhook}/messages/{id}", t.base);
        if let Ok(r) = t.client.get(url).header("x-api-key", &*t.key).send().await {
            if r.status() == StatusCode::OK {
                if let Ok(v) = r.json::<Value>().await {
                    return v["status"].as_str().map(str::to_owned);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Waits until no webhook holds a message that is not committed (locks left by the faults
/// expire within the webhooks' 5 s lock timeout). Fails after 120 s.
async fn drain(t: &Target, webhooks: &[String]) -> anyhow::Result<()> {
    let give_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < give_up {
        let mut left = 0;
        for w in webhooks {
            let url = format!("{}/api/webhooks/{w}/stats", t.base);
            let stats: Value = t.client.get(url).header("x-api-key", &*t.key).send().await?.json().await?;
            left += ["queued", "locked", "delayed"].iter().map(|k| stats[k].as_i64().unwrap_or(0)).sum::<i64>();
        }
        if left == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("the queues did not drain within 120 s")
}

async fn check(
    t: &Target,
    ledger: &Ledger,
    cluster: &std::path::Path,
    args: &Args,
    started: Instant,
    slowest_recovery: Duration,
) -> anyhow::Result<Report> {
    let acked = ledger.acked.lock().unwrap().clone();
    let mut lost = 0;
    for (webhook, id) in &acked {
        let known = ledger.committed.lock().unwrap().contains(id);
        // A commit whose answer and status check both fell in a fault: ask again now.
        if !known && status(t, webhook, id).await.as_deref() != Some("committed") {
            eprintln!("lost: {id} of {webhook}");
            lost += 1;
        }
    }
    let committed_twice = ledger.commits.lock().unwrap().values().filter(|&&n| n > 1).count();
    // Strict FIFO: a webhook commits seq n+1 only after seq n, so commit times follow seqs.
    let order = broker_query(
        cluster,
        "SELECT count(*) FROM (SELECT committed_at < lag(committed_at) OVER (PARTITION BY webhook_id ORDER BY seq) AS bad
                              FROM messages) x WHERE bad",
    )
    .await?;
    let left = broker_query(cluster, "SELECT count(*) FROM messages WHERE state <> 'committed'").await?;
    Ok(Report {
        kills: args.kills,
        pg_restarts: args.pg_restarts,
        seconds: started.elapsed().as_secs_f64(),
        acknowledged: acked.len(),
        committed: ledger.committed.lock().unwrap().len(),
        lost,
        committed_twice,
        fifo_order_violations: order.trim().parse()?,
        left_queued_or_dead: left.trim().parse()?,
        failed_requests: ledger.failed.load(Ordering::Relaxed),
        slowest_recovery_ms: slowest_recovery.as_millis(),
    })
}
