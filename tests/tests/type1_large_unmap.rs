//! Unmapping a large entry follows the IOMMU's physically contiguous runs
//! (`Iommu::iova_to_phys_run`), not one translation per 4 KiB page, and still unpins
//! exactly what was pinned (spec/02-type1.md §12.2); the replay into a new domain
//! (§5.1) uses the same query and is covered by the multi-domain proptests.

use std::cell::Cell;

use vfio_core::errno::ErrorType;
use vfio_core::platform::{Bdf, DomainId, Iommu};
use vfio_core::type1::{DmaEntry, DmaMap, MapDma, Type1, Type1Config, UnmapDma};
use vfio_core::Errno;
use vfio_sim::{corpus, Backing, SimIommu, SimMachine};

/// The simulated IOMMU, counting translation queries.
struct Counting {
    inner: SimIommu,
    single: Cell<u64>,
    runs: Cell<u64>,
}

impl ErrorType for Counting {
    type Error = Errno;
}

impl Iommu for Counting {
    vfio_tests::forward_iommu!(inner);
    fn iova_to_phys(&self, d: DomainId, iova: u64) -> Option<u64> {
        self.single.set(self.single.get() + 1);
        self.inner.iova_to_phys(d, iova)
    }
    fn iova_to_phys_run(&self, d: DomainId, iova: u64, max: u64, page: u64) -> Option<(u64, u64)> {
        self.runs.set(self.runs.get() + 1);
        self.inner.iova_to_phys_run(d, iova, max, page)
    }
}

const GIB: u64 = 1 << 30;

#[test]
fn unmapping_a_gib_entry_walks_runs_and_unpins_every_page() {
    let m = SimMachine::new();
    let f = corpus::load("1000-0072-sas2008.bin").expect("image");
    m.add_function(Bdf::parse("0000:03:00.0").unwrap(), f, 7)
        .unwrap();
    // Guest RAM: 1 GiB physically contiguous, then 2 MiB placed elsewhere.
    let vaddr = 0x7f00_0000_0000;
    m.alloc(vaddr, GIB, Backing::Ram).unwrap();
    m.alloc(vaddr + GIB, 2 << 20, Backing::Ram).unwrap();
    let mut iommu = Counting {
        inner: m.iommu(),
        single: Cell::new(0),
        runs: Cell::new(0),
    };
    let mut memory = m.memory();
    let mut storage = [DmaEntry::EMPTY; 8];
    let mut map = DmaMap::new(&mut storage);
    let mut type1 = Type1::open(3, Type1Config::default(), 4096).unwrap();
    iommu.claim_dma_owner(7).unwrap();
    type1
        .attach_group(&mut map, &mut iommu, &mut memory, 7)
        .unwrap();
    let request = MapDma {
        flags: 3,
        vaddr,
        iova: 1 << 40,
        size: GIB + (2 << 20),
    };
    type1
        .map_dma(&mut map, &mut iommu, &mut memory, &request)
        .unwrap();
    let pages = (GIB + (2 << 20)) / 4096;
    assert_eq!(m.pinned_pages(), pages);

    let unmap = UnmapDma {
        flags: 0,
        iova: 1 << 40,
        size: GIB + (2 << 20),
    };
    let (single, runs) = (iommu.single.get(), iommu.runs.get());
    let unmapped = type1
        .unmap_dma(&mut map, &mut iommu, &mut memory, &unmap, None)
        .unwrap();
    assert_eq!(unmapped, GIB + (2 << 20));
    assert_eq!(m.pinned_pages(), 0, "every pinned page released");
    assert_eq!(m.unbalanced_unpins(), 0);
    let queries = (iommu.single.get() - single) + (iommu.runs.get() - runs);
    assert!(
        queries <= 8,
        "{queries} translation queries for {pages} pages (one per contiguous run expected)"
    );
    type1.release(&mut map, &mut iommu, &mut memory);
    iommu.release_dma_owner(7);
}
