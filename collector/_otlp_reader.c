/* The ingest hot path's per-attribute work, in C: read an OTLP ExportTraceServiceRequest straight
 * from its protobuf wire bytes into the columns that collector/normalize.py would build.
 *
 * Why this exists: a Python walk over upb messages costs ~25 us per agent span (12 attributes),
 * almost all of it creating Python objects for attribute maps that are only ever serialised to
 * JSON for ClickHouse. Here each attribute map is written directly as JSON text (wrapped in an
 * orjson.Fragment) and only the attributes the agent fields need become Python objects.
 *
 * Scope, kept narrow on purpose: this reader handles the requests exporters send. Anything else
 * (invalid UTF-8, malformed wire data, bad ids, times the store cannot hold, bytes or key-value-list
 * values, arrays that are not non-empty strings, duplicate keys, a singular message field repeated)
 * makes parse() return None and the caller uses the reference path (upb + normalize.py), which
 * reports the reason. So the two paths never disagree on what they both accept;
 * tests/test_native_reader.py checks that the blocks are byte-identical.
 *
 * Field numbers: opentelemetry-proto v1 (trace.proto, common.proto, resource.proto).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* ---- configuration, set once by configure() ---------------------------------------------- */

typedef struct {
    const char *key; /* UTF-8, owned by key_obj */
    Py_ssize_t len;
    PyObject *key_obj;  /* str: the attribute key */
    PyObject *field;    /* str: agentwatch field name */
    PyObject *priority; /* int: lower wins */
    long prio;
} Interesting;

#define TABLE_BITS 8
#define TABLE_SIZE (1 << TABLE_BITS)
static Interesting *table[TABLE_SIZE]; /* open addressing, linear probing */
static Interesting *entries;
static Py_ssize_t n_entries;
static PyObject *fragment_type;    /* orjson.Fragment */
static PyObject *span_kind_names;  /* tuple of 6 str */
static PyObject *status_names;     /* tuple of 3 str */
static PyObject *empty_list;       /* shared [] for spans without events or links */
static PyObject *empty_str;
static PyObject *str_exception_type, *str_exception_message;

#define N_RAW_COLUMNS 22 /* normalize.COLUMNS up to LinksAttributes */
enum {
    C_TS, C_TRACE, C_SPAN, C_PARENT, C_TSTATE, C_NAME, C_KIND, C_SERVICE, C_RATTRS, C_SCOPE,
    C_SCOPEV, C_ATTRS, C_DURATION, C_STATUS, C_STATUSMSG, C_EV_TS, C_EV_NAME, C_EV_ATTRS,
    C_LK_TRACE, C_LK_SPAN, C_LK_TSTATE, C_LK_ATTRS
};

static uint64_t hash_bytes(const char *s, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static Interesting *lookup(const char *s, Py_ssize_t n) {
    if (n_entries == 0) return NULL;
    size_t i = hash_bytes(s, n) & (TABLE_SIZE - 1);
    for (;;) {
        Interesting *e = table[i];
        if (e == NULL) return NULL;
        if (e->len == n && memcmp(e->key, s, n) == 0) return e;
        i = (i + 1) & (TABLE_SIZE - 1);
    }
}

/* ---- a growable byte buffer ---------------------------------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Out;

static int out_reserve(Out *o, Py_ssize_t extra) {
    if (o->len + extra <= o->cap) return 0;
    Py_ssize_t cap = o->cap ? o->cap : 1024;
    while (cap < o->len + extra) cap *= 2;
    char *data = PyMem_Realloc(o->data, cap);
    if (!data) {
        PyErr_NoMemory();
        return -1;
    }
    o->data = data;
    o->cap = cap;
    return 0;
}

static int out_write(Out *o, const char *s, Py_ssize_t n) {
    if (out_reserve(o, n)) return -1;
    memcpy(o->data + o->len, s, n);
    o->len += n;
    return 0;
}

static int out_char(Out *o, char c) {
    if (out_reserve(o, 1)) return -1;
    o->data[o->len++] = c;
    return 0;
}

/* A JSON string literal, escaped as orjson escapes: ", \ and C0 controls (\b \t \n \f \r short). */
static int out_json_string(Out *o, const char *s, Py_ssize_t n) {
    static const char hex[] = "0123456789abcdef";
    if (out_reserve(o, n + 2)) return -1;
    o->data[o->len++] = '"';
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        if (out_write(o, s + start, i - start)) return -1;
        char esc[6];
        int m = 2;
        esc[0] = '\\';
        switch (c) {
            case '"': esc[1] = '"'; break;
            case '\\': esc[1] = '\\'; break;
            case '\b': esc[1] = 'b'; break;
            case '\t': esc[1] = 't'; break;
            case '\n': esc[1] = 'n'; break;
            case '\f': esc[1] = 'f'; break;
            case '\r': esc[1] = 'r'; break;
            default:
                esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
                esc[4] = hex[c >> 4]; esc[5] = hex[c & 15];
                m = 6;
        }
        if (out_write(o, esc, m)) return -1;
        start = i + 1;
    }
    if (out_write(o, s + start, n - start)) return -1;
    return out_char(o, '"');
}

static PyObject *out_fragment(Out *o) {
    PyObject *bytes = PyBytes_FromStringAndSize(o->data, o->len);
    if (!bytes) return NULL;
    PyObject *fragment = PyObject_CallOneArg(fragment_type, bytes);
    Py_DECREF(bytes);
    return fragment;
}

