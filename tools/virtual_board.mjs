#!/usr/bin/env node
// The virtual MicroPython board: the real MicroPython (the WebAssembly port from npm) behaving as an
// ESP32 does on its USB serial line, so that mpremote and tools/flash_board.py drive it as they drive
// a board. tools/virtual_board.py starts this and puts it behind a pseudo-terminal; on its own it
// speaks the serial line on stdin/stdout.
//
//   serial line  stdin/stdout: friendly REPL (banner, ">>> "), Ctrl-A raw REPL, raw-paste mode
//                (Ctrl-E A Ctrl-A, window-size flow control), Ctrl-B, Ctrl-C (interrupts a running
//                program at its next wait), Ctrl-D soft reset ("MPY: soft reboot", then boot.py and,
//                from the friendly REPL, main.py)
//   flash        --fs DIR: the board's file system. Each boot copies DIR into the interpreter's
//                memory file system; a file is written back to DIR when it is closed, a rename,
//                remove, mkdir or rmdir at once (LittleFS commits a file on close too, so a power cut
//                leaves the old or the new content). A soft reset closes open files first; a hard
//                reset or a killed process loses what was written and not closed.
//   resets       machine.reset(), the watchdog (machine.WDT, which a soft reset does not stop, as on
//                the ESP32) and the control channel's "reset" end the interpreter's worker thread
//                wherever it is and start a new one: nothing of the old RAM survives.
//   control      --control PATH: a unix socket speaking JSON lines, one request and one answer each
//                ({"op": ..., ...} -> {"ok": true, ...} | {"ok": false, "error": ...}): pins (set a
//                level, pulses, read), Bluetooth as a phone (scan, connect, read, write, notifications,
//                disconnect), reset, status. tools/virtual_board.py has the client.
//   frozen       tools/virtual_board_modules/: machine, bluetooth, aioble, asyncio, _thread and a
//                time whose sleeps wait for the board's events. They are imported at every boot, before
//                boot.py, and are not on the file system, as frozen modules are not on a real board.
//
// Why a worker thread: MicroPython code blocks (time.sleep, an asyncio loop waiting for its next
// timer, input()), and the WebAssembly port runs it on the calling thread. The interpreter runs on a
// worker that blocks in Atomics.wait while the program waits; this main thread keeps the serial line,
// the control socket and the watchdog, and wakes the worker through a shared counter.
//
// Limits: one interpreter thread (_thread cannot start threads); Ctrl-C, pin interrupts and Bluetooth
// events reach a program only where it waits (a sleep, an asyncio wait, the REPL), not inside a busy
// loop - the watchdog still resets such a board; no Wi-Fi; the banner names the machine "JS with
// Emscripten". The port writes print() and sys.stdout.buffer alike, so both get the UART's "\r"
// before "\n": `mpremote mount` reads files, but a binary stream a program writes is not byte-exact.
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import {
  MessageChannel, Worker, isMainThread, parentPort, receiveMessageOnPort, workerData,
} from "node:worker_threads";

const THIS_FILE = fileURLToPath(import.meta.url);
const MODULES_DIR = path.join(path.dirname(THIS_FILE), "virtual_board_modules");
const DEFAULT_HEAP_BYTES = 2 * 1024 * 1024;
const MAX_INPUT_BYTES = 1024 * 1024;      // the UART's receive buffer, generous; beyond it bytes are lost
const MAX_CONTROL_LINE_BYTES = 64 * 1024;
const MAX_NOTIFICATIONS_QUEUED = 256;     // per phone connection; the oldest go first
const MAX_NOTIFICATIONS_WAIT_MS = 60_000;
const MAX_PULSES_PER_REQUEST = 1_000_000;
const MAX_REQUESTS_PER_WAIT = 64;         // control requests handed to the program at one wait; the rest next time
const PIN_COUNT = 40;                     // GPIO0..GPIO39, as on the ESP32
const OUTPUT_FLUSH_BYTES = 4096;
const RAW_PASTE_WINDOW_BYTES = 512;
const PYEXEC_FORCED_EXIT = 0x100;
const TEMP_PREFIX = ".~vb-";              // the write-back's temporary files in the --fs directory
// machine.reset_cause() values of the ESP32 port
const RESET_CAUSES = { power: 1, hard: 2, wdt: 3, deepsleep: 4, soft: 5 };

function usage(message) {
  process.stderr.write(`virtual_board: ${message}\n`);
  process.exit(2);
}

