//! Platform traits: how the core reaches hardware, the IOMMU, host memory and event delivery.
//!
//! The core never touches hardware itself. An embedder implements these small traits:
//!
//! * [`PciAccess`]: raw access to physical PCI functions (config space, BARs, resets, host
//!   interrupt vectors) — used by the vfio-pci bus driver ([`crate::pci`]).
//! * [`Iommu`]: IOMMU groups, DMA ownership, domains and translations — used by the
//!   registry ([`crate::vfio`]) and the Type1 backend ([`crate::type1`]).
//!   (rust-vmm's `vm-memory` also has an `Iommu` trait, which *translates* IOVAs for a
//!   vhost-user backend; ours *programs* an IOMMU: the two are unrelated.)
//! * [`HostMemory`]: the calling process's address space as the Type1 backend sees it
//!   (pin a virtual range, learn its physical runs, locked-memory accounting).
//! * [`EventSink`]: where interrupts and notifications go (an eventfd on Linux, a token on
//!   bare metal).
//!
//! Every trait has an associated error type (embedded-hal's `ErrorType` pattern) that maps
//! onto [`Errno`] through [`crate::errno::Error`].

use core::fmt;

use crate::errno::{Errno, ErrorType};

/// PCI function address: segment (domain), bus, device, function.
///
/// Displayed and parsed in the Linux sysfs form `ssss:bb:dd.f` (e.g. `0000:06:0d.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Bdf {
    /// PCI segment (domain), 0..=0xffff.
    pub segment: u16,
    /// Bus number, 0..=0xff.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl Bdf {
    /// Builds a BDF; `None` if `device > 31` or `function > 7`.
    pub const fn new(segment: u16, bus: u8, device: u8, function: u8) -> Option<Bdf> {
        if device > 31 || function > 7 {
            None
        } else {
            Some(Bdf {
                segment,
                bus,
                device,
                function,
            })
        }
    }

    /// Device and function packed as in a config address (`device << 3 | function`).
    pub const fn devfn(self) -> u8 {
        (self.device << 3) | self.function
    }

    /// Parses `ssss:bb:dd.f` (segment optional: `bb:dd.f`), hexadecimal fields.
    ///
    /// Returns `None` for anything else, including out-of-range device/function numbers.
    pub fn parse(text: &str) -> Option<Bdf> {
        let (head, function) = text.rsplit_once('.')?;
        let mut parts = head.rsplitn(3, ':');
        let device = parts.next()?;
        let bus = parts.next()?;
        let segment = parts.next().unwrap_or("0");
        let hex16 = |s: &str, max_len: usize| -> Option<u16> {
            if s.is_empty() || s.len() > max_len {
                return None;
            }
            u16::from_str_radix(s, 16).ok()
        };
        let segment = hex16(segment, 4)?;
        let bus = u8::try_from(hex16(bus, 2)?).ok()?;
        let device = u8::try_from(hex16(device, 2)?).ok()?;
        let function = u8::try_from(hex16(function, 1)?).ok()?;
        Bdf::new(segment, bus, device, function)
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

/// Width of one config-space access in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Width {
    /// 1 byte.
    Byte = 1,
    /// 2 bytes (the offset must be 2-byte aligned).
    Word = 2,
    /// 4 bytes (the offset must be 4-byte aligned).
    Dword = 4,
}

impl Width {
    /// The width in bytes: 1, 2 or 4.
    pub const fn bytes(self) -> usize {
        self as usize
    }

    /// The width for a byte count of 1, 2 or 4; `None` otherwise.
    pub const fn from_bytes(n: usize) -> Option<Width> {
        match n {
            1 => Some(Width::Byte),
            2 => Some(Width::Word),
            4 => Some(Width::Dword),
            _ => None,
        }
    }

    /// Mask of the value bits for this width (`0xff`, `0xffff`, `0xffff_ffff`).
    pub const fn mask(self) -> u32 {
        match self {
            Width::Byte => 0xff,
            Width::Word => 0xffff,
            Width::Dword => 0xffff_ffff,
        }
    }
}

