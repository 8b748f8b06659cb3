//! spawn_app(): a fresh database (cloned from a migrated template), a broker on port 0 with
//! its periodic jobs off (tests drive them with `run_once`), and a typed client.
//!
//! The PostgreSQL server is DATABASE_URL's when set (databases are created on it);
//! otherwise the embedded cluster in the temp directory, started as `serve` would start it.

#![allow(dead_code)]

use std::time::Duration;

use hookline::crypto::KeyRing;
use hookline::local_pg::LocalPostgres;
use hookline::{Application, Config};
use reqwest::{Response, StatusCode};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;

/// Where test databases are created, and the migrated template they are cloned from.
struct Server {
    /// URL with the database name left as `{db}`.
    url_pattern: String,
    template: String,
}

static SERVER: OnceCell<Server> = OnceCell::const_new();

fn with_db(pattern: &str, db: &str) -> String {
    pattern.replace("{db}", db)
}

async fn server() -> &'static Server {
    SERVER
        .get_or_init(|| async {
            let url_pattern = match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
                Some(url) => {
                    let mut opts: url_like::Parts = url_like::split(&url);
                    opts.path = "{db}".into();
                    opts.join()
                }
                None => {
                    // deploy/test.sh gives each run its own cluster, so two runs on a host never meet.
                    let dir = std::env::var_os("HOOKLINE_TEST_PG_DIR")
                        .map(std::path::PathBuf::from)
                        .unwrap_or_else(|| std::env::temp_dir().join("hookline-test-pg"));
                    let pg = tokio::task::spawn_blocking(move || {
                        // Test processes (cargo nextest runs one per test) start it one at a time.
                        let lock = std::fs::File::create(dir.with_extension("lock")).expect("creating the start lock");
                        lock.lock().expect("taking the start lock");
                        // Test data is disposable: trade durability for speed.
                        LocalPostgres::start(&dir, &["fsync=off", "synchronous_commit=off", "max_connections=300"])
                    })
                    .await
                    .unwrap()
                    .expect("starting the local PostgreSQL for tests");
                    pg.url("{db}")
                }
            };
            let template = format!("hookline_template_{}", migrations_fingerprint());
            let admin = with_db(&url_pattern, "postgres");
            let mut conn = PgConnection::connect(&admin).await.expect("connecting to the test PostgreSQL");
            drop_stale_databases(&mut conn).await;
            // Several test processes may race to build the template: one builds, the rest wait.
            sqlx::query("SELECT pg_advisory_lock(7412)").execute(&mut conn).await.unwrap();
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&template)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            if !exists {
                let building = format!("{template}_building");
                sqlx::query(&format!("DROP DATABASE IF EXISTS {building}")).execute(&mut conn).await.unwrap();
                sqlx::query(&format!("CREATE DATABASE {building}")).execute(&mut conn).await.unwrap();
                let pool = PgPool::connect(&with_db(&url_pattern, &building)).await.unwrap();
                hookline::store::MIGRATOR.run(&pool).await.expect("migrating the template");
                pool.close().await;
                rename_when_idle(&mut conn, &building, &template).await;
            }
            sqlx::query("SELECT pg_advisory_unlock(7412)").execute(&mut conn).await.unwrap();
            Server { url_pattern, template }
        })
        .await
}

