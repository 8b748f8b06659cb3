//! What the store tells its callers beyond rows: something is not there, a transition was
//! refused (and why, as data), or the database failed (with the operation and webhook that
//! were under way, for the log).

use std::fmt;

use crate::domain::{MessageState, Plan, Seq, WebhookId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A row this needed stayed locked by another transaction past the lock timeout (see
    /// `hookline_ingest`): nothing was written; retrying later will pass.
    #[error("rows of this webhook are locked by another operation")]
    Busy,
    #[error(transparent)]
    Database(DbError),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl StoreError {
    /// Whether a database unique constraint refused the write (`constraint` names it).
    pub fn violates(&self, constraint: &str) -> bool {
        matches!(self, Self::Database(DbError { source: sqlx::Error::Database(db), .. })
            if db.constraint() == Some(constraint))
    }
}

/// Why a transition changed nothing. Mapped to HTTP once, in `http/error.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Commit, error or extend of a message that holds no lock.
    #[error("message is {state}, not locked")]
    NotLocked { state: MessageState },
    /// The webhook requires the lock token and the call named none.
    #[error("lockToken is required on this webhook (requireLockToken is on)")]
    LockTokenRequired,
    /// A message of a leased window committed before the ones leased ahead of it.
    #[error("commit the messages of a window in the order they were leased: an earlier one is still locked")]
    OutOfOrder,
    /// The lock was fenced: an operator skipped the message it held.
    #[error("this lock was superseded: an operator skipped the message it held to the dead-letter queue")]
    LockSuperseded,
    /// Skip of a FIFO head that is not the one the operator saw.
    #[error("the head moved: it is now seq {}", head.0)]
    HeadMoved { head: Seq },
    /// Skip of a head when nothing is in line.
    #[error("nothing is in line: the queue has no head to skip")]
    NoHead,
    /// Skip naming a key on a webhook without orderingKey, or none on one with it.
    #[error(
        "key names the ordering key whose head to skip: required on a webhook with orderingKey, refused on others"
    )]
    KeyMismatch,
    /// An operation on the head of a queue that has none (standard mode has no order).
    #[error("only a FIFO webhook has a head to skip; a standard one does not block on any message")]
    NotFifo,
    /// The lock is held under another token.
    #[error("lock token does not match: the lock expired and was handed out again")]
    LockMismatch,
    /// Retry or discard of a message that is not in the dead-letter queue.
    #[error("message is {state}, not dead")]
    NotDead { state: MessageState },
    /// A signed request whose signature was already seen within its window.
    #[error("this signature was already used: a replayed request")]
    Replayed,
    /// Creating a webhook or an API key past the plan's count.
    #[error("a project may have at most {max} {what} on the {} plan", plan.name())]
    PlanLimit { what: &'static str, max: u32, plan: Plan },
}

/// A database failure and what the store was doing.
#[derive(Debug)]
pub struct DbError {
    pub operation: &'static str,
    pub webhook: Option<WebhookId>,
    pub source: sqlx::Error,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.webhook {
            Some(webhook) => write!(f, "database error while {} (webhook {webhook})", self.operation),
            None => write!(f, "database error while {}", self.operation),
        }
    }
}

impl std::error::Error for DbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Names the operation (and webhook) a database call was for.
pub trait Context<T> {
    fn context(self, operation: &'static str) -> StoreResult<T>;
    /// Also maps `no_data_found`, which the baseline's functions raise for an unknown
    /// webhook, to NotFound.
    fn context_for(self, operation: &'static str, webhook: &WebhookId) -> StoreResult<T>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn context(self, operation: &'static str) -> StoreResult<T> {
        self.map_err(|source| match sqlstate(&source).as_deref() {
            Some(LOCK_NOT_AVAILABLE) => StoreError::Busy,
            _ => StoreError::Database(DbError { operation, webhook: None, source }),
        })
    }

    fn context_for(self, operation: &'static str, webhook: &WebhookId) -> StoreResult<T> {
        self.map_err(|source| match sqlstate(&source).as_deref() {
            Some(NO_DATA_FOUND) => StoreError::NotFound("webhook"),
            Some(LOCK_NOT_AVAILABLE) => StoreError::Busy,
            _ => StoreError::Database(DbError { operation, webhook: Some(*webhook), source }),
        })
    }
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// SQLSTATE `no_data_found`.
const NO_DATA_FOUND: &str = "P0002";
/// SQLSTATE `lock_not_available`: a `lock_timeout` ran out.
const LOCK_NOT_AVAILABLE: &str = "55P03";
