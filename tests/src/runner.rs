//! Loads case files and runs their cases against a [`Machine`].
//!
//! A `vfio-cases/1` file (cases-core-type1.toml) is executed step by step: the starting
//! state is built, then every step's operation is performed and its result compared with
//! the step's `expect` table. A file of the vfio-pci schema (`schema_version = 1`,
//! `[[template]]`) is run by [`crate::pci_mock`] through the vfio-pci driver.
//!
//! The runner never panics on a malformed case file: every problem becomes a failing case
//! whose message names the step and what was wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use toml::Value;
use vfio_core::platform::{DomainId, GroupId};
use vfio_core::uapi::{self, ioctl};
use vfio_core::vfio::validate_irq_set;
use vfio_core::{Errno, Result};

use crate::fixture::{Binding, Env, FixtureIommu, FixtureMemory, FixtureSpec};
use crate::value::{
    as_array, as_errno, as_flags, as_i64, as_str, as_table, as_u32, as_u64, describe, render,
    FlagTable, DIRTY_PAGES_FLAGS, MAP_DMA_FLAGS, SET_IRQS_FLAGS, UNMAP_DMA_FLAGS,
};

/// The argument of an ioctl at the byte level (mirrors `vfio_core::abi::Arg`).
#[derive(Debug)]
pub enum IoctlArg<'a> {
    /// No argument.
    None,
    /// An integer argument (`CHECK_EXTENSION`, `SET_IOMMU`).
    Value(u64),
    /// A pointer to the caller's buffer.
    Buffer(&'a mut [u8]),
}

/// What the runner needs from the system under test: the registry's files, ioctls, host
/// events and introspection, addressed by raw handle numbers and device names.
pub trait Machine {
    /// Opens a container file; returns its handle number.
    fn open_container(&mut self) -> Result<i32>;
    /// Opens the file of IOMMU group `group`.
    fn open_group(&mut self, group: GroupId) -> Result<i32>;
    /// Closes a handle.
    fn close(&mut self, fd: i32) -> Result<()>;
    /// Performs an ioctl on a handle.
    fn ioctl(&mut self, fd: i32, request: u32, arg: IoctlArg<'_>) -> Result<i64>;
    /// Host event: starts unregistering the named device.
    fn unregister_device(&mut self, name: &str) -> Result<()>;
    /// Advances the simulated clock.
    fn advance_time(&mut self, ms: u64);
    /// `(done, request_calls)` of the named device's unregistration.
    fn unregister_status(&self, name: &str) -> Option<(bool, u32)>;
    /// `(open_count, open_calls, close_calls)` of the named device.
    fn device_stats(&self, name: &str) -> Option<(u32, u32, u32)>;
    /// The container's DMA mappings `(iova, size)`, ascending.
    fn container_mappings(&self, fd: i32) -> Result<Vec<(u64, u64)>>;
    /// IOMMU domains of the container's Type1 instance (0 without an instance).
    fn container_domain_count(&self, fd: i32) -> Result<usize>;
    /// IOVAs of the container's entries whose vaddr is invalidated, ascending.
    fn invalid_vaddr_iovas(&self, fd: i32) -> Result<Vec<u64>>;
    /// The domain the group is attached to, if any.
    fn group_domain(&self, group: GroupId) -> Option<DomainId>;
}

/// Everything a [`MachineBuilder`] needs to build the system under test for one case.
#[derive(Debug)]
pub struct Setup<'a> {
    /// The fixture description.
    pub spec: &'a FixtureSpec,
    /// The case's overrides.
    pub env: &'a Env,
    /// The fixture IOMMU (a handle: the runner keeps another).
    pub iommu: FixtureIommu,
    /// The fixture host memory (a handle: the runner keeps another).
    pub memory: FixtureMemory,
}

/// Builds the system under test for one case and runs `body` against it.
///
/// Returns `Err` with a message when the machine cannot be built.
pub type MachineBuilder = dyn Fn(
    &Setup<'_>,
    &mut dyn FnMut(&mut dyn Machine) -> Verdict,
) -> std::result::Result<Verdict, String>;

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every step matched.
    Pass,
    /// A step did not match, or the case could not be run; the message says why.
    Fail(String),
    /// Not run; the message says why.
    Skip(String),
}

/// The report of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseReport {
    /// The case id (`CORE-001`), or empty when the case has none.
    pub id: String,
    /// The case name.
    pub name: String,
    /// What happened.
    pub verdict: Verdict,
}

impl CaseReport {
    /// The case's label: its id, or its name when it has no id.
    pub fn label(&self) -> &str {
        if self.id.is_empty() {
            &self.name
        } else {
            &self.id
        }
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = if self.id.is_empty() {
            self.name.clone()
        } else {
            format!("{} {}", self.id, self.name)
        };
        match &self.verdict {
            Verdict::Pass => write!(f, "PASS {head}"),
            Verdict::Fail(msg) => write!(f, "FAIL {head}: {msg}"),
            Verdict::Skip(msg) => write!(f, "SKIP {head}: {msg}"),
        }
    }
}

/// Which way the runner drives the system under test.
///
/// * `Abi`: the byte-level dispatcher (`Vfio::ioctl`; for cases-pci.toml, the registry
///   with the mock PCI function registered), through [`Options::builder`].
/// * `Typed`: the typed API, through [`Options::typed_builder`] (for cases-pci.toml, the
///   `PciDriver` called directly with the harness's own argsz/capability rules).
/// * `Both`: every case runs through both; it passes only when both paths pass and every
///   observation (each machine call's result and written-back bytes, each step's
///   outcome) is identical.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DispatchPath {
    /// The byte-level ABI dispatcher (the default).
    #[default]
    Abi,
    /// The typed API.
    Typed,
    /// Both, compared observation by observation.
    Both,
}

impl DispatchPath {
    /// Parses `abi`, `typed` or `both`.
    pub fn parse(text: &str) -> Option<DispatchPath> {
        match text {
            "abi" => Some(DispatchPath::Abi),
            "typed" => Some(DispatchPath::Typed),
            "both" => Some(DispatchPath::Both),
            _ => None,
        }
    }

    /// Whether the ABI path runs.
    pub fn abi(self) -> bool {
        self != DispatchPath::Typed
    }

    /// Whether the typed path runs.
    pub fn typed(self) -> bool {
        self != DispatchPath::Abi
    }
}

/// Runner options.
#[derive(Default)]
pub struct Options<'a> {
    /// Run only cases whose id (or name, when there is no id) starts with this prefix.
    pub only: Option<String>,
    /// Skip cases that `require` emulated-IOMMU groups.
    pub no_emulated: bool,
    /// Builds the system under test for the ABI path; `None` fails every case that needs
    /// one on that path.
    pub builder: Option<&'a MachineBuilder>,
    /// Builds the system under test for the typed path; `None` fails every case that needs
    /// one on that path.
    pub typed_builder: Option<&'a MachineBuilder>,
    /// Which path(s) to run (default: the ABI path alone).
    pub path: DispatchPath,
}

