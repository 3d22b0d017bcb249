//! Node's `crypto` and WebCrypto's primitives, as ops: hashes (md5, sha1,
//! sha2), HMAC, PBKDF2, AES-CBC and AES-GCM on RustCrypto crates, random
//! bytes from the system (ring's `SystemRandom`, the same source rustls
//! uses). Nothing cryptographic is done in JavaScript.
//!
//! Work that grows with the guest's input is resumable, so that no call
//! outlasts a [`SLICE`](super::SLICE) and the CPU limit can stop it:
//! a hash or HMAC is a [`Digest`] object fed in slices, PBKDF2 a [`Pbkdf2`]
//! run a slice of iterations per call, GCM a [`Gcm`] object fed piece by
//! piece, and CBC takes at most [`PIECE`] bytes a call (the shim chains
//! calls by passing the last ciphertext block on as the IV). These objects
//! are cppgc-managed: the guest's wrapper holds them, V8 frees them with it.
//! Outputs go into buffers the shim allocated, or through
//! `alloc::guest_bytes`, so they count against the ArrayBuffer limit.

use std::cell::RefCell;

use aes::cipher::consts::U16;
use aes::cipher::{BlockEncrypt, BlockSizeUser, KeyInit, StreamCipher};
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use deno_core::{op2, v8, GarbageCollected};
use deno_error::JsErrorBox;
use ghash::universal_hash::UniversalHash;
use hmac::Mac;
use sha2::digest::{FixedOutput, Update};

use super::{index, range_error, type_error, Deadline};

/// Most input bytes one call of a bulk cipher op takes (well under a
/// millisecond of AES here); the shim splits larger inputs.
pub const PIECE: usize = 256 * 1024;
/// Input bytes hashed between two looks at the clock.
const HASH_STEP: usize = 64 * 1024;
/// Largest GCM IV Node takes.
const MAX_GCM_IV: usize = 128;

/// Hash names as Node spells them (case-insensitive, with aliases) → canonical.
pub fn hash_name(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "md5" | "rsa-md5" => "md5",
        "sha1" | "sha-1" | "rsa-sha1" => "sha1",
        "sha224" | "sha-224" | "rsa-sha224" => "sha224",
        "sha256" | "sha-256" | "rsa-sha256" => "sha256",
        "sha384" | "sha-384" | "rsa-sha384" => "sha384",
        "sha512" | "sha-512" | "rsa-sha512" => "sha512",
        _ => return None,
    })
}

fn unknown_digest(name: &str) -> JsErrorBox {
    type_error(format!("Invalid digest: {name}"))
}

type HmacOf<D> = hmac::Hmac<D>;

/// A running hash or HMAC of any supported algorithm.
#[derive(Clone)]
pub enum Digester {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
    HmacMd5(HmacOf<md5::Md5>),
    HmacSha1(HmacOf<sha1::Sha1>),
    HmacSha224(HmacOf<sha2::Sha224>),
    HmacSha256(HmacOf<sha2::Sha256>),
    HmacSha384(HmacOf<sha2::Sha384>),
    HmacSha512(HmacOf<sha2::Sha512>),
}

macro_rules! each_digester {
    ($value:expr, $d:ident => $body:expr) => {
        match $value {
            Digester::Md5($d) => $body,
            Digester::Sha1($d) => $body,
            Digester::Sha224($d) => $body,
            Digester::Sha256($d) => $body,
            Digester::Sha384($d) => $body,
            Digester::Sha512($d) => $body,
            Digester::HmacMd5($d) => $body,
            Digester::HmacSha1($d) => $body,
            Digester::HmacSha224($d) => $body,
            Digester::HmacSha256($d) => $body,
            Digester::HmacSha384($d) => $body,
            Digester::HmacSha512($d) => $body,
        }
    };
}

/// Digest length in bytes of a canonical hash name.
pub fn digest_len(canonical: &str) -> usize {
    match canonical {
        "md5" => 16,
        "sha1" => 20,
        "sha224" => 28,
        "sha256" => 32,
        "sha384" => 48,
        _ => 64,
    }
}

fn new_hmac<M: Mac + KeyInit>(key: &[u8]) -> M {
    // HMAC accepts keys of any length.
    <M as Mac>::new_from_slice(key).expect("HMAC takes any key length")
}

