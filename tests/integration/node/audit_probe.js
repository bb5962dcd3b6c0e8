// A node-postgres client for the audit tests, through pgwarden: a query
// without parameters (simple protocol), unnamed parameterized queries
// (extended), a named prepared statement run three times (node-postgres
// parses it once per connection and then only binds and executes it),
// rows read back, a failing statement inside a transaction and its
// rollback. Arguments: host port application_name. Prints "ok".
'use strict';

const { Client } = require('pg');

function check(cond, what) {
  if (!cond) throw new Error('node probe: ' + what);
}

async function main() {
  const [host, port, app] = process.argv.slice(2);
  const c = new Client({
    host, port: Number(port), user: 'postgres', database: 'postgres',
    application_name: app, ssl: false,
  });
  await c.connect();
  try {
    let r = await c.query('SELECT 41 + 1 AS answer');
    check(r.rows[0].answer === 42, 'simple query');

    await c.query('CREATE TEMP TABLE n (i int, s text)');
    for (let i = 0; i < 3; i++) {
      r = await c.query({ name: 'probe_insert', text: 'INSERT INTO n VALUES ($1, $2)',
                          values: [i, 'node-secret-' + i] });
      check(r.rowCount === 1, 'insert ' + i);
    }
    r = await c.query('SELECT i, s FROM n WHERE i >= $1 ORDER BY i', [1]);
    check(r.rows.length === 2 && r.rows[1].s === 'node-secret-2', 'select with a parameter');

    await c.query('BEGIN');
    let failed = null;
    try {
      await c.query('SELECT $1::int / 0', [7]);
    } catch (e) {
      failed = e;
    }
    check(failed && failed.code === '22012', 'division by zero: ' + failed);
    await c.query('ROLLBACK');
    r = await c.query('SELECT count(*)::int AS n FROM n');
    check(r.rows[0].n === 3, 'the table after the rollback');
  } finally {
    await c.end();
  }
  console.log('ok');
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
