//! The bus-driver interface: what a VFIO bus driver (vfio-pci, a test template, an mdev
//! driver) provides for the devices it registers (spec/01-core.md §0.2 "device ops").
//!
//! The registry ([`super::Vfio`]) owns the generic rules — file handles, open counting,
//! argsz and capability-chain conventions, the generic `SET_IRQS` header validator — and
//! calls a [`BusDriver`] for everything device specific. Each registered device keeps one
//! [`BusDriver::State`] value in its registry slot.

use crate::errno::{Errno, Result};
use crate::uapi::{self, irq_set_flags};

/// Device-wide facts reported by `VFIO_DEVICE_GET_INFO` (spec/01-core.md §7.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    /// `uapi::device_flags` bits (without `CAPS`, which the registry sets).
    pub flags: u32,
    /// Highest region index + 1 (vfio-pci: 9 + device-specific regions).
    pub num_regions: u32,
    /// Highest IRQ index + 1 (vfio-pci: 5).
    pub num_irqs: u32,
}

/// One region as reported by `VFIO_DEVICE_GET_REGION_INFO` (spec/01-core.md §7.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionInfo {
    /// `uapi::region_flags` bits (without `CAPS`, which the registry sets).
    pub flags: u32,
    /// Region size in bytes (0 = unimplemented region).
    pub size: u64,
    /// Offset of the region in the device file, in bytes (vfio-pci: `index << 40`).
    pub offset: u64,
}

/// One IRQ index as reported by `VFIO_DEVICE_GET_IRQ_INFO` (spec/01-core.md §7.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IrqInfo {
    /// `uapi::irq_info_flags` bits.
    pub flags: u32,
    /// Number of vectors (0 = unimplemented index).
    pub count: u32,
}

/// A `VFIO_DEVICE_SET_IRQS` request whose header passed the generic validator
/// ([`validate_irq_set`]): exactly one data type, `start + count` within the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqSetRequest {
    /// `uapi::irq_set_flags`: one data-type bit, and action bits not yet checked.
    pub flags: u32,
    /// IRQ index, below the device's `num_irqs`.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors; `start + count` ≤ the index's count.
    pub count: u32,
}

impl IrqSetRequest {
    /// The data-type bits (`DATA_NONE`, `DATA_BOOL` or `DATA_EVENTFD`).
    pub const fn data_type(&self) -> u32 {
        self.flags & irq_set_flags::DATA_TYPE_MASK
    }

    /// The action bits (zero, one or several of `ACTION_*`; the driver checks them).
    pub const fn action(&self) -> u32 {
        self.flags & irq_set_flags::ACTION_TYPE_MASK
    }
}

/// The generic `VFIO_DEVICE_SET_IRQS` header validator (spec/01-core.md §7.3.4).
///
/// `num_irqs`: the vector count of `hdr.index` (0 for an out-of-range index);
/// `max_irq_type`: the device's number of IRQ indexes. Returns the number of data bytes
/// that follow the header (`count × element size`).
///
/// # Errors
/// `EINVAL` for every refusal, in the spec's order: `argsz < 20`, index out of range,
/// `count ≥ 0xffff_ffff − start`, unknown flag bits; `start ≥ num_irqs` or
/// `start + count > num_irqs`; not exactly one data type; `argsz − 20 < count × size`.
///
/// # Panics
/// Never: all arithmetic is checked or widened.
pub fn validate_irq_set(hdr: &uapi::IrqSet, num_irqs: u32, max_irq_type: u32) -> Result<usize> {
    const HEADER: u32 = core::mem::size_of::<uapi::IrqSet>() as u32;
    let known = irq_set_flags::DATA_TYPE_MASK | irq_set_flags::ACTION_TYPE_MASK;
    if hdr.argsz < HEADER
        || hdr.index >= max_irq_type
        || hdr.count >= u32::MAX - hdr.start
        || hdr.flags & !known != 0
    {
        return Err(Errno::EINVAL);
    }
    // start + count cannot wrap: count < u32::MAX - start.
    let end = u64::from(hdr.start) + u64::from(hdr.count);
    if hdr.start >= num_irqs || end > u64::from(num_irqs) {
        return Err(Errno::EINVAL);
    }
    let size: u64 = match hdr.flags & irq_set_flags::DATA_TYPE_MASK {
        irq_set_flags::DATA_NONE => 0,
        irq_set_flags::DATA_BOOL => 1,
        irq_set_flags::DATA_EVENTFD => 4,
        _ => return Err(Errno::EINVAL),
    };
    if size == 0 {
        return Ok(0);
    }
    let data = u64::from(hdr.count) * size;
    if u64::from(hdr.argsz - HEADER) < data {
        return Err(Errno::EINVAL);
    }
    usize::try_from(data).map_err(|_| Errno::EINVAL)
}

/// Builder of an info capability chain (spec/01-core.md §3.2), in a caller-provided
/// scratch buffer.
///
/// Each capability is an 8-byte [`uapi::InfoCapHeader`] plus payload, padded with zeros to
/// a multiple of 8 bytes (Linux ≥ 6.6). `next` offsets are relative to the scratch buffer
/// start; the registry shifts them by the fixed structure size when it copies the chain.
#[derive(Debug)]
pub struct CapChain<'a> {
    buf: &'a mut [u8],
    len: usize,
    last: Option<usize>,
}

