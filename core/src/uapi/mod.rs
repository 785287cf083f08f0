//! The Linux VFIO ABI: ioctl numbers, flag values and `#[repr(C)]` structure layouts.
//!
//! Source: spec/01-core.md §2–§3, §7; spec/02-type1.md §6–§10; spec/04-pci-irq.md §1;
//! spec/05-pci-device.md §1. Every structure is little-endian, naturally aligned, and
//! starts with `u32 argsz` and `u32 flags`. Layouts are checked against the spec's byte
//! offsets by compile-time assertions at the end of this file.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `VFIO_API_VERSION`: the only API version there is.
pub const VFIO_API_VERSION: u32 = 0;

/// ioctl type byte `';'`.
pub const VFIO_TYPE: u32 = 0x3b;
/// First ioctl number (`VFIO_BASE`).
pub const VFIO_BASE: u32 = 100;

/// Request number for VFIO ioctl `n`: `_IO(';', 100 + n)` = `0x3b00 | (100 + n)`
/// (spec/01-core.md §2). The ioctl number is one byte, so `n` is meaningful up to 155;
/// a larger `n` gives an unused request number (wrapping, never a panic).
pub const fn vfio_io(n: u32) -> u32 {
    (VFIO_TYPE << 8) | VFIO_BASE.wrapping_add(n)
}

/// ioctl request numbers (spec/01-core.md §2). The same number means different things on
/// different kinds of file.
pub mod ioctl {
    use super::vfio_io;
    /// Container: `VFIO_GET_API_VERSION`.
    pub const GET_API_VERSION: u32 = vfio_io(0);
    /// Container: `VFIO_CHECK_EXTENSION` (integer argument).
    pub const CHECK_EXTENSION: u32 = vfio_io(1);
    /// Container: `VFIO_SET_IOMMU` (integer argument).
    pub const SET_IOMMU: u32 = vfio_io(2);
    /// Group: `VFIO_GROUP_GET_STATUS`.
    pub const GROUP_GET_STATUS: u32 = vfio_io(3);
    /// Group: `VFIO_GROUP_SET_CONTAINER` (pointer to an `s32` container fd).
    pub const GROUP_SET_CONTAINER: u32 = vfio_io(4);
    /// Group: `VFIO_GROUP_UNSET_CONTAINER`.
    pub const GROUP_UNSET_CONTAINER: u32 = vfio_io(5);
    /// Group: `VFIO_GROUP_GET_DEVICE_FD` (pointer to a NUL-terminated name).
    pub const GROUP_GET_DEVICE_FD: u32 = vfio_io(6);
    /// Device: `VFIO_DEVICE_GET_INFO`.
    pub const DEVICE_GET_INFO: u32 = vfio_io(7);
    /// Device: `VFIO_DEVICE_GET_REGION_INFO`.
    pub const DEVICE_GET_REGION_INFO: u32 = vfio_io(8);
    /// Device: `VFIO_DEVICE_GET_IRQ_INFO`.
    pub const DEVICE_GET_IRQ_INFO: u32 = vfio_io(9);
    /// Device: `VFIO_DEVICE_SET_IRQS`.
    pub const DEVICE_SET_IRQS: u32 = vfio_io(10);
    /// Device: `VFIO_DEVICE_RESET` (no argument).
    pub const DEVICE_RESET: u32 = vfio_io(11);
    /// Container (Type1): `VFIO_IOMMU_GET_INFO`; device: `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`.
    pub const IOMMU_GET_INFO: u32 = vfio_io(12);
    /// Device: `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO` (same number as `IOMMU_GET_INFO`).
    pub const DEVICE_GET_PCI_HOT_RESET_INFO: u32 = vfio_io(12);
    /// Container (Type1): `VFIO_IOMMU_MAP_DMA`; device: `VFIO_DEVICE_PCI_HOT_RESET`.
    pub const IOMMU_MAP_DMA: u32 = vfio_io(13);
    /// Device: `VFIO_DEVICE_PCI_HOT_RESET` (same number as `IOMMU_MAP_DMA`).
    pub const DEVICE_PCI_HOT_RESET: u32 = vfio_io(13);
    /// Container (Type1): `VFIO_IOMMU_UNMAP_DMA`.
    pub const IOMMU_UNMAP_DMA: u32 = vfio_io(14);
    /// Container (Type1v2): `VFIO_IOMMU_DIRTY_PAGES`; device: `VFIO_DEVICE_FEATURE`.
    pub const IOMMU_DIRTY_PAGES: u32 = vfio_io(17);
    /// Device: `VFIO_DEVICE_IOEVENTFD`.
    pub const DEVICE_IOEVENTFD: u32 = vfio_io(16);
    /// Device: `VFIO_DEVICE_FEATURE` (the same number as `IOMMU_DIRTY_PAGES`).
    pub const DEVICE_FEATURE: u32 = vfio_io(17);
}

