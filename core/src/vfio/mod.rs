//! Containers, groups and devices: the handle-based registry and its state machines
//! (spec/01-core.md).
//!
//! [`Vfio`] is the whole VFIO core of one host: the registered devices and their groups,
//! the open files (containers, groups, device files) and each container's Type1 backend.
//! All storage is provided by the embedder as slices of slots ([`Storage`]); nothing is
//! allocated. Files are named by [`Fd`] handles that carry a generation counter, so a
//! closed handle is refused with `EBADF` and never aliases a newer file.
//!
//! Control operations take `&mut self`: the embedder serializes them (a mutex on Linux, a
//! task on an RTOS). Refusals return the kernel's errno for the same input.

pub mod driver;
pub mod feature;

use heapless::{String, Vec};

pub use driver::{
    validate_irq_set, BusDriver, CapChain, DeviceInfo, FdResolver, FdTarget, IrqInfo,
    IrqSetRequest, RegionInfo,
};
pub use feature::{check_feature, device_feature, validate_feature, FeatureRequest};

use crate::errno::{Errno, Error as _, Result};
use crate::platform::{DomainId, GroupId, HostMemory, Iommu};
use crate::type1::{
    ChargeRun, DmaEntry, DmaMap, MapDma, Mappings, Type1, Type1Config, UnmapDma, MAX_GROUPS,
};
use crate::uapi::group_flags;

/// Longest device name the registry stores, in bytes (PCI names are 12: `0000:06:0d.0`).
pub const DEVICE_NAME_MAX: usize = 64;
/// Longest name `GROUP_GET_DEVICE_FD` reads, including the NUL (Linux `PAGE_SIZE`).
pub const DEVICE_NAME_READ_MAX: usize = 4096;
/// Interval between two `request` calls to a device being unregistered, in milliseconds.
pub const REQUEST_INTERVAL_MS: u64 = 10_000;

const SLOT_BITS: u32 = 12;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
const GENERATION_MAX: u32 = (1 << (31 - SLOT_BITS)) - 1;
/// Container, group and device slots are named by `u16` indexes: at most 65536 of each.
const TABLE_MAX: usize = 1 << 16;

/// The first `max` slots of `slots` (all of them when there are fewer).
fn clamp<T>(slots: &mut [T], max: usize) -> &mut [T] {
    let len = slots.len().min(max);
    &mut slots[..len]
}

/// A file handle: container, group or device file (the analogue of a Linux fd).
///
/// The raw value is a positive `i32` (`generation << 12 | slot`, generation ≥ 1), so small
/// integers and negative numbers are never valid handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Fd(i32);

impl Fd {
    /// The raw descriptor number (what `GROUP_SET_CONTAINER` carries).
    pub const fn raw(self) -> i32 {
        self.0
    }

    /// A handle from a raw number; validity is checked when it is used (`EBADF`).
    pub const fn from_raw(raw: i32) -> Fd {
        Fd(raw)
    }

    fn new(slot: usize, generation: u32) -> Fd {
        Fd(((generation << SLOT_BITS) | slot as u32) as i32)
    }

    fn split(self) -> Option<(usize, u32)> {
        let raw = u32::try_from(self.0).ok()?;
        Some(((raw & SLOT_MASK) as usize, raw >> SLOT_BITS))
    }
}

/// A registered device (slot + generation), returned by [`Vfio::register_device`].
///
/// It goes stale when its slot is reused after unregistration completes: the lookups then
/// answer `None` and [`Vfio::unregister_device`] `ENODEV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceId {
    slot: u16,
    generation: u32,
}

/// What kind of object an open file refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FileKind {
    /// A container file (`/dev/vfio/vfio`).
    Container,
    /// A group file (`/dev/vfio/<group>`).
    Group,
    /// A device file from `GROUP_GET_DEVICE_FD`.
    Device,
}

/// What an open file slot holds: the object's slot index in its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileObject {
    Free,
    Container(u16),
    Group(u16),
    Device(u16),
}

/// Storage for one open file. Initialize with [`FileSlot::EMPTY`].
#[derive(Debug, Clone, Copy)]
pub struct FileSlot {
    generation: u32,
    object: FileObject,
}

impl FileSlot {
    /// An unused slot.
    pub const EMPTY: FileSlot = FileSlot {
        generation: 0,
        object: FileObject::Free,
    };
}

impl Default for FileSlot {
    fn default() -> Self {
        FileSlot::EMPTY
    }
}

/// Storage for one container: the object and its DMA map (whose capacity is the length of
/// the slice given to [`ContainerSlot::new`]).
#[derive(Debug)]
pub struct ContainerSlot<'s> {
    in_use: bool,
    file_open: bool,
    /// Attached groups, most recently added first (spec/01-core.md §4.3 A10).
    groups: Vec<u16, MAX_GROUPS>,
    backend: Option<Type1>,
    dma: DmaMap<'s>,
}

impl<'s> ContainerSlot<'s> {
    /// A free container slot whose Type1 map can hold `dma_storage.len()` entries.
    pub fn new(dma_storage: &'s mut [DmaEntry]) -> Self {
        ContainerSlot {
            in_use: false,
            file_open: false,
            groups: Vec::new(),
            backend: None,
            dma: DmaMap::new(dma_storage),
        }
    }

