//! Executable spec cases for `vfio-core`.
//!
//! * [`fixture`]: the simulated machine of a case file (`[fixture]`) — an IOMMU, the
//!   process's host memory and a template bus driver — reusable by any test.
//! * [`value`]: number, flag and errno parsing rules of the case schema.
//! * [`runner`]: loads case files, builds each case's starting state and runs its steps.
//! * [`report`]: one line per case and the closing `N passed, N failed` line.

pub mod fixture;
pub mod registry;
pub mod runner;
pub mod value;
