//! Threads for attempts, kept for the next one when theirs ends: an attempt
//! blocks its thread from set-up to exit, and at hundreds of short attempts a
//! second a new thread for each (its stack, its allocator cache, their
//! teardown) was a visible share of the agent's time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// How long an idle thread waits for another attempt before it ends.
const IDLE_FOR: Duration = Duration::from_secs(30);

/// An idle thread: its number and the channel it waits on.
type Idle = (u64, Sender<Job>);

#[derive(Default)]
pub(crate) struct Workers {
    idle: Arc<Mutex<Vec<Idle>>>,
    made: AtomicU64,
}

impl Workers {
    /// Runs `job` on an idle thread, or on a new one.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let mut job: Job = Box::new(job);
        {
            // Handed over under the lock, so a thread that has taken itself
            // off the list (see `serve`) is sent nothing after.
            let mut idle = self.lock();
            while let Some((_, worker)) = idle.pop() {
                match worker.send(job) {
                    Ok(()) => return Ok(()),
                    // Its thread has ended: the job comes back.
                    Err(mpsc::SendError(back)) => job = back,
                }
            }
        }
        let (tx, rx) = mpsc::channel();
        tx.send(job).expect("the receiver is alive");
        let idle = self.idle.clone();
        let number = self.made.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new()
            .name("attempt".into())
            .spawn(move || serve(number, rx, tx, &idle))
            .map(drop)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn serve(number: u64, rx: Receiver<Job>, tx: Sender<Job>, idle: &Mutex<Vec<Idle>>) {
    loop {
        match rx.recv_timeout(IDLE_FOR) {
            Ok(job) => {
                job();
                idle.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((number, tx.clone()));
            }
            // Idle too long: off the list, then whatever was sent before that, then the end.
            Err(RecvTimeoutError::Timeout) => {
                idle.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|(n, _)| *n != number);
                while let Ok(job) = rx.try_recv() {
                    job();
                }
                return;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::thread::ThreadId;

    #[test]
    fn jobs_one_after_another_share_a_thread() {
        let workers = Workers::default();
        let (tx, rx) = channel();
        let mut ids: Vec<ThreadId> = Vec::new();
        for _ in 0..3 {
            let tx = tx.clone();
            workers
                .run(move || tx.send(std::thread::current().id()).unwrap())
                .unwrap();
            ids.push(rx.recv().unwrap());
            // Back on the idle list once its job has returned.
            while workers.lock().is_empty() {
                std::thread::yield_now();
            }
        }
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    }

    #[test]
    fn a_busy_thread_is_not_given_another_job() {
        let workers = Workers::default();
        let (release, held) = channel::<()>();
        let (started, first) = channel();
        workers
            .run(move || {
                started.send(std::thread::current().id()).unwrap();
                let _ = held.recv();
            })
            .unwrap();
        let busy = first.recv().unwrap();
        let (tx, rx) = channel();
        workers
            .run(move || tx.send(std::thread::current().id()).unwrap())
            .unwrap();
        let other = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the second job ran while the first was busy");
        assert_ne!(busy, other);
        drop(release);
    }
}