/// Longest HMAC key taken as is: the shim hashes longer ones first (what
/// HMAC itself does with a key longer than its block), in slices.
const MAX_HMAC_KEY: usize = 128;

impl Digester {
    /// A hash of `alg` (any spelling `hash_name` knows).
    pub fn hash(alg: &str) -> Result<Self, JsErrorBox> {
        Ok(match hash_name(alg).ok_or_else(|| unknown_digest(alg))? {
            "md5" => Digester::Md5(Default::default()),
            "sha1" => Digester::Sha1(Default::default()),
            "sha224" => Digester::Sha224(Default::default()),
            "sha256" => Digester::Sha256(Default::default()),
            "sha384" => Digester::Sha384(Default::default()),
            _ => Digester::Sha512(Default::default()),
        })
    }

    /// An HMAC of `alg` keyed with `key`.
    pub fn hmac(alg: &str, key: &[u8]) -> Result<Self, JsErrorBox> {
        if key.len() > MAX_HMAC_KEY {
            return Err(range_error(format!("HMAC keys over {MAX_HMAC_KEY} bytes are hashed by the shim first")));
        }
        Ok(match hash_name(alg).ok_or_else(|| unknown_digest(alg))? {
            "md5" => Digester::HmacMd5(new_hmac(key)),
            "sha1" => Digester::HmacSha1(new_hmac(key)),
            "sha224" => Digester::HmacSha224(new_hmac(key)),
            "sha256" => Digester::HmacSha256(new_hmac(key)),
            "sha384" => Digester::HmacSha384(new_hmac(key)),
            _ => Digester::HmacSha512(new_hmac(key)),
        })
    }

    pub fn update(&mut self, data: &[u8]) {
        each_digester!(self, d => Update::update(d, data))
    }

    pub fn output_len(&self) -> usize {
        each_digester!(self, d => FixedOutput::finalize_fixed(d.clone()).len())
    }

    /// Finishes into `out`, which is exactly [`Self::output_len`] bytes.
    pub fn finalize_into(self, out: &mut [u8]) {
        each_digester!(self, d => out.copy_from_slice(&FixedOutput::finalize_fixed(d)))
    }

    pub fn finalize(self) -> Vec<u8> {
        each_digester!(self, d => FixedOutput::finalize_fixed(d).to_vec())
    }

    /// Feeds `data[offset..]` until the slice's deadline; returns the offset
    /// reached.
    fn feed(&mut self, data: &[u8], offset: usize) -> usize {
        let deadline = Deadline::start();
        let mut at = offset.min(data.len());
        while at < data.len() {
            let end = (at + HASH_STEP).min(data.len());
            self.update(&data[at..end]);
            at = end;
            if deadline.passed() {
                break;
            }
        }
        at
    }
}

/// One hash or HMAC in progress (Node's Hash and Hmac, WebCrypto digest and
/// HMAC sign/verify). Empty once finished.
pub struct Digest(RefCell<Option<Digester>>);

// SAFETY: holds no GC references to trace.
unsafe impl GarbageCollected for Digest {
    fn trace(&self, _visitor: &mut v8::cppgc::Visitor) {}

    fn get_name(&self) -> &'static std::ffi::CStr {
        c"Digest"
    }
}

impl Digest {
    fn new(d: Digester) -> Self {
        Digest(RefCell::new(Some(d)))
    }

    /// A copy of the running state.
    pub fn state(&self) -> Result<Digester, JsErrorBox> {
        self.0.borrow().clone().ok_or_else(finished)
    }
}

fn finished() -> JsErrorBox {
    JsErrorBox::generic("Digest already called")
}

#[op2]
#[cppgc]
pub fn op_wt_hash_new(#[string] alg: &str) -> Result<Digest, JsErrorBox> {
    Ok(Digest::new(Digester::hash(alg)?))
}

#[op2]
#[cppgc]
pub fn op_wt_hmac_new(#[string] alg: &str, #[buffer] key: &[u8]) -> Result<Digest, JsErrorBox> {
    Ok(Digest::new(Digester::hmac(alg, key)?))
}

