// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fuzz target: see [`vfio_fuzz::hostile_device`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vfio_fuzz::hostile_device(data);
});
