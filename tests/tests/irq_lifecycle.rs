//! Device lifecycle over the simulated machine through the registry: a failed first
//! open undoes what it did, the release-time bus reset waits for every affected
//! function to be unused, and a device being removed asks for itself back (REQ) again
//! and again until it is released.

use vfio_core::abi::Arg;
use vfio_core::pci::{PciDevice, PciDriver};
use vfio_core::platform::{Bdf, PciAccess, ResetMethod, Width};
use vfio_core::type1::DmaEntry;
use vfio_core::uapi::{extension, ioctl, irq_index, irq_set_flags as f};
use vfio_core::vfio::{
    Config, ContainerSlot, DeviceSlot, Fd, FileSlot, GroupSlot, Registration, Storage, Vfio,
    REQUEST_INTERVAL_MS,
};
use vfio_core::Errno;
use vfio_sim::{corpus, Binding, SimEvent, SimMachine};

fn bdf(s: &str) -> Bdf {
    Bdf::parse(s).unwrap()
}

/// Builds the registry `$vfio` over `$sim` with every function of the machine
/// registered under its BDF.
macro_rules! registry {
    ($sim:expr, $vfio:ident) => {
        let mut files = vec![FileSlot::EMPTY; 32];
        let mut dma = vec![DmaEntry::EMPTY; 64];
        let mut containers = vec![ContainerSlot::new(&mut dma)];
        let mut groups = vec![GroupSlot::EMPTY; 8];
        let mut devices: Vec<DeviceSlot<PciDevice<SimEvent>>> =
            (0..8).map(|_| DeviceSlot::new()).collect();
        let mut $vfio = Vfio::new(
            $sim.iommu(),
            $sim.memory(),
            PciDriver::new($sim.pci(), $sim.events()),
            Storage {
                files: &mut files,
                containers: &mut containers,
                groups: &mut groups,
                devices: &mut devices,
            },
            Config::default(),
        );
        for b in $sim.functions() {
            let group = $sim.group_of(b).unwrap();
            let state = $vfio.driver_mut().probe(b).unwrap();
            $vfio.register_device(&b.to_string(), group, state).unwrap();
        }
    };
}

