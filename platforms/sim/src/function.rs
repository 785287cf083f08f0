//! One simulated PCI function: config space with hardware write semantics, BAR memory,
//! expansion ROM, reset, INTx level and host MSI/MSI-X state.
//!
//! A function is built either from a real config-space image ([`SimFunction::from_image`],
//! which validates the image and infers BAR sizes, see [`infer_bar_sizes`]) or from raw
//! bytes with explicit BAR sizes ([`FunctionBuilder`]).

use std::collections::BTreeMap;
use std::fmt;

use vfio_core::platform::{BarKind, BarResource, Width};
use vfio_core::Errno;

/// Smallest config space: the conventional 256 bytes.
pub const CONFIG_SIZE_CONVENTIONAL: usize = 256;
/// PCI Express (extended) config space: 4096 bytes.
pub const CONFIG_SIZE_EXTENDED: usize = 4096;

/// Largest size (bytes) inferred for a memory BAR from its address alone.
pub const MAX_INFERRED_MEM_BAR: u64 = 256 << 20;
/// Largest size (bytes) inferred for an I/O BAR from its address alone.
pub const MAX_INFERRED_IO_BAR: u64 = 256;
/// Size (bytes) given to an expansion ROM whose ROM BAR holds an address, before the
/// alignment and overlap limits of [`infer_bar_sizes`].
pub const DEFAULT_ROM_SIZE: u64 = 64 << 10;
/// Page granularity of lazily allocated BAR backing memory, in bytes.
const BACKING_PAGE: u64 = 4096;

/// Why a config-space image cannot become a [`SimFunction`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageError {
    /// The image has no bytes at all.
    Empty,
    /// The image is shorter than a full config space: `len` bytes where at least `needed`
    /// (256 or 4096) are required. A 64-byte dump (header only) is truncated: the
    /// capabilities the header points at are missing.
    Truncated {
        /// Bytes in the image.
        len: usize,
        /// Bytes a complete image of that kind has.
        needed: usize,
    },
    /// The image is longer than the 4096-byte extended config space.
    TooLong {
        /// Bytes in the image.
        len: usize,
    },
    /// The vendor ID is `0xffff` (no device answered: master abort) or `0x0000`.
    NoDevice {
        /// The vendor ID read from offset 0.
        vendor_id: u16,
    },
    /// Header type 1: a PCI-to-PCI bridge, which VFIO does not assign.
    Bridge,
    /// Header type 2: a CardBus bridge, which VFIO does not assign.
    CardBusBridge,
    /// A header layout (bits 6:0 of offset 0x0e) the PCI spec does not define.
    UnknownHeaderType {
        /// Bits 6:0 of the header type register.
        header_type: u8,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ImageError::Empty => write!(f, "empty config-space image"),
            ImageError::Truncated { len, needed } => write!(
                f,
                "truncated config-space image: {len} bytes, a complete image has {needed}"
            ),
            ImageError::TooLong { len } => write!(
                f,
                "config-space image of {len} bytes is longer than the 4096-byte extended space"
            ),
            ImageError::NoDevice { vendor_id } => write!(
                f,
                "vendor ID {vendor_id:#06x}: no device present at this address"
            ),
            ImageError::Bridge => {
                write!(f, "header type 1 (PCI-to-PCI bridge) cannot be assigned")
            }
            ImageError::CardBusBridge => {
                write!(f, "header type 2 (CardBus bridge) cannot be assigned")
            }
            ImageError::UnknownHeaderType { header_type } => {
                write!(
                    f,
                    "header type {header_type} is not defined by the PCI spec"
                )
            }
        }
    }
}

impl std::error::Error for ImageError {}

/// Type and size of one BAR of a [`SimFunction`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BarSpec {
    /// Memory (32 or 64-bit) or I/O.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetch: bool,
    /// Size in bytes: 0 (unassigned) or a power of two (≥ 16 for memory, ≥ 4 for I/O).
    pub size: u64,
}

/// How config writes reach the simulated config space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WriteModel {
    /// Hardware-like (the default): IDs, class, revision, header type, capability
    /// pointers and headers and other capability registers are read-only, Status and
    /// capability status bits are RW1C, BARs keep only their address bits (so writing
    /// all-ones reads back the size mask), Command keeps bits 10:0.
    #[default]
    Hardware,
    /// Every byte is plain RAM (the spec-case mock of `spec/cases-pci.toml`), minus the
    /// masks added with [`FunctionBuilder::read_only`]. Status bit 3 still follows INTx.
    Ram,
}

/// What `PciAccess::reset` does to config space (the raw reset is
/// [`SimFunction::hardware_reset`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ResetRestore {
    /// Like Linux `pci_reset_function`: the platform saves config space, resets, and
    /// restores it, so config space reads the same afterwards (the default; this is the
    /// spec-case mock's "config space unchanged"). BAR memory still returns to its
    /// power-on contents and INTx is deasserted.
    #[default]
    SaveRestore,
    /// No save/restore: config space returns to the power-on image except sticky bits.
    PowerOn,
    /// Like real hardware after an FLR or a PM (D3hot → D0, No_Soft_Reset clear) reset
    /// that nobody restores: the power-on image, then Command, every BAR address and the
    /// ROM BAR read 0 (type bits kept). The core must restore them (spec/03 §5.3).
    /// Also used by the FLR bit of Device Control and by PM resets of such a function.
    Cleared,
}

/// Builds a [`SimFunction`] from raw config bytes and explicit BAR sizes (no validation
/// of IDs or header type, so e.g. an SR-IOV VF with `0xffff` IDs can be modelled).
#[derive(Debug, Clone)]
pub struct FunctionBuilder {
    config: Vec<u8>,
    bars: [Option<BarSpec>; 6],
    rom_size: u64,
    model: WriteModel,
    read_only: Vec<(usize, u8)>,
    function_reset: bool,
    reset_restore: ResetRestore,
    pci_2_3: bool,
    msi_available: Option<u16>,
}

