//! What the fuzz targets share.

use driverkit_wire::shm::SharedMemory;

/// A region of one to four pages (the first byte says how many) holding
/// the rest of `data`, as a peer could leave shared memory.
pub fn region(data: &[u8]) -> Option<SharedMemory> {
    let (&pages, rest) = data.split_first()?;
    let len = 4096 * (1 + usize::from(pages & 3));
    let shm = SharedMemory::create("fuzz", len).ok()?;
    shm.write(0, &rest[..rest.len().min(len)]);
    Some(shm)
}
