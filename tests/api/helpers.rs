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
                    let dir = std::env::temp_dir().join("hookline-test-pg");
                    let pg = tokio::task::spawn_blocking(move || {
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
                sqlx::query(&format!("ALTER DATABASE {building} RENAME TO {template}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            sqlx::query("SELECT pg_advisory_unlock(7412)").execute(&mut conn).await.unwrap();
            Server { url_pattern, template }
        })
        .await
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
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A fresh database and broker; `tweak` adjusts the config before the build.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let server = server().await;
    let db = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(&with_db(&server.url_pattern, "postgres")).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {db} TEMPLATE {}", server.template)).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let db_url = with_db(&server.url_pattern, &db);
    let encryption_key = KeyRing::generate_base64();
    let mut config = Config {
        database_url: Some(db_url.clone()),
        bind: "127.0.0.1:0".into(),
        public_url: None,
        encryption_key: Some(encryption_key.clone()),
        encryption_old_keys: vec![],
        max_body_bytes: 64 * 1024,
        data_dir: std::env::temp_dir(),
        db_max_connections: 20,
        api_key_cache_ttl: Duration::from_secs(30),
        group_commit: Default::default(),
        run_jobs: false,
    };
    tweak(&mut config);
    let app = Application::build(&config).await.expect("building the app");
    let port = app.port();
    let pool = app.pool().clone();
    tokio::spawn(app.run_until_stopped());
    let (_, key) = hookline::auth::create_key(&pool, "test").await.unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        db_url,
        pool,
        client,
        key: key.expose().to_owned(),
        encryption_key: config.encryption_key.unwrap(),
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

    /// Runs SQL against this test's database (for tampering and inspection).
    pub async fn sql(&self, statement: &str) -> sqlx::postgres::PgQueryResult {
        sqlx::query(statement).execute(&self.pool).await.unwrap()
    }
}
