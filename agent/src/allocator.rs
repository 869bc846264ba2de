//! glibc malloc settings for a long-running agent, applied before `main` (before the tokio runtime starts its
//! threads, which is when arenas get made):
//! - at most [`ARENAS`] arenas: glibc gives threads up to 8 per core, and every tokio worker and blocking-pool
//!   thread that allocates then keeps its own arena, whose freed memory stays in the process (RSS) after the pods
//!   that needed it are gone;
//! - a fixed mmap threshold: glibc otherwise raises it up to 32 MiB each time a large block (an API list, a pod's
//!   JSON) is freed, after which such blocks come from the heap and stay in it.
//!
//! - [`trim_periodically`]: glibc gives memory back to the kernel only from the top of the heap, so what a burst of
//!   pods used stays resident below whatever is still live; `malloc_trim` releases the free pages anywhere in the
//!   heap, as Go's background scavenger does for kubelet.
//!
//! `MALLOC_ARENA_MAX` or `MALLOC_MMAP_THRESHOLD_` in the environment (glibc's own variables) win over these.

use std::time::Duration;

/// How often free heap pages are given back.
pub const TRIM_PERIOD: Duration = Duration::from_secs(10);

/// Enough for the tokio workers not to contend on one lock; the agent's allocations are small and short.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: libc::c_int = 2;
/// glibc's default starting threshold, kept fixed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
#[link_section = ".init_array"]
static TUNE_MALLOC: extern "C" fn() = tune_malloc;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" fn tune_malloc() {
    // SAFETY: getenv and mallopt with constant arguments; this runs before main, on the only thread.
    unsafe {
        if libc::getenv(c"MALLOC_ARENA_MAX".as_ptr()).is_null() {
            libc::mallopt(libc::M_ARENA_MAX, ARENAS);
        }
        if libc::getenv(c"MALLOC_MMAP_THRESHOLD_".as_ptr()).is_null() {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

/// Gives free heap pages back to the kernel every [`TRIM_PERIOD`]; runs for as long as the agent does.
pub async fn trim_periodically() {
    let mut tick = tokio::time::interval(TRIM_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim has no preconditions; it takes each arena's lock in turn.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
