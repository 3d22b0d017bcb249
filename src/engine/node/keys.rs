//! Asymmetric keys for Node's `crypto` (KeyObject, Sign/Verify,
//! `crypto.sign`/`verify`) and WebCrypto (RSASSA-PKCS1-v1_5, RSA-PSS and
//! ECDSA P-256/P-384): parsing PEM, DER and JWK into one canonical form
//! (SPKI for public keys, PKCS#8 or PKCS#1 for private ones), and signing
//! and verifying digests the shim computed (in slices, like any hash).
//!
//! RSA is RustCrypto's `rsa` for parsing and checking keys (512 to 16384
//! bits, as OpenSSL signs) with the signature schemes of RFC 8017 here:
//! PKCS#1 v1.5 and PSS over MD5, SHA-1 and SHA-2, PSS with any salt length
//! and Node's defaults (longest salt signing, any salt verifying). Its
//! modular exponentiation runs a few multiplications per call ([`ModPow`]),
//! because a 16384-bit private-key operation takes most of a second and an
//! op cannot be stopped by the CPU limit until it returns. Private-key
//! operations are blinded and checked against the public key, and take
//! the same steps whatever the private exponent's bits (fixed windows,
//! every table entry read, no data-dependent final subtraction): another
//! tenant on the host must not learn a key from timing or the cache. ECDSA is
//! RustCrypto's `p256`/`p384` (RFC 6979 nonces), fast enough for one call.
//!
//! A key is a cppgc object holding the parsed key and its DER, charged to
//! the ArrayBuffer budget; its bytes reach the guest only through
//! `alloc::guest_bytes`.

use std::cell::RefCell;
use std::sync::Arc;

use base64::Engine as _;
use deno_core::{op2, v8, GarbageCollected, OpState};
use deno_error::JsErrorBox;
use num_bigint_dig::{BigUint, ModInverse};
use num_integer::Integer;
use num_traits::{One, Zero};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use serde::{Deserialize, Serialize};

use super::crypto::{digest_len, hash_name, Digester};
use super::{type_error, Deadline};
use crate::engine::alloc::{Budget, Charge};

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// RSA moduli taken: what OpenSSL signs and verifies with.
const MIN_RSA_BITS: u32 = 512;
const MAX_RSA_BITS: u32 = 16384;

/// A key's description and canonical DER, as parsed from the guest's input.
#[derive(Debug)]
pub struct Key {
    /// "public" or "private".
    pub kind: String,
    /// "rsa" or "ec".
    pub key_type: String,
    /// "spki" (public), "pkcs8" or "pkcs1" (private).
    pub encoding: String,
    pub der: Vec<u8>,
    /// "prime256v1" or "secp384r1" for EC keys.
    pub curve: String,
    /// RSA modulus length in bits.
    pub bits: u32,
}

fn bad_key(msg: impl std::fmt::Display) -> JsErrorBox {
    type_error(format!("Invalid key: {msg}"))
}

// ---------------------------------------------------------------------------
// DER: just enough to walk SEQUENCEs.
// ---------------------------------------------------------------------------

/// One TLV: (tag, contents, rest).
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), JsErrorBox> {
    let (&tag, rest) = input.split_first().ok_or_else(|| bad_key("truncated DER"))?;
    let (&first, mut rest) = rest.split_first().ok_or_else(|| bad_key("truncated DER"))?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad_key("bad DER length"));
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | b as usize;
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(bad_key("truncated DER"));
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), JsErrorBox> {
    let (t, body, rest) = tlv(input)?;
    if t != tag {
        return Err(bad_key(format!("expected DER tag {tag:#x}, found {t:#x}")));
    }
    Ok((body, rest))
}

fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = body.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(body);
    out
}

fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed = &bytes[bytes.iter().take_while(|&&b| b == 0).count().min(bytes.len().saturating_sub(1))..];
    let mut body = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
        body.push(0);
    }
    body.extend_from_slice(trimmed);
    der(0x02, &body)
}

/// (algorithm OID, parameters TLV) of an AlgorithmIdentifier.
fn algorithm(body: &[u8]) -> Result<(&[u8], &[u8]), JsErrorBox> {
    let (oid, params) = expect(body, 0x06)?;
    Ok((oid, params))
}

fn curve_name(params: &[u8]) -> Result<&'static str, JsErrorBox> {
    let (oid, _) = expect(params, 0x06)?;
    match oid {
        OID_P256 => Ok("prime256v1"),
        OID_P384 => Ok("secp384r1"),
        _ => Err(bad_key("unsupported curve (P-256 and P-384 are)")),
    }
}

fn rsa_bits(rsa_public: &[u8]) -> Result<u32, JsErrorBox> {
    let (seq, _) = expect(rsa_public, 0x30)?;
    let (n, _) = expect(seq, 0x02)?;
    let n = &n[n.iter().take_while(|&&b| b == 0).count()..];
    let top = n.first().map(|b| 8 - b.leading_zeros()).unwrap_or(0);
    Ok((n.len().saturating_sub(1) * 8) as u32 + top)
}

/// A public key from SubjectPublicKeyInfo DER.
fn from_spki(spki: &[u8]) -> Result<Key, JsErrorBox> {
    let (seq, _) = expect(spki, 0x30)?;
    let (alg, rest) = expect(seq, 0x30)?;
    let (bits, _) = expect(rest, 0x03)?;
    let key = bits.get(1..).ok_or_else(|| bad_key("empty key"))?;
    let (oid, params) = algorithm(alg)?;
    let (key_type, curve, nbits) = match oid {
        OID_RSA => ("rsa", String::new(), rsa_bits(key)?),
        OID_EC => ("ec", curve_name(params)?.to_owned(), 0),
        _ => return Err(bad_key("unsupported key type (RSA and EC are)")),
    };
    Ok(Key { kind: "public".into(), key_type: key_type.into(), encoding: "spki".into(), der: spki.to_vec(), curve, bits: nbits })
}

fn spki_rsa(rsa_public: &[u8]) -> Vec<u8> {
    let alg = der(0x30, &[der(0x06, OID_RSA), vec![0x05, 0x00]].concat());
    let bits = der(0x03, &[&[0u8][..], rsa_public].concat());
    der(0x30, &[alg, bits].concat())
}

