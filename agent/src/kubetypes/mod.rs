//! The ground floor: the pod vocabulary every layer shares, one copy each. Pod spec helpers and defaults, event
//! reasons and the recorder, annotations, probe result types, `$(VAR)` expansion and the container environment,
//! quantities, Go durations, back-off with jitter, and the supervision of tasks that panic.

pub mod admission;
pub mod annotations;
pub mod backoff;
pub mod crash;
pub mod duration;
pub mod env;
pub mod events;
pub mod kill;
pub mod nodeinfo;
pub mod probe;
pub mod qos;
pub mod quantity;
pub mod spec;
