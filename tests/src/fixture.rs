//! The simulated machine of a case file's `[fixture]`: its description ([`FixtureSpec`]),
//! and the platform implementations the core runs on — [`FixtureIommu`],
//! [`FixtureMemory`] and the template bus driver [`TemplateDriver`].
//!
//! The IOMMU and memory objects are cheap handles onto shared state (`Rc<RefCell<…>>`):
//! the registry owns one clone, and a test keeps another to drive host events (driver
//! binding) and to inspect the machine (translations, locked pages).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use toml::Value;
use vfio_core::errno::ErrorType;
use vfio_core::platform::{
    DomainId, DomainInfo, GroupId, GroupInfo, HostMemory, Iommu, MemoryKind, PinnedRun, Prot,
    ReservedKind, ReservedRegion,
};
use vfio_core::vfio::{BusDriver, CapChain, DeviceInfo, IrqInfo, IrqSetRequest, RegionInfo};
use vfio_core::{Errno, Result};

use crate::value::{as_array, as_bool, as_errno, as_pair, as_str, as_table, as_u32, as_u64, get};

// ------------------------------------------------------------------------------------------
// Description
// ------------------------------------------------------------------------------------------

/// Kind of a `[[fixture.memory]]` range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeKind {
    /// Ordinary read-write RAM (charged when pinned).
    Ram,
    /// Read-only RAM: pinning it for a device-writable mapping fails with `EFAULT`.
    RamRo,
    /// Device memory: mappable read-write, never charged.
    Mmio,
}

/// One `[[fixture.memory]]` range of the calling process's address space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryRange {
    /// First virtual address.
    pub vaddr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Physical address of `vaddr` (the range is physically contiguous).
    pub phys: u64,
    /// What backs the range.
    pub kind: RangeKind,
}

/// One `[fixture.iommu_profile.<name>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// IOMMU driver identity.
    pub ops: String,
    /// Page sizes of a domain of this profile.
    pub pgsize_bitmap: u64,
    /// Aperture `[start, end]`, inclusive.
    pub aperture: (u64, u64),
    /// Reserved regions of a group of this profile.
    pub reserved: Vec<ReservedRegion>,
    /// MSI isolation available.
    pub intr_remap: bool,
    /// Domains enforce cache-coherent DMA.
    pub enforce_coherency: bool,
}

/// Driver binding of a fixture device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Registered VFIO device.
    Vfio,
    /// DMA-API host driver: the group is not viable.
    Host,
    /// Driver managing its own DMA (pci-stub).
    Stub,
    /// No driver.
    None,
}

impl Binding {
    /// Parses `"vfio"`, `"host"`, `"stub"` or `"none"`.
    pub fn parse(text: &str) -> std::result::Result<Binding, String> {
        match text {
            "vfio" => Ok(Binding::Vfio),
            "host" => Ok(Binding::Host),
            "stub" => Ok(Binding::Stub),
            "none" => Ok(Binding::None),
            other => Err(format!(
                "unknown binding `{other}` (expected vfio, host, stub or none)"
            )),
        }
    }
}

/// One device of a `[[fixture.group]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Device name (PCI address or mdev name).
    pub name: String,
    /// Initial driver binding.
    pub binding: Binding,
    /// Template name, empty for non-VFIO devices.
    pub template: String,
}

/// One `[[fixture.group]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// IOMMU group number.
    pub id: GroupId,
    /// Profile name, or `"emulated"`.
    pub profile: String,
    /// Devices of the group.
    pub devices: Vec<DeviceSpec>,
}

/// One region capability of a template, already encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapTemplate {
    /// Capability id (region-info id space).
    pub id: u16,
    /// Layout version.
    pub version: u16,
    /// Payload bytes after the 8-byte header.
    pub payload: Vec<u8>,
}

/// One region of a device template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTemplate {
    /// Region index.
    pub index: u32,
    /// Region flags (without `CAPS`).
    pub flags: u32,
    /// Size in bytes.
    pub size: u64,
    /// Offset in the device file.
    pub offset: u64,
    /// Capabilities in chain order.
    pub caps: Vec<CapTemplate>,
}

/// One IRQ index of a device template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrqTemplate {
    /// IRQ index.
    pub index: u32,
    /// `irq_info` flags.
    pub flags: u32,
    /// Vector count.
    pub count: u32,
}

/// One `[fixture.device_template.<name>]`: the bus driver's answers for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Device flags.
    pub flags: u32,
    /// Number of regions.
    pub num_regions: u32,
    /// Number of IRQ indexes.
    pub num_irqs: u32,
    /// `VFIO_DEVICE_RESET` succeeds.
    pub reset: bool,
    /// Regions.
    pub regions: Vec<RegionTemplate>,
    /// IRQ indexes.
    pub irqs: Vec<IrqTemplate>,
}

