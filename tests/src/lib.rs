//! Executable spec cases for `vfio-core`.
//!
//! * [`fixture`]: the simulated machine of a case file (`[fixture]`) — an IOMMU, the
//!   process's host memory and a template bus driver — reusable by any test.
//! * [`value`]: number, flag and errno parsing rules of the case schema.
//! * [`runner`]: loads case files, builds each case's starting state and runs its steps.
//!   Reports are one line per case plus the closing `N passed, N failed` line
//!   ([`runner::Totals`]).
//! * [`registry`]: the system under test — `vfio_core::vfio::Vfio` over the fixture
//!   platform — behind the runner's [`runner::Machine`] interface.
//!
//! Run the cases with `cargo run -p vfio-tests --bin spec-cases -- [--only PREFIX] FILE...`
//! or `cargo test -p vfio-tests --test spec_cases -- --nocapture`.

#![deny(missing_docs)]

pub mod fixture;
pub mod oracle;
pub mod page_walk;
pub mod pci_mock;
pub mod registry;
pub mod runner;
pub mod value;

use std::path::{Path, PathBuf};

/// The files of `dir` whose extension is `ext`, sorted.
///
/// # Panics
/// When `dir` cannot be listed.
pub fn sorted_files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}
