//! hookline-bench: measures the broker under the scenarios of BENCHMARKS.md and, in the
//! same invocation, the equivalent raw SQL through pgbench, printing a table (with each
//! figure as a ratio to its baseline) and writing JSON.
//!
//! By default it starts `hookline serve` (the binary next to this one) on a fresh embedded
//! PostgreSQL cluster with fsync on; `--base` and `--key` target a running broker instead.

use hookline_bench::{baseline, broker, isolation, load};

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use broker::Broker;
use load::{Outcome, Target};

#[derive(Parser)]
#[command(about = "Benchmark hookline: ingestion, strict-FIFO consumption, latency, RSS and CPU, beside pgbench")]
struct Args {
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Comma-separated scenarios, or `all`: ingest-many, ingest-one, fifo-one, fifo-many, standard, latency, delivery, isolation, growth, baseline.
    #[arg(long, default_value = "all")]
    scenarios: String,
    /// A running broker to target instead of starting one (then baseline is skipped).
    #[arg(long, requires = "key")]
    base: Option<String>,
    /// API key for --base.
    #[arg(long)]
    key: Option<String>,
    /// Port for the broker this starts (0: a free one).
    #[arg(long, default_value_t = 18080)]
    port: u16,
    /// Where the started broker keeps its fresh cluster (wiped first). In the temp directory
    /// by default, which the `postgres` user can reach when this runs as root.
    #[arg(long, default_value_os_t = std::env::temp_dir().join("hookline-bench"))]
    data_dir: PathBuf,
    /// Exit non-zero if any scenario delivered out of order, lost an acknowledged message,
    /// failed a request or moved no message.
    #[arg(long)]
    check: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// Committed rows the growth scenario adds to the queue it drains.
    #[arg(long, default_value_t = 10_000_000)]
    growth_rows: u64,
    /// Offered load of the latency scenario, messages per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Messages waiting behind the isolation scenario's poisoned head.
    #[arg(long, default_value_t = 1_000_000)]
    isolation_waiting: u64,
}

#[derive(Serialize)]
struct Row {
    scenario: String,
    msgs_per_sec: f64,
    messages: u64,
    failures: u64,
    out_of_order: u64,
    lost: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    peak_rss_mib: Option<f64>,
    cpu_sec_per_1k: Option<f64>,
    baseline_per_sec: Option<f64>,
    ratio_to_baseline: Option<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for name in args.scenarios.split(',').map(str::trim).filter(|s| *s != "all") {
        anyhow::ensure!(
            SCENARIOS.contains(&name),
            "unknown scenario {name:?}: expected all or some of {}",
            SCENARIOS.join(", ")
        );
    }
    let exe = std::env::current_exe()?.with_file_name("hookline");
    let broker = match (&args.base, &args.key) {
        (Some(base), Some(key)) => Broker::existing(base.trim_end_matches('/').to_owned(), key.clone()).await?,
        _ => Broker::start(&exe, &args.data_dir, args.port)
            .await
            .context("starting the broker (build it first: cargo build --release --workspace)")?,
    };
    let result = run(&args, &exe, &broker).await;
    broker.stop().await;
    let rows = result?;
    let secs = args.secs;
    print_table(&rows, secs);
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&rows)?)?;
    eprintln!("wrote {}", args.json.display());
    if args.check {
        for r in rows.iter().filter(|r| !r.scenario.starts_with("pgbench")) {
            anyhow::ensure!(
                r.out_of_order == 0 && r.lost == 0 && r.failures == 0 && r.messages > 0,
                "{}: {} out of order, {} lost, {} failures, {} messages",
                r.scenario,
                r.out_of_order,
                r.lost,
                r.failures,
                r.messages
            );
        }
    }
    Ok(())
}

/// fifo-one-window's fifoWindow and maxMessages.
const WINDOW: usize = 10;

/// The scenarios `--scenarios` accepts (besides `all`).
const SCENARIOS: &[&str] = &[
    "ingest-many",
    "ingest-one",
    "fifo-one",
    "fifo-many",
    "standard",
    "latency",
    "delivery",
    "isolation",
    "growth",
    "baseline",
];

