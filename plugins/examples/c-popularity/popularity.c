/*
 * c-popularity: a palr retriever plugin written in plain C11 against
 * plugins/include/palr_retriever.h (ABI version 2).
 *
 * It proposes the items with the most interactions in the training view, best first, ties
 * broken by lower item index, never an item of the query's exclusion set (which always holds
 * the user's history). Scores are the interaction counts.
 *
 * Config (JSON object; empty text means defaults):
 *     {}                     every item may be proposed
 *     {"min_count": N}       only items with at least N interactions (N a non-negative integer)
 * Anything else is refused with a message saying what was wrong.
 *
 * Build (see README.md):
 *     cc -shared -fPIC -O2 -std=c11 -Wall -Wextra -Werror -I plugins/include \
 *        plugins/examples/c-popularity/popularity.c -o libpalr_c_popularity.so
 *
 * Thread safety: everything is computed in `create`; `retrieve` only reads the instance, so
 * concurrent calls on one instance need no locking. No globals are written after load.
 */

#include "palr_retriever.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------- */
/* Instance                                                                                   */
/* ---------------------------------------------------------------------------------------- */

typedef struct Popularity {
    /* Number of entries in `items` and `scores`: the items that may be proposed. */
    size_t n_ranked;
    /* Item indices, most interactions first, ties by lower index. */
    uint32_t *items;
    /* Their interaction counts, parallel to `items` (non-increasing). */
    float *scores;
} Popularity;

