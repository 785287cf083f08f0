//! The DMA extent map: the set of Type1 entries of one container, ordered by IOVA
//! (spec/02-type1.md §1.2, §1.4).
//!
//! # Structure
//!
//! An AVL tree whose nodes live in an embedder-provided slice of [`DmaEntry`] (32 bytes
//! each), linked by `u32` indexes. Free slots form a singly linked list (through the `left`
//! link) plus a high-water mark, so construction and [`DmaMap::clear`] are O(1) and nothing
//! is ever allocated. Lookup, insertion and removal descend once from the root: O(log n).
//! Removal keeps a bounded path stack (64 slots, masked indexes; an AVL tree of fewer than
//! 2^32 nodes is at most 46 levels deep) for its upward retrace. Insertion keeps no stack:
//! it records only the deepest node of its path whose balance is not zero, the only node
//! that can need a rotation (Knuth, TAOCP vol. 3, §6.2.3, Algorithm A). Iteration in IOVA
//! order is an in-order walk with a stack: O(n) for the whole map, O(log n + k) for `k`
//! entries from a starting point.
//!
//! Hot paths (MAP and UNMAP of one whole entry) descend once each: MAP finds the overlap
//! check and the insertion point in one descent (`vacancy`, replayed by `insert_at`),
//! UNMAP finds and removes the entry in one ([`DmaMap::remove_exact`]). The MAP descent
//! compares only start addresses and checks overlap at the end against the two
//! neighbours of the new range (entries are disjoint, so no other entry can overlap).
//! Descents choose the child by indexing `[left, right]` with the comparison, so the only
//! branches in the loop are rarely taken; slots are 32-byte aligned (one cache line per
//! node visited).
//!
//! # Cost (measured by `cargo run --release -p vfio-tests --bin bench-type1`)
//!
//! A MAP+UNMAP pair at 65,535 live mappings is two descents of about 16 dependent node
//! loads each plus the rebalancing, which a binary tree cannot shorten; a B-tree would
//! shorten the descents but needs more than 32 bytes per mapping to guarantee its
//! capacity (its nodes may be half empty).
//!
//! # Packing (≤ 32 bytes per mapping)
//!
//! `iova`, `size` and `vaddr` are multiples of the container's minimum IOMMU page size,
//! which is at least the host page size; the map requires 4 KiB alignment (the smallest
//! page size in use), so the low 12 bits of each word are free and hold:
//!
//! | word | bits 0–11 |
//! |---|---|
//! | `iova` | AVL balance (2 bits), `READ`, `WRITE`, `iommu_mapped`, `vaddr_invalid`, `lock_cap`, `dirty_all`, charge count bits 22–25 |
//! | `size` | charge mode (2 bits), charge count bits 12–21 |
//! | `vaddr` | charge count bits 0–11 |
//!
//! The locked-page charge of an entry (`locked_pages`) is stored in one of four modes:
//! none (0), all (every page of the entry: `size / page_size`, the usual case of RAM), a
//! count of charged pages, or a count of *uncharged* pages (an entry mixing RAM with device
//! memory, which is never charged). A count has 26 bits: a mixed entry with both more than
//! 2^26 − 1 charged and more than 2^26 − 1 uncharged pages (over 256 GiB of each with 4 KiB
//! pages) cannot be represented and is refused with `ENOMEM`, like an allocation failure in
//! the kernel.

use crate::errno::{Errno, Result};
use crate::platform::Prot;
use crate::type1::charge::{ChargeRun, ChargeRuns};

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
    /// The whole 64-bit IOVA space `[0, 2^64 − 1]`.
    pub const ALL: IovaRange = IovaRange {
        first: 0,
        last: u64::MAX,
    };

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

    /// Length in bytes (`last − first + 1`, ≥ 1), or `None` for the full 2^64-byte range,
    /// whose length does not fit in a `u64`.
    pub const fn byte_len(&self) -> Option<u64> {
        (self.last.wrapping_sub(self.first)).checked_add(1)
    }
}

/// One Type1 entry (`struct vfio_dma`), unpacked: the result of one successful MAP_DMA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Mapping {
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
    /// Host pages this entry currently charges to the owner's locked-memory count.
    pub locked_pages: u64,
    /// Every page is reported dirty at the next bitmap report (set when a non-pinned group
    /// detaches while dirty tracking is on, spec/02-type1.md §5.2 step 5).
    pub dirty_all: bool,
}

impl Mapping {
    /// A zeroed mapping.
    pub const EMPTY: Mapping = Mapping {
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
    /// covers its first byte only. Saturates at 2^64 − 1 (never wraps).
    pub fn range(&self) -> IovaRange {
        IovaRange {
            first: self.iova,
            last: self.iova.saturating_add(self.size.saturating_sub(1)),
        }
    }
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping::EMPTY
    }
}

/// "No node" link.
const NIL: u32 = u32::MAX;
/// Largest number of slots a map uses (indexes are `u32`, `NIL` excluded).
const MAX_SLOTS: usize = (u32::MAX - 1) as usize;
/// Deepest path an AVL tree of < 2^32 nodes can have (1.44 · 32 + 2 < 48).
const MAX_DEPTH: usize = 48;
/// Low bits of the packed words that are free for metadata (4 KiB alignment).
const LOW: u64 = 0xfff;

// iova word.
const BAL_MASK: u64 = 0b11; // 0 = left-heavy, 1 = balanced, 2 = right-heavy
const F_READ: u64 = 1 << 2;
const F_WRITE: u64 = 1 << 3;
const F_MAPPED: u64 = 1 << 4;
const F_INVALID: u64 = 1 << 5;
const F_LOCK_CAP: u64 = 1 << 6;
const F_DIRTY_ALL: u64 = 1 << 7;
const IOVA_COUNT_SHIFT: u32 = 8; // 4 bits of the count (bits 22..25)
                                 // size word.
const MODE_MASK: u64 = 0b11;
const MODE_NONE: u64 = 0;
const MODE_ALL: u64 = 1;
const MODE_CHARGED: u64 = 2;
const MODE_UNCHARGED: u64 = 3;
const SIZE_COUNT_SHIFT: u32 = 2; // 10 bits of the count (bits 12..21)
/// Largest storable charge count (26 bits).
const COUNT_MAX: u64 = (1 << 26) - 1;

