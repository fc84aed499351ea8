//! Memory descriptors: buffers in shared memory that the system maps
//! instead of copying.
//!
//! An `IOBufferMemoryDescriptor` is a sealed memfd. The first time it is
//! handed to the system (for example as the target of an asynchronous
//! read), the region travels once over the dext's socket; from then on the
//! system reads and writes it in place.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use driverkit_wire::shm::SharedMemory;
use driverkit_wire::{IOResult, IOReturn};

use crate::runtime::register_memory;

/// A range of memory the system can map.
pub trait IOMemoryDescriptor {
    /// Bytes in use.
    fn get_length(&self) -> usize;
    /// A mapping of the memory into this process.
    fn create_mapping(&self) -> IOResult<IOMemoryMap>;
}

/// A buffer allocated in shared memory.
#[derive(Clone)]
pub struct IOBufferMemoryDescriptor {
    shm: Arc<SharedMemory>,
    length: Arc<AtomicUsize>,
    id: Arc<OnceLock<u64>>,
}

impl IOBufferMemoryDescriptor {
    /// A zeroed buffer of `capacity` bytes, with its length set to it.
    pub fn create(capacity: usize) -> IOResult<Self> {
        let shm = SharedMemory::create("IOBufferMemoryDescriptor", capacity.max(1))
            .map_err(|_| IOReturn::NO_MEMORY)?;
        Ok(IOBufferMemoryDescriptor {
            shm: Arc::new(shm),
            length: Arc::new(AtomicUsize::new(capacity)),
            id: Arc::new(OnceLock::new()),
        })
    }

    /// Its capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.shm.len()
    }

    /// Sets the length in use (at most the capacity).
    pub fn set_length(&self, length: usize) -> IOResult<()> {
        if length > self.capacity() {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        self.length.store(length, Ordering::Release);
        Ok(())
    }

    /// A descriptor of the buffer's memfd.
    pub(crate) fn shm_fd(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        std::os::fd::AsFd::as_fd(&*self.shm).try_clone_to_owned()
    }

    /// The ID under which the system knows this buffer, registering it on
    /// first use.
    pub(crate) fn memory_id(&self) -> IOResult<u64> {
        if let Some(id) = self.id.get() {
            return Ok(*id);
        }
        let id = register_memory(&self.shm)?;
        Ok(*self.id.get_or_init(|| id))
    }
}

impl IOMemoryDescriptor for IOBufferMemoryDescriptor {
    fn get_length(&self) -> usize {
        self.length.load(Ordering::Acquire)
    }

    fn create_mapping(&self) -> IOResult<IOMemoryMap> {
        Ok(IOMemoryMap {
            shm: self.shm.clone(),
            length: self.get_length(),
        })
    }
}

/// A mapping of a memory descriptor. Access copies in and out, because the
/// other side may write the memory while an I/O is in flight; read the
/// results after the I/O's completion.
pub struct IOMemoryMap {
    shm: Arc<SharedMemory>,
    length: usize,
}

impl IOMemoryMap {
    /// Where the mapping starts in this process.
    pub fn get_address(&self) -> usize {
        self.shm.as_ptr() as usize
    }

    /// Its length in bytes.
    pub fn get_length(&self) -> usize {
        self.length
    }

    /// Copies bytes out, from `offset`; `kIOReturnBadArgument` past the end.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> IOResult<()> {
        if offset
            .checked_add(out.len())
            .is_none_or(|end| end > self.length)
        {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        self.shm
            .read(offset, out)
            .then_some(())
            .ok_or(IOReturn::BAD_ARGUMENT)
    }

    /// Copies bytes in, at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> IOResult<()> {
        if offset
            .checked_add(data.len())
            .is_none_or(|end| end > self.length)
        {
            return Err(IOReturn::BAD_ARGUMENT);
        }
        self.shm
            .write(offset, data)
            .then_some(())
            .ok_or(IOReturn::BAD_ARGUMENT)
    }
}
