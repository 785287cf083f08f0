//! Byte-level ioctl dispatcher (spec/01-core.md §3.1).
