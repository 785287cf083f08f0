// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A whole-registry scenario on a minimal identity-mapped platform, with every
//! table in static storage: register a device, open a container and its
//! group, select Type1v2, map and unmap DMA, open the device file, go through
//! the byte-level ioctl dispatcher, and close everything.

use core::hint::black_box;

use vfio_core::abi::Arg;
use vfio_core::errno::{ErrorType, Result};
use vfio_core::platform::{
    DomainId, DomainInfo, GroupId, GroupInfo, HostMemory, Iommu, MemoryKind, PinnedRun, Prot,
    ReservedRegion,
};
use vfio_core::type1::{DmaEntry, MapDma, UnmapDma};
use vfio_core::uapi::ioctl;
use vfio_core::vfio::{
    BusDriver, CapChain, Config, ContainerSlot, DeviceInfo, DeviceSlot, FileSlot, GroupSlot,
    IrqInfo, IrqSetRequest, RegionInfo, Storage, Vfio,
};
use vfio_core::Errno;

/// One IOMMU group (number 7) that is viable and isolated; domains translate
/// IOVA to the same physical address.
#[derive(Debug, Default)]
struct IdentityIommu {
    claimed: bool,
    mapped: u64,
}

impl ErrorType for IdentityIommu {
    type Error = Errno;
}

impl Iommu for IdentityIommu {
    fn group_info(&self, group: GroupId) -> Option<GroupInfo> {
        (group == 7).then_some(GroupInfo {
            emulated: false,
            intr_remap: true,
        })
    }
    fn group_viable(&self, group: GroupId) -> bool {
        group == 7
    }
    fn claim_dma_owner(&mut self, _group: GroupId) -> Result<()> {
        if self.claimed {
            return Err(Errno::EBUSY);
        }
        self.claimed = true;
        Ok(())
    }
    fn release_dma_owner(&mut self, _group: GroupId) {
        self.claimed = false;
    }
    fn domain_alloc(&mut self, _group: GroupId) -> Result<DomainInfo> {
        Ok(DomainInfo {
            id: 1,
            ops: 1,
            pgsize_bitmap: 0x1000 | 0x20_0000,
            aperture_start: 0,
            aperture_end: (1 << 48) - 1,
            enforce_coherency: true,
        })
    }
    fn domain_free(&mut self, _domain: DomainId) {}
    fn attach(&mut self, _domain: DomainId, _group: GroupId) -> Result<()> {
        Ok(())
    }
    fn detach(&mut self, _domain: DomainId, _group: GroupId) {}
    fn reserved_region(&self, _group: GroupId, _index: usize) -> Option<ReservedRegion> {
        None
    }
    fn map(&mut self, _d: DomainId, _iova: u64, _phys: u64, len: u64, _prot: Prot) -> Result<()> {
        self.mapped += len;
        Ok(())
    }
    fn unmap(&mut self, _domain: DomainId, _iova: u64, len: u64) -> u64 {
        let done = len.min(self.mapped);
        self.mapped -= done;
        done
    }
    fn iova_to_phys(&self, _domain: DomainId, iova: u64) -> Option<u64> {
        Some(iova)
    }
}

/// Host memory where every page is pinnable RAM at its own address.
#[derive(Debug, Default)]
struct FlatMemory {
    locked: u64,
}

impl ErrorType for FlatMemory {
    type Error = Errno;
}

impl HostMemory for FlatMemory {
    fn page_size(&self) -> u64 {
        4096
    }
    fn pin(&mut self, vaddr: u64, len: u64, _write: bool) -> Result<PinnedRun> {
        Ok(PinnedRun {
            phys: vaddr,
            len,
            kind: MemoryKind::Ram,
        })
    }
    fn unpin(&mut self, _phys: u64, _len: u64) {}
    fn locked_pages(&self) -> u64 {
        self.locked
    }
    fn lock_limit_pages(&self) -> Option<u64> {
        Some(1024)
    }
    fn lock_cap(&self) -> bool {
        false
    }
    fn charge(&mut self, pages: i64) {
        self.locked = self.locked.wrapping_add_signed(pages);
    }
}

/// A device with one region and one IRQ index that counts its opens.
#[derive(Debug)]
struct CountingDriver;