/// Every scenario in order; the broker is stopped by the caller whatever happens.
async fn run(args: &Args, exe: &std::path::Path, broker: &Broker) -> anyhow::Result<Vec<Row>> {
    let wanted = |s: &str| args.scenarios == "all" || args.scenarios.split(',').any(|w| w.trim() == s);
    let client = reqwest::Client::builder().pool_max_idle_per_host(512).tcp_nodelay(true).build()?;
    let target = Target { client, base: broker.base.clone().into(), key: broker.key.clone().into() };
    let many = Arc::new(load::create_webhooks(&target, 1000, 300).await?);
    let one = Arc::new(load::create_webhooks(&target, 1, 300).await?);
    let secs = args.secs;
    let mut rec = Recorder { broker, rows: Vec::new() };

    if wanted("ingest-many") {
        let before = load::stored(&target, &many).await?;
        rec.measure("ingest-many", load::ingest(&target, many.clone(), 64, secs)).await;
        rec.expect_stored(before + rec.last_messages(), load::stored(&target, &many).await?);
    }
    if wanted("ingest-one") {
        let before = load::stored(&target, &one).await?;
        rec.measure("ingest-one", load::ingest(&target, one.clone(), 64, secs)).await;
        rec.expect_stored(before + rec.last_messages(), load::stored(&target, &one).await?);
    }
    if wanted("fifo-one") {
        // Enough queued for both runs, whatever ingest-one managed.
        top_up(&target, one.clone(), 8_000 * secs).await;
        rec.measure("fifo-one", load::fifo(&target, one.clone(), 1, secs, false)).await;
        rec.measure("fifo-one-next", load::fifo(&target, one.clone(), 1, secs, true)).await;
        // The ordered in-flight window: one consumer leasing 10 at a time.
        let settings = serde_json::json!({"name": "bench-window", "fifoWindow": WINDOW});
        let windowed = Arc::new(vec![load::create_webhook(&target, settings).await?]);
        top_up(&target, windowed.clone(), 5_000 * secs).await;
        rec.measure("fifo-one-window", load::fifo_window(&target, windowed[0].clone(), WINDOW, secs)).await;
    }
    if wanted("fifo-many") {
        // As peers-bench's RabbitMQ run: 100 ordered queues, a consumer each.
        let hundred = Arc::new(load::create_webhooks(&target, 100, 300).await?);
        top_up(&target, hundred.clone(), 12_000 * secs).await;
        rec.measure("fifo-many", load::fifo(&target, hundred.clone(), 100, secs, false)).await;
        rec.measure("fifo-many-next", load::fifo(&target, hundred.clone(), 100, secs, true)).await;
    }
    if wanted("standard") {
        let hook =
            load::create_webhook(&target, serde_json::json!({"name": "bench-standard", "mode": "standard"})).await?;
        let hook = Arc::new(vec![hook]);
        let published = top_up(&target, hook.clone(), 12_000 * secs).await;
        rec.measure("standard", load::standard(&target, hook[0].clone(), 16, 10, secs)).await;
        // Everything published is still there, committed or not.
        rec.expect_stored(published, load::stored(&target, &hook).await?);
    }
    if wanted("latency") {
        rec.measure("latency", load::offered(&target, many.clone(), args.rate, secs)).await;
    }
    if wanted("delivery") {
        // Strict FIFO delivers one message per webhook at a time: spread the offered load
        // over 50 webhooks, 4 msg/s each.
        let hooks = Arc::new(load::create_webhooks(&target, 50, 300).await?);
        rec.measure("delivery", load::delivery(&target, hooks, 200, secs)).await;
    }
    if wanted("isolation") {
        match &broker.cluster_dir {
            None => eprintln!("isolation: skipped (needs the cluster this starts)"),
            Some(cluster) => {
                // 99 webhooks at a trickle (about 2 msg/s each).
                let i = isolation::run(&target, cluster, args.isolation_waiting, 198, secs).await?;
                rec.record("isolation-alone", &i.alone);
                rec.record("isolation-beside-big", &i.beside);
                rec.record("isolation-head-view", &i.head_view);
                let p50 = |o: &load::Outcome| o.latency.value_at_quantile(0.5) as f64 / 1000.0;
                let p99 = |o: &load::Outcome| o.latency.value_at_quantile(0.99) as f64 / 1000.0;
                let (alone, beside) = (i.alone.rate(), i.beside.rate());
                if let Some(row) = rec.rows.iter_mut().find(|r| r.scenario == "isolation-beside-big") {
                    row.baseline_per_sec = Some(alone);
                    row.ratio_to_baseline = Some(beside / alone);
                }
                eprintln!(
                    "isolation: rate beside the big webhook / alone {:.3}; latency alone / beside: p50 {:.3}, p99 {:.3}",
                    beside / alone,
                    p50(&i.alone) / p50(&i.beside),
                    p99(&i.alone) / p99(&i.beside)
                );
            }
        }
    }
    if wanted("growth") {
        match &broker.cluster_dir {
            None => eprintln!("growth: skipped (needs the cluster this starts)"),
            Some(cluster) => {
                let g = Arc::new(load::create_webhooks(&target, 1, 300).await?);
                top_up(&target, g.clone(), 4_000 * secs).await;
                rec.measure("growth-empty", load::fifo(&target, g.clone(), 1, secs, true)).await;
                eprintln!("growth: adding {} committed rows to the same queue...", args.growth_rows);
                let id = g[0].trim_start_matches("wh_");
                let sql = format!(
                    "INSERT INTO messages (webhook_id, seq, id, state, committed_at, expires_at, key_id, nonce, ciphertext)
                     SELECT '{id}', s, gen_random_uuid(), 'committed', now(), now() + interval '7 days', 0,
                            '\\x000000000000000000000000'::bytea, decode(repeat('ab', 100), 'hex')
                     FROM generate_series(1000000001, 1000000000 + {n}) s;
                     UPDATE webhook_sequences SET last_seq = 1000000000 + {n} WHERE webhook_id = '{id}';
                     ANALYZE messages;",
                    n = args.growth_rows
                );
                baseline::broker_sql(cluster, &sql).await?;
                top_up(&target, g.clone(), 2_000 * secs).await;
                rec.measure("growth-retained", load::fifo(&target, g.clone(), 1, secs, true)).await;
            }
        }
    }
    let mut rows = rec.rows;

    if wanted("baseline") {
        if let Some(cluster) = &broker.cluster_dir {
            eprintln!("baseline: pgbench, {secs} s per script...");
            for (name, rate) in baseline::run_all(exe, cluster, secs).await? {
                eprintln!("baseline {name:<16} {rate:>9.0} msg/s");
                let mut matched = false;
                for r in rows.iter_mut().filter(|r| r.scenario.trim_end_matches("-next") == name) {
                    r.baseline_per_sec = Some(rate);
                    r.ratio_to_baseline = Some(r.msgs_per_sec / rate);
                    matched = true;
                }
                if !matched {
                    rows.push(Row::baseline_only(name, rate));
                }
            }
        }
    }
    Ok(rows)
}

