//! Glob patterns for Vault request paths and identity values.
//!
//! Path globs ([`Glob::path`]): `*` matches any run of characters inside one path segment
//! (never `/`); `**` matches any run of characters including `/`; everything else
//! matches itself. So `secret/data/prod/*` matches `secret/data/prod/db` but not
//! `secret/data/prod/team/db`, `secret/data/prod/**` matches both, and `auth/*/login/*`
//! matches a login on any auth mount. There is no `?`, no character class and no escape:
//! Vault paths do not contain `*`.
//!
//! Value globs ([`Glob::value`], for display names and other identity values): `*`
//! matches any run of characters.
//!
//! Matching runs in O(pattern tokens × path length) with no backtracking, so a hostile
//! pattern cannot make the audit stream slow.

/// A compiled glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// No wildcard: equality.
    Exact(String),
    /// `literal**` (or `literal*` for value globs): prefix test.
    Prefix(String),
    /// General case.
    Tokens(Vec<Tok>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(String),
    /// Any run without `/`.
    Star,
    /// Any run.
    AnyRun,
}

impl Glob {
    /// Compiles a path glob (`*` within a segment, `**` across segments).
    pub fn path(pattern: &str) -> Glob {
        Glob::compile(pattern, true)
    }

    /// Compiles a value glob (`*` matches anything).
    pub fn value(pattern: &str) -> Glob {
        Glob::compile(pattern, false)
    }

    fn compile(pattern: &str, segments: bool) -> Glob {
        let mut toks: Vec<Tok> = Vec::new();
        let mut lit = String::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '*' {
                lit.push(c);
                continue;
            }
            let mut double = false;
            while chars.peek() == Some(&'*') {
                chars.next();
                double = true;
            }
            if !lit.is_empty() {
                toks.push(Tok::Lit(std::mem::take(&mut lit)));
            }
            let tok = if double || !segments {
                Tok::AnyRun
            } else {
                Tok::Star
            };
            // `**` absorbs a neighbouring `*`; two `AnyRun`s are one.
            match (toks.last(), &tok) {
                (Some(Tok::AnyRun), _) => {}
                (Some(Tok::Star), Tok::AnyRun) => {
                    toks.pop();
                    toks.push(Tok::AnyRun);
                }
                _ => toks.push(tok),
            }
        }
        if !lit.is_empty() {
            toks.push(Tok::Lit(lit));
        }
        let kind = match toks.as_slice() {
            [] => Kind::Exact(String::new()),
            [Tok::Lit(l)] => Kind::Exact(l.clone()),
            [Tok::AnyRun] => Kind::Prefix(String::new()),
            [Tok::Lit(l), Tok::AnyRun] => Kind::Prefix(l.clone()),
            _ => Kind::Tokens(toks),
        };
        Glob {
            source: pattern.to_string(),
            kind,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `s` matches the whole pattern.
    pub fn matches(&self, s: &str) -> bool {
        match &self.kind {
            Kind::Exact(l) => s == l,
            Kind::Prefix(p) => s.starts_with(p.as_str()),
            Kind::Tokens(toks) => matches_tokens(toks, s.as_bytes()),
        }
    }
}

/// Dynamic programming over token index × position: `reach[j]` is true when the tokens
/// so far can consume exactly `s[..j]`.
fn matches_tokens(toks: &[Tok], s: &[u8]) -> bool {
    // Cheap rejection on a literal first token (the common `secret/data/prod/*` case).
    if let Some(Tok::Lit(l)) = toks.first() {
        if !s.starts_with(l.as_bytes()) {
            return false;
        }
    }
    let n = s.len();
    let mut reach = vec![false; n + 1];
    let mut next = vec![false; n + 1];
    reach[0] = true;
    for tok in toks {
        next.iter_mut().for_each(|b| *b = false);
        match tok {
            Tok::Lit(l) => {
                let l = l.as_bytes();
                for j in 0..=n {
                    if reach[j] && s[j..].starts_with(l) {
                        next[j + l.len()] = true;
                    }
                }
            }
            Tok::Star => {
                let mut run = false;
                for j in 0..=n {
                    run |= reach[j];
                    next[j] = run;
                    if j < n && s[j] == b'/' {
                        run = false;
                    }
                }
            }
            Tok::AnyRun => {
                let mut run = false;
                for j in 0..=n {
                    run |= reach[j];
                    next[j] = run;
                }
            }
        }
        std::mem::swap(&mut reach, &mut next);
        if !reach.iter().any(|&b| b) {
            return false;
        }
    }
    reach[n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_stays_within_a_segment() {
        let g = Glob::path("secret/data/prod/*");
        assert!(g.matches("secret/data/prod/db"));
        assert!(g.matches("secret/data/prod/"));
        assert!(!g.matches("secret/data/prod/team/db"));
        assert!(!g.matches("secret/data/prod"));
        assert!(!g.matches("secret/data/production/db"));
    }

    #[test]
    fn double_star_crosses_segments() {
        let g = Glob::path("secret/data/prod/**");
        assert!(g.matches("secret/data/prod/db"));
        assert!(g.matches("secret/data/prod/team/db"));
        assert!(!g.matches("secret/data/prod"));
        assert!(!g.matches("secret/metadata/prod/db"));
        let g = Glob::path("**/prod/**");
        assert!(g.matches("certus/data/prod/openai"));
        assert!(!g.matches("certus/data/staging/openai"));
    }

    #[test]
    fn inner_wildcards() {
        let g = Glob::path("auth/*/login/*");
        assert!(g.matches("auth/userpass/login/alice"));
        assert!(g.matches("auth/up-123/login/bob"));
        assert!(!g.matches("auth/a/b/login/bob"));
        assert!(!g.matches("auth/userpass/users/alice"));
        let g = Glob::path("*/data/prod-*/*");
        assert!(g.matches("kv/data/prod-eu/db"));
        assert!(!g.matches("kv/data/staging/db"));
        assert!(Glob::path("a/**/z").matches("a/b/c/z"));
        assert!(Glob::path("a/**/z").matches("a//z"));
        assert!(!Glob::path("a/**/z").matches("a/z"));
    }

    #[test]
    fn exact_and_degenerate_patterns() {
        assert!(Glob::path("sys/health").matches("sys/health"));
        assert!(!Glob::path("sys/health").matches("sys/healthz"));
        assert!(Glob::path("**").matches("anything/at/all"));
        assert!(Glob::path("*").matches("one"));
        assert!(!Glob::path("*").matches("one/two"));
        assert!(Glob::path("***").matches("a/b"), "*** is **");
        assert!(Glob::path("a/***/b").matches("a/x/y/b"));
    }

    #[test]
    fn value_globs_cross_slashes() {
        let g = Glob::value("kubernetes-*");
        assert!(g.matches("kubernetes-certus-tap/certus-ask"));
        assert!(!g.matches("userpass-alice"));
        assert!(Glob::value("*-alice").matches("upexp-alice"));
        assert!(Glob::value("a*b*c").matches("a/x/b/y/c"));
        assert!(!Glob::value("a*b*c").matches("a/x/b/y/d"));
    }

    #[test]
    fn pathological_pattern_is_linear() {
        let pat = "*a".repeat(200);
        let s = "a".repeat(5000) + "b";
        let g = Glob::value(&pat);
        let t = std::time::Instant::now();
        assert!(!g.matches(&s));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }
}
