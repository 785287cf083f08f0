//! The simulated machine and the cheap handles that implement the platform traits.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;

use vfio_core::errno::ErrorType;
use vfio_core::platform::{
    AffectedFunction, BarIndex, BarKind, BarResource, Bdf, DomainId, DomainInfo, FunctionFacts,
    GroupId, GroupInfo, HostMemory, IntxLine, Iommu, MsiKind, PciAccess, PinnedRun, Prot,
    ReservedRegion, ResetMethod, Width,
};
use vfio_core::Errno;

use crate::events::SimEvents;
use crate::function::SimFunction;
use crate::iommu::{GroupProfile, PageTable, Pte};
use crate::memory::{AddressSpace, Backing, PhysMemory, VmRange, PAGE_SIZE};

/// Which host driver a device is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    /// `vfio-pci` (the default for added functions).
    Vfio,
    /// A host driver doing DMA through the DMA API: makes the group non-viable.
    Host,
    /// `pci-stub`: claims the device, does no DMA (viable).
    Stub,
    /// No driver (viable).
    None,
}

/// Why a device-initiated DMA was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultReason {
    /// No function at the requester BDF.
    NoDevice,
    /// The device's group is not attached to any domain (DMA is blocked).
    NotAttached,
    /// No translation for the page.
    Unmapped,
    /// The page is mapped without the needed permission (READ or WRITE).
    Permission,
    /// The access wraps past the end of the 64-bit IOVA space.
    Wrap,
}

/// A recorded DMA fault (the IOMMU's fault log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DmaFault {
    /// Requester.
    pub bdf: Bdf,
    /// First IOVA of the access that faulted (the faulting page's address for
    /// `Unmapped`/`Permission`).
    pub iova: u64,
    /// The access was a write (device → memory).
    pub write: bool,
    /// Why.
    pub reason: FaultReason,
}

impl fmt::Display for DmaFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DMA {} fault from {} at IOVA {:#x}: {:?}",
            if self.write { "write" } else { "read" },
            self.bdf,
            self.iova,
            self.reason
        )
    }
}

#[derive(Debug)]
struct FnSlot {
    func: SimFunction,
    group: GroupId,
    binding: Binding,
    bus_reset: bool,
    slot_reset: bool,
    reset_contended: bool,
    intx: HostIntx,
    user_open: bool,
}

impl FnSlot {
    /// Whether reset `method` works for this function (the `reset_supported` answer).
    fn reset_works(&self, method: ResetMethod) -> bool {
        match method {
            ResetMethod::Function => self.func.function_reset_supported(),
            ResetMethod::Bus => self.bus_reset,
            ResetMethod::Slot => self.slot_reset,
        }
    }
}

/// Whether a reset of `dev` by `method` reaches `other`: itself (`Function`), every
/// function on its bus (`Bus`), or on its bus and device number (`Slot`).
fn in_reset_scope(method: ResetMethod, dev: Bdf, other: Bdf) -> bool {
    match method {
        ResetMethod::Function => other == dev,
        ResetMethod::Bus => other.segment == dev.segment && other.bus == dev.bus,
        ResetMethod::Slot => {
            other.segment == dev.segment && other.bus == dev.bus && other.device == dev.device
        }
    }
}

/// The host side of a function's INTx wiring: its interrupt line and what the core
/// requested on it ([`PciAccess::intx_request`] and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostIntx {
    /// Host interrupt line number; `None`: no line (enabling INTx fails `ENODEV`).
    /// Functions with the same number share the line.
    pub line: Option<u32>,
    /// The core's handler is installed on the line.
    pub requested: bool,
    /// Requested as shared (PCI 2.3 masking) rather than exclusively.
    pub shared: bool,
    /// The host line is enabled (not masked at the interrupt controller).
    pub enabled: bool,
}

#[derive(Debug, Default)]
struct GroupState {
    profile: GroupProfile,
    claimed: bool,
    domain: Option<DomainId>,
}

#[derive(Debug)]
struct DomainState {
    info: DomainInfo,
    groups: BTreeSet<GroupId>,
    table: PageTable,
}

#[derive(Debug, Default)]
struct State {
    functions: BTreeMap<Bdf, FnSlot>,
    groups: BTreeMap<GroupId, GroupState>,
    domains: BTreeMap<DomainId, DomainState>,
    next_domain: DomainId,
    phys: PhysMemory,
    space: AddressSpace,
    faults: Vec<DmaFault>,
    violations: Vec<String>,
    bus_resets: u64,
}

impl State {
    fn members(&self, group: GroupId) -> impl Iterator<Item = (&Bdf, &FnSlot)> {
        self.functions.iter().filter(move |(_, s)| s.group == group)
    }

    fn viable(&self, group: GroupId) -> bool {
        self.groups.contains_key(&group)
            && self.members(group).all(|(_, s)| s.binding != Binding::Host)
    }

    /// Finds the function and BAR whose host memory resource contains `[phys, +len)`.
    fn bar_at(&self, phys: u64, len: u64) -> Option<(Bdf, u8, u64)> {
        for (bdf, slot) in &self.functions {
            for i in 0..6u8 {
                let Some(r) = slot.func.bar_resource(i) else {
                    continue;
                };
                if r.size == 0 || r.kind == BarKind::Io || phys < r.start {
                    continue;
                }
                let off = phys - r.start;
                if off < r.size && len <= r.size - off {
                    return Some((*bdf, i, off));
                }
            }
        }
        None
    }

