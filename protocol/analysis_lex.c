/* A hand-rolled SQL lexer for the analysis cache: one pass that finds the
 * tokens (literals told apart by kind, not value), the statement boundaries,
 * and from them the cache key. It follows PostgreSQL 15's scan.l rules for
 * what a token is; where it is unsure it says TK_BAD, which only costs a
 * cache miss. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "analysis_int.h"

/* Character classes, one table lookup per byte on the hot path. */
enum { C_SPACE = 1, C_IDSTART = 2, C_DIGIT = 4, C_OP = 8, C_IDCONT = 16, C_PREFIX = 32 };
#define C_ID (C_IDSTART | C_IDCONT)
#define C_IDP (C_IDSTART | C_IDCONT | C_PREFIX)     /* may open a b'' e'' u&'' x'' literal */
#define C_DIG (C_DIGIT | C_IDCONT)
static const uint8_t cclass[256] = {
    [' '] = C_SPACE, ['\t'] = C_SPACE, ['\n'] = C_SPACE, ['\r'] = C_SPACE,
    ['\f'] = C_SPACE,   /* not '\v': PostgreSQL 15's scan.l has space [ \t\n\r\f] (16 adds \v) */
    ['0'] = C_DIG, ['1'] = C_DIG, ['2'] = C_DIG, ['3'] = C_DIG, ['4'] = C_DIG,
    ['5'] = C_DIG, ['6'] = C_DIG, ['7'] = C_DIG, ['8'] = C_DIG, ['9'] = C_DIG,
    ['_'] = C_ID,
    ['A'] = C_ID, ['B'] = C_IDP, ['C'] = C_ID, ['D'] = C_ID,
    ['E'] = C_IDP, ['F'] = C_ID, ['G'] = C_ID, ['H'] = C_ID,
    ['I'] = C_ID, ['J'] = C_ID, ['K'] = C_ID, ['L'] = C_ID,
    ['M'] = C_ID, ['N'] = C_ID, ['O'] = C_ID, ['P'] = C_ID,
    ['Q'] = C_ID, ['R'] = C_ID, ['S'] = C_ID, ['T'] = C_ID,
    ['U'] = C_IDP, ['V'] = C_ID, ['W'] = C_ID, ['X'] = C_IDP,
    ['Y'] = C_ID, ['Z'] = C_ID,
    ['a'] = C_ID, ['b'] = C_IDP, ['c'] = C_ID, ['d'] = C_ID,
    ['e'] = C_IDP, ['f'] = C_ID, ['g'] = C_ID, ['h'] = C_ID,
    ['i'] = C_ID, ['j'] = C_ID, ['k'] = C_ID, ['l'] = C_ID,
    ['m'] = C_ID, ['n'] = C_ID, ['o'] = C_ID, ['p'] = C_ID,
    ['q'] = C_ID, ['r'] = C_ID, ['s'] = C_ID, ['t'] = C_ID,
    ['u'] = C_IDP, ['v'] = C_ID, ['w'] = C_ID, ['x'] = C_IDP,
    ['y'] = C_ID, ['z'] = C_ID,
    [0x80 ... 0xff] = C_ID,   /* the server takes any high-bit byte as a letter */
    ['~'] = C_OP, ['!'] = C_OP, ['@'] = C_OP, ['#'] = C_OP, ['^'] = C_OP, ['&'] = C_OP,
    ['|'] = C_OP, ['`'] = C_OP, ['?'] = C_OP, ['+'] = C_OP, ['-'] = C_OP, ['*'] = C_OP,
    ['/'] = C_OP, ['%'] = C_OP, ['<'] = C_OP, ['>'] = C_OP, ['='] = C_OP,
    ['$'] = C_IDCONT,
};

static inline int is_space(uint8_t c) { return cclass[c] & C_SPACE; }
static inline int is_digit(uint8_t c) { return cclass[c] & C_DIGIT; }
static inline int is_idstart(uint8_t c) { return cclass[c] & C_IDSTART; }
static inline int is_idcont(uint8_t c) { return cclass[c] & C_IDCONT; }
static inline int is_opchar(uint8_t c) { return cclass[c] & C_OP; }

