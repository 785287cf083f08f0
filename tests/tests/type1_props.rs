//! Property tests of the Type1 backend:
//!
//! * a model test: random MAP / UNMAP / UNMAP ALL / VADDR sequences, reaching the top of
//!   the 64-bit address space, against a simple reference model (v1 and v2): every result
//!   and the final set of mappings must agree;
//! * rollback: an IOMMU that fails on its k-th map call; every failed MAP or attach
//!   (replay into a second domain) leaves the backend, the domains and the accounting
//!   exactly as before;
//! * page-size decomposition: [`decompose`] is minimal (brute force on small cases).

use std::collections::BTreeMap;

use proptest::prelude::*;
use vfio_core::errno::ErrorType;
use vfio_core::platform::{
    DomainId, DomainInfo, GroupId, GroupInfo, HostMemory, Iommu, MemoryKind, PinnedRun, Prot,
    ReservedRegion,
};
use vfio_core::type1::{decompose, DmaEntry, DmaMap, MapDma, Type1, Type1Config, UnmapDma};
use vfio_core::{Errno, Result};

const PAGE: u64 = 0x1000;

/// An IOMMU with page tables (page → phys), a 64-bit aperture, two IOMMU "drivers"
/// (group 1 → ops 1, group 2 → ops 2, so they get separate domains) and an optional
/// failure on the k-th map call.
#[derive(Debug, Default, Clone, PartialEq)]
struct TableIommu {
    tables: BTreeMap<DomainId, BTreeMap<u64, u64>>,
    next_domain: DomainId,
    map_calls: u32,
    fail_at: Option<u32>,
}

impl ErrorType for TableIommu {
    type Error = Errno;
}

impl Iommu for TableIommu {
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
    fn domain_alloc(&mut self, group: GroupId) -> Result<DomainInfo> {
        self.next_domain += 1;
        self.tables.insert(self.next_domain, BTreeMap::new());
        Ok(DomainInfo {
            id: self.next_domain,
            ops: group,
            pgsize_bitmap: 0x4020_1000,
            aperture_start: 0,
            aperture_end: u64::MAX,
            enforce_coherency: true,
        })
    }
    fn domain_free(&mut self, domain: DomainId) {
        self.tables.remove(&domain);
    }
    fn attach(&mut self, domain: DomainId, group: GroupId) -> Result<()> {
        // A group only fits a domain of its own driver.
        if domain != 0 && self.tables.contains_key(&domain) && group == 0 {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }
    fn detach(&mut self, _: DomainId, _: GroupId) {}
    fn reserved_region(&self, _: GroupId, _: usize) -> Option<ReservedRegion> {
        None
    }
    fn map(&mut self, domain: DomainId, iova: u64, phys: u64, len: u64, _: Prot) -> Result<()> {
        self.map_calls += 1;
        if self.fail_at == Some(self.map_calls) {
            return Err(Errno::EIO);
        }
        let table = self.tables.get_mut(&domain).ok_or(Errno::EINVAL)?;
        let mut off = 0;
        while off < len {
            table.insert(iova + off, phys + off);
            off += PAGE;
        }
        Ok(())
    }
    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> u64 {
        let Some(table) = self.tables.get_mut(&domain) else {
            return 0;
        };
        let last = iova + (len - 1);
        let keys: Vec<u64> = table.range(iova..=last).map(|(k, _)| *k).collect();
        for k in &keys {
            table.remove(k);
        }
        keys.len() as u64 * PAGE
    }
    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        self.tables
            .get(&domain)?
            .get(&(iova & !(PAGE - 1)))
            .copied()
    }
}

/// Host memory: identity-backed RAM everywhere, with pin/charge counters.
#[derive(Debug, Default, Clone, PartialEq)]
struct Memory {
    locked: i64,
    pinned: i64,
}

impl ErrorType for Memory {
    type Error = Errno;
}

