//! Domain types: parsed once at the edge, so the layers below never see a bad id or setting.
//! No I/O here.

mod ids;
mod message;
mod payload;
mod plan;
mod scope;
mod webhook;

pub use ids::{ApiKeyId, LockToken, MessageId, ProjectId, WebhookId};
pub use message::{MessageState, Seq};
pub use payload::{Payload, PayloadError};
pub use plan::{LimitOverrides, Limits, Plan};
pub use scope::{Scope, Scopes};
pub use webhook::{LockTimeout, MaxRetries, SettingError, TtlDays, WebhookName};
