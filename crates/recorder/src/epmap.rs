//! A hash map from media endpoints (address, port) to small `Copy` values, laid out so that the
//! per-packet lookup costs one cache miss and can be prefetched.
//!
//! Why it exists: steering and the engine each look up one endpoint per RTP packet, and with
//! tens of thousands of calls every lookup misses the cache. A general map (hashbrown) reads a
//! control byte group first and the bucket after it, and offers no way to ask for the bucket
//! before it is needed. Here the key and value sit inline in one array probed linearly from the
//! slot the hash names, so [`EndpointMap::prefetch`] can request that slot a few packets ahead
//! (see `Engine::handle_batch`), and the lookup then finds it in cache.
//!
//! Linear probing at most half full, deletion by backward shift (no tombstones, so a long run of
//! calls coming and going never slows lookups). The hash multiplies by a random odd constant per
//! map, so the slots an attacker's addresses land on are not predictable from outside.

use std::net::IpAddr;

use crate::prefetch::prefetch;

/// An endpoint in fixed width: IPv4 in the first word, family 0 marks an empty slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Key {
    addr: [u32; 4],
    port: u16,
    family: u8,
}

impl Key {
    #[inline]
    fn new(ep: &(IpAddr, u16)) -> Key {
        match ep.0 {
            IpAddr::V4(a) => Key { addr: [u32::from_ne_bytes(a.octets()), 0, 0, 0], port: ep.1, family: 4 },
            IpAddr::V6(a) => {
                let o = a.octets();
                let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                Key { addr: [w(0), w(4), w(8), w(12)], port: ep.1, family: 6 }
            }
        }
    }

    /// 64 bits that differ for any two IPv4 endpoints; IPv6 folds its upper half in.
    #[inline]
    fn fold(&self) -> u64 {
        let lo = self.addr[0] as u64 | (self.addr[1] as u64) << 32;
        let hi = self.addr[2] as u64 | (self.addr[3] as u64) << 32;
        lo ^ ((self.port as u64) << 32 | (self.family as u64) << 48)
            ^ hi.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot<V> {
    key: Key,
    val: V,
}

/// Endpoint → `V`. See the module documentation.
#[derive(Debug, Clone)]
pub struct EndpointMap<V> {
    slots: Box<[Slot<V>]>,
    /// 64 − log2(slots).
    shift: u32,
    len: usize,
    mul: u64,
}

const MIN_SLOTS: usize = 16;

impl<V: Copy + Default> Default for EndpointMap<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy + Default> EndpointMap<V> {
    pub fn new() -> Self {
        // An odd multiplier from the process's random hash keys.
        use std::hash::{BuildHasher, RandomState};
        let mul = RandomState::new().hash_one(0x5eed_u64) | 1;
        EndpointMap {
            slots: vec![Slot::default(); MIN_SLOTS].into(),
            shift: 64 - MIN_SLOTS.trailing_zeros(),
            len: 0,
            mul,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn home(&self, k: &Key) -> usize {
        (k.fold().wrapping_mul(self.mul) >> self.shift) as usize
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    #[inline]
    fn find(&self, k: &Key) -> Result<usize, usize> {
        let mut i = self.home(k);
        loop {
            let s = &self.slots[i];
            if s.key == *k {
                return Ok(i);
            }
            if s.key.family == 0 {
                return Err(i);
            }
            i = (i + 1) & self.mask();
        }
    }

    /// Asks the CPU to load the slot where `ep`'s search starts (both of its ends: a slot of
    /// 40 bytes straddles two cache lines half the time); a hint, nothing else.
    #[inline]
    pub fn prefetch(&self, ep: &(IpAddr, u16)) {
        let slot = &self.slots[self.home(&Key::new(ep))];
        let at = slot as *const Slot<V> as *const u8;
        prefetch(at);
        prefetch(at.wrapping_add(std::mem::size_of::<Slot<V>>() - 1));
    }

    #[inline]
    pub fn get(&self, ep: &(IpAddr, u16)) -> Option<&V> {
        self.find(&Key::new(ep)).ok().map(|i| &self.slots[i].val)
    }

    #[inline]
    pub fn get_mut(&mut self, ep: &(IpAddr, u16)) -> Option<&mut V> {
        self.find(&Key::new(ep)).ok().map(|i| &mut self.slots[i].val)
    }

    pub fn contains_key(&self, ep: &(IpAddr, u16)) -> bool {
        self.find(&Key::new(ep)).is_ok()
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, ep: (IpAddr, u16), val: V) -> Option<V> {
        let k = Key::new(&ep);
        match self.find(&k) {
            Ok(i) => Some(std::mem::replace(&mut self.slots[i].val, val)),
            Err(i) => {
                if (self.len + 1) * 2 > self.slots.len() {
                    self.grow();
                    let i = self.find(&k).expect_err("not present");
                    self.slots[i] = Slot { key: k, val };
                } else {
                    self.slots[i] = Slot { key: k, val };
                }
                self.len += 1;
                None
            }
        }
    }

    pub fn remove(&mut self, ep: &(IpAddr, u16)) -> Option<V> {
        let mut hole = self.find(&Key::new(ep)).ok()?;
        let val = self.slots[hole].val;
        self.len -= 1;
        // Backward shift: move later members of the probe run into the hole when their home is
        // not between the hole and their position.
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s.key.family == 0 {
                break;
            }
            let home = self.home(&s.key);
            // `s` may fill the hole if its home is cyclically outside (hole, j].
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = Slot::default();
        Some(val)
    }

    fn grow(&mut self) {
        let bigger = vec![Slot::default(); self.slots.len() * 2].into();
        let old = std::mem::replace(&mut self.slots, bigger);
        self.shift -= 1;
        for s in old.iter().filter(|s| s.key.family != 0) {
            let i = self.find(&s.key).expect_err("keys are unique");
            self.slots[i] = *s;
        }
    }

    /// Memory held by the table, in bytes.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ep(i: u32) -> (IpAddr, u16) {
        if i.is_multiple_of(3) {
            (IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, (i >> 16) as u16, i as u16)), 4000 + (i % 7) as u16)
        } else {
            (IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i / 5)), 10_000 + (i % 5) as u16 * 2)
        }
    }