function parseArgs(argv) {
  const options = { fsDir: null, controlPath: null, heapBytes: DEFAULT_HEAP_BYTES, mac: null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => argv[++i] ?? usage(`${arg} needs a value`);
    if (arg === "--fs") options.fsDir = path.resolve(value());
    else if (arg === "--control") options.controlPath = path.resolve(value());
    else if (arg === "--heapsize") options.heapBytes = parseInt(value(), 10);
    else if (arg === "--mac") options.mac = value().replace(/:/g, "").toLowerCase();
    else usage(`unknown option ${arg}`);
  }
  if (!options.fsDir) usage("--fs DIR is required (the board's file system)");
  if (!(options.heapBytes >= 64 * 1024)) usage("--heapsize needs at least 65536 bytes");
  if (options.mac !== null && !/^[0-9a-f]{12}$/.test(options.mac)) usage("--mac needs 6 bytes in hex");
  fs.mkdirSync(options.fsDir, { recursive: true });
  if (options.mac === null) {
    // a board keeps its MAC: derived from its file system's place, so a restart keeps it too
    const digest = crypto.createHash("sha256").update(options.fsDir).digest();
    digest[0] = (digest[0] & 0xfc) | 0x02;     // locally administered, unicast
    options.mac = digest.subarray(0, 6).toString("hex");
  }
  return options;
}

function boardModules() {
  const modules = {};
  for (const name of fs.readdirSync(MODULES_DIR).sort()) {
    if (name.endsWith(".py")) modules[name] = fs.readFileSync(path.join(MODULES_DIR, name), "utf8");
  }
  return modules;
}

// ================================================================================================
// Main thread: the serial line, the control socket, the watchdog, hard resets.
// ================================================================================================

class BoardHost {
  constructor(options) {
    this.options = options;
    this.modules = boardModules();
    this.signal = new Int32Array(new SharedArrayBuffer(4));
    this.levels = {};              // pin -> level the outside world drives (buttons, the meter)
    this.pending = new Map();      // control request id -> answer callback, while the worker has it
    this.links = new Map();        // Bluetooth connection handle -> {queue, connected, waiters}
    this.nextRequestId = 1;
    this.boots = 0;
    this.worker = null;
    this.port = null;
    this.watchdog = null;          // {timeoutMs, timer}
    this.resetCause = RESET_CAUSES.power;
  }

  start() {
    this.startWorker(RESET_CAUSES.power);
  }

  startWorker(cause) {
    const channel = new MessageChannel();
    this.port = channel.port1;
    this.boots += 1;
    this.resetCause = cause;
    const worker = new Worker(THIS_FILE, {
      workerData: {
        port: channel.port2, signal: this.signal.buffer, fsDir: this.options.fsDir, mac: this.options.mac,
        heapBytes: this.options.heapBytes, modules: this.modules, levels: this.levels, resetCause: cause,
      },
      transferList: [channel.port2],
    });
    this.worker = worker;
    worker.on("message", (message) => { if (this.worker === worker) this.fromWorker(message); });
    worker.on("error", (error) => {
      // a fault of the virtual board itself, not of the program on it: stop rather than loop
      if (this.worker !== worker) return;
      process.stderr.write(`virtual_board: the interpreter stopped: ${error.stack || error}\n`);
      this.uart(Buffer.from("\r\nvirtual board: internal error, see its log\r\n"));
      process.exitCode = 1;
      setTimeout(() => process.exit(1), 100);
    });
    worker.on("exit", (code) => {
      if (this.worker !== worker) return;      // ended by a reset
      process.stderr.write(`virtual_board: the interpreter's thread ended (${code})\n`);
      process.exit(1);
    });
  }

  hardReset(cause) {
    const old = this.worker;
    this.worker = null;
    this.stopWatchdog();
    for (const [, answer] of this.pending) answer({ ok: false, error: "the board reset" });
    this.pending.clear();
    for (const handle of [...this.links.keys()]) this.linkLost(handle);
    if (old) old.terminate();
    this.startWorker(cause);
  }

  toWorker(message) {
    this.port.postMessage(message);
    Atomics.add(this.signal, 0, 1);
    Atomics.notify(this.signal, 0);
  }

  uart(data) {
    process.stdout.write(data);
  }

  fromWorker(message) {
    switch (message.type) {
      case "uart": this.uart(Buffer.from(message.data)); break;
      case "reply": {
        const answer = this.pending.get(message.id);
        this.pending.delete(message.id);
        if (answer) answer(message.answer);
        break;
      }
      case "reset": this.hardReset(message.cause); break;
      case "wdt": this.feedWatchdog(message.timeoutMs); break;
      case "notify": this.notification(message.handle, message.uuid, message.value); break;
      case "link_lost": this.linkLost(message.handle); break;
      case "links_lost": for (const handle of [...this.links.keys()]) this.linkLost(handle); break;
      default: process.stderr.write(`virtual_board: unknown worker message ${message.type}\n`);
    }
  }