impl fmt::Debug for Options<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("only", &self.only)
            .field("no_emulated", &self.no_emulated)
            .field("builder", &self.builder.is_some())
            .field("typed_builder", &self.typed_builder.is_some())
            .field("path", &self.path)
            .finish()
    }
}

/// Combines the verdicts and observation logs of the paths a case ran through: a case
/// passes only when every path passed and all logs are identical.
pub fn combine_paths(runs: Vec<(&str, Verdict, Vec<String>)>) -> Verdict {
    let fails: Vec<String> = runs
        .iter()
        .filter_map(|(name, v, _)| match v {
            Verdict::Fail(m) => Some(format!("{name} path: {m}")),
            _ => None,
        })
        .collect();
    if !fails.is_empty() {
        return Verdict::Fail(fails.join("; "));
    }
    if let Some((_, Verdict::Skip(m), _)) =
        runs.iter().find(|(_, v, _)| matches!(v, Verdict::Skip(_)))
    {
        return Verdict::Skip(m.clone());
    }
    let Some((first, _, base)) = runs.first() else {
        return Verdict::Fail("no path ran".to_string());
    };
    for (name, _, log) in &runs[1..] {
        if let Some(msg) = first_difference(first, base, name, log) {
            return Verdict::Fail(msg);
        }
    }
    Verdict::Pass
}

fn first_difference(a_name: &str, a: &[String], b_name: &str, b: &[String]) -> Option<String> {
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i), b.get(i));
        if x != y {
            let show = |o: Option<&String>| o.map_or("(nothing)".to_string(), Clone::clone);
            return Some(format!(
                "paths disagree at observation #{}: {a_name} `{}` / {b_name} `{}`",
                i + 1,
                show(x),
                show(y)
            ));
        }
    }
    None
}

/// Result of running one file: the case reports, or an error that prevented running any
/// case (unreadable file, TOML syntax error, unknown schema).
pub type FileResult = std::result::Result<Vec<CaseReport>, String>;

/// Reads and runs the case file at `path`.
pub fn run_path(path: &Path, opts: &Options<'_>) -> FileResult {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    run_text(&text, opts).map_err(|e| format!("{}: {e}", path.display()))
}

fn selected(opts: &Options<'_>, id: &str, name: &str) -> bool {
    match &opts.only {
        None => true,
        Some(prefix) => {
            let label = if id.is_empty() { name } else { id };
            label.starts_with(prefix.as_str())
        }
    }
}

fn case_id_name(case: &toml::Table, index: usize) -> (String, String) {
    let id = case
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = case
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("case#{}", index + 1));
    (id, name)
}

/// Runs the cases of a case file given as text.
pub fn run_text(text: &str, opts: &Options<'_>) -> FileResult {
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("TOML error: {e}"))?;
    let cases: Vec<&toml::Table> = match doc.get("case") {
        None => Vec::new(),
        Some(v) => as_array(v)
            .map_err(|e| format!("`case`: {e}"))?
            .iter()
            .map(|c| as_table(c).map_err(|e| format!("`case`: {e}")))
            .collect::<std::result::Result<_, _>>()?,
    };
    let schema = doc.get("schema").and_then(Value::as_str);
    let pci_schema = doc.get("schema_version").and_then(Value::as_integer) == Some(1)
        && doc.contains_key("template");
    if schema != Some("vfio-cases/1") {
        if pci_schema {
            return crate::pci_mock::run_pci_doc(&doc, opts);
        }
        return Err(match schema {
            Some(s) => format!("unknown case schema `{s}` (expected \"vfio-cases/1\")"),
            None => {
                "no `schema = \"vfio-cases/1\"` and not the vfio-pci schema_version = 1".to_string()
            }
        });
    }
    let fixture = doc
        .get("fixture")
        .ok_or_else(|| "missing [fixture]".to_string())
        .and_then(FixtureSpec::from_toml);
    let mut reports = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let (id, name) = case_id_name(case, i);
        if !selected(opts, &id, &name) {
            continue;
        }
        let verdict = match &fixture {
            Err(e) => Verdict::Fail(format!("bad fixture: {e}")),
            Ok(spec) => run_case(spec, case, opts),
        };
        reports.push(CaseReport { id, name, verdict });
    }
    Ok(reports)
}

/// Ops that need no machine: a case made only of these runs without one.
fn is_pure_op(op: &str) -> bool {
    op == "SET_IRQS_VALIDATE"
}

fn run_case(spec: &FixtureSpec, case: &toml::Table, opts: &Options<'_>) -> Verdict {
    if let Some(req) = case.get("requires") {
        let list = match as_array(req) {
            Ok(l) => l,
            Err(e) => return Verdict::Fail(format!("`requires`: {e}")),
        };
        for r in list {
            match r.as_str() {
                Some("emulated") if opts.no_emulated => {
                    return Verdict::Skip("requires emulated-IOMMU groups".to_string())
                }
                Some("emulated") => {}
                Some(other) => return Verdict::Skip(format!("requires unknown feature `{other}`")),
                None => return Verdict::Fail(format!("`requires`: {}", describe(r))),
            }
        }
    }
    let env = match case.get("env").map(Env::from_toml).transpose() {
        Ok(e) => e.unwrap_or_default(),
        Err(e) => return Verdict::Fail(e),
    };
    let start = match case.get("start").map(as_str).transpose() {
        Ok(s) => s.unwrap_or("none"),
        Err(e) => return Verdict::Fail(format!("`start`: {e}")),
    };
    let start_steps = match start_steps(start) {
        Ok(s) => s,
        Err(e) => return Verdict::Fail(e),
    };
    let steps: Vec<&toml::Table> = match case.get("step") {
        None => Vec::new(),
        Some(v) => match as_array(v).and_then(|a| a.iter().map(as_table).collect()) {
            Ok(s) => s,
            Err(e) => return Verdict::Fail(format!("`step`: {e}")),
        },
    };
    for (known, _) in case.iter() {
        if !matches!(
            known.as_str(),
            "id" | "name" | "spec" | "start" | "requires" | "env" | "step"
        ) {
            return Verdict::Fail(format!("unknown case key `{known}`"));
        }
    }
    let needs_machine =
        !start_steps.is_empty() || steps.iter().any(|s| !is_pure_op(step_op(s).unwrap_or("")));
    let run_on = |builder: Option<&MachineBuilder>| -> (Verdict, Vec<String>) {
        run_machine(
            spec,
            &env,
            start,
            &start_steps,
            &steps,
            needs_machine,
            builder,
        )
    };
    if !needs_machine {
        return run_on(None).0;
    }
    let mut runs = Vec::new();
    if opts.path.abi() {
        let (v, log) = run_on(opts.builder);
        runs.push(("abi", v, log));
    }
    if opts.path.typed() {
        let (v, log) = run_on(opts.typed_builder);
        runs.push(("typed", v, log));
    }
    if runs.len() == 1 {
        return runs.remove(0).1;
    }
    combine_paths(runs)
}

