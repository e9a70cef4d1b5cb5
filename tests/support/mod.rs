//! Test helpers: build the guest components once, write configs into temp dirs, run
//! the real `warden` binary, and stand up loopback HTTP/TCP listeners.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;

pub mod browser;
pub mod postgres;

pub fn repo_root() -> &'static Path {
    // The test binary belongs to crates/warden; the repository is two levels up.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/warden has a grandparent")
}

/// Build every guest component (plugins, policies, fixtures) once per test process, with
/// the same `cargo guests` the README runs. Cargo makes this a no-op when nothing changed.
pub fn guests() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = repo_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(&cargo)
            .current_dir(root)
            .arg("guests")
            .env_remove("RUSTFLAGS")
            .status()
            .expect("run cargo guests");
        assert!(status.success(), "building the guest components failed");
        root.join("target/guests/wasm32-wasip2/guest")
    })
}

/// The Python and JavaScript components (examples, fixtures), built once per test
/// process by `cargo xtask langs` with toolchains it installs under `target/`.
pub fn lang_guests() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = repo_root();
        let dir = guests().to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(&cargo)
            .current_dir(root)
            .args(["xtask", "langs"])
            .env_remove("RUSTFLAGS")
            .status()
            .expect("run cargo xtask langs");
        assert!(
            status.success(),
            "building the Python and JavaScript components failed"
        );
        dir
    })
}

/// Components in other languages: `{name}` in a config builds them first.
pub const LANG_GUESTS: [&str; 5] = [
    "report-py",
    "hostile-py",
    "spend-limit-py",
    "outline-js",
    "hostile-js",
];

/// The directory of the pinned Python and Node toolchains `lang_guests` installed.
pub fn toolchains() -> PathBuf {
    lang_guests();
    repo_root().join("target/guest-toolchains")
}

/// Path of a built guest component, e.g. `wasm("hostile")`.
pub fn wasm(name: &str) -> PathBuf {
    guests().join(format!("{}.wasm", name.replace('-', "_")))
}

/// Compiled components shared by every test's config (each test has its own data dir).
pub fn shared_cache() -> PathBuf {
    repo_root().join("target/guests/compile-cache")
}

/// A temp dir holding a `warden.toml`.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    /// Write `body` as warden.toml, after a header setting a data dir and the shared
    /// compile cache. `{hostile}`-style placeholders name built components.
    pub fn new(body: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = Env { dir };
        env.write_config(body);
        env
    }

    pub fn write_config(&self, body: &str) {
        // Keys live beside the data dir, never in it (as in production).
        let mut text = format!(
            "data_dir = \"data\"\nkey_dir = \"keys\"\ncache_dir = {:?}\n",
            shared_cache().display().to_string()
        );
        text += &expand(body);
        std::fs::write(self.config(), text).expect("write config");
    }

    /// Add `body` (placeholders expanded) to the end of the config.
    pub fn append_config(&self, body: &str) {
        let mut text = std::fs::read_to_string(self.config()).expect("read config");
        text += "\n";
        text += &expand(body);
        std::fs::write(self.config(), text).expect("write config");
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("warden.toml")
    }

    /// Run `warden -c <config> ARGS` with a clean environment plus `envs`.
    pub fn warden(&self, args: &[&str]) -> Run {
        self.warden_with_env(args, &[])
    }

    pub fn warden_with_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Run {
        self.warden_full(args, envs, None)
    }

    /// Run warden with `stdin` as its standard input.
    pub fn warden_stdin(&self, args: &[&str], stdin: &str) -> Run {
        self.warden_full(args, &[], Some(stdin))
    }

    fn warden_full(&self, args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("-c")
            .arg(self.config())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(envs.iter().copied())
            .current_dir(self.path())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run warden");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
        Run::from(child.wait_with_output().expect("wait for warden"))
    }

    /// `warden call TOOL --input INPUT --report`, returning the parsed report.
    pub fn call(&self, tool: &str, input: &str) -> (Run, Value) {
        let run = self.warden(&["call", tool, "--input", input, "--report"]);
        let report = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
        (run, report)
    }
}