/* ---- wire format ----------------------------------------------------------------------------- */

/* Return codes of the readers below. */
#define OK 0
#define FALLBACK 1 /* not for this reader: the reference path takes the request */
#define FAILED -1  /* a Python exception is set (out of memory) */

typedef struct {
    const uint8_t *p, *end;
} Reader;

static int read_varint_max(Reader *r, uint64_t *out, int max_bytes) {
    uint64_t v = 0;
    for (int shift = 0; shift < 7 * max_bytes; shift += 7) {
        if (r->p >= r->end) return FALLBACK;
        uint8_t b = *r->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return OK;
        }
    }
    return FALLBACK;
}

static int read_varint(Reader *r, uint64_t *out) { return read_varint_max(r, out, 10); }

static int read_fixed64(Reader *r, uint64_t *out) {
    if (r->end - r->p < 8) return FALLBACK;
    memcpy(out, r->p, 8); /* little-endian on every platform we build for */
    r->p += 8;
    return OK;
}

/* Next field: number, wire type, and for wire type 2 its payload as a sub-reader. */
typedef struct {
    uint32_t number;
    int wire;
    uint64_t varint; /* wire types 0, 1, 5 */
    Reader sub;      /* wire type 2 */
} Field;

static int next_field(Reader *r, Field *f) {
    uint64_t tag;
    /* upb reads tags and lengths as 32-bit varints (at most 5 bytes) and refuses longer ones */
    if (read_varint_max(r, &tag, 5) || tag > UINT32_MAX) return FALLBACK;
    f->number = (uint32_t)(tag >> 3);
    f->wire = (int)(tag & 7);
    if (f->number == 0 || (tag >> 3) > 0x1fffffff) return FALLBACK;
    switch (f->wire) {
        case 0: return read_varint(r, &f->varint);
        case 1: return read_fixed64(r, &f->varint);
        case 2: {
            uint64_t n;
            if (read_varint_max(r, &n, 5) || n > INT32_MAX || n > (uint64_t)(r->end - r->p))
                return FALLBACK;
            f->sub.p = r->p;
            f->sub.end = r->p + n;
            r->p += n;
            return OK;
        }
        case 5: {
            uint32_t v;
            if (r->end - r->p < 4) return FALLBACK;
            memcpy(&v, r->p, 4);
            r->p += 4;
            f->varint = v;
            return OK;
        }
        default: return FALLBACK; /* groups and invalid wire types */
    }
}

#define LEN(f) ((Py_ssize_t)((f).sub.end - (f).sub.p))
#define WANT(f, w) \
    if ((f).wire != (w)) return FALLBACK

/* Strict UTF-8 (no overlongs, surrogates or code points above U+10FFFF), as upb checks. */
static int valid_utf8(const uint8_t *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        int len;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) len = 2;
        else if (c == 0xe0) { len = 3; lo = 0xa0; }
        else if (c == 0xed) { len = 3; hi = 0x9f; }
        else if (c >= 0xe1 && c <= 0xef) len = 3;
        else if (c == 0xf0) { len = 4; lo = 0x90; }
        else if (c >= 0xf1 && c <= 0xf3) len = 4;
        else if (c == 0xf4) { len = 4; hi = 0x8f; }
        else return 0;
        if (i + len > n) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (int k = 2; k < len; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf) return 0;
        i += len;
    }
    return 1;
}

static int check_utf8(const Field *f) {
    return valid_utf8(f->sub.p, LEN(*f)) ? OK : FALLBACK;
}

static PyObject *str_of(const Field *f) {
    return PyUnicode_DecodeUTF8((const char *)f->sub.p, LEN(*f), NULL);
}

static PyObject *hex_of(const Field *f) {
    static const char hex[] = "0123456789abcdef";
    Py_ssize_t n = LEN(*f);
    PyObject *s = PyUnicode_New(2 * n, 127);
    if (!s) return NULL;
    Py_UCS1 *d = PyUnicode_1BYTE_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        d[2 * i] = hex[f->sub.p[i] >> 4];
        d[2 * i + 1] = hex[f->sub.p[i] & 15];
    }
    return s;
}

/* The latest time the store holds: Timestamp is DateTime64(9), nanoseconds in an Int64. */
#define MAX_TIME_NS ((uint64_t)INT64_MAX)

static int all_zero(const Field *f) {
    for (const uint8_t *p = f->sub.p; p < f->sub.end; p++)
        if (*p) return 0;
    return 1;
}

/* ---- attribute values ------------------------------------------------------------------------ */

enum { V_NONE, V_STRING, V_BOOL, V_INT, V_DOUBLE, V_ARRAY };

typedef struct {
    int kind;
    Field str; /* V_STRING: the string; V_ARRAY: the ArrayValue payload */
    uint64_t bits;
} Value;

/* An AnyValue with at most one member of its oneof on the wire: exporters send one. Several
 * (protobuf's rules: the last wins, a repeated array merges, a replaced one must still parse) are
 * left to the reference path, as are members this reader does not know. */
