//! The admin port cannot be held open or exhausted (SPEC 5 rev 12, issue 12): real sockets against
//! a real `Sidecar` under tokio's paused clock, so the 5 s and 30 s bounds are checked to the
//! millisecond without waiting for them.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::common::rig;
use wa_status_sidecar::admin::{HEADER_READ_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS};

const LIVEZ: &[u8] = b"GET /livez HTTP/1.1\r\nHost: admin\r\n\r\n";

/// Reads one `/livez` answer (a few dozen bytes ending in the body `ok\n`).
async fn read_livez(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\nok\n") {
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert_ne!(n, 0, "closed before the answer: {answer:?}");
        answer.extend(&buf[..n]);
    }
    String::from_utf8(answer).unwrap()
}

/// Waits for the server to close `stream` and returns when that happened (virtual time).
fn watch_close(mut stream: TcpStream) -> JoinHandle<Instant> {
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            match tokio::time::timeout(Duration::from_secs(300), stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return Instant::now(),
                Ok(Ok(_)) => {}
                Err(_) => panic!("a slow admin connection was never closed"),
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_hundred_slow_clients_cannot_hold_the_admin_port() {
    let rig = rig().await;
    let sidecar = rig.start(&["business_1"]).await;
    let addr = sidecar.admin_addr();

    // 50 clients that send half a request head and then nothing.
    let mut heads = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nHost: adm")
            .await
            .unwrap();
        heads.push((Instant::now(), watch_close(stream)));
    }
    // 50 clients that make one request, read the answer, and keep the connection idle.
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(LIVEZ).await.unwrap();
        read_livez(&mut stream).await;
        idle.push((Instant::now(), watch_close(stream)));
    }
    let opened = Instant::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let closed_early = heads
        .iter()
        .chain(&idle)
        .filter(|(_, watcher)| watcher.is_finished())
        .count();
    assert!(
        closed_early >= 100 - MAX_CONNECTIONS,
        "at most {MAX_CONNECTIONS} connections are held: only {closed_early} of 100 closed"
    );

    // The 101st, a normal request, is answered at once: the connection that waited longest for
    // a request made room for it.
    let asked = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(LIVEZ).await.unwrap();
    let answer = read_livez(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        asked.elapsed() < Duration::from_millis(100),
        "answered after {:?}",
        asked.elapsed()
    );
    assert!(
        opened.elapsed() < HEADER_READ_TIMEOUT,
        "no timeout was needed"
    );

    // Every slow one is closed within its bound: a head within 5 s of the connect, an idle
    // connection within 30 s of its last answer.
    for (since, watcher) in heads {
        let closed = watcher.await.unwrap();
        let held = closed - since;
        assert!(
            held <= HEADER_READ_TIMEOUT + Duration::from_millis(5),
            "a half-sent head held its connection for {held:?}"
        );
    }
    let mut idle_for_the_whole_bound = 0;
    for (since, watcher) in idle {
        let closed = watcher.await.unwrap();
        let held = closed - since;
        assert!(
            held <= IDLE_TIMEOUT + Duration::from_millis(5),
            "an idle connection was held for {held:?}"
        );
        if held >= IDLE_TIMEOUT {
            idle_for_the_whole_bound += 1;
        }
    }
    // The most recent idle ones were not evicted: they met the idle timeout itself.
    assert!(idle_for_the_whole_bound > 0);
    sidecar.shutdown().await;
}

/// A client that trickles its head a byte at a time is still closed 5 s after it connected; a
/// keep-alive connection serves several requests and is closed 30 s after the last one.
#[tokio::test(start_paused = true)]
async fn a_trickled_head_is_cut_at_5s_and_a_keep_alive_lives_30s_after_its_last_request() {
    let rig = rig().await;
    let sidecar = rig.start(&["business_1"]).await;
    let addr = sidecar.admin_addr();

    let started = Instant::now();
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    let mut sent = 0;
    let cut = loop {
        if trickle.write_all(b"X").await.is_err() {
            break Instant::now();
        }
        sent += 1;
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(500), trickle.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break Instant::now(),
            Ok(Ok(_)) => panic!("an answer to a head that never ended"),
            Err(_) => {}
        }
        assert!(sent < 100, "never cut");
    };
    let held = cut - started;
    assert!(
        (HEADER_READ_TIMEOUT..=HEADER_READ_TIMEOUT + Duration::from_millis(500)).contains(&held),
        "{held:?}"
    );

    let mut keep = TcpStream::connect(addr).await.unwrap();
    for _ in 0..3 {
        keep.write_all(LIVEZ).await.unwrap();
        read_livez(&mut keep).await;
        // Idle well past the header bound, well within the idle bound.
        tokio::time::sleep(Duration::from_secs(20)).await;
    }
    let last = Instant::now();
    keep.write_all(LIVEZ).await.unwrap();
    read_livez(&mut keep).await;
    let closed = watch_close(keep).await.unwrap();
    let idle = closed - last;
    assert!(
        (IDLE_TIMEOUT..=IDLE_TIMEOUT + Duration::from_millis(5)).contains(&idle),
        "{idle:?}"
    );
    sidecar.shutdown().await;
}

