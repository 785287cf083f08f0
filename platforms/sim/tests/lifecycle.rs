//! What the device lifecycle needs from the machine: INTx line level, sharing and PCI 2.3
//! masking, per-vector MSI-X growth, hot-reset scope and affected functions, and what the
//! resets do to config space.

use vfio_core::platform::{Bdf, IntxLine, MsiKind, PciAccess, ResetMethod, Width};
use vfio_core::Errno;
use vfio_sim::{corpus, Binding, ResetRestore, SimMachine};

fn bdf(text: &str) -> Bdf {
    Bdf::parse(text).expect("valid BDF")
}

fn sas() -> vfio_sim::SimFunction {
    corpus::load("1000-0072-sas2008.bin").expect("loads")
}

#[test]
fn intx_level_masking_and_check_and_unmask() {
    let m = SimMachine::new();
    let dev = bdf("03:00.0");
    m.add_function(dev, sas(), 1).unwrap();
    let mut pci = m.pci();
    pci.config_write(dev, 0x04, Width::Word, 0x0006).unwrap();
    let facts = pci.function_facts(dev);
    assert_eq!(facts.intx, IntxLine::Connected);
    assert!(facts.intx_masking);
    // Nothing requested: the level alone does not run a handler.
    assert!(!m.raise_intx(dev, true));
    assert_eq!(pci.config_read(dev, 0x06, Width::Word).unwrap() & 0x8, 0x8);
    pci.intx_request(dev, true, false).unwrap();
    assert!(m.intx_would_fire(dev));
    // DisINTx gates the pin; Status bit 3 still shows the level.
    let cmd = pci.config_read(dev, 0x04, Width::Word).unwrap();
    pci.config_write(dev, 0x04, Width::Word, cmd | 0x0400)
        .unwrap();
    assert!(!m.intx_would_fire(dev));
    assert_eq!(pci.intx_check_and_unmask(dev), Ok(true), "still pending");
    assert_ne!(pci.config_read(dev, 0x04, Width::Word).unwrap() & 0x0400, 0);
    m.set_intx(dev, false);
    assert_eq!(pci.intx_check_and_unmask(dev), Ok(false));
    assert_eq!(pci.config_read(dev, 0x04, Width::Word).unwrap() & 0x0400, 0);
    // Host line masking (non-PCI-2.3 path).
    pci.intx_line_enable(dev, false);
    assert!(!m.raise_intx(dev, true));
    pci.intx_line_enable(dev, true);
    assert!(m.intx_would_fire(dev));
    pci.intx_free(dev);
    assert!(!m.intx_would_fire(dev));
    assert!(!m.host_intx(dev).unwrap().requested);
}

#[test]
fn intx_line_sharing_and_missing_line() {
    let m = SimMachine::new();
    let (a, b) = (bdf("03:00.0"), bdf("04:00.0"));
    m.add_function(a, sas(), 1).unwrap();
    m.add_function(b, sas(), 2).unwrap();
    m.set_intx_line(a, Some(11));
    m.set_intx_line(b, Some(11));
    let mut pci = m.pci();
    pci.config_write(a, 0x04, Width::Word, 0x0006).unwrap();
    pci.config_write(b, 0x04, Width::Word, 0x0006).unwrap();
    pci.intx_request(a, false, false).unwrap();
    assert_eq!(pci.intx_request(b, true, false), Err(Errno::EBUSY));
    pci.intx_free(a);
    pci.intx_request(a, true, false).unwrap();
    pci.intx_request(b, true, true).unwrap();
    assert_eq!(
        pci.intx_request(b, false, false),
        Err(Errno::EBUSY),
        "exclusive on a used line"
    );
    // b asserts: the shared line runs a's handler too (it must check Status itself).
    m.set_intx(b, true);
    assert!(m.intx_would_fire(a));
    assert!(!m.intx_would_fire(b), "b's line started disabled (masked)");
    m.set_intx_line(b, None);
    assert_eq!(pci.function_facts(b).intx, IntxLine::Missing);
    pci.intx_free(b);
    assert_eq!(pci.intx_request(b, true, false), Err(Errno::ENODEV));
}

#[test]
fn dynamic_msix_adds_single_vectors() {
    let m = SimMachine::new();
    let dev = bdf("03:00.0");
    m.add_function(dev, sas(), 1).unwrap();
    let mut pci = m.pci();
    assert_eq!(
        pci.irq_vector_add(dev, 1, 1),
        Err(Errno::EINVAL),
        "not enabled"
    );
    assert_eq!(pci.irq_vectors_alloc(dev, MsiKind::Msix, 1), Ok(1));
    pci.irq_vector_add(dev, 4, 1).unwrap();
    assert_eq!(m.raise_msix(dev, 4), Some(4));
    assert_eq!(
        m.raise_msix(dev, 2),
        None,
        "vectors in between stay unallocated"
    );
    assert_eq!(m.function(dev).unwrap().msix_vectors(), vec![0, 4]);
    let entries = m.function(dev).unwrap().msix_layout().unwrap().entries;
    assert_eq!(pci.irq_vector_add(dev, entries, 5), Err(Errno::EINVAL));
    pci.irq_vectors_free(dev);
    assert_eq!(m.raise_msix(dev, 0), None);
    // A host with two vectors.
    let m = SimMachine::new();
    let f = vfio_sim::SimFunction::builder(&sas().config_bytes(), 4096)
        .bar(1, vfio_core::platform::BarKind::Mem64, false, 0x4000)
        .vectors_available(2)
        .build();
    m.add_function(dev, f, 1).unwrap();
    let mut pci = m.pci();
    assert_eq!(pci.irq_vectors_alloc(dev, MsiKind::Msix, 1), Ok(1));
    pci.irq_vector_add(dev, 3, 1).unwrap();
    assert_eq!(pci.irq_vector_add(dev, 5, 4), Err(Errno::ENOSPC));
}