    fn phys_write(&mut self, phys: u64, data: &[u8]) {
        if let Some((bdf, bar, off)) = self.bar_at(phys, data.len() as u64) {
            if let Some(slot) = self.functions.get_mut(&bdf) {
                let _ = slot.func.bar_write(bar, off, data);
                return;
            }
        }
        self.phys.write(phys, data);
    }

    fn phys_read(&self, phys: u64, buf: &mut [u8]) {
        if let Some((bdf, bar, off)) = self.bar_at(phys, buf.len() as u64) {
            if let Some(slot) = self.functions.get(&bdf) {
                let _ = slot.func.bar_read(bar, off, buf);
                return;
            }
        }
        self.phys.read(phys, buf);
    }

    /// Writes `data` through `segments`: `(physical address, length)` pairs that cover
    /// `data` in order (from [`State::dma_segments`] or [`SimMachine::virt_walk`]).
    fn write_segments(&mut self, segments: &[(u64, usize)], data: &[u8]) {
        let mut rest = data;
        for &(phys, len) in segments {
            let (part, tail) = rest.split_at(len.min(rest.len()));
            self.phys_write(phys, part);
            rest = tail;
        }
    }

    /// Reads `buf` through `segments`, as [`State::write_segments`] writes.
    fn read_segments(&self, segments: &[(u64, usize)], buf: &mut [u8]) {
        let mut rest = buf;
        for &(phys, len) in segments {
            let (part, tail) = rest.split_at_mut(len.min(rest.len()));
            self.phys_read(phys, part);
            rest = tail;
        }
    }

    /// Translates a device access page by page; records a fault on the first failure.
    fn dma_segments(
        &mut self,
        bdf: Bdf,
        iova: u64,
        len: usize,
        write: bool,
    ) -> Result<Vec<(u64, usize)>, DmaFault> {
        let fault = |iova: u64, reason: FaultReason| DmaFault {
            bdf,
            iova,
            write,
            reason,
        };
        let result = (|| {
            let slot = self
                .functions
                .get(&bdf)
                .ok_or(fault(iova, FaultReason::NoDevice))?;
            let domain = self
                .groups
                .get(&slot.group)
                .and_then(|g| g.domain)
                .and_then(|d| self.domains.get(&d))
                .ok_or(fault(iova, FaultReason::NotAttached))?;
            if len == 0 {
                return Ok(Vec::new());
            }
            iova.checked_add(len as u64 - 1)
                .ok_or(fault(iova, FaultReason::Wrap))?;
            let need = if write { Prot::WRITE } else { Prot::READ };
            let mut segments = Vec::new();
            let mut done = 0usize;
            while done < len {
                let cur = iova + done as u64;
                let (start, pte): (u64, Pte) = domain
                    .table
                    .lookup(cur)
                    .ok_or(fault(cur & !(PAGE_SIZE - 1), FaultReason::Unmapped))?;
                if !pte.prot.contains(need) {
                    return Err(fault(cur & !(PAGE_SIZE - 1), FaultReason::Permission));
                }
                let in_page = pte.size - (cur - start);
                let chunk = usize::try_from(in_page)
                    .unwrap_or(usize::MAX)
                    .min(len - done);
                segments.push((pte.phys + (cur - start), chunk));
                done += chunk;
            }
            Ok(segments)
        })();
        if let Err(f) = result {
            self.faults.push(f);
        }
        result
    }
}

/// A simulated machine: PCI functions in IOMMU groups, a checking IOMMU, physical memory,
/// one process address space and an event table.
///
/// Clones share the same machine. The trait implementations live on the handles returned
/// by [`SimMachine::pci`], [`SimMachine::iommu`], [`SimMachine::memory`] and
/// [`SimMachine::events`]. Handles are not re-entrant (nothing in them calls back out),
/// and not `Send`.
#[derive(Debug, Clone, Default)]
pub struct SimMachine {
    state: Rc<RefCell<State>>,
    events: SimEvents,
}

/// [`PciAccess`] handle on a [`SimMachine`].
#[derive(Debug, Clone)]
pub struct SimPci {
    state: Rc<RefCell<State>>,
}

/// [`Iommu`] handle on a [`SimMachine`].
#[derive(Debug, Clone)]
pub struct SimIommu {
    state: Rc<RefCell<State>>,
}

/// [`HostMemory`] handle on a [`SimMachine`] (the simulated process).
#[derive(Debug, Clone)]
pub struct SimMemory {
    state: Rc<RefCell<State>>,
}

impl SimMachine {
    /// An empty machine: no functions, no groups, no memory mapped, unlimited locked
    /// memory.
    pub fn new() -> SimMachine {
        let m = SimMachine::default();
        m.state.borrow_mut().next_domain = 1;
        m
    }

    /// The [`PciAccess`] handle.
    pub fn pci(&self) -> SimPci {
        SimPci {
            state: self.state.clone(),
        }
    }

    /// The [`Iommu`] handle.
    pub fn iommu(&self) -> SimIommu {
        SimIommu {
            state: self.state.clone(),
        }
    }

    /// The [`HostMemory`] handle.
    pub fn memory(&self) -> SimMemory {
        SimMemory {
            state: self.state.clone(),
        }
    }

