//! vfio-pci: config-space virtualization, regions, IRQ indexes and resets (spec/03–05).
//!
//! [`PciDriver`] is the [`BusDriver`] for PCI functions. It owns the platform's
//! [`PciAccess`] and [`EventSink`]; each registered function keeps one [`PciDevice`] in
//! its registry slot. Nothing is read from hardware until the first open
//! ([`BusDriver::open_device`], spec/05 §2), which builds the virtual config space
//! ([`ConfigSpace`], spec/03 §1).
//!
//! # What is implemented, and what is not yet
//!
//! * Config space (spec/03): capability walks (§1, bounded), the SR-IOV VF and nointx
//!   fix-ups of §1.2 from the platform's [`FunctionFacts`](crate::platform::FunctionFacts),
//!   lengths (§2), access path (§3), the tables of §4.1–§4.11 plus defaults
//!   (§4.12–§4.13), BAR/ROM sizing (§5.1), Command handling with BAR restore
//!   (§5.2–§5.3), PM power-state changes through [`PciAccess::set_power_state`] (§6.1),
//!   MSI Message Control (§6.2, §6.4), PCIe/AF FLR traps and MaxReadReq propagation
//!   through [`PciAccess::set_readrq`] (§6.5), the VPD handshake through
//!   [`PciAccess::vpd_read`] / [`PciAccess::vpd_write`] (§6.6). Revoking user mappings is
//!   the platform's ([`PciAccess::zap_mappings`]: the core has no mmap).
//! * Regions (spec/05 §5–§6): BAR0–5, ROM, CONFIG, and VGA when the platform reports a
//!   VGA function (`EINVAL` otherwise). ROM bytes past [`PciAccess::rom_image_size`] read
//!   0xFF without touching hardware (§6.3); ERRATA 6's ENOMEM case is the platform's to
//!   report. `VFIO_DEVICE_IOEVENTFD` (§6.6, ERRATA 5) keeps up to
//!   [`IOEVENTFD_CAPACITY`] registrations per device.
//! * IRQs (spec/04): GET_IRQ_INFO (recent profile + ERRATA 1, 2), SET_IRQS for every index.
//!   Triggers live in a lock-free [`IrqTable`] (2048 vectors) read by the `&self`
//!   interrupt entry points; the host INTx line goes through [`PciAccess::intx_request`]
//!   and friends; MSI-X growth allocates only the missing vectors
//!   ([`PciAccess::irq_vector_add`]).
//! * Hot reset (spec/05 §8): `GET_PCI_HOT_RESET_INFO` and `PCI_HOT_RESET` with group-fd
//!   ownership proof ([`reset`]); release-time bus reset (§9) when every affected function
//!   is a VFIO device that is not open.

mod config;
mod feature;
mod ioeventfd;
mod irq;
mod perm;
pub mod reset;

#[cfg(test)]
mod tests;

pub use config::{
    BytePermission, CapEntry, CapSpace, CapVisibility, ChainDefect, ChainDefectKind, ConfigSpace,
    MsixInfo, Owner, CAP_TABLE_CAPACITY, CONFIG_SPACE_MAX, MAX_EXTENDED_CAPS, MAX_STANDARD_CAPS,
};
pub use feature::LowPower;
pub use ioeventfd::{Ioeventfd, IoeventfdTable, IOEVENTFD_CAPACITY};
pub use irq::{IrqTable, MAX_VECTORS, NO_TOKEN};
pub use perm::{cap_name, policy_for, Policy, RegPerm};

use config::{
    bar_reg, natural_width, WriteEffects, CMD_INTX_DISABLE, CMD_IO, CMD_MASTER, CMD_MEMORY,
};

use core::borrow::Borrow;
use core::marker::PhantomData;

use crate::era::Era;
use crate::errno::{Errno, Error as _, Result};
use crate::platform::{
    BarIndex, BarKind, Bdf, EventSink, IntxLine, MsiKind, PciAccess, ResetMethod, Width,
};
use crate::uapi::ioctl;
use crate::uapi::{
    device_flags, irq_index, irq_info_flags, irq_set_flags, region_cap, region_flags, region_index,
};
use crate::vfio::driver::{
    BusDriver, CapChain, DeviceInfo, FdResolver, IrqInfo, IrqSetRequest, RegionInfo,
};
use crate::vfio::FeatureRequest;

/// Status register bit 3: Interrupt Status, the function asserts INTx (PCI 2.3).
const STATUS_INTX: u32 = 0x0008;

/// Page size assumed for mmap eligibility of sub-page BARs (spec/05 §7), bytes.
pub const PAGE_SIZE: u64 = 4096;

const REGION_MASK: u64 = (1 << region_index::OFFSET_SHIFT) - 1;

/// Size of the VGA region (spec/05 §6.5): legacy addresses 0 … 0xBFFFF, bytes.
pub const VGA_REGION_SIZE: u64 = 0xC_0000;

/// The device's single active interrupt mode (spec/04 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum IrqType {
    /// Nothing enabled.
    #[default]
    None,
    /// Legacy INTx.
    Intx,
    /// MSI.
    Msi,
    /// MSI-X.
    Msix,
}

/// Control-plane interrupt state (spec/04 §5–§6); triggers are in the [`IrqTable`].
#[derive(Debug, Clone)]
struct IrqState<Ev> {
    intx_unmask: Option<Ev>,
    /// INTx host line requested through [`PciAccess::intx_request`].
    intx_requested: bool,
    /// MSI: vectors allocated at enable. MSI-X: one past the highest allocated vector.
    allocated: u16,
}

impl<Ev: Copy> IrqState<Ev> {
    const fn new() -> Self {
        IrqState {
            intx_unmask: None,
            intx_requested: false,
            allocated: 0,
        }
    }
}

/// One PCI function as the vfio-pci driver sees it: its address plus, while open, the
/// virtual config space and interrupt state. `Ev` is the platform's event token; `T`
/// holds the function's lock-free [`IrqTable`]: inline by default (8 KiB), or a shared
/// handle (`&'static IrqTable`, `Arc<IrqTable>`) when interrupt handlers run elsewhere.
#[derive(Debug, Clone)]
pub struct PciDevice<Ev, T = IrqTable> {
    bdf: Bdf,
    open: bool,
    reset_works: bool,
    needs_reset: bool,
    saved_command: u16,
    config: ConfigSpace,
    irq: IrqState<Ev>,
    ioeventfds: IoeventfdTable<Ev>,
    low_power: LowPower<Ev>,
    table: T,
}

impl<Ev: Copy> PciDevice<Ev> {
    /// A closed device for function `bdf` with an inline [`IrqTable`]; nothing is read
    /// from hardware.
    pub const fn new(bdf: Bdf) -> Self {
        PciDevice::with_table(bdf, IrqTable::new())
    }
}