impl<'a> CapChain<'a> {
    /// An empty chain writing into `buf` (the chain can grow to `buf.len()` bytes).
    pub fn new(buf: &'a mut [u8]) -> Self {
        CapChain {
            buf,
            len: 0,
            last: None,
        }
    }

    /// Appends capability `id`/`version` with `payload` (the bytes after the header).
    ///
    /// # Errors
    /// `ENOMEM` when the scratch buffer cannot hold it; the chain is then unchanged.
    pub fn add(&mut self, id: u16, version: u16, payload: &[u8]) -> Result<()> {
        let start = self.len;
        let raw = payload.len().checked_add(8).ok_or(Errno::ENOMEM)?;
        let padded = raw.checked_add(7).ok_or(Errno::ENOMEM)? & !7;
        let end = start.checked_add(padded).ok_or(Errno::ENOMEM)?;
        let start_u32 = u32::try_from(start).map_err(|_| Errno::ENOMEM)?;
        let slot = self.buf.get_mut(start..end).ok_or(Errno::ENOMEM)?;
        slot.fill(0);
        slot[0..2].copy_from_slice(&id.to_le_bytes());
        slot[2..4].copy_from_slice(&version.to_le_bytes());
        slot[8..raw].copy_from_slice(payload);
        if let Some(prev) = self.last {
            self.buf[prev + 4..prev + 8].copy_from_slice(&start_u32.to_le_bytes());
        }
        self.last = Some(start);
        self.len = end;
        Ok(())
    }

    /// The chain's bytes (with `next` offsets relative to the chain start).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Total size of the chain in bytes (a multiple of 8).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no capability was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What a descriptor number handed to a device ioctl refers to (spec/05 §8.3 step 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FdTarget {
    /// Not an open file of the caller (`EBADF`).
    NotOpen,
    /// An open VFIO group file of IOMMU group `.0`, held by the caller (ownership proof).
    Group(crate::platform::GroupId),
    /// Some other open file (container, device, eventfd: `EINVAL` where a group is
    /// needed).
    Other,
}

/// The registry's answer to "what is descriptor `fd`?" for one device ioctl.
pub trait FdResolver {
    /// What `fd` refers to in the caller's file table.
    fn resolve_fd(&self, fd: i32) -> FdTarget;
}

/// Scratch space for one capability chain built by the dispatcher, in bytes (the chains
/// of vfio-pci are at most a few dozen bytes).
pub(crate) const CAP_SCRATCH: usize = 1024;

/// A VFIO bus driver: the device-specific half of every device operation.
///
/// All methods receive the device's own [`BusDriver::State`]. The registry guarantees:
/// `open_device`/`close_device` are called exactly on the first open / last close
/// (spec/01-core.md §6.2); the other methods are only called while the device is open,
/// except `request`, which is called while the device is being unregistered.
pub trait BusDriver {
    /// Per-device state kept in the registry's device slot.
    type State;

    /// First open of the device (open count 0 → 1). On error the open is undone and the
    /// error is returned from `GROUP_GET_DEVICE_FD`.
    fn open_device(&mut self, state: &mut Self::State) -> Result<()>;

    /// Last close of the device (open count 1 → 0). Never fails.
    fn close_device(&mut self, state: &mut Self::State);

    /// `VFIO_DEVICE_GET_INFO`; device-info capabilities go into `caps`.
    fn device_info(
        &mut self,
        state: &mut Self::State,
        caps: &mut CapChain<'_>,
    ) -> Result<DeviceInfo>;

    /// The flags and the region and IRQ-index counts of [`BusDriver::device_info`], without
    /// its capabilities: what the dispatcher needs to bound the `index` of
    /// GET_REGION_INFO, GET_IRQ_INFO and SET_IRQS (spec/05 §1.1) on every call.
    /// The default builds the capabilities into a [`CAP_SCRATCH`]-byte scratch chain and
    /// drops them; a driver whose counts cost nothing should override it.
    ///
    /// # Errors
    /// Those of [`BusDriver::device_info`].
    fn device_counts(&mut self, state: &mut Self::State) -> Result<DeviceInfo> {
        let mut scratch = [0u8; CAP_SCRATCH];
        self.device_info(state, &mut CapChain::new(&mut scratch))
    }

    /// `VFIO_DEVICE_GET_REGION_INFO` for `index` (already checked to be below
    /// `num_regions`); region capabilities go into `caps` in chain order.
    /// Errors: `EINVAL` for an index the device does not implement (vfio-pci: VGA without
    /// VGA).
    fn region_info(
        &mut self,
        state: &mut Self::State,
        index: u32,
        caps: &mut CapChain<'_>,
    ) -> Result<RegionInfo>;

    /// `VFIO_DEVICE_GET_IRQ_INFO` for `index` (already checked to be below `num_irqs`).
    /// Errors: `EINVAL` for an index the device does not implement.
    fn irq_info(&mut self, state: &mut Self::State, index: u32) -> Result<IrqInfo>;

