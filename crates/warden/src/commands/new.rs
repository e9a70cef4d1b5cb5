//! `warden new tool|policy NAME --lang rust|python|js`: a project that builds with one
//! command and passes `warden check` (or `warden policy test`) as written.
//!
//! The templates, warden's Python and JavaScript SDKs and the WIT they build against are
//! compiled into the binary, so a scaffold is self-contained (the Rust one depends on
//! the `warden-guest` crate, found with `--sdk`). It never overwrites: the directory
//! must not exist or be empty.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::exit;
use crate::output::print;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Tool,
    Policy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// One file of a scaffold: its path in the project and its text (with `{{name}}`,
/// `{{snake}}`, `{{camel}}`, `{{world}}` and `{{sdk}}` to fill in).
type File = (&'static str, &'static str);

macro_rules! files {
    ($($path:literal => $source:literal),* $(,)?) => {
        &[$(($path, include_str!($source))),*]
    };
}

const RUST_TOOL: &[File] = files![
    "Cargo.toml" => "../../templates/rust-tool/Cargo.toml",
    ".cargo/config.toml" => "../../templates/rust-tool/.cargo/config.toml",
    "src/lib.rs" => "../../templates/rust-tool/src/lib.rs",
    "warden.toml" => "../../templates/rust-tool/warden.toml",
    "README.md" => "../../templates/rust-tool/README.md",
];

const RUST_POLICY: &[File] = files![
    "Cargo.toml" => "../../templates/rust-policy/Cargo.toml",
    ".cargo/config.toml" => "../../templates/rust-policy/.cargo/config.toml",
    "src/lib.rs" => "../../templates/rust-policy/src/lib.rs",
    "cases.toml" => "../../templates/rust-policy/cases.toml",
    "README.md" => "../../templates/rust-policy/README.md",
];

const PYTHON_TOOL: &[File] = files![
    "app.py" => "../../templates/python-tool/app.py",
    "build.sh" => "../../templates/python-tool/build.sh",
    "requirements.txt" => "../../templates/python-tool/requirements.txt",
    "warden.toml" => "../../templates/python-tool/warden.toml",
    "README.md" => "../../templates/python-tool/README.md",
];

const PYTHON_POLICY: &[File] = files![
    "app.py" => "../../templates/python-policy/app.py",
    "build.sh" => "../../templates/python-policy/build.sh",
    "requirements.txt" => "../../templates/python-policy/requirements.txt",
    "cases.toml" => "../../templates/python-policy/cases.toml",
    "README.md" => "../../templates/python-policy/README.md",
];

const JS_TOOL: &[File] = files![
    "app.js" => "../../templates/js-tool/app.js",
    "package.json" => "../../templates/js-tool/package.json",
    "warden.toml" => "../../templates/js-tool/warden.toml",
    "README.md" => "../../templates/js-tool/README.md",
];

const PYTHON_SDK: &[File] = files![
    "warden_sdk/__init__.py" => "../../../../sdk/python/warden_sdk/__init__.py",
    "warden_sdk/schema.py" => "../../../../sdk/python/warden_sdk/schema.py",
    "warden_sdk/http.py" => "../../../../sdk/python/warden_sdk/http.py",
];

const JS_SDK: &[File] = files![
    "warden.js" => "../../../../sdk/js/warden.js",
    "http.js" => "../../../../sdk/js/http.js",
    "build.mjs" => "../../../../sdk/js/toolchain/build.mjs",
];

const WIT: &[File] = files![
    "wit/sdk.wit" => "../../../../sdk/wit/sdk.wit",
    "wit/deps/warden-plugin/plugin.wit" => "../../../../wit/v0.1.0/plugin.wit",
    "wit/deps/wasi-cli/cli.wit" => "../../../../sdk/wit/deps/wasi-cli/cli.wit",
    "wit/deps/wasi-clocks/clocks.wit" => "../../../../sdk/wit/deps/wasi-clocks/clocks.wit",
    "wit/deps/wasi-filesystem/filesystem.wit" => "../../../../sdk/wit/deps/wasi-filesystem/filesystem.wit",
    "wit/deps/wasi-http/http.wit" => "../../../../sdk/wit/deps/wasi-http/http.wit",
    "wit/deps/wasi-io/io.wit" => "../../../../sdk/wit/deps/wasi-io/io.wit",
    "wit/deps/wasi-random/random.wit" => "../../../../sdk/wit/deps/wasi-random/random.wit",
    "wit/deps/wasi-sockets/sockets.wit" => "../../../../sdk/wit/deps/wasi-sockets/sockets.wit",
];

