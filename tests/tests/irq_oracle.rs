//! Per-section oracle replay of the device files of both kernel eras (`set_irqs`,
//! `msix_dynamic`, `misc_ioctls` and the rest), each with its era profile. Prints the
//! pass counts per section and era, and the exclusion list; requires 0 mismatches.
//!
//! `cargo test -p vfio-tests --test irq_oracle -- --nocapture`

use std::collections::{BTreeMap, BTreeSet};

use vfio_tests::oracle::devices::replay_sections;
use vfio_tests::oracle::{device_files, era_of};

fn sections(era: &str) {
    let mut sums: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    let mut mismatches = Vec::new();
    let mut exclusions = BTreeSet::new();
    for f in device_files(era) {
        for (section, t) in replay_sections(&f, era_of(&f)).unwrap_or_else(|e| panic!("{e}")) {
            let s = sums.entry(section).or_default();
            s.0 += t.passed;
            s.1 += t.failed;
            mismatches.extend(t.mismatches);
            exclusions.extend(t.exclusions);
        }
    }
    for (section, (passed, failed)) in &sums {
        println!("{era} {section}: {passed} passed, {failed} failed");
    }
    for e in &exclusions {
        println!("{era} excluded: {e}");
    }
    for section in ["set_irqs", "msix_dynamic", "misc_ioctls"] {
        assert!(
            sums.get(section).is_some_and(|s| s.0 > 0),
            "{era}: {section} replayed nothing"
        );
    }
    assert!(
        mismatches.is_empty(),
        "{} oracle mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn linux_7_3_sections() {
    sections("linux-7.3");
}

#[test]
fn linux_6_1_sections() {
    sections("linux-6.1");
}