fn spki_ec(curve: &[u8], point: &[u8]) -> Vec<u8> {
    let alg = der(0x30, &[der(0x06, OID_EC), der(0x06, curve)].concat());
    let bits = der(0x03, &[&[0u8][..], point].concat());
    der(0x30, &[alg, bits].concat())
}

/// The SubjectPublicKeyInfo inside an X.509 certificate.
fn spki_of_certificate(cert: &[u8]) -> Result<&[u8], JsErrorBox> {
    let (seq, _) = expect(cert, 0x30)?;
    let (tbs, _) = expect(seq, 0x30)?;
    let mut rest = tbs;
    // [0] version, if present.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    // serial, signature, issuer, validity, subject.
    for _ in 0..5 {
        rest = tlv(rest)?.2;
    }
    let (t, _, after) = tlv(rest)?;
    if t != 0x30 {
        return Err(bad_key("certificate without a public key"));
    }
    Ok(&rest[..rest.len() - after.len()])
}

/// A private key from PKCS#8 DER.
fn from_pkcs8(pkcs8: &[u8]) -> Result<Key, JsErrorBox> {
    let (seq, _) = expect(pkcs8, 0x30)?;
    let (_version, rest) = expect(seq, 0x02)?;
    let (alg, rest) = expect(rest, 0x30)?;
    let (private, _) = expect(rest, 0x04)?;
    let (oid, params) = algorithm(alg)?;
    let (key_type, curve, bits) = match oid {
        OID_RSA => {
            let (rsa, _) = expect(private, 0x30)?;
            let (_v, rest) = expect(rsa, 0x02)?;
            let modulus = &rest[..rest.len() - tlv(rest)?.2.len()];
            ("rsa", String::new(), rsa_bits(&der(0x30, modulus))?)
        }
        OID_EC => ("ec", curve_name(params)?.to_owned(), 0),
        _ => return Err(bad_key("unsupported key type (RSA and EC are)")),
    };
    Ok(Key { kind: "private".into(), key_type: key_type.into(), encoding: "pkcs8".into(), der: pkcs8.to_vec(), curve, bits })
}

/// An RSA private key from PKCS#1 DER.
fn from_pkcs1_private(der_bytes: &[u8]) -> Result<Key, JsErrorBox> {
    let (rsa, _) = expect(der_bytes, 0x30)?;
    let (_v, rest) = expect(rsa, 0x02)?;
    let modulus = &rest[..rest.len() - tlv(rest)?.2.len()];
    let bits = rsa_bits(&der(0x30, modulus))?;
    Ok(Key { kind: "private".into(), key_type: "rsa".into(), encoding: "pkcs1".into(), der: der_bytes.to_vec(), curve: String::new(), bits })
}

fn pem_blocks(text: &str) -> Result<(String, Vec<u8>), JsErrorBox> {
    let start = text.find("-----BEGIN ").ok_or_else(|| bad_key("no PEM block"))?;
    let after = &text[start + 11..];
    let label_end = after.find("-----").ok_or_else(|| bad_key("bad PEM header"))?;
    let label = after[..label_end].to_owned();
    let body = &after[label_end + 5..];
    let end = body.find("-----END ").ok_or_else(|| bad_key("no PEM footer"))?;
    let b64: String = body[..end].chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| bad_key(format!("PEM: {e}")))?;
    Ok((label, bytes))
}

/// The public key of SPKI `der`: RSAPublicKey DER or an EC point.
fn spki_key_bytes(der_bytes: &[u8]) -> Result<&[u8], JsErrorBox> {
    let (seq, _) = expect(der_bytes, 0x30)?;
    let (_alg, rest) = expect(seq, 0x30)?;
    let (bits, _) = expect(rest, 0x03)?;
    bits.get(1..).ok_or_else(|| bad_key("empty key"))
}

/// Largest key input taken (PEM, DER, a JWK field): a 16384-bit private
/// key is 13 KB of PEM, a certificate chain a few more. Decoding is one
/// call's work.
const MAX_KEY_INPUT: usize = 1024 * 1024;

fn check_input_size(len: usize) -> Result<(), JsErrorBox> {
    if len > MAX_KEY_INPUT {
        return Err(bad_key(format!("key data of {len} bytes is over webtask's limit of {MAX_KEY_INPUT}")));
    }
    Ok(())
}

/// A key given as PEM text or DER bytes (`format` "pem" or "der",
/// `der_type` "spki", "pkcs1", "pkcs8" or "sec1" for DER).
fn import(want: &str, format: &str, der_type: &str, data: &[u8]) -> Result<Key, JsErrorBox> {
    check_input_size(data.len())?;
    let key = match format {
        "pem" => {
            let text = std::str::from_utf8(data).map_err(|_| bad_key("PEM is not text"))?;
            let (label, bytes) = pem_blocks(text)?;
            match label.as_str() {
                "PUBLIC KEY" => from_spki(&bytes)?,
                "RSA PUBLIC KEY" => from_spki(&spki_rsa(&bytes))?,
                "CERTIFICATE" => from_spki(spki_of_certificate(&bytes)?)?,
                "PRIVATE KEY" => from_pkcs8(&bytes)?,
                "RSA PRIVATE KEY" => from_pkcs1_private(&bytes)?,
                "EC PRIVATE KEY" => from_sec1(&bytes)?,
                "ENCRYPTED PRIVATE KEY" => return Err(bad_key("encrypted private keys are not supported")),
                other => return Err(bad_key(format!("unsupported PEM type {other:?}"))),
            }
        }
        "der" => match der_type {
            "spki" => from_spki(data)?,
            "pkcs8" => from_pkcs8(data)?,
            "pkcs1" if want == "public" => from_spki(&spki_rsa(data))?,
            "pkcs1" => from_pkcs1_private(data)?,
            "sec1" => from_sec1(data)?,
            other => return Err(type_error(format!("The property 'options.type' is invalid. Received {other:?}"))),
        },
        other => return Err(type_error(format!("The property 'options.format' is invalid. Received {other:?}"))),
    };
    match (want, key.kind.as_str()) {
        ("private", "public") => Err(bad_key("a private key is needed, this is a public key")),
        _ => Ok(key),
    }
}

