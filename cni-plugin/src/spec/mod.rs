//! The CNI contract: what the runtime hands us (environment, config on stdin)
//! and what we hand back (a result or an error object on stdout).

pub mod config;
pub mod env;
pub mod error;
pub mod result;
pub mod version;

pub use config::NetConf;
pub use env::{Command, Env};
pub use error::{CniError, ErrorCode};
pub use result::CniResult;
pub use version::CniVersion;
