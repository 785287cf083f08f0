//! The interrupt-context half of vfio-pci's IRQ state (spec/04 §5–§6): a lock-free table
//! of triggers that interrupt handlers read while the control plane (`SET_IRQS`, close)
//! changes it.
//!
//! Every trigger is stored as a 32-bit *token* made by [`EventSink::event_token`]
//! (`u32::MAX` = no trigger). Interrupt entry points ([`IrqTable::msi_fired`],
//! [`IrqTable::intx_fired`], [`IrqTable::error_detected`], [`IrqTable::request`]) take
//! `&self`, do a few atomic loads (one compare-and-swap for INTx automasking) and one
//! [`EventSink::signal`]: they never block, allocate or take a lock.
//!
//! Memory: [`MAX_VECTORS`] (2048, the MSI-X maximum) × 4 bytes = 8 KiB per table plus
//! 16 bytes of scalars (`size_of::<IrqTable>()` = 8208 on x86_64). A
//! [`super::PciDevice`] holds its table inline by default; to run interrupt handlers on
//! another CPU, give it a shared handle instead (`&'static IrqTable`, `Arc<IrqTable>`;
//! [`super::PciDevice::with_table`]) and hand the same table to the handlers.
//!
//! Ordering: triggers are published with `Release` and read with `Acquire`; a signal that
//! races a trigger change may go to the old or the new trigger (the sink must tolerate a
//! stale token, see [`EventSink::token_event`]).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};

use super::IrqType;
use crate::platform::{EventSink, MsiKind};

/// Number of MSI/MSI-X vectors whose triggers a device can track: 2048, the MSI-X maximum
/// (MSI allows 32). GET_IRQ_INFO reports the real table size.
pub const MAX_VECTORS: usize = 2048;

/// Token value meaning "no trigger".
pub const NO_TOKEN: u32 = u32::MAX;

/// A stored token as an optional trigger ([`NO_TOKEN`] = `None`).
#[inline]
const fn some_token(t: u32) -> Option<u32> {
    if t == NO_TOKEN {
        None
    } else {
        Some(t)
    }
}

/// An optional trigger as a stored token (`None` = [`NO_TOKEN`]).
#[inline]
const fn stored(token: Option<u32>) -> u32 {
    match token {
        Some(t) => t,
        None => NO_TOKEN,
    }
}

const fn kind_code(kind: IrqType) -> u8 {
    match kind {
        IrqType::None => 0,
        IrqType::Intx => 1,
        IrqType::Msi => 2,
        IrqType::Msix => 3,
    }
}

const fn code_kind(code: u8) -> IrqType {
    match code {
        1 => IrqType::Intx,
        2 => IrqType::Msi,
        3 => IrqType::Msix,
        _ => IrqType::None,
    }
}

/// Lock-free trigger table of one PCI function (see the module documentation).
#[derive(Debug)]
pub struct IrqTable {
    kind: AtomicU8,
    intx_masked: AtomicBool,
    virq_disabled: AtomicBool,
    intx_trigger: AtomicU32,
    err: AtomicU32,
    req: AtomicU32,
    vectors: [AtomicU32; MAX_VECTORS],
}

impl Default for IrqTable {
    fn default() -> Self {
        IrqTable::new()
    }
}

impl Clone for IrqTable {
    /// A snapshot (each field loaded separately).
    fn clone(&self) -> Self {
        let t = IrqTable::new();
        t.kind
            .store(self.kind.load(Ordering::Acquire), Ordering::Relaxed);
        t.intx_masked
            .store(self.intx_masked.load(Ordering::Acquire), Ordering::Relaxed);
        t.virq_disabled.store(
            self.virq_disabled.load(Ordering::Acquire),
            Ordering::Relaxed,
        );
        t.intx_trigger
            .store(self.intx_trigger.load(Ordering::Acquire), Ordering::Relaxed);
        t.err
            .store(self.err.load(Ordering::Acquire), Ordering::Relaxed);
        t.req
            .store(self.req.load(Ordering::Acquire), Ordering::Relaxed);
        for (d, s) in t.vectors.iter().zip(self.vectors.iter()) {
            d.store(s.load(Ordering::Acquire), Ordering::Relaxed);
        }
        t
    }
}

impl IrqTable {
    /// An empty table: no interrupt type, no trigger. Usable in a `static`.
    pub const fn new() -> Self {
        IrqTable {
            kind: AtomicU8::new(0),
            intx_masked: AtomicBool::new(false),
            virq_disabled: AtomicBool::new(false),
            intx_trigger: AtomicU32::new(NO_TOKEN),
            err: AtomicU32::new(NO_TOKEN),
            req: AtomicU32::new(NO_TOKEN),
            vectors: [const { AtomicU32::new(NO_TOKEN) }; MAX_VECTORS],
        }
    }

    /// The active interrupt type (spec/04 §5).
    pub fn kind(&self) -> IrqType {
        code_kind(self.kind.load(Ordering::Acquire))
    }

    /// Whether INTx is masked (automasked or user-masked, spec/04 §6).
    pub fn intx_masked(&self) -> bool {
        self.intx_masked.load(Ordering::Acquire)
    }