/// One storage slot of a [`DmaMap`]: a packed [`Mapping`] plus the tree links, 32 bytes.
///
/// Embedders provide a slice of these (initialized with [`DmaEntry::EMPTY`]); its length is
/// the map's capacity. The content is private to the map.
///
/// The type is 32-byte aligned so that a slot never straddles two cache lines: a descent
/// reads one line per node (with the natural 8-byte alignment, a slice from the global
/// allocator typically starts 16 bytes into a line, and every other slot spans two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(align(32))]
pub struct DmaEntry {
    iova: u64,
    size: u64,
    vaddr: u64,
    /// Children: `[left, right]` (indexable by the direction of a descent, so the hot
    /// loops choose a child without a branch).
    link: [u32; 2],
}

impl DmaEntry {
    /// An unused slot, for initializing storage slices.
    pub const EMPTY: DmaEntry = DmaEntry {
        iova: 0,
        size: 0,
        vaddr: 0,
        link: [NIL, NIL],
    };

    /// Bytes of storage per mapping (`size_of::<DmaEntry>()`): 32.
    pub const BYTES: usize = core::mem::size_of::<DmaEntry>();
}

impl Default for DmaEntry {
    fn default() -> Self {
        DmaEntry::EMPTY
    }
}

/// Packs `m` (keeping balance bits `bal`) with page size `1 << shift`.
fn pack(m: &Mapping, bal: u64, shift: u32) -> Result<(u64, u64, u64)> {
    if (m.iova | m.size | m.vaddr) & LOW != 0 {
        return Err(Errno::EINVAL);
    }
    let pages = m.size >> shift;
    let (mode, count) = if m.locked_pages == 0 {
        (MODE_NONE, 0)
    } else if m.locked_pages == pages {
        (MODE_ALL, 0)
    } else if m.locked_pages <= COUNT_MAX {
        (MODE_CHARGED, m.locked_pages)
    } else {
        let uncharged = pages.checked_sub(m.locked_pages).ok_or(Errno::EINVAL)?;
        if uncharged > COUNT_MAX {
            return Err(Errno::ENOMEM);
        }
        (MODE_UNCHARGED, uncharged)
    };
    let mut flags = bal & BAL_MASK;
    if m.prot.contains(Prot::READ) {
        flags |= F_READ;
    }
    if m.prot.contains(Prot::WRITE) {
        flags |= F_WRITE;
    }
    if m.iommu_mapped {
        flags |= F_MAPPED;
    }
    if m.vaddr_invalid {
        flags |= F_INVALID;
    }
    if m.lock_cap {
        flags |= F_LOCK_CAP;
    }
    if m.dirty_all {
        flags |= F_DIRTY_ALL;
    }
    let iova = m.iova | flags | (((count >> 22) & 0xf) << IOVA_COUNT_SHIFT);
    let size = m.size | mode | (((count >> 12) & 0x3ff) << SIZE_COUNT_SHIFT);
    let vaddr = m.vaddr | (count & LOW);
    Ok((iova, size, vaddr))
}

fn unpack(node: &DmaEntry, shift: u32) -> Mapping {
    let size = node.size & !LOW;
    let count = (node.vaddr & LOW)
        | (((node.size & LOW) >> SIZE_COUNT_SHIFT) << 12)
        | ((((node.iova & LOW) >> IOVA_COUNT_SHIFT) & 0xf) << 22);
    let pages = size >> shift;
    let locked_pages = match node.size & MODE_MASK {
        MODE_NONE => 0,
        MODE_ALL => pages,
        MODE_CHARGED => count,
        _ => pages.saturating_sub(count),
    };
    let mut prot = Prot::empty();
    if node.iova & F_READ != 0 {
        prot |= Prot::READ;
    }
    if node.iova & F_WRITE != 0 {
        prot |= Prot::WRITE;
    }
    Mapping {
        iova: node.iova & !LOW,
        size,
        vaddr: node.vaddr & !LOW,
        prot,
        iommu_mapped: node.iova & F_MAPPED != 0,
        vaddr_invalid: node.iova & F_INVALID != 0,
        lock_cap: node.iova & F_LOCK_CAP != 0,
        locked_pages,
        dirty_all: node.iova & F_DIRTY_ALL != 0,
    }
}

/// A handle on one entry of a [`DmaMap`], valid until the map is next modified
/// structurally (insert, remove, clear).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EntryId(u32);

/// The ordered, fixed-capacity set of entries of one container.
#[derive(Debug)]
pub struct DmaMap<'s> {
    nodes: &'s mut [DmaEntry],
    root: u32,
    free: u32,
    /// Slots `[high, capacity)` were never used.
    high: u32,
    len: usize,
    /// Structural modification count (insert, remove, clear), wrapping; ties a
    /// [`Vacancy`] to the tree it was made in.
    generation: u32,
    /// log2 of the host page size, the unit of `locked_pages`.
    shift: u32,
    /// The container's charged physical runs for exact accounting
    /// ([`DmaMap::with_accounting`]); kept here so that every Type1 operation, which
    /// receives the map, reaches them.
    charges: Option<ChargeRuns<'s>>,
}

/// Slots of a [`Path`]: a power of two above the deepest possible descent.
const PATH_SLOTS: usize = 64;
/// Index mask of a [`Path`] (indexes are masked, so recording a step never fails).
const PATH_MASK: usize = PATH_SLOTS - 1;

/// Path stack of a removal descent: node indexes and, as bits, the direction taken at
/// each level (bit `i` set = went right at level `i`). An AVL tree of fewer than 2^32
/// nodes is at most 46 levels deep, so the 64 slots never wrap for a valid tree.
#[derive(Debug, Clone)]
struct Path {
    nodes: [u32; PATH_SLOTS],
    right: u64,
    depth: usize,
}

