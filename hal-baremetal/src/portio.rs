// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Legacy x86 configuration mechanism #1: ports 0xCF8 (address) and 0xCFC
//! (data), PCI Local Bus spec 3.0 §3.2.2.3.2.
//!
//! The address written to 0xCF8 is
//! `1 << 31 | bus << 16 | device << 11 | function << 8 | (offset & 0xfc)`;
//! the data is then read or written at port `0xCFC + (offset & 3)` with an
//! access of the requested width, so a 1- or 2-byte access uses its own byte
//! lanes and never read-modify-writes its neighbours. Only the first 256 bytes
//! of config space and only segment 0 are reachable this way.

use vfio_core::errno::ErrorType;
use vfio_core::platform::{Bdf, PciAccess, Width};
use vfio_core::Errno;

use crate::check_access;

/// The CONFIG_ADDRESS port (0xCF8, a 32-bit register; PCI Local Bus spec 3.0
/// §3.2.2.3.2): written with [`PortIo::config_address`]'s value before every data
/// access.
pub const CONFIG_ADDRESS: u16 = 0xcf8;

/// The CONFIG_DATA port (0xCFC; byte lanes at `0xcfc..=0xcff`): the config dword
/// selected by CONFIG_ADDRESS, accessed at `CONFIG_DATA + (offset & 3)` with the
/// access's own width.
pub const CONFIG_DATA: u16 = 0xcfc;

/// The enable bit (bit 31) of a CONFIG_ADDRESS value: set, the next CONFIG_DATA access
/// is a configuration cycle; clear, it is an ordinary I/O access.
pub const CONFIG_ENABLE: u32 = 1 << 31;

/// Size of config space reachable through this mechanism, in bytes.
const PORT_IO_SIZE: u16 = 256;

/// x86 I/O port access, one bus cycle per call (`in`/`out` instructions or an
/// emulation of them). Ports are 16-bit I/O addresses; multi-byte values are
/// little-endian on the bus. The methods cannot fail: an absent device reads all
/// ones (a master abort), as the hardware does.
///
/// Implementations must not split or merge accesses: `outb` to 0xCFD is a
/// single byte write on lane 1.
pub trait PortBus {
    /// Writes 4 bytes to `port`.
    fn outl(&mut self, port: u16, value: u32);

    /// Reads 4 bytes from `port`.
    fn inl(&mut self, port: u16) -> u32;

    /// Writes 2 bytes to `port`.
    fn outw(&mut self, port: u16, value: u16);

    /// Reads 2 bytes from `port`.
    fn inw(&mut self, port: u16) -> u16;

    /// Writes 1 byte to `port`.
    fn outb(&mut self, port: u16, value: u8);

    /// Reads 1 byte from `port`.
    fn inb(&mut self, port: u16) -> u8;
}

