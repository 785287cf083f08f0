//! The system under test: `vfio_core`'s registry ([`Vfio`]) over the fixture platform,
//! adapted to the runner's [`Machine`] interface.

use std::collections::BTreeMap;

use vfio_core::abi::Arg;
use vfio_core::platform::{DomainId, GroupId, HostMemory, Iommu};
use vfio_core::type1::{DmaEntry, MapDma, Type1Config, UnmapDma};
use vfio_core::vfio::{
    validate_irq_set, BusDriver, CapChain, Config, ContainerSlot, DeviceId, DeviceSlot, Fd,
    FileKind, FileSlot, GroupSlot, IrqSetRequest, Registration, Storage, Vfio,
};
use vfio_core::{Errno, Result};

use crate::fixture::{FixtureIommu, FixtureMemory, TemplateDevice, TemplateDriver};
use crate::runner::{DispatchPath, IoctlArg, Machine, Setup, Verdict};

/// Capacities of the storage given to the registry for one case.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// File slots.
    pub files: usize,
    /// Container slots.
    pub containers: usize,
    /// DMA entries per container (the Type1 map is capped at this many entries).
    pub dma_entries: usize,
    /// VFIO group slots.
    pub groups: usize,
    /// Device slots.
    pub devices: usize,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            files: 64,
            containers: 4,
            dma_entries: 256,
            groups: 16,
            devices: 16,
        }
    }
}

/// The registry with the fixture platform, the template driver and the fixture's devices
/// registered.
pub type FixtureVfio<'s> = Vfio<'s, FixtureIommu, FixtureMemory, TemplateDriver>;

/// Adapts a [`FixtureVfio`] to the runner's [`Machine`] interface.
#[derive(Debug)]
pub struct RegistryMachine<'v, 's> {
    vfio: &'v mut FixtureVfio<'s>,
    /// `Typed`: ioctls go through [`typed_ioctl`]; otherwise through `Vfio::ioctl`.
    path: DispatchPath,
    /// Device ids by name, kept after unregistration (the registry forgets the name).
    ids: BTreeMap<String, DeviceId>,
}

impl<'v, 's> RegistryMachine<'v, 's> {
    /// Wraps `vfio`, remembering the ids of its currently registered devices; ioctls go
    /// through the byte-level dispatcher.
    pub fn new(vfio: &'v mut FixtureVfio<'s>) -> Self {
        Self::with_path(vfio, DispatchPath::Abi)
    }

    /// As [`RegistryMachine::new`]; `DispatchPath::Typed` sends ioctls through the typed
    /// API ([`typed_ioctl`]).
    pub fn with_path(vfio: &'v mut FixtureVfio<'s>, path: DispatchPath) -> Self {
        let ids = vfio
            .devices()
            .filter_map(|d| Some((vfio.device_name(d)?.to_string(), d)))
            .collect();
        RegistryMachine { vfio, path, ids }
    }
}

fn fd(raw: i32) -> vfio_core::vfio::Fd {
    vfio_core::vfio::Fd::from_raw(raw)
}

impl Machine for RegistryMachine<'_, '_> {
    fn open_container(&mut self) -> Result<i32> {
        self.vfio.open_container().map(|f| f.raw())
    }

    fn open_group(&mut self, group: GroupId) -> Result<i32> {
        self.vfio.open_group(group).map(|f| f.raw())
    }

    fn close(&mut self, raw: i32) -> Result<()> {
        self.vfio.close(fd(raw))
    }

    fn ioctl(&mut self, raw: i32, request: u32, arg: IoctlArg<'_>) -> Result<i64> {
        if self.path == DispatchPath::Typed {
            return typed_ioctl(self.vfio, fd(raw), request, arg);
        }
        let arg = match arg {
            IoctlArg::None => Arg::None,
            IoctlArg::Value(v) => Arg::Value(v),
            IoctlArg::Buffer(b) => Arg::Buffer(b),
        };
        self.vfio.ioctl(fd(raw), request, arg)
    }