  // -- the watchdog lives here, so that it bites a board stuck anywhere --------------------------
  feedWatchdog(timeoutMs) {
    this.stopWatchdog();
    const timer = setTimeout(() => this.hardReset(RESET_CAUSES.wdt), timeoutMs);
    this.watchdog = { timeoutMs, timer };
  }

  stopWatchdog() {
    if (this.watchdog) clearTimeout(this.watchdog.timer);
    this.watchdog = null;
  }

  // -- Bluetooth: what the phone has been notified, per connection --------------------------------
  linkOpened(handle) {
    this.links.set(handle, { queue: [], connected: true, waiters: [] });
  }

  notification(handle, uuid, value) {
    const link = this.links.get(handle);
    if (!link || !link.connected) return;
    link.queue.push({ uuid, value });
    if (link.queue.length > MAX_NOTIFICATIONS_QUEUED) link.queue.shift();
    this.wakeLinkWaiters(link);
  }

  linkLost(handle) {
    const link = this.links.get(handle);
    if (!link) return;
    link.connected = false;
    this.wakeLinkWaiters(link);
    if (link.queue.length === 0) this.links.delete(handle);
  }

  wakeLinkWaiters(link) {
    const waiters = link.waiters.splice(0);
    for (const wake of waiters) wake();
  }

  takeNotifications(request, answer) {
    const handle = request.conn;
    const link = this.links.get(handle);
    if (!link) return answer({ ok: true, notifications: [], connected: false });
    const timeoutMs = Math.max(0, Math.min(Number(request.timeout_ms) || 0, MAX_NOTIFICATIONS_WAIT_MS));
    const give = () => {
      const notifications = link.queue.splice(0);
      if (!link.connected && link.queue.length === 0) this.links.delete(handle);
      answer({ ok: true, notifications, connected: link.connected });
    };
    if (link.queue.length || !link.connected || timeoutMs === 0) return give();
    let timer = null;
    const wake = () => { clearTimeout(timer); give(); };
    timer = setTimeout(() => { link.waiters.splice(link.waiters.indexOf(wake), 1); give(); }, timeoutMs);
    link.waiters.push(wake);
  }

  // -- control requests -----------------------------------------------------------------------------
  control(request, answer) {
    const op = request.op;
    if (op === "status") {
      return answer({ ok: true, boots: this.boots, reset_cause: this.resetCause,
                      watchdog_ms: this.watchdog?.timeoutMs ?? null, mac: this.options.mac, fs: this.options.fsDir });
    }
    if (op === "reset") {
      this.hardReset(request.cause === "power" ? RESET_CAUSES.power : RESET_CAUSES.hard);
      return answer({ ok: true });
    }
    if (op === "ble_notifications") return this.takeNotifications(request, answer);
    if (op === "pin_set") {
      const pin = checkPin(request.pin);
      if (pin === null) return answer({ ok: false, error: `no pin ${request.pin}` });
      this.levels[pin] = request.value ? 1 : 0;    // the outside world keeps driving it across resets
    }
    if (!this.worker) return answer({ ok: false, error: "the board is resetting" });
    const id = this.nextRequestId++;
    this.pending.set(id, (result) => {
      if (op === "ble_connect" && result.ok) this.linkOpened(result.conn);
      if (op === "ble_disconnect" && result.ok) this.linkLost(request.conn);
      answer(result);
    });
    this.toWorker({ type: "control", id, request });
  }

  serveControl(controlPath) {
    try {
      if (fs.statSync(controlPath).isSocket()) fs.unlinkSync(controlPath);   // left by a killed board
    } catch { /* not there */ }
    const server = net.createServer((socket) => {
      let buffered = "";
      socket.setEncoding("utf8");
      socket.on("data", (chunk) => {
        buffered += chunk;
        if (buffered.length > MAX_CONTROL_LINE_BYTES) { socket.destroy(); return; }
        let newline;
        while ((newline = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, newline);
          buffered = buffered.slice(newline + 1);
          this.controlLine(line, socket);
        }
      });
      socket.on("error", () => {});
    });
    server.listen(controlPath);
    process.on("exit", () => { try { fs.unlinkSync(controlPath); } catch { /* gone */ } });
    return server;
  }

