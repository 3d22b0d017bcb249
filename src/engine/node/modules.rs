//! The fixed module set (`modules/`) as an in-memory file table, built once
//! per node: `make modules` installs the set from npm and writes
//! `modules/dist/{index.json,files.bin}`; build.rs embeds both in the binary
//! (empty when absent, so a plain `cargo build` still works, without the
//! set). The sources stay out of the startup snapshot: an isolate compiles a
//! file only when it first requires it, so the set costs isolate creation
//! nothing, and every worker (a fresh exec of this binary) has the table
//! mapped read-only from the executable without building anything.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use deno_core::{op2, v8};
use deno_error::JsErrorBox;
use serde::Deserialize;
use serde_json::Value;

use crate::engine::{code_cache, script};

static INDEX: &str = include_str!(concat!(env!("OUT_DIR"), "/modules-index.json"));
static FILES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modules-files.bin"));

/// The table's index: `{set: {name: version}, files: [path], packages:
/// {dir: {name, version, main, exports}}}`. It stays on the Rust side (the
/// guest's `require` asks [`op_wt_module_resolve`]): as JS objects in the
/// startup snapshot it cost every isolate about a millisecond to deserialise.
#[derive(Deserialize, Default)]
struct Index {
    set: BTreeMap<String, String>,
    files: Vec<String>,
    packages: HashMap<String, Package>,
}

#[derive(Deserialize, Default)]
struct Package {
    /// Usually a path; some packages write `false`.
    main: Option<Value>,
    exports: Option<Value>,
}

struct Table {
    index: Index,
    ids: HashMap<String, u32>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let index: Index = serde_json::from_str(INDEX).unwrap_or_else(|e| {
            tracing::error!("the module set's index is unreadable ({e}): serving without the module set");
            Index::default()
        });
        let ids = index.files.iter().enumerate().map(|(i, f)| (f.clone(), i as u32)).collect();
        Table { index, ids }
    })
}

/// Parses the index now rather than on a container's first require (the
/// zygote calls this once; every worker forked from it inherits the table).
pub fn preload() {
    table();
}

/// `name -> version` of every module in the set.
pub fn list() -> Vec<(String, String)> {
    table().index.set.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// `/a/./b/../c` -> `/a/c`; every table path is absolute.
fn normalize(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    format!("/{}", out.join("/"))
}

fn join(a: &str, b: &str) -> String {
    normalize(&format!("{a}/{b}"))
}

fn parent(dir: &str) -> &str {
    match dir.rfind('/') {
        Some(0) | None => "/",
        Some(at) => &dir[..at],
    }
}

impl Table {
    fn has(&self, p: &str) -> bool {
        self.ids.contains_key(p)
    }

    /// Node's LOAD_AS_FILE: X, X.js, X.json.
    fn as_file(&self, p: &str) -> Option<String> {
        [p.to_owned(), format!("{p}.js"), format!("{p}.json")].into_iter().find(|c| self.has(c))
    }

    /// LOAD_INDEX.
    fn as_index(&self, p: &str) -> Option<String> {
        [format!("{p}/index.js"), format!("{p}/index.json")].into_iter().find(|c| self.has(c))
    }

    /// LOAD_AS_DIRECTORY: package.json `main`, then the index.
    fn as_directory(&self, p: &str) -> Option<String> {
        if let Some(main) = self.index.packages.get(p).and_then(|pkg| pkg.main.as_ref()?.as_str()) {
            let m = join(p, main);
            if let Some(found) = self.as_file(&m).or_else(|| self.as_index(&m)) {
                return Some(found);
            }
        }
        self.as_index(p)
    }

    /// LOAD_NODE_MODULES from `from_dir` up to `/`, with package `exports`.
    fn resolve_bare(&self, id: &str, from_dir: &str) -> Option<String> {
        let name_end = if id.starts_with('@') {
            id.find('/').and_then(|s| id[s + 1..].find('/').map(|t| s + 1 + t))
        } else {
            id.find('/')
        };
        let (name, subpath) = match name_end {
            Some(at) => (&id[..at], format!(".{}", &id[at..])),
            None => (id, ".".to_owned()),
        };
        let mut dir = from_dir;
        loop {
            if !dir.ends_with("/node_modules") {
                let base = if dir == "/" { "/node_modules".to_owned() } else { format!("{dir}/node_modules") };
                let pkg_dir = format!("{base}/{name}");
                match self.index.packages.get(&pkg_dir).and_then(|p| p.exports.as_ref()).filter(|e| !e.is_null()) {
                    Some(exports) => {
                        if let Some(found) = self.resolve_exports(&pkg_dir, &subpath, exports) {
                            return Some(found);
                        }
                    }
                    None => {
                        let candidate = format!("{base}/{id}");
                        if let Some(found) = self.as_file(&candidate).or_else(|| self.as_directory(&candidate)) {
                            return Some(found);
                        }
                    }
                }
            }
            if dir == "/" {
                return None;
            }
            dir = parent(dir);
        }
    }

    /// PACKAGE_EXPORTS_RESOLVE with the `require`, `node` and `default`
    /// conditions, subpath patterns included.
    fn resolve_exports(&self, pkg_dir: &str, subpath: &str, exports: &Value) -> Option<String> {
        let sugar = match exports {
            Value::String(_) | Value::Array(_) => true,
            Value::Object(map) => map.keys().next().is_some_and(|k| !k.starts_with('.')),
            _ => return None,
        };
        let target = if sugar {
            (subpath == ".").then(|| export_target(exports, None)).flatten()
        } else {
            let map = exports.as_object()?;
            match map.get(subpath) {
                Some(t) => export_target(t, None),
                None => map.iter().find_map(|(key, t)| {
                    let star = key.find('*')?;
                    let (prefix, suffix) = (&key[..star], &key[star + 1..]);
                    (subpath.len() >= key.len() - 1 && subpath.starts_with(prefix) && subpath.ends_with(suffix))
                        .then(|| export_target(t, Some(&subpath[prefix.len()..subpath.len() - suffix.len()])))
                        .flatten()
                }),
            }
        }?;
        let p = join(pkg_dir, &target);
        self.has(&p).then_some(p)
    }

    /// The file `id` names when required from a module in `from_dir`.
    fn resolve(&self, id: &str, from_dir: &str) -> Option<String> {
        if id.starts_with("./") || id.starts_with("../") || id == "." || id == ".." {
            let p = join(from_dir, id);
            return self.as_file(&p).or_else(|| self.as_directory(&p));
        }
        if id.starts_with('/') {
            let p = normalize(id);
            return self.as_file(&p).or_else(|| self.as_directory(&p));
        }
        self.resolve_bare(id, from_dir)
    }
}

fn export_target(target: &Value, star: Option<&str>) -> Option<String> {
    match target {
        Value::String(s) => Some(match star {
            Some(star) => s.replace('*', star),
            None => s.clone(),
        }),
        Value::Array(items) => items.iter().find_map(|t| export_target(t, star)),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| matches!(k.as_str(), "require" | "node" | "default"))
            .find_map(|(_, t)| export_target(t, star)),
        _ => None,
    }
}