impl HostMemory for Memory {
    fn page_size(&self) -> u64 {
        PAGE
    }
    fn pin(&mut self, vaddr: u64, len: u64, _: bool) -> Result<PinnedRun> {
        // Runs of at most 4 pages, so entries have several physical runs.
        let run = len.min(4 * PAGE);
        self.pinned += run as i64;
        Ok(PinnedRun {
            phys: vaddr ^ 0x5000_0000_0000,
            len: run,
            kind: MemoryKind::Ram,
        })
    }
    fn unpin(&mut self, _: u64, len: u64) {
        self.pinned -= len as i64;
    }
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

#[derive(Debug, Clone)]
enum Op {
    Map { iova: u64, size: u64, vaddr: u64 },
    Unmap { iova: u64, size: u64 },
    UnmapAll,
    Invalidate { iova: u64, size: u64 },
    Revalidate { iova: u64, size: u64, vaddr: u64 },
}

/// IOVAs near 0 and near 2^64 (page aligned, sometimes not).
fn iova() -> impl Strategy<Value = u64> {
    prop_oneof![
        (0u64..48).prop_map(|k| k * PAGE),
        (1u64..48).prop_map(|k| 0u64.wrapping_sub(k * PAGE)),
        Just(0x800),
    ]
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => (1u64..8).prop_map(|p| p * PAGE),
        1 => Just(0u64),
        1 => Just(0x1800u64),
        1 => (1u64..4).prop_map(|p| 0u64.wrapping_sub(p * PAGE)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let vaddr = (0u64..64).prop_map(|k| 0x7f00_0000_0000 + k * PAGE);
    prop_oneof![
        6 => (iova(), size(), vaddr.clone()).prop_map(|(iova, size, vaddr)| Op::Map { iova, size, vaddr }),
        4 => (iova(), size()).prop_map(|(iova, size)| Op::Unmap { iova, size }),
        1 => Just(Op::UnmapAll),
        2 => (iova(), size()).prop_map(|(iova, size)| Op::Invalidate { iova, size }),
        2 => (iova(), size(), vaddr).prop_map(|(iova, size, vaddr)| Op::Revalidate { iova, size, vaddr }),
    ]
}

/// The reference model: entries by iova → (size, vaddr, invalid).
#[derive(Debug, Default)]
struct Model {
    v2: bool,
    entries: BTreeMap<u64, (u64, u64, bool)>,
    limit: usize,
}

fn last_of(iova: u64, size: u64) -> Option<u64> {
    iova.checked_add(size.checked_sub(1)?)
}

impl Model {
    fn overlapping(&self, first: u64, last: u64) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|(&i, &(s, _, _))| i <= last && first <= i + (s - 1))
            .map(|(&i, _)| i)
            .collect()
    }

    fn map(&mut self, iova: u64, size: u64, vaddr: u64, update: bool) -> Result<u64> {
        if size == 0 {
            return Err(Errno::EINVAL);
        }
        let last = last_of(iova, size).ok_or(Errno::EOVERFLOW)?;
        last_of(vaddr, size).ok_or(Errno::EOVERFLOW)?;
        if (iova | size | vaddr) % PAGE != 0 {
            return Err(Errno::EINVAL);
        }
        let found = self.overlapping(iova, last);
        if update {
            let first = *found.first().ok_or(Errno::ENOENT)?;
            let e = self.entries.get_mut(&first).ok_or(Errno::ENOENT)?;
            if !e.2 || first != iova || e.0 != size {
                return Err(Errno::EINVAL);
            }
            e.1 = vaddr;
            e.2 = false;
            return Ok(0);
        }
        if !found.is_empty() {
            return Err(Errno::EEXIST);
        }
        if self.entries.len() >= self.limit {
            return Err(Errno::ENOSPC);
        }
        self.entries.insert(iova, (size, vaddr, false));
        Ok(0)
    }

    fn unmap(&mut self, iova: u64, size: u64, all: bool, vaddr: bool) -> Result<u64> {
        if iova % PAGE != 0 {
            return Err(Errno::EINVAL);
        }
        let (first, last) = if all {
            if iova != 0 || size != 0 {
                return Err(Errno::EINVAL);
            }
            (0, u64::MAX)
        } else {
            if size == 0 || size % PAGE != 0 {
                return Err(Errno::EINVAL);
            }
            (iova, last_of(iova, size).ok_or(Errno::EOVERFLOW)?)
        };
        let hits = self.overlapping(first, last);
        if self.v2 && !all {
            for &i in &hits {
                let end = i + (self.entries[&i].0 - 1);
                if (i < first && end >= first) || (i <= last && end > last) {
                    return Err(Errno::EINVAL);
                }
            }
        }
        if hits.first().is_some_and(|&i| i < first) {
            return Ok(0); // v1: a mapping straddling the start stops the walk
        }
        if vaddr {
            if hits.iter().any(|i| self.entries[i].2) {
                return Err(Errno::EINVAL);
            }
            let mut total = 0;
            for i in hits {
                let e = self.entries.get_mut(&i).expect("hit");
                e.2 = true;
                total += e.0;
            }
            return Ok(total);
        }
        Ok(hits
            .iter()
            .map(|i| self.entries.remove(i).expect("hit").0)
            .sum())
    }
}

