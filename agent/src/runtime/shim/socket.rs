//! The shim's unix socket: one JSON line each way, descriptors passed beside it (SCM_RIGHTS)
//! for `bramble exec`, and the agent's side of a request.

use super::super::protocol::{ShimRequest, ShimResponse};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};

/// Sends `r` as a line with `fds` attached (SCM_RIGHTS).
pub(super) fn send_fds(stream: &UnixStream, r: &ShimResponse, fds: &[OwnedFd]) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    use std::os::fd::AsRawFd;
    let mut line = serde_json::to_vec(r).expect("response serialises");
    line.push(b'\n');
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    sendmsg::<UnixAddr>(stream.as_raw_fd(), &[std::io::IoSlice::new(&line)], &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives up to four descriptors sent with one message on `stream`, with the message.
pub fn receive_fds(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = vec![0u8; 4096];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<UnixAddr>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these descriptors in this process for us.
            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    let n = msg.bytes;
    buf.truncate(n);
    Ok((buf, fds))
}

/// Waits (5 s at most) for libcontainer's side of a console socket and takes the terminal it sends.
pub(super) fn receive_fd(listener: &UnixListener) -> std::io::Result<OwnedFd> {
    listener.set_nonblocking(true)?;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let (_, mut fds) = receive_fds(&stream)?;
    fds.pop().ok_or_else(|| std::io::Error::other("the console socket sent no descriptor"))
}

/// Sets a terminal's size (rows and columns; 0 leaves it as it is).
pub fn set_window_size(fd: &OwnedFd, rows: u16, cols: u16) {
    use std::os::fd::AsRawFd;
    if rows == 0 || cols == 0 {
        return;
    }
    let size = nix::libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives across the call.
    unsafe {
        nix::libc::ioctl(fd.as_raw_fd(), nix::libc::TIOCSWINSZ, &size);
    }
}

pub(super) fn respond(stream: &mut UnixStream, r: &ShimResponse) {
    let mut line = serde_json::to_vec(r).expect("response serialises");
    line.push(b'\n');
    let _ = stream.write_all(&line);
}

/// Sends one request to the shim at `socket` and reads its answer.
pub fn request(
    socket: &std::path::Path,
    req: &ShimRequest,
    timeout: std::time::Duration,
) -> std::io::Result<ShimResponse> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req).expect("request serialises");
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(&answer)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad answer from the shim: {e}")))
}
