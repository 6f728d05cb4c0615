// Shared helpers of the node:test suite: the in-process rendezvous, engine pairs,
// echo services and child processes, all on 127.0.0.1.
import { spawn } from 'node:child_process'
import dgram from 'node:dgram'
import net from 'node:net'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)

/** The package under test (the directory's own loader and `.node` file). */
export const { Engine, SignalServer, setLogger } = require('../index.js')

export const PACKAGE_DIR = fileURLToPath(new URL('..', import.meta.url))
export const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url))

let rooms = 0

/** A room name unique within this process. */
export function room() {
  rooms += 1
  return `node-test-${process.pid}-${rooms}`
}

/** Starts a rendezvous server that the test stops when it ends. */
export async function rendezvous(t) {
  const server = await SignalServer.start()
  t.after(() => server.stop())
  return server
}

/** An engine config for `mode` in `roomName`, bound to loopback. */
export function config(signal, mode, roomName, extra = {}) {
  return {
    mode,
    room: roomName,
    secret: 's3cret',
    signalUrl: signal.url,
    stunServers: [signal.stunAddr],
    bind: '127.0.0.1:0',
    ...extra,
  }
}

/**
 * Posts an offer with a forged MAC into `role`'s mailbox of `roomName`, as a tampering
 * rendezvous operator would (the mailbox name is derived from room and secret,
 * docs/protocol.md section 4).
 */
export async function forgeOffer(signal, roomName, secret, role) {
  const { createHmac } = await import('node:crypto')
  const key = createHmac('sha256', secret).update('stunfwd/v1/' + roomName).digest()
  const mailbox = createHmac('sha256', key).update('stunfwd/v2/mailbox').digest('hex')
  const offer = {
    v: 2, role, id: '0'.repeat(32), nonce: '1'.repeat(32), ts: Math.floor(Date.now() / 1000),
    candidates: ['127.0.0.1:9'], host: 1, relay: 0, turn: false,
    fp: 'ab'.repeat(32), nat: 'open', mac: '00'.repeat(32),
  }
  const answer = await fetch(signal.url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ room: mailbox, role, data: JSON.stringify(offer) }),
  })
  if (!answer.ok) throw new Error(`forged offer refused: ${answer.status}`)
}

/** A connected server/client pair; the client has `mappings`. Stopped when the test ends. */
export async function pair(t, signal, mappings = []) {
  const name = room()
  const server = Engine.start(config(signal, 'server', name))
  t.after(() => server.stop())
  const client = Engine.start(config(signal, 'client', name, { mappings }))
  t.after(() => client.stop())
  await Promise.all([client.waitConnected(20000), server.waitConnected(20000)])
  return { server, client }
}

/** A TCP echo service; closed when the test ends. */
export async function tcpEcho(t) {
  const server = net.createServer((socket) => {
    socket.on('error', () => {})
    socket.pipe(socket)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise((resolve) => server.close(resolve)))
  return server.address().port
}

/** A UDP echo service; closed when the test ends. */
export async function udpEcho(t) {
  const socket = dgram.createSocket('udp4')
  socket.on('message', (msg, from) => socket.send(msg, from.port, from.address))
  await new Promise((resolve) => socket.bind(0, '127.0.0.1', resolve))
  t.after(() => new Promise((resolve) => socket.close(resolve)))
  return socket.address().port
}

/** Sends `data` over a new TCP connection to `port` and returns what comes back once
 * `expect` bytes have arrived. */
export function tcpExchange(port, data, expect = data.length) {
  return new Promise((resolve, reject) => {
    const chunks = []
    let received = 0
    const socket = net.connect(port, '127.0.0.1', () => socket.end(data))
    socket.on('data', (chunk) => {
      chunks.push(chunk)
      received += chunk.length
      if (received >= expect) {
        socket.destroy()
        resolve(Buffer.concat(chunks))
      }
    })
    socket.on('error', reject)
    socket.on('close', () => {
      if (received < expect) reject(new Error(`connection closed after ${received} of ${expect} bytes`))
    })
  })
}

/** Sends a datagram to `port` every `everyMs` until the first answer arrives (as a UDP
 * client retransmits); resolves with the answer and the number of datagrams sent. */
export function udpExchange(port, payload, { everyMs = 250, timeoutMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket('udp4')
    let sent = 0
    const send = () => {
      sent += 1
      socket.send(payload, port, '127.0.0.1')
    }
    const resend = setInterval(send, everyMs)
    const timer = setTimeout(() => {
      clearInterval(resend)
      socket.close()
      reject(new Error(`no UDP answer within ${timeoutMs} ms (${sent} datagrams sent)`))
    }, timeoutMs)
    socket.on('message', (msg) => {
      clearInterval(resend)
      clearTimeout(timer)
      socket.close()
      resolve({ answer: msg, sent })
    })
    send()
  })
}

/** Runs `node file args...`; resolves with its exit code, signal, output and the time
 * each output line arrived. */
export function runNode(file, args = [], { cwd, timeoutMs = 30000, env } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [file, ...args], {
      cwd,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const lines = []
    let stdout = ''
    let stderr = ''
    let pending = ''
    child.stdout.on('data', (chunk) => {
      stdout += chunk
      pending += chunk
      let nl
      while ((nl = pending.indexOf('\n')) >= 0) {
        lines.push({ line: pending.slice(0, nl), at: performance.now() })
        pending = pending.slice(nl + 1)
      }
    })
    child.stderr.on('data', (chunk) => {
      stderr += chunk
    })
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`${file} did not exit within ${timeoutMs} ms\nstdout:\n${stdout}\nstderr:\n${stderr}`))
    }, timeoutMs)
    child.on('error', reject)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, lines, exitedAt: performance.now(), child })
    })
  })
}

/** Records the gaps between the ticks of a `setInterval(periodMs)`. */
export function tickRecorder(periodMs = 10) {
  const ticks = []
  const timer = setInterval(() => ticks.push(performance.now()), periodMs)
  return {
    /** Ticks and the longest gap within [from, to]. */
    window(from, to) {
      const inside = ticks.filter((t) => t >= from && t <= to)
      const edges = [from, ...inside, to]
      let maxGap = 0
      for (let i = 1; i < edges.length; i++) maxGap = Math.max(maxGap, edges[i] - edges[i - 1])
      return { ticks: inside.length, maxGap, duration: to - from }
    },
    stop() {
      clearInterval(timer)
    },
  }
}