/// The whole `[fixture]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureSpec {
    /// Host page size in bytes.
    pub page_size: u64,
    /// Type1 DMA entry limit.
    pub dma_entry_limit: u32,
    /// Locked-memory budget in pages (`None` = unlimited).
    pub memlock_pages: Option<u64>,
    /// Process may exceed the budget.
    pub lock_cap: bool,
    /// Type1 `allow_unsafe_interrupts`.
    pub allow_unsafe_interrupts: bool,
    /// Address space.
    pub memory: Vec<MemoryRange>,
    /// IOMMU profiles by name.
    pub profiles: BTreeMap<String, Profile>,
    /// IOMMU groups.
    pub groups: Vec<GroupSpec>,
    /// Device templates by name.
    pub templates: BTreeMap<String, Rc<Template>>,
}

/// `[case.env]` overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    /// Overrides `dma_entry_limit`.
    pub dma_entry_limit: Option<u32>,
    /// Overrides `memlock_pages` (`Some(None)` = unlimited).
    pub memlock_pages: Option<Option<u64>>,
    /// Overrides `lock_cap`.
    pub lock_cap: Option<bool>,
    /// `open_device` of the named device fails with this errno.
    pub open_fails: Option<(String, Errno)>,
}

type Parse<T> = std::result::Result<T, String>;

fn memlock(value: &Value) -> Parse<Option<u64>> {
    match value {
        Value::String(s) if s == "unlimited" => Ok(None),
        other => as_u64(other).map(Some),
    }
}

fn reserved_kind(text: &str) -> Parse<ReservedKind> {
    Ok(match text {
        "msi" => ReservedKind::Msi,
        "sw_msi" => ReservedKind::SwMsi,
        "direct" => ReservedKind::Direct,
        "direct_relaxable" => ReservedKind::DirectRelaxable,
        "reserved" => ReservedKind::Reserved,
        other => return Err(format!("unknown reserved-region type `{other}`")),
    })
}

fn parse_profile(name: &str, value: &Value) -> Parse<Profile> {
    let what = format!("iommu_profile.{name}");
    let t = as_table(value).map_err(|e| format!("{what}: {e}"))?;
    let ctx = |e: String| format!("{what}: {e}");
    let mut reserved = Vec::new();
    if let Some(list) = t.get("reserved") {
        for item in as_array(list).map_err(ctx)? {
            let parts = as_array(item).map_err(ctx)?;
            if parts.len() != 3 {
                return Err(format!("{what}: reserved entries are [start, end, type]"));
            }
            reserved.push(ReservedRegion {
                start: as_u64(&parts[0]).map_err(ctx)?,
                end: as_u64(&parts[1]).map_err(ctx)?,
                kind: reserved_kind(as_str(&parts[2]).map_err(ctx)?).map_err(ctx)?,
            });
        }
    }
    Ok(Profile {
        ops: as_str(get(t, "ops", &what)?).map_err(ctx)?.to_string(),
        pgsize_bitmap: as_u64(get(t, "pgsize_bitmap", &what)?).map_err(ctx)?,
        aperture: as_pair(get(t, "aperture", &what)?).map_err(ctx)?,
        reserved,
        intr_remap: t
            .get("intr_remap")
            .map(as_bool)
            .transpose()
            .map_err(ctx)?
            .unwrap_or(true),
        enforce_coherency: t
            .get("enforce_coherency")
            .map(as_bool)
            .transpose()
            .map_err(ctx)?
            .unwrap_or(true),
    })
}

