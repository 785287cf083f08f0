//! Unit tests of the fixture platform against the rules in the case schema.

use toml::Value;
use vfio_core::platform::{HostMemory, Iommu, MemoryKind, Prot};
use vfio_core::Errno;
use vfio_tests::fixture::{Binding, Env, FixtureIommu, FixtureMemory, FixtureSpec};

fn spec() -> FixtureSpec {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/cases/cases-core-type1.toml"
    ))
    .unwrap();
    let doc: toml::Table = text.parse().unwrap();
    FixtureSpec::from_toml(&doc["fixture"]).unwrap()
}

#[test]
fn groups_viability_and_ownership() {
    let spec = spec();
    let mut iommu = FixtureIommu::new(&spec);
    assert!(iommu.group_info(7).unwrap().emulated);
    assert!(!iommu.group_info(1).unwrap().emulated);
    assert!(!iommu.group_info(8).unwrap().intr_remap);
    assert!(iommu.group_info(99).is_none());
    assert!(!iommu.group_viable(3));
    assert_eq!(iommu.claim_dma_owner(3), Err(Errno::EPERM));
    assert_eq!(iommu.bind_driver("0000:03:00.1", Binding::Stub), Ok(()));
    assert!(iommu.group_viable(3));
    assert_eq!(iommu.claim_dma_owner(3), Ok(()));
    assert_eq!(iommu.claim_dma_owner(3), Err(Errno::EBUSY));
    assert_eq!(
        iommu.bind_driver("0000:03:00.1", Binding::Host),
        Err(Errno::EBUSY)
    );
    iommu.release_dma_owner(3);
    assert_eq!(iommu.bind_driver("0000:03:00.1", Binding::Host), Ok(()));
    assert!(!iommu.group_viable(3));
    assert_eq!(iommu.unbind_driver("0000:03:00.1"), Ok(()));
    assert!(iommu.group_viable(3));
    assert_eq!(iommu.bind_driver("nope", Binding::Stub), Err(Errno::ENODEV));
}

#[test]
fn domains_compatibility_and_translation() {
    let spec = spec();
    let mut iommu = FixtureIommu::new(&spec);
    let d = iommu.domain_alloc(1).unwrap();
    assert_eq!(d.pgsize_bitmap, 0x4020_1000);
    assert_eq!((d.aperture_start, d.aperture_end), (0, 0xffff_ffff_ffff));
    iommu.attach(d.id, 1).unwrap();
    // Same ops and coherency (std_rmrr): compatible. Different ops or coherency: not.
    assert_eq!(iommu.attach(d.id, 10), Ok(()));
    assert_eq!(iommu.attach(d.id, 4), Err(Errno::EINVAL));
    assert_eq!(iommu.attach(d.id, 6), Err(Errno::EINVAL));
    assert_eq!(iommu.domain_of(1), Some(d.id));
    let rw = Prot::READ | Prot::WRITE;
    assert_eq!(
        iommu.map(d.id, 0x1800, 0x1000, 0x1000, rw),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        iommu.map(d.id, 0x1000, 0x1800, 0x1000, rw),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        iommu.map(d.id, 0x1000, 0x1000, 0x800, rw),
        Err(Errno::EINVAL)
    );
    iommu
        .map(d.id, 0x10_0000, 0x1_0000_0000, 0x4000, rw)
        .unwrap();
    assert_eq!(
        iommu.map(d.id, 0x10_2000, 0, 0x1000, rw),
        Err(Errno::EEXIST)
    );
    assert_eq!(iommu.iova_to_phys(d.id, 0x10_1234), Some(0x1_0000_1234));
    assert_eq!(iommu.unmap(d.id, 0x10_1000, 0x2000), 0x2000);
    assert_eq!(iommu.iova_to_phys(d.id, 0x10_1000), None);
    assert_eq!(iommu.iova_to_phys(d.id, 0x10_3000), Some(0x1_0000_3000));
    assert_eq!(iommu.iova_to_phys(d.id, 0x10_0000), Some(0x1_0000_0000));
    assert_eq!(iommu.unmap(d.id, 0, u64::MAX), 0x2000);
    let reserved = iommu.reserved_region(10, 2).unwrap();
    assert_eq!((reserved.start, reserved.end), (0x20_0000, 0x2f_ffff));
    assert!(iommu.reserved_region(10, 3).is_none());
    let big = iommu.domain_alloc(4).unwrap();
    iommu.attach(big.id, 4).unwrap();
    assert_eq!(
        iommu.map(big.id, 0x10_0000, 0x1_0000_0000, 0x1000, rw),
        Err(Errno::EINVAL)
    );
}

#[test]
fn memory_pinning_and_limits() {
    let spec = spec();
    let mut env = Env::default();
    let mut mem = FixtureMemory::new(&spec, &env);
    assert_eq!(mem.page_size(), 4096);
    assert_eq!(mem.lock_limit_pages(), None);
    let run = mem.pin(0x7f00_0000_1000, 0x2000, true).unwrap();
    assert_eq!(
        (run.phys, run.len, run.kind),
        (0x1_0000_1000, 0x2000, MemoryKind::Ram)
    );
    assert_eq!(mem.pin(0x7f10_0000_0000, 0x1000, true), Err(Errno::EFAULT));
    assert_eq!(
        mem.pin(0x7f10_0000_0000, 0x1000, false).unwrap().kind,
        MemoryKind::Ram
    );
    let run = mem.pin(0x7f20_0000_0000, 0x20_0000, true).unwrap();
    assert_eq!((run.kind, run.len), (MemoryKind::Mmio, 0x10_0000));
    assert_eq!(mem.pin(0x1000, 0x1000, false), Err(Errno::EFAULT));
    mem.charge(3);
    mem.charge(-1);
    assert_eq!(mem.locked_pages(), 2);
    env.memlock_pages = Some(Some(4));
    env.lock_cap = Some(true);
    let mem = FixtureMemory::new(&spec, &env);
    assert_eq!(mem.lock_limit_pages(), Some(4));
    assert!(mem.lock_cap());
}

#[test]
fn env_parsing() {
    let v: Value = toml::from_str::<toml::Table>(
        "open_fails = { device = \"d\", errno = \"EIO\" }\nmemlock_pages = \"unlimited\"",
    )
    .map(Value::Table)
    .unwrap();
    let env = Env::from_toml(&v).unwrap();
    assert_eq!(env.open_fails, Some(("d".to_string(), Errno::EIO)));
    assert_eq!(env.memlock_pages, Some(None));
    let bad: Value = Value::Table(toml::from_str("frob = 1").unwrap());
    assert!(Env::from_toml(&bad).is_err());
}
