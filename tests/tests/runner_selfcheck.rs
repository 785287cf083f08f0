//! The runner must notice wrong expectations and malformed cases (no false passes, no
//! panics), and must treat the vfio-pci schema as skipped.

use vfio_tests::registry::registry_builder;
use vfio_tests::runner::{run_text, Options, Totals, Verdict};

const FIXTURE: &str = r#"
schema = "vfio-cases/1"
[fixture]
page_size = 4096
dma_entry_limit = 65535
memlock_pages = "unlimited"
[[fixture.memory]]
vaddr = "0x7f0000000000"
len = "0x100000"
phys = "0x100000000"
kind = "ram"
[fixture.iommu_profile.std]
ops = "A"
pgsize_bitmap = "0x40201000"
aperture = ["0x0", "0xffffffffffff"]
reserved = [["0xfee00000", "0xfeefffff", "msi"]]
intr_remap = true
enforce_coherency = true
[[fixture.group]]
id = 1
profile = "std"
devices = [{ name = "0000:01:00.0", binding = "vfio", template = "t" }]
[fixture.device_template.t]
flags = 3
num_regions = 1
num_irqs = 1
reset = true
regions = [{ index = 0, flags = 7, size = "0x1000", offset = "0x0", caps = [{ id = 2, version = 1, type = 5, subtype = 6 }] }]
irqs = [{ index = 0, flags = 7, count = 1 }]
"#;

fn run(cases: &str) -> Vec<Verdict> {
    let opts = Options {
        builder: Some(&registry_builder),
        ..Options::default()
    };
    run_text(&format!("{FIXTURE}\n{cases}"), &opts)
        .expect("file runs")
        .into_iter()
        .map(|r| r.verdict)
        .collect()
}

