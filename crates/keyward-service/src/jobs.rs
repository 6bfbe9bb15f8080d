//! Background jobs, each a named task of its own under one supervisor: a job that fails (or
//! panics) in one run is logged and runs again at its next tick, and every job stops at
//! [`Jobs::shutdown`].
//!
//! A job holds its service weakly: once the authority is dropped, its jobs end by themselves.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

struct Job {
    name: &'static str,
    /// A read-only job is cut short at shutdown; the others finish the run in hand.
    abort_at_shutdown: bool,
    task: JoinHandle<()>,
}

pub(crate) struct Jobs {
    stop: watch::Sender<bool>,
    jobs: std::sync::Mutex<Vec<Job>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let jobs = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_list().entries(jobs.iter().map(|j| j.name)).finish()
    }
}

impl Jobs {
    pub(crate) fn new() -> Self {
        Jobs {
            stop: watch::channel(false).0,
            jobs: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn add(&self, name: &'static str, abort_at_shutdown: bool, task: JoinHandle<()>) {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Job {
                name,
                abort_at_shutdown,
                task,
            });
    }

    /// Runs `run` on `service` once, beside serving; it only reads, so shutdown cuts it short.
    pub(crate) fn once<T, F, Fut>(&self, name: &'static str, service: &Arc<T>, run: F)
    where
        T: Send + Sync + 'static,
        F: FnOnce(Arc<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let service = Arc::downgrade(service);
        let task = tokio::spawn(async move {
            if let Some(service) = service.upgrade() {
                run(service).await;
            }
        });
        self.add(name, true, task);
    }

    /// Runs `run` on `service` every `period` (and whenever `wake` is notified), until shutdown
    /// or until the service is gone. Each run is a task of its own: a panic ends that run, is
    /// logged, and the job goes on at its next tick.
    pub(crate) fn every<T, F, Fut>(
        &self,
        name: &'static str,
        period: Duration,
        wake: Option<Arc<Notify>>,
        service: &Arc<T>,
        run: F,
    ) where
        T: Send + Sync + 'static,
        F: Fn(Arc<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let service: Weak<T> = Arc::downgrade(service);
        let mut stopped = self.stop.subscribe();
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // A notification while a run is in hand is kept (a permit) for the next wait.
                let woken = async {
                    match &wake {
                        Some(wake) => wake.notified().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = woken => {}
                    _ = stopped.changed() => return,
                }
                let Some(service) = service.upgrade() else {
                    return;
                };
                if let Err(e) = tokio::spawn(run(service)).await
                    && e.is_panic()
                {
                    tracing::error!(
                        job = name,
                        "a background job panicked; it runs again at its next tick"
                    );
                }
                if *stopped.borrow() {
                    return;
                }
            }
        });
        self.add(name, false, task);
    }

    /// Like [`Jobs::every`], for work only one node may do at a time: each run happens only
    /// while this node leads (see [`keyward_store::Store::leads`]).
    pub(crate) fn every_leading<T, F, Fut>(
        &self,
        name: &'static str,
        period: Duration,
        wake: Option<Arc<Notify>>,
        store: &Arc<dyn keyward_store::Store>,
        service: &Arc<T>,
        run: F,
    ) where
        T: Send + Sync + 'static,
        F: Fn(Arc<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let store = Arc::clone(store);
        let run = Arc::new(run);
        self.every(name, period, wake, service, move |service| {
            let (store, run) = (Arc::clone(&store), Arc::clone(&run));
            async move {
                if store.leads() {
                    run(service).await;
                }
            }
        });
    }

    /// Stops every job: read-only ones at once, the others after the run in hand.
    pub(crate) async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let jobs = std::mem::take(&mut *self.jobs.lock().unwrap_or_else(|p| p.into_inner()));
        for job in jobs {
            if job.abort_at_shutdown {
                job.task.abort();
            }
            let _ = job.task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Counter {
        runs: AtomicUsize,
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_run_is_logged_and_the_job_goes_on_until_shutdown() {
        let jobs = Jobs::new();
        let counter = Arc::new(Counter::default());
        jobs.every(
            "flaky",
            Duration::from_secs(1),
            None,
            &counter,
            |c| async move {
                let run = c.runs.fetch_add(1, Ordering::SeqCst);
                assert!(run != 1, "the second run fails");
            },
        );
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(1001)).await;
        }
        let before = counter.runs.load(Ordering::SeqCst);
        assert!(before >= 4, "runs after a panic go on: {before}");
        jobs.shutdown().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            counter.runs.load(Ordering::SeqCst),
            before,
            "no run after shutdown"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_runs_the_job_at_once_and_a_dropped_service_ends_it() {
        let jobs = Jobs::new();
        let counter = Arc::new(Counter::default());
        let wake = Arc::new(Notify::new());
        jobs.every(
            "woken",
            Duration::from_secs(3600),
            Some(Arc::clone(&wake)),
            &counter,
            |c| async move {
                c.runs.fetch_add(1, Ordering::SeqCst);
            },
        );
        // The first tick is at once.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(counter.runs.load(Ordering::SeqCst), 1);
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(counter.runs.load(Ordering::SeqCst), 2);
        // Once the service is gone the job ends by itself: shutdown finds nothing running.
        drop(counter);
        wake.notify_one();
        tokio::time::timeout(Duration::from_secs(1), jobs.shutdown())
            .await
            .expect("jobs end once their service is dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_shot_job_is_cut_short_at_shutdown() {
        let jobs = Jobs::new();
        let counter = Arc::new(Counter::default());
        jobs.once("slow", &counter, |c| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            c.runs.fetch_add(1, Ordering::SeqCst);
        });
        tokio::time::timeout(Duration::from_secs(1), jobs.shutdown())
            .await
            .expect("a read-only job does not hold up shutdown");
        assert_eq!(counter.runs.load(Ordering::SeqCst), 0);
    }
}
