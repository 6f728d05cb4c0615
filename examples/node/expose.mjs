// The side you want to reach (server mode): joins a room and lets the peer reach the
// services its allow rules permit (default: anything on loopback, like `ssh -L`).
//
//   node expose.mjs --room my-home-box --secret "$SECRET" \
//     --signal-url http://rendezvous.example.org:8080/ --stun rendezvous.example.org:3478
//
// For a local try, host the rendezvous here too (`--serve 127.0.0.1:8080`) and point
// connect.mjs at the URL and STUN address it prints. Ctrl-C stops.
import { parseArgs } from 'node:util'

import { Engine, SignalServer } from 'stunfwd'

const { values } = parseArgs({
  options: {
    room: { type: 'string' },
    secret: { type: 'string' },
    'signal-url': { type: 'string' },
    stun: { type: 'string', multiple: true, default: [] },
    allow: { type: 'string', multiple: true },
    bind: { type: 'string', default: '0.0.0.0:0' },
    serve: { type: 'string' },
    'serve-stun': { type: 'string', default: '127.0.0.1:0' },
  },
})

let signal = null
if (values.serve) {
  signal = await SignalServer.start({ http: values.serve, stun: values['serve-stun'] })
  console.log(`rendezvous: ${signal.url} stun: ${signal.stunAddr}`)
}
const signalUrl = values['signal-url'] ?? signal?.url
const stunServers = values.stun.length > 0 ? values.stun : signal ? [signal.stunAddr] : []
if (!values.room || !signalUrl || stunServers.length === 0) {
  console.error('usage: node expose.mjs --room ROOM --secret SECRET (--signal-url URL --stun HOST:PORT | --serve HOST:PORT) [--allow RULE]...')
  process.exit(2)
}

const engine = Engine.start({
  mode: 'server',
  room: values.room,
  secret: values.secret,
  signalUrl,
  stunServers,
  bind: values.bind,
  ...(values.allow ? { allow: values.allow } : {}),
})
engine.on('state', (s) => console.log(`state: ${s.text}`))
engine.on('error', (e) => console.log(`error ${e.code}: ${e.message}`))
console.log(`exposing in room ${values.room} from ${engine.localAddr}; Ctrl-C stops`)

async function shutdown() {
  await engine.stop()
  await signal?.stop()
  const t = engine.stats().totals
  console.log(`stopped; served ${t.connectionsOpened} connections, ${t.bytesSent} bytes sent, ${t.bytesReceived} received`)
}
process.once('SIGINT', shutdown)
process.once('SIGTERM', shutdown)
