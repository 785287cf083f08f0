// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Fuzz harness bodies for vfio-core, shared by the cargo-fuzz targets and the
//! stable `cargo test` smoke run.
//!
//! Each public function takes the raw fuzzer input, drives one piece of the
//! core with it and panics (the fuzzer's crash signal) when an invariant does
//! not hold. They never panic for any other reason: short inputs are
//! zero-padded, and every length is bounded.
#![deny(missing_docs)]

pub mod abi_sequence;
pub mod config_access;
pub mod hostile_device;
pub mod set_irqs;
pub mod sim;
pub mod type1_ops;

pub use abi_sequence::abi_sequence;
pub use config_access::config_access;
pub use hostile_device::hostile_device;
pub use set_irqs::set_irqs;
pub use type1_ops::type1_ops;

use vfio_core::errno::Errno;
use vfio_core::uapi::{irq_set_flags, IrqSet};
use vfio_core::vfio::{validate_irq_set, CapChain};
use zerocopy::FromBytes;

/// Size of the `struct vfio_irq_set` header in bytes.
const IRQ_SET_HEADER: u32 = 20;

/// Input bytes consumed by [`irq_set_header`]: the 20-byte header, then
/// `num_irqs` and `max_irq_type` as little-endian `u32`.
pub const IRQ_SET_INPUT_LEN: usize = 28;

/// Fuzzes `validate_irq_set` with `data` as a `vfio_irq_set` header (bytes
/// 0..20, decoded with zerocopy exactly as the ABI dispatcher does), the
/// index's vector count `num_irqs` (bytes 20..24) and the device's
/// `max_irq_type` (bytes 24..28). Missing bytes read as zero.
///
/// Checks:
/// * the result equals an independent, widened re-statement of the kernel's
///   `vfio_set_irqs_validate_and_prepare` (drivers/vfio/vfio_main.c);
/// * every refusal is `EINVAL`;
/// * on `Ok(data_size)`: `start + count ≤ num_irqs`, `start < num_irqs`,
///   `index < max_irq_type`, exactly one data type is set,
///   `data_size = count × element size` and `data_size ≤ argsz − 20`.
///
/// # Panics
/// When one of the checks fails (that is the bug report).
pub fn irq_set_header(data: &[u8]) {
    let mut input = [0u8; IRQ_SET_INPUT_LEN];
    let used = data.len().min(IRQ_SET_INPUT_LEN);
    input[..used].copy_from_slice(&data[..used]);

    let (hdr, rest) = IrqSet::read_from_prefix(&input).expect("28 bytes hold a 20-byte header");
    let num_irqs = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
    let max_irq_type = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));

    let got = validate_irq_set(&hdr, num_irqs, max_irq_type);
    let want = reference_irq_set(&hdr, num_irqs, max_irq_type);
    assert_eq!(
        got, want,
        "validate_irq_set({hdr:?}, num_irqs={num_irqs}, max_irq_type={max_irq_type})"
    );

    match got {
        Err(e) => assert_eq!(e, Errno::EINVAL, "SET_IRQS refusals are EINVAL"),
        Ok(data_size) => {
            let end = u64::from(hdr.start) + u64::from(hdr.count);
            assert!(end <= u64::from(num_irqs), "start + count > num_irqs");
            assert!(hdr.start < num_irqs, "start ≥ num_irqs");
            assert!(hdr.index < max_irq_type, "index ≥ max_irq_type");
            assert!(hdr.argsz >= IRQ_SET_HEADER, "argsz < header");
            let data_type = hdr.flags & irq_set_flags::DATA_TYPE_MASK;
            assert_eq!(data_type.count_ones(), 1, "not exactly one data type");
            let element = element_size(data_type).expect("one data type bit");
            assert_eq!(
                data_size as u64,
                u64::from(hdr.count) * element,
                "data_size ≠ count × element size"
            );
            assert!(
                data_size as u64 <= u64::from(hdr.argsz - IRQ_SET_HEADER),
                "data_size > argsz − 20"
            );
        }
    }
}