/// Longest `id` or directory, and deepest directory, a resolve looks at.
const MAX_PATH: usize = 4096;
const MAX_DEPTH: usize = 128;

/// Resolves `id` required from a module in `from_dir` to `[file number,
/// path]` in the table, or null when the table has no such file.
#[op2]
#[serde]
pub fn op_wt_module_resolve(#[string] id: &str, #[string] from_dir: &str) -> Option<(u32, String)> {
    // Guest code can pass anything (`module.path` is writable), and the CPU
    // limit cannot stop an op: bound the walk up `from_dir`. Every path in
    // the table is far shorter than this.
    if id.len() > MAX_PATH || from_dir.len() > MAX_PATH || from_dir.matches('/').count() > MAX_DEPTH {
        return None;
    }
    let table = table();
    let path = table.resolve(id, from_dir)?;
    Some((table.ids[&path], path))
}

/// The installed version of `name` if it is in the module set.
#[op2]
#[string]
pub fn op_wt_module_version(#[string] name: &str) -> Option<String> {
    table().index.set.get(name).cloned()
}

/// The bytes of file `n` of the index, if there is one.
fn file(n: u32) -> Option<&'static [u8]> {
    let count = u32::from_le_bytes(FILES.get(..4)?.try_into().ok()?);
    if n >= count {
        return None;
    }
    let at = 4 + 8 * n as usize;
    let off = u32::from_le_bytes(FILES.get(at..at + 4)?.try_into().ok()?) as usize;
    let len = u32::from_le_bytes(FILES.get(at + 4..at + 8)?.try_into().ok()?) as usize;
    let data = 4 + 8 * count as usize;
    FILES.get(data + off..data + off + len)
}

/// Compiles file `n` of the table as a CommonJS module function
/// `(exports, require, module, __filename, __dirname)` named after its
/// path. Sloppy mode, as Node compiles modules. ASCII sources (nearly all)
/// become external strings pointing into the binary: no copy per isolate.
#[op2]
pub fn op_wt_module_compile<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    #[smi] n: u32,
    #[string] path: &str,
) -> Result<v8::Local<'s, v8::Function>, JsErrorBox> {
    let bytes = file(n).ok_or_else(|| super::type_error(format!("no module file {n}")))?;
    let src = script::static_text(scope, bytes).ok_or_else(|| super::range_error("module source too large"))?;
    let name = v8::String::new(scope, path).ok_or_else(|| super::range_error("path too long"))?;
    let params = ["exports", "require", "module", "__filename", "__dirname"];
    let key = code_cache::Key::ModuleFile(n);
    let f = script::compile_function_cached(scope, name, src, &params, code_cache::lookup(key))
        .map_err(|e| JsErrorBox::generic(format!("{path}: Uncaught {}", e.message)))?;
    code_cache::record_function(scope, key, f);
    Ok(f)
}

/// The text of file `n` (package.json and other JSON files), as a string.
#[op2]
pub fn op_wt_module_text<'s>(scope: &mut v8::PinScope<'s, '_>, #[smi] n: u32) -> Result<v8::Local<'s, v8::String>, JsErrorBox> {
    let bytes = file(n).ok_or_else(|| super::type_error(format!("no module file {n}")))?;
    script::static_text(scope, bytes).ok_or_else(|| super::range_error("module file too large"))
}
