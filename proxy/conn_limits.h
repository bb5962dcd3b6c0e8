/* Connection limits shared by every loop thread: sessions in total and per
 * client address. Taken when a client's StartupMessage is accepted (so the
 * refusal can be a proper FATAL ErrorResponse, as PostgreSQL's "too many
 * clients"), released when the session is freed. One mutex, held for a
 * hash look-up, on session start and end only: never on the forwarding path. */
#ifndef PGW_CONN_LIMITS_H
#define PGW_CONN_LIMITS_H

#include <stddef.h>

typedef enum pgw_admit {
    PGW_ADMIT_OK = 0,
    PGW_ADMIT_TOTAL,                /* max-client-connections reached */
    PGW_ADMIT_ADDRESS,              /* max-connections-per-address reached */
} pgw_admit_t;

/* max_total, max_per_address: 0 is no limit. Call once before any thread. */
void pgw_limits_init(unsigned max_total, unsigned max_per_address);
/* addr: the client's IP as text; NULL or "" for unix-socket clients, which
 * count towards the total only. On PGW_ADMIT_OK the caller holds a slot. */
pgw_admit_t pgw_limits_admit(const char *addr);
void pgw_limits_release(const char *addr);
/* Sessions holding a slot now. */
unsigned pgw_limits_active(void);

#endif
