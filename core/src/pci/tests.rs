//! Unit tests of the vfio-pci driver against a mock function (4096-byte config array,
//! one BAR memory, counting event sink).

use std::cell::RefCell;
use std::vec::Vec;

use super::*;
use crate::errno::ErrorType;
use crate::platform::BarResource;

const CFG: u64 = (region_index::CONFIG as u64) << 40;

struct MockPci {
    cfg: [u8; 4096],
    size: u16,
    bars: [BarResource; 6],
    rom: u64,
    bar0: Vec<u8>,
    reset_ok: bool,
    resets: u32,
    grant_limit: u16,
    allocs: Vec<(MsiKind, u16)>,
    frees: u32,
    bar_writes: u32,
    /// The shared trigger table, to see what the INTx handler would see at request time.
    intx_watch: Option<&'static IrqTable>,
    /// What `intx_request` saw in `intx_watch`: (kind, trigger token).
    intx_seen: Option<(IrqType, Option<u32>)>,
    /// The error `intx_request` returns, if any.
    intx_error: Option<Errno>,
}

impl ErrorType for MockPci {
    type Error = Errno;
}

fn none_bar() -> BarResource {
    BarResource {
        kind: BarKind::Mem32,
        prefetch: false,
        start: 0,
        size: 0,
    }
}

impl MockPci {
    fn blank() -> Self {
        MockPci {
            cfg: [0; 4096],
            size: 4096,
            bars: [none_bar(); 6],
            rom: 0,
            bar0: std::vec![0u8; 0x4000],
            reset_ok: false,
            resets: 0,
            grant_limit: u16::MAX,
            allocs: Vec::new(),
            frees: 0,
            bar_writes: 0,
            intx_watch: None,
            intx_seen: None,
            intx_error: None,
        }
    }

    fn put(&mut self, off: usize, bytes: &[u8]) {
        self.cfg[off..off + bytes.len()].copy_from_slice(bytes);
    }

    fn put16(&mut self, off: usize, v: u16) {
        self.put(off, &v.to_le_bytes());
    }

    fn put32(&mut self, off: usize, v: u32) {
        self.put(off, &v.to_le_bytes());
    }

    fn get16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.cfg[off], self.cfg[off + 1]])
    }

    fn get32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.cfg[off..off + 4].try_into().unwrap())
    }

    /// A PCIe endpoint with PM, MSI (64-bit, 8 vectors), PCIe v2, MSI-X (16 entries in
    /// BAR0 at 0x2000), a vendor cap, a hidden cap; AER → hidden 0x19 → DSN.
    fn standard() -> Self {
        let mut m = MockPci::blank();
        m.put16(0x00, 0x8086);
        m.put16(0x02, 0x1234);
        m.put16(0x04, 0x0000);
        m.put16(0x06, 0x0010);
        m.put32(0x08, 0x0200_0001);
        m.cfg[0x34] = 0x40;
        m.cfg[0x3C] = 0x0B;
        m.cfg[0x3D] = 0x01;
        m.put32(0x10, 0xFE00_0000);
        m.put32(0x18, 0xC000_000C);
        m.put32(0x1C, 0x0000_0001);
        m.put32(0x20, 0x0000_E001);
        m.put32(0x30, 0xFD00_0000);
        // PM @0x40
        m.put(0x40, &[0x01, 0x50]);
        m.put16(0x42, 0xC803);
        m.put16(0x44, 0x0108);
        // MSI @0x50: 64-bit, MMC 3 (8 vectors)
        m.put(0x50, &[0x05, 0x70]);
        m.put16(0x52, 0x0086);
        // PCIe @0x70 v2 endpoint, len 52; DevCap FLR capable
        m.put(0x70, &[0x10, 0xB0]);
        m.put16(0x72, 0x0002);
        m.put32(0x74, 0x1000_0000);
        m.put16(0x78, 0x2810);
        // MSI-X @0xB0: 16 entries, table BAR0+0x2000, PBA BAR0+0x3000
        m.put(0xB0, &[0x11, 0xC0]);
        m.put16(0xB2, 0x000F);
        m.put32(0xB4, 0x2000);
        m.put32(0xB8, 0x3000);
        // Vendor @0xC0, len 8
        m.put(0xC0, &[0x09, 0xD0, 0x08, 0xAA]);
        // Debug port (hidden) @0xD0
        m.put(0xD0, &[0x0A, 0x00, 0x55, 0x66]);
        // Extended: AER @0x100 → hidden 0x19 @0x150 → DSN @0x160
        m.put32(0x100, 0x1501_0001);
        m.put32(0x150, 0x1601_0019);
        m.put32(0x160, 0x0001_0003);
        m.bars[0] = BarResource {
            kind: BarKind::Mem32,
            prefetch: false,
            start: 0xFE00_0000,
            size: 0x4000,
        };
        m.bars[2] = BarResource {
            kind: BarKind::Mem64,
            prefetch: true,
            start: 0x1_C000_0000,
            size: 0x4000,
        };
        m.bars[4] = BarResource {
            kind: BarKind::Io,
            prefetch: false,
            start: 0xE000,
            size: 32,
        };
        m.rom = 0x10000;
        m
    }
}

impl PciAccess for MockPci {
    fn config_size(&mut self, _dev: Bdf) -> Result<u16> {
        Ok(self.size)
    }

    fn config_read(&mut self, _dev: Bdf, offset: u16, width: Width) -> Result<u32> {
        let o = usize::from(offset);
        let n = width.bytes();
        if o % n != 0 || o + n > usize::from(self.size) {
            return Err(Errno::EINVAL);
        }
        let mut v = 0u32;
        for i in 0..n {
            v |= u32::from(self.cfg[o + i]) << (8 * i);
        }
        Ok(v)
    }

    fn config_write(&mut self, _dev: Bdf, offset: u16, width: Width, value: u32) -> Result<()> {
        let o = usize::from(offset);
        let n = width.bytes();
        if o % n != 0 || o + n > usize::from(self.size) {
            return Err(Errno::EINVAL);
        }
        for i in 0..n {
            self.cfg[o + i] = (value >> (8 * i)) as u8;
        }
        Ok(())
    }

    fn bar_resource(&mut self, _dev: Bdf, bar: BarIndex) -> Result<BarResource> {
        Ok(self.bars[usize::from(bar.get())])
    }

    fn rom_size(&mut self, _dev: Bdf) -> Result<u64> {
        Ok(self.rom)
    }

    fn bar_read(&mut self, _dev: Bdf, bar: BarIndex, offset: u64, buf: &mut [u8]) -> Result<()> {
        assert_eq!(bar.get(), 0, "only BAR0 has memory in the mock");
        let o = offset as usize;
        buf.copy_from_slice(&self.bar0[o..o + buf.len()]);
        Ok(())
    }

    fn bar_write(&mut self, _dev: Bdf, bar: BarIndex, offset: u64, data: &[u8]) -> Result<()> {
        if bar.get() != 0 {
            return Ok(());
        }
        let o = offset as usize;
        self.bar0[o..o + data.len()].copy_from_slice(data);
        self.bar_writes += 1;
        Ok(())
    }

