//! Cost of config-space virtualization (spec/03 §3): a user dword read / write through
//! [`PciDriver::read_config`] / [`PciDriver::write_config`] against the raw
//! [`PciAccess`] call on the same in-memory function, in the same run.
//!
//! The function is the LSI SAS2008 corpus image (PM, PCIe v2, 64-bit MSI, MSI-X, VPD, AER,
//! Power Budgeting), held in a plain 4096-byte array so the raw baseline is one bounds
//! check and a load. Target: at most 25 ns added per access.
//!
//! ```text
//! cargo bench -p vfio-tests --bench config -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! After the criterion groups, a summary table repeats the comparison with a plain
//! `Instant` loop (best of several rounds) and prints the added ns per access and the
//! per-device RAM of the config state.
//!
//! Instruction counts (stable on a loaded machine): `CONFIG_BENCH_PROFILE=<N>` skips
//! criterion and runs, for every register, `N` raw and `N` virtualized accesses, each loop
//! in its own never-inlined function (`profile_raw_read`, `profile_virt_read`, …);
//! `CONFIG_BENCH_ONLY=<read|write>/<register>` restricts it to one register. Run it under
//! `valgrind --tool=callgrind --toggle-collect='*profile_virt_read*'` (or another loop)
//! and divide the collected instructions by `N`:
//!
//! ```text
//! CONFIG_BENCH_PROFILE=100000 CONFIG_BENCH_ONLY=read/pcie-devctl \
//!   valgrind --tool=callgrind --toggle-collect='*profile_virt_read*' target/release/deps/config-*
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use vfio_core::errno::ErrorType;
use vfio_core::pci::{ConfigSpace, PciDevice, PciDriver};
use vfio_core::platform::{
    BarIndex, BarKind, BarResource, Bdf, EventSink, MsiKind, PciAccess, ResetMethod, Width,
};
use vfio_core::vfio::BusDriver;
use vfio_core::Errno;

const IMAGE: &[u8] = include_bytes!("../../platforms/sim/devices/1000-0072-sas2008.bin");

const BDF: Bdf = Bdf {
    segment: 0,
    bus: 1,
    device: 0,
    function: 0,
};

/// Dword reads: (name, offset). Header IDs (fully virtual), Command/Status (merged),
/// PCIe Device Control/Status (merged), MSI address (fully virtual), MSI-X header (direct
/// read), MSI-X Table offset (direct read).
const READS: &[(&str, u16)] = &[
    ("header-ids", 0x00),
    ("header-command", 0x04),
    ("pcie-devctl", 0x70),
    ("msi-address", 0xAC),
    ("msix-header", 0xC0),
    ("msix-table", 0xC4),
];

/// Dword writes without side effects that change the benchmark: the interrupt line
/// register dword (virtual scratch + read-only bytes), the MSI address (virtual), PCIe
/// Device Control/Status with the value read at open (hardware read-modify-write, no
/// MaxReadReq change, no FLR), a raw gap dword.
const WRITES: &[(&str, u16)] = &[
    ("header-intline", 0x3C),
    ("msi-address", 0xAC),
    ("pcie-devctl", 0x70),
    ("raw-gap", 0x40),
];

/// A function's config space in a plain array, BARs unassigned.
struct Mem {
    cfg: [u8; 4096],
}

impl ErrorType for Mem {
    type Error = Errno;
}

