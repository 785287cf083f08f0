//! The machine through the platform traits: IOMMU, device DMA, host memory, events, PCI.

use vfio_core::platform::{
    BarIndex, Bdf, EventSink, HostMemory, Iommu, MemoryKind, MsiKind, PciAccess, Prot, ResetMethod,
    Width,
};
use vfio_core::Errno;
use vfio_sim::{
    corpus, Backing, Binding, FaultReason, GroupProfile, SimMachine, VmRange, PAGE_SIZE,
};

const GROUP: u32 = 7;

fn bdf(text: &str) -> Bdf {
    Bdf::parse(text).expect("valid BDF")
}

/// A machine with the SAS2008 at 0000:03:00.0 in group 7.
fn machine() -> (SimMachine, Bdf) {
    let m = SimMachine::new();
    let dev = bdf("0000:03:00.0");
    let f = corpus::load("1000-0072-sas2008.bin").expect("loads");
    m.add_function(dev, f, GROUP).expect("new BDF");
    (m, dev)
}

/// Claims, allocates a domain, attaches; returns the domain.
fn attached(m: &SimMachine) -> u32 {
    let mut iommu = m.iommu();
    iommu.claim_dma_owner(GROUP).expect("viable");
    let d = iommu.domain_alloc(GROUP).expect("domain");
    iommu.attach(d.id, GROUP).expect("attach");
    d.id
}

#[test]
fn domain_reports_the_group_profile() {
    let (m, _) = machine();
    let d = m.iommu().domain_alloc(GROUP).unwrap();
    assert_eq!(d.pgsize_bitmap, 0x4020_1000);
    assert_eq!((d.aperture_start, d.aperture_end), (0, (1 << 48) - 1));
    let r = m.iommu().reserved_region(GROUP, 0).unwrap();
    assert_eq!((r.start, r.end), (0xfee0_0000, 0xfeef_ffff));
    assert_eq!(m.iommu().reserved_region(GROUP, 1), None);
    assert_eq!(m.iommu().domain_alloc(99), Err(Errno::ENODEV));
}

#[test]
fn unmapped_dma_faults_and_leaves_memory_untouched() {
    let (m, dev) = machine();
    let d = attached(&m);
    let phys = m.alloc(0x10_0000, 2 * PAGE_SIZE, Backing::Ram).unwrap();
    let mut iommu = m.iommu();
    // Only the first page is mapped.
    iommu
        .map(d, 0x4000, phys, PAGE_SIZE, Prot::READ | Prot::WRITE)
        .unwrap();
    let data = vec![0xabu8; 2 * PAGE_SIZE as usize];
    let fault = m.dma_write(dev, 0x4000, &data).unwrap_err();
    assert_eq!(fault.reason, FaultReason::Unmapped);
    assert_eq!(fault.iova, 0x5000);
    assert!(fault.write);
    let mut check = vec![0u8; PAGE_SIZE as usize];
    m.read_phys(phys, &mut check);
    assert!(
        check.iter().all(|b| *b == 0),
        "no byte of the mapped page was written"
    );
    assert_eq!(m.faults(), vec![fault]);
    // The mapped page alone works and lands in process memory.
    m.dma_write(dev, 0x4010, &[1, 2, 3]).unwrap();
    let mut buf = [0u8; 3];
    m.read_virt(0x10_0010, &mut buf).unwrap();
    assert_eq!(buf, [1, 2, 3]);
}

