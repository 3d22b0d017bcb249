// Node's `crypto` built-in and the WebCrypto global (`crypto`), over the
// Rust ops of src/engine/node/crypto.rs. This file only shapes arguments
// and results (encodings, Buffers, callbacks, promises); every byte of
// cryptography happens in the ops, which check what they are given.
//
// Hash and Hmac keep their input until digest() and hash it in one op call;
// CBC ciphers emit whole blocks from update() as Node does, chaining by
// passing the last ciphertext block on; GCM ciphers buffer until final().

import { builtin, registerBuiltin, unavailableError } from "ext:webtask_runtime/node/require.js";

const core = globalThis.Deno.core;
const {
  op_wt_hash,
  op_wt_hmac,
  op_wt_pbkdf2,
  op_wt_random,
  op_wt_aes_cbc,
  op_wt_aes_gcm,
  op_wt_key_import,
  op_wt_key_from_jwk,
  op_wt_key_from_ec_point,
  op_wt_sign,
  op_wt_verify,
} = core.ops;
const {
  ArrayBufferIsView,
  ArrayBuffer: ArrayBufferCtor,
  ArrayPrototypePush,
  Error: ErrorCtor,
  MathFloor,
  NumberIsSafeInteger,
  ObjectFreeze,
  Promise: PromiseCtor,
  PromiseResolve,
  PromiseReject,
  StringPrototypeToLowerCase,
  StringPrototypeToUpperCase,
  TypeError: TypeErrorCtor,
  RangeError: RangeErrorCtor,
  Uint8Array: Uint8ArrayCtor,
} = globalThis.__bootstrap.primordials;
const nativeQueueMicrotask = globalThis.queueMicrotask;

let BufferCtor;
function Buffer() {
  return BufferCtor ??= builtin("buffer").Buffer;
}

// A copy of toBytes(data): what update() keeps must not change when the
// caller reuses its buffer before digest(), as in Node.
function copyBytes(data, encoding) {
  return new Uint8ArrayCtor(toBytes(data, encoding));
}

// Bytes of a string (in `encoding`), Buffer, TypedArray, DataView or ArrayBuffer.
function toBytes(data, encoding, what = "data") {
  if (typeof data === "string") return Buffer().from(data, encoding ?? "utf8");
  if (ArrayBufferIsView(data)) return new Uint8ArrayCtor(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof ArrayBufferCtor) return new Uint8ArrayCtor(data);
  if (data instanceof KeyObject) return data.export();
  const err = new TypeErrorCtor(
    `The "${what}" argument must be of type string or an instance of Buffer, TypedArray, or DataView.`,
  );
  err.code = "ERR_INVALID_ARG_TYPE";
  throw err;
}

function output(bytes, encoding) {
  const buf = Buffer().from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return encoding === undefined || encoding === "buffer" ? buf : buf.toString(encoding);
}

function concat(chunks) {
  if (chunks.length === 1) return chunks[0];
  return Buffer().concat(chunks);
}

const HASHES = ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"];

function checkDigest(name) {
  if (typeof name !== "string") {
    throw new TypeErrorCtor('The "algorithm" argument must be of type string');
  }
  const n = StringPrototypeToLowerCase(name);
  for (let i = 0; i < HASHES.length; i++) {
    if (HASHES[i] === n || "rsa-" + HASHES[i] === n) return HASHES[i];
  }
  if (n === "sha-1" || n === "sha-256" || n === "sha-384" || n === "sha-512") return "sha" + n.slice(4);
  const err = new ErrorCtor("Digest method not supported");
  err.code = "ERR_OSSL_EVP_UNSUPPORTED";
  throw err;
}

