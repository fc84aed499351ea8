//! `SOCK_SEQPACKET` endpoints: one record per message, with an optional file
//! descriptor passed as `SCM_RIGHTS`.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};

use crate::header::{Header, HeaderError, Packet};

/// The largest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// A connected pair of `SOCK_SEQPACKET` sockets, close-on-exec.
pub fn socketpair() -> io::Result<(Endpoint, Endpoint)> {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    Ok((Endpoint::new(a), Endpoint::new(b)))
}

/// What one receive produced.
#[derive(Debug)]
pub enum Received {
    /// A message is in the buffer; `fd` is set when one was passed with it.
    Message { fd: Option<OwnedFd> },
    /// The peer closed its end (or exited).
    Closed,
}

/// One end of a message socket.
#[derive(Debug)]
pub struct Endpoint {
    fd: OwnedFd,
}

impl Endpoint {
    /// The socket, for passing to another process.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Takes ownership of a connected `SOCK_SEQPACKET` socket.
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Sends `header` + `payload` as one record, passing `pass` along.
    pub fn send(
        &self,
        header: &Header,
        payload: &[u8],
        pass: Option<BorrowedFd<'_>>,
    ) -> io::Result<()> {
        if payload.len() + crate::HEADER_LEN > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "message of {} bytes exceeds the {MAX_MESSAGE}-byte limit",
                    payload.len() + crate::HEADER_LEN
                ),
            ));
        }
        thread_local!(static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) });
        SCRATCH.with(|s| {
            let mut msg = s.borrow_mut();
            header.emit(payload, &mut msg);
            self.send_raw(&msg, pass)
        })
    }

    /// Answers `request` with `result` (status in the header, payload on
    /// success). One-way requests get no answer.
    pub fn reply(&self, request: &Header, result: crate::IOResult<Vec<u8>>) -> io::Result<()> {
        if request.kind != crate::Kind::Request {
            return Ok(());
        }
        let mut msg = Vec::new();
        Header::emit_reply(request, &result, &mut msg);
        self.send_raw(&msg, None)
    }

    /// Sends pre-built bytes as one record.
    pub fn send_raw(&self, msg: &[u8], pass: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let iov = [io::IoSlice::new(msg)];
        let fds;
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if let Some(fd) = pass {
            fds = [fd];
            control.push(SendAncillaryMessage::ScmRights(&fds));
        }
        loop {
            match rustix::net::sendmsg(&self.fd, &iov, &mut control, SendFlags::NOSIGNAL) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives one record into `buf`. Refuses records larger than
    /// [`MAX_MESSAGE`] rather than truncating silently.
    pub fn recv(&self, buf: &mut MessageBuf) -> io::Result<Received> {
        self.recv_flags(buf, RecvFlags::CMSG_CLOEXEC)
    }

    fn recv_flags(&self, buf: &mut MessageBuf, flags: RecvFlags) -> io::Result<Received> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let msg = loop {
            let mut iov = [io::IoSliceMut::new(&mut buf.data)];
            match rustix::net::recvmsg(&self.fd, &mut iov, &mut control, flags) {
                Ok(m) => break m,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let mut fd = None;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                // Keep the first descriptor; extra ones are closed on drop.
                for passed in fds {
                    fd.get_or_insert(passed);
                }
            }
        }
        if msg.flags.contains(ReturnFlags::TRUNC) {
            buf.len = 0;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message larger than MAX_MESSAGE",
            ));
        }
        buf.len = msg.bytes;
        if msg.bytes == 0 {
            return Ok(Received::Closed);
        }
        Ok(Received::Message { fd })
    }

    /// Receives and validates one message; `Ok(None)` when the peer closed.
    pub fn recv_message(
        &self,
        buf: &mut MessageBuf,
    ) -> io::Result<Option<(Header, Option<OwnedFd>)>> {
        Self::validate(self.recv(buf)?, buf)
    }

    /// As [`Endpoint::recv_message`], without blocking: an error of kind
    /// `WouldBlock` when no message is waiting. For a reader that watches
    /// many endpoints with epoll; the descriptor itself stays blocking, so
    /// senders on it still wait for room.
    pub fn try_recv_message(
        &self,
        buf: &mut MessageBuf,
    ) -> io::Result<Option<(Header, Option<OwnedFd>)>> {
        let received = self.recv_flags(buf, RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT)?;
        Self::validate(received, buf)
    }

    fn validate(
        received: Received,
        buf: &MessageBuf,
    ) -> io::Result<Option<(Header, Option<OwnedFd>)>> {
        match received {
            Received::Closed => Ok(None),
            Received::Message { fd } => {
                let header = Header::parse(&Packet::new_unchecked(buf.bytes())).map_err(invalid)?;
                Ok(Some((header, fd)))
            }
        }
    }
}

/// A receive buffer of [`MAX_MESSAGE`] bytes, allocated zeroed once so that
/// its pages only become resident when a large message actually uses them.
pub struct MessageBuf {
    data: Box<[u8]>,
    len: usize,
}

impl Default for MessageBuf {
    fn default() -> Self {
        Self {
            data: vec![0; MAX_MESSAGE].into_boxed_slice(),
            len: 0,
        }
    }
}

impl std::fmt::Debug for MessageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageBuf")
            .field("len", &self.len)
            .finish()
    }
}

impl MessageBuf {
    /// The last message received, header included.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }
    /// The last message's payload (empty if it was shorter than a header).
    pub fn payload(&self) -> &[u8] {
        self.bytes().get(crate::HEADER_LEN..).unwrap_or(&[])
    }
}

fn invalid(e: HeaderError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl AsFd for Endpoint {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Endpoint> for OwnedFd {
    fn from(e: Endpoint) -> OwnedFd {
        e.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{header::Kind, ObjectId};
    use std::io::{Read, Write};

    #[test]
    fn messages_keep_boundaries_and_carry_descriptors() {
        let (a, b) = socketpair().unwrap();
        let (mut pr, pw) = std::io::pipe().unwrap();
        let mut h = Header::new(Kind::Request);
        h.object = ObjectId(7);
        a.send(&h, b"one", Some(pw.as_fd())).unwrap();
        a.send(&Header::new(Kind::Reply), b"", None).unwrap();
        let mut buf = MessageBuf::default();
        let (got, fd) = b.recv_message(&mut buf).unwrap().unwrap();
        assert_eq!(got.object, ObjectId(7));
        assert_eq!(buf.payload(), b"one");
        let mut passed = std::fs::File::from(fd.expect("fd passed"));
        drop(pw);
        passed.write_all(b"x").unwrap();
        drop(passed);
        let mut s = String::new();
        pr.read_to_string(&mut s).unwrap();
        assert_eq!(s, "x");
        let (got, fd) = b.recv_message(&mut buf).unwrap().unwrap();
        assert_eq!(got.kind, Kind::Reply);
        assert!(fd.is_none());
        drop(a);
        assert!(b.recv_message(&mut buf).unwrap().is_none());
    }
}
