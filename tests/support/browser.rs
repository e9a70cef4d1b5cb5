//! One real browser for the console tests: Debian's Chromium, headless, driven over
//! the W3C WebDriver protocol by Debian's chromedriver (both installed by `.ci/run`).
//!
//! The suite shares one chromedriver and one browser session; a test takes the browser
//! with `browser()` (one test at a time) and starts from no cookies. At exit the session
//! is deleted (the browser quits) and chromedriver is stopped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: String,
    session: String,
}

struct Shared {
    browser: Mutex<Browser>,
    chromedriver: Mutex<Option<Child>>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// The shared browser, for one test at a time, with its cookies cleared.
pub fn browser() -> MutexGuard<'static, Browser> {
    let shared = SHARED.get_or_init(start);
    let b = shared.browser.lock().unwrap_or_else(|p| p.into_inner());
    b.command("DELETE", "/cookie", None);
    b.resize(1280, 1000);
    b
}

fn executable(name: &str, debian: &str) -> PathBuf {
    let path = PathBuf::from(debian);
    assert!(
        path.exists(),
        "{debian} is missing: the console tests drive a real browser; install Debian's \
         chromium and chromium-driver packages (.ci/run does: apt-get install chromium chromium-driver) \
         to run {name}"
    );
    path
}

extern "C" fn stop_browser() {
    if let Some(shared) = SHARED.get() {
        // A test that failed holding the browser poisoned its lock; it is free now.
        let b = match shared.browser.try_lock() {
            Ok(b) => Some(b),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if let Some(b) = b {
            let _ = std::panic::catch_unwind(|| b.command("DELETE", "", None));
        }
        let driver = match shared.chromedriver.try_lock() {
            Ok(d) => Some(d),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        if let Some(mut child) = driver
            && let Some(c) = child.as_mut()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start() -> Shared {
    let chromedriver = executable("chromedriver", "/usr/bin/chromedriver");
    let chromium = executable("chromium", "/usr/bin/chromium");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let profile = super::repo_root().join("target/console-browser-profile");
    let _ = std::fs::remove_dir_all(&profile);
    let capabilities = json!({ "capabilities": { "alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    }}});
    let (status, body) = http(
        "POST",
        &format!("{driver}/session"),
        &[("content-type", "application/json")],
        Some(&capabilities.to_string()),
    );
    assert_eq!(status, 200, "a browser session could not start: {body}");
    let v: Value = serde_json::from_str(&body).expect("WebDriver answers JSON");
    let session = v["value"]["sessionId"]
        .as_str()
        .expect("a session id")
        .to_string();
    // SAFETY: registers a plain function with no captured state to run at exit.
    unsafe {
        libc::atexit(stop_browser);
    }
    Shared {
        browser: Mutex::new(Browser { driver, session }),
        chromedriver: Mutex::new(Some(child)),
    }
}

/// One exchange with chromedriver: (status, body). It says `Connection: close` but
/// keeps the connection open, so the body is read by its `Content-Length`.
fn http(method: &str, url: &str, _headers: &[(&str, &str)], body: Option<&str>) -> (u16, String) {
    use std::io::{BufRead, BufReader, Read, Write};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = std::net::TcpStream::connect(authority).expect("connect to chromedriver");
    let body = body.unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .expect("send to chromedriver");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("a status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut bytes = vec![0u8; length];
    reader.read_exact(&mut bytes).expect("the body");
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// An element of the current page.
#[derive(Clone, Debug)]
pub struct Element(String);

impl Browser {
    /// A WebDriver command on the session; its `value`. Panics with the driver's error.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.driver, self.session);
        let body = body.map(|b| b.to_string());
        let (status, text) = http(
            method,
            &url,
            &[("content-type", "application/json")],
            body.as_deref(),
        );
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(status, 200, "WebDriver {method} {path}: {text}");
        v["value"].clone()
    }

    /// A command that may fail (an element not there yet): its value, or `None`.
    fn attempt(&self, method: &str, path: &str, body: Value) -> Option<Value> {
        let url = format!("{}/session/{}{path}", self.driver, self.session);
        let (status, text) = http(
            method,
            &url,
            &[("content-type", "application/json")],
            Some(&body.to_string()),
        );
        let v: Value = serde_json::from_str(&text).ok()?;
        (status == 200).then(|| v["value"].clone())
    }

    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.command("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn source(&self) -> String {
        self.command("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching `css`, waiting up to 10 s for it.
    pub fn find(&self, css: &str) -> Element {
        self.wait_for(css)
            .unwrap_or_else(|| panic!("no element {css} on {}:\n{}", self.url(), self.source()))
    }

    /// The first element matching `css` within 10 s, if one appears.
    pub fn wait_for(&self, css: &str) -> Option<Element> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(found) = self.attempt(
                "POST",
                "/element",
                json!({ "using": "css selector", "value": css }),
            ) && let Some(id) = found[ELEMENT].as_str()
            {
                return Some(Element(id.to_string()));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many elements match `css` now.
    pub fn count(&self, css: &str) -> usize {
        self.command(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        )
        .as_array()
        .map_or(0, Vec::len)
    }

    pub fn click(&self, e: &Element) {
        self.command("POST", &format!("/element/{}/click", e.0), Some(json!({})));
    }

    pub fn type_into(&self, e: &Element, text: &str) {
        self.command(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        );
    }

    pub fn text(&self, e: &Element) -> String {
        self.command("GET", &format!("/element/{}/text", e.0), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Press keys (WebDriver key codes: `\u{E004}` Tab, `\u{E007}` Enter) on whatever
    /// has the focus, as a keyboard would.
    pub fn press(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|c| {
                let k = c.to_string();
                [
                    json!({ "type": "keyDown", "value": k }),
                    json!({ "type": "keyUp", "value": k }),
                ]
            })
            .collect();
        self.command(
            "POST",
            "/actions",
            Some(json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] })),
        );
        self.command("DELETE", "/actions", None);
    }

    /// Run `script` in the page; what it returns.
    pub fn run(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Wait up to 10 s for the page's text to contain `text`.
    pub fn wait_text(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.source().contains(text) {
            assert!(
                Instant::now() < deadline,
                "{text:?} never appeared on {}:\n{}",
                self.url(),
                self.source()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Resize the window (CSS pixels), as a phone or a zoomed desktop would see the page.
    pub fn resize(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        );
    }

    /// Save a PNG of the viewport as `target/console-screenshots/NAME.png`.
    pub fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let data = self.command("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("a base64 PNG");
        let dir = super::repo_root().join("target/console-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }
}
