//! Config-space virtualization: the capability walk, the virtual copy and the access path
//! (spec/03-pci-config.md §1–§3, §5–§8).
//!
//! Memory: one [`ConfigSpace`] is a 4096-byte virtual copy plus a sorted table of at most
//! [`CAP_TABLE_CAPACITY`] capability entries (8 bytes each) and a few scalars, about
//! 4.5 KiB. Byte ownership is found by binary search in the table instead of a per-byte map;
//! a 48-byte per-dword index answers it in one load for the standard space (0x40–0xFF).

use heapless::Vec;

use crate::errno::{Errno, Result};
use crate::platform::{
    BarIndex, BarKind, Bdf, FunctionFacts, IntxLine, PciAccess, ResetMethod, Width,
};

use super::perm::{self, Access};
use super::perr;

/// Largest config space in bytes (PCIe).
pub const CONFIG_SPACE_MAX: usize = 4096;
/// Bound on the standard capability walk: `(256 - 64) / 4` (spec/03 §1.3).
pub const MAX_STANDARD_CAPS: usize = 48;
/// Bound on the extended capability walk, in capabilities visited (kept and hidden):
/// 480 = `(4096 - 256) / 8`, the TTL of the PCI core's own extended-capability search
/// (STYLE.md guideline 5).
/// The walk stops at `min(480, (size - 256) / 4)` steps and cuts the chain there
/// ([`ChainDefectKind::TooLong`]). spec/03 §1.4 step 1 allows `(size - 256) / 4` (960 for
/// 4096 bytes); the two differ only for a loop-free chain of more than 480 capabilities.
pub const MAX_EXTENDED_CAPS: usize = 480;
/// Capacity of the capability table (kept, placeholder and hidden entries together).
///
/// 48 covers every device of the shared corpus many times over. When the table is full,
/// the walk stops and the chain is cut at that point in the virtual copy (the remaining
/// capabilities are invisible to the user's walk and their bytes are reached raw, like
/// the gaps of spec/03 §3.4); [`ConfigSpace::truncated`] then reports it.
pub const CAP_TABLE_CAPACITY: usize = 48;

/// Dwords of the standard capability area 0x40–0xFF, indexed by [`ConfigSpace`]'s owner
/// index.
const STD_DWORDS: usize = (0x100 - 0x40) / 4;
/// Owner index entry flag: the whole dword has one owner, given by the low 7 bits (0 = raw,
/// `i + 1` = capability `i`). Without it (the initial 0), the owner is searched.
const UNIFORM: u8 = 0x80;
const _: () = assert!(CAP_TABLE_CAPACITY < 0x7F);

/// Whether header offset `pos` lies in a BAR register (0x10–0x27) or the ROM BAR
/// (0x30–0x33), the registers of the BAR sizing emulation (spec/03 §5.1).
#[inline]
const fn in_bar_area(pos: u16) -> bool {
    matches!(pos, 0x10..=0x27 | 0x30..=0x33)
}

/// Config offset of BAR register `i` of the header: BAR0–5 at `0x10 + 4i` for `i < 6`,
/// the Expansion ROM BAR at 0x30 for `i >= 6` (the order of [`ConfigSpace`]'s BAR save
/// area, spec/03 §5.3).
#[inline]
pub(crate) const fn bar_reg(i: usize) -> u16 {
    if i < 6 {
        0x10 + 4 * i as u16
    } else {
        0x30
    }
}

/// Width in bytes of the next naturally aligned access at `pos` with `left` bytes to go
/// (spec/03 §3.1 step 4, spec/05 §6): the largest of `max`, …, 2, 1 (`max` is 8, 4, 2 or
/// 1) that `left` holds and `pos` is a multiple of.
#[inline]
pub(crate) const fn natural_width(pos: u64, left: usize, max: usize) -> usize {
    if max >= 8 && left >= 8 && pos % 8 == 0 {
        8
    } else if max >= 4 && left >= 4 && pos % 4 == 0 {
        4
    } else if max >= 2 && left >= 2 && pos % 2 == 0 {
        2
    } else {
        1
    }
}

/// Status register bit 4: capability list present.
const STATUS_CAP_LIST: u16 = 0x0010;
/// Command register bits.
pub(crate) const CMD_IO: u16 = 0x0001;
pub(crate) const CMD_MEMORY: u16 = 0x0002;
pub(crate) const CMD_MASTER: u16 = 0x0004;
pub(crate) const CMD_INTX_DISABLE: u16 = 0x0400;

/// Which ID space a capability belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CapSpace {
    /// Standard capability list (0x40–0xFF, 8-bit IDs).
    Standard,
    /// PCIe extended capability list (0x100–0xFFF, 16-bit IDs).
    Extended,
}

/// How a capability found by the walk is presented to the user (spec/03 §1.3–§1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CapVisibility {
    /// Kept in the user's chain; its bytes are virtualized by its permission set.
    Kept,
    /// Removed from the user's chain (pointer patched); its bytes are raw.
    Hidden,
    /// A hidden first extended capability, kept as a 4-byte ID-0 placeholder (§1.4).
    Placeholder,
}

/// One capability found by the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CapEntry {
    /// Byte offset of the capability's first byte in config space.
    pub offset: u16,
    /// Bytes owned in config space (0 for a hidden capability: its bytes are raw).
    pub len: u16,
    /// Capability ID (8-bit for standard, 16-bit for extended).
    pub id: u16,
    /// Standard or extended space.
    pub space: CapSpace,
    /// Kept, hidden or placeholder.
    pub visibility: CapVisibility,
}

impl CapEntry {
    /// Whether this entry owns the config byte at `pos` (bytes from the start of config
    /// space): `offset <= pos < offset + len`; never for a hidden entry (`len == 0`).
    pub const fn contains(&self, pos: u16) -> bool {
        self.len != 0 && pos >= self.offset && (pos - self.offset) < self.len
    }

    /// Name of the capability (e.g. `"MSI-X"`, `"AER"`).
    pub const fn name(&self) -> &'static str {
        match self.visibility {
            CapVisibility::Placeholder => "hidden-first-ecap",
            _ => perm::cap_name(self.id, matches!(self.space, CapSpace::Extended)),
        }
    }
}

/// Who owns a config byte (spec/03 §1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Owner {
    /// The type-0 header (0x00–0x3F).
    Header,
    /// The capability at this index of [`ConfigSpace::capabilities`].
    Capability(usize),
    /// Nothing: raw access to hardware (spec/03 §3.4).
    Raw,
}

/// How one config byte is handled by the access path (spec/03 §3), for tools
/// (`vfio config`) and tests. It describes a one-byte access at that offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct BytePermission {
    /// Owner name: `"header"`, a capability name, or `"raw"`.
    pub owner: &'static str,
    /// The owner.
    pub owner_kind: Owner,
    /// Bits a read of this byte takes from the virtual copy (the others come from
    /// hardware).
    ///
    /// One exception depends on the access width (spec/03 §3.3 direct read): the ID byte of
    /// a standard capability without a permission table reads from hardware alone (so
    /// `virt` is 0 here) but from the virtual copy as part of a wider read starting at the
    /// capability. Both hold the same value unless the user raw-wrote a vendor-specific
    /// capability's ID byte.
    pub virt: u8,
    /// Bits a user write changes: with `raw_write`, in hardware; otherwise in the virtual
    /// copy for the bits of `virt` and in hardware for the others. Bits outside `write`
    /// are dropped. (Handlers may act beyond this: spec/03 §5–§6.)
    pub write: u8,
    /// Reads and writes go straight to hardware (spec/03 §3.4): `virt == 0`,
    /// `write == 0xFF`, `raw_write`.
    pub raw: bool,
    /// Writes go straight to hardware, unfiltered: raw bytes, and vendor-specific
    /// capabilities (standard 0x09, VSEC, DVSEC: spec/03 §4.5), whose ID / next / header
    /// bytes nevertheless read from the virtual copy.
    pub raw_write: bool,
}

impl BytePermission {
    /// Bits of this byte a user write can change in hardware through the permission
    /// tables (excluding the handlers' own effects, spec/03 §5–§6).
    pub const fn hardware_write(&self) -> u8 {
        if self.raw_write {
            self.write
        } else {
            self.write & !self.virt
        }
    }

