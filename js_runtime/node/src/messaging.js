// MessageChannel, MessagePort, MessageEvent and BroadcastChannel, globals
// in Node 20. Loaded with the bundle on first use of one of them (see
// web.js). An isolate serves one container, so a BroadcastChannel reaches
// the channels of that name in the same container (its other requests
// included) and never another container's, as Node's reaches its own
// process's threads only.
//
// Messages are structured clones, delivered as tasks, in order; a port
// delivers once started (`start()`, `onmessage`, or a 'message' listener,
// as in Node), and Node's EventEmitter-style `on('message', value => ...)`
// is there too. Transfer lists are accepted and the values cloned (nothing
// is detached).
"use strict";

const kCreate = Symbol("create");
const kReceive = Symbol("receive");
const kEntangle = Symbol("entangle");
const setTask = globalThis.setTimeout;
const clone = globalThis.structuredClone;

const { coded } = require("./node-errors.js");

function missingArgs(name) {
  return coded(TypeError, "ERR_MISSING_ARGS", `The "${name}" argument must be specified`);
}

class MessageEvent extends Event {
  #data;
  #origin;
  #lastEventId;
  #source;
  #ports;

  constructor(type, init = {}) {
    super(type, init);
    this.#data = init?.data ?? null;
    this.#origin = `${init?.origin ?? ""}`;
    this.#lastEventId = `${init?.lastEventId ?? ""}`;
    this.#source = init?.source ?? null;
    this.#ports = [...(init?.ports ?? [])];
  }

  get data() {
    return this.#data;
  }

  get origin() {
    return this.#origin;
  }

  get lastEventId() {
    return this.#lastEventId;
  }

  get source() {
    return this.#source;
  }

  get ports() {
    return this.#ports;
  }
}

// What MessagePort and BroadcastChannel share: a queue of received
// messages delivered as tasks once started, `onmessage`, Node's
// EventEmitter-style listeners, ref/unref.
class Receiver extends EventTarget {
  #queue = [];
  #started = false;
  #scheduled = false;
  #onmessage = null;
  #emitterListeners = new Map();

  get onmessage() {
    return this.#onmessage;
  }

  // EventTarget's dispatchEvent calls it.
  set onmessage(handler) {
    this.#onmessage = typeof handler === "function" ? handler : null;
    if (this.#onmessage) this.start();
  }

  addEventListener(type, listener, options) {
    super.addEventListener(type, listener, options);
    if (type === "message") this.start();
  }

  start() {
    this.#started = true;
    this.#schedule();
  }

  // Node's MessagePort is an EventEmitter too: listeners get the message
  // itself, not the event.
  on(type, listener) {
    return this.#listen(type, listener, false);
  }

  once(type, listener) {
    return this.#listen(type, listener, true);
  }

  off(type, listener) {
    const wrapped = this.#emitterListeners.get(type)?.get(listener);
    if (wrapped) {
      this.#emitterListeners.get(type).delete(listener);
      this.removeEventListener(type, wrapped);
    }
    return this;
  }

  #listen(type, listener, once) {
    const wrapped = (event) => {
      if (once) this.off(type, listener);
      listener.call(this, type === "message" ? event.data : event);
    };
    if (!this.#emitterListeners.has(type)) this.#emitterListeners.set(type, new Map());
    this.#emitterListeners.get(type).set(listener, wrapped);
    this.addEventListener(type, wrapped);
    return this;
  }

  addListener(type, listener) {
    return this.on(type, listener);
  }

  removeListener(type, listener) {
    return this.off(type, listener);
  }

  ref() {
    return this;
  }

  unref() {
    return this;
  }

  hasRef() {
    return this.#started;
  }

  [kReceive](data) {
    this.#queue.push(data);
    this.#schedule();
  }

  #schedule() {
    if (!this.#started || this.#scheduled || this.#queue.length === 0) return;
    this.#scheduled = true;
    setTask(() => {
      this.#scheduled = false;
      const batch = this.#queue;
      this.#queue = [];
      for (const data of batch) this.dispatchEvent(new MessageEvent("message", { data }));
    }, 0);
  }
}

class MessagePort extends Receiver {
  #other = null;
  #closed = false;

  constructor(token) {
    if (token !== kCreate) throw coded(TypeError, "ERR_CONSTRUCT_CALL_INVALID", "Constructor cannot be called");
    super();
  }

  static [kEntangle](a, b) {
    a.#other = b;
    b.#other = a;
  }

  postMessage(value, transfer) {
    if (arguments.length === 0) throw missingArgs("value");
    const data = clone(value, transfer);
    const other = this.#other;
    if (!this.#closed && other && !other.#closed) other[kReceive](data);
  }

  close() {
    for (const port of [this, this.#other]) {
      if (!port || port.#closed) continue;
      port.#closed = true;
      setTask(() => port.dispatchEvent(new Event("close")), 0);
    }
  }
}

class MessageChannel {
  #port1 = new MessagePort(kCreate);
  #port2 = new MessagePort(kCreate);

  constructor() {
    MessagePort[kEntangle](this.#port1, this.#port2);
  }

  get port1() {
    return this.#port1;
  }

  get port2() {
    return this.#port2;
  }
}

// Open channels by name, in this isolate.
const channels = new Map();

class BroadcastChannel extends Receiver {
  #name;
  #closed = false;

  constructor(name) {
    if (arguments.length === 0) throw missingArgs("name");
    super();
    this.#name = `${name}`;
    if (!channels.has(this.#name)) channels.set(this.#name, new Set());
    channels.get(this.#name).add(this);
  }

  get name() {
    return this.#name;
  }

  postMessage(message) {
    if (arguments.length === 0) throw missingArgs("message");
    if (this.#closed) throw new DOMException("BroadcastChannel is closed.", "InvalidStateError");
    const data = clone(message);
    for (const other of channels.get(this.#name) ?? []) {
      if (other !== this) other[kReceive](clone(data));
    }
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    const open = channels.get(this.#name);
    open?.delete(this);
    if (open?.size === 0) channels.delete(this.#name);
  }
}

module.exports = { MessageChannel, MessagePort, MessageEvent, BroadcastChannel };
