//! An image holding the `grpc-health-server` test binary on top of busybox, pushed to the local registry: the
//! binary with the shared libraries `ldd` lists, at the same paths, so it runs in the image as on the host.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::images::{BUSYBOX, REGISTRY};

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds and pushes the image for `binary` (the test's `CARGO_BIN_EXE_grpc-health-server`); returns its name.
/// The tag is the binary's hash, so a rebuilt binary gets a new image.
pub fn grpc_health_image(binary: &Path) -> Result<String> {
    let sum = run(Command::new("sha256sum").arg(binary))?;
    let tag = sum.get(..12).context("sha256sum output")?.to_owned();
    let image = format!("{REGISTRY}/grpc-health:{tag}");
    let dir = tempfile::tempdir()?;
    let layout = format!("{}/layout:img", dir.path().display());
    let bundle = dir.path().join("bundle");
    run(Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{BUSYBOX}"))
        .arg(format!("oci:{layout}")))?;
    run(Command::new("umoci").args(["unpack", "--image", &layout]).arg(&bundle))?;
    let rootfs = bundle.join("rootfs");
    let mut files = vec![binary.to_path_buf()];
    for line in run(Command::new("ldd").arg(binary))?.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line.split("=>").last().unwrap_or("").split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            files.push(path.into());
        }
    }
    for f in &files {
        let dest = if f == binary {
            rootfs.join("bin/grpc-health-server")
        } else {
            rootfs.join(f.strip_prefix("/").unwrap_or(f))
        };
        std::fs::create_dir_all(dest.parent().context("parent")?)?;
        std::fs::copy(std::fs::canonicalize(f)?, &dest).with_context(|| format!("copy {}", f.display()))?;
    }
    run(Command::new("umoci").args(["repack", "--image", &layout]).arg(&bundle))?;
    run(Command::new("umoci").args(["config", "--image", &layout, "--config.entrypoint=/bin/grpc-health-server"]))?;
    run(Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{layout}"))
        .arg(format!("docker://{image}")))?;
    Ok(image)
}
