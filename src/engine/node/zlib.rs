//! `zlib` for the Node shim: gzip, deflate (zlib-wrapped) and raw deflate,
//! one-shot, as ops over flate2 (miniz_oxide, pure Rust). Ops rather than a
//! JS port (pako, browserify-zlib): compression is CPU-bound, and native
//! code runs it several times faster inside the same CPU limit.
//!
//! Output is capped (a small gzip can inflate to gigabytes); the shim's
//! streaming classes buffer their input and call these once at flush.

use std::io::{Read, Write};

use deno_core::op2;
use deno_error::JsErrorBox;
use flate2::Compression;

/// Largest output one call produces (Node's `maxOutputLength`, clamped).
pub const MAX_OUTPUT: usize = 64 * 1024 * 1024;

#[op2]
#[buffer]
pub fn op_wt_zlib(
    #[string] mode: &str,
    #[buffer] input: &[u8],
    level: f64,
    max_output: f64,
) -> Result<Vec<u8>, JsErrorBox> {
    let limit = if max_output.is_finite() && max_output >= 1.0 { (max_output as usize).min(MAX_OUTPUT) } else { MAX_OUTPUT };
    let level = if level == -1.0 {
        Compression::default()
    } else if (0.0..=9.0).contains(&level) && level.fract() == 0.0 {
        Compression::new(level as u32)
    } else {
        return Err(super::range_error(format!("The value of \"options.level\" is out of range. It must be >= -1 and <= 9. Received {level}")));
    };
    let out = match mode {
        "gzip" => compress(flate2::write::GzEncoder::new(Vec::new(), level), input),
        "deflate" => compress(flate2::write::ZlibEncoder::new(Vec::new(), level), input),
        "deflateRaw" => compress(flate2::write::DeflateEncoder::new(Vec::new(), level), input),
        "gunzip" => expand(flate2::read::MultiGzDecoder::new(input), limit),
        "inflate" => expand(flate2::read::ZlibDecoder::new(input), limit),
        "inflateRaw" => expand(flate2::read::DeflateDecoder::new(input), limit),
        // Like Node's unzip: gzip or zlib, told apart by the header.
        "unzip" if input.starts_with(&[0x1f, 0x8b]) => expand(flate2::read::MultiGzDecoder::new(input), limit),
        "unzip" => expand(flate2::read::ZlibDecoder::new(input), limit),
        other => return Err(super::type_error(format!("unknown zlib mode {other:?}"))),
    };
    out.map_err(|e| {
        let mut err = JsErrorBox::generic(e.to_string());
        if e.kind() == std::io::ErrorKind::OutOfMemory {
            err = super::range_error(format!("Cannot create a Buffer larger than {limit} bytes"));
        }
        err
    })
}

fn compress<W: Write + Finish>(mut w: W, input: &[u8]) -> std::io::Result<Vec<u8>> {
    w.write_all(input)?;
    w.finish()
}

trait Finish {
    fn finish(self) -> std::io::Result<Vec<u8>>;
}
impl Finish for flate2::write::GzEncoder<Vec<u8>> {
    fn finish(self) -> std::io::Result<Vec<u8>> {
        flate2::write::GzEncoder::finish(self)
    }
}
impl Finish for flate2::write::ZlibEncoder<Vec<u8>> {
    fn finish(self) -> std::io::Result<Vec<u8>> {
        flate2::write::ZlibEncoder::finish(self)
    }
}
impl Finish for flate2::write::DeflateEncoder<Vec<u8>> {
    fn finish(self) -> std::io::Result<Vec<u8>> {
        flate2::write::DeflateEncoder::finish(self)
    }
}

/// Reads all of `r`, failing past `limit` bytes; corrupt input is an error
/// carrying flate2's reason ("invalid gzip header", "corrupt deflate stream").
fn expand(r: impl Read, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let n = r.take(limit as u64 + 1).read_to_end(&mut out)?;
    if n > limit {
        return Err(std::io::Error::new(std::io::ErrorKind::OutOfMemory, "output too large"));
    }
    Ok(out)
}
