//! Join tokens: a fresh random one per worker, or one derived per index
//! from a group's allocation secret.
//!
//! A group launch (one `srun -n 8 ...`, one Kubernetes Indexed Job) runs one
//! command line, with one environment, for every worker: there is no way to
//! hand each copy a token of its own. So the allocator issues one random
//! allocation secret and each worker computes its token from that secret and
//! its index, `hex(HMAC-SHA256(key = secret, msg = "quicmesh-join-token-v1"
//! || index as 4 bytes big-endian))`. The allocator computes the same value
//! when it reserves the index and checks it as any token (constant time,
//! once per index). A keyed hash, not a plain one, because whoever sees a
//! worker's token (it travels in the Hello, inside TLS, and sits in that
//! worker's memory) must not be able to compute another index's token:
//! without the secret, HMAC outputs are unpredictable, and the secret cannot
//! be recovered from any number of them.

use rand::RngCore;
use ring::hmac;

/// The label bound into every derived token, so that the secret, if it were
/// ever used for another purpose, would give other values.
const LABEL: &[u8] = b"quicmesh-join-token-v1";

/// 32 random bytes as 64 lowercase hex digits: a token or a group secret.
pub(crate) fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

/// The token of worker `index` in the group whose allocation secret is
/// `secret` (64 lowercase hex digits).
pub(crate) fn derive_token(secret: &str, index: u32) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(LABEL);
    ctx.update(&index.to_be_bytes());
    hex(ctx.sign().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed independently of this code:
    /// `printf 'quicmesh-join-token-v1\x00\x00\x00\x05' | openssl dgst -sha256 -hmac example-secret`
    /// (and Python's `hmac.new(b"example-secret", b"quicmesh-join-token-v1" +
    /// (5).to_bytes(4, "big"), hashlib.sha256).hexdigest()`, which agrees).
    #[test]
    fn derived_token_matches_an_independent_hmac() {
        assert_eq!(
            derive_token("example-secret", 5),
            "122526809c0bcf5ce425e4b47205b0eb357f37afc3a3d891ad8eb9986a564d1e"
        );
    }

    #[test]
    fn tokens_differ_by_index_and_by_secret() {
        let secret = random_secret();
        assert_eq!(secret.len(), 64);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
        let t0 = derive_token(&secret, 0);
        assert_eq!(t0, derive_token(&secret, 0), "deterministic");
        assert_ne!(t0, derive_token(&secret, 1));
        assert_ne!(t0, derive_token(&random_secret(), 0));
        assert_ne!(random_secret(), secret);
    }
}