/// Test databases are named `hookline_test_<unix seconds>_<uuid>`; a run drops those over two hours
/// old (its own and other runs' leftovers: a test that panicked, a killed run), so a shared
/// server does not fill up. (Each database is dropped when its test ends, too: `DropOnExit`.)
async fn drop_stale_databases(conn: &mut PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname ~ '^hookline_test_[0-9]+_[0-9a-f]{32}$'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    let now = unix_seconds();
    for name in names {
        let created: u64 = name.split('_').nth(2).and_then(|s| s.parse().ok()).unwrap_or(now);
        if now.saturating_sub(created) > 2 * 3600 {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut *conn).await;
        }
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// A closed pool's sessions can linger server-side for a moment, and RENAME needs none:
/// end them and retry rather than fail every test on a slow machine.
async fn rename_when_idle(conn: &mut PgConnection, from: &str, to: &str) {
    for attempt in 0.. {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(from)
        .execute(&mut *conn)
        .await
        .unwrap();
        match sqlx::query(&format!("ALTER DATABASE {from} RENAME TO {to}")).execute(&mut *conn).await {
            Ok(_) => return,
            Err(e) if attempt < 50 => {
                eprintln!("renaming the template database: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("renaming the template database: {e}"),
        }
    }
}

fn migrations_fingerprint() -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for m in hookline::store::MIGRATOR.iter() {
        m.version.hash(&mut h);
        m.checksum.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

/// Just enough URL surgery to swap the database name.
mod url_like {
    pub struct Parts {
        pub head: String,
        pub path: String,
        pub query: String,
    }
    pub fn split(url: &str) -> Parts {
        let (before_query, query) = url.split_once('?').map_or((url, ""), |(a, b)| (a, b));
        let scheme_end = before_query.find("://").map_or(0, |i| i + 3);
        let path_start = before_query[scheme_end..].find('/').map_or(before_query.len(), |i| scheme_end + i);
        Parts {
            head: before_query[..path_start].to_owned(),
            path: before_query[path_start..].trim_start_matches('/').to_owned(),
            query: query.to_owned(),
        }
    }
    impl Parts {
        pub fn join(&self) -> String {
            if self.query.is_empty() {
                format!("{}/{}", self.head, self.path)
            } else {
                format!("{}/{}?{}", self.head, self.path, self.query)
            }
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub db_url: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
    /// An API key of the project "test".
    pub key: String,
    pub encryption_key: String,
    /// The broker's API-key verifier (its argon2 count).
    pub verifier: std::sync::Arc<hookline::auth::KeyVerifier>,
    /// The broker's long-poll waiters.
    pub wakeups: std::sync::Arc<hookline::store::wakeups::Wakeups>,
    /// The test's own database, dropped when the last handle goes (None: another's).
    database: Option<std::sync::Arc<DropOnExit>>,
}

/// Drops a test database when the test ends (forcing out the broker's connections).
struct DropOnExit {
    admin_url: String,
    name: String,
}

impl Drop for DropOnExit {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Its own thread and runtime: the test's runtime may be the one ending.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin_url).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(&mut conn).await.ok()
            })
        })
        .join();
    }
}

impl TestApp {
    /// Another handle on the same broker, for a concurrent task (the broker itself keeps
    /// running as long as the test does).
    pub fn clone_handle(&self) -> TestApp {
        TestApp {
            address: self.address.clone(),
            port: self.port,
            db_url: self.db_url.clone(),
            pool: self.pool.clone(),
            client: self.client.clone(),
            key: self.key.clone(),
            encryption_key: self.encryption_key.clone(),
            verifier: self.verifier.clone(),
            wakeups: self.wakeups.clone(),
            database: self.database.clone(),
        }
    }
}

/// A new, empty database (not cloned from the migrated template) on the test server;
/// returns its URL.
pub async fn empty_database() -> String {
    create_database(None).await
}

/// A new database cloned from the migrated template; returns its URL.
pub async fn migrated_database() -> String {
    create_database(Some(&server().await.template)).await
}

async fn create_database(template: Option<&str>) -> String {
    create_named_database(template).await.0
}

/// A new database: its URL and name.
async fn create_named_database(template: Option<&str>) -> (String, String) {
    let server = server().await;
    let db = format!("hookline_test_{}_{}", unix_seconds(), uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&with_db(&server.url_pattern, "postgres")).await.unwrap();
    let statement = match template {
        Some(t) => format!("CREATE DATABASE {db} TEMPLATE {t}"),
        None => format!("CREATE DATABASE {db}"),
    };
    sqlx::query(&statement).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    (with_db(&server.url_pattern, &db), db)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A fresh database and broker; `tweak` adjusts the config before the build.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let (db_url, name) = create_named_database(Some(&server().await.template)).await;
    let mut app = spawn_app_on(&db_url, tweak).await;
    let admin_url = with_db(&server().await.url_pattern, "postgres");
    app.database = Some(std::sync::Arc::new(DropOnExit { admin_url, name }));
    app
}

/// Another broker on an existing database (e.g. `app.db_url`), as a second replica or a
/// restart with a new configuration would be; it gets its own API key of the project "test".
/// The encryption key is a new one unless `tweak` sets it.
pub async fn spawn_app_on(db_url: &str, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let db_url = db_url.to_owned();
    let encryption_key = KeyRing::generate_base64();
    let mut config = Config {
        database_url: Some(db_url.clone().into()),
        bind: "127.0.0.1:0".into(),
        public_url: None,
        encryption_key: Some(encryption_key.clone().into()),
        encryption_old_keys: vec![],
        max_body_bytes: 64 * 1024,
        data_dir: std::env::temp_dir(),
        db_max_connections: 20,
        api_key_cache_ttl: Duration::from_secs(30),
        group_commit: Default::default(),
        consumer_batch: Default::default(),
        default_plan: hookline::domain::Plan::Unlimited,
        api_key_rate_limit: std::num::NonZeroU32::new(100),
        plan_cache_ttl: Duration::ZERO,
        run_jobs: false,
        trusted_proxies: vec![],
        max_hold: hookline::domain::HoldSeconds::bound(3600),
    };
    tweak(&mut config);
    let encryption_key = config.encryption_key.as_ref().map(|k| k.expose_secret().to_owned()).unwrap_or_default();
    let app = Application::build(&config).await.expect("building the app");
    let port = app.port();
    let pool = app.pool().clone();
    let verifier = app.key_verifier();
    let wakeups = app.wakeups();
    tokio::spawn(app.run_until_stopped());
    let (_, key) = hookline::auth::create_key(&pool, "test", hookline::domain::Plan::Unlimited, false).await.unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        db_url,
        pool,
        client,
        key: key.expose().to_owned(),
        encryption_key,
        verifier,
        wakeups,
        database: None,
    }
}

