//! The vfio-pci case schema (`cases-pci.toml`, `schema_version = 1`): a mock
//! [`PciAccess`] implementing the file's "Mock platform semantics", and an interpreter
//! that runs each case's ops through [`PciDriver`] (the [`BusDriver`] interface plus the
//! registry's device-ioctl argument conventions: argsz checks, the capability-chain
//! protocol and the generic `SET_IRQS` validator).
//!
//! Hot reset runs through [`PciDriver::hot_reset_info`] / [`PciDriver::hot_reset`] with
//! the case's `topology` and named group descriptors; the host INTx line is modelled
//! (requested, enabled) and the handler runs on each rising edge of "pin driven AND line
//! enabled AND handler registered".
//!
//! Each case runs along the runner's [`crate::runner::DispatchPath`]: `typed` calls the
//! driver directly (this module's own argsz/capability rules), `abi` registers the mock
//! function with a `Vfio` (fixture IOMMU and memory, the function's group attached to a
//! Type1v2 container) and performs the device ops through `Vfio::ioctl`,
//! `Vfio::device_read` and `Vfio::device_write` (open = `GROUP_GET_DEVICE_FD`, close =
//! closing the device file, host request = unregistration plus 10-second ticks); `both`
//! runs both and compares every observation.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use toml::Value;
use vfio_core::era::Era;
use vfio_core::errno::ErrorType;
use vfio_core::pci::{MsixMmapPolicy, PciDevice, PciDriver};
use vfio_core::platform::{
    AffectedFunction, BarIndex, BarKind, BarResource, Bdf, EventSink, FunctionFacts, IntxLine,
    MsiKind, PciAccess, ResetMethod, Width,
};
use vfio_core::type1::DmaEntry;
use vfio_core::uapi::{irq_set_flags, IrqSet};
use vfio_core::vfio::{
    validate_irq_set, BusDriver, CapChain, Config, ContainerSlot, DeviceId, DeviceSlot, Fd,
    FdResolver, FdTarget, FileSlot, GroupSlot, IrqSetRequest, Storage, Vfio,
};
use vfio_core::Errno;

use crate::fixture::{Env, FixtureIommu, FixtureMemory, FixtureSpec};
use crate::runner::{combine_paths, CaseReport, Options, Verdict};
use crate::value::{as_array, as_bool, as_errno, as_str, as_table, as_u64, describe};

type R<T> = std::result::Result<T, String>;

/// The mock function's address.
pub const MOCK_BDF: Bdf = Bdf {
    segment: 0,
    bus: 1,
    device: 0,
    function: 0,
};

/// Descriptor number of `@bad` (never open).
const BAD_FD: i32 = 9999;

/// ROM resource of the mock function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockRom {
    /// No ROM.
    None,
    /// An assigned ROM resource of `size` bytes holding `image` bytes of valid image.
    Resource {
        /// Resource size, bytes (power of two).
        size: u64,
        /// Valid image bytes.
        image: u64,
    },
    /// A firmware-supplied image of `len` bytes, no ROM resource.
    Platform {
        /// Image length, bytes.
        len: u64,
    },
}

/// The mock platform's view of one PCI function (spec `Mock platform semantics`).
#[derive(Debug, Clone)]
pub struct MockPci {
    /// Physical config space (4096 bytes; only `size` are reachable).
    pub cfg: Vec<u8>,
    /// Config size: 256 or 4096.
    pub size: u16,
    /// Bits the hardware refuses to change: `(offset, width, mask)`.
    pub hw_ro: Vec<(u16, usize, u32)>,
    /// BAR resources.
    pub bars: [BarResource; 6],
    /// Bytes written into BAR memory: `(bar, offset) → byte` (unwritten bytes read `k & 0xff`).
    pub bar_mem: BTreeMap<(u8, u64), u8>,
    /// The ROM.
    pub rom: MockRom,
    /// INTx pending level (drives Status bit 3).
    pub intx_pending: bool,
    /// Facts reported through [`PciAccess::function_facts`].
    pub facts: FunctionFacts,
    /// A function reset method exists.
    pub reset_function: bool,
    /// Result of the next function reset (`EAGAIN` models a contended reset lock at open).
    pub open_reset_result: Option<Errno>,
    /// Function resets done.
    pub reset_count: u32,
    /// Bus/slot resets done.
    pub bus_reset_count: u32,
    /// Power state set through [`PciAccess::set_power_state`] (0 = D0 … 3 = D3hot).
    pub power_state: u8,
    /// VPD storage.
    pub vpd: Vec<u8>,
    /// Vectors granted per enable.
    pub msi_vectors_available: u16,
    /// Which mechanism is enabled in hardware.
    pub msi_enabled: Option<MsiKind>,
    /// The 64-byte header snapshot taken by `save_state`.
    pub saved: Option<Vec<u8>>,
    /// Legacy VGA bytes written: `(io, address) → byte`.
    pub vga_mem: BTreeMap<(bool, u64), u8>,
    /// Count of hardware BAR/ROM accesses (reads and writes).
    pub bar_accesses: u64,
    /// Count of platform config reads (for "virtual reads never touch hardware").
    pub config_reads: u64,
    /// Hardware model of the oracle replay: the ROM cannot be mapped (`ENOMEM`) while the
    /// hardware does not decode memory (Command MEMORY clear or PMCSR in D3hot).
    pub rom_unreadable_when_off: bool,
    /// Hot-reset scope (`None`: no slot or bus reset possible).
    pub hot_reset_scope: Option<ResetMethod>,
    /// Functions a bus/slot reset affects.
    pub topology: Vec<AffectedFunction>,
    /// Result of the next bus/slot reset (ERRATA: the platform may refuse with `ENOTTY`).
    pub bus_reset_result: Option<Errno>,
    /// The host INTx line was requested by the core.
    pub intx_requested: bool,
    /// The host INTx line is enabled.
    pub intx_line_enabled: bool,
    /// Highest MSI-X vector allocated + 1 (per-vector growth).
    pub msix_allocated: u16,
}

impl ErrorType for MockPci {
    type Error = Errno;
}

const NO_BAR: BarResource = BarResource {
    kind: BarKind::Mem32,
    prefetch: false,
    start: 0,
    size: 0,
};

impl MockPci {
    /// A blank function: `size` bytes of zero config space, nothing assigned.
    pub fn blank(size: u16) -> MockPci {
        MockPci {
            cfg: vec![0; 4096],
            size,
            hw_ro: Vec::new(),
            bars: [NO_BAR; 6],
            bar_mem: BTreeMap::new(),
            rom: MockRom::None,
            intx_pending: false,
            facts: FunctionFacts::default(),
            reset_function: false,
            open_reset_result: None,
            reset_count: 0,
            bus_reset_count: 0,
            power_state: 0,
            vpd: vec![0; 256],
            msi_vectors_available: u16::MAX,
            msi_enabled: None,
            hot_reset_scope: Some(ResetMethod::Bus),
            topology: vec![AffectedFunction {
                bdf: MOCK_BDF,
                group: Some(1),
                vfio: true,
                open: false,
            }],
            bus_reset_result: None,
            intx_requested: false,
            intx_line_enabled: false,
            msix_allocated: 0,
            saved: None,
            vga_mem: BTreeMap::new(),
            bar_accesses: 0,
            config_reads: 0,
            rom_unreadable_when_off: false,
        }
    }

    /// Reads `n` (≤ 4) physical bytes at `off`, little-endian, without side effects
    /// (Status bit 3 reflects the INTx level).
    pub fn peek(&self, off: usize, n: usize) -> u32 {
        let mut v = 0u32;
        for i in 0..n.min(4) {
            let at = off + i;
            let mut b = self.cfg.get(at).copied().unwrap_or(0);
            if at == 0x06 {
                b = (b & !0x08) | if self.intx_pending { 0x08 } else { 0 };
            }
            v |= u32::from(b) << (8 * i);
        }
        v
    }

    /// Writes `n` physical bytes at `off` unconditionally (behind VFIO's back).
    pub fn poke(&mut self, off: usize, n: usize, value: u32) {
        for i in 0..n.min(4) {
            if let Some(b) = self.cfg.get_mut(off + i) {
                *b = (value >> (8 * i)) as u8;
            }
        }
    }

    /// Offset of standard capability `id` in the physical list (bounded walk).
    pub fn find_cap(&self, id: u8) -> Option<u16> {
        if self.peek(0x06, 2) & 0x10 == 0 {
            return None;
        }
        let mut pos = self.peek(0x34, 1) as usize;
        for _ in 0..48 {
            if pos < 0x40 || pos >= usize::from(self.size.min(256)) {
                return None;
            }
            if self.peek(pos, 1) as u8 == id {
                return Some(pos as u16);
            }
            pos = self.peek(pos + 1, 1) as usize;
        }
        None
    }