    fn rom_read(&mut self, _dev: Bdf, offset: u64, buf: &mut [u8]) -> Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (offset as usize + i) as u8;
        }
        Ok(())
    }

    fn reset_supported(&mut self, _dev: Bdf, method: ResetMethod) -> bool {
        self.reset_ok && method == ResetMethod::Function
    }

    fn reset(&mut self, _dev: Bdf, _method: ResetMethod) -> Result<()> {
        if !self.reset_ok {
            return Err(Errno::ENOTTY);
        }
        self.resets += 1;
        Ok(())
    }

    fn irq_vectors_alloc(&mut self, _dev: Bdf, kind: MsiKind, max: u16) -> Result<u16> {
        if max == 0 {
            return Err(Errno::ERANGE);
        }
        self.allocs.push((kind, max));
        Ok(max.min(self.grant_limit))
    }

    fn irq_vectors_free(&mut self, _dev: Bdf) {
        self.frees += 1;
    }

    fn intx_request(&mut self, _dev: Bdf, _shared: bool, _masked: bool) -> Result<()> {
        self.intx_seen = self.intx_watch.map(|t| (t.kind(), t.intx_trigger()));
        self.intx_error.map_or(Ok(()), Err)
    }
}

#[derive(Default)]
struct MockEvents {
    signals: RefCell<Vec<u32>>,
}

impl EventSink for MockEvents {
    type Event = u32;

    fn resolve(&mut self, fd: i32) -> Result<u32> {
        match fd {
            0..=99 => Ok(fd as u32),
            100..=199 => Err(Errno::EINVAL),
            _ => Err(Errno::EBADF),
        }
    }

    fn signal(&self, event: u32) {
        self.signals.borrow_mut().push(event);
    }

    fn event_token(&self, event: u32) -> Option<u32> {
        Some(event)
    }

    fn token_event(&self, token: u32) -> Option<u32> {
        Some(token)
    }
}

type Driver = PciDriver<MockPci, MockEvents>;

fn bdf() -> Bdf {
    Bdf::new(0, 6, 0x0d, 0).unwrap()
}

fn open(m: MockPci) -> (Driver, PciDevice<u32>) {
    let mut d = PciDriver::new(m, MockEvents::default());
    let mut s = PciDevice::new(bdf());
    d.open_device(&mut s).expect("open");
    (d, s)
}

fn rd(d: &mut Driver, s: &mut PciDevice<u32>, off: u64, n: usize) -> u32 {
    let mut b = [0u8; 4];
    assert_eq!(d.read(s, CFG + off, &mut b[..n]), Ok(n));
    u32::from_le_bytes(b)
}

fn wr(d: &mut Driver, s: &mut PciDevice<u32>, off: u64, n: usize, v: u32) {
    assert_eq!(d.write(s, CFG + off, &v.to_le_bytes()[..n]), Ok(n));
}

fn req(flags: u32, index: u32, start: u32, count: u32) -> IrqSetRequest {
    IrqSetRequest {
        flags,
        index,
        start,
        count,
    }
}

fn fds(list: &[i32]) -> Vec<u8> {
    list.iter().flat_map(|f| f.to_le_bytes()).collect()
}

const EVENTFD_TRIGGER: u32 = irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_TRIGGER;
const NONE_TRIGGER: u32 = irq_set_flags::DATA_NONE | irq_set_flags::ACTION_TRIGGER;
const BOOL_TRIGGER: u32 = irq_set_flags::DATA_BOOL | irq_set_flags::ACTION_TRIGGER;

// ------------------------------------------------------------------ open and walk

#[test]
fn open_builds_capability_table_and_hides_unknown_caps() {
    let (_, s) = open(MockPci::standard());
    let caps = s.config().capabilities();
    let kept: Vec<(u16, u16, &str)> = caps
        .iter()
        .filter(|c| c.visibility == CapVisibility::Kept)
        .map(|c| (c.offset, c.len, c.name()))
        .collect();
    assert_eq!(
        kept,
        std::vec![
            (0x40, 8, "PM"),
            (0x50, 14, "MSI"),
            (0x70, 52, "PCIe"),
            (0xB0, 12, "MSI-X"),
            (0xC0, 8, "Vendor"),
            (0x100, 44, "AER"),
            (0x160, 12, "DSN"),
        ]
    );
    assert!(caps
        .iter()
        .any(|c| c.offset == 0xD0 && c.visibility == CapVisibility::Hidden));
    let v = s.config().vconfig();
    assert_eq!(v.len(), 4096);
    assert_eq!(
        v[0xC1], 0,
        "next of the cap before the hidden one is patched"
    );
    assert_eq!(
        u32::from_le_bytes(v[0x100..0x104].try_into().unwrap()) >> 20,
        0x160
    );
    assert!(!s.config().truncated());
    assert_eq!(s.config().owner(0xD2), Owner::Raw);
    assert_eq!(s.config().owner(0x3F), Owner::Header);
}

#[test]
fn pm_pme_bits_read_zero() {
    let (mut d, mut s) = open(MockPci::standard());
    assert_eq!(rd(&mut d, &mut s, 0x42, 2), 0x0003);
    assert_eq!(rd(&mut d, &mut s, 0x44, 2), 0x0008);
}

#[test]
fn all_ones_config_space_is_refused() {
    let mut m = MockPci::blank();
    m.cfg = [0xFF; 4096];
    let mut d = PciDriver::new(m, MockEvents::default());
    let mut s = PciDevice::new(bdf());
    assert_eq!(d.open_device(&mut s), Err(Errno::ENODEV));
    assert!(!s.is_open());
}

#[test]
fn bridge_header_is_refused() {
    let mut m = MockPci::standard();
    m.cfg[0x0E] = 0x81;
    let mut d = PciDriver::new(m, MockEvents::default());
    let mut s = PciDevice::new(bdf());
    assert_eq!(d.open_device(&mut s), Err(Errno::EINVAL));
}

#[test]
fn all_ones_capability_space_is_cut_not_hung() {
    let mut m = MockPci::standard();
    for b in &mut m.cfg[0x40..] {
        *b = 0xFF;
    }
    m.put(0x40, &[0x10, 0xFF]);
    m.put16(0x42, 0x0002);
    let (mut d, mut s) = open(m);
    assert!(s.config().truncated());
    assert!(s.config().capabilities().len() <= CAP_TABLE_CAPACITY);
    // The user's chain ends: next of the PCIe cap is cut to 0.
    assert_eq!(rd(&mut d, &mut s, 0x41, 1), 0);
}

#[test]
fn looping_capability_chain_is_cut() {
    let mut m = MockPci::standard();
    m.put(0x40, &[0x01, 0x48]);
    m.put(0x48, &[0x01, 0x40]);
    let (mut d, mut s) = open(m);
    assert!(s.config().truncated());
    let defect = s.config().defect().unwrap();
    assert_eq!(defect.kind, ChainDefectKind::Loop);
    assert_eq!((defect.from, defect.to), (0x49, 0x40));
    assert_eq!(rd(&mut d, &mut s, 0x49, 1), 0);
}

#[test]
fn capability_pointer_below_0x40_is_cut() {
    let mut m = MockPci::standard();
    m.cfg[0x34] = 0x20;
    let (mut d, mut s) = open(m);
    assert!(s.config().truncated());
    let defect = s.config().defect().unwrap();
    assert_eq!(defect.kind, ChainDefectKind::OutOfRange);
    assert_eq!((defect.from, defect.to), (0x34, 0x20));
    assert_eq!(rd(&mut d, &mut s, 0x34, 1), 0);
    assert_eq!(rd(&mut d, &mut s, 0x10, 4), 0xFE00_0000, "BARs untouched");
}

