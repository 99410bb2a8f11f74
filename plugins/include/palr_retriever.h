/*
 * palr_retriever.h: the palr retriever plugin C ABI, version 2, for plugins written in C or C++.
 *
 * The reference definition is the Rust module `plugins/sdk/src/abi.rs`; this header is a
 * hand-written copy of it, field for field and in the same order. `tests/c_abi.rs` compiles a
 * program against this header and compares every struct's size and alignment, every field's
 * offset and type, every function-pointer signature and every constant with the Rust
 * definitions, so the two cannot drift apart unnoticed.
 *
 * A worked example is `plugins/examples/c-popularity/popularity.c`; `palr plugin check LIB`
 * runs any plugin library through the contract summarised below.
 *
 * ------------------------------------------------------------------------------------------
 * What a plugin is
 * ------------------------------------------------------------------------------------------
 * A shared library (`.so`, `.dylib`, `.dll`) that exports one C symbol, `palr_retriever_entry`
 * (PALR_ENTRY_SYMBOL). The host calls it with the ABI version it speaks. A plugin that
 * implements that version returns a pointer to its static PalrRetrieverVTable; otherwise it
 * returns NULL. The host then reads the table's first field, `abi_version`, and refuses the
 * plugin unless it equals its own version: both sides check.
 *
 * These never change between ABI versions: the entry symbol's name and signature, and
 * `abi_version` being the table's first field. Anything else that changes bumps
 * PALR_ABI_VERSION: there are no optional trailing fields and no size negotiation, so a plugin
 * is rebuilt against the header of the host's version.
 *
 * ------------------------------------------------------------------------------------------
 * Memory: whoever allocates frees
 * ------------------------------------------------------------------------------------------
 * - The table and its three strings are static data of the plugin; the host never unloads the
 *   library, so they are valid forever.
 * - The config bytes given to `create` belong to the host and are valid during that call only;
 *   copy what you need.
 * - The PalrTrainingView and everything it points to (arrays, strings, item data) belong to
 *   the host. They stay valid and unchanged from `create` until `destroy` of that instance has
 *   returned, so an instance may keep pointers into the view instead of copying it.
 * - The instance belongs to the plugin: allocated in `create`, freed in `destroy`.
 * - A PalrQuery, its arrays and strings, the output array of PalrScored and every PalrTextBuf
 *   belong to the host and are valid during the call only. The output array may hold garbage
 *   on entry.
 * - Never free, keep or write through a pointer the host handed over (except the output array
 *   and text buffers, which exist to be written), and never hand the host memory it has to
 *   free: errors are reported by copying text into the host's PalrTextBuf.
 *
 * Strings from the host (PalrStr) are UTF-8, `len` bytes, NOT NUL-terminated; `ptr` may be
 * NULL when `len` is 0. The table's strings are ordinary NUL-terminated UTF-8 C strings.
 *
 * ------------------------------------------------------------------------------------------
 * Threads and failures
 * ------------------------------------------------------------------------------------------
 * - `create` is called once per configured retriever. One library may have several live
 *   instances at a time (two configurations, or an old and a new one during a reload); keep
 *   all state in the instance, none in globals.
 * - `retrieve` and `describe` are called concurrently from many threads on the same instance
 *   (hence `const void *instance`). Build everything in `create` and only read it afterwards,
 *   or synchronise yourself.
 * - `destroy` is called exactly once per instance, after every other call on it has returned.
 * - Report failures through the status code and the text buffer. In C++, never let an
 *   exception escape a function of the table (catch everything and return
 *   PALR_STATUS_ERROR); unwinding across the boundary terminates the host.
 * - The library is never unloaded, so it may keep threads or thread-local data.
 *
 * ------------------------------------------------------------------------------------------
 * What `retrieve` must return
 * ------------------------------------------------------------------------------------------
 * On PALR_STATUS_OK, `*out_len` entries of `out` are filled, with `*out_len <= out_capacity`
 * (fewer is fine), best first:
 * - every item index is `< view->n_items`;
 * - no item appears twice;
 * - no item is in `query->exclude` (sorted ascending, so binary search works; the host always
 *   includes every history item in it, so the history is never proposed);
 * - every score is finite (no NaN, no infinity) and no score is greater than the one before.
 * The host checks all of this on every call and turns a violation into an error that names the
 * plugin and the problem. The host never calls `retrieve` with `out_capacity == 0`.
 */

#ifndef PALR_RETRIEVER_H
#define PALR_RETRIEVER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------- */
/* Constants                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/** The ABI version this header describes (`ABI_VERSION` in abi.rs). */
#define PALR_ABI_VERSION 2u

/** Name of the one symbol a plugin exports (`ENTRY_SYMBOL`), for dlsym/GetProcAddress. */
#define PALR_ENTRY_SYMBOL "palr_retriever_entry"

