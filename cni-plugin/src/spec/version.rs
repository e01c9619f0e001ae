//! CNI specification versions this plugin speaks.

use std::fmt;

use super::error::{CniError, ErrorCode};

/// The spec versions we accept in a config and can answer in.
///
/// Older than 0.3.0 had a different result shape that no current runtime
/// sends; refusing it with code 1 is what the spec asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

pub const SUPPORTED: [CniVersion; 5] = [
    CniVersion::V0_3_0,
    CniVersion::V0_3_1,
    CniVersion::V0_4_0,
    CniVersion::V1_0_0,
    CniVersion::V1_1_0,
];

impl CniVersion {
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn parse(s: &str) -> Result<Self, CniError> {
        match s {
            "0.3.0" => Ok(Self::V0_3_0),
            "0.3.1" => Ok(Self::V0_3_1),
            "0.4.0" => Ok(Self::V0_4_0),
            "1.0.0" => Ok(Self::V1_0_0),
            "1.1.0" => Ok(Self::V1_1_0),
            other => Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("unsupported cniVersion {other:?}"),
            )
            .with_details(format!(
                "trellis supports {}",
                SUPPORTED.map(|v| v.as_str()).join(", ")
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// Pre-1.0 results tag every IP with its family ("version": "4").
    pub fn ips_carry_family(self) -> bool {
        self < Self::V1_0_0
    }

    /// CHECK appeared in 0.4.0.
    pub fn supports_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// STATUS and GC appeared in 1.1.0.
    pub fn supports_status_and_gc(self) -> bool {
        self >= Self::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer to the VERSION verb.
pub fn version_info() -> serde_json::Value {
    serde_json::json!({
        "cniVersion": CniVersion::LATEST.as_str(),
        "supportedVersions": SUPPORTED.map(|v| v.as_str()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_round_trips() {
        for v in SUPPORTED {
            assert_eq!(CniVersion::parse(v.as_str()).unwrap(), v);
        }
    }

    #[test]
    fn rejects_old_and_unknown_versions_with_code_1() {
        for bad in ["0.1.0", "0.2.0", "2.0.0", "", "1.0", "v1.0.0"] {
            let err = CniVersion::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::IncompatibleVersion.code(), "{bad}");
        }
    }

    #[test]
    fn feature_gates_follow_the_spec() {
        assert!(!CniVersion::V0_3_1.supports_check());
        assert!(CniVersion::V0_4_0.supports_check());
        assert!(!CniVersion::V1_0_0.supports_status_and_gc());
        assert!(CniVersion::V1_1_0.supports_status_and_gc());
        assert!(CniVersion::V0_4_0.ips_carry_family());
        assert!(!CniVersion::V1_0_0.ips_carry_family());
    }

    #[test]
    fn version_info_lists_all() {
        let v = version_info();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
    }
}