/// An EC private key in SEC1 form (`BEGIN EC PRIVATE KEY`), kept as PKCS#8.
fn from_sec1(der_bytes: &[u8]) -> Result<Key, JsErrorBox> {
    use p256::pkcs8::EncodePrivateKey;
    let pkcs8 = if let Ok(k) = p256::SecretKey::from_sec1_der(der_bytes) {
        k.to_pkcs8_der().map_err(bad_key)?
    } else if let Ok(k) = p384::SecretKey::from_sec1_der(der_bytes) {
        k.to_pkcs8_der().map_err(bad_key)?
    } else {
        return Err(bad_key("not a P-256 or P-384 SEC1 private key"));
    };
    from_pkcs8(pkcs8.as_bytes())
}

/// The key itself, parsed and checked.
enum Parsed {
    RsaPrivate(Box<rsa::RsaPrivateKey>),
    RsaPublic(rsa::RsaPublicKey),
    P256Private(p256::SecretKey),
    P256Public(p256::PublicKey),
    P384Private(p384::SecretKey),
    P384Public(p384::PublicKey),
}

fn rsa_public(rsa_public_der: &[u8]) -> Result<rsa::RsaPublicKey, JsErrorBox> {
    use rsa::pkcs1::der::Decode;
    let k = rsa::pkcs1::RsaPublicKey::from_der(rsa_public_der).map_err(bad_key)?;
    let n = BigUint::from_bytes_be(k.modulus.as_bytes());
    let e = BigUint::from_bytes_be(k.public_exponent.as_bytes());
    rsa::RsaPublicKey::new_with_max_size(n, e, MAX_RSA_BITS as usize).map_err(bad_key)
}

fn parse(key: &Key) -> Result<Parsed, JsErrorBox> {
    if key.key_type == "rsa" && key.bits > MAX_RSA_BITS {
        return Err(bad_key(format!("RSA keys of up to {MAX_RSA_BITS} bits are supported; this one has {}", key.bits)));
    }
    Ok(match (key.key_type.as_str(), key.kind.as_str(), key.curve.as_str()) {
        ("rsa", "public", _) => Parsed::RsaPublic(rsa_public(spki_key_bytes(&key.der)?)?),
        ("rsa", _, _) => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            use rsa::pkcs8::DecodePrivateKey;
            let k = if key.encoding == "pkcs1" {
                rsa::RsaPrivateKey::from_pkcs1_der(&key.der).map_err(bad_key)?
            } else {
                rsa::RsaPrivateKey::from_pkcs8_der(&key.der).map_err(bad_key)?
            };
            if k.primes().len() != 2 || k.dp().is_none() || k.dq().is_none() || k.qinv().is_none() {
                return Err(bad_key("only two-prime RSA keys are supported"));
            }
            Parsed::RsaPrivate(Box::new(k))
        }
        ("ec", "public", "prime256v1") => {
            Parsed::P256Public(p256::PublicKey::from_sec1_bytes(spki_key_bytes(&key.der)?).map_err(|_| bad_key("not a point on P-256"))?)
        }
        ("ec", "public", _) => {
            Parsed::P384Public(p384::PublicKey::from_sec1_bytes(spki_key_bytes(&key.der)?).map_err(|_| bad_key("not a point on P-384"))?)
        }
        ("ec", _, "prime256v1") => {
            use p256::pkcs8::DecodePrivateKey;
            Parsed::P256Private(p256::SecretKey::from_pkcs8_der(&key.der).map_err(bad_key)?)
        }
        ("ec", _, _) => {
            use p384::pkcs8::DecodePrivateKey;
            Parsed::P384Private(p384::SecretKey::from_pkcs8_der(&key.der).map_err(bad_key)?)
        }
        (other, _, _) => return Err(bad_key(format!("unsupported key type {other:?}"))),
    })
}

/// A key as the shim's KeyObject and CryptoKey hold it.
pub struct KeyHandle {
    key: Key,
    parsed: Parsed,
    _charge: Charge,
}

// SAFETY: holds no GC references to trace.
unsafe impl GarbageCollected for KeyHandle {
    fn trace(&self, _visitor: &mut v8::cppgc::Visitor) {}

    fn get_name(&self) -> &'static std::ffi::CStr {
        c"KeyHandle"
    }
}

fn handle(state: &OpState, key: Key) -> Result<KeyHandle, JsErrorBox> {
    let parsed = parse(&key)?;
    // The DER and about as much again for the parsed numbers.
    let charge = Charge::new(state.borrow::<Arc<Budget>>(), key.der.len() * 3 + 256)?;
    Ok(KeyHandle { key, parsed, _charge: charge })
}

/// Parses a key given as PEM text or DER bytes. A private key given where a
/// public one is wanted stays private: the shim derives the public key.
#[op2]
#[cppgc]
pub fn op_wt_key_import(
    state: &OpState,
    #[string] want: &str,
    #[string] format: &str,
    #[string] der_type: &str,
    #[buffer] data: &[u8],
) -> Result<KeyHandle, JsErrorBox> {
    handle(state, import(want, format, der_type, data)?)
}

#[derive(Deserialize)]
pub struct Jwk {
    kty: String,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn b64url(field: Option<&String>, name: &str) -> Result<Vec<u8>, JsErrorBox> {
    let s = field.ok_or_else(|| bad_key(format!("JWK lacks {name}")))?;
    check_input_size(s.len())?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| bad_key(format!("JWK {name}: {e}")))
}

/// A public key from a JWK (RSA `n`/`e`, EC P-256/P-384 `x`/`y`).
#[op2]
#[cppgc]
pub fn op_wt_key_from_jwk(state: &OpState, #[serde] jwk: Jwk) -> Result<KeyHandle, JsErrorBox> {
    let key = match jwk.kty.as_str() {
        "RSA" => {
            let n = b64url(jwk.n.as_ref(), "n")?;
            let e = b64url(jwk.e.as_ref(), "e")?;
            let rsa = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
            from_spki(&spki_rsa(&rsa))?
        }
        "EC" => {
            let (oid, size) = match jwk.crv.as_deref() {
                Some("P-256") => (OID_P256, 32),
                Some("P-384") => (OID_P384, 48),
                _ => return Err(bad_key("unsupported JWK curve (P-256 and P-384 are)")),
            };
            let x = b64url(jwk.x.as_ref(), "x")?;
            let y = b64url(jwk.y.as_ref(), "y")?;
            if x.len() != size || y.len() != size {
                return Err(bad_key("JWK coordinates have the wrong length"));
            }
            from_spki(&spki_ec(oid, &[&[4u8][..], &x, &y].concat()))?
        }
        other => return Err(bad_key(format!("unsupported JWK kty {other:?}"))),
    };
    handle(state, key)
}

