//! Event recorder: a table of simulated file descriptors, some of them events
//! (eventfd-like counters), and the [`EventSink`] implementation.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use vfio_core::platform::EventSink;
use vfio_core::Errno;

/// First descriptor number handed out (small numbers look like stdio).
pub const FIRST_FD: i32 = 100;

/// The event token the core stores: the descriptor it was resolved from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SimEvent {
    /// Descriptor number (≥ [`FIRST_FD`]).
    pub fd: i32,
}

#[derive(Debug)]
struct Slot {
    open: Cell<bool>,
    event: bool,
    count: Cell<u64>,
}

#[derive(Debug, Default)]
struct Table {
    slots: RefCell<Vec<Slot>>,
    total: Cell<u64>,
}

/// Cloneable handle on the descriptor table. Descriptors are never reused, so a stale
/// token can never signal a newer event.
#[derive(Debug, Clone, Default)]
pub struct SimEvents {
    table: Rc<Table>,
}

impl SimEvents {
    /// A fresh, empty table.
    pub fn new() -> SimEvents {
        SimEvents::default()
    }

    fn open(&self, event: bool) -> i32 {
        let mut slots = self.table.slots.borrow_mut();
        let index = slots.len();
        slots.push(Slot {
            open: Cell::new(true),
            event,
            count: Cell::new(0),
        });
        FIRST_FD.saturating_add(i32::try_from(index).unwrap_or(i32::MAX))
    }

    /// Opens a new event descriptor (an eventfd) with count 0; returns its number:
    /// [`FIRST_FD`] for the first descriptor of the table, then one more per descriptor
    /// opened (events and non-events share the numbering; numbers are never reused).
    pub fn create_event(&self) -> i32 {
        self.open(true)
    }

    /// Opens a descriptor that is not an event (resolving it fails with `EINVAL`).
    pub fn create_non_event(&self) -> i32 {
        self.open(false)
    }

    /// Closes `fd`; later `resolve` fails with `EBADF` and signals are dropped (its count
    /// stays readable). Returns false when `fd` was never opened or is already closed.
    pub fn close(&self, fd: i32) -> bool {
        self.with_slot(fd, |s| s.open.replace(false))
            .unwrap_or(false)
    }

    fn with_slot<R>(&self, fd: i32, f: impl FnOnce(&Slot) -> R) -> Option<R> {
        let index = usize::try_from(fd.checked_sub(FIRST_FD)?).ok()?;
        let slots = self.table.slots.try_borrow().ok()?;
        slots.get(index).map(f)
    }

    /// Signals received by event `fd` since it was opened or last read with
    /// [`take`](Self::take), open or closed (`None` when `fd` was never opened or is not
    /// an event).
    pub fn count(&self, fd: i32) -> Option<u64> {
        self.with_slot(fd, |s| s.event.then(|| s.count.get()))
            .flatten()
    }

    /// Reads and resets the counter of event `fd`, like `read(2)` on an eventfd (which
    /// would block on 0; this returns `Some(0)`). `None` as for [`count`](Self::count).
    pub fn take(&self, fd: i32) -> Option<u64> {
        self.with_slot(fd, |s| s.event.then(|| s.count.replace(0)))
            .flatten()
    }

    /// Signals delivered to open events since the table was created.
    pub fn total_signals(&self) -> u64 {
        self.table.total.get()
    }

    /// Signals `fd` from outside the core (the user writing 1 to an eventfd): adds one to
    /// its count (saturating) and to [`total_signals`](Self::total_signals). Returns false,
    /// changing nothing, when `fd` is not an open event.
    pub fn signal_fd(&self, fd: i32) -> bool {
        let hit = self
            .with_slot(fd, |s| {
                if s.event && s.open.get() {
                    s.count.set(s.count.get().saturating_add(1));
                    true
                } else {
                    false
                }
            })
            .unwrap_or(false);
        if hit {
            self.table
                .total
                .set(self.table.total.get().saturating_add(1));
        }
        hit
    }
}

impl EventSink for SimEvents {
    type Event = SimEvent;

    fn resolve(&mut self, fd: i32) -> Result<SimEvent, Errno> {
        match self.with_slot(fd, |s| (s.open.get(), s.event)) {
            Some((true, true)) => Ok(SimEvent { fd }),
            Some((true, false)) => Err(Errno::EINVAL),
            _ => Err(Errno::EBADF),
        }
    }

    /// Increments the event's counter; never blocks or allocates. Signals to a closed
    /// descriptor are dropped.
    fn signal(&self, event: SimEvent) {
        self.signal_fd(event.fd);
    }

    /// The token is the descriptor number (never `u32::MAX`: descriptors are positive).
    fn event_token(&self, event: SimEvent) -> Option<u32> {
        u32::try_from(event.fd).ok()
    }

    fn token_event(&self, token: u32) -> Option<SimEvent> {
        i32::try_from(token).ok().map(|fd| SimEvent { fd })
    }
}