/// The `guest/` crate of the source tree this binary was built from, if it is still there.
fn built_in_sdk() -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest");
    path.join("Cargo.toml")
        .is_file()
        .then(|| path.canonicalize().ok())
        .flatten()
}

/// `[a-z][a-z0-9-]*`, at most 64: a crate, package and plugin id at once.
fn check_name(name: &str) -> Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "{name:?} is not a usable name: lowercase letters, digits and '-', starting with a letter, at most 64"
        );
    }
    Ok(())
}

pub fn run(
    kind: Kind,
    name: &str,
    lang: Lang,
    dir: Option<&Path>,
    sdk: Option<&Path>,
) -> Result<ExitCode> {
    check_name(name)?;
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_path_buf);
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("{}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{}: exists and is not empty; refusing to write over it",
            dir.display()
        );
    }
    let mut files: Vec<File> = Vec::new();
    match (lang, kind) {
        (Lang::Rust, Kind::Tool) => files.extend(RUST_TOOL),
        (Lang::Rust, Kind::Policy) => files.extend(RUST_POLICY),
        (Lang::Python, Kind::Tool) => files.extend(PYTHON_TOOL.iter().chain(PYTHON_SDK).chain(WIT)),
        (Lang::Python, Kind::Policy) => {
            files.extend(PYTHON_POLICY.iter().chain(PYTHON_SDK).chain(WIT))
        }
        (Lang::Js, Kind::Tool) => files.extend(JS_TOOL.iter().chain(JS_SDK).chain(WIT)),
        (Lang::Js, Kind::Policy) => bail!(
            "JavaScript policies are not supported: componentize-js components import wasi:http, \
             which a policy is never given; write the policy in Rust or Python"
        ),
    }
    let sdk_dependency = if lang == Lang::Rust {
        let path = sdk.map(Path::to_path_buf).or_else(built_in_sdk).context(
            "warden-guest (the Rust SDK) is not published; pass --sdk PATH/TO/warden/guest",
        )?;
        if !path.join("Cargo.toml").is_file() {
            bail!(
                "--sdk {}: no Cargo.toml there (expected warden's guest/ crate)",
                path.display()
            );
        }
        format!("path = {:?}", path.display().to_string())
    } else {
        String::new()
    };
    let snake = name.replace('-', "_");
    let camel: String = name
        .split('-')
        .enumerate()
        .flat_map(|(i, part)| {
            part.chars().enumerate().map(move |(j, c)| {
                if i > 0 && j == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
        })
        .collect();
    let world = match kind {
        Kind::Tool => "tool",
        Kind::Policy => "policy",
    };
    for (path, text) in &files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("{}", parent.display()))?;
        }
        let text = text
            .replace("{{name}}", name)
            .replace("{{snake}}", &snake)
            .replace("{{camel}}", &camel)
            .replace("{{world}}", world)
            .replace("{{sdk}}", &sdk_dependency);
        std::fs::write(&target, text).with_context(|| format!("{}", target.display()))?;
        #[cfg(unix)]
        if path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                .with_context(|| format!("{}", target.display()))?;
        }
    }
    let next = match lang {
        Lang::Rust => "cargo build --release",
        Lang::Python => "./build.sh (with componentize-py on PATH)",
        Lang::Js => "npm install && npm run build",
    };
    print(&format!(
        "created {} ({} {world}, {} files); build it with `{next}` there, then see its README.md\n",
        dir.display(),
        match lang {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        },
        files.len()
    ))?;
    Ok(ExitCode::from(exit::OK))
}
