//! HTTP-level tests: each test gets a fresh database and a broker on a random port, and
//! talks to it like a client would.

mod helpers;

mod auth;
mod bad_input;
mod commit_heads;
mod commit_next;
mod concurrency;
mod consumer_batch;
mod delays_ttl;
mod encryption;
mod fifo_window;
mod group_commit;
mod hardening;
mod head_of_line;
mod idempotency;
mod isolation;
mod jobs;
mod keys;
mod lifecycle;
mod lock_control;
mod long_poll;
mod migrations;
mod model;
mod operate;
mod ordering_keys;
mod pause_hold;
mod plans;
mod priorities;
mod publish;
mod redrive;
mod replay;
mod session;
mod shutdown;
mod signatures;
mod smoke;
mod standard_mode;
mod stats;
mod webhooks;