/// Element size in bytes of a single data-type bit; `None` for anything else.
fn element_size(data_type: u32) -> Option<u64> {
    match data_type {
        irq_set_flags::DATA_NONE => Some(0),
        irq_set_flags::DATA_BOOL => Some(1),
        irq_set_flags::DATA_EVENTFD => Some(4),
        _ => None,
    }
}

/// The kernel's header checks, restated in `u64` arithmetic from the C source
/// (`vfio_set_irqs_validate_and_prepare`), in its order.
fn reference_irq_set(hdr: &IrqSet, num_irqs: u32, max_irq_type: u32) -> Result<usize, Errno> {
    let (argsz, flags) = (u64::from(hdr.argsz), hdr.flags);
    let (index, start, count) = (hdr.index, u64::from(hdr.start), u64::from(hdr.count));
    let known = irq_set_flags::DATA_TYPE_MASK | irq_set_flags::ACTION_TYPE_MASK;
    // `hdr->count >= (U32_MAX - hdr->start)`: U32_MAX - start never wraps in C.
    if argsz < u64::from(IRQ_SET_HEADER)
        || index >= max_irq_type
        || count >= u64::from(u32::MAX) - start
        || flags & !known != 0
    {
        return Err(Errno::EINVAL);
    }
    if start >= u64::from(num_irqs) || start + count > u64::from(num_irqs) {
        return Err(Errno::EINVAL);
    }
    let size = element_size(flags & irq_set_flags::DATA_TYPE_MASK).ok_or(Errno::EINVAL)?;
    if size == 0 {
        return Ok(0);
    }
    if argsz - u64::from(IRQ_SET_HEADER) < count * size {
        return Err(Errno::EINVAL);
    }
    Ok((count * size) as usize)
}

/// Largest scratch buffer [`cap_chain`] uses, in bytes.
pub const CAP_SCRATCH_MAX: usize = 1024;

