// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared scaffolding for the harnesses that run the core on the simulated
//! machine: a registry over a [`SimMachine`], corpus image loading, an input
//! cursor and the machine-wide invariants every harness checks.

use std::sync::OnceLock;

use vfio_core::abi::Arg;
use vfio_core::pci::{PciDevice, PciDriver};
use vfio_core::platform::{Bdf, GroupId, Prot};
use vfio_core::type1::DmaEntry;
use vfio_core::uapi::{self, extension, ioctl};
use vfio_core::vfio::{
    Config, ContainerSlot, DeviceId, DeviceSlot, Fd, FileSlot, GroupSlot, Storage, Vfio,
};
use vfio_core::Errno;
use vfio_sim::{
    corpus, Binding, SimEvent, SimEvents, SimFunction, SimIommu, SimMachine, SimMemory, SimPci,
};
use zerocopy::{FromBytes, IntoBytes};

/// The bus driver the harnesses use: vfio-pci over the simulated machine.
pub type Driver = PciDriver<SimPci, SimEvents>;
/// A registry over the simulated machine.
pub type Registry<'s> = Vfio<'s, SimIommu, SimMemory, Driver>;

/// DMA entries per container in the harness registries (small, so that the
/// "table full" path is reachable).
pub const DMA_ENTRIES: usize = 64;
/// Process address of the guest memory every harness allocates.
pub const GUEST_VADDR: u64 = 0x7f00_0000_0000;
/// Length of that guest memory in bytes.
pub const GUEST_LEN: u64 = 1 << 20;

/// Reads fuzzer input field by field; past the end every read is zero.
#[derive(Debug)]
pub struct Cursor<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data, at: 0 }
    }

    /// Whether every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.at >= self.data.len()
    }

    /// The next `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.at.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.at = end;
        &self.data[start..end]
    }

    /// The next byte.
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// Whether the next byte is a multiple of `n` (true about once in `n`).
    pub fn one_in(&mut self, n: u8) -> bool {
        // Not `is_multiple_of`: tests/ (MSRV 1.85) includes this file.
        let rest = self.u8() % n.max(1);
        rest == 0
    }

    /// The next `N` bytes, zero-padded past the end of the input.
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        let got = self.bytes(N);
        b[..got.len()].copy_from_slice(got);
        b
    }

    /// The next little-endian `u16`.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// The next little-endian `u32`.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// The next little-endian `u64`.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A `u64` biased towards the values that matter for address arithmetic:
    /// small page multiples, values near `2^64`, and raw values.
    pub fn interesting_u64(&mut self) -> u64 {
        match self.u8() % 8 {
            0 => 0,
            1 => u64::from(self.u8()) << 12,
            2 => u64::from(self.u16()) << 12,
            3 => (u64::MAX - (u64::from(self.u16()) << 12)).wrapping_add(1),
            4 => u64::MAX - u64::from(self.u8()),
            5 => 1u64 << (self.u8() % 64),
            6 => u64::from(self.u32()),
            _ => self.u64(),
        }
    }

    /// A `u32` biased towards small values and values near `u32::MAX`.
    pub fn interesting_u32(&mut self) -> u32 {
        match self.u8() % 6 {
            0 => 0,
            1 | 2 => u32::from(self.u8() % 40),
            3 => u32::MAX - u32::from(self.u8() % 40),
            4 => 1u32 << (self.u8() % 32),
            _ => self.u32(),
        }
    }
}