static int read_anyvalue(Reader r, Value *v) {
    Field f;
    v->kind = V_NONE;
    while (r.p < r.end) {
        if (next_field(&r, &f)) return FALLBACK;
        if (f.number >= 1 && f.number <= 8 && v->kind != V_NONE) return FALLBACK;
        switch (f.number) {
            case 1: WANT(f, 2); if (check_utf8(&f)) return FALLBACK; v->kind = V_STRING; v->str = f; break;
            case 2: WANT(f, 0); v->kind = V_BOOL; v->bits = f.varint; break;
            case 3: WANT(f, 0); v->kind = V_INT; v->bits = f.varint; break;
            case 4: WANT(f, 1); v->kind = V_DOUBLE; v->bits = f.varint; break;
            case 5: WANT(f, 2); v->kind = V_ARRAY; v->str = f; break;
            /* key-value lists, bytes, string_value_strindex (profiles): rare, left to Python */
            case 6: case 7: case 8: return FALLBACK;
            default: break; /* unknown fields are skipped, as upb does */
        }
    }
    return OK;
}

/* The string the ClickHouse exporter stores for a value (normalize.anyvalue_to_str), into o. */
static int write_value_text(Out *o, const Value *v) {
    char buf[32];
    switch (v->kind) {
        case V_NONE: return OK;
        case V_STRING: return out_write(o, (const char *)v->str.sub.p, LEN(v->str)) ? FAILED : OK;
        case V_BOOL: return (v->bits ? out_write(o, "true", 4) : out_write(o, "false", 5)) ? FAILED : OK;
        case V_INT: {
            int n = snprintf(buf, sizeof buf, "%lld", (long long)(int64_t)v->bits);
            return out_write(o, buf, n) ? FAILED : OK;
        }
        case V_DOUBLE: {
            double d;
            memcpy(&d, &v->bits, 8);
            char *text = PyOS_double_to_string(d, 'r', 0, 0, NULL); /* repr() without ".0" */
            if (!text) return FAILED;
            int rc = out_write(o, text, (Py_ssize_t)strlen(text)) ? FAILED : OK;
            PyMem_Free(text);
            return rc;
        }
        case V_ARRAY: { /* only arrays of non-empty strings, as a JSON array (orjson's form) */
            Reader r = v->str.sub;
            Field f;
            int first = 1;
            if (out_char(o, '[')) return FAILED;
            while (r.p < r.end) {
                if (next_field(&r, &f)) return FALLBACK;
                if (f.number != 1) continue;
                WANT(f, 2);
                Value item;
                int rc = read_anyvalue(f.sub, &item);
                if (rc) return rc;
                if (item.kind != V_STRING || LEN(item.str) == 0) return FALLBACK;
                if ((!first && out_char(o, ',')) ||
                    out_json_string(o, (const char *)item.str.sub.p, LEN(item.str)))
                    return FAILED;
                first = 0;
            }
            return out_char(o, ']') ? FAILED : OK;
        }
    }
    return FALLBACK;
}

/* The value as the Python object normalize.py's agent-field logic reads. */
static PyObject *value_object(const Value *v, PyObject *text) {
    switch (v->kind) {
        case V_STRING: Py_INCREF(text); return text;
        case V_BOOL: return PyBool_FromLong(v->bits != 0);
        case V_INT: return PyLong_FromLongLong((long long)(int64_t)v->bits);
        case V_DOUBLE: {
            double d;
            memcpy(&d, &v->bits, 8);
            return PyFloat_FromDouble(d);
        }
        case V_ARRAY: {
            PyObject *list = PyList_New(0);
            if (!list) return NULL;
            Reader r = v->str.sub;
            Field f;
            while (r.p < r.end) {
                Value item;
                if (next_field(&r, &f) || f.number != 1 || read_anyvalue(f.sub, &item)) continue;
                PyObject *s = str_of(&item.str);
                if (!s || PyList_Append(list, s)) {
                    Py_XDECREF(s);
                    Py_DECREF(list);
                    return NULL;
                }
                Py_DECREF(s);
            }
            return list;
        }
        default: Py_RETURN_NONE;
    }
}

/* ---- attribute lists ------------------------------------------------------------------------- */

#define MAX_KEYS 256 /* more attributes than this on one span: reference path (dedup check) */

typedef struct {
    Out *json;        /* the map as a JSON object, or NULL when not wanted */
    Out text;         /* scratch: one value's text */
    const uint8_t *keys[MAX_KEYS];
    Py_ssize_t key_lens[MAX_KEYS];
    int n_keys;
    PyObject *found;  /* dict field -> (priority, key, value, text), or NULL */
    PyObject *service; /* resource only: text of service.name */
    int want_service;
} Attrs;

static void attrs_begin(Attrs *a, Out *json, PyObject *found, int want_service) {
    a->json = json;
    a->n_keys = 0;
    a->found = found;
    a->want_service = want_service;
}

