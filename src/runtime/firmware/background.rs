//! Threads that do an update's bulk work (verifying, hashing, reading back) run at background
//! priority, so they never delay the daemon's main loop.
//!
//! Why: a gateway has few cores, and the main loop is latency-bound — it answers the LwM2M
//! server, and during a CoAP pull it sends the next block request the moment a block arrives.
//! With the verifier, the payload hasher and the read-back all runnable, a block that arrived
//! waited for a time slice (on the 2-core benchmark machine, up to 40 % longer CoAP pulls).
//! `SCHED_BATCH` at the lowest niceness still uses every idle cycle, so an HTTP pull, which is
//! bound by hashing, loses nothing; it just never preempts the main loop on a wake-up.
//!
//! The slot's I/O threads (write + sync, read-back) are different: they sleep on the disk and
//! must issue the next request the moment the last one completes, or the staging buffers fill
//! and the verifier stops. As `SCHED_BATCH` they never preempted the hashing threads on a
//! wake-up either, and waited for a time slice: in a 512 MiB pull the writer spent 1.1 s
//! runnable but not running, and the verifier 0.9 s blocked on it. They keep the lowest
//! niceness (the main loop still comes first) but the normal policy, which preempts on wake-up:
//! 0.3 s and 0.3 s.

use thread_priority::{
    NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
    set_thread_priority_and_policy, thread_native_id,
};

/// Moves the calling thread to the lowest niceness with `policy` (a thread cannot raise itself
/// back without privileges, but may switch between the normal policies). Best effort: where
/// the system refuses, the thread keeps its priority and only latency suffers.
fn lower(policy: NormalThreadSchedulePolicy) {
    if let Err(e) = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(policy),
    ) {
        log::debug!("firmware: background priority not set: {e:?}");
    }
}

/// Starts `f` on a named thread at background priority.
pub fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    spawn_with(name, NormalThreadSchedulePolicy::Batch, f)
}

/// Starts `f`, which mostly waits for the disk, on a named thread at the lowest niceness but
/// with wake-up preemption (see the module's text).
pub fn spawn_io<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    spawn_with(name, NormalThreadSchedulePolicy::Other, f)
}

fn spawn_with<T: Send + 'static>(
    name: &str,
    policy: NormalThreadSchedulePolicy,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            lower(policy);
            f()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduling policy of the calling thread, from the kernel.
    fn policy_of_this_thread() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/sched").unwrap_or_default();
        stat.lines()
            .find_map(|l| l.strip_prefix("policy"))
            .and_then(|v| v.trim_start_matches([' ', ':']).trim().parse().ok())
            .unwrap_or(-1)
    }

    fn nice_of_this_thread() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
        // Field 19 (nice), counted after the parenthesised name.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(16))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn bulk_threads_are_batch_and_io_threads_preempt_at_the_lowest_niceness() {
        // 3 = SCHED_BATCH, 0 = SCHED_OTHER (sched(7)).
        let bulk = spawn("t-bulk", || {
            (policy_of_this_thread(), nice_of_this_thread())
        });
        let io = spawn_io("t-io", || (policy_of_this_thread(), nice_of_this_thread()));
        assert_eq!(bulk.unwrap().join().unwrap(), (3, 19));
        assert_eq!(io.unwrap().join().unwrap(), (0, 19));
        // An I/O thread started from a bulk thread (as the slot writer's are, from the
        // verifier) gets its wake-up preemption back.
        let nested = spawn("t-outer", || {
            spawn_io("t-inner", || {
                (policy_of_this_thread(), nice_of_this_thread())
            })
            .unwrap()
            .join()
            .unwrap()
        });
        assert_eq!(nested.unwrap().join().unwrap(), (0, 19));
    }
}