#[op2]
#[cppgc]
pub fn op_wt_digest_copy(#[cppgc] d: &Digest) -> Result<Digest, JsErrorBox> {
    Ok(Digest::new(d.state()?))
}

/// Hashes `data` from `offset` for one slice; returns where it stopped
/// (the shim calls again until that is `data.length`).
#[op2(fast)]
pub fn op_wt_digest_update(#[cppgc] d: &Digest, #[buffer] data: &[u8], offset: f64) -> Result<f64, JsErrorBox> {
    let offset = index(offset, data.len(), "offset")?;
    if super::stopping() {
        return Ok(offset as f64);
    }
    let mut state = d.0.borrow_mut();
    let state = state.as_mut().ok_or_else(finished)?;
    Ok(state.feed(data, offset) as f64)
}

/// Finishes the digest into a new guest buffer.
#[op2]
pub fn op_wt_digest_final<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    #[cppgc] d: &Digest,
) -> Result<v8::Local<'s, v8::Uint8Array>, JsErrorBox> {
    let state = d.0.borrow_mut().take().ok_or_else(finished)?;
    let out = state.finalize();
    let budget = super::budget(scope);
    crate::engine::alloc::guest_bytes(scope, &budget, out.len(), |buf| buf.copy_from_slice(&out))
}

// ---------------------------------------------------------------------------
// PBKDF2 (RFC 8018), a slice of iterations per call.
// ---------------------------------------------------------------------------

struct Pbkdf2Run {
    /// HMAC keyed with the password.
    prf: Digester,
    /// The same with the salt absorbed: each block starts from it.
    salted: Digester,
    iterations: u32,
    hlen: usize,
    /// Block being computed (1-based), and iterations done on it.
    block: u32,
    done: u32,
    u: [u8; 64],
    t: [u8; 64],
    /// Output bytes written so far.
    pos: usize,
}

pub struct Pbkdf2(RefCell<Option<Pbkdf2Run>>);

// SAFETY: holds no GC references to trace.
unsafe impl GarbageCollected for Pbkdf2 {
    fn trace(&self, _visitor: &mut v8::cppgc::Visitor) {}

    fn get_name(&self) -> &'static std::ffi::CStr {
        c"Pbkdf2"
    }
}

/// Starts PBKDF2 from two HMACs of the password, the second of which has
/// absorbed the salt (the shim feeds it with `op_wt_digest_update`).
#[op2]
#[cppgc]
pub fn op_wt_pbkdf2_new(#[cppgc] prf: &Digest, #[cppgc] salted: &Digest, iterations: f64) -> Result<Pbkdf2, JsErrorBox> {
    if !(iterations >= 1.0 && iterations <= i32::MAX as f64 && iterations.fract() == 0.0) {
        return Err(range_error(format!(
            "The value of \"iterations\" is out of range. It must be >= 1 && <= 2147483647. Received {iterations}"
        )));
    }
    let prf = prf.state()?;
    let salted = salted.state()?;
    let hlen = prf.output_len();
    Ok(Pbkdf2(RefCell::new(Some(Pbkdf2Run {
        prf,
        salted,
        iterations: iterations as u32,
        hlen,
        block: 1,
        done: 0,
        u: [0; 64],
        t: [0; 64],
        pos: 0,
    }))))
}

/// Runs PBKDF2 for one slice, writing finished blocks into `out` (the
/// derived key, the same buffer every call). True once `out` is complete.
#[op2(fast)]
pub fn op_wt_pbkdf2_run(#[cppgc] p: &Pbkdf2, #[buffer] out: &mut [u8]) -> Result<bool, JsErrorBox> {
    pbkdf2_slice(p, out)
}