#[test]
fn looping_extended_chain_is_cut() {
    let mut m = MockPci::standard();
    m.put32(0x160, 0x1001_0003);
    let (mut d, mut s) = open(m);
    assert!(s.config().truncated());
    assert_eq!(rd(&mut d, &mut s, 0x160, 4) >> 20, 0);
}

#[test]
fn first_hidden_extended_cap_becomes_placeholder() {
    let mut m = MockPci::standard();
    m.put32(0x100, 0x1601_0019);
    let (mut d, mut s) = open(m);
    assert_eq!(rd(&mut d, &mut s, 0x100, 4), 0x1600_0000);
    wr(&mut d, &mut s, 0x100, 4, 0);
    assert_eq!(d.access().get32(0x100), 0x1601_0019);
    assert_eq!(
        s.config().byte_permission(0x100).unwrap().owner,
        "hidden-first-ecap"
    );
}

#[test]
fn conventional_device_without_caps_clears_cap_list() {
    let mut m = MockPci::standard();
    m.size = 256;
    m.put(0x40, &[0x0A, 0x00]);
    let (mut d, mut s) = open(m);
    assert_eq!(rd(&mut d, &mut s, 0x06, 2) & 0x10, 0);
    assert_eq!(
        d.region_info(&mut s, 7, &mut CapChain::new(&mut [0; 8]))
            .unwrap()
            .size,
        256
    );
}

#[test]
fn corpus_nvme_image_walks_like_the_index() {
    let mut m = MockPci::blank();
    m.cfg
        .copy_from_slice(include_bytes!("testdata/1344-5407-micron-3400-nvme.bin"));
    let (mut d, mut s) = open(m);
    let kept: Vec<(u16, &str)> = s
        .config()
        .capabilities()
        .iter()
        .filter(|c| c.visibility == CapVisibility::Kept)
        .map(|c| (c.offset, c.name()))
        .collect();
    assert_eq!(
        kept,
        std::vec![
            (0x40, "PM"),
            (0x50, "MSI-X"),
            (0x60, "PCIe"),
            (0x100, "AER"),
            (0x2d0, "LTR")
        ]
    );
    // Hidden ext caps are unlinked from the user's chain: AER → LTR → end.
    assert_eq!(rd(&mut d, &mut s, 0x100, 4) >> 20, 0x2d0);
    assert_eq!(rd(&mut d, &mut s, 0x2d0, 4) >> 20, 0);
    assert_eq!(d.irq_info(&mut s, irq_index::MSIX).unwrap().flags, 0x1);
}

