// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! An IRQ-safe event sink: one atomic counter per slot.
//!
//! The bare-metal stand-in for an eventfd. The ABI's "file descriptor" for an
//! event is simply the slot index `0..N`. Interrupt handlers call
//! [`EventSink::signal`], which is a single lock-free atomic add; the consumer
//! (a task, a VM exit handler, a polling loop) reads and clears counts with
//! [`AtomicEventSink::take`].
//!
//! Needs native 32-bit atomic read-modify-write (`target_has_atomic = "32"`);
//! targets without it (e.g. `thumbv6m`) would need `portable-atomic`, which is
//! not wired in yet.

use core::sync::atomic::{AtomicU32, Ordering};

use vfio_core::platform::EventSink;
use vfio_core::Errno;

/// An event token of an [`AtomicEventSink`]: a slot index below its `N`.
///
/// Only [`EventSink::resolve`] creates one, so a `Slot` from a sink is always
/// in range for that sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot(u16);

impl Slot {
    /// The slot index (the descriptor number it was resolved from).
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// `N` event counters, signalled lock-free from interrupt context.
///
/// Each counter wraps around at 2³²; a consumer that calls
/// [`take`](Self::take) at least once per 2³² signals never sees a wrap.
/// `N` may be at most 65 536 (slot indexes are 16-bit).
#[derive(Debug)]
pub struct AtomicEventSink<const N: usize> {
    counters: [AtomicU32; N],
}

impl<const N: usize> AtomicEventSink<N> {
    /// All counters zero. Usable in a `static`.
    pub const fn new() -> Self {
        const { assert!(N <= 1 << 16, "AtomicEventSink holds at most 65536 slots") };
        AtomicEventSink {
            counters: [const { AtomicU32::new(0) }; N],
        }
    }

    /// The number of slots, `N`.
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Signals received by slot `index` since the last [`take`](Self::take);
    /// `None` when `index ≥ N`.
    pub fn count(&self, index: usize) -> Option<u32> {
        self.counters.get(index).map(|c| c.load(Ordering::Acquire))
    }

    /// Returns and clears the count of slot `index` (like reading an eventfd);
    /// `None` when `index ≥ N`. Lock-free; safe to race with `signal`: every
    /// signal is counted by exactly one `take`.
    pub fn take(&self, index: usize) -> Option<u32> {
        self.counters
            .get(index)
            .map(|c| c.swap(0, Ordering::AcqRel))
    }
}

impl<const N: usize> Default for AtomicEventSink<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Descriptor `fd` as a slot of a sink of `N` slots (`EBADF` when negative or ≥ `N`).
fn slot_of<const N: usize>(fd: i32) -> Result<Slot, Errno> {
    let index = usize::try_from(fd).map_err(|_| Errno::EBADF)?;
    if index >= N {
        return Err(Errno::EBADF);
    }
    u16::try_from(index).map(Slot).map_err(|_| Errno::EBADF)
}

impl<const N: usize> EventSink for AtomicEventSink<N> {
    type Event = Slot;

    /// Descriptor `fd` names slot `fd`.
    ///
    /// # Errors
    /// `EBADF` when `fd` is negative or `fd ≥ N`.
    fn resolve(&mut self, fd: i32) -> Result<Slot, Errno> {
        slot_of::<N>(fd)
    }

    /// Adds one to the slot's counter: a single lock-free atomic add, with
    /// `Release` ordering so that data written before the signal is visible
    /// to the consumer's `take`. A `Slot` from a larger sink, out of range
    /// here, is ignored (never a panic in interrupt context).
    fn signal(&self, event: Slot) {
        if let Some(counter) = self.counters.get(event.index()) {
            counter.fetch_add(1, Ordering::Release);
        }
    }

    /// The token of a slot is its index (0 ≤ token < `N` ≤ 65 536, never `u32::MAX`), so
    /// the slots can be vfio-pci triggers kept in the core's atomic IRQ table
    /// ([`vfio_core::pci::IrqTable`]). `None` for a slot out of this sink's range.
    fn event_token(&self, event: Slot) -> Option<u32> {
        (event.index() < N).then_some(u32::from(event.0))
    }

