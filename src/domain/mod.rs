//! Domain types: parsed once at the edge, so the layers below never see a bad id or setting.
//! No I/O here.

/// A range-checked integer setting: `parse` names the field and its range on failure.
macro_rules! bounded_setting {
    ($(#[$doc:meta])* $name:ident, $field:literal, $min:expr, $max:expr, $default:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(i32);

        impl $name {
            pub const MIN: i32 = $min;
            pub const MAX: i32 = $max;
            pub const DEFAULT: Self = Self($default);

            pub fn parse(value: i64) -> Result<Self, SettingError> {
                if (Self::MIN as i64..=Self::MAX as i64).contains(&value) {
                    Ok(Self(value as i32))
                } else {
                    Err(SettingError { field: $field, rule: format!("between {} and {}", Self::MIN, Self::MAX) })
                }
            }

            pub fn get(self) -> i32 {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::DEFAULT
            }
        }
    };
}

mod delivery;
mod ids;
mod message;
mod payload;
mod plan;
mod request_key;
mod scope;
mod signature;
mod text;
mod webhook;

pub use delivery::{DelaySeconds, DeliveryMode, HoldSeconds, IdempotencyKey, MaxMessages, Priority, TtlSeconds};
pub use ids::{ApiKeyId, LockToken, MessageId, ProjectId, WebhookId};
pub use message::{MessageState, QueueState, Seq};
pub use payload::{Payload, PayloadError};
pub use plan::{LimitOverrides, Limits, Plan};
pub use request_key::{DedupWindow, RequestKey, REQUEST_KEY_PATTERN};
pub use scope::{Scope, Scopes};
pub use signature::SignatureScheme;
pub use text::{storable, NulInText};
pub use webhook::{FifoWindow, LockTimeout, MaxRetries, SettingError, TtlDays, WebhookName};