    fn unregister_device(&mut self, name: &str) -> Result<()> {
        let dev = self.vfio.device_by_name(name).ok_or(Errno::ENODEV)?;
        self.ids.insert(name.to_string(), dev);
        self.vfio.unregister_device(dev).map(|_| ())
    }

    fn advance_time(&mut self, ms: u64) {
        self.vfio.advance_time(ms);
    }

    fn unregister_status(&self, name: &str) -> Option<(bool, u32)> {
        let dev = *self.ids.get(name)?;
        let reg = self.vfio.device_registration(dev)?;
        if reg == Registration::Registered {
            return None;
        }
        let stats = self.vfio.device_stats(dev)?;
        Some((reg == Registration::Gone, stats.request_calls))
    }

    fn device_stats(&self, name: &str) -> Option<(u32, u32, u32)> {
        let dev = self
            .vfio
            .device_by_name(name)
            .or_else(|| self.ids.get(name).copied())?;
        let s = self.vfio.device_stats(dev)?;
        Some((s.open_count, s.open_calls, s.close_calls))
    }

    fn container_mappings(&self, raw: i32) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .vfio
            .container_mappings(fd(raw))?
            .iter()
            .map(|e| (e.iova, e.size))
            .collect())
    }

    fn container_domain_count(&self, raw: i32) -> Result<usize> {
        self.vfio.container_domain_count(fd(raw))
    }

    fn invalid_vaddr_iovas(&self, raw: i32) -> Result<Vec<u64>> {
        Ok(self
            .vfio
            .container_mappings(fd(raw))?
            .iter()
            .filter(|e| e.vaddr_invalid)
            .map(|e| e.iova)
            .collect())
    }

    fn group_domain(&self, group: GroupId) -> Option<DomainId> {
        self.vfio.group_domain(group)
    }
}

/// Builds the registry for one case — storage of `cap`, the fixture's IOMMU and memory,
/// the fixture's VFIO devices registered — and runs `body` against it.
///
/// # Errors
/// A message when a fixture device cannot be registered.
pub fn with_registry(
    setup: &Setup<'_>,
    cap: Capacity,
    body: &mut dyn FnMut(&mut dyn Machine) -> Verdict,
) -> std::result::Result<Verdict, String> {
    with_registry_path(setup, cap, DispatchPath::Abi, body)
}

/// [`with_registry`] whose machine sends ioctls along `path` (`Abi` or `Typed`).
///
/// # Errors
/// A message when a fixture device cannot be registered.
pub fn with_registry_path(
    setup: &Setup<'_>,
    cap: Capacity,
    path: DispatchPath,
    body: &mut dyn FnMut(&mut dyn Machine) -> Verdict,
) -> std::result::Result<Verdict, String> {
    let mut dma: Vec<Vec<DmaEntry>> = (0..cap.containers)
        .map(|_| vec![DmaEntry::EMPTY; cap.dma_entries])
        .collect();
    let mut containers: Vec<ContainerSlot<'_>> = dma
        .iter_mut()
        .map(|d| ContainerSlot::new(d.as_mut_slice()))
        .collect();
    let mut files = vec![FileSlot::EMPTY; cap.files];
    let mut groups: Vec<GroupSlot> = (0..cap.groups).map(|_| GroupSlot::EMPTY).collect();
    let mut devices: Vec<DeviceSlot<TemplateDevice>> =
        (0..cap.devices).map(|_| DeviceSlot::new()).collect();
    let config = Config {
        type1: Type1Config {
            dma_entry_limit: setup
                .env
                .dma_entry_limit
                .unwrap_or(setup.spec.dma_entry_limit),
            allow_unsafe_interrupts: setup.spec.allow_unsafe_interrupts,
            ..Type1Config::default()
        },
    };
    let mut vfio = Vfio::new(
        setup.iommu.clone(),
        setup.memory.clone(),
        TemplateDriver,
        Storage {
            files: &mut files,
            containers: &mut containers,
            groups: &mut groups,
            devices: &mut devices,
        },
        config,
    );
    for (group, dev) in setup.spec.vfio_devices() {
        let template = setup
            .spec
            .templates
            .get(&dev.template)
            .cloned()
            .ok_or_else(|| format!("device {}: unknown template `{}`", dev.name, dev.template))?;
        let open_fails = setup
            .env
            .open_fails
            .as_ref()
            .filter(|(name, _)| *name == dev.name)
            .map(|(_, e)| *e);
        let state = TemplateDevice::new(&dev.name, template, open_fails);
        vfio.register_device(&dev.name, group, state)
            .map_err(|e| format!("register_device({}, group {group}): {}", dev.name, e.name()))?;
    }
    let mut machine = RegistryMachine::with_path(&mut vfio, path);
    Ok(body(&mut machine))
}

