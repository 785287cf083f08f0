//! Exact locked-memory accounting (`Type1Config::exact_accounting`, an extension): the same
//! host page pinned by several entries of a container is charged once. Unit cases for
//! both modes, and a property test against a model of per-page reference counts with a
//! locked-memory limit and IOMMU failures (every failed MAP leaves everything unchanged).

use std::collections::BTreeMap;

use proptest::prelude::*;
use vfio_core::errno::ErrorType;
use vfio_core::platform::{
    DomainId, DomainInfo, GroupId, GroupInfo, HostMemory, Iommu, MemoryKind, PinnedRun, Prot,
    ReservedRegion,
};
use vfio_core::type1::{ChargeRun, DmaEntry, DmaMap, MapDma, Type1, Type1Config, UnmapDma};
use vfio_core::{Errno, Result};

const PAGE: u64 = 0x1000;
/// Host pages `[0, MMIO_PAGE)` of the test address space are RAM, the rest device memory.
const MMIO_PAGE: u64 = 24;
const VBASE: u64 = 0x7f00_0000_0000;
const PBASE: u64 = 0x1_0000_0000;

/// One domain's page table; the `fail_at`-th map call fails.
#[derive(Debug, Default)]
struct TableIommu {
    tables: BTreeMap<DomainId, BTreeMap<u64, u64>>,
    next: DomainId,
    calls: u32,
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
        self.next += 1;
        self.tables.insert(self.next, BTreeMap::new());
        Ok(DomainInfo {
            id: self.next,
            ops: group,
            pgsize_bitmap: PAGE,
            aperture_start: 0,
            aperture_end: u64::MAX,
            enforce_coherency: true,
        })
    }
    fn domain_free(&mut self, domain: DomainId) {
        self.tables.remove(&domain);
    }
    fn attach(&mut self, _: DomainId, _: GroupId) -> Result<()> {
        Ok(())
    }
    fn detach(&mut self, _: DomainId, _: GroupId) {}
    fn reserved_region(&self, _: GroupId, _: usize) -> Option<ReservedRegion> {
        None
    }
    fn map(&mut self, domain: DomainId, iova: u64, phys: u64, len: u64, _: Prot) -> Result<()> {
        self.calls += 1;
        if self.fail_at == Some(self.calls) {
            return Err(Errno::EIO);
        }
        let table = self.tables.get_mut(&domain).ok_or(Errno::EINVAL)?;
        for k in 0..len / PAGE {
            table.insert(iova + k * PAGE, phys + k * PAGE);
        }
        Ok(())
    }
    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> u64 {
        let Some(table) = self.tables.get_mut(&domain) else {
            return 0;
        };
        let keys: Vec<u64> = table.range(iova..iova + len).map(|(k, _)| *k).collect();
        for k in &keys {
            table.remove(k);
        }
        keys.len() as u64 * PAGE
    }
    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        self.tables.get(&domain)?.get(&iova).copied()
    }
}

/// Host memory: vaddr page k is host page k (RAM below `MMIO_PAGE`), pinned in runs of at
/// most 4 pages that never cross the RAM/MMIO boundary; per-page pin counts.
#[derive(Debug, Default)]
struct Memory {
    locked: i64,
    limit: Option<u64>,
    lock_cap: bool,
    pins: BTreeMap<u64, i64>,
}

impl ErrorType for Memory {
    type Error = Errno;
}

impl HostMemory for Memory {
    fn page_size(&self) -> u64 {
        PAGE
    }
    fn pin(&mut self, vaddr: u64, len: u64, _: bool) -> Result<PinnedRun> {
        let page = (vaddr - VBASE) / PAGE;
        let mut n = (len / PAGE).min(4);
        if page < MMIO_PAGE {
            n = n.min(MMIO_PAGE - page);
        }
        for p in page..page + n {
            *self.pins.entry(p).or_default() += 1;
        }
        Ok(PinnedRun {
            phys: PBASE + page * PAGE,
            len: n * PAGE,
            kind: if page < MMIO_PAGE {
                MemoryKind::Ram
            } else {
                MemoryKind::Mmio
            },
        })
    }
    fn unpin(&mut self, phys: u64, len: u64) {
        let page = (phys - PBASE) / PAGE;
        for p in page..page + len / PAGE {
            let c = self.pins.entry(p).or_default();
            *c -= 1;
            if *c == 0 {
                self.pins.remove(&p);
            }
        }
    }
    fn locked_pages(&self) -> u64 {
        self.locked.max(0) as u64
    }
    fn lock_limit_pages(&self) -> Option<u64> {
        self.limit
    }
    fn lock_cap(&self) -> bool {
        self.lock_cap
    }
    fn charge(&mut self, pages: i64) {
        self.locked += pages;
    }
}

struct Rig {
    type1: Type1,
    iommu: TableIommu,
    memory: Memory,
}

