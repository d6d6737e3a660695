use super::*;
use std::net::TcpListener;

fn probe(kind: ProbeKind, action: ProbeAction) -> ProbeConfig {
    ProbeConfig {
        kind,
        action,
        initial_delay_ms: 0,
        period_ms: 10_000,
        timeout_ms: 1_000,
        failure_threshold: 3,
        success_threshold: 1,
    }
}

fn tcp(kind: ProbeKind) -> ProbeConfig {
    probe(kind, ProbeAction::Tcp { port: 8080 })
}

/// Runs whatever is due at `now` with `ok`, returning the verdicts.
fn run(t: &mut Tracker, now: u64, ok: bool) -> Vec<Verdict> {
    t.take_due(now).into_iter().map(|(i, _)| t.record(i, ok, "refused", now)).collect()
}

#[test]
fn liveness_kills_after_three_failures_in_a_row() {
    let mut t = Tracker::new(&[tcp(ProbeKind::Liveness)]);
    t.container_started(0);
    assert_eq!(t.next_due(), Some(0), "no initial delay: at once");
    assert_eq!(run(&mut t, 0, false), [Verdict::Nothing]);
    assert_eq!(t.next_due(), Some(10_000), "then every period");
    assert_eq!(run(&mut t, 5_000, false), [], "not before its period");
    assert_eq!(run(&mut t, 10_000, true), [Verdict::Nothing], "a success resets the count");
    assert_eq!(run(&mut t, 20_000, false), [Verdict::Nothing]);
    assert_eq!(run(&mut t, 30_000, false), [Verdict::Nothing]);
    let v = run(&mut t, 40_000, false);
    assert_eq!(v, [Verdict::Kill("liveness probe failed 3 times: refused".into())]);
    assert_eq!(t.next_due(), None, "nothing more until the container runs again");
    assert!(t.ready(true), "no readiness probe: running is ready");
    let s = &t.statuses()[0];
    assert_eq!((s.probe.as_str(), s.ok, s.failures, s.kills), ("liveness", Some(false), 3, 1));
    t.container_started(50_000);
    assert_eq!((t.statuses()[0].failures, t.statuses()[0].kills), (0, 1), "a new run starts over, kills stay");
}

#[test]
fn readiness_comes_and_goes_with_its_thresholds() {
    let mut r = tcp(ProbeKind::Readiness);
    r.success_threshold = 2;
    r.initial_delay_ms = 3_000;
    let mut t = Tracker::new(&[r]);
    t.container_started(1_000);
    assert!(!t.ready(true), "not ready before its first success");
    assert_eq!(t.next_due(), Some(4_000), "after the initial delay");
    run(&mut t, 4_000, true);
    assert!(!t.ready(true), "two successes asked");
    assert_eq!(t.next_due(), Some(4_005), "until it first passes, tried again 5 ms later");
    run(&mut t, 4_005, true);
    assert!(t.ready(true));
    assert_eq!(t.next_due(), Some(14_005), "then every period");
    assert!(!t.ready(false), "never ready while not running");
    run(&mut t, 24_000, false);
    run(&mut t, 34_000, false);
    assert!(t.ready(true), "two failures of three: still ready");
    assert_eq!(run(&mut t, 44_000, false), [Verdict::Nothing], "readiness never kills");
    assert!(!t.ready(true));
    assert_eq!(t.next_due(), Some(54_000), "unready again: still every period (no extra load)");
    t.container_stopped();
    assert_eq!(t.next_due(), None);
    t.container_started(60_000);
    // A new run is tried sooner again until it passes: 5 ms, 10, 20, 40… apart, at most 250.
    let mut at = 63_000;
    let mut waits = Vec::new();
    for _ in 0..9 {
        run(&mut t, at, false);
        let next = t.next_due().unwrap();
        waits.push(next - at);
        at = next;
    }
    assert_eq!(waits, [5, 10, 20, 40, 80, 160, 250, 250, 250]);
}

