// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fuzz target: arbitrary bytes as a `VFIO_DEVICE_SET_IRQS` header plus the
//! device's `num_irqs`/`max_irq_type`, checked by [`vfio_fuzz::irq_set_header`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vfio_fuzz::irq_set_header(data);
});
