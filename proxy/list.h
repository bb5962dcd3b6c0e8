/* Intrusive doubly linked list: embed a pgw_link in the owner and get back
 * to it with pgw_container_of. No allocation, O(1) removal. */
#ifndef PGW_LIST_H
#define PGW_LIST_H

#include <stddef.h>

#define pgw_container_of(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

typedef struct pgw_link { struct pgw_link *prev, *next; } pgw_link_t;

static inline void pgw_list_init(pgw_link_t *head) { head->prev = head->next = head; }
static inline int pgw_list_empty(const pgw_link_t *head) { return head->next == head; }
static inline void pgw_list_push(pgw_link_t *head, pgw_link_t *n)
{
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}
static inline void pgw_list_remove(pgw_link_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#endif
