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

/// The MSI table for Message Control `flags` read from hardware at open (spec/03 §4.7):
/// bit 7 = 64-bit address, bit 8 = per-vector masking.
pub const fn msi_table(flags: u16) -> &'static [RegPerm] {
    match (flags & 0x0080 != 0, flags & 0x0100 != 0) {
        (false, false) => MSI_32,
        (true, false) => MSI_64,
        (false, true) => MSI_32_MASK,
        (true, true) => MSI_64_MASK,
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
    if extended {
        match id {
            0x01 => Policy::Table(AER),
            0x04 => Policy::Table(POWER_BUDGET),
            0x0B | 0x23 => Policy::Direct { raw_write: true },
            _ => Policy::Direct { raw_write: false },
        }
    } else {
        match id {
            0x01 => Policy::Table(PM),
            0x03 => Policy::Table(VPD),
            0x05 => Policy::Table(msi_table(msi_flags)),
            0x07 => Policy::Table(PCIX),
            0x09 => Policy::Direct { raw_write: true },
            0x10 => Policy::Table(PCIE),
            0x13 => Policy::Table(AF),
            _ => Policy::Direct { raw_write: false },
        }
    }
}

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
        assert_eq!(msi_table(0x0080), MSI_64);
        assert_eq!(msi_table(0x0180), MSI_64_MASK);
        assert_eq!(chunk_masks(MSI_64_MASK, 0x10, 4), (0, ALL));
    }
}