#[test]
fn corpus_fiji_image_keeps_vendor_and_vsec() {
    let mut m = MockPci::blank();
    m.cfg
        .copy_from_slice(include_bytes!("testdata/1002-7300-fiji-r9-fury.bin"));
    let (_, s) = open(m);
    let names: Vec<&str> = s
        .config()
        .capabilities()
        .iter()
        .filter(|c| c.visibility == CapVisibility::Kept)
        .map(|c| c.name())
        .collect();
    for n in [
        "Vendor", "PM", "PCIe", "MSI", "VSEC", "AER", "ReBAR", "ATS", "PRI", "ARI",
    ] {
        let n = if n == "ReBAR" { "ResizableBAR" } else { n };
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(!names.contains(&"PASID"));
    assert!(!names.contains(&"SecondaryPCIe"));
}

// ------------------------------------------------------------------ config access

#[test]
fn config_read_past_end_is_efault() {
    let (mut d, mut s) = open(MockPci::standard());
    let mut b = [0u8; 2];
    assert_eq!(
        d.read(&mut s, CFG + 0x1000, &mut b[..1]),
        Err(Errno::EFAULT)
    );
    assert_eq!(d.read(&mut s, CFG + 0xFFF, &mut b), Err(Errno::EFAULT));
    assert_eq!(d.write(&mut s, CFG + 0xFFF, &[1, 2]), Err(Errno::EFAULT));
    assert_eq!(d.read(&mut s, CFG + (1 << 39), &mut b), Err(Errno::EFAULT));
    assert_eq!(d.read(&mut s, CFG, &mut []), Ok(0));
    assert_eq!(d.read(&mut s, 9 << 40, &mut b), Err(Errno::EINVAL));
    assert_eq!(d.read(&mut s, u64::MAX, &mut b), Err(Errno::EINVAL));
}

#[test]
fn odd_config_accesses_are_split() {
    let (mut d, mut s) = open(MockPci::standard());
    let mut b = [0u8; 7];
    assert_eq!(d.read(&mut s, CFG + 1, &mut b), Ok(7));
    assert_eq!(&b[..3], &[0x80, 0x34, 0x12]);
    let mut all = [0u8; 4096];
    assert_eq!(d.read(&mut s, CFG, &mut all), Ok(4096));
}

#[test]
fn ids_and_header_type_are_read_only() {
    let (mut d, mut s) = open(MockPci::standard());
    wr(&mut d, &mut s, 0, 4, 0xDEAD_BEEF);
    wr(&mut d, &mut s, 0x08, 4, 0xFFFF_FFFF);
    assert_eq!(rd(&mut d, &mut s, 0, 4), 0x1234_8086);
    assert_eq!(d.access().get32(0x08), 0x0200_0001);
}

#[test]
fn status_writes_are_dropped() {
    let mut m = MockPci::standard();
    m.put16(0x06, 0x4010);
    let (mut d, mut s) = open(m);
    wr(&mut d, &mut s, 0x06, 2, 0xFFFF);
    assert_eq!(d.access().get16(0x06), 0x4010);
    assert_eq!(rd(&mut d, &mut s, 0x06, 2), 0x4010);
}

#[test]
fn command_intx_disable_is_virtual_and_decode_passes_through() {
    let (mut d, mut s) = open(MockPci::standard());
    wr(&mut d, &mut s, 0x04, 2, 0x0406);
    assert_eq!(rd(&mut d, &mut s, 0x04, 2) & 0x0406, 0x0406);
    assert_eq!(d.access().get16(0x04) & 0x0006, 0x0006);
    assert_eq!(s.config().byte_permission(0x05).unwrap().virt, 0x04);
}

/// spec/04 §6.3: with INTx not in use, unmask clears the hardware DisINTx of a PCI 2.3
/// function whatever the virtual bit says.
#[test]
fn unmask_without_intx_clears_hardware_disintx() {
    let (mut d, mut s) = open(MockPci::standard());
    wr(&mut d, &mut s, 0x04, 2, 0x0406);
    assert_ne!(
        d.access().get16(0x04) & 0x0400,
        0,
        "virtual DisINTx masks the hardware"
    );
    d.intx_unmask(&mut s);
    assert_eq!(d.access().get16(0x04) & 0x0400, 0);
    assert_eq!(
        rd(&mut d, &mut s, 0x04, 2) & 0x0400,
        0x0400,
        "the virtual bit stays"
    );
}

#[test]
fn interrupt_line_is_virtual_and_pin_read_only() {
    let (mut d, mut s) = open(MockPci::standard());
    wr(&mut d, &mut s, 0x3C, 2, 0x0255);
    assert_eq!(rd(&mut d, &mut s, 0x3C, 2), 0x0155);
    assert_eq!(d.access().cfg[0x3C], 0x0B);
    assert_eq!(d.access().cfg[0x3D], 0x01);
}

#[test]
fn bar_sizing_reads_back_size_mask() {
    let (mut d, mut s) = open(MockPci::standard());
    assert_eq!(rd(&mut d, &mut s, 0x10, 4), 0xFE00_0000);
    assert_eq!(rd(&mut d, &mut s, 0x18, 4), 0xC000_000C);
    assert_eq!(rd(&mut d, &mut s, 0x1C, 4), 0x0000_0001);
    for off in (0x10..0x28).step_by(4) {
        wr(&mut d, &mut s, off, 4, 0xFFFF_FFFF);
    }
    wr(&mut d, &mut s, 0x30, 4, 0xFFFF_FFFF);
    assert_eq!(rd(&mut d, &mut s, 0x10, 4), 0xFFFF_C000);
    assert_eq!(rd(&mut d, &mut s, 0x14, 4), 0);
    assert_eq!(rd(&mut d, &mut s, 0x18, 4), 0xFFFF_C00C);
    assert_eq!(rd(&mut d, &mut s, 0x1C, 4), 0xFFFF_FFFF);
    assert_eq!(rd(&mut d, &mut s, 0x20, 4), 0xFFFF_FFE1);
    assert_eq!(rd(&mut d, &mut s, 0x24, 4), 0);
    assert_eq!(rd(&mut d, &mut s, 0x30, 4), 0xFFFF_0001);
    wr(&mut d, &mut s, 0x30, 4, 0xFFFF_F800);
    assert_eq!(rd(&mut d, &mut s, 0x30, 4), 0xFFFF_0000);
    // Hardware BARs are never written.
    assert_eq!(d.access().get32(0x10), 0xFE00_0000);
    assert_eq!(d.access().get32(0x30), 0xFD00_0000);
}

#[test]
fn msix_capability_writes_are_dropped() {
    let (mut d, mut s) = open(MockPci::standard());
    wr(&mut d, &mut s, 0xB0, 4, 0xFFFF_FFFF);
    wr(&mut d, &mut s, 0xB4, 4, 0);
    assert_eq!(d.access().get32(0xB0), 0x000F_C011);
    assert_eq!(d.access().get32(0xB4), 0x2000);
    assert_eq!(rd(&mut d, &mut s, 0xB0, 4), 0x000F_C011);
}

#[test]
fn msi_control_low_byte_is_virtual_and_clamped() {
    let (mut d, mut s) = open(MockPci::standard());
    wr(&mut d, &mut s, 0x52, 2, 0xFFFF);
    assert_eq!(rd(&mut d, &mut s, 0x52, 2), 0x008E);
    wr(&mut d, &mut s, 0x54, 4, 0xFEE0_0000);
    assert_eq!(rd(&mut d, &mut s, 0x54, 4), 0xFEE0_0000);
    assert_eq!(d.access().get32(0x54), 0);
}

#[test]
fn pcie_flr_is_trapped_to_a_function_reset() {
    let mut m = MockPci::standard();
    m.reset_ok = true;
    let (mut d, mut s) = open(m);
    let before = d.access().resets;
    wr(&mut d, &mut s, 0x78, 2, 0x8000 | 0x2810);
    assert_eq!(d.access().resets, before + 1);
    assert_eq!(rd(&mut d, &mut s, 0x78, 2) & 0x8000, 0);
}

#[test]
fn vendor_capability_writes_are_raw() {
    let (mut d, mut s) = open(MockPci::standard());
    wr(&mut d, &mut s, 0xC4, 4, 0x1122_3344);
    assert_eq!(d.access().get32(0xC4), 0x1122_3344);
    // Hidden capability bytes are raw.
    wr(&mut d, &mut s, 0xD2, 1, 0x77);
    assert_eq!(d.access().cfg[0xD2], 0x77);
    assert!(s.config().byte_permission(0xD2).unwrap().raw);
}

// ------------------------------------------------------------------ regions

#[test]
fn region_info_reports_bars_rom_config_and_refuses_vga() {
    let (mut d, mut s) = open(MockPci::standard());
    let mut scratch = [0u8; 64];
    let mut caps = CapChain::new(&mut scratch);
    let r = d.region_info(&mut s, 0, &mut caps).unwrap();
    assert_eq!((r.flags, r.size, r.offset), (0x7, 0x4000, 0));
    assert_eq!(&caps.as_bytes()[..4], &[3, 0, 1, 0]);
    let mut scratch = [0u8; 64];
    let mut caps = CapChain::new(&mut scratch);
    assert_eq!(d.region_info(&mut s, 1, &mut caps).unwrap().flags, 0);
    assert_eq!(d.region_info(&mut s, 2, &mut caps).unwrap().flags, 0x7);
    assert_eq!(d.region_info(&mut s, 4, &mut caps).unwrap().flags, 0x3);
    assert!(caps.is_empty());
    let rom = d.region_info(&mut s, 6, &mut caps).unwrap();
    assert_eq!((rom.flags, rom.size, rom.offset), (0x1, 0x10000, 6 << 40));
    let cfg = d.region_info(&mut s, 7, &mut caps).unwrap();
    assert_eq!((cfg.flags, cfg.size), (0x3, 0x1000));
    assert_eq!(d.region_info(&mut s, 8, &mut caps), Err(Errno::EINVAL));
}

#[test]
fn msix_table_reads_ff_and_drops_writes() {
    let mut m = MockPci::standard();
    m.bar0
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8);
    let (mut d, mut s) = open(m);
    let mut b = [0u8; 8];
    assert_eq!(d.read(&mut s, 0x1FFC, &mut b), Ok(8));
    assert_eq!(b, [0xFC, 0xFD, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    assert_eq!(d.write(&mut s, 0x2000, &[0u8; 16]), Ok(16));
    assert_eq!(d.access().bar_writes, 0);
    assert_eq!(d.access().bar0[0x2000], 0x00);
    assert_eq!(d.access().bar0[0x2001], 0x01);
    // The PBA is not protected.
    assert_eq!(d.write(&mut s, 0x3000, &[9u8; 4]), Ok(4));
    assert_eq!(d.access().bar0[0x3000], 9);
}

#[test]
fn bar_reads_are_short_at_the_end_and_einval_past_it() {
    let (mut d, mut s) = open(MockPci::standard());
    let mut b = [0u8; 8];
    assert_eq!(d.read(&mut s, 0x4000 - 2, &mut b), Ok(2));
    assert_eq!(d.read(&mut s, 0x4000, &mut b), Err(Errno::EINVAL));
    assert_eq!(d.read(&mut s, 1 << 40, &mut b), Err(Errno::EINVAL));
}

#[test]
fn memory_bar_access_needs_memory_enable() {
    let (mut d, mut s) = open(MockPci::standard());
    wr(&mut d, &mut s, 0x04, 2, 0x0001);
    let mut b = [0u8; 4];
    assert_eq!(d.read(&mut s, 0x100, &mut b), Err(Errno::EIO));
    assert_eq!(d.read(&mut s, 6 << 40, &mut b), Err(Errno::EIO));
    // The MSI-X table range is not gated.
    assert_eq!(d.read(&mut s, 0x2000, &mut b), Ok(4));
    wr(&mut d, &mut s, 0x04, 2, 0x0002);
    assert_eq!(d.read(&mut s, 0x100, &mut b), Ok(4));
}

#[test]
fn rom_reads_and_refuses_writes() {
    let (mut d, mut s) = open(MockPci::standard());
    let mut b = [0u8; 3];
    assert_eq!(d.read(&mut s, (6 << 40) + 5, &mut b), Ok(3));
    assert_eq!(b, [5, 6, 7]);
    assert_eq!(d.write(&mut s, 6 << 40, &[1]), Err(Errno::EINVAL));
    assert_eq!(
        d.read(&mut s, (6 << 40) + 0x10000, &mut b),
        Err(Errno::EINVAL)
    );
}

// ------------------------------------------------------------------ device info / reset

#[test]
fn device_info_and_reset_follow_reset_support() {
    let (mut d, mut s) = open(MockPci::standard());
    let mut scratch = [0u8; 8];
    let info = d
        .device_info(&mut s, &mut CapChain::new(&mut scratch))
        .unwrap();
    assert_eq!((info.flags, info.num_regions, info.num_irqs), (0x2, 9, 5));
    assert_eq!(d.reset(&mut s), Err(Errno::EINVAL));

    let mut m = MockPci::standard();
    m.reset_ok = true;
    let (mut d, mut s) = open(m);
    let info = d
        .device_info(&mut s, &mut CapChain::new(&mut scratch))
        .unwrap();
    assert_eq!(info.flags, 0x3);
    d.access_mut().put32(0x10, 0);
    assert_eq!(d.reset(&mut s), Ok(()));
    assert_eq!(d.access().get32(0x10), 0xFE00_0000, "lost BAR restored");
}

#[test]
fn open_clears_bus_master_and_close_restores_command() {
    let mut m = MockPci::standard();
    m.put16(0x04, 0x0004);
    let (mut d, mut s) = open(m);
    assert_eq!(d.access().get16(0x04), 0x0003);
    d.close_device(&mut s);
    assert_eq!(d.access().get16(0x04), 0x0000);
    assert!(!s.is_open());
}

// ------------------------------------------------------------------ IRQs

#[test]
fn irq_info_follows_recent_profile() {
    let (mut d, mut s) = open(MockPci::standard());
    let got: Vec<(u32, u32)> = (0..5)
        .map(|i| {
            let r = d.irq_info(&mut s, i).unwrap();
            (r.flags, r.count)
        })
        .collect();
    assert_eq!(
        got,
        std::vec![(0x7, 1), (0x9, 8), (0x1, 16), (0x9, 1), (0x9, 1)]
    );
    let mut m = MockPci::standard();
    m.cfg[0x3D] = 0;
    m.put(0x70, &[0x10, 0x00]);
    let (mut d, mut s) = open(m);
    assert_eq!(
        d.irq_info(&mut s, 0).unwrap(),
        IrqInfo {
            flags: 0x7,
            count: 0
        }
    );
    assert_eq!(
        d.irq_info(&mut s, 2).unwrap(),
        IrqInfo {
            flags: 0x9,
            count: 0
        }
    );
}

#[test]
fn set_irqs_action_checks_are_enotty() {
    let (mut d, mut s) = open(MockPci::standard());
    let mask = irq_set_flags::DATA_NONE | irq_set_flags::ACTION_MASK;
    assert_eq!(
        d.set_irqs(&mut s, &req(mask, 2, 0, 1), &[]),
        Err(Errno::ENOTTY)
    );
    let two = NONE_TRIGGER | irq_set_flags::ACTION_UNMASK;
    assert_eq!(
        d.set_irqs(&mut s, &req(two, 0, 0, 1), &[]),
        Err(Errno::ENOTTY)
    );
    let none = irq_set_flags::DATA_NONE;
    assert_eq!(
        d.set_irqs(&mut s, &req(none, 4, 0, 1), &[]),
        Err(Errno::ENOTTY)
    );
}

#[test]
fn msix_enable_allocates_and_signals_vector() {
    let (mut d, mut s) = open(MockPci::standard());
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 2, 0, 2), &fds(&[10, 11])),
        Ok(0)
    );
    assert_eq!(d.access().allocs, std::vec![(MsiKind::Msix, 2)]);
    assert_eq!(s.irq_type(), IrqType::Msix);
    assert!(d.msi_fired(&s, MsiKind::Msix, 1));
    assert!(!d.msi_fired(&s, MsiKind::Msi, 1));
    assert!(!d.msi_fired(&s, MsiKind::Msix, 5));
    assert_eq!(d.set_irqs(&mut s, &req(NONE_TRIGGER, 2, 0, 2), &[]), Ok(0));
    assert_eq!(
        d.set_irqs(&mut s, &req(BOOL_TRIGGER, 2, 0, 2), &[0, 1]),
        Ok(0)
    );
    assert_eq!(*d.events().signals.borrow(), std::vec![11, 10, 11, 11]);
    // fd -1 clears one vector.
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 2, 1, 1), &fds(&[-1])),
        Ok(0)
    );
    assert!(!d.msi_fired(&s, MsiKind::Msix, 1));
    // Disable.
    assert_eq!(d.set_irqs(&mut s, &req(NONE_TRIGGER, 2, 0, 0), &[]), Ok(0));
    assert_eq!(s.irq_type(), IrqType::None);
    assert_eq!(d.access().frees, 1);
    assert_eq!(
        d.set_irqs(&mut s, &req(NONE_TRIGGER, 2, 0, 0), &[]),
        Err(Errno::EINVAL)
    );
}

