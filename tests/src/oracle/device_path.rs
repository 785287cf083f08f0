//! The two ways the device replay reaches the vfio-pci driver: the typed API (the
//! [`PciDriver`] / [`BusDriver`] methods called directly) and the dispatcher
//! (`Vfio::ioctl` with the uapi structs and their argsz protocol, `Vfio::device_read` /
//! `Vfio::device_write` on a device file opened with `GROUP_GET_DEVICE_FD`).
//!
//! The dispatcher's registry runs over a minimal fixture platform: one IOMMU group (the
//! file's `sysfs.iommu_group`) holding the replayed function, attached to a Type1v2
//! container.

use serde_json::Value;
use vfio_core::abi::Arg;
use vfio_core::pci::PciDevice;
use vfio_core::type1::DmaEntry;
use vfio_core::uapi::{self, ioctl};
use vfio_core::vfio::{
    BusDriver, CapChain, Config, ContainerSlot, DeviceSlot, Fd, FileSlot, GroupSlot, Storage, Vfio,
};
use vfio_core::Errno;

use super::devices::Driver;
use crate::fixture::{Env, FixtureIommu, FixtureMemory, FixtureSpec};
use crate::pci_mock::MOCK_BDF;
use crate::registry::typed_set_irqs;

/// What `GET_REGION_INFO` answered: flags (with `CAPS` when a chain came back), size,
/// offset and the `argsz` written back.
pub(crate) struct RegionOut {
    pub flags: u32,
    pub size: u64,
    pub offset: u64,
    pub argsz_out: u64,
}

/// One replay path to the driver.
pub(crate) trait DevPath {
    /// The driver (for the mock's hardware model and the event log).
    fn driver(&mut self) -> &mut Driver;
    /// `DEVICE_GET_INFO`: flags, regions, irqs.
    fn device_info(&mut self) -> Result<(u32, u32, u32), Errno>;
    /// `DEVICE_GET_REGION_INFO` of `index` with a 32-byte argument.
    fn region_info(&mut self, index: u32) -> Result<RegionOut, Errno>;
    /// `DEVICE_GET_IRQ_INFO` of `index`: flags, count.
    fn irq_info(&mut self, index: u32) -> Result<(u32, u32), Errno>;
    /// `read()` of `n` bytes at `pos`.
    fn read(&mut self, pos: u64, n: usize) -> Result<Vec<u8>, Errno>;
    /// `write()` of `data` at `pos`.
    fn write(&mut self, pos: u64, data: &[u8]) -> Result<usize, Errno>;
    /// `DEVICE_SET_IRQS`: header and payload as the step describes them.
    fn set_irqs(&mut self, hdr: &uapi::IrqSet, data: &[u8]) -> Result<i64, Errno>;
    /// Runs `f` with the driver and the device state (sections replayed typed only).
    fn with_typed(&mut self, f: &mut dyn FnMut(&mut Driver, &mut PciDevice<i32>));
}

struct Typed<'a> {
    driver: &'a mut Driver,
    dev: &'a mut PciDevice<i32>,
}

impl DevPath for Typed<'_> {
    fn driver(&mut self) -> &mut Driver {
        self.driver
    }

    fn device_info(&mut self) -> Result<(u32, u32, u32), Errno> {
        let mut scratch = [0u8; 256];
        let i = self
            .driver
            .device_info(self.dev, &mut CapChain::new(&mut scratch))?;
        Ok((i.flags, i.num_regions, i.num_irqs))
    }

    fn region_info(&mut self, index: u32) -> Result<RegionOut, Errno> {
        let mut scratch = [0u8; 1024];
        let mut chain = CapChain::new(&mut scratch);
        let i = self.driver.region_info(self.dev, index, &mut chain)?;
        let caps = !chain.is_empty();
        Ok(RegionOut {
            flags: i.flags | if caps { uapi::region_flags::CAPS } else { 0 },
            size: i.size,
            offset: i.offset,
            argsz_out: if caps { 32 + chain.len() as u64 } else { 32 },
        })
    }

    fn irq_info(&mut self, index: u32) -> Result<(u32, u32), Errno> {
        let i = self.driver.irq_info(self.dev, index)?;
        Ok((i.flags, i.count))
    }

    fn read(&mut self, pos: u64, n: usize) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; n];
        let got = self.driver.read(self.dev, pos, &mut buf)?;
        buf.truncate(got);
        Ok(buf)
    }

    fn write(&mut self, pos: u64, data: &[u8]) -> Result<usize, Errno> {
        self.driver.write(self.dev, pos, data)
    }

    fn set_irqs(&mut self, hdr: &uapi::IrqSet, data: &[u8]) -> Result<i64, Errno> {
        typed_set_irqs(self.driver, self.dev, hdr, data)
    }

    fn with_typed(&mut self, f: &mut dyn FnMut(&mut Driver, &mut PciDevice<i32>)) {
        f(self.driver, self.dev);
    }
}