/// `VFIO_DEVICE_IOEVENTFD` flags (spec/05 §6.6): exactly one access-size bit. VFIO has
/// no data-match flag (KVM's ioeventfd has one): `data` is always part of the key.
/// Values as the oracle's "IOEVENTFD 64" / "two sizes" / "no size" cases and spec/05
/// §6.6 ("only the size bits 1/2/4/8 = 0xF allowed") imply.
pub mod ioeventfd_flags {
    /// 1-byte write.
    pub const SIZE_8: u32 = 1 << 0;
    /// 2-byte write.
    pub const SIZE_16: u32 = 1 << 1;
    /// 4-byte write.
    pub const SIZE_32: u32 = 1 << 2;
    /// 8-byte write (ERRATA 5: valid on 64-bit hosts).
    pub const SIZE_64: u32 = 1 << 3;
    /// Every size bit; any other bit is refused (`EINVAL`).
    pub const SIZE_MASK: u32 = 0xF;
}

/// `VFIO_DEVICE_FEATURE` flags: the feature index in the low 16 bits plus direction
/// bits (checked against the oracle's `device_feature_queries` flags: `0x50000` is
/// PROBE|GET, `0x60000` PROBE|SET).
pub mod feature_flags {
    /// Feature index.
    pub const MASK: u32 = 0xFFFF;
    /// Read the feature's data.
    pub const GET: u32 = 1 << 16;
    /// Write the feature's data.
    pub const SET: u32 = 1 << 17;
    /// Only ask whether the given GET/SET is supported.
    pub const PROBE: u32 = 1 << 18;
}

/// `VFIO_DEVICE_FEATURE` feature indexes (the oracle's `feature` names).
pub mod feature {
    /// SR-IOV PF: set the VF token (SET, 16-byte UUID).
    pub const PCI_VF_TOKEN: u32 = 0;
    /// Migration capabilities (GET).
    pub const MIGRATION: u32 = 1;
    /// Migration device state (GET/SET).
    pub const MIG_DEVICE_STATE: u32 = 2;
    /// Enter runtime low power (SET, no payload).
    pub const LOW_POWER_ENTRY: u32 = 3;
    /// Enter runtime low power with a wakeup eventfd (SET, 8-byte payload).
    pub const LOW_POWER_ENTRY_WITH_WAKEUP: u32 = 4;
    /// Leave runtime low power (SET, no payload).
    pub const LOW_POWER_EXIT: u32 = 5;
    /// Start DMA dirty logging (SET).
    pub const DMA_LOGGING_START: u32 = 6;
    /// Stop DMA dirty logging (SET).
    pub const DMA_LOGGING_STOP: u32 = 7;
    /// Report DMA dirty pages (GET).
    pub const DMA_LOGGING_REPORT: u32 = 8;
    /// Migration data size estimate (GET).
    pub const MIG_DATA_SIZE: u32 = 9;
    /// Bus-master control (GET/SET).
    pub const BUS_MASTER: u32 = 10;
    /// Export a BAR range as a dma-buf (GET; Linux ≥ 6.19 with `CONFIG_VFIO_PCI_DMABUF`).
    pub const DMA_BUF: u32 = 11;
    /// Pre-copy info v2 (Linux 7.x).
    pub const MIG_PRECOPY_INFO_V2: u32 = 12;
    /// s390 zPCI error reporting (GET).
    pub const ZPCI_ERROR: u32 = 13;
}

