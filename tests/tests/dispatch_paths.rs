//! The two ways of driving the core — the byte-level dispatcher (`Vfio::ioctl`) and the
//! typed API behind the harness's own encoder — must agree, and the runner must notice
//! when they do not.

use std::path::Path;

use vfio_core::Result;
use vfio_tests::fixture::{Env, FixtureIommu, FixtureMemory, FixtureSpec};
use vfio_tests::registry::{
    registry_builder, typed_registry_builder, with_registry_path, Capacity,
};
use vfio_tests::runner::{
    combine_paths, run_text, DispatchPath, IoctlArg, Machine, Options, Setup, Verdict,
};

fn core_file() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("cases/cases-core-type1.toml");
    std::fs::read_to_string(p).expect("cases-core-type1.toml")
}

/// The `[fixture]` of cases-core-type1.toml with no cases.
fn fixture_only() -> String {
    let text = core_file();
    let mut doc: toml::Table = text.parse().expect("valid TOML");
    doc.remove("case");
    toml::to_string(&doc).expect("serializable")
}

/// A machine that answers every ioctl like `inner`, except that it adds one to the first
/// byte of the buffer after a successful `IOMMU_GET_INFO`.
struct Tamper<'a>(&'a mut dyn Machine);

impl Machine for Tamper<'_> {
    fn open_container(&mut self) -> Result<i32> {
        self.0.open_container()
    }
    fn open_group(&mut self, g: u32) -> Result<i32> {
        self.0.open_group(g)
    }
    fn close(&mut self, fd: i32) -> Result<()> {
        self.0.close(fd)
    }
    fn ioctl(&mut self, fd: i32, request: u32, arg: IoctlArg<'_>) -> Result<i64> {
        match arg {
            IoctlArg::Buffer(b) if request == 0x3b70 => {
                let r = self.0.ioctl(fd, request, IoctlArg::Buffer(b));
                if r.is_ok() {
                    // A byte the case does not look at: the pad field.
                    b[20] ^= 1;
                }
                r
            }
            other => self.0.ioctl(fd, request, other),
        }
    }
    fn unregister_device(&mut self, name: &str) -> Result<()> {
        self.0.unregister_device(name)
    }
    fn advance_time(&mut self, ms: u64) {
        self.0.advance_time(ms)
    }
    fn unregister_status(&self, name: &str) -> Option<(bool, u32)> {
        self.0.unregister_status(name)
    }
    fn device_stats(&self, name: &str) -> Option<(u32, u32, u32)> {
        self.0.device_stats(name)
    }
    fn container_mappings(&self, fd: i32) -> Result<Vec<(u64, u64)>> {
        self.0.container_mappings(fd)
    }
    fn container_domain_count(&self, fd: i32) -> Result<usize> {
        self.0.container_domain_count(fd)
    }
    fn invalid_vaddr_iovas(&self, fd: i32) -> Result<Vec<u64>> {
        self.0.invalid_vaddr_iovas(fd)
    }
    fn group_domain(&self, g: u32) -> Option<vfio_core::platform::DomainId> {
        self.0.group_domain(g)
    }
}

fn tampering_builder(
    setup: &Setup<'_>,
    body: &mut dyn FnMut(&mut dyn Machine) -> Verdict,
) -> std::result::Result<Verdict, String> {
    typed_registry_builder(setup, &mut |m| body(&mut Tamper(m)))
}

const GET_INFO_CASE: &str = r#"
[[case]]
id = "P-1"
name = "get info with room for the chain"
start = "v2"
[[case.step]]
op = "IOMMU_GET_INFO"
fd = "C"
argsz = 256
expect = { ret = 0, out = { flags = 3 } }
"#;

#[test]
fn a_difference_the_case_does_not_check_is_still_a_disagreement() {
    let text = format!("{}\n{GET_INFO_CASE}", fixture_only());
    let mut opts = Options {
        builder: Some(&registry_builder),
        typed_builder: Some(&tampering_builder),
        path: DispatchPath::Typed,
        ..Options::default()
    };
    let alone = run_text(&text, &opts).expect("runs");
    assert_eq!(alone[0].verdict, Verdict::Pass, "the case itself passes");
    opts.path = DispatchPath::Both;
    let both = run_text(&text, &opts).expect("runs");
    match &both[0].verdict {
        Verdict::Fail(m) => {
            assert!(m.contains("paths disagree"), "{m}");
            assert!(m.contains("step 1 IOMMU_GET_INFO"), "{m}");
        }
        other => panic!("expected a disagreement, got {other:?}"),
    }
}

