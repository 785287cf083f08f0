//! Registry unit tests against a minimal in-memory platform.

use super::*;
use crate::abi::Arg;
use crate::errno::ErrorType;
use crate::platform::{DomainInfo, GroupInfo, MemoryKind, PinnedRun, Prot, ReservedRegion};
use crate::type1::DmaEntry;
use crate::uapi::ioctl;

#[derive(Debug, Default)]
struct MockIommu {
    claimed: [bool; 4],
    next_domain: u32,
    maps: u32,
}

impl ErrorType for MockIommu {
    type Error = Errno;
}

impl Iommu for MockIommu {
    fn group_info(&self, group: GroupId) -> Option<GroupInfo> {
        (group < 4).then_some(GroupInfo {
            emulated: false,
            intr_remap: true,
        })
    }
    fn group_viable(&self, group: GroupId) -> bool {
        group != 3
    }
    fn claim_dma_owner(&mut self, group: GroupId) -> Result<()> {
        if group == 3 {
            return Err(Errno::EPERM);
        }
        let claimed = &mut self.claimed[group as usize];
        if *claimed {
            return Err(Errno::EBUSY);
        }
        *claimed = true;
        Ok(())
    }
    fn release_dma_owner(&mut self, group: GroupId) {
        self.claimed[group as usize] = false;
    }
    fn domain_alloc(&mut self, _group: GroupId) -> Result<DomainInfo> {
        self.next_domain += 1;
        Ok(DomainInfo {
            id: self.next_domain,
            ops: 1,
            pgsize_bitmap: 0x1000,
            aperture_start: 0,
            aperture_end: u64::MAX,
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
    fn map(&mut self, _d: DomainId, _iova: u64, _phys: u64, _len: u64, _prot: Prot) -> Result<()> {
        self.maps += 1;
        Ok(())
    }
    fn unmap(&mut self, _domain: DomainId, _iova: u64, len: u64) -> u64 {
        len
    }
    fn iova_to_phys(&self, _domain: DomainId, iova: u64) -> Option<u64> {
        Some(iova)
    }
}

#[derive(Debug, Default)]
struct MockMemory {
    locked: i64,
}

impl ErrorType for MockMemory {
    type Error = Errno;
}

impl HostMemory for MockMemory {
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
        self.locked as u64
    }
    fn lock_limit_pages(&self) -> Option<u64> {
        None
    }
    fn lock_cap(&self) -> bool {
        false
    }
    fn charge(&mut self, pages: i64) {
        self.locked += pages;
    }
}

#[derive(Debug, Default)]
struct MockDriver;

impl BusDriver for MockDriver {
    type State = u32;
    fn open_device(&mut self, state: &mut u32) -> Result<()> {
        *state += 1;
        Ok(())
    }
    fn close_device(&mut self, _state: &mut u32) {}
    fn device_info(&mut self, _state: &mut u32, _caps: &mut CapChain<'_>) -> Result<DeviceInfo> {
        Ok(DeviceInfo {
            flags: 2,
            num_regions: 1,
            num_irqs: 1,
        })
    }
    fn region_info(&mut self, _s: &mut u32, _i: u32, _c: &mut CapChain<'_>) -> Result<RegionInfo> {
        Ok(RegionInfo::default())
    }
    fn irq_info(&mut self, _state: &mut u32, _index: u32) -> Result<IrqInfo> {
        Ok(IrqInfo { flags: 1, count: 1 })
    }
    fn set_irqs(&mut self, _s: &mut u32, _r: &IrqSetRequest, _d: &[u8]) -> Result<u32> {
        Ok(0)
    }
    fn reset(&mut self, _state: &mut u32) -> Result<()> {
        Err(Errno::EINVAL)
    }
    fn read(&mut self, _s: &mut u32, _o: u64, _b: &mut [u8]) -> Result<usize> {
        Err(Errno::EINVAL)
    }
    fn write(&mut self, _s: &mut u32, _o: u64, _d: &[u8]) -> Result<usize> {
        Err(Errno::EINVAL)
    }
    fn request(&mut self, _state: &mut u32, _count: u32) {}

    /// Test hook: request 0x3b71 resolves the s32 descriptor in `arg` and encodes the
    /// answer (group id + 100, 1 for another file, 0 for not open).
    fn ioctl_with_fds(
        &mut self,
        _state: &mut u32,
        request: u32,
        arg: &mut [u8],
        fds: &dyn driver::FdResolver,
    ) -> Result<i64> {
        if request != 0x3b71 {
            return Err(Errno::ENOTTY);
        }
        let raw = i32::from_le_bytes([arg[0], arg[1], arg[2], arg[3]]);
        Ok(match fds.resolve_fd(raw) {
            driver::FdTarget::Group(id) => 100 + i64::from(id),
            driver::FdTarget::Other => 1,
            driver::FdTarget::NotOpen => 0,
        })
    }
}

macro_rules! registry {
    ($vfio:ident, files = $files:expr) => {
        let mut files = [FileSlot::EMPTY; $files];
        let mut dma0 = [DmaEntry::EMPTY; 4];
        let mut dma1 = [DmaEntry::EMPTY; 4];
        let mut containers = [ContainerSlot::new(&mut dma0), ContainerSlot::new(&mut dma1)];
        let mut groups = [GroupSlot::EMPTY; 4];
        let mut devices: [DeviceSlot<u32>; 4] = Default::default();
        let storage = Storage {
            files: &mut files,
            containers: &mut containers,
            groups: &mut groups,
            devices: &mut devices,
        };
        #[allow(unused_mut)]
        let mut $vfio = Vfio::new(
            MockIommu::default(),
            MockMemory::default(),
            MockDriver,
            storage,
            Config::default(),
        );
    };
}

fn attach(vfio: &mut Vfio<'_, MockIommu, MockMemory, MockDriver>, group: GroupId) -> (Fd, Fd) {
    let c = vfio.open_container().unwrap();
    let g = vfio.open_group(group).unwrap();
    vfio.group_set_container(g, c.raw()).unwrap();
    vfio.set_iommu(c, 3).unwrap();
    (c, g)
}

#[test]
fn closed_handle_is_ebadf_and_never_aliases_a_new_file() {
    registry!(vfio, files = 8);
    let c = vfio.open_container().unwrap();
    vfio.close(c).unwrap();
    let c2 = vfio.open_container().unwrap();
    assert_ne!(c, c2, "a reused slot gets a new generation");
    assert_eq!(vfio.close(c), Err(Errno::EBADF));
    assert_eq!(
        vfio.ioctl(c, ioctl::GET_API_VERSION, Arg::None),
        Err(Errno::EBADF)
    );
    assert_eq!(vfio.ioctl(c2, ioctl::GET_API_VERSION, Arg::None), Ok(0));
    assert_eq!(vfio.close(Fd::from_raw(-1)), Err(Errno::EBADF));
    assert_eq!(vfio.close(Fd::from_raw(0)), Err(Errno::EBADF));
}

#[test]
fn full_file_table_is_emfile_and_full_container_table_is_enomem() {
    registry!(vfio, files = 3);
    let _a = vfio.open_container().unwrap();
    let _b = vfio.open_container().unwrap();
    assert_eq!(vfio.open_container(), Err(Errno::ENOMEM));
    vfio.register_device("0000:01:00.0", 1, 0).unwrap();
    let _g = vfio.open_group(1).unwrap();
    vfio.register_device("0000:02:00.0", 2, 0).unwrap();
    assert_eq!(vfio.open_group(2), Err(Errno::EMFILE));
}

#[test]
fn registration_refuses_unknown_group_duplicate_and_long_names() {
    registry!(vfio, files = 4);
    assert_eq!(vfio.register_device("x", 9, 0), Err(Errno::EINVAL));
    vfio.register_device("0000:01:00.0", 1, 0).unwrap();
    assert_eq!(
        vfio.register_device("0000:01:00.0", 1, 0),
        Err(Errno::EEXIST)
    );
    let long = "a".repeat(DEVICE_NAME_MAX + 1);
    assert_eq!(vfio.register_device(&long, 1, 0), Err(Errno::EINVAL));
    assert_eq!(vfio.register_device("", 1, 0), Err(Errno::EINVAL));
}

#[test]
fn device_name_without_nul_in_a_short_buffer_is_efault() {
    registry!(vfio, files = 8);
    vfio.register_device("0000:01:00.0", 1, 0).unwrap();
    let (_c, g) = attach(&mut vfio, 1);
    assert_eq!(
        vfio.group_get_device_fd(g, b"0000:01:00.0"),
        Err(Errno::EFAULT)
    );
    let d = vfio.group_get_device_fd(g, b"0000:01:00.0\0").unwrap();
    assert_eq!(vfio.file_kind(d), Ok(FileKind::Device));
}

#[test]
fn container_lives_until_last_group_detaches_after_its_file_closed() {
    registry!(vfio, files = 8);
    vfio.register_device("0000:01:00.0", 1, 0).unwrap();
    let (c, g) = attach(&mut vfio, 1);
    let map = MapDma {
        flags: 3,
        vaddr: 0x10000,
        iova: 0x10000,
        size: 0x2000,
    };
    vfio.map_dma(c, &map).unwrap();
    vfio.close(c).unwrap();
    assert_eq!(
        vfio.memory().locked_pages(),
        2,
        "closing the container file keeps mappings"
    );
    vfio.group_unset_container(g).unwrap();
    assert_eq!(
        vfio.memory().locked_pages(),
        0,
        "last detach releases the backend"
    );
    // Both container slots are free again.
    let _x = vfio.open_container().unwrap();
    let _y = vfio.open_container().unwrap();
}

#[test]
fn group_claim_is_released_on_detach_so_another_container_can_take_it() {
    registry!(vfio, files = 8);
    vfio.register_device("0000:01:00.0", 1, 0).unwrap();
    let (_c, g) = attach(&mut vfio, 1);
    assert!(vfio.iommu().claimed[1]);
    vfio.close(g).unwrap();
    assert!(
        !vfio.iommu().claimed[1],
        "closing the group file detaches it (G5)"
    );
    let c2 = vfio.open_container().unwrap();
    let g2 = vfio.open_group(1).unwrap();
    assert_eq!(vfio.group_set_container(g2, c2.raw()), Ok(()));
}

#[test]
fn device_ids_go_stale_after_unregistration() {
    registry!(vfio, files = 8);
    let dev = vfio.register_device("0000:01:00.0", 1, 0).unwrap();
    assert_eq!(vfio.unregister_device(dev), Ok(true));
    assert_eq!(vfio.device_registration(dev), Some(Registration::Gone));
    assert_eq!(vfio.unregister_device(dev), Err(Errno::ENODEV));
    let again = vfio.register_device("0000:01:00.0", 1, 7).unwrap();
    assert_ne!(dev, again);
    assert_eq!(vfio.device_registration(dev), None);
    assert_eq!(vfio.open_group(1).map(|_| ()), Ok(()));
}

#[test]
fn device_ioctls_see_the_callers_group_files_for_ownership_proof() {
    registry!(vfio, files = 8);
    vfio.register_device("0000:01:00.0", 1, 0).unwrap();
    let (c, g) = attach(&mut vfio, 1);
    let d = vfio.group_get_device_fd(g, b"0000:01:00.0\0").unwrap();
    let ask = |vfio: &mut Vfio<'_, MockIommu, MockMemory, MockDriver>, fd: i32| {
        let mut arg = fd.to_le_bytes();
        vfio.ioctl(d, 0x3b71, Arg::Buffer(&mut arg))
    };
    assert_eq!(
        ask(&mut vfio, g.raw()),
        Ok(101),
        "an open group file proves group 1"
    );
    assert_eq!(
        ask(&mut vfio, c.raw()),
        Ok(1),
        "a container is another file"
    );
    assert_eq!(
        ask(&mut vfio, d.raw()),
        Ok(1),
        "a device file is another file"
    );
    assert_eq!(ask(&mut vfio, -1), Ok(0));
    vfio.close(g).unwrap();
    assert_eq!(
        ask(&mut vfio, g.raw()),
        Ok(0),
        "a closed group file proves nothing"
    );
    assert_eq!(vfio.ioctl(d, 0x3b7f, Arg::None), Err(Errno::ENOTTY));
}

#[test]
fn a_saturated_clock_stops_requesting_instead_of_looping() {
    registry!(vfio, files = 8);
    let dev = vfio.register_device("0000:01:00.0", 1, 0).unwrap();
    let (_c, g) = attach(&mut vfio, 1);
    let d = vfio.group_get_device_fd(g, b"0000:01:00.0\0").unwrap();
    assert_eq!(vfio.unregister_device(dev), Ok(false));
    assert_eq!(vfio.device_stats(dev).map(|s| s.request_calls), Some(1));
    vfio.advance_time(REQUEST_INTERVAL_MS);
    assert_eq!(vfio.device_stats(dev).map(|s| s.request_calls), Some(2));
    // Near the end of the clock: the requests due at u64::MAX - 10 s and u64::MAX are
    // made; the next one would fall due past u64::MAX and never does, however often the
    // saturated clock is advanced.
    vfio.now_ms = u64::MAX - 2 * REQUEST_INTERVAL_MS;
    vfio.devices[0].next_request_ms = Some(u64::MAX - REQUEST_INTERVAL_MS);
    vfio.advance_time(u64::MAX);
    assert_eq!(vfio.device_stats(dev).map(|s| s.request_calls), Some(4));
    vfio.advance_time(u64::MAX);
    assert_eq!(vfio.device_stats(dev).map(|s| s.request_calls), Some(4));
    vfio.close(d).unwrap();
    assert_eq!(vfio.device_registration(dev), Some(Registration::Gone));
}
