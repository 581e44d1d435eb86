//! Flavour primitives with the same names in both flavours: the transport, sleeping, locking,
//! exec sessions.
//!
//! `crate::api` is compiled once against `rt::blocking` and once against `rt::nonblocking`.
//! Both drive the one async transport in [`transport`]: the async flavour on the caller's
//! runtime, the blocking flavour on the SDK's own I/O runtime.

#[cfg(feature = "blocking")]
pub(crate) mod blocking;
#[cfg(feature = "async")]
pub(crate) mod nonblocking;
#[cfg(any(feature = "blocking", feature = "async"))]
pub(crate) mod transport;