/// Where an entry would be inserted: the descent of [`DmaMap::vacancy`], replayed by
/// [`DmaMap::insert_at`] without searching again.
///
/// Insertion needs no path stack (Knuth, TAOCP vol. 3, §6.2.3 Algorithm A): only the
/// deepest node of the path whose balance is not zero (`top`, the only node that may need
/// a rotation; the nodes below it all become unbalanced towards the new leaf) and the new
/// node's parent are recorded.
#[derive(Debug, Clone)]
pub(crate) struct Vacancy {
    /// Parent of the new node (`NIL`: the tree is empty).
    parent: u32,
    /// The new node becomes the parent's right child.
    right: bool,
    /// Deepest node on the path with a non-zero balance, or the root.
    top: u32,
    /// Parent of `top` (`NIL` when `top` is the root) and the side `top` hangs on.
    top_parent: u32,
    top_right: bool,
    /// The map's modification count when the descent was made (a changed map is searched
    /// again).
    generation: u32,
}

impl Vacancy {
    /// An empty record, to be filled by [`DmaMap::vacancy`].
    pub(crate) const fn new() -> Vacancy {
        Vacancy {
            parent: NIL,
            right: false,
            top: NIL,
            top_parent: NIL,
            top_right: false,
            generation: u32::MAX,
        }
    }
}

/// Last byte covered by a stored node. Stored entries have a size ≥ 4 KiB and never wrap
/// past 2^64 − 1 (`insert` and MAP check the range, `set` keeps it), so plain wrapping
/// arithmetic is exact.
#[inline(always)]
fn node_last(node: &DmaEntry) -> u64 {
    (node.iova & !LOW).wrapping_add((node.size & !LOW).wrapping_sub(1))
}

impl Path {
    const fn new() -> Path {
        Path {
            nodes: [NIL; PATH_SLOTS],
            right: 0,
            depth: 0,
        }
    }

    /// Records a step at the current depth.
    #[inline(always)]
    fn push(&mut self, node: u32, right: bool) {
        let level = self.depth & PATH_MASK;
        self.nodes[level] = node;
        // Steps are pushed in order from a cleared path, so the bit is still 0.
        self.right |= u64::from(right) << level;
        self.depth += 1;
    }

    /// The node at `level`.
    #[inline(always)]
    fn node(&self, level: usize) -> u32 {
        self.nodes[level & PATH_MASK]
    }

    /// Whether the descent went right at `level`.
    #[inline(always)]
    fn went_right(&self, level: usize) -> bool {
        self.right >> (level & PATH_MASK) & 1 != 0
    }
}

impl<'s> DmaMap<'s> {
    /// An empty map that can hold `storage.len()` entries (at most 2^32 − 2). O(1): the
    /// slots are not touched until used.
    pub fn new(storage: &'s mut [DmaEntry]) -> Self {
        DmaMap {
            nodes: storage,
            root: NIL,
            free: NIL,
            high: 0,
            len: 0,
            generation: 0,
            shift: 12,
            charges: None,
        }
    }

    /// An empty map (as [`DmaMap::new`]) with storage for exact locked-memory accounting
    /// (`runs`, see [`crate::type1::charge`]): required by
    /// [`crate::type1::Type1Config::exact_accounting`].
    pub fn with_accounting(storage: &'s mut [DmaEntry], runs: &'s mut [ChargeRun]) -> Self {
        DmaMap {
            charges: Some(ChargeRuns::new(runs)),
            ..DmaMap::new(storage)
        }
    }

