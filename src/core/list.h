/*
 * Intrusive circular doubly-linked list. A node is embedded in the object it
 * links; an empty list is a head pointing at itself. O(1) insert and remove,
 * no allocation.
 */
#ifndef SG_CORE_LIST_H
#define SG_CORE_LIST_H

#include <stddef.h>

struct sg_list {
    struct sg_list *prev, *next;
};

#define sg_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

static inline void sg_list_init(struct sg_list *l) {
    l->prev = l->next = l;
}

static inline int sg_list_empty(const struct sg_list *l) {
    return l->next == l;
}

static inline void sg_list_insert_tail(struct sg_list *head, struct sg_list *n) {
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}

/* Removes n from whatever list holds it; n then forms a list of its own, so
 * removing twice is harmless. */
static inline void sg_list_remove(struct sg_list *n) {
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#endif
