//! The one thread that reads every dext's main socket.
//!
//! A dext's main socket carries replies to the daemon's calls, call channels
//! and memory it registers, and its end: EOF when the process exits or
//! crashes. None of that needs a thread of its own, so one epoll thread
//! reads them all (a thread per process made a thousand dexts a thousand
//! daemon threads). What could block it (a call that came on the socket
//! instead of a channel, reaping an ended process) runs on the daemon's
//! workers instead.

use driverkit_wire::sync::Locked;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use driverkit_wire::transport::MessageBuf;
use rustix::event::epoll;

use crate::lifecycle::Inner;
use crate::process::Process;
use crate::user_server::UserServer;

/// A process being read: what its end needs.
struct Watched {
    server: Arc<UserServer>,
    child: Process,
    daemon: Weak<Inner>,
    /// The process itself (`pidfd_open`), readable once it has exited: its
    /// end even while something it left behind (a child it forked, which
    /// its cgroup then ends) still holds the socket open.
    pidfd: Option<OwnedFd>,
}

/// Marks a token as a process's pidfd rather than its socket.
const PROCESS: u64 = 1 << 63;

struct Reader {
    epoll: OwnedFd,
    watched: Mutex<HashMap<u64, Watched>>,
    next: AtomicU64,
}

static READER: OnceLock<Result<Reader, rustix::io::Errno>> = OnceLock::new();

/// Most messages taken from one socket before the others get their turn.
const BURST: usize = 64;

/// Most messages read from an exited process's socket before its end is
/// handled (what it left behind could otherwise keep writing for ever).
const DRAIN: usize = 4096;

fn reader() -> std::io::Result<&'static Reader> {
    // The thread is handed the reader once it is in the static (as the log
    // hub does): one started inside the initialisation could look first.
    let mut created = false;
    let reader = READER
        .get_or_init(|| {
            created = true;
            let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
            Ok(Reader {
                epoll,
                watched: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
            })
        })
        .as_ref()
        .map_err(|e| std::io::Error::from(*e))?;
    if created {
        std::thread::Builder::new()
            .name("dext-sockets".into())
            .spawn(move || reader.run())
            .map_err(|e| {
                std::io::Error::other(format!(
                    "cannot start the thread that reads dext sockets: {e}"
                ))
            })?;
    }
    Ok(reader)
}

/// Reads `server`'s main socket from now until the process ends; then its
/// end is handled (its calls failed, `child` reaped, the daemon told).
pub(crate) fn watch(
    server: Arc<UserServer>,
    child: Process,
    daemon: Weak<Inner>,
) -> std::io::Result<()> {
    let reader = reader()?;
    let token = reader.next.fetch_add(1, Ordering::Relaxed);
    let pidfd = rustix::process::Pid::from_raw(child.id() as i32).and_then(|pid| {
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
    });
    let mut watched = reader.watched.locked();
    // Added to the table before epoll can report it.
    watched.insert(
        token,
        Watched {
            server: server.clone(),
            child,
            daemon,
            pidfd: None,
        },
    );
    let added = epoll::add(
        &reader.epoll,
        server.socket(),
        epoll::EventData::new_u64(token),
        epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
    );
    if let Err(e) = added {
        watched.remove(&token);
        return Err(e.into());
    }
    if let Some(fd) = pidfd {
        let added = epoll::add(
            &reader.epoll,
            &fd,
            epoll::EventData::new_u64(token | PROCESS),
            epoll::EventFlags::IN,
        );
        if added.is_ok() {
            if let Some(w) = watched.get_mut(&token) {
                w.pidfd = Some(fd);
            }
        }
    }
    Ok(())
}

impl Reader {
    fn run(&self) {
        let mut buf = MessageBuf::default();
        crate::epoll_loop::run(&self.epoll, "dext sockets are", |event| {
            let token = event & !PROCESS;
            let (server, daemon) = {
                let watched = self.watched.locked();
                match watched.get(&token) {
                    Some(w) => (w.server.clone(), w.daemon.clone()),
                    None => return,
                }
            };
            if event & PROCESS != 0 {
                // The process has exited: what it wrote before is read
                // first, then its end is handled, whoever still holds its
                // socket.
                let end = server
                    .read_ready(&mut buf, &daemon, DRAIN)
                    .unwrap_or_else(|| {
                        "exited (its socket still held by something it started)".to_owned()
                    });
                self.finish(token, end);
            } else if let Some(end) = server.read_ready(&mut buf, &daemon, BURST) {
                self.finish(token, end);
            }
        });
    }

    /// Stops reading a process's socket and hands its end to a worker.
    fn finish(&self, token: u64, end: String) {
        let Some(w) = self.watched.locked().remove(&token) else {
            return;
        };
        let _ = epoll::delete(&self.epoll, w.server.socket());
        if let Some(fd) = &w.pidfd {
            let _ = epoll::delete(&self.epoll, fd);
        }
        let Watched {
            server,
            child,
            daemon,
            ..
        } = w;
        let workers = daemon.upgrade().map(|d| d.io_workers.clone());
        let ended = move || server.ended(child, &end, &daemon);
        match workers {
            Some(workers) => workers.run(ended),
            None => ended(),
        }
    }
}