    /// The exact-accounting runs, when the map has that storage.
    pub fn accounting(&self) -> Option<&ChargeRuns<'s>> {
        self.charges.as_ref()
    }

    /// Mutable access to the exact-accounting runs.
    pub(crate) fn accounting_mut(&mut self) -> Option<&mut ChargeRuns<'s>> {
        self.charges.as_mut()
    }

    /// Takes the runs out (to use them while the map is borrowed); put them back with
    /// [`DmaMap::restore_accounting`].
    pub(crate) fn take_accounting(&mut self) -> Option<ChargeRuns<'s>> {
        self.charges.take()
    }

    /// Puts back runs taken by [`DmaMap::take_accounting`].
    pub(crate) fn restore_accounting(&mut self, runs: Option<ChargeRuns<'s>>) {
        if runs.is_some() {
            self.charges = runs;
        }
    }

    /// Sets the host page size (bytes, a power of two ≥ 4096), the unit in which
    /// `locked_pages` is stored. Only allowed while the map is empty; ignored otherwise or
    /// for an invalid size.
    pub fn set_page_size(&mut self, page_size: u64) {
        if self.len == 0 && page_size.is_power_of_two() && page_size >= 4096 {
            self.shift = page_size.trailing_zeros();
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
        self.nodes.len().min(MAX_SLOTS)
    }

    fn node(&self, i: u32) -> Option<&DmaEntry> {
        self.nodes.get(i as usize)
    }

    fn left(&self, i: u32) -> u32 {
        self.node(i).map_or(NIL, |n| n.link[0])
    }

    fn right(&self, i: u32) -> u32 {
        self.node(i).map_or(NIL, |n| n.link[1])
    }

    fn set_left(&mut self, i: u32, to: u32) {
        if let Some(n) = self.nodes.get_mut(i as usize) {
            n.link[0] = to;
        }
    }

    fn set_right(&mut self, i: u32, to: u32) {
        if let Some(n) = self.nodes.get_mut(i as usize) {
            n.link[1] = to;
        }
    }

    /// Balance as −1, 0, +1 (height(right) − height(left)).
    fn bal(&self, i: u32) -> i8 {
        self.node(i).map_or(0, |n| (n.iova & BAL_MASK) as i8 - 1)
    }

    fn set_bal(&mut self, i: u32, b: i8) {
        if let Some(n) = self.nodes.get_mut(i as usize) {
            n.iova = (n.iova & !BAL_MASK) | ((b + 1) as u64 & BAL_MASK);
        }
    }

    fn key(&self, i: u32) -> u64 {
        self.node(i).map_or(0, |n| n.iova & !LOW)
    }

    /// Last byte covered by node `i` ([`node_last`]; 0 for `NIL`).
    fn last(&self, i: u32) -> u64 {
        self.node(i).map_or(0, node_last)
    }

    /// The entry `id` refers to (`None` for a stale or foreign id).
    pub fn get(&self, id: EntryId) -> Option<Mapping> {
        self.node(id.0).map(|n| unpack(n, self.shift))
    }

    /// Replaces the content of entry `id` with `m`, which must keep the same `iova` and
    /// `size` (the tree order is not re-checked).
    ///
    /// # Errors
    /// `ENOENT` for a bad id; `EINVAL` when `iova`/`size` change or are not 4 KiB aligned;
    /// `ENOMEM` when `locked_pages` cannot be stored (see the module docs).
    pub fn set(&mut self, id: EntryId, m: &Mapping) -> Result<()> {
        let shift = self.shift;
        let node = self.nodes.get_mut(id.0 as usize).ok_or(Errno::ENOENT)?;
        if node.iova & !LOW != m.iova || node.size & !LOW != m.size {
            return Err(Errno::EINVAL);
        }
        let (iova, size, vaddr) = pack(m, node.iova & BAL_MASK, shift)?;
        node.iova = iova;
        node.size = size;
        node.vaddr = vaddr;
        Ok(())
    }

    /// The entry with the lowest IOVA sharing at least one byte with the inclusive `range`
    /// (spec/02-type1.md §6.2 M8, §7.3), if any. O(log n).
    pub fn first_overlapping(&self, range: IovaRange) -> Option<EntryId> {
        // Branch-free descent to a leaf: the answer is the node with the lowest last byte
        // at or above `range.first` (entries are disjoint, so also the lowest IOVA).
        let mut cur = self.root;
        let mut best = NIL;
        let mut best_key = 0;
        while let Some(node) = self.nodes.get(cur as usize) {
            let key = node.iova & !LOW;
            let last = node_last(node);
            let below = last < range.first;
            best = if below { best } else { cur };
            best_key = if below { best_key } else { key };
            cur = node.link[usize::from(below)];
        }
        (best != NIL && best_key <= range.last).then_some(EntryId(best))
    }

    /// The entry whose bytes `[iova, iova + size − 1]` contain the byte address `iova`
    /// (any alignment), if any. O(log n).
    pub fn find(&self, iova: u64) -> Option<EntryId> {
        // Branch-free descent to a leaf keeping the node with the highest IOVA ≤ `iova`.
        let mut cur = self.root;
        let mut best = NIL;
        while let Some(node) = self.nodes.get(cur as usize) {
            let above = iova >= node.iova & !LOW;
            best = if above { cur } else { best };
            cur = node.link[usize::from(above)];
        }
        let node = self.nodes.get(best as usize)?;
        (iova - (node.iova & !LOW) < node.size & !LOW).then_some(EntryId(best))
    }

    /// The entry following `id` in IOVA order (`None` after the last one or for a stale
    /// id). O(log n).
    pub fn next(&self, id: EntryId) -> Option<EntryId> {
        let last = self.last(id.0);
        let from = last.checked_add(1)?;
        self.first_overlapping(IovaRange {
            first: from,
            last: u64::MAX,
        })
    }

    fn alloc(&mut self) -> Result<u32> {
        if self.free != NIL {
            let i = self.free;
            self.free = self.left(i);
            return Ok(i);
        }
        if (self.high as usize) < self.capacity() {
            let i = self.high;
            self.high += 1;
            return Ok(i);
        }
        Err(Errno::ENOMEM)
    }

    fn release(&mut self, i: u32) {
        if let Some(n) = self.nodes.get_mut(i as usize) {
            *n = DmaEntry {
                link: [self.free, NIL],
                ..DmaEntry::EMPTY
            };
            self.free = i;
        }
    }

    /// Rotates the subtree at `a` left; returns the new subtree root.
    fn rotate_left(&mut self, a: u32) -> u32 {
        let b = self.right(a);
        let bl = self.left(b);
        self.set_right(a, bl);
        self.set_left(b, a);
        b
    }

    fn rotate_right(&mut self, a: u32) -> u32 {
        let b = self.left(a);
        let br = self.right(b);
        self.set_left(a, br);
        self.set_right(b, a);
        b
    }

    /// Rebalances a node whose balance reached ±2 (`heavy_right` gives the sign); returns
    /// the new subtree root and whether the subtree height stayed the same as before the
    /// imbalance appeared (relevant for deletion).
    fn rebalance(&mut self, a: u32, heavy_right: bool) -> (u32, bool) {
        if heavy_right {
            let b = self.right(a);
            let bb = self.bal(b);
            if bb >= 0 {
                let root = self.rotate_left(a);
                if bb == 0 {
                    self.set_bal(a, 1);
                    self.set_bal(b, -1);
                    (root, true)
                } else {
                    self.set_bal(a, 0);
                    self.set_bal(b, 0);
                    (root, false)
                }
            } else {
                let c = self.left(b);
                let cb = self.bal(c);
                let nb = self.rotate_right(b);
                self.set_right(a, nb);
                let root = self.rotate_left(a);
                self.set_bal(a, if cb > 0 { -1 } else { 0 });
                self.set_bal(b, if cb < 0 { 1 } else { 0 });
                self.set_bal(c, 0);
                (root, false)
            }
        } else {
            let b = self.left(a);
            let bb = self.bal(b);
            if bb <= 0 {
                let root = self.rotate_right(a);
                if bb == 0 {
                    self.set_bal(a, -1);
                    self.set_bal(b, 1);
                    (root, true)
                } else {
                    self.set_bal(a, 0);
                    self.set_bal(b, 0);
                    (root, false)
                }
            } else {
                let c = self.right(b);
                let cb = self.bal(c);
                let nb = self.rotate_left(b);
                self.set_left(a, nb);
                let root = self.rotate_right(a);
                self.set_bal(a, if cb < 0 { 1 } else { 0 });
                self.set_bal(b, if cb > 0 { -1 } else { 0 });
                self.set_bal(c, 0);
                (root, false)
            }
        }
    }

    /// Makes `parent`'s link on side `right` (or the root, for `NIL`) point to `child`.
    fn link_child(&mut self, parent: u32, right: bool, child: u32) {
        match self.nodes.get_mut(parent as usize) {
            Some(n) => n.link[usize::from(right)] = child,
            None => self.root = child,
        }
    }

    /// Makes the parent recorded at `path[level − 1]` (or the root) point to `child`.
    fn relink(&mut self, path: &Path, level: usize, child: u32) {
        match level.checked_sub(1) {
            None => self.root = child,
            Some(up) => self.link_child(path.node(up), path.went_right(up), child),
        }
    }

    /// Inserts `entry` and returns its id. O(log n).
    ///
    /// # Errors
    /// `EEXIST` when it overlaps an entry; `EINVAL` when `size` is 0 or `iova`, `size` or
    /// `vaddr` is not 4 KiB aligned, or the range wraps past 2^64 − 1; `ENOMEM` when the
    /// storage is full or `locked_pages` cannot be stored.
    pub fn insert(&mut self, entry: Mapping) -> Result<EntryId> {
        if entry.size == 0 {
            return Err(Errno::EINVAL);
        }
        let range = IovaRange::new(entry.iova, entry.size).map_err(|_| Errno::EINVAL)?;
        // Packing also checks the 4 KiB alignment that `vacancy` relies on.
        let words = pack(&entry, 1, self.shift)?;
        let mut vacancy = Vacancy::new();
        if !self.vacancy(range, &mut vacancy) {
            return Err(Errno::EEXIST);
        }
        self.link_new(&vacancy, words)
    }

    /// Finds the place where an entry covering `range` would be inserted and records it
    /// in `out`; `false` when an entry overlaps `range`. One descent, O(log n); `out` is
    /// valid for [`DmaMap::insert_at`] until the map is next modified structurally.
    ///
    /// `range.first` must be 4 KiB aligned (every caller has checked the page alignment):
    /// keys are then compared with the packed words directly, without masking.
    pub(crate) fn vacancy(&self, range: IovaRange, out: &mut Vacancy) -> bool {
        let nodes = &*self.nodes;
        let first = range.first;
        debug_assert_eq!(first & LOW, 0);
        let mut cur = self.root;
        // `(parent << 32) | node` pairs: the current step and the deepest unbalanced one.
        let mut parent = NIL;
        let mut go_right = false;
        let mut top = (u64::from(NIL) << 32) | u64::from(cur);
        // The nearest entries around `first`: highest IOVA below it, lowest at or above.
        let (mut below, mut above) = (NIL, NIL);
        while let Some(node) = nodes.get(cur as usize) {
            let word = node.iova;
            let step = (u64::from(parent) << 32) | u64::from(cur);
            top = if word & BAL_MASK != 1 { step } else { top };
            // Page-aligned `first` against `iova | metadata`: the low bits never decide.
            go_right = first > word;
            below = if go_right { cur } else { below };
            above = if go_right { above } else { cur };
            parent = cur;
            cur = node.link[usize::from(go_right)];
        }
        // Entries are disjoint: only these two can overlap `range`.
        if nodes
            .get(below as usize)
            .is_some_and(|n| node_last(n) >= first)
            || nodes
                .get(above as usize)
                .is_some_and(|n| n.iova & !LOW <= range.last)
        {
            return false;
        }
        let (top, top_parent) = (top as u32, (top >> 32) as u32);
        // `top` hangs on the side of its parent its key lies on.
        let top_right = match (nodes.get(top as usize), nodes.get(top_parent as usize)) {
            (Some(t), Some(p)) => t.iova > p.iova,
            _ => false,
        };
        *out = Vacancy {
            parent,
            right: go_right,
            top,
            top_parent,
            top_right,
            generation: self.generation,
        };
        true
    }

    /// Inserts `entry` at `vacancy` (from [`DmaMap::vacancy`] with the entry's range, the
    /// map unchanged since; otherwise this falls back to a fresh descent). O(log n).
    ///
    /// # Errors
    /// As [`DmaMap::insert`].
    pub(crate) fn insert_at(&mut self, vacancy: &Vacancy, entry: &Mapping) -> Result<EntryId> {
        if vacancy.generation != self.generation {
            return self.insert(*entry);
        }
        let words = pack(entry, 1, self.shift)?;
        self.link_new(vacancy, words)
    }

    /// Stores the packed words `(iova, size, vaddr)` of a new entry in a free slot, links
    /// it at `vacancy` (current: same generation) and rebalances. O(log n).
    ///
    /// # Errors
    /// `ENOMEM` when the storage is full (nothing changes).
    fn link_new(&mut self, vacancy: &Vacancy, words: (u64, u64, u64)) -> Result<EntryId> {
        let (iova, size, vaddr) = words;
        let n = self.alloc()?;
        if let Some(slot) = self.nodes.get_mut(n as usize) {
            *slot = DmaEntry {
                iova,
                size,
                vaddr,
                link: [NIL, NIL],
            };
        }
        self.link_child(vacancy.parent, vacancy.right, n);
        self.len += 1;
        self.generation = self.generation.wrapping_add(1);
        let top = vacancy.top;
        let Some(top_word) = self.node(top).map(|t| t.iova) else {
            return Ok(EntryId(n)); // the tree was empty
        };
        // Every node strictly between `top` and the new leaf was balanced and now leans
        // towards the leaf.
        let top_dir = iova > top_word;
        let mut q = self.node(top).map_or(NIL, |t| t.link[usize::from(top_dir)]);
        while q != n {
            let Some(node) = self.nodes.get_mut(q as usize) else {
                break;
            };
            let dir = iova > node.iova;
            node.iova = (node.iova & !BAL_MASK) | if dir { 2 } else { 0 };
            q = node.link[usize::from(dir)];
        }
        // `top` absorbs the growth, or rotates.
        let b = self.bal(top) + if top_dir { 1 } else { -1 };
        if (-1..=1).contains(&b) {
            self.set_bal(top, b);
        } else {
            let (sub, _) = self.rebalance(top, b > 0);
            self.link_child(vacancy.top_parent, vacancy.top_right, sub);
        }
        Ok(EntryId(n))
    }

    /// Descends to the node starting at exactly `iova` (4 KiB aligned), recording the
    /// path to it.
    fn descend_exact(&self, iova: u64, path: &mut Path) -> Option<u32> {
        let nodes = &*self.nodes;
        let mut cur = self.root;
        path.depth = 0;
        path.right = 0;
        loop {
            let node = nodes.get(cur as usize)?;
            let word = node.iova;
            if (word ^ iova) <= LOW {
                return Some(cur);
            }
            let go_right = iova > word;
            path.push(cur, go_right);
            cur = node.link[usize::from(go_right)];
        }
    }

    /// Removes the entry starting at exactly `iova` (bytes) and returns it; `None` (map
    /// unchanged) when no entry starts there, which includes any `iova` not 4 KiB aligned.
    /// O(log n). Every [`EntryId`] obtained before is invalidated. Only the tree changes:
    /// unmapping, unpinning and un-charging are the caller's (spec/02-type1.md §12.2).
    pub fn remove(&mut self, iova: u64) -> Option<Mapping> {
        if iova & LOW != 0 {
            return None;
        }
        let mut path = Path::new();
        let cur = self.descend_exact(iova, &mut path)?;
        self.remove_at(&mut path, cur)
    }

    /// Removes and returns the entry covering exactly the inclusive `range` (same first
    /// and last byte), if there is one; otherwise (including an unaligned `range.first`)
    /// leaves the map unchanged. One descent, O(log n). Invalidates [`EntryId`]s as
    /// [`DmaMap::remove`] does.
    pub fn remove_exact(&mut self, range: IovaRange) -> Option<Mapping> {
        if range.first & LOW != 0 {
            return None;
        }
        let mut path = Path::new();
        let cur = self.descend_exact(range.first, &mut path)?;
        if self.last(cur) != range.last {
            return None;
        }
        self.remove_at(&mut path, cur)
    }

    /// Removes node `cur`, reached by `path`.
    fn remove_at(&mut self, path: &mut Path, cur: u32) -> Option<Mapping> {
        let removed = unpack(self.node(cur)?, self.shift);
        let target_level = path.depth;
        let (l, r) = (self.left(cur), self.right(cur));
        if l != NIL && r != NIL {
            // Replace `cur` by its successor `s` (leftmost of the right subtree),
            // structurally (slots keep their content).
            path.push(cur, true);
            let mut s = r;
            while let Some(next) = Some(self.left(s)).filter(|&n| n != NIL) {
                path.push(s, false);
                s = next;
            }
            let s_right = self.right(s);
            // Unlink s from its place (its parent is the last path node).
            self.relink(path, path.depth, s_right);
            // s takes cur's place: links, balance, and position in the path.
            let (l, r, b) = (self.left(cur), self.right(cur), self.bal(cur));
            self.set_left(s, l);
            self.set_right(s, r);
            self.set_bal(s, b);
            path.nodes[target_level & PATH_MASK] = s;
            self.relink(path, target_level, s);
        } else {
            let child = if l != NIL { l } else { r };
            self.relink(path, target_level, child);
        }
        self.release(cur);
        self.len -= 1;
        self.generation = self.generation.wrapping_add(1);
        // Retrace: the subtree on the recorded side got shorter.
        let mut level = path.depth;
        while level > 0 {
            level -= 1;
            let p = path.node(level);
            let b = self.bal(p) + if path.went_right(level) { -1 } else { 1 };
            if b == 1 || b == -1 {
                self.set_bal(p, b);
                break; // height unchanged
            }
            if b == 0 {
                self.set_bal(p, 0);
                continue; // height shrank
            }
            let (sub, same_height) = self.rebalance(p, b > 0);
            self.relink(path, level, sub);
            if same_height {
                break;
            }
        }
        Some(removed)
    }

    /// Removes every entry (and forgets the exact-accounting runs). O(1).
    pub fn clear(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.root = NIL;
        self.free = NIL;
        self.high = 0;
        self.len = 0;
        if let Some(runs) = self.charges.as_mut() {
            runs.clear();
        }
    }

    /// Calls `f` on every entry in ascending IOVA order, then removes them all: O(n)
    /// (UNMAP ALL and teardown, spec/02-type1.md §12.1).
    pub fn drain(&mut self, mut f: impl FnMut(&Mapping)) {
        for m in self.iter() {
            f(&m);
        }
        self.clear();
    }

    /// The entries in ascending IOVA order.
    pub fn iter(&self) -> Iter<'_> {
        Iter::new(self.nodes, self.root, self.shift)
    }

    /// The entries in ascending IOVA order, starting from the first one overlapping
    /// `range` and stopping after the last one starting at or before `range.last`.
    /// O(log n + k).
    pub fn iter_range(&self, range: IovaRange) -> Iter<'_> {
        let mut it = Iter {
            nodes: self.nodes,
            stack: [NIL; MAX_DEPTH],
            depth: 0,
            shift: self.shift,
            stop: range.last,
        };
        // Push the path to the first overlapping node, keeping only nodes that are ≥ it.
        let mut cur = self.root;
        while cur != NIL {
            if self.last(cur) < range.first {
                cur = self.right(cur);
            } else {
                if let Some(slot) = it.stack.get_mut(it.depth) {
                    *slot = cur;
                    it.depth += 1;
                }
                if self.key(cur) <= range.first {
                    break;
                }
                cur = self.left(cur);
            }
        }
        it
    }

    /// Applies `f` to every entry in ascending order, storing the result back. Does not
    /// change the order (`f` must keep `iova` and `size`).
    ///
    /// # Errors
    /// The first error of [`DmaMap::set`]; entries before it are updated.
    pub fn update_all(&mut self, mut f: impl FnMut(&mut Mapping)) -> Result<()> {
        // In-order walk by index stack (no borrow of the iterator across `set`).
        let mut stack = [NIL; MAX_DEPTH];
        let mut depth = 0usize;
        let mut cur = self.root;
        loop {
            while cur != NIL {
                let slot = stack.get_mut(depth).ok_or(Errno::ENOMEM)?;
                *slot = cur;
                depth += 1;
                cur = self.left(cur);
            }
            let Some(top) = depth.checked_sub(1) else {
                return Ok(());
            };
            depth = top;
            let n = stack.get(top).copied().unwrap_or(NIL);
            if let Some(mut m) = self.get(EntryId(n)) {
                f(&mut m);
                self.set(EntryId(n), &m)?;
            }
            cur = self.right(n);
        }
    }

    /// Checks the AVL invariants (order, disjointness, balance, count); for tests.
    #[cfg(test)]
    fn check(&self) {
        fn walk(map: &DmaMap<'_>, n: u32, lo: Option<u64>, count: &mut usize) -> i32 {
            if n == NIL {
                return 0;
            }
            *count += 1;
            if let Some(lo) = lo {
                assert!(map.key(n) > lo);
            }
            let hl = walk(map, map.left(n), lo, count);
            if map.left(n) != NIL {
                assert!(map.last(map.left(n)) < map.key(n));
            }
            if map.right(n) != NIL {
                assert!(map.key(map.right(n)) > map.last(n));
            }
            let hr = walk(map, map.right(n), Some(map.last(n)), count);
            assert_eq!(i32::from(map.bal(n)), hr - hl, "balance of node {n}");
            1 + hl.max(hr)
        }
        let mut count = 0;
        walk(self, self.root, None, &mut count);
        assert_eq!(count, self.len);
    }
}

