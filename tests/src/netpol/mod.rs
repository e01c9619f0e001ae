//! NetworkPolicy conformance: an independent model of the spec (the oracle), the upstream
//! e2e truth-table cases, a randomized generator, the harness that runs probes between real
//! pods on a namespace cluster, and the runner that judges the cases and scenarios there.

pub mod cases;
pub mod conformance;
pub mod harness;
pub mod matrix;
pub mod model;
pub mod probe;
pub mod random;
