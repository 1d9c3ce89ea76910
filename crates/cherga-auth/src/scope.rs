//! Scopes: what a token may do, per queue.
//!
//! A token lists scopes such as `produce:payments`, `consume:payments.*` and
//! `admin`. A queue pattern is a queue name in which `*` stands for any run of
//! characters (queue names never contain `*`), so `*` is every queue and
//! `billing.*` every queue whose name starts with `billing.`.
//!
//! **Invariant:** a scope that cannot be read grants nothing: unknown words and
//! malformed patterns are ignored, so a typo fails closed.

/// Longest queue pattern: the longest queue name plus room for wildcards.
const MAX_PATTERN_LEN: usize = 256;

/// What a request needs on a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Enqueue, cancel or retry tasks (`produce:<queue>`).
    Produce,
    /// Lease, ack, nack, extend (`consume:<queue>`).
    Consume,
    /// Read tasks, queue counts and events: `read`, `produce` or `consume` on
    /// the queue.
    Read,
    /// Change queue settings, revoke tokens (`admin`).
    Admin,
}

/// A queue name with `*` wildcards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuePattern {
    /// Only `[A-Za-z0-9_.-*]`, 1 to [`MAX_PATTERN_LEN`] bytes.
    text: String,
}

impl QueuePattern {
    /// Reads a pattern; `None` when it has characters a queue name cannot have.
    pub fn parse(text: &str) -> Option<Self> {
        let valid = !text.is_empty()
            && text.len() <= MAX_PATTERN_LEN
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'*'));
        valid.then(|| Self { text: text.to_owned() })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `queue` matches. Linear in the lengths for patterns with one
    /// wildcard; at worst their product, with both bounded.
    pub fn matches(&self, queue: &str) -> bool {
        glob(self.text.as_bytes(), queue.as_bytes())
    }

    /// Whether the pattern matches every queue.
    pub fn is_everything(&self) -> bool {
        self.text.bytes().all(|b| b == b'*')
    }
}

/// Wildcard match with `*` only: the classic greedy algorithm that remembers the
/// last star and retries from one character further on a mismatch.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// The scopes of one token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    admin: bool,
    produce: Vec<QueuePattern>,
    consume: Vec<QueuePattern>,
    /// `read:<pattern>`: only reading (tasks, counts, events), for dashboards
    /// and monitoring that must not change anything.
    read: Vec<QueuePattern>,
}