    /// A free container slot (as [`ContainerSlot::new`]) with storage for exact
    /// locked-memory accounting: `runs` holds the container's charged physical runs
    /// (required by `Type1Config::exact_accounting`; see [`crate::type1::charge`]).
    pub fn with_accounting(dma_storage: &'s mut [DmaEntry], runs: &'s mut [ChargeRun]) -> Self {
        ContainerSlot {
            dma: DmaMap::with_accounting(dma_storage, runs),
            ..ContainerSlot::new(&mut [])
        }
    }
}

/// Storage for one VFIO group. Initialize with [`GroupSlot::EMPTY`].
#[derive(Debug, Clone, Copy)]
pub struct GroupSlot {
    in_use: bool,
    id: GroupId,
    /// False once the last device was unregistered (spec/01-core.md §6.3 step 6).
    live: bool,
    /// The group file object exists (opened and not yet finally closed).
    file_alive: bool,
    /// The user's group descriptor is still open.
    user_open: bool,
    container: Option<u16>,
    container_users: u32,
    devices: u32,
}

impl GroupSlot {
    /// An unused slot.
    pub const EMPTY: GroupSlot = GroupSlot {
        in_use: false,
        id: 0,
        live: false,
        file_alive: false,
        user_open: false,
        container: None,
        container_users: 0,
        devices: 0,
    };
}

impl Default for GroupSlot {
    fn default() -> Self {
        GroupSlot::EMPTY
    }
}

/// Registration state of a device (spec/01-core.md §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Registration {
    /// Visible in its group; can be opened.
    Registered,
    /// Removed from its group; waiting for its files to close, requesting release.
    Unregistering,
    /// Unregistration complete.
    Gone,
}

/// Counters of one device, for tests and tools. The `*_calls` counters wrap at 2^32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DeviceStats {
    /// Open device files.
    pub open_count: u32,
    /// `open_device` hook invocations since registration (failed ones included).
    pub open_calls: u32,
    /// `close_device` hook invocations since registration.
    pub close_calls: u32,
    /// `request` hook invocations since unregistration started.
    pub request_calls: u32,
}

/// Storage for one registered device and its bus-driver state.
#[derive(Debug)]
pub struct DeviceSlot<S> {
    generation: u32,
    state: Option<S>,
    registration: Registration,
    name: String<DEVICE_NAME_MAX>,
    group: u16,
    stats: DeviceStats,
    /// When the next `request` call falls due on the registry clock, in milliseconds
    /// (`None`: never, i.e. past `u64::MAX`).
    next_request_ms: Option<u64>,
}

impl<S> DeviceSlot<S> {
    /// An unused slot.
    pub const fn new() -> Self {
        DeviceSlot {
            generation: 0,
            state: None,
            registration: Registration::Gone,
            name: String::new(),
            group: 0,
            stats: DeviceStats {
                open_count: 0,
                open_calls: 0,
                close_calls: 0,
                request_calls: 0,
            },
            next_request_ms: None,
        }
    }
}

impl<S> Default for DeviceSlot<S> {
    fn default() -> Self {
        DeviceSlot::new()
    }
}

/// The embedder's storage for a [`Vfio`]: the capacities are the slice lengths.
///
/// File handles encode the slot in 12 bits, so at most 4096 file slots are used; objects
/// are indexed by `u16`, so at most 65536 container, group and device slots are used.
/// Slots beyond those limits are ignored.
#[derive(Debug)]
pub struct Storage<'s, S> {
    /// Open files (containers, groups, device files).
    pub files: &'s mut [FileSlot],
    /// Containers, each with its DMA map storage.
    pub containers: &'s mut [ContainerSlot<'s>],
    /// VFIO groups.
    pub groups: &'s mut [GroupSlot],
    /// Registered devices.
    pub devices: &'s mut [DeviceSlot<S>],
}

/// Registry-wide configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Config {
    /// Type1 settings, sampled when `SET_IOMMU` creates an instance.
    pub type1: Type1Config,
}

/// The VFIO core of one host. See the module documentation.
pub struct Vfio<'s, I: Iommu, M: HostMemory, D: BusDriver> {
    iommu: I,
    memory: M,
    driver: D,
    config: Config,
    files: &'s mut [FileSlot],
    containers: &'s mut [ContainerSlot<'s>],
    groups: &'s mut [GroupSlot],
    devices: &'s mut [DeviceSlot<D::State>],
    now_ms: u64,
}

impl<
        I: Iommu + core::fmt::Debug,
        M: HostMemory + core::fmt::Debug,
        D: BusDriver + core::fmt::Debug,
    > core::fmt::Debug for Vfio<'_, I, M, D>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Vfio")
            .field("iommu", &self.iommu)
            .field("memory", &self.memory)
            .field("driver", &self.driver)
            .field("now_ms", &self.now_ms)
            .finish_non_exhaustive()
    }
}

/// The registry's file table seen by [`driver::FdResolver`]: a group file held open by
/// the user names its IOMMU group.
struct FileView<'a> {
    files: &'a [FileSlot],
    groups: &'a [GroupSlot],
}

impl driver::FdResolver for FileView<'_> {
    fn resolve_fd(&self, fd: i32) -> driver::FdTarget {
        match lookup(self.files, Fd(fd)) {
            None => driver::FdTarget::NotOpen,
            Some(FileObject::Group(g)) => match self.groups.get(usize::from(g)) {
                Some(gs) if gs.in_use && gs.user_open => driver::FdTarget::Group(gs.id),
                _ => driver::FdTarget::Other,
            },
            Some(_) => driver::FdTarget::Other,
        }
    }
}

