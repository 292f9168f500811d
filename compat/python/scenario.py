"""The compat scenario (compat/README.md) with psycopg2 (Debian's
python3-psycopg2; run with /usr/bin/python3): SCRAM with and without TLS,
queries with parameters (psycopg2 binds them client-side: it has no
server-side prepared statements), SQL PREPARE/EXECUTE where the proxy
supports it, a transaction across two shards, COPY (copy_expert), errors
then recovery, and cancel (conn.cancel() from a thread). Parameters come
from the COMPAT_* environment variables set by compat/run.sh. Prints one
"ok" line per passed step; exits 1 with a "FAIL" line at the first failed
check.
"""
import io
import os
import sys
import threading
import time

import psycopg2
import psycopg2.errors


def fail(msg):
    print("FAIL " + msg, flush=True)
    sys.exit(1)


def ok(msg):
    print("ok " + msg, flush=True)


def need(name):
    v = os.environ.get(name)
    if not v:
        fail("environment variable %s is not set (compat/run.sh sets it)" % name)
    return v


def eq(what, got, want):
    if got != want:
        fail("%s: got %r, want %r" % (what, got, want))


HOST, PORT = need("COMPAT_HOST"), need("COMPAT_PORT")
USER, PASSWORD, DB = need("COMPAT_USER"), need("COMPAT_PASSWORD"), need("COMPAT_DB")
ROOTCERT = os.environ.get("COMPAT_SSLROOTCERT", "")
CLIENT = os.environ.get("COMPAT_CLIENT", "psycopg2")
A, B, TID = int(need("COMPAT_AID_A")), int(need("COMPAT_AID_B")), int(need("COMPAT_TID"))


def connect(sslmode, **kw):
    args = dict(host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=DB,
                sslmode=sslmode, connect_timeout=10)
    args.update(kw)
    return psycopg2.connect(**args)


def expect_error(what, want, cur, sql, args=None):
    try:
        cur.execute(sql, args)
    except psycopg2.Error as e:
        if e.pgcode != want:
            fail("%s: want SQLSTATE %s, got %s: %s" % (what, want, e.pgcode, e))
        return e
    fail("%s: no error, want SQLSTATE %s" % (what, want))


def one(cur, sql, args=None):
    cur.execute(sql, args)
    return cur.fetchone()