impl BusDriver for CountingDriver {
    type State = u32;
    fn open_device(&mut self, opens: &mut u32) -> Result<()> {
        *opens += 1;
        Ok(())
    }
    fn close_device(&mut self, _opens: &mut u32) {}
    fn device_info(&mut self, _s: &mut u32, _caps: &mut CapChain<'_>) -> Result<DeviceInfo> {
        Ok(DeviceInfo {
            flags: 2,
            num_regions: 1,
            num_irqs: 1,
        })
    }
    fn region_info(&mut self, _s: &mut u32, _i: u32, _c: &mut CapChain<'_>) -> Result<RegionInfo> {
        Ok(RegionInfo::default())
    }
    fn irq_info(&mut self, _s: &mut u32, _index: u32) -> Result<IrqInfo> {
        Ok(IrqInfo { flags: 1, count: 1 })
    }
    fn set_irqs(&mut self, _s: &mut u32, _r: &IrqSetRequest, _d: &[u8]) -> Result<u32> {
        Ok(0)
    }
    fn reset(&mut self, _s: &mut u32) -> Result<()> {
        Err(Errno::EINVAL)
    }
    fn read(&mut self, _s: &mut u32, _o: u64, _b: &mut [u8]) -> Result<usize> {
        Err(Errno::EINVAL)
    }
    fn write(&mut self, _s: &mut u32, _o: u64, _d: &[u8]) -> Result<usize> {
        Err(Errno::EINVAL)
    }
    fn request(&mut self, _s: &mut u32, _count: u32) {}
}

/// The registry's tables, as an embedder without a heap would declare them.
struct Tables {
    files: [FileSlot; 8],
    dma: [DmaEntry; 16],
    groups: [GroupSlot; 2],
    devices: [DeviceSlot<u32>; 2],
}

static mut TABLES: Tables = Tables {
    files: [FileSlot::EMPTY; 8],
    dma: [DmaEntry::EMPTY; 16],
    groups: [GroupSlot::EMPTY; 2],
    devices: [DeviceSlot::new(), DeviceSlot::new()],
};

/// Runs the scenario; `Err(step)` names the first step that misbehaved.
pub fn run() -> core::result::Result<(), i32> {
    // SAFETY: called once, from `run` in main.rs on the only thread; no other
    // reference to TABLES exists while this one lives.
    let tables = unsafe { &mut *core::ptr::addr_of_mut!(TABLES) };
    let mut containers = [ContainerSlot::new(&mut tables.dma)];
    let storage = Storage {
        files: &mut tables.files,
        containers: &mut containers,
        groups: &mut tables.groups,
        devices: &mut tables.devices,
    };
    let mut vfio = Vfio::new(
        IdentityIommu::default(),
        FlatMemory::default(),
        CountingDriver,
        storage,
        Config::default(),
    );

    let step = |n: i32, ok: bool| if ok { Ok(()) } else { Err(n) };

    vfio.register_device(black_box("0000:06:0d.0"), 7, 0)
        .map_err(|_| 20)?;
    let container = vfio.open_container().map_err(|_| 21)?;
    step(
        22,
        vfio.ioctl(container, ioctl::GET_API_VERSION, Arg::None) == Ok(0),
    )?;
    let group = vfio.open_group(black_box(7)).map_err(|_| 23)?;
    vfio.group_set_container(group, container.raw())
        .map_err(|_| 24)?;
    vfio.set_iommu(container, 3).map_err(|_| 25)?;
    let map = MapDma {
        flags: 3,
        vaddr: 0x40_0000,
        iova: black_box(0x10_0000),
        size: 0x4000,
    };
    vfio.map_dma(container, &map).map_err(|_| 26)?;
    step(27, vfio.map_dma(container, &map) == Err(Errno::EEXIST))?;
    step(28, vfio.memory().locked_pages() == 4)?;
    let device = vfio
        .group_get_device_fd(group, black_box(b"0000:06:0d.0\0"))
        .map_err(|_| 29)?;
    let unmap = UnmapDma {
        flags: 0,
        iova: 0x10_0000,
        size: 0x4000,
    };
    step(30, vfio.unmap_dma(container, &unmap) == Ok(0x4000))?;
    step(31, vfio.memory().locked_pages() == 0)?;
    vfio.close(device).map_err(|_| 32)?;
    vfio.close(group).map_err(|_| 33)?;
    vfio.close(container).map_err(|_| 34)?;
    step(35, vfio.close(container) == Err(Errno::EBADF))?;
    step(36, !vfio.iommu().claimed)?;
    Ok(())
}
