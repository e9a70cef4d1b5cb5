//! A throw-away PostgreSQL for the suite: one cluster per test process, made with the
//! distribution's `initdb` under `target/test-postgres/<pid>/` (or the temporary
//! directory, when the server's user could not reach `target/`) and served on a loopback
//! port; each test gets a database of its own. The server dies with the test process
//! (its parent-death signal), and a later run removes the directories of dead ones.
//!
//! As root (CI), the server runs as the `postgres` user the package creates: PostgreSQL
//! refuses to run as root.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::repo_root;

pub struct Postgres {
    pub port: u16,
    pub dir: PathBuf,
    /// Speaks TLS only (its URLs say `sslmode=require`).
    tls: bool,
    next: AtomicUsize,
    /// The running server's pid, and the way to start it again after it stopped.
    pid: std::sync::Mutex<u32>,
    start_again: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    started: std::sync::Mutex<std::sync::mpsc::Receiver<std::io::Result<u32>>>,
}

/// The suite's PostgreSQL, started on first use.
pub fn postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    // Started on a thread of its own: the driver blocks, and must not do so on an
    // async test's runtime.
    PG.get_or_init(|| private("shared"))
}

/// A PostgreSQL of its own, for a test that stops and starts it (the suite's shared
/// one must stay up for the tests running beside it).
pub fn private(name: &str) -> Postgres {
    let name = name.to_string();
    std::thread::spawn(move || start(&name, false))
        .join()
        .expect("start postgres")
}

/// A PostgreSQL of its own that speaks TLS only, with a certificate for 127.0.0.1
/// signed by a throw-away CA; the CA's certificate (PEM) is `<dir>/ca.crt`.
pub fn private_tls(name: &str) -> Postgres {
    let name = name.to_string();
    std::thread::spawn(move || start(&name, true))
        .join()
        .expect("start postgres")
}

/// A CA and a server certificate for 127.0.0.1 in `dir` (openssl comes with the
/// postgresql package, through ssl-cert).
fn make_certificates(dir: &Path, user: Option<(u32, u32)>) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=warden-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    if let Some((uid, gid)) = user {
        for f in ["server.key", "server.crt"] {
            std::os::unix::fs::chown(dir.join(f), Some(uid), Some(gid)).expect("chown");
        }
    }
}

/// Where the server's programs are: on PATH, else the Debian layout.
fn bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.retain(|d| d.join("initdb").exists());
    found.sort();
    found.pop().expect(
        "PostgreSQL's server programs (initdb, postgres) were not found: install the \
         distribution's `postgresql` package (.ci/run does)",
    )
}

/// The `postgres` user's uid and gid when this process is root.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "running as root needs the `postgres` user (the postgresql package creates it)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a numeric id")
    };
    Some((id("-u"), id("-g")))
}

/// As `user`, and dying with this process: the server must not outlive the suite.
fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some((uid, gid)) = user
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            // After the uid change, which clears it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
            Ok(())
        });
    }
}

/// Where clusters live: `target/test-postgres`, unless the server runs as another
/// user who could not reach it (a checkout under a home directory closed to others):
/// then under the system's temporary directory.
fn cluster_root(other_user: bool) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let target = repo_root().join("target");
    let reachable = target
        .ancestors()
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if !other_user || reachable {
        return target.join("test-postgres");
    }
    std::env::temp_dir().join("warden-test-postgres")
}

