//! `bench-type1`: the project's Type1 extent map + rules against a reference tracker with
//! identical rules on `std::collections::BTreeMap`, on the same machine in one run.
//!
//! Run with `cargo run --release -p vfio-tests --bin bench-type1`. Prints one line per
//! figure: ns/op (or ms) for both and the ratio project/BTreeMap. The platform is a no-op
//! IOMMU and host memory, so the figures measure the extent map and the Type1 logic.
//!
//! Timing on a shared machine is noisy: each figure is measured in several rounds that
//! alternate between the project and the reference, and the best round of each is kept.
//!
//! `bench-type1 profile <project|btreemap> <live> <ops>` fills `live` mappings and runs
//! `ops` pairs in [`run_pairs`] only, for instruction counts under
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*run_pairs*'`.

#[path = "../../benches/kit/type1.rs"]
mod kit;

use std::hint::black_box;
use std::time::Instant;

use kit::{LeanBTreeMap, Project, Reference, Tracker, Workload};
use vfio_core::type1::DmaEntry;

const CAPACITY: usize = 65535;

/// `ops` MAP+UNMAP pairs (not inlined: the callgrind toggle point).
#[inline(never)]
fn run_pairs(t: &mut dyn Tracker, w: &mut Workload, ops: usize) {
    for _ in 0..ops {
        w.pair(t);
    }
}

fn pairs_ns(t: &mut dyn Tracker, live: usize, ops: usize) -> f64 {
    let mut w = Workload::new(live, 0x5eed + live as u64);
    w.fill(t);
    run_pairs(t, &mut w, ops / 10);
    let start = Instant::now();
    run_pairs(t, &mut w, ops);
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

/// Best of `rounds` alternating measurements of `f` on the project and the reference.
fn best_of(
    rounds: usize,
    project: &mut dyn Tracker,
    reference: &mut dyn Tracker,
    mut f: impl FnMut(&mut dyn Tracker) -> f64,
) -> (f64, f64) {
    let (mut p, mut r) = (f64::MAX, f64::MAX);
    for _ in 0..rounds {
        p = p.min(f(project));
        r = r.min(f(reference));
    }
    (p, r)
}

fn profile(args: &[String]) {
    let [which, live, ops] = args else {
        eprintln!("usage: bench-type1 profile <project|btreemap> <live> <ops>");
        std::process::exit(2);
    };
    let live: usize = live.parse().expect("live");
    let ops: usize = ops.parse().expect("ops");
    let mut storage = vec![DmaEntry::EMPTY; CAPACITY];
    let mut project = Project::new(&mut storage);
    let mut reference = Reference::default();
    let t: &mut dyn Tracker = match which.as_str() {
        "project" => &mut project,
        "btreemap" => &mut reference,
        _ => panic!("unknown tracker {which}"),
    };
    let mut w = Workload::new(live, 0x5eed + live as u64);
    w.fill(t);
    run_pairs(t, &mut w, ops);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("profile") {
        return profile(&args[1..]);
    }
    println!("bench-type1: Type1 v2 rules + extent map; no-op IOMMU and host memory (platform cost excluded)");
    println!(
        "memory: {} bytes per mapping (size_of::<DmaEntry>(), nodes in the embedder slice); capacity {CAPACITY}",
        std::mem::size_of::<DmaEntry>()
    );
    let mut storage = vec![DmaEntry::EMPTY; CAPACITY];
    let mut project = Project::new(&mut storage);
    let mut reference = Reference::default();
    const ROUNDS: usize = 5;
    println!("each figure: best of {ROUNDS} alternating rounds (UNMAP ALL: of 3 fills per round)");
    for live in [1024usize, 16384, 65535] {
        let (p, r) = best_of(ROUNDS, &mut project, &mut reference, |t| {
            pairs_ns(t, live, 100_000)
        });
        line(&format!("MAP+UNMAP 4KiB pair, {live} live"), "ns/op", p, r);
    }
    // Context for the 65535-live ratio: the leanest BTreeMap tracker (three descents per
    // pair, no platform work; see `kit::LeanBTreeMap`) against the same reference.
    let mut lean = LeanBTreeMap::default();
    let (l, r) = best_of(ROUNDS, &mut lean, &mut reference, |t| {
        pairs_ns(t, 65535, 100_000)
    });
    println!(
        "{:<44} lean    {l:>10.1} ns/op  btreemap {r:>10.1} ns/op  ratio {:.2}  (context: a B-tree floor, not Type1)",
        "  leanest BTreeMap pair, 65535 live",
        l / r
    );
    let (p, r) = best_of(ROUNDS, &mut project, &mut reference, |t| {
        lookup_ns(t, 65535, 500_000)
    });
    line("lookup covering IOVA, 65535 live", "ns/op", p, r);
    let (p, r) = best_of(ROUNDS, &mut project, &mut reference, |t| {
        unmap_all_ms(t, 65535, 3)
    });
    line("UNMAP ALL of 65535", "ms   ", p, r);
}