fn pbkdf2_slice(p: &Pbkdf2, out: &mut [u8]) -> Result<bool, JsErrorBox> {
    if super::stopping() {
        return Ok(false);
    }
    let mut run = p.0.borrow_mut();
    let Some(r) = run.as_mut() else { return Ok(true) };
    let deadline = Deadline::start();
    let h = r.hlen;
    while r.pos < out.len() {
        if r.done == 0 {
            let mut m = r.salted.clone();
            m.update(&r.block.to_be_bytes());
            m.finalize_into(&mut r.u[..h]);
            r.t[..h].copy_from_slice(&r.u[..h]);
            r.done = 1;
        }
        while r.done < r.iterations {
            let mut m = r.prf.clone();
            m.update(&r.u[..h]);
            m.finalize_into(&mut r.u[..h]);
            for (t, u) in r.t[..h].iter_mut().zip(&r.u[..h]) {
                *t ^= u;
            }
            r.done += 1;
            if r.done % 256 == 0 && deadline.passed() {
                return Ok(false);
            }
        }
        let n = h.min(out.len() - r.pos);
        out[r.pos..r.pos + n].copy_from_slice(&r.t[..n]);
        r.pos += n;
        r.block = r.block.checked_add(1).ok_or_else(|| range_error("derived key too long"))?;
        r.done = 0;
    }
    *run = None;
    Ok(true)
}

/// Fills `out` with random bytes (at most 64 KiB a call, as WebCrypto's
/// getRandomValues; the shim loops for more).
#[op2(fast)]
pub fn op_wt_random(#[buffer] out: &mut [u8]) -> Result<(), JsErrorBox> {
    use ring::rand::SecureRandom;
    if out.len() > 65536 {
        return Err(range_error(format!(
            "The ArrayBufferView's byte length ({}) exceeds the number of bytes of entropy available via this API (65536)",
            out.len()
        )));
    }
    ring::rand::SystemRandom::new().fill(out).map_err(|_| JsErrorBox::generic("no system randomness"))
}

// ---------------------------------------------------------------------------
// AES-CBC: stateless, at most PIECE bytes a call.
// ---------------------------------------------------------------------------

/// AES-CBC of `data` (whole blocks, at most [`PIECE`] bytes) into `out`;
/// with `pad`, PKCS#7 padding is added (encrypt) or checked and removed
/// (decrypt) on this, the last, call. Returns the bytes written.
#[op2(fast)]
pub fn op_wt_aes_cbc(
    #[buffer] key: &[u8],
    #[buffer] iv: &[u8],
    #[buffer] data: &[u8],
    #[buffer] out: &mut [u8],
    encrypt: bool,
    pad: bool,
) -> Result<u32, JsErrorBox> {
    if iv.len() != 16 {
        return Err(type_error("Invalid initialization vector"));
    }
    if data.len() > PIECE + 16 {
        return Err(range_error(format!("AES-CBC takes at most {PIECE} bytes a call")));
    }
    if !pad && data.len() % 16 != 0 {
        return Err(range_error("data is not a multiple of the block size"));
    }
    let need = if encrypt && pad { data.len() / 16 * 16 + 16 } else { data.len() };
    if out.len() < need {
        return Err(range_error("output buffer too small"));
    }
    use cbc::cipher::block_padding::{NoPadding, Pkcs7};
    let bad_decrypt = || JsErrorBox::generic("error:1C800064:Provider routines::bad decrypt");
    macro_rules! run {
        ($aes:ty) => {{
            if encrypt {
                let c = cbc::Encryptor::<$aes>::new_from_slices(key, iv).map_err(|_| type_error("Invalid key length"))?;
                let r = if pad { c.encrypt_padded_b2b_mut::<Pkcs7>(data, out) } else { c.encrypt_padded_b2b_mut::<NoPadding>(data, out) };
                r.map_err(|_| range_error("output buffer too small"))?.len()
            } else {
                let c = cbc::Decryptor::<$aes>::new_from_slices(key, iv).map_err(|_| type_error("Invalid key length"))?;
                let r = if pad { c.decrypt_padded_b2b_mut::<Pkcs7>(data, out) } else { c.decrypt_padded_b2b_mut::<NoPadding>(data, out) };
                r.map_err(|_| bad_decrypt())?.len()
            }
        }};
    }
    Ok(match key.len() {
        16 => run!(aes::Aes128),
        24 => run!(aes::Aes192),
        32 => run!(aes::Aes256),
        _ => return Err(type_error("Invalid key length")),
    } as u32)
}

// ---------------------------------------------------------------------------
// AES-GCM (NIST SP 800-38D) from AES-CTR and GHASH: IVs of any length
// (1 to 128 bytes as Node: 12 directly, others through GHASH), streamed
// piece by piece.
// ---------------------------------------------------------------------------

