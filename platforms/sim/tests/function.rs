//! Config-space images, BAR inference and hardware write behaviour of `SimFunction`.

use vfio_core::platform::{BarKind, Width};
use vfio_core::Errno;
use vfio_sim::{corpus, infer_bar_sizes, ImageError, ResetRestore, SimFunction, WriteModel};

fn cfg(f: &SimFunction, at: u16, w: Width) -> u32 {
    f.config_read(at, w).expect("in range")
}

#[test]
fn every_type0_corpus_image_of_256_bytes_or_more_loads() {
    let entries = corpus::entries();
    assert_eq!(entries.len(), 91, "index.toml lists 91 images");
    let mut loaded = 0;
    for e in &entries {
        let bytes = corpus::image(&e.file).expect("image present");
        let type0 = bytes.get(0x0e).is_some_and(|h| h & 0x7f == 0);
        if type0 && bytes.len() >= 256 {
            let f = SimFunction::from_image(&bytes)
                .unwrap_or_else(|err| panic!("{} refused: {err}", e.file));
            assert!(matches!(f.config_size(), 256 | 4096));
            // Reads at every aligned offset succeed, the ID matches the image.
            assert_eq!(
                cfg(&f, 0, Width::Word),
                u32::from(bytes[0]) | u32::from(bytes[1]) << 8
            );
            for bar in 0..6 {
                let spec = f.bar_spec(bar).expect("bar 0..=5");
                assert!(spec.size == 0 || spec.size.is_power_of_two(), "{}", e.file);
            }
            loaded += 1;
        }
    }
    assert_eq!(loaded, 60, "62 type-0 images, two of them 64-byte dumps");
}

#[test]
fn bridges_are_refused_naming_the_header_type() {
    let f = corpus::load("8086-244e-82801-pci-bridge.bin").expect_err("bridge");
    assert_eq!(
        f.to_string(),
        "header type 1 (PCI-to-PCI bridge) cannot be assigned"
    );
    let f = corpus::load("104c-ac56-pci1510-cardbus.bin").expect_err("cardbus");
    assert!(f.to_string().contains("header type 2 (CardBus bridge)"));
    let mut bytes = vec![0u8; 256];
    bytes[0] = 0x86;
    bytes[1] = 0x80;
    bytes[0x0e] = 0x85; // multifunction bit + undefined layout 5
    assert_eq!(
        SimFunction::from_image(&bytes).unwrap_err(),
        ImageError::UnknownHeaderType { header_type: 5 }
    );
}

#[test]
fn truncated_and_empty_images_are_refused_with_their_length() {
    let e = corpus::load("8086-1533-i210.bin").expect_err("64-byte dump");
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(e.to_string().contains("64 bytes"), "{e}");
    assert_eq!(SimFunction::from_image(&[]).unwrap_err(), ImageError::Empty);
    let mut long = vec![0u8; 320];
    long[0] = 0x86;
    assert_eq!(
        SimFunction::from_image(&long).unwrap_err(),
        ImageError::Truncated {
            len: 320,
            needed: 4096
        }
    );
    assert_eq!(
        SimFunction::from_image(&vec![0u8; 4097]).unwrap_err(),
        ImageError::TooLong { len: 4097 }
    );
}

#[test]
fn all_ones_vendor_means_no_device() {
    let bytes = vec![0xffu8; 256];
    let e = SimFunction::from_image(&bytes).unwrap_err();
    assert_eq!(e, ImageError::NoDevice { vendor_id: 0xffff });
    assert!(e.to_string().contains("no device"));
}

#[test]
fn looping_capability_chain_is_accepted_for_the_core_to_refuse() {
    let mut bytes = vec![0u8; 256];
    bytes[0..4].copy_from_slice(&[0x86, 0x80, 0x34, 0x12]);
    bytes[0x06] = 0x10; // capability list
    bytes[0x34] = 0x40;
    bytes[0x40] = 0x01; // PM -> 0x50
    bytes[0x41] = 0x50;
    bytes[0x50] = 0x05; // MSI -> 0x40: loop
    bytes[0x51] = 0x40;
    let f = SimFunction::from_image(&bytes).expect("loops are the core's problem");
    assert_eq!(f.capability(0x05), Some(0x50));
    assert_eq!(cfg(&f, 0x51, Width::Byte), 0x40);
}