void sql_lex_init(sql_lex_t *lx)
{
    memset(lx, 0, sizeof *lx);
}

void sql_lex_free(sql_lex_t *lx)
{
    free(lx->toks);
    free(lx->pieces);
    memset(lx, 0, sizeof *lx);
}

static __attribute__((noinline)) int grow_toks(sql_lex_t *lx)
{
    uint32_t cap = lx->tok_cap ? lx->tok_cap * 2 : 64;
    sql_tok_t *t = realloc(lx->toks, (size_t)cap * sizeof *t);

    if (!t)
        return -ENOMEM;
    lx->toks = t;
    lx->tok_cap = cap;
    return 0;
}

static inline int push_tok(sql_lex_t *lx, uint32_t start, uint32_t end, uint8_t type)
{
    if (__builtin_expect(lx->ntoks == lx->tok_cap, 0) && grow_toks(lx))
        return -ENOMEM;
    lx->toks[lx->ntoks++] = (sql_tok_t){ start, end, type, 0 };
    return 0;
}

/* Literals whose value decides whether the statement parses at all, so
 * that a shape seen with one value must not answer for another: an E''
 * string with a backslash (E'\xff', E'\ud800' make invalid UTF-8, which
 * the parser refuses), a U&'' string (U&'\0000', bad escapes), and the
 * literal after UESCAPE (it changes what a U&'' string or U&"" identifier
 * means, hence even which relation is named). */
static int keep_value(const uint8_t *s, const sql_tok_t *t, uint32_t i)
{
    const sql_tok_t *k = &t[i];

    if (k->type == TK_L_USTR)
        return 1;
    if (k->type == TK_L_ESTR && memchr(s + k->start, '\\', k->end - k->start))
        return 1;
    return i > 0 && t[i - 1].type == TK_IDENT && t[i - 1].end - t[i - 1].start == 7 &&
           strncasecmp((const char *)s + t[i - 1].start, "uescape", 7) == 0;
}

/* After a closing quote at q-1: does a continuation follow? PostgreSQL joins
 * 'a'<newline>'b' into one literal when only white space with at least one
 * newline (and -- comments ending in newlines) separates them. Returns the
 * offset just past the next opening quote, or 0. A comment in between sets
 * *odd: the server joins across it, libpg_query's scanner does not (it
 * reports a syntax error), so such a literal must never be a cache hit --
 * the hit would say what the server does, the parser the opposite. */
