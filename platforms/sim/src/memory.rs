//! Physical memory (sparse 4 KiB pages) and the simulated process address space.

use std::collections::BTreeMap;

use vfio_core::platform::{MemoryKind, PinnedRun};
use vfio_core::Errno;

/// Host page size of the simulated machine, in bytes.
pub const PAGE_SIZE: u64 = 4096;

/// What backs a range of the process address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backing {
    /// Ordinary writable RAM.
    Ram,
    /// RAM mapped read-only (pinning it for device writes fails with `EFAULT`).
    ReadOnlyRam,
    /// Device memory (e.g. a BAR mapped into the process): translated, never charged.
    Mmio,
}

impl Backing {
    /// The [`MemoryKind`] a pin of this backing reports.
    pub fn kind(self) -> MemoryKind {
        match self {
            Backing::Ram | Backing::ReadOnlyRam => MemoryKind::Ram,
            Backing::Mmio => MemoryKind::Mmio,
        }
    }
}

/// One mapping of the process address space: `[vaddr, vaddr + len)` → `[phys, ..)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VmRange {
    /// First virtual address (page aligned).
    pub vaddr: u64,
    /// Length in bytes (page multiple, ≥ 1 page).
    pub len: u64,
    /// Physical address of the first byte (page aligned).
    pub phys: u64,
    /// What backs the range.
    pub backing: Backing,
}

/// Sparse physical RAM: untouched pages read as zero.
#[derive(Debug, Clone, Default)]
pub struct PhysMemory {
    pages: BTreeMap<u64, Box<[u8]>>,
}

impl PhysMemory {
    /// Reads `buf.len()` bytes at `phys` (wrapping past 2^64 reads zeros). One page
    /// lookup per 4 KiB page touched, not per byte.
    pub fn read(&self, phys: u64, buf: &mut [u8]) {
        let mut done = 0usize;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            let Some(a) = phys.checked_add(done as u64) else {
                rest.fill(0);
                return;
            };
            let off = (a % PAGE_SIZE) as usize;
            let n = rest.len().min(PAGE_SIZE as usize - off);
            let (part, _) = rest.split_at_mut(n);
            match self
                .pages
                .get(&(a / PAGE_SIZE))
                .and_then(|p| p.get(off..off + n))
            {
                Some(src) => part.copy_from_slice(src),
                None => part.fill(0),
            }
            done += n;
        }
    }

    /// Writes `data` at `phys` (bytes past 2^64 are dropped). One page lookup per 4 KiB
    /// page touched; a page is allocated (zero-filled) on its first write.
    pub fn write(&mut self, phys: u64, data: &[u8]) {
        let mut done = 0usize;
        while let Some(rest) = data.get(done..).filter(|r| !r.is_empty()) {
            let Some(a) = phys.checked_add(done as u64) else {
                return;
            };
            let off = (a % PAGE_SIZE) as usize;
            let n = rest.len().min(PAGE_SIZE as usize - off);
            let page = self
                .pages
                .entry(a / PAGE_SIZE)
                .or_insert_with(|| vec![0u8; PAGE_SIZE as usize].into_boxed_slice());
            if let (Some(dst), Some(src)) = (page.get_mut(off..off + n), rest.get(..n)) {
                dst.copy_from_slice(src);
            }
            done += n;
        }
    }

    /// Pages that have been written at least once.
    pub fn touched_pages(&self) -> usize {
        self.pages.len()
    }
}

/// The simulated process: its address space, pins and locked-memory accounting.
#[derive(Debug, Clone)]
pub struct AddressSpace {
    ranges: BTreeMap<u64, VmRange>,
    next_phys: u64,
    /// Pages currently pinned (RAM only).
    pub pinned_pages: u64,
    /// `unpin` calls for more pages than were pinned (a core bug indicator).
    pub unbalanced_unpins: u64,
    /// Pages charged to the locked-memory count.
    pub locked_pages: u64,
    /// Locked-memory limit in pages (`None` = unlimited).
    pub lock_limit: Option<u64>,
    /// The process may exceed the limit (`CAP_IPC_LOCK`).
    pub lock_cap: bool,
}

impl Default for AddressSpace {
    fn default() -> AddressSpace {
        AddressSpace {
            ranges: BTreeMap::new(),
            next_phys: 0x1_0000_0000,
            pinned_pages: 0,
            unbalanced_unpins: 0,
            locked_pages: 0,
            lock_limit: None,
            lock_cap: false,
        }
    }
}

fn aligned(x: u64) -> bool {
    x % PAGE_SIZE == 0
}

impl AddressSpace {
    /// Adds a mapping.
    ///
    /// # Errors
    /// `EINVAL`: unaligned, empty or wrapping range; `EEXIST`: overlaps a mapping.
    pub fn map(&mut self, range: VmRange) -> Result<(), Errno> {
        if range.len == 0 || !aligned(range.vaddr) || !aligned(range.len) || !aligned(range.phys) {
            return Err(Errno::EINVAL);
        }
        let last = range
            .vaddr
            .checked_add(range.len - 1)
            .ok_or(Errno::EINVAL)?;
        range.phys.checked_add(range.len - 1).ok_or(Errno::EINVAL)?;
        if let Some((_, r)) = self.ranges.range(..=last).next_back() {
            if r.vaddr.saturating_add(r.len - 1) >= range.vaddr {
                return Err(Errno::EEXIST);
            }
        }
        self.ranges.insert(range.vaddr, range);
        Ok(())
    }