impl Scopes {
    /// Reads scope words; words that are not scopes grant nothing.
    pub fn parse<'a>(words: impl IntoIterator<Item = &'a str>) -> Self {
        let mut scopes = Self::default();
        for word in words {
            if word == "admin" {
                scopes.admin = true;
            } else if let Some(pattern) = word.strip_prefix("produce:").and_then(QueuePattern::parse) {
                scopes.produce.push(pattern);
            } else if let Some(pattern) = word.strip_prefix("consume:").and_then(QueuePattern::parse) {
                scopes.consume.push(pattern);
            } else if let Some(pattern) = word.strip_prefix("read:").and_then(QueuePattern::parse) {
                scopes.read.push(pattern);
            }
        }
        scopes
    }

    /// Scopes that allow everything: what every caller has when auth is off.
    pub fn everything() -> Self {
        Self { admin: true, ..Self::default() }
    }

    /// Whether these scopes allow `access` on `queue`. `admin` allows everything.
    pub fn allows(&self, access: Access, queue: &str) -> bool {
        if self.admin {
            return true;
        }
        let any = |patterns: &[QueuePattern]| patterns.iter().any(|p| p.matches(queue));
        match access {
            Access::Produce => any(&self.produce),
            Access::Consume => any(&self.consume),
            Access::Read => any(&self.produce) || any(&self.consume) || any(&self.read),
            Access::Admin => false,
        }
    }

    /// Whether `access` is allowed on every queue, so that a request need not
    /// learn which queue a task is in before it is allowed.
    pub fn allows_everywhere(&self, access: Access) -> bool {
        let all = |patterns: &[QueuePattern]| patterns.iter().any(QueuePattern::is_everything);
        self.admin
            || match access {
                Access::Produce => all(&self.produce),
                Access::Consume => all(&self.consume),
                Access::Read => all(&self.produce) || all(&self.consume) || all(&self.read),
                Access::Admin => false,
            }
    }

    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// The scopes written back as words, for messages and tests.
    pub fn words(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.admin {
            out.push("admin".to_owned());
        }
        out.extend(self.produce.iter().map(|p| format!("produce:{}", p.as_str())));
        out.extend(self.consume.iter().map(|p| format!("consume:{}", p.as_str())));
        out.extend(self.read.iter().map(|p| format!("read:{}", p.as_str())));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_scope_reads_and_does_nothing_else() {
        let scopes = Scopes::parse(["read:billing.*"]);
        assert!(scopes.allows(Access::Read, "billing.eu"));
        assert!(!scopes.allows(Access::Read, "emails"));
        for access in [Access::Produce, Access::Consume, Access::Admin] {
            assert!(!scopes.allows(access, "billing.eu"), "{access:?}");
        }
        assert!(Scopes::parse(["read:*"]).allows_everywhere(Access::Read));
        assert!(!Scopes::parse(["read:*"]).allows_everywhere(Access::Consume));
        assert_eq!(scopes.words(), ["read:billing.*"]);
    }

    #[test]
    fn patterns_match_names_and_wildcards() {
        let cases = [
            ("payments", "payments", true),
            ("payments", "payments2", false),
            ("payments", "payment", false),
            ("*", "anything.at-all_1", true),
            ("billing.*", "billing.invoices", true),
            ("billing.*", "billing.", true),
            ("billing.*", "billing", false),
            ("billing.*", "xbilling.a", false),
            ("*.high", "emails.high", true),
            ("*.high", "emails.low", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("**", "", true),
            ("a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
        ];
        for (pattern, queue, want) in cases {
            let got = QueuePattern::parse(pattern).expect(pattern).matches(queue);
            assert_eq!(got, want, "pattern {pattern:?} on queue {queue:?}");
        }
    }

    #[test]
    fn malformed_patterns_and_unknown_words_grant_nothing() {
        for bad in ["", "pay ments", "pay/ments", "é", &"a".repeat(MAX_PATTERN_LEN + 1)] {
            assert!(QueuePattern::parse(bad).is_none(), "{bad:?}");
        }
        let scopes = Scopes::parse(["produce:", "consume:a/b", "produe:x", "Admin", "reads:*", "read:"]);
        assert_eq!(scopes, Scopes::default());
        assert!(!scopes.allows(Access::Read, "x"));
    }

    #[test]
    fn each_scope_allows_its_access_only() {
        let scopes = Scopes::parse(["produce:payments", "consume:emails.*"]);
        assert!(scopes.allows(Access::Produce, "payments"));
        assert!(!scopes.allows(Access::Consume, "payments"));
        assert!(scopes.allows(Access::Read, "payments"));
        assert!(scopes.allows(Access::Consume, "emails.welcome"));
        assert!(!scopes.allows(Access::Produce, "emails.welcome"));
        assert!(scopes.allows(Access::Read, "emails.welcome"));
        assert!(!scopes.allows(Access::Read, "other"));
        assert!(!scopes.allows(Access::Admin, "payments"));
        assert!(!scopes.allows_everywhere(Access::Consume));

        let admin = Scopes::parse(["admin"]);
        for access in [Access::Produce, Access::Consume, Access::Read, Access::Admin] {
            assert!(admin.allows(access, "q"));
            assert!(admin.allows_everywhere(access));
        }
        assert!(Scopes::parse(["consume:*"]).allows_everywhere(Access::Consume));
        assert!(Scopes::parse(["consume:*"]).allows_everywhere(Access::Read));
        assert!(!Scopes::parse(["consume:*"]).allows_everywhere(Access::Produce));
    }
}
