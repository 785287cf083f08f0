//! Runs every case file in `tests/cases/` through the spec-case runner.
//!
//! Which cases must pass is explicit: every case whose id starts with a prefix in
//! [`MUST_PASS`] must pass; cases with a prefix in [`REPORT_ONLY`] are run and counted but
//! do not fail the test. Files of the vfio-pci schema (`cases-pci.toml`) run through the
//! vfio-pci driver and the mock platform of `vfio_tests::pci_mock`; every case of them
//! must pass except the hot-reset cases, which need group/device-set plumbing the core
//! does not have yet (report-only).
//!
//! Every file runs three times: through the byte-level dispatcher (`abi`), through the
//! typed API (`typed`) and through both at once (`both`: a case passes only when both
//! paths pass and every observation of the two runs is identical). For cases-pci.toml
//! the ABI path is the registry with the mock function registered, the typed path the
//! driver called directly. Every case that must
//! pass must pass on each of the three.

use std::path::{Path, PathBuf};

use vfio_tests::registry::{registry_builder, typed_registry_builder};
use vfio_tests::runner::{run_path, CaseReport, DispatchPath, Options, Totals, Verdict};
use vfio_tests::sorted_files;

/// Case-id prefixes that must all pass.
const MUST_PASS: &[&str] = &[
    "CORE-",
    "T1-",
    "hdr_",
    "acc_",
    "pm_",
    "msi",
    "pcie_",
    "b_",
    "ext_",
    "devinfo_",
    "regioninfo_",
    "bar_",
    "rom_",
    "config_region_",
    "vga_",
    "irqinfo_",
    "setirqs_",
    "intx_",
    "err_",
    "req_",
    "reset_",
    "close_",
    "open_",
    "hot_reset_",
];
/// Case-id prefixes that are run and reported but may fail for now (none).
const REPORT_ONLY: &[&str] = &[];

fn case_files() -> Vec<PathBuf> {
    sorted_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("cases"), "toml")
}

fn has_prefix(r: &CaseReport, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| r.label().starts_with(p))
}

fn run_all(path: DispatchPath) -> Vec<CaseReport> {
    let files = case_files();
    assert!(
        files.iter().any(|f| f.ends_with("cases-core-type1.toml")),
        "tests/cases/cases-core-type1.toml is missing"
    );
    let opts = Options {
        builder: Some(&registry_builder),
        typed_builder: Some(&typed_registry_builder),
        path,
        ..Options::default()
    };
    let mut all = Vec::new();
    for f in &files {
        let reports = run_path(f, &opts).unwrap_or_else(|e| panic!("{e}"));
        for r in &reports {
            println!("[{path:?}] {r}");
        }
        println!(
            "[{path:?}] {}: {}",
            f.file_name().unwrap_or_default().to_string_lossy(),
            Totals::of(&reports)
        );
        all.extend(reports);
    }
    println!("[{path:?}] {}", Totals::of(&all));
    all
}

fn check(path: DispatchPath) {
    let all = run_all(path);
    for prefixes in [MUST_PASS, REPORT_ONLY] {
        for p in prefixes {
            let t = Totals::of(all.iter().filter(|r| r.label().starts_with(p)));
            println!("[{path:?}] {p}*: {t}");
        }
    }

    let must: Vec<&CaseReport> = all.iter().filter(|r| has_prefix(r, MUST_PASS)).collect();
    assert!(!must.is_empty(), "no {MUST_PASS:?} case was run");
    let failing: Vec<String> = all
        .iter()
        .filter(|r| !has_prefix(r, REPORT_ONLY) && !matches!(r.verdict, Verdict::Pass))
        .filter(|r| !matches!(r.verdict, Verdict::Skip(_)) || has_prefix(r, MUST_PASS))
        .map(ToString::to_string)
        .collect();
    assert!(
        failing.is_empty(),
        "[{path:?}] cases that must pass did not:\n{}",
        failing.join("\n")
    );
}

#[test]
fn spec_cases_through_the_dispatcher() {
    check(DispatchPath::Abi);
}

#[test]
fn spec_cases_through_the_typed_api() {
    check(DispatchPath::Typed);
}

/// Both paths pass every case and observe exactly the same results and bytes.
#[test]
fn spec_cases_both_paths_agree() {
    check(DispatchPath::Both);
}
