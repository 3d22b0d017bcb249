//! `zlib` for the Node shim: gzip, deflate (zlib-wrapped) and raw deflate
//! over flate2's streaming `Compress`/`Decompress` (miniz_oxide, pure
//! Rust), with gzip's framing (header, CRC-32, length, several members)
//! done here; brotli decoding over brotli-decompressor (pure Rust).
//! Brotli encoding is not offered: at Node's default quality (11) one call
//! of the encoder runs for hundreds of milliseconds over a block, with no
//! point in between where a CPU limit could stop it, so code that looks
//! for `createBrotliCompress` finds none and falls back to gzip.
//!
//! Ops rather than a JS port (pako, browserify-zlib): compression
//! is CPU-bound, and native code runs it several times faster inside the
//! same CPU limit.
//!
//! A [`ZStream`] is resumable: each call takes what input it can, writes at
//! most one output buffer the shim allocated (so every byte of output is
//! counted by the isolate's ArrayBuffer allocator), and returns within a
//! slice of time. A small gzip can inflate to gigabytes: a one-shot stream
//! fails as soon as its output could no longer be assembled within the
//! ArrayBuffer memory the container has left, naming that limit, and every
//! stream stops at Node's `maxOutputLength`.

use std::cell::RefCell;
use std::sync::Arc;

use deno_core::{op2, v8, GarbageCollected};
use deno_error::JsErrorBox;
use flate2::{Compress, Compression, Crc, Decompress, FlushCompress, FlushDecompress, Status};
use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};

use super::{index, range_error, type_error, Deadline};
use crate::engine::alloc::{Budget, Charge};

/// Input bytes handed to flate2 at a time, between looks at the clock.
const IN_STEP: usize = 16 * 1024;
/// Host memory a compressor or decompressor holds (miniz_oxide's tables and
/// window), charged to the ArrayBuffer budget while the stream lives.
const DEFLATE_STATE: usize = 320 * 1024;
const INFLATE_STATE: usize = 48 * 1024;
/// Largest brotli window decoded: the standard format's (24 bits). The
/// decoder fills its whole window in one step, out of the CPU limit's
/// reach (about 50 ms for 16 MiB here, in release); a large-window stream
/// (up to 1 GiB) would run for seconds.
const MAX_BROTLI_WINDOW_BITS: u32 = 24;
/// A brotli decoder's Huffman tables and context maps as typical streams
/// declare them; one declaring the most trees the format allows holds
/// about 3 MiB. Its window is charged apart, once the data declares it.
const UNBROTLI_STATE: usize = 1024 * 1024;

/// What the shim sees of a call: input taken, output written, ended.
const ENDED: u32 = 1;

fn data_error(msg: impl std::fmt::Display) -> JsErrorBox {
    JsErrorBox::generic(format!("Z_DATA_ERROR: {msg}"))
}

/// gzip member framing being read.
enum Gz {
    /// Header bytes seen so far (fixed part, then the optional fields).
    Header { seen: Vec<u8> },
    Body,
    Trailer { seen: Vec<u8> },
    /// A member ended; more input starts another (unless it is zero padding).
    Between,
}

enum Codec {
    Deflate { c: Compress, gzip: bool, crc: Crc },
    /// `wrapped`: zlib's header and checksum around the deflate data.
    Inflate { d: Decompress, gzip: Option<Gz>, crc: Crc, wrapped: bool },
    /// `unzip` before the first two bytes told gzip from zlib.
    Sniff { seen: Vec<u8> },
    /// Brotli decoding; its window, up to 16 MiB, is charged as the
    /// decoder allocates it.
    Unbrotli(Box<BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>>),
}

struct ZRun {
    codec: Codec,
    /// Bytes produced before the codec's own output (gzip header, trailer).
    pending: Vec<u8>,
    total_out: u64,
    max_out: u64,
    /// One-shot output is concatenated at the end: it must fit twice.
    one_shot: bool,
    ended: bool,
    charge: Charge,
    /// Of `charge`, the brotli window charged so far.
    window_charged: usize,
}

pub struct ZStream(RefCell<Option<ZRun>>);

// SAFETY: holds no GC references to trace.
unsafe impl GarbageCollected for ZStream {
    fn trace(&self, _visitor: &mut v8::cppgc::Visitor) {}

    fn get_name(&self) -> &'static std::ffi::CStr {
        c"ZStream"
    }
}