/// Extension and IOMMU-type identifiers for `CHECK_EXTENSION` / `SET_IOMMU`
/// (spec/01-core.md §2).
pub mod extension {
    /// Type1, v1 unmap semantics.
    pub const TYPE1_IOMMU: u32 = 1;
    /// POWER sPAPR TCE (not implemented).
    pub const SPAPR_TCE_IOMMU: u32 = 2;
    /// Type1, v2 semantics.
    pub const TYPE1V2_IOMMU: u32 = 3;
    /// Query: every IOMMU domain enforces cache-coherent DMA.
    pub const DMA_CC_IOMMU: u32 = 4;
    /// POWER EEH (not implemented).
    pub const EEH: u32 = 5;
    /// Retired Type1 nesting (answers 0).
    pub const TYPE1_NESTING_IOMMU: u32 = 6;
    /// sPAPR TCE v2 (not implemented).
    pub const SPAPR_TCE_V2_IOMMU: u32 = 7;
    /// Unsafe no-IOMMU mode (not implemented).
    pub const NOIOMMU_IOMMU: u32 = 8;
    /// Type1 supports `VFIO_DMA_UNMAP_FLAG_ALL`.
    pub const UNMAP_ALL: u32 = 9;
    /// Type1 supports the VADDR map/unmap flags.
    pub const UPDATE_VADDR: u32 = 10;
}

/// `struct vfio_group_status` flags (spec/01-core.md §7.2.1).
pub mod group_flags {
    /// The group is viable.
    pub const VIABLE: u32 = 1 << 0;
    /// The group is attached to a container.
    pub const CONTAINER_SET: u32 = 1 << 1;
}

/// `struct vfio_device_info` flags (spec/01-core.md §7.3.1).
pub mod device_flags {
    /// The device supports `VFIO_DEVICE_RESET`.
    pub const RESET: u32 = 1 << 0;
    /// vfio-pci device.
    pub const PCI: u32 = 1 << 1;
    /// vfio-platform device.
    pub const PLATFORM: u32 = 1 << 2;
    /// vfio-amba device.
    pub const AMBA: u32 = 1 << 3;
    /// vfio-ccw device.
    pub const CCW: u32 = 1 << 4;
    /// vfio-ap device.
    pub const AP: u32 = 1 << 5;
    /// vfio-fsl-mc device.
    pub const FSL_MC: u32 = 1 << 6;
    /// Capabilities follow the structure.
    pub const CAPS: u32 = 1 << 7;
    /// vfio-cdx device.
    pub const CDX: u32 = 1 << 8;
}

/// `struct vfio_region_info` flags (spec/01-core.md §7.3.2).
pub mod region_flags {
    /// The region can be read.
    pub const READ: u32 = 1 << 0;
    /// The region can be written.
    pub const WRITE: u32 = 1 << 1;
    /// The region can be mmapped.
    pub const MMAP: u32 = 1 << 2;
    /// Capabilities follow the structure.
    pub const CAPS: u32 = 1 << 3;
}

/// Region-info capability ids (the region-info id space, spec/01-core.md §7.3.2).
pub mod region_cap {
    /// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`: u32 nr_areas, u32 reserved, {u64 offset, u64 size}×n.
    pub const SPARSE_MMAP: u16 = 1;
    /// `VFIO_REGION_INFO_CAP_TYPE`: u32 type, u32 subtype.
    pub const TYPE: u16 = 2;
    /// `VFIO_REGION_INFO_CAP_MSIX_MAPPABLE`: header only.
    pub const MSIX_MAPPABLE: u16 = 3;
}

