//! Building and running the application: the same code starts the real server and the
//! test server (which binds port 0 and drives the jobs itself).

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::middleware::ErrorHandlers;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio_cron_scheduler::JobScheduler;
use tracing_actix_web::TracingLogger;

use crate::auth::KeyVerifier;
use crate::config::Config;
use crate::crypto::KeyRing;
use crate::http::{self, ApiState};
use crate::limits::RateLimits;
use crate::settings_cache::SettingsCache;
use crate::store;
use crate::store::consumer_batch::ConsumerBatcher;
use crate::store::group_commit::GroupCommitter;
use crate::store::listener::Listener;
use crate::store::wakeups::Wakeups;

pub struct Application {
    port: u16,
    verifier: Arc<KeyVerifier>,
    wakeups: Arc<Wakeups>,
    server: Server,
    pool: PgPool,
    scheduler: Option<JobScheduler>,
}

impl Application {
    /// Connects, migrates, binds and schedules the jobs. `config` must carry a database URL
    /// and an encryption key by now (main resolves the embedded default first).
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let url = config.database_url.as_ref().context("DATABASE_URL is not set")?.expose_secret();
        let key = config.encryption_key.as_ref().context(
            "HOOKLINE_ENCRYPTION_KEY is required when DATABASE_URL is set (base64 of 32 random bytes, \
             e.g. `openssl rand -base64 32`)",
        )?;
        let keys = Arc::new(KeyRing::from_base64(key.expose_secret(), &config.encryption_old_keys)?);
        let pool = store::connect(url, config.db_max_connections).await.context("connecting to PostgreSQL")?;
        store::migrate(&pool).await.context("applying migrations")?;

        let listener = TcpListener::bind(&config.bind).with_context(|| format!("binding {}", config.bind))?;
        let address = listener.local_addr()?;
        let verifier = Arc::new(KeyVerifier::new(pool.clone(), config.api_key_cache_ttl));
        let wakeups = Arc::new(Wakeups::default());
        let notifications = Listener::default()
            .on(store::keys::REVOKED_CHANNEL, verifier.clone())
            .on(store::wakeups::CHANNEL, wakeups.clone());
        tokio::spawn(notifications.run(pool.clone()));
        let state = web::Data::new(ApiState {
            pool: pool.clone(),
            keys,
            verifier: verifier.clone(),
            ingest: GroupCommitter::start(pool.clone(), config.group_commit),
            consumers: ConsumerBatcher::start(pool.clone(), config.consumer_batch),
            limits: RateLimits::new(config.api_key_rate_limit),
            settings: SettingsCache::new(pool.clone(), config.plan_cache_ttl),
            logins: Default::default(),
            trusted_proxies: config.trusted_proxies.clone(),
            wakeups: wakeups.clone(),
            max_body_bytes: config.max_body_bytes,
            max_hold: config.max_hold,
            public_url: config.public_url.clone().unwrap_or_else(|| format!("http://{address}")),
        });
        let server = HttpServer::new(move || {
            App::new()
                .wrap(ErrorHandlers::new().default_handler_client(http::error::json_client_errors))
                .wrap(TracingLogger::default())
                .app_data(state.clone())
                .configure(http::routes)
                .default_service(web::to(http::not_found))
        })
        .listen(listener)?
        .run();
        let scheduler = if config.run_jobs { Some(crate::jobs::start(pool.clone()).await?) } else { None };
        tracing::info!(%address, "hookline listening");
        Ok(Self { port: address.port(), verifier, wakeups, server, pool, scheduler })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The API-key verifier, whose counters tests and operators read.
    pub fn key_verifier(&self) -> Arc<KeyVerifier> {
        self.verifier.clone()
    }

    /// The long-poll waiters, which tests read to know a request is waiting.
    pub fn wakeups(&self) -> Arc<Wakeups> {
        self.wakeups.clone()
    }

    /// Serves until SIGINT/SIGTERM: stops accepting, drains in-flight requests, then stops
    /// the jobs. A lock in flight is committed by its consumer or left to expire.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await?;
        if let Some(mut scheduler) = self.scheduler {
            scheduler.shutdown().await?;
        }
        self.pool.close().await;
        Ok(())
    }
}
