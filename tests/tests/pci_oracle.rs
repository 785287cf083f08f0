//! Replays every kernel oracle device file kept in `tests/oracle/linux-*/devices/` against
//! the vfio-pci driver, each with the profile of its kernel era, and requires 0 mismatches
//! (the hardware-model exclusions are listed by the replayer and not counted).

use vfio_tests::oracle::{device_files, era_of, replay, Tally};

fn replay_all(era: &str) {
    let files = device_files(era);
    assert!(!files.is_empty(), "no oracle device files for {era}");
    let mut total = Tally::default();
    for f in &files {
        let t = replay(f, era_of(f)).unwrap_or_else(|e| panic!("{e}"));
        println!("{}: {} passed, {} failed", f.display(), t.passed, t.failed);
        total.merge(t);
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    assert!(total.passed > 0);
    assert_eq!(
        total.failed,
        0,
        "oracle mismatches:\n{}",
        total.mismatches.join("\n")
    );
}

#[test]
fn oracle_linux_7_3_devices() {
    replay_all("linux-7.3");
}

#[test]
fn oracle_linux_6_1_devices() {
    replay_all("linux-6.1");
}
