// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `set_irqs`: `VFIO_DEVICE_SET_IRQS` headers and payloads on every IRQ index
//! of an open corpus device, through the ABI.

use vfio_core::abi::Arg;
use vfio_core::uapi::{self, ioctl, irq_set_flags};
use vfio_core::vfio::validate_irq_set;
use vfio_core::Errno;
use zerocopy::IntoBytes;

use crate::sim::{
    assign_first, check_clean, check_container, close_freeing_vectors, corpus_functions,
    irq_counts, primary_bdf, single_function_machine, with_registry, Cursor,
};

/// Flag combinations worth trying often (one data type, one action).
const FLAGS: [u32; 9] = [
    irq_set_flags::DATA_NONE | irq_set_flags::ACTION_TRIGGER,
    irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER,
    irq_set_flags::DATA_BOOL | irq_set_flags::ACTION_TRIGGER,
    irq_set_flags::DATA_NONE | irq_set_flags::ACTION_MASK,
    irq_set_flags::DATA_NONE | irq_set_flags::ACTION_UNMASK,
    irq_set_flags::DATA_BOOL | irq_set_flags::ACTION_MASK,
    irq_set_flags::DATA_BOOL | irq_set_flags::ACTION_UNMASK,
    irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_UNMASK,
    irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_MASK,
];

/// Opens the corpus image picked by the first two bytes and issues the
/// SET_IRQS calls encoded in the rest.
///
/// Checks after every call: a header the generic validator refuses is refused
/// with `EINVAL` and nothing changes in the device's IRQ state; a header it
/// accepts is never refused with `EFAULT` when the payload is in the buffer;
/// the device's host vectors never exceed what GET_IRQ_INFO reports; raising
/// every vector of the active index never panics. At the end: closing the
/// device frees every host vector, and the machine is clean.
///
/// # Panics
/// When a check fails.
pub fn set_irqs(data: &[u8]) {
    let functions = corpus_functions();
    if functions.is_empty() {
        return;
    }
    let mut input = Cursor::new(data);
    let (_, function) = &functions[usize::from(input.u16()) % functions.len()];
    let Some(sim) = single_function_machine(function.clone()) else {
        return;
    };
    let events = sim.events();
    with_registry(&sim, |vfio, registered| {
        let Some(handles) = assign_first(vfio, registered) else {
            return;
        };
        let device = handles.device;
        let counts: [u32; 6] = irq_counts(vfio, device);
        let mut steps = 0;
        while !input.is_empty() && steps < 48 {
            steps += 1;
            let index = u32::from(input.u8() % 6);
            let flags = match input.u8() % 8 {
                0 => input.u32(),
                1 => u32::from(input.u8() & 0x3f),
                _ => FLAGS[usize::from(input.u8()) % FLAGS.len()],
            };
            let num = counts[index as usize % counts.len()];
            let (start, count) = match input.u8() % 4 {
                0 => (input.interesting_u32(), input.interesting_u32()),
                1 => (0, 0),
                _ => {
                    let start = u32::from(input.u8()) % num.max(1);
                    (
                        start,
                        1 + u32::from(input.u8()) % num.saturating_sub(start).max(1),
                    )
                }
            };
            let elements = usize::try_from(count.min(96)).unwrap_or(96);
            let mut payload = Vec::new();
            for _ in 0..elements {
                match flags & irq_set_flags::DATA_TYPE_MASK {
                    irq_set_flags::DATA_BOOL => payload.push(input.u8() % 3),
                    _ => {
                        let fd = match input.u8() % 6 {
                            0 => -1,
                            1 => input.u32() as i32,
                            _ => events.create_event(),
                        };
                        payload.extend_from_slice(&fd.to_le_bytes());
                    }
                }
            }
            let argsz = match input.u8() % 8 {
                0 => input.interesting_u32(),
                _ => 20 + payload.len() as u32,
            };
            let header = uapi::IrqSet {
                argsz,
                flags,
                index,
                start,
                count,
            };
            let mut bytes = header.as_bytes().to_vec();
            bytes.extend_from_slice(&payload);
            let vectors_before = sim.function(primary_bdf()).map(|f| f.host_vectors());
            let result = vfio.ioctl(device, ioctl::DEVICE_SET_IRQS, Arg::Buffer(&mut bytes));
            let valid = validate_irq_set(&header, if index < 5 { num } else { 0 }, 5);
            match valid {
                Err(e) => {
                    assert_eq!(result, Err(e), "header {header:?} refused by the validator");
                    let vectors = sim.function(primary_bdf()).map(|f| f.host_vectors());
                    assert_eq!(
                        vectors, vectors_before,
                        "a refused SET_IRQS changed host vectors"
                    );
                }
                Ok(size) if size <= payload.len() => {
                    assert_ne!(result, Err(Errno::EFAULT), "payload present, {header:?}");
                }
                Ok(_) => {
                    assert_eq!(result, Err(Errno::EFAULT), "payload short, {header:?}");
                }
            }
            if let Some(v) = sim.function(primary_bdf()).map(|f| f.host_vectors()) {
                assert!(
                    u32::from(v.msi) <= counts[1].max(1),
                    "MSI vectors {v:?} > {}",
                    counts[1]
                );
                assert!(
                    u32::from(v.msix) <= counts[2],
                    "MSI-X vectors {v:?} > {}",
                    counts[2]
                );
            }
            for vector in 0..8 {
                if let Some(host) = sim.raise_msix(primary_bdf(), vector) {
                    vfio.with_device(device, |driver, state| {
                        driver.msi_fired(state, vfio_core::platform::MsiKind::Msix, host);
                        Ok(())
                    })
                    .expect("device file open");
                }
            }
            check_container(&sim, vfio, handles.container);
        }
        close_freeing_vectors(&sim, vfio, &handles);
    });
    check_clean(&sim);
}