/// Runs one case on a fresh fixture through `builder`'s machine; returns the verdict and
/// the observation log.
fn run_machine(
    spec: &FixtureSpec,
    env: &Env,
    start: &str,
    start_steps: &[toml::Table],
    steps: &[&toml::Table],
    needs_machine: bool,
    builder: Option<&MachineBuilder>,
) -> (Verdict, Vec<String>) {
    let iommu = FixtureIommu::new(spec);
    let memory = FixtureMemory::new(spec, env);
    let mut log = Vec::new();
    let mut body = |machine: &mut dyn Machine| {
        let mut ctx = Ctx {
            machine: Recorder {
                inner: machine,
                log: &mut log,
                at: String::new(),
            },
            iommu: iommu.clone(),
            memory: memory.clone(),
            handles: BTreeMap::new(),
        };
        for (n, step) in start_steps.iter().enumerate() {
            ctx.machine.at = format!("start {} {}", n + 1, step_op(step).unwrap_or("?"));
            if let Err(e) = ctx.step(step) {
                return Verdict::Fail(format!(
                    "start \"{start}\" step {} {}: {e}",
                    n + 1,
                    step_op(step).unwrap_or("?")
                ));
            }
        }
        for (n, step) in steps.iter().enumerate() {
            ctx.machine.at = format!("step {} {}", n + 1, step_op(step).unwrap_or("?"));
            if let Err(e) = ctx.step(step) {
                return Verdict::Fail(format!(
                    "step {} {}: {e}",
                    n + 1,
                    step_op(step).unwrap_or("?")
                ));
            }
        }
        Verdict::Pass
    };
    let verdict = if !needs_machine {
        body(&mut NoMachine)
    } else {
        match builder {
            None => {
                Verdict::Fail("no system under test: the registry is not available".to_string())
            }
            Some(builder) => {
                let setup = Setup {
                    spec,
                    env,
                    iommu: iommu.clone(),
                    memory: memory.clone(),
                };
                match builder(&setup, &mut body) {
                    Ok(v) => v,
                    Err(e) => Verdict::Fail(format!("cannot build the machine: {e}")),
                }
            }
        }
    };
    (verdict, log)
}

/// Wraps the machine under test and logs every call with its result (and, for ioctls,
/// the bytes written back), so that two paths can be compared observation by observation.
struct Recorder<'m> {
    inner: &'m mut dyn Machine,
    log: &'m mut Vec<String>,
    /// The step being performed (prefix of every log line).
    at: String,
}

impl Recorder<'_> {
    fn note(&mut self, what: String) {
        self.log.push(format!("{}: {what}", self.at));
    }
}

/// A compact rendering of a buffer: its length, up to 96 leading bytes in hex and an
/// FNV-1a digest of all of it.
fn digest(buf: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in buf {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let head: String = buf.iter().take(96).map(|b| format!("{b:02x}")).collect();
    format!("{} bytes [{head}] #{h:016x}", buf.len())
}

fn show<T: fmt::Debug>(r: &Result<T>) -> String {
    match r {
        Ok(v) => format!("{v:?}"),
        Err(e) => e.name().to_string(),
    }
}

impl Machine for Recorder<'_> {
    fn open_container(&mut self) -> Result<i32> {
        let r = self.inner.open_container();
        self.note(format!("open_container -> {}", show(&r)));
        r
    }
    fn open_group(&mut self, group: GroupId) -> Result<i32> {
        let r = self.inner.open_group(group);
        self.note(format!("open_group({group}) -> {}", show(&r)));
        r
    }
    fn close(&mut self, fd: i32) -> Result<()> {
        let r = self.inner.close(fd);
        self.note(format!("close({fd}) -> {}", show(&r)));
        r
    }
    fn ioctl(&mut self, fd: i32, request: u32, arg: IoctlArg<'_>) -> Result<i64> {
        match arg {
            IoctlArg::Buffer(buf) => {
                let before = digest(buf);
                let r = self.inner.ioctl(fd, request, IoctlArg::Buffer(buf));
                let after = digest(buf);
                self.note(format!(
                    "ioctl({fd}, {request:#x}, in {before}) -> {}, out {after}",
                    show(&r)
                ));
                r
            }
            other => {
                let shown = format!("{other:?}");
                let r = self.inner.ioctl(fd, request, other);
                self.note(format!(
                    "ioctl({fd}, {request:#x}, {shown}) -> {}",
                    show(&r)
                ));
                r
            }
        }
    }
    fn unregister_device(&mut self, name: &str) -> Result<()> {
        let r = self.inner.unregister_device(name);
        self.note(format!("unregister_device({name}) -> {}", show(&r)));
        r
    }
    fn advance_time(&mut self, ms: u64) {
        self.inner.advance_time(ms);
        self.note(format!("advance_time({ms})"));
    }
    fn unregister_status(&self, name: &str) -> Option<(bool, u32)> {
        self.inner.unregister_status(name)
    }
    fn device_stats(&self, name: &str) -> Option<(u32, u32, u32)> {
        self.inner.device_stats(name)
    }
    fn container_mappings(&self, fd: i32) -> Result<Vec<(u64, u64)>> {
        self.inner.container_mappings(fd)
    }
    fn container_domain_count(&self, fd: i32) -> Result<usize> {
        self.inner.container_domain_count(fd)
    }
    fn invalid_vaddr_iovas(&self, fd: i32) -> Result<Vec<u64>> {
        self.inner.invalid_vaddr_iovas(fd)
    }
    fn group_domain(&self, group: GroupId) -> Option<DomainId> {
        self.inner.group_domain(group)
    }
}

/// A machine that has nothing: used for cases made only of pure operations.
struct NoMachine;

impl Machine for NoMachine {
    fn open_container(&mut self) -> Result<i32> {
        Err(Errno::ENODEV)
    }
    fn open_group(&mut self, _: GroupId) -> Result<i32> {
        Err(Errno::ENODEV)
    }
    fn close(&mut self, _: i32) -> Result<()> {
        Err(Errno::EBADF)
    }
    fn ioctl(&mut self, _: i32, _: u32, _: IoctlArg<'_>) -> Result<i64> {
        Err(Errno::EBADF)
    }
    fn unregister_device(&mut self, _: &str) -> Result<()> {
        Err(Errno::ENODEV)
    }
    fn advance_time(&mut self, _: u64) {}
    fn unregister_status(&self, _: &str) -> Option<(bool, u32)> {
        None
    }
    fn device_stats(&self, _: &str) -> Option<(u32, u32, u32)> {
        None
    }
    fn container_mappings(&self, _: i32) -> Result<Vec<(u64, u64)>> {
        Err(Errno::EBADF)
    }
    fn container_domain_count(&self, _: i32) -> Result<usize> {
        Err(Errno::EBADF)
    }
    fn invalid_vaddr_iovas(&self, _: i32) -> Result<Vec<u64>> {
        Err(Errno::EBADF)
    }
    fn group_domain(&self, _: GroupId) -> Option<DomainId> {
        None
    }
}

