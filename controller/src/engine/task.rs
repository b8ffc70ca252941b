//! Background tasks that never outlive what started them.

use std::future::Future;

/// A background task, aborted when dropped, so that nothing a run (or a probe's
/// connection, or a load) started outlives it, however it ends.
pub struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl AbortOnDrop {
    pub fn spawn(task: impl Future<Output = ()> + Send + 'static) -> AbortOnDrop {
        AbortOnDrop(Some(tokio::spawn(task)))
    }

    /// Waits for the task to end by itself.
    pub async fn join(mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.await;
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}