fn remove_dead_clusters(root: &Path) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let alive = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn start(name: &str, tls: bool) -> Postgres {
    let bin = bin_dir();
    let user = server_user();
    let root = cluster_root(user.is_some());
    let mine = root.join(std::process::id().to_string());
    if !mine.exists() {
        remove_dead_clusters(&root);
    }
    let dir = mine.join(name);
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("make the cluster dir");
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the cluster dir");
    }
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .args(["-D"])
        .arg(&data)
        .args(["-U", "warden", "-A", "trust", "-E", "UTF8", "--no-sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    as_user(&mut initdb, user);
    let out = initdb.output().expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut tls_args = Vec::new();
    if tls {
        make_certificates(&dir, user);
        tls_args = vec![
            "-c".to_string(),
            "ssl=on".to_string(),
            "-c".to_string(),
            format!("ssl_cert_file={}", dir.join("server.crt").display()),
            "-c".to_string(),
            format!("ssl_key_file={}", dir.join("server.key").display()),
        ];
        // TLS only: a connection in the clear is refused.
        let hba = data.join("pg_hba.conf");
        std::fs::write(
            &hba,
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("write pg_hba.conf");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (server_bin, server_data, socket_dir) = (bin.clone(), data.clone(), dir.clone());
    let log = std::fs::File::create(dir.join("server.log")).expect("server log");
    if let Some((uid, gid)) = user {
        let _ = std::os::unix::fs::chown(dir.join("server.log"), Some(uid), Some(gid));
    }
    // Spawned from a thread that never ends: the parent-death signal follows the
    // spawning thread, not the process. When the server stops (a test's restart),
    // the thread starts it again when told to.
    let (tx, rx) = std::sync::mpsc::channel();
    let (again_tx, again_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        loop {
            let mut cmd = Command::new(server_bin.join("postgres"));
            cmd.arg("-D")
                .arg(&server_data)
                .args(["-p", &port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", socket_dir.display()))
                .args(["-c", "max_connections=300", "-c", "shared_buffers=32MB"])
                .args(&tls_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log.try_clone().expect("log"));
            as_user(&mut cmd, user);
            match cmd.spawn() {
                Ok(mut child) => {
                    let _ = tx.send(Ok(child.id()));
                    let _ = child.wait();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
            if again_rx.recv().is_err() {
                loop {
                    std::thread::park();
                }
            }
        }
    });
    let pid = rx
        .recv()
        .expect("the server thread answers")
        .expect("start postgres");
    let pg = Postgres {
        port,
        dir,
        tls,
        next: AtomicUsize::new(0),
        pid: std::sync::Mutex::new(pid),
        start_again: std::sync::Mutex::new(again_tx),
        started: std::sync::Mutex::new(rx),
    };
    pg.wait_until_up();
    pg
}

impl Postgres {
    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ca = self.ca();
            let admin =
                warden_core::store::postgres::Target::parse(&self.url("postgres"), ca.as_deref())
                    .expect("url")
                    .connect();
            if admin.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop the server (a fast shutdown: sessions are cut) and return once it is
    /// down; `start` brings it back.
    pub fn stop(&self) {
        let pid = *self.pid.lock().unwrap();
        // SAFETY: signalling a process has no memory-safety preconditions.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() {
            // A zombie until the server thread reaps it: gone enough.
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if state.split_whitespace().nth(2) == Some("Z") {
                break;
            }
            assert!(Instant::now() < deadline, "postgres did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start the server stopped by `stop`, and wait until it answers.
    pub fn start(&self) {
        self.start_again
            .lock()
            .unwrap()
            .send(())
            .expect("server thread");
        let pid = self
            .started
            .lock()
            .unwrap()
            .recv()
            .expect("server thread")
            .expect("start postgres again");
        *self.pid.lock().unwrap() = pid;
        self.wait_until_up();
    }

    /// The CA certificate a TLS cluster's server certificate is signed by.
    pub fn ca(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.join("ca.crt"))
    }

    pub fn url(&self, db: &str) -> String {
        let tls = if self.tls { "?sslmode=require" } else { "" };
        format!("postgres://warden@127.0.0.1:{}/{db}{tls}", self.port)
    }

    /// A new, empty database; its URL.
    pub fn database(&self) -> String {
        let name = format!("t{}", self.next.fetch_add(1, Ordering::SeqCst));
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Run `sql` in database `db` (as the superuser), on a thread of its own (the
    /// driver must not block an async test's runtime).
    pub fn sql(&self, db: &str, sql: &str) {
        let (url, sql, ca) = (self.url(db), sql.to_string(), self.ca());
        std::thread::spawn(move || {
            let mut client = warden_core::store::postgres::Target::parse(&url, ca.as_deref())
                .expect("url")
                .connect()
                .expect("connect as the superuser");
            client.batch_execute(&sql).expect("run sql");
        })
        .join()
        .expect("sql thread");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(pid) = self.pid.lock() {
            // SAFETY: signalling a process has no memory-safety preconditions.
            unsafe { libc::kill(*pid as i32, libc::SIGQUIT) };
        }
    }
}