#[test]
fn both_paths_agree_on_the_happy_path() {
    let text = format!("{}\n{GET_INFO_CASE}", fixture_only());
    let opts = Options {
        builder: Some(&registry_builder),
        typed_builder: Some(&typed_registry_builder),
        path: DispatchPath::Both,
        ..Options::default()
    };
    let r = run_text(&text, &opts).expect("runs");
    assert_eq!(r[0].verdict, Verdict::Pass);
}

#[test]
fn combining_paths() {
    let log = |s: &str| vec![s.to_string()];
    assert_eq!(
        combine_paths(vec![
            ("abi", Verdict::Pass, log("x")),
            ("typed", Verdict::Pass, log("x"))
        ]),
        Verdict::Pass
    );
    assert!(matches!(
        combine_paths(vec![
            ("abi", Verdict::Pass, log("x")),
            ("typed", Verdict::Fail("boom".into()), log("x"))
        ]),
        Verdict::Fail(m) if m == "typed path: boom"
    ));
    assert!(matches!(
        combine_paths(vec![
            ("abi", Verdict::Pass, log("x")),
            ("typed", Verdict::Pass, vec!["x".into(), "y".into()])
        ]),
        Verdict::Fail(m) if m.contains("#2") && m.contains("(nothing)")
    ));
}

/// Runs `f` on a fresh registry (fixture of cases-core-type1.toml) along `path`.
fn on_registry(path: DispatchPath, f: &mut dyn FnMut(&mut dyn Machine)) {
    let text = core_file();
    let doc: toml::Table = text.parse().expect("valid TOML");
    let spec = FixtureSpec::from_toml(&doc["fixture"]).expect("fixture");
    let env = Env::default();
    let setup = Setup {
        spec: &spec,
        env: &env,
        iommu: FixtureIommu::new(&spec),
        memory: FixtureMemory::new(&spec, &env),
    };
    with_registry_path(&setup, Capacity::default(), path, &mut |m| {
        f(m);
        Verdict::Pass
    })
    .expect("registry builds");
}

/// A Type1v2 container with group 1: `(container, group)`.
fn v2(m: &mut dyn Machine) -> (i32, i32) {
    let c = m.open_container().expect("container");
    let g = m.open_group(1).expect("group 1");
    let mut raw = c.to_le_bytes().to_vec();
    m.ioctl(g, 0x3b68, IoctlArg::Buffer(&mut raw))
        .expect("SET_CONTAINER");
    m.ioctl(c, 0x3b66, IoctlArg::Value(3)).expect("SET_IOMMU");
    (c, g)
}

/// `VFIO_IOMMU_GET_INFO` with `argsz` 16 in a buffer whose bytes 16..24 are not zero:
/// spec/01-core.md §3.2 step 4 and spec/02-type1.md §9.3 — only `min(argsz, 24)` = 16
/// bytes are written back, `cap_offset` and `pad` are not touched.
fn short_get_info(path: DispatchPath) -> Vec<u8> {
    let mut out = Vec::new();
    on_registry(path, &mut |m| {
        let (c, _) = v2(m);
        let mut buf = [0xa5u8; 24];
        buf[..4].copy_from_slice(&16u32.to_le_bytes());
        m.ioctl(c, 0x3b70, IoctlArg::Buffer(&mut buf))
            .expect("GET_INFO");
        out = buf.to_vec();
    });
    out
}

#[test]
fn short_get_info_leaves_cap_offset_alone_on_the_typed_path() {
    let buf = short_get_info(DispatchPath::Typed);
    assert_eq!(&buf[16..24], &[0xa5; 8], "{buf:02x?}");
    assert_eq!(buf[4], 3, "flags");
}

#[test]
fn short_get_info_leaves_cap_offset_alone_on_the_dispatcher() {
    let buf = short_get_info(DispatchPath::Abi);
    assert_eq!(&buf[16..24], &[0xa5; 8], "{buf:02x?}");
}
