// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `type1_ops`: MAP / UNMAP / UNMAP-ALL / VADDR sequences through the ABI
//! against a reference model of spec/02-type1.md §6–§7 and §11.

use std::collections::BTreeMap;

use vfio_core::abi::Arg;
use vfio_core::platform::Prot;
use vfio_core::type1::Type1Config;
use vfio_core::uapi::{self, dma_map_flags, dma_unmap_flags, ioctl};
use vfio_core::vfio::Config;
use vfio_core::Errno;
use zerocopy::{FromBytes, IntoBytes};

use crate::sim::{
    assign, check_clean, check_machine, corpus_functions, primary_bdf, single_function_machine,
    with_registry_config, Cursor, GUEST_LEN, GUEST_VADDR,
};

/// The entry limit the harness configures (below the storage capacity, so the
/// limit, not the storage, is what refuses).
pub const ENTRY_LIMIT: u32 = 16;
/// The IOMMU page size of the default simulated group profile.
const PAGE: u64 = 0x1000;
/// Valid IOVA ranges of the default profile: the 48-bit aperture minus the x86
/// MSI window (inclusive bounds).
const VALID: [(u64, u64); 2] = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 48) - 1)];

/// One modelled DMA entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelEntry {
    /// Length in bytes.
    pub size: u64,
    /// Process address.
    pub vaddr: u64,
    /// Device access.
    pub prot: Prot,
    /// Withdrawn by an UNMAP with `VADDR`.
    pub invalid: bool,
}

/// The reference model: entries keyed by IOVA and the unmap semantics.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// Entries by first IOVA.
    pub entries: BTreeMap<u64, ModelEntry>,
    /// v1 unmap semantics (else v2).
    pub v1: bool,
}

impl Model {
    /// The lowest entry overlapping `[first, last]`.
    fn overlapping(&self, first: u64, last: u64) -> Option<u64> {
        self.entries
            .iter()
            .find(|(&iova, e)| iova <= last && iova + (e.size - 1) >= first)
            .map(|(&iova, _)| iova)
    }

