// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `hostile_device`: config images mutated by the fuzzer (looping chains,
//! lying lengths, MSI-X sizes past the BAR) opened and exercised.

use vfio_core::abi::Arg;
use vfio_core::pci::MAX_VECTORS;
use vfio_core::uapi::{self, ioctl, irq_index, irq_set_flags, region_cap, region_flags};
use vfio_sim::SimFunction;
use zerocopy::{FromBytes, IntoBytes};

use crate::config_access::{checked_write, CONFIG_REGION};
use crate::sim::{
    assign_first, check_clean, check_container, close_freeing_vectors, corpus_images, irq_counts,
    primary_bdf, single_function_machine, with_registry, Cursor,
};

/// Builds the hostile image described by `input`: a base (a corpus image, all
/// zeros, or all ones past the header), then patches of (offset, bytes).
pub fn hostile_image(input: &mut Cursor<'_>) -> Vec<u8> {
    let images = corpus_images();
    let selector = input.u16();
    let mut image = match selector % 16 {
        0 => {
            let mut v = vec![0u8; 4096];
            v[..4].copy_from_slice(&0x1234_8086u32.to_le_bytes());
            v
        }
        1 => {
            let mut v = vec![0xffu8; 4096];
            v[..0x40].fill(0);
            v[..4].copy_from_slice(&0x1234_8086u32.to_le_bytes());
            v
        }
        _ if !images.is_empty() => images[usize::from(selector) % images.len()].1.clone(),
        _ => vec![0u8; 256],
    };
    // Keep it a type-0 function so that the interesting code runs.
    if let Some(b) = image.get_mut(0x0e) {
        *b &= 0x80;
    }
    let patches = input.u8() % 32;
    for _ in 0..patches {
        let at = usize::from(input.u16()) % image.len().max(1);
        let len = usize::from(input.u8() % 8) + 1;
        let bytes = input.bytes(len);
        for (k, &b) in bytes.iter().enumerate() {
            if let Some(slot) = image.get_mut(at + k) {
                *slot = b;
            }
        }
    }
    image
}

