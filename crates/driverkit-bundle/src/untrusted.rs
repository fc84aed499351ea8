//! Files someone else controls: an app's bundle, as a root daemon reads
//! it for an unprivileged user.
//!
//! Everything here assumes the files are hostile. A path inside a bundle
//! is resolved beneath the bundle's directory with no symbolic link
//! followed (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), so a
//! link to `/etc/shadow` or `/dev/zero` is refused by name rather than
//! read. Files are opened `O_NONBLOCK`, so a FIFO cannot stall the reader,
//! and only regular files and directories are accepted (a FIFO, socket or
//! device node is refused by name). Sizes are bounded before anything is
//! read, and so are a tree's depth and entry count. A file that carries
//! privileges (setuid, setgid) or that any user may change (`o+w`) is
//! refused too: the first must never reach a root-owned store, and the
//! second could change between the system's check and its copy.
//!
//! Only the directory the user named is opened by its path (following
//! links in it, as any program given a path does); everything under it is
//! reached through its descriptor.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// The largest property list (`Info.plist`, `Entitlements.plist`) read.
pub const MAX_PLIST: u64 = 1 << 20;
/// The largest file of a bundle.
pub const MAX_FILE: u64 = 256 << 20;
/// The largest bundle: all of its files together.
pub const MAX_BUNDLE: u64 = 1 << 30;
/// The most files and folders a bundle may hold.
pub const MAX_ENTRIES: usize = 10_000;
/// The deepest a bundle's folders may nest.
pub const MAX_DEPTH: usize = 16;

/// What a walk finds: a folder, or a regular file opened for reading.
pub enum Item {
    Dir,
    File {
        file: File,
        size: u64,
        /// Any of the owner, group or other execute bits.
        executable: bool,
    },
}

/// Opens the directory `path` names (the one path followed as given).
pub fn open_dir(path: &Path) -> Result<OwnedFd, String> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOTDIR => format!("{}: not a directory", path.display()),
        e => format!("{}: {e}", path.display()),
    })
}

/// Opens `rel` beneath `dir` without following any link; `shown` is
/// `dir`'s path, for messages. `None` when it does not exist.
fn open_beneath(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
    shown: &Path,
) -> Result<Option<OwnedFd>, String> {
    let name = shown.join(rel);
    // openat2 refuses O_PATH with anything but these.
    let flags = if flags.contains(OFlags::PATH) {
        flags | OFlags::CLOEXEC | OFlags::NOFOLLOW
    } else {
        flags | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK
    };
    match rustix::fs::openat2(
        dir,
        rel,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(rustix::io::Errno::LOOP) => Err(format!(
            "{}: a symbolic link (or a path through one); links are not followed inside a bundle: put the file itself there",
            name.display()
        )),
        Err(rustix::io::Errno::XDEV) => Err(format!(
            "{}: the path leads out of the bundle",
            name.display()
        )),
        Err(rustix::io::Errno::NOTDIR) if flags.contains(OFlags::DIRECTORY) => {
            Err(format!("{}: not a directory", name.display()))
        }
        Err(e) => Err(format!("{}: {e}", name.display())),
    }
}

/// Opens the folder `rel` beneath `dir`; `None` when it does not exist.
pub fn open_dir_in(
    dir: BorrowedFd<'_>,
    rel: &Path,
    shown: &Path,
) -> Result<Option<OwnedFd>, String> {
    open_beneath(dir, rel, OFlags::DIRECTORY, shown)
}

/// What kind of thing a node that is neither a file nor a folder is, for
/// refusals.
fn kind_name(kind: FileType) -> &'static str {
    match kind {
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device node",
        FileType::BlockDevice => "a block device node",
        _ => "not a regular file",
    }
}