/// Replace `{name}` with the path of built component `name`.
pub fn expand(body: &str) -> String {
    let mut out = body.to_string();
    for name in [
        "hostile",
        "hostile-policy",
        "text-stats",
        "notes",
        "http-fetch",
        "tiered-approval",
        "business-hours",
        "wstd-fetch",
    ] {
        out = out.replace(&format!("{{{name}}}"), &wasm(name).display().to_string());
    }
    for name in LANG_GUESTS {
        let placeholder = format!("{{{name}}}");
        if out.contains(&placeholder) {
            lang_guests();
            out = out.replace(&placeholder, &wasm(name).display().to_string());
        }
    }
    out
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The end of a long output says the most (a traceback's last line).
        let cut = |s: &str| {
            let chars: Vec<char> = s.chars().collect();
            chars[chars.len().saturating_sub(3000)..]
                .iter()
                .collect::<String>()
        };
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            cut(&self.stdout),
            cut(&self.stderr)
        )
    }
}

/// A loopback listener that counts the connections it accepts and records every
/// request it receives. As an HTTP server it answers `/redirect?to=URL` with a 302 to
/// URL, `/echo...` with the request it received, and anything else with 200
/// `hello from <path>`.
pub struct Listener {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Listener {
    pub fn http() -> Listener {
        Listener::start(true)
    }

    /// A listener that accepts and closes connections without speaking HTTP.
    pub fn raw() -> Listener {
        Listener::start(false)
    }

    fn start(http: bool) -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (counter, seen) = (connections.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                if http {
                    let seen = seen.clone();
                    std::thread::spawn(move || serve(stream, &seen));
                }
            }
        });
        Listener {
            port,
            connections,
            requests,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn count(&self) -> usize {
        // Give a connection that is in flight a moment to be accepted.
        std::thread::sleep(Duration::from_millis(50));
        self.connections.load(Ordering::SeqCst)
    }

    /// Every request received so far (head and body), lower-cased header names as sent.
    pub fn received(&self) -> String {
        self.requests
            .lock()
            .map(|r| r.join("\n----\n"))
            .unwrap_or_default()
    }
}

fn serve(mut stream: TcpStream, seen: &Mutex<Vec<String>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    while data.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&data).into_owned();
    if let Ok(mut seen) = seen.lock() {
        seen.push(request.clone());
    }
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (status, extra, body) = if let Some(to) = path.strip_prefix("/redirect?to=") {
        ("302 Found", format!("location: {to}\r\n"), String::new())
    } else if path.starts_with("/echo") {
        ("200 OK", String::new(), request)
    } else {
        ("200 OK", String::new(), format!("hello from {path}"))
    };
    let response = format!(
        "HTTP/1.1 {status}\r\n{extra}content-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

/// A virtualenv at `venv` holding what `requirements` pins, made (or remade when the
/// pins change) with `python3 -m venv` and pip.
fn venv_with(requirements: &Path, venv: &Path) {
    let wanted = std::fs::read_to_string(requirements).expect("read requirements");
    let marker = venv.join("installed-requirements.txt");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return;
    }
    let made = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(venv)
        .status()
        .expect("python3 -m venv (CPython 3.10+ with venv is needed)");
    assert!(made.success(), "python3 -m venv failed");
    let pip = Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "-r",
        ])
        .arg(requirements)
        .status()
        .expect("pip install");
    assert!(
        pip.success(),
        "pip install -r {} failed",
        requirements.display()
    );
    std::fs::write(&marker, wanted).expect("write venv marker");
}

/// The Python of a virtualenv holding the official MCP SDK (`tests/mcp/requirements.txt`),
/// made once under `target/` by the project's own setup: `python3 -m venv` and pip.
pub fn mcp_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = repo_root().join("target/mcp-venv");
        venv_with(&repo_root().join("tests/mcp/requirements.txt"), &venv);
        venv.join("bin/python")
    })
}