/// Opens the image built by [`hostile_image`] and exercises it.
///
/// Checks: probing, opening and every ioctl return without panicking; region
/// info stays inside its region (sparse areas inside the region size); the
/// MSI-X count never exceeds [`MAX_VECTORS`]-backed capacity when enabling;
/// config writes obey the permission invariant ([`checked_write`]); the
/// machine-wide invariants; closing frees every host vector and leaves the
/// machine clean.
///
/// # Panics
/// When a check fails.
pub fn hostile_device(data: &[u8]) {
    let mut input = Cursor::new(data);
    let image = hostile_image(&mut input);
    let Ok(function) = SimFunction::from_image(&image) else {
        return;
    };
    let Some(sim) = single_function_machine(function) else {
        return;
    };
    with_registry(&sim, |vfio, registered| {
        let Some(handles) = assign_first(vfio, registered) else {
            return;
        };
        let device = handles.device;
        let baseline = crate::config_access::physical_config(&sim);
        let info = uapi::DeviceInfo {
            argsz: 24,
            ..Default::default()
        };
        let mut bytes = info.as_bytes().to_vec();
        vfio.ioctl(device, ioctl::DEVICE_GET_INFO, Arg::Buffer(&mut bytes))
            .expect("GET_INFO on an open device");
        let info = uapi::DeviceInfo::read_from_bytes(&bytes).expect("24 bytes");
        for index in 0..info.num_regions + 1 {
            let mut buf = vec![0u8; 1024];
            let region = uapi::RegionInfo {
                argsz: 1024,
                index,
                ..Default::default()
            };
            buf[..32].copy_from_slice(region.as_bytes());
            if vfio
                .ioctl(device, ioctl::DEVICE_GET_REGION_INFO, Arg::Buffer(&mut buf))
                .is_err()
            {
                continue;
            }
            let region = uapi::RegionInfo::read_from_prefix(&buf)
                .expect("32 bytes")
                .0;
            if region.flags & region_flags::CAPS != 0 {
                check_region_caps(&buf, &region);
            }
        }
        let counts: [u32; 5] = irq_counts(vfio, device);
        // Whole config space, in every width.
        let size = sim
            .function(primary_bdf())
            .map_or(256, |f| u64::from(f.config_size()));
        for width in [1usize, 2, 4] {
            let mut buf = [0u8; 4];
            let mut at = 0;
            while at < size {
                let _ = vfio.device_read(device, CONFIG_REGION + at, &mut buf[..width]);
                at += width as u64;
            }
        }
        // Enable MSI and MSI-X with every vector the device claims (bounded).
        let events = sim.events();
        for index in [irq_index::MSI, irq_index::MSIX, irq_index::INTX] {
            let count = counts[index as usize].min(2 * MAX_VECTORS as u32 + 2);
            if count == 0 {
                continue;
            }
            let header = uapi::IrqSet {
                argsz: 20 + 4 * count,
                flags: irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER,
                index,
                start: 0,
                count,
            };
            let mut bytes = header.as_bytes().to_vec();
            for _ in 0..count {
                bytes.extend_from_slice(&events.create_event().to_le_bytes());
            }
            let _ = vfio.ioctl(device, ioctl::DEVICE_SET_IRQS, Arg::Buffer(&mut bytes));
            if let Some(v) = sim.function(primary_bdf()).map(|f| f.host_vectors()) {
                assert!(usize::from(v.msix) <= MAX_VECTORS, "MSI-X vectors {v:?}");
                assert!(usize::from(v.msi) <= 32, "MSI vectors {v:?}");
            }
            for vector in 0..4 {
                let _ = sim.raise_msix(primary_bdf(), vector);
                let _ = sim.raise_msi(primary_bdf(), vector);
            }
        }
        // BAR accesses around every region start, including the MSI-X table.
        for index in 0..7u64 {
            let mut buf = [0u8; 8];
            for offset in [0u64, 0x1000, 0x2000, 0x3000] {
                let at = (index << 40) + offset;
                let _ = vfio.device_read(device, at, &mut buf);
                let _ = vfio.device_write(device, at, &[0xff; 4]);
            }
        }
        // Config writes driven by the rest of the input.
        let mut steps = 0;
        while !input.is_empty() && steps < 64 {
            steps += 1;
            let offset = u64::from(input.u16()) % (size + 4);
            let len = [1usize, 2, 4][usize::from(input.u8() % 3)];
            let bytes = input.bytes(len).to_vec();
            checked_write(&sim, vfio, device, &baseline, offset, &bytes);
        }
        let _ = vfio.ioctl(device, ioctl::DEVICE_RESET, Arg::None);
        check_container(&sim, vfio, handles.container);
        close_freeing_vectors(&sim, vfio, &handles);
    });
    check_clean(&sim);
}

/// The region capability chain in `buf` is well formed: inside the buffer,
/// strictly forward links, and sparse-mmap areas inside the region.
fn check_region_caps(buf: &[u8], region: &uapi::RegionInfo) {
    if region.cap_offset == 0 {
        return;
    }
    let mut at = region.cap_offset as usize;
    let mut hops = 0;
    loop {
        hops += 1;
        assert!(
            hops < 16,
            "region {} capability chain too long",
            region.index
        );
        let header = uapi::InfoCapHeader::read_from_prefix(&buf[at..])
            .expect("capability header inside the buffer")
            .0;
        if header.id == region_cap::SPARSE_MMAP {
            let nr = u32::from_le_bytes(buf[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
            for k in 0..nr {
                let base = at + 16 + 16 * k;
                let offset = u64::from_le_bytes(buf[base..base + 8].try_into().expect("8 bytes"));
                let size =
                    u64::from_le_bytes(buf[base + 8..base + 16].try_into().expect("8 bytes"));
                let end = offset.checked_add(size).expect("sparse area does not wrap");
                assert!(
                    end <= region.size,
                    "region {} sparse area {offset:#x}+{size:#x} past its size {:#x}",
                    region.index,
                    region.size
                );
            }
        }
        if header.next == 0 {
            break;
        }
        assert!(header.next as usize > at, "capability links go forwards");
        at = header.next as usize;
        assert!(at + 8 <= buf.len(), "capability inside the buffer");
    }
}
