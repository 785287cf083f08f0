//! `VFIO_DEVICE_IOEVENTFD` (spec/05 §6.6 with ERRATA 5): writes of a fixed value to a BAR
//! offset, performed by the host whenever the user signals an eventfd.
//!
//! Checks, in order (oracle `misc_ioctls`, Linux 6.1 and 7.3, every device):
//! 1. fewer than 28 bytes in the buffer → `EFAULT`; `argsz < 28` → `EINVAL` ("argsz
//!    small"); a flag bit outside the size bits 0xF → `EINVAL`;
//! 2. not exactly one size bit ("two sizes", "no size") or `fd < −1` → `EINVAL`;
//! 3. not a BAR region (0–5; "config region") → `EINVAL`; `pos + size > BAR size`
//!    ("past BAR end", also an absent BAR) → `EINVAL`; overlapping the MSI-X table →
//!    `EINVAL`; size 8 → `EINVAL` on hosts without 64-bit pointers only (ERRATA 5: "IOEVENTFD
//!    64" reaches the lookup on 64-bit hosts). No alignment is required ("unaligned" → 0);
//! 4. the key (BAR, offset, size, data) already registered: `fd = −1` removes it,
//!    otherwise `EEXIST`; not registered: `fd = −1` → `ENODEV` ("remove again");
//! 5. table full → `ENOSPC`; then the eventfd is resolved (the sink's `EBADF`/`EINVAL`).
//!
//! Capacity: [`IOEVENTFD_CAPACITY`] registrations per device, in a fixed table inside
//! [`PciDevice`] (no allocation). Linux allows 1000 per device; users register a handful
//! (QEMU: one per quirked doorbell), and 1000 inline entries would make every device
//! slot ~32 KiB, so the core keeps fewer and answers `ENOSPC` beyond, as Linux does at
//! its limit.
//!
//! Delivery: the host watches each registered event ([`EventSink::ioeventfd_watch`]) and
//! calls [`PciDriver::ioeventfd_signalled`] when the user signals it. The write is one
//! access of the registered width at the registered offset through the platform's
//! [`PciAccess::bar_write`] (the primitive of the user write path), as Linux's handler
//! does one `iowrite` of that width; a write to a memory BAR while memory decode is
//! unavailable (spec/05 §6.4) is skipped silently. Registrations end at the last close.

use core::borrow::Borrow;

use super::{perr, IrqTable, PciDevice, PciDriver, REGION_MASK};
use crate::errno::{Errno, Result};
use crate::platform::{BarIndex, BarKind, EventSink, PciAccess};
use crate::uapi::{ioeventfd_flags, region_index};

/// Registrations per device (module documentation).
pub const IOEVENTFD_CAPACITY: usize = 32;

/// `minsz` of `struct vfio_device_ioeventfd` (end of `fd`).
const MINSZ: usize = 28;

/// One registration: when `event` is signalled, write the low `size` bytes of `data`
/// (little-endian) at `pos` in BAR `bar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Ioeventfd<Ev> {
    /// BAR index (0–5).
    pub bar: u8,
    /// Byte offset in the BAR (the region offset with the index bits removed); `pos +
    /// size` is at most the BAR size.
    pub pos: u64,
    /// Access width in bytes (1, 2, 4 or 8).
    pub size: u8,
    /// The value written: its low `size` bytes, little-endian.
    pub data: u64,
    /// The watched event.
    pub event: Ev,
}

/// The fixed-capacity registration table of one device.
#[derive(Debug, Clone)]
pub struct IoeventfdTable<Ev> {
    slots: [Option<Ioeventfd<Ev>>; IOEVENTFD_CAPACITY],
}

impl<Ev: Copy> IoeventfdTable<Ev> {
    /// An empty table.
    pub const fn new() -> Self {
        IoeventfdTable {
            slots: [None; IOEVENTFD_CAPACITY],
        }
    }

    /// The registrations, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Ioeventfd<Ev>> + '_ {
        self.slots.iter().flatten()
    }

    /// Number of registrations.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    fn find(&self, bar: u8, pos: u64, size: u8, data: u64) -> Option<usize> {
        self.slots.iter().position(|s| {
            s.is_some_and(|e| e.bar == bar && e.pos == pos && e.size == size && e.data == data)
        })
    }
}