    /// Bits of this byte a user write changes in the virtual copy.
    pub const fn virtual_write(&self) -> u8 {
        if self.raw_write {
            0
        } else {
            self.write & self.virt
        }
    }
}

/// MSI-X capability facts read at open (spec/05 §2 step 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MsixInfo {
    /// Byte offset of the capability in config space (0x40–0xFF).
    pub cap: u16,
    /// BAR holding the table (Table BIR, 0..=7 as read; ≥ 6 means no valid BAR).
    pub bar: u8,
    /// Table offset in bytes within that BAR.
    pub table_offset: u32,
    /// Table size in bytes (`entries × 16`, entries = Table Size field + 1: 16…32768).
    pub table_bytes: u32,
}

/// Why a capability chain was cut while building the config state (spec/03 §1.3–§1.4:
/// the walk is bounded; a malformed chain is cut, never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ChainDefectKind {
    /// The pointer leads back to a capability already visited (the chain loops).
    Loop,
    /// The pointer lies outside the capability area (below 0x40 or 0x100, past the config
    /// size, or misaligned for an extended capability).
    OutOfRange,
    /// The walk reached its bound (48 standard, 480 extended capabilities).
    TooLong,
    /// The capability table is full ([`CAP_TABLE_CAPACITY`] entries).
    TableFull,
}

/// Where and why a capability chain was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ChainDefect {
    /// What was wrong.
    pub kind: ChainDefectKind,
    /// Standard or extended list.
    pub space: CapSpace,
    /// Config offset of the pointer that was not followed (0x34, a capability's next
    /// byte, or an extended header).
    pub from: u16,
    /// The config offset (bytes) it pointed to.
    pub to: u16,
}

impl core::fmt::Display for ChainDefect {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let list = match self.space {
            CapSpace::Standard => "standard",
            CapSpace::Extended => "extended",
        };
        let what = match self.kind {
            ChainDefectKind::Loop => "loops back to an earlier capability",
            ChainDefectKind::OutOfRange => "points outside the capability area",
            ChainDefectKind::TooLong => "exceeds the walk bound",
            ChainDefectKind::TableFull => "overflows the capability table",
        };
        write!(
            f,
            "{list} capability chain {what}: pointer at {:#05x} -> {:#05x}",
            self.from, self.to
        )
    }
}

/// Per-open-device config state (spec/03 §1): the virtual copy of config space
/// ([`CONFIG_SPACE_MAX`] bytes, [`ConfigSpace::size`] of them used), the capability table
/// (at most [`CAP_TABLE_CAPACITY`] entries), the BAR values saved at open (spec/03 §5.3)
/// and the MSI/MSI-X facts read at open.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    vconfig: [u8; CONFIG_SPACE_MAX],
    caps: Vec<CapEntry, CAP_TABLE_CAPACITY>,
    /// Owner of each dword of 0x40–0xFF when one owner holds all four bytes
    /// ([`UNIFORM`] entries), built with the table; 0 = look it up in the table.
    std_owner: [u8; STD_DWORDS],
    size: u16,
    rbar: [u32; 7],
    bardirty: bool,
    defect: Option<ChainDefect>,
    msi: Option<(u16, u16)>,
    msix: Option<MsixInfo>,
    /// `ceil(log2(nvec))` of the last MSI enable (spec/03 §6.4), 0 before.
    pub(crate) msi_qmax: u8,
    /// Power state the user last requested through PMCSR (0 = D0 … 3 = D3hot).
    pub(crate) power_state: u8,
    /// The user's virtual INTx disable bit as last acted upon (spec/03 §5.2 step 4).
    pub(crate) virq_disabled: bool,
    /// What the platform said about the function at open (VF, INTx wiring, VGA).
    pub(crate) facts: FunctionFacts,
}

impl Default for ConfigSpace {
    fn default() -> Self {
        Self::new()
    }
}

/// Device context a capability write handler needs.
#[derive(Debug, Clone, Copy)]
struct HandlerContext {
    /// MSI is the active interrupt type (spec/03 §6.4).
    msi_active: bool,
    /// vconfig PCIe MaxReadReq field before the write (spec/03 §6.5); 0 (unused) for
    /// every other capability.
    rq_before: u16,
}

/// Outcome of a config write chunk that the device layer must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct WriteEffects {
    /// The virtual DisINTx changed to this value (mask / unmask INTx, 04 §6.2–§6.3).
    pub intx_disable: Option<bool>,
}

#[inline]
fn le(bytes: &[u8]) -> u32 {
    match *bytes {
        [a, b, c, d] => u32::from_le_bytes([a, b, c, d]),
        [a, b] => u32::from(u16::from_le_bytes([a, b])),
        [a] => u32::from(a),
        _ => bytes
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (8 * i))),
    }
}

/// Reads `width` bytes of phys at `off` for the walk: naturally aligned accesses only
/// (unaligned reads are done byte by byte); 0 for bytes beyond `size`.
fn walk_read<A: PciAccess>(acc: &mut A, bdf: Bdf, size: u16, off: u16, n: u16) -> Result<u32> {
    let end = u32::from(off) + u32::from(n);
    if end > u32::from(size) {
        return Ok(0);
    }
    if let Some(w) = Width::from_bytes(usize::from(n)) {
        if off % n == 0 {
            return perr(acc.config_read(bdf, off, w));
        }
    }
    let mut v = 0u32;
    for i in 0..n.min(4) {
        let b = perr(acc.config_read(bdf, off + i, Width::Byte))?;
        v |= (b & 0xFF) << (8 * i);
    }
    Ok(v)
}

/// Stores the low `out.len()` bytes of `value` little-endian (fixed-size copies for 1, 2
/// and 4 bytes).
#[inline]
fn put_le(out: &mut [u8], value: u32) {
    let b = value.to_le_bytes();
    match out {
        [o0, o1, o2, o3] => [*o0, *o1, *o2, *o3] = b,
        [o0, o1] => [*o0, *o1] = [b[0], b[1]],
        [o0] => *o0 = b[0],
        _ => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = (value >> (8 * i)) as u8;
            }
        }
    }
}

fn bit(map: &mut [u32], idx: usize) -> bool {
    let word = idx / 32;
    let mask = 1u32 << (idx % 32);
    match map.get_mut(word) {
        Some(w) => {
            let was = *w & mask != 0;
            *w |= mask;
            was
        }
        None => true,
    }
}

impl ConfigSpace {
    /// An empty state (size 0, nothing read from hardware).
    pub const fn new() -> Self {
        ConfigSpace {
            vconfig: [0; CONFIG_SPACE_MAX],
            caps: Vec::new(),
            std_owner: [0; STD_DWORDS],
            size: 0,
            rbar: [0; 7],
            bardirty: false,
            defect: None,
            msi: None,
            msix: None,
            msi_qmax: 0,
            power_state: 0,
            virq_disabled: false,
            facts: FunctionFacts {
                vf_ids: None,
                intx: IntxLine::Connected,
                intx_masking: true,
                has_vga: false,
                nointx: false,
            },
        }
    }

    /// The function lacks the Command memory-enable bit (SR-IOV VFs, spec/03 §1.2 item 3).
    pub const fn no_command_memory(&self) -> bool {
        self.facts.vf_ids.is_some()
    }

    /// Whether the function has a kept PCI Express capability (ID 0x10).
    pub fn is_pcie(&self) -> bool {
        self.caps
            .iter()
            .any(|c| c.id == 0x10 && c.space == CapSpace::Standard && c.len != 0)
    }

    /// The platform facts recorded at open.
    pub const fn facts(&self) -> FunctionFacts {
        self.facts
    }

    /// Power state last set through PMCSR (0 = D0 … 3 = D3hot).
    pub const fn power_state(&self) -> u8 {
        self.power_state
    }

    /// Config space size in bytes (256 or 4096; 0 before the first open).
    pub const fn size(&self) -> u16 {
        self.size
    }