/* One KeyValue: checked, written to the JSON map, recorded when the agent fields need it. */
static int read_keyvalue(Attrs *a, Reader r) {
    Field f, key = {0};
    Value v = {V_NONE};
    int have_key = 0, have_value = 0;
    while (r.p < r.end) {
        if (next_field(&r, &f)) return FALLBACK;
        if (f.number == 1) {
            WANT(f, 2);
            if (check_utf8(&f)) return FALLBACK;
            key = f;
            have_key = 1;
        } else if (f.number == 2) {
            WANT(f, 2);
            if (have_value) return FALLBACK; /* a repeated message field merges: rare */
            int rc = read_anyvalue(f.sub, &v);
            if (rc) return rc;
            have_value = 1;
        }
    }
    const uint8_t *k = have_key ? key.sub.p : (const uint8_t *)"";
    Py_ssize_t klen = have_key ? LEN(key) : 0;
    /* duplicate keys: a dict keeps the last, a ClickHouse Map both; leave them to Python */
    if (a->n_keys == MAX_KEYS) return FALLBACK;
    for (int i = 0; i < a->n_keys; i++)
        if (a->key_lens[i] == klen && memcmp(a->keys[i], k, klen) == 0) return FALLBACK;
    a->keys[a->n_keys] = k;
    a->key_lens[a->n_keys++] = klen;

    a->text.len = 0;
    int rc = write_value_text(&a->text, &v);
    if (rc) return rc;
    if (a->json) {
        if ((a->n_keys > 1 && out_char(a->json, ',')) ||
            out_json_string(a->json, (const char *)k, klen) || out_char(a->json, ':') ||
            out_json_string(a->json, a->text.data ? a->text.data : "", a->text.len))
            return FAILED;
    }
    Interesting *e = a->found ? lookup((const char *)k, klen) : NULL;
    int is_service = a->want_service && klen == 12 && memcmp(k, "service.name", 12) == 0;
    if (!e && !is_service) return OK;
    PyObject *text = PyUnicode_DecodeUTF8(a->text.data ? a->text.data : "", a->text.len, NULL);
    if (!text) return FAILED;
    if (is_service) {
        Py_XSETREF(a->service, Py_NewRef(text));
    }
    if (e) {
        PyObject *cur = PyDict_GetItemWithError(a->found, e->field); /* borrowed */
        if (!cur && PyErr_Occurred()) goto fail;
        if (!cur || e->prio < PyLong_AsLong(PyTuple_GET_ITEM(cur, 0))) {
            PyObject *value = value_object(&v, text);
            if (!value) goto fail;
            PyObject *hit = PyTuple_Pack(4, e->priority, e->key_obj, value, text);
            Py_DECREF(value);
            if (!hit || PyDict_SetItem(a->found, e->field, hit)) {
                Py_XDECREF(hit);
                goto fail;
            }
            Py_DECREF(hit);
        }
    }
    Py_DECREF(text);
    return OK;
fail:
    Py_DECREF(text);
    return FAILED;
}

/* ---- the request ----------------------------------------------------------------------------- */

typedef struct {
    PyObject *cols[N_RAW_COLUMNS];
    PyObject *found;      /* list: per span, dict of its own agent attributes */
    PyObject *r_found;    /* list: per span, dict of its resource's agent attributes */
    PyObject *exceptions; /* list: per span, None or [(key, string), ...] of exception events */
    Out json, events_json;
    Attrs attrs;
    /* per resource / scope */
    PyObject *service, *resource_fragment, *resource_found, *scope_name, *scope_version;
} Ctx;

static int append(PyObject *list, PyObject *item) { /* steals item */
    if (!item) return FAILED;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc ? FAILED : OK;
}

static int append_ref(PyObject *list, PyObject *item) { /* borrows item */
    return PyList_Append(list, item) ? FAILED : OK;
}

#define TRY(expr)                 \
    do {                          \
        int rc_ = (expr);         \
        if (rc_) return rc_;      \
    } while (0)

/* A resource's attributes: the JSON map into json, agent attributes into found. */
static int read_attr_list(Ctx *c, Reader r, Out *json, PyObject *found, int want_service) {
    Field f;
    attrs_begin(&c->attrs, json, found, want_service);
    if (json) json->len = 0;
    if (json && out_char(json, '{')) return FAILED;
    while (r.p < r.end) {
        TRY(next_field(&r, &f));
        if (f.number == 1) { /* Resource.attributes */
            WANT(f, 2);
            TRY(read_keyvalue(&c->attrs, f.sub));
        }
    }
    if (json && out_char(json, '}')) return FAILED;
    return OK;
}

/* Resource.entity_refs (3): not stored, but its strings must be UTF-8, as upb requires. */
static int check_entity_refs(Reader r) {
    Field f, g;
    while (r.p < r.end) {
        TRY(next_field(&r, &f));
        if (f.number != 3) continue;
        WANT(f, 2);
        Reader e = f.sub;
        while (e.p < e.end) {
            TRY(next_field(&e, &g));
            if (g.number >= 1 && g.number <= 4) {
                WANT(g, 2);
                TRY(check_utf8(&g));
            }
        }
    }
    return OK;
}

static int read_resource(Ctx *c, Reader r) {
    TRY(check_entity_refs(r));
    Py_CLEAR(c->service);
    Py_CLEAR(c->resource_fragment);
    Py_CLEAR(c->resource_found);
    c->resource_found = PyDict_New();
    if (!c->resource_found) return FAILED;
    c->attrs.service = NULL;
    TRY(read_attr_list(c, r, &c->json, c->resource_found, 1));
    c->service = c->attrs.service ? c->attrs.service : Py_NewRef(empty_str);
    c->attrs.service = NULL;
    c->resource_fragment = out_fragment(&c->json);
    return c->resource_fragment ? OK : FAILED;
}