impl PciAccess for Mem {
    fn config_size(&mut self, _: Bdf) -> Result<u16, Errno> {
        Ok(4096)
    }
    fn config_read(&mut self, _: Bdf, offset: u16, width: Width) -> Result<u32, Errno> {
        let at = usize::from(offset);
        match width {
            Width::Byte => self.cfg.get(at).map(|b| u32::from(*b)),
            Width::Word => self
                .cfg
                .get(at..at + 2)
                .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]]))),
            Width::Dword => self
                .cfg
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        }
        .ok_or(Errno::EINVAL)
    }
    fn config_write(&mut self, _: Bdf, offset: u16, width: Width, value: u32) -> Result<(), Errno> {
        let at = usize::from(offset);
        let n = width.bytes();
        let bytes = self.cfg.get_mut(at..at + n).ok_or(Errno::EINVAL)?;
        bytes.copy_from_slice(&value.to_le_bytes()[..n]);
        Ok(())
    }
    fn bar_resource(&mut self, _: Bdf, _: BarIndex) -> Result<BarResource, Errno> {
        Ok(BarResource {
            kind: BarKind::Mem32,
            prefetch: false,
            start: 0,
            size: 0,
        })
    }
    fn rom_size(&mut self, _: Bdf) -> Result<u64, Errno> {
        Ok(0)
    }
    fn bar_read(&mut self, _: Bdf, _: BarIndex, _: u64, _: &mut [u8]) -> Result<(), Errno> {
        Err(Errno::EINVAL)
    }
    fn bar_write(&mut self, _: Bdf, _: BarIndex, _: u64, _: &[u8]) -> Result<(), Errno> {
        Err(Errno::EINVAL)
    }
    fn rom_read(&mut self, _: Bdf, _: u64, _: &mut [u8]) -> Result<(), Errno> {
        Err(Errno::EINVAL)
    }
    fn reset_supported(&mut self, _: Bdf, _: ResetMethod) -> bool {
        false
    }
    fn reset(&mut self, _: Bdf, _: ResetMethod) -> Result<(), Errno> {
        Err(Errno::ENOTTY)
    }
    fn irq_vectors_alloc(&mut self, _: Bdf, _: MsiKind, _: u16) -> Result<u16, Errno> {
        Err(Errno::ENOSPC)
    }
    fn irq_vectors_free(&mut self, _: Bdf) {}
}

/// No events are signalled by config accesses.
struct NoEvents;

impl EventSink for NoEvents {
    type Event = u32;
    fn resolve(&mut self, _: i32) -> Result<u32, Errno> {
        Err(Errno::EBADF)
    }
    fn signal(&self, _: u32) {}
}

type Driver = PciDriver<Mem, NoEvents>;

/// The driver and the open device.
fn open() -> (Driver, PciDevice<u32>) {
    let mut cfg = [0u8; 4096];
    cfg[..IMAGE.len()].copy_from_slice(IMAGE);
    let mut driver = PciDriver::new(Mem { cfg }, NoEvents);
    let mut dev = driver.probe(BDF).expect("probe");
    driver.open_device(&mut dev).expect("open");
    for (name, id) in [("MSI", 0x05), ("MSI-X", 0x11), ("PCIe", 0x10)] {
        assert!(
            dev.config().capabilities().iter().any(|c| c.id == id),
            "the image has no {name} capability"
        );
    }
    (driver, dev)
}

/// The current physical dword at `off` (the value each write benchmark writes back).
fn phys(driver: &mut Driver, off: u16) -> u32 {
    driver
        .access_mut()
        .config_read(BDF, off, Width::Dword)
        .expect("read")
}

fn raw_read(driver: &mut Driver, off: u16) -> u32 {
    driver
        .access_mut()
        .config_read(BDF, black_box(off), Width::Dword)
        .unwrap_or(0)
}

fn virt_read(driver: &mut Driver, dev: &mut PciDevice<u32>, off: u16) -> u32 {
    let mut b = [0u8; 4];
    let _ = driver.read_config(dev, black_box(off), &mut b);
    u32::from_le_bytes(b)
}

fn raw_write(driver: &mut Driver, off: u16, v: u32) {
    let _ = driver
        .access_mut()
        .config_write(BDF, black_box(off), Width::Dword, black_box(v));
}

fn virt_write(driver: &mut Driver, dev: &mut PciDevice<u32>, off: u16, v: u32) {
    let _ = driver.write_config(dev, black_box(off), &black_box(v).to_le_bytes());
}

fn bench_reads(c: &mut Criterion) {
    let (mut driver, mut dev) = open();
    let mut group = c.benchmark_group("config-read-dword");
    for &(name, off) in READS {
        group.bench_function(format!("raw/{name}"), |b| {
            b.iter(|| raw_read(&mut driver, off))
        });
        group.bench_function(format!("virtual/{name}"), |b| {
            b.iter(|| virt_read(&mut driver, &mut dev, off))
        });
    }
    group.finish();
}