/// Node 20.15's `zlib.crc32`: the CRC-32 (IEEE, as zlib's) of `data`,
/// continuing from `value`.
#[op2(fast)]
pub fn op_wt_crc32(#[buffer] data: &[u8], value: u32) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(value);
    hasher.update(data);
    hasher.finalize()
}

/// A stream in `mode` (gzip, deflate, deflateRaw, gunzip, inflate,
/// inflateRaw, unzip). `max_output`: Node's `maxOutputLength` (any number;
/// out of range means none). `one_shot`: the shim will join the output into
/// one buffer.
#[op2]
#[cppgc]
pub fn op_wt_zlib_new(
    scope: &mut v8::PinScope<'_, '_>,
    #[string] mode: &str,
    level: f64,
    max_output: f64,
    one_shot: bool,
) -> Result<ZStream, JsErrorBox> {
    let budget = crate::engine::alloc::budget(scope);
    // Streams a guest dropped unfinished hold their charge until V8
    // collects them, and nothing else would prompt a collection: a charge
    // that does not fit asks for one (as V8 does itself before it fails an
    // ArrayBuffer allocation) and is tried once more.
    new_stream(&budget, mode, level, max_output, one_shot, || scope.low_memory_notification())
}

fn new_stream(
    budget: &Arc<Budget>,
    mode: &str,
    level: f64,
    max_output: f64,
    one_shot: bool,
    collect_garbage: impl FnOnce(),
) -> Result<ZStream, JsErrorBox> {
    let level = if level == -1.0 {
        Compression::default()
    } else if (0.0..=9.0).contains(&level) && level.fract() == 0.0 {
        Compression::new(level as u32)
    } else {
        return Err(range_error(format!("The value of \"options.level\" is out of range. It must be >= -1 and <= 9. Received {level}")));
    };
    let mut pending = Vec::new();
    let codec = match mode {
        "gzip" => {
            // As zlib writes it: no name or time, XFL by level, OS unix.
            let xfl = match level.level() {
                9 => 2,
                1 => 4,
                _ => 0,
            };
            pending.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3]);
            Codec::Deflate { c: Compress::new(level, false), gzip: true, crc: Crc::new() }
        }
        "deflate" => Codec::Deflate { c: Compress::new(level, true), gzip: false, crc: Crc::new() },
        "deflateRaw" => Codec::Deflate { c: Compress::new(level, false), gzip: false, crc: Crc::new() },
        "gunzip" => Codec::Inflate { d: Decompress::new(false), gzip: Some(Gz::Header { seen: Vec::new() }), crc: Crc::new(), wrapped: false },
        "inflate" => Codec::Inflate { d: Decompress::new(true), gzip: None, crc: Crc::new(), wrapped: true },
        "inflateRaw" => Codec::Inflate { d: Decompress::new(false), gzip: None, crc: Crc::new(), wrapped: false },
        "unzip" => Codec::Sniff { seen: Vec::new() },
        "brotliDecompress" | "brotliDecompressLargeWindow" => {
            let mut state = BrotliState::new(StandardAlloc::default(), StandardAlloc::default(), StandardAlloc::default());
            state.large_window = mode == "brotliDecompressLargeWindow";
            Codec::Unbrotli(Box::new(state))
        }
        other => return Err(type_error(format!("unknown zlib mode {other:?}"))),
    };
    let size = match codec {
        Codec::Deflate { .. } => DEFLATE_STATE,
        Codec::Unbrotli(_) => UNBROTLI_STATE,
        _ => INFLATE_STATE,
    };
    let charge = Charge::new(budget, size).or_else(|_| {
        collect_garbage();
        Charge::new(budget, size)
    })?;
    let max_out = if max_output.is_finite() && max_output >= 1.0 { max_output as u64 } else { u64::MAX };
    Ok(ZStream(RefCell::new(Some(ZRun { codec, pending, total_out: 0, max_out, one_shot, ended: false, charge, window_charged: 0 }))))
}

/// Runs the stream for one slice over `input[offset..]` (`finish`: no more
/// input follows), writing into `out`. `info` gets [input offset reached,
/// bytes written]. Returns 1 once the stream has ended, else 0: call again
/// with the rest of the input, or with more once it comes. Errors carry
/// zlib's code before a colon (`Z_DATA_ERROR: incorrect header check`).
#[op2(fast)]
pub fn op_wt_zlib_run(
    #[cppgc] z: &ZStream,
    #[buffer] input: &[u8],
    offset: f64,
    finish: bool,
    #[buffer] out: &mut [u8],
    #[buffer] info: &mut [u32],
) -> Result<u32, JsErrorBox> {
    run_stream(z, input, offset, finish, out, info)
}