/// In-order iterator over the entries of a [`DmaMap`] (yields unpacked [`Mapping`]s with
/// their [`EntryId`]s through [`Iter::with_ids`]).
#[derive(Debug, Clone)]
pub struct Iter<'a> {
    nodes: &'a [DmaEntry],
    stack: [u32; MAX_DEPTH],
    depth: usize,
    shift: u32,
    /// Stop before the first entry starting above this IOVA.
    stop: u64,
}

impl<'a> Iter<'a> {
    fn new(nodes: &'a [DmaEntry], root: u32, shift: u32) -> Iter<'a> {
        let mut it = Iter {
            nodes,
            stack: [NIL; MAX_DEPTH],
            depth: 0,
            shift,
            stop: u64::MAX,
        };
        it.push_left(root);
        it
    }

    /// An iterator over nothing.
    pub fn empty() -> Iter<'static> {
        Iter {
            nodes: &[],
            stack: [NIL; MAX_DEPTH],
            depth: 0,
            shift: 12,
            stop: 0,
        }
    }

    fn push_left(&mut self, mut n: u32) {
        while let Some(node) = self.nodes.get(n as usize) {
            let Some(slot) = self.stack.get_mut(self.depth) else {
                return;
            };
            *slot = n;
            self.depth += 1;
            // Read the right child's first word now: it is visited after this node's
            // left subtree, so its cache line arrives while that subtree is walked
            // instead of stalling the walk later.
            let right = node.link[1];
            core::hint::black_box(self.nodes.get(right as usize).map(|r| r.iova));
            n = node.link[0];
        }
    }

