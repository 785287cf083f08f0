//! Criterion bench of the Type1 extent map + rules against the BTreeMap reference tracker
//! (no-op IOMMU and host memory). `cargo bench -p vfio-tests --bench type1`.

#[path = "kit/type1.rs"]
mod kit;

use criterion::{criterion_group, criterion_main, Criterion};
use kit::{Project, Reference, Tracker, Workload};
use vfio_core::type1::DmaEntry;

fn pairs(c: &mut Criterion) {
    let mut storage = vec![DmaEntry::EMPTY; 65535];
    let mut project = Project::new(&mut storage);
    let mut reference = Reference::default();
    for live in [1024usize, 16384, 65535] {
        let trackers: [(&str, &mut dyn Tracker); 2] =
            [("project", &mut project), ("btreemap", &mut reference)];
        for (name, t) in trackers {
            let mut w = Workload::new(live, 7);
            w.fill(t);
            c.bench_function(&format!("{name} map+unmap {live}"), |b| {
                b.iter(|| w.pair(t))
            });
            t.unmap_all().expect("unmap all");
        }
    }
    let w = Workload::new(65535, 9);
    let trackers: [(&str, &mut dyn Tracker); 2] =
        [("project", &mut project), ("btreemap", &mut reference)];
    for (name, t) in trackers {
        c.bench_function(&format!("{name} unmap all 65535"), |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    w.fill(t);
                    let start = std::time::Instant::now();
                    t.unmap_all().expect("unmap all");
                    total += start.elapsed();
                }
                total
            })
        });
    }
}

/// MAP then UNMAP of one 1 GiB + 2 MiB entry on the simulated machine (2 MiB IOMMU
/// pages): the unmap finds the pinned pages through the sim's per-PTE run walk, against
/// the same with the trait's default per-page walk ([`PageWalk`]).
fn large_entry(c: &mut Criterion) {
    use vfio_core::platform::{HostMemory, Iommu};
    use vfio_core::type1::{DmaMap, MapDma, Type1, Type1Config, UnmapDma};
    use vfio_sim::{corpus, Backing, SimMachine};
    use vfio_tests::page_walk::PageWalk;

    const GIB: u64 = 1 << 30;
    const SIZE: u64 = GIB + (2 << 20);
    const VADDR: u64 = 0x7f00_0000_0000;

    fn cycle<I: Iommu, M: HostMemory>(iommu: &mut I, memory: &mut M, m: &SimMachine) {
        let mut storage = [DmaEntry::EMPTY; 4];
        let mut map = DmaMap::new(&mut storage);
        let mut type1 = Type1::open(3, Type1Config::default(), 4096).expect("open");
        type1
            .attach_group(&mut map, iommu, memory, 7)
            .expect("attach");
        let request = MapDma {
            flags: 3,
            vaddr: VADDR,
            iova: 1 << 40,
            size: SIZE,
        };
        type1
            .map_dma(&mut map, iommu, memory, &request)
            .expect("map");
        let unmap = UnmapDma {
            flags: 0,
            iova: 1 << 40,
            size: SIZE,
        };
        let n = type1
            .unmap_dma(&mut map, iommu, memory, &unmap, None)
            .expect("unmap");
        assert_eq!(n, SIZE);
        assert_eq!(m.pinned_pages(), 0);
        type1.release(&mut map, iommu, memory);
    }

    let m = SimMachine::new();
    let f = corpus::load("1000-0072-sas2008.bin").expect("image");
    m.add_function(
        vfio_core::platform::Bdf::parse("0000:03:00.0").expect("bdf"),
        f,
        7,
    )
    .expect("function");
    m.alloc(VADDR, GIB, Backing::Ram).expect("ram");
    m.alloc(VADDR + GIB, 2 << 20, Backing::Ram).expect("ram");
    let mut memory = m.memory();
    let mut iommu = m.iommu();
    iommu.claim_dma_owner(7).expect("claim");
    c.bench_function("map+unmap 1 GiB entry, run walk", |b| {
        b.iter(|| cycle(&mut iommu, &mut memory, &m))
    });
    let mut paged = PageWalk(m.iommu());
    c.bench_function("map+unmap 1 GiB entry, page walk", |b| {
        b.iter(|| cycle(&mut paged, &mut memory, &m))
    });
    iommu.release_dma_owner(7);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = pairs, large_entry
}
criterion_main!(benches);
