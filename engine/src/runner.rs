//! The projection runner: follows the log from a stored checkpoint into the
//! Docker views, and tells waiting readers when the views reach a position.
//!
//! The views are checkpointed (MessagePack, with their position) every
//! [`CHECKPOINT_EVENT_COUNT`] events and at shutdown; on start the runner
//! resumes from the checkpoint, or rebuilds from position 0 when there is
//! none or it cannot be read (a newer schema, damage).

use berth_core::log::{EventLog, Subscription};
use berth_core::Position;
use berth_projections::DockerViews;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The checkpoint name of the Docker views.
pub const DOCKER_VIEWS_CHECKPOINT: &str = "projection/docker-views/v1";
/// Events between two checkpoints.
pub const CHECKPOINT_EVENT_COUNT: u64 = 50_000;
/// Events folded per read from the log.
const BATCH_EVENT_COUNT_MAX: usize = 4096;

/// A cheap, cloneable read handle on the views.
#[derive(Clone)]
pub struct ViewHandle {
    views: Arc<RwLock<DockerViews>>,
    position: tokio::sync::watch::Receiver<Position>,
}

impl ViewHandle {
    /// A handle on fixed views (replays, tests).
    pub fn fixed(views: DockerViews) -> ViewHandle {
        let (_sender, position) = tokio::sync::watch::channel(views.position);
        ViewHandle { views: Arc::new(RwLock::new(views)), position }
    }

    pub fn read<T>(&self, read: impl FnOnce(&DockerViews) -> T) -> T {
        read(&self.views.read())
    }

    pub fn position(&self) -> Position {
        *self.position.borrow()
    }

    /// Waits until the views have folded `position` (read-your-writes).
    /// Returns false if `timeout` passes first.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> bool {
        let mut receiver = self.position.clone();
        tokio::time::timeout(timeout, receiver.wait_for(|current| *current >= position)).await.map(|r| r.is_ok()).unwrap_or(false)
    }

    /// A receiver that changes whenever the views move.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Position> {
        self.position.clone()
    }
}

pub struct ProjectionRunner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ProjectionRunner {
    /// Loads the checkpoint, then follows the log on its own thread.
    pub fn start(log: Arc<dyn EventLog>) -> (ProjectionRunner, ViewHandle) {
        let views = match log.load_checkpoint(DOCKER_VIEWS_CHECKPOINT) {
            Ok(Some((position, bytes))) => match rmp_serde::from_slice::<DockerViews>(&bytes) {
                Ok(views) if views.position == position && position <= log.head() => views,
                Ok(_) | Err(_) => {
                    tracing::warn!("the views checkpoint cannot be used; rebuilding the views from position 0");
                    DockerViews::default()
                }
            },
            Ok(None) => DockerViews::default(),
            Err(error) => {
                tracing::warn!(%error, "cannot read the views checkpoint; rebuilding the views from position 0");
                DockerViews::default()
            }
        };
        let (sender, receiver) = tokio::sync::watch::channel(views.position);
        let views = Arc::new(RwLock::new(views));
        let handle = ViewHandle { views: views.clone(), position: receiver };
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("berth-projections".into())
            .spawn(move || follow(log, views, sender, thread_stop))
            .expect("spawning the projection thread");
        (ProjectionRunner { stop, thread: Some(thread) }, handle)
    }

    /// Stops following and writes a final checkpoint.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ProjectionRunner {
    fn drop(&mut self) {
        self.stop();
    }
}

fn save_checkpoint(log: &dyn EventLog, views: &RwLock<DockerViews>) {
    let (position, bytes) = {
        let views = views.read();
        (views.position, rmp_serde::to_vec_named(&*views).expect("views encode"))
    };
    if let Err(error) = log.save_checkpoint(DOCKER_VIEWS_CHECKPOINT, position, &bytes) {
        tracing::warn!(%error, "saving the views checkpoint failed");
    }
}

fn follow(log: Arc<dyn EventLog>, views: Arc<RwLock<DockerViews>>, sender: tokio::sync::watch::Sender<Position>, stop: Arc<AtomicBool>) {
    let start = views.read().position;
    let mut last_checkpoint = start;
    let mut subscription = Subscription::new(log.as_ref(), start, BATCH_EVENT_COUNT_MAX);
    while !stop.load(Ordering::Acquire) {
        let batch = match subscription.next_batch(Duration::from_millis(100)) {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(%error, "the projection runner cannot read the log; retrying");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let Some(last) = batch.last().map(|event| event.position) else { continue };
        {
            let mut views = views.write();
            for event in &batch {
                views.apply(event);
            }
        }
        sender.send_replace(last);
        if last.0 - last_checkpoint.0 >= CHECKPOINT_EVENT_COUNT {
            save_checkpoint(log.as_ref(), &views);
            last_checkpoint = last;
        }
    }
    if views.read().position != last_checkpoint {
        save_checkpoint(log.as_ref(), &views);
    }
}
