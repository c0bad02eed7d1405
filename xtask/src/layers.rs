//! `cargo xtask layers`: no file of the healthd crate imports from a layer
//! above its own. The layers, lowest first, are the folders (and the two
//! files) below; a file may name its own layer and those before it in
//! `LAYERS`, nothing after. Every `crate::LAYER` path in code counts (a
//! `use` line or a path written in place); comments do not. A path to an
//! item of the crate root (`crate::Healthd`) is the top layer: only
//! `lib.rs` stands there. The test at the bottom runs it in
//! `cargo test --workspace`. ARCHITECTURE.md says what each layer holds.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::project_root;

/// The layers of `src/`, lowest first: a folder (or a file, `.rs` left
/// off). `store` and `alerts` are the homes of the coming store and
/// notifications.
pub const LAYERS: &[&str] =
    &["base", "checks", "config", "engine", "store", "alerts", "api", "builder", "service"];

/// One import of a layer above the importing file's own.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    /// Relative to the project root.
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    pub imported: String,
    pub text: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: imports crate::{}, a layer above its own: {}",
            self.file.display(),
            self.line,
            self.imported,
            self.text.trim()
        )
    }
}

pub fn run() -> anyhow::Result<()> {
    let violations = check(&project_root())?;
    for violation in &violations {
        eprintln!("{violation}");
    }
    if !violations.is_empty() {
        bail!("{} import(s) point up a layer: see ARCHITECTURE.md", violations.len());
    }
    let shared = shared_module_names(&project_root())?;
    for (name, places) in &shared {
        eprintln!("module name {name:?} stands for {} modules: {places:?}", places.len());
    }
    if !shared.is_empty() {
        bail!("{} module name(s) used for more than one module", shared.len());
    }
    println!("layers: every import points down or sideways; no two modules share a name");
    Ok(())
}

/// Every upward import under `root/src`.
pub fn check(root: &Path) -> anyhow::Result<Vec<Violation>> {
    let src = root.join("src");
    let mut files = Vec::new();
    collect_rust_files(&src, &mut files)?;
    files.sort();
    let mut violations = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("below src").to_path_buf();
        // The binary is a crate of its own: it reaches the library as `healthd::`.
        if relative == Path::new("main.rs") {
            continue;
        }
        let own = rank_of_file(&relative)
            .with_context(|| format!("src/{}: in no layer of LAYERS", relative.display()))?;
        let text = fs::read_to_string(&file).with_context(|| format!("reading {file:?}"))?;
        for (index, line) in text.lines().enumerate() {
            for imported in imports(line) {
                if rank_of_import(&imported) > own {
                    violations.push(Violation {
                        file: Path::new("src").join(&relative),
                        line: index + 1,
                        imported,
                        text: line.to_string(),
                    });
                }
            }
        }
    }
    Ok(violations)
}

fn collect_rust_files(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {dir:?}"))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_rust_files(&path, files)?;
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    Ok(())
}

/// The crate root's rank: above every layer.
fn top() -> usize {
    LAYERS.len()
}

/// `lib.rs` is the top; any other file is in the layer its first path
/// component names.
fn rank_of_file(relative: &Path) -> Option<usize> {
    if relative == Path::new("lib.rs") {
        return Some(top());
    }
    let first = relative.components().next()?.as_os_str().to_str()?;
    let layer = first.strip_suffix(".rs").unwrap_or(first);
    LAYERS.iter().position(|known| *known == layer)
}

/// A layer's rank; anything else the crate root holds is the top.
fn rank_of_import(first_segment: &str) -> usize {
    LAYERS.iter().position(|known| *known == first_segment).unwrap_or(top())
}

/// The first segment after each `crate::` in the code of `line` (comments
/// left out). `crate::{a::x, b::y}` names every layer in the braces.
fn imports(line: &str) -> Vec<String> {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return Vec::new();
    }
    let code = match line.find("// ") {
        Some(comment) => &line[..comment],
        None => line,
    };
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        // `healthd_crate::` or `my_crate::` are other paths.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let inside = group.split('}').next().unwrap_or(group);
            for item in inside.split(',') {
                let item = item.trim();
                if !item.is_empty() {
                    found.push(first_segment(item));
                }
            }
        } else {
            found.push(first_segment(rest));
        }
    }
    found
}

fn first_segment(path: &str) -> String {
    path.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Module names that stand for two things: a file or folder name under
/// `src/` used at two places (`mod.rs`, `lib.rs`, `main.rs` apart), such as
/// a `tls` kind beside a `tls` server module.
pub fn shared_module_names(root: &Path) -> anyhow::Result<Vec<(String, Vec<PathBuf>)>> {
    let src = root.join("src");
    let mut files = Vec::new();
    collect_rust_files(&src, &mut files)?;
    let mut by_name: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
    for file in files {
        let relative = file.strip_prefix(&src).expect("below src").to_path_buf();
        let stem = relative.file_stem().and_then(|stem| stem.to_str()).unwrap_or_default();
        if matches!(stem, "mod" | "lib" | "main") {
            continue;
        }
        by_name.entry(stem.to_string()).or_default().push(relative);
    }
    Ok(by_name.into_iter().filter(|(_, places)| places.len() > 1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_modules_share_a_name() {
        let shared = shared_module_names(&project_root()).unwrap();
        assert!(shared.is_empty(), "modules named alike at different places: {shared:?}");
    }

    #[test]
    fn no_layer_of_healthd_imports_from_a_layer_above_its_own() {
        let violations = check(&project_root()).unwrap();
        let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert!(listed.is_empty(), "imports that point up a layer:\n{}", listed.join("\n"));
    }

    /// A copy of `src/` with one line added where it does not belong.
    fn tree_with(file: &str, line: &str) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("layers-{}-{}", std::process::id(), line.len()));
        let _ = fs::remove_dir_all(&root);
        copy_dir(&project_root().join("src"), &root.join("src"));
        let path = root.join("src").join(file);
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str(line);
        text.push('\n');
        fs::write(&path, text).unwrap();
        root
    }

    fn copy_dir(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy_dir(&path, &target);
            } else {
                fs::copy(&path, &target).unwrap();
            }
        }
    }

    #[test]
    fn an_upward_import_is_named_with_its_file_and_line() {
        let root = tree_with("checks/tcp.rs", "use crate::config::Settings;");
        let violations = check(&root).unwrap();
        let _ = fs::remove_dir_all(&root);
        assert_eq!(violations.len(), 1, "{violations:?}");
        let violation = &violations[0];
        assert_eq!(violation.file, Path::new("src/checks/tcp.rs"));
        assert_eq!(violation.imported, "config");
        let text = violation.to_string();
        assert!(text.starts_with("src/checks/tcp.rs:"), "{text}");
        assert!(text.contains("imports crate::config, a layer above its own"), "{text}");
    }

    #[test]
    fn paths_in_braces_in_place_and_to_the_root_count_but_comments_do_not() {
        assert_eq!(imports("use crate::{api::x, base::y};"), ["api", "base"]);
        assert_eq!(
            imports("    let s = crate::service::token_digest(t); // crate::api"),
            ["service"]
        );
        assert!(imports("/// see [`x`](crate::api::x)").is_empty());
        assert!(imports("use healthd_crate::x;").is_empty());
        assert_eq!(rank_of_import("Healthd"), top());
        let root = tree_with("base/units.rs", "fn f() -> crate::Healthd { todo!() }");
        let violations = check(&root).unwrap();
        let _ = fs::remove_dir_all(&root);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].imported, "Healthd");
    }
}