static int read_scope(Ctx *c, Reader r) {
    Field f;
    Py_CLEAR(c->scope_name);
    Py_CLEAR(c->scope_version);
    attrs_begin(&c->attrs, NULL, NULL, 0); /* scope attributes are not stored, but must be valid */
    while (r.p < r.end) {
        TRY(next_field(&r, &f));
        if (f.number == 1 || f.number == 2) {
            WANT(f, 2);
            TRY(check_utf8(&f));
            PyObject *s = str_of(&f);
            if (!s) return FAILED;
            PyObject **slot = f.number == 1 ? &c->scope_name : &c->scope_version;
            Py_XSETREF(*slot, s);
        } else if (f.number == 3) {
            WANT(f, 2);
            TRY(read_keyvalue(&c->attrs, f.sub));
        }
    }
    if (!c->scope_name) c->scope_name = Py_NewRef(empty_str);
    if (!c->scope_version) c->scope_version = Py_NewRef(empty_str);
    return OK;
}

/* Events (or links) of one span: the per-item lists and the attributes as a JSON array. */
typedef struct {
    PyObject *a, *b, *c; /* events: time, name, -; links: trace id, span id, trace state */
    Out *json;
    int n;
} Nested;

static int nested_begin(Nested *n, Out *json, int lists) {
    n->n = 0;
    n->json = json;
    n->a = PyList_New(0);
    n->b = PyList_New(0);
    n->c = lists == 3 ? PyList_New(0) : NULL;
    json->len = 0;
    if (!n->a || !n->b || (lists == 3 && !n->c) || out_char(json, '[')) return FAILED;
    return OK;
}

static void nested_clear(Nested *n) {
    Py_CLEAR(n->a);
    Py_CLEAR(n->b);
    Py_CLEAR(n->c);
}

/* Attributes of one event or link appended to the nested JSON array. */
static int nested_attrs(Ctx *c, Nested *n, const Reader *attr_fields, int count,
                        int collect_exceptions, PyObject **exceptions) {
    Out *json = n->json;
    if (n->n++ && out_char(json, ',')) return FAILED;
    attrs_begin(&c->attrs, json, NULL, 0);
    if (out_char(json, '{')) return FAILED;
    for (int i = 0; i < count; i++) {
        TRY(read_keyvalue(&c->attrs, attr_fields[i]));
        if (collect_exceptions) {
            /* exception.type / exception.message as their string_value, in order */
            Reader r = attr_fields[i];
            Field f, key = {0};
            Value v = {V_NONE};
            while (r.p < r.end) {
                if (next_field(&r, &f)) break;
                if (f.number == 1) key = f;
                else if (f.number == 2) read_anyvalue(f.sub, &v);
            }
            Py_ssize_t kl = key.sub.p ? LEN(key) : 0;
            PyObject *which = NULL;
            if (kl == 14 && memcmp(key.sub.p, "exception.type", 14) == 0) which = str_exception_type;
            else if (kl == 17 && memcmp(key.sub.p, "exception.message", 17) == 0)
                which = str_exception_message;
            if (which) {
                if (!*exceptions && !(*exceptions = PyList_New(0))) return FAILED;
                PyObject *s = v.kind == V_STRING ? str_of(&v.str) : Py_NewRef(empty_str);
                if (!s) return FAILED;
                PyObject *pair = PyTuple_Pack(2, which, s);
                Py_DECREF(s);
                if (append(*exceptions, pair)) return FAILED;
            }
        }
    }
    return out_char(json, '}') ? FAILED : OK;
}

#define MAX_NESTED_ATTRS 256

static int read_event(Ctx *c, Nested *n, Reader r, PyObject **exceptions) {
    Field f;
    uint64_t time = 0;
    PyObject *name = NULL;
    Reader attrs[MAX_NESTED_ATTRS];
    int count = 0;
    while (r.p < r.end) {
        if (next_field(&r, &f)) goto fallback;
        if (f.number == 1) {
            if (f.wire != 1 || f.varint > MAX_TIME_NS) goto fallback;
            time = f.varint;
        } else if (f.number == 2) {
            if (f.wire != 2 || check_utf8(&f)) goto fallback;
            Py_XSETREF(name, str_of(&f));
            if (!name) return FAILED;
        } else if (f.number == 3) {
            if (f.wire != 2 || count == MAX_NESTED_ATTRS) goto fallback;
            attrs[count++] = f.sub;
        }
    }
    if (!name) name = Py_NewRef(empty_str);
    int is_exception = PyUnicode_GET_LENGTH(name) == 9 && PyUnicode_CompareWithASCIIString(name, "exception") == 0;
    if (append(n->a, PyLong_FromUnsignedLongLong(time)) || append(n->b, name)) return FAILED;
    return nested_attrs(c, n, attrs, count, is_exception, exceptions);
fallback:
    Py_XDECREF(name);
    return FALLBACK;
}

static int read_link(Ctx *c, Nested *n, Reader r) {
    Field f, trace = {0}, span = {0}, state = {0};
    Reader attrs[MAX_NESTED_ATTRS];
    int count = 0;
    while (r.p < r.end) {
        TRY(next_field(&r, &f));
        if (f.number == 1) { WANT(f, 2); trace = f; }
        else if (f.number == 2) { WANT(f, 2); span = f; }
        else if (f.number == 3) { WANT(f, 2); TRY(check_utf8(&f)); state = f; }
        else if (f.number == 4) {
            WANT(f, 2);
            if (count == MAX_NESTED_ATTRS) return FALLBACK;
            attrs[count++] = f.sub;
        }
    }
    PyObject *st = state.sub.p ? str_of(&state) : Py_NewRef(empty_str);
    if (append(n->a, trace.sub.p ? hex_of(&trace) : Py_NewRef(empty_str)) ||
        append(n->b, span.sub.p ? hex_of(&span) : Py_NewRef(empty_str)) || append(n->c, st))
        return FAILED;
    return nested_attrs(c, n, attrs, count, 0, NULL);
}