/// The object behind `fd` in `files` (never `Free`); `None` for a negative, closed,
/// stale or never-issued handle.
fn lookup(files: &[FileSlot], fd: Fd) -> Option<FileObject> {
    let (slot, generation) = fd.split()?;
    let file = files.get(slot)?;
    (file.generation == generation && file.object != FileObject::Free).then_some(file.object)
}

fn bump(generation: u32) -> u32 {
    if generation >= GENERATION_MAX {
        1
    } else {
        generation + 1
    }
}

impl<'s, I: Iommu, M: HostMemory, D: BusDriver> Vfio<'s, I, M, D> {
    /// A registry over the platform's IOMMU and host memory, with bus driver `driver`.
    ///
    /// Uses at most the first 4096 file slots and the first 65536 container, group and
    /// device slots of `storage` (see [`Storage`]); the clock starts at 0 ms.
    pub fn new(
        iommu: I,
        memory: M,
        driver: D,
        storage: Storage<'s, D::State>,
        config: Config,
    ) -> Self {
        Vfio {
            iommu,
            memory,
            driver,
            config,
            files: clamp(storage.files, 1 << SLOT_BITS),
            containers: clamp(storage.containers, TABLE_MAX),
            groups: clamp(storage.groups, TABLE_MAX),
            devices: clamp(storage.devices, TABLE_MAX),
            now_ms: 0,
        }
    }

    /// The platform IOMMU.
    pub fn iommu(&self) -> &I {
        &self.iommu
    }

    /// The platform IOMMU, mutably (host-side events such as driver binding).
    pub fn iommu_mut(&mut self) -> &mut I {
        &mut self.iommu
    }

    /// The host memory.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// The host memory, mutably.
    pub fn memory_mut(&mut self) -> &mut M {
        &mut self.memory
    }

    /// The bus driver.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// The bus driver, mutably.
    pub fn driver_mut(&mut self) -> &mut D {
        &mut self.driver
    }

    /// The registry configuration.
    pub fn config(&self) -> Config {
        self.config
    }

    // ---------------------------------------------------------------- files

    fn alloc_file(&mut self, object: FileObject) -> Result<Fd> {
        let (index, slot) = self
            .files
            .iter_mut()
            .enumerate()
            .find(|(_, s)| s.object == FileObject::Free)
            .ok_or(Errno::EMFILE)?;
        slot.generation = bump(slot.generation);
        slot.object = object;
        Ok(Fd::new(index, slot.generation))
    }

    /// The object behind `fd` (never `Free`): the one handle lookup of every operation.
    ///
    /// # Errors
    /// `EBADF` for a negative, closed, stale or never-issued handle.
    pub(crate) fn file(&self, fd: Fd) -> Result<FileObject> {
        lookup(self.files, fd).ok_or(Errno::EBADF)
    }

    /// The kind of object `fd` refers to.
    ///
    /// # Errors
    /// `EBADF` for a closed, stale or never-issued handle.
    pub fn file_kind(&self, fd: Fd) -> Result<FileKind> {
        Ok(match self.file(fd)? {
            FileObject::Container(_) => FileKind::Container,
            FileObject::Group(_) => FileKind::Group,
            FileObject::Device(_) => FileKind::Device,
            FileObject::Free => return Err(Errno::EBADF),
        })
    }

    fn free_file(&mut self, fd: Fd) {
        if let Some((slot, _)) = fd.split() {
            if let Some(file) = self.files.get_mut(slot) {
                file.object = FileObject::Free;
            }
        }
    }

    fn container_of(&self, fd: Fd) -> Result<usize> {
        match self.file(fd)? {
            FileObject::Container(c) => Ok(c as usize),
            _ => Err(Errno::EBADFD),
        }
    }

    fn group_of(&self, fd: Fd) -> Result<usize> {
        match self.file(fd)? {
            FileObject::Group(g) => Ok(g as usize),
            _ => Err(Errno::EBADFD),
        }
    }

    fn device_of(&self, fd: Fd) -> Result<usize> {
        match self.file(fd)? {
            FileObject::Device(d) => Ok(d as usize),
            _ => Err(Errno::EBADFD),
        }
    }

    /// Opens a new container (`open("/dev/vfio/vfio")`): state `Empty`.
    ///
    /// # Errors
    /// `ENOMEM` when every container slot is in use; `EMFILE` when the file table is full.
    pub fn open_container(&mut self) -> Result<Fd> {
        let index = self
            .containers
            .iter()
            .position(|c| !c.in_use)
            .ok_or(Errno::ENOMEM)?;
        let fd = self.alloc_file(FileObject::Container(index as u16))?;
        let container = &mut self.containers[index];
        container.in_use = true;
        container.file_open = true;
        container.groups.clear();
        container.backend = None;
        container.dma.clear();
        Ok(fd)
    }

    fn live_group(&self, id: GroupId) -> Option<usize> {
        self.groups
            .iter()
            .position(|g| g.in_use && g.live && g.id == id)
    }

    /// Opens the group file of IOMMU group `group` (spec/01-core.md §4.2 G1–G4).
    ///
    /// # Errors
    /// `ENODEV` when no VFIO device of that IOMMU group is registered; `EBUSY` when the
    /// group file is already open (or kept alive by open device files); `EMFILE`.
    pub fn open_group(&mut self, group: GroupId) -> Result<Fd> {
        let index = self.live_group(group).ok_or(Errno::ENODEV)?;
        if self.groups[index].file_alive {
            return Err(Errno::EBUSY);
        }
        let fd = self.alloc_file(FileObject::Group(index as u16))?;
        let slot = &mut self.groups[index];
        slot.file_alive = true;
        slot.user_open = true;
        Ok(fd)
    }

