//! Typed, prefixed identifiers (`wh_…`, `msg_…`): a UUID inside, its prefix outside.
//! A webhook id is also the secret in its ingestion URL, so it is 122 random bits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }

            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(s: &str) -> Result<Self, InvalidId> {
                let hex = s.strip_prefix($prefix).ok_or(InvalidId)?;
                // Only the canonical 32-digit form, so one id has one spelling.
                if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(InvalidId);
                }
                Uuid::try_parse(hex).map(Self).map_err(|_| InvalidId)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(|_| serde::de::Error::custom(concat!("expected a ", $prefix, " id")))
            }
        }
    };
}

prefixed_id!(
    /// A webhook endpoint and its queue.
    WebhookId,
    "wh_"
);
prefixed_id!(
    /// One ingested message.
    MessageId,
    "msg_"
);
prefixed_id!(
    /// Handed out with each lock; commit and error may present it to prove they hold the lock.
    LockToken,
    "lt_"
);

/// The string was not an id of the expected kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid id")]
pub struct InvalidId;

/// A tenant: it owns webhooks and API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(transparent)]
pub struct ProjectId(pub i64);

/// Database id of an API key (the key's public face is its prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(transparent)]
pub struct ApiKeyId(pub i64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_string_form() {
        let id = WebhookId::new_random();
        let text = id.to_string();
        assert!(text.starts_with("wh_"));
        assert_eq!(text.len(), 3 + 32);
        assert_eq!(text.parse::<WebhookId>(), Ok(id));
    }

    #[test]
    fn rejects_other_prefixes_and_spellings() {
        let id = MessageId::new_random();
        let hex = id.as_uuid().simple().to_string();
        assert_eq!(format!("wh_{hex}").parse::<MessageId>(), Err(InvalidId));
        assert_eq!(hex.parse::<MessageId>(), Err(InvalidId));
        assert_eq!(format!("msg_{}", hex.to_uppercase()).parse::<MessageId>(), Err(InvalidId));
        assert_eq!(format!("msg_{}", id.as_uuid().hyphenated()).parse::<MessageId>(), Err(InvalidId));
        assert_eq!("msg_".parse::<MessageId>(), Err(InvalidId));
    }
}