impl<Ev: Copy, T: Borrow<IrqTable>> PciDevice<Ev, T> {
    /// A closed device for function `bdf` whose triggers live in `table` (share it with
    /// the interrupt handlers; it is reset at every open and close).
    pub const fn with_table(bdf: Bdf, table: T) -> Self {
        PciDevice {
            bdf,
            open: false,
            reset_works: false,
            needs_reset: false,
            saved_command: 0,
            config: ConfigSpace::new(),
            irq: IrqState::new(),
            ioeventfds: IoeventfdTable::new(),
            low_power: LowPower::Off,
            table,
        }
    }

    /// The lock-free trigger table (for interrupt entry points).
    pub fn table(&self) -> &IrqTable {
        self.table.borrow()
    }

    /// Whether the device was closed without a successful function reset and still
    /// waits for a bus/slot reset (spec/05 §3 step 7, §9).
    pub const fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    /// The function's address.
    pub const fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// Whether the device is open (config state built).
    pub const fn is_open(&self) -> bool {
        self.open
    }

    /// Whether the open-time function reset worked (`VFIO_DEVICE_FLAGS_RESET`, 05 §4.2).
    pub const fn reset_works(&self) -> bool {
        self.reset_works
    }

    /// The virtual config state (empty before the first open).
    pub const fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// The active interrupt type (spec/04 §5).
    pub fn irq_type(&self) -> IrqType {
        self.table().kind()
    }

    /// Whether INTx is currently masked (automasked or user-masked, spec/04 §6).
    pub fn intx_masked(&self) -> bool {
        self.table().intx_masked()
    }

    /// The INTx unmask eventfd registered with `SET_IRQS(INTx, UNMASK|EVENTFD)` (spec/04
    /// §5.1), if any. The host watches it: whenever the user signals it, the host calls
    /// [`PciDriver::intx_unmask`] (the kernel's virqfd), which re-signals the trigger
    /// when the device still asserts INTx.
    pub fn intx_unmask_event(&self) -> Option<Ev> {
        self.irq.intx_unmask
    }

    fn memory_enabled(&self) -> bool {
        (self.config.vcommand() & CMD_MEMORY != 0 || self.config.no_command_memory())
            && self.config.power_state < 3
    }
}

/// How the MSI-X table BAR is offered for mmap (spec/05 §5.1, by kernel era).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MsixMmapPolicy {
    /// ≥ 4.16: the whole BAR is mappable; region info carries `MSIX_MAPPABLE`.
    #[default]
    Mappable,
    /// 4.7–4.15: region info carries a `SPARSE_MMAP` capability around the table.
    Sparse,
    /// ≤ 4.6: no capability; mmaps overlapping the table are refused.
    Deny,
}

/// The vfio-pci bus driver: owns the platform's PCI access and event sink. `T` is the
/// [`IrqTable`] holder of its devices (see [`PciDevice`]).
#[derive(Debug)]
pub struct PciDriver<A, E, T = IrqTable> {
    access: A,
    events: E,
    era: Era,
    msix_mmap: MsixMmapPolicy,
    page_size: u64,
    _table: PhantomData<fn() -> T>,
}

/// A platform result with its error turned into the errno the core returns.
fn perr<T, Er: crate::errno::Error>(r: core::result::Result<T, Er>) -> Result<T> {
    r.map_err(|e| e.errno())
}

fn msi_qmax(nvec: u16) -> u8 {
    // ceil(log2(nvec)): 1→0, 2→1, 3→2, 5→3, 32→5.
    let n = u32::from(nvec.max(1));
    (32 - (n - 1).leading_zeros()) as u8
}

impl<A: PciAccess, E: EventSink> PciDriver<A, E> {
    /// A driver over the platform's `access` and `events` whose devices hold their
    /// [`IrqTable`] inline.
    pub const fn new(access: A, events: E) -> Self {
        PciDriver::with_tables(access, events)
    }
}

impl<A: PciAccess, E: EventSink, T: Borrow<IrqTable>> PciDriver<A, E, T> {
    /// A driver whose devices reach their [`IrqTable`] through `T` (e.g. `Arc<IrqTable>`
    /// or `&'static IrqTable`, so that interrupt handlers can share it).
    pub const fn with_tables(access: A, events: E) -> Self {
        PciDriver {
            access,
            events,
            era: Era::Linux7_3,
            msix_mmap: MsixMmapPolicy::Mappable,
            page_size: PAGE_SIZE,
            _table: PhantomData,
        }
    }

    /// The same driver reproducing kernel era `era` where kernels differ
    /// (oracle/DIFFERENCES.md: MSI-X `NORESIZE` and no dynamic MSI-X, no ERR index on
    /// conventional functions in 6.1).
    pub const fn with_era(mut self, era: Era) -> Self {
        self.era = era;
        self
    }

    /// The same driver with MSI-X BAR mmap policy `policy` (spec/05 §5.1).
    pub const fn with_msix_mmap(mut self, policy: MsixMmapPolicy) -> Self {
        self.msix_mmap = policy;
        self
    }

    /// The same driver assuming host page size `bytes` (a power of two ≥ 4096; other
    /// values are ignored) for mmap eligibility and sparse areas (spec/05 §5.1, §7).
    pub const fn with_page_size(mut self, bytes: u64) -> Self {
        if bytes.is_power_of_two() && bytes >= 4096 {
            self.page_size = bytes;
        }
        self
    }

    /// The kernel era reproduced.
    pub const fn era(&self) -> Era {
        self.era
    }

    /// The platform's PCI access.
    pub fn access(&self) -> &A {
        &self.access
    }

    /// The platform's PCI access, mutable (tools, tests).
    pub fn access_mut(&mut self) -> &mut A {
        &mut self.access
    }

    /// The event sink.
    pub fn events(&self) -> &E {
        &self.events
    }

    /// The event sink, mutable.
    pub fn events_mut(&mut self) -> &mut E {
        &mut self.events
    }

    /// A user-visible config read of `buf.len()` bytes at byte `offset` from the start of
    /// config space (spec/03 §3.1), exactly as a read of the CONFIG region would do it.
    /// Any length and alignment inside config space is legal (split into naturally
    /// aligned 1/2/4-byte chunks). Returns the bytes read (`buf.len()`; 0 for an empty
    /// `buf`).
    ///
    /// # Errors
    /// `EFAULT` outside config space (or before open: size 0); platform errors.
    pub fn read_config(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        offset: u16,
        buf: &mut [u8],
    ) -> Result<usize> {
        let bdf = state.bdf;
        state
            .config
            .read(&mut self.access, bdf, u64::from(offset), buf)
    }

    /// A user config write of `data` at byte `offset` from the start of config space
    /// (spec/03 §3.1), with the handlers of spec/03 §5–§6 and the INTx mask/unmask a
    /// DisINTx change asks for (spec/04 §6). Returns `data.len()` (writes the tables drop
    /// still count).
    ///
    /// # Errors
    /// As [`PciDriver::read_config`].
    pub fn write_config(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        offset: u16,
        data: &[u8],
    ) -> Result<usize> {
        self.config_write(state, u64::from(offset), data)
    }