/// `struct vfio_irq_info` flags (spec/01-core.md §7.3.3).
pub mod irq_info_flags {
    /// The index signals through eventfds.
    pub const EVENTFD: u32 = 1 << 0;
    /// The index supports MASK/UNMASK.
    pub const MASKABLE: u32 = 1 << 1;
    /// The index masks itself when it fires (level-triggered INTx).
    pub const AUTOMASKED: u32 = 1 << 2;
    /// The vector count cannot change while enabled.
    pub const NORESIZE: u32 = 1 << 3;
}

/// `struct vfio_irq_set` flags (spec/01-core.md §7.3.4).
pub mod irq_set_flags {
    /// No data.
    pub const DATA_NONE: u32 = 1 << 0;
    /// `u8` per vector.
    pub const DATA_BOOL: u32 = 1 << 1;
    /// `s32` eventfd per vector (−1 = de-assign).
    pub const DATA_EVENTFD: u32 = 1 << 2;
    /// Mask the vectors.
    pub const ACTION_MASK: u32 = 1 << 3;
    /// Unmask the vectors.
    pub const ACTION_UNMASK: u32 = 1 << 4;
    /// Trigger (or with EVENTFD: set the trigger of) the vectors.
    pub const ACTION_TRIGGER: u32 = 1 << 5;
    /// Mask of the data-type bits.
    pub const DATA_TYPE_MASK: u32 = 0x7;
    /// Mask of the action bits.
    pub const ACTION_TYPE_MASK: u32 = 0x38;
}

/// vfio-pci IRQ indexes (spec/04-pci-irq.md §1.3).
pub mod irq_index {
    /// Legacy INTx.
    pub const INTX: u32 = 0;
    /// MSI.
    pub const MSI: u32 = 1;
    /// MSI-X.
    pub const MSIX: u32 = 2;
    /// AER error notification.
    pub const ERR: u32 = 3;
    /// Device release request.
    pub const REQ: u32 = 4;
    /// Number of vfio-pci IRQ indexes.
    pub const NUM: u32 = 5;
}

/// vfio-pci region indexes (spec/01-core.md §7.3.2).
pub mod region_index {
    /// BAR0; BARn is `BAR0 + n`.
    pub const BAR0: u32 = 0;
    /// BAR5.
    pub const BAR5: u32 = 5;
    /// Expansion ROM.
    pub const ROM: u32 = 6;
    /// Config space.
    pub const CONFIG: u32 = 7;
    /// Legacy VGA (0xa0000 MMIO + 0x3b0/0x3c0 I/O).
    pub const VGA: u32 = 8;
    /// Number of fixed vfio-pci regions.
    pub const NUM: u32 = 9;
    /// A region's offset in the device file is `index << OFFSET_SHIFT`.
    pub const OFFSET_SHIFT: u32 = 40;
}

/// Type1 MAP_DMA flags (spec/02-type1.md §6.1).
pub mod dma_map_flags {
    /// The device may read.
    pub const READ: u32 = 1 << 0;
    /// The device may write.
    pub const WRITE: u32 = 1 << 1;
    /// Update the vaddr of an invalidated mapping.
    pub const VADDR: u32 = 1 << 2;
}

/// Type1 UNMAP_DMA flags (spec/02-type1.md §7.1).
pub mod dma_unmap_flags {
    /// Return the dirty bitmap of the unmapped range.
    pub const GET_DIRTY_BITMAP: u32 = 1 << 0;
    /// Unmap everything (`iova` and `size` must be 0).
    pub const ALL: u32 = 1 << 1;
    /// Invalidate the vaddr instead of unmapping.
    pub const VADDR: u32 = 1 << 2;
}

/// `struct vfio_group_status` (8 bytes).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct GroupStatus {
    /// Size of the caller's buffer.
    pub argsz: u32,
    /// Out: [`group_flags`].
    pub flags: u32,
}

/// `struct vfio_info_cap_header` (8 bytes).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InfoCapHeader {
    /// Capability id (per-ioctl id space).
    pub id: u16,
    /// Layout version.
    pub version: u16,
    /// Offset of the next capability from the start of the whole info buffer; 0 = last.
    pub next: u32,
}