/// A BAR number, 0..=5 (type-0 header, PCI Local Bus spec §6.2.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BarIndex(u8);

impl BarIndex {
    /// `Some` for 0..=5, `None` otherwise.
    pub const fn new(index: u8) -> Option<BarIndex> {
        if index < 6 {
            Some(BarIndex(index))
        } else {
            None
        }
    }

    /// The BAR number, 0..=5.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// All six BARs in order.
    pub const ALL: [BarIndex; 6] = [
        BarIndex(0),
        BarIndex(1),
        BarIndex(2),
        BarIndex(3),
        BarIndex(4),
        BarIndex(5),
    ];
}

/// What kind of host resource backs a BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BarKind {
    /// 32-bit memory BAR.
    Mem32,
    /// 64-bit memory BAR (occupies this BAR and the next one).
    Mem64,
    /// I/O port BAR.
    Io,
}

/// The host resource assigned to one BAR, as the platform's PCI core allocated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BarResource {
    /// Memory or I/O, 32 or 64-bit.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetch: bool,
    /// Host address of the resource (bus address for memory, port for I/O).
    pub start: u64,
    /// Size in bytes: a power of two, or 0 for an unassigned BAR.
    pub size: u64,
}

/// A function-level reset method (PCIe base spec §6.6.2, PCI PM spec, PCI AF ECN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ResetMethod {
    /// Whatever function reset the platform finds best (Linux `pci_try_reset_function`).
    Function,
    /// Secondary bus reset of the bus the function sits on (affects every function on it).
    Bus,
    /// Slot reset through the hotplug controller (affects every function in the slot).
    Slot,
}

/// Which interrupt mechanism a host vector allocation is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MsiKind {
    /// MSI (capability ID 0x05): 1..=32 vectors, a power of two is programmed.
    Msi,
    /// MSI-X (capability ID 0x11): 1..=2048 vectors, one table entry each.
    Msix,
}

/// Raw access to physical PCI functions.
///
/// Offsets are bytes from the start of the function's config space (0..4096) or of the BAR.
/// Implementations may assume the core passes naturally aligned config accesses that do not
/// cross the config-space size; they must still refuse (not panic on) anything else.
pub trait PciAccess: ErrorType {
    /// Size of the function's config space in bytes: 256 (conventional) or 4096 (PCIe).
    fn config_size(&mut self, dev: Bdf) -> Result<u16, Self::Error>;

    /// Reads `width` bytes at `offset`, little-endian, zero-extended.
    fn config_read(&mut self, dev: Bdf, offset: u16, width: Width) -> Result<u32, Self::Error>;

    /// Writes the low `width` bytes of `value` at `offset`, little-endian.
    fn config_write(
        &mut self,
        dev: Bdf,
        offset: u16,
        width: Width,
        value: u32,
    ) -> Result<(), Self::Error>;

    /// The host resource behind BAR `bar` (size 0 when unassigned; for the upper half of a
    /// 64-bit pair, size 0).
    fn bar_resource(&mut self, dev: Bdf, bar: BarIndex) -> Result<BarResource, Self::Error>;

    /// Size in bytes of the function's expansion ROM resource (0 when none).
    fn rom_size(&mut self, dev: Bdf) -> Result<u64, Self::Error>;

    /// Reads `buf.len()` bytes of BAR `bar` at byte `offset` from the BAR start.
    fn bar_read(
        &mut self,
        dev: Bdf,
        bar: BarIndex,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), Self::Error>;