    fn config_write(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        pos: u64,
        data: &[u8],
    ) -> Result<usize> {
        let bdf = state.bdf;
        let mut fx = WriteEffects::default();
        let msi_active = state.irq_type() == IrqType::Msi;
        let r = state
            .config
            .write(&mut self.access, bdf, pos, data, msi_active, &mut fx);
        // The virtual INTx disable only changes when the write reports it (WriteEffects),
        // so the interrupt path's copy is updated only then.
        if let Some(dis) = fx.intx_disable {
            state.table().set_virq_disabled(dis);
            if dis {
                self.intx_mask(state);
            } else {
                self.intx_unmask(state);
            }
        }
        r
    }

    /// Interrupt entry for MSI/MSI-X: vector `vector` (0-based, below [`MAX_VECTORS`]) of
    /// `kind` fired on the host. Signals the vector's trigger; returns whether an event was
    /// signalled (false when `kind` is not the active type, the vector is out of range or
    /// has no trigger).
    /// Lock-free ([`IrqTable::msi_fired`]); safe to call while another thread runs
    /// `SET_IRQS` on the same device if the table is shared ([`PciDevice::with_table`]).
    #[inline]
    pub fn msi_fired(&self, state: &PciDevice<E::Event, T>, kind: MsiKind, vector: u16) -> bool {
        state.table().msi_fired(&self.events, kind, vector)
    }

    /// The platform's AER `error_detected` callback for the function (spec/04 §5.3):
    /// signals the ERR trigger if one is registered. Returns whether one was signalled.
    /// The platform should report "can recover" regardless (spec/05 §10).
    pub fn aer_error(&self, state: &PciDevice<E::Event, T>) -> bool {
        state.open && state.table().error_detected(&self.events)
    }

    /// Interrupt entry for INTx on the control thread (spec/04 §6.4): automasks (PCI 2.3:
    /// check-and-mask through Status bit 3 and DisINTx; otherwise the host line is
    /// disabled) and signals the trigger. Returns whether the interrupt was taken (INTx
    /// active, not already masked, and — PCI 2.3 — the function asserting it). For a
    /// handler on another CPU use [`IrqTable::intx_fired`] with the platform's own
    /// non-blocking masking step.
    pub fn intx_fired(&mut self, state: &mut PciDevice<E::Event, T>) -> bool {
        let bdf = state.bdf;
        let pci23 = state.config.facts().intx_masking;
        let access = &mut self.access;
        state.table.borrow().intx_fired(&self.events, || {
            if !pci23 {
                access.intx_line_enable(bdf, false);
                return true;
            }
            // Check-and-mask: Command (low half) and Status (high half) in one dword
            // read, then DisINTx set unless it already is (spec/04 §6.4).
            let Ok(cmd_status) = access.config_read(bdf, 0x04, Width::Dword) else {
                return false;
            };
            if cmd_status & (STATUS_INTX << 16) == 0 {
                return false;
            }
            let cmd = cmd_status & 0xFFFF;
            if cmd & u32::from(CMD_INTX_DISABLE) == 0 {
                let _ =
                    access.config_write(bdf, 0x04, Width::Word, cmd | u32::from(CMD_INTX_DISABLE));
            }
            true
        })
    }

    /// INTx unmask (spec/04 §6.3): the UNMASK ioctl, the unmask eventfd, or the virtual
    /// DisINTx being cleared. If the device still asserts INTx (Status bit 3), INTx stays
    /// masked and the trigger is signalled again.
    pub fn intx_unmask(&mut self, state: &mut PciDevice<E::Event, T>) {
        let bdf = state.bdf;
        let pci23 = state.config.facts().intx_masking;
        if state.irq_type() != IrqType::Intx {
            if pci23 {
                set_disintx(&mut self.access, bdf, false);
            }
            return;
        }
        if !state.intx_masked() || state.config.virq_disabled {
            return;
        }
        let pending = if pci23 {
            perr(self.access.intx_check_and_unmask(bdf)).unwrap_or(true)
        } else {
            self.access.intx_line_enable(bdf, true);
            false
        };
        state.table().set_intx_masked(pending);
        if pending {
            self.signal_token(state.table().intx_trigger());
        }
    }

    fn intx_mask(&mut self, state: &mut PciDevice<E::Event, T>) {
        let bdf = state.bdf;
        let pci23 = state.config.facts().intx_masking;
        if state.irq_type() != IrqType::Intx {
            if pci23 {
                set_disintx(&mut self.access, bdf, true);
            }
            return;
        }
        if !state.intx_masked() {
            if pci23 {
                set_disintx(&mut self.access, bdf, true);
            } else {
                self.access.intx_line_enable(bdf, false);
            }
        }
        state.table().set_intx_masked(true);
    }

    /// Resolves eventfd `fd` into a table token (spec/04 §5).
    ///
    /// # Errors
    /// `EBADF`/`EINVAL` from the sink; `EINVAL` when the sink has no token for the event.
    fn resolve_token(&mut self, fd: i32) -> Result<u32> {
        let ev = self.events.resolve(fd)?;
        self.events
            .event_token(ev)
            .filter(|t| *t != NO_TOKEN)
            .ok_or(Errno::EINVAL)
    }

    // ------------------------------------------------------------------ open / close

    /// vfio-pci's probe: decides whether function `bdf` can be bound to vfio-pci and
    /// returns its (closed) device state for [`crate::vfio::Vfio::register_device`].
    ///
    /// # Errors
    /// `ENODEV` when no function answers (vendor ID 0xffff or 0, or a config space smaller
    /// than the 64-byte header); `EINVAL` for any header type but 0 (bridges and CardBus
    /// bridges are never assigned); the platform's error when config space cannot be read.
    pub fn probe(&mut self, bdf: Bdf) -> Result<PciDevice<E::Event, T>>
    where
        T: Default,
    {
        self.probe_with_table(bdf, T::default())
    }

    /// [`PciDriver::probe`] with the device's [`IrqTable`] holder `table`.
    ///
    /// # Errors
    /// As [`PciDriver::probe`].
    pub fn probe_with_table(&mut self, bdf: Bdf, table: T) -> Result<PciDevice<E::Event, T>> {
        self.check_function(bdf)
            .map(|_| PciDevice::with_table(bdf, table))
    }