  controlLine(line, socket) {
    let request;
    try {
      request = JSON.parse(line);
      if (typeof request !== "object" || request === null || typeof request.op !== "string") throw new Error("no op");
    } catch (error) {
      socket.write(JSON.stringify({ ok: false, error: `not a request: ${error.message}` }) + "\n");
      return;
    }
    this.control(request, (answer) => {
      if (!socket.destroyed) socket.write(JSON.stringify(answer) + "\n");
    });
  }
}

function checkPin(value) {
  const pin = Number(value);
  return Number.isInteger(pin) && pin >= 0 && pin < PIN_COUNT ? pin : null;
}

function runMain() {
  const options = parseArgs(process.argv.slice(2));
  const host = new BoardHost(options);
  if (options.controlPath) host.serveControl(options.controlPath);
  process.stdin.on("data", (data) => {
    if (host.worker) host.toWorker({ type: "input", data: new Uint8Array(data) });
  });
  process.stdin.on("end", () => process.exit(0));     // whoever held the serial line is gone: power off
  process.on("SIGTERM", () => process.exit(0));
  process.on("SIGINT", () => process.exit(0));
  host.start();
}

// ================================================================================================
// Worker thread: one interpreter at a time; a soft reset replaces it, a hard reset ends the thread.
// ================================================================================================

class ByteQueue {
  constructor(limit) { this.chunks = []; this.offset = 0; this.length = 0; this.limit = limit; }
  push(bytes) {
    if (bytes.length === 0) return true;
    if (this.length + bytes.length > this.limit) return false;     // an overrun: the bytes are lost
    this.chunks.push(bytes);
    this.length += bytes.length;
    return true;
  }
  shift() {
    const chunk = this.chunks[0];
    const byte = chunk[this.offset++];
    this.length -= 1;
    if (this.offset >= chunk.length) { this.chunks.shift(); this.offset = 0; }
    return byte;
  }
}

class Board {
  constructor(data) {
    this.port = data.port;
    this.signal = new Int32Array(data.signal);
    this.fsDir = data.fsDir;
    this.mac = data.mac;
    this.heapBytes = data.heapBytes;
    this.modules = data.modules;
    this.resetCause = data.resetCause;
    this.levels = { ...data.levels };      // pin -> external level
    this.pins = {};                        // pin -> {mode, pull, out, trigger} as the program set it up
    this.irqCounts = {};                   // pin -> edges not yet handed to the program
    this.requests = [];                    // control requests for the program's modules
    this.input = new ByteQueue(MAX_INPUT_BYTES);
    this.output = [];
    this.lastOutputByte = 0;
    this.suppress = null;                  // bytes of the next output to drop (raw-paste's "OK")
    this.mp = null;
    this.rawMode = false;
    this.rawLineEmpty = true;
    this.interruptScheduled = false;
  }

  // -- the serial line ---------------------------------------------------------------------------
  pythonOutput(bytes) {
    // MicroPython's print writes "\n"; a board's UART writes "\r\n" (mp_hal_stdout_tx_strn_cooked)
    for (const byte of bytes) {
      if (byte === 10 && this.lastOutputByte !== 13) this.emit(13);
      this.emit(byte);
    }
  }

  emit(byte) {
    this.lastOutputByte = byte;
    if (this.suppress !== null) {
      if (this.suppress.length && this.suppress[0] === byte) { this.suppress = this.suppress.slice(1); return; }
      this.suppress = null;
    }
    this.output.push(byte);
    if (this.output.length >= OUTPUT_FLUSH_BYTES) this.flush();
  }

  write(text) {
    for (const byte of Buffer.from(text, "latin1")) this.emit(byte);
  }

  flush() {
    if (!this.output.length) return;
    parentPort.postMessage({ type: "uart", data: Uint8Array.from(this.output) });
    this.output = [];
  }

  // -- what arrives from the main thread ---------------------------------------------------------
  pump() {
    let received;
    while ((received = receiveMessageOnPort(this.port)) !== undefined) {
      const message = received.message;
      if (message.type === "input") this.received(message.data);
      else if (message.type === "control") this.controlRequest(message.id, message.request);
    }
  }

  received(data) {
    // While a program runs, Ctrl-C is the interrupt character: it raises KeyboardInterrupt and is
    // not queued (as the UART's interrupt handler does); while the REPL reads, it is a character.
    const module = this.mp && this.mp._module;
    let start = 0;
    if (module && module._mp_hal_get_interrupt_char() === 3) {
      for (let i = 0; i < data.length; i++) {
        if (data[i] !== 3) continue;
        this.input.push(data.subarray(start, i));
        module._mp_sched_keyboard_interrupt();
        this.interruptScheduled = true;
        start = i + 1;
      }
    }
    if (start < data.length) this.input.push(data.subarray(start));
  }

