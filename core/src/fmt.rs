//! Crate-private logging macros: forward to `defmt` when the `defmt` feature is on,
//! compile to nothing otherwise (zero cost).
#![allow(unused_macros)]

macro_rules! vfio_warn {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::warn!($($arg)*);
    }};
}

macro_rules! vfio_debug {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::debug!($($arg)*);
    }};
}