fn le32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn le64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn parse_region_cap(what: &str, value: &Value) -> Parse<CapTemplate> {
    let t = as_table(value).map_err(|e| format!("{what}: {e}"))?;
    let ctx = |e: String| format!("{what}: {e}");
    let id = as_u64(get(t, "id", what)?).map_err(ctx)?;
    let id = u16::try_from(id).map_err(|_| format!("{what}: cap id {id} too large"))?;
    let version = match t.get("version") {
        Some(v) => {
            let v = as_u64(v).map_err(ctx)?;
            u16::try_from(v).map_err(|_| format!("{what}: cap version {v} too large"))?
        }
        None => 1,
    };
    let mut payload = Vec::new();
    match id {
        // SPARSE_MMAP: u32 nr_areas, u32 reserved, {u64 offset, u64 size} per area.
        1 => {
            let areas = match t.get("areas") {
                Some(a) => as_array(a)
                    .map_err(ctx)?
                    .iter()
                    .map(as_pair)
                    .collect::<Parse<Vec<_>>>()
                    .map_err(ctx)?,
                None => Vec::new(),
            };
            let nr = match t.get("nr_areas") {
                Some(n) => as_u32(n).map_err(ctx)?,
                None => areas.len() as u32,
            };
            le32(&mut payload, nr);
            le32(&mut payload, 0);
            for (offset, size) in areas {
                le64(&mut payload, offset);
                le64(&mut payload, size);
            }
        }
        // TYPE: u32 type, u32 subtype.
        2 => {
            le32(&mut payload, as_u32(get(t, "type", what)?).map_err(ctx)?);
            le32(&mut payload, as_u32(get(t, "subtype", what)?).map_err(ctx)?);
        }
        // MSIX_MAPPABLE: header only.
        3 => {}
        other => return Err(format!("{what}: unknown region capability id {other}")),
    }
    Ok(CapTemplate {
        id,
        version,
        payload,
    })
}

fn parse_template(name: &str, value: &Value) -> Parse<Template> {
    let what = format!("device_template.{name}");
    let t = as_table(value).map_err(|e| format!("{what}: {e}"))?;
    let ctx = |e: String| format!("{what}: {e}");
    let mut regions = Vec::new();
    if let Some(list) = t.get("regions") {
        for (i, r) in as_array(list).map_err(ctx)?.iter().enumerate() {
            let rwhat = format!("{what}.regions[{i}]");
            let rt = as_table(r).map_err(|e| format!("{rwhat}: {e}"))?;
            let rctx = |e: String| format!("{rwhat}: {e}");
            let mut caps = Vec::new();
            if let Some(cl) = rt.get("caps") {
                for (j, c) in as_array(cl).map_err(rctx)?.iter().enumerate() {
                    caps.push(parse_region_cap(&format!("{rwhat}.caps[{j}]"), c)?);
                }
            }
            regions.push(RegionTemplate {
                index: as_u32(get(rt, "index", &rwhat)?).map_err(rctx)?,
                flags: as_u32(get(rt, "flags", &rwhat)?).map_err(rctx)?,
                size: as_u64(get(rt, "size", &rwhat)?).map_err(rctx)?,
                offset: as_u64(get(rt, "offset", &rwhat)?).map_err(rctx)?,
                caps,
            });
        }
    }
    let mut irqs = Vec::new();
    if let Some(list) = t.get("irqs") {
        for (i, r) in as_array(list).map_err(ctx)?.iter().enumerate() {
            let iwhat = format!("{what}.irqs[{i}]");
            let it = as_table(r).map_err(|e| format!("{iwhat}: {e}"))?;
            let ictx = |e: String| format!("{iwhat}: {e}");
            irqs.push(IrqTemplate {
                index: as_u32(get(it, "index", &iwhat)?).map_err(ictx)?,
                flags: as_u32(get(it, "flags", &iwhat)?).map_err(ictx)?,
                count: as_u32(get(it, "count", &iwhat)?).map_err(ictx)?,
            });
        }
    }
    Ok(Template {
        flags: as_u32(get(t, "flags", &what)?).map_err(ctx)?,
        num_regions: as_u32(get(t, "num_regions", &what)?).map_err(ctx)?,
        num_irqs: as_u32(get(t, "num_irqs", &what)?).map_err(ctx)?,
        reset: t
            .get("reset")
            .map(as_bool)
            .transpose()
            .map_err(ctx)?
            .unwrap_or(false),
        regions,
        irqs,
    })
}

