//! Portable, allocation-free VFIO: safe assignment of PCI functions to untrusted drivers.
//!
//! `vfio-core` re-implements the policy engine of the Linux kernel's VFIO (the `vfio`
//! core, the `vfio_iommu_type1` backend and `vfio-pci`) as a `#![no_std]` library with no
//! heap. It is layered like the kernel:
//!
//! 1. **Platform traits** ([`platform`]): the only way the core reaches the world —
//!    [`platform::PciAccess`] for physical functions, [`platform::Iommu`] for groups,
//!    domains and translations, [`platform::HostMemory`] for pinning and locked-memory
//!    accounting, [`platform::EventSink`] for interrupt delivery.
//! 2. **State machines** ([`vfio`]): containers, groups and devices as handle-based objects
//!    in embedder-provided storage, with the exact transitions and errno of
//!    spec/01-core.md.
//! 3. **DMA tracking** ([`type1`]): the Type1 IOMMU backend — DMA extent map, page-size
//!    chunking, accounting (spec/02-type1.md).
//! 4. **vfio-pci** ([`pci`]): config-space virtualization, regions, IRQ indexes and resets
//!    of a PCI function (spec/03–05).
//! 5. **ABI** ([`uapi`], [`abi`]): the Linux ioctl numbers and byte layouts, and a
//!    byte-level dispatcher that gives a fuzzer, a vfio-user server or a CUSE device the
//!    kernel's exact behaviour.
//!
//! Every refusal returns the Linux errno ([`errno::Errno`]); no input reachable through
//! the API or the ABI panics.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

#[macro_use]
mod fmt;

pub mod abi;
pub mod era;
pub mod errno;
pub mod pci;
pub mod platform;
pub mod type1;
pub mod uapi;
pub mod vfio;

pub use era::Era;
pub use errno::{Errno, Result};
