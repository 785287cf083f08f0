//! The bare-metal HAL's `AtomicEventSink` works as the vfio-pci trigger sink: SET_IRQS
//! stores its slots as tokens in the atomic IRQ table, and the interrupt entry points
//! signal exactly the slot each vector was given, from a `static` shared with the driver.

mod irq_common;

use std::sync::Arc;

use irq_common::msix_function;
use vfio_core::pci::{IrqTable, PciDevice, PciDriver};
use vfio_core::platform::MsiKind;
use vfio_core::uapi::irq_set_flags;
use vfio_core::vfio::{BusDriver, IrqSetRequest};
use vfio_hal_baremetal::AtomicEventSink;
use vfio_tests::pci_mock::{MockPci, MOCK_BDF};

static SINK: AtomicEventSink<16> = AtomicEventSink::new();

type Driver = PciDriver<MockPci, &'static AtomicEventSink<16>, Arc<IrqTable>>;

fn request(flags: u32, start: u32, count: u32) -> IrqSetRequest {
    IrqSetRequest {
        flags,
        index: 2,
        start,
        count,
    }
}

#[test]
fn msix_vectors_signal_their_own_slots() {
    let table = Arc::new(IrqTable::new());
    let mut driver: Driver = PciDriver::with_tables(msix_function(), &SINK);
    let mut dev = PciDevice::with_table(MOCK_BDF, Arc::clone(&table));
    driver.open_device(&mut dev).expect("open");
    let trigger = irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER;
    // Vectors 0..4 get slots 10..14.
    let fds: Vec<u8> = (10..14).flat_map(i32::to_le_bytes).collect();
    assert_eq!(
        driver.set_irqs(&mut dev, &request(trigger, 0, 4), &fds),
        Ok(0)
    );
    for slot in 0..16 {
        SINK.take(slot);
    }
    for (vector, times) in [(0u16, 1u32), (1, 3), (3, 2)] {
        for _ in 0..times {
            assert!(table.msi_fired(&&SINK, MsiKind::Msix, vector));
        }
    }
    assert!(!table.msi_fired(&&SINK, MsiKind::Msix, 4), "no trigger");
    assert!(!table.msi_fired(&&SINK, MsiKind::Msi, 0), "wrong kind");
    let counts: Vec<u32> = (10..14).map(|s| SINK.take(s).unwrap()).collect();
    assert_eq!(counts, [1, 3, 0, 2]);
    // A descriptor beyond the sink's 16 slots is refused like a closed eventfd.
    let bad: Vec<u8> = 16i32.to_le_bytes().to_vec();
    assert!(driver
        .set_irqs(&mut dev, &request(trigger, 4, 1), &bad)
        .is_err());
    // Disabling MSI-X clears the table: nothing is signalled any more.
    let none = irq_set_flags::DATA_NONE | irq_set_flags::ACTION_TRIGGER;
    assert_eq!(driver.set_irqs(&mut dev, &request(none, 0, 0), &[]), Ok(0));
    assert!(!table.msi_fired(&&SINK, MsiKind::Msix, 1));
    assert_eq!(SINK.take(11), Some(0));
}
