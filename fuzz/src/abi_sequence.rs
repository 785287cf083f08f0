// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `abi_sequence`: a sequence of dispatcher calls across container, group and
//! device handles (stale ones included) on a three-group simulated machine.

use vfio_core::abi::Arg;
use vfio_core::platform::Bdf;
use vfio_core::uapi::{self, ioctl};
use vfio_core::vfio::{Fd, FileKind};
use vfio_core::Errno;
use vfio_sim::{Binding, SimMachine};
use zerocopy::IntoBytes;

use crate::sim::{
    check_clean, check_machine, corpus_functions, with_registry, Cursor, GUEST_LEN, GUEST_VADDR,
};

/// Largest buffer one call passes, in bytes.
const MAX_BUFFER: usize = 512;

/// Device names the sequence asks for (the last ones do not exist).
const NAMES: [&str; 6] = [
    "0000:01:00.0",
    "0000:02:00.0",
    "0000:02:00.1",
    "0000:03:00.0",
    "0000:09:00.0",
    "",
];

/// The machine: an NVMe SSD alone in group 1; a GPU (vfio) with its audio
/// function bound to a host driver in group 2 (not viable); a NIC in group 3.
fn machine() -> Option<SimMachine> {
    let sim = SimMachine::new();
    let place = |bdf: &str, file: &str, group| -> Option<()> {
        let bdf = Bdf::parse(bdf)?;
        let function = corpus_functions().iter().find(|(name, _)| name == file)?;
        sim.add_function(bdf, function.1.clone(), group).ok()
    };
    place("0000:01:00.0", "1344-5407-micron-3400-nvme.bin", 1)?;
    place("0000:02:00.0", "10de-0a65-gt218-geforce210.bin", 2)?;
    place("0000:02:00.1", "10de-0be3-gt218-hda.bin", 2)?;
    place("0000:03:00.0", "10ec-8168-rtl8111-8168.bin", 3)?;
    sim.bind_driver(Bdf::parse("0000:02:00.1")?, Binding::Host)
        .ok()?;
    sim.alloc(GUEST_VADDR, GUEST_LEN, vfio_sim::Backing::Ram)
        .ok()?;
    Some(sim)
}

/// Every request number that means something on some kind of file, plus two
/// that mean nothing anywhere.
const REQUESTS: [u32; 20] = [
    ioctl::GET_API_VERSION,
    ioctl::CHECK_EXTENSION,
    ioctl::SET_IOMMU,
    ioctl::GROUP_GET_STATUS,
    ioctl::GROUP_SET_CONTAINER,
    ioctl::GROUP_UNSET_CONTAINER,
    ioctl::GROUP_GET_DEVICE_FD,
    ioctl::DEVICE_GET_INFO,
    ioctl::DEVICE_GET_REGION_INFO,
    ioctl::DEVICE_GET_IRQ_INFO,
    ioctl::DEVICE_SET_IRQS,
    ioctl::DEVICE_RESET,
    ioctl::IOMMU_GET_INFO,
    ioctl::IOMMU_MAP_DMA,
    ioctl::IOMMU_UNMAP_DMA,
    ioctl::DEVICE_IOEVENTFD,
    ioctl::IOMMU_DIRTY_PAGES,
    uapi::vfio_io(21),
    0x3b00,
    0xdead_beef,
];

