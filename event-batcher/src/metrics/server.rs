//! The HTTP endpoint: a listener bound before the run starts, and a task that answers
//! `GET /metrics`, one connection at a time per task, each bounded in time.
//!
//! A plain HTTP/1.1 responder on tokio, written here rather than pulled from an HTTP
//! framework: one request per connection (`Connection: close`), a body built in memory
//! before the first byte is sent (no lock is held while a client reads), and limits that
//! keep a misbehaving client from costing more than a task: at most
//! [`MAX_CONNECTIONS`] at once (more are closed at once), each closed after
//! [`CONNECTION_TIMEOUT`] whether or not it sent or read anything.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::MetricsHandle;
use super::config::MetricsError;

/// Most connections served at once; a connection beyond is closed without an answer.
pub const MAX_CONNECTIONS: usize = 32;
/// Longest life of one connection: reading the request and writing the answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read (request line and headers).
const MAX_HEAD: usize = 8 * 1024;

/// Serves the Prometheus text format of a [`MetricsHandle`] at `http://ADDR/metrics` until
/// it is dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use event_batcher::metrics::{MetricsServer, parse_addr};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let server = MetricsServer::bind(parse_addr("127.0.0.1:0")?).await?;
/// let mut client = tokio::net::TcpStream::connect(server.local_addr()).await?;
/// client.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await?;
/// let mut answer = String::new();
/// client.read_to_string(&mut answer).await?;
/// assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
/// assert!(answer.contains("\nevent_batcher_events_read_total 0\n"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    handle: MetricsHandle,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Listens on `addr` (port 0: a free port, see [`local_addr`](Self::local_addr)) and
    /// starts serving; fails when the address cannot be listened on (a port in use).
    /// Until a pipeline attaches its counters ([`crate::Pipeline::metrics`]) the metrics
    /// read zero.
    pub async fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let bind_error = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let handle = MetricsHandle::default();
        let task = tokio::spawn(accept(listener, handle.clone()));
        Ok(Self { addr, handle, task })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the endpoint serves: give it to the pipeline.
    pub fn handle(&self) -> MetricsHandle {
        self.handle.clone()
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        // Stops accepting; a connection being served ends within its timeout.
        self.task.abort();
    }
}

async fn accept(listener: TcpListener, handle: MetricsHandle) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors, a connection reset before it was accepted: wait a
            // little rather than spin.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // dropped: closed
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, answer(stream, &handle)).await;
            drop(permit);
        });
    }
}

/// Reads one request and answers it.
async fn answer(mut stream: TcpStream, handle: &MetricsHandle) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let end_of_head = |head: &[u8]| head.windows(4).any(|w| w == b"\r\n\r\n");
    while !end_of_head(&head) {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "",
                false,
            )
            .await;
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = handle.encode();
            respond(&mut stream, "200 OK", &body, head_only).await
        }
        ("GET" | "HEAD", _) => {
            let body = "not found: the metrics are at /metrics\n";
            respond(&mut stream, "404 Not Found", body, head_only).await
        }
        _ => respond(&mut stream, "405 Method Not Allowed", "", false).await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        response.push_str(body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Sends `request` on a fresh connection and reads the whole answer.
    async fn ask(server: &MetricsServer, request: &[u8]) -> String {
        let mut client = TcpStream::connect(server.local_addr()).await.unwrap();
        client.write_all(request).await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn only_get_and_head_of_metrics_are_answered_with_the_metrics() {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let get = ask(&server, b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").await;
        let (head, body) = get.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(body.contains("# TYPE event_batcher_batches_total counter\n"));
        let head_only = ask(&server, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head_only.starts_with("HTTP/1.1 200 OK\r\n"), "{head_only}");
        assert!(head_only.ends_with("\r\n\r\n"), "no body: {head_only}");
        let other = ask(&server, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 404 Not Found\r\n"), "{other}");
        let post = ask(&server, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        // One byte over: the server has read all of it when it answers (no reset).
        huge.resize(MAX_HEAD + 1, b'a');
        let refused = ask(&server, &huge).await;
        assert!(refused.starts_with("HTTP/1.1 431 "), "{refused}");
    }
}
