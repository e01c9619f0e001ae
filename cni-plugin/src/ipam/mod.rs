//! IP address management in host-local's on-disk layout, so operators'
//! tooling (and host-local itself) reads trellis's records unchanged.

pub mod allocator;
pub mod store;

pub use allocator::{Range, RangeError, RangeSet, SetError};
pub use store::{Record, Store};