/// Opens group `group` into a fresh container (Type1v2); returns (container, group fd).
fn attach<I, M, D>(vfio: &mut Vfio<'_, I, M, D>, group: u32) -> (Fd, Fd)
where
    I: vfio_core::platform::Iommu,
    M: vfio_core::platform::HostMemory,
    D: vfio_core::vfio::BusDriver,
{
    let container = vfio.open_container().unwrap();
    let g = vfio.open_group(group).unwrap();
    let mut c = container.raw().to_le_bytes().to_vec();
    vfio.ioctl(g, ioctl::GROUP_SET_CONTAINER, Arg::Buffer(&mut c))
        .unwrap();
    vfio.ioctl(
        container,
        ioctl::SET_IOMMU,
        Arg::Value(u64::from(extension::TYPE1V2_IOMMU)),
    )
    .unwrap();
    (container, g)
}

fn open_device<I, M, D>(vfio: &mut Vfio<'_, I, M, D>, group: Fd, name: &str) -> Result<Fd, Errno>
where
    I: vfio_core::platform::Iommu,
    M: vfio_core::platform::HostMemory,
    D: vfio_core::vfio::BusDriver,
{
    let mut n = name.as_bytes().to_vec();
    n.push(0);
    vfio.ioctl(group, ioctl::GROUP_GET_DEVICE_FD, Arg::Buffer(&mut n))
        .map(|fd| Fd::from_raw(fd as i32))
}

#[test]
fn failed_first_open_undoes_the_enable() {
    let sim = SimMachine::new();
    let a = bdf("0000:05:00.0");
    sim.add_function(a, corpus::load("1000-0072-sas2008.bin").unwrap(), 5)
        .unwrap();
    let mut pci = sim.pci();
    // Bus master and decode on, as the host left it.
    pci.config_write(a, 0x04, Width::Word, 0x0007).unwrap();
    registry!(sim, vfio);
    let (_, g) = attach(&mut vfio, 5);
    sim.set_reset_contended(a, true);
    assert_eq!(
        open_device(&mut vfio, g, "0000:05:00.0"),
        Err(Errno::EAGAIN)
    );
    // Bus master stays off (cleared before anything else), the rest as it was.
    assert_eq!(pci.config_read(a, 0x04, Width::Word), Ok(0x0003));
    assert!(!sim.user_open(a));
    let id = vfio.device_by_name("0000:05:00.0").unwrap();
    let (_, state) = vfio.device_parts(id).unwrap();
    assert!(!state.is_open() && !state.reset_works());
    // Uncontended: opens, and the platform knows it is in use.
    sim.set_reset_contended(a, false);
    let dev = open_device(&mut vfio, g, "0000:05:00.0").unwrap();
    assert!(sim.user_open(a));
    vfio.close(dev).unwrap();
    assert!(!sim.user_open(a));
}

#[test]
fn release_bus_reset_waits_for_every_affected_function() {
    let sim = SimMachine::new();
    let (a, b, host) = (
        bdf("0000:06:00.0"),
        bdf("0000:06:00.1"),
        bdf("0000:06:01.0"),
    );
    let f = corpus::load("1000-0072-sas2008.bin").unwrap();
    sim.add_function(a, f.clone(), 6).unwrap();
    sim.add_function(b, f.clone(), 6).unwrap();
    for d in [a, b] {
        // No function reset: every close leaves the function needing a bus reset.
        sim.set_reset_supported(d, ResetMethod::Function, false);
    }
    registry!(sim, vfio);
    let (_, g) = attach(&mut vfio, 6);
    let da = open_device(&mut vfio, g, "0000:06:00.0").unwrap();
    let db = open_device(&mut vfio, g, "0000:06:00.1").unwrap();
    vfio.close(da).unwrap();
    assert_eq!(sim.bus_reset_count(), 0, "06:00.1 is still open");
    vfio.close(db).unwrap();
    assert_eq!(sim.bus_reset_count(), 1, "last user gone: one bus reset");
    // A function bound to a host driver on the bus forbids it.
    sim.add_function(host, f, 7).unwrap();
    sim.bind_driver(host, Binding::Host).unwrap();
    let da = open_device(&mut vfio, g, "0000:06:00.0").unwrap();
    vfio.close(da).unwrap();
    assert_eq!(sim.bus_reset_count(), 1, "06:01.0 belongs to the host");
    // So does a function some other user has open.
    sim.bind_driver(host, Binding::Vfio).unwrap();
    sim.set_user_open(host, true);
    let da = open_device(&mut vfio, g, "0000:06:00.0").unwrap();
    vfio.close(da).unwrap();
    assert_eq!(sim.bus_reset_count(), 1);
    sim.set_user_open(host, false);
    let da = open_device(&mut vfio, g, "0000:06:00.0").unwrap();
    vfio.close(da).unwrap();
    assert_eq!(sim.bus_reset_count(), 2);
}

#[test]
fn removal_repeats_req_until_the_device_is_released() {
    let sim = SimMachine::new();
    let a = bdf("0000:05:00.0");
    sim.add_function(a, corpus::load("1000-0072-sas2008.bin").unwrap(), 5)
        .unwrap();
    let events = sim.events();
    registry!(sim, vfio);
    let (_, g) = attach(&mut vfio, 5);
    let dev = open_device(&mut vfio, g, "0000:05:00.0").unwrap();
    let req = events.create_event();
    let mut set = Vec::new();
    for v in [
        24u32,
        f::DATA_EVENTFD | f::ACTION_TRIGGER,
        irq_index::REQ,
        0,
        1,
    ] {
        set.extend_from_slice(&v.to_le_bytes());
    }
    set.extend_from_slice(&req.to_le_bytes());
    assert_eq!(
        vfio.ioctl(dev, ioctl::DEVICE_SET_IRQS, Arg::Buffer(&mut set)),
        Ok(0)
    );
    let id = vfio.device_by_name("0000:05:00.0").unwrap();
    assert_eq!(vfio.unregister_device(id), Ok(false), "still open");
    assert_eq!(events.count(req), Some(1), "asked at once");
    vfio.advance_time(REQUEST_INTERVAL_MS - 1);
    assert_eq!(events.count(req), Some(1));
    vfio.advance_time(1);
    assert_eq!(events.count(req), Some(2));
    vfio.advance_time(3 * REQUEST_INTERVAL_MS);
    assert_eq!(events.count(req), Some(5), "every interval until released");
    assert_eq!(
        vfio.device_registration(id),
        Some(Registration::Unregistering)
    );
    vfio.close(dev).unwrap();
    assert_eq!(vfio.device_registration(id), Some(Registration::Gone));
    vfio.advance_time(10 * REQUEST_INTERVAL_MS);
    assert_eq!(events.count(req), Some(5), "no request after release");
    assert!(!sim.user_open(a));
}