#[test]
fn aliased_extended_space_is_a_256_byte_config_space() {
    let f = corpus::load("1002-7911-rs690-aliased.bin").expect("loads");
    assert_eq!(f.config_size(), 256);
    assert_eq!(f.config_read(0x100, Width::Dword), Err(Errno::EINVAL));
    let f = corpus::load("1000-0072-sas2008.bin").expect("loads");
    assert_eq!(f.config_size(), 4096);
}

#[test]
fn bar_sizes_follow_address_alignment_with_caps_and_no_overlap() {
    // sas2008: BAR0 I/O 0xb000, BAR1/2 mem64 0xf9ffc000, BAR3/4 mem64 0xf9f80000,
    // ROM 0xf9f00000.
    let f = corpus::load("1000-0072-sas2008.bin").expect("loads");
    let io = f.bar_spec(0).unwrap();
    assert_eq!((io.kind, io.size), (BarKind::Io, 256));
    let b1 = f.bar_spec(1).unwrap();
    assert_eq!((b1.kind, b1.size), (BarKind::Mem64, 0x4000));
    assert_eq!(
        f.bar_spec(2).unwrap().size,
        0,
        "upper half of a 64-bit pair"
    );
    // 0xf9f80000 is 512 KiB aligned but 0xf9ffc000 lies 496 KiB above: 256 KiB.
    assert_eq!(f.bar_spec(3).unwrap().size, 0x40000);
    assert_eq!(f.rom_size(), 64 << 10);
    // A 1 GiB-aligned BAR is capped at 256 MiB.
    let mut bytes = vec![0u8; 256];
    bytes[0x10..0x14].copy_from_slice(&0x4000_0000u32.to_le_bytes());
    bytes[0x14..0x18].copy_from_slice(&0x0000_e001u32.to_le_bytes());
    bytes[0x18..0x1c].copy_from_slice(&0x0000_0001u32.to_le_bytes()); // I/O at 0: unassigned
    let (bars, rom) = infer_bar_sizes(&bytes);
    assert_eq!(bars[0].size, 256 << 20);
    assert_eq!(bars[1].size, 256);
    assert_eq!((bars[2].kind, bars[2].size), (BarKind::Io, 0));
    assert_eq!(rom, 0);
}

#[test]
fn msix_table_and_pba_grow_their_bar() {
    let mut bytes = vec![0u8; 256];
    bytes[0..4].copy_from_slice(&[0x86, 0x80, 0x34, 0x12]);
    bytes[0x06] = 0x10;
    bytes[0x10..0x14].copy_from_slice(&0xfebf_1010u32.to_le_bytes()); // 16-byte aligned
    bytes[0x34] = 0x40;
    // MSI-X: 64 entries (1 KiB table) at BAR0 + 0x2000, PBA at BAR0 + 0x3000.
    bytes[0x40..0x4c]
        .copy_from_slice(&[0x11, 0x00, 0x3f, 0x00, 0x00, 0x20, 0, 0, 0x00, 0x30, 0, 0]);
    let f = SimFunction::from_image(&bytes).expect("loads");
    assert_eq!(f.bar_spec(0).unwrap().size, 0x4000);
    let m = f.msix_layout().unwrap();
    assert_eq!(
        (m.entries, m.table_bar, m.table_offset, m.pba_offset),
        (64, 0, 0x2000, 0x3000)
    );
}

