//! STATUS: can this node take new pods? Not until the agent wrote subnet.env.

use crate::spec::error::{CniError, ErrorCode};
use crate::spec::{CniVersion, NetConf};
use trellis_common::subnet_env;

pub fn run(conf: &NetConf) -> Result<(), CniError> {
    super::require_version(conf, CniVersion::supports_status_and_gc, "STATUS", "1.1.0")?;
    if conf.ipam.as_ref().is_some_and(|i| !i.ranges.is_empty()) {
        return Ok(());
    }
    subnet_env::read(&conf.subnet_file).map(|_| ()).map_err(|e| {
        CniError::new(ErrorCode::NotAvailable, e.to_string())
            .with_details("trellis-agent writes this file once it has programmed the node; check its pod on this node")
    })
}
