// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fuzz target: see [`vfio_fuzz::abi_sequence`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vfio_fuzz::abi_sequence(data);
});
