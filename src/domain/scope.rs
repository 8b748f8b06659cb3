//! What an API key may do: `manage` (webhooks, keys, settings), `consume` (dequeue, commit,
//! error, dead letters) and `publish` (send messages through the API).

use std::fmt;

use super::SettingError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Manage,
    Consume,
    Publish,
}

impl Scope {
    const ALL: [Scope; 3] = [Scope::Manage, Scope::Consume, Scope::Publish];

    pub fn name(self) -> &'static str {
        match self {
            Self::Manage => "manage",
            Self::Consume => "consume",
            Self::Publish => "publish",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of scopes; non-empty when parsed (NONE grants nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub const ALL: Scopes = Scopes(0b111);
    /// What a key whose stored scopes cannot be read is allowed: nothing.
    pub const NONE: Scopes = Scopes(0);

    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, SettingError> {
        let rule = || SettingError { field: "scopes", rule: "a non-empty list of manage, consume, publish".into() };
        let mut bits = 0;
        for name in names {
            let scope = Scope::ALL.into_iter().find(|s| s.name() == name.as_ref()).ok_or_else(rule)?;
            bits |= scope.bit();
        }
        if bits == 0 {
            return Err(rule());
        }
        Ok(Self(bits))
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_subset_of(self, other: Scopes) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL.into_iter().filter(|s| self.contains(*s)).map(Scope::name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_compares() {
        let consume = Scopes::parse(&["consume"]).unwrap();
        assert!(consume.contains(Scope::Consume) && !consume.contains(Scope::Manage));
        assert!(consume.is_subset_of(Scopes::ALL));
        assert!(!Scopes::ALL.is_subset_of(consume));
        assert_eq!(Scopes::parse(&["publish", "manage"]).unwrap().names(), vec!["manage", "publish"]);
        assert!(Scopes::parse::<&str>(&[]).is_err());
        assert!(Scopes::parse(&["admin"]).is_err());
    }
}