#[test]
fn msix_grows_while_enabled() {
    let (mut d, mut s) = open(MockPci::standard());
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 2, 0, 1), &fds(&[10])),
        Ok(0)
    );
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 2, 5, 1), &fds(&[15])),
        Ok(0)
    );
    assert!(d.msi_fired(&s, MsiKind::Msix, 5));
    assert!(d.msi_fired(&s, MsiKind::Msix, 0));
}

#[test]
fn msi_enable_with_zero_vectors_is_erange() {
    let (mut d, mut s) = open(MockPci::standard());
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 1, 0, 0), &[]),
        Err(Errno::ERANGE)
    );
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 2, 0, 0), &[]),
        Err(Errno::ERANGE)
    );
    assert_eq!(s.irq_type(), IrqType::None);
}

#[test]
fn msi_partial_grant_returns_count_and_enables_nothing() {
    let mut m = MockPci::standard();
    m.grant_limit = 2;
    let (mut d, mut s) = open(m);
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 1, 0, 4), &fds(&[1, 2, 3, 4])),
        Ok(2)
    );
    assert_eq!(s.irq_type(), IrqType::None);
    assert_eq!(d.access().frees, 1);
}

#[test]
fn msi_cannot_grow_and_sets_qmax() {
    let (mut d, mut s) = open(MockPci::standard());
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 1, 0, 3), &fds(&[1, 2, 3])),
        Ok(0)
    );
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 1, 3, 1), &fds(&[4])),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        s.irq_type(),
        IrqType::Msi,
        "a failed set on an enabled index keeps it enabled"
    );
    wr(&mut d, &mut s, 0x52, 1, 0x71);
    assert_eq!(rd(&mut d, &mut s, 0x52, 1), 0x21);
}