    /// The [`vfio_core::platform::EventSink`] handle (the descriptor table).
    pub fn events(&self) -> SimEvents {
        self.events.clone()
    }

    // ---- topology ----

    /// Adds `func` at `bdf` in IOMMU group `group` (created with the default
    /// [`GroupProfile`] if new), bound to [`Binding::Vfio`]. Bus resets are supported
    /// unless the function sits on bus 0; slot resets are not.
    ///
    /// # Errors
    /// `EEXIST` when `bdf` is taken.
    pub fn add_function(&self, bdf: Bdf, func: SimFunction, group: GroupId) -> Result<(), Errno> {
        let mut s = self.state.borrow_mut();
        if s.functions.contains_key(&bdf) {
            return Err(Errno::EEXIST);
        }
        s.groups.entry(group).or_default();
        s.functions.insert(
            bdf,
            FnSlot {
                func,
                group,
                binding: Binding::Vfio,
                bus_reset: bdf.bus != 0,
                slot_reset: false,
                reset_contended: false,
                intx: HostIntx {
                    line: Some(0x100 + u32::from(bdf.bus) * 256 + u32::from(bdf.devfn())),
                    requested: false,
                    shared: false,
                    enabled: false,
                },
                user_open: false,
            },
        );
        Ok(())
    }

    /// Removes the function at `bdf` (hot-unplug); returns it. Its group stays.
    pub fn remove_function(&self, bdf: Bdf) -> Option<SimFunction> {
        self.state
            .borrow_mut()
            .functions
            .remove(&bdf)
            .map(|s| s.func)
    }

    /// Runs `f` on the function at `bdf` (e.g. to poke hardware state behind VFIO's back).
    ///
    /// `f` runs while the machine is borrowed: it must not call back into the machine or
    /// its handles (that would panic on the `RefCell`).
    pub fn with_function<R>(&self, bdf: Bdf, f: impl FnOnce(&mut SimFunction) -> R) -> Option<R> {
        let mut s = self.state.borrow_mut();
        s.functions.get_mut(&bdf).map(|slot| f(&mut slot.func))
    }

    /// A snapshot (clone) of the function at `bdf`.
    pub fn function(&self, bdf: Bdf) -> Option<SimFunction> {
        self.with_function(bdf, |f| f.clone())
    }

    /// Every function's BDF, ascending.
    pub fn functions(&self) -> Vec<Bdf> {
        self.state.borrow().functions.keys().copied().collect()
    }

    /// Sets the IOMMU profile of `group` (creating the group if needed). Domains already
    /// allocated keep their properties.
    pub fn set_group_profile(&self, group: GroupId, profile: GroupProfile) {
        self.state
            .borrow_mut()
            .groups
            .entry(group)
            .or_default()
            .profile = profile;
    }

    /// The IOMMU profile of `group`.
    pub fn group_profile(&self, group: GroupId) -> Option<GroupProfile> {
        self.state
            .borrow()
            .groups
            .get(&group)
            .map(|g| g.profile.clone())
    }

    /// Members of `group`, ascending.
    pub fn group_members(&self, group: GroupId) -> Vec<Bdf> {
        self.state
            .borrow()
            .members(group)
            .map(|(b, _)| *b)
            .collect()
    }

    /// The group of the function at `bdf`.
    pub fn group_of(&self, bdf: Bdf) -> Option<GroupId> {
        self.state.borrow().functions.get(&bdf).map(|s| s.group)
    }

    /// Whether VFIO holds the DMA ownership claim of `group`.
    pub fn group_claimed(&self, group: GroupId) -> bool {
        self.state
            .borrow()
            .groups
            .get(&group)
            .is_some_and(|g| g.claimed)
    }

    /// The domain `group` is attached to.
    pub fn group_domain(&self, group: GroupId) -> Option<DomainId> {
        self.state
            .borrow()
            .groups
            .get(&group)
            .and_then(|g| g.domain)
    }

    /// The driver the function at `bdf` is bound to.
    pub fn binding(&self, bdf: Bdf) -> Option<Binding> {
        self.state.borrow().functions.get(&bdf).map(|s| s.binding)
    }

    /// Binds the function at `bdf` to `binding`.
    ///
    /// # Errors
    /// `ENODEV`: no such function; `EBUSY`: binding a [`Binding::Host`] driver while VFIO
    /// holds the group's DMA ownership claim.
    pub fn bind_driver(&self, bdf: Bdf, binding: Binding) -> Result<(), Errno> {
        let mut s = self.state.borrow_mut();
        let group = s.functions.get(&bdf).ok_or(Errno::ENODEV)?.group;
        let claimed = s.groups.get(&group).is_some_and(|g| g.claimed);
        if binding == Binding::Host && claimed {
            return Err(Errno::EBUSY);
        }
        if let Some(slot) = s.functions.get_mut(&bdf) {
            slot.binding = binding;
        }
        Ok(())
    }

    /// Live domains, ascending.
    pub fn domains(&self) -> Vec<DomainId> {
        self.state.borrow().domains.keys().copied().collect()
    }

    /// Properties of `domain`.
    pub fn domain_info(&self, domain: DomainId) -> Option<DomainInfo> {
        self.state.borrow().domains.get(&domain).map(|d| d.info)
    }

