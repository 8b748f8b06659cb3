//! A message's place in its queue and its state in the life cycle.

use serde::{Deserialize, Serialize};

/// Per-webhook sequence number: strictly increasing, and the delivery order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(transparent)]
pub struct Seq(pub i64);

/// The life cycle: queued -> locked -> committed | queued (retry) | dead; dead -> queued.
/// Mirrors the `message_state` enum in the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "message_state", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    Queued,
    Locked,
    Committed,
    Dead,
}

impl MessageState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Locked => "locked",
            Self::Committed => "committed",
            Self::Dead => "dead",
        }
    }
}

/// Why a webhook's head moves or not, as an operator sees it (the head view's `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueState {
    /// Nothing waits.
    Empty,
    /// The head can be delivered now.
    Ready,
    /// FIFO: the head is locked by a consumer, so nothing behind it moves. Standard: every
    /// message is in flight.
    Locked,
    /// An operator paused delivery.
    Paused,
    /// A consumer held delivery (its downstream is down).
    Held,
    /// Only delayed messages wait.
    Delayed,
}

impl std::fmt::Display for MessageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