    /// The virtual copy, `size()` bytes (spec/03 §1.2). Bytes of hidden capabilities and
    /// gaps are never consulted (they are reached raw) and read 0 here.
    pub fn vconfig(&self) -> &[u8] {
        self.vconfig.get(..usize::from(self.size)).unwrap_or(&[])
    }

    /// The capability table, sorted by offset.
    pub fn capabilities(&self) -> &[CapEntry] {
        &self.caps
    }

    /// Whether a capability chain was cut (loop, out-of-range pointer, walk bound or full
    /// table) while building.
    pub const fn truncated(&self) -> bool {
        self.defect.is_some()
    }

    /// The first capability-chain defect found while building, if any.
    pub const fn defect(&self) -> Option<ChainDefect> {
        self.defect
    }

    /// The first kept MSI capability (ID 0x05) as `(offset, flags)`: its byte offset in
    /// config space (0x40–0xFF) and the hardware Message Control register read at open
    /// (spec/03 §4.7: bits 7 and 8 choose the permission table). `None` without one.
    pub const fn msi(&self) -> Option<(u16, u16)> {
        self.msi
    }

    /// Facts of the first kept MSI-X capability (ID 0x11) read at open (spec/05 §2 step
    /// 9); `None` without one.
    pub const fn msix(&self) -> Option<MsixInfo> {
        self.msix
    }

    fn v8(&self, off: u16) -> u8 {
        self.vconfig.get(usize::from(off)).copied().unwrap_or(0)
    }

    fn v16(&self, off: u16) -> u16 {
        u16::from(self.v8(off)) | (u16::from(self.v8(off.saturating_add(1))) << 8)
    }

    #[inline]
    fn vget(&self, off: u16, width: usize) -> u32 {
        let start = usize::from(off);
        self.vconfig
            .get(start..start.saturating_add(width))
            .map(le)
            .unwrap_or(0)
    }

    #[inline]
    fn vset(&mut self, off: u16, width: usize, value: u32) {
        let start = usize::from(off);
        if let Some(s) = self.vconfig.get_mut(start..start.saturating_add(width)) {
            put_le(s, value);
        }
    }

    /// Owner of the config byte at `pos` (bytes from the start of config space, spec/03
    /// §1.1): `Header` below 0x40, else the kept capability holding it, else `Raw` (gaps,
    /// hidden capabilities, and everything at or past `size()` above 0x40).
    pub fn owner(&self, pos: u16) -> Owner {
        if pos < 0x40 {
            return Owner::Header;
        }
        let idx = self.caps.partition_point(|c| c.offset <= pos);
        // Kept entries never overlap: the nearest owning entry at or below `pos` decides.
        let nearest = self
            .caps
            .iter()
            .take(idx)
            .enumerate()
            .rfind(|(_, c)| c.len != 0);
        match nearest {
            Some((i, c)) if c.contains(pos) => Owner::Capability(i),
            _ => Owner::Raw,
        }
    }

    /// How capability `c`'s bytes are accessed (spec/03 §3.2): its [`perm::Access`]
    /// (the table with its precomputed masks, direct, or the hidden-first placeholder).
    #[inline]
    fn access(&self, c: &CapEntry) -> Access {
        match c.visibility {
            CapVisibility::Placeholder => Access::FirstHidden,
            _ => perm::access_for(
                c.id,
                matches!(c.space, CapSpace::Extended),
                self.msi.map(|m| m.1).unwrap_or(0),
            ),
        }
    }

    /// Fills the standard-space owner index from the capability table (after the walk).
    fn index_owners(&mut self) {
        let mut index = [0u8; STD_DWORDS];
        for (d, slot) in index.iter_mut().enumerate() {
            let base = 0x40 + 4 * d as u16;
            let owner = self.owner(base);
            if (1..4).any(|k| self.owner(base + k) != owner) {
                continue;
            }
            *slot = match owner {
                Owner::Raw => UNIFORM,
                Owner::Capability(i) => match u8::try_from(i + 1) {
                    Ok(e) if e < UNIFORM => UNIFORM | e,
                    _ => 0,
                },
                Owner::Header => 0,
            };
        }
        self.std_owner = index;
    }

    /// How config byte `pos` is handled by a one-byte access (spec/03 §3.2–§3.4): owner,
    /// virtualized and writable bits, raw access. `None` when `pos >= size()`.
    pub fn byte_permission(&self, pos: u16) -> Option<BytePermission> {
        if pos >= self.size {
            return None;
        }
        let owner_kind = self.owner(pos);
        let (owner, virt, write, raw_write) = match owner_kind {
            Owner::Raw => ("raw", 0, 0xFF, true),
            Owner::Header => {
                let (virt, write) = perm::byte_masks(perm::HEADER, pos);
                ("header", virt, write, false)
            }
            Owner::Capability(i) => {
                let c = *self.caps.get(i)?;
                let off = pos - c.offset;
                let (virt, write, raw_write) = match self.access(&c) {
                    Access::Table(t) => {
                        let (v, w) = perm::byte_masks(t.regs, off);
                        (v, w, false)
                    }
                    Access::Direct { raw_write } => {
                        // Mirrors `read_chunk`: the extended header dword always comes
                        // from the virtual copy; in standard space the next byte does,
                        // and the ID byte only within a wider read.
                        let from_vconfig = match c.space {
                            CapSpace::Extended => off < 4,
                            CapSpace::Standard => off == 1,
                        };
                        let v = if from_vconfig { 0xFF } else { 0 };
                        let w = if raw_write { 0xFF } else { 0 };
                        (v, w, raw_write)
                    }
                    Access::FirstHidden => (0xFF, 0, false),
                };
                (c.name(), virt, write, raw_write)
            }
        };
        Some(BytePermission {
            owner,
            owner_kind,
            virt,
            write,
            raw: matches!(owner_kind, Owner::Raw),
            raw_write,
        })
    }

    // ------------------------------------------------------------------ building (§1)

    /// Builds the virtual copy by walking phys (spec/03 §1). `size` is the platform's
    /// config size (clipped to 4096).
    ///
    /// # Errors
    /// The platform's error (as errno) for a failed config read.
    pub(crate) fn build<A: PciAccess>(
        &mut self,
        acc: &mut A,
        bdf: Bdf,
        size: u16,
        facts: FunctionFacts,
    ) -> Result<()> {
        *self = ConfigSpace::new();
        self.facts = facts;
        self.size = size.min(CONFIG_SPACE_MAX as u16) & !3;
        self.copy_phys(acc, bdf, 0, 0x40)?;
        self.rbar = core::array::from_fn(|i| self.vget(bar_reg(i), 4));
        self.bardirty = true;
        // Fix-ups 2–4 of spec/03 §1.2.
        if let Some((vendor, device)) = facts.vf_ids {
            self.vset(0x00, 2, u32::from(vendor));
            self.vset(0x02, 2, u32::from(device));
            self.vset(0x3D, 1, 0);
            let c = self.vcommand() | CMD_MEMORY;
            self.vset(0x04, 2, u32::from(c));
        }
        if facts.nointx || facts.intx == IntxLine::NotConnected {
            self.vset(0x3D, 1, 0);
        }
        let extended = self.walk_standard(acc, bdf)?;
        if extended {
            self.walk_extended(acc, bdf)?;
        }
        self.index_owners();
        Ok(())
    }

    fn copy_phys<A: PciAccess>(
        &mut self,
        acc: &mut A,
        bdf: Bdf,
        start: u16,
        len: u16,
    ) -> Result<()> {
        let end = start.saturating_add(len).min(self.size);
        let mut pos = start;
        while pos < end {
            let w = natural_width(u64::from(pos), usize::from(end - pos), 4);
            let v = Self::phys_read(acc, bdf, pos, w)?;
            self.vset(pos, w, v);
            pos += w as u16;
        }
        Ok(())
    }

    fn note_defect(&mut self, kind: ChainDefectKind, space: CapSpace, from: u16, to: u16) {
        if self.defect.is_none() {
            self.defect = Some(ChainDefect {
                kind,
                space,
                from,
                to,
            });
        }
    }