static uint32_t quote_continues(const uint8_t *s, uint32_t n, uint32_t q, int *odd)
{
    uint32_t k = q;

    while (k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\f'))
        k++;
    if (k >= n || (s[k] != '\n' && s[k] != '\r'))
        return 0;
    for (;;) {
        while (k < n && is_space(s[k]))
            k++;
        if (k + 1 < n && s[k] == '-' && s[k + 1] == '-') {
            while (k < n && s[k] != '\n' && s[k] != '\r')
                k++;
            if (k >= n)
                return 0;
            *odd = 1;
            continue;
        }
        break;
    }
    return k < n && s[k] == '\'' ? k + 1 : 0;
}

/* Scans a quoted literal whose opening quote is at q. backslash: E'' rules;
 * doubled: '' stands for a quote. Returns the end offset or 0 when
 * unterminated; *odd is set when it continues across a comment. */
static uint32_t scan_string(const uint8_t *s, uint32_t n, uint32_t q, int backslash, int doubled, int *odd)
{
    uint32_t j = q + 1;

    *odd = 0;
    while (j < n) {
        uint8_t c = s[j];

        if (c == '\\' && backslash) {
            j += 2;
            continue;
        }
        if (c == '\'') {
            uint32_t next;

            if (doubled && j + 1 < n && s[j + 1] == '\'') {
                j += 2;
                continue;
            }
            int across = 0;
            next = quote_continues(s, n, j + 1, &across);
            if (!next)
                return j + 1;
            *odd |= across;
            j = next;
            continue;
        }
        j++;
    }
    return 0;
}

/* Digits, an optional fraction and exponent; PostgreSQL 15 rejects a number
 * glued to an identifier ("trailing junk"), and so do we (TK_BAD). */
static uint32_t scan_number(const uint8_t *s, uint32_t n, uint32_t i, uint8_t *type)
{
    uint32_t j = i, k;
    int integer = 1;

    while (j < n && is_digit(s[j]))
        j++;
    /* "1..2" is an integer followed by "..", as in PL/pgSQL's FOR loops */
    if (j < n && s[j] == '.' && !(j + 1 < n && s[j + 1] == '.')) {
        integer = 0;
        j++;
        while (j < n && is_digit(s[j]))
            j++;
    }
    if (j < n && (s[j] == 'e' || s[j] == 'E')) {
        k = j + 1;
        if (k < n && (s[k] == '+' || s[k] == '-'))
            k++;
        if (k < n && is_digit(s[k])) {
            integer = 0;
            j = k;
            while (j < n && is_digit(s[j]))
                j++;
        } else {
            *type = TK_BAD;
            return k;
        }
    }
    if (j < n && is_idstart(s[j])) {
        *type = TK_BAD;
        return j + 1;
    }
    if (integer) {
        /* the server makes an integer that overflows int4 a numeric (FCONST) */
        uint32_t a = i, len;

        while (a + 1 < j && s[a] == '0')
            a++;
        len = j - a;
        integer = len < 10 || (len == 10 && memcmp(s + a, "2147483647", 10) <= 0);
    }
    *type = integer ? TK_L_INT : TK_L_NUM;
    return j;
}

/* PostgreSQL's operator rule: the longest run of operator characters, cut
 * before an embedded comment start, and a trailing + or - dropped unless the
 * run holds a character that SQL's own operators never use (so "=-1" is "=",
 * "-", "1" but "@-" stays one operator). */
static uint32_t scan_operator(const uint8_t *s, uint32_t n, uint32_t i)
{
    uint32_t j = i, len, k;

    while (j < n && is_opchar(s[j]))
        j++;
    len = j - i;
    for (k = i + 1; k + 1 < j; k++) {
        if ((s[k] == '-' && s[k + 1] == '-') || (s[k] == '/' && s[k + 1] == '*')) {
            len = k - i;
            break;
        }
    }
    if (len > 1 && (s[i + len - 1] == '+' || s[i + len - 1] == '-')) {
        int odd = 0;

        for (k = 0; k + 1 < len; k++) {
            if (strchr("~!@#^&|`?%", s[i + k])) {
                odd = 1;
                break;
            }
        }
        if (!odd) {
            do
                len--;
            while (len > 1 && (s[i + len - 1] == '+' || s[i + len - 1] == '-'));
        }
    }
    return i + len;
}

/* The closing delimiter of a dollar quote, or 0 when unterminated. */
static uint32_t scan_dollar(const uint8_t *s, uint32_t n, uint32_t i, uint32_t dlen, int *has_quote)
{
    uint32_t j = i + dlen;

    *has_quote = 0;
    while (j + dlen <= n) {
        if (s[j] == '$' && memcmp(s + j, s + i, dlen) == 0)
            return j + dlen;
        if (s[j] == '\'')
            *has_quote = 1;
        j++;
    }
    return 0;
}

/* Is token t the keyword word (lower case)? The first byte is compared
 * before the rest: this runs for identifiers on the hot path. */
static inline int ident_is(const uint8_t *s, const sql_tok_t *t, const char *word, uint32_t len)
{
    return t->end - t->start == len && (s[t->start] | 0x20) == word[0] &&
           strncasecmp((const char *)s + t->start + 1, word + 1, len - 1) == 0;
}

/* Statement-split state: parentheses, and the BEGIN ... END of a
 * CREATE [OR REPLACE] FUNCTION|PROCEDURE ... BEGIN ATOMIC body, whose inner
 * ';' do not end the statement. A wrong guess here only sends the string
 * down the slow path, where libpg_query's own split decides. */
typedef struct split_state {
    uint32_t seg_start;       /* byte after the last top-level ';' */
    uint32_t first_tok;       /* first token after it */
    uint32_t paren, block;
    uint32_t idents;          /* identifiers seen in this statement */
    uint32_t real;            /* tokens other than TK_COMMENTQ */
    uint32_t max_param;       /* highest $n */
    uint8_t bad;              /* a TK_BAD was seen */
    uint8_t routine;          /* it is a CREATE FUNCTION/PROCEDURE */
    uint8_t lead[4];          /* first letters of its leading keywords */
} split_state_t;

#define IDENT_IS(s, t, w) ident_is((s), (t), (w), sizeof(w) - 1)

/* The letter a leading keyword of CREATE [OR REPLACE] FUNCTION|PROCEDURE
 * stands for, or 0. Decided on length and first letter before comparing. */
static inline uint8_t lead_letter(const uint8_t *s, const sql_tok_t *t)
{
    switch (t->end - t->start) {
    case 2: return IDENT_IS(s, t, "or") ? 'o' : 0;
    case 6: return IDENT_IS(s, t, "create") ? 'c' : 0;
    case 7: return IDENT_IS(s, t, "replace") ? 'r' : 0;
    case 8: return IDENT_IS(s, t, "function") ? 'f' : 0;
    case 9: return IDENT_IS(s, t, "procedure") ? 'f' : 0;
    default: return 0;
    }
}

static void split_track_ident(split_state_t *st, const uint8_t *s, const sql_tok_t *t)
{
    if (st->idents < 4) {
        uint8_t c = lead_letter(s, t);

        st->lead[st->idents] = c;
        if (st->lead[0] == 'c' &&
            ((st->idents == 1 && c == 'f') ||
             (st->idents == 3 && st->lead[1] == 'o' && st->lead[2] == 'r' && c == 'f')))
            st->routine = 1;
    }
    st->idents++;
    if (!st->routine || st->paren)
        return;
    if (IDENT_IS(s, t, "begin"))
        st->block++;
    else if (st->block && IDENT_IS(s, t, "case"))
        st->block++;
    else if (st->block && IDENT_IS(s, t, "end"))
        st->block--;
}

static int split_emit(sql_lex_t *lx, const uint8_t *s, const split_state_t *st, uint32_t end,
                      uint32_t end_tok)
{
    uint32_t start = st->seg_start;
    sql_piece_t *p;

    /* a statement needs a real token: comments alone are no statement */
    if (!st->real)
        return 0;
    while (start < end && is_space(s[start]))
        start++;
    while (end > start && is_space(s[end - 1]))
        end--;
    if (__builtin_expect(lx->npieces == lx->piece_cap, 0)) {
        uint32_t cap = lx->piece_cap ? lx->piece_cap * 2 : 8;
        sql_piece_t *np = realloc(lx->pieces, (size_t)cap * sizeof *np);

        if (!np)
            return -ENOMEM;
        lx->pieces = np;
        lx->piece_cap = cap;
    }
    p = &lx->pieces[lx->npieces++];
    p->start = start;
    p->end = end;
    p->tok = st->first_tok;
    p->ntok = end_tok - st->first_tok;
    p->max_param = st->max_param;
    p->bad = st->bad;
    return 0;
}

/* Starts the next statement's state after a top-level ';' ending at end. */
static inline void split_reset(split_state_t *st, uint32_t end, uint32_t first_tok)
{
    memset(st, 0, sizeof *st);
    st->seg_start = end;
    st->first_tok = first_tok;
}

/* A quoted identifier's end (past the closing "), or 0 when unterminated;
 * q is just past the opening quote. */
static inline uint32_t scan_qident(const uint8_t *s, uint32_t n, uint32_t q)
{
    for (; q < n; q++) {
        if (s[q] == '"') {
            if (q + 1 < n && s[q + 1] == '"') {
                q++;
                continue;
            }
            return q + 1;
        }
    }
    return 0;
}

int sql_lex_run(sql_lex_t *lx, const char *str, uint32_t n, int whole)
{
    const uint8_t *s = (const uint8_t *)str;
    split_state_t st;
    uint32_t i = 0;

    lx->ntoks = 0;
    lx->npieces = 0;
    split_reset(&st, 0, 0);

    while (i < n) {
        uint8_t c = s[i], cl = cclass[c], type;
        uint32_t start = i, end;
        int odd = 0;

        if (cl & C_SPACE) {
            do
                i++;
            while (i < n && is_space(s[i]));
            continue;
        }
        if (cl & C_IDSTART) {
            /* identifiers and keywords first: most tokens are */
            uint8_t c1 = i + 1 < n ? s[i + 1] : 0;

            end = 0;
            type = TK_IDENT;
            if (!(cl & C_PREFIX) || (c1 != '\'' && c1 != '&')) {
                end = i + 1;
                while (end < n && is_idcont(s[end]))
                    end++;
            } else if (c1 == '\'' && (c == 'e' || c == 'E')) {
                end = scan_string(s, n, i + 1, 1, 1, &odd);
                type = TK_L_ESTR;
            } else if (c1 == '\'' && (c == 'b' || c == 'B')) {
                end = scan_string(s, n, i + 1, 0, 0, &odd);
                type = TK_L_BSTR;
            } else if (c1 == '\'' && (c == 'x' || c == 'X')) {
                end = scan_string(s, n, i + 1, 0, 0, &odd);
                type = TK_L_XSTR;
            } else if (c1 == '&' && (c == 'u' || c == 'U') && i + 2 < n &&
                       (s[i + 2] == '\'' || s[i + 2] == '"')) {
                if (s[i + 2] == '\'') {
                    end = scan_string(s, n, i + 2, 0, 1, &odd);
                    type = TK_L_USTR;
                } else {
                    end = scan_qident(s, n, i + 3);
                    type = TK_QIDENT;
                }
            } else {
                end = i + 1;
                while (end < n && is_idcont(s[end]))
                    end++;
            }
            if (!end) {
                type = TK_BAD;
                end = n;
            }
        } else if (c == '-' && i + 1 < n && s[i + 1] == '-') {
            while (i < n && s[i] != '\n' && s[i] != '\r')
                i++;
            if (memchr(s + start, '\'', i - start)) {
                if (push_tok(lx, start, i, TK_COMMENTQ))
                    return -ENOMEM;
            }
            continue;
        } else if (c == '/' && i + 1 < n && s[i + 1] == '*') {
            uint32_t depth = 1;
            int quote = 0;

            i += 2;
            while (i < n && depth) {
                if (s[i] == '/' && i + 1 < n && s[i + 1] == '*') {
                    depth++;
                    i += 2;
                } else if (s[i] == '*' && i + 1 < n && s[i + 1] == '/') {
                    depth--;
                    i += 2;
                } else {
                    quote |= s[i] == '\'';
                    i++;
                }
            }
            if (depth) {
                if (push_tok(lx, start, n, TK_BAD))
                    return -ENOMEM;
                st.bad = 1;
                st.real++;
                break;
            }
            if (quote && push_tok(lx, start, i, TK_COMMENTQ))
                return -ENOMEM;
            continue;
        } else if (cl & C_DIGIT || (c == '.' && i + 1 < n && is_digit(s[i + 1]))) {
            end = scan_number(s, n, i, &type);
        } else if (c == '\'') {
            end = scan_string(s, n, i, 0, 1, &odd);
            type = TK_L_STR;
            if (!end) {
                type = TK_BAD;
                end = n;
            }
        } else if (c == '"') {
            end = scan_qident(s, n, i + 1);
            type = TK_QIDENT;
            if (!end) {
                type = TK_BAD;
                end = n;
            }
        } else if (c == '$') {
            uint32_t j = i + 1;

            if (j < n && is_digit(s[j])) {
                uint32_t v = 0;

                while (j < n && is_digit(s[j])) {
                    if (v < 100000000u)
                        v = v * 10 + (uint32_t)(s[j] - '0');
                    j++;
                }
                type = TK_PARAM;
                if (j < n && is_idcont(s[j])) {   /* "$1abc": junk to the server */
                    type = TK_BAD;
                    j++;
                } else if (v > st.max_param) {
                    st.max_param = v;
                }
                end = j;
            } else {
                if (j < n && is_idstart(s[j])) {
                    j++;
                    while (j < n && (is_idstart(s[j]) || is_digit(s[j])))
                        j++;
                }
                if (j < n && s[j] == '$') {
                    int quote;

                    end = scan_dollar(s, n, i, j + 1 - i, &quote);
                    type = quote ? TK_L_DOLLARQ : TK_L_DOLLAR;
                    if (!end) {
                        type = TK_BAD;
                        end = n;
                    }
                } else {
                    end = i + 1;
                    type = TK_PUNCT;
                }
            }
        } else if (cl & C_OP) {
            end = scan_operator(s, n, i);
            type = TK_OP;
        } else {
            end = i + 1;
            type = TK_PUNCT;
            if (c == ';' && !whole && !st.paren && !st.block) {
                /* the ';' belongs to no statement */
                if (split_emit(lx, s, &st, start, lx->ntoks))
                    return -ENOMEM;
                split_reset(&st, end, lx->ntoks);
                i = end;
                continue;
            }
            if (c == '(')
                st.paren++;
            else if (c == ')' && st.paren)
                st.paren--;
            else if ((c == ':' && i + 1 < n && (s[i + 1] == ':' || s[i + 1] == '=')) ||
                     (c == '.' && i + 1 < n && s[i + 1] == '.'))
                end = i + 2;
        }

        if (odd)
            type = TK_BAD;      /* a literal joined across a comment */
        if (push_tok(lx, start, end, type))
            return -ENOMEM;
        i = end;
        st.real++;
        if (type == TK_IDENT) {
            split_track_ident(&st, s, &lx->toks[lx->ntoks - 1]);
        } else if (type == TK_BAD) {
            st.bad = 1;
        } else if (TK_IS_LIT(type) && keep_value(s, lx->toks, lx->ntoks - 1)) {
            lx->toks[lx->ntoks - 1].keep = 1;
        }
        /* the white space after a token, here rather than a turn of the loop */
        while (i < n && is_space(s[i]))
            i++;
    }
    return split_emit(lx, s, &st, n, lx->ntoks);
}

uint32_t sql_key_bound(const sql_tok_t *t, uint32_t n)
{
    uint32_t len = 0, i;

    for (i = 0; i < n; i++)
        len += sql_tok_in_key(&t[i]) ? t[i].end - t[i].start + 2 : 1;
    return len;
}

/* Type byte, then for everything but a literal its bytes and a NUL. The SQL
 * holds no NUL (we stop at the first), so the encoding is unambiguous. A
 * dollar quote holding a ' keeps its value: libpg_query's normalization of
 * some options looks for the first quote character in the text. So do the
 * literals marked `keep` (see keep_value). */
uint32_t sql_key_build(const char *s, const sql_tok_t *t, uint32_t n, char *out)
{
    char *o = out;
    uint32_t i, lim = n ? t[n - 1].end : 0;   /* s holds at least this much */

    for (i = 0; i < n; i++) {
        *o++ = (char)t[i].type;
        if (sql_tok_in_key(&t[i])) {
            uint32_t len = t[i].end - t[i].start;

            const char *b = s + t[i].start;

            /* short tokens, the common ones, in fixed-size copies (out has
             * SQL_KEY_SLACK bytes to spare; s may end with the token) */
            if (len > SQL_KEY_SLACK) {
                memcpy(o, b, len);
            } else if (lim - t[i].start >= SQL_KEY_SLACK) {
                memcpy(o, b, SQL_KEY_SLACK);
            } else if (len >= 8) {      /* two copies that overlap */
                memcpy(o, b, 8);
                memcpy(o + len - 8, b + len - 8, 8);
            } else if (len >= 4) {
                memcpy(o, b, 4);
                memcpy(o + len - 4, b + len - 4, 4);
            } else {                    /* 1 to 3 bytes */
                o[0] = b[0];
                o[len / 2] = b[len / 2];
                o[len - 1] = b[len - 1];
            }
            o += len;
            *o++ = 0;
        }
    }
    return (uint32_t)(o - out);
}

static inline uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* A small multiply-xorshift hash; collisions only cost a compare, since
 * every hit is verified against the full key. */
uint64_t sql_hash(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0x100000001b3ULL);

    while (n >= 8) {
        uint64_t v;

        memcpy(&v, b, 8);
        h = (h ^ v) * 0x9fb21c651e98df25ULL;
        h ^= h >> 29;
        b += 8;
        n -= 8;
    }
    if (n) {
        uint64_t v = 0;

        memcpy(&v, b, n);
        h = (h ^ v) * 0x9fb21c651e98df25ULL;
    }
    return mix64(h);
}

