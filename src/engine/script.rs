//! Compiling source into V8 functions, named so that stack traces and
//! syntax errors point at the right file, line and column. Shared by the
//! guest's webtask code, the module set's files and the Node shim's bundle.

use deno_core::v8;

/// A syntax error, as V8 reports it: message (without "Uncaught "), line
/// and 1-based column.
pub struct CompileError {
    pub message: String,
    pub line: u32,
    pub column: u32,
}

/// Source text that lives as long as the process (in the binary or a
/// mapped image) as a V8 string: ASCII (nearly all of it) as an external
/// string over those bytes, no copy per isolate; anything else copied.
/// None if V8 cannot hold it.
pub fn static_text<'s>(scope: &mut v8::PinScope<'s, '_>, bytes: &'static [u8]) -> Option<v8::Local<'s, v8::String>> {
    if bytes.is_ascii() {
        v8::String::new_external_onebyte_static(scope, bytes)
    } else {
        v8::String::new_from_utf8(scope, bytes, v8::NewStringType::Normal)
    }
}

/// The origin of a classic script or function named `name`.
pub fn origin<'s>(scope: &mut v8::PinScope<'s, '_>, name: v8::Local<'s, v8::String>) -> v8::ScriptOrigin<'s> {
    v8::ScriptOrigin::new(scope, name.into(), 0, 0, false, 0, None, false, false, false, None)
}

/// Code of at most this many characters is compiled eagerly by
/// [`compile_function`], its inner functions with it. Left to V8's lazy
/// default, an inner function is pre-parsed when the code is compiled and
/// parsed again when it is first called: a webtask is a few functions,
/// nearly all of which its first request calls, so that second pass is
/// pure cost. For the hello webtask it was 15-30 µs of a container's first
/// request (~10% of its time in the worker) and of every request with new
/// code. Longer code (a bundle that carries its dependencies) stays lazy,
/// so the functions it never calls cost nothing.
pub const EAGER_MAX_CHARS: usize = 8 * 1024;

/// Guest code: `src` compiled as the body of a function of `params`,
/// named `name`; eagerly if it is short (see [`EAGER_MAX_CHARS`]).
pub fn compile_function<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    name: v8::Local<'s, v8::String>,
    src: v8::Local<'s, v8::String>,
    params: &[&str],
) -> Result<v8::Local<'s, v8::Function>, CompileError> {
    let eager = src.length() <= EAGER_MAX_CHARS;
    let options = if eager { v8::script_compiler::CompileOptions::EagerCompile } else { v8::script_compiler::CompileOptions::NoCompileOptions };
    let origin = origin(scope, name);
    let source = v8::script_compiler::Source::new(src, Some(&origin));
    function_from(scope, source, options, params)
}

/// As [`compile_function`] (lazily), from V8's code `cache` for this very
/// source if there is one (shared code only: see `code_cache`).
pub fn compile_function_cached<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    name: v8::Local<'s, v8::String>,
    src: v8::Local<'s, v8::String>,
    params: &[&str],
    cache: Option<&'static [u8]>,
) -> Result<v8::Local<'s, v8::Function>, CompileError> {
    let origin = origin(scope, name);
    let (source, options) = source(src, &origin, cache);
    function_from(scope, source, options, params)
}

fn function_from<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    mut source: v8::script_compiler::Source,
    options: v8::script_compiler::CompileOptions,
    params: &[&str],
) -> Result<v8::Local<'s, v8::Function>, CompileError> {
    let params: Vec<_> = params.iter().map(|p| v8::String::new(scope, p).unwrap()).collect();
    v8::tc_scope!(let tc, scope);
    let compiled = v8::script_compiler::compile_function(tc, &mut source, &params, &[], options, v8::script_compiler::NoCacheReason::NoReason);
    note_cache(&source);
    compiled.ok_or_else(|| match tc.message() {
        Some(msg) => {
            let message = msg.get(tc).to_rust_string_lossy(tc);
            CompileError {
                message: message.strip_prefix("Uncaught ").unwrap_or(&message).to_owned(),
                line: msg.get_line_number(tc).unwrap_or(0) as u32,
                column: msg.get_start_column() as u32 + 1,
            }
        }
        None => CompileError { message: "SyntaxError".to_owned(), line: 0, column: 0 },
    })
}

/// A classic script compiled from `src`, from `cache` if there is one;
/// None with an exception pending in `scope` if it does not compile.
pub fn compile_script<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    src: v8::Local<'s, v8::String>,
    origin: &v8::ScriptOrigin<'s>,
    cache: Option<&'static [u8]>,
) -> Option<v8::Local<'s, v8::Script>> {
    let (mut source, options) = source(src, origin, cache);
    let script = v8::script_compiler::compile(scope, &mut source, options, v8::script_compiler::NoCacheReason::NoReason);
    note_cache(&source);
    script
}

fn source<'s>(
    src: v8::Local<'s, v8::String>,
    origin: &v8::ScriptOrigin<'s>,
    cache: Option<&'static [u8]>,
) -> (v8::script_compiler::Source, v8::script_compiler::CompileOptions) {
    use v8::script_compiler::{CachedData, CompileOptions, Source};
    match cache {
        Some(cache) => (Source::new_with_cached_data(src, Some(origin), CachedData::new(cache)), CompileOptions::ConsumeCodeCache),
        None => (Source::new(src, Some(origin)), CompileOptions::NoCompileOptions),
    }
}

fn note_cache(source: &v8::script_compiler::Source) {
    if let Some(cache) = source.get_cached_data() {
        super::code_cache::note(cache.rejected());
    }
}