fn run_stream(z: &ZStream, input: &[u8], offset: f64, finish: bool, out: &mut [u8], info: &mut [u32]) -> Result<u32, JsErrorBox> {
    if info.len() < 2 {
        return Err(type_error("info needs two slots"));
    }
    let offset = index(offset, input.len(), "offset")?;
    if super::stopping() {
        info[0] = offset as u32;
        info[1] = 0;
        return Ok(0);
    }
    let mut slot = z.0.borrow_mut();
    let Some(run) = slot.as_mut() else {
        info[0] = offset as u32;
        info[1] = 0;
        return Ok(ENDED);
    };
    let result = run.step(&input[offset..], finish, out);
    match result {
        Ok((used, made)) => {
            info[0] = (offset + used) as u32;
            info[1] = made as u32;
            if run.done() {
                *slot = None;
                return Ok(ENDED);
            }
            Ok(0)
        }
        Err(e) => {
            *slot = None;
            Err(e)
        }
    }
}

impl ZRun {
    /// One slice of work: (input bytes used, output bytes written).
    fn step(&mut self, input: &[u8], finish: bool, out: &mut [u8]) -> Result<(usize, usize), JsErrorBox> {
        let deadline = Deadline::start();
        let (mut used, mut made) = (0, 0);
        loop {
            made += self.drain(&mut out[made..]);
            if self.done() || made == out.len() {
                break;
            }
            let before = (used, made);
            let (u, m) = self.advance(&input[used..], finish, &mut out[made..])?;
            used += u;
            made += m;
            self.total_out += m as u64;
            self.check_size()?;
            if (used, made) == before && self.pending.is_empty() {
                // Stuck: out of input (or, finishing, a truncated stream).
                if finish && used == input.len() && !self.ended {
                    return Err(JsErrorBox::generic("Z_BUF_ERROR: unexpected end of file"));
                }
                break;
            }
            if deadline.passed() {
                break;
            }
        }
        Ok((used, made))
    }

    /// Ended, and everything it made handed out.
    fn done(&self) -> bool {
        self.ended && self.pending.is_empty()
    }

