//! Generates the CRI `runtime.v1` client from `proto/runtime/v1/api.proto`.
//!
//! The proto is parsed by `protox` (pure Rust), so no `protoc` binary is needed.

use std::io;

const PROTO: &str = "proto/runtime/v1/api.proto";
const INCLUDE: &str = "proto";

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed=build.rs");

    let fds = protox::compile([PROTO], [INCLUDE]).map_err(io::Error::other)?;

    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // Registry credentials get a hand-written, redacting Debug impl (src/lib.rs).
        .skip_debug(["runtime.v1.AuthConfig"])
        .compile_fds(fds)
}