    fn bar_byte(&self, bar: u8, off: u64) -> u8 {
        self.bar_mem
            .get(&(bar, off))
            .copied()
            .unwrap_or((off & 0xFF) as u8)
    }

    /// BAR memory as the device holds it (no VFIO).
    pub fn bar_backing(&self, bar: u8, off: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|k| self.bar_byte(bar, off + k))
            .collect()
    }

    fn rom_byte(off: u64) -> u8 {
        match off {
            0 => 0x55,
            1 => 0xAA,
            k => (k & 0xFF) as u8,
        }
    }
}

impl PciAccess for MockPci {
    fn config_size(&mut self, _: Bdf) -> Result<u16, Errno> {
        Ok(self.size)
    }

    fn config_read(&mut self, _: Bdf, offset: u16, width: Width) -> Result<u32, Errno> {
        let n = width.bytes();
        if usize::from(offset) + n > usize::from(self.size) || offset as usize % n != 0 {
            return Err(Errno::EINVAL);
        }
        self.config_reads += 1;
        Ok(self.peek(usize::from(offset), n))
    }

    fn config_write(&mut self, _: Bdf, offset: u16, width: Width, value: u32) -> Result<(), Errno> {
        let n = width.bytes();
        if usize::from(offset) + n > usize::from(self.size) || offset as usize % n != 0 {
            return Err(Errno::EINVAL);
        }
        let old = self.peek(usize::from(offset), n);
        let mut ro = 0u32;
        for &(at, w, mask) in &self.hw_ro {
            for i in 0..w {
                let byte = usize::from(at) + i;
                if byte >= usize::from(offset) && byte < usize::from(offset) + n {
                    let m = (mask >> (8 * i)) & 0xFF;
                    ro |= m << (8 * (byte - usize::from(offset)));
                }
            }
        }
        let v = (value & !ro) | (old & ro);
        self.poke(usize::from(offset), n, v);
        Ok(())
    }

    fn bar_resource(&mut self, _: Bdf, bar: BarIndex) -> Result<BarResource, Errno> {
        Ok(self.bars[usize::from(bar.get())])
    }

    fn rom_size(&mut self, _: Bdf) -> Result<u64, Errno> {
        Ok(match self.rom {
            MockRom::None => 0,
            MockRom::Resource { size, .. } => size,
            MockRom::Platform { len } => len.next_power_of_two(),
        })
    }

    fn rom_image_size(&mut self, _: Bdf) -> Result<u64, Errno> {
        if self.rom_unreadable_when_off {
            let off = self.peek(0x04, 2) & 0x2 == 0
                || self
                    .find_cap(0x01)
                    .is_some_and(|c| self.peek(usize::from(c) + 4, 2) & 3 == 3);
            if off {
                return Err(Errno::ENOMEM);
            }
        }
        Ok(match self.rom {
            MockRom::None => 0,
            MockRom::Resource { image, .. } => image,
            MockRom::Platform { len } => len,
        })
    }

    fn bar_read(
        &mut self,
        _: Bdf,
        bar: BarIndex,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), Errno> {
        self.bar_accesses += 1;
        for (k, b) in buf.iter_mut().enumerate() {
            *b = self.bar_byte(bar.get(), offset + k as u64);
        }
        Ok(())
    }

    fn bar_write(&mut self, _: Bdf, bar: BarIndex, offset: u64, data: &[u8]) -> Result<(), Errno> {
        self.bar_accesses += 1;
        for (k, b) in data.iter().enumerate() {
            self.bar_mem.insert((bar.get(), offset + k as u64), *b);
        }
        Ok(())
    }

    fn rom_read(&mut self, _: Bdf, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.bar_accesses += 1;
        for (k, b) in buf.iter_mut().enumerate() {
            *b = Self::rom_byte(offset + k as u64);
        }
        Ok(())
    }

    fn reset_supported(&mut self, _: Bdf, method: ResetMethod) -> bool {
        match method {
            ResetMethod::Function => self.reset_function,
            ResetMethod::Bus | ResetMethod::Slot => true,
        }
    }

    fn reset(&mut self, _: Bdf, method: ResetMethod) -> Result<(), Errno> {
        match method {
            ResetMethod::Function => {
                if !self.reset_function {
                    return Err(Errno::ENOTTY);
                }
                if let Some(e) = self.open_reset_result.take() {
                    return Err(e);
                }
                self.reset_count += 1;
            }
            ResetMethod::Bus | ResetMethod::Slot => {
                if let Some(e) = self.bus_reset_result {
                    return Err(e);
                }
                self.bus_reset_count += 1
            }
        }
        Ok(())
    }

    fn hot_reset_scope(&mut self, _: Bdf) -> Option<ResetMethod> {
        self.hot_reset_scope
    }

    fn hot_reset_affected(
        &mut self,
        _: Bdf,
        _: ResetMethod,
        index: usize,
    ) -> Option<AffectedFunction> {
        self.topology.get(index).copied()
    }

    fn intx_request(&mut self, _: Bdf, _shared: bool, masked: bool) -> Result<(), Errno> {
        if self.facts.intx == IntxLine::Missing {
            return Err(Errno::ENODEV);
        }
        self.intx_requested = true;
        self.intx_line_enabled = !masked || self.facts.intx_masking;
        Ok(())
    }

    fn intx_free(&mut self, _: Bdf) {
        self.intx_requested = false;
        self.intx_line_enabled = false;
    }

    fn intx_line_enable(&mut self, _: Bdf, enable: bool) {
        self.intx_line_enabled = enable;
    }

    fn irq_vector_add(&mut self, _: Bdf, vector: u16, _allocated: u16) -> Result<(), Errno> {
        let cap = self.find_cap(0x11).ok_or(Errno::EINVAL)?;
        let size = (self.peek(usize::from(cap) + 2, 2) & 0x7FF) as u16 + 1;
        if vector >= size || vector >= self.msi_vectors_available {
            return Err(Errno::ENOSPC);
        }
        self.msix_allocated = self.msix_allocated.max(vector + 1);
        Ok(())
    }

    fn irq_vectors_alloc(&mut self, _: Bdf, kind: MsiKind, max: u16) -> Result<u16, Errno> {
        let n = max.min(self.msi_vectors_available).max(1);
        match kind {
            MsiKind::Msi => {
                let cap = self.find_cap(0x05).ok_or(Errno::EINVAL)?;
                let at = usize::from(cap) + 2;
                let mme = 16 - (n - 1).leading_zeros() as u16;
                let mme = if n <= 1 { 0 } else { mme };
                let v = (self.peek(at, 2) as u16 & !0x0070) | 1 | (mme << 4);
                self.poke(at, 2, u32::from(v));
            }
            MsiKind::Msix => {
                let cap = self.find_cap(0x11).ok_or(Errno::EINVAL)?;
                let at = usize::from(cap) + 2;
                let v = (self.peek(at, 2) & !0x4000) | 0x8000;
                self.poke(at, 2, v);
            }
        }
        self.msi_enabled = Some(kind);
        Ok(n)
    }

    fn irq_vectors_free(&mut self, _: Bdf) {
        match self.msi_enabled.take() {
            Some(MsiKind::Msi) => {
                if let Some(cap) = self.find_cap(0x05) {
                    let at = usize::from(cap) + 2;
                    let v = self.peek(at, 2) & !0x0071;
                    self.poke(at, 2, v);
                }
            }
            Some(MsiKind::Msix) => {
                if let Some(cap) = self.find_cap(0x11) {
                    let at = usize::from(cap) + 2;
                    let v = self.peek(at, 2) & !0x8000;
                    self.poke(at, 2, v);
                }
            }
            None => {}
        }
    }

    fn function_facts(&mut self, _: Bdf) -> FunctionFacts {
        self.facts
    }

    fn set_power_state(&mut self, _: Bdf, _pm_cap: u16, state: u8) -> Result<(), Errno> {
        if let Some(cap) = self.find_cap(0x01) {
            let at = usize::from(cap) + 4;
            let v = (self.peek(at, 2) & !3) | u32::from(state & 3);
            self.poke(at, 2, v);
        }
        self.power_state = state & 3;
        Ok(())
    }