/// Runs the sequence encoded in `data`. One byte picks the operation; the
/// operands follow.
///
/// Checks, after every call:
/// * a call on a handle this sequence closed (a stale handle) fails with
///   `EBADF` and changes nothing;
/// * group and container requests on the wrong kind of file get the spec's
///   answer (`ENOTTY` on a group; `EINVAL` on a container without backend;
///   `ENOTTY` on a container with one; device: the driver's `ENOTTY`);
/// * `GET_API_VERSION` returns 0 on every container;
/// * the machine-wide invariants of [`check_machine`] (no platform misuse, no
///   IOMMU translation outside a DMA entry);
///
/// and at the end, after every handle was closed: [`check_clean`].
///
/// # Panics
/// When a check fails.
pub fn abi_sequence(data: &[u8]) {
    let Some(sim) = machine() else {
        return;
    };
    let mut input = Cursor::new(data);
    with_registry(&sim, |vfio, registered| {
        let mut open: Vec<Fd> = Vec::new();
        let mut stale: Vec<Fd> = Vec::new();
        let mut ghost: Vec<vfio_core::type1::Mapping> = Vec::new();
        let mut buf = [0u8; MAX_BUFFER];
        let mut steps = 0;
        while !input.is_empty() && steps < 64 {
            steps += 1;
            let op = input.u8();
            let pick = |input: &mut Cursor<'_>, open: &[Fd], stale: &[Fd]| -> Fd {
                let k = usize::from(input.u8());
                match k % 8 {
                    0 if !stale.is_empty() => stale[k / 8 % stale.len()],
                    1 => Fd::from_raw(i32::from(input.u16()) - 2),
                    _ if !open.is_empty() => open[k % open.len()],
                    _ => Fd::from_raw(-1),
                }
            };
            match op % 12 {
                0 => {
                    if let Ok(fd) = vfio.open_container() {
                        open.push(fd);
                    }
                }
                1 => {
                    if let Ok(fd) = vfio.open_group(u32::from(input.u8() % 5)) {
                        open.push(fd);
                    }
                }
                2 => {
                    let fd = pick(&mut input, &open, &stale);
                    let was_open = open.contains(&fd);
                    // A container closed while groups hold it keeps its mappings.
                    if let Ok(entries) = vfio.container_mappings(fd) {
                        ghost.extend(entries);
                    }
                    let result = vfio.close(fd);
                    if was_open {
                        assert_eq!(result, Ok(()), "close of an open handle");
                        open.retain(|&f| f != fd);
                        stale.push(fd);
                    } else if stale.contains(&fd) {
                        assert_eq!(result, Err(Errno::EBADF), "close of a stale handle");
                    }
                }
                3 => {
                    // GROUP_SET_CONTAINER with a container picked like any handle.
                    let group = pick(&mut input, &open, &stale);
                    let container = pick(&mut input, &open, &stale);
                    let mut raw = container.raw().to_le_bytes();
                    let len = usize::from(input.u8() % 5);
                    let _ = call(
                        vfio,
                        &open,
                        &stale,
                        group,
                        ioctl::GROUP_SET_CONTAINER,
                        &mut raw[..len],
                        None,
                    );
                }
                4 => {
                    let group = pick(&mut input, &open, &stale);
                    let name = NAMES[usize::from(input.u8()) % NAMES.len()];
                    let mut bytes = name.as_bytes().to_vec();
                    if !input.one_in(8) {
                        bytes.push(0);
                    }
                    let result = call(
                        vfio,
                        &open,
                        &stale,
                        group,
                        ioctl::GROUP_GET_DEVICE_FD,
                        &mut bytes,
                        None,
                    );
                    if let Ok(raw) = result {
                        let fd = Fd::from_raw(i32::try_from(raw).expect("a descriptor is an i32"));
                        assert_eq!(vfio.file_kind(fd), Ok(FileKind::Device));
                        open.push(fd);
                    }
                }
                5 => {
                    let container = pick(&mut input, &open, &stale);
                    let value = u64::from(input.u8() % 12);
                    let request = if input.one_in(2) {
                        ioctl::SET_IOMMU
                    } else {
                        ioctl::CHECK_EXTENSION
                    };
                    let _ = call(
                        vfio,
                        &open,
                        &stale,
                        container,
                        request,
                        &mut [],
                        Some(value),
                    );
                }
                6 => {
                    let container = pick(&mut input, &open, &stale);
                    let map = uapi::DmaMap {
                        argsz: match input.u8() % 4 {
                            0 => input.u32(),
                            _ => 32,
                        },
                        flags: u32::from(input.u8() % 8),
                        vaddr: match input.u8() % 3 {
                            0 => input.interesting_u64(),
                            _ => GUEST_VADDR + (u64::from(input.u8()) << 12),
                        },
                        iova: input.interesting_u64(),
                        size: input.interesting_u64(),
                    };
                    let len = if input.one_in(16) {
                        usize::from(input.u8() % 40)
                    } else {
                        32
                    };
                    let mut bytes = map.as_bytes().to_vec();
                    bytes.resize(len, 0);
                    let _ = call(
                        vfio,
                        &open,
                        &stale,
                        container,
                        ioctl::IOMMU_MAP_DMA,
                        &mut bytes,
                        None,
                    );
                }
                7 => {
                    let container = pick(&mut input, &open, &stale);
                    let unmap = uapi::DmaUnmap {
                        argsz: match input.u8() % 4 {
                            0 => input.u32(),
                            1 => 48,
                            _ => 24,
                        },
                        flags: u32::from(input.u8() % 8),
                        iova: input.interesting_u64(),
                        size: input.interesting_u64(),
                    };
                    let bitmap = uapi::Bitmap {
                        pgsize: input.interesting_u64(),
                        size: u64::from(input.u8()),
                        data: input.u64(),
                    };
                    let mut bytes = unmap.as_bytes().to_vec();
                    bytes.extend_from_slice(bitmap.as_bytes());
                    bytes.resize(48 + usize::from(input.u8()), 0);
                    let _ = call(
                        vfio,
                        &open,
                        &stale,
                        container,
                        ioctl::IOMMU_UNMAP_DMA,
                        &mut bytes,
                        None,
                    );
                }
                8 => {
                    // An INFO-style request on any handle, with argsz and index fuzzed.
                    let fd = pick(&mut input, &open, &stale);
                    let request = REQUESTS[usize::from(input.u8()) % REQUESTS.len()];
                    let len = usize::from(input.u16()) % MAX_BUFFER;
                    buf.fill(0);
                    buf[0..4].copy_from_slice(&input.interesting_u32().to_le_bytes());
                    buf[4..8].copy_from_slice(&input.interesting_u32().to_le_bytes());
                    buf[8..12].copy_from_slice(&u32::from(input.u8() % 12).to_le_bytes());
                    let _ = call(vfio, &open, &stale, fd, request, &mut buf[..len], None);
                }
                9 => {
                    // SET_IRQS with a header and payload from the input.
                    let fd = pick(&mut input, &open, &stale);
                    let header = uapi::IrqSet {
                        argsz: input.interesting_u32(),
                        flags: match input.u8() % 4 {
                            0 => input.u32(),
                            _ => u32::from(input.u8() & 0x3f),
                        },
                        index: u32::from(input.u8() % 6),
                        start: input.interesting_u32(),
                        count: input.interesting_u32(),
                    };
                    let mut bytes = header.as_bytes().to_vec();
                    let events = sim.events();
                    for _ in 0..input.u8() % 12 {
                        let fd = match input.u8() % 4 {
                            0 => -1,
                            1 => input.u32() as i32,
                            _ => events.create_event(),
                        };
                        bytes.extend_from_slice(&fd.to_le_bytes());
                    }
                    let _ = call(
                        vfio,
                        &open,
                        &stale,
                        fd,
                        ioctl::DEVICE_SET_IRQS,
                        &mut bytes,
                        None,
                    );
                }
                10 => {
                    // Raw bytes to any request on any handle.
                    let fd = pick(&mut input, &open, &stale);
                    let request = match input.u8() % 4 {
                        0 => input.u32(),
                        _ => REQUESTS[usize::from(input.u8()) % REQUESTS.len()],
                    };
                    let len = usize::from(input.u8()) * 2;
                    let mut bytes = input.bytes(len).to_vec();
                    let _ = call(vfio, &open, &stale, fd, request, &mut bytes, None);
                }
                _ => {
                    // Device file read/write anywhere, and host-side events.
                    let fd = pick(&mut input, &open, &stale);
                    let offset = (u64::from(input.u8() % 10) << 40) | u64::from(input.u16());
                    let len = usize::from(input.u8() % 16);
                    let result = if input.one_in(2) {
                        vfio.device_read(fd, offset, &mut buf[..len])
                    } else {
                        let bytes = input.bytes(len).to_vec();
                        vfio.device_write(fd, offset, &bytes)
                    };
                    if stale.contains(&fd) {
                        assert_eq!(result, Err(Errno::EBADF), "read/write on a stale handle");
                    }
                    match input.u8() % 16 {
                        0 => {
                            if let Some(&(_, _, id)) = registered.get(usize::from(input.u8()) % 4) {
                                let _ = vfio.unregister_device(id);
                            }
                        }
                        1 => vfio.advance_time(u64::from(input.u16())),
                        _ => {}
                    }
                }
            }
            let mut entries = all_entries(vfio, &open);
            entries.extend_from_slice(&ghost);
            check_machine(&sim, &entries);
        }
        for fd in open.drain(..) {
            assert_eq!(vfio.close(fd), Ok(()), "closing {fd:?} at the end");
        }
    });
    check_clean(&sim);
}

