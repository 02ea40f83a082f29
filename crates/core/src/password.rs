//! Password hashes for everything that checks a password (the local broker's clients, the web
//! UI's accounts): argon2id in PHC strings, with fieldlink's parameters for new hashes and a
//! ceiling on what a stored hash may ask for.

use std::sync::LazyLock;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};

pub use argon2::password_hash::phc::PasswordHash as Hash;

/// Argon2id parameters for new hashes: 19 MiB of memory, 2 passes, 1 lane (OWASP's first
/// recommended argon2id setting). On a Pi 3/4 this takes about 0.1 to 0.3 s; callers bound how
/// many verifications run at once, so hashing never holds more than a few tens of MiB. One lane
/// because a verification runs on one blocking thread: more lanes would only add contention.
pub const HASH_PARAMS: (u32, u32, u32) = (19 * 1024, 2, 1);

/// The most memory (KiB) a stored hash may ask for: a hand-edited `m=4194304` would otherwise
/// make every login allocate 4 GiB.
const MAX_M_COST_KIB: u32 = 256 * 1024;
/// The most passes a stored hash may ask for, for the same reason.
const MAX_T_COST: u32 = 64;

/// Why a password could not be hashed (the system's randomness, or a bug of ours).
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

/// Hashes `password` into a PHC string with [`HASH_PARAMS`] and a fresh random salt.
pub fn hash_password(password: &[u8]) -> Result<String, HashError> {
    let salt = argon2::password_hash::try_generate_salt()
        .map_err(|e| HashError(format!("no randomness for a salt: {e}")))?;
    heap::keep_large_blocks_mapped();
    hasher()
        .hash_password_with_salt(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Reads a stored PHC string: argon2id only, within the cost ceiling. The error says what is
/// wrong in words and never contains the hash.
pub fn parse_hash(phc: &str) -> Result<PasswordHash, &'static str> {
    let hash = PasswordHash::new(phc).map_err(|_| "not a valid PHC string")?;
    if hash.algorithm.as_str() != "argon2id" {
        return Err("not an argon2id hash");
    }
    let params = Params::try_from(&hash).map_err(|_| "invalid argon2 parameters")?;
    if params.m_cost() > MAX_M_COST_KIB || params.t_cost() > MAX_T_COST || hash.hash.is_none() {
        return Err("asks for more than 256 MiB or 64 passes, or has no hash value");
    }
    Ok(hash)
}

/// Whether `password` matches `hash`. Blocking: tens to hundreds of milliseconds.
pub fn verify(hash: &PasswordHash, password: &[u8]) -> bool {
    // The parameters come from the hash (checked by `parse_hash`), not from `hasher()`.
    heap::keep_large_blocks_mapped();
    hasher().verify_password(password, hash).is_ok()
}

/// Costs what checking a real user's password costs, for a name that is no user: a login
/// must not tell by its time which names exist.
pub fn verify_unknown_user(password: &[u8]) {
    if let Some(dummy) = DUMMY_HASH.as_ref() {
        let _ = verify(dummy, password);
    }
}

/// A hash with [`HASH_PARAMS`] of a password nobody knows.
const DUMMY_PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$ZkCf8dIJ0xi0qXpMxbrAbQ$BJtKhpaTJMzxURtp+RPwwkq7wRTkLSRUQ2mYhQ+CdnY";

static DUMMY_HASH: LazyLock<Option<PasswordHash>> =
    LazyLock::new(|| PasswordHash::new(DUMMY_PHC).ok());

/// Each hash takes 19 MiB for its run. glibc's malloc serves a block that size from `mmap`
/// only until the first one is freed; then it raises its threshold and keeps such blocks in the
/// arena of the thread that freed them (and `malloc_trim` does not release an arena's top):
/// 20 web logins left ~250 MiB resident, measured with the web UI's bench. A fixed threshold of
/// 1 MiB keeps every block that large in `mmap`, returned to the kernel when freed.
#[allow(unsafe_code)]
mod heap {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    pub(super) fn keep_large_blocks_mapped() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: mallopt only changes the allocator's own tuning; it takes no pointer of
            // ours, and M_MMAP_THRESHOLD with a value within its range (up to 32 MiB) is valid
            // at any time.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
            }
        });
    }

    /// Other allocators (musl's) map large blocks and return them by themselves.
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    pub(super) fn keep_large_blocks_mapped() {}
}

fn hasher() -> Argon2<'static> {
    let (m, t, p) = HASH_PARAMS;
    // Valid argon2 parameters (the unit test below builds them), so the default is never used.
    let params = Params::new(m, t, p, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fieldlinks_parameters_are_valid_and_the_dummy_uses_them() {
        let (m, t, p) = HASH_PARAMS;
        Params::new(m, t, p, None).unwrap();
        let dummy = DUMMY_HASH.as_ref().unwrap();
        assert_eq!(dummy.algorithm.as_str(), "argon2id");
        let params = Params::try_from(dummy).unwrap();
        assert_eq!(
            (params.m_cost(), params.t_cost(), params.p_cost()),
            HASH_PARAMS
        );
    }

    #[test]
    fn a_hash_verifies_its_password_only() {
        let phc = hash_password(b"right").unwrap();
        let hash = parse_hash(&phc).unwrap();
        assert!(verify(&hash, b"right"));
        assert!(!verify(&hash, b"wrong"));
    }

    #[test]
    fn costly_or_foreign_hashes_are_refused() {
        let greedy = "$argon2id$v=19$m=4194304,t=2,p=1$ZkCf8dIJ0xi0qXpMxbrAbQ$BJtKhpaTJMzxURtp+RPwwkq7wRTkLSRUQ2mYhQ+CdnY";
        assert!(parse_hash(greedy).unwrap_err().contains("256 MiB"));
        let argon2i = "$argon2i$v=19$m=19456,t=2,p=1$ZkCf8dIJ0xi0qXpMxbrAbQ$BJtKhpaTJMzxURtp+RPwwkq7wRTkLSRUQ2mYhQ+CdnY";
        assert_eq!(parse_hash(argon2i).unwrap_err(), "not an argon2id hash");
        assert_eq!(parse_hash("secret").unwrap_err(), "not a valid PHC string");
    }
}
