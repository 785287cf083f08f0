//! Permission tables of the config-space virtualization (spec/03-pci-config.md §4), as
//! `const` data.
//!
//! Each table lists registers by their byte offset from the start of the header or of the
//! capability, with two masks in register order (little-endian value of the register):
//! `virt` (bits read from and written to the virtual copy) and `write` (bits the user may
//! write). A byte not covered by any register is read-only pass-through (`virt = 0`,
//! `write = 0`). Adding support for a capability is adding a table here and a line in
//! [`policy_for`].

/// One register of a permission table (spec/03 §4 notation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegPerm {
    /// Byte offset of the register from the start of the header / capability.
    pub offset: u16,
    /// Register size in bytes: 1, 2 or 4.
    pub size: u8,
    /// Virtualized bits (register order).
    pub virt: u32,
    /// User-writable bits (register order).
    pub write: u32,
}

const fn reg(offset: u16, size: u8, virt: u32, write: u32) -> RegPerm {
    RegPerm {
        offset,
        size,
        virt,
        write,
    }
}

const ALL: u32 = 0xFFFF_FFFF;

/// Type-0 header, 0x00–0x3F (spec/03 §4.1).
pub const HEADER: &[RegPerm] = &[
    reg(0x00, 2, 0xFFFF, 0),
    reg(0x02, 2, 0xFFFF, 0),
    reg(0x04, 2, 0x0400, 0xFFFF),
    reg(0x06, 2, 0x0010, 0),
    reg(0x0C, 1, 0, 0xFF),
    reg(0x0D, 1, 0, 0xFF),
    reg(0x0F, 1, 0, 0xFF),
    reg(0x10, 4, ALL, ALL),
    reg(0x14, 4, ALL, ALL),
    reg(0x18, 4, ALL, ALL),
    reg(0x1C, 4, ALL, ALL),
    reg(0x20, 4, ALL, ALL),
    reg(0x24, 4, ALL, ALL),
    reg(0x30, 4, ALL, ALL),
    reg(0x34, 1, 0xFF, 0),
    reg(0x3C, 1, 0xFF, 0xFF),
    reg(0x3D, 1, 0xFF, 0),
];

/// Power Management, ID 0x01, len 8 (spec/03 §4.2).
pub const PM: &[RegPerm] = &[
    reg(1, 1, 0xFF, 0),
    reg(2, 2, 0xF800, 0),
    reg(4, 4, 0x0000_8100, 0xFFFF_7EFC),
];

/// VPD, ID 0x03, len 8 (spec/03 §4.3).
pub const VPD: &[RegPerm] = &[
    reg(1, 1, 0xFF, 0),
    reg(2, 2, 0xFFFF, 0xFFFF),
    reg(4, 4, ALL, ALL),
];

/// PCI-X, ID 0x07, len 8 or 24 (spec/03 §4.4).
pub const PCIX: &[RegPerm] = &[reg(1, 1, 0xFF, 0), reg(2, 2, 0, 0xFFFF), reg(8, 4, 0, ALL)];

/// PCI Express, ID 0x10, len 12/20/44/52 (spec/03 §4.6).
pub const PCIE: &[RegPerm] = &[
    reg(1, 1, 0xFF, 0),
    reg(8, 2, 0xF0E0, 0xFDFF),
    reg(0x28, 2, 0, 0xFFDF),
];

/// Advanced Features, ID 0x13, len 6 (spec/03 §4.9).
pub const AF: &[RegPerm] = &[reg(1, 1, 0xFF, 0), reg(4, 1, 0x01, 0x01)];

/// MSI, 32-bit address, no per-vector masking (spec/03 §4.7).
pub const MSI_32: &[RegPerm] = &[
    reg(1, 1, 0xFF, 0),
    reg(2, 1, 0xFF, 0xFF),
    reg(4, 4, ALL, ALL),
    reg(8, 2, 0xFFFF, 0xFFFF),
];

/// MSI, 64-bit address, no per-vector masking (spec/03 §4.7).
pub const MSI_64: &[RegPerm] = &[
    reg(1, 1, 0xFF, 0),
    reg(2, 1, 0xFF, 0xFF),
    reg(4, 4, ALL, ALL),
    reg(8, 4, ALL, ALL),
    reg(0x0C, 2, 0xFFFF, 0xFFFF),
];

/// MSI, 32-bit address, per-vector masking (spec/03 §4.7).
pub const MSI_32_MASK: &[RegPerm] = &[
    reg(1, 1, 0xFF, 0),
    reg(2, 1, 0xFF, 0xFF),
    reg(4, 4, ALL, ALL),
    reg(8, 2, 0xFFFF, 0xFFFF),
    reg(0x0C, 4, 0, ALL),
    reg(0x10, 4, 0, ALL),
];