    /// The token of MSI/MSI-X vector `vector`'s trigger (`None`: no trigger, or
    /// `vector >= MAX_VECTORS`).
    pub fn vector_token(&self, vector: usize) -> Option<u32> {
        some_token(self.vectors.get(vector)?.load(Ordering::Acquire))
    }

    // ---------------------------------------------------------------- control plane

    pub(crate) fn set_kind(&self, kind: IrqType) {
        self.kind.store(kind_code(kind), Ordering::Release);
    }

    pub(crate) fn set_intx_masked(&self, masked: bool) {
        self.intx_masked.store(masked, Ordering::Release);
    }

    pub(crate) fn set_virq_disabled(&self, on: bool) {
        self.virq_disabled.store(on, Ordering::Release);
    }

    pub(crate) fn set_intx_trigger(&self, token: Option<u32>) {
        self.intx_trigger.store(stored(token), Ordering::Release);
    }

    pub(crate) fn intx_trigger(&self) -> Option<u32> {
        some_token(self.intx_trigger.load(Ordering::Acquire))
    }

    pub(crate) fn set_err(&self, token: Option<u32>) {
        self.err.store(stored(token), Ordering::Release);
    }

    pub(crate) fn err(&self) -> Option<u32> {
        some_token(self.err.load(Ordering::Acquire))
    }

    pub(crate) fn set_req(&self, token: Option<u32>) {
        self.req.store(stored(token), Ordering::Release);
    }

    pub(crate) fn req(&self) -> Option<u32> {
        some_token(self.req.load(Ordering::Acquire))
    }

    /// Sets vector `v`'s trigger; returns the previous token. Out of range: nothing.
    pub(crate) fn set_vector(&self, v: usize, token: Option<u32>) -> Option<u32> {
        some_token(self.vectors.get(v)?.swap(stored(token), Ordering::AcqRel))
    }

    /// Clears every vector trigger.
    pub(crate) fn clear_vectors(&self) {
        for v in &self.vectors {
            v.store(NO_TOKEN, Ordering::Release);
        }
    }

    /// Back to the state of [`IrqTable::new`].
    pub(crate) fn reset(&self) {
        self.set_kind(IrqType::None);
        self.clear_vectors();
        self.set_intx_trigger(None);
        self.set_intx_masked(false);
        self.set_virq_disabled(false);
        self.set_err(None);
        self.set_req(None);
    }

    // ---------------------------------------------------------------- interrupt context

    fn signal_token<S: EventSink>(sink: &S, token: u32) -> bool {
        match sink.token_event(token) {
            Some(ev) => {
                sink.signal(ev);
                true
            }
            None => false,
        }
    }

    /// Interrupt entry for MSI/MSI-X: host vector `vector` (0-based) of `kind` fired.
    /// Signals the vector's trigger through `sink` (the sink whose tokens the table holds).
    /// Returns whether an event was signalled (`false` when `kind` is not the active type,
    /// `vector >= MAX_VECTORS` or the vector has no trigger). Lock-free: two atomic loads
    /// and one signal.
    #[inline]
    pub fn msi_fired<S: EventSink>(&self, sink: &S, kind: MsiKind, vector: u16) -> bool {
        let want = match kind {
            MsiKind::Msi => kind_code(IrqType::Msi),
            MsiKind::Msix => kind_code(IrqType::Msix),
        };
        if self.kind.load(Ordering::Acquire) != want {
            return false;
        }
        self.vector_token(usize::from(vector))
            .is_some_and(|t| Self::signal_token(sink, t))
    }

    /// Interrupt entry for INTx (spec/04 §6.4): if INTx is active and not masked, runs
    /// `mask` — the platform's non-blocking masking step (PCI 2.3: check-and-mask, which
    /// returns whether Status bit 3 was set; otherwise disabling the host line, returning
    /// `true`) — and, when it reports the interrupt as ours, marks INTx masked and signals
    /// the trigger (unless the virtual DisINTx is set or no trigger is registered).
    /// Returns whether the interrupt was taken ("handled"). At most one caller wins the
    /// automask (compare-and-swap), so a shared line firing on two CPUs signals once.
    pub fn intx_fired<S: EventSink>(&self, sink: &S, mask: impl FnOnce() -> bool) -> bool {
        if self.kind.load(Ordering::Acquire) != kind_code(IrqType::Intx) {
            return false;
        }
        if self
            .intx_masked
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        if !mask() {
            self.intx_masked.store(false, Ordering::Release);
            return false;
        }
        if !self.virq_disabled.load(Ordering::Acquire) {
            if let Some(t) = self.intx_trigger() {
                Self::signal_token(sink, t);
            }
        }
        true
    }

    /// The platform's AER `error_detected` callback (spec/04 §5.3, spec/05 §10): signals
    /// the ERR trigger if registered. Returns whether one was signalled; the platform
    /// should answer "can recover" regardless.
    pub fn error_detected<S: EventSink>(&self, sink: &S) -> bool {
        self.err().is_some_and(|t| Self::signal_token(sink, t))
    }

    /// The host asks for the device back (spec/04 §5.3): signals the REQ trigger if
    /// registered. Returns whether one was signalled (`false`: the host keeps waiting).
    pub fn request<S: EventSink>(&self, sink: &S) -> bool {
        self.req().is_some_and(|t| Self::signal_token(sink, t))
    }
}
