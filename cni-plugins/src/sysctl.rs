//! Sysctls are written directly under /proc/sys (of the calling thread's network namespace).

use crate::error::{CniError, Result};

/// Write `value` to `/proc/sys/<key with dots as slashes>`, skipping the write if already set.
pub fn set(key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    if let Ok(cur) = std::fs::read_to_string(&path) {
        if cur.trim() == value {
            return Ok(());
        }
    }
    std::fs::write(&path, value).map_err(|e| CniError::io(format!("failed to set sysctl {key}={value}"), e))
}

/// Path form for interface names, which may contain dots (`net.ipv4.conf.<if>.x` cannot).
pub fn set_path(path: &str, value: &str) -> Result<()> {
    if let Ok(cur) = std::fs::read_to_string(path) {
        if cur.trim() == value {
            return Ok(());
        }
    }
    std::fs::write(path, value).map_err(|e| CniError::io(format!("failed to write {path}={value}"), e))
}