/// MSI, 64-bit address, per-vector masking (spec/03 §4.7).
pub const MSI_64_MASK: &[RegPerm] = &[
    reg(1, 1, 0xFF, 0),
    reg(2, 1, 0xFF, 0xFF),
    reg(4, 4, ALL, ALL),
    reg(8, 4, ALL, ALL),
    reg(0x0C, 2, 0xFFFF, 0xFFFF),
    reg(0x10, 4, 0, ALL),
    reg(0x14, 4, 0, ALL),
];

/// AER, extended ID 0x01, len 44 (spec/03 §4.10).
pub const AER: &[RegPerm] = &[
    reg(0x00, 4, ALL, 0),
    reg(0x04, 4, 0, 0x03FF_F031),
    reg(0x08, 4, 0, 0x03FF_F031),
    reg(0x0C, 4, 0, 0x03FF_F031),
    reg(0x10, 4, 0, 0x0000_F1C1),
    reg(0x14, 4, 0, 0x0000_F1C1),
    reg(0x18, 4, 0, 0x0000_0140),
];

/// Power Budgeting, extended ID 0x04, len 16 (spec/03 §4.11, including the reference
/// quirk: the writable byte is ecap+8).
pub const POWER_BUDGET: &[RegPerm] = &[reg(0x00, 4, ALL, 0), reg(0x08, 1, 0, 0xFF)];

/// The MSI table for Message Control `flags` read at open (spec/03 §4.7): bit 7 = 64-bit
/// address, bit 8 = per-vector masking.
const fn msi_t(flags: u16) -> &'static Table {
    match (flags & 0x0080 != 0, flags & 0x0100 != 0) {
        (false, false) => &MSI_32_T,
        (true, false) => &MSI_64_T,
        (false, true) => &MSI_32_MASK_T,
        (true, true) => &MSI_64_MASK_T,
    }
}

/// How the bytes of one owner (header or capability) are accessed (spec/03 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Default read/write through a permission table (§3.3), plus the owner's special
    /// handler if it has one (§5, §6).
    Table(&'static [RegPerm]),
    /// Direct read (ID/next or the extended header from the virtual copy, the rest from
    /// hardware, §3.3); writes raw to hardware when `raw_write`, else dropped.
    Direct {
        /// Writes go to hardware unfiltered (vendor-specific, VSEC, DVSEC: §4.5).
        raw_write: bool,
    },
    /// The placeholder of a hidden first extended capability: reads from the virtual copy,
    /// writes dropped (§1.4).
    FirstHidden,
}

/// The policy for a kept capability `id` in standard (`extended == false`) or extended
/// space. `msi_flags`: hardware MSI Message Control read at open (used for ID 0x05).
///
/// Standard IDs without a table (AGP, HT, MSI-X, SATA, …) get the §4.13 default: direct
/// read, writes dropped. Extended IDs without a table get §4.12: direct read, writes dropped.
pub const fn policy_for(id: u16, extended: bool, msi_flags: u16) -> Policy {
    match access_for(id, extended, msi_flags) {
        Access::Table(t) => Policy::Table(t.regs),
        Access::Direct { raw_write } => Policy::Direct { raw_write },
        Access::FirstHidden => Policy::FirstHidden,
    }
}

/// [`Policy`] of the access path: a table comes with its precomputed masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// [`Policy::Table`].
    Table(&'static Table),
    /// [`Policy::Direct`].
    Direct {
        /// Writes go to hardware unfiltered.
        raw_write: bool,
    },
    /// [`Policy::FirstHidden`].
    FirstHidden,
}

/// The access of a kept capability (same mapping as [`policy_for`], which is built on it).
#[inline]
pub(crate) const fn access_for(id: u16, extended: bool, msi_flags: u16) -> Access {
    if extended {
        match id {
            0x01 => Access::Table(&AER_T),
            0x04 => Access::Table(&POWER_BUDGET_T),
            0x0B | 0x23 => Access::Direct { raw_write: true },
            _ => Access::Direct { raw_write: false },
        }
    } else {
        match id {
            0x01 => Access::Table(&PM_T),
            0x03 => Access::Table(&VPD_T),
            0x05 => Access::Table(msi_t(msi_flags)),
            0x07 => Access::Table(&PCIX_T),
            0x09 => Access::Direct { raw_write: true },
            0x10 => Access::Table(&PCIE_T),
            0x13 => Access::Table(&AF_T),
            _ => Access::Direct { raw_write: false },
        }
    }
}