    /// `MAP_DMA` as the spec orders its checks.
    ///
    /// # Errors
    /// The errno the kernel returns.
    pub fn map(&mut self, map: &uapi::DmaMap) -> Result<(), Errno> {
        if map.argsz < 32 || map.flags & !0x7 != 0 || map.size == 0 {
            return Err(Errno::EINVAL);
        }
        let last = map.iova.checked_add(map.size - 1).ok_or(Errno::EOVERFLOW)?;
        map.vaddr
            .checked_add(map.size - 1)
            .ok_or(Errno::EOVERFLOW)?;
        let prot_bits = map.flags & (dma_map_flags::READ | dma_map_flags::WRITE);
        let vaddr_update = map.flags & dma_map_flags::VADDR != 0;
        if (prot_bits != 0) == vaddr_update {
            return Err(Errno::EINVAL);
        }
        if (map.size | map.iova | map.vaddr) & (PAGE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let found = self.overlapping(map.iova, last);
        if vaddr_update {
            let at = found.ok_or(Errno::ENOENT)?;
            let entry = self.entries.get_mut(&at).expect("found");
            if !entry.invalid || at != map.iova || entry.size != map.size {
                return Err(Errno::EINVAL);
            }
            entry.vaddr = map.vaddr;
            entry.invalid = false;
            return Ok(());
        }
        if found.is_some() {
            return Err(Errno::EEXIST);
        }
        if self.entries.len() >= ENTRY_LIMIT as usize {
            return Err(Errno::ENOSPC);
        }
        if !VALID.iter().any(|&(lo, hi)| map.iova >= lo && last <= hi) {
            return Err(Errno::EINVAL);
        }
        let backed = map.vaddr >= GUEST_VADDR
            && map.vaddr - GUEST_VADDR <= GUEST_LEN
            && map.size <= GUEST_LEN - (map.vaddr - GUEST_VADDR);
        if !backed {
            return Err(Errno::EFAULT);
        }
        let mut prot = Prot::empty();
        if prot_bits & dma_map_flags::READ != 0 {
            prot |= Prot::READ;
        }
        if prot_bits & dma_map_flags::WRITE != 0 {
            prot |= Prot::WRITE;
        }
        self.entries.insert(
            map.iova,
            ModelEntry {
                size: map.size,
                vaddr: map.vaddr,
                prot,
                invalid: false,
            },
        );
        Ok(())
    }

    /// `UNMAP_DMA` without dirty bitmap; returns the bytes unmapped.
    ///
    /// # Errors
    /// The errno the kernel returns.
    pub fn unmap(&mut self, unmap: &uapi::DmaUnmap) -> Result<u64, Errno> {
        if unmap.argsz < 24 || unmap.flags & !0x7 != 0 {
            return Err(Errno::EINVAL);
        }
        if unmap.flags & dma_unmap_flags::GET_DIRTY_BITMAP != 0 {
            // Never generated with a bitmap: argsz 24 < 48, or tracking off.
            return Err(Errno::EINVAL);
        }
        if unmap.iova & (PAGE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let all = unmap.flags & dma_unmap_flags::ALL != 0;
        let (first, last) = if all {
            if unmap.iova != 0 || unmap.size != 0 {
                return Err(Errno::EINVAL);
            }
            (0, u64::MAX)
        } else {
            if unmap.size == 0 || unmap.size & (PAGE - 1) != 0 {
                return Err(Errno::EINVAL);
            }
            let last = unmap
                .iova
                .checked_add(unmap.size - 1)
                .ok_or(Errno::EOVERFLOW)?;
            (unmap.iova, last)
        };
        if !self.v1 && !all {
            for (&iova, e) in &self.entries {
                let end = iova + (e.size - 1);
                if iova < first && end >= first {
                    return Err(Errno::EINVAL);
                }
                if iova <= last && end > last {
                    return Err(Errno::EINVAL);
                }
            }
        }
        let Some(lowest) = self.overlapping(first, last) else {
            return Ok(0);
        };
        if self.v1 && lowest < first {
            return Ok(0);
        }
        let walked: Vec<u64> = self.entries.range(lowest..=last).map(|(&i, _)| i).collect();
        let mut total = 0u64;
        if unmap.flags & dma_unmap_flags::VADDR != 0 {
            if walked.iter().any(|i| self.entries[i].invalid) {
                return Err(Errno::EINVAL);
            }
            for i in walked {
                let e = self.entries.get_mut(&i).expect("walked");
                e.invalid = true;
                total += e.size;
            }
        } else {
            for i in walked {
                total += self.entries.remove(&i).expect("walked").size;
            }
        }
        Ok(total)
    }
}

/// Runs the MAP/UNMAP sequence in `data` on a Type1 container (byte 0: v1 or
/// v2) holding one corpus device, through the ABI.
///
/// Checks after every call: the result (errno or unmapped size written back)
/// equals the model's; the container's entries equal the model's; a refused
/// UNMAP writes nothing back; the device can DMA exactly to the modelled
/// writable pages (probed at the call's IOVA and the page after it); the
/// machine-wide invariants. At the end UNMAP-ALL empties the container and the
/// machine is clean after close.
///
/// # Panics
/// When a check fails.
pub fn type1_ops(data: &[u8]) {
    let Some((_, function)) = corpus_functions()
        .iter()
        .find(|(name, _)| name.starts_with("1344-5407"))
    else {
        return;
    };
    let Some(sim) = single_function_machine(function.clone()) else {
        return;
    };
    let mut input = Cursor::new(data);
    let mut model = Model {
        v1: input.one_in(4),
        ..Model::default()
    };
    let config = Config {
        type1: Type1Config {
            dma_entry_limit: ENTRY_LIMIT,
            ..Type1Config::default()
        },
    };
    with_registry_config(&sim, config, |vfio, registered| {
        let Some(&(bdf, group, _)) = registered.first() else {
            return;
        };
        let handles = assign(vfio, group, &bdf.to_string(), model.v1).expect("assign the NVMe SSD");
        let container = handles.container;
        let mut steps = 0;
        while !input.is_empty() && steps < 128 {
            steps += 1;
            let op = input.u8();
            let iova = match input.u8() % 4 {
                0 => input.interesting_u64(),
                _ => u64::from(input.u8() % 64) << 12,
            };
            let size = match input.u8() % 4 {
                0 => input.interesting_u64(),
                _ => u64::from(input.u8() % 16) << 12,
            };
            let probe = iova;
            let kind = op % 3;
            if kind == 0 {
                let map = uapi::DmaMap {
                    argsz: 32,
                    flags: match input.u8() % 8 {
                        0 => input.u32() & 0xf,
                        1 => dma_map_flags::VADDR,
                        2 => dma_map_flags::READ,
                        3 => dma_map_flags::WRITE,
                        _ => dma_map_flags::READ | dma_map_flags::WRITE,
                    },
                    vaddr: match input.u8() % 8 {
                        0 => input.interesting_u64(),
                        _ => GUEST_VADDR + (u64::from(input.u8()) << 12),
                    },
                    iova,
                    size,
                };
                let want = model.map(&map);
                let mut bytes = map.as_bytes().to_vec();
                let got = vfio
                    .ioctl(container, ioctl::IOMMU_MAP_DMA, Arg::Buffer(&mut bytes))
                    .map(|_| ());
                assert_eq!(got, want, "MAP {map:?}");
                assert_eq!(bytes, map.as_bytes(), "MAP writes nothing back");
            } else {
                let unmap = uapi::DmaUnmap {
                    argsz: 24,
                    flags: match input.u8() % 8 {
                        0 => input.u32() & 0x6,
                        1 => dma_unmap_flags::ALL,
                        2 => dma_unmap_flags::VADDR,
                        3 => dma_unmap_flags::ALL | dma_unmap_flags::VADDR,
                        _ => 0,
                    },
                    iova: if input.one_in(8) { 0 } else { iova },
                    size: if input.one_in(8) { 0 } else { size },
                };
                let want = model.unmap(&unmap);
                let mut bytes = unmap.as_bytes().to_vec();
                let got = vfio.ioctl(container, ioctl::IOMMU_UNMAP_DMA, Arg::Buffer(&mut bytes));
                let back = uapi::DmaUnmap::read_from_bytes(&bytes).expect("24 bytes");
                match want {
                    Ok(total) => {
                        assert_eq!(got, Ok(0), "UNMAP {unmap:?}");
                        assert_eq!(back.size, total, "UNMAP {unmap:?} size written back");
                    }
                    Err(e) => {
                        assert_eq!(got, Err(e), "UNMAP {unmap:?}");
                        assert_eq!(back, unmap, "a refused UNMAP writes nothing back");
                    }
                }
            }
            compare(vfio, container, &model);
            for at in [probe, probe.wrapping_add(PAGE)] {
                let allowed = model
                    .entries
                    .iter()
                    .any(|(&i, e)| at >= i && at - i < e.size && e.prot.contains(Prot::WRITE));
                let done = sim.dma_write(primary_bdf(), at, &[0x5a]).is_ok();
                assert_eq!(done, allowed, "device DMA write to {at:#x}");
            }
            let entries = vfio
                .container_mappings(container)
                .expect("open container")
                .collect::<Vec<_>>();
            check_machine(&sim, &entries);
        }
        let all = uapi::DmaUnmap {
            argsz: 24,
            flags: dma_unmap_flags::ALL,
            iova: 0,
            size: 0,
        };
        let want = model.unmap(&all).expect("UNMAP-ALL");
        let mut bytes = all.as_bytes().to_vec();
        assert_eq!(
            vfio.ioctl(container, ioctl::IOMMU_UNMAP_DMA, Arg::Buffer(&mut bytes)),
            Ok(0)
        );
        let back = uapi::DmaUnmap::read_from_bytes(&bytes).expect("24 bytes");
        assert_eq!(back.size, want, "UNMAP-ALL size");
        assert_eq!(vfio.container_mappings(container).expect("open").count(), 0);
        assert_eq!(sim.pinned_pages(), 0, "UNMAP-ALL unpins everything");
        for fd in [handles.device, handles.group, handles.container] {
            assert_eq!(vfio.close(fd), Ok(()));
        }
    });
    check_clean(&sim);
}

/// The container's entries equal the model's.
fn compare(vfio: &crate::sim::Registry<'_>, container: vfio_core::vfio::Fd, model: &Model) {
    let got: Vec<(u64, ModelEntry)> = vfio
        .container_mappings(container)
        .expect("open container")
        .map(|e| {
            (
                e.iova,
                ModelEntry {
                    size: e.size,
                    vaddr: e.vaddr,
                    prot: e.prot,
                    invalid: e.vaddr_invalid,
                },
            )
        })
        .collect();
    let want: Vec<(u64, ModelEntry)> = model.entries.iter().map(|(&i, &e)| (i, e)).collect();
    assert_eq!(got, want, "container entries against the model");
}