    /// Checks that a type-0 function answers at `bdf`; returns its config size in bytes.
    fn check_function(&mut self, bdf: Bdf) -> Result<u16> {
        let size = perr(self.access.config_size(bdf))?;
        if size < 0x40 {
            return Err(Errno::ENODEV);
        }
        let vendor = perr(self.access.config_read(bdf, 0x00, Width::Word))?;
        let vf = self.access.function_facts(bdf).vf_ids.is_some();
        if !vf && (vendor == 0xFFFF || vendor == 0) {
            return Err(Errno::ENODEV);
        }
        let header = perr(self.access.config_read(bdf, 0x0E, Width::Byte))?;
        if header & 0x7F != 0 {
            return Err(Errno::EINVAL);
        }
        Ok(size)
    }

    fn do_open(&mut self, state: &mut PciDevice<E::Event, T>) -> Result<()> {
        let bdf = state.bdf;
        let size = self.check_function(bdf)?;
        // Step 2: clear bus mastering before anything is saved.
        let command = perr(self.access.config_read(bdf, 0x04, Width::Word))? as u16;
        state.saved_command = command & !CMD_MASTER;
        // Step 3: enable decode for the resources the function has.
        let mut decode = 0u16;
        for bar in BarIndex::ALL {
            let r = perr(self.access.bar_resource(bdf, bar))?;
            if r.size != 0 {
                decode |= if r.kind == BarKind::Io {
                    CMD_IO
                } else {
                    CMD_MEMORY
                };
            }
        }
        if perr(self.access.rom_size(bdf))? != 0 {
            decode |= CMD_MEMORY;
        }
        let facts = self.access.function_facts(bdf);
        if facts.vf_ids.is_some() {
            // A VF has no decode bits to enable (spec/05 §2 step 3, non-VF only).
            decode = 0;
        }
        let enabled = (command & !CMD_MASTER) | decode;
        perr(
            self.access
                .config_write(bdf, 0x04, Width::Word, u32::from(enabled)),
        )?;
        // Step 4: try a function reset. Hardware that comes out of it with its BARs and
        // Command cleared (no platform save/restore) gets them back before the state is
        // saved and the virtual config is built from it.
        let mut header = [0u32; 7];
        for (i, slot) in header.iter_mut().enumerate() {
            *slot = perr(self.access.config_read(bdf, bar_reg(i), Width::Dword))?;
        }
        state.reset_works = false;
        if self.access.reset_supported(bdf, ResetMethod::Function) {
            match self.access.reset(bdf, ResetMethod::Function) {
                Ok(()) => {
                    state.reset_works = true;
                    self.restore_header(bdf, &header, enabled);
                }
                Err(e) if e.errno() == Errno::EAGAIN => {
                    self.undo_enable(state);
                    return Err(Errno::EAGAIN);
                }
                Err(_) => {}
            }
        }
        self.access.save_state(bdf);
        // Step 8: build the config map and vconfig.
        if let Err(e) = state.config.build(&mut self.access, bdf, size, facts) {
            self.undo_enable(state);
            return Err(e);
        }
        state.irq = IrqState::new();
        state.table().reset();
        state.needs_reset = false;
        state.open = true;
        self.access.user_open(bdf, true);
        Ok(())
    }

    /// Rewrites BARs, ROM BAR and Command after a reset that lost them.
    fn restore_header(&mut self, bdf: Bdf, header: &[u32; 7], command: u16) {
        for (i, v) in header.iter().enumerate() {
            let off = bar_reg(i);
            if perr(self.access.config_read(bdf, off, Width::Dword)).ok() != Some(*v) {
                let _ = self.access.config_write(bdf, off, Width::Dword, *v);
            }
        }
        if perr(self.access.config_read(bdf, 0x04, Width::Word)).ok() != Some(u32::from(command)) {
            let _ = self
                .access
                .config_write(bdf, 0x04, Width::Word, u32::from(command));
        }
    }

    /// A failed first open: the Command register goes back to what it was (bus master
    /// off), and nothing of the half-done open stays in `state` (spec/05 §2: each step's
    /// failure undoes the earlier steps).
    fn undo_enable(&mut self, state: &mut PciDevice<E::Event, T>) {
        let _ =
            self.access
                .config_write(state.bdf, 0x04, Width::Word, u32::from(state.saved_command));
        state.reset_works = false;
        state.needs_reset = false;
        state.open = false;
        state.irq = IrqState::new();
        state.table().reset();
    }

    fn disable_irqs(&mut self, state: &mut PciDevice<E::Event, T>) {
        match state.irq_type() {
            IrqType::Msi | IrqType::Msix => self.msi_disable(state),
            IrqType::Intx => self.intx_disable(state),
            IrqType::None => {}
        }
    }

    /// spec/04 §6.5 (INTx): unmask eventfd dropped, host line freed, trigger released.
    fn intx_disable(&mut self, state: &mut PciDevice<E::Event, T>) {
        state.irq.intx_unmask = None;
        if state.irq.intx_requested {
            self.access.intx_free(state.bdf);
            state.irq.intx_requested = false;
        }
        state.table().set_kind(IrqType::None);
        state.table().set_intx_trigger(None);
        state.table().set_intx_masked(false);
    }

    /// spec/04 §6.5 (MSI/MSI-X): triggers released, every vector freed.
    fn msi_disable(&mut self, state: &mut PciDevice<E::Event, T>) {
        state.table().set_kind(IrqType::None);
        state.table().clear_vectors();
        self.access.irq_vectors_free(state.bdf);
        state.irq.allocated = 0;
        if state.config.facts().nointx {
            set_disintx(&mut self.access, state.bdf, true);
        }
    }

    // ------------------------------------------------------------------ regions

    fn bar_info(
        &mut self,
        state: &PciDevice<E::Event, T>,
        index: u32,
        caps: &mut CapChain<'_>,
    ) -> Result<RegionInfo> {
        let offset = u64::from(index) << region_index::OFFSET_SHIFT;
        let bar = BarIndex::new(index as u8).ok_or(Errno::EINVAL)?;
        let r = perr(self.access.bar_resource(state.bdf, bar))?;
        if r.size == 0 {
            return Ok(RegionInfo {
                flags: 0,
                size: 0,
                offset,
            });
        }
        let mut flags = region_flags::READ | region_flags::WRITE;
        let page = self.page_size;
        if r.kind != BarKind::Io && (r.size >= page || r.start % page == 0) {
            flags |= region_flags::MMAP;
            let msix = state.config.msix().filter(|m| u32::from(m.bar) == index);
            match (msix, self.msix_mmap) {
                (Some(_), MsixMmapPolicy::Mappable) => {
                    caps.add(region_cap::MSIX_MAPPABLE, 1, &[])?;
                }
                (Some(m), MsixMmapPolicy::Sparse) => {
                    let areas = sparse_areas(m, r.size, page);
                    let mut payload = [0u8; 8 + 2 * 16];
                    let n = areas.iter().filter(|a| a.is_some()).count().max(1);
                    payload[0..4].copy_from_slice(&(n as u32).to_le_bytes());
                    for (slot, a) in areas.iter().flatten().enumerate() {
                        let at = 8 + 16 * slot;
                        payload[at..at + 8].copy_from_slice(&a.0.to_le_bytes());
                        payload[at + 8..at + 16].copy_from_slice(&a.1.to_le_bytes());
                    }
                    caps.add(region_cap::SPARSE_MMAP, 1, &payload[..8 + 16 * n])?;
                }
                _ => {}
            }
        }
        Ok(RegionInfo {
            flags,
            size: r.size,
            offset,
        })
    }

