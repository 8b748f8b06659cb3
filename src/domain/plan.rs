//! Plans and the limits they grant. Rates are per webhook and per second; `None` means
//! unlimited. An operator's per-project overrides replace single limits.

use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{SettingError, TtlDays};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(type_name = "plan", rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Free,
    Pro,
    Enterprise,
    /// Self-hosted: no rate limits; assigned only by an operator.
    Unlimited,
}

impl Plan {
    pub fn name(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Pro => "pro",
            Self::Enterprise => "enterprise",
            Self::Unlimited => "unlimited",
        }
    }

    pub fn limits(self) -> Limits {
        let per_second = |n: u32| NonZeroU32::new(n);
        match self {
            Self::Free => Limits {
                plan: self,
                ingest_per_second: per_second(10),
                dequeue_per_second: per_second(5),
                ack_per_second: per_second(10),
                ttl_days: 7..=7,
                default_ttl_days: 7,
                max_webhooks: Some(10),
                max_api_keys: Some(20),
                max_body_bytes: Some(256 * 1024),
            },
            Self::Pro => Limits {
                plan: self,
                ingest_per_second: per_second(100),
                dequeue_per_second: per_second(50),
                ack_per_second: per_second(100),
                ttl_days: 1..=30,
                default_ttl_days: 30,
                max_webhooks: Some(100),
                max_api_keys: Some(200),
                max_body_bytes: Some(1024 * 1024),
            },
            Self::Enterprise => Limits {
                plan: self,
                ingest_per_second: per_second(1000),
                dequeue_per_second: per_second(500),
                ack_per_second: per_second(1000),
                ttl_days: 1..=90,
                default_ttl_days: 90,
                max_webhooks: Some(1000),
                max_api_keys: Some(2000),
                max_body_bytes: Some(10 * 1024 * 1024),
            },
            Self::Unlimited => Limits {
                plan: self,
                ingest_per_second: None,
                dequeue_per_second: None,
                ack_per_second: None,
                ttl_days: 1..=365,
                default_ttl_days: 7,
                max_webhooks: None,
                max_api_keys: None,
                max_body_bytes: None,
            },
        }
    }
}

impl FromStr for Plan {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "free" => Ok(Self::Free),
            "pro" => Ok(Self::Pro),
            "enterprise" => Ok(Self::Enterprise),
            "unlimited" => Ok(Self::Unlimited),
            other => Err(format!("unknown plan {other:?}: expected free, pro, enterprise or unlimited")),
        }
    }
}

/// What a project may do: its plan's limits with the operator's overrides applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub plan: Plan,
    pub ingest_per_second: Option<NonZeroU32>,
    pub dequeue_per_second: Option<NonZeroU32>,
    /// Commit and error.
    pub ack_per_second: Option<NonZeroU32>,
    pub ttl_days: RangeInclusive<i32>,
    pub default_ttl_days: i32,
    pub max_webhooks: Option<u32>,
    /// Live (not revoked) API keys a project may hold.
    pub max_api_keys: Option<u32>,
    /// Largest ingestion body; the broker-wide HOOKLINE_MAX_BODY_BYTES caps it too.
    pub max_body_bytes: Option<usize>,
}

/// An operator's replacements for single limits of a project's plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    pub ingest_per_second: Option<NonZeroU32>,
    pub dequeue_per_second: Option<NonZeroU32>,
    pub ack_per_second: Option<NonZeroU32>,
    pub max_webhooks: Option<u32>,
    pub max_body_bytes: Option<usize>,
}

impl Limits {
    pub fn with(mut self, o: LimitOverrides) -> Self {
        self.ingest_per_second = o.ingest_per_second.or(self.ingest_per_second);
        self.dequeue_per_second = o.dequeue_per_second.or(self.dequeue_per_second);
        self.ack_per_second = o.ack_per_second.or(self.ack_per_second);
        self.max_webhooks = o.max_webhooks.or(self.max_webhooks);
        self.max_body_bytes = o.max_body_bytes.or(self.max_body_bytes);
        self
    }

    /// The TTL for a new webhook: the asked one if the plan allows it, else the rule broken.
    pub fn ttl_days(&self, asked: Option<i64>) -> Result<TtlDays, SettingError> {
        let asked = asked.unwrap_or(self.default_ttl_days as i64);
        if (*self.ttl_days.start() as i64..=*self.ttl_days.end() as i64).contains(&asked) {
            return TtlDays::parse(asked);
        }
        let (lo, hi) = (self.ttl_days.start(), self.ttl_days.end());
        let rule = if lo == hi {
            format!("{lo} on the {} plan (fixed)", self.plan.name())
        } else {
            format!("between {lo} and {hi} on the {} plan", self.plan.name())
        };
        Err(SettingError { field: "ttlDays", rule })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_follows_the_plan() {
        let days = |plan: Plan, asked| plan.limits().ttl_days(asked).map(TtlDays::get);
        assert_eq!(days(Plan::Free, None), Ok(7));
        assert_eq!(days(Plan::Pro, None), Ok(30));
        assert_eq!(
            Plan::Free.limits().ttl_days(Some(8)).unwrap_err().to_string(),
            "ttlDays must be 7 on the free plan (fixed)"
        );
        assert_eq!(days(Plan::Pro, Some(30)), Ok(30));
        assert_eq!(
            Plan::Pro.limits().ttl_days(Some(60)).unwrap_err().to_string(),
            "ttlDays must be between 1 and 30 on the pro plan"
        );
        assert_eq!(days(Plan::Enterprise, Some(90)), Ok(90));
        assert_eq!(days(Plan::Unlimited, Some(365)), Ok(365));
        assert!(Plan::Unlimited.limits().ttl_days(Some(366)).is_err());
    }

    #[test]
    fn overrides_replace_single_limits() {
        let o = LimitOverrides { ingest_per_second: NonZeroU32::new(42), ..Default::default() };
        let l = Plan::Free.limits().with(o);
        assert_eq!(l.ingest_per_second, NonZeroU32::new(42));
        assert_eq!(l.dequeue_per_second, NonZeroU32::new(5));
    }

    #[test]
    fn plans_parse_by_name() {
        assert_eq!("pro".parse::<Plan>(), Ok(Plan::Pro));
        assert!("gold".parse::<Plan>().is_err());
    }
}