    /// Writes `data` into BAR `bar` at byte `offset` from the BAR start.
    fn bar_write(
        &mut self,
        dev: Bdf,
        bar: BarIndex,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Self::Error>;

    /// Reads the expansion ROM image at byte `offset`.
    fn rom_read(&mut self, dev: Bdf, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Whether `method` can reset this function (probe only, no reset is done).
    fn reset_supported(&mut self, dev: Bdf, method: ResetMethod) -> bool;

    /// Performs a reset. `Function` resets only `dev`; `Bus`/`Slot` reset every function
    /// behind the same bus/slot. Errors: `EAGAIN` when the reset lock is contended,
    /// `ENOTTY` when the method does not work for this function.
    fn reset(&mut self, dev: Bdf, method: ResetMethod) -> Result<(), Self::Error>;

    /// Allocates between 1 and `max` host vectors of `kind` and enables the mechanism in
    /// hardware (MSI: Enable and Multiple Message Enable; MSI-X: Enable, table entries
    /// programmed with host messages). Returns how many vectors were granted (≤ `max`).
    fn irq_vectors_alloc(&mut self, dev: Bdf, kind: MsiKind, max: u16) -> Result<u16, Self::Error>;

    /// Frees every host vector of `dev` and disables MSI/MSI-X in hardware. Never fails.
    fn irq_vectors_free(&mut self, dev: Bdf);

    /// Dynamic MSI-X (ERRATA 3): allocates host vector `vector` of an MSI-X block that is
    /// already enabled with `allocated` vectors (`vector >= allocated`), leaving every
    /// existing vector and its handler untouched. Errors (as an errno): `ENOSPC` when no
    /// vector is left, or the platform's allocation error. Default: the block is freed and
    /// re-allocated with `vector + 1` vectors (restoring `allocated` vectors on failure) —
    /// correct, but it briefly disables MSI-X; platforms should override it.
    fn irq_vector_add(&mut self, dev: Bdf, vector: u16, allocated: u16) -> Result<(), Errno> {
        use crate::errno::Error as _;
        self.irq_vectors_free(dev);
        let want = vector.saturating_add(1);
        let result = match self.irq_vectors_alloc(dev, MsiKind::Msix, want) {
            Ok(n) if n >= want => return Ok(()),
            Ok(_) => Errno::ENOSPC,
            Err(e) => e.errno(),
        };
        self.irq_vectors_free(dev);
        let _ = self.irq_vectors_alloc(dev, MsiKind::Msix, allocated.max(1));
        Err(result)
    }

    /// Facts about the function that config space cannot tell (spec/03 §1.2 fix-ups,
    /// spec/05 §2): SR-IOV VF identity, INTx wiring, PCI 2.3 INTx masking, VGA.
    /// Default: a plain physical function with a connected INTx line, PCI 2.3 masking
    /// and no VGA.
    fn function_facts(&mut self, dev: Bdf) -> FunctionFacts {
        let _ = dev;
        FunctionFacts::default()
    }

    /// Moves the function to power state `state` (0 = D0 … 3 = D3hot) through its PM
    /// capability at config offset `pm_cap` (spec/03 §6.1). Errors are ignored by the
    /// core. Default: read-modify-write of PMCSR bits 1:0 (PME_Status written as 0 so the
    /// write does not clear it).
    fn set_power_state(&mut self, dev: Bdf, pm_cap: u16, state: u8) -> Result<(), Self::Error> {
        let at = pm_cap.saturating_add(4);
        let v = self.config_read(dev, at, Width::Word)?;
        self.config_write(dev, at, Width::Word, (v & !0x8003) | u32::from(state & 3))
    }

    /// Reads 4 bytes of VPD at byte address `addr` (0..=0x7fff), little-endian
    /// (spec/03 §6.6). `None` when VPD cannot be read (the handshake then stalls).
    /// Default: `None`.
    fn vpd_read(&mut self, dev: Bdf, addr: u16) -> Option<u32> {
        let _ = (dev, addr);
        None
    }

    /// Writes 4 bytes of VPD at byte address `addr`; returns whether all 4 were written.
    /// Default: `false` (nothing written).
    fn vpd_write(&mut self, dev: Bdf, addr: u16, value: u32) -> bool {
        let _ = (dev, addr, value);
        false
    }

    /// Sets the hardware PCIe Max_Read_Request_Size to `bytes` (128…4096, a power of two)
    /// through the PCIe capability at `pcie_cap` (spec/03 §6.5). Default: read-modify-write
    /// of Device Control bits 14:12.
    fn set_readrq(&mut self, dev: Bdf, pcie_cap: u16, bytes: u32) -> Result<(), Self::Error> {
        let at = pcie_cap.saturating_add(8);
        let field = (bytes.max(128) / 128).trailing_zeros().min(5);
        let v = self.config_read(dev, at, Width::Word)?;
        self.config_write(dev, at, Width::Word, (v & !0x7000) | (field << 12))
    }

    /// Bytes of valid ROM image behind the ROM resource (spec/05 §6.3): ROM region bytes
    /// at or past this offset read 0xFF without touching hardware. Default: the whole ROM
    /// ([`PciAccess::rom_size`]).
    fn rom_image_size(&mut self, dev: Bdf) -> Result<u64, Self::Error> {
        self.rom_size(dev)
    }

    /// Reads legacy VGA space (spec/05 §6.5): `io` selects the I/O ports (`addr` =
    /// port 0x3b0..0x3df) or VGA memory (`addr` = 0xa0000..0xbffff). Returns whether the
    /// access was done. Default: `false`.
    fn vga_read(&mut self, dev: Bdf, io: bool, addr: u64, buf: &mut [u8]) -> bool {
        let _ = (dev, io, addr, buf);
        false
    }

    /// Writes legacy VGA space; as [`PciAccess::vga_read`]. Default: `false`.
    fn vga_write(&mut self, dev: Bdf, io: bool, addr: u64, data: &[u8]) -> bool {
        let _ = (dev, io, addr, data);
        false
    }

    /// Saves the function's config state (spec/05 §2 step 5: after the open-time reset)
    /// for [`PciAccess::restore_state`] at last close. Default: nothing.
    fn save_state(&mut self, dev: Bdf) {
        let _ = dev;
    }

    /// Restores the state saved by [`PciAccess::save_state`] (spec/05 §3). Default:
    /// nothing.
    fn restore_state(&mut self, dev: Bdf) {
        let _ = dev;
    }

    /// Revokes every user mapping of the function's BARs (spec/05 §6.4; called when memory
    /// decode is turned off, on D3hot entry and around resets). Default: nothing (a
    /// platform without user mappings).
    fn zap_mappings(&mut self, dev: Bdf) {
        let _ = dev;
    }

    // ---- hot reset (spec/05 §8, §9) ----

    /// The hot-reset scope of `dev` (spec/05 §8.1): `Some(Slot)` when its slot can be
    /// reset, else `Some(Bus)` when its bus can (secondary bus reset), else `None` (both
    /// hot-reset ioctls then fail `ENODEV`). Never `Some(Function)`.
    /// Default: probes [`PciAccess::reset_supported`] for `Slot`, then `Bus`.
    fn hot_reset_scope(&mut self, dev: Bdf) -> Option<ResetMethod> {
        if self.reset_supported(dev, ResetMethod::Slot) {
            Some(ResetMethod::Slot)
        } else if self.reset_supported(dev, ResetMethod::Bus) {
            Some(ResetMethod::Bus)
        } else {
            None
        }
    }

    /// The `index`-th function (0-based, in bus/devfn order, `dev` itself included) that a
    /// `scope` reset of `dev`'s slot or bus affects; `None` past the last one. The core
    /// reads at most [`MAX_AFFECTED_FUNCTIONS`] entries. Default: `None` (no function
    /// known: `GET_PCI_HOT_RESET_INFO` reports count 0 and `PCI_HOT_RESET` with any group
    /// fd fails `EINVAL`).
    fn hot_reset_affected(
        &mut self,
        dev: Bdf,
        scope: ResetMethod,
        index: usize,
    ) -> Option<AffectedFunction> {
        let _ = (dev, scope, index);
        None
    }

    /// The core tells the platform that a user opened `dev` (`true`, first open done) or
    /// released it (`false`, last close, before the release-time bus reset), so that
    /// [`PciAccess::hot_reset_affected`] can report [`AffectedFunction::open`] for the
    /// other functions of a bus. Default: nothing (the embedder tracks opens itself).
    fn user_open(&mut self, dev: Bdf, open: bool) {
        let _ = (dev, open);
    }

    /// Runtime low power (`VFIO_DEVICE_FEATURE` LOW_POWER_ENTRY/EXIT): the user allows the
    /// host to suspend the function (`low_power` true: Linux puts it into D3hot) or takes
    /// it back (`false`; also called around each device access made while the user's
    /// low-power request stands, as Linux resumes the function for the access). Default:
    /// `Ok(())` without touching the function (the power state stays D0).
    ///
    /// # Errors
    /// The platform's, returned from the feature request.
    fn runtime_low_power(&mut self, dev: Bdf, low_power: bool) -> Result<(), Self::Error> {
        let _ = (dev, low_power);
        Ok(())
    }

    // ---- host INTx line (spec/04 §6, spec/05 §11) ----

    /// Requests the function's host INTx line for the core's handler (spec/04 §6.1):
    /// `shared` for PCI 2.3 functions (masking at the device), exclusive otherwise; the
    /// line starts disabled when `masked`. From now on the platform calls the core's
    /// INTx entry point whenever the line asserts while enabled. Errors: `ENODEV` without
    /// a line, `EBUSY` when an exclusive request finds the line in use.
    /// Default: success (a platform that delivers INTx by other means).
    fn intx_request(&mut self, dev: Bdf, shared: bool, masked: bool) -> Result<(), Self::Error> {
        let _ = (dev, shared, masked);
        Ok(())
    }

    /// Frees the line requested by [`PciAccess::intx_request`]. Default: nothing.
    fn intx_free(&mut self, dev: Bdf) {
        let _ = dev;
    }

    /// Enables (`true`) or disables the host INTx line (non-blocking; spec/04 §6.2–§6.4,
    /// non-PCI-2.3 functions). Default: nothing.
    fn intx_line_enable(&mut self, dev: Bdf, enable: bool) {
        let _ = (dev, enable);
    }

    /// PCI 2.3 check-and-unmask (spec/04 §6.3), atomic with respect to the interrupt:
    /// if Status bit 3 (Interrupt Status, 0x0008) is set leave DisINTx set and return
    /// `true` ("still pending"); else clear Command bit 10 (DisINTx) and return `false`.
    /// Default: a read of Status then a read-modify-write of Command (atomic only when the
    /// platform delivers INTx on the same thread).
    fn intx_check_and_unmask(&mut self, dev: Bdf) -> Result<bool, Self::Error> {
        let status = self.config_read(dev, 0x06, Width::Word)?;
        if status & 0x0008 != 0 {
            return Ok(true);
        }
        let cmd = self.config_read(dev, 0x04, Width::Word)?;
        if cmd & 0x0400 != 0 {
            self.config_write(dev, 0x04, Width::Word, cmd & !0x0400)?;
        }
        Ok(false)
    }
}

/// Most functions the core reads from [`PciAccess::hot_reset_affected`] (a PCI bus holds
/// 256 functions).
pub const MAX_AFFECTED_FUNCTIONS: usize = 256;

/// One function that a bus or slot reset affects (spec/05 §8.1, §8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AffectedFunction {
    /// The function's address.
    pub bdf: Bdf,
    /// Its IOMMU group; `None` when it has none (`EPERM`: non-isolated function).
    pub group: Option<GroupId>,
    /// Bound to a VFIO driver (part of the device set); a reset that would hit a function
    /// bound to a host driver is refused (`EINVAL`).
    pub vfio: bool,
    /// Another function of the set currently open by a user (the embedder tracks this):
    /// no release-time bus reset happens while one is (spec/05 §9). The function asked
    /// about is never reported as open.
    pub open: bool,
}

/// How the function's INTx pin is wired to the host (spec/03 §1.2 fix-up 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum IntxLine {
    /// A usable host interrupt line.
    #[default]
    Connected,
    /// The platform says `IRQ_NOTCONNECTED`: the virtual pin reads 0.
    NotConnected,
    /// No host interrupt number: the pin is shown, enabling INTx fails `ENODEV`.
    Missing,
}