static int read_span(Ctx *c, Reader r) {
    Field f, trace = {0}, span = {0}, parent = {0}, tstate = {0}, name = {0}, smsg = {0};
    uint64_t start = 0, end = 0;
    int64_t kind = 0, code = 0;
    int have_status = 0, has_events = 0, has_links = 0, rc = OK;
    Nested ev = {0}, lk = {0};
    Out links_json = {0};
    PyObject *exceptions = NULL, *attrs_fragment = NULL;
    PyObject *found = PyDict_New();
    if (!found) return FAILED;
    Reader scan = r;
    /* First pass: scalars, ids, status; find out whether events or links exist. */
    while (scan.p < scan.end) {
        if (next_field(&scan, &f)) goto fallback;
        switch (f.number) {
            case 1: if (f.wire != 2) goto fallback; trace = f; break;
            case 2: if (f.wire != 2) goto fallback; span = f; break;
            case 3: if (f.wire != 2 || check_utf8(&f)) goto fallback; tstate = f; break;
            case 4: if (f.wire != 2) goto fallback; parent = f; break;
            case 5: if (f.wire != 2 || check_utf8(&f)) goto fallback; name = f; break;
            case 6: if (f.wire != 0) goto fallback; kind = (int32_t)f.varint; break;
            case 7: if (f.wire != 1) goto fallback; start = f.varint; break;
            case 8: if (f.wire != 1) goto fallback; end = f.varint; break;
            case 9: case 11: case 13:
                if (f.wire != 2) goto fallback;
                if (f.number == 11) has_events = 1;
                if (f.number == 13) has_links = 1;
                break;
            case 15: {
                if (f.wire != 2 || have_status) goto fallback;
                have_status = 1;
                Reader s = f.sub;
                Field g;
                while (s.p < s.end) {
                    if (next_field(&s, &g)) goto fallback;
                    if (g.number == 2) {
                        if (g.wire != 2 || check_utf8(&g)) goto fallback;
                        smsg = g;
                    } else if (g.number == 3) {
                        if (g.wire != 0) goto fallback;
                        code = (int32_t)g.varint;
                    }
                }
                break;
            }
            case 10: case 12: case 14: if (f.wire != 0) goto fallback; break;
            case 16: if (f.wire != 5) goto fallback; break;
            default: break;
        }
    }
    /* Ids and times the store can hold; anything else is rejected, with its reason, by the
     * reference path (OTLP requires both times; 0 means not set). */
    if (!trace.sub.p || LEN(trace) != 16 || all_zero(&trace) || !span.sub.p || LEN(span) != 8 ||
        all_zero(&span) || (parent.sub.p && LEN(parent) != 0 && LEN(parent) != 8))
        goto fallback;
    if (start == 0 || start > MAX_TIME_NS || end == 0 || end > MAX_TIME_NS) goto fallback;

    /* Second pass: attributes, events and links, in wire order. */
    attrs_begin(&c->attrs, &c->json, found, 0);
    c->json.len = 0;
    if (out_char(&c->json, '{')) { rc = FAILED; goto done; }
    if (has_events && (rc = nested_begin(&ev, &c->events_json, 2))) goto done;
    if (has_links && (rc = nested_begin(&lk, &links_json, 3))) goto done;
    /* the span's own map is written in one go before events/links, which reuse c->attrs */
    scan = r;
    while (scan.p < scan.end) {
        next_field(&scan, &f); /* validated by the first pass */
        if (f.number == 9 && (rc = read_keyvalue(&c->attrs, f.sub))) goto done;
    }
    if (out_char(&c->json, '}')) { rc = FAILED; goto done; }
    attrs_fragment = out_fragment(&c->json);
    if (!attrs_fragment) { rc = FAILED; goto done; }
    if (has_events || has_links) {
        scan = r;
        while (scan.p < scan.end) {
            next_field(&scan, &f);
            if (f.number == 11) rc = read_event(c, &ev, f.sub, &exceptions);
            else if (f.number == 13) rc = read_link(c, &lk, f.sub);
            if (rc) goto done;
        }
    }

    PyObject **col = c->cols;
    PyObject *kind_name = PyTuple_GET_ITEM(span_kind_names, (kind >= 0 && kind < 6) ? kind : 0);
    PyObject *status_name = PyTuple_GET_ITEM(status_names, (code >= 0 && code < 3) ? code : 0);
    if (append(col[C_TS], PyLong_FromUnsignedLongLong(start)) ||
        append(col[C_TRACE], hex_of(&trace)) || append(col[C_SPAN], hex_of(&span)) ||
        append(col[C_PARENT], parent.sub.p ? hex_of(&parent) : Py_NewRef(empty_str)) ||
        append(col[C_TSTATE], tstate.sub.p ? str_of(&tstate) : Py_NewRef(empty_str)) ||
        append(col[C_NAME], name.sub.p ? str_of(&name) : Py_NewRef(empty_str)) ||
        append_ref(col[C_KIND], kind_name) || append_ref(col[C_SERVICE], c->service) ||
        append_ref(col[C_RATTRS], c->resource_fragment) ||
        append_ref(col[C_SCOPE], c->scope_name) || append_ref(col[C_SCOPEV], c->scope_version) ||
        append_ref(col[C_ATTRS], attrs_fragment) ||
        append(col[C_DURATION], PyLong_FromUnsignedLongLong(end > start ? end - start : 0)) ||
        append_ref(col[C_STATUS], status_name) ||
        append(col[C_STATUSMSG], smsg.sub.p ? str_of(&smsg) : Py_NewRef(empty_str))) {
        rc = FAILED;
        goto done;
    }
    if (has_events) {
        if (out_char(&c->events_json, ']') || append_ref(col[C_EV_TS], ev.a) ||
            append_ref(col[C_EV_NAME], ev.b) ||
            append(col[C_EV_ATTRS], out_fragment(&c->events_json))) { rc = FAILED; goto done; }
    } else if (append_ref(col[C_EV_TS], empty_list) || append_ref(col[C_EV_NAME], empty_list) ||
               append_ref(col[C_EV_ATTRS], empty_list)) { rc = FAILED; goto done; }
    if (has_links) {
        if (out_char(&links_json, ']') || append_ref(col[C_LK_TRACE], lk.a) ||
            append_ref(col[C_LK_SPAN], lk.b) || append_ref(col[C_LK_TSTATE], lk.c) ||
            append(col[C_LK_ATTRS], out_fragment(&links_json))) { rc = FAILED; goto done; }
    } else if (append_ref(col[C_LK_TRACE], empty_list) || append_ref(col[C_LK_SPAN], empty_list) ||
               append_ref(col[C_LK_TSTATE], empty_list) || append_ref(col[C_LK_ATTRS], empty_list)) {
        rc = FAILED;
        goto done;
    }
    if (append_ref(c->found, found) || append_ref(c->r_found, c->resource_found) ||
        append_ref(c->exceptions, exceptions ? exceptions : Py_None))
        rc = FAILED;
done:
    Py_XDECREF(attrs_fragment);
    nested_clear(&ev);
    nested_clear(&lk);
    PyMem_Free(links_json.data);
    Py_XDECREF(exceptions);
    Py_DECREF(found);
    return rc;
fallback:
    Py_DECREF(found);
    return FALLBACK;
}

