//! Dirty-page bitmaps of GiB regions (spec/02-type1.md §10): bit indexes past 256 pages
//! (one u64 word per 64 pages, 2^18 bits per GiB) land where the page conversions say.

#[path = "../benches/kit/type1.rs"]
mod kit;

use kit::Project;
use vfio_core::type1::{dirty_flags, DmaEntry, MapDma, UnmapDma};

const GIB: u64 = 1 << 30;

fn bit(bits: &[u8], k: u64) -> bool {
    bits[(k / 8) as usize] & (1 << (k % 8)) != 0
}

fn count(bits: &[u8]) -> u64 {
    bits.iter().map(|b| u64::from(b.count_ones())).sum()
}

#[test]
fn gib_regions_report_every_page_at_the_right_bit() {
    let mut storage = vec![DmaEntry::EMPTY; 16];
    let mut p = Project::new(&mut storage);
    let (mut iommu, mut memory) = (kit::NoopIommu, kit::NoopMemory::default());
    let map = |p: &mut Project<'_>,
               iommu: &mut kit::NoopIommu,
               memory: &mut kit::NoopMemory,
               iova,
               size| {
        let r = MapDma {
            flags: 3,
            vaddr: 0x7f00_0000_0000 + iova,
            iova,
            size,
        };
        p.type1.map_dma(&mut p.map, iommu, memory, &r)
    };
    // 1 GiB at 1 GiB, 3 pages one page after it, 2 GiB at 4 GiB.
    map(&mut p, &mut iommu, &mut memory, GIB, GIB).unwrap();
    map(&mut p, &mut iommu, &mut memory, 2 * GIB + 0x1000, 0x3000).unwrap();
    map(&mut p, &mut iommu, &mut memory, 4 * GIB, 2 * GIB).unwrap();
    p.type1
        .dirty_pages_control(&mut p.map, dirty_flags::START)
        .unwrap();

    // [1 GiB, 3 GiB): 2^19 bits.
    let mut bits = vec![0u8; (2 * GIB / 0x1000 / 8) as usize];
    p.type1
        .dirty_bitmap(&mut p.map, GIB, 2 * GIB, 0x1000, &mut bits)
        .unwrap();
    assert_eq!(count(&bits), (1 << 18) + 3);
    assert!(bit(&bits, 0) && bit(&bits, 255) && bit(&bits, 256) && bit(&bits, (1 << 18) - 1));
    assert!(!bit(&bits, 1 << 18));
    assert!(bit(&bits, (1 << 18) + 1) && bit(&bits, (1 << 18) + 3));
    assert!(!bit(&bits, (1 << 18) + 4));

    // A range starting at the second region, bits relative to its start.
    let mut bits = vec![0u8; (4 * GIB / 0x1000 / 8) as usize];
    p.type1
        .dirty_bitmap(
            &mut p.map,
            2 * GIB + 0x1000,
            3 * GIB - 0x1000,
            0x1000,
            &mut bits,
        )
        .unwrap_err(); // ends inside the 2 GiB entry: bisects it
    p.type1
        .dirty_bitmap(
            &mut p.map,
            2 * GIB + 0x1000,
            4 * GIB - 0x1000 + 2 * GIB,
            0x1000,
            &mut bits[..1000],
        )
        .unwrap_err(); // bitmap too short for 6 GiB − 4 KiB of pages
    let mut bits = vec![0u8; (6 * GIB / 0x1000 / 8) as usize];
    p.type1
        .dirty_bitmap(
            &mut p.map,
            2 * GIB + 0x1000,
            4 * GIB - 0x1000 + 2 * GIB,
            0x1000,
            &mut bits,
        )
        .unwrap();
    let first_big = (2 * GIB - 0x1000) / 0x1000;
    assert_eq!(count(&bits), 3 + (1 << 19));
    assert!(bit(&bits, 0) && bit(&bits, 2) && !bit(&bits, 3));
    assert!(
        !bit(&bits, first_big - 1)
            && bit(&bits, first_big)
            && bit(&bits, first_big + (1 << 19) - 1)
    );

    // UNMAP with GET_DIRTY_BITMAP of everything from 1 GiB: bits relative to 1 GiB.
    let mut bits = vec![0u8; (6 * GIB / 0x1000 / 8) as usize];
    let request = UnmapDma {
        flags: 1,
        iova: GIB,
        size: 6 * GIB,
    };
    let total = p
        .type1
        .unmap_dma(
            &mut p.map,
            &mut iommu,
            &mut memory,
            &request,
            Some((0x1000, &mut bits)),
        )
        .unwrap();
    assert_eq!(total, 3 * GIB + 0x3000);
    assert_eq!(count(&bits), (3 * GIB + 0x3000) / 0x1000);
    assert!(bit(&bits, 3 * (1 << 18)) && !bit(&bits, 2 * (1 << 18) - 1));
    assert_eq!(memory.locked, 0);
    assert!(p.map.is_empty());
}