/// A response's status and its JSON body (Null when empty).
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    async fn from(r: Response) -> Self {
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Self { status, headers, body }
    }

    pub fn str(&self, field: &str) -> String {
        self.body[field].as_str().unwrap_or_else(|| panic!("no string {field:?} in {}", self.body)).to_owned()
    }

    pub fn i64(&self, field: &str) -> i64 {
        self.body[field].as_i64().unwrap_or_else(|| panic!("no integer {field:?} in {}", self.body))
    }

    /// Asserts the JSON error shape and returns its code.
    pub fn error_code(&self) -> String {
        assert!(self.body["error"]["message"].is_string(), "not an error body: {}", self.body);
        self.body["error"]["code"].as_str().unwrap().to_owned()
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A request with this app's API key.
    pub async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        self.api_as(&self.key, method, path, body).await
    }

    pub async fn api_as(&self, key: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self.client.request(method, self.url(path)).header("x-api-key", key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Reply::from(req.send().await.unwrap()).await
    }

    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
        let req = self.client.post(self.url(path)).header("x-api-key", &self.key).header("content-type", content_type);
        Reply::from(req.body(body).send().await.unwrap()).await
    }

    /// Creates a webhook with the given settings merged over a name; returns its id.
    pub async fn create_webhook(&self, settings: Value) -> String {
        let mut body = json!({"name": "test hook"});
        body.as_object_mut().unwrap().extend(settings.as_object().unwrap().clone());
        let r = self.api(reqwest::Method::POST, "/api/webhooks", Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.str("id")
    }

    pub async fn ingest(&self, webhook: &str, body: &str) -> Reply {
        let r = self.client.post(self.url(&format!("/ingest/{webhook}"))).header("content-type", "application/json");
        Reply::from(r.body(body.to_owned()).send().await.unwrap()).await
    }

    /// Ingests and asserts 202; returns (id, seq).
    pub async fn ingest_ok(&self, webhook: &str, body: &str) -> (String, i64) {
        let r = self.ingest(webhook, body).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        (r.str("id"), r.i64("seq"))
    }

    pub async fn dequeue(&self, webhook: &str) -> Reply {
        self.api(reqwest::Method::POST, &format!("/api/webhooks/{webhook}/messages/dequeue"), None).await
    }

    pub async fn commit(&self, webhook: &str, message: &str, token: Option<&str>) -> Reply {
        let body = token.map(|t| json!({"lockToken": t}));
        self.api(reqwest::Method::POST, &format!("/api/webhooks/{webhook}/messages/{message}/commit"), body).await
    }

    pub async fn error(&self, webhook: &str, message: &str, body: Option<Value>) -> Reply {
        self.api(reqwest::Method::POST, &format!("/api/webhooks/{webhook}/messages/{message}/error"), body).await
    }

    pub async fn message(&self, webhook: &str, message: &str) -> Reply {
        self.api(reqwest::Method::GET, &format!("/api/webhooks/{webhook}/messages/{message}"), None).await
    }

    pub async fn dead_letters(&self, webhook: &str, query: &str) -> Reply {
        self.api(reqwest::Method::GET, &format!("/api/webhooks/{webhook}/errors{query}"), None).await
    }

    pub async fn retry_dead(&self, webhook: &str, message: &str) -> Reply {
        self.api(reqwest::Method::POST, &format!("/api/webhooks/{webhook}/errors/{message}/retry"), None).await
    }

    pub async fn discard_dead(&self, webhook: &str, message: &str) -> Reply {
        self.api(reqwest::Method::DELETE, &format!("/api/webhooks/{webhook}/errors/{message}"), None).await
    }

    /// Returns once `n` long-poll requests are asleep on `webhook` (they checked the queue,
    /// found nothing and wait for a wake-up); panics after 10 s.
    pub async fn until_waiting(&self, webhook: &str, n: usize) {
        let id: hookline::domain::WebhookId = webhook.parse().expect("a webhook id");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.wakeups.asleep(&id) < n {
            assert!(std::time::Instant::now() < deadline, "{n} long-polls never waited on {webhook}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs SQL against this test's database (for tampering and inspection).
    pub async fn sql(&self, statement: &str) -> sqlx::postgres::PgQueryResult {
        sqlx::query(statement).execute(&self.pool).await.unwrap()
    }
}

// ---------------------------------------------------------------------------------------
// Typed helpers for the feature suites.

impl Reply {
    /// Reads any response (for requests built by hand with `TestApp::request`).
    pub async fn read(r: Response) -> Self {
        Self::from(r).await
    }

    /// Asserts the status, showing the body when it differs; returns self for chaining.
    #[track_caller]
    pub fn expect(&self, status: StatusCode) -> &Self {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.body);
        self
    }

    /// Asserts a JSON error body with this status and code; returns the error message.
    #[track_caller]
    pub fn expect_error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.body);
        let content_type = self.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(content_type.starts_with("application/json"), "error is not JSON ({content_type:?}): {}", self.body);
        assert_eq!(self.error_code(), code, "{}", self.body);
        self.body["error"]["message"].as_str().unwrap().to_owned()
    }

    pub fn opt_str(&self, field: &str) -> Option<String> {
        self.body[field].as_str().map(str::to_owned)
    }
}