type PciVfio<'s> = Vfio<'s, FixtureIommu, FixtureMemory, Driver>;

struct Dispatcher<'a, 's> {
    vfio: &'a mut PciVfio<'s>,
    fd: Fd,
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn get64(b: &[u8], at: usize) -> u64 {
    u64::from(get32(b, at)) | u64::from(get32(b, at + 4)) << 32
}

impl DevPath for Dispatcher<'_, '_> {
    fn driver(&mut self) -> &mut Driver {
        self.vfio.driver_mut()
    }

    fn device_info(&mut self) -> Result<(u32, u32, u32), Errno> {
        let mut b = [0u8; 24];
        put32(&mut b, 0, 24);
        self.vfio
            .ioctl(self.fd, ioctl::DEVICE_GET_INFO, Arg::Buffer(&mut b))?;
        Ok((get32(&b, 4), get32(&b, 8), get32(&b, 12)))
    }

    fn region_info(&mut self, index: u32) -> Result<RegionOut, Errno> {
        let mut b = [0u8; 32];
        put32(&mut b, 0, 32);
        put32(&mut b, 8, index);
        self.vfio
            .ioctl(self.fd, ioctl::DEVICE_GET_REGION_INFO, Arg::Buffer(&mut b))?;
        Ok(RegionOut {
            flags: get32(&b, 4),
            size: get64(&b, 16),
            offset: get64(&b, 24),
            argsz_out: u64::from(get32(&b, 0)),
        })
    }

    fn irq_info(&mut self, index: u32) -> Result<(u32, u32), Errno> {
        let mut b = [0u8; 16];
        put32(&mut b, 0, 16);
        put32(&mut b, 8, index);
        self.vfio
            .ioctl(self.fd, ioctl::DEVICE_GET_IRQ_INFO, Arg::Buffer(&mut b))?;
        Ok((get32(&b, 4), get32(&b, 12)))
    }

    fn read(&mut self, pos: u64, n: usize) -> Result<Vec<u8>, Errno> {
        let mut buf = vec![0u8; n];
        let got = self.vfio.device_read(self.fd, pos, &mut buf)?;
        buf.truncate(got);
        Ok(buf)
    }

    fn write(&mut self, pos: u64, data: &[u8]) -> Result<usize, Errno> {
        self.vfio.device_write(self.fd, pos, data)
    }

    fn set_irqs(&mut self, hdr: &uapi::IrqSet, data: &[u8]) -> Result<i64, Errno> {
        let mut b = vec![0u8; 20];
        put32(&mut b, 0, hdr.argsz);
        put32(&mut b, 4, hdr.flags);
        put32(&mut b, 8, hdr.index);
        put32(&mut b, 12, hdr.start);
        put32(&mut b, 16, hdr.count);
        b.extend_from_slice(data);
        self.vfio
            .ioctl(self.fd, ioctl::DEVICE_SET_IRQS, Arg::Buffer(&mut b))
    }