fn apply(
    type1: &mut Type1,
    map: &mut DmaMap<'_>,
    iommu: &mut TableIommu,
    memory: &mut Memory,
    op: &Op,
) -> Result<u64> {
    let unmap = |type1: &mut Type1,
                 map: &mut DmaMap<'_>,
                 iommu: &mut TableIommu,
                 memory: &mut Memory,
                 flags,
                 iova,
                 size| {
        type1.unmap_dma(map, iommu, memory, &UnmapDma { flags, iova, size }, None)
    };
    match *op {
        Op::Map { iova, size, vaddr } => {
            let request = MapDma {
                flags: 3,
                vaddr,
                iova,
                size,
            };
            type1.map_dma(map, iommu, memory, &request).map(|()| 0)
        }
        Op::Revalidate { iova, size, vaddr } => {
            let request = MapDma {
                flags: 4,
                vaddr,
                iova,
                size,
            };
            type1.map_dma(map, iommu, memory, &request).map(|()| 0)
        }
        Op::Unmap { iova, size } => unmap(type1, map, iommu, memory, 0, iova, size),
        Op::UnmapAll => unmap(type1, map, iommu, memory, 2, 0, 0),
        Op::Invalidate { iova, size } => unmap(type1, map, iommu, memory, 4, iova, size),
    }
}

fn model_apply(model: &mut Model, op: &Op) -> Result<u64> {
    match *op {
        Op::Map { iova, size, vaddr } => model.map(iova, size, vaddr, false),
        Op::Revalidate { iova, size, vaddr } => model.map(iova, size, vaddr, true),
        Op::Unmap { iova, size } => model.unmap(iova, size, false, false),
        Op::UnmapAll => model.unmap(0, 0, true, false),
        Op::Invalidate { iova, size } => model.unmap(iova, size, false, true),
    }
}

const LIMIT: u32 = 12;

