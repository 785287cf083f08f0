//! Byte-level ioctl dispatcher: the Linux VFIO ABI over [`Vfio`]'s typed API
//! (spec/01-core.md §2–§3, §7; spec/02-type1.md §6–§9).
//!
//! [`Vfio::ioctl`] takes a file handle, a request number and the argument — an integer
//! ([`Arg::Value`]) or the caller's buffer ([`Arg::Buffer`], the analogue of the user
//! pointer) — and produces exactly the kernel's result and the kernel's bytes in the
//! buffer. A step that must read or write past the end of the buffer fails with `EFAULT`
//! (spec/01-core.md §3.1); effects of earlier steps stay, as in the kernel.
//!
//! Portable conventions where the kernel follows a user pointer:
//! * `GROUP_SET_CONTAINER`: the buffer holds the little-endian `s32` container descriptor.
//! * `GROUP_GET_DEVICE_FD`: the buffer holds the NUL-terminated name.
//! * `UNMAP_DMA` with `GET_DIRTY_BITMAP`: the bitmap bytes follow the 48-byte structure in
//!   the same buffer; `vfio_bitmap.data` is ignored.

use zerocopy::{FromBytes, IntoBytes};

use crate::errno::{Errno, Result};
use crate::platform::{HostMemory, Iommu};
use crate::type1::{dirty_flags, MapDma, UnmapDma};
use crate::uapi::{self, dma_unmap_flags, ioctl};
use crate::vfio::driver::CAP_SCRATCH;
use crate::vfio::{validate_irq_set, BusDriver, CapChain, Fd, FileObject, IrqSetRequest, Vfio};

/// The argument of an ioctl.
#[derive(Debug)]
pub enum Arg<'a> {
    /// No argument.
    None,
    /// An integer argument (`CHECK_EXTENSION`, `SET_IOMMU`).
    Value(u64),
    /// The caller's buffer (the memory a user pointer would point to).
    Buffer(&'a mut [u8]),
}

impl Arg<'_> {
    fn buffer(&mut self) -> &mut [u8] {
        match self {
            Arg::Buffer(buf) => buf,
            _ => &mut [],
        }
    }

    fn value(&self) -> u64 {
        match self {
            Arg::Value(v) => *v,
            _ => 0,
        }
    }
}

/// Reads the first `minsz` bytes of `buf` into a zeroed `T` (`EFAULT` if `buf` is shorter).
fn read_prefix<T: FromBytes + IntoBytes>(buf: &[u8], minsz: usize) -> Result<T> {
    let mut value = T::new_zeroed();
    let bytes = value.as_mut_bytes();
    let n = minsz.min(bytes.len());
    bytes[..n].copy_from_slice(buf.get(..n).ok_or(Errno::EFAULT)?);
    Ok(value)
}

/// A `#[repr(C)]` argument structure whose first field is `u32 argsz`.
trait Args: FromBytes + IntoBytes {
    /// The caller's `argsz`.
    fn argsz(&self) -> u32;
}

macro_rules! impl_args {
    ($($t:ty),* $(,)?) => {
        $(impl Args for $t {
            fn argsz(&self) -> u32 {
                self.argsz
            }
        })*
    };
}

impl_args!(
    uapi::GroupStatus,
    uapi::DeviceInfo,
    uapi::RegionInfo,
    uapi::Type1Info,
    uapi::DmaMap,
);

/// The `minsz` convention of spec/01-core.md §3.1: reads the first `minsz` bytes of `buf`
/// into a zeroed `T`, then refuses an `argsz` below `minsz`.
///
/// # Errors
/// `EFAULT` when `buf` is shorter than `minsz` bytes; then `EINVAL` when `argsz < minsz`.
fn read_args<T: Args>(buf: &[u8], minsz: u32) -> Result<T> {
    let value: T = read_prefix(buf, usize::try_from(minsz).map_err(|_| Errno::EFAULT)?)?;
    if value.argsz() < minsz {
        return Err(Errno::EINVAL);
    }
    Ok(value)
}

/// How many bytes of an info structure of `size` bytes go back to a caller whose buffer
/// is `argsz` bytes: `min(argsz, size)` (spec/01-core.md §3.2 step 4).
fn write_back_len(argsz: u32, size: usize) -> usize {
    usize::try_from(argsz).map_or(size, |argsz| argsz.min(size))
}