impl FunctionBuilder {
    /// Starts from `config` (padded with zeros, or cut, to `config_size`).
    ///
    /// `config_size` must be 256 or 4096; anything else is rounded to 256 when below 4096
    /// and to 4096 otherwise.
    pub fn new(config: &[u8], config_size: usize) -> FunctionBuilder {
        let size = if config_size >= CONFIG_SIZE_EXTENDED {
            CONFIG_SIZE_EXTENDED
        } else {
            CONFIG_SIZE_CONVENTIONAL
        };
        let mut bytes = vec![0u8; size];
        let n = config.len().min(size);
        bytes[..n].copy_from_slice(&config[..n]);
        FunctionBuilder {
            config: bytes,
            bars: [None; 6],
            rom_size: 0,
            model: WriteModel::Hardware,
            read_only: Vec::new(),
            function_reset: true,
            reset_restore: ResetRestore::default(),
            pci_2_3: true,
            msi_available: None,
        }
    }

    /// Declares BAR `index` (0..=5; ignored otherwise) with `kind` and `size` bytes
    /// (rounded up to a power of two; 0 = unassigned). A `Mem64` BAR also claims
    /// `index + 1`. The BAR registers in config space are left as given.
    pub fn bar(mut self, index: u8, kind: BarKind, prefetch: bool, size: u64) -> Self {
        if let Some(slot) = self.bars.get_mut(usize::from(index)) {
            let size = if size == 0 {
                0
            } else {
                size.checked_next_power_of_two().unwrap_or(1 << 63)
            };
            *slot = Some(BarSpec {
                kind,
                prefetch,
                size,
            });
        }
        self
    }

    /// Gives the function an expansion ROM of `size` bytes (0 = none; rounded up to a
    /// power of two).
    pub fn rom(mut self, size: u64) -> Self {
        self.rom_size = if size == 0 {
            0
        } else {
            size.checked_next_power_of_two().unwrap_or(1 << 63)
        };
        self
    }

    /// Chooses how config writes behave (default [`WriteModel::Hardware`]).
    pub fn write_model(mut self, model: WriteModel) -> Self {
        self.model = model;
        self
    }

    /// Makes the bits of `mask` in the `width`-byte register at `offset` read-only
    /// (refused by hardware), on top of the write model. Out-of-range bytes are ignored.
    pub fn read_only(mut self, offset: usize, width: Width, mask: u32) -> Self {
        for i in 0..width.bytes() {
            let byte = ((mask >> (8 * i)) & 0xff) as u8;
            self.read_only.push((offset.saturating_add(i), byte));
        }
        self
    }

    /// Whether a function-level reset method exists (default true).
    pub fn function_reset(mut self, works: bool) -> Self {
        self.function_reset = works;
        self
    }

    /// What `PciAccess::reset` does to config space (default [`ResetRestore::SaveRestore`]).
    pub fn reset_restore(mut self, restore: ResetRestore) -> Self {
        self.reset_restore = restore;
        self
    }

    /// Whether the function implements PCI 2.3 INTx masking (Command bit 10 gates the pin,
    /// Status bit 3 reports it). Default true.
    pub fn pci_2_3(mut self, yes: bool) -> Self {
        self.pci_2_3 = yes;
        self
    }

    /// Caps how many MSI/MSI-X vectors the host grants per enable (default: unlimited).
    pub fn vectors_available(mut self, max: u16) -> Self {
        self.msi_available = Some(max);
        self
    }

    /// Finishes the function.
    pub fn build(self) -> SimFunction {
        let mut f = SimFunction::assemble(self.config, self.bars, self.rom_size, self.model);
        for (offset, mask) in self.read_only {
            if let Some(w) = f.wmask.get_mut(offset) {
                *w &= !mask;
            }
            if let Some(c) = f.w1c.get_mut(offset) {
                *c &= !mask;
            }
        }
        f.function_reset = self.function_reset;
        f.reset_restore = self.reset_restore;
        f.pci_2_3 = self.pci_2_3;
        f.vectors_available = self.msi_available;
        f
    }
}

/// Host interrupt vectors allocated for a function (`PciAccess::irq_vectors_alloc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HostVectors {
    /// MSI vectors granted (0 = MSI not allocated).
    pub msi: u16,
    /// MSI-X vectors granted (0 = MSI-X not allocated).
    pub msix: u16,
}

/// Location of the MSI-X table and PBA (from the MSI-X capability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsixLayout {
    /// Config offset of the MSI-X capability.
    pub cap: u16,
    /// Number of table entries (Table Size + 1), 1..=2048.
    pub entries: u16,
    /// BAR holding the table (BIR; 6 and 7 are reserved values, kept as read).
    pub table_bar: u8,
    /// Byte offset of the table in its BAR.
    pub table_offset: u32,
    /// BAR holding the PBA.
    pub pba_bar: u8,
    /// Byte offset of the PBA in its BAR.
    pub pba_offset: u32,
}

/// One simulated PCI function (type-0 header).
///
/// All accessors refuse bad input with an [`Errno`]; none panics.
#[derive(Debug, Clone)]
pub struct SimFunction {
    config: Vec<u8>,
    power_on: Vec<u8>,
    wmask: Vec<u8>,
    w1c: Vec<u8>,
    sticky: Vec<u8>,
    bars: [BarSpec; 6],
    bar_start: [u64; 6],
    bar_memory: [BTreeMap<u64, Box<[u8]>>; 6],
    rom_size: u64,
    rom_start: u64,
    caps: BTreeMap<u8, u16>,
    msix: Option<MsixLayout>,
    flr_capable: bool,
    function_reset: bool,
    reset_restore: ResetRestore,
    pci_2_3: bool,
    intx_pending: bool,
    vectors_available: Option<u16>,
    vectors: HostVectors,
    msix_vectors: std::collections::BTreeSet<u16>,
    reset_count: u64,
}

const UNASSIGNED: BarSpec = BarSpec {
    kind: BarKind::Mem32,
    prefetch: false,
    size: 0,
};

fn read_le(bytes: &[u8], offset: usize, len: usize) -> u64 {
    let mut v = 0u64;
    for i in (0..len).rev() {
        v = (v << 8) | u64::from(bytes.get(offset.wrapping_add(i)).copied().unwrap_or(0));
    }
    v
}

