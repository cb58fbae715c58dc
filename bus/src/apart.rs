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

/// Run the future that `make` returns to its end on a new single-threaded runtime, on a thread
/// named `name`. `make` runs here, inside that runtime's context, so that what it binds to the
/// runtime (a listener from `from_std`) fails here, with its error. The handle (of the process's
/// runtime) ends when the future does and carries its panic if it panics, so that
/// [`crate::vital::watch`] can follow it. The thread does not keep the process from exiting.
pub fn spawn<F, Fut>(name: &str, make: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() -> std::io::Result<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut runtime = Owned(Some(tokio::runtime::Builder::new_current_thread().enable_all().build()?));
    let work = match &runtime.0 {
        Some(r) => {
            let _inside = r.enter();
            make()?
        }
        None => return Err(std::io::Error::other("no runtime")),
    };
    let (done, ended) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name(name.to_owned()).spawn(move || {
        let Some(r) = runtime.0.take() else { return };
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.block_on(work)));
        r.shutdown_timeout(STOP_WAIT);
        let _ = done.send(ran);
    })?;
    Ok(tokio::spawn(async move {
        if let Ok(Err(panic)) = ended.await {
            // Carried to the handle, as a task's own panic would be.
            std::panic::resume_unwind(panic);
        }
    }))
}

/// A runtime that, dropped unused (a failed start, a thread that could not be made), is let go
/// without waiting: the caller is on an async runtime, where waiting is not allowed.
struct Owned(Option<tokio::runtime::Runtime>);

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            r.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tasks spawned by the work run on the work's own thread, and the handle follows the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_work_and_what_it_spawns_run_on_one_thread() {
        let handle = spawn("sb-test", || {
            Ok(async {
                let here = std::thread::current().id();
                assert_eq!(std::thread::current().name(), Some("sb-test"));
                let there = tokio::spawn(async { std::thread::current().id() }).await.unwrap();
                assert_eq!(here, there);
            })
        })
        .unwrap();
        handle.await.unwrap();
    }

    /// A panic of the work reaches the handle; an error of `make` is returned at once.
    #[tokio::test]
    async fn a_panic_reaches_the_handle_and_a_failed_start_is_an_error() {
        let handle = spawn("sb-test", || Ok(async { panic!("gone") })).unwrap();
        assert!(handle.await.unwrap_err().is_panic());
        let failed = spawn("sb-test", || -> std::io::Result<std::future::Ready<()>> {
            Err(std::io::Error::other("no listener"))
        });
        assert_eq!(failed.unwrap_err().to_string(), "no listener");
    }
}
