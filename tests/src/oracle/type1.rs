//! Replay of the oracle's Type1 files (`type1/type1.json`, `type1/type1v2.json`).
//!
//! The oracle ran on an emulated Intel VT-d (QEMU q35). The replay models it from what the
//! file itself reports: the first `GET_INFO` with capabilities gives the page sizes and the
//! valid IOVA ranges, from which the aperture (first start to last end) and the reserved
//! regions (the gaps) of the fixture IOMMU profile are derived. The process memory follows
//! the labels of the file: `buf+…` is a 32 MiB read-write anonymous buffer, `ro_mapping+…`
//! a read-only mapping, `bar_mmap+…` a BAR mmap (device memory), `unmapped_hole+…` and
//! literal addresses are not backed, except the hole's last page (`unmapped_hole+0xff000`),
//! where the Linux 6.1 run's BAR mmap landed (that file maps the BAR through this label). Each step is replayed through the byte-level ioctl
//! dispatcher of a fresh [`vfio_core::vfio::Vfio`] over the fixture platform, with the
//! era of the file, and every value the oracle recorded is compared.

use std::path::Path;
use std::rc::Rc;

use serde_json::Value;
use vfio_core::abi::Arg;
use vfio_core::platform::GroupId;
use vfio_core::type1::{DmaEntry, Type1Config};
use vfio_core::uapi::ioctl;
use vfio_core::vfio::{Config, ContainerSlot, DeviceSlot, Fd, FileSlot, GroupSlot, Storage, Vfio};
use vfio_core::{Era, Errno};

use super::Tally;
use crate::fixture::{Env, FixtureIommu, FixtureMemory, FixtureSpec, TemplateDevice};
use crate::runner::IoctlArg;

/// Virtual address of the oracle's 32 MiB read-write buffer (`buf+…`).
const BUF: u64 = 0x7f00_0000_0000;
/// Virtual address of the read-only mapping (`ro_mapping+…`).
const RO: u64 = 0x7f10_0000_0000;
/// Virtual address of the BAR mmap (`bar_mmap+…`).
const BAR: u64 = 0x7f20_0000_0000;
/// Virtual address of the unbacked hole (`unmapped_hole+…`).
const HOLE: u64 = 0x7f30_0000_0000;

fn num(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s
            .strip_prefix("0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .or_else(|| s.parse().ok()),
        _ => None,
    }
}

fn field(step: &Value, name: &str) -> Option<u64> {
    step.get(name).and_then(num)
}

/// A `vaddr` label of the file as an address of the modelled process.
fn vaddr(text: &Value) -> Option<u64> {
    let s = text.as_str()?;
    for (label, base) in [
        ("buf+", BUF),
        ("ro_mapping+", RO),
        ("bar_mmap+", BAR),
        ("unmapped_hole+", HOLE),
    ] {
        if let Some(off) = s.strip_prefix(label) {
            return base.checked_add(num(&Value::String(off.to_string()))?);
        }
    }
    num(text)
}

/// The fixture of the modelled machine: one group `group` holding one device, an IOMMU
/// profile with `pgsizes` and the valid `ranges`.
fn fixture_toml(group: u64, bdf: &str, pgsizes: u64, ranges: &[(u64, u64)]) -> String {
    let start = ranges.first().map_or(0, |r| r.0);
    let end = ranges.last().map_or(u64::MAX, |r| r.1);
    let reserved: Vec<String> = ranges
        .windows(2)
        .map(|w| format!("[\"{:#x}\", \"{:#x}\", \"msi\"]", w[0].1 + 1, w[1].0 - 1))
        .collect();
    format!(
        r#"
page_size = 4096
dma_entry_limit = 65535
memlock_pages = "unlimited"
lock_cap = false
allow_unsafe_interrupts = false

[[memory]]
vaddr = "{BUF:#x}"
len = "0x2000000"
phys = "0x100000000"
kind = "ram"

[[memory]]
vaddr = "{RO:#x}"
len = "0x100000"
phys = "0x200000000"
kind = "ram_ro"

[[memory]]
vaddr = "{BAR:#x}"
len = "0x100000"
phys = "0xe0000000"
kind = "mmio"

# In the Linux 6.1 run the BAR mmap landed in the last page of the unmapped hole, and the
# file labels it `unmapped_hole+0xff000`: that page is device memory too.
[[memory]]
vaddr = "{HOLE_BAR:#x}"
len = "0x1000"
phys = "0xe0100000"
kind = "mmio"

[iommu_profile.vtd]
ops = "intel-iommu"
pgsize_bitmap = "{pgsizes:#x}"
aperture = ["{start:#x}", "{end:#x}"]
reserved = [{reserved}]
intr_remap = true
enforce_coherency = false

[[group]]
id = {group}
profile = "vtd"
devices = [{{ name = "{bdf}", binding = "vfio", template = "dev" }}]

[device_template.dev]
flags = 3
num_regions = 9
num_irqs = 5
reset = true
regions = []
irqs = []
"#,
        reserved = reserved.join(", "),
        HOLE_BAR = HOLE + 0xff000,
    )
}