    /// Groups attached to `domain`, ascending.
    pub fn domain_groups(&self, domain: DomainId) -> Vec<GroupId> {
        self.state
            .borrow()
            .domains
            .get(&domain)
            .map(|d| d.groups.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The page table entries of `domain`: `(iova, pte)`, ascending.
    pub fn domain_mappings(&self, domain: DomainId) -> Vec<(u64, Pte)> {
        self.state
            .borrow()
            .domains
            .get(&domain)
            .map(|d| d.table.iter().collect())
            .unwrap_or_default()
    }

    /// Misuse of the platform contract by the caller seen so far (e.g. freeing a domain
    /// that still has mappings, attaching an unclaimed group). Empty for a correct core.
    pub fn violations(&self) -> Vec<String> {
        self.state.borrow().violations.clone()
    }

    // ---- device-initiated DMA ----

    /// The device at `bdf` writes `data` at `iova` through its group's domain.
    ///
    /// Every page is translated and checked for WRITE before any byte is written; a
    /// target inside a memory BAR of some function reaches that BAR (peer-to-peer).
    /// Bus Master Enable is not checked.
    ///
    /// # Errors
    /// The [`DmaFault`] (also appended to the fault log); memory is untouched.
    pub fn dma_write(&self, bdf: Bdf, iova: u64, data: &[u8]) -> Result<(), DmaFault> {
        let mut s = self.state.borrow_mut();
        let segments = s.dma_segments(bdf, iova, data.len(), true)?;
        s.write_segments(&segments, data);
        Ok(())
    }

    /// The device at `bdf` reads `buf.len()` bytes at `iova` (pages need READ).
    ///
    /// # Errors
    /// The [`DmaFault`] (also logged); `buf` is untouched.
    pub fn dma_read(&self, bdf: Bdf, iova: u64, buf: &mut [u8]) -> Result<(), DmaFault> {
        let mut s = self.state.borrow_mut();
        let segments = s.dma_segments(bdf, iova, buf.len(), false)?;
        s.read_segments(&segments, buf);
        Ok(())
    }

    /// The fault log, oldest first.
    pub fn faults(&self) -> Vec<DmaFault> {
        self.state.borrow().faults.clone()
    }

    /// Empties the fault log; returns what it held.
    pub fn take_faults(&self) -> Vec<DmaFault> {
        std::mem::take(&mut self.state.borrow_mut().faults)
    }

    // ---- interrupts ----

    /// The device at `bdf` signals MSI-X `vector`: `Some(vector)` (the host vector to
    /// deliver) when MSI-X is enabled, not function-masked and the vector allocated (with
    /// dynamic MSI-X, vectors between allocated ones are not), else `None`. The caller
    /// hands `Some(v)` to the core's entry point `PciDriver::msi_fired(state, Msix, v)`.
    pub fn raise_msix(&self, bdf: Bdf, vector: u16) -> Option<u16> {
        self.with_function(bdf, |f| f.raise_msix(vector)).flatten()
    }

    /// The device at `bdf` signals MSI `vector` (see [`SimFunction::raise_msi`]); hand
    /// `Some(v)` to `PciDriver::msi_fired(state, Msi, v)`.
    pub fn raise_msi(&self, bdf: Bdf, vector: u16) -> Option<u16> {
        self.with_function(bdf, |f| f.raise_msi(vector)).flatten()
    }

    /// Sets the INTx level of the function at `bdf`; returns whether its pin is now
    /// asserted (`None`: no such function). PCI 2.3 functions do not drive the pin while
    /// Command bit 10 (Interrupt Disable) is set, but Status bit 3 still shows the level.
    pub fn set_intx(&self, bdf: Bdf, pending: bool) -> Option<bool> {
        self.with_function(bdf, |f| {
            f.set_intx(pending);
            f.intx_asserted()
        })
    }

    /// Whether the host runs the INTx handler of `bdf` now: some function on the same
    /// host line drives its pin, and `bdf` has requested the line and the line is enabled.
    /// When true, the host calls the core's entry point `PciDriver::intx_fired(state)`
    /// (which, for a shared line, answers whether the interrupt was this function's).
    pub fn intx_would_fire(&self, bdf: Bdf) -> bool {
        let s = self.state.borrow();
        let Some(slot) = s.functions.get(&bdf) else {
            return false;
        };
        let HostIntx {
            line: Some(line),
            requested: true,
            enabled: true,
            ..
        } = slot.intx
        else {
            return false;
        };
        s.functions
            .values()
            .any(|f| f.intx.line == Some(line) && f.func.intx_asserted())
    }

    /// Drives the INTx level of `bdf` to `pending` and returns whether the host now runs
    /// its INTx handler ([`SimMachine::intx_would_fire`]).
    pub fn raise_intx(&self, bdf: Bdf, pending: bool) -> bool {
        self.set_intx(bdf, pending);
        self.intx_would_fire(bdf)
    }

    /// The host side of the INTx wiring of `bdf`.
    pub fn host_intx(&self, bdf: Bdf) -> Option<HostIntx> {
        self.state.borrow().functions.get(&bdf).map(|s| s.intx)
    }

    /// Wires `bdf` to host interrupt line `line` (`None`: no line). Functions with the
    /// same line share it. Default: a line of its own per function.
    pub fn set_intx_line(&self, bdf: Bdf, line: Option<u32>) {
        if let Some(slot) = self.state.borrow_mut().functions.get_mut(&bdf) {
            slot.intx.line = line;
        }
    }

    /// Whether the core reported `bdf` as opened by a user ([`PciAccess::user_open`]).
    pub fn user_open(&self, bdf: Bdf) -> bool {
        self.state
            .borrow()
            .functions
            .get(&bdf)
            .is_some_and(|s| s.user_open)
    }

    /// Marks `bdf` as opened (or not) by some user outside this core (e.g. another
    /// process): a release-time bus reset of its bus then waits.
    pub fn set_user_open(&self, bdf: Bdf, open: bool) {
        if let Some(slot) = self.state.borrow_mut().functions.get_mut(&bdf) {
            slot.user_open = open;
        }
    }

    // ---- resets ----

    /// Sets whether `method` works for `bdf` (Function: see
    /// [`SimFunction::set_function_reset_supported`]).
    pub fn set_reset_supported(&self, bdf: Bdf, method: ResetMethod, works: bool) {
        let mut s = self.state.borrow_mut();
        if let Some(slot) = s.functions.get_mut(&bdf) {
            match method {
                ResetMethod::Function => slot.func.set_function_reset_supported(works),
                ResetMethod::Bus => slot.bus_reset = works,
                ResetMethod::Slot => slot.slot_reset = works,
            }
        }
    }

    /// Makes resets of `bdf` fail with `EAGAIN` (reset lock contended) while `busy`.
    pub fn set_reset_contended(&self, bdf: Bdf, busy: bool) {
        if let Some(slot) = self.state.borrow_mut().functions.get_mut(&bdf) {
            slot.reset_contended = busy;
        }
    }

    /// Resets performed on the function at `bdf` (any method, FLRs included).
    pub fn reset_count(&self, bdf: Bdf) -> Option<u64> {
        self.with_function(bdf, |f| f.reset_count())
    }

    /// Bus and slot resets performed on the machine.
    pub fn bus_reset_count(&self) -> u64 {
        self.state.borrow().bus_resets
    }

    // ---- memory ----

    /// Allocates fresh RAM (or read-only RAM / MMIO-like memory) of `len` bytes at process
    /// address `vaddr`; returns its physical address (2 MiB aligned).
    ///
    /// # Errors
    /// `EINVAL`: unaligned or empty; `EEXIST`: overlaps a mapping; `ENOMEM`: out of
    /// physical addresses.
    pub fn alloc(&self, vaddr: u64, len: u64, backing: Backing) -> Result<u64, Errno> {
        self.state.borrow_mut().space.alloc(vaddr, len, backing)
    }

    /// Maps an explicit range (e.g. a BAR as [`Backing::Mmio`], or RAM pages placed to be
    /// physically discontiguous).
    ///
    /// # Errors
    /// As [`SimMachine::alloc`], without `ENOMEM`.
    pub fn map_range(&self, range: VmRange) -> Result<(), Errno> {
        self.state.borrow_mut().space.map(range)
    }

    /// Removes the process mapping that starts at `vaddr`.
    pub fn unmap_range(&self, vaddr: u64) -> Option<VmRange> {
        self.state.borrow_mut().space.unmap(vaddr)
    }

    /// The process mappings, ascending.
    pub fn ranges(&self) -> Vec<VmRange> {
        self.state.borrow().space.ranges().collect()
    }

    /// Process virtual → physical address.
    pub fn virt_to_phys(&self, vaddr: u64) -> Option<u64> {
        self.state.borrow().space.translate(vaddr).map(|(p, _)| p)
    }

    fn virt_walk(&self, vaddr: u64, len: usize) -> Result<Vec<(u64, usize)>, Errno> {
        let s = self.state.borrow();
        let mut out = Vec::new();
        let mut done = 0usize;
        while done < len {
            let v = vaddr.checked_add(done as u64).ok_or(Errno::EFAULT)?;
            let r = s.space.find(v).ok_or(Errno::EFAULT)?;
            let left = r.len - (v - r.vaddr);
            let chunk = usize::try_from(left).unwrap_or(usize::MAX).min(len - done);
            out.push((r.phys + (v - r.vaddr), chunk));
            done += chunk;
        }
        Ok(out)
    }

    /// The process writes `data` at `vaddr` (CPU access: read-only RAM is writable here).
    ///
    /// # Errors
    /// `EFAULT` when some byte is unmapped (nothing is written).
    pub fn write_virt(&self, vaddr: u64, data: &[u8]) -> Result<(), Errno> {
        let segments = self.virt_walk(vaddr, data.len())?;
        self.state.borrow_mut().write_segments(&segments, data);
        Ok(())
    }

    /// The process reads `buf.len()` bytes at `vaddr`.
    ///
    /// # Errors
    /// `EFAULT` when some byte is unmapped.
    pub fn read_virt(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let segments = self.virt_walk(vaddr, buf.len())?;
        self.state.borrow().read_segments(&segments, buf);
        Ok(())
    }

    /// Reads physical memory (RAM, or a function's memory BAR).
    pub fn read_phys(&self, phys: u64, buf: &mut [u8]) {
        self.state.borrow().phys_read(phys, buf);
    }

    /// Writes physical memory (RAM, or a function's memory BAR).
    pub fn write_phys(&self, phys: u64, data: &[u8]) {
        self.state.borrow_mut().phys_write(phys, data);
    }

    /// Sets the locked-memory limit in pages (`None` = unlimited).
    pub fn set_lock_limit(&self, pages: Option<u64>) {
        self.state.borrow_mut().space.lock_limit = pages;
    }

    /// Sets whether the process may exceed the limit (`CAP_IPC_LOCK`).
    pub fn set_lock_cap(&self, cap: bool) {
        self.state.borrow_mut().space.lock_cap = cap;
    }

    /// Sets the locked-page count (memory the process locked by other means).
    pub fn set_locked_pages(&self, pages: u64) {
        self.state.borrow_mut().space.locked_pages = pages;
    }

    /// Pages currently pinned (RAM pins minus unpins).
    pub fn pinned_pages(&self) -> u64 {
        self.state.borrow().space.pinned_pages
    }

    /// `unpin` calls that released more pages than were pinned.
    pub fn unbalanced_unpins(&self) -> u64 {
        self.state.borrow().space.unbalanced_unpins
    }
}

impl ErrorType for SimPci {
    type Error = Errno;
}
impl ErrorType for SimIommu {
    type Error = Errno;
}
impl ErrorType for SimMemory {
    type Error = Errno;
}

impl SimPci {
    fn with<R>(
        &self,
        dev: Bdf,
        f: impl FnOnce(&mut FnSlot) -> Result<R, Errno>,
    ) -> Result<R, Errno> {
        let mut s = self.state.borrow_mut();
        let slot = s.functions.get_mut(&dev).ok_or(Errno::ENODEV)?;
        f(slot)
    }
}

impl PciAccess for SimPci {
    fn config_size(&mut self, dev: Bdf) -> Result<u16, Errno> {
        self.with(dev, |s| Ok(s.func.config_size()))
    }

    fn config_read(&mut self, dev: Bdf, offset: u16, width: Width) -> Result<u32, Errno> {
        self.with(dev, |s| s.func.config_read(offset, width))
    }

    fn config_write(
        &mut self,
        dev: Bdf,
        offset: u16,
        width: Width,
        value: u32,
    ) -> Result<(), Errno> {
        self.with(dev, |s| s.func.config_write(offset, width, value))
    }

    fn bar_resource(&mut self, dev: Bdf, bar: BarIndex) -> Result<BarResource, Errno> {
        self.with(dev, |s| s.func.bar_resource(bar.get()).ok_or(Errno::EINVAL))
    }

    fn rom_size(&mut self, dev: Bdf) -> Result<u64, Errno> {
        self.with(dev, |s| Ok(s.func.rom_size()))
    }

    fn bar_read(
        &mut self,
        dev: Bdf,
        bar: BarIndex,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), Errno> {
        self.with(dev, |s| s.func.bar_read(bar.get(), offset, buf))
    }

    fn bar_write(
        &mut self,
        dev: Bdf,
        bar: BarIndex,
        offset: u64,
        data: &[u8],
    ) -> Result<(), Errno> {
        self.with(dev, |s| s.func.bar_write(bar.get(), offset, data))
    }

    fn rom_read(&mut self, dev: Bdf, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.with(dev, |s| s.func.rom_read(offset, buf))
    }

    fn reset_supported(&mut self, dev: Bdf, method: ResetMethod) -> bool {
        self.with(dev, |s| Ok(s.reset_works(method)))
            .unwrap_or(false)
    }

    fn reset(&mut self, dev: Bdf, method: ResetMethod) -> Result<(), Errno> {
        let mut s = self.state.borrow_mut();
        if !s
            .functions
            .get(&dev)
            .ok_or(Errno::ENODEV)?
            .reset_works(method)
        {
            return Err(Errno::ENOTTY);
        }
        let affected: Vec<Bdf> = s
            .functions
            .keys()
            .copied()
            .filter(|b| in_reset_scope(method, dev, *b))
            .collect();
        if affected
            .iter()
            .any(|b| s.functions.get(b).is_some_and(|f| f.reset_contended))
        {
            return Err(Errno::EAGAIN);
        }
        for b in &affected {
            if let Some(f) = s.functions.get_mut(b) {
                if method == ResetMethod::Function {
                    f.func.platform_reset();
                } else {
                    // Linux saves and restores every function around a bus/slot reset.
                    let saved = f.func.config_bytes();
                    f.func.hardware_reset();
                    f.func.poke_config(0, &saved);
                    f.func.set_intx(false);
                }
            }
        }
        if method != ResetMethod::Function {
            s.bus_resets = s.bus_resets.saturating_add(1);
        }
        Ok(())
    }

    fn irq_vectors_alloc(&mut self, dev: Bdf, kind: MsiKind, max: u16) -> Result<u16, Errno> {
        self.with(dev, |s| {
            s.func.irq_vectors_alloc(kind == MsiKind::Msix, max)
        })
    }

    fn irq_vectors_free(&mut self, dev: Bdf) {
        let _ = self.with(dev, |s| {
            s.func.irq_vectors_free();
            Ok(())
        });
    }

    fn irq_vector_add(&mut self, dev: Bdf, vector: u16, _allocated: u16) -> Result<(), Errno> {
        self.with(dev, |s| s.func.irq_vector_add(vector))
    }

    fn function_facts(&mut self, dev: Bdf) -> FunctionFacts {
        self.with(dev, |s| {
            Ok(FunctionFacts {
                intx: if s.intx.line.is_some() {
                    IntxLine::Connected
                } else {
                    IntxLine::Missing
                },
                intx_masking: s.func.pci_2_3(),
                ..FunctionFacts::default()
            })
        })
        .unwrap_or_default()
    }

    /// Functions on the same bus (`Bus`) or in the same slot (`Slot`) as `dev`, in BDF
    /// order, with their group, whether they are bound to vfio and whether a user has
    /// them open (`dev` itself is never reported open).
    fn hot_reset_affected(
        &mut self,
        dev: Bdf,
        scope: ResetMethod,
        index: usize,
    ) -> Option<AffectedFunction> {
        let s = self.state.borrow();
        s.functions
            .iter()
            .filter(|(b, _)| in_reset_scope(scope, dev, **b))
            .nth(index)
            .map(|(b, f)| AffectedFunction {
                bdf: *b,
                group: Some(f.group),
                vfio: f.binding == Binding::Vfio,
                open: *b != dev && f.user_open,
            })
    }

    fn user_open(&mut self, dev: Bdf, open: bool) {
        let _ = self.with(dev, |s| {
            s.user_open = open;
            Ok(())
        });
    }

    /// Installs the core's handler: `ENODEV` without a line; `EBUSY` when an exclusive
    /// request meets a line another function has requested, or a shared request meets
    /// an exclusive owner. The line starts disabled when `masked`.
    fn intx_request(&mut self, dev: Bdf, shared: bool, masked: bool) -> Result<(), Errno> {
        let mut s = self.state.borrow_mut();
        let line = s
            .functions
            .get(&dev)
            .ok_or(Errno::ENODEV)?
            .intx
            .line
            .ok_or(Errno::ENODEV)?;
        let clash = s.functions.iter().any(|(b, f)| {
            *b != dev
                && f.intx.line == Some(line)
                && f.intx.requested
                && (!shared || !f.intx.shared)
        });
        if clash {
            return Err(Errno::EBUSY);
        }
        if let Some(slot) = s.functions.get_mut(&dev) {
            slot.intx.requested = true;
            slot.intx.shared = shared;
            slot.intx.enabled = !masked;
        }
        Ok(())
    }

    fn intx_free(&mut self, dev: Bdf) {
        let _ = self.with(dev, |s| {
            s.intx.requested = false;
            s.intx.shared = false;
            s.intx.enabled = false;
            Ok(())
        });
    }

    fn intx_line_enable(&mut self, dev: Bdf, enable: bool) {
        let _ = self.with(dev, |s| {
            s.intx.enabled = enable;
            Ok(())
        });
    }

    /// Atomic by construction (the machine is single-threaded): Status bit 3 set →
    /// DisINTx stays set, `true`; else DisINTx is cleared, `false`.
    fn intx_check_and_unmask(&mut self, dev: Bdf) -> Result<bool, Errno> {
        self.with(dev, |s| {
            if s.func.pci_2_3() && s.func.intx_pending() {
                return Ok(true);
            }
            let cmd = s.func.config_read(0x04, Width::Word)?;
            if cmd & 0x0400 != 0 {
                s.func.config_write(0x04, Width::Word, cmd & !0x0400)?;
            }
            Ok(false)
        })
    }
}

impl SimIommu {
    fn violation(s: &mut State, text: String) {
        s.violations.push(text);
    }
}

impl Iommu for SimIommu {
    fn group_info(&self, group: GroupId) -> Option<GroupInfo> {
        self.state.borrow().groups.get(&group).map(|g| GroupInfo {
            emulated: g.profile.emulated,
            intr_remap: g.profile.intr_remap,
        })
    }

    fn group_viable(&self, group: GroupId) -> bool {
        self.state.borrow().viable(group)
    }

    fn claim_dma_owner(&mut self, group: GroupId) -> Result<(), Errno> {
        let mut s = self.state.borrow_mut();
        let viable = s.viable(group);
        let g = s.groups.get_mut(&group).ok_or(Errno::ENODEV)?;
        if g.claimed || g.domain.is_some() {
            return Err(Errno::EBUSY);
        }
        if !viable {
            return Err(Errno::EPERM);
        }
        g.claimed = true;
        Ok(())
    }

    fn release_dma_owner(&mut self, group: GroupId) {
        let mut s = self.state.borrow_mut();
        let attached = match s.groups.get_mut(&group) {
            Some(g) => {
                g.claimed = false;
                g.domain
            }
            None => None,
        };
        if let Some(d) = attached {
            Self::violation(
                &mut s,
                format!("group {group} released DMA ownership while attached to domain {d}"),
            );
        }
    }

    fn domain_alloc(&mut self, group: GroupId) -> Result<DomainInfo, Errno> {
        let mut s = self.state.borrow_mut();
        let profile = s.groups.get(&group).ok_or(Errno::ENODEV)?.profile.clone();
        if profile.emulated || profile.pgsize_bitmap == 0 {
            return Err(Errno::ENODEV);
        }
        let id = s.next_domain.max(1);
        s.next_domain = id.checked_add(1).ok_or(Errno::ENOMEM)?;
        let info = DomainInfo {
            id,
            ops: profile.ops,
            pgsize_bitmap: profile.pgsize_bitmap,
            aperture_start: profile.aperture_start,
            aperture_end: profile.aperture_end,
            enforce_coherency: profile.enforce_coherency,
        };
        s.domains.insert(
            id,
            DomainState {
                info,
                groups: BTreeSet::new(),
                table: PageTable::default(),
            },
        );
        Ok(info)
    }

    fn domain_free(&mut self, domain: DomainId) {
        let mut s = self.state.borrow_mut();
        let Some(d) = s.domains.remove(&domain) else {
            Self::violation(&mut s, format!("domain_free of unknown domain {domain}"));
            return;
        };
        if !d.groups.is_empty() || !d.table.is_empty() {
            Self::violation(
                &mut s,
                format!(
                    "domain_free of domain {domain} with {} group(s) and {} mapped byte(s)",
                    d.groups.len(),
                    d.table.mapped_bytes()
                ),
            );
        }
        for g in d.groups {
            if let Some(gs) = s.groups.get_mut(&g) {
                gs.domain = None;
            }
        }
    }

    /// Attaches `group` (which must be claimed: `EPERM` otherwise). A group already
    /// attached elsewhere is *moved* (like `iommu_group_replace_domain`) when compatible.
    /// `EINVAL` for an unknown domain or when the domain's `ops` or `enforce_coherency`
    /// differ from the group's profile; `ENODEV` for an unknown or emulated group.
    fn attach(&mut self, domain: DomainId, group: GroupId) -> Result<(), Errno> {
        let mut s = self.state.borrow_mut();
        let g = s.groups.get(&group).ok_or(Errno::ENODEV)?;
        if g.profile.emulated {
            return Err(Errno::ENODEV);
        }
        let (ops, coherent, claimed, old) = (
            g.profile.ops,
            g.profile.enforce_coherency,
            g.claimed,
            g.domain,
        );
        let info = s.domains.get(&domain).ok_or(Errno::EINVAL)?.info;
        if !claimed {
            Self::violation(&mut s, format!("attach of unclaimed group {group}"));
            return Err(Errno::EPERM);
        }
        if old == Some(domain) {
            return Ok(());
        }
        if info.ops != ops || info.enforce_coherency != coherent {
            return Err(Errno::EINVAL);
        }
        if let Some(old) = old {
            if let Some(od) = s.domains.get_mut(&old) {
                od.groups.remove(&group);
            }
        }
        if let Some(d) = s.domains.get_mut(&domain) {
            d.groups.insert(group);
        }
        if let Some(g) = s.groups.get_mut(&group) {
            g.domain = Some(domain);
        }
        Ok(())
    }

    fn detach(&mut self, domain: DomainId, group: GroupId) {
        let mut s = self.state.borrow_mut();
        let attached = s.groups.get(&group).and_then(|g| g.domain) == Some(domain);
        if !attached {
            Self::violation(
                &mut s,
                format!("detach of group {group} from domain {domain} it is not attached to"),
            );
            return;
        }
        if let Some(d) = s.domains.get_mut(&domain) {
            d.groups.remove(&group);
        }
        if let Some(g) = s.groups.get_mut(&group) {
            g.domain = None;
        }
    }

    fn reserved_region(&self, group: GroupId, index: usize) -> Option<ReservedRegion> {
        self.state
            .borrow()
            .groups
            .get(&group)
            .and_then(|g| g.profile.reserved.get(index).copied())
    }

    fn map(
        &mut self,
        domain: DomainId,
        iova: u64,
        phys: u64,
        len: u64,
        prot: Prot,
    ) -> Result<(), Errno> {
        let mut s = self.state.borrow_mut();
        let d = s.domains.get_mut(&domain).ok_or(Errno::EINVAL)?;
        let info = d.info;
        d.table.map(
            info.pgsize_bitmap,
            (info.aperture_start, info.aperture_end),
            iova,
            phys,
            len,
            prot,
        )
    }

    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> u64 {
        let mut s = self.state.borrow_mut();
        match s.domains.get_mut(&domain) {
            Some(d) => {
                let bitmap = d.info.pgsize_bitmap;
                d.table.unmap(bitmap, iova, len)
            }
            None => 0,
        }
    }

    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        let s = self.state.borrow();
        s.domains
            .get(&domain)?
            .table
            .translate(iova)
            .map(|(p, _)| p)
    }

    /// One step per page-table entry (a 1 GiB superpage is one lookup), not per page.
    /// Answers in whole `page`s like the trait's page walk: the run, cut at `max_len`
    /// rounded up to `page`, rounded down to a multiple of `page`, and at least one page.
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
        let cap = max_len
            .div_ceil(page)
            .checked_mul(page)
            .unwrap_or(u64::MAX / page * page);
        let s = self.state.borrow();
        let (phys, run) = s.domains.get(&domain)?.table.contiguous_run(iova, cap)?;
        Some((phys, (run / page).max(1) * page))
    }
}

impl HostMemory for SimMemory {
    fn page_size(&self) -> u64 {
        PAGE_SIZE
    }

    fn pin(&mut self, vaddr: u64, len: u64, write: bool) -> Result<PinnedRun, Errno> {
        self.state.borrow_mut().space.pin(vaddr, len, write)
    }

    fn unpin(&mut self, phys: u64, len: u64) {
        self.state.borrow_mut().space.unpin(phys, len);
    }

    fn locked_pages(&self) -> u64 {
        self.state.borrow().space.locked_pages
    }

    fn lock_limit_pages(&self) -> Option<u64> {
        self.state.borrow().space.lock_limit
    }

    fn lock_cap(&self) -> bool {
        self.state.borrow().space.lock_cap
    }

    fn charge(&mut self, pages: i64) {
        self.state.borrow_mut().space.charge(pages);
    }
}