/// [`with_registry`] with the default [`Capacity`], in the shape of a
/// [`crate::runner::MachineBuilder`].
pub fn registry_builder(
    setup: &Setup<'_>,
    body: &mut dyn FnMut(&mut dyn Machine) -> Verdict,
) -> std::result::Result<Verdict, String> {
    with_registry(setup, Capacity::default(), body)
}

/// The typed-path twin of [`registry_builder`]: the same registry, ioctls decoded by the
/// harness and sent through the typed API ([`typed_ioctl`]).
pub fn typed_registry_builder(
    setup: &Setup<'_>,
    body: &mut dyn FnMut(&mut dyn Machine) -> Verdict,
) -> std::result::Result<Verdict, String> {
    with_registry_path(setup, Capacity::default(), DispatchPath::Typed, body)
}

// ------------------------------------------------------------------------------------------
// The typed path
// ------------------------------------------------------------------------------------------

/// Request numbers of spec/01-core.md §2 (`0x3B00 | (100 + n)`), spelled out here rather
/// than taken from `vfio_core::uapi` so that the typed path shares nothing with the
/// dispatcher but the typed API itself.
mod req {
    pub const GET_API_VERSION: u32 = 0x3b64;
    pub const CHECK_EXTENSION: u32 = 0x3b65;
    pub const SET_IOMMU: u32 = 0x3b66;
    pub const GROUP_GET_STATUS: u32 = 0x3b67;
    pub const GROUP_SET_CONTAINER: u32 = 0x3b68;
    pub const GROUP_UNSET_CONTAINER: u32 = 0x3b69;
    pub const GROUP_GET_DEVICE_FD: u32 = 0x3b6a;
    pub const DEVICE_GET_INFO: u32 = 0x3b6b;
    pub const DEVICE_GET_REGION_INFO: u32 = 0x3b6c;
    pub const DEVICE_GET_IRQ_INFO: u32 = 0x3b6d;
    pub const DEVICE_SET_IRQS: u32 = 0x3b6e;
    pub const DEVICE_RESET: u32 = 0x3b6f;
    pub const IOMMU_GET_INFO: u32 = 0x3b70;
    pub const IOMMU_MAP_DMA: u32 = 0x3b71;
    pub const IOMMU_UNMAP_DMA: u32 = 0x3b72;
    pub const IOMMU_DIRTY_PAGES: u32 = 0x3b75;
}

