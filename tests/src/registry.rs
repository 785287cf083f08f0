//! The system under test: `vfio_core`'s registry ([`Vfio`]) over the fixture platform,
//! adapted to the runner's [`Machine`] interface.

use std::collections::BTreeMap;

use vfio_core::abi::Arg;
use vfio_core::platform::{DomainId, GroupId};
use vfio_core::type1::{DmaEntry, Type1Config};
use vfio_core::vfio::{
    Config, ContainerSlot, DeviceId, DeviceSlot, FileSlot, GroupSlot, Registration, Storage, Vfio,
};
use vfio_core::{Errno, Result};

use crate::fixture::{FixtureIommu, FixtureMemory, TemplateDevice, TemplateDriver};
use crate::runner::{IoctlArg, Machine, Setup, Verdict};

/// Capacities of the storage given to the registry for one case.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// File slots.
    pub files: usize,
    /// Container slots.
    pub containers: usize,
    /// DMA entries per container (the Type1 map is capped at this many entries).
    pub dma_entries: usize,
    /// VFIO group slots.
    pub groups: usize,
    /// Device slots.
    pub devices: usize,
}

impl Default for Capacity {
    fn default() -> Self {
        Capacity {
            files: 64,
            containers: 4,
            dma_entries: 256,
            groups: 16,
            devices: 16,
        }
    }
}

/// The registry with the fixture platform, the template driver and the fixture's devices
/// registered.
pub type FixtureVfio<'s> = Vfio<'s, FixtureIommu, FixtureMemory, TemplateDriver>;

/// Adapts a [`FixtureVfio`] to the runner's [`Machine`] interface.
#[derive(Debug)]
pub struct RegistryMachine<'v, 's> {
    vfio: &'v mut FixtureVfio<'s>,
    /// Device ids by name, kept after unregistration (the registry forgets the name).
    ids: BTreeMap<String, DeviceId>,
}

impl<'v, 's> RegistryMachine<'v, 's> {
    /// Wraps `vfio`, remembering the ids of its currently registered devices.
    pub fn new(vfio: &'v mut FixtureVfio<'s>) -> Self {
        let ids = vfio
            .devices()
            .filter_map(|d| Some((vfio.device_name(d)?.to_string(), d)))
            .collect();
        RegistryMachine { vfio, ids }
    }
}

fn fd(raw: i32) -> vfio_core::vfio::Fd {
    vfio_core::vfio::Fd::from_raw(raw)
}

impl Machine for RegistryMachine<'_, '_> {
    fn open_container(&mut self) -> Result<i32> {
        self.vfio.open_container().map(|f| f.raw())
    }

    fn open_group(&mut self, group: GroupId) -> Result<i32> {
        self.vfio.open_group(group).map(|f| f.raw())
    }

    fn close(&mut self, raw: i32) -> Result<()> {
        self.vfio.close(fd(raw))
    }

    fn ioctl(&mut self, raw: i32, request: u32, arg: IoctlArg<'_>) -> Result<i64> {
        let arg = match arg {
            IoctlArg::None => Arg::None,
            IoctlArg::Value(v) => Arg::Value(v),
            IoctlArg::Buffer(b) => Arg::Buffer(b),
        };
        self.vfio.ioctl(fd(raw), request, arg)
    }

    fn unregister_device(&mut self, name: &str) -> Result<()> {
        let dev = self.vfio.device_by_name(name).ok_or(Errno::ENODEV)?;
        self.ids.insert(name.to_string(), dev);
        self.vfio.unregister_device(dev).map(|_| ())
    }

    fn advance_time(&mut self, ms: u64) {
        self.vfio.advance_time(ms);
    }

    fn unregister_status(&self, name: &str) -> Option<(bool, u32)> {
        let dev = *self.ids.get(name)?;
        let reg = self.vfio.device_registration(dev)?;
        if reg == Registration::Registered {
            return None;
        }
        let stats = self.vfio.device_stats(dev)?;
        Some((reg == Registration::Gone, stats.request_calls))
    }