/** The stage of a view that holds every interaction the server knows (serving). Other stages
 *  are "valid" and "test" (leave-one-out evaluation views) and "valid-before-tail-N". */
#define PALR_STAGE_ALL "all"

/** A year in PalrItems::years that the data does not give (`NO_YEAR`, i32::MIN). */
#define PALR_NO_YEAR INT32_MIN

/** Status codes returned by `create`, `retrieve` and `describe`. */
/** The call succeeded. */
#define PALR_STATUS_OK 0
/** The plugin failed; a message is in the text buffer. */
#define PALR_STATUS_ERROR 1
/** The plugin crashed in a way it caught (a Rust panic, a C++ exception); message in the
 *  buffer. */
#define PALR_STATUS_PANIC 2
/** The plugin found the host's arguments broken (a host bug); the message says what. */
#define PALR_STATUS_INVALID_ARGUMENT 3

/** Exports a symbol from the shared library, whatever the default visibility of the build. */
#if defined(_WIN32) || defined(__CYGWIN__)
#define PALR_EXPORT __declspec(dllexport)
#elif defined(__GNUC__) || defined(__clang__)
#define PALR_EXPORT __attribute__((visibility("default")))
#else
#define PALR_EXPORT
#endif

/* ---------------------------------------------------------------------------------------- */
/* Data types (all owned by the host; see "Memory" above)                                     */
/* ---------------------------------------------------------------------------------------- */

/** A borrowed UTF-8 string of `len` bytes at `ptr`, not NUL-terminated. `ptr` may be NULL only
 *  when `len` is 0. */
typedef struct PalrStr {
    /** First byte, or NULL for the empty string. */
    const uint8_t *ptr;
    /** Length in bytes. */
    size_t len;
} PalrStr;

/** The catalogue's item data: parallel arrays indexed by item index `0 .. n_items - 1`.
 *
 * Item i's genres are `genres[genre_offsets[i] .. genre_offsets[i + 1] - 1]` (`genre_offsets`
 * has n_items + 1 entries, starts at 0, never decreases). Its value of attribute `a` is
 * `attr_values[i * n_attrs + a]`, an empty string when missing; `attr_names` holds the
 * `n_attrs` column names (every column the data loader read besides id, title, year, genres).
 * A host without item data passes NULL arrays and `n_attrs == 0`. */
typedef struct PalrItems {
    /** n_items external ids as requests and data files write them; unique, never empty. */
    const PalrStr *ids;
    /** n_items titles; never empty. */
    const PalrStr *titles;
    /** n_items release years; PALR_NO_YEAR where unknown. */
    const int32_t *years;
    /** n_items + 1 offsets into `genres`. */
    const uint32_t *genre_offsets;
    /** Every item's genres, concatenated. */
    const PalrStr *genres;
    /** Number of extra attribute columns. */
    uint32_t n_attrs;
    /** n_attrs column names. */
    const PalrStr *attr_names;
    /** n_items * n_attrs values, item-major; an empty string is a missing value. */
    const PalrStr *attr_values;
} PalrItems;

/** The read-only training data of an instance: interactions and catalogue.
 *
 * User u (0 <= u < n_users) interacted with `items[offsets[u] .. offsets[u + 1] - 1]`, oldest
 * first. `offsets` has n_users + 1 entries, offsets[0] == 0, never decreasing, and
 * offsets[n_users] == n_interactions. Every item index is < n_items. A view may have no users
 * and no interactions at all. Valid and unchanged until the instance is destroyed. */
typedef struct PalrTrainingView {
    /** Catalogue size: valid item indices are 0 .. n_items - 1. */
    uint32_t n_items;
    /** Number of users (sequences). */
    uint32_t n_users;
    /** Total interactions, offsets[n_users]. */
    uint64_t n_interactions;
    /** n_users + 1 sequence boundaries. */
    const uint64_t *offsets;
    /** n_interactions item indices. */
    const uint32_t *items;
    /** NULL, or n_interactions timestamps parallel to `items` (seconds, any epoch,
     *  non-decreasing within each user). */
    const int64_t *timestamps;
    /** n_users external user ids (NULL when the host has none). */
    const PalrStr *user_ids;
    /** The catalogue: ids, titles, years, genres and other attributes of every item. */
    PalrItems item_data;
    /** Which interactions the view holds: PALR_STAGE_ALL, "valid", "test", ... */
    PalrStr stage;
    /** 64 lowercase hex digits identifying the view's content (SHA-256; see abi.rs). */
    PalrStr fingerprint;
} PalrTrainingView;