/// Refuses modes a bundle's file or folder must not have.
fn check_mode(name: &Path, mode: u32) -> Result<(), String> {
    if mode & 0o4000 != 0 {
        return Err(format!(
            "{}: setuid (mode {:04o}); a dext's files never carry privileges: chmod u-s",
            name.display(),
            mode & 0o7777
        ));
    }
    if mode & 0o2000 != 0 {
        return Err(format!(
            "{}: setgid (mode {:04o}); a dext's files never carry privileges: chmod g-s",
            name.display(),
            mode & 0o7777
        ));
    }
    if mode & 0o002 != 0 {
        return Err(format!(
            "{}: writable by any user (mode {:04o}), so anyone could change it after it was checked: chmod o-w",
            name.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Opens the node `rel` beneath `dir` and says what it is; a file is
/// checked against `limit`.
fn open_item(
    dir: BorrowedFd<'_>,
    rel: &Path,
    shown: &Path,
    limit: u64,
) -> Result<Option<Item>, String> {
    let name = shown.join(rel);
    // O_PATH first: it opens anything (a FIFO without its open blocking,
    // a device without its driver running) so its type can be seen.
    let Some(node) = open_beneath(dir, rel, OFlags::PATH, shown)? else {
        return Ok(None);
    };
    let stat = rustix::fs::fstat(&node).map_err(|e| format!("{}: {e}", name.display()))?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    let mode = stat.st_mode & 0o7777;
    match kind {
        FileType::Directory => {
            check_mode(&name, mode)?;
            Ok(Some(Item::Dir))
        }
        FileType::RegularFile => {
            check_mode(&name, mode)?;
            let size = stat.st_size as u64;
            if size > limit {
                return Err(format!(
                    "{}: {size} bytes, more than the {limit} a bundle's file may have",
                    name.display()
                ));
            }
            // Reopened for reading through the node already checked.
            let fd = rustix::fs::openat(
                rustix::fs::CWD,
                format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&node)),
                OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
                Mode::empty(),
            )
            .or_else(|_| {
                open_beneath(dir, rel, OFlags::empty(), shown)
                    .map_err(|_| rustix::io::Errno::IO)?
                    .ok_or(rustix::io::Errno::NOENT)
            })
            .map_err(|e| format!("{}: {e}", name.display()))?;
            let again = rustix::fs::fstat(&fd).map_err(|e| format!("{}: {e}", name.display()))?;
            if (again.st_dev, again.st_ino) != (stat.st_dev, stat.st_ino) {
                return Err(format!(
                    "{}: replaced while it was being read",
                    name.display()
                ));
            }
            Ok(Some(Item::File {
                file: File::from(fd),
                size,
                executable: mode & 0o111 != 0,
            }))
        }
        other => Err(format!(
            "{}: {}; a bundle holds only regular files and folders",
            name.display(),
            kind_name(other)
        )),
    }
}

/// Reads all of `file`, which its `fstat` said is `size` bytes, refusing
/// more than `limit` (it may have grown since).
pub fn read_all(mut file: File, limit: u64, name: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    (&mut file)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", name.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "{}: more than the {limit} bytes such a file may have",
            name.display()
        ));
    }
    Ok(bytes)
}

/// Reads the regular file `rel` beneath `dir` (at most `limit` bytes);
/// `None` when it does not exist.
pub fn read_in(
    dir: BorrowedFd<'_>,
    rel: &Path,
    limit: u64,
    shown: &Path,
) -> Result<Option<Vec<u8>>, String> {
    let name = shown.join(rel);
    match open_item(dir, rel, shown, limit)? {
        None => Ok(None),
        Some(Item::Dir) => Err(format!("{}: a folder, expected a file", name.display())),
        Some(Item::File { file, .. }) => read_all(file, limit, &name).map(Some),
    }
}

/// Reads the regular file at `path` (its folder opened by its path, the
/// file beneath it without following a link); `None` when it does not
/// exist.
pub fn read_file(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, String> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(format!("{}: not a file's path", path.display()));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let dir = match open_dir(parent) {
        Ok(d) => d,
        Err(_) if !parent.exists() => return Ok(None),
        Err(e) => return Err(e),
    };
    read_in(dir.as_fd(), Path::new(name), limit, parent)
}

/// A name a bundle's file may have: UTF-8 with no control characters (a
/// manifest holds one per line).
fn check_name(name: &Path, file_name: &std::ffi::OsStr) -> Result<(), String> {
    match file_name.to_str() {
        Some(s) if !s.chars().any(char::is_control) => Ok(()),
        _ => Err(format!(
            "{}: a file name must be UTF-8 without control characters",
            name.display()
        )),
    }
}

/// Walks the tree under `dir` (whose path is `shown`), depth first in name
/// order, calling `visit` with each node's path relative to `dir` (a
/// folder before what it holds). Refuses links, special files, privileged
/// or world-writable modes, odd names, and trees past the bounds above.
pub fn walk(
    dir: BorrowedFd<'_>,
    shown: &Path,
    visit: &mut dyn FnMut(&Path, Item) -> Result<(), String>,
) -> Result<(), String> {
    let mut budget = Budget {
        entries: 0,
        bytes: 0,
    };
    walk_in(dir, Path::new(""), shown, 0, &mut budget, visit)
}

struct Budget {
    entries: usize,
    bytes: u64,
}