/// Fuzzes `CapChain::add` with a sequence of capabilities read from `data`.
///
/// Layout: bytes 0..2 are the scratch buffer size (little-endian, modulo
/// [`CAP_SCRATCH_MAX`] + 1); then 5 bytes per capability: `id` (u16 LE),
/// `version` (u16 LE) and the payload length (u8, 0..=255). Payload contents
/// are a pattern derived from the capability's position.
///
/// Checks, after every `add`:
/// * success exactly when the header, payload and padding fit the scratch
///   buffer; on `ENOMEM` the chain is unchanged;
/// * the length grows by `round_up(8 + payload, 8)` and stays a multiple of 8;
///
/// and over the finished chain:
/// * every capability starts 8-byte aligned with the right id, version and
///   payload, followed by zero padding;
/// * each `next` link is 8-byte aligned and points at the following
///   capability (strictly forwards), the last one is 0;
/// * following the links from offset 0 visits exactly the added capabilities.
///
/// # Panics
/// When one of the checks fails.
pub fn cap_chain(data: &[u8]) {
    let size_bytes = [
        data.first().copied().unwrap_or(0),
        data.get(1).copied().unwrap_or(0),
    ];
    let scratch_len = usize::from(u16::from_le_bytes(size_bytes)) % (CAP_SCRATCH_MAX + 1);
    // Pre-fill with a non-zero pattern so that missing zero padding shows up.
    let mut scratch = [0xa5u8; CAP_SCRATCH_MAX];
    let mut chain = CapChain::new(&mut scratch[..scratch_len]);

    // (start offset, id, version, payload length, payload seed) of every
    // accepted capability.
    let mut added: Vec<(usize, u16, u16, usize, usize)> = Vec::new();
    let mut payload = [0u8; 255];
    for (n, op) in data.get(2..).unwrap_or(&[]).chunks_exact(5).enumerate() {
        // Payload pattern seed: the input position, so equal lengths differ.
        let id = u16::from_le_bytes([op[0], op[1]]);
        let version = u16::from_le_bytes([op[2], op[3]]);
        let payload_len = usize::from(op[4]);
        fill_payload(&mut payload[..payload_len], n);

        let before = chain.len();
        let padded = (8 + payload_len).div_ceil(8) * 8;
        let result = chain.add(id, version, &payload[..payload_len]);
        if before + padded <= scratch_len {
            assert_eq!(
                result,
                Ok(()),
                "add of {padded} bytes at {before} into {scratch_len}"
            );
            assert_eq!(
                chain.len(),
                before + padded,
                "length grows by the padded size"
            );
            added.push((before, id, version, payload_len, n));
        } else {
            assert_eq!(result, Err(Errno::ENOMEM), "add past the scratch buffer");
            assert_eq!(
                chain.len(),
                before,
                "a refused add leaves the chain unchanged"
            );
        }
        assert_eq!(chain.len() % 8, 0, "chain length is a multiple of 8");
        assert_eq!(chain.is_empty(), added.is_empty());
    }

    let bytes = chain.as_bytes();
    assert_eq!(bytes.len(), chain.len());
    for (i, &(start, id, version, payload_len, seed)) in added.iter().enumerate() {
        assert_eq!(start % 8, 0, "capability {i} starts 8-byte aligned");
        let header = &bytes[start..start + 8];
        assert_eq!(
            u16::from_le_bytes([header[0], header[1]]),
            id,
            "capability {i} id"
        );
        assert_eq!(
            u16::from_le_bytes([header[2], header[3]]),
            version,
            "capability {i} version"
        );
        let next = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        match added.get(i + 1) {
            Some(&(following, ..)) => {
                assert_eq!(next, following, "capability {i} links to the next one");
                assert!(next > start, "links go strictly forwards");
                assert_eq!(next % 8, 0, "link of capability {i} is 8-byte aligned");
            }
            None => assert_eq!(next, 0, "the last capability ends the chain"),
        }
        fill_payload(&mut payload[..payload_len], seed);
        let body_end = start + 8 + payload_len;
        assert_eq!(
            &bytes[start + 8..body_end],
            &payload[..payload_len],
            "payload {i}"
        );
        let padded_end = start + (8 + payload_len).div_ceil(8) * 8;
        assert!(
            bytes[body_end..padded_end].iter().all(|&b| b == 0),
            "padding of capability {i} is zero"
        );
    }

    // Walk the chain the way a user-space reader does.
    let mut visited = 0;
    let mut offset = 0usize;
    while !added.is_empty() {
        assert!(
            visited < added.len(),
            "the chain has a cycle or extra links"
        );
        assert_eq!(
            offset, added[visited].0,
            "walk reaches capability {visited}"
        );
        let next = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().expect("4 bytes"));
        visited += 1;
        if next == 0 {
            break;
        }
        offset = next as usize;
    }
    assert_eq!(visited, added.len(), "the walk visits every capability");
}

/// Writes the payload pattern for seed `n` into `buf`.
fn fill_payload(buf: &mut [u8], n: usize) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = (k as u8).wrapping_mul(31) ^ (n as u8).wrapping_add(0x5a);
    }
}

#[cfg(test)]
mod tests {
    //! Stable smoke tests: replay the checked-in seeds and a deterministic
    //! pseudo-random sweep through the same harness bodies the fuzzer runs.
    use super::*;
    use std::path::Path;

