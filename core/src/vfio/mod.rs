//! Containers, groups and devices: the handle-based registry and its state machines
//! (spec/01-core.md).

pub mod driver;

pub use driver::{
    validate_irq_set, BusDriver, CapChain, DeviceInfo, IrqInfo, IrqSetRequest, RegionInfo,
};
