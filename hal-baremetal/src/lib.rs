// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Bare-metal backend for vfio-core: PCI config access and interrupt delivery.
//!
//! This crate implements vfio-core's platform traits for a machine with no
//! operating system underneath:
//!
//! * [`Ecam`]: PCIe enhanced configuration access (ECAM, PCIe base spec §7.2.2)
//!   through a memory-mapped window, reached via the small [`Mmio`] trait.
//! * [`PortIo`]: the legacy x86 configuration mechanism #1 (PCI Local Bus spec
//!   §3.2.2.3.2) through ports 0xCF8/0xCFC, reached via the [`PortBus`] trait.
//! * [`AtomicEventSink`]: an [`vfio_core::platform::EventSink`] whose events are
//!   per-slot atomic counters, safe to signal from interrupt context.
//!
//! Both config accessors implement [`vfio_core::platform::PciAccess`] for
//! configuration space only. BAR and ROM access, resets and host interrupt
//! vectors are out of scope for now: those methods refuse with `ENODEV` or
//! `ENOTTY` (each documents which), so a vfio-pci device on top of them can be
//! probed and its config space virtualized, but not run.
//!
//! The hardware is reached only through [`Mmio`] and [`PortBus`], so all the
//! address computation and range checking is unit-tested on the host with
//! fakes. The only `unsafe` code is in the concrete implementations,
//! [`VolatileMmio`] and (on x86) [`X86PortBus`], each behind an `unsafe`
//! constructor whose `# Safety` section states what the integrator promises.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs, unsafe_op_in_unsafe_fn)]
#![warn(missing_debug_implementations)]

/// Implements the [`vfio_core::platform::PciAccess`] methods that a
/// config-space-only accessor does not support, with documented refusals.
/// The invoking impl block must also provide `config_size`, `config_read` and
/// `config_write`.
macro_rules! config_only_pci_access {
    () => {
        /// Out of scope for now: BAR resources are not discovered by this
        /// config-space accessor. Always `Err(ENODEV)`.
        fn bar_resource(
            &mut self,
            _dev: vfio_core::platform::Bdf,
            _bar: vfio_core::platform::BarIndex,
        ) -> Result<vfio_core::platform::BarResource, vfio_core::Errno> {
            Err(vfio_core::Errno::ENODEV)
        }

        /// Out of scope for now: no expansion ROM support. Always `Err(ENODEV)`.
        fn rom_size(&mut self, _dev: vfio_core::platform::Bdf) -> Result<u64, vfio_core::Errno> {
            Err(vfio_core::Errno::ENODEV)
        }

        /// Out of scope for now: BAR access is not implemented. Always
        /// `Err(ENODEV)`; `buf` is left untouched.
        fn bar_read(
            &mut self,
            _dev: vfio_core::platform::Bdf,
            _bar: vfio_core::platform::BarIndex,
            _offset: u64,
            _buf: &mut [u8],
        ) -> Result<(), vfio_core::Errno> {
            Err(vfio_core::Errno::ENODEV)
        }

        /// Out of scope for now: BAR access is not implemented. Always
        /// `Err(ENODEV)`; nothing is written.
        fn bar_write(
            &mut self,
            _dev: vfio_core::platform::Bdf,
            _bar: vfio_core::platform::BarIndex,
            _offset: u64,
            _data: &[u8],
        ) -> Result<(), vfio_core::Errno> {
            Err(vfio_core::Errno::ENODEV)
        }

        /// Out of scope for now: no expansion ROM support. Always `Err(ENODEV)`.
        fn rom_read(
            &mut self,
            _dev: vfio_core::platform::Bdf,
            _offset: u64,
            _buf: &mut [u8],
        ) -> Result<(), vfio_core::Errno> {
            Err(vfio_core::Errno::ENODEV)
        }

        /// Out of scope for now: no reset method is implemented, so none is
        /// reported as supported. Always `false`.
        fn reset_supported(
            &mut self,
            _dev: vfio_core::platform::Bdf,
            _method: vfio_core::platform::ResetMethod,
        ) -> bool {
            false
        }

        /// Out of scope for now: resets are not implemented. Always
        /// `Err(ENOTTY)`, the trait's answer for "this method does not work for
        /// this function".
        fn reset(
            &mut self,
            _dev: vfio_core::platform::Bdf,
            _method: vfio_core::platform::ResetMethod,
        ) -> Result<(), vfio_core::Errno> {
            Err(vfio_core::Errno::ENOTTY)
        }

        /// Out of scope for now: host MSI/MSI-X vectors cannot be allocated
        /// (no interrupt controller driver). Always `Err(ENOTTY)`; nothing is
        /// enabled in hardware.
        fn irq_vectors_alloc(
            &mut self,
            _dev: vfio_core::platform::Bdf,
            _kind: vfio_core::platform::MsiKind,
            _max: u16,
        ) -> Result<u16, vfio_core::Errno> {
            Err(vfio_core::Errno::ENOTTY)
        }

        /// Out of scope for now: since [`irq_vectors_alloc`](Self::irq_vectors_alloc)
        /// never grants a vector, there is nothing to free; does nothing.
        fn irq_vectors_free(&mut self, _dev: vfio_core::platform::Bdf) {}
    };
}

mod ecam;
mod event;
mod portio;

pub use ecam::{Ecam, Mmio, VolatileMmio, ECAM_BUS_SHIFT, ECAM_BUS_SIZE};
pub use event::{AtomicEventSink, Slot};
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub use portio::X86PortBus;
pub use portio::{PortBus, PortIo, CONFIG_ADDRESS, CONFIG_DATA, CONFIG_ENABLE};

use vfio_core::platform::Width;
use vfio_core::Errno;

/// Checks a config access against the function's config-space size `space`
/// (256 or 4096 bytes): the offset must be naturally aligned for `width` and the
/// access must not cross the end. The function's address (segment, bus, device,
/// function) is the caller's to check: [`Ecam::window_offset`] and
/// [`PortIo::config_address`] refuse it with `ENODEV` before this runs.
///
/// # Errors
/// `EINVAL` for a misaligned access or one past `space`.
fn check_access(offset: u16, width: Width, space: u16) -> Result<(), Errno> {
    let bytes = width.bytes() as u16;
    if offset % bytes != 0 || u32::from(offset) + u32::from(bytes) > u32::from(space) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// Test helper for the accessors' tests: a [`Bdf`] built field by field, bypassing
/// [`Bdf::new`]'s range checks so out-of-range device and function numbers can be
/// tried.
#[cfg(test)]
fn test_bdf(segment: u16, bus: u8, device: u8, function: u8) -> vfio_core::platform::Bdf {
    vfio_core::platform::Bdf {
        segment,
        bus,
        device,
        function,
    }
}
