//! Linux errno values: the shared error vocabulary of every refusal.
//!
//! Every operation of the core fails with exactly the errno the Linux kernel returns for the
//! same input (spec/01-core.md §0.3 gives the numbering: the generic one used by x86, arm and
//! riscv). Richer, per-module errors convert into [`Errno`] through the [`Error`] trait.

use core::fmt;

/// A Linux error number (spec/01-core.md §0.3), as returned negated by an ioctl.
///
/// The discriminant is the positive errno value (`Errno::EINVAL as i32 == 22`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(i32)]
#[non_exhaustive]
pub enum Errno {
    /// Operation not permitted (1): e.g. a non-viable group joining a container.
    EPERM = 1,
    /// No such entry (2): e.g. a VADDR update of an IOVA that is not mapped.
    ENOENT = 2,
    /// No such process (3).
    ESRCH = 3,
    /// I/O error (5): e.g. a memory BAR access while memory decode is off.
    EIO = 5,
    /// Argument list too long (7).
    E2BIG = 7,
    /// Bad file descriptor (9): a stale, closed or never-opened handle.
    EBADF = 9,
    /// Try again (11).
    EAGAIN = 11,
    /// Out of memory (12): a fixed-capacity pool is full, or the locked-memory limit is hit.
    ENOMEM = 12,
    /// Permission denied (13).
    EACCES = 13,
    /// Bad address (14): the caller's buffer is shorter than what a step must read or write.
    EFAULT = 14,
    /// Device or resource busy (16).
    EBUSY = 16,
    /// File exists (17): e.g. a DMA mapping overlapping an existing one.
    EEXIST = 17,
    /// No such device (19).
    ENODEV = 19,
    /// Invalid argument (22).
    EINVAL = 22,
    /// Too many open files (24): the file table is full.
    EMFILE = 24,
    /// Inappropriate ioctl (25): the request is unknown for this kind of file.
    ENOTTY = 25,
    /// No space left (28): e.g. the Type1 DMA entry limit is reached.
    ENOSPC = 28,
    /// Result out of range (34).
    ERANGE = 34,
    /// Value too large (75): e.g. `iova + size - 1` wraps past 2^64 - 1.
    EOVERFLOW = 75,
    /// File descriptor in bad state (77): e.g. SET_CONTAINER given a non-container file.
    EBADFD = 77,
}

impl Errno {
    /// Every variant, in numeric order.
    pub const ALL: [Errno; 20] = [
        Errno::EPERM,
        Errno::ENOENT,
        Errno::ESRCH,
        Errno::EIO,
        Errno::E2BIG,
        Errno::EBADF,
        Errno::EAGAIN,
        Errno::ENOMEM,
        Errno::EACCES,
        Errno::EFAULT,
        Errno::EBUSY,
        Errno::EEXIST,
        Errno::ENODEV,
        Errno::EINVAL,
        Errno::EMFILE,
        Errno::ENOTTY,
        Errno::ENOSPC,
        Errno::ERANGE,
        Errno::EOVERFLOW,
        Errno::EBADFD,
    ];

    /// The positive errno number (e.g. 22 for `EINVAL`).
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The symbolic name, e.g. `"EINVAL"`.
    pub const fn name(self) -> &'static str {
        match self {
            Errno::EPERM => "EPERM",
            Errno::ENOENT => "ENOENT",
            Errno::ESRCH => "ESRCH",
            Errno::EIO => "EIO",
            Errno::E2BIG => "E2BIG",
            Errno::EBADF => "EBADF",
            Errno::EAGAIN => "EAGAIN",
            Errno::ENOMEM => "ENOMEM",
            Errno::EACCES => "EACCES",
            Errno::EFAULT => "EFAULT",
            Errno::EBUSY => "EBUSY",
            Errno::EEXIST => "EEXIST",
            Errno::ENODEV => "ENODEV",
            Errno::EINVAL => "EINVAL",
            Errno::EMFILE => "EMFILE",
            Errno::ENOTTY => "ENOTTY",
            Errno::ENOSPC => "ENOSPC",
            Errno::ERANGE => "ERANGE",
            Errno::EOVERFLOW => "EOVERFLOW",
            Errno::EBADFD => "EBADFD",
        }
    }

    /// Looks a variant up by its positive number; `None` for numbers this crate never returns.
    pub fn from_code(code: i32) -> Option<Errno> {
        Errno::ALL.iter().copied().find(|e| e.code() == code)
    }

    /// Looks a variant up by its symbolic name (`"EINVAL"`); `None` if unknown.
    pub fn from_name(name: &str) -> Option<Errno> {
        Errno::ALL.iter().copied().find(|e| e.name() == name)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

impl core::error::Error for Errno {}

/// A platform or module error that maps onto the shared errno vocabulary.
///
/// Follows embedded-hal's `Error::kind` pattern: an implementation keeps its rich error type
/// and tells the core which errno the kernel would report for it.
pub trait Error: fmt::Debug {
    /// The errno the core reports for this error.
    fn errno(&self) -> Errno;
}

impl Error for Errno {
    fn errno(&self) -> Errno {
        *self
    }
}

impl Error for core::convert::Infallible {
    fn errno(&self) -> Errno {
        match *self {}
    }
}

/// Declares the error type shared by all methods of a platform trait (embedded-hal's
/// `ErrorType` pattern).
pub trait ErrorType {
    /// The platform's error; converted to an [`Errno`] by the core.
    type Error: Error;
}

impl<T: ErrorType + ?Sized> ErrorType for &mut T {
    type Error = T::Error;
}

/// `Result` with an [`Errno`] error: the return type of every core operation.
pub type Result<T, E = Errno> = core::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for e in Errno::ALL {
            assert_eq!(Errno::from_code(e.code()), Some(e));
            assert_eq!(Errno::from_name(e.name()), Some(e));
        }
        assert_eq!(Errno::EINVAL.code(), 22);
        assert_eq!(Errno::EBADFD.code(), 77);
        assert_eq!(Errno::from_code(0), None);
    }
}