static int read_scope_spans(Ctx *c, Reader r) {
    Field f;
    int have_scope = 0;
    Reader scan = r;
    while (scan.p < scan.end) { /* the scope may follow its spans on the wire */
        TRY(next_field(&scan, &f));
        if (f.number == 1) {
            WANT(f, 2);
            if (have_scope++) return FALLBACK;
            TRY(read_scope(c, f.sub));
        } else if (f.number == 2 || f.number == 3) {
            WANT(f, 2);
            if (f.number == 3) TRY(check_utf8(&f)); /* schema_url */
        }
    }
    if (!have_scope) {
        Py_XSETREF(c->scope_name, Py_NewRef(empty_str));
        Py_XSETREF(c->scope_version, Py_NewRef(empty_str));
    }
    while (r.p < r.end) {
        next_field(&r, &f);
        if (f.number == 2) TRY(read_span(c, f.sub));
    }
    return OK;
}

static int read_resource_spans(Ctx *c, Reader r) {
    Field f;
    int have_resource = 0;
    Reader scan = r;
    while (scan.p < scan.end) {
        TRY(next_field(&scan, &f));
        if (f.number == 1) {
            WANT(f, 2);
            if (have_resource++) return FALLBACK;
            /* Resource: attributes (1), dropped count (2); entity refs and others skipped */
            TRY(read_resource(c, f.sub));
        } else if (f.number == 2 || f.number == 3) {
            WANT(f, 2);
            if (f.number == 3) TRY(check_utf8(&f));
        }
    }
    if (!have_resource) TRY(read_resource(c, (Reader){NULL, NULL}));
    while (r.p < r.end) {
        next_field(&r, &f);
        if (f.number == 2) TRY(read_scope_spans(c, f.sub));
    }
    return OK;
}

static void ctx_clear(Ctx *c) {
    for (int i = 0; i < N_RAW_COLUMNS; i++) Py_CLEAR(c->cols[i]);
    Py_CLEAR(c->found);
    Py_CLEAR(c->r_found);
    Py_CLEAR(c->exceptions);
    Py_CLEAR(c->service);
    Py_CLEAR(c->resource_fragment);
    Py_CLEAR(c->resource_found);
    Py_CLEAR(c->scope_name);
    Py_CLEAR(c->scope_version);
    Py_CLEAR(c->attrs.service);
    PyMem_Free(c->json.data);
    PyMem_Free(c->events_json.data);
    PyMem_Free(c->attrs.text.data);
}

PyDoc_STRVAR(parse_doc,
"parse(body: bytes) -> tuple | None\n\n"
"Read an ExportTraceServiceRequest: (columns, found, resource_found, exceptions), one entry per\n"
"span in each. columns is a tuple of the 22 raw columns (normalize.COLUMNS up to LinksAttributes),\n"
"attribute maps as orjson.Fragment. None: the request needs the reference path.");

