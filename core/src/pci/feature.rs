//! vfio-pci's `VFIO_DEVICE_FEATURE` features (after the core's generic checks,
//! [`crate::vfio::feature`]), as the oracle's `misc_ioctls` and `device_feature_queries`
//! sections record them for these devices (Linux 6.1 and 7.3):
//!
//! * PCI_VF_TOKEN (0) → `ENOTTY`: only an SR-IOV PF driven with VF tokens answers; the
//!   core has no VF-token support (no platform SR-IOV enable).
//! * LOW_POWER_ENTRY (3), LOW_POWER_ENTRY_WITH_WAKEUP (4), LOW_POWER_EXIT (5): SET only
//!   ([`check_feature`]: GET → `EINVAL`, PROBE|SET → 0, no direction → `EINVAL`). Entry
//!   while already in low power → `EINVAL`; the wakeup variant needs its 8-byte payload
//!   and an eventfd (`fd < 0` → `EINVAL`; `reserved` is not checked). Exit always
//!   succeeds; with a wakeup eventfd armed it signals it (the oracle's counter reads 1).
//!   While in low power, a device access (read, write, other ioctls) first resumes the
//!   function: with a wakeup armed the eventfd is signalled and low power ends; without
//!   one the function goes back to low power afterwards (oracle: D3hot again after the
//!   config read). The host side is [`PciAccess::runtime_low_power`].
//! * BUS_MASTER (10), ZPCI_ERROR (13), unknown indexes → `ENOTTY`.
//! * DMA_BUF (11) → `ENOTTY`: dma-buf export is not implemented (Linux 6.1's answer; 7.3
//!   with `CONFIG_VFIO_PCI_DMABUF` supports it).
//! * MIG_PRECOPY_INFOv2 (12): 6.1 `ENOTTY`, 7.3 `EINVAL` for every flag combination on a
//!   device without migration (oracle/DIFFERENCES.md item 10).

use core::borrow::Borrow;

use super::{fd_at, perr, IrqTable, PciDevice, PciDriver};
use crate::era::Era;
use crate::errno::{Errno, Result};
use crate::platform::{EventSink, PciAccess};
use crate::uapi::{feature, feature_flags};
use crate::vfio::{check_feature, FeatureRequest};

/// The user's runtime low-power request (features 3–5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum LowPower<Ev> {
    /// Not requested: the function stays in D0.
    #[default]
    Off,
    /// Requested; `wakeup` is signalled when the function is resumed.
    On {
        /// The wakeup eventfd of LOW_POWER_ENTRY_WITH_WAKEUP.
        wakeup: Option<Ev>,
    },
}

impl<Ev: Copy, T: Borrow<IrqTable>> PciDevice<Ev, T> {
    /// The user's runtime low-power request (`VFIO_DEVICE_FEATURE` 3–5).
    pub const fn low_power(&self) -> LowPower<Ev> {
        self.low_power
    }
}

impl<A: PciAccess, E: EventSink, T: Borrow<IrqTable>> PciDriver<A, E, T> {
    /// vfio-pci's features (module documentation).
    pub(super) fn feature(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        req: &FeatureRequest,
        payload: &[u8],
    ) -> Result<i64> {
        let set = feature_flags::SET;
        match req.index() {
            feature::LOW_POWER_ENTRY => {
                if check_feature(req, set, 0)? {
                    self.low_power_entry(state, None)?;
                }
                Ok(0)
            }
            feature::LOW_POWER_ENTRY_WITH_WAKEUP => {
                if check_feature(req, set, 8)? {
                    let fd = fd_at(payload, 0).ok_or(Errno::EFAULT)?;
                    if fd < 0 {
                        return Err(Errno::EINVAL);
                    }
                    let event = self.events.resolve(fd)?;
                    self.low_power_entry(state, Some(event))?;
                }
                Ok(0)
            }
            feature::LOW_POWER_EXIT => {
                if check_feature(req, set, 0)? {
                    self.low_power_exit(state);
                }
                Ok(0)
            }
            feature::MIG_PRECOPY_INFO_V2 if self.era != Era::Linux6_1 => Err(Errno::EINVAL),
            _ => Err(Errno::ENOTTY),
        }
    }

    fn low_power_entry(
        &mut self,
        state: &mut PciDevice<E::Event, T>,
        wakeup: Option<E::Event>,
    ) -> Result<()> {
        if state.low_power != LowPower::Off {
            return Err(Errno::EINVAL);
        }
        perr(self.access.runtime_low_power(state.bdf, true))?;
        state.low_power = LowPower::On { wakeup };
        Ok(())
    }

    /// Ends the low-power request (LOW_POWER_EXIT, or a device access resuming a function
    /// with a wakeup armed: [`PciDriver::pm_get`]), signalling the wakeup eventfd if one
    /// is armed. Last close leaves low power without signalling (`close_device`, spec/05
    /// §3 step 1).
    pub(super) fn low_power_exit(&mut self, state: &mut PciDevice<E::Event, T>) {
        if let LowPower::On { wakeup } = state.low_power {
            state.low_power = LowPower::Off;
            let _ = self.access.runtime_low_power(state.bdf, false);
            if let Some(event) = wakeup {
                self.events.signal(event);
            }
        }
    }

    /// Before a device access: resumes the function if the user asked for low power.
    /// Returns whether to put it back afterwards ([`PciDriver::pm_put`]).
    pub(super) fn pm_get(&mut self, state: &mut PciDevice<E::Event, T>) -> bool {
        match state.low_power {
            LowPower::Off => false,
            LowPower::On { wakeup: Some(_) } => {
                self.low_power_exit(state);
                false
            }
            LowPower::On { wakeup: None } => {
                let _ = self.access.runtime_low_power(state.bdf, false);
                true
            }
        }
    }

    /// After a device access that [`PciDriver::pm_get`] resumed the function for.
    pub(super) fn pm_put(&mut self, state: &PciDevice<E::Event, T>, resumed: bool) {
        if resumed {
            let _ = self.access.runtime_low_power(state.bdf, true);
        }
    }
}
