//! What a `vfio session` shows, end to end over the simulated machine and only through
//! `Vfio::ioctl` (plus the host-side interrupt entry points): INTx with automasking and
//! UNMASK (ioctl and unmask eventfd), MSI and MSI-X delivery (with dynamic MSI-X
//! growth), an FLR through `VFIO_DEVICE_RESET` that the core repairs, and a hot reset
//! proven with the group fd. The sequence is meant to be copied by the session tool.

use vfio_core::abi::Arg;
use vfio_core::pci::{PciDevice, PciDriver};
use vfio_core::platform::{Bdf, MsiKind, PciAccess, Width};
use vfio_core::type1::DmaEntry;
use vfio_core::uapi::{extension, ioctl, irq_index, irq_set_flags as f};
use vfio_core::vfio::{Config, ContainerSlot, DeviceSlot, Fd, FileSlot, GroupSlot, Storage, Vfio};
use vfio_core::Errno;
use vfio_sim::{corpus, ResetRestore, SimEvent, SimMachine};

const GROUP: u32 = 5;

fn set_irqs(index: u32, flags: u32, start: u32, count: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [20 + data.len() as u32, flags, index, start, count] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(data);
    b
}

fn fds(list: &[i32]) -> Vec<u8> {
    list.iter().flat_map(|fd| fd.to_le_bytes()).collect()
}