/// Facts about a function that config space cannot tell (see
/// [`PciAccess::function_facts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FunctionFacts {
    /// `Some((vendor, device))` for an SR-IOV VF: the IDs its hardware does not report.
    /// A VF also lacks the Command memory-enable bit (`no_command_memory`).
    pub vf_ids: Option<(u16, u16)>,
    /// INTx wiring.
    pub intx: IntxLine,
    /// PCI 2.3 INTx masking works (DisINTx and Interrupt Status).
    pub intx_masking: bool,
    /// The function decodes legacy VGA ranges (VGA region, index 8).
    pub has_vga: bool,
    /// The function is on the nointx quirk list (virtual pin 0, DisINTx set on restore).
    pub nointx: bool,
}

impl Default for FunctionFacts {
    fn default() -> Self {
        FunctionFacts {
            vf_ids: None,
            intx: IntxLine::Connected,
            intx_masking: true,
            has_vga: false,
            nointx: false,
        }
    }
}

/// An IOMMU group number as the platform names it (`/dev/vfio/<id>` on Linux).
pub type GroupId = u32;

/// An IOMMU domain (one I/O page table) as the platform names it.
pub type DomainId = u32;

/// Properties of a freshly allocated IOMMU domain (spec/02-type1.md §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DomainInfo {
    /// The platform's handle for the domain.
    pub id: DomainId,
    /// Identity of the IOMMU driver: domains may be shared only between groups of the same
    /// `ops` and the same `enforce_coherency`.
    pub ops: u32,
    /// Page sizes the domain supports: bit `n` set means 2^n bytes.
    pub pgsize_bitmap: u64,
    /// First IOVA the domain can translate (inclusive).
    pub aperture_start: u64,
    /// Last IOVA the domain can translate (inclusive).
    pub aperture_end: u64,
    /// The domain can block non-coherent (no-snoop) DMA.
    pub enforce_coherency: bool,
}