/// The page sizes and valid ranges of the first GET_INFO with capabilities in `steps`.
fn platform_of(steps: &[&Value]) -> Option<(u64, Vec<(u64, u64)>)> {
    for step in steps {
        let Some(caps) = step.get("caps").and_then(Value::as_array) else {
            continue;
        };
        let pgsizes = field(step, "iova_pgsizes")?;
        for cap in caps {
            if cap.get("name").and_then(Value::as_str) == Some("IOVA_RANGE") {
                let ranges = cap
                    .get("ranges")?
                    .as_array()?
                    .iter()
                    .filter_map(|r| Some((field(r, "start")?, field(r, "end")?)))
                    .collect();
                return Some((pgsizes, ranges));
            }
        }
    }
    None
}

fn errno_name(result: &Result<i64, Errno>) -> (i64, Option<String>) {
    match result {
        Ok(v) => (*v, None),
        Err(e) => (-1, Some(e.name().to_string())),
    }
}

fn le32(buf: &[u8], at: usize) -> u64 {
    buf.get(at..at + 4).map_or(0, |b| {
        u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    })
}

fn le64(buf: &[u8], at: usize) -> u64 {
    buf.get(at..at + 8).map_or(0, |b| {
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    })
}

fn put32(buf: &mut [u8], at: usize, v: u64) {
    if let Some(b) = buf.get_mut(at..at + 4) {
        b.copy_from_slice(&(v as u32).to_le_bytes());
    }
}

