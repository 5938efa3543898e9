/* The hot path of decode_payloads in C: vLLM/SGLang chat chunks with full top-k rows.
 *
 * decode_chat(payloads: list[bytes], k: int, floor: float)
 *     -> (values: bytearray, confs: bytearray, text: str, reasoning: str) | None
 * decode_chat_prefix(payloads: list[bytes], k: int, floor: float)
 *     -> (values, confs, text, reasoning, taken: int) | None
 *
 * values holds n x k float64, each row sorted largest first and clamped into [floor, 0]:
 * exactly what backends/sse.py's msgspec path returns for the same read. confs holds the
 * n token confidences, -mean(row), summed largest first (numpy's token_confidence may sum
 * in another order: the two agree to the last bit or two). None means "not
 * the common shape, let the msgspec path decide", and that answer is always safe: None is
 * returned for anything unusual (an error object, usage, a finish reason, a choice other
 * than 0, completions fields, a row without exactly k values, a duplicate field, a number
 * that overflows, nesting past 64) and for anything msgspec might refuse (every byte is
 * checked against the JSON grammar and UTF-8, skipped values included).
 * So this module may only ever be stricter than msgspec, never more lenient; the tests
 * compare it with the msgspec path and with the json-module reference on the same reads.
 *
 * decode_chat_prefix reads the payloads up to the first one decode_chat would decline and
 * says how many it took: the read that ends a stream (its finish reason, its usage) is a
 * whole read of 130 tokens when the client lags, and only its last chunks need msgspec.
 *
 * Why C: msgspec builds ~22 structs and floats per top-20 token only for Python to copy
 * them into a list and then an array; here each number goes from the bytes to the array.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 64
#define MAX_K 256

/* FAIL: a Python error is set. OTHER: not the common spelling a fast matcher knows (the
 * input is where it was); the general steps decide. */
