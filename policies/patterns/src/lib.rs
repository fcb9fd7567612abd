//! Glob pattern lists with `!` exclusions: `["v*", "!*-rc*"]` matches `v1.2.0`
//! but not `v1.3.0-rc1`. `*` stays within one path component, `**` spans
//! several, `?`, `[a-z]` and `{a,b}` work as in shells (the `glob-match` crate).
//!
//! Shared by the registry (policy scoping) and the bundled policies, so a
//! pattern means the same thing in the config and in a policy's settings.

/// An ordered list of patterns; a value matches when some plain pattern matches
/// it and no `!` pattern does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternList {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl PatternList {
    /// Builds a list, refusing empty patterns (which usually mean a typo).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, String> {
        let mut list = PatternList::default();
        for p in patterns {
            let p = p.as_ref();
            let (target, pattern) = match p.strip_prefix('!') {
                Some(rest) => (&mut list.exclude, rest),
                None => (&mut list.include, p),
            };
            if pattern.is_empty() {
                return Err(format!("empty pattern {p:?}"));
            }
            target.push(pattern.to_owned());
        }
        Ok(list)
    }

    pub fn matches(&self, value: &str) -> bool {
        self.include
            .iter()
            .any(|p| glob_match::glob_match(p, value))
            && !self
                .exclude
                .iter()
                .any(|p| glob_match::glob_match(p, value))
    }

    pub fn is_empty(&self) -> bool {
        self.include.is_empty()
    }

    /// The patterns as written, for messages.
    pub fn describe(&self) -> String {
        let all: Vec<String> = self
            .include
            .iter()
            .cloned()
            .chain(self.exclude.iter().map(|e| format!("!{e}")))
            .collect();
        format!("[{}]", all.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_win_over_inclusions() {
        let tags = PatternList::new(&["v*", "!*-rc*"]).unwrap();
        assert!(tags.matches("v1.2.0"));
        assert!(!tags.matches("v1.3.0-rc1"));
        assert!(!tags.matches("latest"));
    }

    #[test]
    fn double_star_spans_components_and_single_star_does_not() {
        let repos = PatternList::new(&["team-a/**"]).unwrap();
        assert!(repos.matches("team-a/api"));
        assert!(repos.matches("team-a/x/y"));
        assert!(!repos.matches("team-b/api"));
        let one = PatternList::new(&["team-a/*"]).unwrap();
        assert!(one.matches("team-a/api"));
        assert!(!one.matches("team-a/x/y"));
        assert!(PatternList::new(&["**"]).unwrap().matches("a/b/c"));
    }

    #[test]
    fn empty_patterns_are_refused() {
        assert!(PatternList::new(&[""]).is_err());
        assert!(PatternList::new(&["!"]).is_err());
        assert!(PatternList::new::<&str>(&[]).unwrap().is_empty());
    }
}
