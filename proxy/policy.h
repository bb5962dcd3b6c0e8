/* The access policy: a rules file (docs/policy.md) compiled once into an
 * immutable, reference-counted pgw_policy_t, and the matchers that decide a
 * connection (after its StartupMessage) and a statement (from its SQL
 * analysis).
 *
 * Threads: the main thread parses the file and publishes it with
 * pgw_policy_publish (at start and on SIGHUP); each loop thread takes the
 * published snapshot at the end of a loop iteration when the generation
 * changed (pgw_policy_current, one mutex per reload and thread), and its
 * sessions read that snapshot without any lock. A compiled policy is never
 * modified, so any number of threads may read it.
 *
 * The per-user session count of `max-sessions` rules is process-wide: one
 * mutex, taken at session start and end only. */
#ifndef PGW_POLICY_H
#define PGW_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "pgwarden/analysis.h"

struct pgw_ident_map;

typedef struct pgw_policy pgw_policy_t;
typedef struct pgw_policy_rule pgw_policy_rule_t;

/* What a connection is known by once its StartupMessage is read. */
typedef struct pgw_policy_ident {
    const char *listener;           /* the listener as configured (--listen's text) */
    const struct sockaddr *addr;    /* the client's address; NULL for a unix socket */
    int tls;                        /* the client leg is TLS */
    int has_cert;                   /* a verified client certificate */
    const char *cn, *issuer;        /* the certificate's CN and issuer DN ("" when none) */
    const char *user, *database;
    const struct pgw_ident_map *map;   /* --tls-ident-map (groups by map name); may be NULL */
} pgw_policy_ident_t;

/* Parses the rules file at path (or text in memory, named name in
 * messages). Returns the compiled policy with one reference, or NULL with
 * "file:line: reason" in err. */
pgw_policy_t *pgw_policy_load(const char *path, char *err, size_t errcap);
pgw_policy_t *pgw_policy_parse(const char *name, const char *text, char *err, size_t errcap);
pgw_policy_t *pgw_policy_ref(pgw_policy_t *p);
void pgw_policy_unref(pgw_policy_t *p);     /* NULL is fine */
unsigned pgw_policy_nrules(const pgw_policy_t *p);

/* The rule's name (`name=`, or "FILE:LINE"), and whether it only records. */
const char *pgw_policy_rule_name(const pgw_policy_rule_t *r);
int pgw_policy_rule_dry_run(const pgw_policy_rule_t *r);

/* ---- the published snapshot -------------------------------------------- */

/* Main thread: p (its reference is taken over; NULL: no policy) becomes
 * the current policy; the generation moves on. */
void pgw_policy_publish(pgw_policy_t *p);
/* Any thread: a relaxed load, to test cheaply whether to re-acquire. */
unsigned pgw_policy_generation(void);
/* A new reference to the current policy (NULL: none) and its generation. */
pgw_policy_t *pgw_policy_current(unsigned *generation);

/* ---- connections --------------------------------------------------------- */

typedef struct pgw_policy_conn {
    const pgw_policy_rule_t *rule;  /* the deciding rule; NULL: allowed by default */
    int refused;                    /* 1: refuse with sqlstate and message */
    const char *sqlstate;           /* "28000", or "53300" for max-sessions */
    char message[256];
    /* dry-run rules that would have refused (recorded, not enforced) */
    const pgw_policy_rule_t *dry[8];
    char dry_message[8][256];
    unsigned ndry;
    int user_slot;                  /* 1: the caller holds a per-user slot: release it */
} pgw_policy_conn_t;

/* Evaluates the connection rules in file order: the first `allow` or
 * `deny` that matches decides; `require-tls`, `require-cert` and
 * `max-sessions` refuse when not met and are passed over when met. With a
 * policy, every allowed session takes a slot of its user's session count
 * (out->user_slot); release it with pgw_policy_release_user. */
void pgw_policy_connect(const pgw_policy_t *p, const pgw_policy_ident_t *id, pgw_policy_conn_t *out);
void pgw_policy_release_user(const char *user);

/* ---- statements ---------------------------------------------------------- */

/* The statement rules that apply to a session, decided once from its
 * identity: indices into p's rules. Returns how many there are (0: no
 * statement rule applies, the session keeps the plain forwarding path),
 * or -1 when out of memory. *out is malloc'ed (free it). */
int pgw_policy_session_rules(const pgw_policy_t *p, const pgw_policy_ident_t *id, uint32_t **out);

typedef struct pgw_policy_verdict {
    const pgw_policy_rule_t *deny;  /* the enforced rule that refuses it; NULL: allowed */
    char message[256];              /* why, for the client and the event */
    const pgw_policy_rule_t *dry[8];   /* dry-run rules that matched */
    unsigned ndry;
} pgw_policy_verdict_t;

/* Evaluates one statement against a session's rules (in file order: the
 * first enforced `allow` or refusing rule decides; dry-run rules that match
 * are collected and passed over). v is not cleared: call it for each
 * statement of a Query, and stop at the first v->deny. A statement that
 * did not parse is allowed (the server rejects it). */
void pgw_policy_statement(const pgw_policy_t *p, const uint32_t *rules, unsigned n,
                          const pgw_sql_info_t *info, pgw_policy_verdict_t *v);

#endif
