//! Webhook settings, each a range-checked value so an out-of-range setting cannot be stored.

use std::fmt;

/// A setting was outside its allowed range; the message names the field and the range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be {rule}")]
pub struct SettingError {
    pub field: &'static str,
    pub rule: String,
}

bounded_setting!(
    /// How long a dequeued message stays locked: the visibility timeout.
    LockTimeout, "lockTimeoutSeconds", 1, 43_200, 300
);
bounded_setting!(
    /// Failed attempts after which a message is dead.
    MaxRetries, "maxRetries", 1, 100, 10
);
bounded_setting!(
    /// FIFO: how many messages from the head one consumer may lease at once, under one lock
    /// token, to commit in order (the ordered in-flight window).
    FifoWindow, "fifoWindow", 1, 100, 1
);
bounded_setting!(
    /// Days a message is kept, in any state, before the purge job deletes it.
    TtlDays, "ttlDays", 1, 365, 7
);

/// A webhook's display name: 1 to 200 characters, not blank.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookName(String);

impl WebhookName {
    pub fn parse(name: &str) -> Result<Self, SettingError> {
        let trimmed = name.trim();
        if trimmed.is_empty() || trimmed.chars().count() > 200 {
            return Err(SettingError { field: "name", rule: "1 to 200 characters, not blank".into() });
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WebhookName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_hold_their_ranges() {
        assert_eq!(LockTimeout::parse(1).unwrap().get(), 1);
        assert_eq!(LockTimeout::parse(43_200).unwrap().get(), 43_200);
        assert!(LockTimeout::parse(0).is_err());
        assert!(LockTimeout::parse(43_201).is_err());
        assert!(MaxRetries::parse(101).is_err());
        assert!(TtlDays::parse(i64::MAX).is_err());
        assert_eq!(MaxRetries::parse(0).unwrap_err().to_string(), "maxRetries must be between 1 and 100");
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(WebhookName::parse("  stripe ").unwrap().as_str(), "stripe");
        assert!(WebhookName::parse("   ").is_err());
        assert!(WebhookName::parse(&"x".repeat(201)).is_err());
    }
}
