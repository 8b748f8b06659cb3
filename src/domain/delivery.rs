//! How a webhook delivers (strict FIFO or standard) and the per-message delivery options a
//! producer may set: priority, delay, TTL and idempotency key.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::SettingError;

/// `fifo`: one message in flight, head-of-line blocking. `standard`: many in flight at once,
/// handed to concurrent consumers in priority-then-seq order. Mirrors `delivery_mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "delivery_mode", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    #[default]
    Fifo,
    Standard,
}

impl DeliveryMode {
    pub fn parse(value: &str) -> Result<Self, SettingError> {
        match value {
            "fifo" => Ok(Self::Fifo),
            "standard" => Ok(Self::Standard),
            _ => Err(SettingError { field: "mode", rule: "fifo or standard".into() }),
        }
    }
}

bounded_setting!(
    /// Higher first; within a priority, seq order. Only on webhooks with priorities enabled.
    Priority, "priority", 0, 10, 0
);
bounded_setting!(
    /// Seconds before a message joins its queue (up to 7 days).
    DelaySeconds, "delaySeconds", 0, 604_800, 0
);
bounded_setting!(
    /// Seconds a message lives; never more than its webhook's ttlDays.
    TtlSeconds, "ttlSeconds", 1, 365 * 86_400, 86_400
);
bounded_setting!(
    /// How many messages one dequeue may lock.
    MaxMessages, "maxMessages", 1, 100, 1
);

/// How long a consumer's error holds its webhook (the downstream is down, not the message):
/// 1 second up to the broker's bound (HOOKLINE_MAX_HOLD_SECONDS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldSeconds(i32);

impl HoldSeconds {
    pub fn parse(value: i64, max: HoldSeconds) -> Result<Self, SettingError> {
        match value {
            1.. if value <= i64::from(max.0) => Ok(Self(value as i32)),
            _ => Err(SettingError { field: "holdSeconds", rule: format!("between 1 and {}", max.0) }),
        }
    }

    /// The broker's bound on holds, as configured (at least 1 s, at most a day).
    pub fn bound(seconds: u64) -> Self {
        Self(seconds.clamp(1, 86_400) as i32)
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

impl Priority {
    /// The `X-Hookline-Priority` header's value.
    pub fn from_header(value: &str) -> Result<Self, SettingError> {
        let rule = || SettingError { field: "X-Hookline-Priority", rule: "an integer between 0 and 10".into() };
        let n: i64 = value.trim().parse().map_err(|_| rule())?;
        Self::parse(n).map_err(|_| rule())
    }
}

/// A producer's key for "this is the same message": 1 to 255 visible ASCII characters.
/// A repeat on the same webhook within 24 hours stores nothing and answers the original.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_CHARS: usize = 255;

    pub fn parse(field: &'static str, value: &str) -> Result<Self, SettingError> {
        let ok = !value.is_empty() && value.len() <= Self::MAX_CHARS && value.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(SettingError { field, rule: "1 to 255 visible ASCII characters".into() });
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_are_bounded_by_the_broker() {
        let max = HoldSeconds::bound(600);
        assert_eq!(HoldSeconds::parse(600, max).unwrap().get(), 600);
        assert!(HoldSeconds::parse(0, max).is_err());
        assert_eq!(HoldSeconds::parse(601, max).unwrap_err().to_string(), "holdSeconds must be between 1 and 600");
        assert_eq!(HoldSeconds::bound(0).get(), 1);
        assert_eq!(HoldSeconds::bound(u64::MAX).get(), 86_400);
    }

    #[test]
    fn priorities_parse_from_headers() {
        assert_eq!(Priority::from_header(" 9 ").unwrap().get(), 9);
        assert!(Priority::from_header("11").is_err());
        assert!(Priority::from_header("high").is_err());
        assert_eq!(Priority::parse(-1).unwrap_err().to_string(), "priority must be between 0 and 10");
    }

    #[test]
    fn idempotency_keys_are_bounded_visible_ascii() {
        assert!(IdempotencyKey::parse("idempotencyKey", "order-42").is_ok());
        assert!(IdempotencyKey::parse("idempotencyKey", "").is_err());
        assert!(IdempotencyKey::parse("idempotencyKey", "a b").is_err());
        assert!(IdempotencyKey::parse("idempotencyKey", &"k".repeat(256)).is_err());
    }

    #[test]
    fn modes_parse() {
        assert_eq!(DeliveryMode::parse("standard").unwrap(), DeliveryMode::Standard);
        assert!(DeliveryMode::parse("FIFO").is_err());
    }
}