    fn drain(&mut self, out: &mut [u8]) -> usize {
        let n = self.pending.len().min(out.len());
        out[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        self.total_out += n as u64;
        n
    }

    fn check_size(&self) -> Result<(), JsErrorBox> {
        if self.total_out > self.max_out {
            return Err(range_error(format!("Cannot create a Buffer larger than {} bytes", self.max_out)));
        }
        // What was made so far sits in the guest's chunks; joining them
        // needs as much again.
        let budget = self.charge.budget();
        if self.one_shot && self.total_out > budget.remaining() as u64 {
            return Err(range_error(format!(
                "Array buffer allocation failed: zlib output of {} bytes cannot be joined within this container's ArrayBuffer memory limit of {} MiB ({} bytes left)",
                self.total_out,
                budget.cap() >> 20,
                budget.remaining()
            )));
        }
        Ok(())
    }

    /// Some progress on `input` into `out`: (input used, output written).
    fn advance(&mut self, input: &[u8], finish: bool, out: &mut [u8]) -> Result<(usize, usize), JsErrorBox> {
        let piece = &input[..input.len().min(IN_STEP)];
        let last = finish && piece.len() == input.len();
        match &mut self.codec {
            Codec::Deflate { c, gzip, crc } => {
                let (in0, out0) = (c.total_in(), c.total_out());
                let flush = if last { FlushCompress::Finish } else { FlushCompress::None };
                let status = c.compress(piece, out, flush).map_err(|e| JsErrorBox::generic(format!("Z_STREAM_ERROR: {e}")))?;
                let used = (c.total_in() - in0) as usize;
                let made = (c.total_out() - out0) as usize;
                crc.update(&piece[..used]);
                if status == Status::StreamEnd {
                    if *gzip {
                        self.pending.extend_from_slice(&crc.sum().to_le_bytes());
                        self.pending.extend_from_slice(&crc.amount().to_le_bytes());
                    }
                    self.ended = true;
                }
                Ok((used, made))
            }
            Codec::Sniff { seen } => {
                let take = (2 - seen.len()).min(input.len());
                seen.extend_from_slice(&input[..take]);
                if seen.len() < 2 {
                    return Ok((take, 0));
                }
                let sniffed = std::mem::take(seen);
                let is_gzip = sniffed[..] == [0x1f, 0x8b];
                let (mut d, mut gzip, mut crc) = if is_gzip {
                    (Decompress::new(false), Some(Gz::Header { seen: Vec::new() }), Crc::new())
                } else {
                    (Decompress::new(true), None, Crc::new())
                };
                // The two bytes go to the real decoder (a header takes them
                // without output).
                let (used, made, _) = inflate(&mut d, &mut gzip, &mut crc, !is_gzip, &sniffed, out)?;
                if used != 2 || made != 0 {
                    return Err(data_error("incorrect header check"));
                }
                self.codec = Codec::Inflate { d, gzip, crc, wrapped: !is_gzip };
                Ok((take, 0))
            }
            Codec::Unbrotli(state) => {
                // One byte at a time until the header has declared the
                // window: the decoder allocates it with the first
                // metablock, and a window too large to fill within the CPU
                // limit, or for the budget to hold, is refused before that.
                let declared = state.window_bits != 0;
                let piece = if declared { piece } else { &piece[..piece.len().min(1)] };
                let (mut avail_in, mut in_at) = (piece.len(), 0);
                let (mut avail_out, mut out_at, mut total) = (out.len(), 0, 0);
                let result = BrotliDecompressStream(&mut avail_in, &mut in_at, piece, &mut avail_out, &mut out_at, out, &mut total, state);
                if !declared && state.window_bits != 0 {
                    check_brotli_window(state.window_bits, self.charge.budget())?;
                }
                let window = usize::try_from(state.ringbuffer_size).unwrap_or(0);
                if window > self.window_charged {
                    self.charge.grow(window - self.window_charged)?;
                    self.window_charged = window;
                }
                match result {
                    BrotliResult::ResultFailure => Err(brotli_error(state.error_code)),
                    // Like Node: what follows the stream is ignored.
                    BrotliResult::ResultSuccess => {
                        self.ended = true;
                        Ok((input.len(), out_at))
                    }
                    BrotliResult::NeedsMoreInput | BrotliResult::NeedsMoreOutput => Ok((in_at, out_at)),
                }
            }
            Codec::Inflate { d, gzip, crc, wrapped } => {
                let (used, made, ended) = inflate(d, gzip, crc, *wrapped, piece, out)?;
                let between = matches!(gzip, Some(Gz::Between));
                if ended || (finish && used == input.len() && between) {
                    // Like Node: what follows the stream is ignored.
                    self.ended = true;
                    return Ok((input.len(), made));
                }
                Ok((used, made))
            }
        }
    }
}

/// Progress of a decoder: (input used, output written, ended).
fn inflate(d: &mut Decompress, gzip: &mut Option<Gz>, crc: &mut Crc, wrapped: bool, input: &[u8], out: &mut [u8]) -> Result<(usize, usize, bool), JsErrorBox> {
    match gzip {
        Some(gz) => gunzip(d, gz, crc, input, out),
        None => {
            let (in0, out0) = (d.total_in(), d.total_out());
            if wrapped && in0 == 0 && input.len() >= 2 && (input[0] & 0x0f != 8 || (u16::from(input[0]) << 8 | u16::from(input[1])) % 31 != 0) {
                return Err(data_error("incorrect header check"));
            }
            let status = d.decompress(input, out, FlushDecompress::None).map_err(zlib_error)?;
            let used = (d.total_in() - in0) as usize;
            let made = (d.total_out() - out0) as usize;
            Ok((used, made, status == Status::StreamEnd))
        }
    }
}

/// A window the data just declared, before the decoder allocates it: one
/// past the standard's largest, or past what the budget has left, is
/// refused with its figures.
fn check_brotli_window(bits: u32, budget: &Budget) -> Result<(), JsErrorBox> {
    if bits > MAX_BROTLI_WINDOW_BITS {
        return Err(range_error(format!(
            "brotli window of {} MiB not decoded: webtask decodes windows up to {} MiB (one step of the decoder fills its whole window, out of the CPU limit's reach)",
            1u64 << (bits - 20),
            1u64 << (MAX_BROTLI_WINDOW_BITS - 20)
        )));
    }
    let window = 1usize << bits;
    if window > budget.remaining() {
        return Err(budget.exhausted(window));
    }
    Ok(())
}

/// A brotli decoding error as Node reports it: `ERR_` and the decoder's
/// error name without its `BROTLI_DECODER` prefix as the code (the shim
/// finds the errno under that name in `zlib.constants`).
fn brotli_error(code: impl std::fmt::Debug) -> JsErrorBox {
    let name = format!("{code:?}");
    let suffix = name.strip_prefix("BROTLI_DECODER").unwrap_or(&name);
    JsErrorBox::generic(format!("ERR_{suffix}: Decompression failed"))
}

/// flate2's error as zlib words it, where the two can be matched.
fn zlib_error(e: flate2::DecompressError) -> JsErrorBox {
    let msg = e.to_string();
    if msg.contains("adler") || msg.contains("checksum") {
        return data_error("incorrect data check");
    }
    data_error(if msg.is_empty() { "invalid deflate data".to_owned() } else { msg })
}

/// Length of a complete gzip header at the start of `h`, or None if more
/// bytes are needed (RFC 1952 section 2.3).
fn gzip_header_len(h: &[u8]) -> Result<Option<usize>, JsErrorBox> {
    if h.len() >= 2 && h[..2] != [0x1f, 0x8b] || !h.is_empty() && h[0] != 0x1f {
        return Err(data_error("incorrect header check"));
    }
    if h.len() < 10 {
        return Ok(None);
    }
    if h[2] != 8 {
        return Err(data_error("unknown compression method"));
    }
    let flags = h[3];
    if flags & 0xe0 != 0 {
        return Err(data_error("unknown header flags set"));
    }
    let mut at = 10;
    if flags & 4 != 0 {
        let Some(len) = h.get(at..at + 2) else { return Ok(None) };
        at += 2 + u16::from_le_bytes([len[0], len[1]]) as usize;
    }
    for bit in [8u8, 16] {
        if flags & bit != 0 {
            match h.get(at..).and_then(|rest| rest.iter().position(|&b| b == 0)) {
                Some(end) => at += end + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & 2 != 0 {
        at += 2;
    }
    Ok((h.len() >= at).then_some(at))
}

/// Longest gzip header taken (its name and comment fields are unbounded).
const MAX_GZIP_HEADER: usize = 64 * 1024;

/// Progress through gzip members: (input used, output written, ended).
fn gunzip(d: &mut Decompress, gz: &mut Gz, crc: &mut Crc, input: &[u8], out: &mut [u8]) -> Result<(usize, usize, bool), JsErrorBox> {
    match gz {
        Gz::Between => {
            let Some(&first) = input.first() else { return Ok((0, 0, false)) };
            if first == 0 {
                // Zero padding after the last member ends the stream.
                return Ok((input.len(), 0, true));
            }
            *gz = Gz::Header { seen: Vec::new() };
            gunzip(d, gz, crc, input, out)
        }
        Gz::Header { seen } => {
            // Take bytes until the header is complete; what was taken past it
            // is given back.
            let before = seen.len();
            let take = input.len().min(MAX_GZIP_HEADER + 1 - before);
            seen.extend_from_slice(&input[..take]);
            match gzip_header_len(seen)? {
                Some(len) => {
                    let used = len - before;
                    *gz = Gz::Body;
                    d.reset(false);
                    *crc = Crc::new();
                    Ok((used, 0, false))
                }
                None if seen.len() > MAX_GZIP_HEADER => Err(data_error("gzip header longer than 65536 bytes")),
                None => Ok((take, 0, false)),
            }
        }
        Gz::Body => {
            let (in0, out0) = (d.total_in(), d.total_out());
            let status = d.decompress(input, out, FlushDecompress::None).map_err(zlib_error)?;
            let used = (d.total_in() - in0) as usize;
            let made = (d.total_out() - out0) as usize;
            crc.update(&out[..made]);
            if status == Status::StreamEnd {
                *gz = Gz::Trailer { seen: Vec::new() };
            }
            Ok((used, made, false))
        }
        Gz::Trailer { seen } => {
            let take = (8 - seen.len()).min(input.len());
            seen.extend_from_slice(&input[..take]);
            if seen.len() == 8 {
                if u32::from_le_bytes(seen[..4].try_into().unwrap()) != crc.sum() {
                    return Err(data_error("incorrect data check"));
                }
                if u32::from_le_bytes(seen[4..].try_into().unwrap()) != crc.amount() {
                    return Err(data_error("incorrect length check"));
                }
                *gz = Gz::Between;
            }
            Ok((take, 0, false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(mode: &str, level: f64) -> ZStream {
        new_stream(&Budget::detached(1 << 30), mode, level, f64::INFINITY, true, || {}).unwrap()
    }

    /// Runs `mode` over `input` in `out_size` output pieces.
    fn run(mode: &str, level: f64, input: &[u8], out_size: usize) -> Result<Vec<u8>, JsErrorBox> {
        let z = stream(mode, level);
        let mut all = Vec::new();
        let mut at = 0;
        loop {
            let mut out = vec![0u8; out_size];
            let mut info = [0u32; 2];
            let status = run_stream(&z, input, at as f64, true, &mut out, &mut info)?;
            at = info[0] as usize;
            all.extend_from_slice(&out[..info[1] as usize]);
            if status == ENDED {
                return Ok(all);
            }
        }
    }

    #[test]
    fn every_mode_round_trips_in_small_pieces() {
        let text: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for (enc, dec) in [("gzip", "gunzip"), ("deflate", "inflate"), ("deflateRaw", "inflateRaw"), ("gzip", "unzip"), ("deflate", "unzip")] {
            for level in [-1.0, 1.0, 9.0] {
                for piece in [7usize, 65536] {
                    let packed = run(enc, level, &text, piece).unwrap();
                    let back = run(dec, -1.0, &packed, piece).unwrap_or_else(|e| panic!("{enc}/{dec} level {level} piece {piece}: {e:?}"));
                    assert!(back == text, "{enc}/{dec} level {level} piece {piece}");
                }
            }
        }
    }

    #[test]
    fn brotli_decodes_in_small_pieces_and_charges_its_window() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        // Node's brotliCompressSync of 'hello brotli ' x 10.
        let packed = b64("G4EA+B2pU5+7cC1WhiYnQdjoki3tLQKMBn6Z8Qs=");
        for piece in [1usize, 7, 65536] {
            assert_eq!(run("brotliDecompress", -1.0, &packed, piece).unwrap(), b"hello brotli ".repeat(10));
        }
        // Refused before the decoder allocates the window: a 1 GiB window
        // (large-window stream) whatever the budget, a 16 MiB one past an
        // 8 MiB budget.
        let (mut out, mut info) = (vec![0u8; 1024], [0u32; 2]);
        let refusal = |mode: &str, packed: &[u8], budget: &Arc<Budget>| {
            let z = new_stream(budget, mode, -1.0, f64::INFINITY, true, || {}).unwrap();
            let (mut out, mut info) = (vec![0u8; 1024], [0u32; 2]);
            let mut at = 0;
            loop {
                match run_stream(&z, packed, at as f64, true, &mut out, &mut info) {
                    Err(e) => return e.to_string(),
                    Ok(ENDED) => return "decoded".to_owned(),
                    Ok(_) => at = info[0] as usize,
                }
            }
        };
        let large = b64("EV5AAICQAEhBBiGkLkrSlwIA");
        let refused = refusal("brotliDecompressLargeWindow", &large, &Budget::detached(4 << 30));
        assert!(refused.contains("brotli window of 1024 MiB not decoded"), "{refused}");
        let w24 = b64("z///fwCkwsTisjBw7//Nf5YYABIAcVgAuiQx");
        let refused = refusal("brotliDecompress", &w24, &Budget::detached(8 << 20));
        assert!(refused.contains("16777216 more bytes"), "{refused}");
        let budget = Budget::detached(64 << 20);
        // A stream's window is charged while the stream lives, on top of
        // its tables, and all of it is given back when it goes.
        assert_eq!(budget.remaining(), 64 << 20);
        let z = new_stream(&budget, "brotliDecompress", -1.0, f64::INFINITY, false, || {}).unwrap();
        let mut at = 0;
        while at < 10 {
            run_stream(&z, &packed[..10], at as f64, false, &mut out, &mut info).unwrap();
            at = info[0] as usize;
        }
        assert!((64 << 20) - budget.remaining() > UNBROTLI_STATE, "window charged");
        drop(z);
        assert_eq!(budget.remaining(), 64 << 20);
    }

    #[test]
    fn gzip_headers_are_read_in_pieces() {
        let plain = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        assert_eq!(gzip_header_len(&plain).unwrap(), Some(10));
        assert_eq!(gzip_header_len(&plain[..5]).unwrap(), None);
        let named = [0x1f, 0x8b, 8, 8, 0, 0, 0, 0, 0, 3, b'a', b'b', 0];
        assert_eq!(gzip_header_len(&named[..12]).unwrap(), None);
        assert_eq!(gzip_header_len(&named).unwrap(), Some(13));
        assert!(gzip_header_len(b"no").is_err());
        assert!(gzip_header_len(&[0x1f, 0x8b, 7, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