/// A permission table with its `(virt, write)` masks precomputed per dword of the table
/// (dword `i` covers table offsets `4i..4i+4`, little-endian), so the access path finds the
/// masks of any chunk with two loads instead of a scan of the registers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Table {
    /// The registers (spec/03 §4).
    pub regs: &'static [RegPerm],
    /// `(virt, write)` per dword; bytes past the end are `(0, 0)`.
    pub dwords: &'static [(u32, u32)],
}

impl Table {
    /// Little-endian `(virt, write)` masks of `width` (1, 2 or 4) bytes from table offset
    /// `offset`: the same result as [`chunk_masks`] on [`Table::regs`].
    #[inline]
    pub fn masks(&self, offset: u16, width: usize) -> (u32, u32) {
        let d = usize::from(offset / 4);
        let (v0, w0) = self.dwords.get(d).copied().unwrap_or((0, 0));
        let (v1, w1) = self.dwords.get(d + 1).copied().unwrap_or((0, 0));
        let shift = u32::from(offset % 4) * 8;
        let full = width_mask(width);
        let v = ((u64::from(v1) << 32 | u64::from(v0)) >> shift) as u32;
        let w = ((u64::from(w1) << 32 | u64::from(w0)) >> shift) as u32;
        (v & full, w & full)
    }
}

/// Mask of the low `width` bytes (width ≤ 4; 0 for 0).
#[inline]
pub(crate) const fn width_mask(width: usize) -> u32 {
    match width {
        0 => 0,
        1 => 0xFF,
        2 => 0xFFFF,
        3 => 0x00FF_FFFF,
        _ => ALL,
    }
}

/// Dwords needed to cover every register of `table`.
const fn table_dwords(table: &[RegPerm]) -> usize {
    let mut end = 0usize;
    let mut i = 0;
    while i < table.len() {
        let e = table[i].offset as usize + table[i].size as usize;
        if e > end {
            end = e;
        }
        i += 1;
    }
    end.div_ceil(4)
}

/// Per-dword masks of `table` (compile time; [`byte_masks`] byte by byte: the first
/// register holding a byte decides).
const fn dword_masks<const N: usize>(table: &[RegPerm]) -> [(u32, u32); N] {
    let mut out = [(0u32, 0u32); N];
    let mut byte = 0usize;
    while byte < N * 4 {
        let mut i = 0;
        while i < table.len() {
            let r = table[i];
            let start = r.offset as usize;
            if byte >= start && byte < start + r.size as usize {
                let src = ((byte - start) * 8) as u32;
                let dst = ((byte % 4) * 8) as u32;
                out[byte / 4].0 |= ((r.virt >> src) & 0xFF) << dst;
                out[byte / 4].1 |= ((r.write >> src) & 0xFF) << dst;
                break;
            }
            i += 1;
        }
        byte += 1;
    }
    out
}

/// Defines `$name: Table` for the register list `$regs`, its masks computed at compile time.
macro_rules! table {
    ($name:ident, $regs:ident) => {
        pub(crate) const $name: Table = Table {
            regs: $regs,
            dwords: &{
                const N: usize = table_dwords($regs);
                const M: [(u32, u32); N] = dword_masks::<N>($regs);
                M
            },
        };
    };
}

table!(HEADER_T, HEADER);
table!(PM_T, PM);
table!(VPD_T, VPD);
table!(PCIX_T, PCIX);
table!(PCIE_T, PCIE);
table!(AF_T, AF);
table!(MSI_32_T, MSI_32);
table!(MSI_64_T, MSI_64);
table!(MSI_32_MASK_T, MSI_32_MASK);
table!(MSI_64_MASK_T, MSI_64_MASK);
table!(AER_T, AER);
table!(POWER_BUDGET_T, POWER_BUDGET);

/// Per-byte `(virt, write)` masks of byte `offset` of a table (0 for unlisted bytes).
pub fn byte_masks(table: &[RegPerm], offset: u16) -> (u8, u8) {
    for r in table {
        let end = r.offset.saturating_add(u16::from(r.size));
        if offset >= r.offset && offset < end {
            let shift = u32::from(offset - r.offset) * 8;
            return ((r.virt >> shift) as u8, (r.write >> shift) as u8);
        }
    }
    (0, 0)
}