/** One retrieval request, valid during the `retrieve` call only. */
typedef struct PalrQuery {
    /** The user's history, item indices < n_items, oldest first; items may repeat. */
    const uint32_t *history;
    /** Entries in `history`. */
    size_t history_len;
    /** Items that must not be proposed: sorted ascending, no duplicates, every history item
     *  included. */
    const uint32_t *exclude;
    /** Entries in `exclude`. */
    size_t exclude_len;
    /** NULL, or history_len timestamps parallel to `history` (seconds, as in the view). */
    const int64_t *history_timestamps;
    /** When the host received the request, milliseconds since the Unix epoch. */
    int64_t request_time_ms;
    /** The caller's opaque user id; empty when the caller sent none. */
    PalrStr user_id;
} PalrQuery;

/** One proposed candidate. */
typedef struct PalrScored {
    /** Item index < n_items. */
    uint32_t item;
    /** Finite score; higher is better. */
    float score;
} PalrScored;

/** A host-owned text buffer (an error message, `describe`'s JSON). Write at most `capacity`
 *  bytes of UTF-8 to `ptr` (truncate at a character boundary), then store the number of bytes
 *  written in `len`. The host sets `len` to 0 before the call and reads only `len` bytes. */
typedef struct PalrTextBuf {
    /** Host memory of `capacity` bytes. */
    uint8_t *ptr;
    /** Size of `ptr` in bytes. */
    size_t capacity;
    /** Bytes written by the plugin. */
    size_t len;
} PalrTextBuf;

/* ---------------------------------------------------------------------------------------- */
/* Functions of the table                                                                     */
/* ---------------------------------------------------------------------------------------- */

/** Creates an instance from the UTF-8 JSON config (`config_len` bytes, not NUL-terminated,
 *  possibly empty) and the training view. On PALR_STATUS_OK stores the new, non-NULL instance
 *  in `*out_instance`; otherwise writes a message into `err` (say what is wrong and how to fix
 *  it) and leaves `*out_instance` alone. */
typedef int32_t (*PalrCreateFn)(const uint8_t *config, size_t config_len,
                                const PalrTrainingView *view, void **out_instance,
                                PalrTextBuf *err);

/** Proposes at most `out_capacity` candidates for `query` into `out`, best first, and stores
 *  their count in `*out_len` (see "What `retrieve` must return"). Called concurrently from
 *  many threads on one instance. On failure returns PALR_STATUS_ERROR with a message in
 *  `err`. */
typedef int32_t (*PalrRetrieveFn)(const void *instance, const PalrQuery *query, PalrScored *out,
                                  size_t out_capacity, size_t *out_len, PalrTextBuf *err);

/** Writes a JSON object describing the instance into `out`: `"trained_on": {"stage": ...,
 *  "fingerprint": ...}` for state fitted offline on a view, and `"note"`, one line for
 *  operators. Thread-safe. On failure writes a message instead and returns PALR_STATUS_ERROR.
 *  Optional: a plugin that learns only from the view it is given sets `describe` to NULL. */
typedef int32_t (*PalrDescribeFn)(const void *instance, PalrTextBuf *out);

/** Frees an instance made by `create`; called once, after all other calls on it returned. */
typedef void (*PalrDestroyFn)(void *instance);

/** The plugin's function table: static, immutable, returned by the entry function. */
typedef struct PalrRetrieverVTable {
    /** Always the first field, in every ABI version: the version this table implements
     *  (PALR_ABI_VERSION). */
    uint32_t abi_version;
    /** Short identifier of the algorithm, e.g. "popularity"; static NUL-terminated UTF-8. */
    const char *name;
    /** One-line human description; static NUL-terminated UTF-8. */
    const char *description;
    /** The plugin's own version, e.g. "1.2.0"; static NUL-terminated UTF-8. Independent of
     *  the ABI version: the plugin's release, which palr shows beside the ABI version in
     *  `palr plugin check`, `palr recommend --list-retrievers`, its "retriever loaded" log
     *  line and the palr_retriever_info{retriever,plugin,version,abi} metric. */
    const char *plugin_version;
    /** Required. */
    PalrCreateFn create;
    /** Required. */
    PalrRetrieveFn retrieve;
    /** Required. */
    PalrDestroyFn destroy;
    /** Optional (NULL: nothing to declare). */
    PalrDescribeFn describe;
} PalrRetrieverVTable;

/** Type of the entry function: given the host's ABI version, the plugin's static table, or
 *  NULL when the plugin does not implement that version. */
typedef const PalrRetrieverVTable *(*PalrEntryFn)(uint32_t host_abi_version);

/** The entry function every plugin defines and exports (once per library):
 *
 *      PALR_EXPORT const PalrRetrieverVTable *palr_retriever_entry(uint32_t host_abi_version) {
 *          return host_abi_version == PALR_ABI_VERSION ? &TABLE : NULL;
 *      }
 */
PALR_EXPORT const PalrRetrieverVTable *palr_retriever_entry(uint32_t host_abi_version);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* PALR_RETRIEVER_H */
