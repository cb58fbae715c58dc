//! The thread that answers this node's lookups and asks.
//!
//! zenoh runs subscriber and queryable callbacks on the thread that reads the link. A store read
//! there that waits for the disk (a data block evicted from the OS page cache) would hold up
//! everything else that peer sends: copies of records, rate-limit counters, liveliness. So the
//! callbacks only parse and hand the answer over; a store read that waits holds up the answers
//! behind it, nothing else. One thread keeps the extra hand-off at one wake-up per answer, and
//! fewer when answers queue; queued answers are batched on the wire. The queue is bounded: when
//! [`QUEUE`] answers wait, the callbacks wait too, and zenoh's flow control pushes back on the
//! askers as it did when answers were given in the callback.

use crate::AgentError;

/// Answers that may wait for the thread before the callbacks wait for it (about 0.1 s of asks at
/// 10,000/s).
pub(crate) const QUEUE: usize = 1024;

/// One answer to give, told whether more are queued behind it.
type Job = Box<dyn FnOnce(Queued) + Send>;

/// Whether more answers wait behind this one: an answer with others behind it may wait in
/// zenoh's batch for them; the last one goes out at once and takes the batch with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Queued(pub(crate) bool);

/// A handle to the answering thread; clones share it. The thread ends when the last handle is
/// dropped (the callbacks' with their subscribers and queryables), after the answers queued.
#[derive(Clone)]
pub(crate) struct Answerer {
    jobs: flume::Sender<Job>,
}

impl Answerer {
    /// Start the thread.
    pub(crate) fn start() -> Result<Self, AgentError> {
        let (jobs, queue) = flume::bounded::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("dlr-answer".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    let queued = Queued(!queue.is_empty());
                    // One answer that panics (a fault in what it read) must not take every later
                    // answer with the thread: it is logged and the next one is given.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(queued))).is_err() {
                        tracing::error!("a DLR answer failed with a panic; answering the next ones");
                    }
                }
            })
            .map_err(|source| AgentError::Thread { name: "dlr-answer", source })?;
        Ok(Self { jobs })
    }

    /// Give an answer on the answering thread; waits while the queue is full.
    pub(crate) fn run(&self, job: impl FnOnce(Queued) + Send + 'static) {
        // The receiver lives as long as any sender, this one included: the send cannot fail.
        let _ = self.jobs.send(Box::new(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_run_in_order_on_one_thread() {
        let answerer = Answerer::start().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..100 {
            let tx = tx.clone();
            answerer.run(move |_| tx.send((i, std::thread::current().name().map(str::to_owned))).unwrap());
        }
        let got: Vec<_> = (0..100).map(|_| rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap()).collect();
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>());
        assert!(got.iter().all(|g| g.1.as_deref() == Some("dlr-answer")));
    }

    #[test]
    fn an_answer_that_panics_leaves_the_thread_answering() {
        let answerer = Answerer::start().unwrap();
        answerer.run(|_| panic!("a bad answer"));
        let (tx, rx) = std::sync::mpsc::channel();
        answerer.run(move |_| tx.send(()).unwrap());
        assert!(rx.recv_timeout(std::time::Duration::from_secs(5)).is_ok(), "the thread died with the panic");
    }

    #[test]
    fn each_answer_knows_whether_more_wait_behind_it() {
        let answerer = Answerer::start().unwrap();
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        // The first answer holds the thread until three more are queued.
        answerer.run(move |_| hold.recv_timeout(std::time::Duration::from_secs(5)).unwrap());
        for i in 1..=3 {
            let tx = tx.clone();
            answerer.run(move |queued| tx.send((i, queued)).unwrap());
        }
        release.send(()).unwrap();
        let got: Vec<_> = (0..3).map(|_| rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap()).collect();
        assert_eq!(got, vec![(1, Queued(true)), (2, Queued(true)), (3, Queued(false))]);
    }
}