    fn vpd_read(&mut self, _: Bdf, addr: u16) -> Option<u32> {
        let a = usize::from(addr);
        let b = self.vpd.get(a..a + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn vpd_write(&mut self, _: Bdf, addr: u16, value: u32) -> bool {
        let a = usize::from(addr);
        match self.vpd.get_mut(a..a + 4) {
            Some(s) => {
                s.copy_from_slice(&value.to_le_bytes());
                true
            }
            None => false,
        }
    }

    fn vga_read(&mut self, _: Bdf, io: bool, addr: u64, buf: &mut [u8]) -> bool {
        for (k, b) in buf.iter_mut().enumerate() {
            let a = addr + k as u64;
            let base = if io { 0 } else { 0xA_0000 };
            *b = self
                .vga_mem
                .get(&(io, a))
                .copied()
                .unwrap_or(((a - base) & 0xFF) as u8);
        }
        true
    }

    fn vga_write(&mut self, _: Bdf, io: bool, addr: u64, data: &[u8]) -> bool {
        for (k, b) in data.iter().enumerate() {
            self.vga_mem.insert((io, addr + k as u64), *b);
        }
        true
    }

    fn save_state(&mut self, _: Bdf) {
        self.saved = Some(self.cfg[..0x40].to_vec());
    }

    fn restore_state(&mut self, _: Bdf) {
        if let Some(s) = &self.saved {
            self.cfg[..0x40].copy_from_slice(s);
        }
        let c = self.peek(0x04, 2) & !0x0004;
        self.poke(0x04, 2, c);
    }
}

/// What an open descriptor of the mock is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockFd {
    /// An eventfd.
    Event,
    /// A group (or anything that is not an eventfd).
    Other,
}

/// The mock event sink: descriptors by number, signal counts per descriptor.
#[derive(Debug, Clone, Default)]
pub struct MockEvents {
    /// Open descriptors.
    pub fds: BTreeMap<i32, MockFd>,
    /// Signals delivered per descriptor.
    pub signals: Rc<RefCell<BTreeMap<i32, u32>>>,
}

impl EventSink for MockEvents {
    type Event = i32;

    fn resolve(&mut self, fd: i32) -> Result<i32, Errno> {
        match self.fds.get(&fd) {
            Some(MockFd::Event) => Ok(fd),
            Some(MockFd::Other) => Err(Errno::EINVAL),
            None => Err(Errno::EBADF),
        }
    }

    fn signal(&self, event: i32) {
        *self.signals.borrow_mut().entry(event).or_insert(0) += 1;
    }

    fn event_token(&self, event: i32) -> Option<u32> {
        u32::try_from(event).ok()
    }

    fn token_event(&self, token: u32) -> Option<i32> {
        i32::try_from(token).ok()
    }
}

// ---------------------------------------------------------------------------- parsing

fn hex_bytes(text: &str) -> R<Vec<u8>> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).map_err(|e| format!("bad hex byte `{b}`: {e}")))
        .collect()
}

fn apply_config(cfg: &mut [u8], list: &Value) -> R<()> {
    for item in as_array(list)? {
        let t = as_table(item)?;
        let at = as_u64(t.get("at").ok_or("config entry without `at`")?)? as usize;
        let bytes = hex_bytes(as_str(t.get("hex").ok_or("config entry without `hex`")?)?)?;
        let dest = cfg
            .get_mut(at..at + bytes.len())
            .ok_or_else(|| format!("config bytes at {at:#x} out of range"))?;
        dest.copy_from_slice(&bytes);
    }
    Ok(())
}

/// Device keys of a case: the template's, replaced key by key by the case's.
fn device_keys(doc: &toml::Table, case: &toml::Table) -> R<toml::Table> {
    let mut keys = toml::Table::new();
    if let Some(name) = case.get("template") {
        let name = as_str(name)?;
        let templates = doc.get("template").map(as_array).transpose()?;
        let t = templates
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_table())
            .find(|t| t.get("id").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| format!("unknown template `{name}`"))?;
        keys.extend(t.clone());
    }
    for (k, v) in case {
        keys.insert(k.clone(), v.clone());
    }
    Ok(keys)
}

/// Builds the mock function described by device keys `d` (template + case overrides).
pub fn build_mock(d: &toml::Table) -> R<MockPci> {
    let size = d.get("cfg_size").map(as_u64).transpose()?.unwrap_or(256);
    let size = u16::try_from(size).map_err(|_| format!("cfg_size {size}"))?;
    let mut m = MockPci::blank(size);
    if let Some(c) = d.get("config") {
        apply_config(&mut m.cfg, c)?;
    }
    if let Some(c) = d.get("patch") {
        apply_config(&mut m.cfg, c)?;
    }
    for b in d
        .get("bars")
        .map(as_array)
        .transpose()?
        .into_iter()
        .flatten()
    {
        let t = as_table(b)?;
        let idx = as_u64(t.get("bar").ok_or("bar without index")?)? as usize;
        let kind = match t.get("kind").map(as_str).transpose()?.unwrap_or("mem32") {
            "mem32" => BarKind::Mem32,
            "mem64" => BarKind::Mem64,
            "io" => BarKind::Io,
            k => return Err(format!("unknown BAR kind `{k}`")),
        };
        let slot = m.bars.get_mut(idx).ok_or("BAR index > 5")?;
        *slot = BarResource {
            kind,
            prefetch: t.get("prefetch").map(as_bool).transpose()?.unwrap_or(false),
            start: as_u64(t.get("start").ok_or("bar without start")?)?,
            size: as_u64(t.get("size").ok_or("bar without size")?)?,
        };
    }
    if let Some(r) = d.get("rom") {
        let t = as_table(r)?;
        m.rom = if let Some(len) = t.get("platform_image_len") {
            MockRom::Platform { len: as_u64(len)? }
        } else {
            let size = as_u64(t.get("size").ok_or("rom without size")?)?;
            let image = t.get("image_size").map(as_u64).transpose()?.unwrap_or(size);
            MockRom::Resource { size, image }
        };
    }
    if let Some(i) = d.get("intx") {
        let t = as_table(i)?;
        m.facts.intx = match t
            .get("line")
            .map(as_str)
            .transpose()?
            .unwrap_or("connected")
        {
            "connected" => IntxLine::Connected,
            "not_connected" => IntxLine::NotConnected,
            "missing" => IntxLine::Missing,
            l => return Err(format!("unknown intx line `{l}`")),
        };
        m.facts.intx_masking = t.get("pci_2_3").map(as_bool).transpose()?.unwrap_or(true);
    }
    if let Some(r) = d.get("reset") {
        let t = as_table(r)?;
        m.reset_function = t.get("function").map(as_bool).transpose()?.unwrap_or(false);
        m.open_reset_result = match t.get("open_result").map(as_str).transpose()? {
            None | Some("ok") => None,
            Some(e) => Some(Errno::from_name(e).ok_or_else(|| format!("unknown errno `{e}`"))?),
        };
    }
    if let Some(n) = d.get("msi_vectors_available") {
        m.msi_vectors_available = u16::try_from(as_u64(n)?).unwrap_or(u16::MAX);
    }
    if let Some(v) = d.get("vf") {
        let t = as_table(v)?;
        let vendor = as_u64(t.get("vendor").ok_or("vf without vendor")?)? as u16;
        let device = as_u64(t.get("device").ok_or("vf without device")?)? as u16;
        m.facts.vf_ids = Some((vendor, device));
    }
    for r in d
        .get("hw_ro")
        .map(as_array)
        .transpose()?
        .into_iter()
        .flatten()
    {
        let t = as_table(r)?;
        let at = as_u64(t.get("at").ok_or("hw_ro without at")?)? as u16;
        let w = as_u64(t.get("width").ok_or("hw_ro without width")?)? as usize;
        let mask = as_u64(t.get("mask").ok_or("hw_ro without mask")?)? as u32;
        m.hw_ro.push((at, w, mask));
    }
    if let Some(v) = d.get("vpd") {
        let bytes = hex_bytes(as_str(v)?)?;
        m.vpd[..bytes.len().min(256)].copy_from_slice(&bytes[..bytes.len().min(256)]);
    }
    m.facts.has_vga = d.get("has_vga").map(as_bool).transpose()?.unwrap_or(false);
    if let Some(t) = d.get("topology") {
        let t = as_table(t)?;
        m.hot_reset_scope = match t.get("reset").map(as_str).transpose()?.unwrap_or("bus") {
            "bus" => Some(ResetMethod::Bus),
            "slot" => Some(ResetMethod::Slot),
            "none" => None,
            r => return Err(format!("unknown topology reset `{r}`")),
        };
        m.topology.clear();
        for dev in t
            .get("devices")
            .map(as_array)
            .transpose()?
            .into_iter()
            .flatten()
        {
            let dev = as_table(dev)?;
            let text = as_str(dev.get("bdf").ok_or("topology device without bdf")?)?;
            let bdf = Bdf::parse(text).ok_or_else(|| format!("bad bdf `{text}`"))?;
            let group = dev.get("group").map(as_u64).transpose()?.map(|g| g as u32);
            m.topology.push(AffectedFunction {
                bdf,
                group,
                vfio: dev.get("vfio").map(as_bool).transpose()?.unwrap_or(true),
                open: dev.get("open").map(as_bool).transpose()?.unwrap_or(false),
            });
        }
    }
    Ok(m)
}

