/* A client session: the client connection, its upstream connection, and the
 * two framers that watch the bytes as they pass.
 *
 * States move only through set_state():
 *   STARTUP     reading the client's startup packets (SSLRequest answered
 *               'S' and TLS started when configured, else 'N'; CancelRequest
 *               forwarded; StartupMessage checked against the TLS identity
 *               rules and kept)
 *   CONNECTING  upstream connect in flight; client reads paused
 *   UPSTREAM_TLS  SSLRequest sent upstream, then the server leg's handshake
 *   FORWARDING  bytes flow both ways from the buffers they were read into
 *   FINISHING   no more reads; queued writes drain, then CLOSED
 *   CLOSED      handles closing; memory freed in the last close callback
 */
#ifndef PGW_SESSION_H
#define PGW_SESSION_H

#include <uv.h>

#include "worker.h"

/* A new session for a connection pending on listener l; its handles belong
 * to the listener's worker. Errors are logged and the connection dropped. */
void pgw_session_accept(pgw_listener_t *l);

/* Durable sinks, at the end of a loop iteration, once the spool holds
 * this iteration's records: forwards the client bytes held back because
 * they carry statements admitted in this iteration. */
void pgw_session_run_deferred(pgw_worker_t *w);

/* Closes the session at once (shutdown past the drain timeout). */
void pgw_session_abort(pgw_link_t *link, const char *reason);

/* Once a second from the worker: ends a session whose startup outlived
 * --startup-timeout, or that sat idle (waiting for the client after a
 * ReadyForQuery) longer than --idle-timeout. now_ms: the loop's clock. */
void pgw_session_tick(pgw_link_t *link, uint64_t now_ms);

#endif
