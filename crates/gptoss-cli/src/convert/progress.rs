//! The conversion's progress bar (indicatif, on stderr, hidden when stderr is not a terminal) and
//! Ctrl-C handling: the first SIGINT/SIGTERM asks the writer to stop after the current tensor (it
//! then removes its temporary output); a second one exits at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

/// A flag set by SIGINT/SIGTERM while installed.
pub struct Interrupt {
    flag: Arc<AtomicBool>,
    ids: Vec<signal_hook_registry::SigId>,
}

impl Interrupt {
    /// Installs the handlers (removed again on drop).
    pub fn install() -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        let mut ids = Vec::new();
        for sig in [libc::SIGINT, libc::SIGTERM] {
            let f = flag.clone();
            // SAFETY: the action only swaps an atomic and calls `_exit`, both async-signal-safe.
            let id = unsafe {
                signal_hook_registry::register(sig, move || {
                    if f.swap(true, Ordering::SeqCst) {
                        libc::_exit(130);
                    }
                })
            }?;
            ids.push(id);
        }
        Ok(Interrupt { flag, ids })
    }

    /// True once a signal arrived.
    pub fn fired(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook_registry::unregister(id);
        }
    }
}

/// Bytes written out of the total, with the tensor last written.
pub struct Bar<'a> {
    bar: ProgressBar,
    dest: PathBuf,
    interrupt: &'a Interrupt,
}

impl<'a> Bar<'a> {
    /// A bar of `total_bytes` for writing `dest`.
    pub fn new(total_bytes: usize, dest: &Path, interrupt: &'a Interrupt) -> Self {
        let bar = ProgressBar::new(total_bytes as u64);
        let style = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {wide_msg}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Bar {
            bar,
            dest: dest.to_path_buf(),
            interrupt,
        }
    }

    /// Records a written tensor; fails (stopping the writer) once Ctrl-C was pressed.
    pub fn advance(&mut self, name: &str, bytes: usize) -> gptoss_formats::Result<()> {
        if self.interrupt.fired() {
            self.bar.abandon();
            return Err(gptoss_formats::Error::format(
                &self.dest,
                "interrupted: stopped before finishing; the partial output was removed",
            ));
        }
        self.bar.inc(bytes as u64);
        self.bar.set_message(name.to_string());
        Ok(())
    }

    /// Clears the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