impl TestApp {
    /// A request with this app's API key, to finish by hand (headers, raw bodies).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path)).header("x-api-key", &self.key)
    }

    /// Sends a request and reads the reply.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        Reply::read(req.send().await.unwrap()).await
    }

    pub async fn create_webhook_raw(&self, body: Value) -> Reply {
        self.api(reqwest::Method::POST, "/api/webhooks", Some(body)).await
    }

    pub async fn get_webhook(&self, webhook: &str) -> Reply {
        self.api(reqwest::Method::GET, &format!("/api/webhooks/{webhook}"), None).await
    }

    pub async fn patch_webhook(&self, webhook: &str, changes: Value) -> Reply {
        self.api(reqwest::Method::PATCH, &format!("/api/webhooks/{webhook}"), Some(changes)).await
    }

    pub async fn delete_webhook(&self, webhook: &str) -> Reply {
        self.api(reqwest::Method::DELETE, &format!("/api/webhooks/{webhook}"), None).await
    }

    pub async fn list_webhooks(&self, query: &str) -> Reply {
        self.api(reqwest::Method::GET, &format!("/api/webhooks{query}"), None).await
    }

    /// Ingests a body with extra request headers.
    pub async fn ingest_with_headers(&self, webhook: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
        let mut r = self.client.post(self.url(&format!("/ingest/{webhook}")));
        for (name, value) in headers {
            r = r.header(*name, *value);
        }
        Reply::read(r.body(body).send().await.unwrap()).await
    }

    /// Ingests `n` JSON messages `{"n": i}` (i from 1) one after the other; returns their ids in seq order.
    pub async fn ingest_many(&self, webhook: &str, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 1..=n {
            let (id, _) = self.ingest_ok(webhook, &json!({ "n": i }).to_string()).await;
            ids.push(id);
        }
        ids
    }

    /// Publishes one message through the API (`POST /api/webhooks/{id}/messages`).
    pub async fn publish(&self, webhook: &str, body: Value) -> Reply {
        self.api(reqwest::Method::POST, &format!("/api/webhooks/{webhook}/messages"), Some(body)).await
    }

    /// Publishes and asserts 201; returns (id, seq).
    pub async fn publish_ok(&self, webhook: &str, body: Value) -> (String, i64) {
        let r = self.publish(webhook, body).await;
        r.expect(StatusCode::CREATED);
        (r.str("id"), r.i64("seq"))
    }

    /// Publishes a batch (`POST /api/webhooks/{id}/messages/batch` with `{"messages": items}`).
    pub async fn publish_batch(&self, webhook: &str, items: Vec<Value>) -> Reply {
        let path = format!("/api/webhooks/{webhook}/messages/batch");
        self.api(reqwest::Method::POST, &path, Some(json!({ "messages": items }))).await
    }

    /// Dequeues and asserts a delivery (200).
    #[track_caller]
    pub fn dequeue_ok(&self, webhook: &str) -> impl std::future::Future<Output = Delivery> + '_ {
        let caller = std::panic::Location::caller();
        let webhook = webhook.to_owned();
        async move {
            let r = self.dequeue(&webhook).await;
            assert_eq!(r.status, StatusCode::OK, "dequeue at {caller} delivered nothing: {}", r.body);
            Delivery::from_reply(&r)
        }
    }

    /// Dequeues and asserts nothing is delivered (204, empty body).
    #[track_caller]
    pub fn dequeue_none(&self, webhook: &str) -> impl std::future::Future<Output = ()> + '_ {
        let caller = std::panic::Location::caller();
        let webhook = webhook.to_owned();
        async move {
            let r = self.dequeue(&webhook).await;
            assert_eq!(r.status, StatusCode::NO_CONTENT, "dequeue at {caller} delivered: {}", r.body);
            assert!(r.body.is_null(), "a 204 with a body: {}", r.body);
        }
    }

    /// Dequeues with a query string (`maxMessages=3&visibilityTimeout=1`, `wait=10`), given without the `?`.
    pub async fn dequeue_with(&self, webhook: &str, query: &str) -> Reply {
        self.api(reqwest::Method::POST, &format!("/api/webhooks/{webhook}/messages/dequeue?{query}"), None).await
    }

    /// Commits a delivery with its lock token and asserts 200 {id, status: committed}.
    pub async fn commit_ok(&self, webhook: &str, d: &Delivery) {
        let r = self.commit(webhook, &d.id, Some(&d.lock_token)).await;
        assert_eq!(r.status, StatusCode::OK, "commit of seq {}: {}", d.seq, r.body);
        assert_eq!(r.str("id"), d.id);
        assert_eq!(r.str("status"), "committed");
    }

    /// Commits with `?next=true` (commit and lock the next message in one call).
    pub async fn commit_next(&self, webhook: &str, message: &str, token: Option<&str>) -> Reply {
        let body = token.map(|t| json!({"lockToken": t}));
        let path = format!("/api/webhooks/{webhook}/messages/{message}/commit?next=true");
        self.api(reqwest::Method::POST, &path, body).await
    }

    /// Errors a delivery with its lock token and a reason; returns the reply (asserted 200).
    pub async fn error_ok(&self, webhook: &str, d: &Delivery, reason: &str) -> Reply {
        let r = self.error(webhook, &d.id, Some(json!({"lockToken": d.lock_token, "reason": reason}))).await;
        assert_eq!(r.status, StatusCode::OK, "error of seq {}: {}", d.seq, r.body);
        r
    }

    /// Dequeues until 204, committing everything; returns the seqs in delivery order.
    pub async fn drain(&self, webhook: &str) -> Vec<i64> {
        let mut seqs = Vec::new();
        loop {
            let r = self.dequeue(webhook).await;
            if r.status == StatusCode::NO_CONTENT {
                return seqs;
            }
            assert_eq!(r.status, StatusCode::OK, "{}", r.body);
            let d = Delivery::from_reply(&r);
            self.commit_ok(webhook, &d).await;
            seqs.push(d.seq);
        }
    }

    /// A message's state as GET /messages/{id} reports it (asserted 200).
    pub async fn message_status(&self, webhook: &str, message: &str) -> String {
        let r = self.message(webhook, message).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.str("status")
    }

    /// One number from SQL (count(*) and the like).
    pub async fn sql_i64(&self, query: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(query).fetch_one(&self.pool).await.unwrap()
    }

    /// SQL rows with one text column.
    pub async fn sql_strings(&self, query: &str) -> Vec<String> {
        sqlx::query_scalar::<_, String>(query).fetch_all(&self.pool).await.unwrap()
    }

    /// Flips a bit of a stored message's ciphertext, so it can no longer be opened.
    pub async fn corrupt_payload(&self, webhook: &str, seq: i64) {
        let tampered = self
            .sql(&format!(
                "UPDATE messages SET ciphertext = set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 1)
                 WHERE webhook_id = '{}' AND seq = {seq}",
                uuid_of(webhook)
            ))
            .await;
        assert_eq!(tampered.rows_affected(), 1, "no message {seq} to corrupt");
    }

    /// How many messages of a webhook are stored, in any state.
    pub async fn stored(&self, webhook: &str) -> i64 {
        self.sql_i64(&format!("SELECT count(*) FROM messages WHERE webhook_id = '{}'", uuid_of(webhook))).await
    }

    /// How many messages of a webhook are stored and match an SQL condition (`state = 'dead'`).
    pub async fn stored_where(&self, webhook: &str, condition: &str) -> i64 {
        let query = format!("SELECT count(*) FROM messages WHERE webhook_id = '{}' AND {condition}", uuid_of(webhook));
        self.sql_i64(&query).await
    }
}

