// Node's `crypto` built-in and the WebCrypto global (`crypto`), over the
// Rust ops of src/engine/node/crypto.rs. This file only shapes arguments
// and results (encodings, Buffers, callbacks, promises); every byte of
// cryptography happens in the ops, which check what they are given.
//
// Work that grows with the guest's input runs in slices, each op call
// short enough for the CPU limit to stop what a guest asks (ops cannot be
// interrupted): Hash, Hmac, Sign and Verify feed a host digest as update()
// is called, and loops below call an op again until it says it is done
// (digestFeed, runJob, the PBKDF2 and AAD loops). Bulk ciphers go PIECE
// bytes a call. Outputs are buffers allocated here or by the ops through
// the isolate's allocator, so they count against its ArrayBuffer limit.
// CBC ciphers emit whole blocks from update() as Node does, chaining by
// passing the last ciphertext block on; GCM streams as in Node (update()
// returns text at once, final() checks the tag).

import {
  builtin,
  codedError,
  illegalConstructor,
  provideCryptoKey,
  received,
  registerBuiltin,
  unavailableError,
} from "ext:webtask_runtime/node/require.js";

const core = globalThis.Deno.core;
const {
  op_wt_hash_new,
  op_wt_hmac_new,
  op_wt_digest_copy,
  op_wt_digest_update,
  op_wt_digest_final,
  op_wt_pbkdf2_new,
  op_wt_pbkdf2_run,
  op_wt_random,
  op_wt_aes_cbc,
  op_wt_gcm_new,
  op_wt_gcm_aad,
  op_wt_gcm_update,
  op_wt_gcm_tag,
  op_wt_gcm_check,
  op_wt_key_import,
  op_wt_key_from_jwk,
  op_wt_key_from_ec_point,
  op_wt_key_public,
  op_wt_key_info,
  op_wt_key_der,
  op_wt_sign_start,
  op_wt_verify_start,
  op_wt_job_run,
} = core.ops;
const {
  ArrayBufferIsView,
  ArrayBuffer: ArrayBufferCtor,
  ArrayPrototypePush,
  Error: ErrorCtor,
  MathFloor,
  NumberIsSafeInteger,
  ObjectDefineProperty,
  ObjectFreeze,
  ObjectKeys,
  ObjectSetPrototypeOf,
  Promise: PromiseCtor,
  PromiseResolve,
  PromiseReject,
  String: StringCtor,
  StringPrototypeToLowerCase,
  StringPrototypeToUpperCase,
  SymbolToStringTag,
  TypeError: TypeErrorCtor,
  RangeError: RangeErrorCtor,
  TypedArrayPrototypeSubarray,
  Uint8Array: Uint8ArrayCtor,
} = globalThis.__bootstrap.primordials;
const nativeQueueMicrotask = globalThis.queueMicrotask;