// ---------------------------------------------------------------------------- running

/// Runs every selected case of a parsed `cases-pci.toml` document.
pub fn run_pci_doc(doc: &toml::Table, opts: &Options<'_>) -> R<Vec<CaseReport>> {
    let cases = match doc.get("case") {
        None => Vec::new(),
        Some(v) => as_array(v)?.iter().collect(),
    };
    let mut reports = Vec::new();
    for (i, c) in cases.into_iter().enumerate() {
        let case = as_table(c)?;
        let name = case
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("case#{}", i + 1));
        if let Some(p) = &opts.only {
            if !name.starts_with(p.as_str()) {
                continue;
            }
        }
        let mut runs = Vec::new();
        if opts.path.abi() {
            let (v, log) = verdict_of(run_case(doc, case, true));
            runs.push(("abi", v, log));
        }
        if opts.path.typed() {
            let (v, log) = verdict_of(run_case(doc, case, false));
            runs.push(("typed", v, log));
        }
        let verdict = if runs.len() == 1 {
            runs.remove(0).1
        } else {
            combine_paths(runs)
        };
        reports.push(CaseReport {
            id: String::new(),
            name,
            verdict,
        });
    }
    Ok(reports)
}

fn verdict_of(r: (R<()>, Vec<String>)) -> (Verdict, Vec<String>) {
    match r.0 {
        Ok(()) => (Verdict::Pass, r.1),
        Err(e) => (Verdict::Fail(e), r.1),
    }
}

type Drv = PciDriver<MockPci, MockEvents>;
type PciVfio<'s> = Vfio<'s, FixtureIommu, FixtureMemory, Drv>;

/// The system under test of one case: the driver called directly (the typed path, with
/// this harness's own argsz/capability rules), or the registry with the mock function
/// registered, driven through `Vfio::ioctl` / `device_read` / `device_write` (the ABI
/// path).
enum Sut<'v, 's> {
    Direct {
        driver: Box<Drv>,
        dev: Box<PciDevice<i32>>,
    },
    Registry {
        vfio: &'v mut PciVfio<'s>,
        id: DeviceId,
        /// The mock function's group file (attached to a Type1v2 container).
        group: Fd,
        /// The device file, while open.
        dev_fd: Option<Fd>,
        /// Group files of the topology's other groups, by IOMMU group.
        group_fds: BTreeMap<u32, Fd>,
        /// An open file that is not a group (the container): stands in for the case's
        /// non-group descriptors in hot-reset lists, which the registry cannot hold.
        other: Fd,
    },
}

struct Harness<'v, 's> {
    sut: Sut<'v, 's>,
    names: BTreeMap<String, i32>,
    next_fd: i32,
    groups: BTreeMap<i32, u32>,
    intx_cond: bool,
    /// Observations, compared between the two paths.
    log: Vec<String>,
}

const NOT_OPEN: Errno = Errno::EBADF;

impl Harness<'_, '_> {
    fn drv(&self) -> &Drv {
        match &self.sut {
            Sut::Direct { driver, .. } => driver,
            Sut::Registry { vfio, .. } => vfio.driver(),
        }
    }

    fn drv_mut(&mut self) -> &mut Drv {
        match &mut self.sut {
            Sut::Direct { driver, .. } => driver,
            Sut::Registry { vfio, .. } => vfio.driver_mut(),
        }
    }

    /// The driver and the device state, read-only (also while the device is closed).
    fn parts(&self) -> Option<(&Drv, &PciDevice<i32>)> {
        match &self.sut {
            Sut::Direct { driver, dev } => Some((driver, dev)),
            Sut::Registry { vfio, id, .. } => vfio.device_parts(*id),
        }
    }

    /// The driver and the device state; on the registry path only while a device file is
    /// open (`EBADF` otherwise).
    fn with_dev<T>(
        &mut self,
        f: impl FnOnce(&mut Drv, &mut PciDevice<i32>) -> T,
    ) -> Result<T, Errno> {
        match &mut self.sut {
            Sut::Direct { driver, dev } => Ok(f(driver, dev)),
            Sut::Registry { vfio, dev_fd, .. } => {
                let fd = dev_fd.ok_or(NOT_OPEN)?;
                vfio.with_device(fd, |d, s| Ok(f(d, s)))
            }
        }
    }

    fn is_open(&self) -> bool {
        self.parts().is_some_and(|(_, d)| d.is_open())
    }

    fn note(&mut self, what: String) {
        self.log.push(what);
    }

    /// A device ioctl through the registry (`None` on the direct path).
    fn reg_ioctl(&mut self, request: u32, buf: &mut [u8]) -> Option<Result<i64, Errno>> {
        match &mut self.sut {
            Sut::Direct { .. } => None,
            Sut::Registry { vfio, dev_fd, .. } => Some(match dev_fd {
                Some(fd) => vfio.ioctl(*fd, request, vfio_core::abi::Arg::Buffer(buf)),
                None => Err(NOT_OPEN),
            }),
        }
    }
}

fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn rd64(b: &[u8], at: usize) -> u64 {
    u64::from(rd32(b, at)) | (u64::from(rd32(b, at + 4)) << 32)
}

/// The fixture platform of the registry path: one IOMMU group per group the case's
/// topology names (the mock function's own group, 1 without a topology).
fn pci_fixture(groups: &[(u32, Vec<String>)]) -> R<FixtureSpec> {
    let mut text = String::from(
        r#"page_size = 4096
dma_entry_limit = 65535
memlock_pages = "unlimited"
[[memory]]
vaddr = "0x7f0000000000"
len = "0x100000"
phys = "0x100000000"
kind = "ram"
[iommu_profile.std]
ops = "A"
pgsize_bitmap = "0x40201000"
aperture = ["0x0", "0xffffffffffff"]
reserved = [["0xfee00000", "0xfeefffff", "msi"]]
intr_remap = true
enforce_coherency = true
[device_template.t]
flags = 0
num_regions = 0
num_irqs = 0
reset = false
regions = []
irqs = []
"#,
    );
    for (g, names) in groups {
        let devs: Vec<String> = names
            .iter()
            .map(|n| format!("{{ name = \"{n}\", binding = \"vfio\", template = \"t\" }}"))
            .collect();
        text.push_str(&format!(
            "[[group]]\nid = {g}\nprofile = \"std\"\ndevices = [{}]\n",
            devs.join(", ")
        ));
    }
    let value: Value = text
        .parse::<toml::Table>()
        .map(Value::Table)
        .map_err(|e| format!("PCI fixture: {e}"))?;
    FixtureSpec::from_toml(&value).map_err(|e| format!("PCI fixture: {e}"))
}

/// The harness's descriptor table as the registry would describe it.
struct HarnessFds<'a> {
    events: &'a MockEvents,
    groups: &'a BTreeMap<i32, u32>,
}

impl FdResolver for HarnessFds<'_> {
    fn resolve_fd(&self, fd: i32) -> FdTarget {
        if let Some(g) = self.groups.get(&fd) {
            return FdTarget::Group(*g);
        }
        match self.events.fds.get(&fd) {
            Some(_) => FdTarget::Other,
            None => FdTarget::NotOpen,
        }
    }
}

const REGION_SHIFT: u32 = 40;

/// Runs one case; `registry`: through the registry (ABI path), else the driver directly.
/// Returns the outcome and the observation log.
fn run_case(doc: &toml::Table, case: &toml::Table, registry: bool) -> (R<()>, Vec<String>) {
    let mut log = Vec::new();
    let r = run_case_inner(doc, case, registry, &mut log);
    (r, log)
}

