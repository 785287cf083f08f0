//! Interrupt entry points race the control plane: threads call `IrqTable::msi_fired`
//! (what a host MSI-X handler does) on every vector while the control thread enables,
//! rewires and disables MSI-X through `SET_IRQS`. No panic, no signal to a descriptor
//! that never held a trigger, nothing delivered once MSI-X is disabled.

mod irq_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use irq_common::{msix_function, CountingSink};
use vfio_core::pci::{IrqTable, PciDevice, PciDriver};
use vfio_core::platform::MsiKind;
use vfio_core::uapi::irq_set_flags;
use vfio_core::vfio::{BusDriver, IrqSetRequest};
use vfio_tests::pci_mock::{MockPci, MOCK_BDF};

type Driver = PciDriver<MockPci, CountingSink, Arc<IrqTable>>;

const EVENTFD_TRIGGER: u32 = irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER;
const NONE_TRIGGER: u32 = irq_set_flags::DATA_NONE | irq_set_flags::ACTION_TRIGGER;

fn req(flags: u32, start: u32, count: u32) -> IrqSetRequest {
    IrqSetRequest {
        flags,
        index: 2,
        start,
        count,
    }
}

fn fds(v: impl IntoIterator<Item = i32>) -> Vec<u8> {
    v.into_iter().flat_map(i32::to_le_bytes).collect()
}

#[test]
fn msi_fired_races_set_irqs() {
    let sink = CountingSink::default();
    let table = Arc::new(IrqTable::new());
    let mut driver: Driver = PciDriver::with_tables(msix_function(), sink.clone());
    let mut dev = PciDevice::with_table(MOCK_BDF, Arc::clone(&table));
    driver.open_device(&mut dev).expect("open");

    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let handlers: Vec<_> = (0..4)
        .map(|t| {
            let (table, sink, stop, delivered) = (
                Arc::clone(&table),
                sink.clone(),
                Arc::clone(&stop),
                Arc::clone(&delivered),
            );
            thread::spawn(move || {
                let mut v: u16 = t * 512;
                while !stop.load(Ordering::Relaxed) {
                    if table.msi_fired(&sink, MsiKind::Msix, v) {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    // A vector outside the table and the wrong kind never deliver.
                    assert!(!table.msi_fired(&sink, MsiKind::Msix, 4000 + v % 8));
                    assert!(!table.msi_fired(&sink, MsiKind::Msi, v));
                    v = (v + 1) % 2048;
                }
            })
        })
        .collect();

    for round in 0..60u32 {
        // Enable all 2048 vectors with descriptors 0..2047 (or 2048..4095 on odd rounds).
        let base = if round % 2 == 0 { 0 } else { 2048 };
        let all = fds((0..2048).map(|i| base + i));
        assert_eq!(
            driver.set_irqs(&mut dev, &req(EVENTFD_TRIGGER, 0, 2048), &all),
            Ok(0)
        );
        // Rewire and clear single vectors while handlers fire.
        for v in (0..2048).step_by(7) {
            let fd = if v % 2 == 0 {
                -1
            } else {
                (v as i32 + 1) % 2048
            };
            assert_eq!(
                driver.set_irqs(&mut dev, &req(EVENTFD_TRIGGER, v, 1), &fds([fd])),
                Ok(0)
            );
        }
        assert_eq!(
            driver.set_irqs(&mut dev, &req(NONE_TRIGGER, 0, 0), &[]),
            Ok(0)
        );
    }
    // Disabled: nothing is delivered any more.
    for v in 0..2048 {
        assert!(!table.msi_fired(&sink, MsiKind::Msix, v));
    }
    stop.store(true, Ordering::Relaxed);
    for h in handlers {
        h.join().expect("handler thread panicked");
    }
    assert_eq!(sink.total(), delivered.load(Ordering::Relaxed));
    assert!(delivered.load(Ordering::Relaxed) > 0, "no interrupt raced");
    let before = sink.total();
    assert!(!driver.msi_fired(&dev, MsiKind::Msix, 0));
    assert_eq!(sink.total(), before);
}