/// Decodes the six BAR registers of a type-0 header: kind, prefetch and address
/// (`None` for the upper half of a 64-bit pair).
fn decode_bars(config: &[u8]) -> [Option<(BarKind, bool, u64)>; 6] {
    let mut out = [None; 6];
    let mut i = 0usize;
    while i < 6 {
        let reg = read_le(config, 0x10 + 4 * i, 4);
        if reg & 1 == 1 {
            out[i] = Some((BarKind::Io, false, reg & 0xffff_fffc));
            i += 1;
        } else if (reg >> 1) & 3 == 2 && i < 5 {
            let hi = read_le(config, 0x10 + 4 * (i + 1), 4);
            out[i] = Some((
                BarKind::Mem64,
                reg & 8 != 0,
                (hi << 32) | (reg & 0xffff_fff0),
            ));
            i += 2;
        } else {
            out[i] = Some((BarKind::Mem32, reg & 8 != 0, reg & 0xffff_fff0));
            i += 1;
        }
    }
    out
}

/// Walks the standard capability list (TTL 48, loops tolerated) and returns
/// id → offset of the first capability of each id.
fn find_caps(config: &[u8]) -> BTreeMap<u8, u16> {
    let mut caps = BTreeMap::new();
    let status = read_le(config, 0x06, 2);
    if status & 0x10 == 0 {
        return caps;
    }
    let mut pos = (read_le(config, 0x34, 1) & 0xfc) as usize;
    let mut ttl = 48;
    while pos >= 0x40 && ttl > 0 {
        let id = read_le(config, pos, 1) as u8;
        if id == 0xff {
            break;
        }
        caps.entry(id).or_insert(pos as u16);
        pos = (read_le(config, pos + 1, 1) & 0xfc) as usize;
        ttl -= 1;
    }
    caps
}

/// Walks the extended capability list from 0x100 (TTL 480); returns (id, offset) pairs.
fn find_ext_caps(config: &[u8]) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    if config.len() < CONFIG_SIZE_EXTENDED {
        return out;
    }
    let mut pos = 0x100usize;
    let mut ttl = 480;
    while pos >= 0x100 && ttl > 0 {
        let header = read_le(config, pos, 4);
        if header == 0 || header == 0xffff_ffff {
            break;
        }
        out.push(((header & 0xffff) as u16, pos as u16));
        pos = ((header >> 20) & 0xffc) as usize;
        ttl -= 1;
    }
    out
}

fn msix_layout(config: &[u8], caps: &BTreeMap<u8, u16>) -> Option<MsixLayout> {
    let cap = *caps.get(&0x11)?;
    let at = usize::from(cap);
    let control = read_le(config, at + 2, 2);
    let table = read_le(config, at + 4, 4) as u32;
    let pba = read_le(config, at + 8, 4) as u32;
    Some(MsixLayout {
        cap,
        entries: ((control & 0x7ff) + 1) as u16,
        table_bar: (table & 7) as u8,
        table_offset: table & !7,
        pba_bar: (pba & 7) as u8,
        pba_offset: pba & !7,
    })
}

/// Infers BAR and ROM sizes for a config-space image (which does not record them).
///
/// The rule, per BAR (an address is "assigned" when its address bits are non-zero):
/// 1. An unassigned BAR (address 0, whatever its type bits) has size 0.
/// 2. Otherwise the size is the lowest set address bit (a BAR is naturally aligned to its
///    size, so this is the largest size the address allows), capped at
///    [`MAX_INFERRED_MEM_BAR`] (memory) or [`MAX_INFERRED_IO_BAR`] (I/O), and halved
///    until the BAR does not overlap the next higher BAR or ROM of the same address
///    space (memory or I/O) of the function. Minimum 16 bytes (memory) or 4 (I/O).
/// 3. If an MSI-X capability places its table or PBA in an assigned memory BAR, that BAR
///    grows to cover both, rounded up to a power of two of at least 4 KiB.
/// 4. A ROM BAR with address bits 31:11 non-zero gets [`DEFAULT_ROM_SIZE`], limited by
///    the address alignment (≥ 2 KiB) and the next higher memory BAR, like rule 2.
///
/// Returns the six [`BarSpec`]s (the upper half of a 64-bit pair is unassigned) and the
/// ROM size in bytes.
pub fn infer_bar_sizes(config: &[u8]) -> ([BarSpec; 6], u64) {
    let decoded = decode_bars(config);
    let rom_reg = read_le(config, 0x30, 4);
    let rom_addr = rom_reg & 0xffff_f800;
    // Every assigned address per space, to limit sizes so regions do not overlap.
    let mut mem_addrs: Vec<u64> = Vec::new();
    let mut io_addrs: Vec<u64> = Vec::new();
    for (kind, _, addr) in decoded.iter().flatten() {
        if *addr != 0 {
            match kind {
                BarKind::Io => io_addrs.push(*addr),
                _ => mem_addrs.push(*addr),
            }
        }
    }
    if rom_addr != 0 {
        mem_addrs.push(rom_addr);
    }
    let limit = |addr: u64, natural: u64, cap: u64, min: u64, others: &[u64]| -> u64 {
        let mut size = natural.min(cap).max(min);
        if let Some(next) = others.iter().copied().filter(|&a| a > addr).min() {
            let gap = next - addr;
            while size > min && size > gap {
                size >>= 1;
            }
        }
        size
    };
    let mut bars = [UNASSIGNED; 6];
    for (i, d) in decoded.iter().enumerate() {
        let Some((kind, prefetch, addr)) = *d else {
            continue;
        };
        let size = if addr == 0 {
            0
        } else {
            let natural = 1u64 << addr.trailing_zeros();
            match kind {
                BarKind::Io => limit(addr, natural, MAX_INFERRED_IO_BAR, 4, &io_addrs),
                _ => limit(addr, natural, MAX_INFERRED_MEM_BAR, 16, &mem_addrs),
            }
        };
        bars[i] = BarSpec {
            kind,
            prefetch,
            size,
        };
    }
    let caps = find_caps(config);
    if let Some(m) = msix_layout(config, &caps) {
        let table_end = u64::from(m.table_offset) + u64::from(m.entries) * 16;
        let pba_end = u64::from(m.pba_offset) + u64::from(m.entries).div_ceil(64) * 8;
        for (bar, end) in [(m.table_bar, table_end), (m.pba_bar, pba_end)] {
            if let Some(spec) = bars.get_mut(usize::from(bar)) {
                if spec.size != 0 && spec.kind != BarKind::Io && spec.size < end {
                    spec.size = end.next_power_of_two().max(4096);
                }
            }
        }
    }
    let rom_size = if rom_addr == 0 {
        0
    } else {
        let natural = 1u64 << rom_addr.trailing_zeros();
        limit(rom_addr, natural, DEFAULT_ROM_SIZE, 2048, &mem_addrs)
    };
    (bars, rom_size)
}