    /// Random inserts, replacements and removals against std's HashMap, with the map small
    /// enough that probe runs wrap around the end of the slot array and removals shift across it.
    #[test]
    fn behaves_like_a_hash_map() {
        let mut m: EndpointMap<u64> = EndpointMap::new();
        let mut r: HashMap<(IpAddr, u16), u64> = HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Keys from a small universe so that removals hit; more inserts early, more
            // removals late, so the table grows and then drains.
            let k = ep((x % 600) as u32);
            let insert = (x >> 20) % 100 < if step < 100_000 { 70 } else { 30 };
            if insert {
                assert_eq!(m.insert(k, step), r.insert(k, step), "insert {k:?}");
            } else {
                assert_eq!(m.remove(&k), r.remove(&k), "remove {k:?}");
            }
            assert_eq!(m.len(), r.len());
            let probe = ep(((x >> 32) % 600) as u32);
            assert_eq!(m.get(&probe), r.get(&probe), "get {probe:?}");
        }
        for (k, v) in &r {
            assert_eq!(m.get(k), Some(v));
        }
        let keys: Vec<_> = r.keys().copied().collect();
        for k in keys {
            assert_eq!(m.remove(&k), r.remove(&k));
        }
        assert!(m.is_empty());
        assert!(m.slots.iter().all(|s| s.key.family == 0), "every slot empty again");
    }

    #[test]
    fn v4_and_v6_forms_of_one_address_are_different_keys() {
        let mut m: EndpointMap<u8> = EndpointMap::new();
        let v4 = (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 5004);
        let mapped = (IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()), 5004);
        m.insert(v4, 4);
        m.insert(mapped, 6);
        assert_eq!((m.get(&v4), m.get(&mapped)), (Some(&4), Some(&6)));
        *m.get_mut(&v4).unwrap() = 5;
        assert_eq!(m.remove(&v4), Some(5));
        assert!(!m.contains_key(&v4) && m.contains_key(&mapped));
    }
}