fn run_case_inner(
    doc: &toml::Table,
    case: &toml::Table,
    registry: bool,
    log: &mut Vec<String>,
) -> R<()> {
    let d = device_keys(doc, case)?;
    let mock = build_mock(&d)?;
    let era = match case.get("era").map(as_str).transpose()? {
        None | Some("recent") | Some("7.3") | Some("4.7-4.15") => Era::Linux7_3,
        Some("6.1") => Era::Linux6_1,
        Some(e) => return Err(format!("unknown era `{e}`")),
    };
    let policy = match d.get("msix_mmap_policy").map(as_str).transpose()? {
        None | Some("mappable") => MsixMmapPolicy::Mappable,
        Some("sparse") => MsixMmapPolicy::Sparse,
        Some("deny") => MsixMmapPolicy::Deny,
        Some(p) => return Err(format!("unknown msix_mmap_policy `{p}`")),
    };
    let page = d.get("page_size").map(as_u64).transpose()?.unwrap_or(4096);
    // The topology's functions by IOMMU group; the mock function's own group first.
    let mut own_group = 1u32;
    let mut groups: Vec<(u32, Vec<String>)> = Vec::new();
    for f in &mock.topology {
        let Some(g) = f.group else { continue };
        let name = f.bdf.to_string();
        if f.bdf == MOCK_BDF {
            own_group = g;
        }
        match groups.iter_mut().find(|(id, _)| *id == g) {
            Some((_, names)) => names.push(name),
            None => groups.push((g, vec![name])),
        }
    }
    if !groups
        .iter()
        .any(|(_, n)| n.contains(&MOCK_BDF.to_string()))
    {
        match groups.iter_mut().find(|(id, _)| *id == own_group) {
            Some((_, names)) => names.push(MOCK_BDF.to_string()),
            None => groups.push((own_group, vec![MOCK_BDF.to_string()])),
        }
    }
    let driver = PciDriver::new(mock, MockEvents::default())
        .with_era(era)
        .with_msix_mmap(policy)
        .with_page_size(page);
    let autoopen = case
        .get("autoopen")
        .map(as_bool)
        .transpose()?
        .unwrap_or(true);
    if !registry {
        let sut = Sut::Direct {
            driver: Box::new(driver),
            dev: Box::new(PciDevice::new(MOCK_BDF)),
        };
        return run_ops(case, sut, autoopen, log);
    }
    let spec = pci_fixture(&groups)?;
    let env = Env::default();
    let mut files = vec![FileSlot::EMPTY; 64];
    let mut dma = vec![DmaEntry::EMPTY; 64];
    let mut containers = vec![ContainerSlot::new(&mut dma)];
    let mut gslots = vec![GroupSlot::EMPTY; 8];
    let mut devices: Vec<DeviceSlot<PciDevice<i32>>> = (0..8).map(|_| DeviceSlot::new()).collect();
    let mut vfio = Vfio::new(
        FixtureIommu::new(&spec),
        FixtureMemory::new(&spec, &env),
        driver,
        Storage {
            files: &mut files,
            containers: &mut containers,
            groups: &mut gslots,
            devices: &mut devices,
        },
        Config::default(),
    );
    let e = |what: &str, e: Errno| format!("registry set-up: {what}: {}", e.name());
    for (g, names) in &groups {
        for n in names {
            let bdf = Bdf::parse(n).ok_or_else(|| format!("bad topology BDF `{n}`"))?;
            vfio.register_device(n, *g, PciDevice::new(bdf))
                .map_err(|x| e("register_device", x))?;
        }
    }
    let id = vfio
        .device_by_name(&MOCK_BDF.to_string())
        .ok_or("registry set-up: the mock function is not registered")?;
    let container = vfio.open_container().map_err(|x| e("open_container", x))?;
    let group = vfio.open_group(own_group).map_err(|x| e("open_group", x))?;
    vfio.group_set_container(group, container.raw())
        .map_err(|x| e("GROUP_SET_CONTAINER", x))?;
    vfio.set_iommu(container, 3)
        .map_err(|x| e("SET_IOMMU", x))?;
    let mut group_fds = BTreeMap::from([(own_group, group)]);
    for (g, _) in &groups {
        if *g != own_group {
            let fd = vfio.open_group(*g).map_err(|x| e("open_group", x))?;
            group_fds.insert(*g, fd);
        }
    }
    let sut = Sut::Registry {
        vfio: &mut vfio,
        id,
        group,
        dev_fd: None,
        group_fds,
        other: container,
    };
    run_ops(case, sut, autoopen, log)
}

fn run_ops(case: &toml::Table, sut: Sut<'_, '_>, autoopen: bool, log: &mut Vec<String>) -> R<()> {
    let mut h = Harness {
        sut,
        names: BTreeMap::new(),
        next_fd: 10,
        groups: BTreeMap::new(),
        intx_cond: false,
        log: Vec::new(),
    };
    let r = run_ops_on(case, &mut h, autoopen);
    *log = std::mem::take(&mut h.log);
    r
}

fn run_ops_on(case: &toml::Table, h: &mut Harness<'_, '_>, autoopen: bool) -> R<()> {
    if let Some(fds) = case.get("fds") {
        for (name, spec) in as_table(fds)? {
            let t = as_table(spec)?;
            let kind = match t.get("kind").map(as_str).transpose()? {
                Some("eventfd") => MockFd::Event,
                _ => MockFd::Other,
            };
            let fd = h.new_fd(name, kind);
            if t.get("kind").map(as_str).transpose()? == Some("group") {
                let g = t.get("group").map(as_u64).transpose()?.unwrap_or(0) as u32;
                h.groups.insert(fd, g);
            }
        }
    }
    let notevent = h.next_fd;
    h.next_fd += 1;
    h.drv_mut().events_mut().fds.insert(notevent, MockFd::Other);
    h.names.insert("@notevent".into(), notevent);
    if autoopen {
        h.open().map_err(|e| format!("open failed: {e:?}"))?;
    }
    let ops = case
        .get("ops")
        .map(as_array)
        .transpose()?
        .cloned()
        .unwrap_or_default();
    for (i, op) in ops.iter().enumerate() {
        let t = as_table(op)?;
        h.log.push(format!("op #{}", i + 1));
        h.step(t)
            .map_err(|e| format!("op #{} {}: {e}", i + 1, describe(op)))?;
        h.pump_intx();
    }
    Ok(())
}

fn u(t: &toml::Table, k: &str) -> R<u64> {
    as_u64(t.get(k).ok_or_else(|| format!("missing `{k}`"))?)
}

fn expect_err(t: &toml::Table) -> R<Option<Errno>> {
    t.get("expect_err").map(as_errno).transpose()
}

