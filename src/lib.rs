//! hookline: a webhook ingestion broker with per-webhook strict FIFO queues on PostgreSQL.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod http;
pub mod jobs;
pub mod limits;
pub mod local_pg;
pub mod settings_cache;
pub mod startup;
pub mod store;
pub mod telemetry;

pub use config::Config;
pub use startup::Application;