  reply(id, answer) {
    parentPort.postMessage({ type: "reply", id, answer });
  }

  controlRequest(id, request) {
    const op = request.op;
    if (op === "pin_set" || op === "pulses" || op === "pin_get" || op === "pins") {
      let answer;
      try {
        answer = this.pinRequest(request);
      } catch (error) {
        answer = { ok: false, error: error.message };
      }
      this.reply(id, answer);
    } else {
      this.requests.push({ id, request });     // for the program's modules (Bluetooth)
    }
  }

  // -- pins ------------------------------------------------------------------------------------------
  level(pin) {
    const setup = this.pins[pin];
    if (setup && setup.mode === "out") return setup.out;
    if (setup && setup.mode === "od" && setup.out === 0) return 0;
    if (pin in this.levels) return this.levels[pin];
    if (setup && setup.pull === "up") return 1;
    return 0;     // undriven: the valve's pull-down, a floating input read low
  }

  edges(pin, before, after, count) {
    const setup = this.pins[pin];
    if (!setup || !setup.trigger || before === after && count === 0) return;
    let edges = 0;
    if (count > 0) {
      if (setup.trigger & 1) edges += count;      // IRQ_RISING
      if (setup.trigger & 2) edges += count;      // IRQ_FALLING
    } else if ((after === 1 && setup.trigger & 1) || (after === 0 && setup.trigger & 2)) {
      edges = 1;
    }
    if (edges) this.irqCounts[pin] = (this.irqCounts[pin] || 0) + edges;
  }

  pinRequest(request) {
    if (request.op === "pins") {
      const pins = {};
      for (let pin = 0; pin < PIN_COUNT; pin++) {
        if (this.pins[pin] || pin in this.levels) {
          pins[pin] = { level: this.level(pin), mode: this.pins[pin]?.mode ?? null };
        }
      }
      return { ok: true, pins };
    }
    const pin = checkPin(request.pin);
    if (pin === null) throw new Error(`no pin ${request.pin}`);
    if (request.op === "pin_get") return { ok: true, level: this.level(pin), mode: this.pins[pin]?.mode ?? null };
    if (request.op === "pin_set") {
      const before = this.level(pin);
      this.levels[pin] = request.value ? 1 : 0;
      this.edges(pin, before, this.level(pin), 0);
      return { ok: true, level: this.level(pin) };
    }
    const count = Number(request.count);
    if (!Number.isInteger(count) || count < 0 || count > MAX_PULSES_PER_REQUEST) {
      throw new Error(`count must be 0..${MAX_PULSES_PER_REQUEST}`);
    }
    this.edges(pin, 0, 0, count);     // each pulse: one rising and one falling edge, back to rest
    return { ok: true, pulses: count };
  }

  takeEvents() {
    const events = [];
    for (const pin of Object.keys(this.irqCounts)) events.push({ t: "irq", pin: Number(pin), n: this.irqCounts[pin] });
    this.irqCounts = {};
    for (const { id, request } of this.requests.splice(0, MAX_REQUESTS_PER_WAIT)) {
      events.push({ t: "req", id, req: request });
    }
    return events;
  }

  hasEvents() {
    return this.requests.length > 0 || Object.keys(this.irqCounts).length > 0;
  }

  // -- waiting -----------------------------------------------------------------------------------------
  // Block until something arrives from the main thread or `timeoutMs` passes (negative: no limit);
  // queued input ends the wait only for whoever reads it (the REPL, stdin), not for a program's wait.
  block(timeoutMs, forInput) {
    this.flush();
    const seen = Atomics.load(this.signal, 0);
    this.pump();
    if ((forInput && this.input.length) || this.hasEvents() || this.interruptScheduled) return;
    Atomics.wait(this.signal, 0, seen, timeoutMs < 0 ? Infinity : timeoutMs);
    this.pump();
  }

  // The program's wait (asyncio, time.sleep): returns its events as JSON, early when there are some.
  programWait(timeoutMs) {
    const deadline = Date.now() + Math.max(0, timeoutMs);
    for (;;) {
      this.pump();
      if (this.interruptScheduled) {
        // a KeyboardInterrupt scheduled by received(): return so that the VM raises it at once
        this.interruptScheduled = false;
        this.flush();
        return "[]";
      }
      if (this.hasEvents()) return JSON.stringify(this.takeEvents());
      const left = timeoutMs < 0 ? -1 : deadline - Date.now();
      if (timeoutMs >= 0 && left <= 0) { this.flush(); return "[]"; }
      this.block(left, false);
    }
  }