impl SimFunction {
    /// Builds a function from a real config-space image, inferring BAR sizes
    /// ([`infer_bar_sizes`]).
    ///
    /// Accepted: 256-byte (conventional) and 4096-byte (extended) images of a type-0
    /// header with a real vendor ID. A 4096-byte image whose extended space reads all-ones
    /// at 0x100, or aliases the first 256 bytes (dword 0 repeats at every multiple of 256,
    /// Linux `pci_ext_cfg_is_aliased`), is treated as a 256-byte config space. The
    /// capability chains are *not* validated: a looping or out-of-range chain is kept as
    /// is, for the core's bounded walk to refuse.
    ///
    /// # Errors
    /// [`ImageError::Empty`]; [`ImageError::Truncated`] for fewer than 256 bytes (64-byte
    /// header-only dumps included) or between 257 and 4095 bytes; [`ImageError::TooLong`]
    /// above 4096; [`ImageError::NoDevice`] for vendor ID `0xffff` or `0x0000`;
    /// [`ImageError::Bridge`], [`ImageError::CardBusBridge`],
    /// [`ImageError::UnknownHeaderType`] for header types other than 0.
    pub fn from_image(bytes: &[u8]) -> Result<SimFunction, ImageError> {
        let len = bytes.len();
        if len == 0 {
            return Err(ImageError::Empty);
        }
        if len < CONFIG_SIZE_CONVENTIONAL {
            return Err(ImageError::Truncated {
                len,
                needed: CONFIG_SIZE_CONVENTIONAL,
            });
        }
        if len > CONFIG_SIZE_EXTENDED {
            return Err(ImageError::TooLong { len });
        }
        if len != CONFIG_SIZE_CONVENTIONAL && len != CONFIG_SIZE_EXTENDED {
            return Err(ImageError::Truncated {
                len,
                needed: CONFIG_SIZE_EXTENDED,
            });
        }
        let vendor_id = read_le(bytes, 0, 2) as u16;
        if vendor_id == 0xffff || vendor_id == 0 {
            return Err(ImageError::NoDevice { vendor_id });
        }
        match bytes.get(0x0e).copied().unwrap_or(0) & 0x7f {
            0 => {}
            1 => return Err(ImageError::Bridge),
            2 => return Err(ImageError::CardBusBridge),
            header_type => return Err(ImageError::UnknownHeaderType { header_type }),
        }
        let mut size = len;
        if len == CONFIG_SIZE_EXTENDED {
            // Linux `pci_ext_cfg_is_aliased`: dword 0 repeats every 256 bytes.
            let id = read_le(bytes, 0, 4);
            let aliased = (1..16).all(|k| read_le(bytes, 0x100 * k, 4) == id);
            if read_le(bytes, 0x100, 4) == 0xffff_ffff || aliased {
                size = CONFIG_SIZE_CONVENTIONAL;
            }
        }
        let config = bytes.get(..size).unwrap_or(bytes).to_vec();
        let (bars, rom_size) = infer_bar_sizes(&config);
        Ok(SimFunction::assemble(
            config,
            bars.map(Some),
            rom_size,
            WriteModel::Hardware,
        ))
    }

    /// A builder for a function made of raw config bytes and explicit BAR sizes.
    pub fn builder(config: &[u8], config_size: usize) -> FunctionBuilder {
        FunctionBuilder::new(config, config_size)
    }

    fn assemble(
        config: Vec<u8>,
        bars: [Option<BarSpec>; 6],
        rom_size: u64,
        model: WriteModel,
    ) -> SimFunction {
        let n = config.len();
        let mut bar_specs = [UNASSIGNED; 6];
        let mut i = 0usize;
        while i < 6 {
            if let Some(spec) = bars[i] {
                bar_specs[i] = spec;
                if spec.kind == BarKind::Mem64 {
                    i += 1; // the upper half stays unassigned
                }
            }
            i += 1;
        }
        let decoded = decode_bars(&config);
        let mut bar_start = [0u64; 6];
        for (i, d) in decoded.iter().enumerate() {
            if let Some((_, _, addr)) = d {
                bar_start[i] = *addr;
            }
        }
        let caps = find_caps(&config);
        let msix = msix_layout(&config, &caps);
        let mut f = SimFunction {
            power_on: config.clone(),
            config,
            wmask: vec![0xff; n],
            w1c: vec![0; n],
            sticky: vec![0; n],
            bars: bar_specs,
            bar_start,
            bar_memory: Default::default(),
            rom_size,
            rom_start: 0,
            caps,
            msix,
            flr_capable: false,
            function_reset: true,
            reset_restore: ResetRestore::default(),
            pci_2_3: true,
            intx_pending: false,
            vectors_available: None,
            vectors: HostVectors::default(),
            msix_vectors: std::collections::BTreeSet::new(),
            reset_count: 0,
        };
        f.rom_start = read_le(&f.config, 0x30, 4) & 0xffff_f800;
        f.flr_capable = f.compute_flr();
        if model == WriteModel::Hardware {
            f.hardware_masks();
        }
        f
    }

