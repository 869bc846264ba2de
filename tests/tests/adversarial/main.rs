//! The adversarial suite: what a pod author (or a caller of the kubelet API from outside) can aim at the node, one
//! attack per test, each asserting that the wall holds. Pod authors control paths, symlinks in their volumes, the
//! HTTP answers of their servers and their env values; callers of :10250 control connections, headers and tokens.
//! Every test here failed on the agent before the fix it names.

mod fsgroup;
mod http;
mod run_as_non_root;
mod server;
mod subpath;
mod supervision;