def main():
    # 1. SCRAM with TLS and without; libpq says which.
    conn = connect("require")
    if not conn.info.ssl_in_use:
        fail("sslmode=require: ssl_in_use is false")
    ok("connect tls: sslmode=require, SCRAM, %s" % conn.info.ssl_attribute("protocol"))
    if ROOTCERT:
        v = connect("verify-full", sslrootcert=ROOTCERT)
        if not v.info.ssl_in_use:
            fail("sslmode=verify-full: ssl_in_use is false")
        v.close()
        ok("connect tls verify-full: the proxy presented the dev certificate")
    plain = connect("disable")
    if plain.info.ssl_in_use:
        fail("sslmode=disable: ssl_in_use is true")
    plain.close()
    ok("connect plain: sslmode=disable, SCRAM, not TLS")
    try:
        connect("disable", password="wrong").close()
        fail("wrong password accepted")
    except psycopg2.OperationalError as e:
        if "password authentication failed" not in str(e):
            fail("wrong password: unexpected error %s" % e)
    ok("auth: a wrong password is refused")

    conn.autocommit = True
    cur = conn.cursor()

    # 2. psycopg2 has no server-side prepared statements: parameters are
    # bound client-side and sent as simple queries.
    by_aid = "SELECT aid, bid, abalance FROM pgbench_accounts WHERE aid = %s"
    for _ in range(3):
        for aid in (A, B):
            eq("read aid %d" % aid, one(cur, by_aid, (aid,)), (aid, 1, 3 * aid))
    eq("read = ANY", one(cur, "SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE aid = ANY(%s)", ([A, B],)),
       (2, 3 * A + 3 * B))
    ok("read: parameterized queries (client-side binding) read aids %d and %d on both shards, = ANY fan-out" % (A, B))
    # SQL-level PREPARE/EXECUTE: the EXECUTE names no table, so the proxy
    # refuses PREPARE of a statement on a sharded table (README, known
    # limits) and accepts it for the default shard inside a transaction.
    e = expect_error("PREPARE on a sharded table", "0A000", cur,
                     "PREPARE by_aid(int) AS SELECT abalance FROM pgbench_accounts WHERE aid = $1")
    if "extended query protocol" not in (e.diag.message_hint or ""):
        fail("PREPARE on a sharded table: hint %r" % e.diag.message_hint)
    conn.autocommit = False
    cur.execute("PREPARE twice(int) AS SELECT $1 * 2")
    eq("EXECUTE twice(21)", one(cur, "EXECUTE twice(%s)", (21,)), (42,))
    eq("EXECUTE twice(5)", one(cur, "EXECUTE twice(%s)", (5,)), (10,))
    cur.execute("DEALLOCATE twice")
    conn.commit()
    conn.autocommit = True
    ok("prepare: SQL PREPARE on pgbench_accounts refused with 0A000 and a hint (documented limit); "
       "PREPARE/EXECUTE/DEALLOCATE of a default-shard statement in a transaction works")

    # 3. A transaction across two shards: commit, then rollback
    # (psycopg2's own transaction handling: autocommit off).
    def balances():
        return one(cur, "SELECT abalance FROM pgbench_accounts WHERE aid = %s", (A,))[0], \
            one(cur, "SELECT abalance FROM pgbench_accounts WHERE aid = %s", (B,))[0]

    conn.autocommit = False
    cur.execute("UPDATE pgbench_accounts SET abalance = abalance + %s WHERE aid = %s", (11, A))
    cur.execute("UPDATE pgbench_accounts SET abalance = abalance + %s WHERE aid = %s", (22, B))
    conn.commit()
    want = (3 * A + 11, 3 * B + 22)
    eq("balances after commit", balances(), want)
    conn.commit()
    ok("transaction: BEGIN; UPDATE aid %d; UPDATE aid %d; COMMIT -> both visible" % (A, B))
    for aid in (A, B):
        cur.execute("UPDATE pgbench_accounts SET abalance = abalance + 1000 WHERE aid = %s", (aid,))
    conn.rollback()
    eq("balances after rollback", balances(), want)
    conn.commit()
    ok("transaction: BEGIN; UPDATE both; ROLLBACK -> both unchanged")

    # 4. COPY with copy_expert, in a transaction, then TO STDOUT.
    marker = "compat " + CLIENT
    data = "".join("%d\t1\t%d\t%d\t2020-01-01 00:00:00\t%s\n" % (TID, i, i, marker) for i in range(1, 21))
    cur.copy_expert("COPY pgbench_history (tid, bid, aid, delta, mtime, filler) FROM STDIN", io.StringIO(data))
    eq("COPY FROM rowcount", cur.rowcount, 20)
    conn.commit()
    out = io.StringIO()
    cur.copy_expert("COPY (SELECT aid, delta FROM pgbench_history WHERE filler = '%s') TO STDOUT" % marker, out)
    eq("COPY TO STDOUT lines", len(out.getvalue().splitlines()), 20)
    eq("count after COPY", one(cur, "SELECT count(*), sum(delta) FROM pgbench_history WHERE filler = %s", (marker,)),
       (20, 210))
    conn.commit()
    ok("copy: copy_expert 20 rows FROM STDIN into pgbench_history, COPY TO STDOUT reads 20 back")

    # 5. Errors, then the same connection works; in a transaction too.
    conn.autocommit = True
    expect_error("SELECT 1/0", "22012", cur, "SELECT 1/0")
    expect_error("syntax error", "42601", cur, "selec 1")
    eq("SELECT 1 after errors", one(cur, "SELECT 1"), (1,))
    conn.autocommit = False
    cur.execute("UPDATE pgbench_accounts SET abalance = abalance + 5000 WHERE aid = %s", (A,))
    expect_error("SELECT 1/0 in transaction", "22012", cur, "SELECT 1/0")
    expect_error("SELECT 1 in aborted transaction", "25P02", cur, "SELECT 1")
    conn.rollback()
    eq("balances after failed transaction", balances(), want)
    conn.commit()
    ok("error: 22012 and 42601 reported, SELECT works after; in a transaction 22012, then 25P02, ROLLBACK, "
       "the UPDATE is undone")

    # 6. Cancel: conn.cancel() from another thread sends a CancelRequest.
    conn.autocommit = True
    timer = threading.Timer(1.0, conn.cancel)
    timer.start()
    start = time.time()
    try:
        cur.execute("SELECT pg_sleep(30)")
        fail("cancel: SELECT pg_sleep(30) finished")
    except psycopg2.errors.QueryCanceled as e:
        eq("cancel SQLSTATE", e.pgcode, "57014")
    took = time.time() - start
    timer.join()
    if took > 6:
        fail("cancel took %.1f s" % took)
    eq("SELECT 1 after cancel", one(cur, "SELECT 1"), (1,))
    ok("cancel: conn.cancel() from a thread during SELECT pg_sleep(30) -> 57014 after %.0f ms; "
       "the connection works" % (took * 1000))
    conn.close()
    print("PASS " + CLIENT)


if __name__ == "__main__":
    main()