    fn compute_flr(&self) -> bool {
        if let Some(&pcie) = self.caps.get(&0x10) {
            if read_le(&self.config, usize::from(pcie) + 4, 4) & (1 << 28) != 0 {
                return true;
            }
        }
        if let Some(&af) = self.caps.get(&0x13) {
            if read_le(&self.config, usize::from(af) + 3, 1) & 0x3 == 0x3 {
                return true;
            }
        }
        false
    }

    fn set_mask(v: &mut [u8], offset: usize, len: usize, mask: u64) {
        for i in 0..len {
            if let Some(b) = v.get_mut(offset + i) {
                *b = match mask.checked_shr(8 * i as u32) {
                    Some(m) if i < 8 => (m & 0xff) as u8,
                    _ if mask == u64::MAX => 0xff,
                    _ => 0,
                };
            }
        }
    }

    /// Whether BAR register `i` (0..=5) is the upper half of an assigned 64-bit BAR: the
    /// BAR below is an assigned `Mem64` and this one has no spec of its own.
    fn is_upper_half(&self, i: usize) -> bool {
        let lower = i.checked_sub(1).and_then(|below| self.bars.get(below));
        lower.is_some_and(|b| b.kind == BarKind::Mem64 && b.size != 0)
            && self.bars.get(i).is_some_and(|b| b.size == 0)
    }

    /// Fills `wmask`/`w1c`/`sticky` with the hardware write model.
    fn hardware_masks(&mut self) {
        // Writable address bits of each BAR register (the upper half of a 64-bit BAR
        // holds the high address bits).
        let bar_masks: [u64; 6] = std::array::from_fn(|i| {
            let spec = self.bars[i];
            if self.is_upper_half(i) {
                (!(self.bars[i - 1].size - 1) >> 32) & 0xffff_ffff
            } else if spec.size == 0 {
                0
            } else if spec.kind == BarKind::Io {
                !(spec.size - 1) & 0xffff_fffc
            } else {
                !(spec.size - 1) & 0xffff_fff0
            }
        });
        let w = &mut self.wmask;
        let c = &mut self.w1c;
        Self::set_mask(w, 0x00, 4, 0); // IDs
        Self::set_mask(w, 0x04, 2, 0x07ff); // Command
        Self::set_mask(w, 0x06, 2, 0); // Status: RO + RW1C
        Self::set_mask(c, 0x06, 2, 0xf900);
        Self::set_mask(w, 0x08, 4, 0); // revision, class
        Self::set_mask(w, 0x0e, 2, 0); // header type, BIST
        for (i, mask) in bar_masks.into_iter().enumerate() {
            Self::set_mask(w, 0x10 + 4 * i, 4, mask);
        }
        Self::set_mask(w, 0x28, 8, 0); // CardBus CIS, subsystem IDs
        let rom_mask = if self.rom_size == 0 {
            0
        } else {
            (!(self.rom_size - 1) & 0xffff_f800) | 1
        };
        Self::set_mask(w, 0x30, 4, rom_mask);
        Self::set_mask(w, 0x34, 8, 0); // cap pointer, reserved
        Self::set_mask(w, 0x3d, 3, 0); // pin, min_gnt, max_lat
                                       // Standard capabilities: headers read-only, selected registers by ID.
        let mut pos = (read_le(&self.config, 0x34, 1) & 0xfc) as usize;
        let mut ttl = 48;
        let has_caps = read_le(&self.config, 0x06, 2) & 0x10 != 0;
        while has_caps && pos >= 0x40 && ttl > 0 {
            let id = read_le(&self.config, pos, 1) as u8;
            Self::set_mask(w, pos, 2, 0);
            match id {
                0x01 => {
                    Self::set_mask(w, pos + 2, 2, 0); // PMC
                    Self::set_mask(w, pos + 4, 4, 0x0103); // PMCSR: state, PME_En
                    Self::set_mask(c, pos + 4, 2, 0x8000); // PME_Status
                }
                0x05 => Self::set_mask(w, pos + 2, 2, 0x0071), // Enable, MME
                0x11 => {
                    Self::set_mask(w, pos + 2, 2, 0xc000); // Enable, Function Mask
                    Self::set_mask(w, pos + 4, 8, 0); // table/PBA offsets
                }
                0x10 => {
                    Self::set_mask(w, pos + 2, 2, 0); // PCIe capabilities
                    Self::set_mask(w, pos + 4, 4, 0); // Device Capabilities
                    Self::set_mask(w, pos + 8, 2, 0x7fff); // Device Control (bit 15: FLR)
                    Self::set_mask(w, pos + 0x0a, 2, 0); // Device Status
                    Self::set_mask(c, pos + 0x0a, 2, 0x000f);
                    Self::set_mask(w, pos + 0x0c, 4, 0); // Link Capabilities
                    Self::set_mask(w, pos + 0x12, 2, 0); // Link Status
                    Self::set_mask(c, pos + 0x12, 2, 0xc000);
                    Self::set_mask(w, pos + 0x14, 4, 0); // Slot Capabilities
                    Self::set_mask(w, pos + 0x24, 4, 0); // Device Capabilities 2
                    Self::set_mask(w, pos + 0x2c, 4, 0); // Link Capabilities 2
                }
                _ => {}
            }
            pos = (read_le(&self.config, pos + 1, 1) & 0xfc) as usize;
            ttl -= 1;
        }
        for (id, at) in find_ext_caps(&self.config) {
            let at = usize::from(at);
            Self::set_mask(w, at, 4, 0);
            if id == 0x0001 {
                // AER: status registers RW1CS, masks/severity sticky.
                Self::set_mask(w, at + 4, 4, 0);
                Self::set_mask(c, at + 4, 4, 0xffff_ffff);
                Self::set_mask(w, at + 0x10, 4, 0);
                Self::set_mask(c, at + 0x10, 4, 0xffff_ffff);
                Self::set_mask(&mut self.sticky, at + 4, 0x18, u64::MAX);
                Self::set_mask(&mut self.sticky, at + 0x0c, 8, u64::MAX);
                Self::set_mask(&mut self.sticky, at + 0x14, 8, u64::MAX);
                Self::set_mask(w, at + 0x1c, 16, 0); // header log
            }
        }
    }