/// A public key from a raw uncompressed EC point (WebCrypto "raw").
#[op2]
#[cppgc]
pub fn op_wt_key_from_ec_point(state: &OpState, #[string] curve: &str, #[buffer] point: &[u8]) -> Result<KeyHandle, JsErrorBox> {
    let oid = match curve {
        "P-256" => OID_P256,
        "P-384" => OID_P384,
        _ => return Err(bad_key("unsupported curve (P-256 and P-384 are)")),
    };
    handle(state, from_spki(&spki_ec(oid, point))?)
}

/// The public half of a private key (a public key is its own).
#[op2]
#[cppgc]
pub fn op_wt_key_public(state: &OpState, #[cppgc] k: &KeyHandle) -> Result<KeyHandle, JsErrorBox> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let spki = match &k.parsed {
        Parsed::RsaPrivate(p) => {
            let rsa = der(0x30, &[der_uint(&p.n().to_bytes_be()), der_uint(&p.e().to_bytes_be())].concat());
            spki_rsa(&rsa)
        }
        Parsed::P256Private(p) => spki_ec(OID_P256, p.public_key().to_encoded_point(false).as_bytes()),
        Parsed::P384Private(p) => spki_ec(OID_P384, p.public_key().to_encoded_point(false).as_bytes()),
        _ => k.key.der.clone(),
    };
    handle(state, from_spki(&spki)?)
}

/// What the shim shows of a key.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    kind: String,
    key_type: String,
    encoding: String,
    curve: String,
    bits: u32,
    /// RSA public exponent (at most 2^33 - 1).
    exponent: f64,
}

#[op2]
#[serde]
pub fn op_wt_key_info(#[cppgc] k: &KeyHandle) -> KeyInfo {
    let exponent = match &k.parsed {
        Parsed::RsaPrivate(p) => p.e().to_bytes_be().iter().fold(0f64, |acc, &b| acc * 256.0 + b as f64),
        Parsed::RsaPublic(p) => p.e().to_bytes_be().iter().fold(0f64, |acc, &b| acc * 256.0 + b as f64),
        _ => 0.0,
    };
    let k = &k.key;
    KeyInfo {
        kind: k.kind.clone(),
        key_type: k.key_type.clone(),
        encoding: k.encoding.clone(),
        curve: k.curve.clone(),
        bits: k.bits,
        exponent,
    }
}

/// The key's canonical DER, in a new guest buffer.
#[op2]
pub fn op_wt_key_der<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    #[cppgc] k: &KeyHandle,
) -> Result<v8::Local<'s, v8::Uint8Array>, JsErrorBox> {
    let budget = super::budget(scope);
    let der_bytes = &k.key.der;
    crate::engine::alloc::guest_bytes(scope, &budget, der_bytes.len(), |out| out.copy_from_slice(der_bytes))
}

// ---------------------------------------------------------------------------
// Modular exponentiation in slices.
// ---------------------------------------------------------------------------

/// Arithmetic modulo an odd `n` in Montgomery form (R = 2^(64·limbs)),
/// on 64-bit limbs, least significant first.
struct Mont {
    n: Vec<u64>,
    /// -n^-1 mod 2^64.
    n0: u64,
    /// R^2 mod n, to enter Montgomery form.
    r2: Vec<u64>,
}

fn limbs(value: &BigUint, len: usize) -> Vec<u64> {
    let bytes = value.to_bytes_le();
    let mut out = vec![0u64; len.max(bytes.len().div_ceil(8))];
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        out[i] = u64::from_le_bytes(b);
    }
    out
}

fn from_limbs(limbs: &[u64]) -> BigUint {
    let bytes: Vec<u8> = limbs.iter().flat_map(|l| l.to_le_bytes()).collect();
    BigUint::from_bytes_le(&bytes)
}

impl Mont {
    fn new(m: &BigUint) -> Result<Self, JsErrorBox> {
        if m.is_even() || m.is_one() {
            return Err(bad_key("RSA modulus or prime is even"));
        }
        let n = limbs(m, 0);
        // Newton's iteration for n[0]^-1 mod 2^64: each step doubles the bits.
        let mut inv: u64 = 1;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(n[0].wrapping_mul(inv)));
        }
        let r2 = limbs(&((BigUint::one() << (128 * n.len())) % m), n.len());
        Ok(Mont { n0: inv.wrapping_neg(), r2, n })
    }

    /// a·b·R^-1 mod n (CIOS, Koç et al. 1996) into `out`; `t` is scratch
    /// of `n.len() + 2` limbs.
    fn mul(&self, a: &[u64], b: &[u64], t: &mut [u64], out: &mut [u64]) {
        let s = self.n.len();
        let (n, a) = (&self.n[..s], &a[..s]);
        t.fill(0);
        for &bi in &b[..s] {
            let mut c: u64 = 0;
            for (tj, &aj) in t[..s].iter_mut().zip(a) {
                let v = (*tj as u128).wrapping_add((aj as u128).wrapping_mul(bi as u128)).wrapping_add(c as u128);
                *tj = v as u64;
                c = (v >> 64) as u64;
            }
            let v = (t[s] as u128).wrapping_add(c as u128);
            t[s] = v as u64;
            t[s + 1] = (v >> 64) as u64;
            let m = t[0].wrapping_mul(self.n0);
            let mut c = ((t[0] as u128).wrapping_add((m as u128).wrapping_mul(n[0] as u128)) >> 64) as u64;
            for j in 1..s {
                let v = (t[j] as u128).wrapping_add((m as u128).wrapping_mul(n[j] as u128)).wrapping_add(c as u128);
                t[j - 1] = v as u64;
                c = (v >> 64) as u64;
            }
            let v = (t[s] as u128).wrapping_add(c as u128);
            t[s - 1] = v as u64;
            t[s] = t[s + 1].wrapping_add((v >> 64) as u64);
        }
        // t < 2n: one subtraction at most. Computed always and chosen
        // without a branch: whether it was needed depends on the secret
        // operands (the timing leak Montgomery multiplication is known for).
        let mut borrow = 0u64;
        for (o, (&tj, &nj)) in out[..s].iter_mut().zip(t[..s].iter().zip(n)) {
            let (d, b1) = tj.overflowing_sub(nj);
            let (d, b2) = d.overflowing_sub(borrow);
            *o = d;
            borrow = (b1 | b2) as u64;
        }
        // Keep t (undo the subtraction) when t < n: t[s] is 0 and it borrowed.
        let keep_t = subtle::Choice::from((borrow & (t[s] == 0) as u64) as u8);
        for (o, &tj) in out[..s].iter_mut().zip(&t[..s]) {
            o.conditional_assign(&tj, keep_t);
        }
    }

    fn to_mont(&self, x: &BigUint) -> Vec<u64> {
        let reduced = limbs(&(x % from_limbs(&self.n)), self.n.len());
        let mut out = vec![0u64; self.n.len()];
        self.mul(&reduced, &self.r2, &mut vec![0; self.n.len() + 2], &mut out);
        out
    }

    fn out_of_mont(&self, x: &[u64]) -> BigUint {
        let mut one = vec![0u64; self.n.len()];
        one[0] = 1;
        let mut out = vec![0u64; self.n.len()];
        self.mul(x, &one, &mut vec![0; self.n.len() + 2], &mut out);
        from_limbs(&out)
    }
}

