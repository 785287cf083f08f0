//! `VFIO_DEVICE_FEATURE`: the core's generic half (spec/01-core.md §2: "handled by the
//! core").
//!
//! Order of the checks, as the oracle's `misc_ioctls` and `device_feature_queries`
//! sections record them (Linux 6.1 and 7.3, vfio-pci):
//! 1. `argsz < 8` → `EINVAL` ("argsz<minsz", "PROBE|SET argsz=4");
//! 2. a flag bit outside index | GET | SET | PROBE → `EINVAL` ("unknown flag bit 20");
//! 3. GET and SET together without PROBE → `EINVAL` ("GET|SET feature 1");
//! 4. the migration and dirty-logging features (1, 2, 6, 7, 8, 9) → `ENOTTY`: this core
//!    has no migration or logging driver ops (every device in the oracle answers so);
//! 5. everything else goes to the bus driver ([`BusDriver::device_feature`], default
//!    `ENOTTY`), which uses [`check_feature`] for its own features.
//!
//! Feature 12 (MIG_PRECOPY_INFOv2) changed between the eras (6.1 `ENOTTY`, 7.3 `EINVAL`);
//! the registry is era-less, so its answer is the bus driver's.

use super::driver::BusDriver;
use crate::errno::{Errno, Result};
use crate::uapi::{feature, feature_flags};

/// Header bytes of `struct vfio_device_feature` (`minsz`).
pub const FEATURE_MINSZ: u32 = 8;

/// A `VFIO_DEVICE_FEATURE` request whose header passed the generic checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FeatureRequest {
    /// The caller's `argsz` (≥ 8).
    pub argsz: u32,
    /// The caller's flags (only known bits).
    pub flags: u32,
}

impl FeatureRequest {
    /// The feature index.
    pub const fn index(&self) -> u32 {
        self.flags & feature_flags::MASK
    }

    /// Payload bytes the caller declared: `argsz − 8` (0 for a hand-built request with
    /// `argsz < 8`, which [`validate_feature`] never returns).
    pub const fn payload_len(&self) -> u32 {
        self.argsz.saturating_sub(FEATURE_MINSZ)
    }
}

/// The generic header checks (steps 1–3 of the module documentation).
///
/// # Errors
/// `EINVAL` as listed.
pub fn validate_feature(argsz: u32, flags: u32) -> Result<FeatureRequest> {
    let known =
        feature_flags::MASK | feature_flags::GET | feature_flags::SET | feature_flags::PROBE;
    let both = feature_flags::GET | feature_flags::SET;
    if argsz < FEATURE_MINSZ
        || flags & !known != 0
        || (flags & feature_flags::PROBE == 0 && flags & both == both)
    {
        return Err(Errno::EINVAL);
    }
    Ok(FeatureRequest { argsz, flags })
}

/// What a driver does with a request for one of its features, given the directions it
/// supports (`supported`: GET and/or SET) and the payload it needs (`minsz` bytes after
/// the header). `Ok(false)`: a PROBE, answered 0 with nothing done; `Ok(true)`: perform it.
///
/// # Errors
/// `EINVAL`: a direction the feature lacks (even with PROBE), neither GET nor SET without
/// PROBE, or a payload shorter than `minsz` (checked after PROBE: a PROBE with a short
/// payload succeeds).
pub fn check_feature(req: &FeatureRequest, supported: u32, minsz: u32) -> Result<bool> {
    let dirs = req.flags & (feature_flags::GET | feature_flags::SET);
    if dirs & !supported != 0 {
        return Err(Errno::EINVAL);
    }
    if req.flags & feature_flags::PROBE != 0 {
        return Ok(false);
    }
    if dirs == 0 || req.payload_len() < minsz {
        return Err(Errno::EINVAL);
    }
    Ok(true)
}

/// `VFIO_DEVICE_FEATURE` on a device: the generic checks, then the bus driver.
/// `buf` is the caller's whole buffer (header then payload); the driver reads and writes
/// the payload in `buf[8..]`. Returns the ioctl's result (0, or a new descriptor for
/// features that create one).
///
/// # Errors
/// `EFAULT` when `buf` holds less than the 8-byte header; the generic `EINVAL`s;
/// `ENOTTY` for migration/logging features; the driver's errors.
pub fn device_feature<D: BusDriver>(
    driver: &mut D,
    state: &mut D::State,
    buf: &mut [u8],
) -> Result<i64> {
    let head = buf.get(..8).ok_or(Errno::EFAULT)?;
    let argsz = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let flags = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let req = validate_feature(argsz, flags)?;
    match req.index() {
        feature::MIGRATION
        | feature::MIG_DEVICE_STATE
        | feature::DMA_LOGGING_START
        | feature::DMA_LOGGING_STOP
        | feature::DMA_LOGGING_REPORT
        | feature::MIG_DATA_SIZE => Err(Errno::ENOTTY),
        _ => driver.device_feature(state, &req, &mut buf[8..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::feature_flags::{GET, PROBE, SET};

    #[test]
    fn generic_checks_follow_the_oracle_order() {
        assert_eq!(validate_feature(4, PROBE | SET | 3), Err(Errno::EINVAL));
        assert_eq!(validate_feature(8, 1 << 20), Err(Errno::EINVAL));
        assert_eq!(validate_feature(16, GET | SET | 1), Err(Errno::EINVAL));
        assert!(validate_feature(8, PROBE | GET | SET | 3).is_ok());
        assert!(validate_feature(8, 3).is_ok());
    }

    #[test]
    fn check_feature_matches_the_set_only_low_power_answers() {
        let r = |flags| FeatureRequest { argsz: 8, flags };
        // "PROBE|GET|SET feature 3" EINVAL, "PROBE|SET" 0, "PROBE only" 0, "no flag" EINVAL.
        assert_eq!(
            check_feature(&r(PROBE | GET | SET), SET, 0),
            Err(Errno::EINVAL)
        );
        assert_eq!(check_feature(&r(PROBE | SET), SET, 0), Ok(false));
        assert_eq!(check_feature(&r(PROBE), SET, 0), Ok(false));
        assert_eq!(check_feature(&r(0), SET, 0), Err(Errno::EINVAL));
        assert_eq!(check_feature(&r(SET), SET, 0), Ok(true));
        // A short payload only matters without PROBE.
        assert_eq!(check_feature(&r(PROBE | SET), SET, 8), Ok(false));
        assert_eq!(check_feature(&r(SET), SET, 8), Err(Errno::EINVAL));
        // A hand-built request below the header size has no payload (no underflow).
        let short = FeatureRequest {
            argsz: 4,
            flags: SET,
        };
        assert_eq!(short.payload_len(), 0);
        assert_eq!(check_feature(&short, SET, 8), Err(Errno::EINVAL));
    }
}
