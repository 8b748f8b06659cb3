//! SIGTERM drains: the broker binary stops accepting connections, finishes the request it
//! is in the middle of (its message is stored and acknowledged), and exits 0.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::spawn_app;

/// The broker process, killed if the test fails before it exits by itself.
struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Reads one HTTP/1.1 response's status line.
fn status_line(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n") {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "the connection closed before an answer");
        answer.push(byte[0]);
    }
    String::from_utf8(answer).unwrap().trim_end().to_owned()
}

#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_then_exits() {
    let app = spawn_app().await;
    let wh = app.create_webhook(json!({})).await;
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // A port free a moment ago: another process taking it in between fails the test, loudly.
    let mut broker = Broker(
        Command::new(env!("CARGO_BIN_EXE_hookline"))
            .arg("serve")
            .env("DATABASE_URL", &app.db_url)
            .env("HOOKLINE_ENCRYPTION_KEY", &app.encryption_key)
            .env("HOOKLINE_BIND", format!("127.0.0.1:{port}"))
            .env("HOOKLINE_RUN_JOBS", "false")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (wh_path, pid) = (format!("/ingest/{wh}"), broker.0.id().to_string());
    let outcome = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => panic!("the broker never listened: {e}"),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // A first request on the connection: the broker has accepted it and serves it.
        stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        assert_eq!(status_line(&mut stream), "HTTP/1.1 200 OK");
        // The health answer's headers and body are left unread: only the status matters.
        let body = br#"{"drained": true}"#;
        let head = format!(
            "POST {wh_path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body[..5]).unwrap();

        // Mid-request: SIGTERM. The broker stops accepting new connections...
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < deadline, "still accepting connections 10 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        // ...and finishes the request it is in.
        stream.write_all(&body[5..]).unwrap();
        let mut rest = String::new();
        let _ = stream.read_to_string(&mut rest);
        rest
    })
    .await
    .unwrap();
    assert!(outcome.contains("HTTP/1.1 202 Accepted"), "the request in flight was not finished: {outcome}");

    let exit = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = broker.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the broker did not exit 30 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(exit.success(), "exit status {exit}");
    let d = app.dequeue_ok(&wh).await;
    assert_eq!(d.json(), json!({"drained": true}));
}