/// `base^exp mod m` (m odd), left to right over windows of the exponent in
/// Montgomery form, a few multiplications per call of [`ModPow::run`].
struct ModPow {
    mont: Mont,
    /// The exponent, little-endian.
    exp: Vec<u8>,
    window: usize,
    /// base^0 .. base^(2^window - 1), built as it runs.
    table: Vec<Vec<u64>>,
    /// Exponent bits still to do (from the top).
    bits_left: usize,
    acc: Vec<u64>,
    scratch: Vec<u64>,
    t: Vec<u64>,
    /// Squarings done within the current window.
    squared: usize,
    /// The table entry of the current window, selected in constant time.
    entry: Vec<u64>,
}

impl ModPow {
    fn new(base: &BigUint, exp: &BigUint, m: &BigUint) -> Result<Self, JsErrorBox> {
        let mont = Mont::new(m)?;
        let bits = exp.bits();
        // Long (private) exponents: 4-bit windows; short ones bit by bit.
        let window = if bits > 64 { 4 } else { 1 };
        let one = mont.to_mont(&BigUint::one());
        let table = vec![one.clone(), mont.to_mont(base)];
        let len = mont.n.len();
        Ok(ModPow {
            mont,
            exp: exp.to_bytes_le(),
            window,
            table,
            bits_left: bits.div_ceil(window) * window,
            acc: one,
            scratch: vec![0; len],
            t: vec![0; len + 2],
            squared: 0,
            entry: vec![0; len],
        })
    }

    /// Works until the deadline; the result once done.
    fn run(&mut self, deadline: &Deadline) -> Option<BigUint> {
        while self.table.len() < 1 << self.window {
            let mut next = vec![0u64; self.mont.n.len()];
            self.mont.mul(self.table.last().unwrap(), &self.table[1], &mut self.t, &mut next);
            self.table.push(next);
            if deadline.passed() {
                return None;
            }
        }
        // Every window costs the same whatever the exponent's bits (the
        // private exponent is the secret): `window` squarings and one
        // multiplication, by an entry read from the whole table.
        while self.bits_left > 0 {
            while self.squared < self.window {
                self.mont.mul(&self.acc, &self.acc, &mut self.t, &mut self.scratch);
                std::mem::swap(&mut self.acc, &mut self.scratch);
                self.squared += 1;
                if deadline.passed() {
                    return None;
                }
            }
            self.bits_left -= self.window;
            self.squared = 0;
            let mut digit = 0u64;
            for i in (0..self.window).rev() {
                let bit = self.bits_left + i;
                let set = self.exp.get(bit / 8).map_or(0, |b| (b >> (bit % 8) & 1) as u64);
                digit = digit << 1 | set;
            }
            select(&self.table, digit, &mut self.entry);
            self.mont.mul(&self.acc, &self.entry, &mut self.t, &mut self.scratch);
            std::mem::swap(&mut self.acc, &mut self.scratch);
            if deadline.passed() && self.bits_left > 0 {
                return None;
            }
        }
        Some(self.mont.out_of_mont(&self.acc))
    }
}

/// `table[index]` into `out`, reading every entry the same way, so which
/// one was wanted does not show in the cache.
fn select(table: &[Vec<u64>], index: u64, out: &mut [u64]) {
    out.fill(0);
    for (i, entry) in table.iter().enumerate() {
        let hit = (i as u64).ct_eq(&index);
        for (o, &e) in out.iter_mut().zip(entry) {
            o.conditional_assign(&e, hit);
        }
    }
}

// ---------------------------------------------------------------------------
// RSA signature schemes (RFC 8017 section 9).
// ---------------------------------------------------------------------------

/// DER of DigestInfo's algorithm part, before the digest (RFC 8017 9.2 n.1).
fn digest_info_prefix(alg: &str) -> &'static [u8] {
    match alg {
        "md5" => &[0x30, 0x20, 0x30, 0x0c, 0x06, 0x08, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x05, 0x05, 0x00, 0x04, 0x10],
        "sha1" => &[0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14],
        "sha224" => &[0x30, 0x2d, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04, 0x05, 0x00, 0x04, 0x1c],
        "sha256" => &[0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20],
        "sha384" => &[0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30],
        _ => &[0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40],
    }
}

/// EMSA-PKCS1-v1_5 of a digest, `k` bytes long.
fn pkcs1_encode(alg: &str, hashed: &[u8], k: usize) -> Result<Vec<u8>, JsErrorBox> {
    let prefix = digest_info_prefix(alg);
    let t_len = prefix.len() + hashed.len();
    if k < t_len + 11 {
        return Err(JsErrorBox::generic("error:0200006E:rsa routines::digest too big for rsa key"));
    }
    let mut em = vec![0xffu8; k];
    em[0] = 0;
    em[1] = 1;
    em[k - t_len - 1] = 0;
    em[k - t_len..k - hashed.len()].copy_from_slice(prefix);
    em[k - hashed.len()..].copy_from_slice(hashed);
    Ok(em)
}

