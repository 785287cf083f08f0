//! `bench-type1`: the project's Type1 extent map + rules against a reference tracker with
//! identical rules on `std::collections::BTreeMap`, on the same machine in one run.
//!
//! Run with `cargo run --release -p vfio-tests --bin bench-type1`. Prints one line per
//! figure: ns/op (or ms) for both and the ratio project/BTreeMap. The platform is a no-op
//! IOMMU and host memory, so the figures measure the extent map and the Type1 logic.

#[path = "../../benches/kit/type1.rs"]
mod kit;

use std::hint::black_box;
use std::time::Instant;

use kit::{Project, Reference, Tracker, Workload};
use vfio_core::type1::DmaEntry;

const CAPACITY: usize = 65535;

fn pairs_ns(t: &mut dyn Tracker, live: usize, ops: usize) -> f64 {
    let mut w = Workload::new(live, 0x5eed + live as u64);
    w.fill(t);
    for _ in 0..ops / 10 {
        w.pair(t);
    }
    let start = Instant::now();
    for _ in 0..ops {
        w.pair(t);
    }
    let ns = start.elapsed().as_nanos() as f64 / ops as f64;
    t.unmap_all().expect("unmap all");
    ns
}

fn lookup_ns(t: &mut dyn Tracker, live: usize, ops: usize) -> f64 {
    let mut w = Workload::new(live, 0x100c + live as u64);
    w.fill(t);
    let probes: Vec<u64> = (0..ops).map(|_| w.probe()).collect();
    let start = Instant::now();
    let mut hits = 0u64;
    for &p in &probes {
        hits += u64::from(black_box(t.lookup(p)).is_some());
    }
    let ns = start.elapsed().as_nanos() as f64 / ops as f64;
    assert_eq!(hits, ops as u64);
    t.unmap_all().expect("unmap all");
    ns
}

fn unmap_all_ms(t: &mut dyn Tracker, live: usize, rounds: usize) -> f64 {
    let w = Workload::new(live, 0xa11);
    let mut best = f64::MAX;
    for _ in 0..rounds {
        w.fill(t);
        let start = Instant::now();
        let bytes = t.unmap_all().expect("unmap all");
        let ms = start.elapsed().as_secs_f64() * 1e3;
        assert_eq!(bytes, live as u64 * 0x1000);
        best = best.min(ms);
    }
    best
}

fn line(what: &str, unit: &str, project: f64, reference: f64) {
    println!(
        "{what:<44} project {project:>10.1} {unit}  btreemap {reference:>10.1} {unit}  ratio {:.2}",
        project / reference
    );
}

fn main() {
    println!("bench-type1: Type1 v2 rules + extent map; no-op IOMMU and host memory (platform cost excluded)");
    println!(
        "memory: {} bytes per mapping (size_of::<DmaEntry>(), nodes in the embedder slice); capacity {CAPACITY}",
        std::mem::size_of::<DmaEntry>()
    );
    let mut storage = vec![DmaEntry::EMPTY; CAPACITY];
    let mut project = Project::new(&mut storage);
    let mut reference = Reference::default();
    for live in [1024usize, 16384, 65535] {
        let ops = 400_000;
        let p = pairs_ns(&mut project, live, ops);
        let r = pairs_ns(&mut reference, live, ops);
        line(&format!("MAP+UNMAP 4KiB pair, {live} live"), "ns/op", p, r);
    }
    let p = lookup_ns(&mut project, 65535, 1_000_000);
    let r = lookup_ns(&mut reference, 65535, 1_000_000);
    line("lookup covering IOVA, 65535 live", "ns/op", p, r);
    let p = unmap_all_ms(&mut project, 65535, 5);
    let r = unmap_all_ms(&mut reference, 65535, 5);
    line("UNMAP ALL of 65535 (best of 5)", "ms   ", p, r);
}
