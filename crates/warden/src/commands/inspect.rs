//! `warden inspect`: what a component file is (world, imports, exports, declared
//! tools), without a config and without running anything but its `describe` export.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use warden_core::runtime::Shared;
use warden_core::sandbox::component::{self, World};
use warden_core::sandbox::engine::EngineOptions;

use crate::exit;
use crate::output::print;

pub async fn run(file: &Path, json: bool) -> Result<ExitCode> {
    let shared = Shared::new(EngineOptions::default(), super::user_cache_dir().as_deref())?;
    let loaded = component::load(&shared.engine, &shared.cache, file, None)?;
    let world = loaded.world();
    let problems = match world {
        Some(w) => loaded.expect_world(file, w).err().map(|e| e.to_string()),
        None => Some(format!(
            "{}: exports neither a warden tool nor a policy",
            file.display()
        )),
    };
    let mut tools = Vec::new();
    if world == Some(World::Tool) && problems.is_none() {
        let plugin = warden_core::sandbox::plugin::Plugin::load(
            &shared,
            &warden_core::config::PluginConfig {
                id: "inspect".into(),
                component: file.to_path_buf(),
                sha256: None,
                grants: Default::default(),
                limits: warden_core::config::DEFAULT_PLUGIN_LIMITS,
                cost: 0.0,
                costs: Default::default(),
                span: 0,
            },
            Default::default(),
            Default::default(),
        )
        .await?;
        for t in &plugin.tools {
            tools.push(super::tools::tool_json(t));
        }
    }
    let report = json!({
        "file": file.display().to_string(),
        "digest": loaded.digest,
        "world": world.map(|w| format!("{}/{}@{}", component::PACKAGE, w.name(), component::PACKAGE_VERSION)),
        "problems": problems,
        "imports": loaded.imports,
        "exports": loaded.exports,
        "otherExports": loaded.other_exports,
        "tools": tools,
    });
    if json {
        print(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        let mut out = format!("{}\n  digest:  {}\n", file.display(), loaded.digest);
        out += &format!(
            "  world:   {}\n",
            report["world"]
                .as_str()
                .unwrap_or("none (not a warden component)")
        );
        if let Some(p) = &problems {
            out += &format!("  problem: {p}\n");
        }
        out += &format!("  imports: {}\n", loaded.imports.join("\n           "));
        out += &format!("  exports: {}\n", loaded.exports.join(", "));
        if !loaded.other_exports.is_empty() {
            out += &format!(
                "           (and, never called by warden: {})\n",
                loaded.other_exports.join(", ")
            );
        }
        for t in &tools {
            out += &format!(
                "  tool:    {}",
                super::tools::tool_text(t).replace('\n', "\n           ")
            );
            out = out.trim_end().to_string() + "\n";
        }
        print(&out)?;
    }
    Ok(ExitCode::from(if problems.is_some() {
        exit::USAGE
    } else {
        exit::OK
    }))
}