#[test]
fn bar_sizing_reads_back_the_size_mask() {
    let mut f = corpus::load("1000-0072-sas2008.bin").expect("loads");
    f.config_write(0x10, Width::Dword, 0xffff_ffff).unwrap();
    assert_eq!(cfg(&f, 0x10, Width::Dword), 0xffff_ff01, "256-byte I/O BAR");
    f.config_write(0x14, Width::Dword, 0xffff_ffff).unwrap();
    f.config_write(0x18, Width::Dword, 0xffff_ffff).unwrap();
    assert_eq!(
        cfg(&f, 0x14, Width::Dword),
        0xffff_c004,
        "16 KiB 64-bit memory BAR"
    );
    assert_eq!(cfg(&f, 0x18, Width::Dword), 0xffff_ffff);
    f.config_write(0x30, Width::Dword, 0xffff_ffff).unwrap();
    assert_eq!(cfg(&f, 0x30, Width::Dword), 0xffff_0001, "64 KiB ROM");
    // Restoring the address works.
    f.config_write(0x14, Width::Dword, 0xf9ff_c000).unwrap();
    f.config_write(0x18, Width::Dword, 0).unwrap();
    assert_eq!(cfg(&f, 0x14, Width::Dword), 0xf9ff_c004);
    // Builder: explicit sizes.
    let mut raw = [0u8; 64];
    raw[0x10] = 0x0c; // mem64 prefetchable
    let mut f = SimFunction::builder(&raw, 256)
        .bar(0, BarKind::Mem64, true, 0x2_0000_0000)
        .build();
    f.config_write(0x10, Width::Dword, 0xffff_ffff).unwrap();
    f.config_write(0x14, Width::Dword, 0xffff_ffff).unwrap();
    assert_eq!(cfg(&f, 0x10, Width::Dword), 0x0000_000c);
    assert_eq!(cfg(&f, 0x14, Width::Dword), 0xffff_fffe, "8 GiB");
}

#[test]
fn status_error_bits_are_rw1c_and_ids_read_only() {
    let mut raw = [0u8; 64];
    raw[0..4].copy_from_slice(&[0x86, 0x80, 0x34, 0x12]);
    raw[0x06..0x08].copy_from_slice(&0xc010u16.to_le_bytes()); // parity+SERR, cap list
    let mut f = SimFunction::builder(&raw, 256).build();
    f.config_write(0x06, Width::Word, 0x4000).unwrap();
    assert_eq!(
        cfg(&f, 0x06, Width::Word),
        0x8010,
        "only the written 1 cleared"
    );
    f.config_write(0x06, Width::Word, 0x0010).unwrap();
    assert_eq!(
        cfg(&f, 0x06, Width::Word),
        0x8010,
        "Capabilities List is read-only"
    );
    f.config_write(0x04, Width::Dword, 0xffff_ffff).unwrap();
    assert_eq!(
        cfg(&f, 0x04, Width::Dword),
        0x0010_07ff,
        "Command bits 10:0; Status 1s cleared"
    );
    f.config_write(0x00, Width::Dword, 0).unwrap();
    assert_eq!(cfg(&f, 0x00, Width::Dword), 0x1234_8086);
    // INTx drives Status bit 3 whatever is written.
    f.set_intx(true);
    assert_eq!(cfg(&f, 0x06, Width::Word) & 0x8, 0x8);
    assert!(
        !f.intx_asserted(),
        "Command bit 10 (written above) masks the pin"
    );
    // RAM model: everything writable but bit 3 still follows INTx.
    let mut f = SimFunction::builder(&raw, 256)
        .write_model(WriteModel::Ram)
        .build();
    f.config_write(0x00, Width::Word, 0xabcd).unwrap();
    f.config_write(0x06, Width::Word, 0x0008).unwrap();
    assert_eq!(cfg(&f, 0x00, Width::Word), 0xabcd);
    assert_eq!(cfg(&f, 0x06, Width::Word), 0x0000);
}

#[test]
fn misaligned_or_out_of_range_config_access_is_refused() {
    let mut f = corpus::load("1000-0021-lsi-53c1010.bin").expect("loads");
    assert_eq!(f.config_read(0x02, Width::Dword), Err(Errno::EINVAL));
    assert_eq!(f.config_read(0x101, Width::Byte), Err(Errno::EINVAL));
    assert_eq!(f.config_read(0xfe, Width::Dword), Err(Errno::EINVAL));
    assert_eq!(f.config_write(0xffff, Width::Byte, 0), Err(Errno::EINVAL));
    assert!(f.config_read(0xfc, Width::Dword).is_ok());
}

