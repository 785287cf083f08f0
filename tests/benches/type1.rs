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
        let mut w = Workload::new(live, 7);
        w.fill(&mut project);
        c.bench_function(&format!("project map+unmap {live}"), |b| {
            b.iter(|| w.pair(&mut project))
        });
        project.unmap_all().expect("unmap all");
        let mut w = Workload::new(live, 7);
        w.fill(&mut reference);
        c.bench_function(&format!("btreemap map+unmap {live}"), |b| {
            b.iter(|| w.pair(&mut reference))
        });
        reference.unmap_all().expect("unmap all");
    }
    let w = Workload::new(65535, 9);
    c.bench_function("project unmap all 65535", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                w.fill(&mut project);
                let start = std::time::Instant::now();
                project.unmap_all().expect("unmap all");
                total += start.elapsed();
            }
            total
        })
    });
    c.bench_function("btreemap unmap all 65535", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                w.fill(&mut reference);
                let start = std::time::Instant::now();
                reference.unmap_all().expect("unmap all");
                total += start.elapsed();
            }
            total
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = pairs
}
criterion_main!(benches);