fn walk_in(
    dir: BorrowedFd<'_>,
    rel: &Path,
    shown: &Path,
    depth: usize,
    budget: &mut Budget,
    visit: &mut dyn FnMut(&Path, Item) -> Result<(), String>,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "{}: folders nested deeper than {MAX_DEPTH}",
            shown.join(rel).display()
        ));
    }
    let here = if rel.as_os_str().is_empty() {
        rustix::fs::openat(
            dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("{}: {e}", shown.display()))?
    } else {
        open_dir_in(dir, rel, shown)?
            .ok_or_else(|| format!("{}: vanished while it was read", shown.join(rel).display()))?
    };
    let mut names: Vec<PathBuf> = Vec::new();
    let entries = rustix::fs::Dir::read_from(&here)
        .map_err(|e| format!("{}: {e}", shown.join(rel).display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", shown.join(rel).display()))?;
        let file_name = entry.file_name().to_bytes();
        if file_name == b"." || file_name == b".." {
            continue;
        }
        budget.entries += 1;
        if budget.entries > MAX_ENTRIES {
            return Err(format!(
                "{}: more than {MAX_ENTRIES} files and folders",
                shown.display()
            ));
        }
        let os = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(file_name);
        check_name(&shown.join(rel).join(os), os)?;
        names.push(rel.join(os));
    }
    names.sort();
    for child in names {
        match open_item(dir, &child, shown, MAX_FILE)? {
            None => {
                return Err(format!(
                    "{}: vanished while it was read",
                    shown.join(&child).display()
                ))
            }
            Some(Item::Dir) => {
                visit(&child, Item::Dir)?;
                walk_in(dir, &child, shown, depth + 1, budget, visit)?;
            }
            Some(Item::File {
                file,
                size,
                executable,
            }) => {
                budget.bytes += size;
                if budget.bytes > MAX_BUNDLE {
                    return Err(format!(
                        "{}: more than {MAX_BUNDLE} bytes of files",
                        shown.display()
                    ));
                }
                visit(
                    &child,
                    Item::File {
                        file,
                        size,
                        executable,
                    },
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("b/c")).unwrap();
        std::fs::write(d.path().join("a"), "a").unwrap();
        std::fs::write(d.path().join("b/c/x"), "x").unwrap();
        d
    }

    fn names(d: &Path) -> Result<Vec<String>, String> {
        let fd = open_dir(d)?;
        let mut seen = Vec::new();
        walk(fd.as_fd(), d, &mut |rel, item| {
            seen.push(format!(
                "{}{}",
                rel.display(),
                if matches!(item, Item::Dir) { "/" } else { "" }
            ));
            Ok(())
        })?;
        Ok(seen)
    }

    #[test]
    fn a_plain_tree_is_walked_in_order() {
        let d = tree();
        assert_eq!(names(d.path()).unwrap(), ["a", "b/", "b/c/", "b/c/x"]);
    }

    #[test]
    fn links_fifos_and_privileged_or_shared_files_are_refused_by_name() {
        let d = tree();
        std::os::unix::fs::symlink("a", d.path().join("b/link")).unwrap();
        let e = names(d.path()).unwrap_err();
        assert!(e.contains("b/link: a symbolic link"), "{e}");
        std::fs::remove_file(d.path().join("b/link")).unwrap();

        fifo(&d.path().join("fifo"));
        let e = names(d.path()).unwrap_err();
        assert!(e.contains("fifo: a FIFO"), "{e}");
        std::fs::remove_file(d.path().join("fifo")).unwrap();

        for (mode, says) in [
            (0o4755, "setuid"),
            (0o2755, "setgid"),
            (0o666, "writable by any user"),
        ] {
            std::fs::set_permissions(d.path().join("a"), std::fs::Permissions::from_mode(mode))
                .unwrap();
            let e = names(d.path()).unwrap_err();
            assert!(e.contains(says) && e.contains("/a:"), "{mode:o}: {e}");
        }
    }

    #[test]
    fn a_file_read_as_hostile_is_bounded_and_never_a_link_or_fifo() {
        let d = tree();
        let a = d.path().join("a");
        assert_eq!(read_file(&a, 10).unwrap().unwrap(), b"a");
        assert!(read_file(&d.path().join("none"), 10).unwrap().is_none());
        std::fs::write(&a, vec![b'x'; 11]).unwrap();
        assert!(read_file(&a, 10).unwrap_err().contains("11 bytes"));
        std::os::unix::fs::symlink("/dev/zero", d.path().join("zero")).unwrap();
        assert!(read_file(&d.path().join("zero"), 10)
            .unwrap_err()
            .contains("symbolic link"));
        fifo(&d.path().join("fifo"));
        // Refused at once, not after a writer that never comes.
        assert!(read_file(&d.path().join("fifo"), 10)
            .unwrap_err()
            .contains("a FIFO"));
    }
}