let BufferCtor;
function Buffer() {
  return BufferCtor ??= builtin("buffer").Buffer;
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

// Bytes a bulk cipher op takes a call (src/engine/node/crypto.rs PIECE).
const PIECE = 256 * 1024;

// Feeds all of `bytes` to a host digest, a slice per call.
function digestFeed(state, bytes) {
  let at = 0;
  while (at < bytes.length) at = op_wt_digest_update(state, bytes, at);
}

function hashBytes(alg, bytes) {
  const h = op_wt_hash_new(alg);
  digestFeed(h, bytes);
  return op_wt_digest_final(h);
}

// An HMAC state. A key longer than any hash block is hashed first (what
// HMAC does with it anyway), here, in slices.
function hmacState(alg, key) {
  return op_wt_hmac_new(alg, key.length > 128 ? hashBytes(alg, key) : key);
}

function hmacBytes(alg, key, bytes) {
  const m = hmacState(alg, key);
  digestFeed(m, bytes);
  return op_wt_digest_final(m);
}

// Runs a signature job to its end: the signature bytes or the verdict.
function runJob(job) {
  let result;
  while ((result = op_wt_job_run(job)) === null);
  return result;
}

function finalized() {
  const err = new ErrorCtor("Digest already called");
  err.code = "ERR_CRYPTO_HASH_FINALIZED";
  return err;
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

// A host digest state Hash's constructor takes over (for copy()).
let adopted = null;

// Hash, Hmac, Sign and Verify: update() hashes at once (so later changes
// to the caller's buffer do not matter, as in Node, and nothing piles up).
// Hash and Hmac share Digest: a host digest state, fed until digest().
let digestState;
class Digest {
  #state;
  static {
    // For Hash#copy, without a method that would hand guests the handle.
    digestState = (d) => d.#state;
  }
  constructor(state) {
    this.#state = state;
  }
  update(data, encoding) {
    if (this.#state === null) throw finalized();
    digestFeed(this.#state, toBytes(data, encoding));
    return this;
  }
  digest(encoding) {
    if (this.#state === null) throw finalized();
    const state = this.#state;
    this.#state = null;
    return output(op_wt_digest_final(state), encoding);
  }
}

class Hash extends Digest {
  #alg;
  constructor(algorithm) {
    const alg = checkDigest(algorithm);
    super(adopted ?? op_wt_hash_new(alg));
    adopted = null;
    this.#alg = alg;
  }
  copy() {
    const state = digestState(this);
    if (state === null) throw finalized();
    adopted = op_wt_digest_copy(state);
    return new Hash(this.#alg);
  }
}

class Hmac extends Digest {
  constructor(algorithm, key) {
    super(hmacState(checkDigest(algorithm), toBytes(key, "utf8", "key")));
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

function checkInt32(value, name, min) {
  if (typeof value !== "number") {
    const err = new TypeErrorCtor(`The "${name}" argument must be of type number. Received ${typeof value}`);
    err.code = "ERR_INVALID_ARG_TYPE";
    throw err;
  }
  if (!(value >= min && value <= 2147483647) || MathFloor(value) !== value) {
    const err = new RangeErrorCtor(`The value of "${name}" is out of range. It must be >= ${min} && <= 2147483647. Received ${value}`);
    err.code = "ERR_OUT_OF_RANGE";
    throw err;
  }
}

// The password keys an HMAC, which then absorbs the salt; the op runs the
// iterations a slice at a time, writing the key into a buffer made here.
function pbkdf2Sync(password, salt, iterations, keylen, digest) {
  const pw = toBytes(password, "utf8", "password");
  const saltBytes = toBytes(salt, "utf8", "salt");
  checkInt32(iterations, "iterations", 1);
  checkInt32(keylen, "keylen", 0);
  const alg = checkDigest(digest);
  const prf = hmacState(alg, pw);
  const salted = op_wt_digest_copy(prf);
  digestFeed(salted, saltBytes);
  const run = op_wt_pbkdf2_new(prf, salted, iterations);
  const key = Buffer().alloc(keylen);
  while (!op_wt_pbkdf2_run(run, key));
  return key;
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
// Ciphers: aes-{128,192,256}-cbc and aes-{128,192,256}-gcm.
// ---------------------------------------------------------------------------

const CIPHERS = {
  __proto__: null,
  "aes-128-cbc": { mode: "cbc", key: 16 },
  "aes-192-cbc": { mode: "cbc", key: 24 },
  "aes-256-cbc": { mode: "cbc", key: 32 },
  "aes-128-gcm": { mode: "gcm", key: 16 },
  "aes-192-gcm": { mode: "gcm", key: 24 },
  "aes-256-gcm": { mode: "gcm", key: 32 },
};

function cipherError(Ctor, message, code) {
  const err = new Ctor(message);
  if (code !== undefined) err.code = code;
  return err;
}

// GCM tag lengths Node (OpenSSL) takes.
function checkTagLength(n) {
  if (n !== 4 && n !== 8 && !(n >= 12 && n <= 16 && MathFloor(n) === n)) {
    throw cipherError(TypeErrorCtor, `Invalid authentication tag length: ${n}`, "ERR_CRYPTO_INVALID_AUTH_TAG");
  }
}

function invalidState(op) {
  return cipherError(ErrorCtor, `Invalid state for operation ${op}`, "ERR_CRYPTO_INVALID_STATE");
}

const EMPTY = new Uint8ArrayCtor(0);

class Cipheriv {
  #decoder;
  #encrypt;
  #mode;
  #key;
  #iv;
  #pending;
  #pad = true;
  #done = false;
  // GCM: the host state, the tag length asked for, the tag, text seen.
  #gcm;
  #tagLength;
  #tag;
  #started = false;
  constructor(encrypt, algorithm, key, iv, options) {
    const spec = typeof algorithm === "string" ? CIPHERS[StringPrototypeToLowerCase(algorithm)] : undefined;
    if (spec === undefined) throw cipherError(ErrorCtor, "Unknown cipher", "ERR_CRYPTO_UNKNOWN_CIPHER");
    this.#encrypt = encrypt;
    this.#mode = spec.mode;
    const keyBytes = toBytes(key, "utf8", "key");
    if (keyBytes.length !== spec.key) throw cipherError(RangeErrorCtor, "Invalid key length", "ERR_CRYPTO_INVALID_KEYLEN");
    const ivBytes = toBytes(iv, "utf8", "iv");
    // GCM takes IVs of 1 to 128 bytes, as Node (12 is the direct case).
    if (spec.mode === "cbc" ? ivBytes.length !== 16 : ivBytes.length === 0 || ivBytes.length > 128) {
      throw cipherError(TypeErrorCtor, "Invalid initialization vector", "ERR_CRYPTO_INVALID_IV");
    }
    if (spec.mode === "gcm") {
      const tagLength = options?.authTagLength;
      if (tagLength !== undefined) checkTagLength(tagLength);
      this.#tagLength = tagLength;
      this.#gcm = op_wt_gcm_new(keyBytes, ivBytes, encrypt);
    } else {
      this.#key = Buffer().from(keyBytes);
      this.#iv = Buffer().from(ivBytes);
      this.#pending = EMPTY;
    }
  }
  #check() {
    if (this.#done) throw cipherError(ErrorCtor, "Unsupported state", "ERR_CRYPTO_INVALID_STATE");
  }
  update(data, inputEncoding, outputEncoding) {
    this.#check();
    const input = toBytes(data, inputEncoding);
    if (this.#mode === "gcm") {
      this.#started = true;
      const out = new Uint8ArrayCtor(input.length);
      for (let at = 0; at < input.length; at += PIECE) {
        const end = at + PIECE < input.length ? at + PIECE : input.length;
        op_wt_gcm_update(this.#gcm, TypedArrayPrototypeSubarray(input, at, end), TypedArrayPrototypeSubarray(out, at, end));
      }
      return this.#output(out, outputEncoding);
    }
    const all = this.#pending.length === 0 ? input : Buffer().concat([this.#pending, input]);
    // Whole blocks now; a decipher keeps its last block for final()'s unpadding.
    let n = all.length - (all.length % 16);
    if (!this.#encrypt && n === all.length && n > 0 && this.#pad) n -= 16;
    if (n === 0) {
      this.#pending = Buffer().from(all);
      return this.#output(EMPTY, outputEncoding);
    }
    const out = new Uint8ArrayCtor(n);
    let iv = this.#iv;
    for (let at = 0; at < n; at += PIECE) {
      const end = at + PIECE < n ? at + PIECE : n;
      op_wt_aes_cbc(this.#key, iv, TypedArrayPrototypeSubarray(all, at, end), TypedArrayPrototypeSubarray(out, at, end), this.#encrypt, false);
      iv = this.#encrypt ? TypedArrayPrototypeSubarray(out, end - 16, end) : TypedArrayPrototypeSubarray(all, end - 16, end);
    }
    this.#iv = Buffer().from(iv);
    this.#pending = Buffer().from(TypedArrayPrototypeSubarray(all, n));
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
        const tag = Buffer().alloc(this.#tagLength ?? 16);
        op_wt_gcm_tag(this.#gcm, tag);
        this.#tag = tag;
      } else if (this.#tag === undefined || !op_wt_gcm_check(this.#gcm, this.#tag)) {
        throw new ErrorCtor("Unsupported state or unable to authenticate data");
      }
      this.#gcm = undefined;
      return this.#final(EMPTY, outputEncoding);
    }
    if (!this.#pad && this.#pending.length % 16 !== 0) {
      throw cipherError(ErrorCtor, "wrong final block length", "ERR_OSSL_WRONG_FINAL_BLOCK_LENGTH");
    }
    if (!this.#encrypt && this.#pad && this.#pending.length !== 16) {
      throw cipherError(ErrorCtor, "wrong final block length", "ERR_OSSL_WRONG_FINAL_BLOCK_LENGTH");
    }
    const out = new Uint8ArrayCtor(this.#pending.length + (this.#encrypt && this.#pad ? 16 : 0));
    const n = op_wt_aes_cbc(this.#key, this.#iv, this.#pending, out, this.#encrypt, this.#pad);
    return this.#final(TypedArrayPrototypeSubarray(out, 0, n), outputEncoding);
  }
  setAutoPadding(pad = true) {
    this.#pad = !!pad;
    return this;
  }
  setAAD(aad) {
    if (this.#mode !== "gcm" || this.#started || this.#done) throw invalidState("setAAD");
    const bytes = toBytes(aad, "utf8", "buffer");
    let at = 0;
    do at = op_wt_gcm_aad(this.#gcm, bytes, at);
    while (at < bytes.length);
    return this;
  }
  getAuthTag() {
    if (this.#mode !== "gcm" || !this.#encrypt || this.#tag === undefined) throw invalidState("getAuthTag");
    return this.#tag;
  }
  setAuthTag(tag) {
    if (this.#mode !== "gcm" || this.#encrypt || this.#done) throw invalidState("setAuthTag");
    const bytes = Buffer().from(toBytes(tag, "utf8", "buffer"));
    checkTagLength(bytes.length);
    if (this.#tagLength !== undefined && bytes.length !== this.#tagLength) {
      throw cipherError(TypeErrorCtor, `Invalid authentication tag length: ${bytes.length}`, "ERR_CRYPTO_INVALID_AUTH_TAG");
    }
    this.#tag = bytes;
    return this;
  }
}

// ---------------------------------------------------------------------------
// KeyObject: secret keys (jsonwebtoken 9 builds them for HMAC secrets) and
// RSA/EC public and private keys (parsed and used by the ops in keys.rs).
// ---------------------------------------------------------------------------

const KEY = Symbol("key");

// An asymmetric key: the host's parsed key and what the shim shows of it.
const JWK_FIELDS = ["kty", "n", "e", "crv", "x", "y"];

/// The JWK fields the op reads, as plain strings on a fresh object: the op
/// converts its argument while the isolate's state is borrowed, so no
/// guest getter, proxy trap or toString may run then.
function plainJwk(jwk) {
  if (jwk === null || typeof jwk !== "object") throw new TypeErrorCtor("The \"key\" argument must be a JWK object");
  const out = { __proto__: null };
  for (let i = 0; i < JWK_FIELDS.length; i++) {
    const value = jwk[JWK_FIELDS[i]];
    if (value !== undefined) out[JWK_FIELDS[i]] = StringCtor(value);
  }
  return out;
}

function keyMaterial(handle) {
  const info = op_wt_key_info(handle);
  return { handle, kind: info.kind, keyType: info.keyType, encoding: info.encoding, curve: info.curve, bits: info.bits, exponent: info.exponent };
}

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
    return m.keyType === "rsa" ? { modulusLength: m.bits, publicExponent: BigInt(m.exponent) } : { namedCurve: m.curve };
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
    const der = output(op_wt_key_der(material.handle));
    if (format === "der") return der;
    const label = type === "public" ? "PUBLIC KEY" : material.encoding === "pkcs1" ? "RSA PRIVATE KEY" : "PRIVATE KEY";
    const b64 = der.toString("base64");
    let body = "";
    for (let i = 0; i < b64.length; i += 64) body += b64.slice(i, i + 64) + "\n";
    return `-----BEGIN ${label}-----\n${body}-----END ${label}-----\n`;
  }
  equals(other) {
    if (!(other instanceof KeyObject) || other.type !== this.type) return false;
    const a = this.type === "secret" ? this[KEY].material : op_wt_key_der(this[KEY].material.handle);
    const b = other.type === "secret" ? other[KEY].material : op_wt_key_der(other[KEY].material.handle);
    return timingSafeEqualSafe(Buffer().from(a), Buffer().from(b));
  }
}

function timingSafeEqualSafe(a, b) {
  return a.length === b.length && timingSafeEqual(a, b);
}

function createSecretKey(key, encoding) {
  return new KeyObject("secret", Buffer().from(toBytes(key, encoding, "key")));
}

function publicOf(material) {
  return keyMaterial(op_wt_key_public(material.handle));
}

// `key` as Node takes it: PEM text or bytes, { key, format, type }, a JWK
// ({ key, format: 'jwk' }), or a KeyObject. A private key where a public
// one is wanted gives its public half, as in Node.
function parseKey(want, input) {
  if (input instanceof KeyObject) {
    if (input.type === want) return input;
    if (input.type === "private" && want === "public") return new KeyObject("public", publicOf(input[KEY].material));
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
    return new KeyObject("public", keyMaterial(op_wt_key_from_jwk(plainJwk(key))));
  }
  const bytes = typeof key === "string" ? Buffer().from(key, "utf8") : toBytes(key, undefined, "key");
  const material = keyMaterial(op_wt_key_import(want, format, type, bytes));
  return new KeyObject(want, want === "public" && material.kind === "private" ? publicOf(material) : material);
}

function createPublicKey(key) {
  return parseKey("public", key);
}

function createPrivateKey(key) {
  return parseKey("private", key);
}

const RSA_PKCS1_PADDING = 1;
const RSA_PKCS1_PSS_PADDING = 6;
// PSS salt lengths: the digest's, the longest (signing) or any (verifying).
const RSA_PSS_SALTLEN_DIGEST = -1;
const RSA_PSS_SALTLEN_MAX_SIGN = -2;
const RSA_PSS_SALTLEN_AUTO = -2;

// [KeyObject, pss, saltLength, p1363] of a sign/verify key argument.
function signingKey(want, key) {
  const options = key !== null && typeof key === "object" && !(key instanceof KeyObject) && !ArrayBufferIsView(key) ? key : {};
  const k = parseKey(want, key);
  if (k.type === "secret") throw new TypeErrorCtor("Invalid key object type secret, expected " + want + ".");
  const saltLength = options.saltLength ?? RSA_PSS_SALTLEN_AUTO;
  if (typeof saltLength !== "number" || MathFloor(saltLength) !== saltLength || saltLength < -3) {
    const err = new TypeErrorCtor(`The property 'options.saltLength' is invalid. Received ${saltLength}`);
    err.code = "ERR_INVALID_ARG_VALUE";
    throw err;
  }
  return [k, options.padding === RSA_PKCS1_PSS_PADDING, saltLength, options.dsaEncoding === "ieee-p1363"];
}

// Signs or verifies a digest the caller computed (`hashed`, of `digest`).
function signDigest(digest, hashed, key) {
  const [k, pss, salt, p1363] = signingKey("private", key);
  return output(runJob(op_wt_sign_start(k[KEY].material.handle, digest, hashed, pss, salt, p1363)));
}

function verifyDigest(digest, hashed, key, signature) {
  const [k, pss, salt, p1363] = signingKey("public", key);
  return runJob(op_wt_verify_start(k[KEY].material.handle, digest, hashed, signature, pss, salt, p1363));
}

// What Sign and Verify share: the digest, fed as update() is called.
class SignatureInput {
  #digest;
  #state;
  constructor(algorithm) {
    this.#digest = checkDigest(algorithm);
    this.#state = op_wt_hash_new(this.#digest);
  }
  update(data, encoding) {
    if (this.#state === null) throw finalized();
    digestFeed(this.#state, toBytes(data, encoding));
    return this;
  }
  // [digest name, digest] of everything given; once.
  static finish(input) {
    if (input.#state === null) throw finalized();
    const state = input.#state;
    input.#state = null;
    return [input.#digest, op_wt_digest_final(state)];
  }
}

class Sign extends SignatureInput {
  sign(key, encoding) {
    const [digest, hashed] = SignatureInput.finish(this);
    const sig = signDigest(digest, hashed, key);
    return encoding === undefined || encoding === "buffer" ? sig : sig.toString(encoding);
  }
}

class Verify extends SignatureInput {
  verify(key, signature, encoding) {
    const sig = toBytes(signature, encoding === "buffer" ? undefined : encoding, "signature");
    const [digest, hashed] = SignatureInput.finish(this);
    return verifyDigest(digest, hashed, key, sig);
  }
}

function oneShot(algorithm) {
  // Node accepts null/undefined for EC keys (the key decides); SHA-256 then.
  return algorithm === null || algorithm === undefined ? "sha256" : checkDigest(algorithm);
}

function cryptoSign(algorithm, data, key, callback) {
  const digest = oneShot(algorithm);
  const sig = signDigest(digest, hashBytes(digest, toBytes(data)), key);
  if (typeof callback === "function") {
    nativeQueueMicrotask(() => callback(null, sig));
    return;
  }
  return sig;
}

function cryptoVerify(algorithm, data, key, signature, callback) {
  const digest = oneShot(algorithm);
  const ok = verifyDigest(digest, hashBytes(digest, toBytes(data)), key, toBytes(signature, undefined, "signature"));
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
  if (format === "spki") material = keyMaterial(op_wt_key_import("public", "der", "spki", toBytes(keyData)));
  else if (format === "pkcs8") material = keyMaterial(op_wt_key_import("private", "der", "pkcs8", toBytes(keyData)));
  else if (format === "jwk") {
    if (keyData === null || typeof keyData !== "object") throw domError("JWK must be an object", "DataError");
    if (keyData.d !== undefined) throw domError("private JWKs are not supported by webtask yet", "NotSupportedError");
    material = keyMaterial(op_wt_key_from_jwk(plainJwk(keyData)));
  } else if (format === "raw" && name === "ECDSA") {
    material = keyMaterial(op_wt_key_from_ec_point(algorithm.namedCurve, toBytes(keyData)));
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
    const e = [];
    for (let x = material.exponent; x > 0; x = MathFloor(x / 256)) e.unshift(x % 256);
    alg.publicExponent = new Uint8ArrayCtor(e);
  }
  return new CryptoKey(material.kind, material, alg, !!extractable, [...usages]);
}

// [digest, pss, saltLength, p1363] of a sign/verify algorithm for `key`.
function asymmetricParams(algorithm, key) {
  const name = ASYMMETRIC[algorithmName(algorithm)];
  if (name === "ECDSA") return [subtleHash(algorithm.hash), false, 0, true];
  if (name === "RSA-PSS") {
    const saltLength = algorithm.saltLength;
    if (typeof saltLength !== "number" || !(saltLength >= 0) || MathFloor(saltLength) !== saltLength) {
      throw new TypeErrorCtor("RsaPssParams: saltLength is required and must be a non-negative integer");
    }
    return [key.algorithm.hash.name, true, saltLength, false];
  }
  return [key.algorithm.hash.name, false, 0, false];
}

// The ArrayBuffer behind an op's fresh, exactly sized Uint8Array.
function bufferOf(bytes) {
  return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes.buffer : arrayBufferOf(bytes);
}

const subtle = {
  digest: asyncly((algorithm, data) => {
    const name = subtleHash(algorithm);
    return bufferOf(hashBytes(name, toBytes(data)));
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
        return bufferOf(op_wt_key_der(material.handle));
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
      const [digest, pss, salt, p1363] = asymmetricParams(algorithm, k);
      const hashed = hashBytes(digest, toBytes(data));
      return bufferOf(runJob(op_wt_sign_start(CryptoKey.materialOf(k).handle, digest, hashed, pss, salt, p1363)));
    }
    if (name !== "HMAC") throw domError(`sign: ${name} is not supported by webtask`, "NotSupportedError");
    const k = usableKey(key, "HMAC", "sign");
    return bufferOf(hmacBytes(k.algorithm.hash.name, CryptoKey.materialOf(k), toBytes(data)));
  }),
  verify: asyncly((algorithm, key, signature, data) => {
    const name = algorithmName(algorithm);
    if (ASYMMETRIC[name] !== undefined) {
      const k = usableKey(key, ASYMMETRIC[name], "verify");
      const [digest, pss, salt, p1363] = asymmetricParams(algorithm, k);
      const hashed = hashBytes(digest, toBytes(data));
      return runJob(op_wt_verify_start(CryptoKey.materialOf(k).handle, digest, hashed, toBytes(signature), pss, salt, p1363));
    }
    if (name !== "HMAC") throw domError(`verify: ${name} is not supported by webtask`, "NotSupportedError");
    const k = usableKey(key, "HMAC", "verify");
    const mac = hmacBytes(k.algorithm.hash.name, CryptoKey.materialOf(k), toBytes(data));
    return timingSafeEqualSafe(mac, toBytes(signature));
  }),
};

export const webcrypto = {
  getRandomValues,
  randomUUID,
  subtle,
};

// Web Crypto's interfaces, globals in Node 20: `crypto` is a Crypto and
// `crypto.subtle` a SubtleCrypto, their methods on the prototypes (so
// `Object.keys(crypto)` is empty and util.inspect shows `Crypto {}`),
// neither constructible. What Node has and webtask does not (encrypt,
// generateKey, ...) stays absent, so a feature check sees it missing.
export class Crypto {
  constructor() {
    throw illegalConstructor();
  }
}

export class SubtleCrypto {
  constructor() {
    throw illegalConstructor();
  }
}

function becomeInstance(object, Class) {
  const keys = ObjectKeys(object);
  for (let i = 0; i < keys.length; i++) {
    const value = object[keys[i]];
    ObjectDefineProperty(Class.prototype, keys[i], { __proto__: null, value, writable: true, enumerable: true, configurable: true });
    delete object[keys[i]];
  }
  ObjectDefineProperty(Class.prototype, SymbolToStringTag, { __proto__: null, value: Class.name, configurable: true });
  ObjectSetPrototypeOf(object, Class.prototype);
}
becomeInstance(subtle, SubtleCrypto);
becomeInstance(webcrypto, Crypto);

export { CryptoKey, getRandomValues };
provideCryptoKey(CryptoKey);

// The parts of Node's crypto webtask does not offer: present (libraries
// promisify them at load), throwing a clear error when called.
const ABSENT = [
  "createDiffieHellman", "createDiffieHellmanGroup", "createECDH", "diffieHellman", "generateKey", "generateKeyPair",
  "generateKeyPairSync", "generateKeySync", "generatePrime", "generatePrimeSync", "getDiffieHellman", "hkdf", "hkdfSync",
  "privateDecrypt", "privateEncrypt", "publicDecrypt", "publicEncrypt", "scrypt", "scryptSync",
  "X509Certificate", "checkPrime", "checkPrimeSync",
];

// What OpenSSL (so Node) says of the ciphers webtask has.
const CIPHER_INFO = [
  { mode: "cbc", name: "aes-128-cbc", nid: 419, blockSize: 16, ivLength: 16, keyLength: 16 },
  { mode: "cbc", name: "aes-192-cbc", nid: 423, blockSize: 16, ivLength: 16, keyLength: 24 },
  { mode: "cbc", name: "aes-256-cbc", nid: 427, blockSize: 16, ivLength: 16, keyLength: 32 },
  { mode: "gcm", name: "id-aes128-gcm", nid: 895, blockSize: 1, ivLength: 12, keyLength: 16, alias: "aes-128-gcm" },
  { mode: "gcm", name: "id-aes192-gcm", nid: 898, blockSize: 1, ivLength: 12, keyLength: 24, alias: "aes-192-gcm" },
  { mode: "gcm", name: "id-aes256-gcm", nid: 901, blockSize: 1, ivLength: 12, keyLength: 32, alias: "aes-256-gcm" },
];

// Node's crypto.getCipherInfo: by name (any case) or nid; undefined for a
// cipher webtask lacks, or a key or IV length it cannot take.
function getCipherInfo(nameOrNid, options) {
  if (typeof nameOrNid !== "string" && typeof nameOrNid !== "number") {
    throw codedError(TypeErrorCtor, "ERR_INVALID_ARG_TYPE", `The "nameOrNid" argument must be one of type string or number. Received ${received(nameOrNid)}`);
  }
  const key = typeof nameOrNid === "string" ? StringPrototypeToLowerCase(nameOrNid) : nameOrNid;
  let found;
  for (let i = 0; i < CIPHER_INFO.length; i++) {
    const c = CIPHER_INFO[i];
    if (c.nid === key || c.name === key || c.alias === key) found = c;
  }
  if (found === undefined) return undefined;
  const { keyLength, ivLength } = options ?? {};
  if (keyLength !== undefined && keyLength !== found.keyLength) return undefined;
  const info = { mode: found.mode, name: found.name, nid: found.nid, blockSize: found.blockSize, ivLength: found.ivLength, keyLength: found.keyLength };
  if (ivLength !== undefined) {
    // CBC takes its block; GCM any IV from 1 byte (as createCipheriv here).
    if (found.mode === "cbc" ? ivLength !== 16 : !(ivLength >= 1 && ivLength <= 128)) return undefined;
    info.ivLength = ivLength;
  }
  return info;
}

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
    // Node 20.12's one-shot digest: hex unless told otherwise.
    hash(algorithm, data, outputEncoding = "hex") {
      // Not an ArrayBuffer, unlike createHash's update: toBytes throws
      // Node's ERR_INVALID_ARG_TYPE for it.
      if (typeof data !== "string" && !ArrayBufferIsView(data)) toBytes(null);
      return new Hash(algorithm).update(data).digest(outputEncoding === "buffer" ? undefined : outputEncoding);
    },
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
    createCipheriv: (algorithm, key, iv, options) => new Cipheriv(true, algorithm, key, iv, options),
    createDecipheriv: (algorithm, key, iv, options) => new Cipheriv(false, algorithm, key, iv, options),
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
    getCiphers: () => ["aes-128-cbc", "aes-128-gcm", "aes-192-cbc", "aes-192-gcm", "aes-256-cbc", "aes-256-gcm"],
    getCipherInfo,
    getFips: () => 0,
    setFips() {
      throw unavailableError("crypto.setFips");
    },
    secureHeapUsed: () => ({ total: 0, used: 0, utilization: 0, min: 0 }),
    getCurves: () => [],
    webcrypto,
    subtle,
    constants: { RSA_PKCS1_PADDING, RSA_PKCS1_PSS_PADDING, RSA_PSS_SALTLEN_DIGEST, RSA_PSS_SALTLEN_MAX_SIGN, RSA_PSS_SALTLEN_AUTO },
  };
}

registerBuiltin("crypto", createCrypto);