impl FixtureSpec {
    /// Parses the `[fixture]` table of a `vfio-cases/1` file.
    pub fn from_toml(value: &Value) -> Parse<FixtureSpec> {
        let what = "fixture";
        let t = as_table(value).map_err(|e| format!("{what}: {e}"))?;
        let ctx = |e: String| format!("{what}: {e}");
        let mut memory = Vec::new();
        if let Some(list) = t.get("memory") {
            for (i, m) in as_array(list).map_err(ctx)?.iter().enumerate() {
                let mwhat = format!("fixture.memory[{i}]");
                let mt = as_table(m).map_err(|e| format!("{mwhat}: {e}"))?;
                let mctx = |e: String| format!("{mwhat}: {e}");
                let kind = match as_str(get(mt, "kind", &mwhat)?).map_err(mctx)? {
                    "ram" => RangeKind::Ram,
                    "ram_ro" => RangeKind::RamRo,
                    "mmio" => RangeKind::Mmio,
                    other => return Err(format!("{mwhat}: unknown memory kind `{other}`")),
                };
                memory.push(MemoryRange {
                    vaddr: as_u64(get(mt, "vaddr", &mwhat)?).map_err(mctx)?,
                    len: as_u64(get(mt, "len", &mwhat)?).map_err(mctx)?,
                    phys: as_u64(get(mt, "phys", &mwhat)?).map_err(mctx)?,
                    kind,
                });
            }
        }
        memory.sort_by_key(|m| m.vaddr);
        let mut profiles = BTreeMap::new();
        if let Some(p) = t.get("iommu_profile") {
            for (name, pv) in as_table(p).map_err(ctx)? {
                profiles.insert(name.clone(), parse_profile(name, pv)?);
            }
        }
        let mut templates = BTreeMap::new();
        if let Some(p) = t.get("device_template") {
            for (name, tv) in as_table(p).map_err(ctx)? {
                templates.insert(name.clone(), Rc::new(parse_template(name, tv)?));
            }
        }
        let mut groups = Vec::new();
        if let Some(list) = t.get("group") {
            for (i, g) in as_array(list).map_err(ctx)?.iter().enumerate() {
                let gwhat = format!("fixture.group[{i}]");
                let gt = as_table(g).map_err(|e| format!("{gwhat}: {e}"))?;
                let gctx = |e: String| format!("{gwhat}: {e}");
                let profile = as_str(get(gt, "profile", &gwhat)?)
                    .map_err(gctx)?
                    .to_string();
                if profile != "emulated" && !profiles.contains_key(&profile) {
                    return Err(format!("{gwhat}: unknown iommu profile `{profile}`"));
                }
                let mut devices = Vec::new();
                if let Some(dl) = gt.get("devices") {
                    for d in as_array(dl).map_err(gctx)? {
                        let dt = as_table(d).map_err(gctx)?;
                        let template = match dt.get("template") {
                            Some(v) => as_str(v).map_err(gctx)?.to_string(),
                            None => String::new(),
                        };
                        if !template.is_empty() && !templates.contains_key(&template) {
                            return Err(format!("{gwhat}: unknown device template `{template}`"));
                        }
                        devices.push(DeviceSpec {
                            name: as_str(get(dt, "name", &gwhat)?).map_err(gctx)?.to_string(),
                            binding: Binding::parse(
                                as_str(get(dt, "binding", &gwhat)?).map_err(gctx)?,
                            )
                            .map_err(gctx)?,
                            template,
                        });
                    }
                }
                groups.push(GroupSpec {
                    id: as_u32(get(gt, "id", &gwhat)?).map_err(gctx)?,
                    profile,
                    devices,
                });
            }
        }
        let page_size = match t.get("page_size") {
            Some(v) => as_u64(v).map_err(ctx)?,
            None => 4096,
        };
        if !page_size.is_power_of_two() {
            return Err(format!(
                "fixture: page_size {page_size} is not a power of two"
            ));
        }
        Ok(FixtureSpec {
            page_size,
            dma_entry_limit: match t.get("dma_entry_limit") {
                Some(v) => as_u32(v).map_err(ctx)?,
                None => 65535,
            },
            memlock_pages: match t.get("memlock_pages") {
                Some(v) => memlock(v).map_err(ctx)?,
                None => None,
            },
            lock_cap: t
                .get("lock_cap")
                .map(as_bool)
                .transpose()
                .map_err(ctx)?
                .unwrap_or(false),
            allow_unsafe_interrupts: t
                .get("allow_unsafe_interrupts")
                .map(as_bool)
                .transpose()
                .map_err(ctx)?
                .unwrap_or(false),
            memory,
            profiles,
            groups,
            templates,
        })
    }

    /// Every VFIO device of the fixture: `(group, device)` for devices bound to `"vfio"`
    /// with a template, in fixture order.
    pub fn vfio_devices(&self) -> impl Iterator<Item = (GroupId, &DeviceSpec)> {
        self.groups.iter().flat_map(|g| {
            g.devices
                .iter()
                .filter(|d| d.binding == Binding::Vfio && !d.template.is_empty())
                .map(move |d| (g.id, d))
        })
    }
}