/// Compares an operation's outcome with `expect_err` (when present).
fn check_result<T>(t: &toml::Table, r: &Result<T, Errno>) -> R<bool> {
    match (expect_err(t)?, r) {
        (Some(e), Err(g)) if e == *g => Ok(false),
        (Some(e), Err(g)) => Err(format!("expected {e:?}, got {g:?}")),
        (Some(e), Ok(_)) => Err(format!("expected {e:?}, got success")),
        (None, Err(g)) => Err(format!("unexpected {g:?}")),
        (None, Ok(_)) => Ok(true),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn le(b: &[u8]) -> u64 {
    b.iter()
        .enumerate()
        .fold(0, |a, (i, x)| a | (u64::from(*x) << (8 * i)))
}

fn field(fields: &toml::Table, k: &str, got: u64) -> R<()> {
    if let Some(v) = fields.get(k) {
        let want = as_u64(v)?;
        if want != got {
            return Err(format!("{k}: expected {want:#x}, got {got:#x}"));
        }
    }
    Ok(())
}

impl Harness<'_, '_> {
    fn new_fd(&mut self, name: &str, kind: MockFd) -> i32 {
        let fd = self.next_fd;
        self.next_fd += 1;
        self.drv_mut().events_mut().fds.insert(fd, kind);
        self.names.insert(name.to_string(), fd);
        fd
    }

    /// A named eventfd (created on first use), `@bad`, `@notevent` or a literal number.
    fn fd(&mut self, v: &Value) -> R<i32> {
        if let Some(n) = v.as_integer() {
            return Ok(n as i32);
        }
        let name = as_str(v)?;
        if name == "@bad" {
            return Ok(BAD_FD);
        }
        if let Some(fd) = self.names.get(name) {
            return Ok(*fd);
        }
        Ok(self.new_fd(name, MockFd::Event))
    }

    fn read(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; len];
        let n = match &mut self.sut {
            Sut::Direct { driver, dev } => driver.read(dev, offset, &mut buf)?,
            Sut::Registry { vfio, dev_fd, .. } => {
                vfio.device_read(dev_fd.ok_or(NOT_OPEN)?, offset, &mut buf)?
            }
        };
        buf.truncate(n);
        Ok(buf)
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        match &mut self.sut {
            Sut::Direct { driver, dev } => driver.write(dev, offset, data),
            Sut::Registry { vfio, dev_fd, .. } => {
                vfio.device_write(dev_fd.ok_or(NOT_OPEN)?, offset, data)
            }
        }
    }

    /// Opens the device: `open_device` directly, or `GROUP_GET_DEVICE_FD` on the group.
    fn open(&mut self) -> Result<(), Errno> {
        match &mut self.sut {
            Sut::Direct { driver, dev } => driver.open_device(dev),
            Sut::Registry {
                vfio,
                group,
                dev_fd,
                ..
            } => {
                let mut name = format!("{MOCK_BDF}\0").into_bytes();
                let fd = vfio.ioctl(*group, 0x3b6a, vfio_core::abi::Arg::Buffer(&mut name))?;
                *dev_fd = Some(Fd::from_raw(fd as i32));
                Ok(())
            }
        }
    }

    /// Closes the device: `close_device` directly, or closes the device file.
    fn close(&mut self) {
        match &mut self.sut {
            Sut::Direct { driver, dev } => driver.close_device(dev),
            Sut::Registry { vfio, dev_fd, .. } => {
                if let Some(fd) = dev_fd.take() {
                    let _ = vfio.close(fd);
                }
            }
        }
    }

    fn step(&mut self, t: &toml::Table) -> R<()> {
        let op = as_str(t.get("op").ok_or("op without `op`")?)?;
        let cfg = 7u64 << REGION_SHIFT;
        match op {
            "open" => {
                let r = self.open();
                self.note(format!("open {r:?}"));
                check_result(t, &r)?;
            }
            "close" => self.close(),
            "cfg_read" | "region_read" => {
                let base = if op == "cfg_read" {
                    cfg
                } else {
                    u(t, "index")? << REGION_SHIFT
                };
                let at = u(t, "at")?;
                let len = match t.get("width") {
                    Some(w) => as_u64(w)? as usize,
                    None => u(t, "len")? as usize,
                };
                let r = self.read(base + at, len);
                self.note(format!("read {r:02x?}"));
                if check_result(t, &r)? {
                    let got = r.unwrap_or_default();
                    if let Some(e) = t.get("expect") {
                        let want = as_u64(e)?;
                        if got.len() != len || le(&got) != want {
                            return Err(format!("expected {want:#x}, got {:#x}", le(&got)));
                        }
                    }
                    if let Some(e) = t.get("expect_hex") {
                        let want = hex_bytes(as_str(e)?)?;
                        if got != want {
                            return Err(format!("expected [{}], got [{}]", hex(&want), hex(&got)));
                        }
                    }
                }
            }
            "cfg_write" | "region_write" => {
                let base = if op == "cfg_write" {
                    cfg
                } else {
                    u(t, "index")? << REGION_SHIFT
                };
                let at = u(t, "at")?;
                let data = match t.get("hex") {
                    Some(h) => hex_bytes(as_str(h)?)?,
                    None => {
                        let w = u(t, "width")? as usize;
                        u(t, "value")?.to_le_bytes()[..w.min(8)].to_vec()
                    }
                };
                let r = self.write(base + at, &data);
                self.note(format!("write {r:?}"));
                if check_result(t, &r)? {
                    field(t, "expect_ret", r.unwrap_or(0) as u64)?;
                }
            }
            "hw_read" => {
                let at = u(t, "at")? as usize;
                let w = u(t, "width")? as usize;
                let got = u64::from(self.drv().access().peek(at, w));
                self.note(format!("hw {got:#x}"));
                field(t, "expect", got)?;
            }
            "hw_write" => {
                let at = u(t, "at")? as usize;
                let w = u(t, "width")? as usize;
                let v = u(t, "value")? as u32;
                self.drv_mut().access_mut().poke(at, w, v);
            }
            "get_info" => {
                let argsz = t.get("argsz").map(as_u64).transpose()?.unwrap_or(16);
                let mut scratch = [0u8; 256];
                let r = if let Some(reg) = {
                    let mut buf = vec![0u8; (argsz as usize).max(24)];
                    buf[..4].copy_from_slice(&(argsz as u32).to_le_bytes());
                    self.reg_ioctl(0x3b6b, &mut buf).map(|r| (r, buf))
                } {
                    // The registry adds CAPS (0x80) for a non-empty device-info chain.
                    let (r, buf) = reg;
                    r.map(|_| vfio_core::vfio::DeviceInfo {
                        flags: rd32(&buf, 4) & !0x80,
                        num_regions: rd32(&buf, 8),
                        num_irqs: rd32(&buf, 12),
                    })
                } else if argsz < 16 {
                    Err(Errno::EINVAL)
                } else {
                    self.with_dev(|d, s| d.device_info(s, &mut CapChain::new(&mut scratch)))
                        .and_then(|r| r)
                };
                self.note(format!("get_info {r:?}"));
                if check_result(t, &r)? {
                    let info = r.map_err(|e| format!("{e:?}"))?;
                    if let Some(e) = t.get("expect") {
                        let e = as_table(e)?;
                        field(e, "flags", u64::from(info.flags))?;
                        field(e, "num_regions", u64::from(info.num_regions))?;
                        field(e, "num_irqs", u64::from(info.num_irqs))?;
                    }
                }
            }
            "get_region_info" => self.region_info(t)?,
            "get_irq_info" => {
                let argsz = t.get("argsz").map(as_u64).transpose()?.unwrap_or(16);
                let index = u(t, "index")? as u32;
                let r = if let Some(reg) = {
                    let mut buf = vec![0u8; (argsz as usize).max(16)];
                    buf[..4].copy_from_slice(&(argsz as u32).to_le_bytes());
                    buf[8..12].copy_from_slice(&index.to_le_bytes());
                    self.reg_ioctl(0x3b6d, &mut buf).map(|r| (r, buf))
                } {
                    let (r, buf) = reg;
                    r.map(|_| vfio_core::vfio::IrqInfo {
                        flags: rd32(&buf, 4),
                        count: rd32(&buf, 12),
                    })
                } else if argsz < 16 || index >= 5 {
                    Err(Errno::EINVAL)
                } else {
                    self.with_dev(|d, s| d.irq_info(s, index)).and_then(|r| r)
                };
                self.note(format!("irq_info {r:?}"));
                if check_result(t, &r)? {
                    let info = r.map_err(|e| format!("{e:?}"))?;
                    if let Some(e) = t.get("expect") {
                        let e = as_table(e)?;
                        field(e, "flags", u64::from(info.flags))?;
                        field(e, "count", u64::from(info.count))?;
                    }
                }
            }
            "set_irqs" => self.set_irqs(t)?,
            "device_reset" => {
                let r = match self.reg_ioctl(0x3b6f, &mut []) {
                    Some(r) => r.map(|_| ()),
                    None => self.with_dev(|d, s| d.reset(s)).and_then(|r| r),
                };
                self.note(format!("reset {r:?}"));
                check_result(t, &r)?;
            }
            "expect_state" => {
                let m = self.drv().access();
                let seen = format!(
                    "state reset {} bus {} power {} line {}",
                    m.reset_count, m.bus_reset_count, m.power_state, m.intx_line_enabled
                );
                self.log.push(seen);
                let m = self.drv().access();
                field(t, "reset_count", u64::from(m.reset_count))?;
                field(t, "bus_reset_count", u64::from(m.bus_reset_count))?;
                if let Some(p) = t.get("power_state") {
                    let want = match as_str(p)? {
                        "D0" => 0,
                        "D1" => 1,
                        "D2" => 2,
                        "D3hot" => 3,
                        s => return Err(format!("unknown power state `{s}`")),
                    };
                    if m.power_state != want {
                        return Err(format!(
                            "power_state: expected D{want}, got D{}",
                            m.power_state
                        ));
                    }
                }
                if let Some(l) = t.get("host_intx_line") {
                    let want = match as_str(l)? {
                        "enabled" => true,
                        "disabled" => false,
                        s => return Err(format!("unknown host_intx_line `{s}`")),
                    };
                    if m.intx_line_enabled != want {
                        return Err(format!(
                            "host_intx_line: expected {}, got {}",
                            as_str(l)?,
                            if m.intx_line_enabled {
                                "enabled"
                            } else {
                                "disabled"
                            }
                        ));
                    }
                }
            }
            "bar_backing_read" => {
                let bar = u(t, "bar")? as u8;
                let got = self
                    .drv()
                    .access()
                    .bar_backing(bar, u(t, "at")?, u(t, "len")? as usize);
                let want = hex_bytes(as_str(t.get("expect_hex").ok_or("missing expect_hex")?)?)?;
                if got != want {
                    return Err(format!("expected [{}], got [{}]", hex(&want), hex(&got)));
                }
            }
            "vpd_backing_read" => {
                let at = u(t, "at")? as usize;
                let len = u(t, "len")? as usize;
                let got = self
                    .drv()
                    .access()
                    .vpd
                    .get(at..at + len)
                    .unwrap_or_default()
                    .to_vec();
                let want = hex_bytes(as_str(t.get("expect_hex").ok_or("missing expect_hex")?)?)?;
                if got != want {
                    return Err(format!("expected [{}], got [{}]", hex(&want), hex(&got)));
                }
            }
            "intx_assert" => self.drv_mut().access_mut().intx_pending = true,
            "hot_reset_info" => {
                let argsz = u(t, "argsz")? as u32;
                let mut buf = vec![0u8; (argsz as usize).max(12)];
                buf[..4].copy_from_slice(&argsz.to_le_bytes());
                let r = match self.reg_ioctl(0x3b70, &mut buf) {
                    Some(r) => r.map(|_| ()),
                    None => self
                        .with_dev(|d, s| d.hot_reset_info(s, &mut buf))
                        .and_then(|r| r),
                };
                self.note(format!("hot_reset_info {r:?} {buf:02x?}"));
                let got_count = u64::from(u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]));
                let ok = check_result(t, &r)?;
                if let Some(e) = t.get("expect") {
                    let e = as_table(e)?;
                    field(e, "count", got_count)?;
                    if ok {
                        let flags = u64::from(u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]));
                        field(e, "flags", flags)?;
                        for (i, d) in e
                            .get("devices")
                            .map(as_array)
                            .transpose()?
                            .into_iter()
                            .flatten()
                            .enumerate()
                        {
                            let d = as_table(d)?;
                            let at = 12 + 8 * i;
                            let b = buf.get(at..at + 8).ok_or("entry past the buffer")?;
                            let ctx = |e: String| format!("device {i}: {e}");
                            field(d, "group", le(&b[0..4])).map_err(ctx)?;
                            field(d, "segment", le(&b[4..6])).map_err(ctx)?;
                            field(d, "bus", u64::from(b[6])).map_err(ctx)?;
                            field(d, "devfn", u64::from(b[7])).map_err(ctx)?;
                        }
                    }
                }
            }
            "hot_reset" => {
                let mut fds = Vec::new();
                for v in t
                    .get("fds")
                    .map(as_array)
                    .transpose()?
                    .into_iter()
                    .flatten()
                {
                    fds.push(self.fd(v)?);
                }
                let count = t
                    .get("count")
                    .map(as_u64)
                    .transpose()?
                    .unwrap_or(fds.len() as u64);
                let flags = t.get("flags").map(as_u64).transpose()?.unwrap_or(0) as u32;
                let argsz = t
                    .get("argsz")
                    .map(as_u64)
                    .transpose()?
                    .unwrap_or(12 + 4 * count) as u32;
                let mut buf = Vec::new();
                buf.extend_from_slice(&argsz.to_le_bytes());
                buf.extend_from_slice(&flags.to_le_bytes());
                buf.extend_from_slice(&(count as u32).to_le_bytes());
                for fd in &fds {
                    let fd = self.registry_fd(*fd);
                    buf.extend_from_slice(&fd.to_le_bytes());
                }
                // The resolver reads a snapshot of the descriptor table.
                let events = MockEvents {
                    fds: self.drv().events().fds.clone(),
                    signals: self.drv().events().signals.clone(),
                };
                let groups = self.groups.clone();
                let r = match self.reg_ioctl(0x3b71, &mut buf) {
                    Some(r) => r.map(|_| ()),
                    None => {
                        let view = HarnessFds {
                            events: &events,
                            groups: &groups,
                        };
                        self.with_dev(|d, s| d.hot_reset(s, &mut buf, &view))
                            .and_then(|r| r)
                    }
                };
                self.note(format!("hot_reset {r:?}"));
                check_result(t, &r)?;
            }
            "intx_deassert" => self.drv_mut().access_mut().intx_pending = false,
            "msi_fire" => {
                let kind = if u(t, "index")? == 2 {
                    MsiKind::Msix
                } else {
                    MsiKind::Msi
                };
                let v = u(t, "vector")? as u16;
                if let Some((d, s)) = self.parts() {
                    d.msi_fired(s, kind, v);
                }
            }
            "signal" => {
                let fd = self.fd(t.get("eventfd").ok_or("missing eventfd")?)?;
                if self.names.get("@unmask") == Some(&fd) || self.is_unmask_fd(fd) {
                    let _ = self.with_dev(|d, s| d.intx_unmask(s));
                }
            }
            "expect_signals" => {
                let fd = self.fd(t.get("eventfd").ok_or("missing eventfd")?)?;
                let got = self
                    .drv()
                    .events()
                    .signals
                    .borrow()
                    .get(&fd)
                    .copied()
                    .unwrap_or(0);
                field(t, "count", u64::from(got))?;
            }
            "aer_error" => {
                if let Some((d, s)) = self.parts() {
                    d.aer_error(s);
                }
            }
            "host_request" => {
                let count = t.get("count").map(as_u64).transpose()?.unwrap_or(0) as u32;
                self.host_request(count)?;
            }
            other => return Err(format!("unsupported op `{other}` (no core interface yet)")),
        }
        Ok(())
    }

    /// The host INTx handler runs each time "pin driven AND host line enabled AND handler
    /// registered" becomes true (schema "Mock platform semantics").
    fn pump_intx(&mut self) {
        for _ in 0..4 {
            let open = self.is_open();
            let m = self.drv().access();
            let driven = m.intx_pending && (!m.facts.intx_masking || m.peek(0x04, 2) & 0x0400 == 0);
            let cond = driven && m.intx_requested && m.intx_line_enabled && open;
            let rising = cond && !self.intx_cond;
            self.intx_cond = cond;
            if !rising {
                return;
            }
            let _ = self.with_dev(|d, s| d.intx_fired(s));
        }
    }

    fn is_unmask_fd(&self, fd: i32) -> bool {
        self.names.get("#unmask") == Some(&fd)
    }

    fn region_info(&mut self, t: &toml::Table) -> R<()> {
        let argsz = t.get("argsz").map(as_u64).transpose()?.unwrap_or(32) as u32;
        let index = u(t, "index")? as u32;
        let mut scratch = [0u8; 1024];
        let mut chain = CapChain::new(&mut scratch);
        if let Some((r, buf)) = {
            let mut buf = vec![0u8; (argsz as usize).max(32)];
            buf[..4].copy_from_slice(&argsz.to_le_bytes());
            buf[8..12].copy_from_slice(&index.to_le_bytes());
            self.reg_ioctl(0x3b6c, &mut buf).map(|r| (r, buf))
        } {
            return self.region_info_bytes(t, r.map(|_| ()), &buf);
        }
        let r = if argsz < 32 || index >= 9 {
            Err(Errno::EINVAL)
        } else {
            self.with_dev(|d, s| d.region_info(s, index, &mut chain))
                .and_then(|r| r)
        };
        if let Err(e) = &r {
            self.note(format!("region_info {e:?}"));
        }
        if !check_result(t, &r)? {
            return Ok(());
        }
        let info = r.map_err(|e| format!("{e:?}"))?;
        let chain = chain.as_bytes().to_vec();
        let mut flags = info.flags;
        let (mut argsz_out, mut cap_offset) = (argsz, 0u32);
        let mut caps_bytes = None;
        if !chain.is_empty() {
            flags |= 0x8;
            let needed = 32 + chain.len() as u32;
            if argsz < needed {
                argsz_out = needed;
            } else {
                cap_offset = 32;
                caps_bytes = Some(chain);
            }
        }
        // The bytes the ABI would show: the fixed structure, then the chain (with
        // buffer-relative `next` offsets) when it fits.
        let mut image = vec![0u8; (argsz as usize).max(32)];
        image[..4].copy_from_slice(&argsz_out.to_le_bytes());
        image[4..8].copy_from_slice(&flags.to_le_bytes());
        image[8..12].copy_from_slice(&index.to_le_bytes());
        image[12..16].copy_from_slice(&cap_offset.to_le_bytes());
        image[16..24].copy_from_slice(&info.size.to_le_bytes());
        image[24..32].copy_from_slice(&info.offset.to_le_bytes());
        if let Some(c) = &caps_bytes {
            let mut c = c.clone();
            let mut at = 0usize;
            loop {
                let next = rd32(&c, at + 4) as usize;
                if next == 0 || next <= at {
                    break;
                }
                c[at + 4..at + 8].copy_from_slice(&((next + 32) as u32).to_le_bytes());
                at = next;
            }
            image[32..32 + c.len()].copy_from_slice(&c);
        }
        self.note(format!("region_info Ok {image:02x?}"));
        check_region(t, flags, &info, argsz_out, cap_offset, caps_bytes)
    }

    /// The registry path of `get_region_info`: decodes the written-back buffer into the
    /// values the direct path computes, then checks the same expectations.
    fn region_info_bytes(&mut self, t: &toml::Table, r: Result<(), Errno>, buf: &[u8]) -> R<()> {
        match &r {
            Ok(()) => self.note(format!("region_info Ok {:02x?}", &buf[..buf.len().max(32)])),
            Err(e) => self.note(format!("region_info {e:?}")),
        }
        if !check_result(t, &r)? {
            return Ok(());
        }
        let flags = rd32(buf, 4);
        let cap_offset = rd32(buf, 12);
        let info = vfio_core::vfio::RegionInfo {
            flags,
            size: rd64(buf, 16),
            offset: rd64(buf, 24),
        };
        // The chain with chain-relative `next` offsets, as the driver built it.
        let caps = if cap_offset == 32 {
            let mut c = buf[32..].to_vec();
            let mut at = 0usize;
            loop {
                let next = rd32(&c, at + 4) as usize;
                if next == 0 {
                    break;
                }
                let rel = next - 32;
                c[at + 4..at + 8].copy_from_slice(&(rel as u32).to_le_bytes());
                if rel <= at {
                    break;
                }
                at = rel;
            }
            Some(c)
        } else {
            None
        };
        check_region(t, flags, &info, rd32(buf, 0), cap_offset, caps)
    }
}

