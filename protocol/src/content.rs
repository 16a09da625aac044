//! Content ids: every blob (input image, output, plugin) is named by the
//! BLAKE3 hash of its bytes, so any copy can be verified wherever it came from.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The BLAKE3 hash of a blob, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContentId([u8; 32]);

impl ContentId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> ContentId {
        ContentId(*blake3::hash(bytes).as_bytes())
    }

    /// True when `bytes` hash to this id.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        // blake3::Hash compares in constant time.
        blake3::Hash::from(self.0) == blake3::hash(bytes)
    }

    /// The raw hash.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(blake3::Hash::from(self.0).to_hex().as_str())
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({self})")
    }
}

impl FromStr for ContentId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if !crate::spec::is_plugin_hash(s) {
            return Err(format!(
                "a content id is 64 lowercase hex digits, got {s:?}"
            ));
        }
        blake3::Hash::from_hex(s)
            .map(|h| ContentId(*h.as_bytes()))
            .map_err(|e| format!("bad content id {s:?}: {e}"))
    }
}

impl TryFrom<String> for ContentId {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<ContentId> for String {
    fn from(id: ContentId) -> String {
        id.to_string()
    }
}

impl From<[u8; 32]> for ContentId {
    /// A content id from raw hash bytes (as read off the wire).
    fn from(raw: [u8; 32]) -> ContentId {
        ContentId(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_hash_parse_print_and_verify() {
        let id = ContentId::of(b"abc");
        // BLAKE3 of "abc", from the reference implementation's test vectors.
        assert_eq!(
            id.to_string(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(id.to_string().parse::<ContentId>(), Ok(id));
        assert!(id.matches(b"abc"));
        assert!(!id.matches(b"abd"));
        assert!("ABC".parse::<ContentId>().is_err());
        let json = serde_json::to_string(&id).expect("serialise");
        assert_eq!(serde_json::from_str::<ContentId>(&json).expect("parse"), id);
    }
}
