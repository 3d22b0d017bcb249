//! Asymmetric keys for Node's `crypto` (KeyObject, Sign/Verify,
//! `crypto.sign`/`verify`) and WebCrypto (RSASSA-PKCS1-v1_5, RSA-PSS and
//! ECDSA P-256/P-384): parsing PEM, DER and JWK into one canonical form
//! (SPKI for public keys, PKCS#8 or PKCS#1 for private ones), and signing
//! and verifying with ring. Only the DER needed to find a key's parts is
//! read here; ring checks the keys themselves.

use base64::Engine as _;
use deno_core::op2;
use deno_error::JsErrorBox;
use ring::signature;
use serde::{Deserialize, Serialize};

use super::{range_error, type_error};

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// A parsed key, as the shim's KeyObject and CryptoKey keep it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Key {
    /// "public" or "private".
    pub kind: String,
    /// "rsa" or "ec".
    pub key_type: String,
    /// "spki" (public), "pkcs8" or "pkcs1" (private).
    pub encoding: String,
    #[serde(with = "serde_bytes")]
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

/// Parses a key given as PEM text or DER bytes (`format` "pem" or "der",
/// `der_type` "spki", "pkcs1" or "pkcs8" for DER). A public key asked of a
/// private one is refused (Node derives it; webtask does not yet).
#[op2]
#[serde]
pub fn op_wt_key_import(
    #[string] want: &str,
    #[string] format: &str,
    #[string] der_type: &str,
    #[buffer] data: &[u8],
) -> Result<Key, JsErrorBox> {
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
                "EC PRIVATE KEY" => return Err(bad_key("SEC1 EC private keys are not supported; use PKCS#8 (BEGIN PRIVATE KEY)")),
                "ENCRYPTED PRIVATE KEY" => return Err(bad_key("encrypted private keys are not supported")),
                other => return Err(bad_key(format!("unsupported PEM type {other:?}"))),
            }
        }
        "der" => match der_type {
            "spki" => from_spki(data)?,
            "pkcs8" => from_pkcs8(data)?,
            "pkcs1" if want == "public" => from_spki(&spki_rsa(data))?,
            "pkcs1" => from_pkcs1_private(data)?,
            other => return Err(type_error(format!("The property 'options.type' is invalid. Received {other:?}"))),
        },
        other => return Err(type_error(format!("The property 'options.format' is invalid. Received {other:?}"))),
    };
    match (want, key.kind.as_str()) {
        ("public", "private") => Err(bad_key("a public key is needed; deriving one from a private key is not supported")),
        ("private", "public") => Err(bad_key("a private key is needed, this is a public key")),
        _ => Ok(key),
    }
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
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| bad_key(format!("JWK {name}: {e}")))
}

/// A public key from a JWK (RSA `n`/`e`, EC P-256/P-384 `x`/`y`).
#[op2]
#[serde]
pub fn op_wt_key_from_jwk(#[serde] jwk: Jwk) -> Result<Key, JsErrorBox> {
    match jwk.kty.as_str() {
        "RSA" => {
            let n = b64url(jwk.n.as_ref(), "n")?;
            let e = b64url(jwk.e.as_ref(), "e")?;
            let rsa = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
            from_spki(&spki_rsa(&rsa))
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
            from_spki(&spki_ec(oid, &[&[4u8][..], &x, &y].concat()))
        }
        other => Err(bad_key(format!("unsupported JWK kty {other:?}"))),
    }
}

/// A public key from a raw uncompressed EC point (WebCrypto "raw").
#[op2]
#[serde]
pub fn op_wt_key_from_ec_point(#[string] curve: &str, #[buffer] point: &[u8]) -> Result<Key, JsErrorBox> {
    let oid = match curve {
        "P-256" => OID_P256,
        "P-384" => OID_P384,
        _ => return Err(bad_key("unsupported curve (P-256 and P-384 are)")),
    };
    from_spki(&spki_ec(oid, point))
}

/// The public key of SPKI `der`: RSAPublicKey DER or an EC point.
fn spki_key_bytes(der_bytes: &[u8]) -> Result<&[u8], JsErrorBox> {
    let (seq, _) = expect(der_bytes, 0x30)?;
    let (_alg, rest) = expect(seq, 0x30)?;
    let (bits, _) = expect(rest, 0x03)?;
    bits.get(1..).ok_or_else(|| bad_key("empty key"))
}

fn digest_bits(digest: &str) -> Result<u32, JsErrorBox> {
    match super::crypto::hash_name(digest) {
        Some("sha1") => Ok(1),
        Some("sha256") => Ok(256),
        Some("sha384") => Ok(384),
        Some("sha512") => Ok(512),
        _ => Err(type_error(format!("Invalid digest: {digest}"))),
    }
}