fn step_op(step: &toml::Table) -> Option<&str> {
    step.get("op").and_then(Value::as_str)
}

fn start_steps(start: &str) -> std::result::Result<Vec<toml::Table>, String> {
    fn step(text: &str) -> toml::Table {
        text.parse().expect("built-in start step is valid TOML")
    }
    let c_open = || {
        step(
            r#"op = "OPEN_CONTAINER"
as = "C"
expect = { ret = "fd" }"#,
        )
    };
    let g1_open = || {
        vec![
            c_open(),
            step(
                r#"op = "OPEN_GROUP"
group = 1
as = "G1"
expect = { ret = "fd" }"#,
            ),
        ]
    };
    let g1_set = || {
        let mut s = g1_open();
        s.push(step(
            r#"op = "GROUP_SET_CONTAINER"
fd = "G1"
container = "C"
expect = { ret = 0 }"#,
        ));
        s
    };
    let set_iommu = |t: u32| {
        step(&format!(
            "op = \"SET_IOMMU\"\nfd = \"C\"\narg = {t}\nexpect = {{ ret = 0 }}"
        ))
    };
    Ok(match start {
        "none" => Vec::new(),
        "c_open" => vec![c_open()],
        "g1_open" => g1_open(),
        "g1_set" => g1_set(),
        "v1" => {
            let mut s = g1_set();
            s.push(set_iommu(1));
            s
        }
        "v2" => {
            let mut s = g1_set();
            s.push(set_iommu(3));
            s
        }
        "v2_dev" => {
            let mut s = g1_set();
            s.push(set_iommu(3));
            s.push(step(
                r#"op = "GROUP_GET_DEVICE_FD"
fd = "G1"
name = "0000:01:00.0"
as = "D1"
expect = { ret = "fd" }"#,
            ));
            s
        }
        "v2_full64" => vec![
            c_open(),
            step(
                r#"op = "OPEN_GROUP"
group = 9
as = "G9"
expect = { ret = "fd" }"#,
            ),
            step(
                r#"op = "GROUP_SET_CONTAINER"
fd = "G9"
container = "C"
expect = { ret = 0 }"#,
            ),
            set_iommu(3),
        ],
        other => return Err(format!("unknown start state `{other}`")),
    })
}

// ------------------------------------------------------------------------------------------
// Observed values and comparison
// ------------------------------------------------------------------------------------------

/// A value observed from the system, compared against an expected TOML value.
#[derive(Debug, Clone, PartialEq)]
enum Obs {
    Num(u64),
    Bool(bool),
    None,
    List(Vec<Obs>),
    Map(BTreeMap<String, Obs>),
}

impl fmt::Display for Obs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Obs::Num(n) if *n >= 4096 => write!(f, "{n:#x}"),
            Obs::Num(n) => write!(f, "{n}"),
            Obs::Bool(b) => write!(f, "{b}"),
            Obs::None => write!(f, "none"),
            Obs::List(items) => {
                write!(f, "[")?;
                for (i, it) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{it}")?;
                }
                write!(f, "]")
            }
            Obs::Map(m) => {
                write!(f, "{{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        write!(f, ",")?;
                    }
                    write!(f, " {k} = {v}")?;
                }
                write!(f, " }}")
            }
        }
    }
}

type Fields = BTreeMap<String, Obs>;

/// Compares `expected` with `got`; `path` names the field for messages.
fn compare(path: &str, expected: &Value, got: &Obs) -> std::result::Result<(), String> {
    let mismatch = || format!("{path}: expected {}, got {got}", render(expected));
    match (expected, got) {
        (Value::String(s), Obs::None) if s == "none" => Ok(()),
        (Value::String(s), _) if s == "none" => Err(mismatch()),
        (Value::Boolean(b), Obs::Bool(g)) => (b == g).then_some(()).ok_or_else(mismatch),
        (Value::Integer(_) | Value::String(_), Obs::Num(g)) => {
            let want = as_u64(expected).map_err(|e| format!("{path}: {e}"))?;
            (want == *g).then_some(()).ok_or_else(mismatch)
        }
        (Value::Array(items), Obs::List(got_items)) => {
            if items.len() != got_items.len() {
                return Err(mismatch());
            }
            for (i, (e, g)) in items.iter().zip(got_items).enumerate() {
                compare(&format!("{path}[{i}]"), e, g).map_err(|_| mismatch())?;
            }
            Ok(())
        }
        (Value::Table(t), Obs::Map(m)) => {
            for (k, v) in t {
                let sub = format!("{path}.{k}");
                match m.get(k) {
                    Some(g) => compare(&sub, v, g)?,
                    None => return Err(format!("{sub}: expected {}, got nothing", render(v))),
                }
            }
            Ok(())
        }
        _ => Err(mismatch()),
    }
}

fn rd32(buf: &[u8], off: usize) -> Option<u64> {
    let b = buf.get(off..off.checked_add(4)?)?;
    Some(u64::from(u32::from_le_bytes(b.try_into().ok()?)))
}

