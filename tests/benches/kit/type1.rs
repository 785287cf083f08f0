//! Shared Type1 benchmark kit: a no-op platform, the project's tracker and a reference
//! tracker with identical rules on `std::collections::BTreeMap` (included by the
//! `bench-type1` binary and the criterion bench).
//!
//! The platform does nothing (every pin is one physically contiguous RAM run, every map
//! succeeds, translations are the identity), so the figures measure the extent map and
//! the Type1 rules, not an IOMMU.

#![allow(dead_code)]

use std::collections::BTreeMap;

use vfio_core::errno::ErrorType;
use vfio_core::platform::{
    DomainId, DomainInfo, GroupId, GroupInfo, HostMemory, Iommu, MemoryKind, PinnedRun, Prot,
    ReservedRegion,
};
use vfio_core::type1::{DmaEntry, DmaMap, MapDma, Type1, Type1Config, UnmapDma};
use vfio_core::{Errno, Result};

/// An IOMMU that accepts everything and translates identically.
#[derive(Debug, Default)]
pub struct NoopIommu;

impl ErrorType for NoopIommu {
    type Error = Errno;
}

impl Iommu for NoopIommu {
    fn group_info(&self, _: GroupId) -> Option<GroupInfo> {
        Some(GroupInfo {
            emulated: false,
            intr_remap: true,
        })
    }
    fn group_viable(&self, _: GroupId) -> bool {
        true
    }
    fn claim_dma_owner(&mut self, _: GroupId) -> Result<()> {
        Ok(())
    }
    fn release_dma_owner(&mut self, _: GroupId) {}
    fn domain_alloc(&mut self, _: GroupId) -> Result<DomainInfo> {
        Ok(DomainInfo {
            id: 1,
            ops: 1,
            pgsize_bitmap: 0x4020_1000,
            aperture_start: 0,
            aperture_end: (1 << 48) - 1,
            enforce_coherency: true,
        })
    }
    fn domain_free(&mut self, _: DomainId) {}
    fn attach(&mut self, _: DomainId, _: GroupId) -> Result<()> {
        Ok(())
    }
    fn detach(&mut self, _: DomainId, _: GroupId) {}
    fn reserved_region(&self, _: GroupId, _: usize) -> Option<ReservedRegion> {
        None
    }
    fn map(&mut self, _: DomainId, _: u64, _: u64, _: u64, _: Prot) -> Result<()> {
        Ok(())
    }
    fn unmap(&mut self, _: DomainId, _: u64, len: u64) -> u64 {
        len
    }
    fn iova_to_phys(&self, _: DomainId, iova: u64) -> Option<u64> {
        Some(iova)
    }
}

/// Host memory where every range is one contiguous RAM run; counts charged pages.
#[derive(Debug, Default)]
pub struct NoopMemory {
    /// Pages currently charged.
    pub locked: i64,
}

impl ErrorType for NoopMemory {
    type Error = Errno;
}

impl HostMemory for NoopMemory {
    fn page_size(&self) -> u64 {
        4096
    }
    fn pin(&mut self, vaddr: u64, len: u64, _: bool) -> Result<PinnedRun> {
        Ok(PinnedRun {
            phys: vaddr,
            len,
            kind: MemoryKind::Ram,
        })
    }
    fn unpin(&mut self, _: u64, _: u64) {}
    fn locked_pages(&self) -> u64 {
        self.locked.max(0) as u64
    }
    fn lock_limit_pages(&self) -> Option<u64> {
        None
    }
    fn lock_cap(&self) -> bool {
        false
    }
    fn charge(&mut self, pages: i64) {
        self.locked += pages;
    }
}

/// The operations both trackers offer.
pub trait Tracker {
    /// MAP_DMA of `size` bytes at `iova` from `vaddr`, READ|WRITE.
    fn map(&mut self, iova: u64, vaddr: u64, size: u64) -> Result<()>;
    /// v2 UNMAP_DMA of `[iova, iova + size)`; bytes unmapped.
    fn unmap(&mut self, iova: u64, size: u64) -> Result<u64>;
    /// UNMAP ALL; bytes unmapped.
    fn unmap_all(&mut self) -> Result<u64>;
    /// The IOVA of the mapping covering `iova`.
    fn lookup(&self, iova: u64) -> Option<u64>;
}

/// The project's Type1 (v2) over a [`DmaMap`] in `storage`.
pub struct Project<'s> {
    /// The instance.
    pub type1: Type1,
    /// Its extent map.
    pub map: DmaMap<'s>,
    iommu: NoopIommu,
    memory: NoopMemory,
}

impl<'s> Project<'s> {
    /// A v2 container with one group attached, over `storage`.
    pub fn new(storage: &'s mut [DmaEntry]) -> Self {
        let mut map = DmaMap::new(storage);
        let mut iommu = NoopIommu;
        let mut memory = NoopMemory::default();
        let mut type1 = Type1::open(3, Type1Config::default(), 4096).expect("open");
        type1
            .attach_group(&mut map, &mut iommu, &mut memory, 1)
            .expect("attach");
        Project {
            type1,
            map,
            iommu,
            memory,
        }
    }
}