fn words(list: &[u32]) -> Vec<u8> {
    list.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[test]
fn session_intx_msi_msix_flr_and_hot_reset() {
    // ---- machine: two functions of one slot, one IOMMU group, FLR loses the header.
    let sim = SimMachine::new();
    let bdf = Bdf::parse("0000:05:00.0").unwrap();
    let peer = Bdf::parse("0000:05:00.1").unwrap();
    let mut func = corpus::load("1000-0072-sas2008.bin").unwrap();
    func.set_reset_restore(ResetRestore::Cleared);
    sim.add_function(bdf, func.clone(), GROUP).unwrap();
    sim.add_function(peer, func, GROUP).unwrap();
    let events = sim.events();

    // ---- registry over the machine.
    let mut files = vec![FileSlot::EMPTY; 32];
    let mut dma = vec![DmaEntry::EMPTY; 256];
    let mut containers = vec![ContainerSlot::new(&mut dma)];
    let mut groups = vec![GroupSlot::EMPTY; 4];
    let mut devices: Vec<DeviceSlot<PciDevice<SimEvent>>> =
        (0..4).map(|_| DeviceSlot::new()).collect();
    let mut vfio = Vfio::new(
        sim.iommu(),
        sim.memory(),
        PciDriver::new(sim.pci(), sim.events()),
        Storage {
            files: &mut files,
            containers: &mut containers,
            groups: &mut groups,
            devices: &mut devices,
        },
        Config::default(),
    );
    for b in [bdf, peer] {
        let state = vfio.driver_mut().probe(b).unwrap();
        vfio.register_device(&b.to_string(), GROUP, state).unwrap();
    }
    let id = vfio.device_by_name("0000:05:00.0").unwrap();

    // ---- container, group, device fd.
    let container = vfio.open_container().unwrap();
    let group = vfio.open_group(GROUP).unwrap();
    let mut c = container.raw().to_le_bytes().to_vec();
    vfio.ioctl(group, ioctl::GROUP_SET_CONTAINER, Arg::Buffer(&mut c))
        .unwrap();
    vfio.ioctl(
        container,
        ioctl::SET_IOMMU,
        Arg::Value(u64::from(extension::TYPE1V2_IOMMU)),
    )
    .unwrap();
    let mut name = b"0000:05:00.0\0".to_vec();
    let dev = vfio
        .ioctl(group, ioctl::GROUP_GET_DEVICE_FD, Arg::Buffer(&mut name))
        .map(|fd| Fd::from_raw(fd as i32))
        .unwrap();
    macro_rules! ioctl_buf {
        ($vfio:expr, $req:expr, $buf:expr $(,)?) => {{
            let mut b: Vec<u8> = $buf;
            let r = $vfio.ioctl(dev, $req, Arg::Buffer(&mut b));
            (r, b)
        }};
    }

    // ---- INTx: trigger eventfd, device asserts, automask, UNMASK, re-raise.
    let intx = events.create_event();
    let (r, _) = ioctl_buf!(
        vfio,
        ioctl::DEVICE_SET_IRQS,
        set_irqs(
            irq_index::INTX,
            f::DATA_EVENTFD | f::ACTION_TRIGGER,
            0,
            1,
            &fds(&[intx])
        ),
    );
    assert_eq!(r, Ok(0));
    assert!(
        sim.host_intx(bdf).unwrap().requested,
        "host line requested (shared)"
    );
    // The device asserts its line; the host runs the core's INTx handler.
    assert!(sim.raise_intx(bdf, true));
    let taken = vfio.with_device(dev, |d, s| Ok(d.intx_fired(s))).unwrap();
    assert!(taken);
    assert_eq!(events.count(intx), Some(1));
    // Automasked: DisINTx is set in hardware, the pin is quiet, a second run is not ours.
    assert!(!sim.intx_would_fire(bdf));
    assert!(!vfio.with_device(dev, |d, s| Ok(d.intx_fired(s))).unwrap());
    assert_eq!(events.count(intx), Some(1));
    // UNMASK while the device still asserts: stays masked, the trigger fires again.
    let unmask = set_irqs(irq_index::INTX, f::DATA_NONE | f::ACTION_UNMASK, 0, 1, &[]);
    assert_eq!(
        ioctl_buf!(vfio, ioctl::DEVICE_SET_IRQS, unmask.clone()).0,
        Ok(0)
    );
    assert_eq!(events.count(intx), Some(2));
    assert!(!sim.intx_would_fire(bdf));
    // The guest services the device (level drops), then UNMASK: the line is live again.
    sim.set_intx(bdf, false);
    assert_eq!(ioctl_buf!(vfio, ioctl::DEVICE_SET_IRQS, unmask).0, Ok(0));
    assert_eq!(events.count(intx), Some(2));
    assert!(sim.raise_intx(bdf, true), "re-raise reaches the host");
    assert!(vfio.with_device(dev, |d, s| Ok(d.intx_fired(s))).unwrap());
    assert_eq!(events.count(intx), Some(3));
    // The same with an unmask eventfd (what KVM's resampler signals).
    let resample = events.create_event();
    let (r, _) = ioctl_buf!(
        vfio,
        ioctl::DEVICE_SET_IRQS,
        set_irqs(
            irq_index::INTX,
            f::DATA_EVENTFD | f::ACTION_UNMASK,
            0,
            1,
            &fds(&[resample])
        ),
    );
    assert_eq!(r, Ok(0));
    sim.set_intx(bdf, false);
    events.signal_fd(resample); // the user writes the unmask eventfd ...
    let watched = vfio
        .with_device(dev, |_, s| Ok(s.intx_unmask_event()))
        .unwrap()
        .unwrap();
    assert_eq!(watched.fd, resample);
    vfio.with_device(dev, |d, s| {
        d.intx_unmask(s); // ... the host, watching it, runs the unmask
        Ok(())
    })
    .unwrap();
    assert!(sim.raise_intx(bdf, true));
    assert!(vfio.with_device(dev, |d, s| Ok(d.intx_fired(s))).unwrap());
    assert_eq!(events.count(intx), Some(4));
    sim.set_intx(bdf, false);
    let off = set_irqs(irq_index::INTX, f::DATA_NONE | f::ACTION_TRIGGER, 0, 0, &[]);
    assert_eq!(ioctl_buf!(vfio, ioctl::DEVICE_SET_IRQS, off).0, Ok(0));
    assert!(!sim.host_intx(bdf).unwrap().requested, "host line freed");

    // ---- MSI: one vector, the device raises it.
    let msi = events.create_event();
    let (r, _) = ioctl_buf!(
        vfio,
        ioctl::DEVICE_SET_IRQS,
        set_irqs(
            irq_index::MSI,
            f::DATA_EVENTFD | f::ACTION_TRIGGER,
            0,
            1,
            &fds(&[msi])
        ),
    );
    assert_eq!(r, Ok(0));
    let v = sim.raise_msi(bdf, 0).expect("MSI enabled in hardware");
    let (driver, state) = vfio.device_parts(id).unwrap();
    assert!(driver.msi_fired(state, MsiKind::Msi, v));
    assert_eq!(events.count(msi), Some(1));
    let off = set_irqs(irq_index::MSI, f::DATA_NONE | f::ACTION_TRIGGER, 0, 0, &[]);
    assert_eq!(ioctl_buf!(vfio, ioctl::DEVICE_SET_IRQS, off).0, Ok(0));
    assert_eq!(sim.raise_msi(bdf, 0), None, "MSI disabled in hardware");

    // ---- MSI-X: two vectors, then vector 4 added while enabled (dynamic MSI-X).
    let (x0, x1, x4) = (
        events.create_event(),
        events.create_event(),
        events.create_event(),
    );
    let (r, _) = ioctl_buf!(
        vfio,
        ioctl::DEVICE_SET_IRQS,
        set_irqs(
            irq_index::MSIX,
            f::DATA_EVENTFD | f::ACTION_TRIGGER,
            0,
            2,
            &fds(&[x0, x1])
        ),
    );
    assert_eq!(r, Ok(0));
    let (r, _) = ioctl_buf!(
        vfio,
        ioctl::DEVICE_SET_IRQS,
        set_irqs(
            irq_index::MSIX,
            f::DATA_EVENTFD | f::ACTION_TRIGGER,
            4,
            1,
            &fds(&[x4])
        ),
    );
    assert_eq!(r, Ok(0));
    for (vector, fd) in [(1u16, x1), (4, x4)] {
        let v = sim.raise_msix(bdf, vector).expect("vector allocated");
        let (driver, state) = vfio.device_parts(id).unwrap();
        assert!(driver.msi_fired(state, MsiKind::Msix, v));
        assert_eq!(events.count(fd), Some(1));
    }
    assert_eq!(sim.raise_msix(bdf, 2), None, "vector 2 was never allocated");
    assert_eq!(events.count(x0), Some(0));
    let off = set_irqs(irq_index::MSIX, f::DATA_NONE | f::ACTION_TRIGGER, 0, 0, &[]);
    assert_eq!(ioctl_buf!(vfio, ioctl::DEVICE_SET_IRQS, off).0, Ok(0));

    // ---- FLR through VFIO_DEVICE_RESET: the hardware loses BARs and Command, the core
    // puts them back.
    let mut pci = sim.pci();
    let bar0 = pci.config_read(bdf, 0x10, Width::Dword).unwrap();
    let cmd = pci.config_read(bdf, 0x04, Width::Word).unwrap();
    let resets = sim.reset_count(bdf).unwrap();
    assert_eq!(vfio.ioctl(dev, ioctl::DEVICE_RESET, Arg::None), Ok(0));
    assert_eq!(sim.reset_count(bdf), Some(resets + 1));
    assert_eq!(pci.config_read(bdf, 0x10, Width::Dword), Ok(bar0));
    assert_eq!(pci.config_read(bdf, 0x04, Width::Word), Ok(cmd));

    // ---- hot reset: info (ENOSPC with the count, then the entries), then the reset
    // with the group fd as ownership proof.
    let (r, b) = ioctl_buf!(
        vfio,
        ioctl::DEVICE_GET_PCI_HOT_RESET_INFO,
        words(&[12, 0, 0])
    );
    assert_eq!((r, le32(&b, 8)), (Err(Errno::ENOSPC), 2));
    let mut info = words(&[12 + 8 * 2, 0, 0]);
    info.resize(12 + 8 * 2, 0);
    let (r, b) = ioctl_buf!(vfio, ioctl::DEVICE_GET_PCI_HOT_RESET_INFO, info);
    assert_eq!(r, Ok(0));
    assert_eq!(le32(&b, 8), 2);
    assert_eq!((le32(&b, 12), b[18], b[19]), (GROUP, 0x05, 0x00));
    assert_eq!((le32(&b, 20), b[26], b[27]), (GROUP, 0x05, 0x01));
    let (r, _) = ioctl_buf!(
        vfio,
        ioctl::DEVICE_PCI_HOT_RESET,
        words(&[16, 0, 1, dev.raw() as u32]),
    );
    assert_eq!(r, Err(Errno::EINVAL), "a device fd proves nothing");
    let bus_resets = sim.bus_reset_count();
    let (r, _) = ioctl_buf!(
        vfio,
        ioctl::DEVICE_PCI_HOT_RESET,
        words(&[16, 0, 1, group.raw() as u32]),
    );
    assert_eq!(r, Ok(0));
    assert_eq!(sim.bus_reset_count(), bus_resets + 1);
    assert_eq!(pci.config_read(bdf, 0x10, Width::Dword), Ok(bar0));

    // ---- release.
    vfio.close(dev).unwrap();
    assert!(!sim.user_open(bdf));
    vfio.close(group).unwrap();
    vfio.close(container).unwrap();
    assert!(sim.take_faults().is_empty());
    assert!(sim.violations().is_empty());
}
