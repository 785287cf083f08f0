// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! PCIe ECAM: configuration space through a memory-mapped window.
//!
//! Each function's 4 KiB config space sits at
//! `base + (bus - bus_start) << 20 | device << 15 | function << 12 | offset`
//! (PCIe base spec §7.2.2, "PCI Express Enhanced Configuration Access
//! Mechanism"; the window base comes from the ACPI MCFG table or the device
//! tree's `pci-host-ecam-generic` node).

use vfio_core::errno::ErrorType;
use vfio_core::platform::{Bdf, PciAccess, Width};
use vfio_core::Errno;

use crate::check_access;

/// Bit position of the bus number in an ECAM offset.
pub const ECAM_BUS_SHIFT: u32 = 20;

/// Bytes of ECAM window per bus: 32 devices × 8 functions × 4 KiB = 1 MiB.
pub const ECAM_BUS_SIZE: usize = 1 << ECAM_BUS_SHIFT;

/// Size of a function's config space under ECAM, in bytes.
const ECAM_FUNCTION_SIZE: u16 = 4096;

/// Size of conventional (non-PCIe) config space, in bytes.
const CONVENTIONAL_SIZE: u16 = 256;

/// A memory-mapped register window, accessed with single loads and stores of
/// 1, 2 or 4 bytes.
///
/// `offset` is in bytes from the start of the window. Callers ([`Ecam`]) pass
/// only naturally aligned offsets below [`Mmio::len`]; an implementation must
/// not cause undefined behaviour for anything else (see [`VolatileMmio`] for
/// what the concrete one does). Every call is exactly one bus access of the
/// given width: implementations must not split, merge or widen accesses
/// (config registers have side effects, e.g. write-1-to-clear status bits).
pub trait Mmio {
    /// Length of the window in bytes.
    fn len(&self) -> usize;

    /// Whether the window is empty (0 bytes).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One 1-byte load at `offset`.
    fn read8(&mut self, offset: usize) -> u8;

    /// One 2-byte little-endian load at `offset` (2-byte aligned).
    fn read16(&mut self, offset: usize) -> u16;

    /// One 4-byte little-endian load at `offset` (4-byte aligned).
    fn read32(&mut self, offset: usize) -> u32;

    /// One 1-byte store of `value` at `offset`.
    fn write8(&mut self, offset: usize, value: u8);

    /// One 2-byte little-endian store of `value` at `offset` (2-byte aligned).
    fn write16(&mut self, offset: usize, value: u16);

    /// One 4-byte little-endian store of `value` at `offset` (4-byte aligned).
    fn write32(&mut self, offset: usize, value: u32);
}

/// The concrete [`Mmio`]: volatile loads and stores to a physical window that
/// the integrator has mapped (uncached, device memory).
///
/// Accesses at an offset that is misaligned for the width, or that would run
/// past [`Mmio::len`], never touch memory: reads return all ones (what a PCI
/// master abort returns) and writes are dropped. [`Ecam`] never issues such
/// accesses; the check only keeps this type sound on its own.
#[derive(Debug)]
pub struct VolatileMmio {
    base: *mut u8,
    len: usize,
}

impl VolatileMmio {
    /// Wraps the `len`-byte window starting at `base`.
    ///
    /// # Safety
    /// The caller promises, for as long as the returned value (or anything it
    /// is moved into) lives:
    /// * `[base, base + len)` is mapped, valid for volatile 1-, 2- and 4-byte
    ///   reads and writes at naturally aligned offsets, and mapped as device
    ///   memory (uncached, no speculative or combined accesses);
    /// * `base` is 4-byte aligned;
    /// * nothing else accesses the window in a way that conflicts with this
    ///   value (e.g. another `VolatileMmio` over the same ECAM range used
    ///   concurrently), and no Rust reference points into it.
    pub const unsafe fn new(base: *mut u8, len: usize) -> Self {
        VolatileMmio { base, len }
    }

    /// Whether a `size`-byte access at `offset` is aligned and inside the window.
    fn in_range(&self, offset: usize, size: usize) -> bool {
        offset % size == 0 && offset.checked_add(size).is_some_and(|end| end <= self.len)
    }
}

impl Mmio for VolatileMmio {
    fn len(&self) -> usize {
        self.len
    }

    fn read8(&mut self, offset: usize) -> u8 {
        if !self.in_range(offset, 1) {
            return u8::MAX;
        }
        // SAFETY: `offset + 1 <= len`, and `new`'s contract makes the window
        // valid for volatile byte reads.
        unsafe { self.base.add(offset).read_volatile() }
    }