class Hash {
  #alg;
  #chunks = [];
  #done = false;
  constructor(algorithm) {
    this.#alg = checkDigest(algorithm);
  }
  update(data, encoding) {
    if (this.#done) {
      const err = new ErrorCtor("Digest already called");
      err.code = "ERR_CRYPTO_HASH_FINALIZED";
      throw err;
    }
    ArrayPrototypePush(this.#chunks, copyBytes(data, encoding));
    return this;
  }
  digest(encoding) {
    if (this.#done) {
      const err = new ErrorCtor("Digest already called");
      err.code = "ERR_CRYPTO_HASH_FINALIZED";
      throw err;
    }
    this.#done = true;
    return output(op_wt_hash(this.#alg, concat(this.#chunks)), encoding);
  }
  copy() {
    const h = new Hash(this.#alg);
    for (let i = 0; i < this.#chunks.length; i++) h.update(this.#chunks[i]);
    return h;
  }
}

class Hmac {
  #alg;
  #key;
  #chunks = [];
  #done = false;
  constructor(algorithm, key) {
    this.#alg = checkDigest(algorithm);
    this.#key = Buffer().from(toBytes(key, "utf8", "key"));
  }
  update(data, encoding) {
    if (this.#done) throw new ErrorCtor("Digest already called");
    ArrayPrototypePush(this.#chunks, copyBytes(data, encoding));
    return this;
  }
  digest(encoding) {
    if (this.#done) throw new ErrorCtor("Digest already called");
    this.#done = true;
    return output(op_wt_hmac(this.#alg, this.#key, concat(this.#chunks)), encoding);
  }
}

// ---------------------------------------------------------------------------
// Random.
// ---------------------------------------------------------------------------

function fillRandom(view) {
  const bytes = new Uint8ArrayCtor(view.buffer, view.byteOffset, view.byteLength);
  for (let at = 0; at < bytes.length; at += 65536) {
    const end = at + 65536 < bytes.length ? at + 65536 : bytes.length;
    op_wt_random(bytes.subarray(at, end));
  }
  return view;
}

function checkSize(size) {
  if (typeof size !== "number" || !(size >= 0) || size > 2 ** 31 - 1 || MathFloor(size) !== size) {
    const err = new RangeErrorCtor(`The value of "size" is out of range. It must be >= 0 && <= 2147483647. Received ${size}`);
    err.code = "ERR_OUT_OF_RANGE";
    throw err;
  }
}

function randomBytes(size, callback) {
  checkSize(size);
  const buf = fillRandom(Buffer().alloc(size));
  if (typeof callback === "function") {
    nativeQueueMicrotask(() => callback(null, buf));
    return;
  }
  return buf;
}

function randomFillSync(buf, offset = 0, size) {
  const view = new Uint8ArrayCtor(buf.buffer ?? buf, buf.byteOffset ?? 0, buf.byteLength);
  const end = size === undefined ? view.length : offset + size;
  fillRandom(view.subarray(offset, end));
  return buf;
}

function randomFill(buf, offset, size, callback) {
  if (typeof offset === "function") [callback, offset, size] = [offset, 0, undefined];
  else if (typeof size === "function") [callback, size] = [size, undefined];
  randomFillSync(buf, offset, size);
  nativeQueueMicrotask(() => callback(null, buf));
}

const HEX = [];
for (let i = 0; i < 256; i++) ArrayPrototypePush(HEX, (i < 16 ? "0" : "") + i.toString(16));

function randomUUID() {
  const b = fillRandom(new Uint8ArrayCtor(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  let s = "";
  for (let i = 0; i < 16; i++) {
    s += HEX[b[i]];
    if (i === 3 || i === 5 || i === 7 || i === 9) s += "-";
  }
  return s;
}

function randomInt(min, max, callback) {
  if (typeof max !== "number") [callback, max, min] = [max, min, 0];
  if (!NumberIsSafeInteger(min) || !NumberIsSafeInteger(max) || max <= min) {
    throw new RangeErrorCtor(`The value of "max" is out of range. It must be greater than the value of "min" (${min}). Received ${max}`);
  }
  const range = max - min;
  if (range > 2 ** 48 - 1) {
    const err = new RangeErrorCtor(`The value of "max - min" is out of range. It must be <= 281474976710655. Received ${range}`);
    err.code = "ERR_OUT_OF_RANGE";
    throw err;
  }
  // Rejection sampling over 48 bits, as Node does.
  const limit = 2 ** 48 - (2 ** 48 % range);
  let x;
  do {
    const b = fillRandom(new Uint8ArrayCtor(6));
    x = b[0] * 2 ** 40 + b[1] * 2 ** 32 + b[2] * 2 ** 24 + b[3] * 2 ** 16 + b[4] * 2 ** 8 + b[5];
  } while (x >= limit);
  const n = min + (x % range);
  if (typeof callback === "function") {
    nativeQueueMicrotask(() => callback(null, n));
    return;
  }
  return n;
}

function timingSafeEqual(a, b) {
  // Buffers only: Node refuses strings here.
  for (const [v, what] of [[a, "buf1"], [b, "buf2"]]) {
    if (!ArrayBufferIsView(v) && !(v instanceof ArrayBufferCtor)) toBytes({}, undefined, what);
  }
  const x = toBytes(a, undefined, "buf1");
  const y = toBytes(b, undefined, "buf2");
  if (x.byteLength !== y.byteLength) {
    const err = new RangeErrorCtor("Input buffers must have the same byte length");
    err.code = "ERR_CRYPTO_TIMING_SAFE_EQUAL_LENGTH";
    throw err;
  }
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i] ^ y[i];
  return diff === 0;
}

// ---------------------------------------------------------------------------
// PBKDF2.
// ---------------------------------------------------------------------------

function pbkdf2Sync(password, salt, iterations, keylen, digest) {
  const alg = checkDigest(digest);
  return output(op_wt_pbkdf2(alg, toBytes(password, "utf8", "password"), toBytes(salt, "utf8", "salt"), iterations, keylen));
}

function pbkdf2(password, salt, iterations, keylen, digest, callback) {
  if (typeof digest === "function") {
    throw new TypeErrorCtor('The "digest" argument must be of type string');
  }
  if (typeof callback !== "function") {
    throw new TypeErrorCtor('The "callback" argument must be of type function');
  }
  const key = pbkdf2Sync(password, salt, iterations, keylen, digest);
  nativeQueueMicrotask(() => callback(null, key));
}

// ---------------------------------------------------------------------------
// Ciphers: aes-{128,192,256}-cbc and aes-{128,256}-gcm.
// ---------------------------------------------------------------------------

const CIPHERS = {
  __proto__: null,
  "aes-128-cbc": { mode: "cbc", key: 16 },
  "aes-192-cbc": { mode: "cbc", key: 24 },
  "aes-256-cbc": { mode: "cbc", key: 32 },
  "aes-128-gcm": { mode: "gcm", key: 16 },
  "aes-256-gcm": { mode: "gcm", key: 32 },
};

class Cipheriv {
  #decoder;
  #encrypt;
  #mode;
  #key;
  #iv;
  #pending;
  #pad = true;
  #done = false;
  #aad;
  #tag;
  constructor(encrypt, algorithm, key, iv) {
    const spec = typeof algorithm === "string" ? CIPHERS[StringPrototypeToLowerCase(algorithm)] : undefined;
    if (spec === undefined) {
      const err = new ErrorCtor("Unknown cipher");
      err.code = "ERR_CRYPTO_UNKNOWN_CIPHER";
      throw err;
    }
    this.#encrypt = encrypt;
    this.#mode = spec.mode;
    this.#key = Buffer().from(toBytes(key, "utf8", "key"));
    if (this.#key.length !== spec.key) {
      const err = new RangeErrorCtor("Invalid key length");
      err.code = "ERR_CRYPTO_INVALID_KEYLEN";
      throw err;
    }
    this.#iv = Buffer().from(toBytes(iv, "utf8", "iv"));
    if (spec.mode === "cbc" ? this.#iv.length !== 16 : this.#iv.length !== 12) {
      const err = new TypeErrorCtor("Invalid initialization vector");
      err.code = "ERR_CRYPTO_INVALID_IV";
      throw err;
    }
    this.#pending = Buffer().alloc(0);
    this.#aad = Buffer().alloc(0);
  }
  #check() {
    if (this.#done) {
      const err = new ErrorCtor("Unsupported state");
      err.code = "ERR_CRYPTO_INVALID_STATE";
      throw err;
    }
  }
  update(data, inputEncoding, outputEncoding) {
    this.#check();
    const input = toBytes(data, inputEncoding);
    const all = Buffer().concat([this.#pending, input]);
    if (this.#mode === "gcm") {
      this.#pending = all;
      return this.#output(new Uint8ArrayCtor(0), outputEncoding);
    }
    // Whole blocks now; a decipher keeps its last block for final()'s unpadding.
    let n = all.length - (all.length % 16);
    if (!this.#encrypt && n === all.length && n > 0 && this.#pad) n -= 16;
    if (n === 0) {
      this.#pending = all;
      return this.#output(new Uint8ArrayCtor(0), outputEncoding);
    }
    const blocks = all.subarray(0, n);
    const out = op_wt_aes_cbc(this.#key, this.#iv, blocks, this.#encrypt, false);
    this.#iv = Buffer().from(this.#encrypt ? out.subarray(n - 16) : blocks.subarray(n - 16));
    this.#pending = Buffer().from(all.subarray(n));
    return this.#output(out, outputEncoding);
  }
  // Strings out of update()/final() go through one StringDecoder, as in
  // Node, so base64 and utf8 pieces concatenate into the whole.
  #output(bytes, encoding) {
    if (encoding === undefined || encoding === null || encoding === "buffer") return output(bytes);
    this.#decoder ??= new (builtin("string_decoder").StringDecoder)(encoding);
    return this.#decoder.write(output(bytes));
  }
  #final(bytes, encoding) {
    if (encoding === undefined || encoding === null || encoding === "buffer") return output(bytes);
    this.#decoder ??= new (builtin("string_decoder").StringDecoder)(encoding);
    return this.#decoder.write(output(bytes)) + this.#decoder.end();
  }
  final(outputEncoding) {
    this.#check();
    this.#done = true;
    if (this.#mode === "gcm") {
      if (this.#encrypt) {
        const out = op_wt_aes_gcm(this.#key, this.#iv, this.#pending, this.#aad, new Uint8ArrayCtor(0), true);
        this.#tag = Buffer().from(out.subarray(out.length - 16));
        return this.#final(out.subarray(0, out.length - 16), outputEncoding);
      }
      if (this.#tag === undefined) throw new ErrorCtor("Unsupported state or unable to authenticate data");
      return this.#final(op_wt_aes_gcm(this.#key, this.#iv, this.#pending, this.#aad, this.#tag, false), outputEncoding);
    }
    if (!this.#pad && this.#pending.length % 16 !== 0) {
      const err = new ErrorCtor("wrong final block length");
      err.code = "ERR_OSSL_WRONG_FINAL_BLOCK_LENGTH";
      throw err;
    }
    if (!this.#encrypt && this.#pad && this.#pending.length !== 16) {
      const err = new ErrorCtor("wrong final block length");
      err.code = "ERR_OSSL_WRONG_FINAL_BLOCK_LENGTH";
      throw err;
    }
    return this.#final(op_wt_aes_cbc(this.#key, this.#iv, this.#pending, this.#encrypt, this.#pad), outputEncoding);
  }
  setAutoPadding(pad = true) {
    this.#pad = !!pad;
    return this;
  }
  setAAD(aad) {
    if (this.#mode !== "gcm") throw new ErrorCtor("Unsupported state");
    this.#aad = Buffer().from(toBytes(aad, "utf8", "buffer"));
    return this;
  }
  getAuthTag() {
    if (this.#mode !== "gcm" || !this.#encrypt || this.#tag === undefined) {
      const err = new ErrorCtor("Invalid state for operation getAuthTag");
      err.code = "ERR_CRYPTO_INVALID_STATE";
      throw err;
    }
    return this.#tag;
  }
  setAuthTag(tag) {
    if (this.#mode !== "gcm" || this.#encrypt) {
      const err = new ErrorCtor("Invalid state for operation setAuthTag");
      err.code = "ERR_CRYPTO_INVALID_STATE";
      throw err;
    }
    this.#tag = Buffer().from(toBytes(tag, "utf8", "buffer"));
    return this;
  }
}

// ---------------------------------------------------------------------------
// KeyObject: secret keys (jsonwebtoken 9 builds them for HMAC secrets) and
// RSA/EC public and private keys (parsed and used by the ops in keys.rs).
// ---------------------------------------------------------------------------

const KEY = Symbol("key");

class KeyObject {
  constructor(type, material) {
    if (type !== "secret" && type !== "public" && type !== "private") {
      throw new TypeErrorCtor(`The argument 'type' is invalid. Received ${type}`);
    }
    this[KEY] = { type, material };
  }
  get type() {
    return this[KEY].type;
  }
  get symmetricKeySize() {
    return this[KEY].type === "secret" ? this[KEY].material.length : undefined;
  }
  get asymmetricKeyType() {
    return this[KEY].type === "secret" ? undefined : this[KEY].material.keyType;
  }
  get asymmetricKeyDetails() {
    const m = this[KEY].material;
    if (this[KEY].type === "secret") return undefined;
    return m.keyType === "rsa" ? { modulusLength: m.bits, publicExponent: 65537n } : { namedCurve: m.curve };
  }
  export(options) {
    const { type, material } = this[KEY];
    if (type === "secret") return Buffer().from(material);
    const format = options?.format ?? "pem";
    if (format === "jwk") throw unavailableError("KeyObject.export({ format: 'jwk' })");
    if (type === "public" && options?.type && options.type !== "spki") {
      throw unavailableError(`exporting a public key as ${options.type} (spki is)`);
    }
    if (type === "private" && options?.type && options.type !== material.encoding) {
      throw unavailableError(`exporting this private key as ${options.type} (${material.encoding} is)`);
    }
    const der = Buffer().from(material.der);
    if (format === "der") return der;
    const label = type === "public" ? "PUBLIC KEY" : material.encoding === "pkcs1" ? "RSA PRIVATE KEY" : "PRIVATE KEY";
    const b64 = der.toString("base64");
    let body = "";
    for (let i = 0; i < b64.length; i += 64) body += b64.slice(i, i + 64) + "\n";
    return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`;
  }
  equals(other) {
    if (!(other instanceof KeyObject) || other.type !== this.type) return false;
    const a = this.type === "secret" ? this[KEY].material : this[KEY].material.der;
    const b = other.type === "secret" ? other[KEY].material : other[KEY].material.der;
    return timingSafeEqualSafe(Buffer().from(a), Buffer().from(b));
  }
}

function timingSafeEqualSafe(a, b) {
  return a.length === b.length && timingSafeEqual(a, b);
}

function createSecretKey(key, encoding) {
  return new KeyObject("secret", Buffer().from(toBytes(key, encoding, "key")));
}

// `key` as Node takes it: PEM text or bytes, { key, format, type }, a JWK
// ({ key, format: 'jwk' }), or a KeyObject.
function parseKey(want, input) {
  if (input instanceof KeyObject) {
    if (input.type === want) return input;
    if (input.type === "private" && want === "public") {
      throw unavailableError("deriving a public key from a private key");
    }
    throw new TypeErrorCtor(`Invalid key object type ${input.type}, expected ${want}.`);
  }
  let key = input;
  let format = "pem";
  let type = "";
  if (input !== null && typeof input === "object" && !ArrayBufferIsView(input) && !(input instanceof ArrayBufferCtor)) {
    if (input.key instanceof KeyObject) return parseKey(want, input.key);
    key = input.key;
    format = input.format ?? "pem";
    type = input.type ?? "";
    if (input.passphrase !== undefined) throw unavailableError("encrypted private keys");
  }
  if (format === "jwk") {
    if (want === "private") throw unavailableError("private keys as JWK");
    return new KeyObject("public", op_wt_key_from_jwk(key));
  }
  const bytes = typeof key === "string" ? Buffer().from(key, "utf8") : toBytes(key, undefined, "key");
  return new KeyObject(want, op_wt_key_import(want, format, type, bytes));
}

function createPublicKey(key) {
  return parseKey("public", key);
}

function createPrivateKey(key) {
  return parseKey("private", key);
}

const RSA_PKCS1_PADDING = 1;
const RSA_PKCS1_PSS_PADDING = 6;

// [KeyObject, pss, p1363] of a sign/verify key argument.
function signingKey(want, key) {
  const options = key !== null && typeof key === "object" && !(key instanceof KeyObject) && !ArrayBufferIsView(key) ? key : {};
  const k = parseKey(want, key);
  if (k.type === "secret") throw new TypeErrorCtor("Invalid key object type secret, expected " + want + ".");
  return [k, options.padding === RSA_PKCS1_PSS_PADDING, options.dsaEncoding === "ieee-p1363"];
}

function signWith(digest, data, key) {
  const [k, pss, p1363] = signingKey("private", key);
  return Buffer().from(op_wt_sign(k[KEY].material, digest, pss, p1363, data));
}

function verifyWith(digest, data, key, signature) {
  const [k, pss, p1363] = signingKey("public", key);
  return op_wt_verify(k[KEY].material, digest, pss, p1363, data, signature);
}

// Sign and Verify collect their input, like Hash.
class Sign {
  #digest;
  #chunks = [];
  constructor(algorithm) {
    this.#digest = checkDigest(algorithm);
  }
  update(data, encoding) {
    ArrayPrototypePush(this.#chunks, copyBytes(data, encoding));
    return this;
  }
  sign(key, encoding) {
    const sig = signWith(this.#digest, concat(this.#chunks), key);
    return encoding === undefined || encoding === "buffer" ? sig : sig.toString(encoding);
  }
}

class Verify {
  #digest;
  #chunks = [];
  constructor(algorithm) {
    this.#digest = checkDigest(algorithm);
  }
  update(data, encoding) {
    ArrayPrototypePush(this.#chunks, copyBytes(data, encoding));
    return this;
  }
  verify(key, signature, encoding) {
    return verifyWith(this.#digest, concat(this.#chunks), key, toBytes(signature, encoding === "buffer" ? undefined : encoding, "signature"));
  }
}

function oneShot(algorithm) {
  // Node accepts null/undefined for EC keys (the key decides); SHA-256 then.
  return algorithm === null || algorithm === undefined ? "sha256" : checkDigest(algorithm);
}

function cryptoSign(algorithm, data, key, callback) {
  const sig = signWith(oneShot(algorithm), toBytes(data), key);
  if (typeof callback === "function") {
    nativeQueueMicrotask(() => callback(null, sig));
    return;
  }
  return sig;
}

function cryptoVerify(algorithm, data, key, signature, callback) {
  const ok = verifyWith(oneShot(algorithm), toBytes(data), key, toBytes(signature, undefined, "signature"));
  if (typeof callback === "function") {
    nativeQueueMicrotask(() => callback(null, ok));
    return;
  }
  return ok;
}

// ---------------------------------------------------------------------------
// WebCrypto: getRandomValues, randomUUID, subtle.digest and HMAC.
// ---------------------------------------------------------------------------

function domError(message, name) {
  const err = new ErrorCtor(message);
  err.name = name;
  return err;
}

function getRandomValues(view) {
  if (!ArrayBufferIsView(view) || view instanceof globalThis.Float32Array || view instanceof globalThis.Float64Array ||
      view instanceof globalThis.DataView) {
    throw domError("The provided ArrayBufferView is not an integer array type", "TypeMismatchError");
  }
  if (view.byteLength > 65536) {
    throw domError(
      `The ArrayBufferView's byte length (${view.byteLength}) exceeds the number of bytes of entropy available via this API (65536)`,
      "QuotaExceededError",
    );
  }
  return fillRandom(view);
}

function algorithmName(alg) {
  const name = typeof alg === "string" ? alg : alg && alg.name;
  if (typeof name !== "string") throw new TypeErrorCtor("Algorithm: name is required");
  return StringPrototypeToUpperCase(name);
}

function subtleHash(alg) {
  const name = algorithmName(alg);
  if (name === "SHA-1" || name === "SHA-256" || name === "SHA-384" || name === "SHA-512") return name;
  throw domError(`Unrecognized algorithm name: ${name}`, "NotSupportedError");
}

function arrayBufferOf(bytes) {
  const out = new ArrayBufferCtor(bytes.byteLength);
  new Uint8ArrayCtor(out).set(bytes);
  return out;
}

// A WebCrypto key: the secret bytes (HMAC) or the parsed key (RSA, EC) stay
// in a private field.
class CryptoKey {
  #material;
  constructor(type, material, algorithm, extractable, usages) {
    this.#material = material;
    this.type = type;
    this.algorithm = algorithm;
    this.extractable = extractable;
    this.usages = usages;
    ObjectFreeze(this);
  }
  static materialOf(key) {
    return key.#material;
  }
}

function asyncly(fn) {
  return (...args) => {
    try {
      return PromiseResolve(fn(...args));
    } catch (e) {
      return PromiseReject(e);
    }
  };
}

function usableKey(key, name, usage) {
  if (!(key instanceof CryptoKey) || key.algorithm.name !== name) {
    throw domError(`The key is not a ${name} key`, "InvalidAccessError");
  }
  if (!key.usages.includes(usage)) {
    throw domError(`The key does not support the '${usage}' operation`, "InvalidAccessError");
  }
  return key;
}

function base64UrlDecode(s) {
  return Buffer().from(String(s), "base64");
}

const ASYMMETRIC = { __proto__: null, "RSASSA-PKCS1-V1_5": "RSASSA-PKCS1-v1_5", "RSA-PSS": "RSA-PSS", ECDSA: "ECDSA" };
const CURVES = { __proto__: null, prime256v1: "P-256", secp384r1: "P-384" };

function importAsymmetric(format, keyData, algorithm, name, extractable, usages) {
  let material;
  if (format === "spki") material = op_wt_key_import("public", "der", "spki", toBytes(keyData));
  else if (format === "pkcs8") material = op_wt_key_import("private", "der", "pkcs8", toBytes(keyData));
  else if (format === "jwk") {
    if (keyData === null || typeof keyData !== "object") throw domError("JWK must be an object", "DataError");
    if (keyData.d !== undefined) throw domError("private JWKs are not supported by webtask yet", "NotSupportedError");
    material = op_wt_key_from_jwk(keyData);
  } else if (format === "raw" && name === "ECDSA") {
    material = op_wt_key_from_ec_point(algorithm.namedCurve, toBytes(keyData));
  } else throw domError(`Unsupported key format: ${format}`, "NotSupportedError");
  const isEc = name === "ECDSA";
  if (isEc !== (material.keyType === "ec")) throw domError("The key does not match the algorithm", "DataError");
  const alg = { name };
  if (isEc) {
    alg.namedCurve = CURVES[material.curve];
    if (algorithm.namedCurve !== undefined && algorithm.namedCurve !== alg.namedCurve) {
      throw domError("The key's curve does not match namedCurve", "DataError");
    }
  } else {
    alg.hash = { name: subtleHash(algorithm.hash) };
    alg.modulusLength = material.bits;
    alg.publicExponent = new Uint8ArrayCtor([1, 0, 1]);
  }
  return new CryptoKey(material.kind, material, alg, !!extractable, [...usages]);
}

// [digest, pss, p1363] of a sign/verify algorithm for `key`.
function asymmetricParams(algorithm, key) {
  const name = ASYMMETRIC[algorithmName(algorithm)];
  if (name === "ECDSA") return [subtleHash(algorithm.hash), false, true];
  if (name === "RSA-PSS") {
    const saltLength = algorithm.saltLength;
    const hashBytes = { "SHA-256": 32, "SHA-384": 48, "SHA-512": 64 }[key.algorithm.hash.name];
    if (saltLength !== hashBytes) {
      throw domError("webtask supports RSA-PSS with a salt as long as the hash only", "NotSupportedError");
    }
    return [key.algorithm.hash.name, true, false];
  }
  return [key.algorithm.hash.name, false, false];
}

const subtle = {
  digest: asyncly((algorithm, data) => {
    const name = subtleHash(algorithm);
    return arrayBufferOf(op_wt_hash(name, toBytes(data)));
  }),
  importKey: asyncly((format, keyData, algorithm, extractable, usages) => {
    const name = algorithmName(algorithm);
    if (ASYMMETRIC[name] !== undefined) {
      return importAsymmetric(format, keyData, algorithm, ASYMMETRIC[name], extractable, usages);
    }
    if (name !== "HMAC") {
      throw domError(`importKey: ${name} keys are not supported by webtask`, "NotSupportedError");
    }
    const hash = subtleHash(algorithm.hash);
    let bytes;
    if (format === "raw") bytes = Buffer().from(toBytes(keyData));
    else if (format === "jwk") {
      if (keyData === null || typeof keyData !== "object" || keyData.kty !== "oct") {
        throw domError("JWK kty must be 'oct' for HMAC", "DataError");
      }
      bytes = base64UrlDecode(keyData.k);
    } else throw domError(`Unsupported key format: ${format}`, "NotSupportedError");
    return new CryptoKey("secret", bytes, { name: "HMAC", hash: { name: hash }, length: bytes.length * 8 }, !!extractable, [
      ...usages,
    ]);
  }),
  exportKey: asyncly((format, key) => {
    if (!(key instanceof CryptoKey)) throw new TypeErrorCtor("key is not a CryptoKey");
    if (!key.extractable) throw domError("key is not extractable", "InvalidAccessError");
    const material = CryptoKey.materialOf(key);
    if (key.type !== "secret") {
      if ((format === "spki" && key.type === "public") || (format === "pkcs8" && material.encoding === "pkcs8")) {
        return arrayBufferOf(material.der);
      }
      throw domError(`Unsupported key format: ${format}`, "NotSupportedError");
    }
    if (format === "raw") return arrayBufferOf(material);
    if (format === "jwk") {
      const k = material.toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
      return { kty: "oct", k, alg: "HS" + key.algorithm.hash.name.slice(4), ext: true, key_ops: [...key.usages] };
    }
    throw domError(`Unsupported key format: ${format}`, "NotSupportedError");
  }),
  sign: asyncly((algorithm, key, data) => {
    const name = algorithmName(algorithm);
    if (ASYMMETRIC[name] !== undefined) {
      const k = usableKey(key, ASYMMETRIC[name], "sign");
      const [digest, pss, p1363] = asymmetricParams(algorithm, k);
      return arrayBufferOf(op_wt_sign(CryptoKey.materialOf(k), digest, pss, p1363, toBytes(data)));
    }
    if (name !== "HMAC") throw domError(`sign: ${name} is not supported by webtask`, "NotSupportedError");
    const k = usableKey(key, "HMAC", "sign");
    return arrayBufferOf(op_wt_hmac(k.algorithm.hash.name, CryptoKey.materialOf(k), toBytes(data)));
  }),
  verify: asyncly((algorithm, key, signature, data) => {
    const name = algorithmName(algorithm);
    if (ASYMMETRIC[name] !== undefined) {
      const k = usableKey(key, ASYMMETRIC[name], "verify");
      const [digest, pss, p1363] = asymmetricParams(algorithm, k);
      return op_wt_verify(CryptoKey.materialOf(k), digest, pss, p1363, toBytes(data), toBytes(signature));
    }
    if (name !== "HMAC") throw domError(`verify: ${name} is not supported by webtask`, "NotSupportedError");
    const k = usableKey(key, "HMAC", "verify");
    const mac = op_wt_hmac(k.algorithm.hash.name, CryptoKey.materialOf(k), toBytes(data));
    return timingSafeEqualSafe(mac, toBytes(signature));
  }),
};

export const webcrypto = {
  getRandomValues,
  randomUUID,
  subtle,
  CryptoKey,
};

// The parts of Node's crypto webtask does not offer: present (libraries
// promisify them at load), throwing a clear error when called.
const ABSENT = [
  "createDiffieHellman", "createDiffieHellmanGroup", "createECDH", "diffieHellman", "generateKey", "generateKeyPair",
  "generateKeyPairSync", "generateKeySync", "generatePrime", "generatePrimeSync", "getDiffieHellman", "hkdf", "hkdfSync",
  "privateDecrypt", "privateEncrypt", "publicDecrypt", "publicEncrypt", "scrypt", "scryptSync",
  "X509Certificate", "checkPrime", "checkPrimeSync",
];

function createCrypto() {
  const absent = {};
  for (let i = 0; i < ABSENT.length; i++) {
    const name = ABSENT[i];
    absent[name] = function () {
      throw unavailableError(`crypto.${name}`);
    };
  }
  return {
    ...absent,
    createHash: (algorithm) => new Hash(algorithm),
    createHmac: (algorithm, key) => new Hmac(algorithm, key),
    Hash,
    Hmac,
    randomBytes,
    pseudoRandomBytes: randomBytes,
    randomFillSync,
    randomFill,
    randomUUID,
    randomInt,
    getRandomValues,
    timingSafeEqual,
    pbkdf2,
    pbkdf2Sync,
    createCipheriv: (algorithm, key, iv) => new Cipheriv(true, algorithm, key, iv),
    createDecipheriv: (algorithm, key, iv) => new Cipheriv(false, algorithm, key, iv),
    createCipher() {
      throw unavailableError("crypto.createCipher (deprecated, insecure key derivation; use createCipheriv)");
    },
    createDecipher() {
      throw unavailableError("crypto.createDecipher (deprecated, insecure key derivation; use createDecipheriv)");
    },
    createSecretKey,
    createPrivateKey,
    createPublicKey,
    createSign: (algorithm) => new Sign(algorithm),
    createVerify: (algorithm) => new Verify(algorithm),
    Sign,
    Verify,
    sign: cryptoSign,
    verify: cryptoVerify,
    KeyObject,
    getHashes: () => [...HASHES],
    getCiphers: () => ["aes-128-cbc", "aes-128-gcm", "aes-192-cbc", "aes-256-cbc", "aes-256-gcm"],
    getCurves: () => [],
    webcrypto,
    subtle,
    constants: { RSA_PKCS1_PADDING, RSA_PKCS1_PSS_PADDING, RSA_PSS_SALTLEN_DIGEST: -1 },
  };
}

registerBuiltin("crypto", createCrypto);
