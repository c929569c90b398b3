//! UDP on io_uring with GSO and GRO.
//!
//! glommio offers UDP sockets but no control messages, so neither `UDP_SEGMENT` (GSO: one send of
//! many equally sized datagrams) nor `UDP_GRO` (one receive of many coalesced datagrams with their
//! segment size) is reachable through it. This module owns the socket and does both itself:
//!
//! - Waiting for input goes through glommio's io_uring reactor (a 1-byte `MSG_PEEK` receive that
//!   completes when a datagram is queued); the queue is then drained with non-blocking
//!   `recvmmsg`, each entry carrying its GRO segment size, so one wake-up serves a whole batch.
//! - Sends are non-blocking `sendmsg` calls with a `UDP_SEGMENT` control message: a burst of QUIC
//!   packets for one destination, all of one size except the last, leaves in one system call.
//!   When the socket buffer is full the sender backs off on a glommio timer and retries.
//! - Support is detected when the socket is made; where the kernel refuses GSO or GRO the socket
//!   falls back to one datagram per `sendmmsg` entry / per receive entry and says so once on stderr.

use std::cell::Cell;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::unix::io::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;
const UDP_GRO: libc::c_int = 104;
/// The kernel refuses GSO sends of more segments than this (UDP_MAX_SEGMENTS).
pub const GSO_SEGMENTS_KERNEL_MAX: usize = 64;
/// The largest datagram (or GRO-coalesced train) one receive entry can hold.
pub const RECV_ENTRY_BYTES: usize = 65_535;

/// Socket settings, mapped from the `udp` section of the tuning profile.
#[derive(Clone, Debug)]
pub struct UdpConfig {
    /// SO_SNDBUF request; the kernel doubles it and caps it at net.core.wmem_max.
    pub send_buffer_bytes: usize,
    /// SO_RCVBUF request; the kernel doubles it and caps it at net.core.rmem_max.
    pub recv_buffer_bytes: usize,
    /// Use UDP_SEGMENT when the kernel supports it.
    pub gso_enabled: bool,
    /// Use UDP_GRO when the kernel supports it.
    pub gro_enabled: bool,
    /// Entries per `recvmmsg`; memory is `recv_batch_datagrams_max * 64 KiB` per socket.
    pub recv_batch_datagrams_max: usize,
    /// Segments per GSO send (at most 64, the kernel's limit).
    pub send_batch_datagrams_max: usize,
    /// Set SO_REUSEPORT so that one socket per shard can share the port.
    pub reuse_port: bool,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            send_buffer_bytes: 4 << 20,
            recv_buffer_bytes: 4 << 20,
            gso_enabled: true,
            gro_enabled: true,
            recv_batch_datagrams_max: 32,
            send_batch_datagrams_max: 32,
            reuse_port: false,
        }
    }
}

/// Counters of one socket, read by the metrics exporter.
#[derive(Default, Debug)]
pub struct UdpStats {
    pub datagrams_sent: Cell<u64>,
    pub datagrams_received: Cell<u64>,
    pub bytes_sent: Cell<u64>,
    /// The largest single datagram sent so far (a GSO batch counts its segment size).
    pub largest_datagram_sent: Cell<u64>,
    pub bytes_received: Cell<u64>,
    pub send_calls: Cell<u64>,
    pub recv_calls: Cell<u64>,
    pub send_would_block: Cell<u64>,
}

fn bump(cell: &Cell<u64>, by: u64) {
    cell.set(cell.get().wrapping_add(by));
}

fn raise(cell: &Cell<u64>, to: u64) {
    cell.set(cell.get().max(to));
}

/// A UDP socket driven by a glommio executor, with batched GSO sends and GRO receives.
pub struct UdpIo {
    /// Owns the fd; used only to wait on io_uring for readability.
    waiter: glommio::net::UdpSocket,
    fd: RawFd,
    local_addr: SocketAddr,
    gso: Cell<bool>,
    gro: bool,
    send_batch_datagrams_max: usize,
    pub stats: UdpStats,
}

