/* Connection limits shared by every loop thread: sessions in total and per
 * client address. Taken when a client's StartupMessage is accepted (so the
 * refusal can be a proper FATAL ErrorResponse, as PostgreSQL's "too many
 * clients"), released when the session is freed. One mutex, held for a
 * hash look-up, on session start and end only: never on the forwarding path. */
#ifndef PGW_CONN_LIMITS_H
#define PGW_CONN_LIMITS_H

#include <stddef.h>
#include <stdint.h>

typedef enum pgw_admit {
    PGW_ADMIT_OK = 0,
    PGW_ADMIT_TOTAL,                /* max-client-connections reached */
    PGW_ADMIT_ADDRESS,              /* max-connections-per-address reached */
} pgw_admit_t;

struct pgw_config;

/* Takes the limits and timeouts from cfg: at start, and again on SIGHUP (a
 * reload applies to the next connections and the next sweep; slots already
 * held stay). */
void pgw_limits_configure(const struct pgw_config *cfg);

/* The settings a reload may change, read by the loop threads (relaxed
 * atomic loads: plain loads on the platforms we run on). 0: off. */
uint64_t pgw_limits_startup_timeout_ms(void);
uint64_t pgw_limits_idle_timeout_ms(void);
size_t pgw_limits_max_pending(void);
uint32_t pgw_limits_param_max(void);       /* Bind values logged up to this; 0: not logged */
uint32_t pgw_limits_statement_max(void);   /* statement text in events cut at this */
/* addr: the client's IP as text; NULL or "" for unix-socket clients, which
 * count towards the total only. On PGW_ADMIT_OK the caller holds a slot. */
pgw_admit_t pgw_limits_admit(const char *addr);
void pgw_limits_release(const char *addr);
/* Sessions holding a slot now. */
unsigned pgw_limits_active(void);

#endif