/// 100 clients that connect, send `first` (maybe nothing), and wait until the server closes the
/// connection (or 1 s), then connect again 10 ms later (the paused clock only moves when every
/// task waits), until `stop`. Each returns how many connections it made.
fn flood(
    addr: std::net::SocketAddr,
    first: &'static [u8],
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<JoinHandle<u32>> {
    let spawn = |stop: std::sync::Arc<std::sync::atomic::AtomicBool>| {
        tokio::spawn(async move {
            let mut connections = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let _ = stream.write_all(first).await;
                let mut buf = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
                connections += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            connections
        })
    };
    (0..100).map(|_| spawn(stop.clone())).collect()
}

/// A probe whose request comes a moment after its connect, while 100 clients holding half a
/// head reconnect as fast as the server closes them: it is not closed to make room before its
/// request arrives (CI once saw `/livez` cut off this way in `hostile`), and it is answered.
#[tokio::test(start_paused = true)]
async fn a_probe_slow_to_send_its_request_is_not_cycled_out_by_reconnecting_clients() {
    let rig = rig().await;
    let sidecar = rig.start(&["business_1"]).await;
    let addr = sidecar.admin_addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = flood(addr, b"GET /tenants HTTP/1.1\r\nHost: a", &stop);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut probe = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    probe.write_all(LIVEZ).await.unwrap();
    let answer = read_livez(&mut probe).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut reconnects = 0;
    for client in clients {
        reconnects += client.await.unwrap();
    }
    // The clients really were cycled through while the probe waited.
    assert!(reconnects > 100, "only {reconnects} connections made");
    sidecar.shutdown().await;
}

/// The cost of that grace: 100 clients that connect and send nothing, reconnecting as soon as
/// they are closed, keep every slot inside its grace for a while; a probe that sends its request
/// at once waits in the kernel's queue until a grace runs out, then is answered.
#[tokio::test(start_paused = true)]
async fn a_flood_of_silent_connections_delays_a_probe_by_a_grace_at_most() {
    let rig = rig().await;
    let sidecar = rig.start(&["business_1"]).await;
    let addr = sidecar.admin_addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = flood(addr, b"", &stop);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let asked = Instant::now();
    let mut probe = TcpStream::connect(addr).await.unwrap();
    probe.write_all(LIVEZ).await.unwrap();
    let answer = read_livez(&mut probe).await;
    let waited = asked.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    eprintln!("a probe behind 100 silent reconnecting clients: answered after {waited:?}");
    assert!(
        waited <= 2 * Duration::from_millis(250) + Duration::from_millis(50),
        "answered after {waited:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    sidecar.shutdown().await;
}

/// Clients that pipeline many requests and never read the answers: every read of theirs
/// brought more bytes, so they never counted as read from and could not be closed to make room;
/// a probe waited for the 30 s idle timeout (a security probe saw `/livez` fail 17 times in 22
/// this way). Once a request of theirs has been read they are like any other: a probe is
/// answered at once.
#[tokio::test(start_paused = true)]
async fn clients_that_never_read_their_answers_cannot_hold_the_admin_port() {
    let rig = rig().await;
    let sidecar = rig.start(&["business_1"]).await;
    let addr = sidecar.admin_addr();
    let pipelined = b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n".repeat(4000);
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (reader, mut writer) = stream.into_split();
        let requests = pipelined.clone();
        // Writes what the server reads; never reads an answer.
        let writing = tokio::spawn(async move {
            let _ = writer.write_all(&requests).await;
            writer
        });
        held.push((reader, writing));
    }
    // Every connection is answering, stuck on its client.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let asked = Instant::now();
    let mut probe = TcpStream::connect(addr).await.unwrap();
    probe.write_all(LIVEZ).await.unwrap();
    let answer = read_livez(&mut probe).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        asked.elapsed() < Duration::from_millis(100),
        "answered after {:?}",
        asked.elapsed()
    );
    for (_, writing) in &held {
        writing.abort();
    }
    drop(held);
    sidecar.shutdown().await;
}