/// `struct vfio_device_info` (24 bytes since Linux 6.6).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DeviceInfo {
    /// Size of the caller's buffer.
    pub argsz: u32,
    /// Out: [`device_flags`].
    pub flags: u32,
    /// Out: highest region index + 1.
    pub num_regions: u32,
    /// Out: highest IRQ index + 1.
    pub num_irqs: u32,
    /// Out: offset of the first capability from the buffer start (0 = none).
    pub cap_offset: u32,
    /// Out: zero.
    pub pad: u32,
}

/// `struct vfio_region_info` (32 bytes).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RegionInfo {
    /// Size of the caller's buffer.
    pub argsz: u32,
    /// Out: [`region_flags`].
    pub flags: u32,
    /// In: region index.
    pub index: u32,
    /// Out: offset of the first capability from the buffer start (0 = none).
    pub cap_offset: u32,
    /// Out: region size in bytes (0 = unimplemented region).
    pub size: u64,
    /// Out: offset of the region in the device file, in bytes.
    pub offset: u64,
}

/// `struct vfio_irq_info` (16 bytes).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct IrqInfo {
    /// Size of the caller's buffer.
    pub argsz: u32,
    /// Out: [`irq_info_flags`].
    pub flags: u32,
    /// In: IRQ index.
    pub index: u32,
    /// Out: number of vectors (0 = unimplemented index).
    pub count: u32,
}

/// `struct vfio_irq_set` header (20 bytes, followed by `count` data elements).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct IrqSet {
    /// Size of the caller's buffer, header plus data.
    pub argsz: u32,
    /// [`irq_set_flags`]: one data type and one action.
    pub flags: u32,
    /// IRQ index.
    pub index: u32,
    /// First vector.
    pub start: u32,
    /// Number of vectors.
    pub count: u32,
}

/// `struct vfio_iommu_type1_info` (24 bytes).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Type1Info {
    /// Size of the caller's buffer.
    pub argsz: u32,
    /// Out: `PGSIZES` 0x1 | `CAPS` 0x2.
    pub flags: u32,
    /// Out: supported IOMMU page sizes (bit n = 2^n bytes).
    pub iova_pgsizes: u64,
    /// Out: offset of the first capability from the buffer start.
    pub cap_offset: u32,
    /// Out: zero.
    pub pad: u32,
}

/// `struct vfio_iommu_type1_dma_map` (32 bytes).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DmaMap {
    /// Size of the caller's buffer.
    pub argsz: u32,
    /// [`dma_map_flags`].
    pub flags: u32,
    /// Process virtual address of the memory to map.
    pub vaddr: u64,
    /// Device address (IOVA) of the first byte.
    pub iova: u64,
    /// Length in bytes.
    pub size: u64,
}

/// `struct vfio_iommu_type1_dma_unmap` (24 bytes, optionally followed by a [`Bitmap`]).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DmaUnmap {
    /// Size of the caller's buffer.
    pub argsz: u32,
    /// [`dma_unmap_flags`].
    pub flags: u32,
    /// First IOVA of the range.
    pub iova: u64,
    /// In: range length in bytes; out: bytes unmapped.
    pub size: u64,
}

/// `struct vfio_bitmap` (24 bytes).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Bitmap {
    /// Page size one bit stands for, in bytes.
    pub pgsize: u64,
    /// Size of the bitmap buffer in bytes.
    pub size: u64,
    /// Address of the caller's bitmap buffer.
    pub data: u64,
}

/// `struct vfio_iommu_type1_dirty_bitmap` header (8 bytes, spec/02-type1.md §10.1). For
/// `GET_BITMAP` the 40-byte `vfio_iommu_type1_dirty_bitmap_get` follows: u64 `iova` @8,
/// u64 `size` @16 (bytes), then a [`Bitmap`] @24.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DirtyBitmap {
    /// Size of the caller's buffer, header included (≥ 8; ≥ 48 for `GET_BITMAP`).
    pub argsz: u32,
    /// Exactly one of `START` 0x1, `STOP` 0x2, `GET_BITMAP` 0x4.
    pub flags: u32,
}