/// A delivered (locked) message, as dequeue returns it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub seq: i64,
    pub lock_token: String,
    pub retry_count: i64,
    pub max_retries: i64,
    /// The body as text, if it was UTF-8.
    pub body: Option<String>,
    pub raw: Value,
}

impl Delivery {
    pub fn from_reply(r: &Reply) -> Self {
        Self {
            id: r.str("id"),
            seq: r.i64("seq"),
            lock_token: r.str("lockToken"),
            retry_count: r.i64("retryCount"),
            max_retries: r.i64("maxRetries"),
            body: r.opt_str("body"),
            raw: r.body.clone(),
        }
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.body.as_deref().expect("a text body")).expect("a JSON body")
    }
}

/// The UUID inside a prefixed id (`wh_…`, `msg_…`, `lt_…`), as SQL accepts it.
pub fn uuid_of(prefixed: &str) -> String {
    let (_, hex) = prefixed.split_once('_').expect("a prefixed id");
    uuid::Uuid::parse_str(hex).expect("a UUID inside").to_string()
}

/// A well-formed id that names nothing.
pub fn random_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// One message out of a `{"messages": [...]}` answer, as a Delivery.
pub fn delivery(v: &Value) -> Delivery {
    Delivery::from_reply(&Reply { status: StatusCode::OK, headers: Default::default(), body: v.clone() })
}

