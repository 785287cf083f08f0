// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Properties of the safety invariants (ARCHITECTURE.md "What must stay true"), on the
//! simulated machine:
//!
//! * a failed operation leaves every object exactly as before;
//! * no unmapped DMA reaches memory (Type1 against a reference model, IOMMU page tables
//!   checked after every call, device DMA probed);
//! * no physical write to a non-writable config bit, across all corpus images.
//!
//! The harness bodies are the fuzz targets' (fuzz/src), so that the fuzzer and these
//! properties check the same thing.

#[allow(dead_code)]
#[path = "prop_support.rs"]
mod support;

use support::sim;

#[allow(dead_code)]
#[path = "../../fuzz/src/config_access.rs"]
mod config_access;

#[allow(dead_code)]
#[path = "../../fuzz/src/type1_ops.rs"]
mod type1_ops;

use proptest::prelude::*;
use vfio_core::abi::Arg;
use vfio_core::uapi::{self, ioctl, irq_set_flags};
use vfio_core::vfio::Fd;
use zerocopy::IntoBytes;

#[derive(Debug, Clone)]
enum Op {
    OpenContainer,
    OpenGroup(u32),
    Close(usize),
    SetContainer(usize, usize),
    UnsetContainer(usize),
    SetIommu(usize, u32),
    GetDeviceFd(usize, usize),
    Map(usize, u32, u64, u64, u64),
    Unmap(usize, u32, u64, u64),
    SetIrqs(usize, u32, u32, u32, u32),
    Info(usize, u32, u32, u32),
    Reset(usize),
    ConfigWrite(usize, u16, u32),
}

fn op() -> impl Strategy<Value = Op> {
    let h = 0usize..10;
    let addr = prop_oneof![
        (0u64..64).prop_map(|p| p << 12),
        Just(u64::MAX - 0xfff),
        Just(0xfee0_0000u64),
        any::<u64>(),
    ];
    prop_oneof![
        Just(Op::OpenContainer),
        (0u32..4).prop_map(Op::OpenGroup),
        h.clone().prop_map(Op::Close),
        (h.clone(), h.clone()).prop_map(|(g, c)| Op::SetContainer(g, c)),
        h.clone().prop_map(Op::UnsetContainer),
        (h.clone(), prop::sample::select(vec![1u32, 3, 8, 9]))
            .prop_map(|(c, t)| Op::SetIommu(c, t)),
        (h.clone(), 0usize..4).prop_map(|(g, n)| Op::GetDeviceFd(g, n)),
        (h.clone(), 0u32..9, addr.clone(), addr.clone(), addr.clone())
            .prop_map(|(c, f, v, i, s)| Op::Map(c, f, v, i, s)),
        (h.clone(), 0u32..9, addr.clone(), addr).prop_map(|(c, f, i, s)| Op::Unmap(c, f, i, s)),
        (h.clone(), 0u32..6, 0u32..0x40, 0u32..4, 0u32..4)
            .prop_map(|(d, i, f, s, c)| Op::SetIrqs(d, i, f, s, c)),
        (
            h.clone(),
            prop::sample::select(vec![
                ioctl::DEVICE_GET_INFO,
                ioctl::DEVICE_GET_REGION_INFO,
                ioctl::DEVICE_GET_IRQ_INFO,
                ioctl::IOMMU_GET_INFO
            ]),
            0u32..40,
            0u32..12
        )
            .prop_map(|(d, r, a, i)| Op::Info(d, r, a, i)),
        h.clone().prop_map(Op::Reset),
        (h, 0u16..0x120, any::<u32>()).prop_map(|(d, o, v)| Op::ConfigWrite(d, o, v)),
    ]
}