    fn insert(&mut self, e: CapEntry) -> bool {
        let idx = self.caps.partition_point(|c| c.offset <= e.offset);
        self.caps.insert(idx, e).is_ok()
    }

    fn overlaps(&self, start: u16, len: u16) -> bool {
        let end = u32::from(start) + u32::from(len);
        self.caps.iter().any(|c| {
            c.len != 0
                && u32::from(c.offset) < end
                && u32::from(start) < u32::from(c.offset) + u32::from(c.len)
        })
    }

    fn walk_standard<A: PciAccess>(&mut self, acc: &mut A, bdf: Bdf) -> Result<bool> {
        let mut extended = false;
        let status = self.v16(0x06);
        if status & STATUS_CAP_LIST == 0 {
            return Ok(false);
        }
        let limit = self.size.min(0x100);
        let mut pos = u16::from(self.v8(0x34));
        let mut prev: u16 = 0x34;
        let mut visited = [0u32; 8];
        let mut kept = 0usize;
        let mut steps = 0usize;
        while pos != 0 {
            let kind = if steps >= MAX_STANDARD_CAPS {
                Some(ChainDefectKind::TooLong)
            } else if pos < 0x40 || pos + 2 > limit {
                Some(ChainDefectKind::OutOfRange)
            } else if bit(&mut visited, usize::from(pos)) {
                Some(ChainDefectKind::Loop)
            } else {
                None
            };
            if let Some(kind) = kind {
                // Cut the user's chain here (never follow a loop or leave the space).
                self.vset(prev, 1, 0);
                self.note_defect(kind, CapSpace::Standard, prev, pos);
                break;
            }
            steps += 1;
            let id = walk_read(acc, bdf, self.size, pos, 1)? as u16;
            let next = walk_read(acc, bdf, self.size, pos + 1, 1)? as u8;
            let len = self.std_len(acc, bdf, id, pos, &mut extended)?;
            if len == 0 {
                self.vset(prev, 1, u32::from(next));
                let _ = self.insert(CapEntry {
                    offset: pos,
                    len: 0,
                    id,
                    space: CapSpace::Standard,
                    visibility: CapVisibility::Hidden,
                });
                pos = u16::from(next);
                continue;
            }
            let len = len.min(limit - pos);
            if self.overlaps(pos, len) {
                // Malformed: the earlier capability keeps the bytes (spec/03 §1.3 note).
                vfio_warn!("pci: overlapping capability {=u16:x} at {=u16:x}", id, pos);
            } else {
                let entry = CapEntry {
                    offset: pos,
                    len,
                    id,
                    space: CapSpace::Standard,
                    visibility: CapVisibility::Kept,
                };
                if !self.insert(entry) {
                    self.vset(prev, 1, 0);
                    self.note_defect(ChainDefectKind::TableFull, CapSpace::Standard, prev, pos);
                    break;
                }
                self.copy_phys(acc, bdf, pos, len)?;
                self.note_cap(acc, bdf, id, pos)?;
                kept += 1;
            }
            prev = pos + 1;
            pos = u16::from(next);
        }
        if kept == 0 {
            let s = self.v16(0x06) & !STATUS_CAP_LIST;
            self.vset(0x06, 2, u32::from(s));
        }
        Ok(extended)
    }

