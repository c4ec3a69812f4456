//! Terminal helpers: spinners for long steps.

use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A flag that becomes true on Ctrl-C (SIGINT). Emulators run in their own process
/// groups, so the terminal does not signal them: whoever waits on them checks this flag
/// and stops them. The handler is installed once; later calls (a command that runs
/// scenarios in several batches) get the same flag, so a Ctrl-C during one batch also
/// stops the ones after it.
pub fn ctrl_c_flag() -> Result<Arc<AtomicBool>, String> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    if let Some(flag) = FLAG.get() {
        return Ok(Arc::clone(flag));
    }
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = Arc::clone(&flag);
    ctrlc::set_handler(move || handler_flag.store(true, Ordering::SeqCst))
        .map_err(|e| format!("installing the Ctrl-C handler: {e}"))?;
    Ok(Arc::clone(FLAG.get_or_init(|| flag)))
}

/// A spinner with `message`, ticking on its own (hidden when stderr is not a terminal).
pub fn spinner(message: impl Into<String>) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"));
    pb.set_message(message.into());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Runs `step` under a spinner showing `message`; clears the spinner afterwards.
pub fn with_spinner<T>(message: &str, step: impl FnOnce() -> T) -> T {
    let pb = spinner(message);
    let out = step();
    pb.finish_and_clear();
    out
}

/// Human-readable byte size.
pub fn human_size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes as f64 >= MIB {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_batch_gets_the_one_ctrl_c_flag() {
        let first = ctrl_c_flag().unwrap();
        let second = ctrl_c_flag().unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert!(!second.load(Ordering::SeqCst));
    }
}
