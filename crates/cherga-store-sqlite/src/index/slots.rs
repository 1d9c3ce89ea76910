//! The index's table of unfinished tasks by sequence number, kept in chunks of
//! consecutive numbers, each its own hash table.
//!
//! One table for every task doubled in one go each time it filled: every entry
//! copied into new memory at once, on the writer thread, with every request
//! waiting (about 10 ms at 262,144 tasks, and more at each doubling after). A
//! chunk that follows another is made at its full size, room for all of its
//! [`SPAN`] numbers, and numbers are given in order, so such a chunk never
//! grows: the newest one fills while the old ones empty. Untouched room costs
//! address space only; the kernel gives memory to the pages the entries land
//! in, and those are contiguous because [`SeqHash`] keeps consecutive numbers
//! in consecutive buckets. The first chunk of a run of numbers (a store may
//! give numbers in several ranges, one per queue) starts small and grows like
//! any table, up to the size of one chunk, so that a range with a handful of
//! tasks costs a handful of entries, not a table of 65,536 buckets. A chunk
//! whose tasks are all gone is dropped, and one left nearly empty is shrunk,
//! so that long-lived tasks scattered among many finished ones do not keep
//! whole tables alive.

use super::SeqHash;
use std::collections::HashMap;

/// Sequence numbers per chunk. hashbrown fills at most 7/8 of its buckets, so a
/// chunk holding all of its numbers fills a table of 65,536 buckets exactly.
const SPAN: u64 = 57_344;

/// A chunk is shrunk once fewer than 1/SHRINK_BELOW of its room is used.
const SHRINK_BELOW: usize = 8;

#[derive(Debug)]
struct Chunk<V> {
    map: HashMap<u64, V, SeqHash>,
    /// The entries its table has room for. Not `map.capacity()`: that counts
    /// only the room still free of removed entries' marks, which a table of
    /// consecutive numbers keeps until it is rebuilt.
    room: usize,
}

impl<V> Chunk<V> {
    fn shrink(&mut self) {
        self.map.shrink_to_fit();
        self.room = self.map.capacity();
    }
}

/// A chunk with no chunk after it may be the one its range's new tasks go to, so
/// it is never shrunk (it would only grow again).
#[derive(Debug)]
pub(super) struct Slots<V> {
    chunks: HashMap<u64, Chunk<V>, SeqHash>,
    len: usize,
}

impl<V> Default for Slots<V> {
    fn default() -> Self {
        Self { chunks: HashMap::default(), len: 0 }
    }
}

impl<V> Slots<V> {
    pub fn get(&self, seq: u64) -> Option<&V> {
        self.chunks.get(&(seq / SPAN))?.map.get(&seq)
    }

    pub fn contains_key(&self, seq: u64) -> bool {
        self.get(seq).is_some()
    }

    /// Inserts or replaces; the value replaced, if any.
    pub fn insert(&mut self, seq: u64, value: V) -> Option<V> {
        let id = seq / SPAN;
        // One lookup when the chunk exists, as it does for all but its first task.
        let chunk = match self.chunks.get_mut(&id) {
            Some(chunk) => chunk,
            None => {
                let follows = id.checked_sub(1).is_some_and(|before| self.chunks.contains_key(&before));
                let map = HashMap::with_capacity_and_hasher(if follows { SPAN as usize } else { 0 }, SeqHash);
                self.chunks.entry(id).or_insert(Chunk { room: map.capacity(), map })
            }
        };
        let old = chunk.map.insert(seq, value);
        chunk.room = chunk.room.max(chunk.map.capacity());
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, seq: u64) -> Option<V> {
        let id = seq / SPAN;
        let chunk = self.chunks.get_mut(&id)?;
        let value = chunk.map.remove(&seq)?;
        self.len -= 1;
        if chunk.map.is_empty() {
            self.chunks.remove(&id);
        } else if chunk.map.len() < chunk.room / SHRINK_BELOW && self.chunks.contains_key(&(id + 1)) {
            self.chunks.get_mut(&id).expect("present").shrink();
        }
        Some(value)
    }