size_t sql_rebuild_bound(uint32_t start, uint32_t end, uint32_t nregions)
{
    return (size_t)(end - start) + (size_t)nregions * 11;   /* "$4294967295" */
}

size_t sql_rebuild(const char *s, uint32_t start, uint32_t end, const sql_tok_t *t,
                   const sql_region_t *r, uint32_t nr, char *out)
{
    char *o = out;
    uint32_t pos = start, i;

    for (i = 0; i < nr; i++) {
        uint32_t rs = t[r[i].tok].start, re = t[r[i].tok + r[i].ntok - 1].end;
        char num[12];
        int len = 0;
        uint32_t k = r[i].k;

        memcpy(o, s + pos, rs - pos);
        o += rs - pos;
        do {
            num[len++] = (char)('0' + k % 10);
            k /= 10;
        } while (k);
        *o++ = '$';
        while (len)
            *o++ = num[--len];
        pos = re;
    }
    memcpy(o, s + pos, end - pos);
    o += end - pos;
    *o = 0;
    return (size_t)(o - out);
}

/* ---- text that does not parse --------------------------------------------- */

static int tok_word(const char *s, const sql_tok_t *t, const char *w)
{
    size_t len = strlen(w);

    return t->type == TK_IDENT && t->end - t->start == len &&
           strncasecmp(s + t->start, w, len) == 0;
}