impl Env {
    /// Parses a `[case.env]` table.
    pub fn from_toml(value: &Value) -> Parse<Env> {
        let t = as_table(value).map_err(|e| format!("env: {e}"))?;
        let ctx = |e: String| format!("env: {e}");
        let mut env = Env::default();
        for (key, v) in t {
            match key.as_str() {
                "dma_entry_limit" => env.dma_entry_limit = Some(as_u32(v).map_err(ctx)?),
                "memlock_pages" => env.memlock_pages = Some(memlock(v).map_err(ctx)?),
                "lock_cap" => env.lock_cap = Some(as_bool(v).map_err(ctx)?),
                "open_fails" => {
                    let ot = as_table(v).map_err(ctx)?;
                    env.open_fails = Some((
                        as_str(get(ot, "device", "env.open_fails")?)
                            .map_err(ctx)?
                            .to_string(),
                        as_errno(get(ot, "errno", "env.open_fails")?).map_err(ctx)?,
                    ));
                }
                other => return Err(format!("env: unknown override `{other}`")),
            }
        }
        Ok(env)
    }
}

// ------------------------------------------------------------------------------------------
// IOMMU
// ------------------------------------------------------------------------------------------

#[derive(Debug)]
struct GroupState {
    /// `None` for an emulated group.
    profile: Option<Profile>,
    devices: Vec<(String, Binding)>,
    claimed: bool,
}

#[derive(Debug)]
struct DomainState {
    info: DomainInfo,
    groups: BTreeSet<GroupId>,
    /// Mapped extents: iova → (len, phys, prot).
    extents: BTreeMap<u64, (u64, u64, Prot)>,
}

#[derive(Debug, Default)]
struct IommuState {
    groups: BTreeMap<GroupId, GroupState>,
    domains: BTreeMap<DomainId, DomainState>,
    next_domain: DomainId,
    ops_names: Vec<String>,
}

impl IommuState {
    fn ops_id(&mut self, ops: &str) -> u32 {
        if let Some(i) = self.ops_names.iter().position(|o| o == ops) {
            return i as u32 + 1;
        }
        self.ops_names.push(ops.to_string());
        self.ops_names.len() as u32
    }
}

/// The fixture's IOMMU: groups with viability and DMA ownership, domains with real
/// translation tables. Cloning gives another handle onto the same IOMMU.
#[derive(Debug, Clone)]
pub struct FixtureIommu(Rc<RefCell<IommuState>>);

impl FixtureIommu {
    /// Builds the IOMMU of `spec`.
    pub fn new(spec: &FixtureSpec) -> FixtureIommu {
        let mut state = IommuState {
            next_domain: 1,
            ..IommuState::default()
        };
        for g in &spec.groups {
            state.groups.insert(
                g.id,
                GroupState {
                    profile: spec.profiles.get(&g.profile).cloned(),
                    devices: g
                        .devices
                        .iter()
                        .map(|d| (d.name.clone(), d.binding))
                        .collect(),
                    claimed: false,
                },
            );
        }
        FixtureIommu(Rc::new(RefCell::new(state)))
    }

    fn find_device(&self, device: &str) -> std::result::Result<(GroupId, usize), Errno> {
        let st = self.0.borrow();
        for (gid, g) in &st.groups {
            if let Some(i) = g.devices.iter().position(|(n, _)| n == device) {
                return Ok((*gid, i));
            }
        }
        Err(Errno::ENODEV)
    }

    /// Host event: bind `driver` to `device`. Binding `Host` fails with `EBUSY` while the
    /// group's DMA is claimed (otherwise the group becomes non-viable); `Stub`, `Vfio` and
    /// `None` are always allowed. `ENODEV` for an unknown device.
    pub fn bind_driver(&self, device: &str, driver: Binding) -> Result<()> {
        let (gid, idx) = self.find_device(device)?;
        let mut st = self.0.borrow_mut();
        let group = st.groups.get_mut(&gid).ok_or(Errno::ENODEV)?;
        if driver == Binding::Host && group.claimed {
            return Err(Errno::EBUSY);
        }
        group.devices[idx].1 = driver;
        Ok(())
    }

    /// Host event: unbind the driver of `device` (always allowed; viability re-evaluated).
    pub fn unbind_driver(&self, device: &str) -> Result<()> {
        let (gid, idx) = self.find_device(device)?;
        let mut st = self.0.borrow_mut();
        let group = st.groups.get_mut(&gid).ok_or(Errno::ENODEV)?;
        group.devices[idx].1 = Binding::None;
        Ok(())
    }

    /// The current binding of `device`.
    pub fn binding(&self, device: &str) -> Option<Binding> {
        let (gid, idx) = self.find_device(device).ok()?;
        Some(self.0.borrow().groups.get(&gid)?.devices[idx].1)
    }

    /// The domain `group` is attached to, if any.
    pub fn domain_of(&self, group: GroupId) -> Option<DomainId> {
        self.0
            .borrow()
            .domains
            .iter()
            .find(|(_, d)| d.groups.contains(&group))
            .map(|(id, _)| *id)
    }