impl Project<'_> {
    /// `VFIO_IOMMU_UNMAP_DMA` with `flags` (0, or 2 for UNMAP ALL), no dirty bitmap.
    fn unmap_dma(&mut self, flags: u32, iova: u64, size: u64) -> Result<u64> {
        let request = UnmapDma { flags, iova, size };
        self.type1.unmap_dma(
            &mut self.map,
            &mut self.iommu,
            &mut self.memory,
            &request,
            None,
        )
    }
}

impl Tracker for Project<'_> {
    fn map(&mut self, iova: u64, vaddr: u64, size: u64) -> Result<()> {
        let request = MapDma {
            flags: 3,
            vaddr,
            iova,
            size,
        };
        self.type1
            .map_dma(&mut self.map, &mut self.iommu, &mut self.memory, &request)
    }
    fn unmap(&mut self, iova: u64, size: u64) -> Result<u64> {
        self.unmap_dma(0, iova, size)
    }
    fn unmap_all(&mut self) -> Result<u64> {
        self.unmap_dma(2, 0, 0)
    }
    fn lookup(&self, iova: u64) -> Option<u64> {
        self.map
            .find(iova)
            .and_then(|id| self.map.get(id))
            .map(|m| m.iova)
    }
}

/// One entry of the reference tracker.
#[derive(Debug, Clone, Copy)]
struct RefEntry {
    size: u64,
    vaddr: u64,
    prot: Prot,
    locked_pages: u64,
    vaddr_invalid: bool,
    iommu_mapped: bool,
}

/// The same Type1 v2 rules written the way a Rust user would, on a `BTreeMap` keyed by
/// IOVA: same checks in the same order, same platform calls.
pub struct Reference {
    map: BTreeMap<u64, RefEntry>,
    avail: u32,
    pgsize: u64,
    valid: Vec<(u64, u64)>,
    iommu: NoopIommu,
    memory: NoopMemory,
}

impl Default for Reference {
    fn default() -> Self {
        Reference {
            map: BTreeMap::new(),
            avail: 65535,
            pgsize: 4096,
            valid: vec![(0, (1 << 48) - 1)],
            iommu: NoopIommu,
            memory: NoopMemory::default(),
        }
    }
}

impl Reference {
    fn overlapping(&self, first: u64, last: u64) -> Option<(u64, RefEntry)> {
        // The entry starting at or below `last` with the highest IOVA, if it reaches `first`.
        let (&iova, &e) = self.map.range(..=last).next_back()?;
        (iova + (e.size - 1) >= first).then_some((iova, e))
    }

    fn remove(&mut self, iova: u64) -> u64 {
        let Some(e) = self.map.remove(&iova) else {
            return 0;
        };
        let mut offset = 0;
        while offset < e.size {
            let _ = self.iommu.iova_to_phys(1, iova + offset);
            offset += 4096;
        }
        self.iommu.unmap(1, iova, e.size);
        self.memory.unpin(iova, e.size);
        self.memory.charge(-(e.locked_pages as i64));
        self.avail += 1;
        e.size
    }
}

