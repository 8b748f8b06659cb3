//! Many consumers and many producers on one webhook at once, through the HTTP API. The
//! assertions are about orders and counts only.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{join_within, spawn_app, spawn_app_on, Delivery};

const CONSUMERS: usize = 16;
const MESSAGES: usize = 500;

/// What the consumers saw, in the order they saw it.
#[derive(Default)]
struct Ledger {
    /// The seq a consumer holds the lock of, between its dequeue answer and its commit
    /// request. That window lies inside the real lock, so two overlapping windows prove
    /// two messages were locked at once (and a correct broker can never cause one).
    in_flight: Option<i64>,
    /// Seqs in the order their commits were sent (each sent while holding the only lock).
    commits: Vec<i64>,
    /// How often each message id was delivered.
    deliveries: HashMap<String, usize>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_consumers_drain_one_queue_in_order_one_message_at_a_time() {
    drain_with_consumers(false, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_consumers_half_of_them_chaining_commit_next_keep_the_same_order() {
    drain_with_consumers(true, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_consumers_across_two_broker_replicas_keep_the_same_order() {
    drain_with_consumers(true, 2).await;
}

/// 16 consumers drain 500 messages; with `chain`, odd-numbered consumers commit with
/// `?next=true` and carry on with the message that call hands them. With `replicas` > 1,
/// that many brokers serve the same database and the consumers are spread over them.
async fn drain_with_consumers(chain: bool, replicas: usize) {
    let app = Arc::new(spawn_app().await);
    let mut brokers = vec![app.clone()];
    for _ in 1..replicas {
        let key = app.encryption_key.clone();
        brokers.push(Arc::new(spawn_app_on(&app.db_url, |c| c.encryption_key = Some(key.into())).await));
    }
    let wh = app.create_webhook(json!({})).await;
    let mut ingested = BTreeMap::new();
    for i in 1..=MESSAGES {
        let (id, seq) = app.ingest_ok(&wh, &json!({ "i": i }).to_string()).await;
        ingested.insert(seq, id);
    }
    assert_eq!(ingested.keys().copied().collect::<Vec<_>>(), (1..=MESSAGES as i64).collect::<Vec<_>>());

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let committed = Arc::new(AtomicUsize::new(0));
    let mut consumers = tokio::task::JoinSet::new();
    for c in 0..CONSUMERS {
        let app = brokers[c % brokers.len()].clone();
        let (wh, ledger, committed) = (wh.clone(), ledger.clone(), committed.clone());
        let chains = chain && c % 2 == 1;
        consumers.spawn(async move {
            let mut empty_polls = 0u64;
            let mut carried: Option<Delivery> = None;
            while carried.is_some() || committed.load(Ordering::SeqCst) < MESSAGES {
                let d = match carried.take() {
                    Some(d) => d,
                    None => {
                        let r = app.dequeue(&wh).await;
                        if r.status == StatusCode::NO_CONTENT {
                            empty_polls += 1;
                            assert!(empty_polls < 1_000_000, "the queue never drained");
                            tokio::task::yield_now().await;
                            continue;
                        }
                        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
                        let d = Delivery::from_reply(&r);
                        received(&ledger, &d);
                        d
                    }
                };
                if d.seq > 1 {
                    // Committed is terminal, so this cannot be a false alarm.
                    let before =
                        app.sql_strings(&format!("SELECT state::text FROM messages WHERE seq = {}", d.seq - 1)).await;
                    assert_eq!(before, ["committed"], "seq {} delivered before seq {} was committed", d.seq, d.seq - 1);
                }
                // "Processing": the other consumers poll meanwhile.
                tokio::task::yield_now().await;
                let holder = {
                    let mut l = ledger.lock().unwrap();
                    l.commits.push(d.seq);
                    l.in_flight.take()
                };
                assert_eq!(holder, Some(d.seq), "another delivery came while seq {} was locked", d.seq);
                if chains {
                    let r = app.commit_next(&wh, &d.id, Some(&d.lock_token)).await;
                    committed.fetch_add(1, Ordering::SeqCst);
                    match r.status {
                        StatusCode::OK => {
                            let next = Delivery::from_reply(&r);
                            received(&ledger, &next);
                            carried = Some(next);
                        }
                        StatusCode::NO_CONTENT => {}
                        other => panic!("commit?next of seq {}: {other} {}", d.seq, r.body),
                    }
                } else {
                    let r = app.commit(&wh, &d.id, Some(&d.lock_token)).await;
                    assert_eq!(r.status, StatusCode::OK, "commit of seq {}: {}", d.seq, r.body);
                    committed.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    join_within(consumers, std::time::Duration::from_secs(120)).await;

    let ledger = std::mem::take(&mut *ledger.lock().unwrap());
    assert_eq!(ledger.commits, (1..=MESSAGES as i64).collect::<Vec<_>>(), "commits out of seq order");
    assert_eq!(ledger.deliveries.len(), MESSAGES);
    assert!(ledger.deliveries.values().all(|&n| n == 1), "a message was delivered twice");
    assert!(ingested.values().all(|id| ledger.deliveries.contains_key(id)));
    assert_eq!(committed.load(Ordering::SeqCst), MESSAGES);
    assert_eq!(app.sql_i64("SELECT count(*) FROM messages WHERE state = 'committed'").await, MESSAGES as i64);
    assert_eq!(app.sql_i64("SELECT count(*) FROM messages WHERE state <> 'committed'").await, 0);
    app.dequeue_none(&wh).await;
}

/// A consumer got `d` (from dequeue or commit?next): nobody else may hold a lock now.
fn received(ledger: &Mutex<Ledger>, d: &Delivery) {
    let holder = {
        let mut l = ledger.lock().unwrap();
        *l.deliveries.entry(d.id.clone()).or_default() += 1;
        l.in_flight.replace(d.seq)
    };
    assert_eq!(holder, None, "seq {} delivered while seq {holder:?} was still locked", d.seq);
}

const PRODUCERS: usize = 16;
const PER_PRODUCER: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_producers_get_gapless_seqs_in_their_own_order() {
    let app = Arc::new(spawn_app().await);
    let wh = app.create_webhook(json!({})).await;

    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let (app, wh) = (app.clone(), wh.clone());
        producers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for n in 0..PER_PRODUCER {
                let (id, seq) = app.ingest_ok(&wh, &json!({"producer": p, "n": n}).to_string()).await;
                got.push((n, id, seq));
            }
            got
        }));
    }
    // seq -> (producer, n, id) as the producers were told.
    let mut told = BTreeMap::new();
    for (p, handle) in producers.into_iter().enumerate() {
        let got = handle.await.expect("a producer failed");
        let seqs: Vec<i64> = got.iter().map(|(_, _, s)| *s).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "producer {p} got decreasing seqs: {seqs:?}");
        for (n, id, seq) in got {
            assert!(told.insert(seq, (p as u64, n as u64, id)).is_none(), "seq {seq} handed out twice");
        }
    }
    let total = (PRODUCERS * PER_PRODUCER) as i64;
    assert_eq!(told.keys().copied().collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>(), "seqs have gaps");

    // One consumer: delivery order is seq order, and each producer's messages come in its order.
    let mut delivered = Vec::new();
    let mut last_n: HashMap<u64, u64> = HashMap::new();
    loop {
        let r = app.dequeue(&wh).await;
        if r.status == StatusCode::NO_CONTENT {
            break;
        }
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let d = Delivery::from_reply(&r);
        let body = d.json();
        let (p, n) = (body["producer"].as_u64().unwrap(), body["n"].as_u64().unwrap());
        assert_eq!(told[&d.seq], (p, n, d.id.clone()), "seq {} carries another message than ingested", d.seq);
        if let Some(prev) = last_n.insert(p, n) {
            assert!(prev < n, "producer {p}: n {n} delivered after {prev}");
        }
        app.commit_ok(&wh, &d).await;
        delivered.push(d.seq);
    }
    assert_eq!(delivered, (1..=total).collect::<Vec<_>>());
    assert!(last_n.values().all(|&n| n == PER_PRODUCER as u64 - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_producers_on_many_webhooks_each_get_their_own_sequence() {
    let app = Arc::new(spawn_app().await);
    let mut hooks = Vec::new();
    for _ in 0..4 {
        hooks.push(app.create_webhook(json!({})).await);
    }
    // Unknown webhooks mixed in: they must fail alone, not take others down with them.
    let unknown = crate::helpers::random_id("wh_");
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (app, wh, unknown) = (app.clone(), hooks[t % 4].clone(), unknown.clone());
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for n in 0..20 {
                if n % 5 == 0 {
                    app.ingest(&unknown, "{}").await.expect_error(StatusCode::NOT_FOUND, "not_found");
                }
                seqs.push(app.ingest_ok(&wh, &json!({"t": t, "n": n}).to_string()).await.1);
            }
            (wh, seqs)
        }));
    }
    let mut per_hook: HashMap<String, Vec<i64>> = HashMap::new();
    for t in tasks {
        let (wh, seqs) = t.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        per_hook.entry(wh).or_default().extend(seqs);
    }
    for wh in &hooks {
        let mut seqs = per_hook.remove(wh).unwrap();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=80).collect::<Vec<_>>());
        assert_eq!(app.drain(wh).await, (1..=80).collect::<Vec<_>>());
    }
}