    /// The slot of `token`; `None` when `token ≥ N`. Lock-free and allocation-free
    /// (interrupt context). Slots are never released, so a stale token still names a
    /// valid counter: a signal racing a trigger change lands in the old slot.
    fn token_event(&self, token: u32) -> Option<Slot> {
        let index = u16::try_from(token).ok()?;
        (usize::from(index) < N).then_some(Slot(index))
    }
}

/// A shared reference is a sink too: the bus driver can hold `&'static` of a sink in a
/// `static` while interrupt handlers signal through the same static.
impl<const N: usize> EventSink for &AtomicEventSink<N> {
    type Event = Slot;

    /// As [`AtomicEventSink`]'s `resolve`.
    fn resolve(&mut self, fd: i32) -> Result<Slot, Errno> {
        slot_of::<N>(fd)
    }

    fn signal(&self, event: Slot) {
        (**self).signal(event);
    }

    fn event_token(&self, event: Slot) -> Option<u32> {
        (**self).event_token(event)
    }

    fn token_event(&self, token: u32) -> Option<Slot> {
        (**self).token_event(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_maps_descriptors_to_slots() {
        let mut sink = AtomicEventSink::<4>::new();
        assert_eq!(sink.resolve(0).map(Slot::index), Ok(0));
        assert_eq!(sink.resolve(3).map(Slot::index), Ok(3));
        assert_eq!(sink.resolve(4), Err(Errno::EBADF));
        assert_eq!(sink.resolve(-1), Err(Errno::EBADF));
        assert_eq!(sink.resolve(i32::MAX), Err(Errno::EBADF));
        assert_eq!(AtomicEventSink::<0>::new().resolve(0), Err(Errno::EBADF));
    }

    #[test]
    fn signal_counts_and_take_clears() {
        let mut sink = AtomicEventSink::<2>::new();
        let slot = sink.resolve(1).unwrap();
        sink.signal(slot);
        sink.signal(slot);
        assert_eq!(sink.count(1), Some(2));
        assert_eq!(sink.count(0), Some(0));
        assert_eq!(sink.take(1), Some(2));
        assert_eq!(sink.take(1), Some(0));
        assert_eq!(sink.count(2), None);
        assert_eq!(sink.take(2), None);
        // A slot from a bigger sink is ignored, not a panic.
        let foreign = AtomicEventSink::<8>::new().resolve(7).unwrap();
        sink.signal(foreign);
        assert_eq!(sink.capacity(), 2);
    }

    #[test]
    fn tokens_round_trip_and_stay_in_range() {
        let mut sink = AtomicEventSink::<3>::new();
        for fd in 0..3 {
            let slot = sink.resolve(fd).unwrap();
            let token = sink.event_token(slot).unwrap();
            assert_ne!(token, u32::MAX);
            assert_eq!(sink.token_event(token), Some(slot));
            sink.signal(sink.token_event(token).unwrap());
            assert_eq!(sink.take(slot.index()), Some(1));
        }
        assert_eq!(sink.token_event(3), None);
        assert_eq!(sink.token_event(u32::MAX), None);
        assert_eq!(sink.token_event(1 << 16), None);
        let foreign = AtomicEventSink::<8>::new().resolve(7).unwrap();
        assert_eq!(sink.event_token(foreign), None);
    }

    #[test]
    fn concurrent_signals_are_all_counted() {
        static SINK: AtomicEventSink<1> = AtomicEventSink::new();
        let slot = Slot(0);
        let mut seen = 0u64;
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..10_000 {
                        SINK.signal(slot);
                    }
                });
            }
            for _ in 0..1000 {
                seen += u64::from(SINK.take(0).unwrap());
            }
        });
        seen += u64::from(SINK.take(0).unwrap());
        assert_eq!(seen, 40_000);
    }
}