/// Writes the first `n` bytes of `value` into `buf` (`EFAULT` if `buf` is shorter).
fn write_prefix<T: IntoBytes + zerocopy::Immutable>(
    buf: &mut [u8],
    value: &T,
    n: usize,
) -> Result<()> {
    let bytes = value.as_bytes();
    let n = n.min(bytes.len());
    buf.get_mut(..n)
        .ok_or(Errno::EFAULT)?
        .copy_from_slice(&bytes[..n]);
    Ok(())
}

/// Applies the capability-chain protocol of spec/01-core.md §3.2 for a fixed structure of
/// `fixed` bytes: with room for `fixed + chain.len()` bytes in the caller's `argsz`, the
/// chain is copied to offset `fixed` of `buf` with every `next` shifted by `fixed`;
/// without room, nothing is copied and the needed size is reported. Returns
/// `(caps_present, argsz, cap_offset)` to store in the structure.
///
/// # Errors
/// `EFAULT` when `argsz` claims room that `buf` does not have; `ENOMEM` for a chain whose
/// size does not fit a `u32` (never with the [`CAP_SCRATCH`]-byte scratch).
fn place_caps(buf: &mut [u8], fixed: usize, argsz: u32, chain: &[u8]) -> Result<(bool, u32, u32)> {
    if chain.is_empty() {
        return Ok((false, argsz, 0));
    }
    let end = fixed.checked_add(chain.len()).ok_or(Errno::ENOMEM)?;
    let needed = u32::try_from(end).map_err(|_| Errno::ENOMEM)?;
    if argsz < needed {
        return Ok((true, needed, 0));
    }
    // fixed ≤ end, which fits a u32.
    let shift = u32::try_from(fixed).map_err(|_| Errno::ENOMEM)?;
    let dest = buf.get_mut(fixed..end).ok_or(Errno::EFAULT)?;
    dest.copy_from_slice(chain);
    // Shift every non-zero `next` by `fixed`; stop at the last capability or at a link
    // that does not move forward.
    let mut at = 0usize;
    while let Some(field) = dest.get_mut(at..).and_then(|cap| cap.get_mut(4..8)) {
        let mut next = [0u8; 4];
        next.copy_from_slice(field);
        let next = u32::from_le_bytes(next);
        let Some(shifted) = next.checked_add(shift).filter(|_| next != 0) else {
            break;
        };
        field.copy_from_slice(&shifted.to_le_bytes());
        match usize::try_from(next) {
            Ok(next) if next > at => at = next,
            _ => break,
        }
    }
    Ok((true, argsz, shift))
}

/// Offset of the bitmap bytes in an UNMAP or DIRTY_PAGES buffer: after the 24-byte
/// structure (`vfio_iommu_type1_dma_unmap`, or the DIRTY_PAGES header and range) and the
/// 24-byte `vfio_bitmap`.
const BITMAP_DATA: usize = 48;

/// Reads the 24-byte `vfio_bitmap` at offset 24 of `buf` (`EFAULT` if `buf` is shorter).
fn read_bitmap(buf: &[u8]) -> Result<uapi::Bitmap> {
    read_prefix(buf.get(24..).ok_or(Errno::EFAULT)?, 24)
}

/// The `vfio_bitmap` checks shared by UNMAP and DIRTY_PAGES (spec/02-type1.md §7.2 U4,
/// §10.2 P6), then the bitmap bytes themselves: `bitmap.size` bytes at offset
/// [`BITMAP_DATA`] of `buf`, one bit per `bitmap.pgsize`-byte page of a `size`-byte range.
///
/// # Errors
/// `EINVAL` when the bitmap bytes do not fit in `buf` (the kernel's inaccessible user
/// buffer), `pgsize` is 0, the range has no page, or `bitmap.size` is 0, above 2^28 or
/// short of one bit per page in whole 64-bit words.
fn bitmap_bits<'b>(buf: &'b mut [u8], size: u64, bitmap: &uapi::Bitmap) -> Result<&'b mut [u8]> {
    let available = buf.len().saturating_sub(BITMAP_DATA);
    let len = match usize::try_from(bitmap.size) {
        Ok(len) if len <= available && bitmap.pgsize != 0 => len,
        _ => return Err(Errno::EINVAL),
    };
    let npages = size >> bitmap.pgsize.trailing_zeros();
    let words = npages.div_ceil(64);
    if npages == 0 || bitmap.size == 0 || bitmap.size > 1 << 28 || bitmap.size < 8 * words {
        return Err(Errno::EINVAL);
    }
    // len ≤ buf.len() − BITMAP_DATA: the end cannot overflow and is in bounds.
    buf.get_mut(BITMAP_DATA..BITMAP_DATA + len)
        .ok_or(Errno::EINVAL)
}