#[test]
fn bar_memory_and_rom_contents() {
    let mut f = corpus::load("1000-0072-sas2008.bin").expect("loads");
    let mut buf = [0u8; 4];
    f.bar_read(1, 0x1fe, &mut buf).unwrap();
    assert_eq!(buf, [0xfe, 0xff, 0x00, 0x01]);
    f.bar_write(1, 0x100, &[0xde, 0xad]).unwrap();
    f.bar_read(1, 0xff, &mut buf).unwrap();
    assert_eq!(buf, [0xff, 0xde, 0xad, 0x02]);
    assert_eq!(
        f.bar_read(1, 0x3ffe, &mut buf),
        Err(Errno::EINVAL),
        "past the end"
    );
    assert_eq!(f.bar_read(2, 0, &mut buf), Err(Errno::EINVAL), "upper half");
    assert_eq!(f.bar_read(6, 0, &mut buf), Err(Errno::EINVAL));
    assert_eq!(f.bar_read(1, u64::MAX, &mut buf), Err(Errno::EINVAL));
    f.rom_read(0, &mut buf).unwrap();
    assert_eq!(buf, [0x55, 0xaa, 0x02, 0x03]);
    assert_eq!(f.rom_read(0xfffe, &mut buf), Err(Errno::EINVAL));
}

#[test]
fn resets_restore_or_keep_config_and_count() {
    let mut f = corpus::load("1000-0072-sas2008.bin").expect("loads");
    f.config_write(0x04, Width::Word, 0x0006).unwrap();
    f.bar_write(1, 0, &[0xaa]).unwrap();
    f.platform_reset(); // SaveRestore: config unchanged, BAR memory back to pattern
    assert_eq!(cfg(&f, 0x04, Width::Word), 0x0006);
    let mut b = [0u8; 1];
    f.bar_read(1, 0, &mut b).unwrap();
    assert_eq!(b, [0x00]);
    f.hardware_reset(); // raw: the power-on image
    let img = f.power_on_image();
    assert_eq!(
        cfg(&f, 0x04, Width::Word),
        u32::from(img[4]) | u32::from(img[5]) << 8
    );
    assert_eq!(f.reset_count(), 2);
    let mut f = SimFunction::builder(f.power_on_image(), 4096)
        .reset_restore(ResetRestore::PowerOn)
        .build();
    let line = cfg(&f, 0x3c, Width::Byte);
    f.config_write(0x3c, Width::Byte, 0x55).unwrap();
    f.platform_reset();
    assert_eq!(cfg(&f, 0x3c, Width::Byte), line);
}

#[test]
fn flr_through_device_control_resets_but_keeps_sticky_aer_bits() {
    // Find a corpus function with FLR and AER.
    let mut found = false;
    for e in corpus::entries() {
        let Ok(mut f) = corpus::load(&e.file) else {
            continue;
        };
        let Some(pcie) = f.capability(0x10) else {
            continue;
        };
        if !f.flr_capable() || f.config_size() != 4096 {
            continue;
        }
        let aer = (0x100..0x1000)
            .step_by(4)
            .find(|&at: &u16| at == 0x100 && cfg(&f, at, Width::Word) == 0x0001);
        f.config_write(0x3c, Width::Byte, 0x5a).unwrap();
        if let Some(aer) = aer {
            f.poke_config(usize::from(aer) + 4, &[0x10, 0, 0, 0]);
        }
        f.config_write(pcie + 8, Width::Word, 0x8000).unwrap();
        assert_eq!(f.reset_count(), 1, "{}", e.file);
        assert_eq!(
            cfg(&f, 0x3c, Width::Byte),
            u32::from(f.power_on_image()[0x3c])
        );
        if let Some(aer) = aer {
            assert_eq!(cfg(&f, aer + 4, Width::Dword) & 0x10, 0x10, "sticky");
            // RW1C clears it.
            f.config_write(aer + 4, Width::Dword, 0x10).unwrap();
            assert_eq!(cfg(&f, aer + 4, Width::Dword) & 0x10, 0);
        }
        found = true;
        break;
    }
    assert!(found, "some corpus function advertises FLR");
}