enum Ctr {
    A128(ctr::Ctr32BE<aes::Aes128>),
    A192(ctr::Ctr32BE<aes::Aes192>),
    A256(ctr::Ctr32BE<aes::Aes256>),
}

struct GcmRun {
    ctr: Ctr,
    ghash: ghash::GHash,
    /// E(K, J0), XORed onto the GHASH to make the tag.
    tag_mask: [u8; 16],
    /// A partial block waiting for GHASH.
    pending: [u8; 16],
    pending_len: usize,
    aad_len: u64,
    text_len: u64,
    /// Still taking AAD (no text yet).
    in_aad: bool,
    encrypt: bool,
}

impl GcmRun {
    fn new(key: &[u8], iv: &[u8], encrypt: bool) -> Result<Self, JsErrorBox> {
        if iv.is_empty() || iv.len() > MAX_GCM_IV {
            return Err(type_error("Invalid initialization vector"));
        }
        fn hash_key<C: BlockEncrypt + BlockSizeUser<BlockSize = U16> + KeyInit>(key: &[u8]) -> ([u8; 16], C) {
            let c = C::new_from_slice(key).expect("key length checked");
            let mut h = aes::Block::default();
            c.encrypt_block(&mut h);
            (h.into(), c)
        }
        type Block = Box<dyn Fn(&[u8; 16]) -> [u8; 16]>;
        let (h, tag_mask_of): ([u8; 16], Block) = match key.len() {
            16 => {
                let (h, c) = hash_key::<aes::Aes128>(key);
                (h, Box::new(move |b| encrypt_one(&c, b)))
            }
            24 => {
                let (h, c) = hash_key::<aes::Aes192>(key);
                (h, Box::new(move |b| encrypt_one(&c, b)))
            }
            32 => {
                let (h, c) = hash_key::<aes::Aes256>(key);
                (h, Box::new(move |b| encrypt_one(&c, b)))
            }
            _ => return Err(type_error("Invalid key length")),
        };
        let ghash = ghash::GHash::new(&h.into());
        let j0: [u8; 16] = if iv.len() == 12 {
            let mut j0 = [0u8; 16];
            j0[..12].copy_from_slice(iv);
            j0[15] = 1;
            j0
        } else {
            let mut g = ghash.clone();
            g.update_padded(iv);
            let mut lens = [0u8; 16];
            lens[8..].copy_from_slice(&(iv.len() as u64 * 8).to_be_bytes());
            g.update(&[lens.into()]);
            g.finalize().into()
        };
        let mut counter = j0;
        let low = u32::from_be_bytes(counter[12..].try_into().unwrap()).wrapping_add(1);
        counter[12..].copy_from_slice(&low.to_be_bytes());
        let ctr = match key.len() {
            16 => Ctr::A128(ctr::Ctr32BE::new(key.into(), &counter.into())),
            24 => Ctr::A192(ctr::Ctr32BE::new(key.into(), &counter.into())),
            _ => Ctr::A256(ctr::Ctr32BE::new(key.into(), &counter.into())),
        };
        Ok(GcmRun {
            ctr,
            ghash,
            tag_mask: tag_mask_of(&j0),
            pending: [0; 16],
            pending_len: 0,
            aad_len: 0,
            text_len: 0,
            in_aad: true,
            encrypt,
        })
    }