    /// xorshift64*: a tiny deterministic generator (no dependency needed).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Mostly small values, sometimes values near `u32::MAX`, sometimes anything.
        fn interesting_u32(&mut self) -> u32 {
            let r = self.next();
            match r % 8 {
                0..=4 => (r >> 8) as u32 % 40,
                5 => u32::MAX - (r >> 8) as u32 % 40,
                _ => (r >> 32) as u32,
            }
        }
    }

    fn replay(target: &str, run: fn(&[u8])) -> usize {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("seeds")
            .join(target);
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).expect("seed directory") {
            let path = entry.expect("seed entry").path();
            run(&std::fs::read(&path).expect("seed file"));
            count += 1;
        }
        count
    }

    #[test]
    fn irq_set_header_seeds() {
        assert!(replay("irq_set_header", irq_set_header) > 0);
    }

    #[test]
    fn abi_sequence_seeds() {
        assert!(replay("abi_sequence", abi_sequence) > 0);
    }

    #[test]
    fn config_access_seeds() {
        assert!(replay("config_access", config_access) > 0);
    }

    #[test]
    fn type1_ops_seeds() {
        assert!(replay("type1_ops", type1_ops) > 0);
    }

    #[test]
    fn set_irqs_seeds() {
        assert!(replay("set_irqs", set_irqs) > 0);
    }

    #[test]
    fn hostile_device_seeds() {
        assert!(replay("hostile_device", hostile_device) > 0);
    }

    /// Random inputs of up to `max_len` bytes through `run`.
    fn sweep(seed: u64, runs: usize, max_len: usize, run: fn(&[u8])) {
        let mut rng = Rng(seed);
        for _ in 0..runs {
            let len = (rng.next() as usize) % max_len;
            let input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            run(&input);
        }
    }

    #[test]
    fn abi_sequence_sweep() {
        sweep(0x5eed_0001, 300, 600, abi_sequence);
    }

    #[test]
    fn config_access_sweep_every_image() {
        // Each corpus image once, with a random access sequence.
        let mut rng = Rng(0x5eed_0002);
        for image in 0..sim::corpus_functions().len() {
            let mut input = (image as u16).to_le_bytes().to_vec();
            input.extend((0..400).map(|_| rng.next() as u8));
            config_access(&input);
        }
    }

    #[test]
    fn type1_ops_sweep() {
        sweep(0x5eed_0003, 300, 600, type1_ops);
    }

    #[test]
    fn set_irqs_sweep() {
        sweep(0x5eed_0004, 300, 400, set_irqs);
    }

    #[test]
    fn hostile_device_sweep() {
        sweep(0x5eed_0005, 300, 400, hostile_device);
    }

    #[test]
    fn cap_chain_seeds() {
        assert!(replay("cap_chain", cap_chain) > 0);
    }

    #[test]
    fn irq_set_header_sweep_reaches_both_outcomes() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..200_000 {
            let flags = match rng.next() % 4 {
                0 => rng.next() as u32,
                _ => (rng.next() % 0x40) as u32,
            };
            let fields = [
                rng.interesting_u32(),
                flags,
                rng.interesting_u32() % 8,
                rng.interesting_u32(),
                rng.interesting_u32(),
                rng.interesting_u32(),
                rng.interesting_u32() % 8,
            ];
            let mut input = [0u8; IRQ_SET_INPUT_LEN];
            for (chunk, field) in input.chunks_exact_mut(4).zip(fields) {
                chunk.copy_from_slice(&field.to_le_bytes());
            }
            irq_set_header(&input);
            let hdr = IrqSet::read_from_prefix(&input).unwrap().0;
            match validate_irq_set(&hdr, fields[5], fields[6]) {
                Ok(_) => accepted += 1,
                Err(_) => refused += 1,
            }
        }
        assert!(accepted > 1_000, "sweep accepted only {accepted} headers");
        assert!(refused > 1_000, "sweep refused only {refused} headers");
    }

    #[test]
    fn irq_set_header_edges() {
        irq_set_header(&[]);
        irq_set_header(&[0xff; 64]);
        // start = u32::MAX, count = 0: refused by the wrap check.
        let mut input = [0u8; IRQ_SET_INPUT_LEN];
        input[0..4].copy_from_slice(&20u32.to_le_bytes());
        input[4..8].copy_from_slice(&1u32.to_le_bytes());
        input[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        input[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        input[24..28].copy_from_slice(&1u32.to_le_bytes());
        irq_set_header(&input);
    }

    #[test]
    fn cap_chain_sweep() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        for _ in 0..20_000 {
            let ops = (rng.next() % 24) as usize;
            let mut input = Vec::with_capacity(2 + 5 * ops);
            input.extend_from_slice(&((rng.next() % 1100) as u16).to_le_bytes());
            for _ in 0..ops {
                input.extend_from_slice(&(rng.next() as u32).to_le_bytes());
                input.push(match rng.next() % 3 {
                    0 => (rng.next() % 9) as u8,
                    _ => rng.next() as u8,
                });
            }
            cap_chain(&input);
        }
        cap_chain(&[]);
        cap_chain(&[0xff; 3]);
    }
}