#[test]
fn interrupt_modes_are_mutually_exclusive() {
    let (mut d, mut s) = open(MockPci::standard());
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 2, 0, 1), &fds(&[1])),
        Ok(0)
    );
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 1, 0, 1), &fds(&[2])),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 0, 0, 1), &fds(&[2])),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        d.set_irqs(&mut s, &req(NONE_TRIGGER, 1, 0, 1), &[]),
        Err(Errno::EINVAL)
    );
}

#[test]
fn bad_eventfd_fails_and_rolls_back_the_block() {
    let (mut d, mut s) = open(MockPci::standard());
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 2, 0, 3), &fds(&[1, 2, 3])),
        Ok(0)
    );
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 2, 1, 2), &fds(&[5, 999])),
        Err(Errno::EBADF)
    );
    assert!(d.msi_fired(&s, MsiKind::Msix, 0));
    assert!(!d.msi_fired(&s, MsiKind::Msix, 1));
    assert!(!d.msi_fired(&s, MsiKind::Msix, 2));
    assert_eq!(s.irq_type(), IrqType::Msix);
    // A failure in the enabling call disables everything.
    assert_eq!(d.set_irqs(&mut s, &req(NONE_TRIGGER, 2, 0, 0), &[]), Ok(0));
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 2, 0, 1), &fds(&[150])),
        Err(Errno::EINVAL)
    );
    assert_eq!(s.irq_type(), IrqType::None);
}

#[test]
fn all_2048_msix_vectors_are_tracked() {
    let mut m = MockPci::standard();
    m.put16(0xB2, 0x07FF);
    // A 2048-entry table (32 KiB at BAR0 + 0x2000) needs a 64 KiB BAR0.
    m.bars[0].size = 0x10000;
    let (mut d, mut s) = open(m);
    assert_eq!(d.irq_info(&mut s, 2).unwrap().count, 2048);
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 2, 2000, 1), &fds(&[1])),
        Ok(0)
    );
    assert!(d.msi_fired(&s, MsiKind::Msix, 2000));
    assert!(!d.msi_fired(&s, MsiKind::Msix, 2048));
    assert_eq!(d.set_irqs(&mut s, &req(NONE_TRIGGER, 2, 0, 0), &[]), Ok(0));
    let mut all = std::vec![-1i32; 2048];
    all[2047] = 9;
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 2, 0, 2048), &fds(&all)),
        Ok(0)
    );
    assert!(d.msi_fired(&s, MsiKind::Msix, 2047));
    assert_eq!(
        d.set_irqs(&mut s, &req(NONE_TRIGGER, 2, 0, 2048), &[]),
        Ok(0)
    );
    assert!(!d.msi_fired(&s, MsiKind::Msix, 0));
}

#[test]
fn err_and_req_hold_one_eventfd() {
    let (mut d, mut s) = open(MockPci::standard());
    assert_eq!(
        d.set_irqs(&mut s, &req(NONE_TRIGGER, 3, 0, 1), &[]),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 3, 0, 1), &fds(&[999])),
        Err(Errno::EBADF)
    );
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 3, 0, 1), &fds(&[7])),
        Ok(0)
    );
    assert_eq!(d.set_irqs(&mut s, &req(NONE_TRIGGER, 3, 0, 1), &[]), Ok(0));
    assert_eq!(d.set_irqs(&mut s, &req(NONE_TRIGGER, 3, 0, 0), &[]), Ok(0));
    assert_eq!(
        d.set_irqs(&mut s, &req(NONE_TRIGGER, 3, 0, 0), &[]),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 4, 0, 1), &fds(&[8])),
        Ok(0)
    );
    d.request(&mut s, 0);
    d.request(&mut s, 1);
    assert_eq!(*d.events().signals.borrow(), std::vec![7, 8, 8]);
    d.close_device(&mut s);
    d.request(&mut s, 2);
    assert_eq!(d.events().signals.borrow().len(), 3);
}

#[test]
fn intx_handler_state_is_published_before_the_line_is_requested() {
    // spec/04 §6.1: irq_type (and the trigger) are set before the handler can run; a
    // failed request takes them back.
    let table: &'static IrqTable = std::boxed::Box::leak(std::boxed::Box::new(IrqTable::new()));
    let mut m = MockPci::standard();
    m.intx_watch = Some(table);
    m.intx_error = Some(Errno::EBUSY);
    let mut d: PciDriver<MockPci, MockEvents, &'static IrqTable> =
        PciDriver::with_tables(m, MockEvents::default());
    let mut s = PciDevice::with_table(bdf(), table);
    d.open_device(&mut s).expect("open");
    let r = req(EVENTFD_TRIGGER, irq_index::INTX, 0, 1);
    assert_eq!(d.set_irqs(&mut s, &r, &fds(&[3])), Err(Errno::EBUSY));
    assert_eq!(d.access().intx_seen, Some((IrqType::Intx, Some(3))));
    assert_eq!(s.irq_type(), IrqType::None);
    assert!(!s.intx_masked());
    assert_eq!(table.intx_trigger(), None);
    d.access_mut().intx_error = None;
    assert_eq!(d.set_irqs(&mut s, &r, &fds(&[4])), Ok(0));
    assert_eq!(d.access().intx_seen, Some((IrqType::Intx, Some(4))));
    assert_eq!(s.irq_type(), IrqType::Intx);
    assert_eq!(table.intx_trigger(), Some(4));
}

#[test]
fn intx_enable_loopback_automask_and_unmask() {
    let (mut d, mut s) = open(MockPci::standard());
    assert_eq!(
        d.set_irqs(&mut s, &req(NONE_TRIGGER, 0, 0, 1), &[]),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 0, 0, 1), &fds(&[3])),
        Ok(0)
    );
    assert_eq!(s.irq_type(), IrqType::Intx);
    assert_eq!(d.set_irqs(&mut s, &req(NONE_TRIGGER, 0, 0, 1), &[]), Ok(0));
    assert!(
        !d.intx_fired(&mut s),
        "not asserting: not ours (shared line)"
    );
    d.access_mut().put16(0x06, 0x0008);
    assert!(d.intx_fired(&mut s));
    assert!(!d.intx_fired(&mut s), "automasked");
    assert_ne!(d.access().get16(0x04) & 0x0400, 0);
    d.access_mut().put16(0x06, 0);
    let unmask = irq_set_flags::DATA_NONE | irq_set_flags::ACTION_UNMASK;
    assert_eq!(d.set_irqs(&mut s, &req(unmask, 0, 0, 1), &[]), Ok(0));
    assert_eq!(d.access().get16(0x04) & 0x0400, 0);
    d.access_mut().put16(0x06, 0x0008);
    assert!(d.intx_fired(&mut s));
    assert_eq!(*d.events().signals.borrow(), std::vec![3, 3, 3]);
    let mask_fd = irq_set_flags::DATA_EVENTFD | irq_set_flags::ACTION_MASK;
    assert_eq!(
        d.set_irqs(&mut s, &req(mask_fd, 0, 0, 1), &fds(&[1])),
        Err(Errno::ENOTTY)
    );
    assert_eq!(d.set_irqs(&mut s, &req(NONE_TRIGGER, 0, 0, 0), &[]), Ok(0));
    assert_eq!(s.irq_type(), IrqType::None);
}