    /// Allocates `len` bytes of fresh physical RAM (2 MiB aligned, so large IOMMU pages
    /// can be used) and maps it at `vaddr`. Returns the physical address.
    ///
    /// # Errors
    /// As [`AddressSpace::map`]; `ENOMEM` when physical addresses run out.
    pub fn alloc(&mut self, vaddr: u64, len: u64, backing: Backing) -> Result<u64, Errno> {
        let phys = self.next_phys;
        let next = phys
            .checked_add(len)
            .and_then(|e| e.checked_add((2 << 20) - 1))
            .map(|e| e & !((2 << 20) - 1))
            .ok_or(Errno::ENOMEM)?;
        self.map(VmRange {
            vaddr,
            len,
            phys,
            backing,
        })?;
        self.next_phys = next;
        Ok(phys)
    }

    /// Removes the mapping that starts at `vaddr`; returns it.
    pub fn unmap(&mut self, vaddr: u64) -> Option<VmRange> {
        self.ranges.remove(&vaddr)
    }

    /// The mapping containing `vaddr`.
    pub fn find(&self, vaddr: u64) -> Option<VmRange> {
        let (_, r) = self.ranges.range(..=vaddr).next_back()?;
        (vaddr - r.vaddr < r.len).then_some(*r)
    }

    /// Translates `vaddr` to a physical address and its backing.
    pub fn translate(&self, vaddr: u64) -> Option<(u64, Backing)> {
        let r = self.find(vaddr)?;
        Some((r.phys.checked_add(vaddr - r.vaddr)?, r.backing))
    }

    /// Every mapping, in ascending address order.
    pub fn ranges(&self) -> impl Iterator<Item = VmRange> + '_ {
        self.ranges.values().copied()
    }

    /// `HostMemory::pin`: the longest physically contiguous run of one kind from `vaddr`.
    ///
    /// # Errors
    /// `EINVAL`: unaligned or empty; `EFAULT`: `vaddr` unbacked, or read-only and `write`.
    pub fn pin(&mut self, vaddr: u64, len: u64, write: bool) -> Result<PinnedRun, Errno> {
        if len == 0 || !aligned(vaddr) || !aligned(len) {
            return Err(Errno::EINVAL);
        }
        let first = self.find(vaddr).ok_or(Errno::EFAULT)?;
        let usable = |b: Backing| !(write && b == Backing::ReadOnlyRam);
        if !usable(first.backing) {
            return Err(Errno::EFAULT);
        }
        let kind = first.backing.kind();
        let phys = first.phys + (vaddr - first.vaddr);
        let mut run = (first.len - (vaddr - first.vaddr)).min(len);
        while run < len {
            let Some(next_v) = vaddr.checked_add(run) else {
                break;
            };
            let Some(r) = self.find(next_v) else { break };
            let expect = phys.checked_add(run);
            if r.vaddr != next_v
                || r.backing.kind() != kind
                || !usable(r.backing)
                || Some(r.phys) != expect
            {
                break;
            }
            run = run.saturating_add(r.len).min(len);
        }
        if kind == MemoryKind::Ram {
            self.pinned_pages = self.pinned_pages.saturating_add(run / PAGE_SIZE);
        }
        Ok(PinnedRun {
            phys,
            len: run,
            kind,
        })
    }

    fn phys_is_mmio(&self, phys: u64) -> bool {
        self.ranges
            .values()
            .any(|r| r.backing == Backing::Mmio && phys >= r.phys && phys - r.phys < r.len)
    }

    /// `HostMemory::unpin`: releases a RAM pin (MMIO runs were never counted).
    pub fn unpin(&mut self, phys: u64, len: u64) {
        if self.phys_is_mmio(phys) {
            return;
        }
        let pages = len / PAGE_SIZE;
        if pages > self.pinned_pages {
            self.unbalanced_unpins = self.unbalanced_unpins.saturating_add(1);
        }
        self.pinned_pages = self.pinned_pages.saturating_sub(pages);
    }

    /// `HostMemory::charge`: adds (or, negative, releases) locked pages, saturating at 0.
    pub fn charge(&mut self, pages: i64) {
        if pages >= 0 {
            self.locked_pages = self.locked_pages.saturating_add(pages.unsigned_abs());
        } else {
            self.locked_pages = self.locked_pages.saturating_sub(pages.unsigned_abs());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{PhysMemory, PAGE_SIZE};

    #[test]
    fn page_chunked_copies_match_bytewise_semantics() {
        let mut m = PhysMemory::default();
        let data: Vec<u8> = (0..3 * PAGE_SIZE as usize + 7)
            .map(|i| i as u8 | 1)
            .collect();
        m.write(PAGE_SIZE - 5, &data);
        assert_eq!(m.touched_pages(), 5);
        let mut back = vec![0u8; data.len() + 10];
        m.read(PAGE_SIZE - 10, &mut back);
        assert_eq!(&back[..5], &[0; 5]);
        assert_eq!(&back[5..5 + data.len()], &data[..]);
        assert_eq!(&back[5 + data.len()..], &[0; 5]);
        // Past 2^64: writes drop the excess, reads return zeros.
        m.write(u64::MAX - 1, &[0xaa, 0xbb, 0xcc, 0xdd]);
        let mut top = [0xffu8; 4];
        m.read(u64::MAX - 1, &mut top);
        assert_eq!(top, [0xaa, 0xbb, 0, 0]);
    }
}