    fn note_cap<A: PciAccess>(&mut self, acc: &mut A, bdf: Bdf, id: u16, pos: u16) -> Result<()> {
        match id {
            0x01 => {
                // PME support and PME_En / PME_Status read 0 (spec/03 §1.2 fix-up 6).
                let pmc = self.v16(pos + 2) & !0xF800;
                self.vset(pos + 2, 2, u32::from(pmc));
                let pmcsr = self.v16(pos + 4) & !(0x0100 | 0x8000);
                self.vset(pos + 4, 2, u32::from(pmcsr));
                self.power_state = (pmcsr & 3) as u8;
            }
            0x05 if self.msi.is_none() => {
                let flags = walk_read(acc, bdf, self.size, pos + 2, 2)? as u16;
                self.msi = Some((pos, flags));
            }
            0x11 if self.msix.is_none() => {
                let flags = walk_read(acc, bdf, self.size, pos + 2, 2)?;
                let table = walk_read(acc, bdf, self.size, pos + 4, 4)?;
                self.msix = Some(MsixInfo {
                    cap: pos,
                    bar: (table & 7) as u8,
                    table_offset: table & !7,
                    table_bytes: ((flags & 0x7FF) + 1) * 16,
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn check_ext<A: PciAccess>(&self, acc: &mut A, bdf: Bdf, extended: &mut bool) -> Result<()> {
        if self.size > 0x100 && walk_read(acc, bdf, self.size, 0x100, 4)? != 0 {
            *extended = true;
        }
        Ok(())
    }

    /// Length of standard capability `id` at `pos` (spec/03 §2.1–§2.2); 0 = hidden.
    fn std_len<A: PciAccess>(
        &self,
        acc: &mut A,
        bdf: Bdf,
        id: u16,
        pos: u16,
        extended: &mut bool,
    ) -> Result<u16> {
        let size = self.size;
        let rd =
            |acc: &mut A, off: u16, n: u16| walk_read(acc, bdf, size, pos.saturating_add(off), n);
        Ok(match id {
            0x01 => 8,
            0x02 => 12,
            0x03 => 8,
            0x05 => {
                let f = rd(acc, 2, 2)?;
                10 + if f & 0x80 != 0 { 4 } else { 0 } + if f & 0x100 != 0 { 10 } else { 0 }
            }
            0x07 => {
                if (rd(acc, 2, 2)? >> 12) & 3 == 0 {
                    8
                } else {
                    self.check_ext(acc, bdf, extended)?;
                    24
                }
            }
            0x08 => {
                if rd(acc, 3, 1)? & 0xE0 != 0 {
                    24
                } else {
                    28
                }
            }
            0x09 => rd(acc, 2, 1)? as u16,
            0x10 => {
                let w = rd(acc, 2, 2)?;
                self.check_ext(acc, bdf, extended)?;
                let (ver, ty) = (w & 0xF, (w >> 4) & 0xF);
                match (ver == 1, ty == 9) {
                    (true, true) => 12,
                    (true, false) => 20,
                    (false, true) => 44,
                    (false, false) => 52,
                }
            }
            0x11 => 12,
            0x12 => {
                if rd(acc, 4, 1)? & 0xF == 0xF {
                    16
                } else {
                    8
                }
            }
            0x13 => 6,
            _ => 0,
        })
    }

    /// Length of extended capability `id` at `pos` (spec/03 §2.3–§2.4); 0 = hidden.
    fn ext_len<A: PciAccess>(&self, acc: &mut A, bdf: Bdf, id: u16, pos: u16) -> Result<u16> {
        let size = self.size;
        let rd =
            |acc: &mut A, off: u16, n: u16| walk_read(acc, bdf, size, pos.saturating_add(off), n);
        Ok(match id {
            0x01 => 44,
            0x02 | 0x08 | 0x09 => {
                let cap1 = rd(acc, 4, 4)?;
                let cap2 = rd(acc, 8, 4)?;
                let evcc = (cap1 & 7) as u16;
                let phases: u16 = if cap2 & 0x08 != 0 {
                    128
                } else if cap2 & 0x04 != 0 {
                    64
                } else if cap2 & 0x02 != 0 {
                    32
                } else {
                    0
                };
                let len = 16 + (1 + evcc) * 12;
                if phases != 0 {
                    len.div_ceil(16) * 16 + phases / 2
                } else {
                    len
                }
            }
            0x03 => 12,
            0x04 => 16,
            0x0B | 0x23 => (rd(acc, 4, 4)? >> 20) as u16,
            0x0D => {
                if rd(acc, 4, 1)? & 0x20 != 0 {
                    let n = rd(acc, 5, 1)? as u16;
                    let bits = if n != 0 { n.div_ceil(32) * 32 } else { 256 };
                    8 + bits / 8
                } else {
                    8
                }
            }
            0x0E | 0x0F => 8,
            0x10 => 64,
            0x12 => 40,
            0x13 => 16,
            0x15 => 4 + ((rd(acc, 8, 1)? as u16 & 0xE0) >> 5) * 8,
            0x16 => 16 + (rd(acc, 4, 1)? as u16 & 0x1F) + 1,
            0x17 => {
                let d = rd(acc, 4, 4)?;
                if d & 0x600 == 0x200 {
                    12 + ((d & 0x07FF_0000) >> 16) as u16 * 2 + 2
                } else {
                    12
                }
            }
            0x18 => 8,
            _ => 0,
        })
    }

    fn patch_ext_next(&mut self, prev: u16, next: u16) {
        let h = self.vget(prev, 4);
        let h = (h & !(0xFFC << 20)) | (u32::from(next & 0xFFC) << 20);
        self.vset(prev, 4, h);
    }

    fn walk_extended<A: PciAccess>(&mut self, acc: &mut A, bdf: Bdf) -> Result<()> {
        let ttl = MAX_EXTENDED_CAPS.min(usize::from(self.size.saturating_sub(0x100)) / 4);
        let mut epos: u16 = 0x100;
        let mut prev: Option<u16> = None;
        let mut visited = [0u32; 32];
        let mut kept = 0usize;
        let mut steps = 0usize;
        while epos >= 0x100 {
            let kind = if steps >= ttl {
                Some(ChainDefectKind::TooLong)
            } else if epos % 4 != 0 || u32::from(epos) + 4 > u32::from(self.size) {
                Some(ChainDefectKind::OutOfRange)
            } else if bit(&mut visited, usize::from(epos / 4)) {
                Some(ChainDefectKind::Loop)
            } else {
                None
            };
            if let Some(kind) = kind {
                if let Some(p) = prev {
                    self.patch_ext_next(p, 0);
                }
                self.note_defect(kind, CapSpace::Extended, prev.unwrap_or(0x100), epos);
                break;
            }
            steps += 1;
            let header = perr(acc.config_read(bdf, epos, Width::Dword))?;
            let id = (header & 0xFFFF) as u16;
            let next = ((header >> 20) & 0xFFC) as u16;
            let mut len = if id > 0x31 {
                0
            } else {
                self.ext_len(acc, bdf, id, epos)?
            };
            let mut placeholder = false;
            if len == 0 {
                if let Some(p) = prev {
                    self.patch_ext_next(p, next);
                    let _ = self.insert(CapEntry {
                        offset: epos,
                        len: 0,
                        id,
                        space: CapSpace::Extended,
                        visibility: CapVisibility::Hidden,
                    });
                    epos = next;
                    continue;
                }
                len = 4;
                placeholder = true;
            }
            let len = len.min(self.size - epos);
            if self.overlaps(epos, len) {
                vfio_warn!(
                    "pci: overlapping ext capability {=u16:x} at {=u16:x}",
                    id,
                    epos
                );
            } else {
                let entry = CapEntry {
                    offset: epos,
                    len,
                    id,
                    space: CapSpace::Extended,
                    visibility: if placeholder {
                        CapVisibility::Placeholder
                    } else {
                        CapVisibility::Kept
                    },
                };
                if !self.insert(entry) {
                    if let Some(p) = prev {
                        self.patch_ext_next(p, 0);
                    }
                    let from = prev.unwrap_or(0x100);
                    self.note_defect(ChainDefectKind::TableFull, CapSpace::Extended, from, epos);
                    break;
                }
                self.copy_phys(acc, bdf, epos, len)?;
                if placeholder {
                    let h = self.vget(epos, 4) & 0xFFF0_0000;
                    self.vset(epos, 4, h);
                } else {
                    kept += 1;
                }
            }
            prev = Some(epos);
            epos = next;
        }
        if kept == 0 {
            self.vset(0x100, 4, 0);
        }
        Ok(())
    }

    // ------------------------------------------------------------------ BARs (§5.1, §5.3)

    /// Re-applies the BAR sizing masks to the virtual BARs (spec/03 §5.1).
    fn bar_fixup<A: PciAccess>(&mut self, acc: &mut A, bdf: Bdf) -> Result<()> {
        let mut i = 0usize;
        while i < 6 {
            let off = bar_reg(i);
            let Some(index) = BarIndex::new(i as u8) else {
                break;
            };
            let res = perr(acc.bar_resource(bdf, index))?;
            if res.start == 0 || res.size == 0 {
                self.vset(off, 4, 0);
                i += 1;
                continue;
            }
            let mask = !(res.size.wrapping_sub(1));
            let flags = match res.kind {
                BarKind::Io => 0x1,
                BarKind::Mem32 => u32::from(res.prefetch) << 3,
                BarKind::Mem64 => 0x4 | (u32::from(res.prefetch) << 3),
            };
            let v = (self.vget(off, 4) & (mask as u32)) | flags;
            self.vset(off, 4, v);
            if v & 0x4 != 0 && matches!(res.kind, BarKind::Mem64) && i < 5 {
                let hi = self.vget(off + 4, 4) & ((mask >> 32) as u32);
                self.vset(off + 4, 4, hi);
                i += 1;
            }
            i += 1;
        }
        let rom = perr(acc.rom_size(bdf))?;
        let vrom = if rom != 0 {
            let mask = (!(rom.wrapping_sub(1)) as u32) | 1;
            self.vget(0x30, 4) & mask
        } else {
            0
        };
        self.vset(0x30, 4, vrom);
        self.bardirty = false;
        Ok(())
    }

    /// Writes the BAR values saved at open back to hardware (spec/03 §5.3).
    pub(crate) fn restore_bars<A: PciAccess>(&self, acc: &mut A, bdf: Bdf) -> Result<()> {
        if self.no_command_memory() {
            return Ok(());
        }
        for (i, v) in self.rbar.iter().enumerate() {
            perr(acc.config_write(bdf, bar_reg(i), Width::Dword, *v))?;
        }
        if self.facts.nointx {
            let c = perr(acc.config_read(bdf, 0x04, Width::Word))?;
            perr(acc.config_write(bdf, 0x04, Width::Word, c | u32::from(CMD_INTX_DISABLE)))?;
        }
        Ok(())
    }

    /// After a reset: writes the saved BARs back (spec/03 §5.3) if hardware lost one of
    /// them ([`ConfigSpace::bars_lost`]).
    ///
    /// # Errors
    /// The platform's error (as errno) from a config read or write.
    pub(crate) fn restore_bars_if_lost<A: PciAccess>(&self, acc: &mut A, bdf: Bdf) -> Result<()> {
        if self.bars_lost(acc, bdf)? {
            self.restore_bars(acc, bdf)?;
        }
        Ok(())
    }

    /// Whether a saved BAR is non-zero and differs from hardware (spec/03 §5.2 (c)).
    pub(crate) fn bars_lost<A: PciAccess>(&self, acc: &mut A, bdf: Bdf) -> Result<bool> {
        for (i, v) in self.rbar.iter().take(6).enumerate() {
            let hw = perr(acc.config_read(bdf, bar_reg(i), Width::Dword))?;
            if *v != 0 && hw != *v {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Virtual Command register (bit 10 is the user's DisINTx; bits 0/1 track the user).
    pub(crate) fn vcommand(&self) -> u16 {
        self.v16(0x04)
    }

    /// Virtual Interrupt Pin register (header 0x3D, spec/03 §5.4): 0 = no INTx (also
    /// forced for VFs, nointx functions and unconnected lines), 1–4 = INTA–INTD as
    /// hardware reports it.
    pub fn interrupt_pin(&self) -> u8 {
        self.v8(0x3D)
    }

    // ------------------------------------------------------------------ access (§3)

    /// Splits `[pos, pos+len)` into the next chunk (spec/03 §3.1 step 4): the owner of
    /// `pos` and the chunk width in bytes.
    #[inline]
    fn chunk(&self, pos: u16, remaining: usize) -> (Owner, usize) {
        let boundary = 4 - usize::from(pos % 4);
        let (owner, run) = if pos < 0x40 {
            // The header is 0x00–0x3F: dword aligned, one owner.
            (Owner::Header, boundary)
        } else {
            match self.std_owner.get(usize::from(pos / 4).wrapping_sub(0x10)) {
                // One owner for the whole dword: the run ends with the dword.
                Some(&e) if e & UNIFORM != 0 => match e & !UNIFORM {
                    0 => (Owner::Raw, boundary),
                    i => (Owner::Capability(usize::from(i - 1)), boundary),
                },
                _ => self.chunk_slow(pos, boundary),
            }
        };
        (owner, natural_width(u64::from(pos), remaining.min(run), 4))
    }

    /// Owner and run of the chunk at `pos` (at most `boundary` bytes) from the table.
    fn chunk_slow(&self, pos: u16, boundary: usize) -> (Owner, usize) {
        let owner = self.owner(pos);
        let run = match owner {
            // The header is 0x00–0x3F: dword aligned, one owner.
            Owner::Header => boundary,
            // Kept capabilities never overlap: the run ends with the capability.
            Owner::Capability(i) => self.caps.get(i).map_or(1, |c| {
                usize::from(c.offset.saturating_add(c.len).saturating_sub(pos)).clamp(1, boundary)
            }),
            Owner::Raw => {
                let mut run = 1;
                while run < boundary && self.owner(pos + run as u16) == Owner::Raw {
                    run += 1;
                }
                run
            }
        };
        (owner, run)
    }

    #[inline]
    fn check_range(&self, pos: u64, len: usize) -> Result<u16> {
        let end = pos.checked_add(len as u64).ok_or(Errno::EFAULT)?;
        if pos >= u64::from(self.size) || end > u64::from(self.size) {
            return Err(Errno::EFAULT);
        }
        u16::try_from(pos).map_err(|_| Errno::EFAULT)
    }

    /// User read of config space at region position `pos` (spec/03 §3.1).
    ///
    /// # Errors
    /// `EFAULT` when `[pos, pos+len)` leaves config space (nothing read); a platform error
    /// from a chunk (earlier chunks stay done).
    pub(crate) fn read<A: PciAccess>(
        &mut self,
        acc: &mut A,
        bdf: Bdf,
        pos: u64,
        buf: &mut [u8],
    ) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let start = self.check_range(pos, buf.len())?;
        let mut done = 0usize;
        while done < buf.len() {
            let p = start + done as u16;
            let (owner, w) = self.chunk(p, buf.len() - done);
            let v = self.read_chunk(acc, bdf, owner, p, w)?;
            if let Some(out) = buf.get_mut(done..done + w) {
                put_le(out, v);
            }
            done += w;
        }
        Ok(done)
    }

    /// User write of config space at region position `pos` (spec/03 §3.1). `msi_active`:
    /// MSI is the device's active interrupt type (spec/03 §6.4).
    ///
    /// # Errors
    /// As [`ConfigSpace::read`].
    pub(crate) fn write<A: PciAccess>(
        &mut self,
        acc: &mut A,
        bdf: Bdf,
        pos: u64,
        data: &[u8],
        msi_active: bool,
        effects: &mut WriteEffects,
    ) -> Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let start = self.check_range(pos, data.len())?;
        let mut done = 0usize;
        while done < data.len() {
            let p = start + done as u16;
            let (owner, w) = self.chunk(p, data.len() - done);
            let v = data.get(done..done + w).map(le).unwrap_or(0);
            self.write_chunk(acc, bdf, owner, p, w, v, msi_active, effects)?;
            done += w;
        }
        Ok(done)
    }

    #[inline]
    fn phys_read<A: PciAccess>(acc: &mut A, bdf: Bdf, pos: u16, w: usize) -> Result<u32> {
        // One call per width: each sees a constant width, so the platform's access can be
        // specialized for it when inlined.
        perr(match w {
            4 => acc.config_read(bdf, pos, Width::Dword),
            2 => acc.config_read(bdf, pos, Width::Word),
            1 => acc.config_read(bdf, pos, Width::Byte),
            _ => return Err(Errno::EINVAL),
        })
    }

    #[inline]
    fn phys_write<A: PciAccess>(acc: &mut A, bdf: Bdf, pos: u16, w: usize, v: u32) -> Result<()> {
        // As in `phys_read`: a constant width per call.
        perr(match w {
            4 => acc.config_write(bdf, pos, Width::Dword, v),
            2 => acc.config_write(bdf, pos, Width::Word, v & Width::Word.mask()),
            1 => acc.config_write(bdf, pos, Width::Byte, v & Width::Byte.mask()),
            _ => return Err(Errno::EINVAL),
        })
    }

    /// Little-endian `(virt, write)` masks of the `w` bytes at `off` of `table`.
    #[inline]
    fn masks(table: &perm::Table, off: u16, w: usize) -> (u32, u32) {
        let m = table.masks(off, w);
        debug_assert_eq!(m, perm::chunk_masks(table.regs, off, w));
        m
    }

    #[inline(always)]
    fn default_read<A: PciAccess>(
        &self,
        acc: &mut A,
        bdf: Bdf,
        table: &perm::Table,
        off: u16,
        pos: u16,
        w: usize,
    ) -> Result<u32> {
        let full = perm::width_mask(w);
        let (virt, _) = Self::masks(table, off, w);
        let v = self.vget(pos, w);
        if virt & full == full {
            return Ok(v);
        }
        let p = Self::phys_read(acc, bdf, pos, w)?;
        Ok((p & !virt) | (v & virt))
    }

    #[allow(clippy::too_many_arguments)] // one chunk: table, offsets, width, value
    #[inline(always)]
    fn default_write<A: PciAccess>(
        &mut self,
        acc: &mut A,
        bdf: Bdf,
        table: &perm::Table,
        off: u16,
        pos: u16,
        w: usize,
        u: u32,
    ) -> Result<()> {
        let (virt, write) = Self::masks(table, off, w);
        if write == 0 {
            return Ok(());
        }
        let vw = write & virt;
        if vw != 0 {
            let v = (self.vget(pos, w) & !vw) | (u & vw);
            self.vset(pos, w, v);
        }
        let pw = write & !virt;
        if pw != 0 {
            let p = Self::phys_read(acc, bdf, pos, w)?;
            Self::phys_write(acc, bdf, pos, w, (p & !pw) | (u & pw))?;
        }
        Ok(())
    }

    #[inline]
    fn read_chunk<A: PciAccess>(
        &mut self,
        acc: &mut A,
        bdf: Bdf,
        owner: Owner,
        pos: u16,
        w: usize,
    ) -> Result<u32> {
        match owner {
            Owner::Raw => Self::phys_read(acc, bdf, pos, w),
            Owner::Header => {
                if self.bardirty && in_bar_area(pos) {
                    self.bar_fixup(acc, bdf)?;
                }
                let v = self.default_read(acc, bdf, &perm::HEADER_T, pos, pos, w)?;
                if pos == 0x04 && self.no_command_memory() {
                    return Ok(v | u32::from(CMD_MEMORY));
                }
                Ok(v)
            }
            Owner::Capability(i) => {
                let c = *self.caps.get(i).ok_or(Errno::EINVAL)?;
                let off = pos - c.offset;
                match self.access(&c) {
                    Access::Table(t) => self.default_read(acc, bdf, t, off, pos, w),
                    Access::FirstHidden => Ok(self.vget(pos, w)),
                    Access::Direct { .. } => {
                        // Header bytes that are wholly virtual need no hardware read.
                        let header_only = match c.space {
                            CapSpace::Extended => usize::from(off) + w <= 4,
                            CapSpace::Standard => off == 1 && w == 1,
                        };
                        if header_only {
                            return Ok(self.vget(pos, w));
                        }
                        let p = Self::phys_read(acc, bdf, pos, w)?;
                        let v = self.vget(pos, w);
                        Ok(match c.space {
                            CapSpace::Extended if off < 4 => v,
                            CapSpace::Standard if off == 0 && w > 1 => (p & !0xFFFF) | (v & 0xFFFF),
                            CapSpace::Standard if off == 1 => v,
                            _ => p,
                        })
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // one chunk plus device context
    fn write_chunk<A: PciAccess>(
        &mut self,
        acc: &mut A,
        bdf: Bdf,
        owner: Owner,
        pos: u16,
        w: usize,
        u: u32,
        msi_active: bool,
        effects: &mut WriteEffects,
    ) -> Result<()> {
        match owner {
            Owner::Raw => Self::phys_write(acc, bdf, pos, w, u),
            Owner::Header => self.header_write(acc, bdf, pos, w, u, effects),
            Owner::Capability(i) => {
                let c = *self.caps.get(i).ok_or(Errno::EINVAL)?;
                let off = pos - c.offset;
                match self.access(&c) {
                    Access::Table(t) => {
                        let standard = c.space == CapSpace::Standard;
                        // Only the PCIe handler compares MaxReadReq before and after the
                        // write (spec/03 §6.5); other capabilities skip the vconfig load.
                        let rq_before = if standard && c.id == 0x10 {
                            self.v16(c.offset.saturating_add(8)) & 0x7000
                        } else {
                            0
                        };
                        self.default_write(acc, bdf, t, off, pos, w, u)?;
                        if standard {
                            let ctx = HandlerContext {
                                msi_active,
                                rq_before,
                            };
                            self.cap_write_handler(acc, bdf, &c, off, w, u, ctx)?;
                        }
                        Ok(())
                    }
                    Access::Direct { raw_write: true } => Self::phys_write(acc, bdf, pos, w, u),
                    Access::Direct { raw_write: false } | Access::FirstHidden => Ok(()),
                }
            }
        }
    }

    fn header_write<A: PciAccess>(
        &mut self,
        acc: &mut A,
        bdf: Bdf,
        pos: u16,
        w: usize,
        u: u32,
        effects: &mut WriteEffects,
    ) -> Result<()> {
        if pos == 0x04 {
            // Command register pre-handling (spec/03 §5.2 step 1).
            let new = (u & 0xFFFF) as u16;
            let phys = Self::phys_read(acc, bdf, 0x04, 2)? as u16;
            let virt = self.vcommand();
            if new & CMD_MEMORY == 0 {
                acc.zap_mappings(bdf);
            }
            let restore = (new & virt & CMD_MEMORY != 0
                && phys & CMD_MEMORY == 0
                && !self.no_command_memory())
                || (new & virt & CMD_IO != 0 && phys & CMD_IO == 0)
                || self.bars_lost(acc, bdf)?;
            if restore {
                self.restore_bars(acc, bdf)?;
            }
        }
        self.default_write(acc, bdf, &perm::HEADER_T, pos, pos, w, u)?;
        if pos == 0x04 {
            let c = (self.vcommand() & !(CMD_IO | CMD_MEMORY)) | (u as u16 & (CMD_IO | CMD_MEMORY));
            self.vset(0x04, 2, u32::from(c));
        }
        if pos == 0x04 || pos == 0x05 {
            let dis = self.vcommand() & CMD_INTX_DISABLE != 0;
            if dis != self.virq_disabled {
                self.virq_disabled = dis;
                effects.intx_disable = Some(dis);
            }
        }
        if in_bar_area(pos) {
            self.bardirty = true;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)] // one chunk plus device context
    fn cap_write_handler<A: PciAccess>(
        &mut self,
        acc: &mut A,
        bdf: Bdf,
        c: &CapEntry,
        off: u16,
        w: usize,
        u: u32,
        ctx: HandlerContext,
    ) -> Result<()> {
        let msi_active = ctx.msi_active;
        let base = c.offset;
        match c.id {
            0x01 if off == 4 => {
                // PowerState (spec/03 §6.1): the platform moves the function; the state
                // is remembered for BAR gating (spec/05 §6.4).
                let state = (u & 3) as u8;
                if state == 3 {
                    acc.zap_mappings(bdf);
                }
                // Platform errors (e.g. EBUSY for a PF with VFs) are ignored (§6.1).
                if acc.set_power_state(bdf, base, state).is_ok() {
                    self.power_state = state;
                }
            }
            0x05 if off <= 2 && usize::from(off) + w >= 2 => {
                // MSI Message Control (spec/03 §6.4).
                let mut flags = self.v16(base + 2);
                if !msi_active {
                    flags &= !1;
                }
                if (flags & 0x70) >> 4 > u16::from(self.msi_qmax) {
                    flags = (flags & !0x70) | (u16::from(self.msi_qmax) << 4);
                }
                self.vset(base + 2, 2, u32::from(flags));
                Self::phys_write(acc, bdf, base + 2, 2, u32::from(flags))?;
            }
            0x03 if off <= 3 && usize::from(off) + w > 3 => {
                // VPD address/data handshake (spec/03 §6.6).
                let addr = self.v16(base + 2);
                if addr & 0x8000 != 0 {
                    let data = self.vget(base + 4, 4);
                    if !acc.vpd_write(bdf, addr & 0x7FFF, data) {
                        return Ok(());
                    }
                } else {
                    let Some(data) = acc.vpd_read(bdf, addr & 0x7FFF) else {
                        return Ok(());
                    };
                    self.vset(base + 4, 4, data);
                }
                self.vset(base + 2, 2, u32::from(addr ^ 0x8000));
            }
            0x10 => {
                // Device Control: FLR trap and MaxReadReq propagation (spec/03 §6.5).
                let devctl = self.v16(base + 8);
                if devctl & 0x8000 != 0 {
                    self.vset(base + 8, 2, u32::from(devctl & !0x8000));
                    let devcap = Self::phys_read(acc, bdf, base + 4, 4)?;
                    if devcap & 0x1000_0000 != 0 {
                        acc.zap_mappings(bdf);
                        let _ = acc.reset(bdf, ResetMethod::Function);
                    }
                }
                let rq = self.v16(base + 8) & 0x7000;
                if rq != ctx.rq_before {
                    let mut bytes = 128u32 << (rq >> 12);
                    let hw = Self::phys_read(acc, bdf, base + 8, 2)?;
                    let mps = 128u32 << ((hw >> 5) & 7).min(5);
                    bytes = bytes.max(mps);
                    let _ = acc.set_readrq(bdf, base, bytes);
                }
            }
            0x13 => {
                // AF Control FLR trap (spec/03 §6.5).
                let ctl = self.v8(base + 4);
                if ctl & 1 != 0 {
                    self.vset(base + 4, 1, u32::from(ctl & !1));
                    let afcap = walk_read(acc, bdf, self.size, base + 3, 1)?;
                    if afcap & 0x03 == 0x03 {
                        acc.zap_mappings(bdf);
                        let _ = acc.reset(bdf, ResetMethod::Function);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod byte_permission_tests {
    //! `byte_permission` against the access path: every byte of a device with a table-less
    //! capability, a vendor-specific capability (standard and VSEC), a hidden first
    //! extended capability, gaps and the header.

    use super::*;
    use crate::platform::BarResource;

    const BDF: Bdf = Bdf {
        segment: 0,
        bus: 1,
        device: 0,
        function: 0,
    };

    /// A 4096-byte config array counting hardware accesses.
    struct Mem {
        cfg: [u8; 4096],
        reads: u32,
    }

    impl crate::errno::ErrorType for Mem {
        type Error = Errno;
    }

    impl PciAccess for Mem {
        fn config_size(&mut self, _: Bdf) -> Result<u16> {
            Ok(4096)
        }
        fn config_read(&mut self, _: Bdf, offset: u16, width: Width) -> Result<u32> {
            self.reads += 1;
            let at = usize::from(offset);
            let bytes = self.cfg.get(at..at + width.bytes()).ok_or(Errno::EINVAL)?;
            Ok(le(bytes))
        }
        fn config_write(&mut self, _: Bdf, offset: u16, width: Width, value: u32) -> Result<()> {
            let at = usize::from(offset);
            let bytes = self
                .cfg
                .get_mut(at..at + width.bytes())
                .ok_or(Errno::EINVAL)?;
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = (value >> (8 * i)) as u8;
            }
            Ok(())
        }
        fn bar_resource(&mut self, _: Bdf, _: BarIndex) -> Result<BarResource> {
            Ok(BarResource {
                kind: BarKind::Mem32,
                prefetch: false,
                start: 0,
                size: 0,
            })
        }
        fn rom_size(&mut self, _: Bdf) -> Result<u64> {
            Ok(0)
        }
        fn bar_read(&mut self, _: Bdf, _: BarIndex, _: u64, _: &mut [u8]) -> Result<()> {
            Err(Errno::EINVAL)
        }
        fn bar_write(&mut self, _: Bdf, _: BarIndex, _: u64, _: &[u8]) -> Result<()> {
            Err(Errno::EINVAL)
        }
        fn rom_read(&mut self, _: Bdf, _: u64, _: &mut [u8]) -> Result<()> {
            Err(Errno::EINVAL)
        }
        fn reset_supported(&mut self, _: Bdf, _: ResetMethod) -> bool {
            false
        }
        fn reset(&mut self, _: Bdf, _: ResetMethod) -> Result<()> {
            Err(Errno::ENOTTY)
        }
        fn irq_vectors_alloc(
            &mut self,
            _: Bdf,
            _: crate::platform::MsiKind,
            _: u16,
        ) -> Result<u16> {
            Err(Errno::ENOSPC)
        }
        fn irq_vectors_free(&mut self, _: Bdf) {}
    }

    /// Vendor cap @0x40 (len 8) → MSI-X @0x50 (table-less) → PCIe v2 @0x60; extended:
    /// hidden 0x19 first (placeholder) → VSEC @0x140 (len 0x10) → DSN @0x180.
    fn device() -> (Mem, ConfigSpace) {
        let mut m = Mem {
            cfg: [0; 4096],
            reads: 0,
        };
        let mut put = |at: usize, bytes: &[u8]| m.cfg[at..at + bytes.len()].copy_from_slice(bytes);
        put(0x00, &[0x86, 0x80, 0x34, 0x12, 0x00, 0x00, 0x10, 0x00]);
        put(0x34, &[0x40]);
        put(0x3C, &[0x0B, 0x01]);
        put(0x40, &[0x09, 0x50, 0x08, 0xAA, 0x11, 0x22, 0x33, 0x44]);
        put(0x50, &[0x11, 0x60, 0x0F, 0x00, 0x00, 0x20, 0x00, 0x00]);
        put(0x60, &[0x10, 0x00, 0x02, 0x00]);
        put(0x100, &0x1401_0019u32.to_le_bytes());
        put(0x140, &0x1801_000Bu32.to_le_bytes());
        put(0x144, &0x0100_0001u32.to_le_bytes());
        put(0x148, &[0x5A, 0x5B, 0x5C, 0x5D]);
        put(0x180, &0x0001_0003u32.to_le_bytes());
        let mut cs = ConfigSpace::new();
        cs.build(&mut m, BDF, 4096, FunctionFacts::default())
            .unwrap();
        (m, cs)
    }

    fn read1(m: &mut Mem, cs: &mut ConfigSpace, pos: u16) -> u8 {
        let mut b = [0u8; 1];
        cs.read(m, BDF, u64::from(pos), &mut b).unwrap();
        b[0]
    }

    fn write1(m: &mut Mem, cs: &mut ConfigSpace, pos: u16, v: u8) {
        let mut fx = WriteEffects::default();
        cs.write(m, BDF, u64::from(pos), &[v], false, &mut fx)
            .unwrap();
    }

    #[test]
    fn vendor_specific_capabilities_are_written_raw() {
        let (mut m, mut cs) = device();
        for pos in [0x40u16, 0x41, 0x42, 0x45, 0x140, 0x143, 0x148] {
            let p = cs.byte_permission(pos).unwrap();
            assert!(p.raw_write && !p.raw, "{pos:#x}: {p:?}");
            assert_eq!(
                (p.write, p.hardware_write(), p.virtual_write()),
                (0xFF, 0xFF, 0)
            );
        }
        // The next pointer reads virtual, yet a write lands in hardware only.
        assert_eq!(cs.byte_permission(0x41).unwrap().virt, 0xFF);
        write1(&mut m, &mut cs, 0x41, 0x77);
        assert_eq!(m.cfg[0x41], 0x77);
        assert_eq!(read1(&mut m, &mut cs, 0x41), 0x50);
        // VSEC header: virtual read, raw write.
        assert_eq!(cs.byte_permission(0x141).unwrap().virt, 0xFF);
        write1(&mut m, &mut cs, 0x142, 0x55);
        assert_eq!(m.cfg[0x142], 0x55);
        assert_eq!(read1(&mut m, &mut cs, 0x142), 0x01);
        assert_eq!(cs.byte_permission(0x148).unwrap().virt, 0);
    }

    #[test]
    fn a_standard_capability_id_byte_reads_hardware_alone() {
        let (mut m, mut cs) = device();
        for (pos, virt) in [
            (0x40u16, 0),
            (0x41, 0xFF),
            (0x50, 0),
            (0x51, 0xFF),
            (0x52, 0),
        ] {
            assert_eq!(cs.byte_permission(pos).unwrap().virt, virt, "{pos:#x}");
        }
        m.cfg[0x40] = 0x3C; // the user raw-wrote the vendor capability's ID
        assert_eq!(read1(&mut m, &mut cs, 0x40), 0x3C);
        let mut b = [0u8; 2];
        cs.read(&mut m, BDF, 0x40, &mut b).unwrap();
        assert_eq!(
            b,
            [0x09, 0x50],
            "a wider read takes ID and next from vconfig"
        );
    }

    #[test]
    fn every_byte_is_described_as_a_one_byte_access_behaves() {
        let (mut m, mut cs) = device();
        for pos in 0..cs.size() {
            let p = cs.byte_permission(pos).unwrap();
            // Reads: fully virtual bytes never reach hardware; the others show hardware
            // in the non-virtual bits.
            let before = m.reads;
            let hw = m.cfg[usize::from(pos)];
            m.cfg[usize::from(pos)] = !hw;
            let got = read1(&mut m, &mut cs, pos);
            m.cfg[usize::from(pos)] = hw;
            if p.virt == 0xFF && !(0x10..0x34).contains(&pos) {
                assert_eq!(m.reads, before, "{pos:#x} ({}) read hardware", p.owner);
            }
            let v = cs.vconfig()[usize::from(pos)];
            assert_eq!(
                got,
                (!hw & !p.virt) | (v & p.virt),
                "{pos:#x} ({}) read",
                p.owner
            );
            // Writes of handler-free bytes: hardware changes exactly in `hardware_write`,
            // vconfig in `virtual_write`.
            let handler = matches!(pos, 0x04..=0x07 | 0x10..=0x33 | 0x52 | 0x53 | 0x68 | 0x69);
            if handler {
                continue;
            }
            for u in [0x00u8, 0xFF] {
                let (hw, v) = (m.cfg[usize::from(pos)], cs.vconfig()[usize::from(pos)]);
                write1(&mut m, &mut cs, pos, u);
                let (hw2, v2) = (m.cfg[usize::from(pos)], cs.vconfig()[usize::from(pos)]);
                let hw_bits = p.hardware_write();
                let v_bits = p.virtual_write();
                assert_eq!(
                    hw2,
                    (hw & !hw_bits) | (u & hw_bits),
                    "{pos:#x} ({}) hw",
                    p.owner
                );
                assert_eq!(
                    v2,
                    (v & !v_bits) | (u & v_bits),
                    "{pos:#x} ({}) vconfig",
                    p.owner
                );
            }
        }
    }

    #[test]
    fn owners_and_kinds() {
        let (_, cs) = device();
        let p = cs.byte_permission(0x3C).unwrap();
        assert_eq!(
            (p.owner, p.virt, p.write, p.raw, p.raw_write),
            ("header", 0xFF, 0xFF, false, false)
        );
        let p = cs.byte_permission(0x5C).unwrap();
        assert_eq!((p.owner, p.raw, p.hardware_write()), ("raw", true, 0xFF));
        let p = cs.byte_permission(0x101).unwrap();
        assert_eq!(
            (p.owner, p.virt, p.write, p.raw_write),
            ("hidden-first-ecap", 0xFF, 0, false)
        );
        let p = cs.byte_permission(0x52).unwrap();
        assert_eq!((p.owner, p.virt, p.write), ("MSI-X", 0, 0));
        assert!(cs.byte_permission(0x1000).is_none());
    }
}