static const struct { const char *word; const char *command; pgw_audit_class_t cls; } lead_words[] = {
    { "select", "SELECT", PGW_CLASS_READ }, { "with", "SELECT", PGW_CLASS_READ },
    { "values", "SELECT", PGW_CLASS_READ }, { "table", "SELECT", PGW_CLASS_READ },
    { "insert", "INSERT", PGW_CLASS_WRITE }, { "update", "UPDATE", PGW_CLASS_WRITE },
    { "delete", "DELETE", PGW_CLASS_WRITE }, { "merge", "MERGE", PGW_CLASS_WRITE },
    { "truncate", "TRUNCATE TABLE", PGW_CLASS_WRITE }, { "copy", "COPY", PGW_CLASS_READ },
    { "grant", "GRANT", PGW_CLASS_ROLE }, { "revoke", "REVOKE", PGW_CLASS_ROLE },
    { "begin", "BEGIN", PGW_CLASS_MISC }, { "start", "START TRANSACTION", PGW_CLASS_MISC },
    { "commit", "COMMIT", PGW_CLASS_MISC }, { "end", "COMMIT", PGW_CLASS_MISC },
    { "rollback", "ROLLBACK", PGW_CLASS_MISC }, { "abort", "ROLLBACK", PGW_CLASS_MISC },
    { "savepoint", "SAVEPOINT", PGW_CLASS_MISC }, { "release", "RELEASE", PGW_CLASS_MISC },
    { "set", "SET", PGW_CLASS_MISC_SET }, { "reset", "RESET", PGW_CLASS_MISC_SET },
    { "show", "SHOW", PGW_CLASS_MISC }, { "explain", "EXPLAIN", PGW_CLASS_MISC },
    { "vacuum", "VACUUM", PGW_CLASS_MISC }, { "analyze", "ANALYZE", PGW_CLASS_MISC },
    { "do", "DO", PGW_CLASS_FUNCTION }, { "call", "CALL", PGW_CLASS_FUNCTION },
    { "prepare", "PREPARE", PGW_CLASS_READ }, { "execute", "EXECUTE", PGW_CLASS_MISC },
    { "deallocate", "DEALLOCATE", PGW_CLASS_MISC }, { "fetch", "FETCH", PGW_CLASS_MISC },
    { "listen", "LISTEN", PGW_CLASS_MISC }, { "notify", "NOTIFY", PGW_CLASS_MISC },
    { "checkpoint", "CHECKPOINT", PGW_CLASS_MISC }, { "lock", "LOCK TABLE", PGW_CLASS_MISC },
};