    fn bar_rw(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        index: u32,
        pos: u64,
        mut io: Io<'_>,
    ) -> Result<usize> {
        let bdf = state.bdf;
        let bar = BarIndex::new(index as u8).ok_or(Errno::EINVAL)?;
        let r = perr(self.access.bar_resource(bdf, bar))?;
        if r.size == 0 || pos >= r.size {
            return Err(Errno::EINVAL);
        }
        let count = io
            .len()
            .min(usize::try_from(r.size - pos).unwrap_or(usize::MAX));
        let excluded = state
            .config
            .msix()
            .filter(|m| u32::from(m.bar) == index)
            .map(|m| {
                (
                    u64::from(m.table_offset),
                    u64::from(m.table_offset) + u64::from(m.table_bytes),
                )
            });
        let gated = r.kind != BarKind::Io;
        let mem_on = state.memory_enabled();
        let mut done = 0usize;
        while done < count {
            let p = pos + done as u64;
            let left = count - done;
            let fillable = match excluded {
                Some((xs, xe)) if p >= xs && p < xe => {
                    let n = left.min(usize::try_from(xe - p).unwrap_or(usize::MAX));
                    io.fill_excluded(done, n);
                    done += n;
                    continue;
                }
                Some((xs, _)) if p < xs => left.min(usize::try_from(xs - p).unwrap_or(usize::MAX)),
                _ => left,
            };
            let w = natural_width(p, fillable, 8);
            if gated && !mem_on {
                return Err(Errno::EIO);
            }
            match &mut io {
                Io::Read(b) => {
                    let s = b.get_mut(done..done + w).ok_or(Errno::EINVAL)?;
                    perr(self.access.bar_read(bdf, bar, p, s))?;
                }
                Io::Write(d) => {
                    let s = d.get(done..done + w).ok_or(Errno::EINVAL)?;
                    perr(self.access.bar_write(bdf, bar, p, s))?;
                }
            }
            done += w;
        }
        Ok(count)
    }

    fn rom_read(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        pos: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        let bdf = state.bdf;
        let size = perr(self.access.rom_size(bdf))?;
        if size == 0 || pos >= size {
            return Err(Errno::EINVAL);
        }
        let count = buf
            .len()
            .min(usize::try_from(size - pos).unwrap_or(usize::MAX));
        let image = perr(self.access.rom_image_size(bdf))?.min(size);
        let mut done = 0usize;
        while done < count {
            let p = pos + done as u64;
            let left = count - done;
            if p >= image {
                // Past the valid image: 0xFF, hardware untouched (spec/05 §6.3).
                if let Some(s) = buf.get_mut(done..count) {
                    s.fill(0xFF);
                }
                break;
            }
            if !state.memory_enabled() {
                return Err(Errno::EIO);
            }
            let left = left.min(usize::try_from(image - p).unwrap_or(usize::MAX));
            let w = natural_width(p, left, 4);
            let s = buf.get_mut(done..done + w).ok_or(Errno::EINVAL)?;
            perr(self.access.rom_read(bdf, p, s))?;
            done += w;
        }
        Ok(count)
    }

    /// VGA region access (spec/05 §6.5): `pos` is the legacy address itself.
    fn vga_rw(
        &mut self,
        state: &PciDevice<E::Event, T>,
        pos: u64,
        mut io: Io<'_>,
    ) -> Result<usize> {
        let (end, is_io) = match pos {
            0xA_0000..=0xB_FFFF => (VGA_REGION_SIZE, false),
            0x3B0..=0x3BB => (0x3BC, true),
            0x3C0..=0x3DF => (0x3E0, true),
            _ => return Err(Errno::EINVAL),
        };
        let count = io
            .len()
            .min(usize::try_from(end - pos).unwrap_or(usize::MAX));
        let bdf = state.bdf;
        let mut done = 0usize;
        while done < count {
            let p = pos + done as u64;
            let left = count - done;
            let w = natural_width(p, left, 4);
            let ok = match &mut io {
                Io::Read(b) => {
                    let s = b.get_mut(done..done + w).ok_or(Errno::EINVAL)?;
                    self.access.vga_read(bdf, is_io, p, s)
                }
                Io::Write(d) => {
                    let s = d.get(done..done + w).ok_or(Errno::EINVAL)?;
                    self.access.vga_write(bdf, is_io, p, s)
                }
            };
            if !ok {
                return Err(Errno::EIO);
            }
            done += w;
        }
        Ok(count)
    }

    // ------------------------------------------------------------------ SET_IRQS

    fn irq_count(&mut self, state: &PciDevice<E::Event, T>, index: u32) -> u32 {
        match index {
            irq_index::INTX => u32::from(state.config.interrupt_pin() != 0),
            irq_index::MSI => match state.config.msi() {
                Some((cap, _)) => {
                    let hw =
                        perr(self.access.config_read(state.bdf, cap + 2, Width::Word)).unwrap_or(0);
                    1 << ((hw & 0x000E) >> 1)
                }
                None => 0,
            },
            irq_index::MSIX => match state.config.msix() {
                Some(m) => {
                    let hw = perr(self.access.config_read(state.bdf, m.cap + 2, Width::Word))
                        .unwrap_or(0);
                    (hw & 0x07FF) + 1
                }
                None => 0,
            },
            irq_index::ERR | irq_index::REQ => 1,
            _ => 0,
        }
    }

