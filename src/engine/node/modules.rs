//! The fixed module set (`modules/`) as an in-memory file table, built once
//! per node: `make modules` installs the set from npm and writes
//! `modules/dist/{index.json,files.bin}`; build.rs embeds both in the binary
//! (empty when absent, so a plain `cargo build` still works, without the
//! set). The sources stay out of the startup snapshot: an isolate compiles a
//! file only when it first requires it, so the set costs isolate creation
//! nothing, and every worker (a fresh exec of this binary) has the table
//! mapped read-only from the executable without building anything.

use deno_core::{op2, v8};
use deno_error::JsErrorBox;

static INDEX: &str = include_str!(concat!(env!("OUT_DIR"), "/modules-index.json"));
static FILES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/modules-files.bin"));

/// The table's index as JSON: `{set: {name: version}, files: [path],
/// packages: {dir: {name, version, main, exports}}}`.
pub fn index_json() -> &'static str {
    INDEX
}

/// `name -> version` of every module in the set.
pub fn list() -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Index {
        set: std::collections::BTreeMap<String, String>,
    }
    serde_json::from_str::<Index>(INDEX).map(|i| i.set.into_iter().collect()).unwrap_or_default()
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

/// The module index, read once while the snapshot is built.
#[op2]
#[string]
pub fn op_wt_module_index() -> &'static str {
    INDEX
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
    let src = if bytes.is_ascii() {
        v8::String::new_external_onebyte_static(scope, bytes)
    } else {
        v8::String::new_from_utf8(scope, bytes, v8::NewStringType::Normal)
    }
    .ok_or_else(|| super::range_error("module source too large"))?;
    let name = v8::String::new(scope, path).ok_or_else(|| super::range_error("path too long"))?;
    let origin = v8::ScriptOrigin::new(scope, name.into(), 0, 0, false, 0, None, false, false, false, None);
    let mut source = v8::script_compiler::Source::new(src, Some(&origin));
    let params = ["exports", "require", "module", "__filename", "__dirname"].map(|p| v8::String::new(scope, p).unwrap());
    v8::tc_scope!(let tc, scope);
    let f = v8::script_compiler::compile_function(
        tc,
        &mut source,
        &params,
        &[],
        v8::script_compiler::CompileOptions::NoCompileOptions,
        v8::script_compiler::NoCacheReason::NoReason,
    );
    match f {
        Some(f) => Ok(f),
        None => {
            let msg = tc.message().map(|m| m.get(tc).to_rust_string_lossy(tc)).unwrap_or_else(|| "compile error".into());
            Err(JsErrorBox::generic(format!("{path}: {msg}")))
        }
    }
}

/// The text of file `n` (package.json and other JSON files), as a string.
#[op2]
pub fn op_wt_module_text<'s>(scope: &mut v8::PinScope<'s, '_>, #[smi] n: u32) -> Result<v8::Local<'s, v8::String>, JsErrorBox> {
    let bytes = file(n).ok_or_else(|| super::type_error(format!("no module file {n}")))?;
    if bytes.is_ascii() {
        v8::String::new_external_onebyte_static(scope, bytes)
    } else {
        v8::String::new_from_utf8(scope, bytes, v8::NewStringType::Normal)
    }
    .ok_or_else(|| super::range_error("module file too large"))
}