    fn read16(&mut self, offset: usize) -> u16 {
        if !self.in_range(offset, 2) {
            return u16::MAX;
        }
        // SAFETY: `offset + 2 <= len` and `offset` is 2-aligned from a 4-aligned
        // base, so the pointer is aligned; `new`'s contract makes the window
        // valid for volatile reads.
        u16::from_le(unsafe { self.base.add(offset).cast::<u16>().read_volatile() })
    }

    fn read32(&mut self, offset: usize) -> u32 {
        if !self.in_range(offset, 4) {
            return u32::MAX;
        }
        // SAFETY: `offset + 4 <= len` and `offset` is 4-aligned from a 4-aligned
        // base; `new`'s contract makes the window valid for volatile reads.
        u32::from_le(unsafe { self.base.add(offset).cast::<u32>().read_volatile() })
    }

    fn write8(&mut self, offset: usize, value: u8) {
        if !self.in_range(offset, 1) {
            return;
        }
        // SAFETY: `offset + 1 <= len`; `new`'s contract makes the window valid
        // for volatile writes.
        unsafe { self.base.add(offset).write_volatile(value) }
    }

    fn write16(&mut self, offset: usize, value: u16) {
        if !self.in_range(offset, 2) {
            return;
        }
        // SAFETY: in range and 2-aligned (see `read16`); `new`'s contract makes
        // the window valid for volatile writes.
        unsafe {
            self.base
                .add(offset)
                .cast::<u16>()
                .write_volatile(value.to_le())
        }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        if !self.in_range(offset, 4) {
            return;
        }
        // SAFETY: in range and 4-aligned (see `read32`); `new`'s contract makes
        // the window valid for volatile writes.
        unsafe {
            self.base
                .add(offset)
                .cast::<u32>()
                .write_volatile(value.to_le())
        }
    }
}

/// ECAM config-space accessor for one PCI segment and a range of buses.
///
/// Implements [`PciAccess`] for config space; see the crate docs for the
/// methods that are out of scope.
#[derive(Debug)]
pub struct Ecam<M> {
    mmio: M,
    segment: u16,
    bus_start: u8,
    bus_end: u8,
}

impl<M: Mmio> Ecam<M> {
    /// An accessor for buses `bus_start..=bus_end` of `segment`, whose ECAM
    /// window (starting at bus `bus_start`'s config space) is `mmio`.
    ///
    /// # Errors
    /// `EINVAL` when `bus_end < bus_start`, or when `mmio` is shorter than the
    /// bus range needs (`(bus_end - bus_start + 1)` MiB).
    pub fn new(mmio: M, segment: u16, bus_start: u8, bus_end: u8) -> Result<Self, Errno> {
        if bus_end < bus_start {
            return Err(Errno::EINVAL);
        }
        let buses = usize::from(bus_end - bus_start) + 1;
        if mmio.len() < buses * ECAM_BUS_SIZE {
            return Err(Errno::EINVAL);
        }
        Ok(Ecam {
            mmio,
            segment,
            bus_start,
            bus_end,
        })
    }

    /// The segment this accessor serves.
    pub fn segment(&self) -> u16 {
        self.segment
    }

    /// The bus range this accessor serves, inclusive.
    pub fn buses(&self) -> core::ops::RangeInclusive<u8> {
        self.bus_start..=self.bus_end
    }

    /// Gives the MMIO window back.
    pub fn into_inner(self) -> M {
        self.mmio
    }

    /// Byte offset in the window of `offset` in `dev`'s config space:
    /// `(bus - bus_start) << 20 | device << 15 | function << 12 | offset`.
    ///
    /// # Errors
    /// `ENODEV` when `dev` is on another segment, outside the bus range, or has
    /// a device number above 31 or a function number above 7; `EINVAL` when
    /// `offset` is 4096 or more.
    pub fn window_offset(&self, dev: Bdf, offset: u16) -> Result<usize, Errno> {
        if dev.segment != self.segment
            || !self.buses().contains(&dev.bus)
            || dev.device > 31
            || dev.function > 7
        {
            return Err(Errno::ENODEV);
        }
        if offset >= ECAM_FUNCTION_SIZE {
            return Err(Errno::EINVAL);
        }
        let bus = usize::from(dev.bus - self.bus_start);
        Ok(bus << ECAM_BUS_SHIFT
            | usize::from(dev.device) << 15
            | usize::from(dev.function) << 12
            | usize::from(offset))
    }

