//! Oracle replay: what the real Linux kernel answered (the oracle's JSON files), replayed
//! against the project, one check per compared value.
//!
//! Each kind of oracle file has its own replayer: [`devices`] (vfio-pci device files) and
//! [`type1`] (the Type1 MAP/UNMAP/GET_INFO/DIRTY_PAGES scripts). Every replayer returns a
//! [`Tally`]; the `oracle-replay` binary prints each mismatch with its context and a final
//! line `N passed, N failed`.

mod device_path;
pub mod devices;
pub mod type1;

use std::path::{Path, PathBuf};

use vfio_core::Era;

/// Outcome of replaying one or more oracle files.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Values that matched the oracle.
    pub passed: usize,
    /// Values that did not.
    pub failed: usize,
    /// One line per mismatch: file, step label, what was compared, expected vs got.
    pub mismatches: Vec<String>,
    /// Checks skipped on purpose, each with its justification (hardware-model exclusions).
    pub exclusions: Vec<String>,
}

impl Tally {
    /// Records one comparison of `what` (expected from the oracle vs got from the project).
    pub fn check<T: PartialEq + std::fmt::Debug>(
        &mut self,
        context: &str,
        what: &str,
        expected: T,
        got: T,
    ) {
        if expected == got {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.mismatches.push(format!(
                "{context}: {what}: oracle {expected:?}, project {got:?}"
            ));
        }
    }

    /// Adds another tally's counts and lines.
    pub fn merge(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.mismatches.extend(other.mismatches);
        self.exclusions.extend(other.exclusions);
    }
}

/// The kernel era an oracle file was recorded on, from its path (`linux-6.1/...` or
/// `linux-7.3/...`); the recent era when the path names neither.
pub fn era_of(path: &Path) -> Era {
    let text = path.to_string_lossy();
    if text.contains("linux-6.1") {
        Era::Linux6_1
    } else {
        Era::Linux7_3
    }
}

/// Which replayer handles `path`: `"type1"` for files in a `type1/` folder, `"devices"` for
/// a `devices/` folder, `None` otherwise.
pub fn kind_of(path: &Path) -> Option<&'static str> {
    let parent = path.parent()?.file_name()?.to_str()?;
    match parent {
        "type1" => Some("type1"),
        "devices" => Some("devices"),
        _ => None,
    }
}

/// The device files of kernel era `era` (`linux-7.3`, `linux-6.1`) kept in
/// `tests/oracle/ERA/devices/`, sorted.
///
/// # Panics
/// When the folder cannot be listed.
pub fn device_files(era: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("oracle")
        .join(era)
        .join("devices");
    crate::sorted_files(&dir, "json")
}

/// Replays one oracle file with the profile of its era.
///
/// # Errors
/// A message when the file cannot be read or parsed, or its kind is not replayed.
pub fn replay(path: &Path, era: Era) -> Result<Tally, String> {
    match kind_of(path) {
        Some("type1") => type1::replay(path, era),
        Some("devices") => devices::replay(path, era),
        _ => Err(format!(
            "{}: not an oracle device or type1 file (expected a devices/ or type1/ folder)",
            path.display()
        )),
    }
}
