//! Calling a delegated plugin (IPAM) found on CNI_PATH, with our environment and configuration.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::error::{CniError, Result, ERR_INTERNAL};
use crate::skel::CmdArgs;
use crate::spec::CniResult;

fn find(args: &CmdArgs, plugin: &str) -> Result<PathBuf> {
    if plugin.is_empty() || plugin.contains('/') || plugin.starts_with('.') {
        return Err(CniError::invalid_config(format!("invalid plugin type {plugin:?}")));
    }
    args.path.iter().map(|d| d.join(plugin)).find(|p| p.is_file()).ok_or_else(|| {
        CniError::invalid_config(format!("failed to find plugin {plugin:?} in CNI_PATH {:?}", args.path))
    })
}

/// Run `plugin` with `command` ("ADD", "DEL", ...) and return its stdout on success; a failure
/// passes the delegate's own error (code, msg, details) through.
pub fn exec(args: &CmdArgs, plugin: &str, command: &str) -> Result<Vec<u8>> {
    let bin = find(args, plugin)?;
    let mut child = Command::new(&bin)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::io(format!("failed to run {}", bin.display()), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&args.stdin).map_err(|e| CniError::io(format!("failed to write to {plugin}"), e))?;
    }
    let out = child.wait_with_output().map_err(|e| CniError::io(format!("failed to wait for {plugin}"), e))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    #[derive(serde::Deserialize)]
    struct WireErr {
        #[serde(default)]
        code: Option<u32>,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_slice::<WireErr>(&out.stdout) {
        Ok(e) => Err(CniError {
            code: e.code.unwrap_or(ERR_INTERNAL),
            msg: format!("{plugin}: {}", e.msg),
            details: e.details,
        }),
        Err(_) => Err(CniError::internal(format!(
            "{plugin} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim()
        ))),
    }
}

pub fn add(args: &CmdArgs, plugin: &str) -> Result<CniResult> {
    let out = exec(args, plugin, "ADD")?;
    CniResult::from_slice(&out).map_err(|e| e.context(format!("result of {plugin}")))
}