    fn next_id(&mut self) -> Option<(u32, &'a DmaEntry)> {
        let top = self.depth.checked_sub(1)?;
        self.depth = top;
        let n = self.stack.get(top).copied()?;
        let node = self.nodes.get(n as usize)?;
        if node.iova & !LOW > self.stop {
            self.depth = 0;
            return None;
        }
        self.push_left(node.link[1]);
        Some((n, node))
    }

    /// Yields `(id, mapping)` pairs instead of mappings.
    pub fn with_ids(self) -> impl Iterator<Item = (EntryId, Mapping)> + 'a {
        let shift = self.shift;
        let mut it = self;
        core::iter::from_fn(move || {
            it.next_id()
                .map(|(n, node)| (EntryId(n), unpack(node, shift)))
        })
    }
}

impl Iterator for Iter<'_> {
    type Item = Mapping;

    fn next(&mut self) -> Option<Mapping> {
        let shift = self.shift;
        self.next_id().map(|(_, node)| unpack(node, shift))
    }
}

/// A read-only view of a container's mappings (what
/// [`crate::vfio::Vfio::container_mappings`] returns).
#[derive(Debug, Clone)]
pub struct Mappings<'a>(Iter<'a>);

impl<'a> Mappings<'a> {
    /// The mappings of `map`.
    pub fn of(map: &'a DmaMap<'_>) -> Mappings<'a> {
        Mappings(map.iter())
    }

    /// No mappings.
    pub fn none() -> Mappings<'static> {
        Mappings(Iter::empty())
    }

    /// The mappings in ascending IOVA order.
    pub fn iter(&self) -> Iter<'a> {
        self.0.clone()
    }
}

