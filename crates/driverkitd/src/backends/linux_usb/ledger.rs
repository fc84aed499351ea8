//! The interfaces this daemon took from their kernel drivers, written down
//! before each detach and crossed out after each re-attach, so that a daemon
//! killed with SIGKILL leaves nothing detached for good: the next start
//! re-attaches whatever is still listed.
//!
//! One line per interface: its sysfs directory, a space, the driver's name.
//! The file is replaced whole (written, synced, renamed), never edited.

use driverkit_wire::sync::Locked;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct Ledger {
    path: PathBuf,
    entries: Mutex<BTreeMap<PathBuf, String>>,
}

impl Ledger {
    /// The ledger at `path`, with what a previous daemon left in it.
    pub fn open(path: PathBuf) -> Ledger {
        let entries = std::fs::read_to_string(&path)
            .map(|text| parse(&text))
            .unwrap_or_default();
        Ledger {
            path,
            entries: Mutex::new(entries),
        }
    }

    /// What a previous daemon left detached.
    pub fn left_over(&self) -> Vec<(PathBuf, String)> {
        self.lock()
            .iter()
            .map(|(p, d)| (p.clone(), d.clone()))
            .collect()
    }

    /// Writes down that `driver` is being detached from `interface`.
    pub fn detaching(&self, interface: &Path, driver: &str) {
        let mut entries = self.lock();
        entries.insert(interface.to_owned(), driver.to_owned());
        self.write(&entries);
    }

    /// Crosses `interface` out: its driver is back, or it is gone.
    pub fn attached(&self, interface: &Path) {
        let mut entries = self.lock();
        if entries.remove(interface).is_some() {
            self.write(&entries);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PathBuf, String>> {
        self.entries.locked()
    }

    fn write(&self, entries: &BTreeMap<PathBuf, String>) {
        let text: String = entries
            .iter()
            .map(|(p, d)| format!("{} {d}\n", p.display()))
            .collect();
        let temp = self.path.with_extension("new");
        let written = std::fs::create_dir_all(self.path.parent().unwrap_or(Path::new(".")))
            .and_then(|()| std::fs::File::create(&temp))
            .and_then(|mut f| {
                f.write_all(text.as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&temp, &self.path));
        if let Err(e) = written {
            tracing::warn!(
                "usb      cannot write {}: {e}; a kill -9 now would leave interfaces detached",
                self.path.display()
            );
        }
    }
}

/// The ledger file's lines; anything that is not `/path driver` is skipped
/// (the file may be cut short by a crash, or damaged).
pub fn parse(text: &str) -> BTreeMap<PathBuf, String> {
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(p, d)| p.starts_with('/') && !d.is_empty())
        .map(|(p, d)| (PathBuf::from(p), d.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_down_survives_a_restart_until_crossed_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("detached");
        let ledger = Ledger::open(path.clone());
        ledger.detaching(Path::new("/sys/bus/usb/devices/1-1/1-1:1.0"), "usbhid");
        ledger.detaching(Path::new("/sys/bus/usb/devices/1-2/1-2:1.0"), "ftdi_sio");
        ledger.attached(Path::new("/sys/bus/usb/devices/1-2/1-2:1.0"));
        let again = Ledger::open(path);
        assert_eq!(
            again.left_over(),
            [(
                PathBuf::from("/sys/bus/usb/devices/1-1/1-1:1.0"),
                "usbhid".to_owned()
            )]
        );
        assert!(parse("garbage\n relative usbhid\n/x \n").is_empty());
    }
}