    /// GHASHes `data` as a continuation of what came before.
    fn absorb(&mut self, mut data: &[u8]) {
        if self.pending_len > 0 {
            let take = (16 - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < 16 {
                return;
            }
            self.ghash.update(&[self.pending.into()]);
            self.pending_len = 0;
        }
        let whole = data.len() / 16 * 16;
        // Whole blocks need no padding, so this is a plain update.
        self.ghash.update_padded(&data[..whole]);
        let tail = &data[whole..];
        self.pending[..tail.len()].copy_from_slice(tail);
        self.pending_len = tail.len();
    }

    /// Ends the AAD or text section: its last block is zero-padded.
    fn close_section(&mut self) {
        if self.pending_len > 0 {
            self.ghash.update_padded(&self.pending[..self.pending_len]);
            self.pending_len = 0;
        }
    }

    fn aad(&mut self, data: &[u8]) -> Result<(), JsErrorBox> {
        if !self.in_aad {
            return Err(invalid_state("setAAD"));
        }
        self.absorb(data);
        self.aad_len += data.len() as u64;
        Ok(())
    }

    fn update(&mut self, input: &[u8], out: &mut [u8]) -> Result<(), JsErrorBox> {
        if self.in_aad {
            self.close_section();
            self.in_aad = false;
        }
        // GCM's counter is 32 bits: at most 2^32 - 2 blocks of text.
        self.text_len += input.len() as u64;
        if self.text_len > ((1u64 << 32) - 2) * 16 {
            return Err(range_error("AES-GCM can encrypt at most 68719476704 bytes with one IV"));
        }
        if !self.encrypt {
            self.absorb(input);
        }
        let res = match &mut self.ctr {
            Ctr::A128(c) => c.apply_keystream_b2b(input, out),
            Ctr::A192(c) => c.apply_keystream_b2b(input, out),
            Ctr::A256(c) => c.apply_keystream_b2b(input, out),
        };
        res.map_err(|_| range_error("output buffer has the wrong length"))?;
        if self.encrypt {
            self.absorb(out);
        }
        Ok(())
    }

    fn tag(mut self) -> [u8; 16] {
        self.close_section();
        let mut lens = [0u8; 16];
        lens[..8].copy_from_slice(&(self.aad_len * 8).to_be_bytes());
        lens[8..].copy_from_slice(&(self.text_len * 8).to_be_bytes());
        self.ghash.update(&[lens.into()]);
        let mut tag: [u8; 16] = self.ghash.finalize().into();
        for (t, m) in tag.iter_mut().zip(self.tag_mask) {
            *t ^= m;
        }
        tag
    }
}

fn encrypt_one<C: BlockEncrypt + BlockSizeUser<BlockSize = U16>>(c: &C, block: &[u8; 16]) -> [u8; 16] {
    let mut b = aes::Block::from(*block);
    c.encrypt_block(&mut b);
    b.into()
}

fn invalid_state(op: &str) -> JsErrorBox {
    JsErrorBox::generic(format!("Invalid state for operation {op}"))
}

pub struct Gcm(RefCell<Option<GcmRun>>);

// SAFETY: holds no GC references to trace.
unsafe impl GarbageCollected for Gcm {
    fn trace(&self, _visitor: &mut v8::cppgc::Visitor) {}

    fn get_name(&self) -> &'static std::ffi::CStr {
        c"Gcm"
    }
}

#[op2]
#[cppgc]
pub fn op_wt_gcm_new(#[buffer] key: &[u8], #[buffer] iv: &[u8], encrypt: bool) -> Result<Gcm, JsErrorBox> {
    Ok(Gcm(RefCell::new(Some(GcmRun::new(key, iv, encrypt)?))))
}

/// Adds AAD from `offset` for one slice; returns where it stopped.
#[op2(fast)]
pub fn op_wt_gcm_aad(#[cppgc] g: &Gcm, #[buffer] data: &[u8], offset: f64) -> Result<f64, JsErrorBox> {
    let mut at = index(offset, data.len(), "offset")?;
    if super::stopping() {
        return Ok(at as f64);
    }
    let mut run = g.0.borrow_mut();
    let run = run.as_mut().ok_or_else(|| invalid_state("setAAD"))?;
    let deadline = Deadline::start();
    while at < data.len() {
        let end = (at + HASH_STEP).min(data.len());
        run.aad(&data[at..end])?;
        at = end;
        if deadline.passed() {
            break;
        }
    }
    Ok(at as f64)
}

/// En- or decrypts `data` (at most [`PIECE`] bytes) into `out`, as long.
#[op2(fast)]
pub fn op_wt_gcm_update(#[cppgc] g: &Gcm, #[buffer] data: &[u8], #[buffer] out: &mut [u8]) -> Result<(), JsErrorBox> {
    if data.len() > PIECE {
        return Err(range_error(format!("AES-GCM takes at most {PIECE} bytes a call")));
    }
    let mut run = g.0.borrow_mut();
    run.as_mut().ok_or_else(|| invalid_state("update"))?.update(data, out)
}