impl<Ev: Copy> Default for IoeventfdTable<Ev> {
    fn default() -> Self {
        IoeventfdTable::new()
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

impl<Ev: Copy, T: Borrow<IrqTable>> PciDevice<Ev, T> {
    /// The device's ioeventfd registrations (spec/05 §6.6).
    pub fn ioeventfds(&self) -> &IoeventfdTable<Ev> {
        &self.ioeventfds
    }
}

impl<A: PciAccess, E: EventSink, T: Borrow<IrqTable>> PciDriver<A, E, T> {
    /// `VFIO_DEVICE_IOEVENTFD` on the caller's buffer `arg` (module documentation).
    ///
    /// # Errors
    /// As listed in the module documentation.
    pub(super) fn ioeventfd(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        arg: &[u8],
    ) -> Result<()> {
        let raw = arg.get(..MINSZ).ok_or(Errno::EFAULT)?;
        let argsz = le_u32(&raw[0..4]);
        let flags = le_u32(&raw[4..8]);
        let offset = le_u64(&raw[8..16]);
        let data = le_u64(&raw[16..24]);
        let fd = le_u32(&raw[24..28]) as i32;
        if (argsz as usize) < MINSZ || flags & !ioeventfd_flags::SIZE_MASK != 0 {
            return Err(Errno::EINVAL);
        }
        let size_bit = flags & ioeventfd_flags::SIZE_MASK;
        if size_bit.count_ones() != 1 || fd < -1 {
            return Err(Errno::EINVAL);
        }
        // The size bit n stands for 2^n bytes.
        let size = 1u8 << size_bit.trailing_zeros();
        self.ioeventfd_key_check(state, offset, size)?;
        let bar = (offset >> region_index::OFFSET_SHIFT) as u8;
        let pos = offset & REGION_MASK;
        if let Some(i) = state.ioeventfds.find(bar, pos, size, data) {
            if fd != -1 {
                return Err(Errno::EEXIST);
            }
            if let Some(old) = state.ioeventfds.slots[i].take() {
                self.events.ioeventfd_watch(old.event, false);
            }
            return Ok(());
        }
        if fd < 0 {
            return Err(Errno::ENODEV);
        }
        let free = state
            .ioeventfds
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(Errno::ENOSPC)?;
        let event = self.events.resolve(fd)?;
        state.ioeventfds.slots[free] = Some(Ioeventfd {
            bar,
            pos,
            size,
            data,
            event,
        });
        self.events.ioeventfd_watch(event, true);
        Ok(())
    }

    /// Step 3 of the module documentation: the target must be inside a BAR and outside
    /// the MSI-X table.
    fn ioeventfd_key_check(
        &mut self,
        state: &PciDevice<E::Event, T>,
        offset: u64,
        size: u8,
    ) -> Result<()> {
        let index = offset >> region_index::OFFSET_SHIFT;
        let pos = offset & REGION_MASK;
        if index > u64::from(region_index::BAR5) {
            return Err(Errno::EINVAL);
        }
        let bar = BarIndex::new(index as u8).ok_or(Errno::EINVAL)?;
        let r = perr(self.access.bar_resource(state.bdf, bar))?;
        // pos < 2^40: no overflow.
        let end = pos + u64::from(size);
        if end > r.size {
            return Err(Errno::EINVAL);
        }
        if let Some(m) = state.config.msix().filter(|m| u64::from(m.bar) == index) {
            let start = u64::from(m.table_offset);
            let stop = start + u64::from(m.table_bytes);
            if end > start && pos < stop {
                return Err(Errno::EINVAL);
            }
        }
        if cfg!(not(target_pointer_width = "64")) && size == 8 {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// The host saw the user signal `event`: performs every write registered with it
    /// (module documentation). Returns the number of writes performed (0 for an event
    /// that is not registered, or when memory decode is unavailable).
    pub fn ioeventfd_signalled(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        event: E::Event,
    ) -> usize {
        let mut done = 0;
        let bdf = state.bdf;
        let mem_on = state.memory_enabled();
        for e in state.ioeventfds.slots.iter().flatten() {
            if e.event != event {
                continue;
            }
            let Some(bar) = BarIndex::new(e.bar) else {
                continue;
            };
            let Ok(r) = perr(self.access.bar_resource(bdf, bar)) else {
                continue;
            };
            if r.kind != BarKind::Io && !mem_on {
                continue;
            }
            let bytes = e.data.to_le_bytes();
            if self
                .access
                .bar_write(bdf, bar, e.pos, &bytes[..usize::from(e.size)])
                .is_ok()
            {
                done += 1;
            }
        }
        done
    }

    /// Drops every registration (last close).
    pub(super) fn ioeventfd_clear(&mut self, state: &mut PciDevice<E::Event, T>) {
        for slot in &mut state.ioeventfds.slots {
            if let Some(old) = slot.take() {
                self.events.ioeventfd_watch(old.event, false);
            }
        }
    }
}