/// Reads the little-endian `u32` at `off` (`EFAULT` past the end of the buffer: the
/// kernel's failed `copy_from_user`).
fn get32(buf: &[u8], off: usize) -> Result<u32> {
    let b = buf.get(off..off + 4).ok_or(Errno::EFAULT)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn get64(buf: &[u8], off: usize) -> Result<u64> {
    let lo = get32(buf, off)?;
    let hi = get32(buf, off + 4)?;
    Ok(u64::from(lo) | (u64::from(hi) << 32))
}

/// A fixed structure being written back: `bytes` is the structure image; `write_back`
/// copies its first `n` bytes to the caller's buffer (`EFAULT` when the buffer is shorter).
struct Image {
    bytes: Vec<u8>,
}

impl Image {
    fn read(buf: &[u8], size: usize, minsz: usize) -> Result<Image> {
        let mut bytes = vec![0u8; size];
        bytes[..minsz].copy_from_slice(buf.get(..minsz).ok_or(Errno::EFAULT)?);
        Ok(Image { bytes })
    }
    /// [`Image::read`], refusing an `argsz` (at 0) below `minsz` with `EINVAL`; the image
    /// and its `argsz`.
    fn read_argsz(buf: &[u8], size: usize, minsz: usize) -> Result<(Image, u32)> {
        let image = Image::read(buf, size, minsz)?;
        let argsz = image.get32(0);
        if (argsz as usize) < minsz {
            return Err(Errno::EINVAL);
        }
        Ok((image, argsz))
    }
    fn set32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn set64(&mut self, off: usize, v: u64) {
        self.bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn get32(&self, off: usize) -> u32 {
        get32(&self.bytes, off).unwrap_or(0)
    }
    fn write_back(&self, buf: &mut [u8], n: usize) -> Result<()> {
        let n = n.min(self.bytes.len());
        buf.get_mut(..n)
            .ok_or(Errno::EFAULT)?
            .copy_from_slice(&self.bytes[..n]);
        Ok(())
    }
}

/// The capability protocol of spec/01-core.md §3.2 for a fixed structure of `fixed`
/// bytes whose `argsz` is at 0, `flags` at 4 and `cap_offset` at `cap_at`: with a
/// non-empty `chain`, sets `caps_flag`, then either asks for a bigger buffer (`argsz` =
/// `fixed + chain`, `cap_offset` = 0) or copies the chain behind the structure with every
/// non-zero `next` made relative to the buffer start.
fn apply_caps(
    image: &mut Image,
    buf: &mut [u8],
    fixed: usize,
    cap_at: usize,
    caps_flag: u32,
    chain: &[u8],
) -> Result<()> {
    if chain.is_empty() {
        return Ok(());
    }
    let flags = image.get32(4) | caps_flag;
    image.set32(4, flags);
    let needed = fixed + chain.len();
    if (image.get32(0) as usize) < needed {
        image.set32(0, needed as u32);
        image.set32(cap_at, 0);
        return Ok(());
    }
    let mut copy = chain.to_vec();
    let mut at = 0usize;
    loop {
        let next = get32(&copy, at + 4)? as usize;
        if next == 0 {
            break;
        }
        copy[at + 4..at + 8].copy_from_slice(&((next + fixed) as u32).to_le_bytes());
        if next <= at {
            break;
        }
        at = next;
    }
    buf.get_mut(fixed..needed)
        .ok_or(Errno::EFAULT)?
        .copy_from_slice(&copy);
    image.set32(cap_at, fixed as u32);
    Ok(())
}

/// The `vfio_bitmap` at offset 24 of `buf` (`pgsize`, `size`, `data`): checks U4 of
/// spec/02-type1.md §7.2 for a range of `range_size` bytes and returns `(pgsize, offset of
/// the bitmap in buf, size)`. The harness's convention: `data` is the offset of the bitmap
/// bytes inside the same buffer.
fn bitmap_of(buf: &[u8], range_size: u64) -> Result<(u64, usize, usize)> {
    let pgsize = get64(buf, 24)?;
    let size = get64(buf, 32)?;
    let data = get64(buf, 40)?;
    let end = data.checked_add(size).ok_or(Errno::EINVAL)?;
    if end > buf.len() as u64 || data < 48 {
        return Err(Errno::EINVAL);
    }
    if pgsize == 0 {
        return Err(Errno::EINVAL);
    }
    let npages = range_size >> pgsize.trailing_zeros();
    if npages == 0 || size == 0 || size > 1 << 28 || size < 8 * npages.div_ceil(64) {
        return Err(Errno::EINVAL);
    }
    Ok((pgsize, data as usize, size as usize))
}

/// One ioctl through the typed API: the file's kind chooses the handler as the kernel's
/// dispatch does (spec/01-core.md §2), the request is decoded from the buffer by this
/// harness's own reading of spec/01-core.md §3 and §7 and spec/02-type1.md §6–§10, the
/// typed method is called, and its answer is encoded back into the buffer.
///
/// # Errors
/// The errno of the decoding rule or of the typed method.
pub fn typed_ioctl<I: Iommu, M: HostMemory, D: BusDriver>(
    vfio: &mut Vfio<'_, I, M, D>,
    fd: Fd,
    request: u32,
    arg: IoctlArg<'_>,
) -> Result<i64> {
    let (value, buf): (u64, &mut [u8]) = match arg {
        IoctlArg::None => (0, &mut []),
        IoctlArg::Value(v) => (v, &mut []),
        IoctlArg::Buffer(b) => (0, b),
    };
    match vfio.file_kind(fd)? {
        FileKind::Container => typed_container(vfio, fd, request, value, buf),
        FileKind::Group => typed_group(vfio, fd, request, buf),
        FileKind::Device => typed_device(vfio, fd, request, buf),
    }
}

fn typed_container<I: Iommu, M: HostMemory, D: BusDriver>(
    vfio: &mut Vfio<'_, I, M, D>,
    fd: Fd,
    request: u32,
    value: u64,
    buf: &mut [u8],
) -> Result<i64> {
    match request {
        req::GET_API_VERSION => return Ok(0),
        // No extension number exceeds 32 bits: such an argument names nothing supported.
        req::CHECK_EXTENSION => {
            return match u32::try_from(value) {
                Ok(ext) => vfio.check_extension(fd, ext).map(i64::from),
                Err(_) => vfio.check_extension(fd, u32::MAX).map(|_| 0),
            }
        }
        req::SET_IOMMU => {
            let kind = u32::try_from(value).unwrap_or(u32::MAX);
            return vfio.set_iommu(fd, kind).map(|()| 0);
        }
        _ => {}
    }
    // Everything else goes to the backend; without one the core answers EINVAL.
    let Some(type1) = vfio.type1(fd)? else {
        return Err(Errno::EINVAL);
    };
    match request {
        req::IOMMU_GET_INFO => {
            // minsz 16, F = 24, write back min(argsz, 24) (spec/02-type1.md §9.1).
            let (mut image, argsz) = Image::read_argsz(buf, 24, 16)?;
            let mut scratch = vec![0u8; 4096];
            let (flags, pgsizes, len) = type1.info(&mut scratch)?;
            image.set32(4, flags);
            image.set64(8, pgsizes);
            image.set32(16, 0);
            image.set32(20, 0);
            apply_caps(&mut image, buf, 24, 16, 0x2, &scratch[..len])?;
            image.write_back(buf, (argsz as usize).min(24))?;
            Ok(0)
        }
        req::IOMMU_MAP_DMA => {
            // M1–M2 (spec/02-type1.md §6.2); nothing is written back.
            let argsz = get32(buf, 0)?;
            let flags = get32(buf, 4)?;
            let request = MapDma {
                flags,
                vaddr: get64(buf, 8)?,
                iova: get64(buf, 16)?,
                size: get64(buf, 24)?,
            };
            if argsz < 32 || flags & !0x7 != 0 {
                return Err(Errno::EINVAL);
            }
            vfio.map_dma(fd, &request).map(|()| 0)
        }
        req::IOMMU_UNMAP_DMA => {
            // U1–U4 (spec/02-type1.md §7.2); on success the first 24 bytes are written
            // back with `size` = bytes unmapped.
            let mut image = Image::read(buf, 24, 24)?;
            let (argsz, flags) = (image.get32(0), image.get32(4));
            if argsz < 24 || flags & !0x7 != 0 {
                return Err(Errno::EINVAL);
            }
            let dirty = flags & 0x1 != 0;
            if dirty && flags & 0x6 != 0 {
                return Err(Errno::EINVAL);
            }
            let request = UnmapDma {
                flags,
                iova: get64(buf, 8)?,
                size: get64(buf, 16)?,
            };
            let total = if dirty {
                if argsz < 48 {
                    return Err(Errno::EINVAL);
                }
                let (pgsize, at, len) = bitmap_of(buf, request.size)?;
                vfio.unmap_dma_dirty(fd, &request, pgsize, &mut buf[at..at + len])?
            } else {
                vfio.unmap_dma(fd, &request)?
            };
            image.set64(16, total);
            image.write_back(buf, 24)?;
            Ok(0)
        }
        req::IOMMU_DIRTY_PAGES => {
            // P1–P6 (spec/02-type1.md §10.2); only the bitmap is written.
            if !type1.is_v2() {
                return Err(Errno::EACCES);
            }
            let argsz = get32(buf, 0)?;
            let flags = get32(buf, 4)?;
            if argsz < 8 || flags & !0x7 != 0 || flags.count_ones() != 1 {
                return Err(Errno::EINVAL);
            }
            if flags != 0x4 {
                return vfio.dirty_pages_control(fd, flags).map(|()| 0);
            }
            if argsz - 8 < 40 {
                return Err(Errno::EINVAL);
            }
            let iova = get64(buf, 8)?;
            let size = get64(buf, 16)?;
            get64(buf, 40)?;
            if size == 0 {
                return Err(Errno::EINVAL);
            }
            // The range check of P6 (and the 6.1 era's refusal of a range ending at
            // 2^64 - 1) is the backend's.
            type1.check_bitmap_range(iova, size)?;
            let (pgsize, at, len) = bitmap_of(buf, size)?;
            vfio.dirty_bitmap(fd, iova, size, pgsize, &mut buf[at..at + len])
                .map(|()| 0)
        }
        // Type1 answers requests it does not know with ENOTTY.
        _ => Err(Errno::ENOTTY),
    }
}

fn typed_group<I: Iommu, M: HostMemory, D: BusDriver>(
    vfio: &mut Vfio<'_, I, M, D>,
    fd: Fd,
    request: u32,
    buf: &mut [u8],
) -> Result<i64> {
    match request {
        req::GROUP_GET_STATUS => {
            let (mut image, _) = Image::read_argsz(buf, 8, 8)?;
            image.set32(4, vfio.group_status(fd)?);
            image.write_back(buf, 8)?;
            Ok(0)
        }
        req::GROUP_SET_CONTAINER => {
            let container = get32(buf, 0)? as i32;
            vfio.group_set_container(fd, container).map(|()| 0)
        }
        req::GROUP_UNSET_CONTAINER => vfio.group_unset_container(fd).map(|()| 0),
        req::GROUP_GET_DEVICE_FD => vfio
            .group_get_device_fd(fd, buf)
            .map(|d| i64::from(d.raw())),
        _ => Err(Errno::ENOTTY),
    }
}

/// The device's `(num_regions, num_irqs)`.
fn counts<D: BusDriver>(driver: &mut D, state: &mut D::State) -> Result<(u32, u32)> {
    let mut scratch = vec![0u8; 4096];
    let info = driver.device_info(state, &mut CapChain::new(&mut scratch))?;
    Ok((info.num_regions, info.num_irqs))
}

/// One SET_IRQS on the typed path: the generic validation against the device's counts,
/// then the driver (`payload`: the bytes after the header).
pub(crate) fn typed_set_irqs<D: BusDriver>(
    driver: &mut D,
    state: &mut D::State,
    header: &vfio_core::uapi::IrqSet,
    payload: &[u8],
) -> Result<i64> {
    let (_, num_irqs) = counts(driver, state)?;
    let num = if header.index < num_irqs {
        driver.irq_info(state, header.index).map_or(0, |i| i.count)
    } else {
        0
    };
    let size = validate_irq_set(header, num, num_irqs)?;
    let payload = payload.get(..size).ok_or(Errno::EFAULT)?;
    let request = IrqSetRequest {
        flags: header.flags,
        index: header.index,
        start: header.start,
        count: header.count,
    };
    driver.set_irqs(state, &request, payload).map(i64::from)
}

fn typed_device<I: Iommu, M: HostMemory, D: BusDriver>(
    vfio: &mut Vfio<'_, I, M, D>,
    fd: Fd,
    request: u32,
    buf: &mut [u8],
) -> Result<i64> {
    match request {
        req::DEVICE_GET_INFO => {
            // minsz 16, F = 24, CAPS 0x80, write back min(argsz, 24) (§7.3.1).
            let (mut image, argsz) = Image::read_argsz(buf, 24, 16)?;
            let mut scratch = vec![0u8; 4096];
            let (info, len) = vfio.with_device(fd, |driver, state| {
                let mut chain = CapChain::new(&mut scratch);
                let info = driver.device_info(state, &mut chain)?;
                Ok((info, chain.len()))
            })?;
            image.set32(4, info.flags);
            image.set32(8, info.num_regions);
            image.set32(12, info.num_irqs);
            image.set32(16, 0);
            image.set32(20, 0);
            apply_caps(&mut image, buf, 24, 16, 0x80, &scratch[..len])?;
            image.write_back(buf, (argsz as usize).min(24))?;
            Ok(0)
        }
        req::DEVICE_GET_REGION_INFO => {
            // minsz 32 (cap_offset is the caller's when there are no caps), F = 32,
            // CAPS 0x8, write back 32 (§7.3.2).
            let (mut image, _) = Image::read_argsz(buf, 32, 32)?;
            let index = image.get32(8);
            let mut scratch = vec![0u8; 4096];
            let (info, len) = vfio.with_device(fd, |driver, state| {
                let (num_regions, _) = counts(driver, state)?;
                if index >= num_regions {
                    return Err(Errno::EINVAL);
                }
                let mut chain = CapChain::new(&mut scratch);
                let info = driver.region_info(state, index, &mut chain)?;
                Ok((info, chain.len()))
            })?;
            image.set32(4, info.flags);
            image.set64(16, info.size);
            image.set64(24, info.offset);
            apply_caps(&mut image, buf, 32, 12, 0x8, &scratch[..len])?;
            image.write_back(buf, 32)?;
            Ok(0)
        }
        req::DEVICE_GET_IRQ_INFO => {
            let mut image = Image::read(buf, 16, 16)?;
            let (argsz, index) = (image.get32(0), image.get32(8));
            let info = vfio.with_device(fd, |driver, state| {
                let (_, num_irqs) = counts(driver, state)?;
                if argsz < 16 || index >= num_irqs {
                    return Err(Errno::EINVAL);
                }
                driver.irq_info(state, index)
            })?;
            image.set32(4, info.flags);
            image.set32(12, info.count);
            image.write_back(buf, 16)?;
            Ok(0)
        }
        req::DEVICE_SET_IRQS => {
            let header = vfio_core::uapi::IrqSet {
                argsz: get32(buf, 0)?,
                flags: get32(buf, 4)?,
                index: get32(buf, 8)?,
                start: get32(buf, 12)?,
                count: get32(buf, 16)?,
            };
            let payload: &[u8] = &buf[20..];
            vfio.with_device(fd, |driver, state| {
                typed_set_irqs(driver, state, &header, payload)
            })
        }
        req::DEVICE_RESET => vfio.with_device(fd, |driver, state| driver.reset(state).map(|()| 0)),
        // Everything else is the bus driver's (spec/01-core.md §7.3.6), with the caller's
        // files visible for ownership proofs.
        _ => vfio.device_ioctl_with_fds(fd, request, buf),
    }
}