#[test]
fn close_frees_vectors_and_drops_triggers() {
    let (mut d, mut s) = open(MockPci::standard());
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 2, 0, 1), &fds(&[1])),
        Ok(0)
    );
    d.close_device(&mut s);
    assert_eq!(d.access().frees, 1);
    assert!(!d.msi_fired(&s, MsiKind::Msix, 0));
    d.open_device(&mut s).unwrap();
    assert_eq!(s.irq_type(), IrqType::None);
}

#[test]
fn byte_permissions_describe_owners() {
    let (_, s) = open(MockPci::standard());
    let p = s.config().byte_permission(0x10).unwrap();
    assert_eq!(
        (p.owner, p.virt, p.write, p.raw),
        ("header", 0xFF, 0xFF, false)
    );
    let p = s.config().byte_permission(0x78).unwrap();
    assert_eq!((p.owner, p.virt, p.write), ("PCIe", 0xE0, 0xFF));
    let p = s.config().byte_permission(0xB2).unwrap();
    assert_eq!((p.owner, p.virt, p.write), ("MSI-X", 0, 0));
    assert!(s.config().byte_permission(0x1000).is_none());
}

#[test]
fn config_state_fits_the_memory_budget() {
    assert!(core::mem::size_of::<ConfigSpace>() <= 4608);
}

#[test]
fn probe_refuses_bridges_and_absent_functions() {
    let mut m = MockPci::standard();
    m.cfg[0x0E] = 0x01;
    let mut d = PciDriver::new(m, MockEvents::default());
    assert_eq!(d.probe(bdf()).map(|_| ()), Err(Errno::EINVAL));
    d.access_mut().cfg[0x0E] = 0x82;
    assert_eq!(d.probe(bdf()).map(|_| ()), Err(Errno::EINVAL));
    d.access_mut().cfg[0x0E] = 0x80;
    assert!(d.probe(bdf()).is_ok(), "multi-function type-0 is fine");
    d.access_mut().cfg[0..2].copy_from_slice(&[0xFF, 0xFF]);
    assert_eq!(d.probe(bdf()).map(|_| ()), Err(Errno::ENODEV));
}

#[test]
fn msix_table_outside_its_bar_is_refused_with_enomem() {
    let mut m = MockPci::standard();
    // 2048 entries at BAR0 + 0x2000 run past the mock's BAR0.
    m.put16(0xB2, 0x07FF);
    let (mut d, mut s) = open(m);
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 2, 0, 1), &fds(&[1])),
        Err(Errno::ENOMEM)
    );
    assert_eq!(s.irq_type(), IrqType::None);
    // Table BIR naming BAR5, which the mock does not implement.
    let mut m = MockPci::standard();
    m.put32(0xB4, 0x2000 | 5);
    let (mut d, mut s) = open(m);
    assert_eq!(
        d.set_irqs(&mut s, &req(EVENTFD_TRIGGER, 2, 0, 1), &fds(&[1])),
        Err(Errno::ENOMEM)
    );
}

// ------------------------------------------------------------------ ioeventfd, features

