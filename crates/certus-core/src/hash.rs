//! Short content hashes used in status fields (never of secret values alone).

use sha2::{Digest, Sha256};

/// First 16 hex digits of SHA-256 of `data`.
pub fn short_hash(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_hash_is_stable_and_16_hex() {
        let h = super::short_hash(b"abc");
        assert_eq!(h, "ba7816bf8f01cfea");
        assert_eq!(h.len(), 16);
    }
}