/// Every corpus image that loads as a [`SimFunction`], with its file name,
/// loaded once per process.
pub fn corpus_functions() -> &'static [(String, SimFunction)] {
    static CACHE: OnceLock<Vec<(String, SimFunction)>> = OnceLock::new();
    CACHE.get_or_init(|| {
        let mut out: Vec<(String, SimFunction)> = corpus::entries()
            .into_iter()
            .filter_map(|e| corpus::load(&e.file).ok().map(|f| (e.file, f)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    })
}

/// Every corpus image's raw bytes, with its file name, loaded once per process.
pub fn corpus_images() -> &'static [(String, Vec<u8>)] {
    static CACHE: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    CACHE.get_or_init(|| {
        let mut out: Vec<(String, Vec<u8>)> = corpus::entries()
            .into_iter()
            .filter_map(|e| corpus::image(&e.file).map(|b| (e.file, b)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    })
}

/// The BDF of the single function of [`single_function_machine`].
pub fn primary_bdf() -> Bdf {
    Bdf::new(0, 1, 0, 0).expect("valid BDF")
}

/// A machine with `function` at [`primary_bdf`] in IOMMU group 1 and
/// [`GUEST_LEN`] bytes of guest RAM at [`GUEST_VADDR`].
pub fn single_function_machine(function: SimFunction) -> Option<SimMachine> {
    let sim = SimMachine::new();
    sim.add_function(primary_bdf(), function, 1).ok()?;
    sim.alloc(GUEST_VADDR, GUEST_LEN, vfio_sim::Backing::Ram)
        .ok()?;
    Some(sim)
}

/// Runs `body` with a fresh registry over `sim` whose devices are every
/// vfio-bound function of `sim` that vfio-pci accepts (registered in BDF order).
pub fn with_registry<R>(
    sim: &SimMachine,
    body: impl FnOnce(&mut Registry<'_>, &[(Bdf, GroupId, DeviceId)]) -> R,
) -> R {
    with_registry_config(sim, Config::default(), body)
}

/// [`with_registry`] with registry configuration `config`.
pub fn with_registry_config<R>(
    sim: &SimMachine,
    config: Config,
    body: impl FnOnce(&mut Registry<'_>, &[(Bdf, GroupId, DeviceId)]) -> R,
) -> R {
    let mut files = vec![FileSlot::EMPTY; 32];
    let mut dma = vec![DmaEntry::EMPTY; 2 * DMA_ENTRIES];
    let (dma0, dma1) = dma.split_at_mut(DMA_ENTRIES);
    let mut containers = vec![ContainerSlot::new(dma0), ContainerSlot::new(dma1)];
    let mut groups = vec![GroupSlot::EMPTY; 4];
    let mut devices: Vec<DeviceSlot<PciDevice<SimEvent>>> =
        (0..4).map(|_| DeviceSlot::new()).collect();
    let storage = Storage {
        files: &mut files,
        containers: &mut containers,
        groups: &mut groups,
        devices: &mut devices,
    };
    let driver = PciDriver::new(sim.pci(), sim.events());
    let mut vfio = Vfio::new(sim.iommu(), sim.memory(), driver, storage, config);
    let mut registered = Vec::new();
    for bdf in sim.functions() {
        if sim.binding(bdf) != Some(Binding::Vfio) {
            continue;
        }
        let Some(group) = sim.group_of(bdf) else {
            continue;
        };
        let Ok(state) = vfio.driver_mut().probe(bdf) else {
            continue;
        };
        if let Ok(id) = vfio.register_device(&bdf.to_string(), group, state) {
            registered.push((bdf, group, id));
        }
    }
    body(&mut vfio, &registered)
}

/// Open handles of a device assignment made by [`assign`].
#[derive(Debug, Clone, Copy)]
pub struct Assigned {
    /// The container.
    pub container: Fd,
    /// The group file.
    pub group: Fd,
    /// The device file.
    pub device: Fd,
}

/// Assigns the device `name` of IOMMU group `group` through the ABI, as a VMM
/// does: open a container and the group, attach, select Type1v2 (or Type1 when
/// `v1`), open the device.
///
/// # Errors
/// The errno of the first step that failed (the caller decides whether that
/// is a bug: hostile images may legitimately fail to open).
pub fn assign(
    vfio: &mut Registry<'_>,
    group: GroupId,
    name: &str,
    v1: bool,
) -> Result<Assigned, Errno> {
    let container = vfio.open_container()?;
    let group_fd = vfio.open_group(group)?;
    let mut raw = container.raw().to_le_bytes();
    vfio.ioctl(group_fd, ioctl::GROUP_SET_CONTAINER, Arg::Buffer(&mut raw))?;
    let kind = if v1 {
        extension::TYPE1_IOMMU
    } else {
        extension::TYPE1V2_IOMMU
    };
    vfio.ioctl(container, ioctl::SET_IOMMU, Arg::Value(u64::from(kind)))?;
    let mut name_buf = name.as_bytes().to_vec();
    name_buf.push(0);
    let device = vfio.ioctl(
        group_fd,
        ioctl::GROUP_GET_DEVICE_FD,
        Arg::Buffer(&mut name_buf),
    )?;
    let device = Fd::from_raw(i32::try_from(device).map_err(|_| Errno::EINVAL)?);
    Ok(Assigned {
        container,
        group: group_fd,
        device,
    })
}

/// The vector count GET_IRQ_INFO reports for each of the indexes `0..N` of
/// `device` (0 where it refuses).
pub fn irq_counts<const N: usize>(vfio: &mut Registry<'_>, device: Fd) -> [u32; N] {
    let mut counts = [0u32; N];
    for (index, count) in counts.iter_mut().enumerate() {
        let info = uapi::IrqInfo {
            argsz: 16,
            index: index as u32,
            ..Default::default()
        };
        let mut bytes = info.as_bytes().to_vec();
        if vfio
            .ioctl(device, ioctl::DEVICE_GET_IRQ_INFO, Arg::Buffer(&mut bytes))
            .is_ok()
        {
            *count = uapi::IrqInfo::read_from_bytes(&bytes).map_or(0, |i| i.count);
        }
    }
    counts
}

/// Assigns the first registered device (Type1v2) through [`assign`]; `None`
/// when nothing is registered or the assignment fails.
pub fn assign_first(
    vfio: &mut Registry<'_>,
    registered: &[(Bdf, GroupId, DeviceId)],
) -> Option<Assigned> {
    let &(bdf, group, _) = registered.first()?;
    assign(vfio, group, &bdf.to_string(), false).ok()
}

/// Closes the device, group and container of `handles` (each close must
/// succeed), then checks that the primary function has no host vector left.
///
/// # Panics
/// When a close fails or a host vector is left.
pub fn close_freeing_vectors(sim: &SimMachine, vfio: &mut Registry<'_>, handles: &Assigned) {
    for fd in [handles.device, handles.group, handles.container] {
        assert_eq!(vfio.close(fd), Ok(()));
    }
    let vectors = sim
        .function(primary_bdf())
        .map(|f| f.host_vectors())
        .unwrap_or_default();
    assert_eq!(
        vectors,
        Default::default(),
        "closing the device frees every host vector"
    );
}

/// [`check_machine`] against the DMA entries of `container` (none when it is
/// not an open container).
///
/// # Panics
/// When an invariant does not hold.
pub fn check_container(sim: &SimMachine, vfio: &Registry<'_>, container: Fd) {
    let entries = vfio
        .container_mappings(container)
        .map(Iterator::collect::<Vec<_>>)
        .unwrap_or_default();
    check_machine(sim, &entries);
}

/// The machine-wide safety invariants, checked after every harness step.
///
/// * the core never misused the platform contract (`SimMachine::violations`);
/// * every page any IOMMU domain translates lies inside a DMA entry of an open
///   container, with no more permission than the entry grants (no DMA can
///   reach memory that is not mapped).
///
/// # Panics
/// When an invariant does not hold.
pub fn check_machine(sim: &SimMachine, entries: &[vfio_core::type1::Mapping]) {
    let violations = sim.violations();
    assert!(
        violations.is_empty(),
        "platform contract violated: {violations:?}"
    );
    for domain in sim.domains() {
        for (iova, pte) in sim.domain_mappings(domain) {
            let inside = entries.iter().any(|e| {
                iova >= e.iova
                    && (iova - e.iova)
                        .checked_add(pte.size)
                        .is_some_and(|end| end <= e.size)
                    && e.prot.contains(pte.prot & (Prot::READ | Prot::WRITE))
            });
            assert!(
                inside,
                "domain {domain:?} translates IOVA {iova:#x} ({pte:?}) outside every DMA entry {entries:?}"
            );
        }
    }
}

/// After everything was closed: no domain, nothing pinned, nothing claimed.
///
/// # Panics
/// When the machine is not clean.
pub fn check_clean(sim: &SimMachine) {
    assert!(
        sim.domains().is_empty(),
        "domains left: {:?}",
        sim.domains()
    );
    assert_eq!(sim.pinned_pages(), 0, "pages still pinned");
    assert_eq!(sim.unbalanced_unpins(), 0, "unbalanced unpins");
    let violations = sim.violations();
    assert!(
        violations.is_empty(),
        "platform contract violated: {violations:?}"
    );
}