/// `struct vfio_device_ioeventfd` (32 bytes; `minsz` = end of `fd` = 28).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Ioeventfd {
    /// Size of the caller's structure (≥ 28).
    pub argsz: u32,
    /// [`ioeventfd_flags`]: exactly one size bit.
    pub flags: u32,
    /// Device-file offset of the write (region index in bits 40 and up).
    pub offset: u64,
    /// Value written (its low `size` bytes, little-endian) and part of the key.
    pub data: u64,
    /// Eventfd to watch, or −1 to remove the matching registration.
    pub fd: i32,
    /// Padding.
    pub reserved: u32,
}

/// `struct vfio_device_feature` header (8 bytes); the feature's data follows.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DeviceFeature {
    /// Size of the caller's buffer, header included (≥ 8).
    pub argsz: u32,
    /// Feature index ([`feature_flags::MASK`]) and direction bits.
    pub flags: u32,
}

/// `struct vfio_device_low_power_entry_with_wakeup` (8 bytes): the payload of
/// [`feature::LOW_POWER_ENTRY_WITH_WAKEUP`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct LowPowerWakeup {
    /// Eventfd signalled when the device wakes up.
    pub wakeup_eventfd: i32,
    /// Not checked by the kernel (oracle: `reserved != 0` → 0).
    pub reserved: u32,
}

