//! A randomized concurrency test of the life cycle, checked against what the broker
//! promises. Consumers dequeue and randomly commit, error or walk away from their locks;
//! meanwhile the lock reaper, the TTL purger, a dead-letter retrier, producers and a
//! webhook delete all run against the same database. Each client call is logged with the
//! times it was sent and answered, and the log is checked afterwards:
//!
//! - never two locks on one FIFO webhook: no message was handed out while another consumer
//!   certainly still held its lock (before giving it back, and within its lock timeout);
//! - delivery in seq order: no message was committed definitely before a lower seq of its
//!   webhook (dead letters sent back are excluded: they return to their place on purpose);
//! - every commit exactly once: at most one 200 per message;
//! - nothing acknowledged is lost: after the run every acknowledged message is committed.
//!
//! The seed is printed; `HOOKLINE_MODEL_SEED=<n>` replays a run's random choices (not its
//! interleaving, which the scheduler decides).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use hookline::jobs::{LockReaper, TtlPurger, WebhookSweeper};

use crate::helpers::{join_within, spawn_app, TestApp};

const RUN: Duration = Duration::from_secs(6);
const CONSUMERS_PER_WEBHOOK: usize = 3;
/// The webhooks' lockTimeoutSeconds.
const LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// One delivery and what its consumer did with it.
#[derive(Debug, Clone)]
struct Delivery {
    webhook: String,
    id: String,
    seq: i64,
    /// The dequeue was sent (the lock was taken after this)...
    asked: Instant,
    /// ...and answered (the lock was taken before this).
    handed_out: Instant,
    /// The commit or error that gave the lock back was sent.
    released: Option<Instant>,
    /// A commit answered 200: (sent, answered).
    committed: Option<(Instant, Instant)>,
}

#[derive(Default)]
struct Log {
    deliveries: Mutex<Vec<Delivery>>,
    /// Messages whose ingest was answered 202, per webhook.
    acked: Mutex<HashMap<String, Vec<String>>>,
    /// Dead letters sent back to their place.
    redriven: Mutex<HashSet<String>>,
}