fn fail_message(v: &Verdict) -> &str {
    match v {
        Verdict::Fail(m) => m,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn correct_expectations_pass() {
    let v = run(r#"
[[case]]
id = "X-1"
name = "ok"
start = "v2_dev"
[[case.step]]
op = "MAP_DMA"
fd = "C"
flags = "READ|WRITE"
vaddr = "0x7f0000000000"
iova = "0x100000"
size = "0x2000"
expect = { ret = 0 }
[[case.step]]
op = "ASSERT_MAPPINGS"
fd = "C"
expect = { mappings = [["0x100000", "0x2000"]] }
[[case.step]]
op = "ASSERT_TRANSLATION"
group = 1
iova = "0x101000"
expect = { phys = "0x100001000" }
[[case.step]]
op = "ASSERT_LOCKED_PAGES"
expect = { pages = 2 }
[[case.step]]
op = "DEVICE_GET_REGION_INFO"
fd = "D1"
index = 0
argsz = 48
expect = { ret = 0, out = { flags = 15, cap_offset = 32, caps = [{ offset = 32, id = 2, version = 1, next = 0, type = 5, subtype = 6 }] } }
"#);
    assert_eq!(v, vec![Verdict::Pass]);
}

#[test]
fn wrong_expectations_fail_with_a_clear_message() {
    let v = run(r#"
[[case]]
id = "X-1"
name = "wrong_errno"
start = "v2"
[[case.step]]
op = "MAP_DMA"
fd = "C"
flags = "READ|WRITE"
vaddr = "0x7f0000000000"
iova = "0x100000"
size = "0x1000"
expect = { errno = "EEXIST" }

[[case]]
id = "X-2"
name = "wrong_out"
start = "g1_open"
[[case.step]]
op = "GROUP_GET_STATUS"
fd = "G1"
expect = { ret = 0, out = { flags = 3 } }

[[case]]
id = "X-3"
name = "wrong_cap"
start = "v2_dev"
[[case.step]]
op = "DEVICE_GET_REGION_INFO"
fd = "D1"
index = 0
argsz = 48
expect = { ret = 0, out = { caps = [{ id = 2, subtype = 7 }] } }

[[case]]
id = "X-4"
name = "wrong_mappings"
start = "v2"
[[case.step]]
op = "ASSERT_MAPPINGS"
fd = "C"
expect = { mappings = [["0x100000", "0x1000"]] }
"#);
    assert_eq!(
        fail_message(&v[0]),
        "step 1 MAP_DMA: expected errno EEXIST, got ret 0"
    );
    assert_eq!(
        fail_message(&v[1]),
        "step 1 GROUP_GET_STATUS: flags: expected 3, got 1"
    );
    assert!(fail_message(&v[2]).contains("caps"), "{v:?}");
    assert!(fail_message(&v[3]).contains("mappings"), "{v:?}");
}

#[test]
fn malformed_cases_fail_without_panicking() {
    let v = run(r#"
[[case]]
id = "M-1"
name = "unknown_op"
start = "none"
[[case.step]]
op = "FROB"
expect = { ret = 0 }

[[case]]
id = "M-2"
name = "unknown_handle"
start = "none"
[[case.step]]
op = "CLOSE"
fd = "Z"
expect = { ret = 0 }

[[case]]
id = "M-3"
name = "bad_number"
start = "c_open"
[[case.step]]
op = "CHECK_EXTENSION"
fd = "C"
arg = "0xZZ"
expect = { ret = 0 }

[[case]]
id = "M-4"
name = "unknown_start"
start = "nowhere"

[[case]]
id = "M-5"
name = "bad_flag"
start = "v2"
[[case.step]]
op = "MAP_DMA"
fd = "C"
flags = "READ|BOGUS"
expect = { ret = 0 }

[[case]]
id = "M-6"
name = "typo_operand"
start = "c_open"
[[case.step]]
op = "CHECK_EXTENSION"
fd = "C"
arg = 1
argg = 2
expect = { ret = 1 }
"#);
    assert_eq!(v.len(), 6);
    for (i, verdict) in v.iter().enumerate() {
        let m = fail_message(verdict);
        assert!(!m.is_empty(), "case {i}");
    }
    assert!(fail_message(&v[0]).contains("unknown op `FROB`"));
    assert!(fail_message(&v[1]).contains("unknown handle `Z`"));
    assert!(fail_message(&v[3]).contains("unknown start state"));
    assert!(fail_message(&v[4]).contains("BOGUS"));
    assert!(fail_message(&v[5]).contains("argg"));
}

#[test]
fn only_prefix_selects_cases() {
    let text = format!(
        "{FIXTURE}\n[[case]]\nid = \"A-1\"\nname = \"a\"\nstart = \"c_open\"\n\
         [[case]]\nid = \"B-1\"\nname = \"b\"\nstart = \"c_open\"\n\
         [[case]]\nname = \"A-named\"\nstart = \"c_open\"\n"
    );
    let opts = Options {
        only: Some("A-".into()),
        builder: Some(&registry_builder),
        ..Options::default()
    };
    let reports = run_text(&text, &opts).unwrap();
    let labels: Vec<&str> = reports.iter().map(|r| r.label()).collect();
    assert_eq!(labels, ["A-1", "A-named"]);
    assert_eq!(Totals::of(&reports).to_string(), "2 passed, 0 failed");
}

#[test]
fn pci_schema_runs_and_unknown_schema_is_an_error() {
    let pci = "schema_version = 1\n[[template]]\nid = \"A\"\n\
               config = [ { at = 0, hex = \"86 80 34 12\" } ]\n[[case]]\nname = \"x\"\n\
               template = \"A\"\nops = [ { op = \"cfg_read\", at = 0, width = 2, \
               expect = 0x8086 } ]\n";
    let reports = run_text(pci, &Options::default()).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].verdict, Verdict::Pass);
    assert_eq!(Totals::of(&reports).to_string(), "1 passed, 0 failed");
    assert!(run_text("schema = \"other\"\n", &Options::default()).is_err());
    assert!(run_text("this is [not toml", &Options::default()).is_err());
}

#[test]
fn set_irqs_validate_needs_no_machine() {
    let text = format!(
        "{FIXTURE}\n[[case]]\nid = \"S-1\"\nname = \"s\"\nstart = \"none\"\n\
         [[case.step]]\nop = \"SET_IRQS_VALIDATE\"\nnum_irqs = 16\nmax_irq_type = 5\n\
         argsz = 28\nflags = \"DATA_EVENTFD|ACTION_TRIGGER\"\nindex = 2\nstart = 0\ncount = 2\n\
         expect = {{ ret = 0, out = {{ data_size = 8 }} }}\n"
    );
    let reports = run_text(&text, &Options::default()).unwrap();
    assert_eq!(reports[0].verdict, Verdict::Pass);
}
