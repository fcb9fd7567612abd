//! Typed names from the OCI Distribution grammar: repository names, tags, digests
//! and upload session ids.
//!
//! Raw strings from a request are parsed here once, at the edge. Everything past
//! this module (storage in particular) accepts only these types, so a name that
//! did not pass the grammar can never become a path component. This module does
//! not know about HTTP or the filesystem.

use std::fmt;
use std::str::FromStr;

/// Longest repository name the spec lets a registry require support for.
pub const MAX_NAME_LEN: usize = 255;
/// Longest tag the spec allows (one leading character plus 127).
pub const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid repository name {0:?}: lowercase letters, digits and separators (., _, __, -) between path components, at most 255 characters")]
    Name(String),
    #[error("invalid tag {0:?}: up to 128 of [A-Za-z0-9_.-], not starting with . or -")]
    Tag(String),
    #[error("invalid digest {0:?}: expected sha256:<64 hex> or sha512:<128 hex>")]
    Digest(String),
    #[error("invalid upload id {0:?}")]
    UploadId(String),
}

/// A repository name such as `library/postgres`, checked against the spec's
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepositoryName(String);

impl RepositoryName {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let err = || ParseError::Name(truncate(raw));
        if raw.is_empty() || raw.len() > MAX_NAME_LEN {
            return Err(err());
        }
        if raw.split('/').all(valid_path_component) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(err())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path components of the name, each one already checked by the grammar.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

/// One path component: alphanumeric runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut expect_alnum = true;
    while i < bytes.len() {
        if expect_alnum {
            if !alnum(bytes[i]) {
                return false;
            }
            while i < bytes.len() && alnum(bytes[i]) {
                i += 1;
            }
            expect_alnum = false;
        } else {
            let start = i;
            match bytes[i] {
                b'.' => i += 1,
                b'_' => {
                    i += 1;
                    if i < bytes.len() && bytes[i] == b'_' {
                        i += 1;
                    }
                }
                b'-' => {
                    while i < bytes.len() && bytes[i] == b'-' {
                        i += 1;
                    }
                }
                _ => return false,
            }
            debug_assert!(i > start);
            expect_alnum = true;
        }
    }
    // Must end on an alphanumeric run, and must not be empty.
    !bytes.is_empty() && !expect_alnum
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for RepositoryName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tag(String);

impl Tag {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let bytes = raw.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        let rest_ok = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if first_ok && rest_ok && bytes.len() <= MAX_TAG_LEN {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::Tag(truncate(raw)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The digest algorithms this registry computes and verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];
}

/// A content digest `algorithm:hex`, with the hex part lowercase and of the
/// algorithm's exact length.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let err = || ParseError::Digest(truncate(raw));
        let (algorithm, hex) = raw.split_once(':').ok_or_else(err)?;
        let algorithm = Algorithm::parse(algorithm).ok_or_else(err)?;
        Self::from_parts(algorithm, hex).ok_or_else(err)
    }

    /// Builds a digest from an algorithm and its hex encoding, if the hex is valid.
    pub fn from_parts(algorithm: Algorithm, hex: &str) -> Option<Self> {
        let valid = hex.len() == algorithm.hex_len()
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        valid.then(|| Self {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes` under `algorithm`.
    pub fn of(algorithm: Algorithm, bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        let hex = match algorithm {
            Algorithm::Sha256 => hex::encode(sha2::Sha256::digest(bytes)),
            Algorithm::Sha512 => hex::encode(sha2::Sha512::digest(bytes)),
        };
        Self { algorithm, hex }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl FromStr for Digest {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// What a manifest URL names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.contains(':') {
            Digest::parse(raw).map(Reference::Digest)
        } else {
            Tag::parse(raw).map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// An upload session id. Only ids the server generated (UUIDs) parse, so a
/// client cannot choose a path component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UploadId(uuid::Uuid);

impl UploadId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        // Only the canonical hyphenated lowercase form: one id, one spelling, one path.
        match uuid::Uuid::try_parse(raw) {
            Ok(id) if id.hyphenated().to_string() == raw => Ok(Self(id)),
            _ => Err(ParseError::UploadId(truncate(raw))),
        }
    }
}

impl Default for UploadId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Keeps hostile input out of error messages and logs beyond a readable length.
fn truncate(raw: &str) -> String {
    const LIMIT: usize = 300;
    if raw.len() <= LIMIT {
        raw.to_owned()
    } else {
        let mut end = LIMIT;
        while !raw.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &raw[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_grammar() {
        for ok in [
            "a",
            "library/postgres",
            "a.b_c__d---e/f0",
            "x/y/z",
            &"a".repeat(255),
        ] {
            assert!(RepositoryName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a/",
            "/a",
            "a//b",
            "a/../b",
            "..",
            "a___b",
            "a.",
            "-a",
            "a\\b",
            "a\0b",
            "%2e%2e",
            "a..b",
            &"a".repeat(256),
        ] {
            assert!(RepositoryName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags_follow_the_grammar() {
        assert!(Tag::parse("v1.2.0-rc_1").is_ok());
        assert!(Tag::parse("_x").is_ok());
        assert!(Tag::parse(&"a".repeat(128)).is_ok());
        for bad in ["", ".a", "-a", "a/b", "a:b", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests_need_a_known_algorithm_and_exact_hex() {
        let d = Digest::of(Algorithm::Sha256, b"hello");
        assert_eq!(Digest::parse(&d.to_string()), Ok(d.clone()));
        assert_eq!(
            d.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let d512 = Digest::of(Algorithm::Sha512, b"hello");
        assert!(Digest::parse(&d512.to_string()).is_ok());
        for bad in [
            "sha256:abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b982g",
            "sha256",
            ":",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn upload_ids_are_only_canonical_uuids() {
        let id = UploadId::new();
        assert_eq!(UploadId::parse(&id.to_string()), Ok(id));
        assert!(UploadId::parse("../../etc").is_err());
        assert!(UploadId::parse(&id.to_string().to_uppercase()).is_err());
    }
}