    /// Closes any file. Never fails for a valid handle (spec/01-core.md §4.2 G5, §6.2 D4–D6,
    /// §8.3).
    ///
    /// # Errors
    /// `EBADF` for a closed or stale handle.
    pub fn close(&mut self, fd: Fd) -> Result<()> {
        let object = self.file(fd)?;
        self.free_file(fd);
        match object {
            FileObject::Container(c) => {
                let container = &mut self.containers[c as usize];
                container.file_open = false;
                if container.groups.is_empty() {
                    container.in_use = false;
                }
            }
            FileObject::Group(g) => {
                let g = g as usize;
                self.groups[g].user_open = false;
                if self.groups[g].container_users <= 1 {
                    self.final_group_close(g);
                }
            }
            FileObject::Device(d) => self.close_device_file(d as usize),
            FileObject::Free => {}
        }
        Ok(())
    }

    /// G5: the group file object goes away (no device file pins it any more).
    fn final_group_close(&mut self, g: usize) {
        if self.groups[g].container.is_some() {
            self.detach_group(g);
        }
        self.groups[g].file_alive = false;
        self.maybe_free_group(g);
    }

    fn maybe_free_group(&mut self, g: usize) {
        let slot = &mut self.groups[g];
        if !slot.live && !slot.file_alive && slot.container.is_none() {
            *slot = GroupSlot::EMPTY;
        }
    }

    // ---------------------------------------------------------------- container ioctls

    /// `VFIO_CHECK_EXTENSION` (spec/01-core.md §5.4). Returns 0 or 1.
    ///
    /// # Errors
    /// `EBADF`; `EBADFD` when `fd` is not a container.
    pub fn check_extension(&self, fd: Fd, arg: u32) -> Result<u32> {
        let c = self.container_of(fd)?;
        Ok(match &self.containers[c].backend {
            Some(backend) => backend.check_extension(arg),
            None => Type1::check_extension_static(arg, self.config.type1.era),
        })
    }

    /// `VFIO_SET_IOMMU` (spec/01-core.md §5.2, §7.1.3): selects the Type1 backend and
    /// attaches every group, front to back.
    ///
    /// # Errors
    /// `EINVAL` without groups or with a backend already set, for type 9, or with
    /// `Type1Config::exact_accounting` on a container slot without run storage
    /// ([`ContainerSlot::with_accounting`]); `ENODEV` for a type no backend offers; the
    /// first attach error (every partial attach undone).
    pub fn set_iommu(&mut self, fd: Fd, kind: u32) -> Result<()> {
        let c = self.container_of(fd)?;
        let container = &self.containers[c];
        if container.groups.is_empty() || container.backend.is_some() {
            return Err(Errno::EINVAL);
        }
        if Type1::check_extension_static(kind, self.config.type1.era) == 0 {
            return Err(Errno::ENODEV);
        }
        let mut backend = Type1::open(kind, self.config.type1, self.memory.page_size())?;
        backend.check_storage(&container.dma)?;
        let groups = container.groups.clone();
        let container = &mut self.containers[c];
        for (k, &g) in groups.iter().enumerate() {
            let id = self.groups[g as usize].id;
            if let Err(e) =
                backend.attach_group(&mut container.dma, &mut self.iommu, &mut self.memory, id)
            {
                for &done in groups[..k].iter().rev() {
                    let done_id = self.groups[done as usize].id;
                    backend.detach_group(
                        &mut container.dma,
                        &mut self.iommu,
                        &mut self.memory,
                        done_id,
                    );
                }
                backend.release(&mut container.dma, &mut self.iommu, &mut self.memory);
                return Err(e);
            }
        }
        container.backend = Some(backend);
        Ok(())
    }

    fn backend_parts(&mut self, fd: Fd) -> Result<(&mut Type1, &mut DmaMap<'s>, &mut I, &mut M)> {
        let c = self.container_of(fd)?;
        self.container_backend(c)
    }

    /// The Type1 instance of container slot `c` (of an already resolved container file),
    /// with its DMA map and the platform.
    ///
    /// # Errors
    /// `EINVAL` while the container has no backend (spec/01-core.md §7.1.4).
    pub(crate) fn container_backend(
        &mut self,
        c: usize,
    ) -> Result<(&mut Type1, &mut DmaMap<'s>, &mut I, &mut M)> {
        let container = &mut self.containers[c];
        let backend = container.backend.as_mut().ok_or(Errno::EINVAL)?;
        Ok((
            backend,
            &mut container.dma,
            &mut self.iommu,
            &mut self.memory,
        ))
    }

    /// The Type1 instance of a container (`None` while it has no backend).
    ///
    /// # Errors
    /// `EBADF`; `EBADFD` when `fd` is not a container.
    pub fn type1(&self, fd: Fd) -> Result<Option<&Type1>> {
        let c = self.container_of(fd)?;
        Ok(self.containers[c].backend.as_ref())
    }