    fn set_intx(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        req: &IrqSetRequest,
        data: &[u8],
    ) -> Result<u32> {
        let dt = req.data_type();
        let kind = state.irq_type();
        match req.action() {
            irq_set_flags::ACTION_MASK | irq_set_flags::ACTION_UNMASK => {
                if kind != IrqType::Intx || req.start != 0 || req.count != 1 {
                    return Err(Errno::EINVAL);
                }
                let unmask = req.action() == irq_set_flags::ACTION_UNMASK;
                match dt {
                    irq_set_flags::DATA_EVENTFD if !unmask => return Err(Errno::ENOTTY),
                    irq_set_flags::DATA_EVENTFD => {
                        let fd = fd_at(data, 0).ok_or(Errno::EINVAL)?;
                        if fd < 0 {
                            state.irq.intx_unmask = None;
                        } else {
                            if state.irq.intx_unmask.is_some() {
                                return Err(Errno::EBUSY);
                            }
                            state.irq.intx_unmask = Some(self.events.resolve(fd)?);
                        }
                    }
                    _ => {
                        let go =
                            dt == irq_set_flags::DATA_NONE || data.first().is_some_and(|b| *b != 0);
                        if go && unmask {
                            self.intx_unmask(state);
                        } else if go {
                            self.intx_mask(state);
                        }
                    }
                }
                Ok(0)
            }
            _ => {
                if kind == IrqType::Intx && req.count == 0 && dt == irq_set_flags::DATA_NONE {
                    self.intx_disable(state);
                    return Ok(0);
                }
                if !matches!(kind, IrqType::Intx | IrqType::None)
                    || req.start != 0
                    || req.count != 1
                {
                    return Err(Errno::EINVAL);
                }
                if dt == irq_set_flags::DATA_EVENTFD {
                    let fd = fd_at(data, 0).ok_or(Errno::EINVAL)?;
                    let token = if fd >= 0 {
                        Some(self.resolve_token(fd)?)
                    } else {
                        None
                    };
                    // The trigger is in place before the handler can run (while INTx is
                    // not the active type, the handler ignores it; spec/04 §6.1).
                    state.table().set_intx_trigger(token);
                    if kind != IrqType::Intx {
                        if let Err(e) = self.intx_enable(state) {
                            state.table().set_intx_trigger(None);
                            return Err(e);
                        }
                    }
                    return Ok(0);
                }
                if kind != IrqType::Intx {
                    return Err(Errno::EINVAL);
                }
                let go = dt == irq_set_flags::DATA_NONE || data.first().is_some_and(|b| *b != 0);
                if go && !state.config.virq_disabled {
                    self.signal_token(state.table().intx_trigger());
                }
                Ok(0)
            }
        }
    }

    /// spec/04 §6.1: `masked := virq_disabled`, `irq_type := INTx`, then the host line
    /// requested (shared for PCI 2.3, exclusive otherwise). The state the handler reads is
    /// published before the line is requested ("set before the handler can run") and
    /// taken back if the request fails.
    ///
    /// # Errors
    /// `ENODEV` without a host interrupt line; the platform's error from the request.
    fn intx_enable(&mut self, state: &mut PciDevice<E::Event, T>) -> Result<()> {
        let facts = state.config.facts();
        if facts.intx == IntxLine::Missing {
            // No host interrupt number to request (spec/04 §5.1).
            return Err(Errno::ENODEV);
        }
        let bdf = state.bdf;
        let masked = state.config.virq_disabled;
        if facts.intx_masking {
            set_disintx(&mut self.access, bdf, masked);
        }
        state.table().set_intx_masked(masked);
        state.table().set_kind(IrqType::Intx);
        if let Err(e) = perr(self.access.intx_request(bdf, facts.intx_masking, masked)) {
            state.table().set_kind(IrqType::None);
            state.table().set_intx_masked(false);
            return Err(e);
        }
        state.irq.intx_requested = true;
        Ok(())
    }

    fn signal_token(&self, token: Option<u32>) {
        if let Some(ev) = token.and_then(|t| self.events.token_event(t)) {
            self.events.signal(ev);
        }
    }

    /// Before MSI-X is enabled, the table the device reports must lie inside an
    /// implemented memory BAR: a Table BIR naming a missing, zero-size or I/O BAR, or a
    /// table running past the BAR's end, is refused with `ENOMEM` (Linux fails to map
    /// such a table with the same errno; ACRN #2624 and Jailhouse #8 came from trusting
    /// it). Nothing is allocated or written.
    fn check_msix_table(&mut self, state: &PciDevice<E::Event, T>) -> Result<()> {
        let info = state.config.msix().ok_or(Errno::EINVAL)?;
        let bar = BarIndex::new(info.bar).ok_or(Errno::ENOMEM)?;
        let r = perr(self.access.bar_resource(state.bdf, bar))?;
        let end = u64::from(info.table_offset) + u64::from(info.table_bytes);
        if r.size == 0 || r.kind == BarKind::Io || end > r.size {
            return Err(Errno::ENOMEM);
        }
        Ok(())
    }

    fn set_msi(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        req: &IrqSetRequest,
        data: &[u8],
    ) -> Result<u32> {
        let msix = req.index == irq_index::MSIX;
        let (this, kind) = if msix {
            (IrqType::Msix, MsiKind::Msix)
        } else {
            (IrqType::Msi, MsiKind::Msi)
        };
        let dt = req.data_type();
        let active = state.irq_type();
        if active == this && req.count == 0 && dt == irq_set_flags::DATA_NONE {
            self.msi_disable(state);
            return Ok(0);
        }
        if active != this && active != IrqType::None {
            return Err(Errno::EINVAL);
        }
        // 6.1 kept a fixed array of the vectors allocated at enable: every operation on
        // an enabled index must stay inside it (oracle/DIFFERENCES A1: partial disable and
        // triggers past it were EINVAL).
        let end = u64::from(req.start) + u64::from(req.count);
        if active == this && self.era == Era::Linux6_1 && end > u64::from(state.irq.allocated) {
            return Err(Errno::EINVAL);
        }
        if dt == irq_set_flags::DATA_EVENTFD {
            if active == this {
                self.set_block(state, req, data, msix)?;
                return Ok(0);
            }
            let nvec = req.start.checked_add(req.count).ok_or(Errno::EINVAL)?;
            if nvec == 0 {
                return Err(Errno::ERANGE);
            }
            let nvec = u16::try_from(nvec).map_err(|_| Errno::EINVAL)?;
            if msix {
                self.check_msix_table(state)?;
            }
            let granted = perr(self.access.irq_vectors_alloc(state.bdf, kind, nvec))?;
            if granted < nvec {
                self.access.irq_vectors_free(state.bdf);
                return Ok(u32::from(granted));
            }
            state.irq.allocated = nvec;
            state.table().clear_vectors();
            state.table().set_kind(this);
            if !msix {
                state.config.msi_qmax = msi_qmax(nvec);
            }
            if let Err(e) = self.set_block(state, req, data, msix) {
                self.msi_disable(state);
                return Err(e);
            }
            return Ok(0);
        }
        if active != this {
            return Err(Errno::EINVAL);
        }
        for i in 0..req.count {
            let v = req.start.saturating_add(i) as usize;
            let go =
                dt == irq_set_flags::DATA_NONE || data.get(i as usize).is_some_and(|b| *b != 0);
            if go {
                self.signal_token(state.table().vector_token(v));
            }
        }
        Ok(0)
    }

