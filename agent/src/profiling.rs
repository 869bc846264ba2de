//! Heap profiling of the whole agent, built with `--features dhat-heap`: dhat's allocator records every allocation
//! with its call stack, and the profile (dhat's JSON, for `dh_view.html` or a script) is written
//! - at a clean shutdown (SIGTERM, Ctrl-C): when `main` ends;
//! - or earlier on SIGUSR2, with the heap as it is at that moment (e.g. after a churn of pods, before shutdown frees
//!   anything); profiling stops there.
//!
//! The file is `$RKUBELET_DHAT_FILE`, else `dhat-heap.json` in the working folder. `RKUBELET_DHAT_FRAMES` bounds the
//! recorded frames per stack (default 24; dhat's own default of 10 mostly shows tokio and hyper plumbing).
//! Without the feature this module does nothing.

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// The running profiler; the profile is written when it drops, unless SIGUSR2 wrote it before.
pub struct HeapProfile {
    #[cfg(feature = "dhat-heap")]
    profiler: std::sync::Arc<std::sync::Mutex<Option<dhat::Profiler>>>,
}

/// Starts profiling (with the feature). Call once, first thing in `main`, inside the tokio runtime.
pub fn start() -> HeapProfile {
    #[cfg(feature = "dhat-heap")]
    {
        use std::sync::{Arc, Mutex};
        let file = std::env::var_os("RKUBELET_DHAT_FILE").unwrap_or_else(|| "dhat-heap.json".into());
        let frames = std::env::var("RKUBELET_DHAT_FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
        let profiler = dhat::Profiler::builder().file_name(file).trim_backtraces(Some(frames)).build();
        let profiler = Arc::new(Mutex::new(Some(profiler)));
        let on_signal = profiler.clone();
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2()) {
            Ok(mut usr2) => {
                tokio::spawn(async move {
                    if usr2.recv().await.is_some() {
                        // Dropping the profiler writes the file.
                        let taken = on_signal.lock().unwrap_or_else(|e| e.into_inner()).take();
                        drop(taken);
                    }
                });
            }
            Err(e) => eprintln!("rkubelet: heap profile: no SIGUSR2 handler ({e}); the profile is written at exit"),
        }
        HeapProfile { profiler }
    }
    #[cfg(not(feature = "dhat-heap"))]
    HeapProfile {}
}

impl Drop for HeapProfile {
    fn drop(&mut self) {
        #[cfg(feature = "dhat-heap")]
        drop(self.profiler.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}