#[test]
fn read_only_mapping_refuses_a_device_write() {
    let (m, dev) = machine();
    let d = attached(&m);
    let phys = m.alloc(0x20_0000, PAGE_SIZE, Backing::Ram).unwrap();
    m.write_virt(0x20_0000, b"hello").unwrap();
    m.iommu()
        .map(d, 0x8000, phys, PAGE_SIZE, Prot::READ)
        .unwrap();
    let f = m.dma_write(dev, 0x8000, b"HELLO").unwrap_err();
    assert_eq!(f.reason, FaultReason::Permission);
    let mut buf = [0u8; 5];
    m.dma_read(dev, 0x8000, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    // Write-only mapping refuses a device read and leaves the buffer alone.
    m.iommu().unmap(d, 0x8000, PAGE_SIZE);
    m.iommu()
        .map(d, 0x8000, phys, PAGE_SIZE, Prot::WRITE)
        .unwrap();
    let mut buf = [7u8; 2];
    assert_eq!(
        m.dma_read(dev, 0x8000, &mut buf).unwrap_err().reason,
        FaultReason::Permission
    );
    assert_eq!(buf, [7, 7]);
}

#[test]
fn device_without_domain_faults() {
    let (m, dev) = machine();
    let f = m.dma_write(dev, 0, &[0]).unwrap_err();
    assert_eq!(f.reason, FaultReason::NotAttached);
    let f = m.dma_write(bdf("00:1f.0"), 0, &[0]).unwrap_err();
    assert_eq!(f.reason, FaultReason::NoDevice);
    assert_eq!(m.take_faults().len(), 2);
    assert!(m.faults().is_empty());
}

#[test]
fn mapping_misaligned_to_the_domain_page_size_is_refused() {
    let (m, _) = machine();
    m.set_group_profile(
        GROUP,
        GroupProfile {
            pgsize_bitmap: 0x4020_0000, // 2 MiB minimum
            ..GroupProfile::default()
        },
    );
    let d = attached(&m);
    let mut iommu = m.iommu();
    let two_m = 2 << 20;
    assert_eq!(
        iommu.map(d, 0x1000, 0, two_m, Prot::READ),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        iommu.map(d, 0, 0x1000, two_m, Prot::READ),
        Err(Errno::EINVAL)
    );
    assert_eq!(iommu.map(d, 0, 0, 0x1000, Prot::READ), Err(Errno::EINVAL));
    assert_eq!(iommu.map(d, 0, 0, 0, Prot::READ), Err(Errno::EINVAL));
    assert_eq!(
        iommu.map(d, 1 << 48, 0, two_m, Prot::READ),
        Err(Errno::EINVAL),
        "aperture"
    );
    assert_eq!(
        iommu.map(d, u64::MAX - two_m + 1, 0, two_m, Prot::READ),
        Err(Errno::EINVAL)
    );
    iommu.map(d, two_m, 0x4000_0000, two_m, Prot::READ).unwrap();
    assert_eq!(
        iommu.map(d, two_m, 0, two_m, Prot::READ),
        Err(Errno::EEXIST)
    );
    assert_eq!(iommu.iova_to_phys(d, two_m + 0x123), Some(0x4000_0123));
    assert_eq!(
        iommu.unmap(d, two_m, 0x1000),
        0,
        "unmap below the minimum page"
    );
    assert_eq!(iommu.unmap(d, 0, 3 * two_m), two_m);
}

#[test]
fn map_uses_large_pages_and_partial_unmap_splits_them() {
    let (m, _) = machine();
    let d = attached(&m);
    let mut iommu = m.iommu();
    let phys = 0x1_0000_0000;
    iommu
        .map(d, 0x20_0000, phys, 4 << 20, Prot::READ | Prot::WRITE)
        .unwrap();
    let ptes = m.domain_mappings(d);
    assert_eq!(ptes.len(), 2);
    assert!(ptes.iter().all(|(_, p)| p.size == 2 << 20));
    assert_eq!(iommu.unmap(d, 0x30_0000, PAGE_SIZE), PAGE_SIZE);
    assert_eq!(iommu.iova_to_phys(d, 0x30_0000), None);
    assert_eq!(iommu.iova_to_phys(d, 0x30_1000), Some(phys + 0x10_1000));
    assert_eq!(iommu.iova_to_phys(d, 0x2f_f000), Some(phys + 0xf_f000));
    assert_eq!(iommu.unmap(d, 0, 1 << 30), (4 << 20) - PAGE_SIZE);
    assert!(m.domain_mappings(d).is_empty());
    // Misaligned phys forces 4 KiB pages.
    iommu
        .map(d, 0x20_0000, phys + 0x1000, 2 << 20, Prot::READ)
        .unwrap();
    assert_eq!(m.domain_mappings(d).len(), 512);
}

#[test]
fn dma_ownership_claim_and_binding_rules() {
    let (m, dev) = machine();
    let mut iommu = m.iommu();
    m.bind_driver(dev, Binding::Host).unwrap();
    assert!(!iommu.group_viable(GROUP));
    assert_eq!(iommu.claim_dma_owner(GROUP), Err(Errno::EPERM));
    m.bind_driver(dev, Binding::Stub).unwrap();
    assert!(iommu.group_viable(GROUP));
    iommu.claim_dma_owner(GROUP).unwrap();
    assert_eq!(iommu.claim_dma_owner(GROUP), Err(Errno::EBUSY));
    assert_eq!(m.bind_driver(dev, Binding::Host), Err(Errno::EBUSY));
    m.bind_driver(dev, Binding::Vfio).unwrap();
    iommu.release_dma_owner(GROUP);
    m.bind_driver(dev, Binding::Host).unwrap();
    assert_eq!(iommu.claim_dma_owner(99), Err(Errno::ENODEV));
    assert!(m.violations().is_empty());
}

#[test]
fn group_moves_onto_an_existing_domain_only_when_compatible() {
    let m = SimMachine::new();
    let f = corpus::load("1000-0021-lsi-53c1010.bin").unwrap();
    m.add_function(bdf("01:00.0"), f.clone(), 1).unwrap();
    m.add_function(bdf("02:00.0"), f.clone(), 2).unwrap();
    m.add_function(bdf("03:00.0"), f, 3).unwrap();
    m.set_group_profile(
        3,
        GroupProfile {
            ops: 2,
            ..GroupProfile::default()
        },
    );
    let mut iommu = m.iommu();
    for g in 1..=3 {
        iommu.claim_dma_owner(g).unwrap();
    }
    let d1 = iommu.domain_alloc(1).unwrap().id;
    iommu.attach(d1, 1).unwrap();
    let d2 = iommu.domain_alloc(2).unwrap().id;
    iommu.attach(d2, 2).unwrap();
    iommu.attach(d1, 2).unwrap(); // move: same ops and coherency
    assert_eq!(m.group_domain(2), Some(d1));
    assert_eq!(m.domain_groups(d1), vec![1, 2]);
    assert!(m.domain_groups(d2).is_empty());
    iommu.domain_free(d2);
    let d3 = iommu.domain_alloc(3).unwrap().id;
    iommu.attach(d3, 3).unwrap();
    assert_eq!(
        iommu.attach(d1, 3),
        Err(Errno::EINVAL),
        "different IOMMU driver"
    );
    assert_eq!(m.group_domain(3), Some(d3));
    m.set_group_profile(
        2,
        GroupProfile {
            enforce_coherency: false,
            ..GroupProfile::default()
        },
    );
    iommu.detach(d1, 2);
    assert_eq!(iommu.attach(d1, 2), Err(Errno::EINVAL), "coherency differs");
    assert!(m.violations().is_empty(), "{:?}", m.violations());
    // Misuse is recorded, not fatal.
    iommu.map(d1, 0, 0, PAGE_SIZE, Prot::READ).unwrap();
    iommu.detach(d1, 1);
    iommu.domain_free(d1);
    assert_eq!(m.violations().len(), 1);
    iommu.release_dma_owner(2);
    assert_eq!(iommu.attach(d3, 2), Err(Errno::EPERM), "unclaimed group");
}

#[test]
fn pin_returns_contiguous_runs_of_one_kind() {
    let (m, _) = machine();
    let mut mem = m.memory();
    assert_eq!(mem.page_size(), 4096);
    let p = m.alloc(0x100_0000, 4 * PAGE_SIZE, Backing::Ram).unwrap();
    // Adjacent in vaddr and phys: one run across both ranges.
    m.map_range(VmRange {
        vaddr: 0x100_4000,
        len: PAGE_SIZE,
        phys: p + 4 * PAGE_SIZE,
        backing: Backing::Ram,
    })
    .unwrap();
    // Adjacent in vaddr, not in phys.
    m.map_range(VmRange {
        vaddr: 0x100_5000,
        len: PAGE_SIZE,
        phys: 0x9000_0000,
        backing: Backing::Ram,
    })
    .unwrap();
    let run = mem.pin(0x100_1000, 16 * PAGE_SIZE, true).unwrap();
    assert_eq!(
        (run.phys, run.len, run.kind),
        (p + PAGE_SIZE, 4 * PAGE_SIZE, MemoryKind::Ram)
    );
    assert_eq!(m.pinned_pages(), 4);
    mem.unpin(run.phys, run.len);
    assert_eq!(m.pinned_pages(), 0);
    assert_eq!(
        mem.pin(0x200_0000, PAGE_SIZE, false),
        Err(Errno::EFAULT),
        "unbacked"
    );
    m.alloc(0x300_0000, PAGE_SIZE, Backing::ReadOnlyRam)
        .unwrap();
    assert_eq!(
        mem.pin(0x300_0000, PAGE_SIZE, true),
        Err(Errno::EFAULT),
        "read-only"
    );
    assert!(mem.pin(0x300_0000, PAGE_SIZE, false).is_ok());
    m.map_range(VmRange {
        vaddr: 0x400_0000,
        len: 0x4000,
        phys: 0xf9ff_c000,
        backing: Backing::Mmio,
    })
    .unwrap();
    let run = mem.pin(0x400_0000, 0x8000, true).unwrap();
    assert_eq!((run.len, run.kind), (0x4000, MemoryKind::Mmio));
    assert_eq!(mem.pin(0x400_0001, PAGE_SIZE, false), Err(Errno::EINVAL));
}

#[test]
fn locked_memory_accounting() {
    let (m, _) = machine();
    let mut mem = m.memory();
    assert_eq!(mem.lock_limit_pages(), None);
    m.set_lock_limit(Some(16));
    m.set_lock_cap(true);
    m.set_locked_pages(3);
    mem.charge(5);
    assert_eq!(
        (mem.locked_pages(), mem.lock_limit_pages(), mem.lock_cap()),
        (8, Some(16), true)
    );
    mem.charge(-20);
    assert_eq!(mem.locked_pages(), 0);
}

#[test]
fn events_resolve_and_count_signals() {
    let m = SimMachine::new();
    let mut ev = m.events();
    let fd = ev.create_event();
    let not_event = ev.create_non_event();
    assert_eq!(ev.resolve(not_event), Err(Errno::EINVAL));
    assert_eq!(ev.resolve(3), Err(Errno::EBADF));
    assert_eq!(ev.resolve(-1), Err(Errno::EBADF));
    let token = ev.resolve(fd).unwrap();
    ev.signal(token);
    ev.signal(token);
    assert_eq!(ev.count(fd), Some(2));
    assert_eq!(ev.take(fd), Some(2));
    assert_eq!(ev.count(fd), Some(0));
    assert!(ev.close(fd));
    ev.signal(token);
    assert_eq!(ev.count(fd), Some(0), "closed events drop signals");
    assert_eq!(ev.resolve(fd), Err(Errno::EBADF));
    assert_eq!(ev.count(not_event), None);
}

#[test]
fn pci_access_through_the_trait() {
    let (m, dev) = machine();
    let mut pci = m.pci();
    assert_eq!(pci.config_size(dev), Ok(4096));
    assert_eq!(pci.config_read(dev, 0, Width::Dword), Ok(0x0072_1000));
    assert_eq!(pci.config_read(dev, 1, Width::Word), Err(Errno::EINVAL));
    assert_eq!(
        pci.config_read(bdf("9:0.0"), 0, Width::Byte),
        Err(Errno::ENODEV)
    );
    let r = pci.bar_resource(dev, BarIndex::new(1).unwrap()).unwrap();
    assert_eq!((r.start, r.size), (0xf9ff_c000, 0x4000));
    assert_eq!(
        pci.bar_resource(dev, BarIndex::new(2).unwrap())
            .unwrap()
            .size,
        0
    );
    assert_eq!(pci.rom_size(dev), Ok(0x10000));
    let bar1 = BarIndex::new(1).unwrap();
    pci.bar_write(dev, bar1, 0x10, &[9, 8]).unwrap();
    let mut b = [0u8; 2];
    pci.bar_read(dev, bar1, 0x10, &mut b).unwrap();
    assert_eq!(b, [9, 8]);
    assert_eq!(pci.bar_read(dev, bar1, 0x4000, &mut b), Err(Errno::EINVAL));
    // MSI-X allocation and a device interrupt.
    assert_eq!(m.raise_msix(dev, 0), None);
    assert_eq!(pci.irq_vectors_alloc(dev, MsiKind::Msix, 4), Ok(4));
    assert_eq!(m.raise_msix(dev, 3), Some(3));
    assert_eq!(m.raise_msix(dev, 4), None);
    pci.irq_vectors_free(dev);
    assert_eq!(m.raise_msix(dev, 0), None);
}

#[test]
fn resets_by_method() {
    let m = SimMachine::new();
    let f = corpus::load("1000-0021-lsi-53c1010.bin").unwrap();
    let (a, b, c) = (bdf("05:00.0"), bdf("05:00.1"), bdf("05:01.0"));
    m.add_function(a, f.clone(), 1).unwrap();
    m.add_function(b, f.clone(), 1).unwrap();
    m.add_function(c, f, 2).unwrap();
    let mut pci = m.pci();
    assert!(pci.reset_supported(a, ResetMethod::Function));
    assert!(!pci.reset_supported(a, ResetMethod::Slot));
    assert_eq!(pci.reset(a, ResetMethod::Slot), Err(Errno::ENOTTY));
    pci.reset(a, ResetMethod::Function).unwrap();
    assert_eq!(m.reset_count(a), Some(1));
    pci.reset(a, ResetMethod::Bus).unwrap();
    assert_eq!(
        (m.reset_count(a), m.reset_count(b), m.reset_count(c)),
        (Some(2), Some(1), Some(1))
    );
    m.set_reset_supported(a, ResetMethod::Slot, true);
    pci.reset(a, ResetMethod::Slot).unwrap();
    assert_eq!(m.reset_count(c), Some(1), "another slot");
    assert_eq!(m.bus_reset_count(), 2);
    m.set_reset_contended(b, true);
    assert_eq!(pci.reset(a, ResetMethod::Bus), Err(Errno::EAGAIN));
    m.set_reset_supported(a, ResetMethod::Function, false);
    assert_eq!(pci.reset(a, ResetMethod::Function), Err(Errno::ENOTTY));
    assert!(!pci.reset_supported(bdf("9:0.0"), ResetMethod::Function));
}

#[test]
fn peer_to_peer_dma_reaches_another_functions_bar() {
    let (m, dev) = machine();
    let peer = bdf("0000:04:00.0");
    let nic = corpus::load("10ec-8168-rtl8111-8168.bin").unwrap();
    let r = nic.bar_resource(2).unwrap();
    m.add_function(peer, nic, 8).unwrap();
    let d = attached(&m);
    m.iommu()
        .map(d, 0x10_0000, r.start, PAGE_SIZE, Prot::READ | Prot::WRITE)
        .unwrap();
    m.dma_write(dev, 0x10_0008, &[0xee]).unwrap();
    let mut b = [0u8; 1];
    m.pci()
        .bar_read(peer, BarIndex::new(2).unwrap(), 8, &mut b)
        .unwrap();
    assert_eq!(b, [0xee]);
}

/// The page-by-page translation walk of the `Iommu` trait's default method, for comparison.
fn run_by_pages(iommu: &impl Iommu, d: u32, iova: u64, max_len: u64) -> Option<(u64, u64)> {
    let phys = iommu.iova_to_phys(d, iova)?;
    let mut len = PAGE_SIZE;
    while len < max_len && iommu.iova_to_phys(d, iova + len) == Some(phys + len) {
        len += PAGE_SIZE;
    }
    Some((phys, len))
}

#[test]
fn contiguous_translation_runs_step_over_superpages_and_stop_at_jumps() {
    let (m, _) = machine();
    let d = attached(&m);
    let mut iommu = m.iommu();
    let gib = 1u64 << 30;
    // 1 GiB superpage, then a 2 MiB page continuing it physically, then 4 KiB pages
    // that jump elsewhere, then a hole.
    iommu.map(d, gib, 0x40_0000_0000, gib, Prot::READ).unwrap();
    iommu
        .map(d, 2 * gib, 0x40_0000_0000 + gib, 2 << 20, Prot::READ)
        .unwrap();
    iommu
        .map(d, 2 * gib + (2 << 20), 0x7_0000_0000, 0x3000, Prot::READ)
        .unwrap();
    let cases = [
        (gib, u64::MAX),
        (gib, 0x1000),
        (gib + 0x1_2000, gib),
        (2 * gib - 0x1000, 4 << 20),
        (2 * gib + (2 << 20), 0x10_0000),
        (2 * gib + (2 << 20) + 0x1000, 0x1000),
        (3 * gib, 0x1000),
    ];
    for (iova, max_len) in cases {
        let fast = iommu.iova_to_phys_run(d, iova, max_len, PAGE_SIZE);
        let slow = run_by_pages(&iommu, d, iova, max_len.min(4 * gib));
        assert_eq!(
            fast,
            slow.map(|(p, n)| (p, n.min(max_len))),
            "iova {iova:#x}"
        );
    }
    assert_eq!(
        iommu.iova_to_phys_run(d, gib, u64::MAX, PAGE_SIZE),
        Some((0x40_0000_0000, gib + (2 << 20)))
    );
    // Whole pages, like the trait's page walk: a partial page counts as one.
    assert_eq!(
        iommu.iova_to_phys_run(d, gib, 100, PAGE_SIZE),
        Some((0x40_0000_0000, PAGE_SIZE))
    );
    assert_eq!(
        iommu.iova_to_phys_run(d, gib, PAGE_SIZE + 1, PAGE_SIZE),
        Some((0x40_0000_0000, 2 * PAGE_SIZE))
    );
    assert_eq!(iommu.iova_to_phys_run(d, gib, 0, PAGE_SIZE), None);
    assert_eq!(iommu.iova_to_phys_run(d, gib, 0x1000, 0), None);
}
