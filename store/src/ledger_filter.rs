//! The membership filter in front of each sealed table of the SQLite ledger (see "The
//! ledger's key layout" in [`crate::sqlite`]): a split-block Bloom filter over a 64-bit key
//! hash that is fixed across Rust releases and platforms, because the filter is persisted
//! in the store file and read back by later builds.
//!
//! Shared with `bench/src/bin/ledger_layouts.rs`, which measured it (`bench/RESULTS.md`),
//! so the figures are for this code and not a copy of it.
//!
//! A filter may say "maybe" for a key it never saw (a false positive: ~0.1 % at
//! [`BITS_PER_ENTRY`]), which costs one indexed read; it must never say "no" for a key it
//! saw, or a resend would be counted twice. So a persisted filter carries a format
//! [`VERSION`] and a [`PartFilter::checksum`], and one that fails either is rebuilt from its
//! table, never trusted.

/// Format of a persisted [`PartFilter`] (the bytes of [`PartFilter::to_bytes`], the hash of
/// [`key_hash`], the checksum of [`PartFilter::checksum`]); a stored filter of another
/// version is rebuilt from its table.
pub const VERSION: i64 = 1;

/// Bits per entry of one table's filter (~0.1 % false positives per table).
pub const BITS_PER_ENTRY: usize = 16;

/// splitmix64's finalizer: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The filter's hash of a ledger key: FNV-1a over the org, a 0xff byte (never in UTF-8, so
/// ("ab", "c") and ("a", "bc") differ) and the event id, then splitmix64's finalizer. Fixed
/// across Rust releases and platforms, which a persisted filter needs (std's
/// `DefaultHasher` promises neither).
pub fn key_hash(org: &str, id: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in org.bytes().chain([0xff]).chain(id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h) as i64
}

/// One cache line of a [`PartFilter`]: a key sets one bit in each of its eight words.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(align(64))]
struct Block([u64; 8]);

/// A split-block Bloom filter over one table's keys: a key's eight bits all lie in one
/// 64-byte block, so a "no" costs one cache miss however many tables are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartFilter {
    blocks: Vec<Block>,
}

impl PartFilter {
    /// An empty filter sized for `entries` keys at [`BITS_PER_ENTRY`].
    pub fn with_capacity(entries: usize) -> PartFilter {
        let blocks = (entries.max(1) * BITS_PER_ENTRY).div_ceil(512);
        PartFilter {
            blocks: vec![Block::default(); blocks],
        }
    }

    /// The key's block and the bit it sets in each of that block's words.
    fn slot(&self, h: i64) -> (usize, u64) {
        let h = h as u64;
        // Lemire's multiply-shift: the block from the hash's high bits, no division.
        let block = ((u128::from(h) * self.blocks.len() as u128) >> 64) as usize;
        (block, mix(h ^ 0x5bd1_e995_5bd1_e995))
    }

    /// Records the key whose [`key_hash`] is `h`.
    pub fn add(&mut self, h: i64) {
        let (b, bits) = self.slot(h);
        for (i, w) in self.blocks[b].0.iter_mut().enumerate() {
            *w |= 1 << ((bits >> (i * 6)) & 63);
        }
    }

    /// `false` only when the key whose [`key_hash`] is `h` was never added.
    pub fn may_hold(&self, h: i64) -> bool {
        let (b, bits) = self.slot(h);
        self.blocks[b]
            .0
            .iter()
            .enumerate()
            .all(|(i, w)| w & (1 << ((bits >> (i * 6)) & 63)) != 0)
    }

    /// The bits as stored: each block's words, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.blocks
            .iter()
            .flat_map(|b| b.0)
            .flat_map(u64::to_le_bytes)
            .collect()
    }

    /// The filter `bytes` hold, or `None` when they are no whole number of blocks.
    pub fn from_bytes(bytes: &[u8]) -> Option<PartFilter> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(64) {
            return None;
        }
        let blocks = bytes
            .chunks_exact(64)
            .map(|c| {
                let mut b = Block::default();
                for (w, word) in b.0.iter_mut().zip(c.chunks_exact(8)) {
                    // chunks_exact(8) yields 8-byte slices only.
                    *w = u64::from_le_bytes(word.try_into().unwrap_or_default());
                }
                b
            })
            .collect();
        Some(PartFilter { blocks })
    }

    /// Checksum of the bits, stored beside them: a torn or altered row is rebuilt, never
    /// trusted (a filter that says "no" for a present key would let a duplicate through).
    pub fn checksum(&self) -> i64 {
        let mut c: u64 = 0x243f_6a88_85a3_08d3;
        for w in self.blocks.iter().flat_map(|b| b.0) {
            c = mix(c ^ w);
        }
        c as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_keys_are_always_maybe_and_most_others_are_no() {
        let mut f = PartFilter::with_capacity(10_000);
        let hashes: Vec<i64> = (0..10_000)
            .map(|i| key_hash("org_a", &format!("e{i}")))
            .collect();
        for &h in &hashes {
            f.add(h);
        }
        assert!(hashes.iter().all(|&h| f.may_hold(h)));
        // 16 bits per entry, 8 bits in one block: ~0.1 % false positives; allow 1 %.
        let false_hits = (0..10_000)
            .filter(|i| f.may_hold(key_hash("org_b", &format!("e{i}"))))
            .count();
        assert!(false_hits < 100, "{false_hits} false positives in 10,000");
    }

    #[test]
    fn the_hash_is_fixed_and_separates_org_from_id() {
        // Persisted filters depend on it: a change here needs a new VERSION.
        assert_eq!(key_hash("org_a", "e1"), key_hash("org_a", "e1"));
        assert_ne!(key_hash("ab", "c"), key_hash("a", "bc"));
        assert_eq!(key_hash("org_a", "e1"), 2_635_181_589_973_058_198);
    }

    #[test]
    fn bytes_round_trip_and_a_flipped_bit_changes_the_checksum() {
        let mut f = PartFilter::with_capacity(100);
        f.add(key_hash("org_a", "e1"));
        let bytes = f.to_bytes();
        let back = PartFilter::from_bytes(&bytes).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.checksum(), f.checksum());
        let mut torn = bytes.clone();
        torn[5] ^= 1;
        assert_ne!(
            PartFilter::from_bytes(&torn).unwrap().checksum(),
            f.checksum()
        );
        assert!(PartFilter::from_bytes(&bytes[..63]).is_none());
        assert!(PartFilter::from_bytes(&[]).is_none());
    }
}
