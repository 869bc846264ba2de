//! The CNI error type and the spec's well-known error codes (SPEC.md, "Error").

use serde::Serialize;

/// Incompatible CNI version.
pub const ERR_INCOMPATIBLE_VERSION: u32 = 1;
/// Unsupported field in network configuration; the message names the key and value.
pub const ERR_UNSUPPORTED_FIELD: u32 = 2;
/// Container unknown or does not exist (the runtime need not call DEL).
pub const ERR_UNKNOWN_CONTAINER: u32 = 3;
/// Invalid necessary environment variables, like CNI_COMMAND, CNI_CONTAINERID.
pub const ERR_INVALID_ENV: u32 = 4;
/// I/O failure.
pub const ERR_IO: u32 = 5;
/// Failed to decode content (bad JSON).
pub const ERR_DECODE: u32 = 6;
/// Invalid network config: it decoded, but a value is wrong or missing.
pub const ERR_INVALID_NETCONF: u32 = 7;
/// Try again later: a transient condition (a lock, a busy resource).
pub const ERR_TRY_AGAIN: u32 = 11;
/// STATUS (1.1.0): the plugin is not available.
pub const ERR_NOT_AVAILABLE: u32 = 50;
/// Errors that fit no spec code. libcni uses the same value (`types.ErrInternal`).
pub const ERR_INTERNAL: u32 = 999;

/// An error as the spec encodes it: `{"cniVersion", "code", "msg", "details"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: String::new() }
    }
    pub fn with_details(code: u32, msg: impl Into<String>, details: impl ToString) -> Self {
        CniError { code, msg: msg.into(), details: details.to_string() }
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(ERR_INTERNAL, msg)
    }
    pub fn io(msg: impl Into<String>, err: impl ToString) -> Self {
        Self::with_details(ERR_IO, msg, err)
    }
    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(ERR_INVALID_NETCONF, msg)
    }
    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(ERR_INVALID_ENV, msg)
    }
    pub fn decode(msg: impl Into<String>, err: impl ToString) -> Self {
        Self::with_details(ERR_DECODE, msg, err)
    }
    pub fn unsupported_field(key: &str, value: impl std::fmt::Display) -> Self {
        Self::new(ERR_UNSUPPORTED_FIELD, format!("unsupported field {key:?} with value {value}"))
    }
    /// Prefix the message with what was being attempted.
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    /// The JSON document written to stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            #[serde(flatten)]
            err: &'a CniError,
        }
        serde_json::to_string(&Wire { cni_version, err: self })
            .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"error\"}}", self.code))
    }
}

pub type Result<T, E = CniError> = std::result::Result<T, E>;