fn verify_alg(key: &Key, digest: &str, pss: bool, p1363: bool) -> Result<&'static dyn signature::VerificationAlgorithm, JsErrorBox> {
    let bits = digest_bits(digest)?;
    Ok(match (key.key_type.as_str(), key.curve.as_str(), bits, pss, p1363) {
        ("rsa", _, 1, false, _) => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        ("rsa", _, 256, false, _) => &signature::RSA_PKCS1_2048_8192_SHA256,
        ("rsa", _, 384, false, _) => &signature::RSA_PKCS1_2048_8192_SHA384,
        ("rsa", _, 512, false, _) => &signature::RSA_PKCS1_2048_8192_SHA512,
        ("rsa", _, 256, true, _) => &signature::RSA_PSS_2048_8192_SHA256,
        ("rsa", _, 384, true, _) => &signature::RSA_PSS_2048_8192_SHA384,
        ("rsa", _, 512, true, _) => &signature::RSA_PSS_2048_8192_SHA512,
        ("ec", "prime256v1", 256, _, false) => &signature::ECDSA_P256_SHA256_ASN1,
        ("ec", "prime256v1", 384, _, false) => &signature::ECDSA_P256_SHA384_ASN1,
        ("ec", "secp384r1", 256, _, false) => &signature::ECDSA_P384_SHA256_ASN1,
        ("ec", "secp384r1", 384, _, false) => &signature::ECDSA_P384_SHA384_ASN1,
        ("ec", "prime256v1", 256, _, true) => &signature::ECDSA_P256_SHA256_FIXED,
        ("ec", "secp384r1", 384, _, true) => &signature::ECDSA_P384_SHA384_FIXED,
        _ => return Err(type_error(format!("{digest} with this {} key is not supported", key.key_type))),
    })
}

/// Verifies `sig` over `data` with public `key`: RSA PKCS#1 v1.5 or PSS
/// (`pss`), ECDSA with DER or IEEE P1363 (`p1363`) signatures. A wrong
/// signature is `false`, not an error.
#[op2]
pub fn op_wt_verify(
    #[serde] key: Key,
    #[string] digest: &str,
    pss: bool,
    p1363: bool,
    #[buffer] data: &[u8],
    #[buffer] sig: &[u8],
) -> Result<bool, JsErrorBox> {
    if key.kind != "public" {
        return Err(bad_key("verifying needs a public key"));
    }
    let alg = verify_alg(&key, digest, pss, p1363)?;
    let public = spki_key_bytes(&key.der)?;
    Ok(signature::UnparsedPublicKey::new(alg, public).verify(data, sig).is_ok())
}

/// Signs `data` with private `key` (RSA PKCS#1 v1.5 or PSS, ECDSA DER or
/// P1363).
#[op2]
#[buffer]
pub fn op_wt_sign(
    #[serde] key: Key,
    #[string] digest: &str,
    pss: bool,
    p1363: bool,
    #[buffer] data: &[u8],
) -> Result<Vec<u8>, JsErrorBox> {
    if key.kind != "private" {
        return Err(bad_key("signing needs a private key"));
    }
    let rng = ring::rand::SystemRandom::new();
    let bits = digest_bits(digest)?;
    match key.key_type.as_str() {
        "rsa" => {
            let pair = match key.encoding.as_str() {
                "pkcs1" => signature::RsaKeyPair::from_der(&key.der),
                _ => signature::RsaKeyPair::from_pkcs8(&key.der),
            }
            .map_err(bad_key)?;
            let padding: &'static dyn signature::RsaEncoding = match (bits, pss) {
                (256, false) => &signature::RSA_PKCS1_SHA256,
                (384, false) => &signature::RSA_PKCS1_SHA384,
                (512, false) => &signature::RSA_PKCS1_SHA512,
                (256, true) => &signature::RSA_PSS_SHA256,
                (384, true) => &signature::RSA_PSS_SHA384,
                (512, true) => &signature::RSA_PSS_SHA512,
                _ => return Err(type_error(format!("RSA signing with {digest} is not supported"))),
            };
            let mut sig = vec![0u8; pair.public().modulus_len()];
            pair.sign(padding, &rng, data, &mut sig).map_err(|_| range_error("RSA signing failed"))?;
            Ok(sig)
        }
        "ec" => {
            let alg: &'static signature::EcdsaSigningAlgorithm = match (key.curve.as_str(), bits, p1363) {
                ("prime256v1", 256, false) => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                ("prime256v1", 256, true) => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                ("secp384r1", 384, false) => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                ("secp384r1", 384, true) => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                _ => return Err(type_error(format!("ECDSA on {} with {digest} is not supported", key.curve))),
            };
            let pair = signature::EcdsaKeyPair::from_pkcs8(alg, &key.der, &rng).map_err(bad_key)?;
            Ok(pair.sign(&rng, data).map_err(|_| range_error("ECDSA signing failed"))?.as_ref().to_vec())
        }
        other => Err(bad_key(format!("cannot sign with a {other} key"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