// Layouts, checked at compile time against the spec's byte offsets (spec/01-core.md §7,
// spec/02-type1.md §6–§10): a mismatch stops the build instead of failing a test.
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<GroupStatus>() == 8);
    assert!(offset_of!(GroupStatus, argsz) == 0);
    assert!(offset_of!(GroupStatus, flags) == 4);

    assert!(size_of::<InfoCapHeader>() == 8);
    assert!(offset_of!(InfoCapHeader, id) == 0);
    assert!(offset_of!(InfoCapHeader, version) == 2);
    assert!(offset_of!(InfoCapHeader, next) == 4);

    assert!(size_of::<DeviceInfo>() == 24);
    assert!(offset_of!(DeviceInfo, argsz) == 0);
    assert!(offset_of!(DeviceInfo, flags) == 4);
    assert!(offset_of!(DeviceInfo, num_regions) == 8);
    assert!(offset_of!(DeviceInfo, num_irqs) == 12);
    assert!(offset_of!(DeviceInfo, cap_offset) == 16);
    assert!(offset_of!(DeviceInfo, pad) == 20);

    assert!(size_of::<RegionInfo>() == 32);
    assert!(align_of::<RegionInfo>() == 8);
    assert!(offset_of!(RegionInfo, argsz) == 0);
    assert!(offset_of!(RegionInfo, flags) == 4);
    assert!(offset_of!(RegionInfo, index) == 8);
    assert!(offset_of!(RegionInfo, cap_offset) == 12);
    assert!(offset_of!(RegionInfo, size) == 16);
    assert!(offset_of!(RegionInfo, offset) == 24);

    assert!(size_of::<IrqInfo>() == 16);
    assert!(offset_of!(IrqInfo, argsz) == 0);
    assert!(offset_of!(IrqInfo, flags) == 4);
    assert!(offset_of!(IrqInfo, index) == 8);
    assert!(offset_of!(IrqInfo, count) == 12);

    assert!(size_of::<IrqSet>() == 20);
    assert!(offset_of!(IrqSet, argsz) == 0);
    assert!(offset_of!(IrqSet, flags) == 4);
    assert!(offset_of!(IrqSet, index) == 8);
    assert!(offset_of!(IrqSet, start) == 12);
    assert!(offset_of!(IrqSet, count) == 16);

    assert!(size_of::<Type1Info>() == 24);
    assert!(align_of::<Type1Info>() == 8);
    assert!(offset_of!(Type1Info, argsz) == 0);
    assert!(offset_of!(Type1Info, flags) == 4);
    assert!(offset_of!(Type1Info, iova_pgsizes) == 8);
    assert!(offset_of!(Type1Info, cap_offset) == 16);
    assert!(offset_of!(Type1Info, pad) == 20);

    assert!(size_of::<DmaMap>() == 32);
    assert!(offset_of!(DmaMap, argsz) == 0);
    assert!(offset_of!(DmaMap, flags) == 4);
    assert!(offset_of!(DmaMap, vaddr) == 8);
    assert!(offset_of!(DmaMap, iova) == 16);
    assert!(offset_of!(DmaMap, size) == 24);

    assert!(size_of::<DmaUnmap>() == 24);
    assert!(offset_of!(DmaUnmap, argsz) == 0);
    assert!(offset_of!(DmaUnmap, flags) == 4);
    assert!(offset_of!(DmaUnmap, iova) == 8);
    assert!(offset_of!(DmaUnmap, size) == 16);

    assert!(size_of::<Bitmap>() == 24);
    assert!(offset_of!(Bitmap, pgsize) == 0);
    assert!(offset_of!(Bitmap, size) == 8);
    assert!(offset_of!(Bitmap, data) == 16);

    assert!(size_of::<DirtyBitmap>() == 8);
    assert!(offset_of!(DirtyBitmap, argsz) == 0);
    assert!(offset_of!(DirtyBitmap, flags) == 4);

    assert!(size_of::<Ioeventfd>() == 32);
    assert!(align_of::<Ioeventfd>() == 8);
    assert!(offset_of!(Ioeventfd, argsz) == 0);
    assert!(offset_of!(Ioeventfd, flags) == 4);
    assert!(offset_of!(Ioeventfd, offset) == 8);
    assert!(offset_of!(Ioeventfd, data) == 16);
    assert!(offset_of!(Ioeventfd, fd) == 24);
    assert!(offset_of!(Ioeventfd, reserved) == 28);

    assert!(size_of::<DeviceFeature>() == 8);
    assert!(offset_of!(DeviceFeature, argsz) == 0);
    assert!(offset_of!(DeviceFeature, flags) == 4);

    assert!(size_of::<LowPowerWakeup>() == 8);
    assert!(offset_of!(LowPowerWakeup, wakeup_eventfd) == 0);
    assert!(offset_of!(LowPowerWakeup, reserved) == 4);

    // Request numbers (spec/01-core.md §2).
    assert!(ioctl::GET_API_VERSION == 0x3b64);
    assert!(ioctl::CHECK_EXTENSION == 0x3b65);
    assert!(ioctl::SET_IOMMU == 0x3b66);
    assert!(ioctl::GROUP_GET_STATUS == 0x3b67);
    assert!(ioctl::GROUP_SET_CONTAINER == 0x3b68);
    assert!(ioctl::GROUP_UNSET_CONTAINER == 0x3b69);
    assert!(ioctl::GROUP_GET_DEVICE_FD == 0x3b6a);
    assert!(ioctl::DEVICE_GET_INFO == 0x3b6b);
    assert!(ioctl::DEVICE_GET_REGION_INFO == 0x3b6c);
    assert!(ioctl::DEVICE_GET_IRQ_INFO == 0x3b6d);
    assert!(ioctl::DEVICE_SET_IRQS == 0x3b6e);
    assert!(ioctl::DEVICE_RESET == 0x3b6f);
    assert!(ioctl::IOMMU_GET_INFO == 0x3b70);
    assert!(ioctl::IOMMU_MAP_DMA == 0x3b71);
    assert!(ioctl::IOMMU_UNMAP_DMA == 0x3b72);
    assert!(ioctl::DEVICE_IOEVENTFD == 0x3b74);
    assert!(ioctl::IOMMU_DIRTY_PAGES == 0x3b75);
    assert!(ioctl::DEVICE_FEATURE == 0x3b75);
};
