//! How `icn node` shows a running sync: a progress bar redrawn in place on a terminal, plain
//! log lines otherwise (a file, a pipe, journald).

use std::io::{IsTerminal, Write};
use std::rc::Rc;

use super::driver::{Progress, ProgressSink};

const BAR_CELLS: usize = 30;

/// One line describing `progress`: height, bar, percentage, bytes, rate, ETA, peers.
pub fn render(progress: &Progress, bar: bool) -> String {
    let fraction = if progress.bytes_total == 0 {
        0.0
    } else {
        progress.bytes_held as f64 / progress.bytes_total as f64
    };
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    let eta = if progress.done {
        format!("done in {:.1}s", progress.elapsed.as_secs_f64())
    } else if progress.rate_bytes_per_s > 0.0 {
        let left = progress.bytes_total.saturating_sub(progress.bytes_held) as f64;
        format!("ETA {:.0}s", left / progress.rate_bytes_per_s)
    } else {
        "ETA -".to_string()
    };
    let cells = ((fraction * BAR_CELLS as f64) as usize).min(BAR_CELLS);
    let bar = if bar {
        format!("[{}{}] ", "#".repeat(cells), "-".repeat(BAR_CELLS - cells))
    } else {
        String::new()
    };
    format!(
        "state sync height {}: {bar}{:5.1}% {:.1}/{:.1} MiB, {} of {} chunks, {:.1} MB/s, {eta}, {} peers",
        progress.height,
        fraction * 100.0,
        mib(progress.bytes_held),
        mib(progress.bytes_total),
        progress.chunks_held,
        progress.chunks_total,
        progress.rate_bytes_per_s / 1e6,
        progress.peers,
    )
}

/// The sink `icn node` uses: a bar on stderr when it is a terminal, lines on stdout otherwise.
pub fn console_sink() -> ProgressSink {
    let terminal = std::io::stderr().is_terminal();
    Rc::new(move |progress: &Progress| {
        if terminal {
            let mut err = std::io::stderr();
            let end = if progress.done { "\n" } else { "" };
            let _ = write!(err, "\r{}\x1b[K{end}", render(progress, true));
            let _ = err.flush();
        } else {
            println!("{}", render(progress, false));
            let _ = std::io::stdout().flush();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn renders_bar_rate_and_eta() {
        let progress = Progress {
            height: 120,
            bytes_held: 64 << 20,
            bytes_total: 256 << 20,
            chunks_held: 64,
            chunks_total: 256,
            rate_bytes_per_s: 32e6,
            elapsed: Duration::from_secs(2),
            peers: 3,
            done: false,
        };
        let line = render(&progress, true);
        assert!(line.contains("[#######-----------------------]"), "{line}");
        assert!(line.contains(" 25.0%"), "{line}");
        assert!(line.contains("64.0/256.0 MiB"), "{line}");
        assert!(line.contains("32.0 MB/s"), "{line}");
        assert!(line.contains("ETA 6s"), "{line}");
        let done = render(
            &Progress {
                done: true,
                bytes_held: 256 << 20,
                ..progress
            },
            false,
        );
        assert!(
            done.contains("100.0%") && done.contains("done in 2.0s"),
            "{done}"
        );
        assert!(!done.contains('['), "{done}");
    }
}