    fn set_block(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        req: &IrqSetRequest,
        data: &[u8],
        msix: bool,
    ) -> Result<()> {
        for i in 0..req.count {
            let v = req.start.saturating_add(i);
            let fd = fd_at(data, i as usize).ok_or(Errno::EINVAL)?;
            state.table().set_vector(v as usize, None);
            if fd < 0 {
                continue;
            }
            if let Err(e) = self.set_vector(state, v, fd, msix) {
                for j in req.start..=v {
                    state.table().set_vector(j as usize, None);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn set_vector(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        v: u32,
        fd: i32,
        msix: bool,
    ) -> Result<()> {
        if v as usize >= MAX_VECTORS {
            return Err(Errno::EINVAL);
        }
        let token = self.resolve_token(fd)?;
        if v >= u32::from(state.irq.allocated) {
            if !msix || self.era == Era::Linux6_1 {
                return Err(Errno::EINVAL);
            }
            // Dynamic MSI-X (ERRATA 3): only the missing vector is allocated.
            self.access
                .irq_vector_add(state.bdf, v as u16, state.irq.allocated)?;
            state.irq.allocated = (v + 1) as u16;
        }
        state.table().set_vector(v as usize, Some(token));
        Ok(())
    }

    fn set_single(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        req: &IrqSetRequest,
        data: &[u8],
    ) -> Result<u32> {
        if req.start != 0 || req.count > 1 {
            return Err(Errno::EINVAL);
        }
        let err_index = req.index == irq_index::ERR;
        let current = if err_index {
            state.table().err()
        } else {
            state.table().req()
        };
        let new = match req.data_type() {
            irq_set_flags::DATA_NONE => {
                let t = current.ok_or(Errno::EINVAL)?;
                if req.count == 1 {
                    self.signal_token(Some(t));
                    return Ok(0);
                }
                None
            }
            irq_set_flags::DATA_BOOL => {
                if req.count == 0 {
                    return Err(Errno::EINVAL);
                }
                if data.first().is_some_and(|b| *b != 0) {
                    self.signal_token(current);
                }
                return Ok(0);
            }
            _ => {
                if req.count == 0 {
                    return Err(Errno::EINVAL);
                }
                match fd_at(data, 0).ok_or(Errno::EINVAL)? {
                    -1 => None,
                    fd if fd >= 0 => Some(self.resolve_token(fd)?),
                    _ => return Ok(0),
                }
            }
        };
        if err_index {
            state.table().set_err(new);
        } else {
            state.table().set_req(new);
        }
        Ok(0)
    }
}

/// Sets or clears hardware DisINTx (Command bit 10) by read-modify-write.
fn set_disintx<A: PciAccess>(access: &mut A, bdf: Bdf, on: bool) {
    if let Ok(cmd) = perr(access.config_read(bdf, 0x04, Width::Word)) {
        let new = if on {
            cmd | u32::from(CMD_INTX_DISABLE)
        } else {
            cmd & !u32::from(CMD_INTX_DISABLE)
        };
        if new != cmd {
            let _ = access.config_write(bdf, 0x04, Width::Word, new);
        }
    }
}

/// Sparse-mmap areas of the MSI-X BAR (spec/05 §5.1): the pages before and after the
/// table, as `(offset, size)` in bytes. Both `None`: the degenerate single all-zero area.
fn sparse_areas(m: MsixInfo, end: u64, page: u64) -> [Option<(u64, u64)>; 2] {
    let o = u64::from(m.table_offset);
    let table_end = o.saturating_add(u64::from(m.table_bytes));
    let first = o & !(page - 1);
    let after = table_end.saturating_add(page - 1) & !(page - 1);
    let a = (first != 0).then_some((0, first));
    let b = (after < end).then(|| (after, end - after));
    [a, b]
}

/// The little-endian `u32` at byte `at` of an ioctl buffer; `None` when `buf` holds fewer
/// than `at + 4` bytes.
fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The `i`-th s32 eventfd of an ioctl payload (SET_IRQS data, feature payloads); `None`
/// when `data` is too short.
fn fd_at(data: &[u8], i: usize) -> Option<i32> {
    u32_at(data, i.checked_mul(4)?).map(|v| v as i32)
}

/// Direction of a BAR transfer.
enum Io<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Io<'_> {
    fn len(&self) -> usize {
        match self {
            Io::Read(b) => b.len(),
            Io::Write(d) => d.len(),
        }
    }

    /// Reads of the excluded MSI-X table range return 0xFF; writes are dropped.
    fn fill_excluded(&mut self, at: usize, n: usize) {
        if let Io::Read(b) = self {
            if let Some(s) = b.get_mut(at..at.saturating_add(n)) {
                s.fill(0xFF);
            }
        }
    }
}

impl<A: PciAccess, E: EventSink, T: Borrow<IrqTable>> BusDriver for PciDriver<A, E, T> {
    type State = PciDevice<E::Event, T>;

    /// Enable at first open (spec/05 §2): refuses absent functions (`ENODEV`) and
    /// non-type-0 headers (`EINVAL`), clears bus master, enables decode, tries a function
    /// reset (`EAGAIN` when contended), builds the config state (platform read errors).
    fn open_device(&mut self, state: &mut Self::State) -> Result<()> {
        self.do_open(state)
    }

    /// Disable at last close (spec/05 §3): bus master off, IRQs disabled (vectors freed),
    /// triggers dropped, Command 0x0400 during the reset, function reset if it worked at
    /// open, BARs and the Command register as saved at open restored (the core's stand-in
    /// for the platform's saved config state).
    fn close_device(&mut self, state: &mut Self::State) {
        self.ioeventfd_clear(state);
        if state.low_power != LowPower::Off {
            state.low_power = LowPower::Off;
            let _ = self.access.runtime_low_power(state.bdf, false);
        }
        self.do_close(state);
    }

    /// vfio-pci adds no device-info capability: the answer is [`BusDriver::device_counts`].
    fn device_info(
        &mut self,
        state: &mut Self::State,
        _caps: &mut CapChain<'_>,
    ) -> Result<DeviceInfo> {
        self.device_counts(state)
    }

    /// `PCI` (plus `RESET` when a reset method works), the 9 vfio-pci regions and 5 IRQ
    /// indexes (spec/05 §4.3), without building a capability chain.
    fn device_counts(&mut self, state: &mut Self::State) -> Result<DeviceInfo> {
        let mut flags = device_flags::PCI;
        if state.reset_works {
            flags |= device_flags::RESET;
        }
        Ok(DeviceInfo {
            flags,
            num_regions: region_index::NUM,
            num_irqs: irq_index::NUM,
        })
    }

    fn region_info(
        &mut self,
        state: &mut Self::State,
        index: u32,
        caps: &mut CapChain<'_>,
    ) -> Result<RegionInfo> {
        let offset = u64::from(index) << region_index::OFFSET_SHIFT;
        match index {
            region_index::BAR0..=region_index::BAR5 => self.bar_info(state, index, caps),
            region_index::ROM => {
                let size = perr(self.access.rom_size(state.bdf))?;
                let flags = if size != 0 { region_flags::READ } else { 0 };
                Ok(RegionInfo {
                    flags,
                    size,
                    offset,
                })
            }
            region_index::CONFIG => Ok(RegionInfo {
                flags: region_flags::READ | region_flags::WRITE,
                size: u64::from(state.config.size()),
                offset,
            }),
            region_index::VGA if state.config.facts().has_vga => Ok(RegionInfo {
                flags: region_flags::READ | region_flags::WRITE,
                size: VGA_REGION_SIZE,
                offset,
            }),
            _ => Err(Errno::EINVAL),
        }
    }

    fn irq_info(&mut self, state: &mut Self::State, index: u32) -> Result<IrqInfo> {
        let count = self.irq_count(state, index);
        let flags = match index {
            irq_index::INTX => {
                irq_info_flags::EVENTFD | irq_info_flags::MASKABLE | irq_info_flags::AUTOMASKED
            }
            irq_index::MSIX if count > 0 && self.era != Era::Linux6_1 => irq_info_flags::EVENTFD,
            irq_index::ERR if self.era == Era::Linux6_1 && !state.config.is_pcie() => {
                return Err(Errno::EINVAL)
            }
            irq_index::MSI | irq_index::MSIX | irq_index::ERR | irq_index::REQ => {
                irq_info_flags::EVENTFD | irq_info_flags::NORESIZE
            }
            _ => return Err(Errno::EINVAL),
        };
        Ok(IrqInfo { flags, count })
    }

    fn set_irqs(
        &mut self,
        state: &mut Self::State,
        request: &IrqSetRequest,
        data: &[u8],
    ) -> Result<u32> {
        let resumed = self.pm_get(state);
        let r = self.do_set_irqs(state, request, data);
        self.pm_put(state, resumed);
        r
    }

    /// `VFIO_DEVICE_RESET` (spec/05 §4.2): `EINVAL` without a working reset; else the
    /// platform's function reset (its errno), then hardware BARs are restored if the
    /// reset lost them (spec/03 §5.3) and the Command register is put back.
    fn reset(&mut self, state: &mut Self::State) -> Result<()> {
        let resumed = self.pm_get(state);
        let r = self.do_reset(state);
        self.pm_put(state, resumed);
        r
    }

    fn read(&mut self, state: &mut Self::State, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let resumed = self.pm_get(state);
        let r = self.do_read(state, offset, buf);
        self.pm_put(state, resumed);
        r
    }

    fn write(&mut self, state: &mut Self::State, offset: u64, data: &[u8]) -> Result<usize> {
        let resumed = self.pm_get(state);
        let r = self.do_write(state, offset, data);
        self.pm_put(state, resumed);
        r
    }

    fn request(&mut self, state: &mut Self::State, count: u32) {
        let signalled = state.table().request(&self.events);
        if !signalled && count == 0 {
            vfio_warn!("pci: device request with no REQ trigger; blocked until released");
        }
    }

    fn device_feature(
        &mut self,
        state: &mut Self::State,
        request: &FeatureRequest,
        payload: &mut [u8],
    ) -> Result<i64> {
        self.feature(state, request, payload)
    }

    fn ioctl(&mut self, state: &mut Self::State, request: u32, arg: &mut [u8]) -> Result<i64> {
        self.ioctl_with_fds(state, request, arg, &reset::NoFds)
    }

    fn ioctl_with_fds(
        &mut self,
        state: &mut Self::State,
        request: u32,
        arg: &mut [u8],
        fds: &dyn FdResolver,
    ) -> Result<i64> {
        let resumed = self.pm_get(state);
        let r = match request {
            ioctl::DEVICE_GET_PCI_HOT_RESET_INFO => self.hot_reset_info(state, arg).map(|()| 0),
            ioctl::DEVICE_PCI_HOT_RESET => self.hot_reset(state, arg, fds).map(|()| 0),
            ioctl::DEVICE_IOEVENTFD => self.ioeventfd(state, arg).map(|()| 0),
            _ => Err(Errno::ENOTTY),
        };
        self.pm_put(state, resumed);
        r
    }
}

impl<A: PciAccess, E: EventSink, T: Borrow<IrqTable>> PciDriver<A, E, T> {
    fn do_read(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let index = offset >> region_index::OFFSET_SHIFT;
        let pos = offset & REGION_MASK;
        match u32::try_from(index).unwrap_or(u32::MAX) {
            i @ region_index::BAR0..=region_index::BAR5 => {
                self.bar_rw(state, i, pos, Io::Read(buf))
            }
            region_index::ROM => self.rom_read(state, pos, buf),
            region_index::VGA if state.config.facts().has_vga => {
                self.vga_rw(state, pos, Io::Read(buf))
            }
            region_index::CONFIG => {
                let bdf = state.bdf;
                state.config.read(&mut self.access, bdf, pos, buf)
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn do_write(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        offset: u64,
        data: &[u8],
    ) -> Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let index = offset >> region_index::OFFSET_SHIFT;
        let pos = offset & REGION_MASK;
        match u32::try_from(index).unwrap_or(u32::MAX) {
            i @ region_index::BAR0..=region_index::BAR5 => {
                self.bar_rw(state, i, pos, Io::Write(data))
            }
            region_index::CONFIG => self.config_write(state, pos, data),
            region_index::VGA if state.config.facts().has_vga => {
                self.vga_rw(state, pos, Io::Write(data))
            }
            _ => Err(Errno::EINVAL),
        }
    }

    fn do_set_irqs(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        request: &IrqSetRequest,
        data: &[u8],
    ) -> Result<u32> {
        let action = request.action();
        let supported = match request.index {
            irq_index::INTX => irq_set_flags::ACTION_TYPE_MASK,
            irq_index::MSI | irq_index::MSIX | irq_index::ERR | irq_index::REQ => {
                irq_set_flags::ACTION_TRIGGER
            }
            _ => 0,
        };
        if action.count_ones() != 1 || action & supported == 0 {
            return Err(Errno::ENOTTY);
        }
        match request.index {
            irq_index::INTX => self.set_intx(state, request, data),
            irq_index::MSI | irq_index::MSIX => self.set_msi(state, request, data),
            _ => self.set_single(state, request, data),
        }
    }

    /// `VFIO_DEVICE_RESET` (spec/05 §4.2): `EINVAL` without a working reset; else the
    /// platform's function reset (its errno), then hardware BARs are restored if the
    /// reset lost them (spec/03 §5.3) and the Command register is put back.
    fn do_reset(&mut self, state: &mut PciDevice<E::Event, T>) -> Result<()> {
        if !state.reset_works {
            return Err(Errno::EINVAL);
        }
        let bdf = state.bdf;
        let cmd = perr(self.access.config_read(bdf, 0x04, Width::Word))?;
        perr(self.access.reset(bdf, ResetMethod::Function))?;
        state.config.restore_bars_if_lost(&mut self.access, bdf)?;
        let now = perr(self.access.config_read(bdf, 0x04, Width::Word))?;
        if now != cmd {
            perr(self.access.config_write(bdf, 0x04, Width::Word, cmd))?;
        }
        Ok(())
    }
}
