//! Node's `crypto` and WebCrypto's primitives, as ops: hashes (md5, sha1,
//! sha2), HMAC, PBKDF2 and AES-CBC/GCM on RustCrypto crates, random bytes
//! from the system (ring's `SystemRandom`, the same source rustls uses).
//! Nothing cryptographic is done in JavaScript.
//!
//! The ops are stateless: the shim's Hash/Hmac/Cipher objects keep their
//! input (and CBC's chaining block) in the guest realm and call an op once
//! per digest or per update, so no host state exists for guest code to
//! confuse. Work one call may do is bounded (PBKDF2 iterations), because an
//! op cannot be interrupted by the CPU watchdog until it returns.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use deno_core::op2;
use deno_error::JsErrorBox;
use hmac::Mac;
use sha2::Digest;

use super::{range_error, type_error};

/// PBKDF2 blocks (iterations × output blocks) one call may compute: about a
/// second of CPU here, well past any real parameter set (OWASP asks 600,000
/// for SHA-256), and short enough that the CPU limit still bites soon after.
const MAX_PBKDF2_WORK: u64 = 5_000_000;
/// Largest derived key.
const MAX_KEYLEN: usize = 1024 * 1024;

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

#[op2]
#[buffer]
pub fn op_wt_hash(#[string] alg: &str, #[buffer] data: &[u8]) -> Result<Vec<u8>, JsErrorBox> {
    Ok(match hash_name(alg).ok_or_else(|| unknown_digest(alg))? {
        "md5" => md5::Md5::digest(data).to_vec(),
        "sha1" => sha1::Sha1::digest(data).to_vec(),
        "sha224" => sha2::Sha224::digest(data).to_vec(),
        "sha256" => sha2::Sha256::digest(data).to_vec(),
        "sha384" => sha2::Sha384::digest(data).to_vec(),
        _ => sha2::Sha512::digest(data).to_vec(),
    })
}

fn hmac_with<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let mut mac = <M as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[op2]
#[buffer]
pub fn op_wt_hmac(#[string] alg: &str, #[buffer] key: &[u8], #[buffer] data: &[u8]) -> Result<Vec<u8>, JsErrorBox> {
    Ok(match hash_name(alg).ok_or_else(|| unknown_digest(alg))? {
        "md5" => hmac_with::<hmac::Hmac<md5::Md5>>(key, data),
        "sha1" => hmac_with::<hmac::Hmac<sha1::Sha1>>(key, data),
        "sha224" => hmac_with::<hmac::Hmac<sha2::Sha224>>(key, data),
        "sha256" => hmac_with::<hmac::Hmac<sha2::Sha256>>(key, data),
        "sha384" => hmac_with::<hmac::Hmac<sha2::Sha384>>(key, data),
        _ => hmac_with::<hmac::Hmac<sha2::Sha512>>(key, data),
    })
}

#[op2]
#[buffer]
pub fn op_wt_pbkdf2(
    #[string] alg: &str,
    #[buffer] password: &[u8],
    #[buffer] salt: &[u8],
    iterations: f64,
    keylen: f64,
) -> Result<Vec<u8>, JsErrorBox> {
    let canonical = hash_name(alg).ok_or_else(|| unknown_digest(alg))?;
    if !(iterations >= 1.0 && iterations <= u32::MAX as f64 && iterations.fract() == 0.0) {
        return Err(range_error(format!("The value of \"iterations\" is out of range. It must be >= 1 && <= 2147483647. Received {iterations}")));
    }
    if !(keylen >= 0.0 && keylen <= MAX_KEYLEN as f64 && keylen.fract() == 0.0) {
        return Err(range_error(format!("The value of \"keylen\" is out of range. It must be >= 0 && <= {MAX_KEYLEN}. Received {keylen}")));
    }
    let (iterations, keylen) = (iterations as u32, keylen as usize);
    let block = match canonical {
        "md5" => 16,
        "sha1" => 20,
        "sha224" => 28,
        "sha256" => 32,
        "sha384" => 48,
        _ => 64,
    };
    let work = (iterations as u64).saturating_mul(keylen.div_ceil(block).max(1) as u64);
    if work > MAX_PBKDF2_WORK {
        return Err(range_error(format!(
            "pbkdf2: {iterations} iterations for a {keylen}-byte key exceed webtask's limit of {MAX_PBKDF2_WORK} hash blocks per call"
        )));
    }
    let mut out = vec![0u8; keylen];
    match canonical {
        "md5" => pbkdf2::pbkdf2_hmac::<md5::Md5>(password, salt, iterations, &mut out),
        "sha1" => pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, &mut out),
        "sha224" => pbkdf2::pbkdf2_hmac::<sha2::Sha224>(password, salt, iterations, &mut out),
        "sha256" => pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut out),
        "sha384" => pbkdf2::pbkdf2_hmac::<sha2::Sha384>(password, salt, iterations, &mut out),
        _ => pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, &mut out),
    }
    Ok(out)
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