fn hash_of(alg: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut h = Digester::hash(alg).expect("checked hash name");
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// MGF1 (RFC 8017 B.2.1) XORed into `out`.
fn mgf1_xor(alg: &str, seed: &[u8], out: &mut [u8]) {
    for (i, chunk) in out.chunks_mut(digest_len(alg)).enumerate() {
        let mask = hash_of(alg, &[seed, &(i as u32).to_be_bytes()]);
        for (o, m) in chunk.iter_mut().zip(mask) {
            *o ^= m;
        }
    }
}

/// Node's PSS salt lengths: -1 the digest's length, -2 the longest that
/// fits when signing and any when verifying (OpenSSL's -3: the longest).
const SALT_DIGEST: i64 = -1;
const SALT_MAX_OR_AUTO: i64 = -2;
const SALT_MAX: i64 = -3;

/// EMSA-PSS-ENCODE (RFC 8017 9.1.1) for a modulus of `mod_bits`.
fn pss_encode(alg: &str, hashed: &[u8], mod_bits: usize, salt_len: i64) -> Result<Vec<u8>, JsErrorBox> {
    let em_bits = mod_bits - 1;
    let em_len = em_bits.div_ceil(8);
    let h_len = hashed.len();
    let max_salt = em_len.checked_sub(h_len + 2).ok_or_else(|| JsErrorBox::generic("error:0200006E:rsa routines::digest too big for rsa key"))?;
    let s_len = match salt_len {
        SALT_DIGEST => h_len,
        SALT_MAX_OR_AUTO | SALT_MAX => max_salt,
        n if n >= 0 => n as usize,
        n => return Err(type_error(format!("Invalid PSS salt length {n}"))),
    };
    if s_len > max_salt {
        return Err(JsErrorBox::generic("error:02000080:rsa routines::data too large for key size"));
    }
    let mut salt = vec![0u8; s_len];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut salt);
    let h = hash_of(alg, &[&[0u8; 8], hashed, &salt]);
    let db_len = em_len - h_len - 1;
    let mut em = vec![0u8; em_len];
    em[db_len - s_len - 1] = 1;
    em[db_len - s_len..db_len].copy_from_slice(&salt);
    mgf1_xor(alg, &h, &mut em[..db_len]);
    em[0] &= 0xff >> (8 * em_len - em_bits);
    em[db_len..em_len - 1].copy_from_slice(&h);
    em[em_len - 1] = 0xbc;
    Ok(em)
}

/// EMSA-PSS-VERIFY (RFC 8017 9.1.2); `em` is the signature's value as
/// `em_len` bytes (None if it does not fit).
fn pss_verify(alg: &str, hashed: &[u8], em: Option<&[u8]>, mod_bits: usize, salt_len: i64) -> bool {
    let em_bits = mod_bits - 1;
    let em_len = em_bits.div_ceil(8);
    let h_len = hashed.len();
    let Some(em) = em else { return false };
    if em.len() != em_len || em_len < h_len + 2 || em[em_len - 1] != 0xbc {
        return false;
    }
    let db_len = em_len - h_len - 1;
    let top = 0xffu8 >> (8 * em_len - em_bits);
    if em[0] & !top != 0 {
        return false;
    }
    let h = &em[db_len..em_len - 1];
    let mut db = em[..db_len].to_vec();
    mgf1_xor(alg, h, &mut db);
    db[0] &= top;
    let Some(one) = db.iter().position(|&b| b != 0) else { return false };
    if db[one] != 1 {
        return false;
    }
    let s_len = db_len - one - 1;
    let expected = match salt_len {
        SALT_DIGEST => Some(h_len),
        SALT_MAX_OR_AUTO => None,
        SALT_MAX => Some(em_len - h_len - 2),
        n if n >= 0 => Some(n as usize),
        _ => return false,
    };
    if expected.is_some_and(|e| e != s_len) {
        return false;
    }
    let salt = &db[db_len - s_len..];
    hash_of(alg, &[&[0u8; 8], hashed, salt]) == h
}

/// `value` as exactly `len` big-endian bytes (None if it needs more).
fn to_len(value: &BigUint, len: usize) -> Option<Vec<u8>> {
    let bytes = value.to_bytes_be();
    if value.is_zero() {
        return Some(vec![0; len]);
    }
    let pad = len.checked_sub(bytes.len())?;
    let mut out = vec![0u8; pad];
    out.extend_from_slice(&bytes);
    Some(out)
}

// ---------------------------------------------------------------------------
// Jobs: one signature or verification, run in slices.
// ---------------------------------------------------------------------------

/// The steps of an RSA private-key operation: blinded (`c·r^e`), with the
/// CRT (`mod p`, `mod q`), unblinded, and checked (`m^e = c`). The
/// blinding inverse is found mod p and mod q, a call each (half the
/// work of one inversion mod n, which for the largest keys is more than a
/// slice).
enum RsaStep {
    Blind(ModPow),
    InverseP,
    InverseQ,
    ModP(ModPow),
    ModQ(ModPow),
    Check(ModPow),
}

struct RsaSign {
    key: Box<rsa::RsaPrivateKey>,
    /// The encoded message as a number.
    c: BigUint,
    r: BigUint,
    r_inv_p: BigUint,
    r_inv: BigUint,
    blinded: BigUint,
    m1: BigUint,
    sig: BigUint,
    step: RsaStep,
}

/// Garner's recombination: the x mod pq with x = xp mod p, x = xq mod q.
fn crt(xp: &BigUint, xq: &BigUint, p: &BigUint, q: &BigUint, qinv: &BigUint) -> BigUint {
    let diff = (xp + p - (xq % p)) % p;
    let h = (qinv * diff) % p;
    xq + h * q
}

fn inverse(x: &BigUint, m: &BigUint) -> Result<BigUint, JsErrorBox> {
    (x % m)
        .mod_inverse(m)
        .and_then(|i| i.to_biguint())
        .ok_or_else(|| JsErrorBox::generic("RSA blinding failed (a random factor shared a prime with the key); sign again"))
}