#[test]
fn a_startup_probe_holds_the_others_until_it_passes() {
    let mut s = tcp(ProbeKind::Startup);
    s.period_ms = 1_000;
    s.failure_threshold = 30;
    let mut live = tcp(ProbeKind::Liveness);
    live.initial_delay_ms = 2_000;
    let mut t = Tracker::new(&[s, live, tcp(ProbeKind::Readiness)]);
    t.container_started(0);
    for now in (0..20_000).step_by(1_000) {
        let due: Vec<ProbeKind> = t
            .take_due(now)
            .into_iter()
            .map(|(i, c)| {
                t.record(i, false, "slow", now);
                c.kind
            })
            .collect();
        assert_eq!(due, [ProbeKind::Startup], "only the startup probe runs while it has not passed");
    }
    assert!(!t.ready(true));
    assert_eq!(run(&mut t, 20_000, true), [Verdict::Nothing]);
    let mut due: Vec<ProbeKind> = t.take_due(20_000).into_iter().map(|(_, c)| c.kind).collect();
    due.sort_by_key(|k| k.name());
    assert_eq!(due, [ProbeKind::Liveness, ProbeKind::Readiness], "both begin once it passed");
}

#[test]
fn a_startup_probe_that_never_passes_kills() {
    let mut s = tcp(ProbeKind::Startup);
    s.failure_threshold = 2;
    let mut t = Tracker::new(&[s]);
    t.container_started(0);
    run(&mut t, 0, false);
    assert_eq!(run(&mut t, 10_000, false), [Verdict::Kill("startup probe failed 2 times: refused".into())]);
}

#[test]
fn a_result_from_an_ended_run_is_ignored() {
    let mut t = Tracker::new(&[tcp(ProbeKind::Liveness)]);
    t.container_started(0);
    let due = t.take_due(0);
    t.container_started(5_000);
    assert_eq!(t.record(due[0].0, false, "late", 6_000), Verdict::Nothing);
    assert_eq!(t.statuses()[0].failures, 0);
}

#[test]
fn http_answers() {
    assert_eq!(status(b"HTTP/1.1 200 OK\r\n", false), Step::Done(true, String::new()));
    assert_eq!(
        status(b"HTTP/1.0 302 Found\r\nLocation: http://elsewhere/\r\n", false),
        Step::Done(true, String::new())
    );
    assert_eq!(status(b"HTTP/1.1 503 Service Unavailable\r\n", false), Step::Done(false, "HTTP status 503".into()));
    assert_eq!(status(b"HTTP/1.1 20", false), Step::WantRead);
    assert!(matches!(status(b"SSH-2.0-OpenSSH\r\n", false), Step::Done(false, m) if m.contains("not an HTTP answer")));
    assert!(matches!(status(b"", true), Step::Done(false, m) if m.contains("closed before")));
}

/// Drives an attempt the way the shim does, with poll.
fn drive(mut a: NetAttempt) -> (bool, String) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut step = a.interest();
    for _ in 0..100 {
        let flags = match step {
            Step::WantWrite => PollFlags::POLLOUT,
            Step::WantRead => PollFlags::POLLIN,
            Step::Done(ok, m) => return (ok, m),
        };
        let mut fds = [PollFd::new(a.stream.as_fd(), flags)];
        poll(&mut fds, PollTimeout::from(2000u16)).unwrap();
        step = a.advance();
    }
    panic!("no result");
}

fn serve_once(answer: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut req = [0u8; 1024];
        let n = s.read(&mut req).unwrap();
        let req = String::from_utf8_lossy(&req[..n]).to_string();
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\n") && req.contains("User-Agent: bramble-probe/1"), "{req}");
        s.write_all(answer.as_bytes()).unwrap();
    });
    port
}

#[test]
fn tcp_and_http_attempts_on_real_sockets() {
    let lo = Ipv4Addr::LOCALHOST;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let a = NetAttempt::start(0, lo, &ProbeAction::Tcp { port }, 0).unwrap();
    assert_eq!(drive(a), (true, String::new()), "a listening port");
    drop(l);
    // A port bound but never listening refuses, and stays ours: a port just released could be
    // taken by another test running beside this one (seen in CI).
    let closed = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    closed.bind(&std::net::SocketAddr::from((lo, 0)).into()).unwrap();
    let port = closed.local_addr().unwrap().as_socket().unwrap().port();
    let a = NetAttempt::start(0, lo, &ProbeAction::Tcp { port }, 0).unwrap();
    let (ok, m) = drive(a);
    assert!(!ok && m.contains("refused"), "{m}");
    let port = serve_once("HTTP/1.1 204 No Content\r\n\r\n");
    let a = NetAttempt::start(0, lo, &ProbeAction::Http { port, path: "/healthz".into() }, 0).unwrap();
    assert_eq!(drive(a), (true, String::new()));
    let port = serve_once("HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n");
    let a = NetAttempt::start(0, lo, &ProbeAction::Http { port, path: "/healthz".into() }, 0).unwrap();
    assert_eq!(drive(a), (false, "HTTP status 500".into()));
}