fn ioeventfd_buf(argsz: u32, flags: u32, offset: u64, data: u64, fd: i32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&argsz.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.extend_from_slice(&data.to_le_bytes());
    b.extend_from_slice(&fd.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b
}

fn ioev(
    d: &mut Driver,
    s: &mut PciDevice<u32>,
    flags: u32,
    off: u64,
    data: u64,
    fd: i32,
) -> Result<i64> {
    let mut b = ioeventfd_buf(32, flags, off, data, fd);
    d.ioctl(s, ioctl::DEVICE_IOEVENTFD, &mut b)
}

const BAR2: u64 = 2 << 40;

#[test]
fn ioeventfd_validation_follows_the_oracle_order() {
    use crate::uapi::ioeventfd_flags::{SIZE_16, SIZE_32, SIZE_64};
    let (mut d, mut s) = open(MockPci::standard());
    // argsz small, unknown flag, two sizes, no size, fd < -1.
    let mut b = ioeventfd_buf(27, SIZE_32, 0, 0, -1);
    assert_eq!(
        d.ioctl(&mut s, ioctl::DEVICE_IOEVENTFD, &mut b),
        Err(Errno::EINVAL)
    );
    let mut short = std::vec![0u8; 20];
    assert_eq!(
        d.ioctl(&mut s, ioctl::DEVICE_IOEVENTFD, &mut short),
        Err(Errno::EFAULT)
    );
    assert_eq!(
        ioev(&mut d, &mut s, SIZE_32 | 0x10, 0, 0, 5),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ioev(&mut d, &mut s, SIZE_32 | SIZE_16, 0, 0, 5),
        Err(Errno::EINVAL)
    );
    assert_eq!(ioev(&mut d, &mut s, 0, 0, 0, 5), Err(Errno::EINVAL));
    assert_eq!(ioev(&mut d, &mut s, SIZE_32, 0, 0, -2), Err(Errno::EINVAL));
    // Config region, ROM, past the BAR end, absent BAR, MSI-X table overlap.
    assert_eq!(ioev(&mut d, &mut s, SIZE_32, CFG, 0, 5), Err(Errno::EINVAL));
    assert_eq!(
        ioev(&mut d, &mut s, SIZE_32, 6 << 40, 0, 5),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ioev(&mut d, &mut s, SIZE_32, 0x3FFD, 0, 5),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ioev(&mut d, &mut s, SIZE_32, 1 << 40, 0, 5),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ioev(&mut d, &mut s, SIZE_16, 0x1FFF, 0, 5),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ioev(&mut d, &mut s, SIZE_32, 0x20F0, 0, 5),
        Err(Errno::EINVAL)
    );
    // ERRATA 5: size 8 accepted on 64-bit hosts, ENODEV from the lookup with fd -1.
    assert_eq!(
        ioev(&mut d, &mut s, SIZE_64, BAR2, 0, -1),
        Err(Errno::ENODEV)
    );
    // Unaligned is fine; the sink's resolve errors come last.
    assert_eq!(ioev(&mut d, &mut s, SIZE_32, 2, 7, 5), Ok(0));
    assert_eq!(
        ioev(&mut d, &mut s, SIZE_32, 0x10, 7, 150),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        ioev(&mut d, &mut s, SIZE_32, 0x10, 7, 250),
        Err(Errno::EBADF)
    );
    assert_eq!(s.ioeventfds().len(), 1);
}

#[test]
fn ioeventfd_keys_duplicates_removal_and_capacity() {
    use crate::uapi::ioeventfd_flags::{SIZE_32, SIZE_8};
    let (mut d, mut s) = open(MockPci::standard());
    assert_eq!(ioev(&mut d, &mut s, SIZE_32, 0, 1, 5), Ok(0));
    assert_eq!(ioev(&mut d, &mut s, SIZE_32, 0, 1, 6), Err(Errno::EEXIST));
    // Another data value or size is another key.
    assert_eq!(ioev(&mut d, &mut s, SIZE_32, 0, 2, 6), Ok(0));
    assert_eq!(ioev(&mut d, &mut s, SIZE_8, 0, 1, 6), Ok(0));
    assert_eq!(ioev(&mut d, &mut s, SIZE_32, 0, 1, -1), Ok(0));
    assert_eq!(ioev(&mut d, &mut s, SIZE_32, 0, 1, -1), Err(Errno::ENODEV));
    assert_eq!(s.ioeventfds().len(), 2);
    for i in s.ioeventfds().len()..IOEVENTFD_CAPACITY {
        assert_eq!(ioev(&mut d, &mut s, SIZE_32, 0x100, i as u64, 7), Ok(0));
    }
    assert_eq!(
        ioev(&mut d, &mut s, SIZE_32, 0x100, 999, 7),
        Err(Errno::ENOSPC)
    );
    // Removal still works when full; the last close drops everything.
    assert_eq!(ioev(&mut d, &mut s, SIZE_8, 0, 1, -1), Ok(0));
    d.close_device(&mut s);
    assert!(s.ioeventfds().is_empty());
}

#[test]
fn ioeventfd_signal_writes_the_bar_only_with_memory_enabled() {
    use crate::uapi::ioeventfd_flags::{SIZE_16, SIZE_32};
    let (mut d, mut s) = open(MockPci::standard());
    assert_eq!(ioev(&mut d, &mut s, SIZE_32, 0x102, 0xAABB_CCDD, 9), Ok(0));
    assert_eq!(ioev(&mut d, &mut s, SIZE_16, 0x200, 0x1_2345, 9), Ok(0));
    wr(&mut d, &mut s, 0x04, 2, 0);
    let before = d.access().bar_writes;
    assert_eq!(
        d.ioeventfd_signalled(&mut s, 9),
        0,
        "memory decode off: skipped"
    );
    assert_eq!(d.access().bar_writes, before);
    wr(&mut d, &mut s, 0x04, 2, u32::from(CMD_MEMORY));
    assert_eq!(d.ioeventfd_signalled(&mut s, 8), 0, "unregistered event");
    assert_eq!(d.ioeventfd_signalled(&mut s, 9), 2);
    // One access of the registered width each, even unaligned.
    assert_eq!(d.access().bar_writes, before + 2);
    assert_eq!(&d.access().bar0[0x102..0x106], &[0xDD, 0xCC, 0xBB, 0xAA]);
    assert_eq!(&d.access().bar0[0x200..0x203], &[0x45, 0x23, 0x00]);
}

fn feat(
    d: &mut Driver,
    s: &mut PciDevice<u32>,
    argsz: u32,
    flags: u32,
    payload: &[u8],
) -> Result<i64> {
    let mut b = Vec::new();
    b.extend_from_slice(&argsz.to_le_bytes());
    b.extend_from_slice(&flags.to_le_bytes());
    b.extend_from_slice(payload);
    crate::vfio::device_feature(d, s, &mut b)
}

#[test]
fn device_features_answer_like_vfio_pci() {
    use crate::uapi::feature_flags::{GET, PROBE, SET};
    let (mut d, mut s) = open(MockPci::standard());
    for f in [0, 1, 2, 6, 7, 8, 9, 10, 11, 13, 14, 15] {
        for dirs in [PROBE | GET, PROBE | SET, PROBE, 0] {
            assert_eq!(
                feat(&mut d, &mut s, 8, dirs | f, &[]),
                Err(Errno::ENOTTY),
                "{f} {dirs:#x}"
            );
        }
    }
    for f in 3..=5 {
        assert_eq!(
            feat(&mut d, &mut s, 8, PROBE | GET | SET | f, &[]),
            Err(Errno::EINVAL)
        );
        assert_eq!(feat(&mut d, &mut s, 8, PROBE | SET | f, &[]), Ok(0));
        assert_eq!(feat(&mut d, &mut s, 8, PROBE | f, &[]), Ok(0));
        assert_eq!(feat(&mut d, &mut s, 8, f, &[]), Err(Errno::EINVAL));
    }
    // 7.3: MIG_PRECOPY_INFOv2 EINVAL; 6.1: ENOTTY.
    assert_eq!(feat(&mut d, &mut s, 8, PROBE | 12, &[]), Err(Errno::EINVAL));
    let mut d61 =
        PciDriver::new(MockPci::standard(), MockEvents::default()).with_era(Era::Linux6_1);
    let mut s61 = PciDevice::new(bdf());
    d61.open_device(&mut s61).unwrap();
    assert_eq!(
        feat(&mut d61, &mut s61, 8, PROBE | 12, &[]),
        Err(Errno::ENOTTY)
    );
    // Generic checks.
    assert_eq!(
        feat(&mut d, &mut s, 4, PROBE | SET | 3, &[]),
        Err(Errno::EINVAL)
    );
    assert_eq!(feat(&mut d, &mut s, 8, 1 << 20, &[]), Err(Errno::EINVAL));
    assert_eq!(
        feat(&mut d, &mut s, 16, GET | SET | 1, &[0; 8]),
        Err(Errno::EINVAL)
    );
}

#[test]
fn low_power_entry_exit_and_wakeup() {
    use crate::uapi::feature_flags::SET;
    let (mut d, mut s) = open(MockPci::standard());
    assert_eq!(feat(&mut d, &mut s, 8, SET | 3, &[]), Ok(0));
    assert_eq!(s.low_power(), LowPower::On { wakeup: None });
    assert_eq!(feat(&mut d, &mut s, 8, SET | 3, &[]), Err(Errno::EINVAL));
    // An access without wakeup leaves the request standing.
    assert_eq!(rd(&mut d, &mut s, 0, 2), 0x8086);
    assert_eq!(s.low_power(), LowPower::On { wakeup: None });
    assert_eq!(feat(&mut d, &mut s, 8, SET | 5, &[]), Ok(0));
    assert_eq!(feat(&mut d, &mut s, 8, SET | 5, &[]), Ok(0));
    assert_eq!(s.low_power(), LowPower::Off);
    // Wakeup: payload needed, fd -1 refused, exit signals.
    let mut p = Vec::new();
    p.extend_from_slice(&(-1i32).to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(feat(&mut d, &mut s, 16, SET | 4, &p), Err(Errno::EINVAL));
    assert_eq!(feat(&mut d, &mut s, 8, SET | 4, &[]), Err(Errno::EINVAL));
    p[..4].copy_from_slice(&42i32.to_le_bytes());
    p[4..].copy_from_slice(&7u32.to_le_bytes());
    assert_eq!(feat(&mut d, &mut s, 16, SET | 4, &p), Ok(0));
    assert_eq!(feat(&mut d, &mut s, 8, SET | 5, &[]), Ok(0));
    assert_eq!(d.events().signals.borrow().as_slice(), &[42]);
    // An access with the wakeup armed signals and ends low power.
    assert_eq!(feat(&mut d, &mut s, 16, SET | 4, &p), Ok(0));
    assert_eq!(rd(&mut d, &mut s, 0, 2), 0x8086);
    assert_eq!(s.low_power(), LowPower::Off);
    assert_eq!(d.events().signals.borrow().as_slice(), &[42, 42]);
    assert_eq!(feat(&mut d, &mut s, 8, SET | 5, &[]), Ok(0));
    assert_eq!(d.events().signals.borrow().len(), 2);
}
