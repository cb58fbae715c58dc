//! A minimal blocking HTTP/1.1 client for the demo's gateways: one keep-alive connection to one
//! agent, `POST` and `GET` with JSON bodies, reconnecting once when the agent closed it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Bodies larger than this are refused (the demo's answers are small).
const MAX_BODY: usize = 16 << 20;

/// A keep-alive connection to one agent's HTTP API.
pub(crate) struct HttpClient {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl HttpClient {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    /// `POST path` with a JSON body: the status code and the body.
    pub(crate) fn post(&mut self, path: &str, body: &str) -> Result<(u16, String)> {
        self.request("POST", path, body)
    }

    /// `GET path`: the status code and the body.
    pub(crate) fn get(&mut self, path: &str) -> Result<(u16, String)> {
        self.request("GET", path, "")
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        // A kept-alive connection the server closed fails on first use: try once more, fresh.
        match self.try_request(method, path, body) {
            Ok(r) => Ok(r),
            Err(_) => {
                self.conn = None;
                self.try_request(method, path, body)
            }
        }
    }

    fn try_request(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
                .with_context(|| format!("connecting to {}", self.addr))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.conn = Some(BufReader::new(s));
        }
        let Some(conn) = self.conn.as_mut() else { bail!("no connection") };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let stream = conn.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            bail!("connection closed");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            if conn.read_line(&mut line)? == 0 {
                bail!("connection closed in the headers");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().context("bad Content-Length")?;
                } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        if length > MAX_BODY {
            bail!("answer of {length} bytes is too large");
        }
        let mut buf = vec![0; length];
        conn.read_exact(&mut buf)?;
        if close {
            self.conn = None;
        }
        Ok((status, String::from_utf8_lossy(&buf).into_owned()))
    }
}