    /// One naturally aligned config read of `width` at a checked window offset.
    fn read(&mut self, at: usize, width: Width) -> u32 {
        match width {
            Width::Byte => u32::from(self.mmio.read8(at)),
            Width::Word => u32::from(self.mmio.read16(at)),
            Width::Dword => self.mmio.read32(at),
        }
    }
}

impl<M> ErrorType for Ecam<M> {
    type Error = Errno;
}

impl<M: Mmio> PciAccess for Ecam<M> {
    /// 4096 for a PCIe function (one with a PCI Express capability, ID 0x10,
    /// whose extended space does not read as all ones), 256 otherwise; mirrors
    /// Linux `pci_cfg_space_size` without its PCI-X 266/533 case. The
    /// capability walk stops after 48 entries (Linux `PCI_FIND_CAP_TTL`).
    ///
    /// # Errors
    /// `ENODEV` for a function this accessor does not serve.
    fn config_size(&mut self, dev: Bdf) -> Result<u16, Errno> {
        let base = self.window_offset(dev, 0)?;
        // Status register bit 4: capabilities list present.
        if self.read(base + 0x06, Width::Word) & 0x10 == 0 {
            return Ok(CONVENTIONAL_SIZE);
        }
        let mut pointer = self.read(base + 0x34, Width::Byte) & 0xfc;
        let mut has_express = false;
        for _ in 0..48 {
            if pointer < 0x40 {
                break;
            }
            let header = self.read(base + pointer as usize, Width::Word);
            if header & 0xff == 0xff {
                break;
            }
            if header & 0xff == 0x10 {
                has_express = true;
                break;
            }
            pointer = (header >> 8) & 0xfc;
        }
        if !has_express || self.read(base + 0x100, Width::Dword) == u32::MAX {
            return Ok(CONVENTIONAL_SIZE);
        }
        Ok(ECAM_FUNCTION_SIZE)
    }

    /// One ECAM load of `width` bytes.
    ///
    /// # Errors
    /// `ENODEV` for a function this accessor does not serve; `EINVAL` for a
    /// misaligned access or one past the 4 KiB config space.
    fn config_read(&mut self, dev: Bdf, offset: u16, width: Width) -> Result<u32, Errno> {
        let at = self.window_offset(dev, offset)?;
        check_access(offset, width, ECAM_FUNCTION_SIZE)?;
        Ok(self.read(at, width))
    }

    /// One ECAM store of the low `width` bytes of `value` (never a
    /// read-modify-write of a wider register).
    ///
    /// # Errors
    /// As [`config_read`](PciAccess::config_read).
    fn config_write(
        &mut self,
        dev: Bdf,
        offset: u16,
        width: Width,
        value: u32,
    ) -> Result<(), Errno> {
        let at = self.window_offset(dev, offset)?;
        check_access(offset, width, ECAM_FUNCTION_SIZE)?;
        match width {
            Width::Byte => self.mmio.write8(at, value as u8),
            Width::Word => self.mmio.write16(at, value as u16),
            Width::Dword => self.mmio.write32(at, value),
        }
        Ok(())
    }

    config_only_pci_access!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_bdf as bdf;
    use std::vec;
    use std::vec::Vec;

    /// One access seen by [`FakeMmio`]: (is_write, offset, width in bytes, value).
    type Access = (bool, usize, usize, u32);

    /// RAM-backed window that logs every access.
    struct FakeMmio {
        memory: Vec<u8>,
        log: Vec<Access>,
    }

    impl FakeMmio {
        fn new(buses: usize) -> Self {
            FakeMmio {
                memory: vec![0xff; buses * ECAM_BUS_SIZE],
                log: Vec::new(),
            }
        }

        fn load(&mut self, offset: usize, size: usize) -> u32 {
            assert_eq!(offset % size, 0, "misaligned access reached the window");
            let mut bytes = [0u8; 4];
            bytes[..size].copy_from_slice(&self.memory[offset..offset + size]);
            let value = u32::from_le_bytes(bytes);
            self.log.push((false, offset, size, value));
            value
        }

        fn store(&mut self, offset: usize, size: usize, value: u32) {
            assert_eq!(offset % size, 0, "misaligned access reached the window");
            self.memory[offset..offset + size].copy_from_slice(&value.to_le_bytes()[..size]);
            self.log.push((true, offset, size, value));
        }
    }

