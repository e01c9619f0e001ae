//! Entry requests (neighbours, FDB entries, routes) written to the kernel many per syscall.
//!
//! The kernel runs rtnetlink requests inside the sender's `sendmsg`, one after another, and
//! queues one answer for each (an ack or an errno) before the call returns; a failed request
//! does not stop the ones after it. A buffer of requests therefore costs one syscall and one
//! pass through the kernel, where one request at a time (iproute2's `-batch`, or netlink_proto's
//! pipelined requests) costs a send, a receive and the bookkeeping around them for each.

use std::io;

use netlink_packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Requests per `sendmsg`. Their answers must all fit in the socket's receive buffer, or the
/// kernel drops the rest: an answer takes well under 1 KiB there (the socket asks for a
/// capped ack), and the default buffer is 208 KiB.
pub const CHUNK: usize = 128;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;

/// One request, built once: [`BulkSocket::exchange`] only numbers and serializes it.
#[derive(Debug, Clone)]
pub struct Request(NetlinkMessage<RouteNetlinkMessage>);

impl Request {
    /// `message` with `flags` (`NLM_F_*`) beyond `NLM_F_REQUEST | NLM_F_ACK`.
    pub fn new(message: RouteNetlinkMessage, flags: u16) -> Request {
        let mut msg = NetlinkMessage::from(message);
        msg.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        Request(msg)
    }
}

/// What the kernel answered one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ack,
    /// The errno it refused with.
    Errno(i32),
    /// No answer arrived: the kernel dropped it, so whether the request took effect is unknown.
    Missing,
}

/// A netlink socket of its own for bulk requests: nothing else reads from it, so every
/// message on it is an answer to one of ours.
#[derive(Debug)]
pub struct BulkSocket {
    socket: Socket,
    next_seq: u32,
    out: Vec<u8>,
    answers: Vec<u8>,
}

impl BulkSocket {
    /// Open in the calling thread's network namespace (the socket keeps it afterwards).
    pub fn open() -> io::Result<BulkSocket> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        // An error answer then carries the header of the request only, not all of it.
        socket.set_cap_ack(true)?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(BulkSocket {
            socket,
            next_seq: 1,
            out: Vec::new(),
            answers: vec![0; 64 * 1024],
        })
    }

    /// Send `requests` (at most [`CHUNK`]) in one syscall and collect every answer, in order.
    /// An `Err` means the send itself failed: none of them reached the kernel.
    pub fn exchange(&mut self, requests: &mut [Request]) -> io::Result<Vec<Answer>> {
        let base = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(requests.len() as u32);
        self.out.clear();
        for (i, Request(msg)) in requests.iter_mut().enumerate() {
            msg.header.sequence_number = base.wrapping_add(i as u32);
            msg.finalize();
            let start = self.out.len();
            self.out.resize(start + msg.buffer_len(), 0);
            msg.serialize(&mut self.out[start..]);
        }
        let sent = self.socket.send(&self.out, 0)?;
        if sent != self.out.len() {
            return Err(io::Error::other(format!(
                "netlink took {sent} of {} bytes",
                self.out.len()
            )));
        }
        let mut answers = vec![Answer::Missing; requests.len()];
        let mut pending = requests.len();
        // Every answer is queued by the time `send` returns: read until none is left.
        while pending > 0 {
            let mut buf = &mut self.answers[..];
            let n = match self.socket.recv(&mut buf, libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // ENOBUFS: answers were dropped; those left unread stay `Missing`.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => return Err(e),
            };
            let n = n.min(self.answers.len());
            for_each_answer(&self.answers[..n], |seq, code| {
                let i = seq.wrapping_sub(base) as usize;
                if let Some(slot) = answers.get_mut(i) {
                    if *slot == Answer::Missing {
                        pending -= 1;
                    }
                    *slot = if code == 0 {
                        Answer::Ack
                    } else {
                        Answer::Errno(-code)
                    };
                }
            });
        }
        Ok(answers)
    }
}

/// Call `f(seq, code)` for each `NLMSG_ERROR` message (code 0 is an ack) in a datagram.
fn for_each_answer(mut buf: &[u8], mut f: impl FnMut(u32, i32)) {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32_at(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if kind == NLMSG_ERROR && len >= NLMSG_HDRLEN + 4 {
            let code = u32_at(buf, NLMSG_HDRLEN) as i32;
            f(u32_at(buf, 8), code);
        }
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or_default();
    }
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(seq: u32, code: i32, extra: usize) -> Vec<u8> {
        let len = NLMSG_HDRLEN + 4 + NLMSG_HDRLEN + extra;
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m.resize(len, 0);
        m.resize((len + 3) & !3, 0);
        m
    }

    #[test]
    fn reads_acks_and_errnos_and_stops_at_garbage() {
        let mut buf = answer(7, 0, 0);
        buf.extend(answer(8, -libc::EEXIST, 3));
        let mut seen = Vec::new();
        for_each_answer(&buf, |s, c| seen.push((s, c)));
        assert_eq!(seen, [(7, 0), (8, -libc::EEXIST)]);

        // A length past the end, or below a header, ends the walk without panicking.
        let mut bad = answer(9, 0, 0);
        bad[0] = 200;
        seen.clear();
        for_each_answer(&bad, |s, c| seen.push((s, c)));
        assert!(seen.is_empty());
        let mut tiny = answer(9, 0, 0);
        tiny[..4].copy_from_slice(&4u32.to_ne_bytes());
        for_each_answer(&tiny, |s, c| seen.push((s, c)));
        assert!(seen.is_empty());
        for_each_answer(&[1, 2, 3], |s, c| seen.push((s, c)));
        assert!(seen.is_empty());
    }
}