#[tokio::test]
async fn the_life_cycle_keeps_its_promises_under_random_concurrent_work() {
    let seed: u64 = std::env::var("HOOKLINE_MODEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("model test seed: {seed} (HOOKLINE_MODEL_SEED={seed} replays it)");
    let app = Arc::new(spawn_app().await);
    let settings = json!({"lockTimeoutSeconds": LOCK_TIMEOUT.as_secs(), "maxRetries": 2});
    let mut webhooks = Vec::new();
    for _ in 0..3 {
        webhooks.push(app.create_webhook(settings.clone()).await);
    }
    let doomed = app.create_webhook(settings.clone()).await;
    let log = Arc::new(Log::default());
    for webhook in webhooks.iter().chain([&doomed]) {
        for _ in 0..20 {
            ingest(&app, &log, webhook).await;
        }
    }

    let deadline = Instant::now() + RUN;
    let mut tasks = JoinSet::new();
    for (i, webhook) in webhooks.iter().chain([&doomed]).enumerate() {
        for c in 0..CONSUMERS_PER_WEBHOOK {
            let rng = StdRng::seed_from_u64(seed ^ ((i * 16 + c) as u64 + 1));
            tasks.spawn(consumer(app.clone_handle(), log.clone(), webhook.clone(), rng, deadline));
        }
        tasks.spawn(producer(app.clone_handle(), log.clone(), webhook.clone(), deadline));
    }
    tasks.spawn(jobs(app.clone_handle(), deadline));
    tasks.spawn(retrier(app.clone_handle(), log.clone(), webhooks.clone(), deadline));
    let (deleter, gone) = (app.clone_handle(), doomed.clone());
    tasks.spawn(async move {
        tokio::time::sleep(RUN / 2).await;
        deleter.delete_webhook(&gone).await.expect(StatusCode::NO_CONTENT);
    });
    join_within(tasks, RUN + Duration::from_secs(60)).await;

    // Settle: everything dead goes back, everything queued is committed.
    drain(&app, &log, &webhooks).await;
    let deliveries = log.deliveries.lock().unwrap().clone();
    let redriven = log.redriven.lock().unwrap().clone();
    let by_webhook = |w: &str| deliveries.iter().filter(|d| d.webhook == w).collect::<Vec<_>>();
    for webhook in &webhooks {
        let mine = by_webhook(webhook);
        check_one_lock(&mine);
        check_order(&mine, &redriven);
    }
    check_commits_once(&deliveries);
    for webhook in &webhooks {
        let committed: HashSet<&str> =
            deliveries.iter().filter(|d| d.committed.is_some()).map(|d| d.id.as_str()).collect();
        for id in &log.acked.lock().unwrap()[webhook] {
            assert!(committed.contains(id.as_str()), "seed {seed}: acknowledged message {id} of {webhook} was lost");
        }
        assert_eq!(app.stored_where(webhook, "state <> 'committed'").await, 0, "seed {seed}");
    }
    // The deleted webhook answers 404 and leaves no rows once swept.
    app.dequeue(&doomed).await.expect_error(StatusCode::NOT_FOUND, "not_found");
    WebhookSweeper::new(app.pool.clone()).run_once().await.unwrap();
    assert_eq!(app.stored(&doomed).await, 0);
    eprintln!("model test: {} deliveries, {} redriven", deliveries.len(), redriven.len());
}

async fn ingest(app: &TestApp, log: &Log, webhook: &str) {
    let r = app.ingest(webhook, "{}").await;
    if r.status == StatusCode::ACCEPTED {
        log.acked.lock().unwrap().entry(webhook.to_owned()).or_default().push(r.str("id"));
    }
}

async fn producer(app: TestApp, log: Arc<Log>, webhook: String, deadline: Instant) {
    while Instant::now() < deadline {
        ingest(&app, &log, &webhook).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Dequeues, then commits (most often), errors, or walks away and lets the lock expire.
async fn consumer(app: TestApp, log: Arc<Log>, webhook: String, mut rng: StdRng, deadline: Instant) {
    while Instant::now() < deadline {
        let asked = Instant::now();
        let r = app.dequeue(&webhook).await;
        if r.status != StatusCode::OK {
            // 204 empty (or locked by another), 404 once deleted.
            tokio::time::sleep(Duration::from_millis(rng.gen_range(5..40))).await;
            continue;
        }
        let handed_out = Instant::now();
        let (id, seq, token) = (r.str("id"), r.i64("seq"), r.str("lockToken"));
        let mut delivery = Delivery {
            webhook: webhook.clone(),
            id: id.clone(),
            seq,
            asked,
            handed_out,
            released: None,
            committed: None,
        };
        match rng.gen_range(0..10) {
            0..=6 => {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..30))).await;
                let sent = Instant::now();
                delivery.released = Some(sent);
                if app.commit(&webhook, &id, Some(&token)).await.status == StatusCode::OK {
                    delivery.committed = Some((sent, Instant::now()));
                }
            }
            7..=8 => {
                let body = json!({"lockToken": token, "reason": "model says no"});
                delivery.released = Some(Instant::now());
                app.error(&webhook, &id, Some(body)).await;
            }
            // Walk away: the lock expires (1 s), an attempt is counted.
            _ => tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1500))).await,
        }
        log.deliveries.lock().unwrap().push(delivery);
    }
}