  // The REPL's next character; the program's events are handed over while it waits for one.
  nextByte() {
    for (;;) {
      this.pump();
      if (this.input.length) return this.input.shift();
      if (this.hasEvents()) {
        this.runPython("import _board\n_board.dispatch_pending()");
        continue;
      }
      this.block(-1, true);
    }
  }

  // stdin for input() and sys.stdin.read(): the program waits for the serial line; Ctrl-C hands it
  // a character so that it returns and the VM raises the KeyboardInterrupt received() scheduled
  stdinByte() {
    for (;;) {
      this.pump();
      if (this.interruptScheduled) {
        this.interruptScheduled = false;
        return 3;
      }
      if (this.input.length) return this.input.shift();
      this.block(-1, true);
    }
  }

  // -- the host module the board's Python modules call --------------------------------------------
  hostModule() {
    return {
      wait: (timeoutMs) => this.programWait(Number(timeoutMs)),
      reply: (id, answerJson) => this.reply(Number(id), JSON.parse(String(answerJson))),
      pin_init: (pin, mode, pull, value, trigger) => {
        const before = this.level(pin);
        this.pins[pin] = { mode: String(mode), pull: String(pull), out: Number(value) ? 1 : 0,
                           trigger: Number(trigger) };
        if (this.level(pin) !== before) this.edges(pin, before, this.level(pin), 0);
      },
      pin_write: (pin, value) => {
        const setup = this.pins[pin];
        if (!setup) return;
        const before = this.level(pin);
        setup.out = Number(value) ? 1 : 0;
        this.edges(pin, before, this.level(pin), 0);
      },
      pin_read: (pin) => this.level(Number(pin)),
      pin_irq: (pin, trigger) => { if (this.pins[pin]) this.pins[pin].trigger = Number(trigger); },
      wdt: (timeoutMs) => parentPort.postMessage({ type: "wdt", timeoutMs: Number(timeoutMs) }),
      hard_reset: (cause) => {
        this.flush();
        parentPort.postMessage({ type: "reset", cause: Number(cause) });
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);    // until the thread is ended
      },
      notify: (handle, uuid, valueHex) => parentPort.postMessage({
        type: "notify", handle: Number(handle), uuid: String(uuid), value: String(valueHex),
      }),
      link_lost: (handle) => parentPort.postMessage({ type: "link_lost", handle: Number(handle) }),
      mac: () => this.mac,
      reset_cause: () => this.resetCause,
      urandom: (count) => crypto.randomBytes(Math.max(0, Math.min(Number(count), 4096))).toString("hex"),
    };
  }

  // -- the file system -------------------------------------------------------------------------------
  hostPath(boardPath) {
    const normal = path.posix.normalize(boardPath);
    if (normal !== "/flash" && !normal.startsWith("/flash/")) return null;
    return path.join(this.fsDir, normal.slice("/flash".length));
  }

  loadFlash(FS) {
    const copy = (hostDir, boardDir) => {
      for (const entry of fs.readdirSync(hostDir, { withFileTypes: true })) {
        if (entry.name.startsWith(TEMP_PREFIX)) continue;
        const hostChild = path.join(hostDir, entry.name);
        const boardChild = `${boardDir}/${entry.name}`;
        if (entry.isDirectory()) {
          FS.mkdir(boardChild);
          copy(hostChild, boardChild);
        } else if (entry.isFile()) {
          FS.writeFile(boardChild, fs.readFileSync(hostChild));
        }
      }
    };
    FS.mkdir("/flash");
    copy(this.fsDir, "/flash");
  }

  linuxErrnos(FS) {
    // Emscripten numbers errno as WASI does (ENOENT 44); MicroPython's errno module and the ESP32
    // number them as Linux does (ENOENT 2), and mpremote reads "OSError: [Errno 2] ENOENT". An error
    // is renumbered as it leaves the outermost FS call, on its way to the system call's return:
    // FS's own code compares the WASI numbers of the errors its inner calls throw.
    const wasi = { ENOENT: 44, EEXIST: 20, ENOTDIR: 54, EISDIR: 31, EINVAL: 28, EBADF: 8, EACCES: 2, EPERM: 63,
                   ENOTEMPTY: 55, EBUSY: 10, EIO: 29, ENOSPC: 51, ENOMEM: 48, ENODEV: 43, EXDEV: 75, EAGAIN: 6,
                   ENAMETOOLONG: 37, ELOOP: 32, EMFILE: 33, ESPIPE: 70, ENOTTY: 59, EROFS: 69, ENXIO: 60 };
    const toLinux = {};
    for (const [name, code] of Object.entries(wasi)) toLinux[code] = os.constants.errno[name];
    let depth = 0;
    for (const name of ["open", "close", "read", "write", "llseek", "stat", "lstat", "fstat", "mkdir", "rmdir",
                        "unlink", "rename", "readdir", "chdir", "lookupPath", "statfs", "statfsStream", "truncate",
                        "ftruncate", "getStreamChecked", "readlink", "utime", "chmod", "fchmod", "fsync"]) {
      const original = FS[name];
      if (typeof original !== "function") continue;
      FS[name] = function (...args) {
        depth += 1;
        try {
          return original.apply(FS, args);
        } catch (error) {
          if (depth === 1 && error && error.name === "ErrnoError" && !error.renumbered) {
            error.errno = toLinux[error.errno] ?? error.errno;
            error.renumbered = true;
          }
          throw error;
        } finally {
          depth -= 1;
        }
      };
    }
  }

  writeBack(FS) {
    // Emscripten's system calls go through these FS methods, so wrapping them sees every change the
    // program makes under /flash (MicroPython's VfsPosix mounted there).
    const board = this;
    const wrap = (name, after) => {
      const original = FS[name];
      FS[name] = function (...args) {
        const result = original.apply(FS, args);
        try {
          after(...args);
        } catch (error) {
          process.stderr.write(`virtual_board: writing back ${name} ${args[0]?.path ?? args[0]}: ${error.message}\n`);
        }
        return result;
      };
    };
    wrap("close", (stream) => {
      const target = board.hostPath(stream.path || "");
      if (target === null || (stream.flags & 3) === 0) return;   // read-only streams change nothing
      const found = FS.analyzePath(stream.path);
      if (!found.exists || !FS.isFile(found.object.mode)) return;
      const temp = path.join(path.dirname(target), TEMP_PREFIX + path.basename(target));
      const handle = fs.openSync(temp, "w");
      try {
        fs.writeSync(handle, FS.readFile(stream.path));
        fs.fsyncSync(handle);
      } finally {
        fs.closeSync(handle);
      }
      fs.renameSync(temp, target);
    });
    wrap("rename", (oldPath, newPath) => {
      const from = board.hostPath(oldPath);
      const to = board.hostPath(newPath);
      if (from !== null && to !== null) fs.renameSync(from, to);
    });
    wrap("unlink", (boardPath) => {
      const target = board.hostPath(boardPath);
      if (target !== null) fs.rmSync(target, { force: true });
    });
    wrap("mkdir", (boardPath) => {
      const target = board.hostPath(boardPath);
      if (target !== null) fs.mkdirSync(target, { recursive: true });
    });
    wrap("rmdir", (boardPath) => {
      const target = board.hostPath(boardPath);
      if (target !== null) fs.rmdirSync(target);
    });
  }

  commitOpenFiles() {
    // a soft reset closes what the program left open (MicroPython's gc_sweep_all runs finalisers)
    const FS = this.mp.FS;
    for (const stream of FS.streams) {
      if (stream && stream.fd > 2 && this.hostPath(stream.path || "") !== null) {
        try { FS.close(stream); } catch { /* already closed */ }
      }
    }
  }

  // -- the interpreter ------------------------------------------------------------------------------
  runPython(code) {
    try {
      this.mp.runPython(code);
    } catch (error) {
      // the board's own modules failed: say so on the serial line, as a traceback would
      this.write(`\r\nvirtual board: ${String(error.message || error).replace(/\n/g, "\r\n")}\r\n`);
    }
  }

  async startInterpreter() {
    const mp = await loadMicroPython({
      heapsize: this.heapBytes, linebuffer: false,
      stdout: (bytes) => this.pythonOutput(bytes), stderr: (bytes) => this.pythonOutput(bytes),
      stdin: () => this.stdinByte(),
    });
    this.mp = mp;
    const FS = mp.FS;
    this.loadFlash(FS);
    this.writeBack(FS);
    this.linuxErrnos(FS);
    FS.mkdir("/board");
    for (const [name, source] of Object.entries(this.modules)) FS.writeFile(`/board/${name}`, source);
    mp.registerJsModule("_board_host", this.hostModule());
    // The frozen modules are imported from a mount that is gone again before boot.py runs; then the
    // flash becomes "/", as on the ESP32.
    mp.runPython([
      "import os, sys",
      "os.umount('/')",
      "os.mount(os.VfsPosix('/board'), '/')",
      "os.chdir('/')",
      "sys.path[:] = ['', '.frozen']",
      "import _board",
      "_board.start()",
      "os.umount('/')",
      "os.mount(os.VfsPosix('/flash'), '/')",
      "sys.path[:] = ['', '.frozen', '/lib']",
      "os.chdir('/')",
      "del os, sys",
    ].join("\n"));
  }

  // pyexec_file_if_exists: true when the file asked for a soft reset (SystemExit)
  runFile(name) {
    this.mp.runPython(`import _board\n_board_soft_reset = _board.run_file(${JSON.stringify(name)})`);
    const softReset = this.mp.globals.get("_board_soft_reset");
    this.mp.runPython("del _board_soft_reset");
    return Boolean(softReset);
  }

  async boot(raw) {
    // boot.py always; main.py only when the board comes up in the friendly REPL (a soft reset from the
    // raw REPL, which is how mpremote starts, skips it - so a running program never gets in its way)
    for (;;) {
      await this.startInterpreter();
      let softReset = this.runFile("boot.py");
      if (!softReset && !raw) softReset = this.runFile("main.py");
      if (!softReset) break;
      this.write("MPY: soft reboot\r\n");
    }
    this.suppress = null;
    if (raw) {
      this.flush();
      this.mp.replInit();
      this.mp.replProcessChar(1);
      this.output = [];                      // the banner and the prompt a board in raw mode never shows
      this.write("raw REPL; CTRL-B to exit\r\n>");
    } else {
      this.mp.replInit();
    }
    this.rawMode = raw;
    this.rawLineEmpty = true;
  }

  // raw-paste mode (Ctrl-E A Ctrl-A): the command arrives under window-size flow control
  rawPaste() {
    this.write("R\x01");
    this.write(String.fromCharCode(RAW_PASTE_WINDOW_BYTES & 0xff, RAW_PASTE_WINDOW_BYTES >> 8));
    const command = [];
    let windowLeft = RAW_PASTE_WINDOW_BYTES;
    for (;;) {
      this.flush();
      const byte = this.nextByte();
      if (byte === 4) break;
      if (byte === 3) {
        // Ctrl-C ends the paste with KeyboardInterrupt, as MicroPython's stdin reader does
        this.write("\x04\x04Traceback (most recent call last):\r\nKeyboardInterrupt: \r\n\x04>");
        return 0;
      }
      command.push(byte);
      if (--windowLeft === 0) {
        this.write("\x01");                  // consumed: the host may send another window
        windowLeft = RAW_PASTE_WINDOW_BYTES;
      }
    }
    this.write("\x04");                      // end of data acknowledged; the command runs
    if (command.length === 0) {
      this.write("\x04\x04>");
      return 0;
    }
    for (const byte of command) this.mp.replProcessChar(byte);
    this.suppress = [0x4f, 0x4b];            // the raw REPL's "OK" is not part of raw-paste's answer
    return this.mp.replProcessChar(4);
  }

  feed(byte) {
    const mark = this.output.length;
    const result = this.mp.replProcessChar(byte);
    const said = Buffer.from(this.output.slice(mark)).toString("latin1");
    if (!this.rawMode && byte === 1 && said.includes("raw REPL; CTRL-B to exit")) this.rawMode = true;
    else if (this.rawMode && byte === 2) this.rawMode = false;
    if (this.rawMode) this.rawLineEmpty = byte === 1 || byte === 3 || byte === 4;
    return result;
  }

  async run() {
    let raw = false;
    await this.boot(raw);
    for (;;) {
      const byte = this.nextByte();
      let result;
      if (this.rawMode && this.rawLineEmpty && byte === 5) {
        const next = this.nextByte();
        const last = next === 0x41 ? this.nextByte() : null;
        if (next === 0x41 && last === 1) {
          result = this.rawPaste();
          this.rawLineEmpty = true;
        } else {
          result = this.feed(5);
          if (!(result & PYEXEC_FORCED_EXIT)) result = this.feed(next);
          if (last !== null && !(result & PYEXEC_FORCED_EXIT)) result = this.feed(last);
        }
      } else {
        result = this.feed(byte);
      }
      this.flush();
      if (result & PYEXEC_FORCED_EXIT) {
        raw = this.rawMode;
        this.commitOpenFiles();
        parentPort.postMessage({ type: "links_lost" });
        this.write("MPY: soft reboot\r\n");
        await this.boot(raw);
        this.flush();
      }
    }
  }
}

async function runWorker() {
  await new Board(workerData).run();
}

if (isMainThread) runMain();
else await runWorker();