/// Type of a reserved IOVA region (spec/02-type1.md §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReservedKind {
    /// Identity-mapped region that must stay mapped (RMRR).
    Direct,
    /// Identity-mapped region that may be relaxed for device assignment: ignored by Type1.
    DirectRelaxable,
    /// Hardware MSI doorbell window.
    Msi,
    /// Software-managed MSI window.
    SwMsi,
    /// Any other reserved range.
    Reserved,
}

/// One reserved IOVA region of a group: `[start, end]`, inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReservedRegion {
    /// First reserved IOVA.
    pub start: u64,
    /// Last reserved IOVA (inclusive).
    pub end: u64,
    /// What the region is for.
    pub kind: ReservedKind,
}

bitflags::bitflags! {
    /// Access a DMA mapping grants the device (kernel `IOMMU_READ`/`IOMMU_WRITE`/`IOMMU_CACHE`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Prot: u32 {
        /// The device may read the memory.
        const READ = 0x1;
        /// The device may write the memory.
        const WRITE = 0x2;
        /// Cache-coherent access (always set by Type1 in mainline).
        const CACHE = 0x4;
    }
}

#[cfg(feature = "defmt")]
impl defmt::Format for Prot {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "Prot({=u32:#x})", self.bits());
    }
}

/// What the platform reports about an IOMMU group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct GroupInfo {
    /// The group has no hardware IOMMU (mdev-style "emulated IOMMU" group): Type1 tracks
    /// its mappings but programs no domain for it.
    pub emulated: bool,
    /// The platform can isolate MSIs from this group (interrupt remapping).
    pub intr_remap: bool,
}

