//! Kernel-era profiles: which Linux behaviour the core reproduces where kernels differ.
//!
//! The default is the recent kernel (Linux 7.3, the oracle's normative set). Linux 6.1 is an
//! older era still widely deployed; the differences are listed in the oracle's
//! DIFFERENCES.md (e.g. Type1 wrap-around refused with `EINVAL` instead of `EOVERFLOW`,
//! no dynamic MSI-X, no ERR index on conventional PCI functions).

/// The kernel whose observable VFIO behaviour the core reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Era {
    /// Linux 7.3 (recent mainline): the default.
    #[default]
    Linux7_3,
    /// Linux 6.1 (an older, widely deployed era).
    Linux6_1,
}

impl Era {
    /// Parses an era name: `"7.3"`, `"recent"` or `"linux-7.3"` for [`Era::Linux7_3`];
    /// `"6.1"` or `"linux-6.1"` for [`Era::Linux6_1`]; `None` for anything else (exact,
    /// case-sensitive match).
    pub fn parse(text: &str) -> Option<Era> {
        match text {
            "7.3" | "recent" | "linux-7.3" => Some(Era::Linux7_3),
            "6.1" | "linux-6.1" => Some(Era::Linux6_1),
            _ => None,
        }
    }

    /// Whether this era predates `other` (6.1 is before 7.3).
    pub fn before(self, other: Era) -> bool {
        matches!((self, other), (Era::Linux6_1, Era::Linux7_3))
    }
}
