//! The DMA extent map: the set of Type1 entries of one container, ordered by IOVA
//! (spec/02-type1.md §1.2, §1.4).
//!
//! Entries live in an embedder-provided slice, kept sorted by `iova`; ranges never overlap.
//! Lookups are binary searches (O(log n)); insert and remove shift the tail (O(n) moves of
//! small records). Issue "Type1 complete" replaces the storage with an O(log n) balanced
//! structure behind the same interface.

use crate::errno::{Errno, Result};
use crate::platform::Prot;

/// An inclusive IOVA range `[first, last]` (spec/02-type1.md §0). Built only with checked
/// arithmetic, so a range ending at 2^64 − 1 is representable and never wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IovaRange {
    /// First byte of the range.
    pub first: u64,
    /// Last byte of the range (inclusive).
    pub last: u64,
}

impl IovaRange {
    /// The range of `len` bytes from `start`.
    ///
    /// # Errors
    /// `EINVAL` when `len == 0`; `EOVERFLOW` when `start + len − 1` exceeds 2^64 − 1.
    pub fn new(start: u64, len: u64) -> Result<IovaRange> {
        let extra = len.checked_sub(1).ok_or(Errno::EINVAL)?;
        let last = start.checked_add(extra).ok_or(Errno::EOVERFLOW)?;
        Ok(IovaRange { first: start, last })
    }

    /// Whether the two ranges share at least one byte.
    pub const fn overlaps(&self, other: &IovaRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }

    /// Whether `other` lies entirely inside `self`.
    pub const fn contains(&self, other: &IovaRange) -> bool {
        self.first <= other.first && other.last <= self.last
    }

    /// Length in bytes, or `None` for the full 2^64-byte range.
    pub const fn byte_len(&self) -> Option<u64> {
        (self.last - self.first).checked_add(1)
    }
}

/// One Type1 entry (`struct vfio_dma`): the result of one successful MAP_DMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DmaEntry {
    /// Device address of the first byte (aligned to the container's minimum page size).
    pub iova: u64,
    /// Length in bytes (a multiple of the minimum page size, > 0).
    pub size: u64,
    /// Process virtual address backing `iova`.
    pub vaddr: u64,
    /// `READ` and/or `WRITE`.
    pub prot: Prot,
    /// Pages pinned and present in every domain of the container.
    pub iommu_mapped: bool,
    /// The vaddr was withdrawn by an UNMAP with `VADDR` (spec/02-type1.md §11).
    pub vaddr_invalid: bool,
    /// The owner could exceed the locked-memory limit when the entry was made.
    pub lock_cap: bool,
    /// Pages this entry currently charges to the owner's locked-memory count.
    pub locked_pages: u64,
    /// Every page is reported dirty at the next bitmap report (set when a non-pinned group
    /// detaches while dirty tracking is on, spec/02-type1.md §5.2 step 5).
    pub dirty_all: bool,
}

impl DmaEntry {
    /// A zeroed entry, for initializing storage slices.
    pub const EMPTY: DmaEntry = DmaEntry {
        iova: 0,
        size: 0,
        vaddr: 0,
        prot: Prot::empty(),
        iommu_mapped: false,
        vaddr_invalid: false,
        lock_cap: false,
        locked_pages: 0,
        dirty_all: false,
    };

    /// The inclusive range the entry covers (`[iova, iova + size − 1]`); an entry of size 0
    /// (being built) covers its first byte only.
    pub fn range(&self) -> IovaRange {
        IovaRange {
            first: self.iova,
            last: self.iova.saturating_add(self.size.saturating_sub(1)),
        }
    }
}

impl Default for DmaEntry {
    fn default() -> Self {
        DmaEntry::EMPTY
    }
}

/// The ordered, fixed-capacity set of entries of one container.
#[derive(Debug)]
pub struct DmaMap<'s> {
    slots: &'s mut [DmaEntry],
    len: usize,
}