/// The IOMMU: groups, DMA ownership, domains and translations.
///
/// `phys` addresses are whatever the platform maps *to*: host physical addresses on bare
/// metal, or the pinned pages' addresses in a hosted simulator. All ranges are in bytes.
pub trait Iommu: ErrorType {
    /// Facts about IOMMU group `group`; `None` if the platform has no such group.
    fn group_info(&self, group: GroupId) -> Option<GroupInfo>;

    /// Whether no kernel (host) driver performs DMA through the DMA API on any device of the
    /// group, i.e. whether VFIO could claim it (spec/01-core.md §4.1).
    fn group_viable(&self, group: GroupId) -> bool;

    /// Claims DMA ownership of the whole group for user-space assignment. Errors: `EPERM` when
    /// a host driver does DMA in the group, `EBUSY` when a foreign domain is attached.
    /// While claimed, the platform must refuse (`EBUSY`) binding DMA-API drivers in the group.
    fn claim_dma_owner(&mut self, group: GroupId) -> Result<(), Self::Error>;

    /// Releases a claim made by [`Iommu::claim_dma_owner`]. Never fails.
    fn release_dma_owner(&mut self, group: GroupId);

    /// Allocates a new, empty domain suitable for `group`'s IOMMU.
    fn domain_alloc(&mut self, group: GroupId) -> Result<DomainInfo, Self::Error>;