impl Tracker for Reference {
    fn map(&mut self, iova: u64, vaddr: u64, size: u64) -> Result<()> {
        if size == 0 {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(size - 1).ok_or(Errno::EOVERFLOW)?;
        vaddr.checked_add(size - 1).ok_or(Errno::EOVERFLOW)?;
        if (iova | vaddr | size) & (self.pgsize - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        if self.overlapping(iova, last).is_some() {
            return Err(Errno::EEXIST);
        }
        if self.avail == 0 {
            return Err(Errno::ENOSPC);
        }
        if !self.valid.iter().any(|&(s, e)| s <= iova && last <= e) {
            return Err(Errno::EINVAL);
        }
        let run = self.memory.pin(vaddr, size, true)?;
        let pages = run.len / 4096;
        self.memory.charge(pages as i64);
        self.iommu.map(
            1,
            iova,
            run.phys,
            run.len,
            Prot::READ | Prot::WRITE | Prot::CACHE,
        )?;
        self.map.insert(
            iova,
            RefEntry {
                size,
                vaddr,
                prot: Prot::READ | Prot::WRITE,
                locked_pages: pages,
                vaddr_invalid: false,
                iommu_mapped: true,
            },
        );
        self.avail -= 1;
        Ok(())
    }

    fn unmap(&mut self, iova: u64, size: u64) -> Result<u64> {
        if iova & (self.pgsize - 1) != 0 || size == 0 || size & (self.pgsize - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(size - 1).ok_or(Errno::EOVERFLOW)?;
        if let Some((start, _)) = self.overlapping(iova, iova) {
            if start != iova {
                return Err(Errno::EINVAL);
            }
        }
        if let Some((start, e)) = self.overlapping(last, last) {
            if start + (e.size - 1) != last {
                return Err(Errno::EINVAL);
            }
        }
        let keys: Vec<u64> = self.map.range(iova..=last).map(|(&k, _)| k).collect();
        let mut total = 0;
        for k in keys {
            total += self.remove(k);
        }
        Ok(total)
    }

    fn unmap_all(&mut self) -> Result<u64> {
        let mut total = 0;
        while let Some((&k, _)) = self.map.iter().next() {
            total += self.remove(k);
        }
        Ok(total)
    }

    fn lookup(&self, iova: u64) -> Option<u64> {
        self.overlapping(iova, iova).map(|(k, _)| k)
    }
}

/// Context for the ratio, not a second baseline: the least work a `BTreeMap` tracker can do
/// per pair under the v2 rules for whole-entry UNMAPs. UNMAP is one `remove` (an exact
/// entry), MAP one predecessor query plus an insert: three descents per pair, against the
/// reference's five and an allocation. It makes no platform call (no pin, map, page walk
/// or accounting) and skips the valid-range check, so it is a floor for B-tree trackers,
/// not an implementation of Type1.
#[derive(Debug)]
pub struct LeanBTreeMap {
    map: BTreeMap<u64, (u64, u64)>,
    avail: u32,
}

impl Default for LeanBTreeMap {
    fn default() -> Self {
        LeanBTreeMap {
            map: BTreeMap::new(),
            avail: 65535,
        }
    }
}

impl Tracker for LeanBTreeMap {
    fn map(&mut self, iova: u64, vaddr: u64, size: u64) -> Result<()> {
        if size == 0 || (iova | vaddr | size) & 0xfff != 0 {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(size - 1).ok_or(Errno::EOVERFLOW)?;
        if let Some((&k, &(s, _))) = self.map.range(..=last).next_back() {
            if k + (s - 1) >= iova {
                return Err(Errno::EEXIST);
            }
        }
        if self.avail == 0 {
            return Err(Errno::ENOSPC);
        }
        self.map.insert(iova, (size, vaddr));
        self.avail -= 1;
        Ok(())
    }

    fn unmap(&mut self, iova: u64, size: u64) -> Result<u64> {
        match self.map.remove(&iova) {
            Some((s, _)) if s == size => {
                self.avail += 1;
                Ok(s)
            }
            Some(e) => {
                self.map.insert(iova, e);
                Err(Errno::EINVAL)
            }
            None => Ok(0),
        }
    }

    fn unmap_all(&mut self) -> Result<u64> {
        let bytes = self.map.values().map(|&(s, _)| s).sum();
        self.avail += self.map.len() as u32;
        self.map.clear();
        Ok(bytes)
    }

    fn lookup(&self, iova: u64) -> Option<u64> {
        let (&k, &(s, _)) = self.map.range(..=iova).next_back()?;
        (iova - k < s).then_some(k)
    }
}

/// xorshift64* pseudo-random numbers (deterministic).
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A random-pair workload: `live` mappings of 4 KiB, `2 × live` candidate slots spread
/// over a 2^40-byte IOVA space (disjoint by construction).
pub struct Workload {
    /// IOVAs currently mapped.
    pub live: Vec<u64>,
    /// IOVAs currently free.
    pub free: Vec<u64>,
    rng: Rng,
}

impl Workload {
    /// `live` distinct random 4 KiB slots plus as many spares.
    pub fn new(live: usize, seed: u64) -> Workload {
        let mut rng = Rng(seed | 1);
        let mut slots = std::collections::BTreeSet::new();
        while slots.len() < 2 * live {
            slots.insert((rng.next() % (1 << 28)) << 12);
        }
        let mut all: Vec<u64> = slots.into_iter().collect();
        for i in (1..all.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            all.swap(i, j);
        }
        let free = all.split_off(live);
        Workload {
            live: all,
            free,
            rng,
        }
    }

    /// Maps every live slot into `t`.
    pub fn fill(&self, t: &mut dyn Tracker) {
        for &iova in &self.live {
            t.map(iova, 0x7f00_0000_0000 + iova, 0x1000).expect("fill");
        }
    }

    /// One MAP+UNMAP pair: unmaps a random live slot and maps a random free one.
    pub fn pair(&mut self, t: &mut dyn Tracker) {
        let i = (self.rng.next() % self.live.len() as u64) as usize;
        let j = (self.rng.next() % self.free.len() as u64) as usize;
        let old = self.live[i];
        let new = self.free[j];
        let got = t.unmap(old, 0x1000).expect("unmap");
        debug_assert_eq!(got, 0x1000);
        t.map(new, 0x7f00_0000_0000 + new, 0x1000).expect("map");
        self.live[i] = new;
        self.free[j] = old;
    }

    /// A random IOVA inside a live mapping.
    pub fn probe(&mut self) -> u64 {
        let i = (self.rng.next() % self.live.len() as u64) as usize;
        self.live[i] + (self.rng.next() & 0xfff)
    }
}
