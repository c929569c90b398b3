//! Deterministic simulation: a single-threaded executor with a virtual clock and a seeded PRNG.
//!
//! A whole subnet (nodes, the memory transport between them, injected faults) runs on one thread
//! inside one [`Sim`]. Given the same seed and the same code, a run polls the same tasks in the same
//! order, fires the same timers at the same virtual instants and draws the same random numbers, so
//! a failure seen in CI replays exactly from the seed it printed (see [`test_seed`]).
//!
//! - Scheduling: woken tasks run in wake order (one FIFO); tasks are stored by increasing id.
//! - Time: [`SimHandle::now`] is virtual. When no task is runnable the clock jumps to the earliest
//!   timer; nothing ever sleeps for real.
//! - Randomness: all of it comes from the simulation's [`SimRng`] ([`SimHandle::with_rng`]).
//! - Runaway runs end with a [`SimError`] (bounded polls per instant and per run), not a hang.
//!
//! Code reaches the simulation either through an explicit [`SimHandle`] (preferred: the memory
//! transport keeps one) or through the free functions below, which use the simulation currently
//! running on this thread.

mod executor;
mod rng;

pub use executor::{
    Elapsed, JoinError, JoinHandle, Sim, SimConfig, SimError, SimHandle, Sleep, Timeout, YieldNow,
};
pub use rng::SimRng;

use std::future::Future;
use std::time::Duration;

/// Environment variable that overrides a test's seed, to replay a failure.
pub const SEED_ENV: &str = "ICN_SIM_SEED";

/// The seed a simulated test should use: `ICN_SIM_SEED` if set (decimal or 0x-hex), else
/// `default`. Prints it, so that every failing run names the seed that replays it.
pub fn test_seed(default: u64) -> u64 {
    let seed = std::env::var(SEED_ENV)
        .ok()
        .and_then(|text| parse_seed(&text))
        .unwrap_or(default);
    eprintln!("seed={seed}");
    seed
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Virtual time of the simulation running on this thread.
pub fn now() -> Duration {
    SimHandle::current().now()
}

/// Sleeps for `duration` of virtual time in the simulation running on this thread.
pub fn sleep(duration: Duration) -> Sleep {
    SimHandle::current().sleep(duration)
}

/// Sleeps until virtual time `deadline` in the simulation running on this thread.
pub fn sleep_until(deadline: Duration) -> Sleep {
    SimHandle::current().sleep_until(deadline)
}

/// Bounds `future` by `duration` of virtual time in the simulation running on this thread.
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    SimHandle::current().timeout(duration, future)
}

/// Spawns onto the simulation running on this thread.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    SimHandle::current().spawn(future)
}

/// Lets other runnable tasks run first.
pub fn yield_now() -> YieldNow {
    SimHandle::current().yield_now()
}

#[cfg(test)]
mod tests;
