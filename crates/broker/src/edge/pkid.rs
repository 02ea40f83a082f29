//! Maps and sets keyed by MQTT packet ids, hashed with one multiplication instead of the
//! standard library's SipHash: a session looks a packet id up several times for every
//! publish (its in-flight set, the lag tracker's window), and SipHash took about 120
//! instructions each time, some 5 % of a forwarded publish (callgrind).
//!
//! SipHash guards a map against keys chosen to collide. Here a client chooses its packet ids,
//! but a map holds at most one entry per id in flight (65 536 at the very most, the
//! connection's window in practice), so colliding ids cost it probes within a table of that
//! size and nothing more.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by packet id.
pub(crate) type PkidMap<V> = HashMap<u16, V, BuildHasherDefault<PkidHasher>>;
/// A set of packet ids.
pub(crate) type PkidSet = HashSet<u16, BuildHasherDefault<PkidHasher>>;

/// Fibonacci hashing of a `u16`, its high half folded into the low bits (hashbrown takes its
/// bucket from the low bits and its tag from the high ones).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PkidHasher(u64);

const FIBONACCI: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for PkidHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }

    fn write_u16(&mut self, id: u16) {
        self.0 = (self.0 ^ u64::from(id)).wrapping_mul(FIBONACCI);
    }

    // Only packet ids are hashed here; any other key still hashes, a byte at a time.
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(FIBONACCI);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use super::*;

    /// Bucket (of a 128-bucket table, as hashbrown takes it from the low bits) -> ids in it.
    fn fullest_bucket(ids: impl Iterator<Item = u16>) -> usize {
        let build = BuildHasherDefault::<PkidHasher>::default();
        let mut buckets = [0usize; 128];
        for id in ids {
            buckets[(build.hash_one(id) & 127) as usize] += 1;
        }
        buckets.into_iter().max().unwrap_or(0)
    }

    #[test]
    fn packet_ids_spread_over_a_table() {
        let build = BuildHasherDefault::<PkidHasher>::default();
        let hashes: HashSet<u64> = (0..=u16::MAX).map(|id| build.hash_one(id)).collect();
        assert_eq!(hashes.len(), 65_536, "no two ids share a hash");
        // A window of consecutive ids, as a client numbers them.
        assert!(fullest_bucket(1..=100) <= 3);
        // Ids that share their low bits, which an unmixed hash would put in one bucket.
        assert!(fullest_bucket((0..=u16::MAX).step_by(128)) <= 8);
        let mut map = PkidMap::default();
        map.insert(7, "seven");
        map.insert(7 + 1024, "another");
        assert_eq!(map.remove(&7), Some("seven"));
        assert_eq!(map.get(&(7 + 1024)), Some(&"another"));
    }
}
