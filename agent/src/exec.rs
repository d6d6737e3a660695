//! `bramble exec` on the board: the replica's shim starts the command and hands over its
//! standard streams (or its terminal); this end moves [`ExecInput`] frames from the leader into
//! them and their output back as [`ExecOutput`] frames, then the exit code the shim reports.

use crate::runtime::config::check_id;
use crate::runtime::protocol::{ShimRequest, ShimResponse};
use crate::runtime::shim::{receive_fds, set_window_size};
use bramble_proto::codec::MAX_FRAME_LEN;
use bramble_proto::wire::{ApiError, ErrorCode, ExecInput, ExecOutput, ExecRequest};
use bramble_transport::quic::{read_frame, write_frame};
use quinn::{RecvStream, SendStream};
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// How long output is still read after the command ended (a child it left may hold the pipes).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);
/// The most bytes in one output frame.
const CHUNK: usize = 32 << 10;

async fn refuse(send: &mut SendStream, code: ErrorCode, message: String) {
    let _ = write_frame(send, &ExecOutput::Error(ApiError::new(code, message))).await;
    let _ = send.finish();
}

/// Asks the shim of `replica` (its socket under `shims`) to start the command; returns the
/// connection the exit code will come on and the command's descriptors.
fn start(shims: &Path, req: &ExecRequest) -> Result<(UnixStream, Vec<OwnedFd>), String> {
    let socket = shims.join(&req.replica).join("shim.sock");
    let stream =
        UnixStream::connect(&socket).map_err(|e| format!("replica {} does not run here ({e})", req.replica))?;
    stream.set_read_timeout(Some(Duration::from_secs(15))).map_err(|e| e.to_string())?;
    let (rows, cols) = req.size.unwrap_or((24, 80));
    let ask = ShimRequest::Attach { args: req.command.clone(), env: Vec::new(), tty: req.tty, rows, cols };
    let mut line = serde_json::to_vec(&ask).expect("request serialises");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(|e| format!("cannot reach the shim: {e}"))?;
    let (answer, fds) = receive_fds(&stream).map_err(|e| format!("no answer from the shim: {e}"))?;
    match serde_json::from_slice::<ShimResponse>(&answer) {
        Ok(ShimResponse::Attached { .. }) if fds.len() == if req.tty { 1 } else { 3 } => {
            stream.set_read_timeout(None).map_err(|e| e.to_string())?;
            Ok((stream, fds))
        }
        Ok(ShimResponse::Error { message }) => Err(message),
        Ok(other) => Err(format!("unexpected answer from the shim: {other:?} with {} descriptors", fds.len())),
        Err(e) => Err(format!("bad answer from the shim: {e}")),
    }
}