fn put64(buf: &mut [u8], at: usize, v: u64) {
    if let Some(b) = buf.get_mut(at..at + 8) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// Compares the capability chain the project wrote in `buf` with the oracle's `caps`.
fn check_caps(t: &mut Tally, ctx: &str, buf: &[u8], caps: &[Value]) {
    let mut at = le32(buf, 16) as usize;
    for (k, cap) in caps.iter().enumerate() {
        let what = |f: &str| format!("cap[{k}].{f}");
        if let Some(off) = field(cap, "offset") {
            t.check(ctx, &what("offset"), off, at as u64);
        }
        t.check(
            ctx,
            &what("id"),
            field(cap, "id"),
            Some(le32(buf, at) & 0xffff),
        );
        t.check(
            ctx,
            &what("version"),
            field(cap, "version"),
            Some(le32(buf, at) >> 16),
        );
        t.check(
            ctx,
            &what("next"),
            field(cap, "next"),
            Some(le32(buf, at + 4)),
        );
        match cap.get("name").and_then(Value::as_str) {
            Some("MIGRATION") => {
                t.check(
                    ctx,
                    &what("flags"),
                    field(cap, "flags"),
                    Some(le32(buf, at + 8)),
                );
                t.check(
                    ctx,
                    &what("pgsize_bitmap"),
                    field(cap, "pgsize_bitmap"),
                    Some(le64(buf, at + 16)),
                );
                t.check(
                    ctx,
                    &what("max_dirty_bitmap_size"),
                    field(cap, "max_dirty_bitmap_size"),
                    Some(le64(buf, at + 24)),
                );
            }
            Some("DMA_AVAIL") => {
                t.check(
                    ctx,
                    &what("avail"),
                    field(cap, "avail"),
                    Some(le32(buf, at + 8)),
                );
            }
            Some("IOVA_RANGE") => {
                let n = le32(buf, at + 8);
                t.check(ctx, &what("nr_iovas"), field(cap, "nr_iovas"), Some(n));
                let ranges = cap.get("ranges").and_then(Value::as_array);
                for (i, r) in ranges.into_iter().flatten().enumerate() {
                    let base = at + 16 + 16 * i;
                    t.check(
                        ctx,
                        &format!("cap[{k}].ranges[{i}]"),
                        (field(r, "start"), field(r, "end")),
                        (Some(le64(buf, base)), Some(le64(buf, base + 8))),
                    );
                }
            }
            _ => {}
        }
        at = le32(buf, at + 4) as usize;
    }
}

/// Counts the set bits of the bitmap bytes.
fn bits_set(bits: &[u8]) -> u64 {
    bits.iter().map(|b| u64::from(b.count_ones())).sum()
}

/// The replay state: file descriptors of the one container and group.
struct Replay<'v, 's> {
    vfio: &'v mut Vfio<'s, FixtureIommu, FixtureMemory, crate::fixture::TemplateDriver>,
    container: Fd,
    group: Fd,
    group_id: GroupId,
    bdf: String,
    kind: u32,
    /// The device file opened by `GROUP_GET_DEVICE_FD`, closed before the group leaves.
    device: Option<Fd>,
    /// Drive the typed API through the harness's own encoder
    /// ([`crate::registry::typed_ioctl`]) instead of the byte-level dispatcher.
    typed: bool,
}

impl Replay<'_, '_> {
    fn ioctl(&mut self, fd: Fd, request: u32, buf: &mut [u8]) -> Result<i64, Errno> {
        self.call(fd, request, Arg::Buffer(buf))
    }

    /// One ioctl through the selected path: `Vfio::ioctl` (ABI) or the typed API.
    fn call(&mut self, fd: Fd, request: u32, arg: Arg<'_>) -> Result<i64, Errno> {
        if !self.typed {
            return self.vfio.ioctl(fd, request, arg);
        }
        let arg = match arg {
            Arg::None => IoctlArg::None,
            Arg::Value(v) => IoctlArg::Value(v),
            Arg::Buffer(b) => IoctlArg::Buffer(b),
        };
        crate::registry::typed_ioctl(self.vfio, fd, request, arg)
    }

    fn step(&mut self, t: &mut Tally, ctx: &str, step: &Value) {
        let op = step.get("op").and_then(Value::as_str).unwrap_or("");
        let case = step.get("case").and_then(Value::as_str).unwrap_or("");
        let expect = (
            step.get("ret").and_then(Value::as_i64).unwrap_or(0),
            step.get("errno")
                .and_then(Value::as_str)
                .map(str::to_string),
        );
        let check_ret = |t: &mut Tally, r: &Result<i64, Errno>| {
            let got = errno_name(r);
            let got = (if got.0 > 0 { 0 } else { got.0 }, got.1);
            t.check(ctx, "ret/errno", expect.clone(), got);
        };
        match op {
            "NOTE" => {}
            "GROUP_SET_CONTAINER" => {
                if case == "new container" {
                    // A fresh container for the extra steps.
                    let _ = self.vfio.close(self.container);
                    match self.vfio.open_container() {
                        Ok(fd) => self.container = fd,
                        Err(e) => t.check(ctx, "open container", "ok", e.name()),
                    }
                }
                let mut buf = self.container.raw().to_le_bytes().to_vec();
                let r = self.ioctl(self.group, ioctl::GROUP_SET_CONTAINER, &mut buf);
                check_ret(t, &r);
            }
            "GROUP_UNSET_CONTAINER" => {
                // The probe closed its device file before leaving the container.
                if let Some(dev) = self.device.take() {
                    let _ = self.vfio.close(dev);
                }
                let r = self.call(self.group, ioctl::GROUP_UNSET_CONTAINER, Arg::None);
                check_ret(t, &r);
            }
            "GROUP_GET_DEVICE_FD" => {
                let mut name = self.bdf.clone().into_bytes();
                name.push(0);
                let r = self.ioctl(self.group, ioctl::GROUP_GET_DEVICE_FD, &mut name);
                if let Ok(raw) = r {
                    self.device = i32::try_from(raw).ok().map(Fd::from_raw);
                }
                check_ret(t, &r);
            }
            "SET_IOMMU" => {
                let kind = if case.contains("SPAPR") {
                    2
                } else if case.contains("NOIOMMU") {
                    8
                } else {
                    self.kind
                };
                let r = self.call(
                    self.container,
                    ioctl::SET_IOMMU,
                    Arg::Value(u64::from(kind)),
                );
                check_ret(t, &r);
            }
            "CHECK_EXTENSION" => {
                let names = [
                    ("0", 0),
                    ("TYPE1", 1),
                    ("SPAPR_TCE", 2),
                    ("TYPE1v2", 3),
                    ("DMA_CC", 4),
                    ("EEH", 5),
                    ("TYPE1_NESTING", 6),
                    ("SPAPR_TCE_v2", 7),
                    ("NOIOMMU", 8),
                    ("UNMAP_ALL", 9),
                    ("UPDATE_VADDR", 10),
                    ("11", 11),
                ];
                let Some(ext) = step.get("extensions") else {
                    return;
                };
                for (name, arg) in names {
                    let Some(want) = ext.get(name).and_then(Value::as_i64) else {
                        continue;
                    };
                    let got = self
                        .call(self.container, ioctl::CHECK_EXTENSION, Arg::Value(arg))
                        .unwrap_or(-1);
                    t.check(ctx, &format!("extension {name}"), want, got);
                }
            }
            "GET_INFO" => {
                let argsz = field(step, "argsz").unwrap_or(24);
                let mut buf = vec![0u8; (argsz as usize).max(24)];
                put32(&mut buf, 0, argsz);
                let r = self.ioctl(self.container, ioctl::IOMMU_GET_INFO, &mut buf);
                check_ret(t, &r);
                if r.is_err() {
                    return;
                }
                t.check(
                    ctx,
                    "argsz_out",
                    field(step, "argsz_out"),
                    Some(le32(&buf, 0)),
                );
                t.check(ctx, "flags", field(step, "flags"), Some(le32(&buf, 4)));
                t.check(
                    ctx,
                    "iova_pgsizes",
                    field(step, "iova_pgsizes"),
                    Some(le64(&buf, 8)),
                );
                if let Some(off) = field(step, "cap_offset") {
                    t.check(ctx, "cap_offset", off, le32(&buf, 16));
                }
                if let Some(caps) = step.get("caps").and_then(Value::as_array) {
                    check_caps(t, ctx, &buf, caps);
                }
            }
            "MAP_DMA" => {
                let mut buf = vec![0u8; 32];
                put32(&mut buf, 0, field(step, "argsz").unwrap_or(32));
                put32(&mut buf, 4, field(step, "flags").unwrap_or(0));
                put64(&mut buf, 8, step.get("vaddr").and_then(vaddr).unwrap_or(0));
                put64(&mut buf, 16, field(step, "iova").unwrap_or(0));
                put64(&mut buf, 24, field(step, "size").unwrap_or(0));
                let r = self.ioctl(self.container, ioctl::IOMMU_MAP_DMA, &mut buf);
                check_ret(t, &r);
            }
            "UNMAP_DMA" => {
                // The dirty-bitmap unmap of E carries no fields in the file: E is
                // [0x2000000, +0x10000), reported with a 4 KiB-page bitmap of 8 bytes.
                let dirty = case.contains("GET_DIRTY_BITMAP while tracking");
                let (argsz, flags, iova, size) = if dirty {
                    (48, 1, 0x200_0000, 0x1_0000)
                } else {
                    (
                        field(step, "argsz").unwrap_or(24),
                        field(step, "flags").unwrap_or(0),
                        field(step, "iova").unwrap_or(0),
                        field(step, "size").unwrap_or(0),
                    )
                };
                let mut buf = vec![0u8; 48 + 8];
                put32(&mut buf, 0, argsz);
                put32(&mut buf, 4, flags);
                put64(&mut buf, 8, iova);
                put64(&mut buf, 16, size);
                if dirty {
                    put64(&mut buf, 24, 0x1000);
                    put64(&mut buf, 32, 8);
                    // vfio_bitmap.data: the bitmap follows the structure (the ABI's
                    // convention, which the typed encoder reads from this field).
                    put64(&mut buf, 40, 48);
                }
                let r = self.ioctl(self.container, ioctl::IOMMU_UNMAP_DMA, &mut buf);
                check_ret(t, &r);
                if let Some(want) = field(step, "size_out") {
                    t.check(ctx, "size_out", want, le64(&buf, 16));
                }
                if let Some(want) = field(step, "bits_set") {
                    t.check(ctx, "bits_set", want, bits_set(&buf[48..]));
                }
            }
            "DIRTY_PAGES" => {
                let flags = field(step, "flags").unwrap_or(0);
                let bitmap_size = field(step, "bitmap_size").unwrap_or(0);
                let argsz = if case.contains("argsz without range") {
                    8
                } else if flags == 4 {
                    48
                } else {
                    8
                };
                let mut buf = vec![0u8; 48 + bitmap_size as usize];
                put32(&mut buf, 0, argsz);
                put32(&mut buf, 4, flags);
                put64(&mut buf, 8, field(step, "iova").unwrap_or(0));
                put64(&mut buf, 16, field(step, "size").unwrap_or(0));
                put64(&mut buf, 24, field(step, "pgsize").unwrap_or(0));
                put64(&mut buf, 32, bitmap_size);
                put64(&mut buf, 40, 48);
                let r = self.ioctl(self.container, ioctl::IOMMU_DIRTY_PAGES, &mut buf);
                check_ret(t, &r);
                if let Some(want) = field(step, "bits_set") {
                    t.check(ctx, "bits_set", want, bits_set(&buf[48..]));
                }
            }
            other => {
                t.exclusions.push(format!("{ctx}: op {other} not replayed"));
            }
        }
    }
}

/// Replays a Type1 oracle file against the project's Type1 backend with era `era`.
///
/// # Errors
/// A message when the file cannot be read or parsed, or lacks the GET_INFO that describes
/// the platform.
pub fn replay(path: &Path, era: Era) -> Result<Tally, String> {
    let abi = replay_path(path, era, false)?;
    let typed = replay_path(path, era, true)?;
    let mut tally = abi.clone();
    tally.check(
        &path.display().to_string(),
        "typed API and dispatcher agree (passed, failed)",
        (abi.passed, abi.failed),
        (typed.passed, typed.failed),
    );
    tally.failed += typed.failed;
    tally.mismatches.extend(
        typed
            .mismatches
            .into_iter()
            .map(|m| format!("[typed path] {m}")),
    );
    Ok(tally)
}

/// Replays one Type1 file through one path (`typed`: the typed API, else `Vfio::ioctl`).
fn replay_path(path: &Path, era: Era, typed: bool) -> Result<Tally, String> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{name}: {e}"))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
    let steps: Vec<&Value> = ["steps", "extra_steps"]
        .iter()
        .filter_map(|k| doc.get(*k).and_then(Value::as_array))
        .flatten()
        .collect();
    let kind =
        field(&doc, "iommu_type_value").ok_or(format!("{name}: no iommu_type_value"))? as u32;
    let bdf = doc
        .get("bdf")
        .and_then(Value::as_str)
        .unwrap_or("0000:00:10.0")
        .to_string();
    let group_id = steps
        .iter()
        .find_map(|s| {
            (s.get("op")?.as_str()? == "GROUP_SET_CONTAINER").then(|| field(s, "group"))?
        })
        .ok_or(format!("{name}: no GROUP_SET_CONTAINER step"))?;
    let (pgsizes, ranges) =
        platform_of(&steps).ok_or(format!("{name}: no GET_INFO with an IOVA_RANGE capability"))?;
    let toml_text = fixture_toml(group_id, &bdf, pgsizes, &ranges);
    let value: toml::Value =
        toml::from_str(&toml_text).map_err(|e| format!("{name}: fixture: {e}"))?;
    let spec = FixtureSpec::from_toml(&value).map_err(|e| format!("{name}: fixture: {e}"))?;
    let env = Env::from_toml(&toml::Value::Table(toml::Table::new()))
        .map_err(|e| format!("{name}: env: {e}"))?;
    let iommu = FixtureIommu::new(&spec);
    let memory = FixtureMemory::new(&spec, &env);

    let mut dma: Vec<Vec<DmaEntry>> = (0..2).map(|_| vec![DmaEntry::EMPTY; 65535]).collect();
    let mut containers: Vec<ContainerSlot<'_>> =
        dma.iter_mut().map(|d| ContainerSlot::new(d)).collect();
    let mut files = vec![FileSlot::EMPTY; 16];
    let mut groups: Vec<GroupSlot> = (0..4).map(|_| GroupSlot::EMPTY).collect();
    let mut devices: Vec<DeviceSlot<TemplateDevice>> = (0..4).map(|_| DeviceSlot::new()).collect();
    let config = Config {
        type1: Type1Config {
            era,
            ..Type1Config::default()
        },
    };
    let mut vfio = Vfio::new(
        iommu,
        memory,
        crate::fixture::TemplateDriver,
        Storage {
            files: &mut files,
            containers: &mut containers,
            groups: &mut groups,
            devices: &mut devices,
        },
        config,
    );
    let template: Rc<_> = spec
        .templates
        .get("dev")
        .cloned()
        .ok_or(format!("{name}: fixture template missing"))?;
    let group = group_id as GroupId;
    vfio.register_device(&bdf, group, TemplateDevice::new(&bdf, template, None))
        .map_err(|e| format!("{name}: register_device: {}", e.name()))?;
    let container = vfio
        .open_container()
        .map_err(|e| format!("{name}: {}", e.name()))?;
    let group_fd = vfio
        .open_group(group)
        .map_err(|e| format!("{name}: {}", e.name()))?;
    let mut replay = Replay {
        vfio: &mut vfio,
        container,
        group: group_fd,
        group_id: group,
        bdf,
        kind,
        device: None,
        typed,
    };
    let _ = replay.group_id;
    let mut tally = Tally::default();
    for (i, step) in steps.iter().enumerate() {
        let case = step.get("case").and_then(Value::as_str).unwrap_or("");
        let op = step.get("op").and_then(Value::as_str).unwrap_or("");
        let ctx = format!("{name} step {i} {op} \"{case}\"");
        replay.step(&mut tally, &ctx, step);
    }
    Ok(tally)
}