    impl Mmio for FakeMmio {
        fn len(&self) -> usize {
            self.memory.len()
        }
        fn read8(&mut self, offset: usize) -> u8 {
            self.load(offset, 1) as u8
        }
        fn read16(&mut self, offset: usize) -> u16 {
            self.load(offset, 2) as u16
        }
        fn read32(&mut self, offset: usize) -> u32 {
            self.load(offset, 4)
        }
        fn write8(&mut self, offset: usize, value: u8) {
            self.store(offset, 1, value.into())
        }
        fn write16(&mut self, offset: usize, value: u16) {
            self.store(offset, 2, value.into())
        }
        fn write32(&mut self, offset: usize, value: u32) {
            self.store(offset, 4, value)
        }
    }

    #[test]
    fn address_is_bus_device_function_offset() {
        let mut ecam = Ecam::new(FakeMmio::new(2), 0, 0x10, 0x11).unwrap();
        let dev = bdf(0, 0x11, 0x1f, 7);
        let expected = 1 << 20 | 0x1f << 15 | 7 << 12 | 0xffc;
        assert_eq!(ecam.window_offset(dev, 0xffc), Ok(expected));
        ecam.config_write(dev, 0xffc, Width::Dword, 0xdead_beef)
            .unwrap();
        assert_eq!(ecam.config_read(dev, 0xffc, Width::Dword), Ok(0xdead_beef));
        assert_eq!(ecam.config_read(dev, 0xffe, Width::Word), Ok(0xdead));
        assert_eq!(ecam.config_read(dev, 0xffd, Width::Byte), Ok(0xbe));
        let log = &ecam.into_inner().log;
        assert_eq!(
            log.as_slice(),
            &[
                (true, expected, 4, 0xdead_beef),
                (false, expected, 4, 0xdead_beef),
                (false, expected + 2, 2, 0xdead),
                (false, expected + 1, 1, 0xbe),
            ]
        );
    }

    #[test]
    fn sub_dword_writes_are_single_narrow_stores() {
        let mut ecam = Ecam::new(FakeMmio::new(1), 3, 0, 0).unwrap();
        let dev = bdf(3, 0, 2, 1);
        ecam.config_write(dev, 0x06, Width::Word, 0x1_f900).unwrap();
        ecam.config_write(dev, 0x3c, Width::Byte, 0x1ab).unwrap();
        let base = 2 << 15 | 1 << 12;
        assert_eq!(
            ecam.into_inner().log,
            [(true, base + 0x06, 2, 0xf900), (true, base + 0x3c, 1, 0xab)]
        );
    }

    #[test]
    fn out_of_range_accesses_are_refused() {
        let mut ecam = Ecam::new(FakeMmio::new(1), 0, 4, 4).unwrap();
        let dev = bdf(0, 4, 0, 0);
        assert_eq!(
            ecam.config_read(dev, 0x1000, Width::Byte),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            ecam.config_read(dev, 0xffe, Width::Dword),
            Err(Errno::EINVAL)
        );
        assert_eq!(ecam.config_read(dev, 0x2, Width::Dword), Err(Errno::EINVAL));
        assert_eq!(ecam.config_read(dev, 0x1, Width::Word), Err(Errno::EINVAL));
        assert_eq!(
            ecam.config_write(dev, u16::MAX, Width::Byte, 0),
            Err(Errno::EINVAL)
        );
        // Other bus, other segment, out-of-range device/function fields.
        assert_eq!(
            ecam.config_read(bdf(0, 5, 0, 0), 0, Width::Dword),
            Err(Errno::ENODEV)
        );
        assert_eq!(
            ecam.config_read(bdf(0, 3, 0, 0), 0, Width::Dword),
            Err(Errno::ENODEV)
        );
        assert_eq!(
            ecam.config_read(bdf(1, 4, 0, 0), 0, Width::Dword),
            Err(Errno::ENODEV)
        );
        assert_eq!(
            ecam.config_read(bdf(0, 4, 32, 0), 0, Width::Dword),
            Err(Errno::ENODEV)
        );
        assert_eq!(
            ecam.config_read(bdf(0, 4, 0, 8), 0, Width::Dword),
            Err(Errno::ENODEV)
        );
        assert!(
            ecam.into_inner().log.is_empty(),
            "nothing reached the window"
        );
    }

