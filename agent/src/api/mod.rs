//! The upstream API server: the client and its bootstrap, the pod source that watches pods bound to this node, the
//! status manager that writes pod status, mirror pods and final deletions, and the event recorder.

pub mod auth;
pub mod client;
pub mod events;
pub mod objects;
pub mod pods;
pub mod serving;
pub mod status;
