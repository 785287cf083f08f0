//! Replays the oracle's Type1 files (Linux 7.3 and 6.1, v1 and v2) and requires every
//! recorded value to match.

use std::path::PathBuf;

use vfio_tests::oracle::{era_of, replay};

#[test]
fn type1_oracle_files_replay_without_mismatch() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("oracle");
    let mut files = 0;
    for era in ["linux-7.3", "linux-6.1"] {
        for name in ["type1.json", "type1v2.json"] {
            let path = root.join(era).join("type1").join(name);
            let tally = replay(&path, era_of(&path)).expect("replay");
            assert!(
                tally.passed > 400,
                "{}: only {} checks",
                path.display(),
                tally.passed
            );
            assert_eq!(
                tally.failed,
                0,
                "{}:\n{}",
                path.display(),
                tally.mismatches.join("\n")
            );
            files += 1;
        }
    }
    assert_eq!(files, 4);
}