impl<'s> DmaMap<'s> {
    /// An empty map that can hold `storage.len()` entries.
    pub fn new(storage: &'s mut [DmaEntry]) -> Self {
        DmaMap {
            slots: storage,
            len: 0,
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the map holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of entries.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The entries in ascending IOVA order.
    pub fn entries(&self) -> &[DmaEntry] {
        &self.slots[..self.len]
    }

    /// Mutable access to the entries (callers must keep `iova` order and disjointness).
    pub(crate) fn entries_mut(&mut self) -> &mut [DmaEntry] {
        &mut self.slots[..self.len]
    }

    /// Index of the first entry (lowest IOVA) overlapping `range`, if any.
    pub fn first_overlapping(&self, range: IovaRange) -> Option<usize> {
        let entries = self.entries();
        // First entry whose last byte is at or above range.first (entries are disjoint, so
        // their ends are ordered like their starts).
        let index = entries.partition_point(|e| e.range().last < range.first);
        let entry = entries.get(index)?;
        (entry.iova <= range.last).then_some(index)
    }

    /// Index of the entry containing `iova`, if any.
    pub fn find(&self, iova: u64) -> Option<usize> {
        self.first_overlapping(IovaRange {
            first: iova,
            last: iova,
        })
    }

    /// Inserts `entry` at its IOVA position and returns its index. The caller has checked
    /// that it overlaps nothing.
    ///
    /// # Errors
    /// `ENOMEM` when the storage is full.
    pub fn insert(&mut self, entry: DmaEntry) -> Result<usize> {
        if self.len >= self.slots.len() {
            return Err(Errno::ENOMEM);
        }
        let index = self.entries().partition_point(|e| e.iova < entry.iova);
        self.slots[index..=self.len].rotate_right(1);
        self.slots[index] = entry;
        self.len += 1;
        Ok(index)
    }

    /// Removes and returns the entry at `index` (`None` when out of range).
    pub fn remove(&mut self, index: usize) -> Option<DmaEntry> {
        if index >= self.len {
            return None;
        }
        let entry = self.slots[index];
        self.slots[index..self.len].rotate_left(1);
        self.len -= 1;
        Some(entry)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(iova: u64, size: u64) -> DmaEntry {
        DmaEntry {
            iova,
            size,
            ..DmaEntry::EMPTY
        }
    }

    #[test]
    fn range_reaching_the_top_of_the_address_space_is_legal() {
        let r = IovaRange::new(0xffff_ffff_ffff_f000, 0x1000).unwrap();
        assert_eq!(r.last, u64::MAX);
        assert_eq!(
            IovaRange::new(0xffff_ffff_ffff_f000, 0x2000),
            Err(Errno::EOVERFLOW)
        );
        assert_eq!(IovaRange::new(5, 0), Err(Errno::EINVAL));
    }

    #[test]
    fn lookup_finds_first_overlapping_in_order() {
        let mut storage = [DmaEntry::EMPTY; 8];
        let mut map = DmaMap::new(&mut storage);
        map.insert(entry(0x3000, 0x1000)).unwrap();
        map.insert(entry(0x1000, 0x1000)).unwrap();
        map.insert(entry(0xffff_ffff_ffff_f000, 0x1000)).unwrap();
        assert_eq!(map.entries()[0].iova, 0x1000);
        let r = IovaRange::new(0x1800, 0x2000).unwrap();
        assert_eq!(map.first_overlapping(r), Some(0));
        let gap = IovaRange::new(0x2000, 0x1000).unwrap();
        assert_eq!(map.first_overlapping(gap), None);
        assert_eq!(map.find(u64::MAX), Some(2));
        assert_eq!(map.remove(0).unwrap().iova, 0x1000);
        assert_eq!(map.find(0x1000), None);
    }

    #[test]
    fn full_map_refuses_insert() {
        let mut storage = [DmaEntry::EMPTY; 1];
        let mut map = DmaMap::new(&mut storage);
        map.insert(entry(0, 0x1000)).unwrap();
        assert_eq!(map.insert(entry(0x1000, 0x1000)), Err(Errno::ENOMEM));
    }
}
