//! MQTT topic names and filters: validation, matching and permission coverage, shared by the hub, the bridge
//! and the function manager.
//!
//! Everything works on `/`-separated levels of `&str`, never on byte offsets, so a multi-byte UTF-8 level
//! (`é/x`) is just another level.

/// MQTT's limit on the encoded length of a topic.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or filter is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong,
    Nul,
    /// A PUBLISH topic name contains `+` or `#`.
    Wildcard,
    /// A filter uses `#` anywhere but as the whole last level, or `+` mixed with other characters in a level.
    MisplacedWildcard,
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "a topic cannot be empty",
            TopicError::TooLong => "a topic cannot be longer than 65535 bytes",
            TopicError::Nul => "a topic cannot contain the NUL character",
            TopicError::Wildcard => {
                "a topic name cannot contain the wildcards `+` or `#` (only filters can)"
            }
            TopicError::MisplacedWildcard => {
                "`#` must be the whole last level and `+` a whole level (e.g. `a/+/c`, `a/#`)"
            }
        })
    }
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Checks a topic name as used in PUBLISH: no wildcards, no NUL, not empty.
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    check_common(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::Wildcard);
    }
    Ok(())
}

/// Checks a topic filter as used in SUBSCRIBE and in permissions.
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != last) {
            return Err(TopicError::MisplacedWildcard);
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicError::MisplacedWildcard);
        }
    }
    Ok(())
}

/// Whether `filter` is a filter (contains `+` or `#`) rather than a plain name.
pub fn has_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

/// Does the topic name `topic` match `filter`? Wildcards in the first level do not match topics starting with `$`
/// (MQTT 4.7.2), so `#` does not grant `$SYS/...`.
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    let mut first = true;
    loop {
        match (f.next(), t.next()) {
            (Some("#"), tl) => {
                // `a/#` matches `a` too; a `$` topic is never matched by a leading wildcard.
                return !(first && tl.is_some_and(|l| l.starts_with('$')));
            }
            (Some("+"), Some(tl)) => {
                if first && tl.starts_with('$') {
                    return false;
                }
            }
            (Some(fl), Some(tl)) => {
                if fl != tl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
        first = false;
    }
}

/// Does every topic matched by `requested` also match `permit`? Used to allow a SUBSCRIBE: a permission `t/#`
/// covers the subscriptions `t/a`, `t/+` and `t/#`, but not `#` or `+/a`.
pub fn covers(permit: &str, requested: &str) -> bool {
    let mut p = permit.split('/');
    let mut r = requested.split('/');
    let mut first = true;
    loop {
        match (p.next(), r.next()) {
            (Some("#"), rl) => {
                return !(first && rl.is_some_and(|l| l.starts_with('$')));
            }
            (Some("+"), Some(rl)) => {
                if rl == "#" || (first && rl.starts_with('$')) {
                    return false;
                }
            }
            (Some(pl), Some(rl)) => {
                if pl != rl {
                    return false;
                }
            }
            (None, None) => return true,
            // The permission ended but the request goes deeper (or is `a/#` against `a`): not covered.
            (None, Some(_)) => return false,
            // The request ended first: it matches exactly this level, which `permit` covers only if the rest is `#`.
            (Some(pl), None) => return pl == "#" && p.next().is_none(),
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("a/b").is_ok());
        assert!(validate_name("é/x").is_ok());
        assert!(validate_name("/").is_ok());
        assert_eq!(validate_name(""), Err(TopicError::Empty));
        assert_eq!(validate_name("a/+"), Err(TopicError::Wildcard));
        assert_eq!(validate_name("a/#"), Err(TopicError::Wildcard));
        assert_eq!(validate_name("a\0b"), Err(TopicError::Nul));
    }

    #[test]
    fn filters_are_validated() {
        for ok in ["#", "+", "a/+/c", "a/#", "+/+", "$SYS/#", "é/+"] {
            assert!(validate_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["a/#/b", "a#", "a+/b", "a/b+", "##", ""] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_follows_the_spec() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/c"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "é/x"));
        assert!(matches("é/+", "é/x"));
        assert!(!matches("#", "$SYS/x"));
        assert!(!matches("+/x", "$SYS/x"));
        assert!(matches("$SYS/#", "$SYS/brokers/1/stats"));
        assert!(matches("+/+", "/x"));
        assert!(!matches("a", "a/b"));
    }

    #[test]
    fn coverage_of_subscriptions() {
        assert!(covers("#", "a/b"));
        assert!(covers("#", "#"));
        assert!(covers("t/#", "t/+"));
        assert!(covers("t/#", "t/#"));
        assert!(covers("t/#", "t"));
        assert!(!covers("t/#", "#"));
        assert!(!covers("t/+", "t/#"));
        assert!(covers("t/+", "t/+"));
        assert!(covers("t/+", "t/x"));
        assert!(!covers("t/x", "t/+"));
        assert!(!covers("#", "$SYS/#"));
        assert!(covers("$SYS/#", "$SYS/brokers/+/stats"));
        assert!(!covers("a", "a/b"));
        assert!(!covers("a/b", "a"));
    }
}

/// Property tests: the topic functions never panic on any input, and `covers` is sound against `matches`.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("é".to_string()),
            Just("$SYS".to_string()),
            Just(String::new()),
            Just("+".to_string()),
            Just("#".to_string()),
        ]
    }

    fn filter() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..5).prop_map(|v| v.join("/"))
    }

    fn name() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..5).prop_map(|v| {
            v.into_iter()
                .filter(|l| l != "+" && l != "#")
                .collect::<Vec<_>>()
                .join("/")
        })
    }

    proptest! {
        #[test]
        fn never_panics(a in any::<String>(), b in any::<String>()) {
            let _ = validate_name(&a);
            let _ = validate_filter(&a);
            let _ = matches(&a, &b);
            let _ = covers(&a, &b);
        }

        #[test]
        fn valid_names_have_no_wildcards(a in any::<String>()) {
            if validate_name(&a).is_ok() {
                prop_assert!(!has_wildcard(&a));
                prop_assert!(!a.contains('\0'));
            }
        }

        #[test]
        fn a_name_matches_itself(t in name()) {
            prop_assume!(validate_name(&t).is_ok());
            prop_assert!(matches(&t, &t));
        }

        /// Whatever a permitted subscription can receive, the permission itself matches.
        #[test]
        fn covers_is_sound(p in filter(), f in filter(), topics in proptest::collection::vec(name(), 1..20)) {
            prop_assume!(validate_filter(&p).is_ok() && validate_filter(&f).is_ok());
            if covers(&p, &f) {
                for t in topics.iter().filter(|t| validate_name(t).is_ok()) {
                    if matches(&f, t) {
                        prop_assert!(matches(&p, t), "permit {p} covers {f}, which matches {t}, but {p} does not");
                    }
                }
            }
        }
    }
}
