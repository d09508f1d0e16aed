// A single helia (js-libp2p) IPFS node, driven over stdin/stdout, used as a
// real-world test peer for p2phier (see tests/interop/helia_peer.py).
//
//   node --import ./polyfill.mjs peer.mjs [--listen MA] [--blockstore DIR] [--key-file PATH]
//
// libp2p: TCP only, noise, yamux, identify; bitswap 1.2.0 via @helia/bitswap.
// No bootstrap, mDNS, DHT, autonat, relay, UPnP, HTTP gateways or delegated
// routing: the node only talks to peers it is told to dial, or that dial it.
//
// Protocol: one JSON object per line on stdin, exactly one JSON reply line per
// command on stdout (a "req" field, when given, is echoed back). The ready line
// `{"ok":true,"ready":true,"peer_id":...,"addrs":[...]}` is printed first.
// Logs go to stderr. Commands run one at a time, in order. A failed command
// replies {"ok":false,"error":"..."}; it never ends the process. EOF on stdin,
// SIGTERM or SIGINT stop the node cleanly, like {"cmd":"stop"}.

import { once, setMaxListeners } from 'node:events'
import { createReadStream, createWriteStream } from 'node:fs'
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { dirname, isAbsolute } from 'node:path'
import { createInterface } from 'node:readline'
import { parseArgs } from 'node:util'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import { withLibp2pLight } from '@helia/libp2p'
import { unixfs } from '@helia/unixfs'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { FsBlockstore } from 'blockstore-fs'
import { MemoryBlockstore } from 'blockstore-core'
import { MemoryDatastore } from 'datastore-core'
import { createHeliaLight } from 'helia'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { CID } from 'multiformats/cid'

// Exactly `ipfs add --cid-version=1 --raw-leaves` (kubo): CIDv1, raw leaves,
// 256 KiB fixed chunks, balanced DAG of at most 174 links per node, and a file
// of one chunk is that raw leaf itself.
const IMPORTER_OPTIONS = Object.freeze({
  cidVersion: 1,
  rawLeaves: true,
  reduceSingleLeafToSelf: true,
  chunker: fixedSize({ chunkSize: 262144 }),
  layout: balanced({ maxChildrenPerNode: 174 }),
  fieldOrder: 'links-first',
  wrapWithDirectory: false
})

const log = (...args) => { process.stderr.write(`[helia-peer] ${args.join(' ')}\n`) }