static const struct { const char *word; const char *create, *alter, *drop; } ddl_words[] = {
    { "table", "CREATE TABLE", "ALTER TABLE", "DROP TABLE" },
    { "view", "CREATE VIEW", "ALTER VIEW", "DROP VIEW" },
    { "index", "CREATE INDEX", "ALTER INDEX", "DROP INDEX" },
    { "sequence", "CREATE SEQUENCE", "ALTER SEQUENCE", "DROP SEQUENCE" },
    { "schema", "CREATE SCHEMA", "ALTER SCHEMA", "DROP SCHEMA" },
    { "function", "CREATE FUNCTION", "ALTER FUNCTION", "DROP FUNCTION" },
    { "procedure", "CREATE PROCEDURE", "ALTER PROCEDURE", "DROP PROCEDURE" },
    { "database", "CREATE DATABASE", "ALTER DATABASE", "DROP DATABASE" },
    { "extension", "CREATE EXTENSION", "ALTER EXTENSION", "DROP EXTENSION" },
    { "type", "CREATE TYPE", "ALTER TYPE", "DROP TYPE" },
    { "trigger", "CREATE TRIGGER", "ALTER TRIGGER", "DROP TRIGGER" },
    { "role", "CREATE ROLE", "ALTER ROLE", "DROP ROLE" },
    { "user", "CREATE ROLE", "ALTER ROLE", "DROP ROLE" },
    { "group", "CREATE ROLE", "ALTER ROLE", "DROP ROLE" },
};