    /// What `iova` translates to in `domain` (same as [`Iommu::iova_to_phys`]).
    pub fn translate(&self, domain: DomainId, iova: u64) -> Option<u64> {
        let st = self.0.borrow();
        let d = st.domains.get(&domain)?;
        let (start, (len, phys, _)) = d.extents.range(..=iova).next_back()?;
        (iova - start < *len).then(|| phys + (iova - start))
    }
}

impl ErrorType for FixtureIommu {
    type Error = Errno;
}

impl Iommu for FixtureIommu {
    fn group_info(&self, group: GroupId) -> Option<GroupInfo> {
        let st = self.0.borrow();
        let g = st.groups.get(&group)?;
        Some(match &g.profile {
            Some(p) => GroupInfo {
                emulated: false,
                intr_remap: p.intr_remap,
            },
            None => GroupInfo {
                emulated: true,
                intr_remap: true,
            },
        })
    }

    fn group_viable(&self, group: GroupId) -> bool {
        self.0
            .borrow()
            .groups
            .get(&group)
            .is_some_and(|g| g.devices.iter().all(|(_, b)| *b != Binding::Host))
    }

    fn claim_dma_owner(&mut self, group: GroupId) -> Result<()> {
        let viable = self.group_viable(group);
        let mut st = self.0.borrow_mut();
        let g = st.groups.get_mut(&group).ok_or(Errno::ENODEV)?;
        if !viable {
            return Err(Errno::EPERM);
        }
        if g.claimed {
            return Err(Errno::EBUSY);
        }
        g.claimed = true;
        Ok(())
    }

    fn release_dma_owner(&mut self, group: GroupId) {
        if let Some(g) = self.0.borrow_mut().groups.get_mut(&group) {
            g.claimed = false;
        }
    }

    fn domain_alloc(&mut self, group: GroupId) -> Result<DomainInfo> {
        let mut st = self.0.borrow_mut();
        let profile = st
            .groups
            .get(&group)
            .ok_or(Errno::ENODEV)?
            .profile
            .clone()
            .ok_or(Errno::EINVAL)?;
        let ops = st.ops_id(&profile.ops);
        let id = st.next_domain;
        st.next_domain += 1;
        let info = DomainInfo {
            id,
            ops,
            pgsize_bitmap: profile.pgsize_bitmap,
            aperture_start: profile.aperture.0,
            aperture_end: profile.aperture.1,
            enforce_coherency: profile.enforce_coherency,
        };
        st.domains.insert(
            id,
            DomainState {
                info,
                groups: BTreeSet::new(),
                extents: BTreeMap::new(),
            },
        );
        Ok(info)
    }

    fn domain_free(&mut self, domain: DomainId) {
        self.0.borrow_mut().domains.remove(&domain);
    }

    fn attach(&mut self, domain: DomainId, group: GroupId) -> Result<()> {
        let mut st = self.0.borrow_mut();
        let profile = st
            .groups
            .get(&group)
            .ok_or(Errno::ENODEV)?
            .profile
            .clone()
            .ok_or(Errno::EINVAL)?;
        let ops = st.ops_id(&profile.ops);
        let d = st.domains.get_mut(&domain).ok_or(Errno::EINVAL)?;
        if d.info.ops != ops || d.info.enforce_coherency != profile.enforce_coherency {
            return Err(Errno::EINVAL);
        }
        d.groups.insert(group);
        Ok(())
    }

    fn detach(&mut self, domain: DomainId, group: GroupId) {
        if let Some(d) = self.0.borrow_mut().domains.get_mut(&domain) {
            d.groups.remove(&group);
        }
    }

    fn reserved_region(&self, group: GroupId, index: usize) -> Option<ReservedRegion> {
        let st = self.0.borrow();
        st.groups
            .get(&group)?
            .profile
            .as_ref()?
            .reserved
            .get(index)
            .copied()
    }

    fn map(&mut self, domain: DomainId, iova: u64, phys: u64, len: u64, prot: Prot) -> Result<()> {
        let mut st = self.0.borrow_mut();
        let d = st.domains.get_mut(&domain).ok_or(Errno::EINVAL)?;
        let min_page = d.info.pgsize_bitmap & d.info.pgsize_bitmap.wrapping_neg();
        if min_page == 0
            || len == 0
            || iova % min_page != 0
            || phys % min_page != 0
            || len % min_page != 0
        {
            return Err(Errno::EINVAL);
        }
        let last = iova.checked_add(len - 1).ok_or(Errno::EINVAL)?;
        // Refuse to map over an existing translation (a core bug if it ever happens).
        if let Some((start, (elen, _, _))) = d.extents.range(..=last).next_back() {
            if start + (elen - 1) >= iova {
                return Err(Errno::EEXIST);
            }
        }
        d.extents.insert(iova, (len, phys, prot));
        Ok(())
    }