function reply (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function errorText (err) {
  if (err == null) return 'unknown error'
  const name = err.name != null && err.name !== 'Error' ? `${err.name}: ` : ''
  return `${name}${err.message ?? String(err)}`
}

async function loadKey (keyFile) {
  if (keyFile == null) return generateKeyPair('Ed25519')
  try {
    return privateKeyFromProtobuf(await readFile(keyFile))
  } catch (err) {
    if (err.code !== 'ENOENT') throw err
  }
  const key = await generateKeyPair('Ed25519')
  await writeFile(keyFile, privateKeyToProtobuf(key), { mode: 0o600 })
  return key
}

const { values: opts } = parseArgs({
  options: {
    listen: { type: 'string', default: '/ip4/127.0.0.1/tcp/0' },
    blockstore: { type: 'string' }, // directory; in memory when omitted
    'key-file': { type: 'string' }
  },
  strict: true
})

const privateKey = await loadKey(opts['key-file'])
let blockstore
if (opts.blockstore != null) {
  await mkdir(opts.blockstore, { recursive: true })
  blockstore = new FsBlockstore(opts.blockstore)
} else {
  blockstore = new MemoryBlockstore()
}

const helia = withBitswap(withLibp2pLight(createHeliaLight({
  blockstore,
  datastore: new MemoryDatastore()
}), {
  privateKey,
  addresses: { listen: [opts.listen] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  peerDiscovery: [],
  services: { identify: identify() }
}))
await helia.start()
const libp2p = helia.libp2p
const fs = unixfs(helia)

function idReply () {
  return {
    ok: true,
    peer_id: libp2p.peerId.toString(),
    addrs: libp2p.getMultiaddrs().map(ma => ma.toString())
  }
}

function requireString (msg, key) {
  const value = msg[key]
  if (typeof value !== 'string' || value.length === 0) {
    throw new Error(`"${key}" must be a non-empty string`)
  }
  return value
}

function requirePath (msg, key) {
  const value = requireString(msg, key)
  if (!isAbsolute(value)) throw new Error(`"${key}" must be an absolute path`)
  return value
}

async function cmdAdd (msg) {
  const path = requirePath(msg, 'path')
  const started = performance.now()
  const cid = await fs.addByteStream(createReadStream(path, { highWaterMark: 1 << 20 }), IMPORTER_OPTIONS)
  return { ok: true, cid: cid.toString(), seconds: (performance.now() - started) / 1000 }
}

async function cmdFetch (msg) {
  const cid = CID.parse(requireString(msg, 'cid'))
  const out = requirePath(msg, 'out')
  const providers = msg.providers ?? []
  if (!Array.isArray(providers)) throw new Error('"providers" must be a list of multiaddrs')
  const timeoutS = msg.timeout_s ?? 120
  if (typeof timeoutS !== 'number' || !(timeoutS > 0)) throw new Error('"timeout_s" must be > 0')
  const signal = AbortSignal.timeout(timeoutS * 1000)
  setMaxListeners(Infinity, signal) // one listener per block being fetched
  const started = performance.now()

  // Dial every provider first, so that bitswap's wants reach them (this node
  // has no content routing at all).
  const dialErrors = []
  for (const addr of providers) {
    try {
      await libp2p.dial(multiaddr(addr), { signal })
    } catch (err) {
      dialErrors.push(`${addr}: ${errorText(err)}`)
      log(`dial ${addr} failed: ${errorText(err)}`)
    }
  }
  if (providers.length > 0 && dialErrors.length === providers.length) {
    throw new Error(`could not dial any provider: ${dialErrors.join('; ')}`)
  }
  const dialSeconds = (performance.now() - started) / 1000

  await mkdir(dirname(out), { recursive: true })
  const part = `${out}.part`
  let bytes = 0
  const sink = createWriteStream(part)
  try {
    for await (const chunk of fs.cat(cid, { signal })) {
      bytes += chunk.byteLength
      if (!sink.write(chunk)) await once(sink, 'drain') // rejects on 'error'
    }
    sink.end()
    await once(sink, 'finish')
    await rename(part, out)
  } catch (err) {
    sink.destroy()
    await rm(part, { force: true })
    if (signal.aborted) throw new Error(`timed out after ${timeoutS} s (${bytes} bytes written): ${errorText(err)}`)
    throw err
  }
  const res = { ok: true, bytes, seconds: (performance.now() - started) / 1000, dial_seconds: dialSeconds }
  if (dialErrors.length > 0) res.dial_errors = dialErrors
  return res
}

async function cmdHas (msg) {
  const cid = CID.parse(requireString(msg, 'cid'))
  // the raw blockstore: local only, never the network
  return { ok: true, has: await blockstore.has(cid) }
}

async function cmdConnect (msg) {
  const addr = requireString(msg, 'addr')
  const timeoutS = msg.timeout_s ?? 30
  const conn = await libp2p.dial(multiaddr(addr), { signal: AbortSignal.timeout(timeoutS * 1000) })
  return { ok: true, peer_id: conn.remotePeer.toString() }
}

function cmdPeers () {
  return { ok: true, peers: libp2p.getPeers().map(p => p.toString()) }
}

let stopping = null
async function shutdown (code) {
  if (stopping == null) {
    stopping = (async () => {
      try {
        await helia.stop()
      } catch (err) {
        log(`stop failed: ${errorText(err)}`)
        code = 1
      }
      return code
    })()
  }
  return stopping
}

const handlers = {
  id: async () => idReply(),
  add: cmdAdd,
  fetch: cmdFetch,
  has: cmdHas,
  connect: cmdConnect,
  peers: async () => cmdPeers()
}

reply({ ...idReply(), ready: true })
log(`ready ${libp2p.peerId.toString()} ${libp2p.getMultiaddrs().map(String).join(' ')}`)

process.on('SIGTERM', () => { shutdown(0).then(code => process.exit(code)) })
process.on('SIGINT', () => { shutdown(0).then(code => process.exit(code)) })

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
for await (const line of lines) {
  if (line.trim() === '') continue
  let msg
  try {
    msg = JSON.parse(line)
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) throw new Error('not a JSON object')
  } catch (err) {
    reply({ ok: false, error: `bad command line: ${errorText(err)}` })
    continue
  }
  const req = msg.req
  const withReq = (obj) => (req === undefined ? obj : { ...obj, req })
  if (msg.cmd === 'stop') {
    const code = await shutdown(0)
    reply(withReq({ ok: code === 0 }))
    process.exit(code)
  }
  const handler = Object.hasOwn(handlers, msg.cmd) ? handlers[msg.cmd] : undefined
  if (handler == null) {
    reply(withReq({ ok: false, error: `unknown cmd: ${JSON.stringify(msg.cmd)}` }))
    continue
  }
  try {
    reply(withReq(await handler(msg)))
  } catch (err) {
    log(`${msg.cmd} failed: ${err?.stack ?? errorText(err)}`)
    reply(withReq({ ok: false, error: errorText(err) }))
  }
}

// stdin closed: the driver went away
process.exit(await shutdown(0))