/// AES-CBC over whole blocks; with `pad`, PKCS#7 padding is added
/// (encrypt) or checked and removed (decrypt) on this, the last, call.
/// The shim chains calls by passing the last ciphertext block as `iv`.
#[op2]
#[buffer]
pub fn op_wt_aes_cbc(
    #[buffer] key: &[u8],
    #[buffer] iv: &[u8],
    #[buffer] data: &[u8],
    encrypt: bool,
    pad: bool,
) -> Result<Vec<u8>, JsErrorBox> {
    if iv.len() != 16 {
        return Err(type_error("Invalid initialization vector"));
    }
    if !pad && data.len() % 16 != 0 {
        return Err(range_error("data is not a multiple of the block size"));
    }
    use cbc::cipher::block_padding::{NoPadding, Pkcs7};
    macro_rules! run {
        ($aes:ty) => {{
            if encrypt {
                let c = cbc::Encryptor::<$aes>::new_from_slices(key, iv).map_err(|_| type_error("Invalid key length"))?;
                if pad { c.encrypt_padded_vec_mut::<Pkcs7>(data) } else { c.encrypt_padded_vec_mut::<NoPadding>(data) }
            } else {
                let c = cbc::Decryptor::<$aes>::new_from_slices(key, iv).map_err(|_| type_error("Invalid key length"))?;
                let out = if pad { c.decrypt_padded_vec_mut::<Pkcs7>(data) } else { c.decrypt_padded_vec_mut::<NoPadding>(data) };
                out.map_err(|_| JsErrorBox::generic("error:1C800064:Provider routines::bad decrypt"))?
            }
        }};
    }
    Ok(match key.len() {
        16 => run!(aes::Aes128),
        24 => run!(aes::Aes192),
        32 => run!(aes::Aes256),
        _ => return Err(type_error("Invalid key length")),
    })
}

/// AES-GCM with a 96-bit IV and a 128-bit tag. Encrypting returns
/// ciphertext || tag; decrypting takes ciphertext and tag apart and fails
/// (without output) if the tag does not match.
#[op2]
#[buffer]
pub fn op_wt_aes_gcm(
    #[buffer] key: &[u8],
    #[buffer] iv: &[u8],
    #[buffer] data: &[u8],
    #[buffer] aad: &[u8],
    #[buffer] tag: &[u8],
    encrypt: bool,
) -> Result<Vec<u8>, JsErrorBox> {
    if iv.len() != 12 {
        return Err(type_error("webtask supports AES-GCM with 12-byte IVs only"));
    }
    let nonce = aes_gcm::Nonce::from_slice(iv);
    let mut joined;
    let msg: &[u8] = if encrypt {
        data
    } else {
        if tag.len() != 16 {
            return Err(type_error(format!("Invalid authentication tag length: {}", tag.len())));
        }
        joined = Vec::with_capacity(data.len() + 16);
        joined.extend_from_slice(data);
        joined.extend_from_slice(tag);
        &joined
    };
    let payload = Payload { msg, aad };
    let out = match key.len() {
        16 => {
            let c = aes_gcm::Aes128Gcm::new_from_slice(key).map_err(|_| type_error("Invalid key length"))?;
            if encrypt { c.encrypt(nonce, payload) } else { c.decrypt(nonce, payload) }
        }
        32 => {
            let c = aes_gcm::Aes256Gcm::new_from_slice(key).map_err(|_| type_error("Invalid key length"))?;
            if encrypt { c.encrypt(nonce, payload) } else { c.decrypt(nonce, payload) }
        }
        _ => return Err(type_error("Invalid key length")),
    };
    out.map_err(|_| JsErrorBox::generic("Unsupported state or unable to authenticate data"))
}
