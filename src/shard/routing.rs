//! Key → slot → shard. Slots are Redis Cluster's (CRC16/XMODEM of the key, or of its `{hash
//! tag}`, mod 16384), so keys that share a hash tag always live on the same shard. Slots map to
//! shards in equal contiguous ranges, fixed for the life of the process.

/// Number of hash slots.
pub const SLOT_COUNT: usize = 16384;

const fn crc16_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static CRC16_TABLE: [u16; 256] = crc16_table();

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster uses.
pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from(((crc >> 8) as u8) ^ b)]
    })
}

/// The hash slot of `key`, honouring `{hash tags}`: when the key has a `{` followed later by a
/// `}` with at least one byte between them, only those bytes are hashed.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    // In range: masked to 14 bits.
    crc16(hashed) & (SLOT_COUNT as u16 - 1)
}

/// The fixed slot → shard assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotMap {
    shards: usize,
}

impl SlotMap {
    pub fn new(shards: usize) -> Self {
        assert!(shards > 0, "a server has at least one shard");
        SlotMap { shards }
    }

    pub fn shard_count(&self) -> usize {
        self.shards
    }

    pub fn shard_of_slot(&self, slot: u16) -> usize {
        usize::from(slot) * self.shards / SLOT_COUNT
    }

    pub fn shard_of_key(&self, key: &[u8]) -> usize {
        if self.shards == 1 {
            return 0;
        }
        self.shard_of_slot(key_slot(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Reference values from CLUSTER KEYSLOT.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_ne!(key_slot(b"foo{}{bar}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
    }

    #[test]
    fn every_shard_gets_an_even_slot_range() {
        for shards in 1..=16 {
            let map = SlotMap::new(shards);
            let mut counts = vec![0usize; shards];
            for slot in 0..SLOT_COUNT as u16 {
                counts[map.shard_of_slot(slot)] += 1;
            }
            let (min, max) = (counts.iter().min(), counts.iter().max());
            assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{counts:?}");
        }
    }
}
