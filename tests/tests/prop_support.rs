// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Support for the property and regression tests (included with `#[path]`): the
//! three-group machine and a full-state snapshot. Compiled alone it holds no test.

use vfio_core::platform::{Bdf, HostMemory};
use vfio_core::vfio::Fd;
use vfio_sim::{corpus, Binding, SimMachine};

#[allow(dead_code)]
#[path = "../../fuzz/src/sim.rs"]
pub mod sim;

use sim::Registry;

/// Group 1: NVMe SSD alone (viable); group 2: GPU + its audio function bound to a host
/// driver (not viable); group 3: RTL8168 NIC alone (viable). Guest RAM at
/// `sim::GUEST_VADDR`.
pub fn machine() -> SimMachine {
    let sim = SimMachine::new();
    for (bdf, file, group) in [
        ("0000:01:00.0", "1344-5407-micron-3400-nvme.bin", 1),
        ("0000:02:00.0", "10de-0a65-gt218-geforce210.bin", 2),
        ("0000:02:00.1", "10de-0be3-gt218-hda.bin", 2),
        ("0000:03:00.0", "10ec-8168-rtl8111-8168.bin", 3),
    ] {
        let bdf = Bdf::parse(bdf).unwrap();
        sim.add_function(bdf, corpus::load(file).unwrap(), group)
            .unwrap();
    }
    sim.bind_driver(Bdf::parse("0000:02:00.1").unwrap(), Binding::Host)
        .unwrap();
    sim.alloc(sim::GUEST_VADDR, sim::GUEST_LEN, vfio_sim::Backing::Ram)
        .unwrap();
    sim
}

/// Everything observable about the registry and the machine, as text.
pub fn snapshot(sim: &SimMachine, vfio: &Registry<'_>, handles: &[Fd]) -> String {
    let mut out = String::new();
    for &fd in handles {
        out += &format!(
            "fd {fd:?}: {:?} {:?} {:?} {:?} {:?}\n",
            vfio.file_kind(fd),
            vfio.group_status(fd),
            vfio.container_mappings(fd).map(Iterator::collect::<Vec<_>>),
            vfio.type1(fd)
                .map(|t| t.map(|t| (t.is_v2(), t.domain_count()))),
            vfio.check_extension(fd, 4),
        );
    }
    for dev in vfio.devices() {
        out += &format!(
            "dev {dev:?}: {:?} {:?}\n",
            vfio.device_stats(dev),
            vfio.device_registration(dev)
        );
    }
    out += &format!("locked {}\n", vfio.memory().locked_pages());
    for domain in sim.domains() {
        out += &format!(
            "domain {domain:?}: {:?} {:?}\n",
            sim.domain_groups(domain),
            sim.domain_mappings(domain)
        );
    }
    for group in 1..=3 {
        out += &format!("group {group} claimed {}\n", sim.group_claimed(group));
    }
    for bdf in sim.functions() {
        let f = sim.function(bdf).unwrap();
        out += &format!(
            "fn {bdf}: {:?} vectors {:?} resets {}\n",
            f.config_bytes(),
            f.host_vectors(),
            f.reset_count()
        );
    }
    out += &format!(
        "pinned {} faults {}\n",
        sim.pinned_pages(),
        sim.faults().len()
    );
    out
}