/// Non-blocking, for the runtime's reactor.
fn nonblocking(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
    // SAFETY: an OwnedFd stays open and is the same descriptor until the AsyncFd drops it.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Reads what is there; 0 at the end (a terminal whose other side closed says EIO: the end too).
async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> usize {
    loop {
        let Ok(mut guard) = fd.readable().await else { return 0 };
        match guard.try_io(|f| nix::unistd::read(f.as_raw_fd(), buf).map_err(std::io::Error::from)) {
            Ok(Ok(n)) => return n,
            Ok(Err(_)) => return 0,
            Err(_would_block) => continue,
        }
    }
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|f| nix::unistd::write(f.get_ref(), data).map_err(std::io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Input frames into the command: stdin bytes, resizes, the end of input.
async fn pump_input(mut recv: RecvStream, stdin: AsyncFd<OwnedFd>, tty: bool) {
    let mut stdin = Some(stdin);
    loop {
        let frame = read_frame::<ExecInput>(&mut recv, MAX_FRAME_LEN).await;
        match frame {
            Ok(Some(ExecInput::Stdin(bytes))) => {
                if let Some(fd) = &stdin {
                    if write_all(fd, &bytes).await.is_err() {
                        stdin = None;
                    }
                }
            }
            Ok(Some(ExecInput::Resize { rows, cols })) if tty => {
                if let Some(fd) = &stdin {
                    set_window_size(fd.get_ref(), rows, cols);
                }
            }
            Ok(Some(ExecInput::Resize { .. })) => {}
            // The end of input: a terminal gets end-of-file (^D), a pipe is closed.
            Ok(Some(ExecInput::Eof)) | Ok(None) | Err(_) => {
                if tty {
                    if let Some(fd) = &stdin {
                        let _ = write_all(fd, &[4]).await;
                    }
                    // The terminal stays open: it carries the output too.
                    std::future::pending::<()>().await;
                }
                return;
            }
        }
    }
}

/// Runs `req` in its replica's container and streams it over `send`/`recv` until it exits.
pub async fn serve(shims: std::path::PathBuf, req: ExecRequest, mut send: SendStream, recv: RecvStream) {
    if let Err(e) = check_id(&req.replica) {
        return refuse(&mut send, ErrorCode::InvalidArgument, e).await;
    }
    let r = req.clone();
    let started = tokio::task::spawn_blocking(move || start(&shims, &r)).await;
    let (shim, fds) = match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refuse(&mut send, ErrorCode::Unavailable, format!("replica {}: {e}", req.replica)).await,
        Err(e) => return refuse(&mut send, ErrorCode::Internal, e.to_string()).await,
    };
    // The exit code comes as one line on the shim's connection.
    let exited = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(shim).read_line(&mut line).map_err(|e| e.to_string())?;
        match serde_json::from_str::<ShimResponse>(&line) {
            Ok(ShimResponse::Exited { exit_code }) => Ok(exit_code),
            Ok(ShimResponse::Error { message }) => Err(message),
            _ => Err(format!("the shim ended the command without an exit code ({:?})", line.trim())),
        }
    });
    let mut fds = fds.into_iter();
    let io = (|| -> std::io::Result<_> {
        let first = nonblocking(fds.next().expect("counted"))?;
        if req.tty {
            // One terminal: input and output both.
            let output = nonblocking(first.get_ref().try_clone()?)?;
            Ok((first, output, None))
        } else {
            let stdout = nonblocking(fds.next().expect("counted"))?;
            let stderr = nonblocking(fds.next().expect("counted"))?;
            Ok((first, stdout, Some(stderr)))
        }
    })();
    let (input, stdout, stderr) = match io {
        Ok(io) => io,
        Err(e) => return refuse(&mut send, ErrorCode::Internal, format!("exec streams: {e}")).await,
    };
    if write_frame(&mut send, &ExecOutput::Started { replica: req.replica.clone() }).await.is_err() {
        return;
    }
    // Without input the command reads end-of-file (its stdin pipe closes here).
    let input = (req.stdin || req.tty).then(|| tokio::spawn(pump_input(recv, input, req.tty)));
    let end = output(&mut send, stdout, stderr, exited).await;
    if let Some(input) = input {
        input.abort();
    }
    let last = match end {
        Ok(code) => ExecOutput::Exit(code),
        Err(e) => ExecOutput::Error(ApiError::new(ErrorCode::Unavailable, format!("replica {}: {e}", req.replica))),
    };
    let _ = write_frame(&mut send, &last).await;
    let _ = send.finish();
    let _ = send.stopped().await;
}

/// Output frames until the command exited and its streams ended (or went quiet); its exit code.
async fn output(
    send: &mut SendStream,
    stdout: AsyncFd<OwnedFd>,
    stderr: Option<AsyncFd<OwnedFd>>,
    exited: tokio::task::JoinHandle<Result<i32, String>>,
) -> Result<i32, String> {
    let (mut out_open, mut err_open) = (true, stderr.is_some());
    let (mut out_buf, mut err_buf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut exited = Some(exited);
    let mut code = None;
    let quiet = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(quiet);
    while out_open || err_open {
        tokio::select! {
            n = read_some(&stdout, &mut out_buf), if out_open => {
                if n == 0 {
                    out_open = false;
                } else if write_frame(send, &ExecOutput::Stdout(out_buf[..n].to_vec())).await.is_err() {
                    return Err("the client went away".into());
                }
            }
            n = async { read_some(stderr.as_ref().expect("open"), &mut err_buf).await }, if err_open => {
                if n == 0 {
                    err_open = false;
                } else if write_frame(send, &ExecOutput::Stderr(err_buf[..n].to_vec())).await.is_err() {
                    return Err("the client went away".into());
                }
            }
            r = async { exited.as_mut().expect("waiting").await }, if exited.is_some() => {
                exited = None;
                code = Some(r.map_err(|e| e.to_string())??);
                quiet.as_mut().reset(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            _ = &mut quiet => break,
        }
    }
    match (code, exited) {
        (Some(code), _) => Ok(code),
        (None, Some(wait)) => wait.await.map_err(|e| e.to_string())?,
        (None, None) => Err("no exit code".into()),
    }
}
