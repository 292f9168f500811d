// The compat scenario (compat/README.md) with node-postgres (`pg`) and
// pg-copy-streams: SCRAM with and without TLS, server-side prepared
// statements (named queries), a transaction across two shards, COPY FROM
// STDIN / TO STDOUT, errors then recovery, and cancel. Parameters come
// from the COMPAT_* environment variables set by compat/run.sh. Prints one
// "ok" line per passed step; exits 1 with a "FAIL" line at the first
// failed check.
'use strict'
const fs = require('fs')
const tls = require('tls')
const { pipeline } = require('stream/promises')
const { Readable, Writable } = require('stream')
const pg = require('pg')
const copyStreams = require('pg-copy-streams')

function need(name) {
  const v = process.env[name]
  if (!v) fail(`environment variable ${name} is not set (compat/run.sh sets it)`)
  return v
}
function fail(msg) {
  console.log(`FAIL ${msg}`)
  process.exit(1)
}
function ok(msg) {
  console.log(`ok ${msg}`)
}
function eq(what, got, want) {
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    fail(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`)
  }
}

const env = {
  host: need('COMPAT_HOST'),
  port: Number(need('COMPAT_PORT')),
  user: need('COMPAT_USER'),
  password: need('COMPAT_PASSWORD'),
  database: need('COMPAT_DB'),
  rootCert: process.env.COMPAT_SSLROOTCERT || '',
  client: process.env.COMPAT_CLIENT || 'node',
  a: Number(need('COMPAT_AID_A')),
  b: Number(need('COMPAT_AID_B')),
  tid: Number(need('COMPAT_TID')),
}

function config(ssl, extra) {
  return Object.assign(
    { host: env.host, port: env.port, user: env.user, password: env.password, database: env.database, ssl, connectionTimeoutMillis: 10000 },
    extra || {},
  )
}

async function connect(ssl, extra) {
  const c = new pg.Client(config(ssl, extra))
  await c.connect()
  return c
}

function isTLS(c) {
  return c.connection.stream instanceof tls.TLSSocket && c.connection.stream.encrypted === true
}

async function expectError(what, want, fn) {
  try {
    await fn()
  } catch (err) {
    if (err.code !== want) fail(`${what}: want SQLSTATE ${want}, got ${err.code}: ${err.message}`)
    return
  }
  fail(`${what}: no error, want SQLSTATE ${want}`)
}

async function main() {
  // 1. SCRAM with TLS (sslmode=require: no CA check) and without.
  const client = await connect({ rejectUnauthorized: false })
  if (!isTLS(client)) fail('ssl on: the connection is not TLS')
  ok(`connect tls: ssl (require), SCRAM, ${client.connection.stream.getProtocol()}`)
  if (env.rootCert) {
    const v = await connect({ ca: fs.readFileSync(env.rootCert), rejectUnauthorized: true })
    if (!isTLS(v)) fail('ssl verify: the connection is not TLS')
    await v.end()
    ok('connect tls verify-full: the proxy presented the dev certificate')
  }
  const plain = await connect(false)
  if (isTLS(plain)) fail('ssl off: the connection is TLS')
  await plain.end()
  ok('connect plain: ssl off, SCRAM, not TLS')
  await expectError('wrong password', '28P01', async () => {
    const bad = new pg.Client(config(false, { password: 'wrong' }))
    try {
      await bad.connect()
    } finally {
      await bad.end().catch(() => {})
    }
  })
  ok('auth: a wrong password is refused (28P01)')

  // 2. Server-side prepared statements: a named query is parsed once per
  // connection, then only bound and executed; unnamed ones use Parse/Bind.
  const byAid = 'SELECT aid, bid, abalance FROM pgbench_accounts WHERE aid = $1'
  for (let round = 0; round < 3; round++) {
    for (const aid of [env.a, env.b]) {
      for (const q of [{ name: 'by_aid', text: byAid, values: [aid] }, { text: byAid, values: [aid] }]) {
        const r = await client.query(q)
        eq(`prepared read aid ${aid}`, r.rows, [{ aid, bid: 1, abalance: 3 * aid }])
      }
    }
  }
  const any = await client.query({
    name: 'by_aids',
    // bigint results come back as strings; a cast around an aggregate is
    // refused across shards (0A000), so none here.
    text: 'SELECT count(*) AS n, sum(abalance) AS s FROM pgbench_accounts WHERE aid = ANY($1)',
    values: [[env.a, env.b]],
  })
  eq('prepared read = ANY', any.rows[0], { n: '2', s: String(3 * env.a + 3 * env.b) })
  ok(`prepared: named statements read aids ${env.a} and ${env.b} on both shards, = ANY($1) fan-out`)

  // 3. A transaction across two shards: commit, then rollback.
  const balances = async () => {
    const x = await client.query({ name: 'bal', text: 'SELECT abalance FROM pgbench_accounts WHERE aid = $1', values: [env.a] })
    const y = await client.query({ name: 'bal', text: 'SELECT abalance FROM pgbench_accounts WHERE aid = $1', values: [env.b] })
    return [x.rows[0].abalance, y.rows[0].abalance]
  }
  await client.query('BEGIN')
  await client.query('UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2', [11, env.a])
  await client.query('UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2', [22, env.b])
  await client.query('COMMIT')
  const want = [3 * env.a + 11, 3 * env.b + 22]
  eq('balances after commit', await balances(), want)
  ok(`transaction: BEGIN; UPDATE aid ${env.a}; UPDATE aid ${env.b}; COMMIT -> both visible`)
  await client.query('BEGIN')
  for (const aid of [env.a, env.b]) {
    await client.query('UPDATE pgbench_accounts SET abalance = abalance + 1000 WHERE aid = $1', [aid])
  }
  await client.query('ROLLBACK')
  eq('balances after rollback', await balances(), want)
  ok('transaction: BEGIN; UPDATE both; ROLLBACK -> both unchanged')

  // 4. COPY FROM STDIN and TO STDOUT with pg-copy-streams.
  const marker = `compat ${env.client}`
  const lines = []
  for (let i = 1; i <= 20; i++) lines.push(`${env.tid}\t1\t${i}\t${i}\t2020-01-01 00:00:00\t${marker}\n`)
  const into = client.query(copyStreams.from('COPY pgbench_history (tid, bid, aid, delta, mtime, filler) FROM STDIN'))
  await pipeline(Readable.from(lines), into)
  eq('COPY FROM rows', into.rowCount, 20)
  let out = ''
  const from = client.query(copyStreams.to(`COPY (SELECT aid, delta FROM pgbench_history WHERE filler = '${marker}') TO STDOUT`))
  await pipeline(from, new Writable({ write(chunk, _enc, cb) { out += chunk; cb() } }))
  eq('COPY TO STDOUT lines', out.split('\n').filter(Boolean).length, 20)
  const cnt = await client.query('SELECT count(*) AS n, sum(delta) AS s FROM pgbench_history WHERE filler = $1', [marker])
  eq('count after COPY', cnt.rows[0], { n: '20', s: '210' })
  ok('copy: pg-copy-streams 20 rows FROM STDIN into pgbench_history, COPY TO STDOUT reads 20 back')

  // 5. Errors, then the same connection works; in a transaction too.
  await expectError('SELECT 1/0 (simple protocol)', '22012', () => client.query('SELECT 1/0'))
  await expectError('SELECT $1::int/0 (extended protocol)', '22012', () => client.query('SELECT $1::int/0', [1]))
  await expectError('syntax error', '42601', () => client.query('selec 1'))
  eq('SELECT 1 after errors', (await client.query('SELECT 1 AS one')).rows, [{ one: 1 }])
  await client.query('BEGIN')
  await client.query('UPDATE pgbench_accounts SET abalance = abalance + 5000 WHERE aid = $1', [env.a])
  await expectError('SELECT 1/0 in transaction', '22012', () => client.query('SELECT 1/0'))
  await expectError('SELECT 1 in aborted transaction', '25P02', () => client.query('SELECT 1'))
  await client.query('ROLLBACK')
  eq('balances after failed transaction', await balances(), want)
  ok('error: 22012 (simple and extended) and 42601 reported, SELECT works after; in a transaction 22012, then 25P02, ROLLBACK, the UPDATE is undone')

  // 6. Cancel: node-postgres documents no cancel API; Client#cancel(client,
  // query) (lib/client.js) opens a second connection and sends a
  // CancelRequest with the BackendKeyData the proxy gave this client.
  if (typeof pg.Client.prototype.cancel !== 'function') fail('cancel: this pg has no Client#cancel')
  const sleep = new pg.Query('SELECT pg_sleep(30)')
  const done = new Promise((resolve) => {
    sleep.on('error', (err) => resolve(err))
    sleep.on('end', () => resolve(null))
  })
  const start = Date.now()
  client.query(sleep)
  await new Promise((r) => setTimeout(r, 1000))
  const canceller = new pg.Client(config(false))
  // Client#cancel reads client.activeQuery, which pg 8 flags as deprecated.
  process.noDeprecation = true
  canceller.cancel(client, sleep)
  let timer
  const err = await Promise.race([done, new Promise((r) => (timer = setTimeout(() => r('timeout'), 6000)))])
  clearTimeout(timer)
  if (err === 'timeout') fail('cancel: SELECT pg_sleep(30) still running 5 s after the CancelRequest')
  if (!err || err.code !== '57014') fail(`cancel: want SQLSTATE 57014, got ${err && (err.code + ': ' + err.message)}`)
  const took = Date.now() - start
  eq('SELECT 1 after cancel', (await client.query('SELECT 1 AS one')).rows, [{ one: 1 }])
  ok(`cancel: Client#cancel during SELECT pg_sleep(30) -> CancelRequest, 57014 after ${took} ms; the connection works`)
  await client.end()
  console.log(`PASS ${env.client}`)
}

main().catch((err) => fail(`${err.code || ''} ${err.stack || err}`))