const NAMES: [&str; 4] = ["0000:01:00.0", "0000:02:00.0", "0000:03:00.0", "nope"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Every operation that fails leaves every object — registry, IOMMU page tables,
    /// pinned memory, device config space and vectors — exactly as before.
    #[test]
    fn a_failed_operation_changes_nothing(ops in prop::collection::vec(op(), 1..40)) {
        let sim = support::machine();
        let events = sim.events();
        sim::with_registry(&sim, |vfio, _| -> Result<(), TestCaseError> {
            let mut handles: Vec<Fd> = Vec::new();
            let fd = |handles: &[Fd], h: usize| handles.get(h).copied().unwrap_or(Fd::from_raw(-1));
            for op in &ops {
                let before = support::snapshot(&sim, vfio, &handles);
                let result: Result<i64, vfio_core::Errno> = match *op {
                    Op::OpenContainer => vfio.open_container().map(|f| { handles.push(f); 0 }),
                    Op::OpenGroup(g) => vfio.open_group(g).map(|f| { handles.push(f); 0 }),
                    Op::Close(h) => vfio.close(fd(&handles, h)).map(|()| 0),
                    Op::SetContainer(g, c) => {
                        let mut raw = fd(&handles, c).raw().to_le_bytes();
                        vfio.ioctl(fd(&handles, g), ioctl::GROUP_SET_CONTAINER, Arg::Buffer(&mut raw))
                    }
                    Op::UnsetContainer(g) => vfio.ioctl(fd(&handles, g), ioctl::GROUP_UNSET_CONTAINER, Arg::None),
                    Op::SetIommu(c, t) => vfio.ioctl(fd(&handles, c), ioctl::SET_IOMMU, Arg::Value(u64::from(t))),
                    Op::GetDeviceFd(g, n) => {
                        let mut name = NAMES[n].as_bytes().to_vec();
                        name.push(0);
                        vfio.ioctl(fd(&handles, g), ioctl::GROUP_GET_DEVICE_FD, Arg::Buffer(&mut name))
                            .map(|raw| { handles.push(Fd::from_raw(raw as i32)); 0 })
                    }
                    Op::Map(c, flags, vaddr, iova, size) => {
                        let vaddr = if vaddr < 1 << 20 { sim::GUEST_VADDR + vaddr } else { vaddr };
                        let map = uapi::DmaMap { argsz: 32, flags, vaddr, iova, size };
                        let mut bytes = map.as_bytes().to_vec();
                        vfio.ioctl(fd(&handles, c), ioctl::IOMMU_MAP_DMA, Arg::Buffer(&mut bytes))
                    }
                    Op::Unmap(c, flags, iova, size) => {
                        let unmap = uapi::DmaUnmap { argsz: 24, flags: flags & !1, iova, size };
                        let mut bytes = unmap.as_bytes().to_vec();
                        vfio.ioctl(fd(&handles, c), ioctl::IOMMU_UNMAP_DMA, Arg::Buffer(&mut bytes))
                    }
                    Op::SetIrqs(d, index, flags, start, count) => {
                        let header = uapi::IrqSet { argsz: 20 + 4 * count, flags, index, start, count };
                        let mut bytes = header.as_bytes().to_vec();
                        for _ in 0..count {
                            let e = if flags & irq_set_flags::DATA_BOOL != 0 { 1 } else { events.create_event() };
                            bytes.extend_from_slice(&e.to_le_bytes());
                        }
                        vfio.ioctl(fd(&handles, d), ioctl::DEVICE_SET_IRQS, Arg::Buffer(&mut bytes))
                    }
                    Op::Info(d, request, argsz, index) => {
                        let mut bytes = vec![0u8; 256];
                        bytes[0..4].copy_from_slice(&argsz.to_le_bytes());
                        bytes[8..12].copy_from_slice(&index.to_le_bytes());
                        vfio.ioctl(fd(&handles, d), request, Arg::Buffer(&mut bytes))
                    }
                    Op::Reset(d) => vfio.ioctl(fd(&handles, d), ioctl::DEVICE_RESET, Arg::None),
                    Op::ConfigWrite(d, offset, value) => vfio
                        .device_write(fd(&handles, d), config_access::CONFIG_REGION + u64::from(offset), &value.to_le_bytes())
                        .map(|n| n as i64),
                };
                if let Err(e) = result {
                    let after = support::snapshot(&sim, vfio, &handles);
                    prop_assert_eq!(before, after, "{:?} failed with {:?} and changed state", op, e);
                }
            }
            for &f in &handles {
                let _ = vfio.close(f);
            }
            Ok(())
        })?;
        sim::check_clean(&sim);
    }

    /// No unmapped DMA reaches memory: random MAP / UNMAP / UNMAP-ALL / VADDR sequences
    /// against the reference model; after every call the IOMMU translates only modelled
    /// pages and the device reaches exactly the modelled writable pages.
    #[test]
    fn no_unmapped_dma_reaches_memory(input in prop::collection::vec(any::<u8>(), 0..600)) {
        type1_ops::type1_ops(&input);
    }

    /// No physical write to a non-writable bit: random config writes of random widths
    /// and offsets on a random corpus image.
    #[test]
    fn no_physical_write_to_a_non_writable_bit(
        image in any::<u16>(),
        accesses in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut input = image.to_le_bytes().to_vec();
        input.extend_from_slice(&accesses);
        config_access::config_access(&input);
    }
}

/// The permission property on every corpus image (each opened once, with the same
/// pseudo-random access sequence plus all-ones and all-zeros dword writes everywhere).
#[test]
fn no_physical_write_to_a_non_writable_bit_on_every_image() {
    let count = sim::corpus_functions().len();
    assert!(count > 50, "only {count} corpus images load");
    for image in 0..count {
        let mut input = (image as u16).to_le_bytes().to_vec();
        for offset in (0..0x1000u16).step_by(4) {
            for value in [u32::MAX, 0] {
                input.extend_from_slice(&offset.to_le_bytes());
                input.push(3); // 4 bytes
                input.extend_from_slice(&value.to_le_bytes());
                input.push(1); // write
            }
        }
        config_access::config_access(&input);
    }
}