fn open(v2: bool, iommu: &mut TableIommu, memory: &mut Memory, map: &mut DmaMap<'_>) -> Type1 {
    let config = Type1Config {
        dma_entry_limit: LIMIT,
        ..Type1Config::default()
    };
    let mut type1 = Type1::open(if v2 { 3 } else { 1 }, config, PAGE).expect("open");
    type1.attach_group(map, iommu, memory, 1).expect("attach");
    type1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn type1_agrees_with_the_model(v2 in any::<bool>(), ops in prop::collection::vec(op(), 1..60)) {
        let mut storage = vec![DmaEntry::EMPTY; 64];
        let mut map = DmaMap::new(&mut storage);
        let mut iommu = TableIommu::default();
        let mut memory = Memory::default();
        let mut type1 = open(v2, &mut iommu, &mut memory, &mut map);
        let mut model = Model { v2, limit: LIMIT as usize, ..Model::default() };
        for (i, op) in ops.iter().enumerate() {
            let got = apply(&mut type1, &mut map, &mut iommu, &mut memory, op);
            let want = model_apply(&mut model, op);
            prop_assert_eq!(got, want, "step {} {:?}", i, op);
            let have: Vec<(u64, u64, u64, bool)> =
                map.iter().map(|m| (m.iova, m.size, m.vaddr, m.vaddr_invalid)).collect();
            let expect: Vec<(u64, u64, u64, bool)> =
                model.entries.iter().map(|(&i, &(s, v, inv))| (i, s, v, inv)).collect();
            prop_assert_eq!(have, expect, "mappings after step {} {:?}", i, op);
            prop_assert_eq!(type1.dma_avail() as usize, LIMIT as usize - model.entries.len());
            // Every mapped page is charged and present in the domain.
            let pages: u64 = model.entries.values().map(|e| e.0 / PAGE).sum();
            prop_assert_eq!(memory.locked, pages as i64);
            let mapped: usize = iommu.tables.values().map(BTreeMap::len).sum();
            prop_assert_eq!(mapped as u64, pages);
        }
    }

    #[test]
    fn failures_roll_back_exactly(
        ops in prop::collection::vec(op(), 1..20),
        fail_map in 1u32..12,
        fail_attach in 1u32..12,
    ) {
        let mut storage = vec![DmaEntry::EMPTY; 64];
        let mut map = DmaMap::new(&mut storage);
        let mut iommu = TableIommu::default();
        let mut memory = Memory::default();
        let mut type1 = open(true, &mut iommu, &mut memory, &mut map);
        for op in &ops {
            let _ = apply(&mut type1, &mut map, &mut iommu, &mut memory, op);
        }
        // Re-validate every vaddr so the attach is not refused with EBUSY.
        let invalid: Vec<(u64, u64)> = map.iter().filter(|m| m.vaddr_invalid).map(|m| (m.iova, m.size)).collect();
        for (iova, size) in invalid {
            let r = MapDma { flags: 4, vaddr: 0x7f00_0000_0000, iova, size };
            type1.map_dma(&mut map, &mut iommu, &mut memory, &r).expect("revalidate");
        }
        // A second domain (another IOMMU driver) with a replay failing on the k-th map.
        let snapshot = |map: &DmaMap<'_>, type1: &Type1| {
            (map.iter().collect::<Vec<_>>(), type1.dma_avail(), type1.domain_count(), type1.pgsize_bitmap())
        };
        let before = (snapshot(&map, &type1), iommu.tables.clone(), memory.clone());
        iommu.map_calls = 0;
        iommu.fail_at = Some(fail_attach);
        let r = type1.attach_group(&mut map, &mut iommu, &mut memory, 2);
        iommu.fail_at = None;
        if r.is_err() {
            prop_assert_eq!(&before, &(snapshot(&map, &type1), iommu.tables.clone(), memory.clone()));
        } else {
            prop_assert_eq!(type1.domain_count(), 2);
        }
        // A MAP failing on its k-th platform call (runs of 4 pages × every domain).
        let before = (snapshot(&map, &type1), iommu.tables.clone(), memory.clone());
        iommu.map_calls = 0;
        iommu.fail_at = Some(fail_map);
        let request = MapDma { flags: 3, vaddr: 0x7f10_0000_0000, iova: 0x4000_0000, size: 40 * PAGE };
        let r = type1.map_dma(&mut map, &mut iommu, &mut memory, &request);
        iommu.fail_at = None;
        if r.is_err() {
            prop_assert_eq!(&before, &(snapshot(&map, &type1), iommu.tables.clone(), memory.clone()));
        }
        // Teardown releases everything.
        type1.release(&mut map, &mut iommu, &mut memory);
        prop_assert_eq!(memory.locked, 0);
        prop_assert_eq!(memory.pinned, 0);
        prop_assert!(iommu.tables.is_empty());
    }

    #[test]
    fn decomposition_is_minimal(
        iova_pages in 0u64..64,
        phys_pages in 0u64..64,
        pages in 1u64..64,
        sizes in prop::sample::subsequence(vec![12u32, 13, 14, 15, 16, 17], 1..6),
    ) {
        let bitmap = sizes.iter().fold(0u64, |b, s| b | 1 << s);
        let (iova, phys, len) = (iova_pages * PAGE, phys_pages * PAGE, pages * PAGE);
        let chunks: Vec<_> = decompose(iova, phys, len, bitmap).collect();
        // Brute force: fewest chunks by dynamic programming over the offset.
        let n = pages as usize;
        let mut best = vec![usize::MAX; n + 1];
        best[n] = 0;
        for at in (0..n).rev() {
            for &s in &sizes {
                let p = 1usize << (s - 12);
                let (i, ph) = (iova + at as u64 * PAGE, phys + at as u64 * PAGE);
                if at + p <= n && i % (1 << s) == 0 && ph % (1 << s) == 0 && best[at + p] != usize::MAX {
                    best[at] = best[at].min(best[at + p] + 1);
                }
            }
        }
        if best[0] == usize::MAX {
            // No exact cover: the decomposition must stop short.
            prop_assert!(chunks.iter().map(|c| c.2).sum::<u64>() < len);
        } else {
            prop_assert_eq!(chunks.len(), best[0]);
            let mut at = iova;
            for &(i, p, s) in &chunks {
                prop_assert_eq!(i, at);
                prop_assert_eq!(p - phys, i - iova);
                prop_assert!(bitmap & s != 0 && i % s == 0 && p % s == 0);
                at += s;
            }
            prop_assert_eq!(at, iova + len);
        }
    }
}
