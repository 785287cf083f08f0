//! Replay of the oracle's Type1 files (`type1/type1.json`, `type1/type1v2.json`).

use std::path::Path;

use vfio_core::Era;

use super::Tally;

/// Replays a Type1 oracle file against the project's Type1 backend with era `era`.
///
/// # Errors
/// Always, for now: Type1 replay is not written yet (issue "Type1 complete").
pub fn replay(path: &Path, era: Era) -> Result<Tally, String> {
    Err(format!(
        "{}: Type1 oracle replay is not implemented yet ({era:?})",
        path.display()
    ))
}