/// Consuming the view yields the mappings in ascending IOVA order.
impl Iterator for Mappings<'_> {
    type Item = Mapping;

    fn next(&mut self) -> Option<Mapping> {
        self.0.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(iova: u64, size: u64) -> Mapping {
        Mapping {
            iova,
            size,
            ..Mapping::EMPTY
        }
    }

    #[test]
    fn node_is_32_bytes() {
        assert_eq!(DmaEntry::BYTES, 32);
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
        let top = map.insert(entry(0xffff_ffff_ffff_f000, 0x1000)).unwrap();
        assert_eq!(map.iter().next().unwrap().iova, 0x1000);
        let r = IovaRange::new(0x1800, 0x2000).unwrap();
        assert_eq!(
            map.get(map.first_overlapping(r).unwrap()).unwrap().iova,
            0x1000
        );
        let gap = IovaRange::new(0x2000, 0x1000).unwrap();
        assert_eq!(map.first_overlapping(gap), None);
        assert_eq!(map.find(u64::MAX), Some(top));
        assert_eq!(map.insert(entry(0x3000, 0x1000)), Err(Errno::EEXIST));
        assert_eq!(map.remove(0x1000).unwrap().iova, 0x1000);
        assert_eq!(map.find(0x1000), None);
        map.check();
    }

    #[test]
    fn full_map_refuses_insert() {
        let mut storage = [DmaEntry::EMPTY; 1];
        let mut map = DmaMap::new(&mut storage);
        map.insert(entry(0, 0x1000)).unwrap();
        assert_eq!(map.insert(entry(0x1000, 0x1000)), Err(Errno::ENOMEM));
    }

    #[test]
    fn packing_round_trips() {
        let mut storage = [DmaEntry::EMPTY; 4];
        let mut map = DmaMap::new(&mut storage);
        let cases = [0, 0x10, 0x3ff_ffff, (1 << 30) - 5];
        for (k, locked) in cases.into_iter().enumerate() {
            let m = Mapping {
                iova: (k as u64) << 44,
                size: 1 << 42,
                vaddr: 0x7f00_0000_0000,
                prot: Prot::READ | Prot::WRITE,
                iommu_mapped: true,
                vaddr_invalid: k % 2 == 0,
                lock_cap: k % 2 == 1,
                locked_pages: locked,
                dirty_all: true,
            };
            let id = map.insert(m).unwrap();
            assert_eq!(map.get(id), Some(m));
        }
        let m = Mapping {
            iova: 1 << 63,
            size: 1 << 62,
            locked_pages: 1 << 40,
            ..Mapping::EMPTY
        };
        assert_eq!(map.insert(m), Err(Errno::ENOMEM));
    }

    #[test]
    fn random_operations_keep_the_tree_valid() {
        let mut storage = vec![DmaEntry::EMPTY; 512];
        let mut map = DmaMap::new(&mut storage);
        let mut model = std::collections::BTreeMap::new();
        let mut x: u64 = 0x1234_5678;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let iova = (x % 1024) << 12;
            if x & (1 << 40) == 0 {
                let r = map.insert(entry(iova, 0x1000));
                let expect = if model.contains_key(&iova) {
                    Err(Errno::EEXIST)
                } else if model.len() == 512 {
                    Err(Errno::ENOMEM)
                } else {
                    Ok(())
                };
                assert_eq!(r.map(|_| ()), expect);
                if r.is_ok() {
                    model.insert(iova, ());
                }
            } else {
                assert_eq!(map.remove(iova).is_some(), model.remove(&iova).is_some());
            }
            if x % 97 == 0 {
                map.check();
            }
        }
        map.check();
        let got: Vec<u64> = map.iter().map(|m| m.iova).collect();
        let want: Vec<u64> = model.keys().copied().collect();
        assert_eq!(got, want);
        let r = IovaRange::new(0x100000, 0x100000).unwrap();
        let got: Vec<u64> = map.iter_range(r).map(|m| m.iova).collect();
        let want: Vec<u64> = model.range(0x100000..0x200000).map(|(k, _)| *k).collect();
        assert_eq!(got, want);
    }

    /// Variable-size entries up to the top of the address space, against a model: insert
    /// (overlap = EEXIST), `remove_exact` (only an exact range removes), `find` and
    /// `first_overlapping` answers, AVL invariants checked along the way.
    #[test]
    fn variable_sizes_against_a_model() {
        let mut storage = vec![DmaEntry::EMPTY; 300];
        let mut map = DmaMap::new(&mut storage);
        let mut model: std::collections::BTreeMap<u64, u64> = Default::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let top = u64::MAX - 0xfff;
        let overlaps = |model: &std::collections::BTreeMap<u64, u64>, first: u64, last: u64| {
            model
                .iter()
                .find(|(&k, &sz)| k <= last && first <= k + (sz - 1))
                .map(|(&k, _)| k)
        };
        for step in 0..30_000u32 {
            let r = next();
            // Pages 0..4096 near 0, or the last 64 pages of the address space.
            let page = if r & 7 == 0 {
                (top >> 12) - (r >> 8) % 64
            } else {
                (r >> 8) % 4096
            };
            let iova = page << 12;
            let pages = 1 + (r >> 40) % 6;
            // Clipped at the top of the address space (2^64 - iova bytes remain).
            let size = match (u64::MAX - iova).checked_add(1) {
                Some(room) => (pages << 12).min(room),
                None => pages << 12,
            };
            let range = IovaRange::new(iova, size).unwrap();
            // Mostly inserts while small, mostly removals near capacity (the ENOMEM edge
            // is still reached now and then).
            let kind = match (r >> 32) % 4 {
                0 | 1 if model.len() > 280 && r & (1 << 50) != 0 => 2,
                k => k,
            };
            match kind {
                0 | 1 => {
                    let got = map.insert(entry(iova, size)).map(|_| ());
                    let want = if overlaps(&model, range.first, range.last).is_some() {
                        Err(Errno::EEXIST)
                    } else if model.len() == 300 {
                        Err(Errno::ENOMEM)
                    } else {
                        Ok(())
                    };
                    assert_eq!(got, want, "insert {iova:#x}+{size:#x}");
                    if got.is_ok() {
                        model.insert(iova, size);
                    }
                }
                2 => {
                    // Half the time an existing entry, exactly.
                    let range = match model.iter().nth((r >> 16) as usize % (model.len() + 1)) {
                        Some((&k, &sz)) if r & (3 << 20) != 0 => IovaRange::new(k, sz).unwrap(),
                        _ => range,
                    };
                    let (iova, size) = (range.first, range.last - range.first + 1);
                    let got = map.remove_exact(range).map(|m| (m.iova, m.size));
                    let want = (model.get(&iova) == Some(&size)).then_some((iova, size));
                    assert_eq!(got, want, "remove_exact {iova:#x}+{size:#x}");
                    if want.is_some() {
                        model.remove(&iova);
                    }
                }
                _ => {
                    let probe = iova + (r & 0xfff).min(size - 1);
                    let got = map.find(probe).and_then(|id| map.get(id)).map(|m| m.iova);
                    assert_eq!(got, overlaps(&model, probe, probe), "find {probe:#x}");
                    let got = map
                        .first_overlapping(range)
                        .and_then(|id| map.get(id))
                        .map(|m| m.iova);
                    assert_eq!(got, overlaps(&model, range.first, range.last));
                }
            }
            if step % 251 == 0 {
                map.check();
            }
        }
        map.check();
        let got: Vec<(u64, u64)> = map.iter().map(|m| (m.iova, m.size)).collect();
        let want: Vec<(u64, u64)> = model.into_iter().collect();
        assert_eq!(got, want);
    }
}