    #[test]
    fn window_must_cover_the_bus_range() {
        assert!(Ecam::new(FakeMmio::new(1), 0, 0, 1).is_err());
        assert!(Ecam::new(FakeMmio::new(1), 0, 1, 0).is_err());
        assert!(Ecam::new(FakeMmio::new(1), 0, 7, 7).is_ok());
    }

    #[test]
    fn config_size_follows_the_express_capability() {
        let mut mmio = FakeMmio::new(1);
        let base = 1 << 15;
        // Function 0:1.0: status has a capability list: 0x40 (PM) -> 0x60 (PCIe).
        mmio.memory[base..base + 0x1000].fill(0);
        mmio.memory[base + 0x06] = 0x10;
        mmio.memory[base + 0x34] = 0x40;
        mmio.memory[base + 0x40..base + 0x42].copy_from_slice(&[0x01, 0x60]);
        mmio.memory[base + 0x60..base + 0x62].copy_from_slice(&[0x10, 0x00]);
        let mut ecam = Ecam::new(mmio, 0, 0, 0).unwrap();
        assert_eq!(ecam.config_size(bdf(0, 0, 1, 0)), Ok(4096));
        // 0:0.0 reads all ones (absent): capability list bit set, but walk
        // stops at the 0xff ID; conventional size.
        assert_eq!(ecam.config_size(bdf(0, 0, 0, 0)), Ok(256));
        assert_eq!(ecam.config_size(bdf(0, 1, 0, 0)), Err(Errno::ENODEV));
    }

    #[test]
    fn capability_loop_is_bounded() {
        let mut mmio = FakeMmio::new(1);
        mmio.memory[..0x1000].fill(0);
        mmio.memory[0x06] = 0x10;
        mmio.memory[0x34] = 0x40;
        mmio.memory[0x40..0x42].copy_from_slice(&[0x01, 0x40]); // points at itself
        let mut ecam = Ecam::new(mmio, 0, 0, 0).unwrap();
        assert_eq!(ecam.config_size(bdf(0, 0, 0, 0)), Ok(256));
    }

    #[test]
    fn out_of_scope_methods_refuse() {
        use vfio_core::platform::{BarIndex, MsiKind, ResetMethod};
        let mut ecam = Ecam::new(FakeMmio::new(1), 0, 0, 0).unwrap();
        let dev = bdf(0, 0, 0, 0);
        let bar = BarIndex::new(0).unwrap();
        assert_eq!(ecam.bar_resource(dev, bar), Err(Errno::ENODEV));
        assert_eq!(ecam.rom_size(dev), Err(Errno::ENODEV));
        assert_eq!(ecam.bar_read(dev, bar, 0, &mut [0; 4]), Err(Errno::ENODEV));
        assert_eq!(ecam.bar_write(dev, bar, 0, &[0; 4]), Err(Errno::ENODEV));
        assert_eq!(ecam.rom_read(dev, 0, &mut [0; 4]), Err(Errno::ENODEV));
        assert!(!ecam.reset_supported(dev, ResetMethod::Function));
        assert_eq!(ecam.reset(dev, ResetMethod::Bus), Err(Errno::ENOTTY));
        assert_eq!(
            ecam.irq_vectors_alloc(dev, MsiKind::Msix, 4),
            Err(Errno::ENOTTY)
        );
        ecam.irq_vectors_free(dev);
    }

    #[test]
    fn volatile_mmio_round_trips_and_refuses_out_of_range() {
        let mut backing = [0u32; 4];
        {
            // SAFETY: `backing` is a live, 4-aligned, 16-byte local array used only
            // through `mmio` until `mmio` is dropped.
            let mut mmio = unsafe { VolatileMmio::new(backing.as_mut_ptr().cast(), 16) };
            mmio.write32(4, 0x1122_3344);
            assert_eq!(mmio.read32(4), 0x1122_3344);
            assert_eq!(mmio.read16(6), 0x1122);
            assert_eq!(mmio.read8(5), 0x33);
            mmio.write16(8, 0xabcd);
            mmio.write8(12, 0x5a);
            assert_eq!(mmio.read32(16), u32::MAX);
            assert_eq!(mmio.read16(3), u16::MAX);
            assert_eq!(mmio.read8(usize::MAX), u8::MAX);
            mmio.write32(14, 0xffff_ffff);
            mmio.write32(2, 0xffff_ffff);
        }
        assert_eq!(backing, [0, 0x1122_3344, 0xabcd, 0x5a]);
    }
}