impl<I: Iommu, M: HostMemory, D: BusDriver> Vfio<'_, I, M, D> {
    /// Performs ioctl `request` on file `fd` with argument `arg`, byte-for-byte as the
    /// Linux kernel does. Returns the ioctl's non-negative result (a new descriptor for
    /// `GROUP_GET_DEVICE_FD`).
    ///
    /// # Errors
    /// `EBADF` for a closed or stale `fd`; otherwise the errno the kernel returns for the
    /// same input (spec/01-core.md §7, spec/02-type1.md §14), `EFAULT` when the buffer is
    /// shorter than a step must read or write.
    pub fn ioctl(&mut self, fd: Fd, request: u32, mut arg: Arg<'_>) -> Result<i64> {
        match self.file(fd)? {
            FileObject::Container(c) => self.container_ioctl(fd, usize::from(c), request, &mut arg),
            FileObject::Group(_) => self.group_ioctl(fd, request, arg.buffer()),
            // The device path resolves `fd` once, here (it is the hot one).
            FileObject::Device(d) => self.device_ioctl(usize::from(d), request, arg.buffer()),
            FileObject::Free => Err(Errno::EBADF),
        }
    }

    /// The container ioctls of spec/01-core.md §7.1 on container file `fd` (slot `c`),
    /// then the Type1 ones of spec/02-type1.md §6–§10.
    fn container_ioctl(
        &mut self,
        fd: Fd,
        c: usize,
        request: u32,
        arg: &mut Arg<'_>,
    ) -> Result<i64> {
        match request {
            ioctl::GET_API_VERSION => return Ok(i64::from(uapi::VFIO_API_VERSION)),
            ioctl::CHECK_EXTENSION => {
                let ext = u32::try_from(arg.value()).unwrap_or(u32::MAX);
                return self.check_extension(fd, ext).map(i64::from);
            }
            ioctl::SET_IOMMU => {
                let kind = u32::try_from(arg.value()).unwrap_or(u32::MAX);
                return self.set_iommu(fd, kind).map(|()| 0);
            }
            _ => {}
        }
        // Without a backend every other request is EINVAL (spec/01-core.md §7.1.4).
        self.container_backend(c)?;
        let buf = arg.buffer();
        match request {
            ioctl::IOMMU_GET_INFO => self.type1_get_info(c, buf),
            ioctl::IOMMU_MAP_DMA => {
                let map: uapi::DmaMap = read_args(buf, 32)?;
                let request = MapDma {
                    flags: map.flags,
                    vaddr: map.vaddr,
                    iova: map.iova,
                    size: map.size,
                };
                let (backend, map, iommu, memory) = self.container_backend(c)?;
                backend.map_dma(map, iommu, memory, &request).map(|()| 0)
            }
            ioctl::IOMMU_UNMAP_DMA => self.type1_unmap(c, buf),
            ioctl::IOMMU_DIRTY_PAGES => self.type1_dirty_pages(c, buf),
            _ => Err(Errno::ENOTTY),
        }
    }

    /// `VFIO_IOMMU_GET_INFO` (spec/02-type1.md §9) on container slot `c`.
    fn type1_get_info(&mut self, c: usize, buf: &mut [u8]) -> Result<i64> {
        let mut info: uapi::Type1Info = read_args(buf, 16)?;
        let mut scratch = [0u8; CAP_SCRATCH];
        let (backend, ..) = self.container_backend(c)?;
        let (flags, pgsizes, len) = backend.info(&mut scratch)?;
        info.flags = flags;
        info.iova_pgsizes = pgsizes;
        info.cap_offset = 0;
        info.pad = 0;
        let chain = scratch.get(..len).ok_or(Errno::ENOMEM)?;
        // Write back min(caller's argsz, 24) bytes: a caller with argsz < 24 made no room
        // for cap_offset/pad (spec/01-core.md §3.2 step 4, spec/02-type1.md §9.3).
        let n = write_back_len(info.argsz, 24);
        let (_, argsz, cap_offset) = place_caps(buf, 24, info.argsz, chain)?;
        info.argsz = argsz;
        info.cap_offset = cap_offset;
        write_prefix(buf, &info, n)?;
        Ok(0)
    }

    /// `VFIO_IOMMU_UNMAP_DMA` (spec/02-type1.md §7) on container slot `c`; the bitmap
    /// bytes of `GET_DIRTY_BITMAP` follow the 48-byte structure.
    fn type1_unmap(&mut self, c: usize, buf: &mut [u8]) -> Result<i64> {
        let mut unmap: uapi::DmaUnmap = read_prefix(buf, 24)?;
        let known =
            dma_unmap_flags::GET_DIRTY_BITMAP | dma_unmap_flags::ALL | dma_unmap_flags::VADDR;
        if unmap.argsz < 24 || unmap.flags & !known != 0 {
            return Err(Errno::EINVAL);
        }
        let request = UnmapDma {
            flags: unmap.flags,
            iova: unmap.iova,
            size: unmap.size,
        };
        let total = if unmap.flags & dma_unmap_flags::GET_DIRTY_BITMAP != 0 {
            if unmap.flags & (dma_unmap_flags::ALL | dma_unmap_flags::VADDR) != 0
                || unmap.argsz < 48
            {
                return Err(Errno::EINVAL);
            }
            let bitmap = read_bitmap(buf)?;
            let bits = bitmap_bits(buf, unmap.size, &bitmap)?;
            let (backend, map, iommu, memory) = self.container_backend(c)?;
            backend.unmap_dma(map, iommu, memory, &request, Some((bitmap.pgsize, bits)))?
        } else {
            let (backend, map, iommu, memory) = self.container_backend(c)?;
            backend.unmap_dma(map, iommu, memory, &request, None)?
        };
        unmap.size = total;
        write_prefix(buf, &unmap, 24)?;
        Ok(0)
    }

    /// `VFIO_IOMMU_DIRTY_PAGES` (spec/02-type1.md §10.2) on container slot `c`; the bitmap
    /// bytes of `GET_BITMAP` follow the 48-byte structure.
    fn type1_dirty_pages(&mut self, c: usize, buf: &mut [u8]) -> Result<i64> {
        let (backend, map, ..) = self.container_backend(c)?;
        if !backend.is_v2() {
            return Err(Errno::EACCES);
        }
        let head: uapi::DirtyBitmap = read_prefix(buf, 8)?;
        let (argsz, flags) = (head.argsz, head.flags);
        let known = dirty_flags::START | dirty_flags::STOP | dirty_flags::GET_BITMAP;
        if argsz < 8 || flags & !known != 0 || flags.count_ones() != 1 {
            return Err(Errno::EINVAL);
        }
        if flags != dirty_flags::GET_BITMAP {
            return backend.dirty_pages_control(map, flags).map(|()| 0);
        }
        if argsz - 8 < 40 {
            return Err(Errno::EINVAL);
        }
        // Header then `iova`, `size`: the layout of the first 24 bytes of UNMAP_DMA.
        let range: uapi::DmaUnmap = read_prefix(buf, 24)?;
        let bitmap = read_bitmap(buf)?;
        if range.size == 0 {
            return Err(Errno::EINVAL);
        }
        backend.check_bitmap_range(range.iova, range.size)?;
        let bits = bitmap_bits(buf, range.size, &bitmap)?;
        backend
            .dirty_bitmap(map, range.iova, range.size, bitmap.pgsize, bits)
            .map(|()| 0)
    }

    fn group_ioctl(&mut self, fd: Fd, request: u32, buf: &mut [u8]) -> Result<i64> {
        match request {
            ioctl::GROUP_GET_STATUS => {
                let mut status: uapi::GroupStatus = read_args(buf, 8)?;
                status.flags = self.group_status(fd)?;
                write_prefix(buf, &status, 8)?;
                Ok(0)
            }
            ioctl::GROUP_SET_CONTAINER => {
                let raw = buf.get(..4).ok_or(Errno::EFAULT)?;
                let container = i32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
                self.group_set_container(fd, container).map(|()| 0)
            }
            ioctl::GROUP_UNSET_CONTAINER => self.group_unset_container(fd).map(|()| 0),
            ioctl::GROUP_GET_DEVICE_FD => self
                .group_get_device_fd(fd, buf)
                .map(|d| i64::from(d.raw())),
            _ => Err(Errno::ENOTTY),
        }
    }

    /// The device-file ioctls of spec/01-core.md §7.3 on device slot `d`.
    fn device_ioctl(&mut self, d: usize, request: u32, buf: &mut [u8]) -> Result<i64> {
        match request {
            ioctl::DEVICE_GET_INFO => {
                let mut info: uapi::DeviceInfo = read_args(buf, 16)?;
                let mut scratch = [0u8; CAP_SCRATCH];
                let mut chain = CapChain::new(&mut scratch);
                let typed = self
                    .with_device_slot(d, |driver, state| driver.device_info(state, &mut chain))?;
                info.flags = typed.flags;
                info.num_regions = typed.num_regions;
                info.num_irqs = typed.num_irqs;
                info.cap_offset = 0;
                info.pad = 0;
                // min(caller's argsz, 24) bytes go back (spec/01-core.md §3.2 step 4).
                let n = write_back_len(info.argsz, 24);
                let (caps, argsz, cap_offset) = place_caps(buf, 24, info.argsz, chain.as_bytes())?;
                if caps {
                    info.flags |= uapi::device_flags::CAPS;
                }
                info.argsz = argsz;
                info.cap_offset = cap_offset;
                write_prefix(buf, &info, n)?;
                Ok(0)
            }
            ioctl::DEVICE_GET_REGION_INFO => {
                let mut info: uapi::RegionInfo = read_args(buf, 32)?;
                let mut scratch = [0u8; CAP_SCRATCH];
                let mut chain = CapChain::new(&mut scratch);
                let index = info.index;
                let typed = self.with_device_slot(d, |driver, state| {
                    let device = driver.device_counts(state)?;
                    if index >= device.num_regions {
                        return Err(Errno::EINVAL);
                    }
                    driver.region_info(state, index, &mut chain)
                })?;
                info.flags = typed.flags;
                info.size = typed.size;
                info.offset = typed.offset;
                let (caps, argsz, cap_offset) = place_caps(buf, 32, info.argsz, chain.as_bytes())?;
                if caps {
                    info.flags |= uapi::region_flags::CAPS;
                    info.argsz = argsz;
                    info.cap_offset = cap_offset;
                }
                write_prefix(buf, &info, 32)?;
                Ok(0)
            }
            ioctl::DEVICE_GET_IRQ_INFO => {
                let mut info: uapi::IrqInfo = read_prefix(buf, 16)?;
                let index = info.index;
                let argsz = info.argsz;
                let typed = self.with_device_slot(d, |driver, state| {
                    let device = driver.device_counts(state)?;
                    if argsz < 16 || index >= device.num_irqs {
                        return Err(Errno::EINVAL);
                    }
                    driver.irq_info(state, index)
                })?;
                info.flags = typed.flags;
                info.count = typed.count;
                write_prefix(buf, &info, 16)?;
                Ok(0)
            }
            ioctl::DEVICE_SET_IRQS => {
                let header: uapi::IrqSet = read_prefix(buf, 20)?;
                let buf_ro: &[u8] = buf;
                self.with_device_slot(d, |driver, state| {
                    let device = driver.device_counts(state)?;
                    let num = if header.index < device.num_irqs {
                        driver.irq_info(state, header.index).map_or(0, |i| i.count)
                    } else {
                        0
                    };
                    let size = validate_irq_set(&header, num, device.num_irqs)?;
                    // The payload follows the header; a buffer that ends first is the
                    // kernel's failed copy_from_user (EFAULT). `20 + size` cannot wrap on
                    // 64-bit hosts, but is checked for 32-bit ones.
                    let end = size.checked_add(20).ok_or(Errno::EFAULT)?;
                    let data = buf_ro.get(20..end).ok_or(Errno::EFAULT)?;
                    let request = IrqSetRequest {
                        flags: header.flags,
                        index: header.index,
                        start: header.start,
                        count: header.count,
                    };
                    driver.set_irqs(state, &request, data).map(i64::from)
                })
            }
            ioctl::DEVICE_RESET => {
                self.with_device_slot(d, |driver, state| driver.reset(state).map(|()| 0))
            }
            ioctl::DEVICE_FEATURE => self.with_device_slot(d, |driver, state| {
                crate::vfio::device_feature(driver, state, buf)
            }),
            _ => self.device_slot_ioctl_with_fds(d, request, buf),
        }
    }

    /// `read()` on device file `fd` at byte `offset` (region index in bits 40 and up for
    /// vfio-pci). Returns the bytes read.
    ///
    /// # Errors
    /// `EBADF`/`EBADFD` for a bad handle; the bus driver's errors (e.g. `EINVAL` for an
    /// offset outside every region, `EFAULT` past the end of config space).
    pub fn device_read(&mut self, fd: Fd, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.with_device(fd, |driver, state| driver.read(state, offset, buf))
    }

    /// `write()` on device file `fd` at byte `offset`. Returns the bytes written.
    ///
    /// # Errors
    /// As [`Vfio::device_read`].
    pub fn device_write(&mut self, fd: Fd, offset: u64, data: &[u8]) -> Result<usize> {
        self.with_device(fd, |driver, state| driver.write(state, offset, data))
    }
}