fn rd64(buf: &[u8], off: usize) -> Option<u64> {
    let b = buf.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

fn put(fields: &mut Fields, name: &str, v: Option<u64>) {
    if let Some(v) = v {
        fields.insert(name.to_string(), Obs::Num(v));
    }
}

/// Which capability id space a chain belongs to.
#[derive(Clone, Copy)]
enum CapSpace {
    Device,
    Region,
    Type1,
}

fn pairs(buf: &[u8], off: usize, n: u64) -> Obs {
    let mut list = Vec::new();
    for i in 0..n.min(4096) as usize {
        let at = off + 16 * i;
        match (rd64(buf, at), rd64(buf, at + 8)) {
            (Some(a), Some(b)) => list.push(Obs::List(vec![Obs::Num(a), Obs::Num(b)])),
            _ => break,
        }
    }
    Obs::List(list)
}

/// Walks the capability chain starting at `cap_offset` and decodes each capability.
fn decode_caps(buf: &[u8], cap_offset: u64, space: CapSpace) -> std::result::Result<Obs, String> {
    let mut caps = Vec::new();
    let mut off = cap_offset as usize;
    let mut guard = 0;
    while off != 0 {
        guard += 1;
        if guard > 64 {
            return Err("capability chain does not end (64 capabilities walked)".to_string());
        }
        let (Some(idver), Some(next)) = (rd32(buf, off), rd32(buf, off + 4)) else {
            return Err(format!(
                "capability header at offset {off} lies outside the {}-byte buffer",
                buf.len()
            ));
        };
        let id = idver & 0xffff;
        let mut f = Fields::new();
        put(&mut f, "offset", Some(off as u64));
        put(&mut f, "id", Some(id));
        put(&mut f, "version", Some(idver >> 16));
        put(&mut f, "next", Some(next));
        match (space, id) {
            (CapSpace::Region, 1) => {
                let nr = rd32(buf, off + 8);
                put(&mut f, "nr_areas", nr);
                f.insert("areas".into(), pairs(buf, off + 16, nr.unwrap_or(0)));
            }
            (CapSpace::Region, 2) => {
                put(&mut f, "type", rd32(buf, off + 8));
                put(&mut f, "subtype", rd32(buf, off + 12));
            }
            (CapSpace::Type1, 1) => {
                let nr = rd32(buf, off + 8);
                put(&mut f, "nr_iovas", nr);
                f.insert("iova_ranges".into(), pairs(buf, off + 16, nr.unwrap_or(0)));
            }
            (CapSpace::Type1, 2) => {
                put(&mut f, "flags", rd32(buf, off + 8));
                put(&mut f, "pgsize_bitmap", rd64(buf, off + 16));
                put(&mut f, "max_dirty_bitmap_size", rd64(buf, off + 24));
            }
            (CapSpace::Type1, 3) => put(&mut f, "avail", rd32(buf, off + 8)),
            _ => {}
        }
        caps.push(Obs::Map(f));
        if next != 0 && next as usize <= off {
            return Err(format!(
                "capability at offset {off} links backwards to {next}"
            ));
        }
        off = next as usize;
    }
    Ok(Obs::List(caps))
}

// ------------------------------------------------------------------------------------------
// Step execution
// ------------------------------------------------------------------------------------------

/// Outcome of performing one operation.
struct Done {
    /// The operation's return value or errno.
    result: Result<i64>,
    /// Fields written back (ioctl `out`) or observed (ASSERT_*).
    fields: Fields,
    /// The operation is an ASSERT (its expect table lists observed fields directly).
    assert: bool,
}

impl Done {
    fn ret(result: Result<i64>) -> Done {
        Done {
            result,
            fields: Fields::new(),
            assert: false,
        }
    }

    fn out(result: Result<i64>, fields: Fields) -> Done {
        Done {
            result,
            fields,
            assert: false,
        }
    }

    fn assert(fields: Fields) -> Done {
        Done {
            result: Ok(0),
            fields,
            assert: true,
        }
    }
}

struct Ctx<'m> {
    machine: Recorder<'m>,
    iommu: FixtureIommu,
    memory: FixtureMemory,
    handles: BTreeMap<String, i32>,
}

type StepResult<T> = std::result::Result<T, String>;

struct Operands<'a> {
    step: &'a toml::Table,
    used: Vec<&'static str>,
}

impl<'a> Operands<'a> {
    fn opt(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.push(key);
        self.step.get(key)
    }

