pub mod accounting;
pub mod agent;
pub mod churn;
pub mod command;
pub mod containerd;
pub mod dns;
pub mod https_server;
pub mod loopdisk;
pub mod netns;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod tls;

/// A test's time bound, multiplied by `CHAOS_TEST_SLOWDOWN` (default 1). The VM suite sets it:
/// under software emulation page faults and process starts are 5-20x slower, so a bound that
/// measures the agent on real hardware would measure the emulator there.
pub fn scaled(bound: std::time::Duration) -> std::time::Duration {
    let factor = std::env::var("CHAOS_TEST_SLOWDOWN")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|f| *f >= 1)
        .unwrap_or(1);
    bound * factor
}

/// `scripts/test --long` sets `CHAOS_TEST_LONG=1`: the reliability tests then run their full
/// figures (50 crash trials, the whole soak) instead of the short version that fits CI.
pub fn long_run() -> bool {
    std::env::var("CHAOS_TEST_LONG").as_deref() == Ok("1")
}

/// `short` in CI, `long` under `scripts/test --long`.
pub fn trials(short: usize, long: usize) -> usize {
    if long_run() { long } else { short }
}