    // ---- accessors ----

    /// Config space size in bytes: 256 or 4096.
    pub fn config_size(&self) -> u16 {
        self.config.len() as u16
    }

    /// The config space as hardware would return it now (Status bit 3 = INTx state).
    pub fn config_bytes(&self) -> Vec<u8> {
        let mut v = self.config.clone();
        if let Some(b) = v.get_mut(0x06) {
            *b = (*b & !0x08) | if self.intx_status() { 0x08 } else { 0 };
        }
        v
    }

    /// The power-on config image (what a raw reset returns to, sticky bits aside).
    pub fn power_on_image(&self) -> &[u8] {
        &self.power_on
    }

    fn check_access(&self, offset: u16, width: Width) -> Result<usize, Errno> {
        let off = usize::from(offset);
        if off % width.bytes() != 0 {
            return Err(Errno::EINVAL);
        }
        match off.checked_add(width.bytes()) {
            Some(end) if end <= self.config.len() => Ok(off),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Reads a naturally aligned `width` at `offset`, little-endian.
    ///
    /// # Errors
    /// `EINVAL` when misaligned or past the end of config space.
    pub fn config_read(&self, offset: u16, width: Width) -> Result<u32, Errno> {
        let off = self.check_access(offset, width)?;
        let mut v = read_le(&self.config, off, width.bytes()) as u32;
        if off <= 6 && off + width.bytes() > 6 {
            let bit = 8 * (6 - off) as u32 + 3;
            v = (v & !(1 << bit)) | (u32::from(self.intx_status()) << bit);
        }
        Ok(v)
    }

    /// Writes a naturally aligned `width` at `offset` with the function's write model:
    /// read-only bits keep their value, RW1C bits clear where `value` has ones.
    /// Writing 1 to PCIe Device Control bit 15 (Initiate FLR) performs a raw reset
    /// ([`SimFunction::hardware_reset`]) when the function is FLR capable.
    ///
    /// # Errors
    /// `EINVAL` when misaligned or past the end of config space.
    pub fn config_write(&mut self, offset: u16, width: Width, value: u32) -> Result<(), Errno> {
        let off = self.check_access(offset, width)?;
        // The power state before the write matters only for a PM reset, which only
        // `ResetRestore::Cleared` models: skip the capability lookup otherwise.
        let pm_from = if self.reset_restore == ResetRestore::Cleared {
            self.pm_state()
        } else {
            None
        };
        let mut flr = false;
        if let Some(&pcie) = self.caps.get(&0x10) {
            let devctl_hi = usize::from(pcie) + 9;
            if off <= devctl_hi && devctl_hi < off + width.bytes() {
                let byte = (value >> (8 * (devctl_hi - off))) & 0xff;
                flr = byte & 0x80 != 0 && self.flr_capable;
            }
        }
        for i in 0..width.bytes() {
            let v = ((value >> (8 * i)) & 0xff) as u8;
            let at = off + i;
            let (Some(old), Some(&w), Some(&c)) =
                (self.config.get(at), self.wmask.get(at), self.w1c.get(at))
            else {
                continue;
            };
            let new = ((old & !w) | (v & w)) & !(v & c);
            self.config[at] = new;
        }
        if flr {
            self.hardware_reset();
        } else if pm_from == Some(3) {
            // PM reset: D3hot → D0 with No_Soft_Reset (PMCSR bit 3) clear.
            if let Some((0, pmcsr)) = self.pm_state_and_csr() {
                if pmcsr & 0x0008 == 0 {
                    self.hardware_reset();
                }
            }
        }
        Ok(())
    }

    fn pm_state_and_csr(&self) -> Option<(u8, u16)> {
        let pm = usize::from(*self.caps.get(&0x01)?);
        let csr = read_le(&self.config, pm + 4, 2) as u16;
        Some(((csr & 3) as u8, csr))
    }

    /// The PM capability's power state (PMCSR bits 1:0), if the function has one.
    pub fn pm_state(&self) -> Option<u8> {
        self.pm_state_and_csr().map(|(s, _)| s)
    }

    /// Whether the function implements PCI 2.3 INTx masking.
    pub fn pci_2_3(&self) -> bool {
        self.pci_2_3
    }

    /// What a reset does to config space (see [`ResetRestore`]).
    pub fn reset_restore(&self) -> ResetRestore {
        self.reset_restore
    }

    /// Sets what a reset does to config space.
    pub fn set_reset_restore(&mut self, restore: ResetRestore) {
        self.reset_restore = restore;
    }

    /// Command, BAR addresses and ROM BAR as a reset leaves them (type bits kept).
    fn clear_decode(&mut self) {
        self.poke_config(0x04, &[0, 0]);
        for i in 0..6usize {
            let at = 0x10 + 4 * i;
            let reg = read_le(&self.config, at, 4) as u32;
            let spec = self.bars[i];
            let keep = if self.is_upper_half(i) {
                0
            } else if spec.size == 0 {
                reg
            } else if spec.kind == BarKind::Io {
                reg & 0x3
            } else {
                reg & 0xf
            };
            self.poke_config(at, &keep.to_le_bytes());
        }
        self.poke_config(0x30, &[0, 0, 0, 0]);
    }

    /// Writes config bytes directly, bypassing the write model (the platform or a test
    /// changing hardware state). Out-of-range bytes are ignored.
    pub fn poke_config(&mut self, offset: usize, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            if let Some(slot) = offset.checked_add(i).and_then(|a| self.config.get_mut(a)) {
                *slot = *b;
            }
        }
    }

    /// Type and size of BAR `index` (0..=5); `None` for larger indexes.
    pub fn bar_spec(&self, index: u8) -> Option<BarSpec> {
        self.bars.get(usize::from(index)).copied()
    }

    /// The host resource of BAR `index`: start = the address in the power-on image.
    pub fn bar_resource(&self, index: u8) -> Option<BarResource> {
        let spec = self.bar_spec(index)?;
        Some(BarResource {
            kind: spec.kind,
            prefetch: spec.prefetch,
            start: if spec.size == 0 {
                0
            } else {
                self.bar_start[usize::from(index)]
            },
            size: spec.size,
        })
    }

    /// Size of the expansion ROM in bytes (0 = none).
    pub fn rom_size(&self) -> u64 {
        self.rom_size
    }

    /// Host address of the expansion ROM (0 when none).
    pub fn rom_start(&self) -> u64 {
        if self.rom_size == 0 {
            0
        } else {
            self.rom_start
        }
    }

    fn range_check(size: u64, offset: u64, len: usize) -> Result<(), Errno> {
        let end = offset.checked_add(len as u64).ok_or(Errno::EINVAL)?;
        if size == 0 || end > size {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// Power-on value of BAR memory at byte `k`: `k & 0xff` (the spec mock's pattern).
    fn pattern(k: u64) -> u8 {
        (k & 0xff) as u8
    }

    /// Reads BAR memory. Unwritten bytes read their power-on pattern (`offset & 0xff`).
    /// One backing-page lookup per 4 KiB page touched, not per byte. Memory decode (Command bit 1) is not modelled: the core checks it.
    ///
    /// # Errors
    /// `EINVAL` for an unassigned BAR, an index above 5, or a range past the BAR's end.
    pub fn bar_read(&self, index: u8, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let spec = self.bar_spec(index).ok_or(Errno::EINVAL)?;
        Self::range_check(spec.size, offset, buf.len())?;
        let mem = &self.bar_memory[usize::from(index)];
        let mut done = 0usize;
        while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
            // No overflow: `range_check` bounded `offset + buf.len()` by the BAR size.
            let k = offset + done as u64;
            let off = (k % BACKING_PAGE) as usize;
            let n = rest.len().min(BACKING_PAGE as usize - off);
            let (part, _) = rest.split_at_mut(n);
            match mem
                .get(&(k / BACKING_PAGE))
                .and_then(|p| p.get(off..off + n))
            {
                Some(src) => part.copy_from_slice(src),
                None => part
                    .iter_mut()
                    .zip(k..)
                    .for_each(|(b, at)| *b = Self::pattern(at)),
            }
            done += n;
        }
        Ok(())
    }

    /// Writes BAR memory (backing pages are allocated on first write).
    ///
    /// # Errors
    /// As [`SimFunction::bar_read`].
    pub fn bar_write(&mut self, index: u8, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let spec = self.bar_spec(index).ok_or(Errno::EINVAL)?;
        Self::range_check(spec.size, offset, data.len())?;
        let mem = &mut self.bar_memory[usize::from(index)];
        let mut done = 0usize;
        while let Some(rest) = data.get(done..).filter(|r| !r.is_empty()) {
            // No overflow: `range_check` bounded `offset + data.len()` by the BAR size.
            let k = offset + done as u64;
            let page = k / BACKING_PAGE;
            let off = (k % BACKING_PAGE) as usize;
            let n = rest.len().min(BACKING_PAGE as usize - off);
            let p = mem.entry(page).or_insert_with(|| {
                (0..BACKING_PAGE)
                    .map(|j| Self::pattern(page * BACKING_PAGE + j))
                    .collect()
            });
            if let (Some(dst), Some(src)) = (p.get_mut(off..off + n), rest.get(..n)) {
                dst.copy_from_slice(src);
            }
            done += n;
        }
        Ok(())
    }

    /// Reads the expansion ROM: bytes 0 and 1 are the signature `0x55 0xaa`, byte `k`
    /// otherwise `k & 0xff`.
    ///
    /// # Errors
    /// `EINVAL` when there is no ROM or the range passes its end.
    pub fn rom_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        Self::range_check(self.rom_size, offset, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            let k = offset + i as u64;
            *b = match k {
                0 => 0x55,
                1 => 0xaa,
                _ => Self::pattern(k),
            };
        }
        Ok(())
    }

    /// Offset of the first standard capability with `id`, if the (bounded) walk finds one.
    pub fn capability(&self, id: u8) -> Option<u16> {
        self.caps.get(&id).copied()
    }

    /// MSI-X table/PBA location, if the function has an MSI-X capability.
    pub fn msix_layout(&self) -> Option<MsixLayout> {
        self.msix
    }

    /// Whether the function advertises FLR (PCIe Device Capabilities bit 28, or AF
    /// capability with TP and FLR).
    pub fn flr_capable(&self) -> bool {
        self.flr_capable
    }

    /// Whether a function-level reset method works (configurable, default true).
    pub fn function_reset_supported(&self) -> bool {
        self.function_reset
    }

    /// Sets whether a function-level reset method works.
    pub fn set_function_reset_supported(&mut self, works: bool) {
        self.function_reset = works;
    }

    /// Resets performed so far (function, bus and slot resets and FLRs alike).
    pub fn reset_count(&self) -> u64 {
        self.reset_count
    }

    /// The raw hardware reset (FLR or conventional reset): config space returns to the
    /// power-on image except sticky bytes (the AER status, mask and severity registers,
    /// PCIe r6 §7.8.4), BAR memory returns to its pattern, INTx deasserts. Host vector
    /// bookkeeping stays (the device's Enable bits are cleared with config space).
    pub fn hardware_reset(&mut self) {
        for (i, b) in self.config.iter_mut().enumerate() {
            let sticky = self.sticky.get(i).copied().unwrap_or(0);
            let fresh = self.power_on.get(i).copied().unwrap_or(0);
            *b = (*b & sticky) | (fresh & !sticky);
        }
        if self.reset_restore == ResetRestore::Cleared {
            self.clear_decode();
        }
        self.reset_side_effects();
    }

    fn reset_side_effects(&mut self) {
        for m in self.bar_memory.iter_mut() {
            m.clear();
        }
        self.intx_pending = false;
        self.reset_count = self.reset_count.saturating_add(1);
    }

    /// The reset `PciAccess::reset` performs for this function (see [`ResetRestore`]).
    pub fn platform_reset(&mut self) {
        match self.reset_restore {
            ResetRestore::SaveRestore => self.reset_side_effects(),
            ResetRestore::PowerOn | ResetRestore::Cleared => self.hardware_reset(),
        }
    }

    /// Drives (`true`) or releases the function's INTx level.
    pub fn set_intx(&mut self, pending: bool) {
        self.intx_pending = pending;
    }

    /// Whether the INTx condition is pending (Status bit 3 on PCI 2.3 functions).
    pub fn intx_pending(&self) -> bool {
        self.intx_pending
    }

    fn intx_status(&self) -> bool {
        self.pci_2_3 && self.intx_pending
    }

    /// Whether the INTx pin is driven: pending and, on PCI 2.3 functions, Command bit 10
    /// (Interrupt Disable) clear.
    pub fn intx_asserted(&self) -> bool {
        let disabled = read_le(&self.config, 0x04, 2) & 0x0400 != 0;
        self.intx_pending && !(self.pci_2_3 && disabled)
    }

    /// Host vectors currently allocated.
    pub fn host_vectors(&self) -> HostVectors {
        self.vectors
    }

    /// Allocates host vectors and enables MSI or MSI-X in config space.
    ///
    /// MSI: grants `min(max, 2^MMC, available)`, sets Enable and MME = ceil(log2 n).
    /// MSI-X: grants `min(max, table entries, available)`, sets Enable, clears Function
    /// Mask. Command is not touched.
    ///
    /// # Errors
    /// `EINVAL`: `max` is 0, the capability is missing, or MSI/MSI-X is already
    /// allocated; `ENOSPC`: the host has no vector available.
    pub fn irq_vectors_alloc(&mut self, msix: bool, max: u16) -> Result<u16, Errno> {
        if max == 0 || self.vectors.msi != 0 || self.vectors.msix != 0 {
            return Err(Errno::EINVAL);
        }
        let available = self.vectors_available.unwrap_or(u16::MAX);
        if available == 0 {
            return Err(Errno::ENOSPC);
        }
        if msix {
            let m = self.msix.ok_or(Errno::EINVAL)?;
            let n = max.min(m.entries).min(available);
            let at = usize::from(m.cap) + 2;
            let ctl = read_le(&self.config, at, 2) as u16;
            self.poke_config(at, &((ctl | 0x8000) & !0x4000).to_le_bytes());
            self.vectors.msix = n;
            self.msix_vectors = (0..n).collect();
            Ok(n)
        } else {
            let cap = self.capability(0x05).ok_or(Errno::EINVAL)?;
            let at = usize::from(cap) + 2;
            let ctl = read_le(&self.config, at, 2) as u16;
            let mmc = (ctl >> 1) & 7;
            let supported = 1u16 << mmc.min(5);
            let n = max.min(supported).min(available).min(32);
            let mme = u16::try_from(n.next_power_of_two().trailing_zeros()).unwrap_or(0);
            let ctl = (ctl & !0x0070) | (mme << 4) | 1;
            self.poke_config(at, &ctl.to_le_bytes());
            self.vectors.msi = n;
            Ok(n)
        }
    }

    /// Frees all host vectors and clears MSI Enable/MME and MSI-X Enable.
    pub fn irq_vectors_free(&mut self) {
        if let Some(cap) = self.capability(0x05) {
            let at = usize::from(cap) + 2;
            let ctl = read_le(&self.config, at, 2) as u16;
            self.poke_config(at, &(ctl & !0x0071).to_le_bytes());
        }
        if let Some(m) = self.msix {
            let at = usize::from(m.cap) + 2;
            let ctl = read_le(&self.config, at, 2) as u16;
            self.poke_config(at, &(ctl & !0x8000).to_le_bytes());
        }
        self.vectors = HostVectors::default();
        self.msix_vectors.clear();
    }

    /// Dynamic MSI-X: allocates host vector `vector` of the enabled MSI-X block, leaving
    /// the others untouched (vectors in between stay unallocated). `msix` in
    /// [`SimFunction::host_vectors`] becomes one past the highest allocated vector.
    ///
    /// # Errors
    /// `EINVAL`: MSI-X is not allocated or `vector` is past the table; `ENOSPC`: the host
    /// has no vector left ([`FunctionBuilder::vectors_available`]).
    pub fn irq_vector_add(&mut self, vector: u16) -> Result<(), Errno> {
        let m = self.msix.ok_or(Errno::EINVAL)?;
        if self.vectors.msix == 0 || vector >= m.entries {
            return Err(Errno::EINVAL);
        }
        if self.msix_vectors.contains(&vector) {
            return Ok(());
        }
        let available = usize::from(self.vectors_available.unwrap_or(u16::MAX));
        if self.msix_vectors.len() >= available {
            return Err(Errno::ENOSPC);
        }
        self.msix_vectors.insert(vector);
        self.vectors.msix = self.vectors.msix.max(vector + 1);
        Ok(())
    }

    /// The MSI-X host vectors allocated, ascending (sparse with dynamic MSI-X).
    pub fn msix_vectors(&self) -> Vec<u16> {
        self.msix_vectors.iter().copied().collect()
    }

    /// The device signals MSI-X `vector`: `Some(vector)` when MSI-X is enabled in config
    /// space, not function-masked, and the vector is allocated; `None` otherwise.
    pub fn raise_msix(&self, vector: u16) -> Option<u16> {
        let m = self.msix?;
        let ctl = read_le(&self.config, usize::from(m.cap) + 2, 2);
        (ctl & 0xc000 == 0x8000 && self.msix_vectors.contains(&vector)).then_some(vector)
    }

    /// The device signals MSI `vector`: `Some(vector)` when MSI is enabled, the vector
    /// is below the enabled count (2^MME) and allocated; `None` otherwise.
    pub fn raise_msi(&self, vector: u16) -> Option<u16> {
        let cap = self.capability(0x05)?;
        let ctl = read_le(&self.config, usize::from(cap) + 2, 2);
        let enabled = 1u16 << ((ctl >> 4) & 7).min(5);
        (ctl & 1 == 1 && vector < enabled && vector < self.vectors.msi).then_some(vector)
    }
}
