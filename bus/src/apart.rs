//! A single-threaded runtime on a thread of its own, for connections whose requests must be read,
//! answered and written on one thread.
//!
//! On the process's multi-threaded runtime, a connection task that is woken while its worker
//! thread is busy wakes an idle worker to steal it; a gateway asking one request at a time then
//! pays for its connection moving between threads, a cross-CPU wake-up each time (measured on
//! the agent's HTTP API: every answer was followed by a wake of the other worker, and the
//! connection alternated between them). On a runtime of one thread nothing moves. Blocking work
//! still goes to that runtime's own blocking threads (`spawn_blocking`), and asks on the bus
//! are answered by zenoh's threads as from anywhere else.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;

/// How long a stopping runtime waits for its blocking work (a store write, say) to finish.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// Run `work()` to its end on a new single-threaded runtime, on a thread of its own. The handle
/// (of the process's runtime) ends when `work` does, and carries its panic if it panics, so that
/// [`crate::vital::watch`] can follow it.
pub fn spawn<F, Fut>(work: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    Ok(tokio::task::spawn_blocking(move || {
        runtime.block_on(work());
        runtime.shutdown_timeout(STOP_WAIT);
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tasks spawned by the work run on the work's own thread, and the handle follows the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_work_and_what_it_spawns_run_on_one_thread() {
        let handle = spawn(|| async {
            let here = std::thread::current().id();
            let there = tokio::spawn(async { std::thread::current().id() }).await.unwrap();
            assert_eq!(here, there);
        })
        .unwrap();
        handle.await.unwrap();
    }

    /// A panic of the work reaches the handle.
    #[tokio::test]
    async fn a_panic_reaches_the_handle() {
        let handle = spawn(|| async { panic!("gone") }).unwrap();
        assert!(handle.await.unwrap_err().is_panic());
    }
}