#[test]
fn hot_reset_scope_and_affected_functions() {
    let m = SimMachine::new();
    let (a, b, c, root) = (
        bdf("05:00.0"),
        bdf("05:00.1"),
        bdf("05:01.0"),
        bdf("00:02.0"),
    );
    for (d, g) in [(a, 1), (b, 1), (c, 2), (root, 3)] {
        m.add_function(d, sas(), g).unwrap();
    }
    let mut pci = m.pci();
    assert_eq!(pci.hot_reset_scope(a), Some(ResetMethod::Bus));
    assert_eq!(pci.hot_reset_scope(root), None, "root bus: no bus reset");
    let all: Vec<_> = (0..)
        .map_while(|i| pci.hot_reset_affected(a, ResetMethod::Bus, i))
        .collect();
    assert_eq!(all.iter().map(|f| f.bdf).collect::<Vec<_>>(), vec![a, b, c]);
    assert_eq!(all[2].group, Some(2));
    assert!(all.iter().all(|f| f.vfio && !f.open));
    m.set_reset_supported(a, ResetMethod::Slot, true);
    assert_eq!(pci.hot_reset_scope(a), Some(ResetMethod::Slot));
    let slot: Vec<_> = (0..)
        .map_while(|i| pci.hot_reset_affected(a, ResetMethod::Slot, i))
        .collect();
    assert_eq!(slot.len(), 2);
    // Opens and bindings show.
    pci.user_open(b, true);
    m.bind_driver(c, Binding::Host).unwrap();
    let f = pci.hot_reset_affected(a, ResetMethod::Bus, 1).unwrap();
    assert!(f.open);
    assert!(!pci.hot_reset_affected(a, ResetMethod::Bus, 2).unwrap().vfio);
    assert!(
        !pci.hot_reset_affected(b, ResetMethod::Bus, 1).unwrap().open,
        "the asking function is never reported open"
    );
    assert!(m.user_open(b));
}

fn header(m: &SimMachine, dev: Bdf) -> (u32, u32, u32) {
    let mut pci = m.pci();
    (
        pci.config_read(dev, 0x04, Width::Word).unwrap(),
        pci.config_read(dev, 0x10, Width::Dword).unwrap(),
        pci.config_read(dev, 0x14, Width::Dword).unwrap(),
    )
}

#[test]
fn cleared_resets_lose_bars_and_command_bus_resets_restore_them() {
    let m = SimMachine::new();
    let (a, b) = (bdf("05:00.0"), bdf("05:00.1"));
    let mut f = sas();
    f.set_reset_restore(ResetRestore::Cleared);
    m.add_function(a, f.clone(), 1).unwrap();
    m.add_function(b, f, 1).unwrap();
    let mut pci = m.pci();
    pci.config_write(a, 0x04, Width::Word, 0x0006).unwrap();
    pci.config_write(b, 0x04, Width::Word, 0x0006).unwrap();
    let before = header(&m, a);
    assert_ne!(before.1 & !0xf, 0, "BAR0 assigned");
    // Bus reset: the platform saves and restores every function.
    pci.reset(a, ResetMethod::Bus).unwrap();
    assert_eq!(header(&m, a), before);
    assert_eq!(header(&m, b), before);
    // Function reset (FLR) without restore: Command and BAR addresses are gone.
    pci.reset(a, ResetMethod::Function).unwrap();
    let (cmd, bar0, _) = header(&m, a);
    assert_eq!(cmd, 0);
    assert_eq!(bar0, before.1 & 0xf, "type bits kept");
    // The FLR bit of Device Control does the same.
    pci.config_write(b, 0x04, Width::Word, 0x0006).unwrap();
    let pcie = m.function(b).unwrap().capability(0x10).unwrap();
    if m.function(b).unwrap().flr_capable() {
        pci.config_write(b, pcie + 8, Width::Word, 0x8000).unwrap();
        assert_eq!(header(&m, b).0, 0);
    }
}

#[test]
fn pm_reset_on_d3hot_to_d0_when_cleared() {
    let m = SimMachine::new();
    let dev = bdf("05:00.0");
    let mut f = sas();
    f.set_reset_restore(ResetRestore::Cleared);
    let pm = f.capability(0x01).expect("PM capability");
    m.add_function(dev, f, 1).unwrap();
    let mut pci = m.pci();
    pci.config_write(dev, 0x04, Width::Word, 0x0006).unwrap();
    pci.set_power_state(dev, pm, 3).unwrap();
    assert_eq!(m.function(dev).unwrap().pm_state(), Some(3));
    assert_eq!(m.reset_count(dev), Some(0));
    pci.set_power_state(dev, pm, 0).unwrap();
    let soft = pci.config_read(dev, pm + 4, Width::Word).unwrap() & 0x8 != 0;
    if !soft {
        assert_eq!(m.reset_count(dev), Some(1));
        assert_eq!(header(&m, dev).0, 0);
    }
}
