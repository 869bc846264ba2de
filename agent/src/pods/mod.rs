//! Pods: where they come from (`source`), the desired set and its workers (`manager`, `worker`), and the two pure
//! decisions, what to do (`plan`) and what status to report (`status`).

pub mod admission;
pub mod backoff;
pub mod env;
pub mod ephemeral;
pub mod events;
pub mod manager;
pub mod plan;
pub mod source;
pub mod spec;
pub mod status;
pub mod store;
pub mod sysctl;
pub mod unsupported;
pub mod worker;