/// A delivered message's priority (asserted present).
pub fn priority(d: &Delivery) -> i64 {
    d.raw["priority"].as_i64().unwrap_or_else(|| panic!("no integer priority in {}", d.raw))
}

/// A JSON timestamp (RFC 3339) as a UTC time.
pub fn time(v: &Value) -> chrono::DateTime<chrono::Utc> {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    chrono::DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{s}: {e}")).with_timezone(&chrono::Utc)
}

/// Asserts a refused request: a JSON error with 422, or 400 where a value cannot even be read as its type.
#[track_caller]
pub fn refused(r: &Reply) {
    assert!(
        r.status == StatusCode::UNPROCESSABLE_ENTITY || r.status == StatusCode::BAD_REQUEST,
        "not refused: {} {}",
        r.status,
        r.body
    );
    r.error_code();
}

/// Standard base64 with padding (ten lines instead of a dev-dependency).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Awaits every task of `tasks`, failing at once (and stopping the others) when one fails,
/// and failing when they have not all finished within `limit`: a broken order or a lost
/// message must end a concurrency test, not leave its consumers polling for ever.
pub async fn join_within<T: 'static>(mut tasks: tokio::task::JoinSet<T>, limit: Duration) -> Vec<T> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut done = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(None) => return done,
            Ok(Some(Ok(value))) => done.push(value),
            Ok(Some(Err(failed))) => {
                tasks.abort_all();
                match failed.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(e) => panic!("a task failed: {e}"),
                }
            }
            Err(_) => {
                let stuck = tasks.len();
                tasks.abort_all();
                panic!("{stuck} tasks were still running after {limit:?}");
            }
        }
    }
}