    fn unmap(&mut self, domain: DomainId, iova: u64, len: u64) -> u64 {
        let mut st = self.0.borrow_mut();
        let Some(d) = st.domains.get_mut(&domain) else {
            return 0;
        };
        if len == 0 {
            return 0;
        }
        let last = iova.saturating_add(len - 1);
        let hits: Vec<u64> = d
            .extents
            .range(..=last)
            .filter(|(s, (l, _, _))| *s + (l - 1) >= iova)
            .map(|(s, _)| *s)
            .collect();
        let mut removed = 0u64;
        for start in hits {
            let Some((elen, ephys, prot)) = d.extents.remove(&start) else {
                continue;
            };
            let elast = start + (elen - 1);
            let cut_first = start.max(iova);
            let cut_last = elast.min(last);
            removed += cut_last - cut_first + 1;
            if start < cut_first {
                d.extents.insert(start, (cut_first - start, ephys, prot));
            }
            if elast > cut_last {
                let off = cut_last + 1 - start;
                d.extents
                    .insert(cut_last + 1, (elast - cut_last, ephys + off, prot));
            }
        }
        removed
    }

    fn iova_to_phys(&self, domain: DomainId, iova: u64) -> Option<u64> {
        self.translate(domain, iova)
    }
}

// ------------------------------------------------------------------------------------------
// Host memory
// ------------------------------------------------------------------------------------------

#[derive(Debug)]
struct MemoryState {
    page_size: u64,
    ranges: Vec<MemoryRange>,
    locked: i64,
    limit: Option<u64>,
    lock_cap: bool,
    pinned_bytes: u64,
}

/// The calling process's address space from `[[fixture.memory]]`, with locked-memory
/// accounting. Cloning gives another handle onto the same state.
#[derive(Debug, Clone)]
pub struct FixtureMemory(Rc<RefCell<MemoryState>>);

impl FixtureMemory {
    /// Builds the address space of `spec` with the limits of `env` applied.
    pub fn new(spec: &FixtureSpec, env: &Env) -> FixtureMemory {
        FixtureMemory(Rc::new(RefCell::new(MemoryState {
            page_size: spec.page_size,
            ranges: spec.memory.clone(),
            locked: 0,
            limit: env.memlock_pages.unwrap_or(spec.memlock_pages),
            lock_cap: env.lock_cap.unwrap_or(spec.lock_cap),
            pinned_bytes: 0,
        })))
    }

    /// The raw locked-page count (negative would reveal an accounting bug in the core).
    pub fn locked_raw(&self) -> i64 {
        self.0.borrow().locked
    }

    /// Bytes currently pinned and not yet unpinned.
    pub fn pinned_bytes(&self) -> u64 {
        self.0.borrow().pinned_bytes
    }
}

impl ErrorType for FixtureMemory {
    type Error = Errno;
}

fn memory_kind(kind: RangeKind) -> MemoryKind {
    match kind {
        RangeKind::Ram | RangeKind::RamRo => MemoryKind::Ram,
        RangeKind::Mmio => MemoryKind::Mmio,
    }
}

impl HostMemory for FixtureMemory {
    fn page_size(&self) -> u64 {
        self.0.borrow().page_size
    }

    fn pin(&mut self, vaddr: u64, len: u64, write: bool) -> Result<PinnedRun> {
        let mut st = self.0.borrow_mut();
        let page = st.page_size;
        if len == 0 || vaddr % page != 0 || len % page != 0 {
            return Err(Errno::EINVAL);
        }
        let usable = |r: &MemoryRange| !(write && r.kind == RangeKind::RamRo);
        let first = st
            .ranges
            .iter()
            .find(|r| vaddr >= r.vaddr && vaddr - r.vaddr < r.len)
            .ok_or(Errno::EFAULT)?;
        if !usable(first) {
            return Err(Errno::EFAULT);
        }
        let kind = memory_kind(first.kind);
        let phys = first.phys + (vaddr - first.vaddr);
        let mut run = (first.len - (vaddr - first.vaddr)).min(len);
        // Extend across following ranges that continue the run virtually and physically.
        while run < len {
            let next_v = vaddr + run;
            let next_p = phys + run;
            let Some(next) = st.ranges.iter().find(|r| {
                r.vaddr == next_v && r.phys == next_p && memory_kind(r.kind) == kind && usable(r)
            }) else {
                break;
            };
            run = (run + next.len).min(len);
        }
        st.pinned_bytes += run;
        Ok(PinnedRun {
            phys,
            len: run,
            kind,
        })
    }

