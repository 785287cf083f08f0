//! vfio-pci: config-space virtualization, regions, IRQ indexes and resets (spec/03–05).
