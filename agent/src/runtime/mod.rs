//! The CRI edge: the only module that speaks to the container runtime.

pub mod client;
pub mod gc;
pub mod labels;
pub mod stats;
pub mod streaming;
pub mod types;

pub use client::{CriClock, Runtime, RuntimeError, RuntimeMetrics, CRI_TIME};
pub use types::*;