/// Pre-allocated receive buffers for one `recvmmsg` call.
pub struct RecvBatch {
    buffers: Vec<u8>,
    /// Scatter entries and message headers for `recvmmsg`, re-pointed at the buffers each call.
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    entries: usize,
    lens: Vec<usize>,
    segment_sizes: Vec<usize>,
    addrs: Vec<libc::sockaddr_storage>,
    controls: Vec<[u8; 64]>,
    filled: usize,
}

impl RecvBatch {
    /// Buffers for `entries` receives of up to 64 KiB each.
    pub fn new(entries: usize) -> Self {
        assert!(entries > 0);
        RecvBatch {
            buffers: vec![0u8; entries * RECV_ENTRY_BYTES],
            iovecs: Vec::with_capacity(entries),
            headers: Vec::with_capacity(entries),
            entries,
            lens: vec![0; entries],
            segment_sizes: vec![0; entries],
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
            addrs: vec![unsafe { zeroed() }; entries],
            controls: vec![[0u8; 64]; entries],
            filled: 0,
        }
    }

    /// Points each header at its buffer, address and control space (no allocation after the
    /// first call: the vectors keep their capacity).
    fn prepare_headers(&mut self) {
        self.iovecs.clear();
        self.headers.clear();
        for chunk in self.buffers.chunks_exact_mut(RECV_ENTRY_BYTES) {
            self.iovecs.push(libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: RECV_ENTRY_BYTES,
            });
        }
        let parts = self
            .iovecs
            .iter_mut()
            .zip(self.addrs.iter_mut())
            .zip(self.controls.iter_mut());
        for ((iov, addr), control) in parts {
            // SAFETY: msghdr is plain old data; the fields the kernel reads are set below.
            let mut hdr: libc::msghdr = unsafe { zeroed() };
            hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            hdr.msg_control = control.as_mut_ptr().cast();
            hdr.msg_controllen = control.len() as _;
            self.headers.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
    }

    /// Received entries of the last call: each is one datagram or a GRO train of `segment_size`
    /// datagrams (the last may be shorter).
    pub fn len(&self) -> usize {
        self.filled
    }

    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Entry `i`: source address, bytes, and segment size (equal to the length when not coalesced).
    pub fn entry(&self, i: usize) -> Option<(SocketAddr, &[u8], usize)> {
        if i >= self.filled {
            return None;
        }
        let addr = sockaddr_to_std(&self.addrs[i])?;
        let start = i * RECV_ENTRY_BYTES;
        let data = &self.buffers[start..start + self.lens[i]];
        let segment = if self.segment_sizes[i] == 0 {
            data.len()
        } else {
            self.segment_sizes[i]
        };
        Some((addr, data, segment.max(1)))
    }

    /// Mutable access for in-place packet processing (quiche decrypts in place).
    pub fn entry_mut(&mut self, i: usize) -> Option<(SocketAddr, &mut [u8], usize)> {
        if i >= self.filled {
            return None;
        }
        let addr = sockaddr_to_std(&self.addrs[i])?;
        let start = i * RECV_ENTRY_BYTES;
        let len = self.lens[i];
        let segment = if self.segment_sizes[i] == 0 {
            len
        } else {
            self.segment_sizes[i]
        };
        Some((addr, &mut self.buffers[start..start + len], segment.max(1)))
    }
}

impl UdpIo {
    /// Binds a non-blocking UDP socket and detects GSO/GRO. Must be called on a glommio executor.
    pub fn bind(addr: SocketAddr, config: &UdpConfig) -> io::Result<UdpIo> {
        let fd = new_socket(addr, config)?;
        // SAFETY: `fd` is a freshly created, bound socket that nothing else owns.
        UdpIo::from_bound(
            BoundSocket {
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            },
            config,
        )
    }