fn check_region(
    t: &toml::Table,
    flags: u32,
    info: &vfio_core::vfio::RegionInfo,
    argsz_out: u32,
    cap_offset: u32,
    caps_bytes: Option<Vec<u8>>,
) -> R<()> {
    {
        if let Some(e) = t.get("expect") {
            let e = as_table(e)?;
            field(e, "flags", u64::from(flags))?;
            field(e, "size", info.size)?;
            field(e, "offset", info.offset)?;
            field(e, "argsz", u64::from(argsz_out))?;
            field(e, "cap_offset", u64::from(cap_offset))?;
        }
        if let Some(want) = t.get("caps") {
            let bytes = caps_bytes.ok_or("no capability chain returned")?;
            let want = as_array(want)?;
            let mut at = 0usize;
            for (i, w) in want.iter().enumerate() {
                let w = as_table(w)?;
                let hdr = bytes.get(at..at + 8).ok_or("chain too short")?;
                let id = u64::from(u16::from_le_bytes([hdr[0], hdr[1]]));
                let version = u64::from(u16::from_le_bytes([hdr[2], hdr[3]]));
                let next = u64::from(u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]));
                let next_abs = if next == 0 { 0 } else { next + 32 };
                field(w, "id", id).map_err(|e| format!("cap {i}: {e}"))?;
                field(w, "version", version).map_err(|e| format!("cap {i}: {e}"))?;
                field(w, "next", if next_abs == 0 { 0 } else { next_abs })
                    .map_err(|e| format!("cap {i}: {e}"))?;
                if id == 1 {
                    let p = bytes.get(at + 8..).ok_or("sparse cap too short")?;
                    let nr = u64::from(u32::from_le_bytes([p[0], p[1], p[2], p[3]]));
                    field(w, "nr_areas", nr).map_err(|e| format!("cap {i}: {e}"))?;
                    if let Some(areas) = w.get("areas") {
                        for (j, a) in as_array(areas)?.iter().enumerate() {
                            let a = as_table(a)?;
                            let s = p.get(8 + 16 * j..8 + 16 * j + 16).ok_or("areas short")?;
                            field(a, "offset", le(&s[..8]))
                                .map_err(|e| format!("area {j}: {e}"))?;
                            field(a, "size", le(&s[8..])).map_err(|e| format!("area {j}: {e}"))?;
                        }
                    }
                }
                if next == 0 {
                    break;
                }
                at = next as usize;
            }
        }
        Ok(())
    }
}