/// The concrete [`PortBus`] for x86: `in`/`out` instructions.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[derive(Debug)]
pub struct X86PortBus {
    _private: (),
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
impl X86PortBus {
    /// A handle that executes `in`/`out` instructions.
    ///
    /// # Safety
    /// The caller promises that the code runs with I/O privilege for the ports
    /// it will touch (ring 0, or an I/O permission bitmap granting them), and
    /// that no other code uses the 0xCF8/0xCFC pair concurrently (the address
    /// write and the data access must not interleave with another user's; on a
    /// multi-core system wrap the [`PortIo`] in a lock).
    pub const unsafe fn new() -> Self {
        X86PortBus { _private: () }
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
impl PortBus for X86PortBus {
    fn outl(&mut self, port: u16, value: u32) {
        // SAFETY: `new`'s contract grants I/O privilege; `out` touches no memory.
        unsafe {
            core::arch::asm!("out dx, eax", in("dx") port, in("eax") value,
                options(nomem, nostack, preserves_flags))
        }
    }

    fn inl(&mut self, port: u16) -> u32 {
        let value: u32;
        // SAFETY: `new`'s contract grants I/O privilege; `in` touches no memory.
        unsafe {
            core::arch::asm!("in eax, dx", in("dx") port, out("eax") value,
                options(nomem, nostack, preserves_flags))
        }
        value
    }

    fn outw(&mut self, port: u16, value: u16) {
        // SAFETY: as `outl`.
        unsafe {
            core::arch::asm!("out dx, ax", in("dx") port, in("ax") value,
                options(nomem, nostack, preserves_flags))
        }
    }

    fn inw(&mut self, port: u16) -> u16 {
        let value: u16;
        // SAFETY: as `inl`.
        unsafe {
            core::arch::asm!("in ax, dx", in("dx") port, out("ax") value,
                options(nomem, nostack, preserves_flags))
        }
        value
    }

    fn outb(&mut self, port: u16, value: u8) {
        // SAFETY: as `outl`.
        unsafe {
            core::arch::asm!("out dx, al", in("dx") port, in("al") value,
                options(nomem, nostack, preserves_flags))
        }
    }

    fn inb(&mut self, port: u16) -> u8 {
        let value: u8;
        // SAFETY: as `inl`.
        unsafe {
            core::arch::asm!("in al, dx", in("dx") port, out("al") value,
                options(nomem, nostack, preserves_flags))
        }
        value
    }
}

/// Config-space accessor over ports 0xCF8/0xCFC, for segment 0.
///
/// Implements [`PciAccess`] for the first 256 bytes of config space; see the
/// crate docs for the methods that are out of scope.
#[derive(Debug)]
pub struct PortIo<P> {
    bus: P,
}

impl<P: PortBus> PortIo<P> {
    /// An accessor issuing its port accesses through `bus`.
    pub const fn new(bus: P) -> Self {
        PortIo { bus }
    }

    /// Gives the port bus back.
    pub fn into_inner(self) -> P {
        self.bus
    }

    /// The CONFIG_ADDRESS value for `offset` in `dev`'s config space:
    /// `1 << 31 | bus << 16 | device << 11 | function << 8 | (offset & 0xfc)`.
    ///
    /// # Errors
    /// `ENODEV` when `dev` is not on segment 0 or has a device number above 31
    /// or a function number above 7; `EINVAL` when `offset` is 256 or more
    /// (extended config space needs ECAM).
    pub fn config_address(dev: Bdf, offset: u16) -> Result<u32, Errno> {
        if dev.segment != 0 || dev.device > 31 || dev.function > 7 {
            return Err(Errno::ENODEV);
        }
        if offset >= PORT_IO_SIZE {
            return Err(Errno::EINVAL);
        }
        Ok(CONFIG_ENABLE
            | u32::from(dev.bus) << 16
            | u32::from(dev.device) << 11
            | u32::from(dev.function) << 8
            | u32::from(offset & 0xfc))
    }

    /// Checks the access and selects it: returns the data port for its lane.
    fn select(&mut self, dev: Bdf, offset: u16, width: Width) -> Result<u16, Errno> {
        let address = Self::config_address(dev, offset)?;
        check_access(offset, width, PORT_IO_SIZE)?;
        self.bus.outl(CONFIG_ADDRESS, address);
        Ok(CONFIG_DATA + (offset & 3))
    }
}

impl<P> ErrorType for PortIo<P> {
    type Error = Errno;
}

impl<P: PortBus> PciAccess for PortIo<P> {
    /// Always 256: extended config space is not reachable through 0xCF8/0xCFC.
    ///
    /// # Errors
    /// `ENODEV` for a function this accessor cannot address (segment ≠ 0,
    /// device > 31, function > 7).
    fn config_size(&mut self, dev: Bdf) -> Result<u16, Errno> {
        Self::config_address(dev, 0)?;
        Ok(PORT_IO_SIZE)
    }

    /// Writes the address to 0xCF8, then reads `width` bytes from
    /// `0xCFC + (offset & 3)`.
    ///
    /// # Errors
    /// `ENODEV` as for [`config_size`](PciAccess::config_size); `EINVAL` for an
    /// offset of 256 or more, a misaligned access or one crossing byte 256.
    /// Nothing is written to 0xCF8 when the access is refused.
    fn config_read(&mut self, dev: Bdf, offset: u16, width: Width) -> Result<u32, Errno> {
        let port = self.select(dev, offset, width)?;
        Ok(match width {
            Width::Byte => u32::from(self.bus.inb(port)),
            Width::Word => u32::from(self.bus.inw(port)),
            Width::Dword => self.bus.inl(port),
        })
    }

    /// Writes the address to 0xCF8, then the low `width` bytes of `value` to
    /// `0xCFC + (offset & 3)` (a single narrow write, never a
    /// read-modify-write).
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
        let port = self.select(dev, offset, width)?;
        match width {
            Width::Byte => self.bus.outb(port, value as u8),
            Width::Word => self.bus.outw(port, value as u16),
            Width::Dword => self.bus.outl(port, value),
        }
        Ok(())
    }

    config_only_pci_access!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_bdf as bdf;
    use std::vec::Vec;

    /// One port access: (is_write, port, width in bytes, value).
    type Access = (bool, u16, usize, u32);

    /// Logs every access; reads return `0x4433_2211 >> 8 * lane`-style data
    /// derived from the port so lanes can be told apart.
    #[derive(Default)]
    struct FakePorts {
        log: Vec<Access>,
    }

    impl FakePorts {
        fn data(port: u16) -> u32 {
            0x4433_2211u32 >> (8 * u32::from(port - CONFIG_DATA))
        }
    }

    impl PortBus for FakePorts {
        fn outl(&mut self, port: u16, value: u32) {
            self.log.push((true, port, 4, value));
        }
        fn inl(&mut self, port: u16) -> u32 {
            let v = Self::data(port);
            self.log.push((false, port, 4, v));
            v
        }
        fn outw(&mut self, port: u16, value: u16) {
            self.log.push((true, port, 2, value.into()));
        }
        fn inw(&mut self, port: u16) -> u16 {
            let v = Self::data(port) as u16;
            self.log.push((false, port, 2, v.into()));
            v
        }
        fn outb(&mut self, port: u16, value: u8) {
            self.log.push((true, port, 1, value.into()));
        }
        fn inb(&mut self, port: u16) -> u8 {
            let v = Self::data(port) as u8;
            self.log.push((false, port, 1, v.into()));
            v
        }
    }

    #[test]
    fn address_format() {
        let dev = bdf(0, 0xab, 0x1f, 5);
        assert_eq!(
            PortIo::<FakePorts>::config_address(dev, 0xff),
            Ok(0x8000_0000 | 0xab << 16 | 0x1f << 11 | 5 << 8 | 0xfc)
        );
        assert_eq!(
            PortIo::<FakePorts>::config_address(bdf(0, 0, 0, 0), 0),
            Ok(0x8000_0000)
        );
    }

    #[test]
    fn byte_lanes_for_narrow_accesses() {
        let mut pio = PortIo::new(FakePorts::default());
        let dev = bdf(0, 1, 2, 3);
        let address = 0x8000_0000 | 1 << 16 | 2 << 11 | 3 << 8 | 0x04;
        assert_eq!(pio.config_read(dev, 0x04, Width::Dword), Ok(0x4433_2211));
        assert_eq!(pio.config_read(dev, 0x06, Width::Word), Ok(0x4433));
        assert_eq!(pio.config_read(dev, 0x07, Width::Byte), Ok(0x44));
        pio.config_write(dev, 0x05, Width::Byte, 0x1_23).unwrap();
        pio.config_write(dev, 0x06, Width::Word, 0xffff).unwrap();
        pio.config_write(dev, 0x04, Width::Dword, 0x0000_0406)
            .unwrap();
        assert_eq!(
            pio.into_inner().log,
            [
                (true, 0xcf8, 4, address),
                (false, 0xcfc, 4, 0x4433_2211),
                (true, 0xcf8, 4, address),
                (false, 0xcfe, 2, 0x4433),
                (true, 0xcf8, 4, address),
                (false, 0xcff, 1, 0x44),
                (true, 0xcf8, 4, address),
                (true, 0xcfd, 1, 0x23),
                (true, 0xcf8, 4, address),
                (true, 0xcfe, 2, 0xffff),
                (true, 0xcf8, 4, address),
                (true, 0xcfc, 4, 0x0406),
            ]
        );
    }

    #[test]
    fn extended_and_bad_accesses_are_refused_without_port_traffic() {
        let mut pio = PortIo::new(FakePorts::default());
        let dev = bdf(0, 0, 0, 0);
        assert_eq!(
            pio.config_read(dev, 0x100, Width::Dword),
            Err(Errno::EINVAL)
        );
        assert_eq!(pio.config_read(dev, 0xfff, Width::Byte), Err(Errno::EINVAL));
        assert_eq!(
            pio.config_write(dev, 256, Width::Byte, 0),
            Err(Errno::EINVAL)
        );
        assert_eq!(pio.config_read(dev, 0xfe, Width::Dword), Err(Errno::EINVAL));
        assert_eq!(pio.config_read(dev, 0x03, Width::Word), Err(Errno::EINVAL));
        assert_eq!(
            pio.config_read(bdf(1, 0, 0, 0), 0, Width::Byte),
            Err(Errno::ENODEV)
        );
        assert_eq!(
            pio.config_read(bdf(0, 0, 32, 0), 0, Width::Byte),
            Err(Errno::ENODEV)
        );
        assert_eq!(
            pio.config_read(bdf(0, 0, 0, 8), 0, Width::Byte),
            Err(Errno::ENODEV)
        );
        assert_eq!(pio.config_size(bdf(1, 0, 0, 0)), Err(Errno::ENODEV));
        assert_eq!(pio.config_size(dev), Ok(256));
        assert_eq!(pio.config_read(dev, 0xfc, Width::Dword), Ok(0x4433_2211));
        assert_eq!(
            pio.into_inner().log.len(),
            2,
            "only the last read reached the ports"
        );
    }
}
