//! Namespacing: `WALLET_NAMESPACE` prefixes every subject with `<ns>.`, every stream and consumer
//! name with `<ns>_` and every Redis key with `<ns>:`, so that independent deployments and tests
//! share one NATS server and one Redis without seeing each other.

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    ns: String,
}

impl Names {
    /// A namespace is empty or 1 to 32 characters from `A-Z a-z 0-9 _ -` (it becomes a subject
    /// token and part of stream names, which allow no `.`, `*`, `>` or spaces).
    pub fn new(ns: &str) -> Result<Self, String> {
        let ok = ns.len() <= 32
            && ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self { ns: ns.to_owned() })
        } else {
            Err(format!(
                "`{ns}` must be at most 32 characters from A-Z a-z 0-9 _ -"
            ))
        }
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    pub fn subject(&self, subject: &str) -> String {
        self.join(subject, '.')
    }

    /// Stream and consumer names.
    pub fn name(&self, name: &str) -> String {
        self.join(name, '_')
    }

    pub fn redis_key(&self, key: &str) -> String {
        self.join(key, ':')
    }

    /// The subject without its namespace prefix (subjects as the contract writes them).
    pub fn strip<'a>(&self, subject: &'a str) -> &'a str {
        if self.ns.is_empty() {
            return subject;
        }
        subject
            .strip_prefix(self.ns.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .unwrap_or(subject)
    }

    fn join(&self, s: &str, sep: char) -> String {
        if self.ns.is_empty() {
            s.to_owned()
        } else {
            format!("{}{sep}{s}", self.ns)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let n = Names::new("t1").expect("ns");
        assert_eq!(n.subject("wallet.deposit"), "t1.wallet.deposit");
        assert_eq!(n.name("DEPOSITS"), "t1_DEPOSITS");
        assert_eq!(n.redis_key("bal:u"), "t1:bal:u");
        assert_eq!(n.strip("t1.wallet.deposit"), "wallet.deposit");
        let none = Names::default();
        assert_eq!(none.subject("wallet.deposit"), "wallet.deposit");
        assert!(Names::new("a.b").is_err());
        assert!(Names::new("a b").is_err());
    }
}
