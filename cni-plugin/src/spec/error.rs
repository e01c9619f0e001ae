//! CNI error objects: what a runtime shows in `kubectl describe pod`.

use std::fmt;

use serde::Serialize;

/// Error codes from the CNI spec, plus trellis's own (100 and up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion,
    UnsupportedField,
    UnknownContainer,
    InvalidEnv,
    Io,
    Decode,
    InvalidConfig,
    TryAgainLater,
    NotAvailable,
    /// A netlink operation failed.
    Netlink,
    /// The address range has no free address left.
    RangeExhausted,
    /// Host state contradicts the config (bridge with another gateway, a
    /// `cni0` that is not a bridge): a human must decide.
    HostConflict,
    /// CHECK found the pod's network different from what ADD made.
    CheckMismatch,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::UnsupportedField => 2,
            Self::UnknownContainer => 3,
            Self::InvalidEnv => 4,
            Self::Io => 5,
            Self::Decode => 6,
            Self::InvalidConfig => 7,
            Self::TryAgainLater => 11,
            Self::NotAvailable => 50,
            Self::Netlink => 100,
            Self::RangeExhausted => 101,
            Self::HostConflict => 102,
            Self::CheckMismatch => 103,
        }
    }
}

/// The error object the spec defines; printed on stdout with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct CniError {
    #[serde(rename = "cniVersion", skip_serializing_if = "Option::is_none")]
    pub cni_version: Option<String>,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            cni_version: None,
            code: code.code(),
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn to_json(&self) -> String {
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_string(self)
            .unwrap_or_else(|_| format!(r#"{{"code":{},"msg":"unprintable error"}}"#, self.code))
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

/// Shorthand constructors for the common cases.
pub fn invalid_config(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidConfig, msg)
}

pub fn invalid_env(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidEnv, msg)
}

pub fn io_error(what: impl fmt::Display, err: std::io::Error) -> CniError {
    CniError::new(ErrorCode::Io, format!("{what}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_like_the_spec() {
        let mut e =
            CniError::new(ErrorCode::InvalidEnv, "CNI_IFNAME is not set").with_details("set it");
        e.cni_version = Some("1.0.0".into());
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "CNI_IFNAME is not set");
        assert_eq!(v["details"], "set it");
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn omits_empty_details() {
        let e = CniError::new(ErrorCode::Decode, "x");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert!(v.get("details").is_none());
        assert!(v.get("cniVersion").is_none());
    }
}
