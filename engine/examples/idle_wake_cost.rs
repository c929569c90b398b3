//! What `engine.wake_tick_us` costs: two idle shards (as `icn node` starts them, 100 µs spin
//! before park) wait for shutdown for SECONDS; prints the process CPU time used, per shard.
//!
//! `cargo run --release -p icn-engine --example idle_wake_cost -- TICK_US SECONDS`; compare a
//! tick against a long one (1000000) run right beside it on the same machine.
use icn_engine::shard::{run_shards, ShardConfig, Shutdown};
use std::time::Duration;

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let time = |tv: libc::timeval| {
        Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(Ok(tick_us)), Some(Ok(seconds))) = (
        args.next().map(|a| a.parse::<u64>()),
        args.next().map(|a| a.parse::<u64>()),
    ) else {
        eprintln!("usage: idle_wake_cost TICK_US SECONDS");
        std::process::exit(2);
    };
    const SHARDS: usize = 2;
    let config = ShardConfig {
        shards: SHARDS,
        pin_cores: false,
        spin_before_park: Some(Duration::from_micros(
            icn_tuning::ENGINE_SPIN_BEFORE_PARK_US_DEFAULT,
        )),
        wake_tick: Duration::from_micros(tick_us),
        ..ShardConfig::default()
    };
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    let before = cpu_time();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(seconds));
        trigger.trigger();
    });
    let result =
        run_shards::<(), (), _, _>(
            &config,
            shutdown,
            |ctx| async move { ctx.shutdown.wait().await },
        );
    if let Err(error) = result {
        eprintln!("shards: {error}");
        std::process::exit(1);
    }
    let used = cpu_time() - before;
    println!(
        "wake tick {tick_us} us, {SHARDS} idle shards for {seconds} s: {used:?} CPU, {:.3}% of a core per shard",
        used.as_secs_f64() / seconds as f64 / SHARDS as f64 * 100.0
    );
}