    fn unpin(&mut self, _phys: u64, len: u64) {
        let mut st = self.0.borrow_mut();
        st.pinned_bytes = st.pinned_bytes.saturating_sub(len);
    }

    fn locked_pages(&self) -> u64 {
        u64::try_from(self.0.borrow().locked).unwrap_or(0)
    }

    fn lock_limit_pages(&self) -> Option<u64> {
        self.0.borrow().limit
    }

    fn lock_cap(&self) -> bool {
        self.0.borrow().lock_cap
    }

    fn charge(&mut self, pages: i64) {
        let mut st = self.0.borrow_mut();
        st.locked = st.locked.saturating_add(pages);
    }
}

// ------------------------------------------------------------------------------------------
// Template bus driver
// ------------------------------------------------------------------------------------------

/// Per-device state of the template bus driver: the template's answers and call counters.
#[derive(Debug, Clone)]
pub struct TemplateDevice {
    /// Device name.
    pub name: String,
    /// The device's answers.
    pub template: Rc<Template>,
    /// `open_device` fails with this errno (`[case.env] open_fails`).
    pub open_fails: Option<Errno>,
    /// `open_device` invocations (failed ones included).
    pub open_calls: u32,
    /// `close_device` invocations.
    pub close_calls: u32,
    /// `request` invocations.
    pub request_calls: u32,
    /// `count` argument of the last `request` call.
    pub last_request_count: Option<u32>,
    /// Successful resets.
    pub resets: u32,
}

impl TemplateDevice {
    /// A device answering from `template`.
    pub fn new(name: &str, template: Rc<Template>, open_fails: Option<Errno>) -> Self {
        TemplateDevice {
            name: name.to_string(),
            template,
            open_fails,
            open_calls: 0,
            close_calls: 0,
            request_calls: 0,
            last_request_count: None,
            resets: 0,
        }
    }
}

/// The reference bus driver of the case files: answers every device query from the
/// device's [`Template`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TemplateDriver;

impl BusDriver for TemplateDriver {
    type State = TemplateDevice;

    fn open_device(&mut self, state: &mut TemplateDevice) -> Result<()> {
        state.open_calls += 1;
        match state.open_fails {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn close_device(&mut self, state: &mut TemplateDevice) {
        state.close_calls += 1;
    }

    fn device_info(
        &mut self,
        state: &mut TemplateDevice,
        _caps: &mut CapChain<'_>,
    ) -> Result<DeviceInfo> {
        let t = &state.template;
        Ok(DeviceInfo {
            flags: t.flags,
            num_regions: t.num_regions,
            num_irqs: t.num_irqs,
        })
    }

    fn region_info(
        &mut self,
        state: &mut TemplateDevice,
        index: u32,
        caps: &mut CapChain<'_>,
    ) -> Result<RegionInfo> {
        let region = state
            .template
            .regions
            .iter()
            .find(|r| r.index == index)
            .ok_or(Errno::EINVAL)?;
        for cap in &region.caps {
            caps.add(cap.id, cap.version, &cap.payload)?;
        }
        Ok(RegionInfo {
            flags: region.flags,
            size: region.size,
            offset: region.offset,
        })
    }

    fn irq_info(&mut self, state: &mut TemplateDevice, index: u32) -> Result<IrqInfo> {
        let irq = state
            .template
            .irqs
            .iter()
            .find(|i| i.index == index)
            .ok_or(Errno::EINVAL)?;
        Ok(IrqInfo {
            flags: irq.flags,
            count: irq.count,
        })
    }

    fn set_irqs(
        &mut self,
        _state: &mut TemplateDevice,
        _request: &IrqSetRequest,
        _data: &[u8],
    ) -> Result<u32> {
        Ok(0)
    }

    fn reset(&mut self, state: &mut TemplateDevice) -> Result<()> {
        if state.template.reset {
            state.resets += 1;
            Ok(())
        } else {
            Err(Errno::EINVAL)
        }
    }

    fn read(
        &mut self,
        _state: &mut TemplateDevice,
        _offset: u64,
        _buf: &mut [u8],
    ) -> Result<usize> {
        Err(Errno::EINVAL)
    }

    fn write(&mut self, _state: &mut TemplateDevice, _offset: u64, _data: &[u8]) -> Result<usize> {
        Err(Errno::EINVAL)
    }

    fn request(&mut self, state: &mut TemplateDevice, count: u32) {
        state.request_calls += 1;
        state.last_request_count = Some(count);
    }
}
