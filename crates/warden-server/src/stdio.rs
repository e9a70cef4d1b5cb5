//! stdin and stdout as async byte streams for `warden serve --stdio`.
//!
//! tokio's `Stdin`/`Stdout` hand every read and every write to a blocking-pool thread,
//! so each MCP message costs two cross-thread wake-ups more than the call itself
//! (measured: a fifth of the server's CPU per call). When stdin and stdout are pipes or
//! sockets (what an MCP client gives its server), this registers them with tokio's
//! reactor in nonblocking mode instead. Anything else (a terminal, a file) falls back to
//! tokio's streams, where blocking is harmless.
//!
//! [`Counted`] and [`quiet`] let shutdown see the last results leave.
//!
//! It owns the descriptors' `O_NONBLOCK` flag while serving and must never leave it
//! changed: the flag belongs to the open file, which the parent may share.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// The reading and writing ends `serve --stdio` speaks MCP over.
pub type Streams = (
    Box<dyn AsyncRead + Send + Unpin>,
    Box<dyn AsyncWrite + Send + Unpin>,
);

/// stdin and stdout, registered with the reactor when both can be.
pub fn streams() -> Streams {
    let input = Pipe::new(libc::STDIN_FILENO, Interest::READABLE);
    let output = Pipe::new(libc::STDOUT_FILENO, Interest::WRITABLE);
    match (input, output) {
        (Some(input), Some(output)) => (Box::new(input), Box::new(output)),
        _ => (Box::new(tokio::io::stdin()), Box::new(tokio::io::stdout())),
    }
}

/// A descriptor this process does not own (it is never closed here).
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A pipe or socket in nonblocking mode; its original flags come back on drop.
struct Pipe {
    fd: AsyncFd<Fd>,
    flags: libc::c_int,
}

impl Pipe {
    fn new(fd: RawFd, interest: Interest) -> Option<Pipe> {
        // SAFETY: fstat and fcntl on a descriptor number only read or set its flags;
        // an invalid number is an error return, handled.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut stat) } != 0 {
            return None;
        }
        let kind = stat.st_mode & libc::S_IFMT;
        if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
            return None;
        }
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return None;
        }
        // SAFETY: stdin and stdout stay open, as the same files, for the life of the
        // process: nothing in `serve` closes or replaces them.
        match unsafe { AsyncFd::register_with_interest(Fd(fd), interest) } {
            Ok(fd) => Some(Pipe { fd, flags }),
            Err(_) => {
                unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
                None
            }
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: restores the flags read in `new` on the same descriptor.
        unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_SETFL, self.flags) };
    }
}

/// The result of one syscall returning a byte count or -1.
fn count(n: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

impl AsyncRead for Pipe {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            // SAFETY: reads at most `unfilled.len()` bytes into memory we own.
            let read = ready.try_io(|fd| {
                count(unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                })
            });
            match read {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut ready = ready!(self.fd.poll_write_ready(cx))?;
            // SAFETY: writes at most `data.len()` bytes from a slice we borrow.
            let written = ready.try_io(|fd| {
                count(unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) })
            });
            match written {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here: every write went to the kernel.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A writer that counts the bytes it has passed on, so shutdown can tell when the
/// last results have gone out.
pub struct Counted {
    inner: Box<dyn AsyncWrite + Send + Unpin>,
    written: Arc<AtomicU64>,
}

impl Counted {
    pub fn new(inner: Box<dyn AsyncWrite + Send + Unpin>, written: Arc<AtomicU64>) -> Counted {
        Counted { inner, written }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, data))?;
        self.written.fetch_add(n as u64, Ordering::Release);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long output must stand still to count as done.
const QUIET: Duration = Duration::from_millis(20);

/// Wait until nothing has been written for [`QUIET`], or `limit` passes. Results of
/// calls that have finished reach the writer within microseconds on the server's one
/// thread; only a client that stopped reading makes this wait out the limit.
pub async fn quiet(written: &AtomicU64, limit: Duration) {
    let give_up = tokio::time::Instant::now() + limit;
    let mut seen = written.load(Ordering::Acquire);
    while tokio::time::Instant::now() < give_up {
        tokio::time::sleep(QUIET).await;
        let now = written.load(Ordering::Acquire);
        if now == seen {
            return;
        }
        seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn nonblocking(fd: RawFd) -> bool {
        // SAFETY: reads the flags of a descriptor the test owns.
        unsafe { libc::fcntl(fd, libc::F_GETFL) & libc::O_NONBLOCK != 0 }
    }

    /// Bytes cross a pipe both ways through the reactor, and the descriptors get their
    /// blocking mode back when the streams are dropped.
    #[tokio::test]
    async fn pipes_carry_bytes_and_get_their_flags_back() {
        let mut fds = [0; 2];
        // SAFETY: `pipe` fills the two descriptors it is given.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let [read_end, write_end] = fds;
        {
            let mut input = Pipe::new(read_end, Interest::READABLE).expect("a pipe registers");
            let mut output = Pipe::new(write_end, Interest::WRITABLE).expect("a pipe registers");
            assert!(nonblocking(read_end) && nonblocking(write_end));
            let reader = tokio::spawn(async move {
                let mut got = vec![0; 5];
                input.read_exact(&mut got).await.map(|_| got)
            });
            output.write_all(b"hello").await.unwrap();
            assert_eq!(reader.await.unwrap().unwrap(), b"hello");
        }
        assert!(!nonblocking(read_end) && !nonblocking(write_end));
        // SAFETY: the test's own descriptors, closed once.
        unsafe {
            libc::close(read_end);
            libc::close(write_end);
        }
    }

    #[test]
    fn a_regular_file_is_left_to_tokio() {
        let file = tempfile::tempfile().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _enter = runtime.enter();
        assert!(Pipe::new(file.as_raw_fd(), Interest::READABLE).is_none());
        assert!(!nonblocking(file.as_raw_fd()));
    }
}