static void popularity_free(Popularity *p) {
    if (p != NULL) {
        free(p->items);
        free(p->scores);
        free(p);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Text buffers                                                                               */
/* ---------------------------------------------------------------------------------------- */

/* Copies the NUL-terminated UTF-8 `message` into the host's buffer, truncated to its capacity
 * at a character boundary. */
static void write_text(PalrTextBuf *buf, const char *message) {
    if (buf == NULL) {
        return;
    }
    size_t len = strlen(message);
    size_t n = len < buf->capacity ? len : buf->capacity;
    /* Do not cut a multi-byte character: back off over continuation bytes (10xxxxxx). */
    while (n > 0 && n < len && (((unsigned char)message[n]) & 0xC0u) == 0x80u) {
        n--;
    }
    if (buf->ptr == NULL) {
        n = 0;
    }
    if (n > 0) {
        memcpy(buf->ptr, message, n);
    }
    buf->len = n;
}

/* ---------------------------------------------------------------------------------------- */
/* Config: a deliberately small JSON reader for {} and {"min_count": N}                     */
/* ---------------------------------------------------------------------------------------- */

typedef struct Config {
    uint64_t min_count;
} Config;

typedef struct Reader {
    const uint8_t *text;
    size_t len;
    size_t pos;
} Reader;

static void skip_space(Reader *r) {
    while (r->pos < r->len) {
        uint8_t c = r->text[r->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            break;
        }
        r->pos++;
    }
}

/* The byte at the reader's position, or -1 at the end. */
static int peek(const Reader *r) { return r->pos < r->len ? (int)r->text[r->pos] : -1; }

/* Describes the byte at the reader's position for messages ("end of input" or "`x`"). */
static void describe_here(const Reader *r, char *out, size_t cap) {
    int c = peek(r);
    if (c < 0) {
        snprintf(out, cap, "the end of the config");
    } else if (c >= 0x20 && c < 0x7F) {
        snprintf(out, cap, "`%c` at byte %zu", (char)c, r->pos);
    } else {
        snprintf(out, cap, "byte 0x%02X at byte %zu", (unsigned)c, r->pos);
    }
}

/* Reads a JSON string whose opening quote is at the reader's position. Sets `*start` and
 * `*len` to its raw contents (escapes left as they are). Returns 0, or -1 if unterminated. */
static int read_string(Reader *r, size_t *start, size_t *len) {
    r->pos++; /* the opening quote */
    *start = r->pos;
    while (r->pos < r->len) {
        uint8_t c = r->text[r->pos];
        if (c == '\\') {
            r->pos += 2; /* an escape and the character it escapes */
            continue;
        }
        if (c == '"') {
            *len = r->pos - *start;
            r->pos++;
            return 0;
        }
        r->pos++;
    }
    return -1;
}

/* Copies up to 40 bytes of a key into `out` for messages, printable ASCII only. */
static void quote_key(const uint8_t *key, size_t len, char *out, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < len && i < 40 && n + 1 < cap; i++) {
        uint8_t c = key[i];
        out[n++] = (c >= 0x20 && c < 0x7F) ? (char)c : '?';
    }
    if (len > 40 && n + 3 < cap) {
        out[n++] = '.';
        out[n++] = '.';
        out[n++] = '.';
    }
    out[n] = '\0';
}

/* Reads a non-negative JSON integer. Returns 0, or -1 with a message in `msg`. */
static int read_count(Reader *r, uint64_t *value, char *msg, size_t cap) {
    int c = peek(r);
    if (c == '-') {
        snprintf(msg, cap, "\"min_count\" must be a non-negative integer, got a negative number");
        return -1;
    }
    if (c < '0' || c > '9') {
        char here[48];
        describe_here(r, here, sizeof here);
        snprintf(msg, cap, "\"min_count\" must be a non-negative integer, found %s", here);
        return -1;
    }
    if (c == '0' && r->pos + 1 < r->len && r->text[r->pos + 1] >= '0' &&
        r->text[r->pos + 1] <= '9') {
        snprintf(msg, cap, "\"min_count\": JSON numbers have no leading zeros");
        return -1;
    }
    uint64_t v = 0;
    while ((c = peek(r)) >= '0' && c <= '9') {
        uint64_t digit = (uint64_t)(c - '0');
        if (v > (UINT64_MAX - digit) / 10u) {
            snprintf(msg, cap, "\"min_count\" is too large");
            return -1;
        }
        v = v * 10u + digit;
        r->pos++;
    }
    c = peek(r);
    if (c == '.' || c == 'e' || c == 'E') {
        snprintf(msg, cap, "\"min_count\" must be a whole number (no fraction or exponent)");
        return -1;
    }
    *value = v;
    return 0;
}

/* Parses the config into `*cfg`. Returns 0, or -1 with a message in `msg`. */
static int parse_config(const uint8_t *text, size_t len, Config *cfg, char *msg, size_t cap) {
    static const char usage[] = "expected {} or {\"min_count\": N}";
    char here[48];
    Reader r = {text, len, 0};
    int seen_min_count = 0;
    cfg->min_count = 0;

    skip_space(&r);
    if (peek(&r) < 0) {
        return 0; /* empty config: defaults */
    }
    if (peek(&r) != '{') {
        describe_here(&r, here, sizeof here);
        snprintf(msg, cap, "invalid config: found %s where a JSON object starts; %s", here, usage);
        return -1;
    }
    r.pos++;
    skip_space(&r);
    if (peek(&r) == '}') {
        r.pos++;
    } else {
        for (;;) {
            size_t key_start = 0;
            size_t key_len = 0;
            skip_space(&r);
            if (peek(&r) != '"') {
                describe_here(&r, here, sizeof here);
                snprintf(msg, cap, "invalid config: found %s where a quoted key belongs; %s", here,
                         usage);
                return -1;
            }
            if (read_string(&r, &key_start, &key_len) != 0) {
                snprintf(msg, cap, "invalid config: a key's string is not terminated; %s", usage);
                return -1;
            }
            const uint8_t *key = text + key_start;
            if (key_len != strlen("min_count") || memcmp(key, "min_count", key_len) != 0) {
                char name[48];
                quote_key(key, key_len, name, sizeof name);
                snprintf(msg, cap, "unknown config key \"%s\": the only option is \"min_count\"",
                         name);
                return -1;
            }
            if (seen_min_count) {
                snprintf(msg, cap, "invalid config: \"min_count\" is given twice");
                return -1;
            }
            seen_min_count = 1;
            skip_space(&r);
            if (peek(&r) != ':') {
                describe_here(&r, here, sizeof here);
                snprintf(msg, cap, "invalid config: found %s where `:` belongs; %s", here, usage);
                return -1;
            }
            r.pos++;
            skip_space(&r);
            if (read_count(&r, &cfg->min_count, msg, cap) != 0) {
                return -1;
            }
            skip_space(&r);
            if (peek(&r) == ',') {
                r.pos++;
                continue;
            }
            if (peek(&r) == '}') {
                r.pos++;
                break;
            }
            describe_here(&r, here, sizeof here);
            snprintf(msg, cap, "invalid config: found %s where `,` or `}` belongs; %s", here,
                     usage);
            return -1;
        }
    }
    skip_space(&r);
    if (peek(&r) >= 0) {
        describe_here(&r, here, sizeof here);
        snprintf(msg, cap, "invalid config: unexpected %s after the object; %s", here, usage);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The table's functions                                                                      */
/* ---------------------------------------------------------------------------------------- */

typedef struct Counted {
    uint64_t count;
    uint32_t item;
} Counted;

/* Most interactions first, then lower item index: a total order, so the ranking is the same
 * whatever qsort does with equal elements. */
static int by_count_then_index(const void *a, const void *b) {
    const Counted *x = (const Counted *)a;
    const Counted *y = (const Counted *)b;
    if (x->count != y->count) {
        return x->count > y->count ? -1 : 1;
    }
    return (x->item > y->item) - (x->item < y->item);
}

static int32_t popularity_create(const uint8_t *config, size_t config_len,
                                 const PalrTrainingView *view, void **out_instance,
                                 PalrTextBuf *err) {
    char msg[256];
    if ((config == NULL && config_len > 0) || view == NULL || out_instance == NULL) {
        write_text(err, "c-popularity: create got a null config, view or instance pointer");
        return PALR_STATUS_INVALID_ARGUMENT;
    }
    if (view->n_interactions > 0 && view->items == NULL) {
        write_text(err, "c-popularity: the view has interactions but no item array");
        return PALR_STATUS_INVALID_ARGUMENT;
    }
    if (view->n_interactions > (uint64_t)(SIZE_MAX / sizeof(uint32_t))) {
        write_text(err, "c-popularity: the view has more interactions than memory can hold");
        return PALR_STATUS_INVALID_ARGUMENT;
    }

    Config cfg;
    if (parse_config(config, config_len, &cfg, msg, sizeof msg) != 0) {
        write_text(err, msg);
        return PALR_STATUS_ERROR;
    }

    size_t n_items = view->n_items;
    size_t n_interactions = (size_t)view->n_interactions;
    /* At least one element each, so that a catalogue of 0 items is not a failed allocation. */
    Counted *counted = calloc(n_items > 0 ? n_items : 1, sizeof *counted);
    Popularity *p = calloc(1, sizeof *p);
    if (counted == NULL || p == NULL) {
        free(counted);
        free(p);
        write_text(err, "c-popularity: out of memory");
        return PALR_STATUS_ERROR;
    }
    for (size_t i = 0; i < n_items; i++) {
        counted[i].item = (uint32_t)i;
    }
    for (size_t i = 0; i < n_interactions; i++) {
        uint32_t item = view->items[i];
        if (item >= n_items) {
            snprintf(msg, sizeof msg,
                     "c-popularity: interaction %zu names item %u, but the view has %zu items",
                     i, (unsigned)item, n_items);
            free(counted);
            free(p);
            write_text(err, msg);
            return PALR_STATUS_INVALID_ARGUMENT;
        }
        counted[item].count++;
    }
    qsort(counted, n_items, sizeof *counted, by_count_then_index);

    size_t n_ranked = 0;
    while (n_ranked < n_items && counted[n_ranked].count >= cfg.min_count) {
        n_ranked++;
    }
    p->n_ranked = n_ranked;
    p->items = malloc((n_ranked > 0 ? n_ranked : 1) * sizeof *p->items);
    p->scores = malloc((n_ranked > 0 ? n_ranked : 1) * sizeof *p->scores);
    if (p->items == NULL || p->scores == NULL) {
        free(counted);
        popularity_free(p);
        write_text(err, "c-popularity: out of memory");
        return PALR_STATUS_ERROR;
    }
    for (size_t i = 0; i < n_ranked; i++) {
        p->items[i] = counted[i].item;
        /* Converting a larger count never gives a smaller float, so scores stay
         * non-increasing even where float rounds (counts above 2^24). */
        p->scores[i] = (float)counted[i].count;
    }
    free(counted);
    *out_instance = p;
    return PALR_STATUS_OK;
}

/* Whether `item` is in `sorted`, ascending without duplicates (binary search). */
static int contains_sorted(const uint32_t *sorted, size_t len, uint32_t item) {
    size_t lo = 0;
    size_t hi = len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sorted[mid] < item) {
            lo = mid + 1;
        } else if (sorted[mid] > item) {
            hi = mid;
        } else {
            return 1;
        }
    }
    return 0;
}

static int32_t popularity_retrieve(const void *instance, const PalrQuery *query, PalrScored *out,
                                   size_t out_capacity, size_t *out_len, PalrTextBuf *err) {
    const Popularity *p = (const Popularity *)instance;
    if (p == NULL || query == NULL || out_len == NULL || (out == NULL && out_capacity > 0) ||
        (query->exclude == NULL && query->exclude_len > 0)) {
        write_text(err, "c-popularity: retrieve got a null instance, query, output or exclude "
                        "pointer");
        return PALR_STATUS_INVALID_ARGUMENT;
    }
    size_t n = 0;
    for (size_t r = 0; r < p->n_ranked && n < out_capacity; r++) {
        uint32_t item = p->items[r];
        if (!contains_sorted(query->exclude, query->exclude_len, item)) {
            out[n].item = item;
            out[n].score = p->scores[r];
            n++;
        }
    }
    *out_len = n;
    return PALR_STATUS_OK;
}

static void popularity_destroy(void *instance) { popularity_free((Popularity *)instance); }

static const PalrRetrieverVTable TABLE = {
    PALR_ABI_VERSION,
    "c-popularity",
    "Most interacted-with items (example plugin written in C)",
    "1.0.0",
    popularity_create,
    popularity_retrieve,
    popularity_destroy,
    NULL, /* describe: it learns only from the view it is given */
};

PALR_EXPORT const PalrRetrieverVTable *palr_retriever_entry(uint32_t host_abi_version) {
    return host_abi_version == PALR_ABI_VERSION ? &TABLE : NULL;
}