#[test]
fn msi_and_msix_enable_program_config_space() {
    let mut f = corpus::load("1000-0072-sas2008.bin").expect("loads");
    let msi = f.capability(0x05).unwrap();
    // Message Control 0x0080: 64-bit, MMC = 0 (one vector).
    assert_eq!(f.irq_vectors_alloc(false, 8), Ok(1));
    let ctl = cfg(&f, msi + 2, Width::Word);
    assert_eq!((ctl & 1, (ctl >> 4) & 7), (1, 0));
    f.irq_vectors_free();
    // Widen MMC to 8 vectors: 3 requested -> MME = 2 (four enabled).
    f.poke_config(usize::from(msi) + 2, &[0x86, 0x00]);
    assert_eq!(f.irq_vectors_alloc(false, 3), Ok(3));
    let ctl = cfg(&f, msi + 2, Width::Word);
    assert_eq!((ctl & 1, (ctl >> 4) & 7), (1, 2));
    assert_eq!(
        f.irq_vectors_alloc(true, 4),
        Err(Errno::EINVAL),
        "MSI already on"
    );
    assert_eq!(f.raise_msi(2), Some(2));
    assert_eq!(
        f.raise_msi(3),
        None,
        "enabled (four) but not allocated (three)"
    );
    f.irq_vectors_free();
    assert_eq!(cfg(&f, msi + 2, Width::Word) & 0x71, 0);
    assert_eq!(
        f.irq_vectors_alloc(true, 100),
        Ok(15),
        "Table Size 14: 15 entries"
    );
    let m = f.msix_layout().unwrap();
    assert_eq!(cfg(&f, m.cap + 2, Width::Word) & 0xc000, 0x8000);
    assert_eq!(f.raise_msix(14), Some(14));
    assert_eq!(f.raise_msix(15), None);
    f.irq_vectors_free();
    assert_eq!(f.raise_msix(0), None);
    assert_eq!(f.irq_vectors_alloc(true, 0), Err(Errno::EINVAL));
    let mut f = SimFunction::builder(f.power_on_image(), 4096)
        .vectors_available(3)
        .build();
    assert_eq!(f.irq_vectors_alloc(true, 8), Ok(3));
    let mut g = SimFunction::builder(&[0u8; 0], 256).build();
    assert_eq!(
        g.irq_vectors_alloc(false, 1),
        Err(Errno::EINVAL),
        "no MSI capability"
    );
}

#[test]
fn every_corpus_bar_sizes_like_hardware_and_holds_its_msix_table() {
    for e in corpus::entries() {
        let Ok(mut f) = corpus::load(&e.file) else {
            continue;
        };
        for bar in 0..6u8 {
            let spec = f.bar_spec(bar).unwrap();
            if spec.size == 0 {
                continue;
            }
            let at = 0x10 + 4 * u16::from(bar);
            let before = cfg(&f, at, Width::Dword);
            f.config_write(at, Width::Dword, 0xffff_ffff).unwrap();
            let flags = if spec.kind == BarKind::Io { 0x3 } else { 0xf };
            let mask = (!(spec.size - 1) as u32) & !flags;
            assert_eq!(
                cfg(&f, at, Width::Dword),
                mask | (before & flags),
                "{} BAR{bar}",
                e.file
            );
            f.config_write(at, Width::Dword, before).unwrap();
            assert_eq!(
                cfg(&f, at, Width::Dword),
                before,
                "{} BAR{bar} restore",
                e.file
            );
        }
        if let Some(m) = f.msix_layout() {
            let table = f.bar_spec(m.table_bar).filter(|s| s.size != 0);
            if let Some(spec) = table {
                let end = u64::from(m.table_offset) + u64::from(m.entries) * 16;
                assert!(
                    end <= spec.size,
                    "{}: MSI-X table fits BAR{}",
                    e.file,
                    m.table_bar
                );
            }
        }
    }
}