impl RsaSign {
    fn new(key: &rsa::RsaPrivateKey, em: &[u8]) -> Result<Self, JsErrorBox> {
        let n = key.n();
        let c = BigUint::from_bytes_be(em);
        // r: random below n (invertible but for a negligible few).
        let r = loop {
            let mut bytes = vec![0u8; key.size()];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
            let r = BigUint::from_bytes_be(&bytes) % n;
            if !r.is_zero() && !r.is_one() {
                break r;
            }
        };
        let step = RsaStep::Blind(ModPow::new(&r, key.e(), n)?);
        let zero = BigUint::zero;
        Ok(RsaSign {
            key: Box::new(key.clone()),
            c,
            r,
            r_inv_p: zero(),
            r_inv: zero(),
            blinded: zero(),
            m1: zero(),
            sig: zero(),
            step,
        })
    }

    /// Works until the deadline; the signature once done.
    fn run(&mut self, deadline: &Deadline) -> Result<Option<Vec<u8>>, JsErrorBox> {
        let key = &self.key;
        let (p, q) = (&key.primes()[0], &key.primes()[1]);
        let qinv = || key.qinv().and_then(|v| v.to_biguint()).expect("checked at parse");
        loop {
            match &mut self.step {
                RsaStep::Blind(pow) => {
                    let Some(re) = pow.run(deadline) else { return Ok(None) };
                    self.blinded = (&self.c * re) % key.n();
                    self.step = RsaStep::InverseP;
                }
                RsaStep::InverseP => {
                    self.r_inv_p = inverse(&self.r, p)?;
                    self.step = RsaStep::InverseQ;
                }
                RsaStep::InverseQ => {
                    let r_inv_q = inverse(&self.r, q)?;
                    self.r_inv = crt(&self.r_inv_p, &r_inv_q, p, q, &qinv());
                    self.step = RsaStep::ModP(ModPow::new(&self.blinded, key.dp().expect("checked at parse"), p)?);
                }
                RsaStep::ModP(pow) => {
                    let Some(m1) = pow.run(deadline) else { return Ok(None) };
                    self.m1 = m1;
                    self.step = RsaStep::ModQ(ModPow::new(&self.blinded, key.dq().expect("checked at parse"), q)?);
                }
                RsaStep::ModQ(pow) => {
                    let Some(m2) = pow.run(deadline) else { return Ok(None) };
                    let blinded_sig = crt(&self.m1, &m2, p, q, &qinv());
                    self.sig = (blinded_sig * &self.r_inv) % key.n();
                    self.step = RsaStep::Check(ModPow::new(&self.sig, key.e(), key.n())?);
                }
                RsaStep::Check(pow) => {
                    let Some(back) = pow.run(deadline) else { return Ok(None) };
                    if back != self.c {
                        return Err(JsErrorBox::generic("RSA signing failed its consistency check"));
                    }
                    return Ok(Some(to_len(&self.sig, key.size()).expect("sig < n")));
                }
            }
            if deadline.passed() {
                return Ok(None);
            }
        }
    }
}

struct RsaVerify {
    pow: ModPow,
    alg: &'static str,
    hashed: Vec<u8>,
    pss: bool,
    salt_len: i64,
    mod_bits: usize,
    k: usize,
}

enum JobState {
    Sign(Box<RsaSign>),
    Verify(Box<RsaVerify>),
    Signed(Vec<u8>),
    Verified(bool),
}

/// One signature or verification in progress.
pub struct Job(RefCell<Option<JobState>>);

// SAFETY: holds no GC references to trace.
unsafe impl GarbageCollected for Job {
    fn trace(&self, _visitor: &mut v8::cppgc::Visitor) {}

    fn get_name(&self) -> &'static std::ffi::CStr {
        c"SignatureJob"
    }
}

fn canonical_digest(digest: &str, hashed: &[u8]) -> Result<&'static str, JsErrorBox> {
    let alg = hash_name(digest).ok_or_else(|| type_error(format!("Invalid digest: {digest}")))?;
    if hashed.len() != digest_len(alg) {
        return Err(type_error(format!("a {alg} digest is {} bytes, not {}", digest_len(alg), hashed.len())));
    }
    Ok(alg)
}

fn check_rsa_size(bits: usize) -> Result<(), JsErrorBox> {
    if !(MIN_RSA_BITS as usize..=MAX_RSA_BITS as usize).contains(&bits) {
        return Err(bad_key(format!("RSA keys of {MIN_RSA_BITS} to {MAX_RSA_BITS} bits are supported; this one has {bits}")));
    }
    Ok(())
}

/// ECDSA signature bytes, DER or IEEE P1363 (r || s).
macro_rules! ecdsa_sign {
    ($curve:ident, $secret:expr, $hashed:expr, $p1363:expr) => {{
        use $curve::ecdsa::signature::hazmat::PrehashSigner;
        let signer = $curve::ecdsa::SigningKey::from($secret);
        let sig: $curve::ecdsa::Signature = signer.sign_prehash($hashed).map_err(|e| type_error(format!("ECDSA: {e}")))?;
        if $p1363 { sig.to_bytes().to_vec() } else { sig.to_der().as_bytes().to_vec() }
    }};
}

macro_rules! ecdsa_verify {
    ($curve:ident, $public:expr, $hashed:expr, $sig:expr, $p1363:expr) => {{
        use $curve::ecdsa::signature::hazmat::PrehashVerifier;
        let verifier = $curve::ecdsa::VerifyingKey::from($public);
        let sig = if $p1363 { $curve::ecdsa::Signature::from_slice($sig) } else { $curve::ecdsa::Signature::from_der($sig) };
        sig.is_ok_and(|sig| verifier.verify_prehash($hashed, &sig).is_ok())
    }};
}

/// Starts signing digest `hashed` (of `digest`) with private key `k`: RSA
/// PKCS#1 v1.5 or PSS (`pss`, with `salt_len` as Node's saltLength), ECDSA
/// with DER or IEEE P1363 (`p1363`) signatures. Run it with
/// `op_wt_job_run`.
#[op2]
#[cppgc]
pub fn op_wt_sign_start(
    #[cppgc] k: &KeyHandle,
    #[string] digest: &str,
    #[buffer] hashed: &[u8],
    pss: bool,
    salt_len: f64,
    p1363: bool,
) -> Result<Job, JsErrorBox> {
    let alg = canonical_digest(digest, hashed)?;
    let state = match &k.parsed {
        Parsed::RsaPrivate(key) => {
            check_rsa_size(key.n().bits())?;
            let em = if pss { pss_encode(alg, hashed, key.n().bits(), salt_len as i64)? } else { pkcs1_encode(alg, hashed, key.size())? };
            JobState::Sign(Box::new(RsaSign::new(key, &em)?))
        }
        Parsed::P256Private(key) => JobState::Signed(ecdsa_sign!(p256, key, hashed, p1363)),
        Parsed::P384Private(key) => JobState::Signed(ecdsa_sign!(p384, key, hashed, p1363)),
        _ => return Err(bad_key("signing needs a private key")),
    };
    Ok(Job(RefCell::new(Some(state))))
}