/// Third-party MCP servers for the upstream tests, installed once under
/// `target/upstream-servers/` at the versions `tests/upstreams/` pins: `mcp-server-time`
/// (PyPI), `@modelcontextprotocol/server-everything` and `server-filesystem` (npm).
/// Returns the (time, everything, filesystem) commands.
pub fn upstream_servers() -> &'static (PathBuf, PathBuf, PathBuf) {
    static SERVERS: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let root = repo_root();
        let pins = root.join("tests/upstreams");
        let dir = root.join("target/upstream-servers");
        let venv = dir.join("python");
        venv_with(&pins.join("requirements.txt"), &venv);
        let node = dir.join("node");
        std::fs::create_dir_all(&node).expect("mkdir");
        let lock = std::fs::read_to_string(pins.join("package-lock.json")).expect("read lock");
        let marker = node.join("installed-lock.json");
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(lock.as_str()) {
            for file in ["package.json", "package-lock.json"] {
                std::fs::copy(pins.join(file), node.join(file)).expect("copy pins");
            }
            let ci = Command::new("npm")
                .args(["ci", "--silent", "--no-audit", "--no-fund"])
                .current_dir(&node)
                .status()
                .expect("npm ci (Node.js with npm is needed for the upstream tests)");
            assert!(
                ci.success(),
                "npm ci in target/upstream-servers/node failed"
            );
            std::fs::write(&marker, lock).expect("write marker");
        }
        (
            venv.join("bin/mcp-server-time"),
            node.join("node_modules/.bin/mcp-server-everything"),
            node.join("node_modules/.bin/mcp-server-filesystem"),
        )
    })
}

/// Run the MCP client script (`tests/mcp/client.py`) with `args`.
pub fn mcp_client(args: &[&str]) -> Run {
    let python = mcp_python();
    Command::new(python)
        .arg(repo_root().join("tests/mcp/client.py"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the MCP client")
        .into()
}

/// Start the MCP client script with `args`, its stdout piped (read it line by line).
pub fn mcp_client_spawn(args: &[&str]) -> std::process::Child {
    Command::new(mcp_python())
        .arg(repo_root().join("tests/mcp/client.py"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the MCP client")
}

/// A running `warden serve` on a free loopback port, stopped (SIGTERM) when dropped.
pub struct Served {
    pub child: std::process::Child,
    pub addr: String,
    pub stderr: Arc<Mutex<String>>,
}

impl Env {
    /// Start `warden serve` on this config and wait until it listens.
    pub fn serve(&self) -> Served {
        self.serve_at("127.0.0.1:0")
    }

    /// Start `warden serve --listen LISTEN` and wait until it listens.
    pub fn serve_at(&self, listen: &str) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("-c")
            .arg(self.config())
            .args(["serve", "--listen", listen])
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start warden serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("warden serve did not start: {}", log.lock().unwrap()));
        Served {
            child,
            addr,
            stderr: log,
        }
    }
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM, then wait for the process to end.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait for warden serve")
    }

    pub fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The value of the first `/metrics` line of `served` starting with `prefix` (0 when
/// absent), read with the operator token `token-ops` of the tests' tokens.
pub fn metric(served: &Served, prefix: &str) -> f64 {
    let (status, body) = http(
        "GET",
        &served.url("/metrics"),
        &[("authorization", "Bearer token-ops")],
        None,
    );
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Hex SHA-256 of `text` (what a `[[token]]` entry stores).
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// A minimal HTTP/1.1 exchange with `headers`: (status, body).
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    let (status, _, body) = exchange(method, url, headers, body);
    (status, body)
}

/// A minimal HTTP/1.1 exchange with `headers`: (status, response headers, body).
pub fn exchange(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = TcpStream::connect(authority).expect("connect");
    let body = body.unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request += &format!("{k}: {v}\r\n");
    }
    request += "\r\n";
    request += body;
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or_default();
    (status, head, body)
}

/// A small tmpfs mounted at `path` (the suite runs as root on CI machines, as the
/// README says), unmounted when dropped: a real disk that fills up.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size: &str, read_only: bool) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let mut options = format!("size={size}");
        if read_only {
            options += ",ro";
        }
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs at {} failed: the disk-full tests need root (or CAP_SYS_ADMIN)",
            path.display()
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Fill the file system, then free `room` bytes (rounded to pages by tmpfs).
    pub fn fill_leaving(&self, room: u64) {
        let filler = self.path.join("filler");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&filler)
            .expect("filler");
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        drop(file);
        let len = std::fs::metadata(&filler).expect("filler").len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .expect("filler");
        file.set_len(len.saturating_sub(room)).expect("free room");
    }

    /// Give the space back.
    pub fn empty(&self) {
        let _ = std::fs::remove_file(self.path.join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

impl Env {
    /// Run `warden ARGS` with its stdout a pipe that is already closed (`| head -0`).
    pub fn warden_into_closed_pipe(&self, args: &[&str]) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
            .arg("-c")
            .arg(self.config())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run warden");
        drop(child.stdout.take());
        Run::from(child.wait_with_output().expect("wait for warden"))
    }
}
