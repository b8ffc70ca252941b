//! Wall-clock times for the API (deadlines are enforced on the monotonic clock).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn unix_ms_after(delay: Duration) -> i64 {
    unix_ms_now() + delay.as_millis() as i64
}