    /// `VFIO_IOMMU_MAP_DMA` (spec/02-type1.md §6): maps `request.size` bytes of process
    /// memory at `request.vaddr` to device address `request.iova`.
    ///
    /// # Errors
    /// `EBADF`; `EBADFD` when `fd` is not a container; `EINVAL` when the container has no
    /// backend (spec/01-core.md §7.1.4); otherwise [`Type1::map_dma`]'s errors
    /// (spec/02-type1.md §6.2 M1–M12).
    pub fn map_dma(&mut self, fd: Fd, request: &MapDma) -> Result<()> {
        let (backend, map, iommu, memory) = self.backend_parts(fd)?;
        backend.map_dma(map, iommu, memory, request)
    }

    /// `VFIO_IOMMU_UNMAP_DMA` (spec/02-type1.md §7); returns the bytes unmapped.
    ///
    /// # Errors
    /// `EBADF`; `EBADFD` when `fd` is not a container; `EINVAL` when the container has no
    /// backend; otherwise [`Type1::unmap_dma`]'s errors (spec/02-type1.md §7.2).
    pub fn unmap_dma(&mut self, fd: Fd, request: &UnmapDma) -> Result<u64> {
        let (backend, map, iommu, memory) = self.backend_parts(fd)?;
        backend.unmap_dma(map, iommu, memory, request, None)
    }

    /// `VFIO_IOMMU_UNMAP_DMA` with `GET_DIRTY_BITMAP` (spec/02-type1.md §7.3): `bitmap`
    /// receives the dirty bits of the removed entries, one bit per `pgsize` bytes, bit `k`
    /// for the page at `request.iova + k × pgsize` (bit `k % 64` of u64 word `k / 64`).
    /// The ABI dispatcher checks `bitmap`'s length (§7.2 U4) before calling this. Returns
    /// the bytes unmapped.
    ///
    /// # Errors
    /// `EBADF`; `EBADFD` when `fd` is not a container; `EINVAL` when the container has no
    /// backend; otherwise [`Type1::unmap_dma`]'s errors.
    pub fn unmap_dma_dirty(
        &mut self,
        fd: Fd,
        request: &UnmapDma,
        pgsize: u64,
        bitmap: &mut [u8],
    ) -> Result<u64> {
        let (backend, map, iommu, memory) = self.backend_parts(fd)?;
        backend.unmap_dma(map, iommu, memory, request, Some((pgsize, bitmap)))
    }

    /// `VFIO_IOMMU_DIRTY_PAGES` `START`/`STOP` (spec/02-type1.md §10.2).
    ///
    /// # Errors
    /// `EBADF`; `EBADFD` when `fd` is not a container; `EINVAL` without a backend;
    /// [`Type1::dirty_pages_control`]'s errors (§10.2 P3–P5).
    pub fn dirty_pages_control(&mut self, fd: Fd, flags: u32) -> Result<()> {
        let (backend, map, _, _) = self.backend_parts(fd)?;
        backend.dirty_pages_control(map, flags)
    }

    /// `VFIO_IOMMU_DIRTY_PAGES` `GET_BITMAP` (spec/02-type1.md §10.2 P6, §10.3) of the
    /// IOVA range `[iova, iova + size)` into `bitmap`: one bit per `pgsize` bytes, bit `k`
    /// for the page at `iova + k × pgsize`.
    ///
    /// # Errors
    /// `EBADF`; `EBADFD` when `fd` is not a container; `EINVAL` without a backend;
    /// [`Type1::dirty_bitmap`]'s errors.
    pub fn dirty_bitmap(
        &mut self,
        fd: Fd,
        iova: u64,
        size: u64,
        pgsize: u64,
        bitmap: &mut [u8],
    ) -> Result<()> {
        let (backend, map, _, _) = self.backend_parts(fd)?;
        backend.dirty_bitmap(map, iova, size, pgsize, bitmap)
    }