/// Starts verifying `sig` over digest `hashed` with key `k` (a private key
/// verifies with its public half). A wrong signature is `false`, not an
/// error.
#[op2]
#[cppgc]
pub fn op_wt_verify_start(
    #[cppgc] k: &KeyHandle,
    #[string] digest: &str,
    #[buffer] hashed: &[u8],
    #[buffer] sig: &[u8],
    pss: bool,
    salt_len: f64,
    p1363: bool,
) -> Result<Job, JsErrorBox> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let alg = canonical_digest(digest, hashed)?;
    let rsa_key = match &k.parsed {
        Parsed::RsaPublic(key) => Some(key.clone()),
        Parsed::RsaPrivate(key) => Some(key.to_public_key()),
        _ => None,
    };
    let state = match (&k.parsed, rsa_key) {
        (_, Some(key)) => {
            check_rsa_size(key.n().bits())?;
            let s = BigUint::from_bytes_be(sig);
            if sig.len() != key.size() || &s >= key.n() {
                JobState::Verified(false)
            } else {
                let pow = ModPow::new(&s, key.e(), key.n())?;
                let (mod_bits, k) = (key.n().bits(), key.size());
                JobState::Verify(Box::new(RsaVerify { pow, alg, hashed: hashed.to_vec(), pss, salt_len: salt_len as i64, mod_bits, k }))
            }
        }
        (Parsed::P256Public(key), _) => JobState::Verified(ecdsa_verify!(p256, *key, hashed, sig, p1363)),
        (Parsed::P384Public(key), _) => JobState::Verified(ecdsa_verify!(p384, *key, hashed, sig, p1363)),
        (Parsed::P256Private(key), _) => {
            let public = p256::PublicKey::from_sec1_bytes(key.public_key().to_encoded_point(false).as_bytes()).map_err(bad_key)?;
            JobState::Verified(ecdsa_verify!(p256, public, hashed, sig, p1363))
        }
        (Parsed::P384Private(key), _) => {
            let public = p384::PublicKey::from_sec1_bytes(key.public_key().to_encoded_point(false).as_bytes()).map_err(bad_key)?;
            JobState::Verified(ecdsa_verify!(p384, public, hashed, sig, p1363))
        }
        _ => return Err(bad_key("unsupported key")),
    };
    Ok(Job(RefCell::new(Some(state))))
}

/// Runs a job for one slice: null while it is not done, then the signature
/// (a new guest buffer) or the verdict.
#[op2]
pub fn op_wt_job_run<'s>(scope: &mut v8::PinScope<'s, '_>, #[cppgc] job: &Job) -> Result<v8::Local<'s, v8::Value>, JsErrorBox> {
    if super::stopping() {
        return Ok(v8::null(scope).into());
    }
    let deadline = Deadline::start();
    let mut slot = job.0.borrow_mut();
    let state = slot.take().ok_or_else(|| JsErrorBox::generic("signature job already finished"))?;
    let state = match state {
        JobState::Sign(mut s) => match s.run(&deadline)? {
            Some(sig) => JobState::Signed(sig),
            None => JobState::Sign(s),
        },
        JobState::Verify(mut v) => match v.pow.run(&deadline) {
            Some(m) => {
                let ok = if v.pss {
                    let em_len = (v.mod_bits - 1).div_ceil(8);
                    pss_verify(v.alg, &v.hashed, to_len(&m, em_len).as_deref(), v.mod_bits, v.salt_len)
                } else {
                    pkcs1_encode(v.alg, &v.hashed, v.k).ok().is_some_and(|em| to_len(&m, v.k).is_some_and(|got| got == em))
                };
                JobState::Verified(ok)
            }
            None => JobState::Verify(v),
        },
        done => done,
    };
    match state {
        JobState::Signed(sig) => {
            let budget = super::budget(scope);
            Ok(crate::engine::alloc::guest_bytes(scope, &budget, sig.len(), |out| out.copy_from_slice(&sig))?.into())
        }
        JobState::Verified(ok) => Ok(v8::Boolean::new(scope, ok).into()),
        running => {
            *slot = Some(running);
            Ok(v8::null(scope).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modpow_in_slices_matches_one_piece_arithmetic() {
        for bits in [64usize, 512, 1024] {
            let mut bytes = vec![0xa5u8; bits / 8];
            bytes[bits / 8 - 1] |= 1;
            let m = BigUint::from_bytes_be(&bytes);
            for e in [BigUint::from(65537u32), BigUint::from_bytes_be(&vec![0x5au8; bits / 8]), BigUint::one(), BigUint::zero()] {
                let b = BigUint::from_bytes_be(&vec![0x33u8; bits / 8 + 3]);
                let mut pow = ModPow::new(&b, &e, &m).unwrap();
                // A deadline already passed: one step a call.
                let past = Deadline::start();
                std::thread::sleep(super::super::SLICE);
                let got = loop {
                    if let Some(v) = pow.run(&past) {
                        break v;
                    }
                };
                assert_eq!(got, b.modpow(&e, &m), "{bits} bits");
            }
        }
        assert!(ModPow::new(&BigUint::one(), &BigUint::one(), &BigUint::from(10u32)).is_err());
    }

    #[test]
    fn der_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 70000] {
            let body = vec![7u8; len];
            let enc = der(0x04, &body);
            let (tag, got, rest) = tlv(&enc).unwrap();
            assert_eq!((tag, got.len(), rest.len()), (0x04, len, 0));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&[][..], &[0x30], &[0x30, 0x85, 1, 2, 3, 4, 5], &[0x30, 0x05, 1], &[0x30, 0x02, 0x30, 0x00]] {
            assert!(from_spki(bytes).is_err());
            assert!(from_pkcs8(bytes).is_err());
            assert!(from_pkcs1_private(bytes).is_err());
            assert!(spki_of_certificate(bytes).is_err());
        }
    }
}