impl Harness<'_, '_> {
    /// The descriptor a hot-reset list carries on this path: on the registry path a
    /// mock group descriptor becomes the registry's group file of that IOMMU group and
    /// any other open mock descriptor the container file (an open file that is not a
    /// group); unknown numbers stay as they are.
    fn registry_fd(&self, fd: i32) -> i32 {
        let Sut::Registry {
            group_fds, other, ..
        } = &self.sut
        else {
            return fd;
        };
        if let Some(g) = self.groups.get(&fd) {
            return group_fds.get(g).map_or(BAD_FD, |f| f.raw());
        }
        if self.drv().events().fds.contains_key(&fd) {
            return other.raw();
        }
        fd
    }

    /// The host asks for the device back: `request(count)` directly; on the registry
    /// path count 0 starts unregistering the device (the registry calls `request(0)`)
    /// and every later count is the next 10-second tick.
    fn host_request(&mut self, count: u32) -> R<()> {
        match &mut self.sut {
            Sut::Direct { driver, dev } => driver.request(dev, count),
            Sut::Registry { vfio, id, .. } => {
                if count == 0 {
                    vfio.unregister_device(*id)
                        .map_err(|e| format!("unregister_device: {}", e.name()))?;
                } else {
                    vfio.advance_time(10_000);
                }
            }
        }
        Ok(())
    }

    fn set_irqs(&mut self, t: &toml::Table) -> R<()> {
        let flags = match (t.get("flags_raw"), t.get("flags")) {
            (Some(raw), _) => as_u64(raw)? as u32,
            (None, Some(list)) => {
                let mut f = 0u32;
                for n in as_array(list)? {
                    f |= match as_str(n)? {
                        "DATA_NONE" => irq_set_flags::DATA_NONE,
                        "DATA_BOOL" => irq_set_flags::DATA_BOOL,
                        "DATA_EVENTFD" => irq_set_flags::DATA_EVENTFD,
                        "ACTION_MASK" => irq_set_flags::ACTION_MASK,
                        "ACTION_UNMASK" => irq_set_flags::ACTION_UNMASK,
                        "ACTION_TRIGGER" => irq_set_flags::ACTION_TRIGGER,
                        s => return Err(format!("unknown flag `{s}`")),
                    };
                }
                f
            }
            (None, None) => 0,
        };
        let index = u(t, "index")? as u32;
        let start = t.get("start").map(as_u64).transpose()?.unwrap_or(0) as u32;
        let count = t.get("count").map(as_u64).transpose()?.unwrap_or(0) as u32;
        let mut data = Vec::new();
        let unmask = flags & irq_set_flags::ACTION_UNMASK != 0;
        for v in t
            .get("data")
            .map(as_array)
            .transpose()?
            .into_iter()
            .flatten()
        {
            if flags & irq_set_flags::DATA_EVENTFD != 0 {
                let fd = self.fd(v)?;
                if unmask && index == 0 {
                    self.names.insert("#unmask".into(), fd);
                }
                data.extend_from_slice(&fd.to_le_bytes());
            } else {
                data.push(as_u64(v)? as u8);
            }
        }
        let elem = match flags & irq_set_flags::DATA_TYPE_MASK {
            irq_set_flags::DATA_BOOL => 1u64,
            irq_set_flags::DATA_EVENTFD => 4,
            _ => 0,
        };
        let argsz = match t.get("argsz") {
            Some(a) => as_u64(a)? as u32,
            None => (20 + u64::from(count) * elem) as u32,
        };
        let want_len = usize::try_from(argsz.saturating_sub(20)).unwrap_or(0);
        if data.len() < want_len {
            data.resize(want_len, 0);
        }
        let hdr = IrqSet {
            argsz,
            flags,
            index,
            start,
            count,
        };
        let mut buf = Vec::new();
        for v in [argsz, flags, index, start, count] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        buf.extend_from_slice(&data);
        let r = match self.reg_ioctl(0x3b6e, &mut buf) {
            Some(r) => r.map(|v| v as u32),
            None => {
                let num = if index < 5 {
                    self.with_dev(|d, s| d.irq_info(s, index).map_or(0, |i| i.count))
                        .unwrap_or(0)
                } else {
                    0
                };
                validate_irq_set(&hdr, num, 5).and_then(|size| {
                    let req = IrqSetRequest {
                        flags,
                        index,
                        start,
                        count,
                    };
                    let d = data.get(..size).ok_or(Errno::EFAULT)?.to_vec();
                    self.with_dev(|dr, s| dr.set_irqs(s, &req, &d))
                        .and_then(|r| r)
                })
            }
        };
        self.note(format!("set_irqs {r:?}"));
        if check_result(t, &r)? {
            let want = t.get("expect_ret").map(as_u64).transpose()?.unwrap_or(0);
            let got = u64::from(r.unwrap_or(0));
            if want != got {
                return Err(format!("expect_ret: expected {want}, got {got}"));
            }
        }
        Ok(())
    }
}