    /// `VFIO_DEVICE_SET_IRQS` after the generic header validation; `data` holds exactly
    /// `count × element size` bytes. Returns the ioctl's non-negative result (vfio-pci: a
    /// positive vector count when fewer MSI vectors could be allocated).
    fn set_irqs(
        &mut self,
        state: &mut Self::State,
        request: &IrqSetRequest,
        data: &[u8],
    ) -> Result<u32>;

    /// `VFIO_DEVICE_RESET`. Errors: `EINVAL` when the device has no working reset.
    fn reset(&mut self, state: &mut Self::State) -> Result<()>;

    /// `read()` on the device file at byte `offset` (region index in bits 40 and up for
    /// vfio-pci). Returns the number of bytes read.
    fn read(&mut self, state: &mut Self::State, offset: u64, buf: &mut [u8]) -> Result<usize>;

    /// `write()` on the device file at byte `offset`. Returns the number of bytes written.
    fn write(&mut self, state: &mut Self::State, offset: u64, data: &[u8]) -> Result<usize>;

    /// The host wants the device back (spec/01-core.md §6.3): called with `count` 0, 1, 2, …
    /// once immediately and then every 10 s until the last device file is closed.
    fn request(&mut self, state: &mut Self::State, count: u32);

    /// `VFIO_DEVICE_FEATURE` after the generic checks of [`super::feature`]; `payload` is
    /// the caller's buffer after the 8-byte header (its declared length is
    /// `request.payload_len()`, checked by [`super::check_feature`]). Default: `ENOTTY`
    /// (feature not supported).
    fn device_feature(
        &mut self,
        state: &mut Self::State,
        request: &super::FeatureRequest,
        payload: &mut [u8],
    ) -> Result<i64> {
        let _ = (state, request, payload);
        Err(Errno::ENOTTY)
    }

    /// Any other device ioctl. Default: `ENOTTY` (vfio-pci's answer to unknown requests).
    fn ioctl(&mut self, state: &mut Self::State, request: u32, arg: &mut [u8]) -> Result<i64> {
        let _ = (state, request, arg);
        Err(Errno::ENOTTY)
    }

    /// Any other device ioctl, with `fds` answering what the descriptors named in `arg`
    /// are (vfio-pci's `PCI_HOT_RESET` needs group-fd ownership proof, spec/05 §8.3).
    /// The registry calls this ([`super::Vfio::device_ioctl_with_fds`]); `fds` only
    /// answers for the duration of the call. Default: [`BusDriver::ioctl`].
    fn ioctl_with_fds(
        &mut self,
        state: &mut Self::State,
        request: u32,
        arg: &mut [u8],
        fds: &dyn FdResolver,
    ) -> Result<i64> {
        let _ = fds;
        self.ioctl(state, request, arg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(argsz: u32, flags: u32, index: u32, start: u32, count: u32) -> uapi::IrqSet {
        uapi::IrqSet {
            argsz,
            flags,
            index,
            start,
            count,
        }
    }

    const NONE_TRIGGER: u32 = irq_set_flags::DATA_NONE | irq_set_flags::ACTION_TRIGGER;

    #[test]
    fn irq_set_validator_follows_the_spec_order() {
        assert_eq!(
            validate_irq_set(&hdr(19, NONE_TRIGGER, 2, 0, 0), 16, 5),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            validate_irq_set(&hdr(20, NONE_TRIGGER, 5, 0, 0), 16, 5),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            validate_irq_set(&hdr(20, NONE_TRIGGER, 2, 1, 0xffff_fffe), 16, 5),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            validate_irq_set(&hdr(20, NONE_TRIGGER, 2, u32::MAX, 0), 16, 5),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            validate_irq_set(&hdr(20, NONE_TRIGGER, 3, 0, 0), 0, 5),
            Err(Errno::EINVAL)
        );
        let eventfd = irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER;
        assert_eq!(
            validate_irq_set(&hdr(27, eventfd, 2, 0, 2), 16, 5),
            Err(Errno::EINVAL)
        );
        assert_eq!(validate_irq_set(&hdr(28, eventfd, 2, 0, 2), 16, 5), Ok(8));
        assert_eq!(
            validate_irq_set(&hdr(20, NONE_TRIGGER, 2, 0, 0), 16, 5),
            Ok(0)
        );
    }

    #[test]
    fn cap_chain_pads_to_eight_and_links() {
        let mut scratch = [0u8; 64];
        let mut chain = CapChain::new(&mut scratch);
        chain.add(2, 1, &[1, 0, 0, 0, 2, 0, 0, 0]).unwrap();
        chain.add(3, 1, &[0xaa; 4]).unwrap();
        assert_eq!(chain.len(), 32);
        let bytes = chain.as_bytes();
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 16);
        assert_eq!(u32::from_le_bytes(bytes[20..24].try_into().unwrap()), 0);
        assert_eq!(&bytes[28..32], &[0, 0, 0, 0]);
        assert_eq!(chain.add(1, 1, &[0; 64]), Err(Errno::ENOMEM));
        assert_eq!(chain.len(), 32);
    }
}
