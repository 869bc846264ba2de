//! CNI plugins for rkubelet: the spec types, the exec protocol, host-local IPAM, and the
//! netlink/netns/iptables helpers shared by the `bridge`, `host-local`, `loopback` and `portmap`
//! executables (see `src/bin/`).

pub mod delegate;
pub mod error;
pub mod ipam;
pub mod iptables;
pub mod netlink;
pub mod netns;
pub mod skel;
pub mod spec;
pub mod sysctl;

pub use error::{CniError, Result};
pub mod bridge;
pub mod portmap;