fn rig(map: &mut DmaMap<'_>, exact: bool, limit: Option<u64>) -> Rig {
    let config = Type1Config {
        exact_accounting: exact,
        ..Type1Config::default()
    };
    let mut iommu = TableIommu::default();
    let mut memory = Memory {
        limit,
        ..Memory::default()
    };
    let mut type1 = Type1::open(3, config, PAGE).expect("open");
    type1
        .attach_group(map, &mut iommu, &mut memory, 1)
        .expect("attach");
    Rig {
        type1,
        iommu,
        memory,
    }
}

impl Rig {
    fn map(&mut self, map: &mut DmaMap<'_>, iova: u64, page: u64, pages: u64) -> Result<()> {
        let request = MapDma {
            flags: 3,
            vaddr: VBASE + page * PAGE,
            iova,
            size: pages * PAGE,
        };
        self.type1
            .map_dma(map, &mut self.iommu, &mut self.memory, &request)
    }

    fn unmap(&mut self, map: &mut DmaMap<'_>, iova: u64, pages: u64) -> Result<u64> {
        let request = UnmapDma {
            flags: 0,
            iova,
            size: pages * PAGE,
        };
        self.type1
            .unmap_dma(map, &mut self.iommu, &mut self.memory, &request, None)
    }
}

#[test]
fn same_vaddr_at_two_iovas_is_charged_once_in_exact_mode_only() {
    for exact in [false, true] {
        let mut storage = vec![DmaEntry::EMPTY; 8];
        let mut runs = vec![ChargeRun::EMPTY; 8];
        let mut map = DmaMap::with_accounting(&mut storage, &mut runs);
        let mut r = rig(&mut map, exact, None);
        r.map(&mut map, 0x10_0000, 0, 8).unwrap();
        assert_eq!(r.memory.locked, 8);
        r.map(&mut map, 0x20_0000, 0, 8).unwrap();
        assert_eq!(r.memory.locked, if exact { 8 } else { 16 });
        // Partly overlapping host pages: only the new ones.
        r.map(&mut map, 0x30_0000, 4, 8).unwrap();
        assert_eq!(r.memory.locked, if exact { 12 } else { 24 });
        assert_eq!(r.unmap(&mut map, 0x10_0000, 8), Ok(8 * PAGE));
        assert_eq!(r.memory.locked, if exact { 12 } else { 16 });
        assert_eq!(r.unmap(&mut map, 0x20_0000, 8), Ok(8 * PAGE));
        assert_eq!(r.memory.locked, 8);
        assert_eq!(r.unmap(&mut map, 0x30_0000, 8), Ok(8 * PAGE));
        assert_eq!(r.memory.locked, 0);
        assert!(r.memory.pins.is_empty());
        assert!(map.accounting().unwrap().is_empty());
    }
}

#[test]
fn mmio_is_never_charged_in_exact_mode() {
    let mut storage = vec![DmaEntry::EMPTY; 8];
    let mut runs = vec![ChargeRun::EMPTY; 8];
    let mut map = DmaMap::with_accounting(&mut storage, &mut runs);
    let mut r = rig(&mut map, true, None);
    r.map(&mut map, 0, MMIO_PAGE - 2, 6).unwrap();
    r.map(&mut map, 0x10_0000, MMIO_PAGE - 2, 6).unwrap();
    assert_eq!(r.memory.locked, 2);
    let unmap_all = UnmapDma {
        flags: 2,
        iova: 0,
        size: 0,
    };
    r.type1
        .unmap_dma(&mut map, &mut r.iommu, &mut r.memory, &unmap_all, None)
        .unwrap();
    assert_eq!(r.memory.locked, 0);
    assert!(r.memory.pins.is_empty());
}

#[test]
fn exact_limit_counts_distinct_pages() {
    let mut storage = vec![DmaEntry::EMPTY; 8];
    let mut runs = vec![ChargeRun::EMPTY; 8];
    let mut map = DmaMap::with_accounting(&mut storage, &mut runs);
    let mut r = rig(&mut map, true, Some(10));
    r.map(&mut map, 0x10_0000, 0, 8).unwrap();
    r.map(&mut map, 0x20_0000, 0, 8).unwrap();
    r.map(&mut map, 0x30_0000, 6, 4).unwrap();
    assert_eq!(r.memory.locked, 10);
    assert_eq!(r.map(&mut map, 0x40_0000, 6, 5), Err(Errno::ENOMEM));
    assert_eq!(r.memory.locked, 10);
    assert_eq!(map.len(), 3);
    // lock_cap skips the check but still charges.
    r.memory.lock_cap = true;
    r.map(&mut map, 0x40_0000, 6, 5).unwrap();
    assert_eq!(r.memory.locked, 11);
}