/// The periodic jobs, far more often than in production.
async fn jobs(app: TestApp, deadline: Instant) {
    let (reaper, purger, sweeper) =
        (LockReaper::new(app.pool.clone()), TtlPurger::new(app.pool.clone()), WebhookSweeper::new(app.pool.clone()));
    while Instant::now() < deadline {
        reaper.run_once().await.unwrap();
        purger.run_once().await.unwrap();
        sweeper.run_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends dead letters back now and then.
async fn retrier(app: TestApp, log: Arc<Log>, webhooks: Vec<String>, deadline: Instant) {
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(400)).await;
        for webhook in &webhooks {
            redrive_all(&app, &log, webhook).await;
        }
    }
}

async fn redrive_all(app: &TestApp, log: &Log, webhook: &str) {
    let dead = app.dead_letters(webhook, "?limit=100").await;
    for m in dead.body["data"].as_array().cloned().unwrap_or_default() {
        let id = m["id"].as_str().unwrap_or_default().to_owned();
        if app.retry_dead(webhook, &id).await.status == StatusCode::OK {
            log.redriven.lock().unwrap().insert(id);
        }
    }
}

/// Retries every dead letter and commits everything until each webhook is empty.
async fn drain(app: &TestApp, log: &Log, webhooks: &[String]) {
    let give_up = Instant::now() + Duration::from_secs(60);
    for webhook in webhooks {
        loop {
            assert!(Instant::now() < give_up, "the queues did not drain");
            redrive_all(app, log, webhook).await;
            let asked = Instant::now();
            let r = app.dequeue(webhook).await;
            if r.status == StatusCode::OK {
                let (id, seq) = (r.str("id"), r.i64("seq"));
                let handed_out = Instant::now();
                app.commit(webhook, &id, Some(&r.str("lockToken"))).await.expect(StatusCode::OK);
                let (released, committed) = (Some(handed_out), Some((handed_out, Instant::now())));
                let d = Delivery { webhook: webhook.clone(), id, seq, asked, handed_out, released, committed };
                log.deliveries.lock().unwrap().push(d);
            } else if app.stored_where(webhook, "state <> 'committed'").await == 0 {
                break;
            } else {
                // Locks left by walked-away consumers expire within a second.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// While a consumer certainly holds its lock (taken before its dequeue was answered; held
/// until it sends its commit or error, or at least until its lock timeout has run from the
/// moment it asked), nobody else is handed a message of that webhook: a dequeue sent after
/// that lock was taken and answered before it could have ended is a second lock.
fn check_one_lock(deliveries: &[&Delivery]) {
    for d in deliveries {
        let timeout_ends = d.asked + LOCK_TIMEOUT;
        let held_until = d.released.map_or(timeout_ends, |r| r.min(timeout_ends));
        for other in deliveries {
            assert!(
                !(other.asked > d.handed_out && other.handed_out < held_until),
                "two locks on one FIFO webhook: {} (seq {}) was handed out while {} (seq {}) was held",
                other.id,
                other.seq,
                d.id,
                d.seq
            );
        }
    }
}

/// Commits follow seqs: a commit answered before a lower seq's commit was sent is out of
/// order, unless the lower one came back from the dead-letter queue.
fn check_order(deliveries: &[&Delivery], redriven: &HashSet<String>) {
    let commits: Vec<(&Delivery, (Instant, Instant))> =
        deliveries.iter().filter(|d| !redriven.contains(&d.id)).filter_map(|d| Some((*d, d.committed?))).collect();
    for (low, (low_sent, _)) in &commits {
        for (high, (_, high_answered)) in &commits {
            assert!(
                !(high.seq > low.seq && high_answered < low_sent),
                "out of order: seq {} was committed before seq {}",
                high.seq,
                low.seq
            );
        }
    }
}

fn check_commits_once(deliveries: &[Delivery]) {
    let mut commits: HashMap<&str, u32> = HashMap::new();
    for d in deliveries.iter().filter(|d| d.committed.is_some()) {
        *commits.entry(&d.id).or_default() += 1;
    }
    if let Some((id, n)) = commits.into_iter().find(|(_, n)| *n > 1) {
        panic!("message {id} was committed {n} times");
    }
}
