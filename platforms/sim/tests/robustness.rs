//! Random inputs never panic, and the page table agrees with a naive page model.

use std::collections::BTreeMap;

use vfio_core::platform::{BarIndex, Bdf, Iommu, PciAccess, Prot, Width};
use vfio_sim::{corpus, PageTable, SimMachine};

/// Small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

#[test]
fn random_config_and_bar_accesses_never_panic() {
    let m = SimMachine::new();
    let mut bdfs = Vec::new();
    for (i, e) in corpus::entries().iter().enumerate() {
        if let Ok(f) = corpus::load(&e.file) {
            let bdf = Bdf::new(0, 1 + i as u8, 0, 0).unwrap();
            m.add_function(bdf, f, i as u32).unwrap();
            bdfs.push(bdf);
        }
    }
    let mut pci = m.pci();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let widths = [Width::Byte, Width::Word, Width::Dword];
    let offsets = [
        0u64,
        1,
        0xfff,
        0x1000,
        0x3fff,
        u64::MAX,
        u64::MAX - 3,
        1 << 40,
    ];
    for _ in 0..20_000 {
        let dev = rng.pick(&bdfs);
        let w = rng.pick(&widths);
        let off = (rng.next() % 4200) as u16;
        let _ = pci.config_read(dev, off, w);
        let _ = pci.config_write(dev, off, w, rng.next() as u32);
        let bar = BarIndex::new((rng.next() % 6) as u8).unwrap();
        let mut buf = vec![0u8; (rng.next() % 9) as usize];
        let at = rng.pick(&offsets);
        let _ = pci.bar_read(dev, bar, at, &mut buf);
        let _ = pci.bar_write(dev, bar, at, &buf);
        let _ = pci.rom_read(dev, at, &mut buf);
    }
}

#[test]
fn page_table_matches_a_naive_page_model() {
    let bitmap = 0x4020_1000u64;
    let page = 0x1000u64;
    let mut table = PageTable::default();
    let mut model: BTreeMap<u64, u64> = BTreeMap::new(); // iova page -> phys page
    let mut rng = Rng(42);
    let space = 8u64 << 20; // 8 MiB of IOVA, so 2 MiB pages occur
    for _ in 0..3000 {
        let pages = 1 + rng.next() % 1024;
        let len = pages * page;
        let iova = (rng.next() % (space / page)) * page;
        let phys = if rng.next() % 2 == 0 {
            iova + (1 << 32)
        } else {
            (rng.next() % 4096) * page
        };
        if rng.next() % 3 != 0 {
            let overlap = (0..pages).any(|k| model.contains_key(&(iova + k * page)));
            let r = table.map(bitmap, (0, (1 << 48) - 1), iova, phys, len, Prot::READ);
            assert_eq!(r.is_ok(), !overlap, "map {iova:#x}+{len:#x}");
            if r.is_ok() {
                for k in 0..pages {
                    model.insert(iova + k * page, phys + k * page);
                }
            }
        } else {
            let expected = (0..pages)
                .filter(|k| model.remove(&(iova + k * page)).is_some())
                .count() as u64
                * page;
            assert_eq!(
                table.unmap(bitmap, iova, len),
                expected,
                "unmap {iova:#x}+{len:#x}"
            );
        }
        assert_eq!(table.mapped_bytes(), model.len() as u64 * page);
    }
    for (iova, phys) in &model {
        assert_eq!(table.translate(iova + 0x10).map(|t| t.0), Some(phys + 0x10));
    }
    // The top of the address space.
    let mut t = PageTable::default();
    let top = u64::MAX - page + 1;
    t.map(bitmap, (0, u64::MAX), top, 0, page, Prot::READ)
        .unwrap();
    assert_eq!(t.unmap(bitmap, top, page), page);
    assert!(t
        .map(bitmap, (0, u64::MAX), top, 0, 2 * page, Prot::READ)
        .is_err());
}

#[test]
fn random_iommu_calls_never_panic() {
    let m = SimMachine::new();
    let f = corpus::load("1000-0021-lsi-53c1010.bin").unwrap();
    m.add_function(Bdf::new(0, 1, 0, 0).unwrap(), f, 1).unwrap();
    let mut iommu = m.iommu();
    let mut rng = Rng(7);
    let values = [
        0u64,
        1,
        0x1000,
        0x20_0000,
        u64::MAX,
        u64::MAX - 0xfff,
        1 << 48,
    ];
    for _ in 0..5000 {
        let d = (rng.next() % 4) as u32;
        let g = (rng.next() % 3) as u32;
        match rng.next() % 8 {
            0 => {
                let _ = iommu.claim_dma_owner(g);
            }
            1 => {
                let _ = iommu.domain_alloc(g);
            }
            2 => {
                let _ = iommu.attach(d, g);
            }
            3 => iommu.detach(d, g),
            4 => {
                let (a, b, c) = (rng.pick(&values), rng.pick(&values), rng.pick(&values));
                let _ = iommu.map(d, a, b, c, Prot::READ);
            }
            5 => {
                let _ = iommu.unmap(d, rng.pick(&values), rng.pick(&values));
            }
            6 => {
                let _ = iommu.iova_to_phys(d, rng.pick(&values));
            }
            _ => iommu.domain_free(d),
        }
        let _ = m.dma_write(Bdf::new(0, 1, 0, 0).unwrap(), rng.pick(&values), &[1, 2]);
    }
}