    fn req(&mut self, key: &'static str) -> StepResult<&'a Value> {
        self.opt(key)
            .ok_or_else(|| format!("missing operand `{key}`"))
    }

    fn u64(&mut self, key: &'static str) -> StepResult<u64> {
        as_u64(self.req(key)?).map_err(|e| format!("operand `{key}`: {e}"))
    }

    fn u64_or(&mut self, key: &'static str, default: u64) -> StepResult<u64> {
        match self.opt(key) {
            Some(v) => as_u64(v).map_err(|e| format!("operand `{key}`: {e}")),
            None => Ok(default),
        }
    }

    fn u32(&mut self, key: &'static str) -> StepResult<u32> {
        as_u32(self.req(key)?).map_err(|e| format!("operand `{key}`: {e}"))
    }

    fn u32_or(&mut self, key: &'static str, default: u32) -> StepResult<u32> {
        match self.opt(key) {
            Some(v) => as_u32(v).map_err(|e| format!("operand `{key}`: {e}")),
            None => Ok(default),
        }
    }

    fn str(&mut self, key: &'static str) -> StepResult<&'a str> {
        as_str(self.req(key)?).map_err(|e| format!("operand `{key}`: {e}"))
    }

    fn flags(&mut self, key: &'static str, table: FlagTable) -> StepResult<u64> {
        match self.opt(key) {
            Some(v) => as_flags(v, table).map_err(|e| format!("operand `{key}`: {e}")),
            None => Ok(0),
        }
    }

    fn unused(&self) -> Option<&'a str> {
        self.step
            .keys()
            .find(|k| !matches!(k.as_str(), "op" | "expect") && !self.used.contains(&k.as_str()))
            .map(String::as_str)
    }
}

fn errno_or_ret(result: &Result<i64>) -> String {
    match result {
        Ok(v) => format!("ret {v}"),
        Err(e) => format!("errno {}", e.name()),
    }
}

fn buffer(len: usize) -> Vec<u8> {
    vec![0u8; len]
}

fn w32(buf: &mut [u8], off: usize, v: u32) {
    if let Some(b) = buf.get_mut(off..off + 4) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

fn w64(buf: &mut [u8], off: usize, v: u64) {
    if let Some(b) = buf.get_mut(off..off + 8) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// Offset at which the harness places the caller's dirty bitmap inside the ioctl buffer,
/// and the value written into the `data` field of `struct vfio_bitmap`.
const BITMAP_DATA_OFFSET: usize = 48;

impl Ctx<'_> {
    fn handle(&self, ops: &mut Operands<'_>, key: &'static str) -> StepResult<i32> {
        let name = ops.str(key)?;
        self.handles
            .get(name)
            .copied()
            .ok_or_else(|| format!("unknown handle `{name}` (never opened in this case)"))
    }

    fn step(&mut self, step: &toml::Table) -> StepResult<()> {
        let op = step_op(step).ok_or("step has no `op` string")?;
        let expect = match step.get("expect") {
            Some(v) => as_table(v).map_err(|e| format!("`expect`: {e}"))?.clone(),
            None => toml::Table::new(),
        };
        let mut ops = Operands {
            step,
            used: Vec::new(),
        };
        let done = self.perform(op, &mut ops)?;
        let fields = Obs::Map(done.fields.clone());
        let outcome = errno_or_ret(&done.result);
        self.machine.note(format!("{op} {outcome} {fields}"));
        if let Some(k) = ops.unused() {
            return Err(format!("unknown operand `{k}` for {op}"));
        }
        if done.assert {
            if expect.is_empty() {
                return Err("ASSERT step has an empty `expect`".to_string());
            }
            for (k, v) in &expect {
                match done.fields.get(k) {
                    Some(g) => compare(k, v, g)?,
                    None => {
                        return Err(format!(
                            "unknown expectation `{k}` for {op} (observed: {})",
                            Obs::Map(done.fields.clone())
                        ))
                    }
                }
            }
            return Ok(());
        }
        for k in expect.keys() {
            if !matches!(k.as_str(), "ret" | "errno" | "out") {
                return Err(format!("unknown expectation `{k}`"));
            }
        }
        if let Some(want) = expect.get("errno") {
            let want = as_errno(want).map_err(|e| format!("expect.errno: {e}"))?;
            return match done.result {
                Err(e) if e == want => Ok(()),
                other => Err(format!(
                    "expected errno {}, got {}",
                    want.name(),
                    errno_or_ret(&other)
                )),
            };
        }
        let ret = match done.result {
            Ok(r) => r,
            Err(e) => {
                let want = match expect.get("ret") {
                    Some(v) => render(v),
                    None => "success".to_string(),
                };
                return Err(format!("expected ret {want}, got errno {}", e.name()));
            }
        };
        if let Some(want) = expect.get("ret") {
            match want {
                Value::String(s) if s == "fd" => {
                    if ret < 0 || ret > i64::from(i32::MAX) {
                        return Err(format!("expected a new handle, got ret {ret}"));
                    }
                }
                other => {
                    let w = as_i64(other).map_err(|e| format!("expect.ret: {e}"))?;
                    if w != ret {
                        return Err(format!("expected ret {w}, got ret {ret}"));
                    }
                }
            }
        }
        if let Some(out) = expect.get("out") {
            let out = as_table(out).map_err(|e| format!("expect.out: {e}"))?;
            for (k, v) in out {
                match done.fields.get(k) {
                    Some(g) => compare(k, v, g)?,
                    None => {
                        return Err(format!(
                            "out.{k}: {op} writes back no field `{k}` (known: {})",
                            done.fields.keys().cloned().collect::<Vec<_>>().join(" ")
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    fn remember(&mut self, ops: &mut Operands<'_>, result: &Result<i64>) -> StepResult<()> {
        let name = match ops.opt("as") {
            Some(v) => as_str(v).map_err(|e| format!("operand `as`: {e}"))?,
            None => return Ok(()),
        };
        if let Ok(fd) = result {
            let fd = i32::try_from(*fd).map_err(|_| format!("handle {fd} does not fit an i32"))?;
            self.handles.insert(name.to_string(), fd);
        }
        Ok(())
    }

    fn perform(&mut self, op: &str, ops: &mut Operands<'_>) -> StepResult<Done> {
        Ok(match op {
            "OPEN_CONTAINER" => {
                let r = self.machine.open_container().map(i64::from);
                self.remember(ops, &r)?;
                Done::ret(r)
            }
            "OPEN_GROUP" => {
                let group = ops.u32("group")?;
                let r = self.machine.open_group(group).map(i64::from);
                self.remember(ops, &r)?;
                Done::ret(r)
            }
            "CLOSE" => {
                let fd = self.handle(ops, "fd")?;
                Done::ret(self.machine.close(fd).map(|()| 0))
            }
            "GET_API_VERSION" => self.simple(ops, ioctl::GET_API_VERSION, false)?,
            "CHECK_EXTENSION" => self.simple(ops, ioctl::CHECK_EXTENSION, true)?,
            "SET_IOMMU" => self.simple(ops, ioctl::SET_IOMMU, true)?,
            "GROUP_UNSET_CONTAINER" => self.simple(ops, ioctl::GROUP_UNSET_CONTAINER, false)?,
            "DEVICE_RESET" => self.simple(ops, ioctl::DEVICE_RESET, false)?,
            "RAW_IOCTL" => {
                let fd = self.handle(ops, "fd")?;
                let request = ops.u32("request")?;
                Done::ret(self.machine.ioctl(fd, request, IoctlArg::None))
            }
            "GROUP_GET_STATUS" => {
                let (r, buf) = self.info_query(ops, ioctl::GROUP_GET_STATUS, 8, false)?;
                let mut f = Fields::new();
                put(&mut f, "argsz", rd32(&buf, 0));
                put(&mut f, "flags", rd32(&buf, 4));
                Done::out(r, f)
            }
            "GROUP_SET_CONTAINER" => {
                let fd = self.handle(ops, "fd")?;
                let container = match (ops.opt("container"), ops.opt("container_raw")) {
                    (Some(_), Some(_)) => {
                        return Err("give `container` or `container_raw`, not both".into())
                    }
                    (Some(_), None) => self.handle(ops, "container")?,
                    (None, Some(v)) => {
                        let raw = as_i64(v).map_err(|e| format!("operand `container_raw`: {e}"))?;
                        raw as i32
                    }
                    (None, None) => return Err("missing operand `container`".into()),
                };
                let mut buf = container.to_le_bytes().to_vec();
                Done::ret(self.machine.ioctl(
                    fd,
                    ioctl::GROUP_SET_CONTAINER,
                    IoctlArg::Buffer(&mut buf),
                ))
            }
            "GROUP_GET_DEVICE_FD" => {
                let fd = self.handle(ops, "fd")?;
                let mut name: Vec<u8> = match (ops.opt("name"), ops.opt("name_len")) {
                    (Some(n), None) => as_str(n)
                        .map_err(|e| format!("operand `name`: {e}"))?
                        .as_bytes()
                        .to_vec(),
                    (None, Some(l)) => {
                        let len = as_u64(l).map_err(|e| format!("operand `name_len`: {e}"))?;
                        if len > 1 << 20 {
                            return Err(format!("operand `name_len`: {len} is unreasonably long"));
                        }
                        vec![b'a'; len as usize]
                    }
                    _ => return Err("give exactly one of `name` and `name_len`".into()),
                };
                name.push(0);
                let r =
                    self.machine
                        .ioctl(fd, ioctl::GROUP_GET_DEVICE_FD, IoctlArg::Buffer(&mut name));
                self.remember(ops, &r)?;
                Done::ret(r)
            }
            "DEVICE_GET_INFO" => {
                let (r, buf) = self.info_query(ops, ioctl::DEVICE_GET_INFO, 24, false)?;
                let mut f = Fields::new();
                for (name, off) in [
                    ("argsz", 0),
                    ("flags", 4),
                    ("num_regions", 8),
                    ("num_irqs", 12),
                    ("cap_offset", 16),
                ] {
                    put(&mut f, name, rd32(&buf, off));
                }
                self.caps_field(&mut f, &buf, CapSpace::Device, r.is_ok())?;
                Done::out(r, f)
            }
            "DEVICE_GET_REGION_INFO" => {
                let (r, buf) = self.info_query(ops, ioctl::DEVICE_GET_REGION_INFO, 32, true)?;
                let mut f = Fields::new();
                for (name, off) in [("argsz", 0), ("flags", 4), ("index", 8), ("cap_offset", 12)] {
                    put(&mut f, name, rd32(&buf, off));
                }
                put(&mut f, "size", rd64(&buf, 16));
                put(&mut f, "offset", rd64(&buf, 24));
                self.caps_field(&mut f, &buf, CapSpace::Region, r.is_ok())?;
                Done::out(r, f)
            }
            "DEVICE_GET_IRQ_INFO" => {
                let (r, buf) = self.info_query(ops, ioctl::DEVICE_GET_IRQ_INFO, 16, true)?;
                let mut f = Fields::new();
                for (name, off) in [("argsz", 0), ("flags", 4), ("index", 8), ("count", 12)] {
                    put(&mut f, name, rd32(&buf, off));
                }
                Done::out(r, f)
            }
            "SET_IRQS_VALIDATE" => {
                let num_irqs = ops.u32("num_irqs")?;
                let max_irq_type = ops.u32("max_irq_type")?;
                let flags = ops.flags("flags", SET_IRQS_FLAGS)?;
                let hdr = uapi::IrqSet {
                    argsz: ops.u32("argsz")?,
                    flags: u32::try_from(flags)
                        .map_err(|_| format!("operand `flags`: {flags:#x} exceeds 32 bits"))?,
                    index: ops.u32_or("index", 0)?,
                    start: ops.u32_or("start", 0)?,
                    count: ops.u32_or("count", 0)?,
                };
                let r = validate_irq_set(&hdr, num_irqs, max_irq_type);
                let mut f = Fields::new();
                if let Ok(size) = r {
                    put(&mut f, "data_size", Some(size as u64));
                }
                Done::out(r.map(|_| 0), f)
            }
            "IOMMU_GET_INFO" => {
                let (r, buf) = self.info_query(ops, ioctl::IOMMU_GET_INFO, 24, false)?;
                let mut f = Fields::new();
                put(&mut f, "argsz", rd32(&buf, 0));
                put(&mut f, "flags", rd32(&buf, 4));
                put(&mut f, "iova_pgsizes", rd64(&buf, 8));
                put(&mut f, "cap_offset", rd32(&buf, 16));
                self.caps_field(&mut f, &buf, CapSpace::Type1, r.is_ok())?;
                Done::out(r, f)
            }
            "MAP_DMA" => {
                let fd = self.handle(ops, "fd")?;
                let flags = ops.flags("flags", MAP_DMA_FLAGS)?;
                let argsz = ops.u32_or("argsz", 32)?;
                let mut buf = buffer((argsz as usize).max(32));
                w32(&mut buf, 0, argsz);
                w32(&mut buf, 4, flags as u32);
                w64(&mut buf, 8, ops.u64_or("vaddr", 0)?);
                w64(&mut buf, 16, ops.u64_or("iova", 0)?);
                w64(&mut buf, 24, ops.u64_or("size", 0)?);
                if flags > u64::from(u32::MAX) {
                    return Err(format!("operand `flags`: {flags:#x} exceeds 32 bits"));
                }
                Done::ret(
                    self.machine
                        .ioctl(fd, ioctl::IOMMU_MAP_DMA, IoctlArg::Buffer(&mut buf)),
                )
            }
            "UNMAP_DMA" => {
                let fd = self.handle(ops, "fd")?;
                let flags = ops.flags("flags", UNMAP_DMA_FLAGS)?;
                let bitmap = self.bitmap_operand(ops)?;
                let natural = match bitmap {
                    Some((_, size)) => BITMAP_DATA_OFFSET + size,
                    None => 24,
                };
                let argsz = ops.u32_or("argsz", if bitmap.is_some() { 48 } else { 24 })?;
                let mut buf = buffer((argsz as usize).max(natural));
                w32(&mut buf, 0, argsz);
                w32(&mut buf, 4, flags as u32);
                w64(&mut buf, 8, ops.u64_or("iova", 0)?);
                w64(&mut buf, 16, ops.u64_or("size", 0)?);
                if let Some((pgsize, size)) = bitmap {
                    w64(&mut buf, 24, pgsize);
                    w64(&mut buf, 32, size as u64);
                    w64(&mut buf, 40, BITMAP_DATA_OFFSET as u64);
                }
                let r = self
                    .machine
                    .ioctl(fd, ioctl::IOMMU_UNMAP_DMA, IoctlArg::Buffer(&mut buf));
                let mut f = Fields::new();
                put(&mut f, "size", rd64(&buf, 16));
                if let Some((_, size)) = bitmap {
                    f.insert("bitmap".into(), bitmap_words(&buf, size));
                }
                Done::out(r, f)
            }
            "DIRTY_PAGES" => {
                let fd = self.handle(ops, "fd")?;
                let flags = ops.flags("flags", DIRTY_PAGES_FLAGS)?;
                let get_bitmap = flags & 0x4 != 0;
                let bitmap = self.bitmap_operand(ops)?;
                let natural = match bitmap {
                    Some((_, size)) => BITMAP_DATA_OFFSET + size,
                    None if get_bitmap => 48,
                    None => 8,
                };
                let argsz = ops.u32_or("argsz", if get_bitmap { 48 } else { 8 })?;
                let mut buf = buffer((argsz as usize).max(natural));
                w32(&mut buf, 0, argsz);
                w32(&mut buf, 4, flags as u32);
                let iova = ops.u64_or("iova", 0)?;
                let size = ops.u64_or("size", 0)?;
                if get_bitmap || bitmap.is_some() {
                    w64(&mut buf, 8, iova);
                    w64(&mut buf, 16, size);
                }
                if let Some((pgsize, bsize)) = bitmap {
                    w64(&mut buf, 24, pgsize);
                    w64(&mut buf, 32, bsize as u64);
                    w64(&mut buf, 40, BITMAP_DATA_OFFSET as u64);
                }
                let r =
                    self.machine
                        .ioctl(fd, ioctl::IOMMU_DIRTY_PAGES, IoctlArg::Buffer(&mut buf));
                let mut f = Fields::new();
                if let Some((_, bsize)) = bitmap {
                    f.insert("bitmap".into(), bitmap_words(&buf, bsize));
                }
                Done::out(r, f)
            }
            "HOST_BIND_DRIVER" => {
                let device = ops.str("device")?;
                let driver = match ops.str("driver")? {
                    "host" => Binding::Host,
                    "stub" => Binding::Stub,
                    other => {
                        return Err(format!(
                            "operand `driver`: `{other}` (expected \"host\" or \"stub\")"
                        ))
                    }
                };
                Done::ret(self.iommu.bind_driver(device, driver).map(|()| 0))
            }
            "HOST_UNBIND_DRIVER" => {
                let device = ops.str("device")?;
                Done::ret(self.iommu.unbind_driver(device).map(|()| 0))
            }
            "HOST_UNREGISTER_DEVICE" => {
                let device = ops.str("device")?;
                Done::ret(self.machine.unregister_device(device).map(|()| 0))
            }
            "ADVANCE_TIME" => {
                let seconds = ops.u64("seconds")?;
                let ms = seconds
                    .checked_mul(1000)
                    .ok_or_else(|| format!("operand `seconds`: {seconds} is too large"))?;
                self.machine.advance_time(ms);
                Done::ret(Ok(0))
            }
            "ASSERT_MAPPINGS" => {
                let fd = self.handle(ops, "fd")?;
                let maps = self
                    .machine
                    .container_mappings(fd)
                    .map_err(|e| format!("cannot read the container's mappings: {}", e.name()))?;
                let list = maps
                    .into_iter()
                    .map(|(i, s)| Obs::List(vec![Obs::Num(i), Obs::Num(s)]))
                    .collect();
                Done::assert(Fields::from([("mappings".to_string(), Obs::List(list))]))
            }
            "ASSERT_LOCKED_PAGES" => {
                let raw = self.memory.locked_raw();
                if raw < 0 {
                    return Err(format!("locked-page count went negative ({raw})"));
                }
                Done::assert(Fields::from([("pages".to_string(), Obs::Num(raw as u64))]))
            }
            "ASSERT_DOMAINS" => {
                let fd = self.handle(ops, "fd")?;
                let n = self
                    .machine
                    .container_domain_count(fd)
                    .map_err(|e| format!("cannot count the container's domains: {}", e.name()))?;
                Done::assert(Fields::from([("count".to_string(), Obs::Num(n as u64))]))
            }
            "ASSERT_TRANSLATION" => {
                let group = ops.u32("group")?;
                let iova = ops.u64("iova")?;
                let phys = self
                    .machine
                    .group_domain(group)
                    .and_then(|d| self.iommu.translate(d, iova));
                Done::assert(Fields::from([(
                    "phys".to_string(),
                    phys.map_or(Obs::None, Obs::Num),
                )]))
            }
            "ASSERT_DEVICE" => {
                let device = ops.str("device")?;
                let (open_count, open_calls, close_calls) = self
                    .machine
                    .device_stats(device)
                    .ok_or_else(|| format!("no statistics for device `{device}`"))?;
                Done::assert(Fields::from([
                    ("open_count".to_string(), Obs::Num(open_count.into())),
                    ("open_calls".to_string(), Obs::Num(open_calls.into())),
                    ("close_calls".to_string(), Obs::Num(close_calls.into())),
                ]))
            }
            "ASSERT_UNREGISTER" => {
                let device = ops.str("device")?;
                let (done, calls) = self
                    .machine
                    .unregister_status(device)
                    .ok_or_else(|| format!("device `{device}` is not being unregistered"))?;
                Done::assert(Fields::from([
                    ("done".to_string(), Obs::Bool(done)),
                    ("request_calls".to_string(), Obs::Num(calls.into())),
                ]))
            }
            "ASSERT_INVALID_VADDR" => {
                let fd = self.handle(ops, "fd")?;
                let iovas = self.machine.invalid_vaddr_iovas(fd).map_err(|e| {
                    format!("cannot read the container's invalid vaddrs: {}", e.name())
                })?;
                Done::assert(Fields::from([(
                    "iovas".to_string(),
                    Obs::List(iovas.into_iter().map(Obs::Num).collect()),
                )]))
            }
            other => return Err(format!("unknown op `{other}`")),
        })
    }

    /// GET_API_VERSION-like ioctls: a handle and an optional integer argument.
    /// A `GET_*INFO`/`GET_STATUS` query: operands `fd`, `index` (where `indexed`, written
    /// at offset 8) and `argsz` (default `size`, written at 0) into a buffer of at least
    /// `size` bytes; the result and the buffer the ioctl wrote back.
    fn info_query(
        &mut self,
        ops: &mut Operands<'_>,
        request: u32,
        size: u32,
        indexed: bool,
    ) -> StepResult<(Result<i64>, Vec<u8>)> {
        let fd = self.handle(ops, "fd")?;
        let index = if indexed {
            Some(ops.u32("index")?)
        } else {
            None
        };
        let argsz = ops.u32_or("argsz", size)?;
        let mut buf = buffer(argsz.max(size) as usize);
        w32(&mut buf, 0, argsz);
        if let Some(index) = index {
            w32(&mut buf, 8, index);
        }
        let r = self.machine.ioctl(fd, request, IoctlArg::Buffer(&mut buf));
        Ok((r, buf))
    }

    fn simple(&mut self, ops: &mut Operands<'_>, request: u32, value: bool) -> StepResult<Done> {
        let fd = self.handle(ops, "fd")?;
        let arg = if value {
            IoctlArg::Value(ops.u64("arg")?)
        } else {
            IoctlArg::None
        };
        Ok(Done::ret(self.machine.ioctl(fd, request, arg)))
    }

    fn bitmap_operand(&mut self, ops: &mut Operands<'_>) -> StepResult<Option<(u64, usize)>> {
        let Some(v) = ops.opt("bitmap") else {
            return Ok(None);
        };
        let t = as_table(v).map_err(|e| format!("operand `bitmap`: {e}"))?;
        let pgsize = as_u64(
            t.get("pgsize")
                .ok_or("operand `bitmap`: missing `pgsize`")?,
        )
        .map_err(|e| format!("operand `bitmap.pgsize`: {e}"))?;
        let size = as_u64(t.get("size").ok_or("operand `bitmap`: missing `size`")?)
            .map_err(|e| format!("operand `bitmap.size`: {e}"))?;
        if size > 1 << 24 {
            return Err(format!(
                "operand `bitmap.size`: {size} is unreasonably large"
            ));
        }
        Ok(Some((pgsize, size as usize)))
    }

    fn caps_field(&self, f: &mut Fields, buf: &[u8], space: CapSpace, ok: bool) -> StepResult<()> {
        if !ok {
            return Ok(());
        }
        let offset = match space {
            CapSpace::Region => rd32(buf, 12),
            CapSpace::Device | CapSpace::Type1 => rd32(buf, 16),
        }
        .unwrap_or(0);
        let caps = decode_caps(buf, offset, space)?;
        f.insert("caps".to_string(), caps);
        Ok(())
    }
}

fn bitmap_words(buf: &[u8], size: usize) -> Obs {
    let words = (0..size / 8)
        .filter_map(|i| rd64(buf, BITMAP_DATA_OFFSET + 8 * i))
        .map(Obs::Num)
        .collect();
    Obs::List(words)
}

/// Totals over a set of case reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Cases that passed.
    pub passed: usize,
    /// Cases that failed.
    pub failed: usize,
    /// Cases that were skipped.
    pub skipped: usize,
}

impl Totals {
    /// Counts the verdicts of `reports`.
    pub fn of<'a>(reports: impl IntoIterator<Item = &'a CaseReport>) -> Totals {
        let mut t = Totals::default();
        for r in reports {
            match r.verdict {
                Verdict::Pass => t.passed += 1,
                Verdict::Fail(_) => t.failed += 1,
                Verdict::Skip(_) => t.skipped += 1,
            }
        }
        t
    }
}

impl fmt::Display for Totals {
    /// The closing line: `N passed, N failed` (`, N skipped` when any were skipped).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)?;
        if self.skipped > 0 {
            write!(f, ", {} skipped", self.skipped)?;
        }
        Ok(())
    }
}