    /// Drives a socket bound elsewhere (one of a [`SteeredPort`]'s) and detects GSO/GRO. Must be
    /// called on a glommio executor: the shard that will own the socket.
    pub fn from_bound(socket: BoundSocket, config: &UdpConfig) -> io::Result<UdpIo> {
        let fd = socket.fd.into_raw_fd();
        // SAFETY: `fd` is a bound socket that nothing else owns (`BoundSocket` gave it up);
        // glommio's socket takes ownership and closes it on drop.
        let waiter = unsafe { glommio::net::UdpSocket::from_raw_fd(fd) };
        let local_addr = waiter.local_addr().map_err(io::Error::from)?;
        let gso = config.gso_enabled && set_int_opt(fd, SOL_UDP, UDP_SEGMENT, 0).is_ok();
        let gro = config.gro_enabled && set_int_opt(fd, SOL_UDP, UDP_GRO, 1).is_ok();
        if config.gso_enabled && !gso {
            eprintln!("icn: UDP GSO unavailable on this kernel; sending one datagram per packet");
        }
        if config.gro_enabled && !gro {
            eprintln!("icn: UDP GRO unavailable on this kernel; receiving one datagram per entry");
        }
        Ok(UdpIo {
            waiter,
            fd,
            local_addr,
            gso: Cell::new(gso),
            gro,
            send_batch_datagrams_max: config
                .send_batch_datagrams_max
                .clamp(1, GSO_SEGMENTS_KERNEL_MAX),
            stats: UdpStats::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn gso_active(&self) -> bool {
        self.gso.get()
    }

    pub fn gro_active(&self) -> bool {
        self.gro
    }

    /// The most segments one send may carry.
    pub fn send_batch_datagrams_max(&self) -> usize {
        self.send_batch_datagrams_max
    }

    /// Waits (on io_uring) until at least one datagram is queued.
    pub async fn readable(&self) -> io::Result<()> {
        let mut probe = [0u8; 1];
        self.waiter
            .peek_from(&mut probe)
            .await
            .map(|_| ())
            .map_err(io::Error::from)
    }

    /// Drains up to a batch of queued datagrams without blocking. Returns 0 when none are queued.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.filled = 0;
        let entries = batch.entries;
        batch.prepare_headers();
        let headers = &mut batch.headers;
        // SAFETY: every header points at buffers owned by `batch`, alive and unmoved for the call.
        let received = unsafe {
            libc::recvmmsg(
                self.fd,
                headers.as_mut_ptr(),
                entries as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        bump(&self.stats.recv_calls, 1);
        if received < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(error);
        }
        let received = received as usize;
        for (i, header) in headers.iter().take(received).enumerate() {
            let len = header.msg_len as usize;
            batch.lens[i] = len;
            batch.segment_sizes[i] = if self.gro {
                gro_segment_size(&header.msg_hdr)
            } else {
                0
            };
            let segment = if batch.segment_sizes[i] == 0 {
                len
            } else {
                batch.segment_sizes[i]
            };
            let datagrams = if segment == 0 {
                1
            } else {
                len.div_ceil(segment)
            };
            bump(&self.stats.datagrams_received, datagrams as u64);
            bump(&self.stats.bytes_received, len as u64);
        }
        batch.filled = received;
        Ok(received)
    }

    /// Sends `data` to `dest` as datagrams of `segment_size` bytes (the last may be shorter), in
    /// one GSO system call when available. Waits on a timer while the socket buffer is full.
    pub async fn send(&self, dest: SocketAddr, data: &[u8], segment_size: usize) -> io::Result<()> {
        let mut backoff_us = 20u64;
        loop {
            match self.try_send(dest, data, segment_size) {
                Ok(()) => return Ok(()),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    bump(&self.stats.send_would_block, 1);
                    glommio::timer::sleep(Duration::from_micros(backoff_us)).await;
                    backoff_us = (backoff_us * 2).min(1_000);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// One non-blocking attempt of [`UdpIo::send`].
    pub fn try_send(&self, dest: SocketAddr, data: &[u8], segment_size: usize) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let segment_size = segment_size.max(1);
        let segments = data.len().div_ceil(segment_size);
        if segments > 1 && self.gso.get() {
            match self.send_gso(dest, data, segment_size) {
                Err(error) if error.raw_os_error() == Some(libc::EIO) => {
                    // The route's device cannot segment (no checksum offload): fall back for good.
                    eprintln!("icn: UDP GSO send failed with EIO; falling back to plain sends");
                    self.gso.set(false);
                }
                other => return other,
            }
        }
        self.send_each(dest, data, segment_size)
    }

    fn send_gso(&self, dest: SocketAddr, data: &[u8], segment_size: usize) -> io::Result<()> {
        let (addr, addr_len) = std_to_sockaddr(dest);
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        };
        let mut control = [0u8; 32];
        // SAFETY: msghdr is plain old data; name, iov and control point at live locals.
        let mut hdr: libc::msghdr = unsafe { zeroed() };
        hdr.msg_name = (&addr as *const libc::sockaddr_storage) as *mut _;
        hdr.msg_namelen = addr_len;
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        hdr.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        hdr.msg_controllen = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as _;
        // SAFETY: the control buffer is large enough for one u16 cmsg (checked by CMSG_SPACE above).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&hdr);
            (*cmsg).cmsg_level = SOL_UDP;
            (*cmsg).cmsg_type = UDP_SEGMENT;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, segment_size as u16);
        }
        // SAFETY: hdr and everything it points to outlive the call.
        let sent = unsafe { libc::sendmsg(self.fd, &hdr, libc::MSG_DONTWAIT) };
        bump(&self.stats.send_calls, 1);
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        bump(
            &self.stats.datagrams_sent,
            data.len().div_ceil(segment_size) as u64,
        );
        bump(&self.stats.bytes_sent, data.len() as u64);
        raise(
            &self.stats.largest_datagram_sent,
            segment_size.min(data.len()) as u64,
        );
        Ok(())
    }

    /// Without GSO: one `sendmmsg` entry per datagram, all in one call.
    fn send_each(&self, dest: SocketAddr, data: &[u8], segment_size: usize) -> io::Result<()> {
        let (addr, addr_len) = std_to_sockaddr(dest);
        let chunks: Vec<&[u8]> = data.chunks(segment_size).collect();
        let mut iovecs: Vec<libc::iovec> = chunks
            .iter()
            .map(|c| libc::iovec {
                iov_base: c.as_ptr() as *mut _,
                iov_len: c.len(),
            })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = Vec::with_capacity(chunks.len());
        for iov in iovecs.iter_mut() {
            // SAFETY: msghdr is plain old data; name and iov point at live locals.
            let mut hdr: libc::msghdr = unsafe { zeroed() };
            hdr.msg_name = (&addr as *const libc::sockaddr_storage) as *mut _;
            hdr.msg_namelen = addr_len;
            hdr.msg_iov = iov;
            hdr.msg_iovlen = 1;
            headers.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
        let mut done = 0usize;
        while done < headers.len() {
            // SAFETY: headers[done..] and what they point to are alive for the call.
            let sent = unsafe {
                libc::sendmmsg(
                    self.fd,
                    headers[done..].as_mut_ptr(),
                    (headers.len() - done) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            bump(&self.stats.send_calls, 1);
            if sent < 0 {
                let error = io::Error::last_os_error();
                // A partial batch already left: drop the rest rather than resend what went out
                // (QUIC recovers lost packets; duplicates would only waste bandwidth).
                if done > 0 && error.kind() == io::ErrorKind::WouldBlock {
                    return Ok(());
                }
                return Err(error);
            }
            let sent = sent as usize;
            for chunk in &chunks[done..done + sent] {
                bump(&self.stats.bytes_sent, chunk.len() as u64);
                raise(&self.stats.largest_datagram_sent, chunk.len() as u64);
            }
            bump(&self.stats.datagrams_sent, sent as u64);
            done += sent;
        }
        Ok(())
    }
}

impl AsRawFd for UdpIo {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

fn gro_segment_size(hdr: &libc::msghdr) -> usize {
    // SAFETY: the kernel filled msg_control/msg_controllen; CMSG_* walk only within them.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == SOL_UDP && (*cmsg).cmsg_type == UDP_GRO {
                let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const u16);
                return size as usize;
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    0
}

/// The most shards one UDP port can be steered to: a connection id's first byte names the shard.
pub const STEERED_SHARDS_MAX: usize = 256;
/// Offset of the destination connection id's first byte in a QUIC long header (flags, 4-byte
/// version, DCID length) and in a short header (flags).
const LONG_HEADER_DCID_OFFSET: u32 = 6;
const SHORT_HEADER_DCID_OFFSET: u32 = 1;
/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h; the `libc` crate lacks it on x86_64).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// A socket bound by a [`SteeredPort`], waiting to be driven by its shard's [`UdpIo`]. `Send`, so
/// it can be bound before the shards start and handed to each.
#[derive(Debug)]
pub struct BoundSocket {
    fd: OwnedFd,
}

/// One UDP port shared by the sockets of several shards (SO_REUSEPORT), each datagram delivered to
/// the socket of the shard its QUIC destination connection id names: a classic BPF program
/// ([`steering_program`]) attached to the group reads the id's first byte (offset 6 of a long
/// header, 1 of a short one) and picks socket `byte % shards`. Our connection ids carry the
/// owning shard's index there, so a connection's packets always reach the shard that owns it; a
/// client's first Initial carries whatever byte the client chose, and every packet with that id
/// reaches the same shard. A datagram too short to hold the byte goes to socket 0.
///
/// The kernel numbers a group's sockets in the order they were bound, and renumbers them when one
/// closes, so the sockets are bound here in shard order, all before any is handed out, and must
/// live as long as the port is served. Only sockets of the same user can join a group.
pub struct SteeredPort {
    sockets: Vec<Option<BoundSocket>>,
    local_addr: SocketAddr,
}

impl SteeredPort {
    /// Binds `shards` sockets (1..=[`STEERED_SHARDS_MAX`]) to `addr` (port 0: one port chosen by
    /// the kernel for all) and attaches the steering program. With one shard the socket is
    /// bound without SO_REUSEPORT unless `config.reuse_port` asks for it.
    pub fn bind(addr: SocketAddr, config: &UdpConfig, shards: usize) -> io::Result<SteeredPort> {
        if !(1..=STEERED_SHARDS_MAX).contains(&shards) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a steered UDP port serves 1..={STEERED_SHARDS_MAX} shards, not {shards}"),
            ));
        }
        let config = UdpConfig {
            reuse_port: config.reuse_port || shards > 1,
            ..config.clone()
        };
        let mut sockets = Vec::with_capacity(shards);
        let mut bind_addr = addr;
        for _ in 0..shards {
            let fd = new_socket(bind_addr, &config)?;
            // SAFETY: `fd` is a freshly created, bound socket that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // Every later socket binds the port the first one got.
            bind_addr = local_addr_of(fd.as_raw_fd())?;
            sockets.push(Some(BoundSocket { fd }));
        }
        if shards > 1 {
            let first = sockets[0].as_ref().expect("just bound");
            attach_steering(first.fd.as_raw_fd(), shards)?;
        }
        Ok(SteeredPort {
            sockets,
            local_addr: bind_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shards(&self) -> usize {
        self.sockets.len()
    }

    /// Hands out shard `shard`'s socket (once).
    pub fn take(&mut self, shard: usize) -> Option<BoundSocket> {
        self.sockets.get_mut(shard)?.take()
    }
}

/// The classic BPF program that steers a datagram to socket `dcid[0] % shards` of its
/// SO_REUSEPORT group (the program runs on the UDP payload). `shards` must be 1..=256.
pub fn steering_program(shards: usize) -> Vec<libc::sock_filter> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    vec![
        // A = first byte (header form bit 0x80: long header).
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 0),
        // Long header: next instruction; short header: skip two.
        op(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, 0, 2, 0x80),
        op(
            libc::BPF_LD | libc::BPF_B | libc::BPF_ABS,
            0,
            0,
            LONG_HEADER_DCID_OFFSET,
        ),
        op(libc::BPF_JMP | libc::BPF_JA, 0, 0, 1),
        op(
            libc::BPF_LD | libc::BPF_B | libc::BPF_ABS,
            0,
            0,
            SHORT_HEADER_DCID_OFFSET,
        ),
        op(
            libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
            0,
            0,
            shards as u32,
        ),
        op(libc::BPF_RET | libc::BPF_A, 0, 0, 0),
    ]
}

/// The shard [`steering_program`] picks for `datagram` (the same rule in Rust, for callers that
/// need to know where a connection id leads without sending).
pub fn steered_shard(datagram: &[u8], shards: usize) -> usize {
    let shards = shards.max(1);
    let offset = match datagram.first() {
        Some(first) if first & 0x80 != 0 => LONG_HEADER_DCID_OFFSET,
        Some(_) => SHORT_HEADER_DCID_OFFSET,
        None => return 0,
    };
    datagram
        .get(offset as usize)
        .map_or(0, |byte| *byte as usize % shards)
}

fn attach_steering(fd: RawFd, shards: usize) -> io::Result<()> {
    let mut program = steering_program(shards);
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, alive for the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn local_addr_of(fd: RawFd) -> io::Result<SocketAddr> {
    // SAFETY: sockaddr_storage is plain old data.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage has room for `len` bytes; the kernel writes at most that.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    sockaddr_to_std(&storage)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))
}

fn new_socket(addr: SocketAddr, config: &UdpConfig) -> io::Result<RawFd> {
    let domain = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let setup = || -> io::Result<()> {
        if config.reuse_port {
            set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
        }
        // Buffer sizes are requests; a kernel cap is not an error.
        let _ = set_int_opt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            config.send_buffer_bytes as i32,
        );
        let _ = set_int_opt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            config.recv_buffer_bytes as i32,
        );
        let (storage, len) = std_to_sockaddr(addr);
        // SAFETY: storage holds a valid sockaddr of `len` bytes.
        let rc = unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    if let Err(error) = setup() {
        // SAFETY: fd is ours and not yet shared.
        unsafe { libc::close(fd) };
        return Err(error);
    }
    Ok(fd)
}

fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: i32) -> io::Result<()> {
    // SAFETY: value is a live i32 and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn std_to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data.
    let mut storage: libc::sockaddr_storage = unsafe { zeroed() };
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            (storage, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            (storage, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let sin: libc::sockaddr_in =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let sin6: libc::sockaddr_in6 =
                unsafe { std::ptr::read((storage as *const libc::sockaddr_storage).cast()) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executor() -> glommio::LocalExecutor {
        glommio::LocalExecutorBuilder::default()
            .io_memory(256 << 10)
            .make()
            .unwrap()
    }

    fn exchange(config: UdpConfig) -> (usize, usize, bool, bool) {
        executor().run(async move {
            let a = UdpIo::bind("127.0.0.1:0".parse().unwrap(), &config).unwrap();
            let b = UdpIo::bind("127.0.0.1:0".parse().unwrap(), &config).unwrap();
            // 20 datagrams of 1200 bytes and a short tail, numbered so order and content are checked.
            let mut payload = Vec::new();
            for i in 0..21u8 {
                let size = if i == 20 { 300 } else { 1200 };
                payload.extend(std::iter::repeat_n(i, size));
            }
            a.send(b.local_addr(), &payload, 1200).await.unwrap();
            let mut batch = RecvBatch::new(8);
            let mut datagrams = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while datagrams.len() < 21 && std::time::Instant::now() < deadline {
                b.readable().await.unwrap();
                b.recv_batch(&mut batch).unwrap();
                for i in 0..batch.len() {
                    let (from, data, segment) = batch.entry(i).unwrap();
                    assert_eq!(from, a.local_addr());
                    for chunk in data.chunks(segment) {
                        datagrams.push(chunk.to_vec());
                    }
                }
            }
            for (i, d) in datagrams.iter().enumerate() {
                assert!(
                    d.iter().all(|&x| x == i as u8),
                    "datagram {i} intact and in order"
                );
            }
            let entries = b.stats.recv_calls.get() as usize;
            (datagrams.len(), entries, a.gso_active(), b.gro_active())
        })
    }

    #[test]
    fn gso_burst_arrives_as_separate_datagrams() {
        let (datagrams, _, gso, _) = exchange(UdpConfig::default());
        assert_eq!(datagrams, 21);
        // Loopback on Linux >= 4.18 supports GSO; this machine's kernel is 6.x.
        assert!(gso, "GSO should be active on loopback");
    }

    #[test]
    fn fallback_without_gso_or_gro_delivers_the_same() {
        let config = UdpConfig {
            gso_enabled: false,
            gro_enabled: false,
            ..UdpConfig::default()
        };
        let (datagrams, _, gso, gro) = exchange(config);
        assert_eq!(datagrams, 21);
        assert!(!gso && !gro);
    }

    /// Datagrams with every possible first connection-id byte, in both header forms, plus
    /// ones too short to name a shard: each reaches the socket the program and
    /// [`steered_shard`] name.
    #[test]
    fn a_steered_port_delivers_each_datagram_to_the_shard_its_connection_id_names() {
        const SHARDS: usize = 3;
        let mut port = SteeredPort::bind(
            "127.0.0.1:0".parse().unwrap(),
            &UdpConfig::default(),
            SHARDS,
        )
        .unwrap();
        assert_eq!(port.shards(), SHARDS);
        let sockets: Vec<std::net::UdpSocket> = (0..SHARDS)
            .map(|shard| std::net::UdpSocket::from(port.take(shard).unwrap().fd))
            .collect();
        assert!(port.take(0).is_none(), "a socket is handed out once");
        for socket in &sockets {
            assert_eq!(socket.local_addr().unwrap(), port.local_addr());
        }
        let mut expected = vec![Vec::new(); SHARDS];
        let mut datagrams = Vec::new();
        for byte in 0..=255u8 {
            // Short header: flags, then the connection id.
            let mut short = vec![0x40, byte];
            short.extend_from_slice(&[0xab; 30]);
            // Long header: flags, version, DCID length, DCID.
            let mut long = vec![0xc0, 0, 0, 0, 1, 16, byte];
            long.extend_from_slice(&[0xcd; 40]);
            datagrams.push(short);
            datagrams.push(long);
        }
        // Too short to hold the byte: socket 0.
        datagrams.push(vec![0x41]);
        datagrams.push(vec![0xc1, 0, 0, 0, 1, 16]);
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for datagram in &datagrams {
            expected[steered_shard(datagram, SHARDS)].push(datagram.clone());
            sender.send_to(datagram, port.local_addr()).unwrap();
        }
        let mut received = vec![Vec::new(); SHARDS];
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 2048];
        while received.iter().map(Vec::len).sum::<usize>() < datagrams.len()
            && std::time::Instant::now() < deadline
        {
            let mut idle = true;
            for (shard, socket) in sockets.iter().enumerate() {
                if let Ok((len, _)) = socket.recv_from(&mut buf) {
                    received[shard].push(buf[..len].to_vec());
                    idle = false;
                }
            }
            if idle {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for shard in 0..SHARDS {
            assert_eq!(
                received[shard].len(),
                expected[shard].len(),
                "datagrams on shard {shard}"
            );
            assert_eq!(
                received[shard], expected[shard],
                "shard {shard} got its own"
            );
        }
        assert!(expected.iter().all(|e| e.len() > 100), "all shards used");
    }

    #[test]
    fn steered_shard_reads_the_connection_id_byte_of_either_header_form() {
        assert_eq!(steered_shard(&[0x40, 7, 1, 2], 4), 3);
        assert_eq!(steered_shard(&[0xc3, 0, 0, 0, 1, 8, 9, 1], 4), 1);
        assert_eq!(steered_shard(&[0x40, 200], 1), 0);
        assert_eq!(steered_shard(&[0x40], 4), 0);
        assert_eq!(steered_shard(&[], 4), 0);
        assert_eq!(steered_shard(&[0x40, 255], 256), 255);
        assert!(
            SteeredPort::bind("127.0.0.1:0".parse().unwrap(), &UdpConfig::default(), 0).is_err()
        );
        assert!(SteeredPort::bind(
            "127.0.0.1:0".parse().unwrap(),
            &UdpConfig::default(),
            STEERED_SHARDS_MAX + 1
        )
        .is_err());
    }

    #[test]
    fn sockaddr_round_trip() {
        for text in ["127.0.0.1:4433", "[::1]:9", "[fe80::1%2]:80"] {
            let addr: SocketAddr = text.parse().unwrap();
            let (storage, _) = std_to_sockaddr(addr);
            assert_eq!(sockaddr_to_std(&storage), Some(addr));
        }
    }
}