    /// Gives back the room that removals left in every chunk that has a chunk
    /// after it.
    pub fn shrink_to_fit(&mut self) {
        let followed: Vec<u64> =
            self.chunks.keys().copied().filter(|id| self.chunks.contains_key(&(id + 1))).collect();
        for id in followed {
            self.chunks.get_mut(&id).expect("present").shrink();
        }
        self.chunks.shrink_to_fit();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The most entries any one chunk has room for (for tests).
    #[cfg(test)]
    pub fn largest_room(&self) -> usize {
        self.chunks.values().map(|c| c.room).max().unwrap_or(0)
    }

    /// The entries the chunk of `seq` has room for (for tests).
    #[cfg(test)]
    pub fn room_of(&self, seq: u64) -> usize {
        self.chunks.get(&(seq / SPAN)).map_or(0, |c| c.room)
    }

    #[cfg(test)]
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_numbers_fill_chunks_of_bounded_size() {
        let mut slots = Slots::default();
        let n = 4 * SPAN + 17;
        for seq in 1..=n {
            assert_eq!(slots.insert(seq, seq * 2), None);
        }
        assert_eq!(slots.len(), n as usize);
        assert_eq!(slots.chunk_count(), 5);
        // A chunk is made with room for all of its numbers and never grows.
        assert_eq!(slots.largest_room(), SPAN as usize);
        for seq in 1..=n {
            assert_eq!(slots.get(seq), Some(&(seq * 2)));
        }
        assert_eq!(slots.get(0), None);
        assert_eq!(slots.get(n + 1), None);
        assert_eq!(slots.insert(7, 1), Some(14), "replacing keeps the count");
        assert_eq!(slots.len(), n as usize);
    }

    #[test]
    fn emptied_chunks_go_and_sparse_ones_shrink() {
        let mut slots = Slots::default();
        for seq in 0..3 * SPAN {
            slots.insert(seq, ());
        }
        // The first chunk empties entirely; the second keeps one task in 1,000.
        for seq in 0..2 * SPAN {
            let keep = seq >= SPAN && seq % 1000 == 0;
            if !keep {
                assert_eq!(slots.remove(seq), Some(()));
            }
        }
        assert_eq!(slots.remove(5), None, "already removed");
        assert_eq!(slots.chunk_count(), 2);
        let kept = (SPAN..2 * SPAN).filter(|s| s % 1000 == 0).count();
        assert_eq!(slots.len(), kept + SPAN as usize);
        let sparse = &slots.chunks[&1];
        assert!(sparse.room < SPAN as usize / 4, "room for {} for {} tasks", sparse.room, sparse.map.len());
        assert!((SPAN..2 * SPAN).all(|s| slots.contains_key(s) == (s % 1000 == 0)));

        // The newest chunk, where new tasks go, keeps its room however empty.
        for seq in 2 * SPAN..3 * SPAN - 1 {
            slots.remove(seq);
        }
        assert_eq!(slots.chunks[&2].room, SPAN as usize);
        slots.shrink_to_fit();
        assert_eq!(slots.chunks[&2].room, SPAN as usize);
        assert!(slots.chunks[&1].room < SPAN as usize / 4);
    }

    #[test]
    fn a_range_starts_small_and_its_open_chunk_keeps_its_room() {
        let mut slots = Slots::default();
        // Two ranges far apart, as the embedded store numbers two queues.
        let (a, b) = (1u64 << 40, 2u64 << 40);
        for n in 0..10 {
            slots.insert(a + n, ());
            slots.insert(b + n, ());
        }
        assert_eq!(slots.chunk_count(), 2);
        assert!(slots.room_of(a) < 64, "a range of 10 tasks has room for {}", slots.room_of(a));
        assert!((0..10).all(|n| slots.contains_key(a + n) && slots.contains_key(b + n)));

        // Range a runs on through whole chunks: its first chunk grew to one
        // chunk's size at most, and the chunks after it are made at full size.
        let start = a - a % SPAN;
        for seq in a + 10..start + 3 * SPAN {
            slots.insert(seq, ());
        }
        assert!(slots.room_of(a) <= SPAN as usize);
        assert_eq!(slots.room_of(start + SPAN), SPAN as usize);
        assert_eq!(slots.room_of(start + 2 * SPAN), SPAN as usize);

        // Emptied all but a few tasks, the open chunk of each range keeps its room;
        // the followed ones shrink.
        for seq in a..start + 3 * SPAN - 1 {
            if seq % 10_000 != 0 {
                slots.remove(seq);
            }
        }
        for n in 1..10 {
            slots.remove(b + n);
        }
        assert_eq!(slots.room_of(start + 2 * SPAN), SPAN as usize, "range a's open chunk");
        assert!(slots.room_of(start + SPAN) < SPAN as usize / 4, "a followed chunk shrinks");
        slots.shrink_to_fit();
        assert_eq!(slots.room_of(start + 2 * SPAN), SPAN as usize);
        assert!(slots.contains_key(b) && !slots.contains_key(b + 1));
        assert!(
            (a..start + 3 * SPAN)
                .all(|s| slots.contains_key(s) == (s % 10_000 == 0 || s == start + 3 * SPAN - 1))
        );
    }
}