    /// Frees a domain that no group is attached to and holds no mapping.
    fn domain_free(&mut self, domain: DomainId);

    /// Attaches `group` to `domain`. Moving a group onto an existing domain fails (e.g.
    /// `EINVAL`) when the domain's IOMMU is incompatible with the group.
    fn attach(&mut self, domain: DomainId, group: GroupId) -> Result<(), Self::Error>;

    /// Detaches `group` from `domain`. Never fails.
    fn detach(&mut self, domain: DomainId, group: GroupId);

    /// The `index`-th reserved region of `group`, or `None` past the last one.
    fn reserved_region(&self, group: GroupId, index: usize) -> Option<ReservedRegion>;

    /// Maps `[iova, iova + len)` to `[phys, phys + len)` with `prot`. The platform splits the
    /// range into its own page sizes; it refuses (`EINVAL`) addresses or lengths that are not
    /// multiples of the domain's minimum page size. On error nothing stays mapped.
    fn map(
        &mut self,
        domain: DomainId,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<(), Self::Error>;

    /// Unmaps `[iova, iova + len)`; returns the number of bytes that were mapped there.
    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> u64;

    /// The physical address `iova` translates to in `domain`, or `None` when unmapped.
    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64>;

    /// The physically contiguous translation starting at `iova` (a multiple of `page`) in
    /// `domain`: `Some((phys, len))` where `phys` is what `iova` translates to and `len`
    /// (bytes, a non-zero multiple of `page`, at most `max_len` rounded up to `page`) is
    /// how far `[iova, iova + len)` maps to `[phys, phys + len)` without a hole or a jump.
    /// `None` when `iova` is unmapped, `page` is 0 or `max_len` is 0.
    ///
    /// Type1 uses it to find the pinned pages of an entry when it unmaps them
    /// (spec/02-type1.md §12.2) and to copy translations into a new domain (§5.1): the
    /// kernel walks `iommu_iova_to_phys` page by page, which is what this default does.
    /// A platform that knows its page-table entries should override it so that one
    /// superpage (2 MiB, 1 GiB) costs one step instead of one per 4 KiB page.
    fn iova_to_phys_run(
        &self,
        domain: DomainId,
        iova: u64,
        max_len: u64,
        page: u64,
    ) -> Option<(u64, u64)> {
        if page == 0 || max_len == 0 {
            return None;
        }
        let phys = self.iova_to_phys(domain, iova)?;
        let mut len = page;
        while len < max_len {
            let (Some(next), Some(expect)) = (iova.checked_add(len), phys.checked_add(len)) else {
                break;
            };
            if self.iova_to_phys(domain, next) != Some(expect) {
                break;
            }
            let Some(grown) = len.checked_add(page) else {
                break;
            };
            len = grown;
        }
        Some((phys, len))
    }
}

/// Kind of memory behind a pinned run (spec/02-type1.md §6.3, §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MemoryKind {
    /// Ordinary RAM: pinned and charged against the locked-memory budget.
    Ram,
    /// Device memory (PFNMAP): translated, never charged.
    Mmio,
}

/// A physically contiguous run of pinned host memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PinnedRun {
    /// Physical address of the run's first byte.
    pub phys: u64,
    /// Length in bytes: a multiple of the page size, ≥ one page.
    pub len: u64,
    /// RAM (charged) or device memory (not charged).
    pub kind: MemoryKind,
}

