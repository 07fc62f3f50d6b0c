//! Threads that do an update's bulk work (verifying, hashing, reading back) run at background
//! priority, so they never delay the daemon's main loop.
//!
//! Why: a gateway has few cores, and the main loop is latency-bound — it answers the LwM2M
//! server, and during a CoAP pull it sends the next block request the moment a block arrives.
//! With the verifier, the payload hasher and the read-back all runnable, a block that arrived
//! waited for a time slice (on the 2-core benchmark machine, up to 40 % longer CoAP pulls).
//! `SCHED_BATCH` at the lowest niceness still uses every idle cycle, so an HTTP pull, which is
//! bound by hashing, loses nothing; it just never preempts the main loop on a wake-up.

use thread_priority::{
    NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
    set_thread_priority_and_policy, thread_native_id,
};

/// Lowers the calling thread to background priority (call at the start of a bulk-work thread;
/// a thread cannot raise itself back without privileges). Best effort: where the system
/// refuses, the thread keeps its priority and only latency suffers.
pub fn lower_this_thread() {
    if let Err(e) = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
    ) {
        log::debug!("firmware: background priority not set: {e:?}");
    }
}

/// Starts `f` on a named thread at background priority.
pub fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower_this_thread();
            f()
        })
}