/// Runs loads one at a time and keeps a row for each, with the broker's CPU and peak RSS.
struct Recorder<'a> {
    broker: &'a Broker,
    rows: Vec<Row>,
}

impl Recorder<'_> {
    async fn measure(&mut self, name: &str, load: impl std::future::Future<Output = Outcome>) {
        let _ = self.broker.take_peak_rss_mib();
        let before = self.broker.cpu_seconds();
        let outcome = load.await;
        let cpu = before.zip(self.broker.cpu_seconds()).map(|(a, b)| b - a);
        let row = row(name, &outcome, cpu, self.broker.take_peak_rss_mib());
        eprintln!(
            "{name:<16} {:>9.0} msg/s  p50 {:>6.2} ms  p99 {:>7.2} ms  ({} messages, {} failures)",
            row.msgs_per_sec, row.p50_ms, row.p99_ms, row.messages, row.failures
        );
        self.rows.push(row);
    }

    /// A row for a load measured elsewhere (no CPU or RSS of its own).
    fn record(&mut self, name: &str, outcome: &Outcome) {
        let row = row(name, outcome, None, None);
        eprintln!("{name:<16} {:>9.0} msg/s  p50 {:>6.2} ms  p99 {:>7.2} ms", row.msgs_per_sec, row.p50_ms, row.p99_ms);
        self.rows.push(row);
    }

    /// Messages the last load moved.
    fn last_messages(&self) -> u64 {
        self.rows.last().map_or(0, |r| r.messages)
    }

    /// The webhooks should hold `expected` messages after the last load: any fewer were
    /// acknowledged and lost.
    fn expect_stored(&mut self, expected: u64, stored: u64) {
        if let Some(row) = self.rows.last_mut() {
            row.lost += expected.saturating_sub(stored);
        }
    }
}

impl Row {
    fn baseline_only(name: &str, rate: f64) -> Self {
        Self {
            scenario: format!("pgbench {name}"),
            msgs_per_sec: rate,
            messages: 0,
            failures: 0,
            out_of_order: 0,
            lost: 0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            peak_rss_mib: None,
            cpu_sec_per_1k: None,
            baseline_per_sec: Some(rate),
            ratio_to_baseline: None,
        }
    }
}

/// Ingests until at least `n` messages were added (outside any measurement); returns how
/// many were acknowledged.
async fn top_up(target: &Target, webhooks: Arc<Vec<String>>, n: u64) -> u64 {
    let mut added = 0;
    while added < n {
        let o = load::ingest(target, webhooks.clone(), 64, 2).await;
        if o.done == 0 {
            break;
        }
        added += o.done;
    }
    added
}

fn row(name: &str, o: &Outcome, cpu: Option<f64>, rss: Option<f64>) -> Row {
    let ms = |q: f64| o.latency.value_at_quantile(q) as f64 / 1000.0;
    Row {
        scenario: name.to_owned(),
        msgs_per_sec: o.rate(),
        messages: o.done,
        failures: o.failures,
        out_of_order: o.out_of_order,
        lost: o.lost,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        peak_rss_mib: rss,
        cpu_sec_per_1k: cpu.filter(|_| o.done > 0).map(|c| c / (o.done as f64 / 1000.0)),
        baseline_per_sec: None,
        ratio_to_baseline: None,
    }
}

fn print_table(rows: &[Row], secs: u64) {
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    println!("\n{secs} s per scenario, 1 KiB JSON payloads\n");
    println!("| scenario | msg/s | p50 ms | p99 ms | p99.9 ms | failures | out of order | lost | peak RSS MiB | CPU s / 1k msgs | pgbench msg/s | ratio |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.msgs_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.failures,
            r.out_of_order,
            r.lost,
            opt(r.peak_rss_mib, 0),
            opt(r.cpu_sec_per_1k, 3),
            opt(r.baseline_per_sec, 0),
            opt(r.ratio_to_baseline, 2)
        );
    }
}