/// The calling process's address space, as the Type1 backend pins it.
pub trait HostMemory: ErrorType {
    /// Host page size in bytes: a power of two, at least 4096 (typically 4096). It is the
    /// unit of [`HostMemory::locked_pages`], [`HostMemory::lock_limit_pages`] and
    /// [`HostMemory::charge`], and the smallest IOVA page Type1 offers (spec/02-type1.md
    /// §3). Type1 divides by it and its DMA map keeps metadata in the low 12 bits of
    /// page-aligned addresses, so 0 or a smaller size is a platform bug.
    fn page_size(&self) -> u64;

    /// Pins the longest physically contiguous run of one [`MemoryKind`] that starts at
    /// `vaddr` and is at most `len` bytes long (both page aligned). `write`: the mapping
    /// lets the device write, so the memory must be writable.
    /// Errors: `EFAULT` when `vaddr` is not backed, or is read-only and `write` is set.
    fn pin(&mut self, vaddr: u64, len: u64, write: bool) -> Result<PinnedRun, Self::Error>;

    /// Releases a pin taken by [`HostMemory::pin`] (`len` bytes from `phys`). Never fails.
    fn unpin(&mut self, phys: u64, len: u64);

    /// Pages currently charged to the process's locked-memory count.
    fn locked_pages(&self) -> u64;

    /// The process's locked-memory limit in pages (`None` = unlimited).
    fn lock_limit_pages(&self) -> Option<u64>;

    /// Whether the process may exceed the limit (Linux `CAP_IPC_LOCK`); pages are charged
    /// all the same.
    fn lock_cap(&self) -> bool;

    /// Adds `pages` to the locked-memory count (negative to release). Never fails: the
    /// core checks the limit first.
    fn charge(&mut self, pages: i64);
}

/// Where interrupts and notifications go.
///
/// The ABI names an event by a file descriptor number (`s32`, as in `VFIO_DEVICE_SET_IRQS`
/// with `DATA_EVENTFD`); [`EventSink::resolve`] turns it into the platform's event token.
pub trait EventSink {
    /// The platform's event token (an eventfd context on Linux, a flag or queue slot on
    /// bare metal). Copied into interrupt state; must be cheap.
    type Event: Copy + fmt::Debug + PartialEq;

    /// Resolves descriptor `fd` (≥ 0). Errors: `EBADF` when `fd` is not open, `EINVAL` when
    /// it is open but not an event.
    fn resolve(&mut self, fd: i32) -> Result<Self::Event, Errno>;

    /// Signals `event`. Callable from interrupt context: never blocks, never allocates.
    fn signal(&self, event: Self::Event);

    /// Encodes `event` as a 32-bit token (any value but `u32::MAX`) so the core can keep
    /// triggers in lock-free atomic tables read from interrupt context
    /// ([`crate::pci::IrqTable`]). Must round-trip through [`EventSink::token_event`].
    /// Default: `None` — the sink cannot be used for vfio-pci triggers (SET_IRQS naming
    /// such an event fails `EINVAL`).
    fn event_token(&self, event: Self::Event) -> Option<u32> {
        let _ = event;
        None
    }

    /// Decodes a token made by [`EventSink::event_token`]. Called from interrupt context:
    /// must not block or allocate. A token whose event was released may still arrive
    /// (a signal racing a trigger change); the sink must then drop it or signal the stale
    /// event harmlessly. Default: `None`.
    fn token_event(&self, token: u32) -> Option<Self::Event> {
        let _ = token;
        None
    }

    /// Starts (`watch` true) or stops watching `event` for a `VFIO_DEVICE_IOEVENTFD`
    /// registration (spec/05 §6.6). While watched, each time the user signals the event
    /// the host calls [`crate::pci::PciDriver::ioeventfd_signalled`] with it (the
    /// kernel's virqfd). Default: nothing (the host polls
    /// [`crate::pci::PciDevice::ioeventfds`] instead).
    fn ioeventfd_watch(&mut self, event: Self::Event, watch: bool) {
        let _ = (event, watch);
    }
}