    fn device_stats(&self, name: &str) -> Option<(u32, u32, u32)> {
        let dev = self
            .vfio
            .device_by_name(name)
            .or_else(|| self.ids.get(name).copied())?;
        let s = self.vfio.device_stats(dev)?;
        Some((s.open_count, s.open_calls, s.close_calls))
    }

    fn container_mappings(&self, raw: i32) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .vfio
            .container_mappings(fd(raw))?
            .iter()
            .map(|e| (e.iova, e.size))
            .collect())
    }

    fn container_domain_count(&self, raw: i32) -> Result<usize> {
        self.vfio.container_domain_count(fd(raw))
    }

    fn invalid_vaddr_iovas(&self, raw: i32) -> Result<Vec<u64>> {
        Ok(self
            .vfio
            .container_mappings(fd(raw))?
            .iter()
            .filter(|e| e.vaddr_invalid)
            .map(|e| e.iova)
            .collect())
    }

    fn group_domain(&self, group: GroupId) -> Option<DomainId> {
        self.vfio.group_domain(group)
    }
}

/// Builds the registry for one case — storage of `cap`, the fixture's IOMMU and memory,
/// the fixture's VFIO devices registered — and runs `body` against it.
///
/// # Errors
/// A message when a fixture device cannot be registered.
pub fn with_registry(
    setup: &Setup<'_>,
    cap: Capacity,
    body: &mut dyn FnMut(&mut dyn Machine) -> Verdict,
) -> std::result::Result<Verdict, String> {
    let mut dma: Vec<Vec<DmaEntry>> = (0..cap.containers)
        .map(|_| vec![DmaEntry::EMPTY; cap.dma_entries])
        .collect();
    let mut containers: Vec<ContainerSlot<'_>> = dma
        .iter_mut()
        .map(|d| ContainerSlot::new(d.as_mut_slice()))
        .collect();
    let mut files = vec![FileSlot::EMPTY; cap.files];
    let mut groups: Vec<GroupSlot> = (0..cap.groups).map(|_| GroupSlot::EMPTY).collect();
    let mut devices: Vec<DeviceSlot<TemplateDevice>> =
        (0..cap.devices).map(|_| DeviceSlot::new()).collect();
    let config = Config {
        type1: Type1Config {
            dma_entry_limit: setup
                .env
                .dma_entry_limit
                .unwrap_or(setup.spec.dma_entry_limit),
            allow_unsafe_interrupts: setup.spec.allow_unsafe_interrupts,
            ..Type1Config::default()
        },
    };
    let mut vfio = Vfio::new(
        setup.iommu.clone(),
        setup.memory.clone(),
        TemplateDriver,
        Storage {
            files: &mut files,
            containers: &mut containers,
            groups: &mut groups,
            devices: &mut devices,
        },
        config,
    );
    for (group, dev) in setup.spec.vfio_devices() {
        let template = setup
            .spec
            .templates
            .get(&dev.template)
            .cloned()
            .ok_or_else(|| format!("device {}: unknown template `{}`", dev.name, dev.template))?;
        let open_fails = setup
            .env
            .open_fails
            .as_ref()
            .filter(|(name, _)| *name == dev.name)
            .map(|(_, e)| *e);
        let state = TemplateDevice::new(&dev.name, template, open_fails);
        vfio.register_device(&dev.name, group, state)
            .map_err(|e| format!("register_device({}, group {group}): {}", dev.name, e.name()))?;
    }
    let mut machine = RegistryMachine::new(&mut vfio);
    Ok(body(&mut machine))
}

/// [`with_registry`] with the default [`Capacity`], in the shape of a
/// [`crate::runner::MachineBuilder`].
pub fn registry_builder(
    setup: &Setup<'_>,
    body: &mut dyn FnMut(&mut dyn Machine) -> Verdict,
) -> std::result::Result<Verdict, String> {
    with_registry(setup, Capacity::default(), body)
}
