//! Just enough of the W3C WebDriver protocol to drive headless Chromium through `chromedriver`
//! (Debian's `chromium` and `chromium-driver`, installed by `.ci/run`): open a page, run a
//! script in it, take a screenshot. Plain HTTP/1.1 on loopback, no client crate: five commands
//! do not need one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::{free_port, wait_until};

/// A `chromedriver` process and one headless browser session in it.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
}

/// One WebDriver request: (status code, the answer's `value`).
fn request(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return (0, Value::Null) };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // chromedriver keeps the connection open whatever the request says: read the head, then
    // exactly Content-Length bytes.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return (0, Value::Null),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while raw.len() < head_end + length {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let answer = &raw[head_end..raw.len().min(head_end + length)];
    let value = serde_json::from_slice::<Value>(answer).map(|v| v["value"].clone()).unwrap_or(Value::Null);
    (code, value)
}

impl Browser {
    /// Start `chromedriver` and a headless Chromium session; panics, saying what to install,
    /// when either is missing.
    pub fn start() -> Self {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start chromedriver ({e}): install Debian's chromium and chromium-driver")
            });
        let ready = wait_until(Duration::from_secs(20), || request(port, "GET", "/status", None).1["ready"] == true);
        assert!(ready, "chromedriver did not become ready on port {port}");
        let binary = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|b| Path::new(b).exists());
        let mut options = json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]});
        if let Some(b) = binary {
            options["binary"] = b.into();
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}});
        let (code, value) = request(port, "POST", "/session", Some(&caps));
        let session =
            value["sessionId"].as_str().unwrap_or_else(|| panic!("no browser session ({code}): {value}")).to_owned();
        Self { driver, port, session }
    }

    fn command(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        let (code, value) = request(self.port, method, &format!("/session/{}/{what}", self.session), body);
        assert_eq!(code, 200, "{method} {what}: {value}");
        value
    }

    /// Open `url` and wait for it to load.
    pub fn open(&self, url: &str) {
        self.command("POST", "url", Some(&json!({ "url": url })));
    }

    /// Run `script` (a function body; `return` gives the value) in the page.
    pub fn eval(&self, script: &str) -> Value {
        self.command("POST", "execute/sync", Some(&json!({ "script": script, "args": [] })))
    }

    /// A PNG of the page as it is.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = self.command("GET", "screenshot", None);
        base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap_or_default()).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = request(self.port, "DELETE", &format!("/session/{}", self.session), None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