typedef enum { OK = 0, BAIL = -1, FAIL = -2, OTHER = -3 } Status;

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t more) {
    if (b->len + more <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more) cap *= 2;
    char *d = PyMem_Realloc(b->data, cap);
    if (!d) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

typedef struct {
    const unsigned char *p, *end;
    int depth;
    int k;
    double floor;
    Buf values;    /* float64 rows */
    Buf confs;     /* float64, one token confidence per row */
    Buf text;      /* UTF-8 */
    Buf reasoning; /* UTF-8 */
    Buf scratch;   /* one decoded string */
    Buf key;       /* one decoded key with escapes */
} Scan;

/* Bytes that stand in a string as they are: ASCII from the space up (DEL included), but
 * '"' and '\\'. */
static const unsigned char PLAIN[256] = {
    [' '] = 1, ['!'] = 1, ['#' ... '['] = 1, [']' ... 0x7F] = 1,
};

static inline void ws(Scan *s) {
    while (s->p < s->end && *s->p <= ' ' &&
           (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static inline int eat(Scan *s, unsigned char c) {
    ws(s);
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return 1;
    }
    return 0;
}

static inline int peek(Scan *s) {
    ws(s);
    return s->p < s->end ? *s->p : -1;
}

static int hex4(const unsigned char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v * 16 + d;
    }
    *out = v;
    return 0;
}

/* Length of the valid UTF-8 sequence at p (strict: no overlongs, surrogates or > U+10FFFF),
 * or 0 if it is not one. */
static int utf8_len(const unsigned char *p, const unsigned char *end) {
    unsigned c = p[0];
    if (c < 0x80) return 1;
    int n;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if (end - p < n) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (int i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

static void put_utf8(unsigned char *o, unsigned cp, int *n) {
    if (cp < 0x80) {
        o[0] = cp;
        *n = 1;
    } else if (cp < 0x800) {
        o[0] = 0xC0 | (cp >> 6);
        o[1] = 0x80 | (cp & 0x3F);
        *n = 2;
    } else if (cp < 0x10000) {
        o[0] = 0xE0 | (cp >> 12);
        o[1] = 0x80 | ((cp >> 6) & 0x3F);
        o[2] = 0x80 | (cp & 0x3F);
        *n = 3;
    } else {
        o[0] = 0xF0 | (cp >> 18);
        o[1] = 0x80 | ((cp >> 12) & 0x3F);
        o[2] = 0x80 | ((cp >> 6) & 0x3F);
        o[3] = 0x80 | (cp & 0x3F);
        *n = 4;
    }
}

/* A string at s->p (which is '"'). With out, its decoded UTF-8 is appended there. A lone
 * surrogate escape is a BAIL: what a decoder makes of one differs between decoders. */
static Status string(Scan *s, Buf *out) {
    if (s->p >= s->end || *s->p != '"') return BAIL;
    s->p++;
    for (;;) {
        const unsigned char *run = s->p;
        while (s->p < s->end && PLAIN[*s->p]) s->p++;
        if (out && s->p > run && buf_put(out, (const char *)run, s->p - run) < 0) return FAIL;
        if (s->p >= s->end) return BAIL;
        unsigned c = *s->p;
        if (c == '"') {
            s->p++;
            return OK;
        }
        if (c < 0x20) return BAIL; /* a raw control character */
        if (c >= 0x80) {
            int n = utf8_len(s->p, s->end);
            if (!n) return BAIL;
            if (out && buf_put(out, (const char *)s->p, n) < 0) return FAIL;
            s->p += n;
            continue;
        }
        if (c != '\\' || s->end - s->p < 2) return BAIL;
        unsigned char e = s->p[1], one;
        s->p += 2;
        switch (e) {
            case '"': one = '"'; break;
            case '\\': one = '\\'; break;
            case '/': one = '/'; break;
            case 'b': one = '\b'; break;
            case 'f': one = '\f'; break;
            case 'n': one = '\n'; break;
            case 'r': one = '\r'; break;
            case 't': one = '\t'; break;
            case 'u': {
                unsigned cp, lo;
                if (s->end - s->p < 4 || hex4(s->p, &cp) < 0) return BAIL;
                s->p += 4;
                if (cp >= 0xDC00 && cp <= 0xDFFF) return BAIL;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u') return BAIL;
                    if (hex4(s->p + 2, &lo) < 0 || lo < 0xDC00 || lo > 0xDFFF) return BAIL;
                    s->p += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                if (out) {
                    unsigned char u[4];
                    int n;
                    put_utf8(u, cp, &n);
                    if (buf_put(out, (const char *)u, n) < 0) return FAIL;
                }
                continue;
            }
            default: return BAIL;
        }
        if (out && buf_put(out, (const char *)&one, 1) < 0) return FAIL;
    }
}

/* A JSON number at s->p, by the grammar -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?, into
 * *out when out is not NULL. Overflow to infinity is a BAIL (msgspec refuses 1e400). */
static Status number(Scan *s, double *out) {
    const unsigned char *start = s->p, *p = s->p, *end = s->end;
    if (out) {
        /* A logprob's common form, -?(0|[1-9][0-9]*).[0-9]+ with at most 15 significant
         * digits, read and checked in one pass; Clinger's fast path (below) makes it. */
        int neg = p < end && *p == '-';
        p += neg;
        uint64_t m = 0;
        int digits = 0, scale = 0;
        if (p < end && *p == '0') p++;
        else if (p < end && *p >= '1' && *p <= '9')
            for (; p < end && *p >= '0' && *p <= '9'; p++, digits++) m = m * 10 + (*p - '0');
        else return BAIL;
        if (p + 1 < end && *p == '.' && p[1] >= '0' && p[1] <= '9') {
            for (p++; p < end && *p >= '0' && *p <= '9'; p++, scale--, digits += m != 0)
                m = m * 10 + (*p - '0');
            if (!(p < end && (*p == 'e' || *p == 'E')) && digits <= 15 && scale >= -22) {
                static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                               1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                               1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
                double v = (double)m / pow10[-scale];
                *out = neg ? -v : v;
                s->p = p;
                return OK;
            }
        }
        p = start; /* another form: the general steps below */
    }
    if (!out && p < end && *p >= '1' && *p <= '9') { /* a token's "bytes": 32, 98, ... */
        do p++;
        while (p < end && *p >= '0' && *p <= '9');
        if (p == end || (*p != '.' && *p != 'e' && *p != 'E')) {
            s->p = p;
            return OK;
        }
        p = start;
    }
    if (p < end && *p == '-') p++;
    if (p >= end) return BAIL;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') while (p < end && *p >= '0' && *p <= '9') p++;
    else return BAIL;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') return BAIL;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return BAIL;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    s->p = p;
    if (!out) return OK;
    /* Clinger's fast path: up to 15 significant digits and a power of ten up to 1e22 are
     * both exact doubles, so one division or product is the correctly rounded value (what
     * the slow path below gives). Logprobs like -0.120315 all take it. */
    const unsigned char *q = start;
    int neg = *q == '-';
    q += neg;
    uint64_t m = 0;
    int digits = 0, scale = 0;
    for (; q < p && *q >= '0' && *q <= '9'; q++, digits += m != 0) m = m * 10 + (*q - '0');
    if (q < p && *q == '.')
        for (q++; q < p && *q >= '0' && *q <= '9'; q++, digits += m != 0, scale--)
            m = m * 10 + (*q - '0');
    if (q == p && digits <= 15 && scale >= -22) {
        static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                       1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                       1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
        double v = (double)m / pow10[-scale];
        *out = neg ? -v : v;
        return OK;
    }
    char tmp[64];
    Py_ssize_t n = p - start;
    if (n >= (Py_ssize_t)sizeof tmp) return BAIL; /* more digits than a double holds */
    memcpy(tmp, start, n);
    tmp[n] = 0;
    char *stop;
    double v = PyOS_string_to_double(tmp, &stop, NULL); /* locale-free, correctly rounded */
    if (v == -1.0 && PyErr_Occurred()) return FAIL;
    if (stop != tmp + n || !isfinite(v)) return BAIL;
    *out = v;
    return OK;
}

static Status literal(Scan *s, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0) return BAIL;
    s->p += n;
    return OK;
}

static Status skip_value(Scan *s);

static Status skip_container(Scan *s, unsigned char close, int object) {
    if (++s->depth > MAX_DEPTH) return BAIL;
    s->p++;
    if (!eat(s, close)) {
        do {
            Status st;
            if (object) {
                if (peek(s) != '"') return BAIL;
                if ((st = string(s, NULL)) != OK) return st;
                if (!eat(s, ':')) return BAIL;
            } else if (peek(s) >= '1' && peek(s) <= '9') {
                /* A token's "bytes" ([32, 98, 120]): five per top entry, a hundred per token,
                 * so the common element is passed here without a call. */
                const unsigned char *p = s->p + 1, *end = s->end;
                while (p < end && *p >= '0' && *p <= '9') p++;
                if (p < end && *p != '.' && *p != 'e' && *p != 'E') {
                    s->p = p;
                    continue;
                }
            }
            if ((st = skip_value(s)) != OK) return st;
        } while (eat(s, ','));
        if (!eat(s, close)) return BAIL;
    }
    s->depth--;
    return OK;
}

/* Any JSON value, checked and passed over. */
static Status skip_value(Scan *s) {
    switch (peek(s)) {
        case '"': return string(s, NULL);
        case '{': return skip_container(s, '}', 1);
        case '[': return skip_container(s, ']', 0);
        case 't': return literal(s, "true");
        case 'f': return literal(s, "false");
        case 'n': return literal(s, "null");
        case -1: return BAIL;
        default: return number(s, NULL);
    }
}

static int is_null(Scan *s) {
    if (peek(s) == 'n' && literal(s, "null") == OK) return 1;
    return 0;
}

/* The next key of an object (s->p after '{' or ','): *k and *len point into the input, or,
 * for a key with escapes ("\u006cogprob" is "logprob"), to its decoded bytes. */
static Status key(Scan *s, const unsigned char **k, Py_ssize_t *len) {
    if (peek(s) != '"') return BAIL;
    const unsigned char *start = s->p + 1;
    Status st = string(s, NULL);
    if (st != OK) return st;
    *k = start;
    *len = s->p - 1 - start;
    if (memchr(start, '\\', *len)) {
        const unsigned char *after = s->p;
        s->p = start - 1;
        s->key.len = 0;
        if ((st = string(s, &s->key)) != OK) return st;
        s->p = after;
        *k = (const unsigned char *)s->key.data;
        *len = s->key.len;
    }
    if (!eat(s, ':')) return BAIL;
    return OK;
}

#define IS(name) (len == (Py_ssize_t)sizeof(name) - 1 && memcmp(k, name, len) == 0)

/* Walk the fields of an object, calling field() for each; fields it does not know are
 * skipped. seen guards against a field given twice (which decoder keeps which copy is not
 * something to rely on). */
typedef Status (*FieldFn)(Scan *s, const unsigned char *k, Py_ssize_t len, unsigned *seen,
                          void *ctx);

static Status object(Scan *s, FieldFn field, void *ctx) {
    if (peek(s) != '{') return BAIL;
    if (++s->depth > MAX_DEPTH) return BAIL;
    s->p++;
    unsigned seen = 0;
    if (!eat(s, '}')) {
        do {
            const unsigned char *k;
            Py_ssize_t len;
            Status st = key(s, &k, &len);
            if (st == OK) st = field(s, k, len, &seen, ctx);
            if (st != OK) return st;
        } while (eat(s, ','));
        if (!eat(s, '}')) return BAIL;
    }
    s->depth--;
    return OK;
}

static Status once(unsigned *seen, unsigned bit) {
    if (*seen & bit) return BAIL;
    *seen |= bit;
    return OK;
}

/* --- one top-k entry: {"logprob": x, ...} ------------------------------------------------ */

typedef struct {
    double value;
    int has;
} Top;

static Status top_field(Scan *s, const unsigned char *k, Py_ssize_t len, unsigned *seen,
                        void *ctx) {
    Top *t = ctx;
    if (IS("logprob")) {
        if (once(seen, 1) != OK) return BAIL;
        if (is_null(s)) return BAIL; /* a row with a missing value: not a full row */
        t->has = 1;
        return number(s, &t->value);
    }
    return skip_value(s);
}

/* The common spelling of a top entry, {"token": S, "logprob": x, "bytes": [i, ...]} in
 * this order (vLLM and SGLang write it so, with or without spaces), matched in one pass
 * without the general walk's per-field calls: ~20 of them per token are most of the bytes.
 * Anything else (another order, another field, a null, a float among the bytes) is OTHER,
 * with s->p back at the '{', and the general steps read the entry (and BAIL where the
 * grammar does). What it takes is valid JSON by construction, so the two agree. */
static int word(Scan *s, const char *w, size_t n) {
    ws(s);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0) return 0;
    s->p += n;
    return 1;
}

#define WORD(s, lit) word(s, lit, sizeof(lit) - 1)

static Status top_entry(Scan *s, double *value) {
    const unsigned char *start = s->p;
    Status st;
    if (s->depth + 2 > MAX_DEPTH) return OTHER;
    if (!eat(s, '{') || !WORD(s, "\"token\"") || !eat(s, ':') || peek(s) != '"') goto other;
    if (string(s, NULL) != OK) goto other;
    if (!eat(s, ',') || !WORD(s, "\"logprob\"") || !eat(s, ':')) goto other;
    ws(s);
    if ((st = number(s, value)) == FAIL) return FAIL;
    if (st != OK) goto other;
    if (!eat(s, ',') || !WORD(s, "\"bytes\"") || !eat(s, ':') || !eat(s, '[')) goto other;
    if (!eat(s, ']')) {
        do {
            ws(s);
            const unsigned char *p = s->p, *end = s->end;
            if (p < end && *p == '0') p++;
            else if (p < end && *p >= '1' && *p <= '9')
                do p++;
                while (p < end && *p >= '0' && *p <= '9');
            else goto other;
            if (p < end && (*p == '.' || *p == 'e' || *p == 'E' || (*p >= '0' && *p <= '9')))
                goto other; /* a fraction, an exponent, or a leading zero */
            s->p = p;
        } while (eat(s, ','));
        if (!eat(s, ']')) goto other;
    }
    if (!eat(s, '}')) goto other;
    return OK;
other:
    s->p = start;
    return OTHER;
}

/* --- one token: {"logprob": x, "top_logprobs": [...], ...} -------------------------------- */

static Status tops(Scan *s) {
    double row[MAX_K];
    int n = 0;
    if (!eat(s, '[')) return BAIL;
    if (!eat(s, ']')) {
        do {
            Top t = {0.0, 0};
            if (n == s->k) return BAIL; /* more than k: llama.cpp's shape, the general path */
            ws(s);
            Status st = top_entry(s, &t.value);
            if (st == OTHER) {
                if ((st = object(s, top_field, &t)) != OK) return st;
                if (!t.has) return BAIL;
            } else if (st != OK) {
                return st;
            }
            row[n++] = t.value;
        } while (eat(s, ','));
        if (!eat(s, ']')) return BAIL;
    }
    if (n != s->k) return BAIL;
    /* largest first (insertion sort: k is ~20), then clamped as sanitise() does */
    for (int i = 1; i < n; i++) {
        double v = row[i];
        int j = i - 1;
        while (j >= 0 && row[j] < v) {
            row[j + 1] = row[j];
            j--;
        }
        row[j + 1] = v;
    }
    for (int i = 0; i < n; i++) {
        if (row[i] > 0.0) row[i] = 0.0;
        else if (row[i] < s->floor) row[i] = s->floor;
    }
    /* The token confidence -mean(row), as deepconf.confidence.token_confidence defines it:
     * here the reads that need no NaN mask are scored without numpy's per-call cost. */
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += row[i];
    double conf = sum / -(double)n;
    if (buf_put(&s->values, (const char *)row, n * sizeof(double)) < 0) return FAIL;
    return buf_put(&s->confs, (const char *)&conf, sizeof conf) < 0 ? FAIL : OK;
}

static Status token_field(Scan *s, const unsigned char *k, Py_ssize_t len, unsigned *seen,
                          void *ctx) {
    int *has_tops = ctx;
    if (IS("logprob")) {
        if (once(seen, 1) != OK) return BAIL;
        double unused; /* parsed all the same: msgspec refuses a logprob of 1e400 */
        return is_null(s) ? OK : number(s, &unused);
    }
    if (IS("top_logprobs")) {
        if (once(seen, 2) != OK) return BAIL;
        if (is_null(s)) return BAIL; /* an empty row: the general path counts it */
        *has_tops = 1;
        return tops(s);
    }
    return skip_value(s);
}

/* --- choices[i].logprobs: {"content": [token, ...], ...} ---------------------------------- */

static Status logprobs_field(Scan *s, const unsigned char *k, Py_ssize_t len, unsigned *seen,
                             void *ctx) {
    (void)ctx;
    if (IS("content")) {
        if (once(seen, 1) != OK) return BAIL;
        if (is_null(s)) return OK;
        if (!eat(s, '[')) return BAIL;
        if (!eat(s, ']')) {
            do {
                int has_tops = 0;
                Status st = object(s, token_field, &has_tops);
                if (st != OK) return st;
                if (!has_tops) return BAIL;
            } while (eat(s, ','));
            if (!eat(s, ']')) return BAIL;
        }
        return OK;
    }
    if (IS("top_logprobs") || IS("token_logprobs")) /* completions: the general path */
        return is_null(s) ? OK : BAIL;
    return skip_value(s);
}

/* --- choices[i].delta: {"content": str, "reasoning_content": str, "reasoning": str} ------- */

typedef struct {
    Py_ssize_t content, reasoning_content, reasoning; /* decoded lengths; 0 for null */
    Py_ssize_t at[3];                                 /* where each starts in scratch */
} Delta;

static Status delta_text(Scan *s, Delta *d, Py_ssize_t *len, int slot) {
    if (is_null(s)) return OK;
    if (peek(s) != '"') return BAIL; /* msgspec refuses a non-string */
    d->at[slot] = s->scratch.len;
    Status st = string(s, &s->scratch);
    *len = s->scratch.len - d->at[slot];
    return st;
}

static Status delta_field(Scan *s, const unsigned char *k, Py_ssize_t len, unsigned *seen,
                          void *ctx) {
    Delta *d = ctx;
    if (IS("content")) return once(seen, 1) ? BAIL : delta_text(s, d, &d->content, 0);
    if (IS("reasoning_content"))
        return once(seen, 2) ? BAIL : delta_text(s, d, &d->reasoning_content, 1);
    if (IS("reasoning")) return once(seen, 4) ? BAIL : delta_text(s, d, &d->reasoning, 2);
    return skip_value(s);
}

/* --- one choice ---------------------------------------------------------------------------- */

typedef struct {
    Py_ssize_t piece; /* length of the text this choice carried (content, else reasoning) */
} Choice;

static Status choice_field(Scan *s, const unsigned char *k, Py_ssize_t len, unsigned *seen,
                           void *ctx) {
    Choice *c = ctx;
    if (IS("index")) { /* only choice 0 is read, so any other index is the general path */
        if (once(seen, 1) != OK) return BAIL;
        ws(s);
        if (s->p < s->end && *s->p == '0') {
            s->p++;
            if (s->p < s->end && ((*s->p >= '0' && *s->p <= '9') || *s->p == '.' ||
                                  *s->p == 'e' || *s->p == 'E'))
                return BAIL;
            return OK;
        }
        return BAIL;
    }
    if (IS("delta")) {
        if (once(seen, 2) != OK) return BAIL;
        if (is_null(s)) return OK;
        Delta d = {0, 0, 0, {0, 0, 0}};
        s->scratch.len = 0;
        Status st = object(s, delta_field, &d);
        if (st != OK) return st;
        const char *base = s->scratch.data;
        if (d.content && buf_put(&s->text, base + d.at[0], d.content) < 0) return FAIL;
        Py_ssize_t r = d.reasoning_content ? d.reasoning_content : d.reasoning;
        Py_ssize_t at = d.reasoning_content ? d.at[1] : d.at[2];
        if (r && buf_put(&s->reasoning, base + at, r) < 0) return FAIL;
        c->piece = d.content ? d.content : r;
        return OK;
    }
    if (IS("logprobs")) {
        if (once(seen, 4) != OK) return BAIL;
        return is_null(s) ? OK : object(s, logprobs_field, NULL);
    }
    if (IS("text") || IS("finish_reason")) /* completions, or a trace's end: general path */
        return is_null(s) ? OK : BAIL;
    return skip_value(s);
}

/* --- one chunk ----------------------------------------------------------------------------- */

static Status chunk_field(Scan *s, const unsigned char *k, Py_ssize_t len, unsigned *seen,
                          void *ctx) {
    (void)ctx;
    if (IS("choices")) {
        if (once(seen, 1) != OK) return BAIL;
        if (is_null(s)) return OK;
        if (!eat(s, '[')) return BAIL;
        if (!eat(s, ']')) {
            do {
                Choice c = {0};
                Py_ssize_t rows = s->values.len;
                Status st = object(s, choice_field, &c);
                if (st != OK) return st;
                if (c.piece && s->values.len == rows) return BAIL; /* unscored text */
            } while (eat(s, ','));
            if (!eat(s, ']')) return BAIL;
        }
        return OK;
    }
    if (IS("object")) { /* "error" is vLLM's older in-stream error */
        if (once(seen, 2) != OK) return BAIL;
        if (is_null(s)) return OK;
        if (peek(s) != '"') return BAIL;
        const unsigned char *start = s->p + 1;
        Status st = string(s, NULL);
        if (st != OK) return st;
        Py_ssize_t n = s->p - 1 - start;
        return (n == 5 && memcmp(start, "error", 5) == 0) || memchr(start, '\\', n) ? BAIL : OK;
    }
    if (IS("usage") || IS("error") || IS("message"))
        return is_null(s) ? OK : BAIL;
    return skip_value(s);
}

/* Scan the payloads in order; stop at the first one outside the common shape. Returns the
 * number taken whole (what s holds is theirs alone: a declined payload's partial rows and
 * text are cut off again), or -1 with a Python error set. */
static Py_ssize_t scan_payloads(Scan *s, PyObject *payloads) {
    Py_ssize_t n = PyList_GET_SIZE(payloads);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyList_GET_ITEM(payloads, i);
        if (!PyBytes_Check(p)) return i;
        Py_ssize_t values = s->values.len, confs = s->confs.len;
        Py_ssize_t text = s->text.len, reasoning = s->reasoning.len;
        s->p = (const unsigned char *)PyBytes_AS_STRING(p);
        s->end = s->p + PyBytes_GET_SIZE(p);
        s->depth = 0;
        Status st = object(s, chunk_field, NULL);
        if (st == OK && peek(s) != -1) st = BAIL; /* anything after the object */
        if (st == FAIL) return -1;
        if (st != OK) {
            s->values.len = values;
            s->confs.len = confs;
            s->text.len = text;
            s->reasoning.len = reasoning;
            return i;
        }
    }
    return n;
}

/* decode_chat and decode_chat_prefix: `whole` declines a read unless every payload is taken. */
static PyObject *decode(PyObject *args, int whole) {
    PyObject *payloads;
    int k;
    double floor;
    if (!PyArg_ParseTuple(args, "Oid", &payloads, &k, &floor)) return NULL;
    if (!PyList_Check(payloads) || k < 1 || k > MAX_K) Py_RETURN_NONE;
    Scan s;
    memset(&s, 0, sizeof s);
    s.k = k;
    s.floor = floor;
    PyObject *result = NULL;
    Py_ssize_t n = PyList_GET_SIZE(payloads);
    Py_ssize_t taken = scan_payloads(&s, payloads);
    if (taken >= 0 && ((taken == 0 && n > 0) || (whole && taken < n))) {
        result = Py_NewRef(Py_None);
    } else if (taken >= 0) {
        PyObject *values = PyByteArray_FromStringAndSize(s.values.data, s.values.len);
        PyObject *confs = PyByteArray_FromStringAndSize(s.confs.data, s.confs.len);
        PyObject *text = PyUnicode_DecodeUTF8(s.text.data, s.text.len, "strict");
        PyObject *reasoning = PyUnicode_DecodeUTF8(s.reasoning.data, s.reasoning.len, "strict");
        if (values && confs && text && reasoning)
            result = whole ? PyTuple_Pack(4, values, confs, text, reasoning)
                           : Py_BuildValue("(OOOOn)", values, confs, text, reasoning, taken);
        Py_XDECREF(values);
        Py_XDECREF(confs);
        Py_XDECREF(text);
        Py_XDECREF(reasoning);
    }
    PyMem_Free(s.values.data);
    PyMem_Free(s.confs.data);
    PyMem_Free(s.text.data);
    PyMem_Free(s.reasoning.data);
    PyMem_Free(s.scratch.data);
    PyMem_Free(s.key.data);
    return result;
}

static PyObject *decode_chat(PyObject *self, PyObject *args) {
    (void)self;
    return decode(args, 1);
}

static PyObject *decode_chat_prefix(PyObject *self, PyObject *args) {
    (void)self;
    return decode(args, 0);
}

static PyMethodDef methods[] = {
    {"decode_chat", decode_chat, METH_VARARGS,
     "decode_chat(payloads, k, floor) -> (values, confs, text, reasoning) | None\n\n"
     "The full-row chat chunks of one read: n x k float64 rows (largest first, clamped into\n"
     "[floor, 0]) and n token confidences, as bytearrays, and the joined content and\n"
     "reasoning text; None when the read is not that common shape and the msgspec path\n"
     "must decide."},
    {"decode_chat_prefix", decode_chat_prefix, METH_VARARGS,
     "decode_chat_prefix(payloads, k, floor) -> (values, confs, text, reasoning, taken) | None\n\n"
     "decode_chat of the payloads before the first one outside the common shape (taken of\n"
     "them, all when none is); None when the first one already is."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_chunkscan",
    "The common-shape fast path of deepconf.backends.sse.decode_payloads.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__chunkscan(void) { return PyModule_Create(&module); }