#[test]
fn exact_mode_needs_run_storage_and_full_storage_is_enomem() {
    let mut storage = vec![DmaEntry::EMPTY; 8];
    let mut map = DmaMap::new(&mut storage);
    let mut r = rig(&mut map, false, None);
    r.type1 = Type1::open(
        3,
        Type1Config {
            exact_accounting: true,
            ..Type1Config::default()
        },
        PAGE,
    )
    .unwrap();
    assert_eq!(r.type1.check_storage(&map), Err(Errno::EINVAL));
    assert_eq!(
        r.type1
            .attach_group(&mut map, &mut r.iommu, &mut r.memory, 1),
        Err(Errno::EINVAL)
    );

    let mut storage = vec![DmaEntry::EMPTY; 8];
    let mut runs = vec![ChargeRun::EMPTY; 2];
    let mut map = DmaMap::with_accounting(&mut storage, &mut runs);
    let mut r = rig(&mut map, true, None);
    r.map(&mut map, 0x10_0000, 0, 4).unwrap();
    r.map(&mut map, 0x20_0000, 8, 4).unwrap();
    assert_eq!(r.map(&mut map, 0x30_0000, 16, 4), Err(Errno::ENOMEM));
    assert_eq!(r.memory.locked, 8);
    assert_eq!(r.memory.pins.len(), 8);
    // Same pages again need no slot.
    r.map(&mut map, 0x30_0000, 0, 4).unwrap();
    assert_eq!(r.memory.locked, 8);
}

#[derive(Debug, Clone)]
enum Op {
    Map {
        slot: u64,
        page: u64,
        pages: u64,
        fail: Option<u32>,
    },
    Unmap {
        slot: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..8, 0u64..30, 1u64..10, prop::option::weighted(0.2, 1u32..4))
            .prop_map(|(slot, page, pages, fail)| Op::Map { slot, page, pages, fail }),
        2 => (0u64..8).prop_map(|slot| Op::Unmap { slot }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn exact_accounting_matches_a_page_refcount_model(
        limit in prop::option::of(4u64..30),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let mut storage = vec![DmaEntry::EMPTY; 16];
        let mut run_storage = vec![ChargeRun::EMPTY; 64];
        let mut map = DmaMap::with_accounting(&mut storage, &mut run_storage);
        let mut r = rig(&mut map, true, limit);
        // Model: slot → (first page, pages); host page → references.
        let mut entries: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut refs: BTreeMap<u64, u64> = BTreeMap::new();
        for op in &ops {
            match *op {
                Op::Map { slot, page, pages, fail } => {
                    let iova = slot << 20;
                    r.iommu.calls = 0;
                    r.iommu.fail_at = fail;
                    let got = r.map(&mut map, iova, page, pages);
                    r.iommu.fail_at = None;
                    // Expected: per pin run (≤ 4 pages, split at MMIO), limit then map.
                    let want = if entries.contains_key(&slot) {
                        Err(Errno::EEXIST)
                    } else {
                        let locked = refs.len() as u64;
                        let mut fresh_total = 0;
                        let mut p = page;
                        let mut call = 0;
                        let mut outcome = Ok(());
                        while p < page + pages {
                            let mut n = (page + pages - p).min(4);
                            if p < MMIO_PAGE {
                                n = n.min(MMIO_PAGE - p);
                            }
                            if p < MMIO_PAGE {
                                fresh_total += (p..p + n).filter(|q| !refs.contains_key(q)).count() as u64;
                                if limit.is_some_and(|l| locked + fresh_total > l) {
                                    outcome = Err(Errno::ENOMEM);
                                    break;
                                }
                            }
                            call += 1;
                            if fail == Some(call) {
                                outcome = Err(Errno::EIO);
                                break;
                            }
                            p += n;
                        }
                        outcome
                    };
                    prop_assert_eq!(got, want);
                    if got.is_ok() {
                        entries.insert(slot, (page, pages));
                        for q in page..page + pages {
                            if q < MMIO_PAGE {
                                *refs.entry(q).or_default() += 1;
                            }
                        }
                    }
                }
                Op::Unmap { slot } => {
                    let got = r.unmap(&mut map, slot << 20, entries.get(&slot).map_or(1, |e| e.1));
                    if let Some((page, pages)) = entries.remove(&slot) {
                        prop_assert_eq!(got, Ok(pages * PAGE));
                        for q in page..page + pages {
                            if q < MMIO_PAGE {
                                let c = refs.get_mut(&q).unwrap();
                                *c -= 1;
                                if *c == 0 {
                                    refs.remove(&q);
                                }
                            }
                        }
                    } else {
                        prop_assert_eq!(got, Ok(0));
                    }
                }
            }
            prop_assert_eq!(r.memory.locked, refs.len() as i64);
            let runs = map.accounting().unwrap();
            for q in 0..MMIO_PAGE {
                prop_assert_eq!(runs.refs(PBASE + q * PAGE), refs.get(&q).copied().unwrap_or(0));
            }
            let mut pins: BTreeMap<u64, i64> = BTreeMap::new();
            for &(page, pages) in entries.values() {
                for q in page..page + pages {
                    *pins.entry(q).or_default() += 1;
                }
            }
            prop_assert_eq!(&r.memory.pins, &pins);
        }
        // Teardown releases everything.
        r.type1.release(&mut map, &mut r.iommu, &mut r.memory);
        prop_assert_eq!(r.memory.locked, 0);
        prop_assert!(r.memory.pins.is_empty());
    }
}