    fn with_typed(&mut self, f: &mut dyn FnMut(&mut Driver, &mut PciDevice<i32>)) {
        let _ = self.vfio.with_device(self.fd, |d, s| {
            f(d, s);
            Ok(())
        });
    }
}

/// The fixture platform of the dispatcher path: IOMMU group `group` with the function.
fn fixture(group: u32) -> Result<FixtureSpec, String> {
    let text = format!(
        r#"page_size = 4096
dma_entry_limit = 65535
memlock_pages = "unlimited"
[[memory]]
vaddr = "0x7f0000000000"
len = "0x100000"
phys = "0x100000000"
kind = "ram"
[iommu_profile.p]
ops = "A"
pgsize_bitmap = "0x40201000"
aperture = ["0x0", "0xffffffffffff"]
reserved = []
intr_remap = true
enforce_coherency = true
[device_template.t]
flags = 0
num_regions = 0
num_irqs = 0
reset = false
regions = []
irqs = []
[[group]]
id = {group}
profile = "p"
devices = [{{ name = "{MOCK_BDF}", binding = "vfio", template = "t" }}]
"#
    );
    let value: toml::Value = toml::from_str(&text).map_err(|e| format!("fixture: {e}"))?;
    FixtureSpec::from_toml(&value).map_err(|e| format!("fixture: {e}"))
}

/// Opens the function of `driver` (not yet opened) through one path and runs `f` on it;
/// `after_open` runs on the driver once the device is open (the file's open-time state).
///
/// # Errors
/// A message when the device cannot be opened.
pub(crate) fn session<R>(
    doc: &Value,
    mut driver: Driver,
    typed: bool,
    after_open: impl FnOnce(&mut Driver),
    f: impl FnOnce(&mut dyn DevPath) -> R,
) -> Result<R, String> {
    if typed {
        let mut dev = PciDevice::new(MOCK_BDF);
        driver
            .open_device(&mut dev)
            .map_err(|e| format!("open failed: {e:?}"))?;
        after_open(&mut driver);
        return Ok(f(&mut Typed {
            driver: &mut driver,
            dev: &mut dev,
        }));
    }
    let group = doc
        .pointer("/sysfs/iommu_group")
        .and_then(Value::as_u64)
        .or_else(|| {
            doc.pointer("/sysfs/iommu_group")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
        })
        .unwrap_or(1) as u32;
    let spec = fixture(group)?;
    let env = Env::default();
    let mut files = vec![FileSlot::EMPTY; 16];
    let mut dma = vec![DmaEntry::EMPTY; 16];
    let mut containers = vec![ContainerSlot::new(&mut dma)];
    let mut groups = vec![GroupSlot::EMPTY; 2];
    let mut devices: Vec<DeviceSlot<PciDevice<i32>>> = (0..2).map(|_| DeviceSlot::new()).collect();
    let mut vfio: PciVfio<'_> = Vfio::new(
        FixtureIommu::new(&spec),
        FixtureMemory::new(&spec, &env),
        driver,
        Storage {
            files: &mut files,
            containers: &mut containers,
            groups: &mut groups,
            devices: &mut devices,
        },
        Config::default(),
    );
    let e = |what: &str, e: Errno| format!("dispatcher set-up: {what}: {}", e.name());
    vfio.register_device(&MOCK_BDF.to_string(), group, PciDevice::new(MOCK_BDF))
        .map_err(|x| e("register_device", x))?;
    let container = vfio.open_container().map_err(|x| e("open_container", x))?;
    let g = vfio.open_group(group).map_err(|x| e("open_group", x))?;
    let mut raw = container.raw().to_le_bytes();
    vfio.ioctl(g, ioctl::GROUP_SET_CONTAINER, Arg::Buffer(&mut raw))
        .map_err(|x| e("GROUP_SET_CONTAINER", x))?;
    vfio.ioctl(container, ioctl::SET_IOMMU, Arg::Value(3))
        .map_err(|x| e("SET_IOMMU", x))?;
    let mut name = format!("{MOCK_BDF}\0").into_bytes();
    let fd = vfio
        .ioctl(g, ioctl::GROUP_GET_DEVICE_FD, Arg::Buffer(&mut name))
        .map_err(|x| e("GROUP_GET_DEVICE_FD", x))?;
    let fd = Fd::from_raw(i32::try_from(fd).map_err(|_| "bad device fd".to_string())?);
    after_open(vfio.driver_mut());
    Ok(f(&mut Dispatcher {
        vfio: &mut vfio,
        fd,
    }))
}
