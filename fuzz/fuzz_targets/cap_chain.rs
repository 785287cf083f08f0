// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fuzz target: a `CapChain` built from arbitrary (id, version, payload length)
//! sequences, checked by [`vfio_fuzz::cap_chain`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    vfio_fuzz::cap_chain(data);
});
