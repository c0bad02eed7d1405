//! A network namespace of the test's own, joined to the host by a veth
//! pair on addresses of the benchmarking range (198.18.0.0/15), for the
//! icmp kind: a peer that answers, one that drops every echo request, and
//! one whose answers a responder in the namespace drops or delays.
//!
//! Loss and delay: `tc netem` is the usual tool, but the kernels these
//! tests run on may lack it (Firecracker guests build no `sch_netem`), so
//! the namespace stops its kernel's echo replies
//! (`net.ipv4.icmp_echo_ignore_all`) and a thread that joined it answers
//! the real echo requests on a raw socket, dropping a share of them and
//! holding the rest for a delay. Everything is removed on drop (deleting
//! the namespace deletes both ends of the veth pair). Needs root and `ip`
//! (iproute2); panics saying so otherwise.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A namespace with a veth pair: `host_ip` on our side, `peer_ip` inside.
pub struct Namespace {
    name: String,
    host_if: String,
    pub host_ip: Ipv4Addr,
    pub peer_ip: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!(
            "running `ip {}`: {e}: the icmp tests need iproute2 (`apt-get install iproute2`)",
            args.join(" ")
        )
    });
    assert!(
        output.status.success(),
        "`ip {}` failed (the icmp tests need root for network namespaces): {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Namespace {
    /// Creates the namespace and the veth pair, both ends up.
    pub fn create() -> Namespace {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}", ((pid & 0xff_ffff) << 8) | (n & 0xff));
        let index = (pid.wrapping_mul(16).wrapping_add(n)) % 16_384;
        let (a, b) = ((index / 64) as u8, ((index % 64) * 4) as u8);
        let namespace = Namespace {
            name: format!("healthd-{pid}-{n}"),
            host_if: format!("hdv{tag}"),
            host_ip: Ipv4Addr::new(198, 18, a, b + 1),
            peer_ip: Ipv4Addr::new(198, 18, a, b + 2),
        };
        let peer_if = format!("hdp{tag}");
        let (name, host_if) = (namespace.name.as_str(), namespace.host_if.as_str());
        ip(&["netns", "add", name]);
        ip(&["link", "add", host_if, "type", "veth", "peer", "name", &peer_if]);
        ip(&["link", "set", &peer_if, "netns", name]);
        ip(&["addr", "add", &format!("{}/30", namespace.host_ip), "dev", host_if]);
        ip(&["link", "set", host_if, "up"]);
        ip(&["-n", name, "addr", "add", &format!("{}/30", namespace.peer_ip), "dev", &peer_if]);
        ip(&["-n", name, "link", "set", &peer_if, "up"]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        namespace
    }

    /// Whether the namespace's kernel answers echo requests itself.
    pub fn kernel_answers(&self, answers: bool) {
        let value = if answers { "0" } else { "1" };
        ip(&[
            "netns",
            "exec",
            &self.name,
            "sh",
            "-c",
            &format!("echo {value} > /proc/sys/net/ipv4/icmp_echo_ignore_all"),
        ]);
    }

    /// Stops the kernel's replies and answers echo requests from a thread
    /// in the namespace: a share `loss` (0 to 1) dropped, the rest after
    /// `delay`. Stops when dropped.
    pub fn responder(&self, loss: f64, delay: Duration) -> Responder {
        self.kernel_answers(false);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready, started) = mpsc::channel();
        let path = format!("/var/run/netns/{}", self.name);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || respond(&path, loss, delay, &flag, ready));
        match started.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Responder { stop, thread: Some(thread) },
            Ok(Err(error)) => panic!("the echo responder could not start: {error}"),
            Err(_) => panic!("the echo responder did not start within 10 s"),
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
    }
}

/// The thread answering echo requests in a namespace; see `responder`.
pub struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn respond(
    netns: &str,
    loss: f64,
    delay: Duration,
    stop: &AtomicBool,
    ready: mpsc::Sender<std::io::Result<()>>,
) {
    let opened = (|| -> std::io::Result<libc::c_int> {
        let file = std::fs::File::open(netns)?;
        // SAFETY: setns moves this thread only into the namespace `file` names.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: socket() takes no pointers.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let timeout = libc::timeval { tv_sec: 0, tv_usec: 5_000 };
        // SAFETY: the option value is a timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(fd)
    })();
    let fd = match opened {
        Ok(fd) => {
            let _ = ready.send(Ok(()));
            fd
        }
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let mut pending: Vec<(Instant, Vec<u8>, libc::sockaddr_in)> = Vec::new();
    let mut buffer = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: an all-zero sockaddr_in is valid; recvfrom writes at most
        // the sizes given.
        let mut from: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let mut from_len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let read = unsafe {
            libc::recvfrom(
                fd,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
                (&mut from as *mut libc::sockaddr_in).cast(),
                &mut from_len,
            )
        };
        if read > 0 {
            let packet = &buffer[..read as usize];
            let header = usize::from(packet[0] & 0x0f) * 4;
            if let Some(icmp) = packet.get(header..) {
                // An echo request: answer it, or lose it.
                if icmp.len() >= 8 && icmp[0] == 8 && fastrand::f64() >= loss {
                    let mut reply = icmp.to_vec();
                    reply[0] = 0;
                    reply[2] = 0;
                    reply[3] = 0;
                    let sum = checksum(&reply);
                    reply[2..4].copy_from_slice(&sum.to_be_bytes());
                    pending.push((Instant::now() + delay, reply, from));
                }
            }
        }
        let now = Instant::now();
        pending.retain(|(due, reply, to)| {
            if *due > now {
                return true;
            }
            // SAFETY: the buffer and address are valid for the sizes given.
            unsafe {
                libc::sendto(
                    fd,
                    reply.as_ptr().cast(),
                    reply.len(),
                    0,
                    (to as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            false
        });
    }
    // SAFETY: the socket is ours and closed once.
    unsafe { libc::close(fd) };
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