/// Ends an encryption: the first `out.length` bytes of the tag go to `out`.
#[op2(fast)]
pub fn op_wt_gcm_tag(#[cppgc] g: &Gcm, #[buffer] out: &mut [u8]) -> Result<(), JsErrorBox> {
    let run = g.0.borrow_mut().take().ok_or_else(|| invalid_state("final"))?;
    if !run.encrypt || out.len() > 16 {
        return Err(invalid_state("final"));
    }
    let tag = run.tag();
    out.copy_from_slice(&tag[..out.len()]);
    Ok(())
}

/// Ends a decryption: whether `tag` (4 to 16 bytes, compared in constant
/// time) is the prefix of the computed tag.
#[op2(fast)]
pub fn op_wt_gcm_check(#[cppgc] g: &Gcm, #[buffer] tag: &[u8]) -> Result<bool, JsErrorBox> {
    let run = g.0.borrow_mut().take().ok_or_else(|| invalid_state("final"))?;
    if run.encrypt || !(4..=16).contains(&tag.len()) {
        return Err(invalid_state("final"));
    }
    let want = run.tag();
    let diff = want.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    Ok(diff == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcm(key: &[u8], iv: &[u8], aad: &[u8], pt: &[u8]) -> (Vec<u8>, [u8; 16]) {
        let mut run = GcmRun::new(key, iv, true).unwrap();
        run.aad(aad).unwrap();
        let mut out = vec![0u8; pt.len()];
        // Uneven pieces: the stream must not care where calls split it.
        let mut at = 0;
        for step in [1usize, 15, 17, 3, 64].iter().cycle() {
            if at >= pt.len() {
                break;
            }
            let end = (at + step).min(pt.len());
            run.update(&pt[at..end], &mut out[at..end]).unwrap();
            at = end;
        }
        (out, run.tag())
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// A long derivation gives the thread back before it is done (slices
    /// are bounded by time, which a test must not assert on: a loaded CI
    /// machine preempts), and one resumed over many slices derives exactly
    /// what a one-shot PBKDF2 does.
    #[test]
    fn pbkdf2_slices_stop_early_and_resume_exactly() {
        let run = |iterations: u32| {
            let prf = Digester::hmac("sha512", b"p").unwrap();
            let mut salted = prf.clone();
            salted.update(b"s");
            Pbkdf2(RefCell::new(Some(Pbkdf2Run {
                prf, salted, iterations, hlen: 64, block: 1, done: 0, u: [0; 64], t: [0; 64], pos: 0,
            })))
        };
        let mut out = [0u8; 64];
        let long = run(2_000_000);
        assert!(!pbkdf2_slice(&long, &mut out).unwrap(), "two million iterations in one slice");
        assert!(long.0.borrow().as_ref().unwrap().done < 2_000_000);

        let resumed = run(30_000);
        let mut slices = 1;
        while !pbkdf2_slice(&resumed, &mut out).unwrap() {
            slices += 1;
        }
        let mut expected = [0u8; 64];
        let rounds = std::num::NonZeroU32::new(30_000).unwrap();
        ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA512, rounds, b"s", b"p", &mut expected);
        assert_eq!(out, expected, "over {slices} slices");
    }

    #[test]
    fn gcm_matches_the_spec_vectors() {
        // McGrew & Viega test cases 4 (96-bit IV) and 6 (60-byte IV).
        let key = hex("feffe9928665731c6d6a8f9467308308");
        let pt = hex("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let (ct, tag) = gcm(&key, &hex("cafebabefacedbaddecaf888"), &aad, &pt);
        assert_eq!(ct, hex("42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091"));
        assert_eq!(tag.to_vec(), hex("5bc94fbc3221a5db94fae95ae7121a47"));
        let iv6 = hex("9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b");
        let (ct, tag) = gcm(&key, &iv6, &aad, &pt);
        assert_eq!(ct, hex("8ce24998625615b603a033aca13fb894be9112a5c3a211a8ba262a3cca7e2ca701e4a9a4fba43c90ccdcb281d48c7c6fd62875d2aca417034c34aee5"));
        assert_eq!(tag.to_vec(), hex("619cc5aefffe0bfa462af43c1699d050"));
    }
}
