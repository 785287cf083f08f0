//! Interrupt-path cost: `msi_fired` → `EventSink::signal` with 2048 MSI-X vectors
//! configured, and `intx_fired` with automasking, each next to a direct call of the same
//! sink. Run: `cargo bench -p vfio-tests --bench irq`.

#[path = "../tests/irq_common/mod.rs"]
mod irq_common;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use irq_common::{msix_function, CountingSink};
use vfio_core::pci::{IrqTable, PciDevice, PciDriver};
use vfio_core::platform::{EventSink, MsiKind};
use vfio_core::uapi::irq_set_flags;
use vfio_core::vfio::{BusDriver, IrqSetRequest};
use vfio_tests::pci_mock::{MockPci, MOCK_BDF};

type Driver = PciDriver<MockPci, CountingSink, Arc<IrqTable>>;

fn set(driver: &mut Driver, dev: &mut PciDevice<u32, Arc<IrqTable>>, index: u32, fds: &[i32]) {
    let data: Vec<u8> = fds.iter().flat_map(|f| f.to_le_bytes()).collect();
    let req = IrqSetRequest {
        flags: irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER,
        index,
        start: 0,
        count: fds.len() as u32,
    };
    assert_eq!(driver.set_irqs(dev, &req, &data), Ok(0));
}

fn bench(c: &mut Criterion) {
    let sink = CountingSink::default();
    let table = Arc::new(IrqTable::new());
    let mut driver: Driver = PciDriver::with_tables(msix_function(), sink.clone());
    let mut dev = PciDevice::with_table(MOCK_BDF, Arc::clone(&table));
    driver.open_device(&mut dev).expect("open");
    let all: Vec<i32> = (0..2048).collect();
    set(&mut driver, &mut dev, 2, &all);

    let mut v: u16 = 0;
    c.bench_function("direct sink.signal", |b| {
        b.iter(|| {
            v = (v + 1) & 2047;
            sink.signal(black_box(u32::from(v)));
        })
    });
    c.bench_function("msi_fired (2048 MSI-X vectors)", |b| {
        b.iter(|| {
            v = (v + 1) & 2047;
            black_box(table.msi_fired(&sink, MsiKind::Msix, black_box(v)))
        })
    });

    // INTx with automask: each iteration fires (automask + signal) and unmasks the table
    // state the way a lock-free handler path sees it (mask step = a no-op "ours").
    let req = IrqSetRequest {
        flags: irq_set_flags::DATA_NONE | irq_set_flags::ACTION_TRIGGER,
        index: 2,
        start: 0,
        count: 0,
    };
    assert_eq!(driver.set_irqs(&mut dev, &req, &[]), Ok(0));
    set(&mut driver, &mut dev, 0, &[5]);
    c.bench_function("intx_fired automask + unmask (IrqTable)", |b| {
        b.iter(|| {
            let taken = table.intx_fired(&sink, || true);
            assert!(taken);
            assert!(!table.intx_fired(&sink, || true));
            driver.intx_unmask(&mut dev);
        })
    });
    c.bench_function("direct sink.signal x1 (INTx reference)", |b| {
        b.iter(|| sink.signal(black_box(5)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