/// Little-endian `(virt, write)` masks of `width` bytes starting at `offset` (width ≤ 4).
pub fn chunk_masks(table: &[RegPerm], offset: u16, width: usize) -> (u32, u32) {
    let mut virt = 0u32;
    let mut write = 0u32;
    for i in 0..width.min(4) {
        let (v, w) = byte_masks(table, offset.saturating_add(i as u16));
        virt |= u32::from(v) << (8 * i);
        write |= u32::from(w) << (8 * i);
    }
    (virt, write)
}

/// Human-readable name of a capability ID (standard or extended space), for tools.
pub const fn cap_name(id: u16, extended: bool) -> &'static str {
    if extended {
        match id {
            0x01 => "AER",
            0x02 | 0x09 => "VC",
            0x03 => "DSN",
            0x04 => "PowerBudget",
            0x08 => "MFVC",
            0x0B => "VSEC",
            0x0D => "ACS",
            0x0E => "ARI",
            0x0F => "ATS",
            0x10 => "SR-IOV",
            0x12 => "Multicast",
            0x13 => "PRI",
            0x15 => "ResizableBAR",
            0x16 => "DPA",
            0x17 => "TPH",
            0x18 => "LTR",
            0x19 => "SecondaryPCIe",
            0x1B => "PASID",
            0x1D => "DPC",
            0x1E => "L1PM",
            0x1F => "PTM",
            0x23 => "DVSEC",
            _ => "ext-unknown",
        }
    } else {
        match id {
            0x00 => "NULL",
            0x01 => "PM",
            0x02 => "AGP",
            0x03 => "VPD",
            0x04 => "SlotID",
            0x05 => "MSI",
            0x06 => "CHSWP",
            0x07 => "PCI-X",
            0x08 => "HT",
            0x09 => "Vendor",
            0x0A => "Debug",
            0x0B => "CCRC",
            0x0C => "SHPC",
            0x0D => "SSVID",
            0x0E => "AGP3",
            0x0F => "Secure",
            0x10 => "PCIe",
            0x11 => "MSI-X",
            0x12 => "SATA",
            0x13 => "AF",
            0x14 => "EA",
            _ => "unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_command_masks_follow_the_table() {
        assert_eq!(chunk_masks(HEADER, 4, 2), (0x0400, 0xFFFF));
        assert_eq!(chunk_masks(HEADER, 4, 4), (0x0010_0400, 0x0000_FFFF));
        assert_eq!(chunk_masks(HEADER, 0x3C, 2), (0xFFFF, 0x00FF));
        assert_eq!(chunk_masks(HEADER, 0x28, 4), (0, 0));
    }

    #[test]
    fn msi_table_is_chosen_by_layout_bits() {
        assert_eq!(msi_t(0x0080).regs, MSI_64);
        assert_eq!(msi_t(0x0180).regs, MSI_64_MASK);
        assert_eq!(chunk_masks(MSI_64_MASK, 0x10, 4), (0, ALL));
    }

    #[test]
    fn precomputed_masks_match_the_tables_at_every_offset_and_width() {
        let tables = [
            (&HEADER_T, HEADER),
            (&PM_T, PM),
            (&VPD_T, VPD),
            (&PCIX_T, PCIX),
            (&PCIE_T, PCIE),
            (&AF_T, AF),
            (&MSI_32_T, MSI_32),
            (&MSI_64_T, MSI_64),
            (&MSI_32_MASK_T, MSI_32_MASK),
            (&MSI_64_MASK_T, MSI_64_MASK),
            (&AER_T, AER),
            (&POWER_BUDGET_T, POWER_BUDGET),
        ];
        for (t, regs) in tables {
            assert_eq!(t.regs, regs);
            for off in 0..0x40u16 {
                for w in [1usize, 2, 3, 4] {
                    assert_eq!(t.masks(off, w), chunk_masks(regs, off, w), "{off:#x}/{w}");
                }
            }
        }
    }

    #[test]
    fn policy_for_names_the_table_of_the_access() {
        for extended in [false, true] {
            for id in 0..0x40u16 {
                for flags in [0u16, 0x80, 0x100, 0x180] {
                    let p = policy_for(id, extended, flags);
                    match access_for(id, extended, flags) {
                        Access::Table(t) => assert_eq!(p, Policy::Table(t.regs)),
                        Access::Direct { raw_write } => {
                            assert_eq!(p, Policy::Direct { raw_write })
                        }
                        Access::FirstHidden => assert_eq!(p, Policy::FirstHidden),
                    }
                }
            }
        }
        assert_eq!(policy_for(0x05, false, 0x180), Policy::Table(MSI_64_MASK));
        assert_eq!(policy_for(0x10, false, 0), Policy::Table(PCIE));
    }
}
