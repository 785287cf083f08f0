// Shared by tests/tests/irq_race.rs and tests/benches/irq.rs.
#![allow(dead_code)]
//! Shared pieces of the interrupt race test and benchmark: a thread-safe event sink whose
//! tokens are descriptor numbers, and a mock function with a 2048-entry MSI-X table.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vfio_core::platform::{BarKind, BarResource, EventSink};
use vfio_core::Errno;

use vfio_tests::pci_mock::MockPci;

/// Number of descriptors the [`CountingSink`] knows (0..N are eventfds).
pub const SINK_FDS: usize = 4096;

/// Lock-free signal counters, one per descriptor, shareable between threads.
#[derive(Debug, Clone)]
pub struct CountingSink(pub Arc<Vec<AtomicU64>>);

impl Default for CountingSink {
    fn default() -> Self {
        CountingSink(Arc::new((0..SINK_FDS).map(|_| AtomicU64::new(0)).collect()))
    }
}

impl CountingSink {
    /// Signals received by descriptor `fd`.
    pub fn count(&self, fd: usize) -> u64 {
        self.0.get(fd).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Signals received in total.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

impl EventSink for CountingSink {
    type Event = u32;

    fn resolve(&mut self, fd: i32) -> Result<u32, Errno> {
        match usize::try_from(fd) {
            Ok(i) if i < SINK_FDS => Ok(fd as u32),
            _ => Err(Errno::EBADF),
        }
    }

    #[inline]
    fn signal(&self, event: u32) {
        if let Some(c) = self.0.get(event as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn event_token(&self, event: u32) -> Option<u32> {
        Some(event)
    }

    #[inline]
    fn token_event(&self, token: u32) -> Option<u32> {
        Some(token)
    }
}

/// A PCIe-less function with MSI-X (2048 entries, table in BAR0) and an INTx pin.
pub fn msix_function() -> MockPci {
    let mut m = MockPci::blank(256);
    m.poke(0x00, 4, 0x1234_8086);
    m.poke(0x06, 2, 0x0010);
    m.poke(0x0A, 2, 0x0200);
    m.poke(0x10, 4, 0xFE00_0000);
    m.poke(0x34, 1, 0x40);
    m.poke(0x3D, 1, 0x01);
    m.poke(0x40, 2, 0x0011);
    m.poke(0x42, 2, 0x07FF);
    m.poke(0x44, 4, 0x0000_0000);
    m.poke(0x48, 4, 0x0000_8000);
    m.bars[0] = BarResource {
        kind: BarKind::Mem32,
        prefetch: false,
        start: 0xFE00_0000,
        size: 0x1_0000,
    };
    m
}