static PyObject *parse(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (!fragment_type) {
        PyErr_SetString(PyExc_RuntimeError, "call configure() first");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE)) return NULL;
    Ctx c;
    memset(&c, 0, sizeof c);
    int rc = OK;
    for (int i = 0; i < N_RAW_COLUMNS; i++)
        if (!(c.cols[i] = PyList_New(0))) rc = FAILED;
    if (!(c.found = PyList_New(0)) || !(c.r_found = PyList_New(0)) ||
        !(c.exceptions = PyList_New(0)))
        rc = FAILED;
    Reader r = {(const uint8_t *)view.buf, (const uint8_t *)view.buf + view.len};
    Field f;
    /* validate the whole request's framing first: a truncated tail must not half-fill columns */
    Reader scan = r;
    while (rc == OK && scan.p < scan.end) {
        rc = next_field(&scan, &f);
        if (rc == OK && f.number == 1 && f.wire != 2) rc = FALLBACK;
    }
    while (rc == OK && r.p < r.end) {
        next_field(&r, &f);
        if (f.number == 1) rc = read_resource_spans(&c, f.sub);
    }
    PyBuffer_Release(&view);
    PyObject *result = NULL;
    if (rc == OK) {
        PyObject *cols = PyTuple_New(N_RAW_COLUMNS);
        if (cols) {
            for (int i = 0; i < N_RAW_COLUMNS; i++) {
                PyTuple_SET_ITEM(cols, i, c.cols[i]);
                c.cols[i] = NULL;
            }
            result = PyTuple_Pack(4, cols, c.found, c.r_found, c.exceptions);
            Py_DECREF(cols);
        }
    } else if (rc == FALLBACK) {
        result = Py_NewRef(Py_None);
    }
    ctx_clear(&c);
    return result;
}

PyDoc_STRVAR(configure_doc,
"configure(field_priority, fragment_type, span_kind_names, status_names, empty_list)\n\n"
"field_priority: attribute key -> (field, priority) as in normalize._FIELD_PRIORITY.");

static void free_entries(Interesting *list, Py_ssize_t n) {
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_XDECREF(list[k].key_obj);
        Py_XDECREF(list[k].field);
        Py_XDECREF(list[k].priority);
    }
    PyMem_Free(list);
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *priorities, *fragment, *kinds, *statuses, *empty;
    if (!PyArg_ParseTuple(args, "O!OO!O!O!", &PyDict_Type, &priorities, &fragment, &PyTuple_Type,
                          &kinds, &PyTuple_Type, &statuses, &PyList_Type, &empty))
        return NULL;
    if (PyTuple_GET_SIZE(kinds) != 6 || PyTuple_GET_SIZE(statuses) != 3) {
        PyErr_SetString(PyExc_ValueError, "expected 6 span kind names and 3 status names");
        return NULL;
    }
    Py_ssize_t n = PyDict_GET_SIZE(priorities);
    if (n >= TABLE_SIZE / 2) {
        PyErr_SetString(PyExc_ValueError, "too many agent attribute keys for the lookup table");
        return NULL;
    }
    Interesting *fresh = PyMem_Calloc(n ? n : 1, sizeof(Interesting));
    if (!fresh) return PyErr_NoMemory();
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *val;
    while (PyDict_Next(priorities, &pos, &key, &val)) {
        long prio;
        PyObject *field, *priority;
        if (!PyUnicode_Check(key) || !PyArg_ParseTuple(val, "UO!", &field, &PyLong_Type, &priority))
            goto bad;
        prio = PyLong_AsLong(priority);
        Interesting *e = &fresh[i++];
        e->key = PyUnicode_AsUTF8AndSize(key, &e->len);
        if (!e->key) goto bad;
        e->key_obj = Py_NewRef(key);
        e->field = Py_NewRef(field);
        e->priority = Py_NewRef(priority);
        e->prio = prio;
    }
    /* swap in the new table (configure is called once, at import; a second call replaces) */
    free_entries(entries, n_entries);
    memset(table, 0, sizeof table);
    entries = fresh;
    n_entries = n;
    for (Py_ssize_t k = 0; k < n; k++) {
        size_t h = hash_bytes(entries[k].key, entries[k].len) & (TABLE_SIZE - 1);
        while (table[h]) h = (h + 1) & (TABLE_SIZE - 1);
        table[h] = &entries[k];
    }
    Py_XSETREF(fragment_type, Py_NewRef(fragment));
    Py_XSETREF(span_kind_names, Py_NewRef(kinds));
    Py_XSETREF(status_names, Py_NewRef(statuses));
    Py_XSETREF(empty_list, Py_NewRef(empty));
    Py_RETURN_NONE;
bad:
    free_entries(fresh, i);
    if (!PyErr_Occurred())
        PyErr_SetString(PyExc_TypeError, "field_priority: expected {str: (str, int)}");
    return NULL;
}

static PyMethodDef methods[] = {
    {"parse", parse, METH_O, parse_doc},
    {"configure", configure, METH_VARARGS, configure_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "collector._otlp_reader",
    "OTLP trace requests read from wire bytes into normalize.py's columns (the fast path).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__otlp_reader(void) {
    empty_str = PyUnicode_New(0, 0);
    str_exception_type = PyUnicode_InternFromString("exception.type");
    str_exception_message = PyUnicode_InternFromString("exception.message");
    if (!empty_str || !str_exception_type || !str_exception_message) return NULL;
    return PyModule_Create(&module);
}
