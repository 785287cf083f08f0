//! Replay of the oracle's Type1 files (`type1/type1.json`, `type1/type1v2.json`).

use std::path::Path;

use vfio_core::Era;

use super::Tally;

/// Replays a device oracle file against the vfio-pci driver with era `era`.
///
/// # Errors
/// Always, for now: device replay is not written yet (issue "config space").
pub fn replay(path: &Path, era: Era) -> Result<Tally, String> {
    Err(format!(
        "{}: device oracle replay is not implemented yet ({era:?})",
        path.display()
    ))
}