fn bench_writes(c: &mut Criterion) {
    let (mut driver, mut dev) = open();
    let mut group = c.benchmark_group("config-write-dword");
    for &(name, off) in WRITES {
        let v = phys(&mut driver, off);
        group.bench_function(format!("raw/{name}"), |b| {
            b.iter(|| raw_write(&mut driver, off, v))
        });
        group.bench_function(format!("virtual/{name}"), |b| {
            b.iter(|| virt_write(&mut driver, &mut dev, off, v))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_reads, bench_writes);

/// Best-of-rounds ns per call of `f`.
fn ns_per_call(mut f: impl FnMut()) -> f64 {
    const CALLS: u32 = 200_000;
    let mut best = Duration::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..CALLS {
            f();
        }
        best = best.min(t.elapsed());
    }
    best.as_secs_f64() * 1e9 / f64::from(CALLS)
}

fn summary() {
    let (mut driver, mut dev) = open();
    println!();
    println!("summary (best of 7 rounds of 200000 calls; target <= 25 ns added per access)");
    println!(
        "{:<7} {:<16} {:>9} {:>9} {:>9}",
        "access", "register", "raw ns", "virt ns", "added"
    );
    let mut worst: f64 = 0.0;
    for &(name, off) in READS {
        let raw = ns_per_call(|| {
            black_box(raw_read(&mut driver, off));
        });
        let virt = ns_per_call(|| {
            black_box(virt_read(&mut driver, &mut dev, off));
        });
        worst = worst.max(virt - raw);
        println!(
            "{:<7} {name:<16} {raw:>9.2} {virt:>9.2} {:>9.2}",
            "read",
            virt - raw
        );
    }
    for &(name, off) in WRITES {
        let v = phys(&mut driver, off);
        let raw = ns_per_call(|| raw_write(&mut driver, off, v));
        let virt = ns_per_call(|| virt_write(&mut driver, &mut dev, off, v));
        worst = worst.max(virt - raw);
        println!(
            "{:<7} {name:<16} {raw:>9.2} {virt:>9.2} {:>9.2}",
            "write",
            virt - raw
        );
    }
    println!("worst added ns per access: {worst:.2}");
    println!(
        "config state: size_of::<ConfigSpace>() = {} bytes (target <= 4608 per open device)",
        core::mem::size_of::<ConfigSpace>()
    );
    println!(
        "whole device: size_of::<PciDevice<u32>>() = {} bytes (config state + the 2048-vector \
         atomic IRQ table + regions; not the config target)",
        core::mem::size_of::<PciDevice<u32>>()
    );
}

#[inline(never)]
fn profile_raw_read(driver: &mut Driver, off: u16, n: u32) {
    for _ in 0..n {
        black_box(raw_read(driver, off));
    }
}

#[inline(never)]
fn profile_virt_read(driver: &mut Driver, dev: &mut PciDevice<u32>, off: u16, n: u32) {
    for _ in 0..n {
        black_box(virt_read(driver, dev, off));
    }
}

#[inline(never)]
fn profile_raw_write(driver: &mut Driver, off: u16, v: u32, n: u32) {
    for _ in 0..n {
        raw_write(driver, off, v);
    }
}

#[inline(never)]
fn profile_virt_write(driver: &mut Driver, dev: &mut PciDevice<u32>, off: u16, v: u32, n: u32) {
    for _ in 0..n {
        virt_write(driver, dev, off, v);
    }
}

/// The `CONFIG_BENCH_PROFILE` mode (see the module documentation).
fn profile(n: u32, only: Option<&str>) {
    let (mut driver, mut dev) = open();
    let wanted = |kind: &str, name: &str| only.is_none_or(|o| o == format!("{kind}/{name}"));
    for &(name, off) in READS {
        if wanted("read", name) {
            profile_raw_read(&mut driver, off, n);
            profile_virt_read(&mut driver, &mut dev, off, n);
        }
    }
    for &(name, off) in WRITES {
        if wanted("write", name) {
            let v = phys(&mut driver, off);
            profile_raw_write(&mut driver, off, v, n);
            profile_virt_write(&mut driver, &mut dev, off, v, n);
        }
    }
}

fn main() {
    if let Some(n) = std::env::var("CONFIG_BENCH_PROFILE")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        profile(n, std::env::var("CONFIG_BENCH_ONLY").ok().as_deref());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
