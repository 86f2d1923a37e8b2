//! A thin epoll wrapper: one epoll set per thread, level-triggered, with a timeout in
//! nanoseconds so the open loop's schedule is not rounded to milliseconds.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Readable (or closed / failed: epoll reports those as well).
pub const READ: u32 = libc::EPOLLIN as u32;
/// Writable.
pub const WRITE: u32 = libc::EPOLLOUT as u32;

/// Set once the kernel turns out not to have `epoll_pwait2` (before Linux 5.11).
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

/// Ready descriptors reported by one wait at most.
const EVENTS: usize = 256;

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
    /// The kernel's output buffer, kept between waits.
    raw: Vec<libc::epoll_event>,
}

/// A ready file descriptor: the token it was registered with and its events.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    pub token: usize,
    pub events: u32,
}

impl Epoll {
    /// A new, empty epoll set.
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Epoll {
            // SAFETY: see above.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            raw: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
        })
    }

    /// Watches `fd` for `events`, reporting it as `token`.
    pub fn add(&self, fd: RawFd, token: usize, events: u32) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_ADD, fd, token, events)
    }

    /// Changes the events watched on `fd`.
    pub fn modify(&self, fd: RawFd, token: usize, events: u32) -> io::Result<()> {
        self.control(libc::EPOLL_CTL_MOD, fd, token, events)
    }

    fn control(&self, op: i32, fd: RawFd, token: usize, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events,
            u64: token as u64,
        };
        // SAFETY: `event` lives across the call; the kernel copies it.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut event) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for ready descriptors and puts them in `out` (cleared first).
    /// An interrupted wait returns nothing ready.
    pub fn wait(&mut self, out: &mut Vec<Event>, timeout: Duration) -> io::Result<()> {
        out.clear();
        let n = match wait_raw(&self.fd, &mut self.raw, timeout) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        out.extend(self.raw[..n].iter().map(|e| Event {
            token: e.u64 as usize,
            events: e.events,
        }));
        Ok(())
    }
}

/// One epoll_pwait2 (or, on kernels without it, epoll_wait) into `raw`: the number of events.
fn wait_raw(fd: &OwnedFd, raw: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
    let max = raw.len() as libc::c_int;
    if !NO_PWAIT2.load(Ordering::Relaxed) {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `raw` has room for `max` events; `ts` lives across the call; no signal
        // mask is passed. Called through syscall() so that no particular glibc is needed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_epoll_pwait2,
                fd.as_raw_fd(),
                raw.as_mut_ptr(),
                max,
                &ts as *const libc::timespec,
                std::ptr::null::<libc::sigset_t>(),
                0usize,
            )
        };
        if rc >= 0 {
            return Ok(rc as usize);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
        NO_PWAIT2.store(true, Ordering::Relaxed);
    }
    // Milliseconds, rounded up so that a wait never ends before the timeout.
    let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `raw` has room for `max` events.
    let rc = unsafe { libc::epoll_wait(fd.as_raw_fd(), raw.as_mut_ptr(), max, ms) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}
