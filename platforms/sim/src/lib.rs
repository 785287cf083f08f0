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
//!
//! # Example
//!
//! ```
//! use vfio_core::platform::{Bdf, Iommu, Prot};
//! use vfio_sim::{corpus, Backing, FaultReason, SimMachine};
//!
//! let machine = SimMachine::new();
//! let dev = Bdf::parse("0000:03:00.0").unwrap();
//! let sas = corpus::load("1000-0072-sas2008.bin").unwrap();
//! machine.add_function(dev, sas, 7).unwrap();
//!
//! // What the core does for VFIO_GROUP_SET_CONTAINER + VFIO_IOMMU_MAP_DMA:
//! let mut iommu = machine.iommu();
//! iommu.claim_dma_owner(7).unwrap();
//! let domain = iommu.domain_alloc(7).unwrap();
//! iommu.attach(domain.id, 7).unwrap();
//! let phys = machine.alloc(0x7f00_0000_0000, 0x1000, Backing::Ram).unwrap();
//! iommu.map(domain.id, 0x1000, phys, 0x1000, Prot::READ | Prot::WRITE).unwrap();
//!
//! // The device writes through the IOMMU; an unmapped IOVA faults.
//! machine.dma_write(dev, 0x1000, b"done").unwrap();
//! let mut buf = [0u8; 4];
//! machine.read_virt(0x7f00_0000_0000, &mut buf).unwrap();
//! assert_eq!(&buf, b"done");
//! let fault = machine.dma_write(dev, 0x2000, b"oops").unwrap_err();
//! assert_eq!(fault.reason, FaultReason::Unmapped);
//! ```
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
pub use machine::{
    Binding, DmaFault, FaultReason, HostIntx, SimIommu, SimMachine, SimMemory, SimPci,
};
pub use memory::{AddressSpace, Backing, PhysMemory, VmRange, PAGE_SIZE};
