//! `vfio-sim`: a software machine for testing and demonstrating `vfio-core`.
//!
//! The machine ([`SimMachine`]) holds PCI functions built from real config-space images
//! (the bundled [`corpus`]) or raw bytes ([`FunctionBuilder`]), IOMMU groups with
//! per-group [`GroupProfile`]s, a checking IOMMU with a page table per domain, sparse
//! physical memory, one process address space with pinning and locked-memory
//! accounting, and an event recorder.
//!
//! The core takes each platform trait as a separate object, so the machine hands out
//! cheap handles that share its state:
//!
//! | handle | trait |
//! |---|---|
//! | [`SimMachine::pci`] → [`SimPci`] | [`vfio_core::platform::PciAccess`] |
//! | [`SimMachine::iommu`] → [`SimIommu`] | [`vfio_core::platform::Iommu`] |
//! | [`SimMachine::memory`] → [`SimMemory`] | [`vfio_core::platform::HostMemory`] |
//! | [`SimMachine::events`] → [`SimEvents`] | [`vfio_core::platform::EventSink`] |
//!
//! Devices act through the machine: [`SimMachine::dma_write`] / [`SimMachine::dma_read`]
//! translate through the device's domain and record a [`DmaFault`] (touching no memory)
//! when a page is unmapped or lacks permission; [`SimMachine::raise_msix`] checks that
//! MSI-X is enabled and the vector allocated.
//!
//! Every error is a [`vfio_core::Errno`] (or a descriptive [`ImageError`]); no input
//! panics.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

pub mod corpus;
pub mod events;
pub mod function;
pub mod iommu;
pub mod machine;
pub mod memory;

pub use events::{SimEvent, SimEvents};
pub use function::{
    infer_bar_sizes, BarSpec, FunctionBuilder, HostVectors, ImageError, MsixLayout, ResetRestore,
    SimFunction, WriteModel,
};
pub use iommu::{GroupProfile, PageTable, Pte};
pub use machine::{Binding, DmaFault, FaultReason, SimIommu, SimMachine, SimMemory, SimPci};
pub use memory::{AddressSpace, Backing, PhysMemory, VmRange, PAGE_SIZE};
