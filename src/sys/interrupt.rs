//! Ctrl-C and SIGTERM, process-wide: the clean-ups registered here run once, then the process
//! exits 130. Whoever starts something that must not outlive the process (a container)
//! registers how to remove it; threads that see their worker die meanwhile wait in
//! [`hold_if_interrupted`] instead of taking the death for a crash.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

type Cleanup = Box<dyn Fn() + Send>;

/// Clean-ups by key, so that registering the same thing twice runs it once.
static CLEANUPS: Mutex<Vec<(String, Cleanup)>> = Mutex::new(Vec::new());
static HANDLER: Once = Once::new();
/// Set when SIGINT/SIGTERM arrived: the clean-ups are running and the process will exit.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Runs `cleanup` (once per `key`) when the process is interrupted, then exits 130. The signal
/// handler is installed before this returns, so no interrupt can slip past it.
pub fn on_interrupt(key: &str, cleanup: impl Fn() + Send + 'static) {
    if let Ok(mut list) = CLEANUPS.lock() {
        if !list.iter().any(|(k, _)| k == key) {
            list.push((key.to_string(), Box::new(cleanup)));
        }
    }
    install();
}

/// After an interrupt the workers die because their clean-ups remove them; the caller must not
/// take that for a crash and carry on, so the thread waits here for the exit.
pub fn hold_if_interrupted() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn install() {
    #[cfg(unix)]
    HANDLER.call_once(|| {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        let (int, term) = {
            let _guard = rt.enter();
            (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        };
        let (Ok(mut int), Ok(mut term)) = (int, term) else {
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("tagbench-interrupt".into())
            .spawn(move || {
                rt.block_on(async {
                    tokio::select! {
                        _ = int.recv() => {},
                        _ = term.recv() => {},
                    }
                });
                INTERRUPTED.store(true, Ordering::SeqCst);
                eprintln!("\ninterrupted");
                if let Ok(list) = CLEANUPS.lock() {
                    for (_, cleanup) in list.iter() {
                        cleanup();
                    }
                }
                std::process::exit(crate::outcome::Outcome::Interrupted.code());
            });
        if let Err(e) = spawned {
            eprintln!("warning: failed to watch for Ctrl-C ({e}); interrupted runs may leave containers (`tagbench clean` removes them)");
        }
    });
}