/// Every DMA entry of every open container.
fn all_entries(vfio: &crate::sim::Registry<'_>, open: &[Fd]) -> Vec<vfio_core::type1::Mapping> {
    open.iter()
        .filter_map(|&fd| vfio.container_mappings(fd).ok())
        .flatten()
        .collect()
}

/// Issues one ioctl and checks the answers that do not depend on the state
/// machine's history.
fn call(
    vfio: &mut crate::sim::Registry<'_>,
    open: &[Fd],
    stale: &[Fd],
    fd: Fd,
    request: u32,
    bytes: &mut [u8],
    value: Option<u64>,
) -> Result<i64, Errno> {
    let kind = vfio.file_kind(fd);
    let has_backend = vfio.type1(fd).ok().flatten().is_some();
    let before = bytes.to_vec();
    let arg = match value {
        Some(v) => Arg::Value(v),
        None => Arg::Buffer(bytes),
    };
    let result = vfio.ioctl(fd, request, arg);
    if stale.contains(&fd) || (kind.is_err() && !open.contains(&fd)) {
        assert_eq!(
            result,
            Err(Errno::EBADF),
            "ioctl {request:#x} on a closed handle"
        );
        assert_eq!(bytes, &before[..], "a refused handle's buffer is untouched");
        return result;
    }
    let group_requests = [
        ioctl::GROUP_GET_STATUS,
        ioctl::GROUP_SET_CONTAINER,
        ioctl::GROUP_UNSET_CONTAINER,
        ioctl::GROUP_GET_DEVICE_FD,
    ];
    let container_core = [
        ioctl::GET_API_VERSION,
        ioctl::CHECK_EXTENSION,
        ioctl::SET_IOMMU,
    ];
    let type1_requests = [
        ioctl::IOMMU_GET_INFO,
        ioctl::IOMMU_MAP_DMA,
        ioctl::IOMMU_UNMAP_DMA,
        ioctl::IOMMU_DIRTY_PAGES,
    ];
    match kind {
        Ok(FileKind::Group) if !group_requests.contains(&request) => {
            assert_eq!(result, Err(Errno::ENOTTY), "group request {request:#x}");
        }
        Ok(FileKind::Container) if request == ioctl::GET_API_VERSION => {
            assert_eq!(result, Ok(0), "GET_API_VERSION");
        }
        Ok(FileKind::Container) if !container_core.contains(&request) => {
            if !has_backend {
                assert_eq!(
                    result,
                    Err(Errno::EINVAL),
                    "container without backend, {request:#x}"
                );
            } else if !type1_requests.contains(&request) {
                assert_eq!(result, Err(Errno::ENOTTY), "Type1, unknown {request:#x}");
            }
        }
        _ => {}
    }
    result
}