    /// The container's DMA entries in ascending IOVA order (empty without a backend).
    ///
    /// # Errors
    /// `EBADF`; `EBADFD` when `fd` is not a container.
    pub fn container_mappings(&self, fd: Fd) -> Result<Mappings<'_>> {
        let c = self.container_of(fd)?;
        let container = &self.containers[c];
        Ok(if container.backend.is_some() {
            Mappings::of(&container.dma)
        } else {
            Mappings::none()
        })
    }

    /// Number of IOMMU domains of the container's backend (0 without one).
    ///
    /// # Errors
    /// `EBADF`; `EBADFD` when `fd` is not a container.
    pub fn container_domain_count(&self, fd: Fd) -> Result<usize> {
        Ok(self.type1(fd)?.map_or(0, Type1::domain_count))
    }

    /// The IOMMU domain IOMMU group `group` is attached to, if any.
    pub fn group_domain(&self, group: GroupId) -> Option<DomainId> {
        let g = self
            .groups
            .iter()
            .find(|g| g.in_use && g.id == group && g.container.is_some())?;
        let backend = self.containers[g.container? as usize].backend.as_ref()?;
        backend.domain_of(group)
    }

    // ---------------------------------------------------------------- group ioctls

    /// `VFIO_GROUP_GET_STATUS` flags (spec/01-core.md §4.4).
    ///
    /// # Errors
    /// `EBADF`; `EBADFD` when `fd` is not a group; `ENODEV` for a dead group.
    pub fn group_status(&self, fd: Fd) -> Result<u32> {
        let g = &self.groups[self.group_of(fd)?];
        if !g.live {
            return Err(Errno::ENODEV);
        }
        Ok(if g.container.is_some() {
            group_flags::VIABLE | group_flags::CONTAINER_SET
        } else if self.iommu.group_viable(g.id) {
            group_flags::VIABLE
        } else {
            0
        })
    }

    /// `VFIO_GROUP_SET_CONTAINER` with container descriptor `container` (spec/01-core.md
    /// §4.3 A2–A10).
    ///
    /// # Errors
    /// `EBADF` when `container` is not an open file; `EINVAL` when the group is already
    /// attached; `ENODEV` for a dead group; `EBADFD` when `container` is not a container;
    /// `EPERM`/`EBUSY` from the DMA-ownership claim; the backend's attach error.
    pub fn group_set_container(&mut self, fd: Fd, container: i32) -> Result<()> {
        let g = self.group_of(fd)?;
        let target = self.file(Fd::from_raw(container))?;
        if self.groups[g].container.is_some() {
            return Err(Errno::EINVAL);
        }
        if !self.groups[g].live {
            return Err(Errno::ENODEV);
        }
        let FileObject::Container(c) = target else {
            return Err(Errno::EBADFD);
        };
        let c = c as usize;
        let id = self.groups[g].id;
        if self.containers[c].groups.is_full() {
            return Err(Errno::ENOMEM);
        }
        let emulated = self.iommu.group_info(id).is_some_and(|i| i.emulated);
        if !emulated {
            self.iommu.claim_dma_owner(id).map_err(|e| e.errno())?;
        }
        let container = &mut self.containers[c];
        if let Some(backend) = container.backend.as_mut() {
            if let Err(e) =
                backend.attach_group(&mut container.dma, &mut self.iommu, &mut self.memory, id)
            {
                if !emulated {
                    self.iommu.release_dma_owner(id);
                }
                return Err(e);
            }
        }
        // Not full (checked above): cannot fail.
        let _ = container.groups.insert(0, g as u16);
        let slot = &mut self.groups[g];
        slot.container = Some(c as u16);
        slot.container_users = 1;
        Ok(())
    }

    /// `VFIO_GROUP_UNSET_CONTAINER` (spec/01-core.md §4.3 U1–U3).
    ///
    /// # Errors
    /// `EINVAL` when not attached; `EBUSY` while a device of the group is open.
    pub fn group_unset_container(&mut self, fd: Fd) -> Result<()> {
        let g = self.group_of(fd)?;
        let slot = &self.groups[g];
        if slot.container.is_none() {
            return Err(Errno::EINVAL);
        }
        if slot.container_users != 1 {
            return Err(Errno::EBUSY);
        }
        self.detach_group(g);
        Ok(())
    }

    /// The common detach path (spec/01-core.md §5.3).
    fn detach_group(&mut self, g: usize) {
        let Some(c) = self.groups[g].container else {
            return;
        };
        let c = c as usize;
        let id = self.groups[g].id;
        let emulated = self.iommu.group_info(id).is_some_and(|i| i.emulated);
        let container = &mut self.containers[c];
        if let Some(backend) = container.backend.as_mut() {
            backend.detach_group(&mut container.dma, &mut self.iommu, &mut self.memory, id);
        }
        if !emulated {
            self.iommu.release_dma_owner(id);
        }
        if let Some(pos) = container.groups.iter().position(|&x| x as usize == g) {
            container.groups.remove(pos);
        }
        if container.groups.is_empty() {
            if let Some(mut backend) = container.backend.take() {
                backend.release(&mut container.dma, &mut self.iommu, &mut self.memory);
            }
            container.dma.clear();
            if !container.file_open {
                container.in_use = false;
            }
        }
        let slot = &mut self.groups[g];
        slot.container = None;
        slot.container_users = 0;
    }

    /// `VFIO_GROUP_GET_DEVICE_FD` (spec/01-core.md §7.2.4): `name` is the caller's bytes,
    /// read up to the first NUL (at most 4096 bytes including it).
    ///
    /// # Errors
    /// `EFAULT` when `name` ends before a NUL within 4096 bytes; `EINVAL` when no NUL is in
    /// the first 4096 bytes; `ENODEV` unknown name; `EMFILE`; `EINVAL` when the group is
    /// not attached or the container has no backend; the `open_device` hook's error.
    pub fn group_get_device_fd(&mut self, fd: Fd, name: &[u8]) -> Result<Fd> {
        let g = self.group_of(fd)?;
        let window = &name[..name.len().min(DEVICE_NAME_READ_MAX)];
        let name = match window.iter().position(|&b| b == 0) {
            Some(end) => &window[..end],
            None if name.len() >= DEVICE_NAME_READ_MAX => return Err(Errno::EINVAL),
            None => return Err(Errno::EFAULT),
        };
        let d = self
            .devices
            .iter()
            .position(|d| {
                d.state.is_some()
                    && d.registration == Registration::Registered
                    && d.group as usize == g
                    && d.name.as_bytes() == name
            })
            .ok_or(Errno::ENODEV)?;
        let file = self.alloc_file(FileObject::Device(d as u16))?;
        if let Err(e) = self.open_device(g, d) {
            self.free_file(file);
            return Err(e);
        }
        Ok(file)
    }

    /// D1–D3 of spec/01-core.md §6.2.
    fn open_device(&mut self, g: usize, d: usize) -> Result<()> {
        let group = &self.groups[g];
        let Some(c) = group.container else {
            return Err(Errno::EINVAL);
        };
        let device = &mut self.devices[d];
        device.stats.open_count += 1;
        if device.stats.open_count > 1 {
            return Ok(());
        }
        if self.containers[c as usize].backend.is_none() {
            device.stats.open_count -= 1;
            return Err(Errno::EINVAL);
        }
        device.stats.open_calls = device.stats.open_calls.wrapping_add(1);
        let result = match device.state.as_mut() {
            Some(state) => self.driver.open_device(state),
            None => Err(Errno::ENODEV),
        };
        if let Err(e) = result {
            device.stats.open_count -= 1;
            return Err(e);
        }
        self.groups[g].container_users += 1;
        Ok(())
    }

    fn close_device_file(&mut self, d: usize) {
        let g = self.devices[d].group as usize;
        let device = &mut self.devices[d];
        device.stats.open_count = device.stats.open_count.saturating_sub(1);
        if device.stats.open_count == 0 {
            device.stats.close_calls = device.stats.close_calls.wrapping_add(1);
            if let Some(state) = device.state.as_mut() {
                self.driver.close_device(state);
            }
            let group = &mut self.groups[g];
            group.container_users = group.container_users.saturating_sub(1);
            if !group.user_open && group.file_alive && group.container_users <= 1 {
                self.final_group_close(g);
            }
            if self.devices[d].registration == Registration::Unregistering {
                self.finish_unregister(d);
            }
        }
    }

    // ---------------------------------------------------------------- device ioctls

    /// Runs `f` with the bus driver and the device state behind device file `fd`.
    ///
    /// # Errors
    /// `EBADF`; `EBADFD` when `fd` is not a device file; `ENODEV` when the device's state
    /// is gone (unregistration complete); whatever `f` returns.
    pub fn with_device<R>(
        &mut self,
        fd: Fd,
        f: impl FnOnce(&mut D, &mut D::State) -> Result<R>,
    ) -> Result<R> {
        let d = self.device_of(fd)?;
        self.with_device_slot(d, f)
    }

    /// [`Vfio::with_device`] for device slot `d` of an already resolved device file
    /// (`ENODEV` once its state is gone).
    pub(crate) fn with_device_slot<R>(
        &mut self,
        d: usize,
        f: impl FnOnce(&mut D, &mut D::State) -> Result<R>,
    ) -> Result<R> {
        let state = self.devices[d].state.as_mut().ok_or(Errno::ENODEV)?;
        f(&mut self.driver, state)
    }

    /// A device ioctl the registry does not handle itself (vfio-pci: hot reset, spec/05
    /// §8), passed to [`BusDriver::ioctl_with_fds`] together with the registry's view of
    /// the caller's files, so that group descriptors can prove ownership.
    ///
    /// # Errors
    /// `EBADF`; `EBADFD` when `fd` is not a device file; `ENODEV` when the device's state
    /// is gone; the bus driver's errors (vfio-pci: `ENOTTY` for an unknown request).
    pub fn device_ioctl_with_fds(&mut self, fd: Fd, request: u32, arg: &mut [u8]) -> Result<i64> {
        let d = self.device_of(fd)?;
        self.device_slot_ioctl_with_fds(d, request, arg)
    }

    /// [`Vfio::device_ioctl_with_fds`] for device slot `d` of an already resolved device
    /// file.
    pub(crate) fn device_slot_ioctl_with_fds(
        &mut self,
        d: usize,
        request: u32,
        arg: &mut [u8],
    ) -> Result<i64> {
        let view = FileView {
            files: self.files,
            groups: self.groups,
        };
        let state = self.devices[d].state.as_mut().ok_or(Errno::ENODEV)?;
        self.driver.ioctl_with_fds(state, request, arg, &view)
    }

    /// The bus driver and the state of registered device `dev` (for interrupt delivery and
    /// tools). `None` for an unknown or unregistered device.
    pub fn device_parts(&self, dev: DeviceId) -> Option<(&D, &D::State)> {
        let d = self.device_slot(dev)?;
        Some((&self.driver, self.devices[d].state.as_ref()?))
    }

    // ---------------------------------------------------------------- host events

    /// Registers a device of IOMMU group `group` named `name` with bus-driver state `state`
    /// (spec/01-core.md §6.1); creates the VFIO group on its first device.
    ///
    /// # Errors
    /// `EINVAL` when the platform has no such IOMMU group or the name is empty or longer
    /// than [`DEVICE_NAME_MAX`]; `EEXIST` when a registered device has the same name;
    /// `ENOMEM` when the device or group table is full.
    pub fn register_device(
        &mut self,
        name: &str,
        group: GroupId,
        state: D::State,
    ) -> Result<DeviceId> {
        if self.iommu.group_info(group).is_none() {
            return Err(Errno::EINVAL);
        }
        let name: String<DEVICE_NAME_MAX> = String::try_from(name).map_err(|_| Errno::EINVAL)?;
        if name.is_empty() {
            return Err(Errno::EINVAL);
        }
        if self.device_by_name(&name).is_some() {
            return Err(Errno::EEXIST);
        }
        let d = self
            .devices
            .iter()
            .position(|s| s.state.is_none())
            .ok_or(Errno::ENOMEM)?;
        let g = match self.live_group(group) {
            Some(g) => g,
            None => {
                let g = self
                    .groups
                    .iter()
                    .position(|s| !s.in_use)
                    .ok_or(Errno::ENOMEM)?;
                self.groups[g] = GroupSlot {
                    in_use: true,
                    id: group,
                    live: true,
                    ..GroupSlot::EMPTY
                };
                g
            }
        };
        self.groups[g].devices += 1;
        let slot = &mut self.devices[d];
        slot.generation = bump(slot.generation);
        slot.state = Some(state);
        slot.registration = Registration::Registered;
        slot.name = name;
        slot.group = g as u16;
        slot.stats = DeviceStats::default();
        Ok(DeviceId {
            slot: d as u16,
            generation: slot.generation,
        })
    }

    fn device_slot(&self, dev: DeviceId) -> Option<usize> {
        let slot = self.devices.get(dev.slot as usize)?;
        (slot.generation == dev.generation).then_some(dev.slot as usize)
    }

    /// The registered (not unregistering) device named `name` (exact bytes); `None` when
    /// there is none.
    pub fn device_by_name(&self, name: &str) -> Option<DeviceId> {
        self.devices
            .iter()
            .enumerate()
            .find(|(_, s)| {
                s.state.is_some() && s.registration == Registration::Registered && s.name == name
            })
            .map(|(i, s)| DeviceId {
                slot: i as u16,
                generation: s.generation,
            })
    }

    /// The name of device `dev` (at most [`DEVICE_NAME_MAX`] bytes); `None` for a stale
    /// id. Kept after unregistration completes, until the slot is reused.
    pub fn device_name(&self, dev: DeviceId) -> Option<&str> {
        self.device_slot(dev).map(|d| self.devices[d].name.as_str())
    }

    /// Registration state of `dev` (`Gone` once unregistration completed).
    pub fn device_registration(&self, dev: DeviceId) -> Option<Registration> {
        self.device_slot(dev).map(|d| self.devices[d].registration)
    }

    /// Counters of `dev` (kept after unregistration completes, until the slot is reused).
    pub fn device_stats(&self, dev: DeviceId) -> Option<DeviceStats> {
        self.device_slot(dev).map(|d| self.devices[d].stats)
    }

    /// Starts unregistering `dev` (spec/01-core.md §6.3): it leaves its group's device list
    /// at once; if it has open files, `request(0)` is called now and again every
    /// [`REQUEST_INTERVAL_MS`] of [`Vfio::advance_time`] until the last file closes.
    /// Returns whether unregistration is already complete.
    ///
    /// # Errors
    /// `ENODEV` when `dev` is not registered.
    pub fn unregister_device(&mut self, dev: DeviceId) -> Result<bool> {
        let d = self.device_slot(dev).ok_or(Errno::ENODEV)?;
        if self.devices[d].registration != Registration::Registered {
            return Err(Errno::ENODEV);
        }
        self.devices[d].registration = Registration::Unregistering;
        if self.devices[d].stats.open_count == 0 {
            self.finish_unregister(d);
            return Ok(true);
        }
        Self::send_request(&mut self.driver, &mut self.devices[d]);
        self.devices[d].next_request_ms = self.now_ms.checked_add(REQUEST_INTERVAL_MS);
        Ok(false)
    }

    /// Calls `request(count)` on `device`; `count` wraps at 2^32 like the kernel's
    /// `unsigned int`.
    fn send_request(driver: &mut D, device: &mut DeviceSlot<D::State>) {
        let count = device.stats.request_calls;
        device.stats.request_calls = count.wrapping_add(1);
        if let Some(state) = device.state.as_mut() {
            driver.request(state, count);
        }
    }

    /// Step 6 of spec/01-core.md §6.3: the device leaves its group; the group dies with its
    /// last device (detached from its container, which may release the backend).
    fn finish_unregister(&mut self, d: usize) {
        let g = self.devices[d].group as usize;
        self.devices[d].registration = Registration::Gone;
        self.devices[d].state = None;
        let group = &mut self.groups[g];
        group.devices = group.devices.saturating_sub(1);
        if group.devices == 0 {
            group.live = false;
            if group.container.is_some() {
                self.detach_group(g);
            }
            self.maybe_free_group(g);
        }
    }

    /// Advances the registry clock by `ms` milliseconds, calling `request` on devices being
    /// unregistered every [`REQUEST_INTERVAL_MS`] (spec/01-core.md §6.3: at t = 0, 10 s,
    /// 20 s, … after unregistration started), once per interval that elapses.
    ///
    /// The clock saturates at `u64::MAX` ms; a request that would fall due after that
    /// instant never does (a saturated clock must not call `request` without end).
    pub fn advance_time(&mut self, ms: u64) {
        self.now_ms = self.now_ms.saturating_add(ms);
        for device in self.devices.iter_mut() {
            while device.registration == Registration::Unregistering
                && device.next_request_ms.is_some_and(|due| due <= self.now_ms)
            {
                Self::send_request(&mut self.driver, device);
                device.next_request_ms = device
                    .next_request_ms
                    .and_then(|due| due.checked_add(REQUEST_INTERVAL_MS));
            }
        }
    }

    /// Whether an IOMMU group with registered VFIO devices exists.
    pub fn group_exists(&self, group: GroupId) -> bool {
        self.live_group(group).is_some()
    }

    /// The registered devices in slot order.
    pub fn devices(&self) -> impl Iterator<Item = DeviceId> + '_ {
        self.devices
            .iter()
            .enumerate()
            .filter(|(_, s)| s.state.is_some())
            .map(|(i, s)| DeviceId {
                slot: i as u16,
                generation: s.generation,
            })
    }

    /// The IOMMU group of device `dev`; `None` for a stale id.
    pub fn device_group(&self, dev: DeviceId) -> Option<GroupId> {
        self.device_slot(dev)
            .map(|d| self.groups[self.devices[d].group as usize].id)
    }
}

#[cfg(test)]
mod tests;
