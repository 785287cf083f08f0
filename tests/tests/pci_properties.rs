//! Property tests of config-space virtualization over every corpus image
//! (`platforms/sim/devices/*.bin`), with seeded random user writes (spec/03):
//!
//! 1. no user write changes a physical bit the permission tables do not make writable
//!    (besides the bits the spec's handlers own: PMCSR PowerState through the platform,
//!    MSI Message Control written back by §6.4, DevCtl MaxReadReq through `set_readrq`,
//!    and DisINTx following the virtual bit on PCI 2.3 functions);
//! 2. reads of fully virtualized bytes never touch hardware;
//! 3. the virtual capability chains terminate and contain no hidden capability;
//! 4. a read after a write of virtualized bits returns what the spec says.

use std::path::PathBuf;

use vfio_core::pci::{CapSpace, CapVisibility, Owner, PciDevice, PciDriver};
use vfio_core::vfio::BusDriver;
use vfio_tests::pci_mock::{MockEvents, MockPci, MOCK_BDF};

const CFG: u64 = 7 << 40;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn images() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../platforms/sim/devices");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("corpus directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .map(|p| (p.display().to_string(), std::fs::read(&p).expect("image")))
        .collect();
    out.sort();
    out
}

fn open(image: &[u8]) -> Option<(PciDriver<MockPci, MockEvents>, PciDevice<i32>)> {
    let size = if image.len() >= 4096 { 4096 } else { 256 };
    let mut m = MockPci::blank(size);
    m.cfg[..image.len().min(4096)].copy_from_slice(&image[..image.len().min(4096)]);
    let mut d = PciDriver::new(m, MockEvents::default());
    let mut dev = PciDevice::new(MOCK_BDF);
    d.open_device(&mut dev).ok()?;
    Some((d, dev))
}

/// Physical bits a handler may change although no table makes them writable.
fn handler_bits(dev: &PciDevice<i32>, pos: u16) -> u8 {
    let c = dev.config();
    if pos == 0x06 {
        return 0x08; // Interrupt Status: the mock drives it from the INTx level
    }
    if pos == 0x05 {
        return 0x04; // DisINTx follows the virtual bit (§5.2 step 4)
    }
    if let Owner::Capability(i) = c.owner(pos) {
        let cap = c.capabilities()[i];
        let off = pos - cap.offset;
        if cap.space == CapSpace::Standard {
            match (cap.id, off) {
                (0x01, 4) => return 0x03,             // PowerState via the platform (§6.1)
                (0x05, 2) | (0x05, 3) => return 0xFF, // Message Control write-back (§6.4)
                (0x10, 9) => return 0x70,             // MaxReadReq via set_readrq (§6.5)
                _ => {}
            }
        }
    }
    0
}

#[test]
fn corpus_config_properties() {
    let mut opened = 0;
    for (name, image) in images() {
        let Some((mut d, mut dev)) = open(&image) else {
            continue;
        };
        opened += 1;
        let size = dev.config().size();
        // 3. chains terminate and hold no hidden capability.
        let kept: Vec<(u16, CapSpace)> = dev
            .config()
            .capabilities()
            .iter()
            .filter(|c| c.visibility == CapVisibility::Kept)
            .map(|c| (c.offset, c.space))
            .collect();
        let mut b = [0u8; 4];
        d.read(&mut dev, CFG + 0x06, &mut b[..2]).unwrap();
        let cap_list = b[0] & 0x10 != 0;
        d.read(&mut dev, CFG + 0x34, &mut b[..1]).unwrap();
        let mut pos = if cap_list { u16::from(b[0]) } else { 0 };
        let mut steps = 0;
        while pos != 0 {
            assert!(steps < 48, "{name}: standard chain does not terminate");
            // A capability overlapping an earlier one (spec/03 §1.3 conflict) stays in
            // the chain; its bytes are owned by the earlier capability.
            let overlapped = matches!(dev.config().owner(pos), Owner::Capability(_));
            assert!(
                kept.contains(&(pos, CapSpace::Standard)) || overlapped,
                "{name}: chain reaches {pos:#x}, not a kept capability"
            );
            d.read(&mut dev, CFG + u64::from(pos) + 1, &mut b[..1])
                .unwrap();
            pos = u16::from(b[0]);
            steps += 1;
        }
        if size > 256 && kept.iter().any(|k| k.1 == CapSpace::Extended) {
            let mut pos = 0x100u16;
            let mut steps = 0;
            while pos != 0 {
                assert!(steps < 480, "{name}: extended chain does not terminate");
                d.read(&mut dev, CFG + u64::from(pos), &mut b).unwrap();
                let h = u32::from_le_bytes(b);
                let placeholder = pos == 0x100 && h & 0xFFFF == 0;
                assert!(
                    placeholder || kept.contains(&(pos, CapSpace::Extended)),
                    "{name}: extended chain reaches {pos:#x}, not a kept capability"
                );
                pos = ((h >> 20) & 0xFFC) as u16;
                steps += 1;
            }
        }
        // 1, 2, 4 under random writes.
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ image.len() as u64 ^ u64::from(image[0]));
        for _ in 0..400 {
            let width = [1usize, 2, 4][(rng.next() % 3) as usize];
            let pos = ((rng.next() % u64::from(size)) as u16) & !(width as u16 - 1);
            let value = rng.next().to_le_bytes();
            let before = d.access().cfg.clone();
            let _ = d.write(&mut dev, CFG + u64::from(pos), &value[..width]);
            let after = d.access().cfg.clone();
            for at in 0..size {
                let changed = before[usize::from(at)] ^ after[usize::from(at)];
                if changed == 0 || (0x10..0x28).contains(&at) || (0x30..0x34).contains(&at) {
                    continue; // BAR restore writes the saved (identical) values
                }
                let p = dev.config().byte_permission(at).unwrap();
                let allowed = p.hardware_write() | handler_bits(&dev, at);
                assert_eq!(
                    changed & !allowed,
                    0,
                    "{name}: write {width}@{pos:#x} changed hardware byte {at:#x} \
                     ({:#04x} -> {:#04x}) outside its writable bits {allowed:#04x}",
                    before[usize::from(at)],
                    after[usize::from(at)]
                );
            }
        }
        for at in 0..size {
            let p = dev.config().byte_permission(at).unwrap();
            if p.virt != 0xFF || (0x10..0x28).contains(&at) || (0x30..0x34).contains(&at) {
                continue;
            }
            let n = d.access().config_reads;
            d.read(&mut dev, CFG + u64::from(at), &mut b[..1]).unwrap();
            assert_eq!(
                d.access().config_reads,
                n,
                "{name}: read of virtual byte {at:#x} touched hardware"
            );
        }
        // 4. read-after-write: the interrupt line scratch register and BAR sizing.
        for v in [0u8, 0x5A, 0xFF] {
            d.write(&mut dev, CFG + 0x3C, &[v]).unwrap();
            d.read(&mut dev, CFG + 0x3C, &mut b[..1]).unwrap();
            assert_eq!(b[0], v, "{name}: interrupt line");
        }
        d.write(&mut dev, CFG + 0x10, &[0xFF; 4]).unwrap();
        d.read(&mut dev, CFG + 0x10, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0, "{name}: unassigned BAR0 reads 0");
    }
    assert!(opened > 50, "only {opened} corpus images opened");
}