const char *sql_guess_command(const char *s, const sql_tok_t *t, uint32_t n,
                              pgw_audit_class_t *cls)
{
    uint32_t i = 0, j;
    size_t k;

    *cls = PGW_CLASS_MISC;
    while (i < n && (t[i].type == TK_COMMENTQ || (t[i].type == TK_PUNCT && s[t[i].start] == '(')))
        i++;
    if (i >= n || t[i].type != TK_IDENT)
        return "UNKNOWN";
    for (k = 0; k < sizeof lead_words / sizeof lead_words[0]; k++) {
        if (tok_word(s, &t[i], lead_words[k].word)) {
            *cls = lead_words[k].cls;
            return lead_words[k].command;
        }
    }
    if (!tok_word(s, &t[i], "create") && !tok_word(s, &t[i], "alter") && !tok_word(s, &t[i], "drop"))
        return "UNKNOWN";
    j = i + 1;
    /* CREATE OR REPLACE, CREATE UNIQUE INDEX, CREATE TEMP TABLE, ... */
    while (j < n && j < i + 4 &&
           (tok_word(s, &t[j], "or") || tok_word(s, &t[j], "replace") || tok_word(s, &t[j], "unique") ||
            tok_word(s, &t[j], "temp") || tok_word(s, &t[j], "temporary") ||
            tok_word(s, &t[j], "unlogged") || tok_word(s, &t[j], "materialized")))
        j++;
    *cls = PGW_CLASS_DDL;
    if (j >= n)
        return "UNKNOWN";
    for (k = 0; k < sizeof ddl_words / sizeof ddl_words[0]; k++) {
        if (!tok_word(s, &t[j], ddl_words[k].word))
            continue;
        if (strcmp(ddl_words[k].create, "CREATE ROLE") == 0)
            *cls = PGW_CLASS_ROLE;
        if (tok_word(s, &t[i], "create"))
            return ddl_words[k].create;
        return tok_word(s, &t[i], "alter") ? ddl_words[k].alter : ddl_words[k].drop;
    }
    return "UNKNOWN";
}
