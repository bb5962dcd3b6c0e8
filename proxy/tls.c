#include "tls.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <stdlib.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "log.h"

/* The first queued OpenSSL error, appended to what failed. */
static void ssl_fail(char *err, size_t cap, const char *what, const char *path)
{
    char why[256] = "unknown error";
    unsigned long e = ERR_peek_last_error();
    if (e)
        ERR_error_string_n(e, why, sizeof why);
    ERR_clear_error();
    snprintf(err, cap, "%s%s%s: %s", what, path ? " " : "", path ? path : "", why);
}

static int64_t asn1_time_s(const ASN1_TIME *t)
{
    struct tm tm;
    if (!t || !ASN1_TIME_to_tm(t, &tm))
        return 0;
    return (int64_t)timegm(&tm);
}

static int64_t ctx_cert_not_after(SSL_CTX *c)
{
    X509 *x = c ? SSL_CTX_get0_certificate(c) : NULL;
    return x ? asn1_time_s(X509_get0_notAfter(x)) : 0;
}

/* ALPN on the client leg: "postgresql" or nothing. A client offering only
 * other protocols is talking to the wrong server. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char ours[] = "\x0apostgresql";
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, ours, sizeof ours - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *make_accept(const pgw_tls_config_t *cfg, char *err, size_t cap)
{
    SSL_CTX *c = SSL_CTX_new(TLS_server_method());
    if (!c) {
        ssl_fail(err, cap, "SSL_CTX_new", NULL);
        return NULL;
    }
    /* Like PostgreSQL: no renegotiation, no compression, no session reuse
     * (a resumed session would skip the client certificate). */
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                           SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(c, 0);
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
    if (!SSL_CTX_set_min_proto_version(c, cfg->min_version)) {
        ssl_fail(err, cap, "--tls-min-version", NULL);
        goto fail;
    }
    if (cfg->ciphers && !SSL_CTX_set_cipher_list(c, cfg->ciphers)) {
        ssl_fail(err, cap, "--tls-ciphers", cfg->ciphers);
        goto fail;
    }
    /* OpenSSL's macro casts the list's const away; a copy keeps it. */
    char groups[256];
    if (cfg->groups && (snprintf(groups, sizeof groups, "%s", cfg->groups) >= (int)sizeof groups ||
                        !SSL_CTX_set1_groups_list(c, groups))) {
        ssl_fail(err, cap, "--tls-groups", cfg->groups);
        goto fail;
    }
    if (SSL_CTX_use_certificate_chain_file(c, cfg->cert) != 1) {
        ssl_fail(err, cap, "--tls-cert", cfg->cert);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(c, cfg->key, SSL_FILETYPE_PEM) != 1) {
        ssl_fail(err, cap, "--tls-key", cfg->key);
        goto fail;
    }
    if (SSL_CTX_check_private_key(c) != 1) {
        ssl_fail(err, cap, "--tls-key does not match --tls-cert:", cfg->key);
        goto fail;
    }
    SSL_CTX_set_alpn_select_cb(c, alpn_select, NULL);
    if (cfg->client_ca && cfg->client_cert != PGW_CLIENT_CERT_NONE) {
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->client_ca);
        if (!names || SSL_CTX_load_verify_locations(c, cfg->client_ca, NULL) != 1) {
            sk_X509_NAME_pop_free(names, X509_NAME_free);
            ssl_fail(err, cap, "--tls-client-ca", cfg->client_ca);
            goto fail;
        }
        SSL_CTX_set_client_CA_list(c, names);
        /* A presented certificate must verify (else the handshake fails);
         * whether one is needed at all is checked with the startup packet,
         * so that the client reads a FATAL message rather than an alert. */
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE, NULL);
    }
    return c;
fail:
    SSL_CTX_free(c);
    return NULL;
}

static SSL_CTX *make_connect(const pgw_tls_config_t *cfg, char *err, size_t cap)
{
    SSL_CTX *c = SSL_CTX_new(TLS_client_method());
    if (!c) {
        ssl_fail(err, cap, "SSL_CTX_new", NULL);
        return NULL;
    }
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    static const unsigned char alpn[] = "\x0apostgresql";
    SSL_CTX_set_alpn_protos(c, alpn, sizeof alpn - 1);
    if (cfg->upstream_ca && SSL_CTX_load_verify_locations(c, cfg->upstream_ca, NULL) != 1) {
        ssl_fail(err, cap, "--upstream-ca", cfg->upstream_ca);
        goto fail;
    }
    if (cfg->upstream_sslmode >= PGW_SSLMODE_VERIFY_CA)
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
    if (cfg->upstream_cert) {
        if (SSL_CTX_use_certificate_chain_file(c, cfg->upstream_cert) != 1) {
            ssl_fail(err, cap, "--upstream-cert", cfg->upstream_cert);
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(c, cfg->upstream_key, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(c) != 1) {
            ssl_fail(err, cap, "--upstream-key", cfg->upstream_key);
            goto fail;
        }
    }
    return c;
fail:
    SSL_CTX_free(c);
    return NULL;
}

void pgw_tls_release(pgw_tls_ctx_t *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    SSL_CTX_free(c->accept);
    SSL_CTX_free(c->connect);
    pgw_ident_map_free(c->map);
    free(c);
}

static void log_expiry(const char *what, const char *path, int64_t not_after)
{
    if (!not_after)
        return;
    int64_t left = not_after - (int64_t)time(NULL);
    if (left < 0)
        pgw_warn("%s %s expired %lld day(s) ago", what, path, (long long)(-left / 86400));
    else
        pgw_info("%s %s expires in %lld day(s)", what, path, (long long)(left / 86400));
}

static pgw_tls_ctx_t *build(const pgw_tls_config_t *cfg, char *err, size_t cap)
{
    pgw_tls_ctx_t *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    atomic_init(&c->refs, 1);
    if (cfg->cert && !(c->accept = make_accept(cfg, err, cap)))
        goto fail;
    if (cfg->upstream_sslmode != PGW_SSLMODE_DISABLE && !(c->connect = make_connect(cfg, err, cap)))
        goto fail;
    if (cfg->ident_map && pgw_ident_map_load(cfg->ident_map, &c->map, err, cap))
        goto fail;
    c->cert_not_after = ctx_cert_not_after(c->accept);
    c->upstream_cert_not_after = cfg->upstream_cert ? ctx_cert_not_after(c->connect) : 0;
    log_expiry("certificate", cfg->cert, c->cert_not_after);
    log_expiry("upstream client certificate", cfg->upstream_cert, c->upstream_cert_not_after);
    return c;
fail:
    pgw_tls_release(c);
    return NULL;
}

int pgw_tls_init(pgw_tls_t *t, const pgw_tls_config_t *cfg, char *err, size_t errcap)
{
    memset(t, 0, sizeof *t);
    t->cfg = cfg;
    if (uv_mutex_init(&t->lock)) {
        snprintf(err, errcap, "cannot create a mutex");
        return -1;
    }
    if (!cfg->cert && cfg->upstream_sslmode == PGW_SSLMODE_DISABLE)
        return 0;
    t->cur = build(cfg, err, errcap);
    return t->cur ? 0 : -1;
}

int pgw_tls_reload(pgw_tls_t *t, char *err, size_t errcap)
{
    if (!t->cur)
        return 0;
    pgw_tls_ctx_t *c = build(t->cfg, err, errcap);
    if (!c)
        return -1;
    uv_mutex_lock(&t->lock);
    pgw_tls_ctx_t *old = t->cur;
    t->cur = c;
    uv_mutex_unlock(&t->lock);
    pgw_tls_release(old);
    return 0;
}

void pgw_tls_destroy(pgw_tls_t *t)
{
    pgw_tls_release(t->cur);
    t->cur = NULL;
    uv_mutex_destroy(&t->lock);
}

pgw_tls_ctx_t *pgw_tls_acquire(pgw_tls_t *t)
{
    if (!t || !t->cur)
        return NULL;
    uv_mutex_lock(&t->lock);
    pgw_tls_ctx_t *c = t->cur;
    atomic_fetch_add(&c->refs, 1);
    uv_mutex_unlock(&t->lock);
    return c;
}

void pgw_tls_seconds_left(pgw_tls_t *t, int64_t now, int64_t out[2])
{
    out[0] = out[1] = INT64_MIN;
    pgw_tls_ctx_t *c = t ? pgw_tls_acquire(t) : NULL;
    if (!c)
        return;
    if (c->cert_not_after)
        out[0] = c->cert_not_after - now;
    if (c->upstream_cert_not_after)
        out[1] = c->upstream_cert_not_after - now;
    pgw_tls_release(c);
}

/* ---- what a handshake tells ---------------------------------------------- */

static void name_text(const X509_NAME *n, char *out, size_t cap)
{
    out[0] = '\0';
    BIO *b = BIO_new(BIO_s_mem());
    if (!b)
        return;
    if (X509_NAME_print_ex(b, n, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0) {
        int k = BIO_read(b, out, (int)cap - 1);
        out[k > 0 ? k : 0] = '\0';
    }
    BIO_free(b);
}

static void put_san(pgw_tls_info_t *info, const char *kind, const char *v, size_t n)
{
    if (info->nsan == PGW_TLS_MAX_SAN)
        return;
    snprintf(info->san[info->nsan++], sizeof info->san[0], "%s:%.*s", kind, (int)n, v);
}

static void get_sans(X509 *x, pgw_tls_info_t *info)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        const ASN1_STRING *s = NULL;
        const char *kind = NULL;
        switch (g->type) {
        case GEN_DNS: kind = "DNS"; s = g->d.dNSName; break;
        case GEN_EMAIL: kind = "email"; s = g->d.rfc822Name; break;
        case GEN_URI: kind = "URI"; s = g->d.uniformResourceIdentifier; break;
        case GEN_IPADD: {
            char ip[64] = "";
            const unsigned char *a = ASN1_STRING_get0_data(g->d.iPAddress);
            int len = ASN1_STRING_length(g->d.iPAddress);
            if (len == 4 || len == 16)
                inet_ntop(len == 4 ? AF_INET : AF_INET6, a, ip, sizeof ip);
            put_san(info, "IP", ip, strlen(ip));
            break;
        }
        default: break;
        }
        if (kind && s)
            put_san(info, kind, (const char *)ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s));
    }
    GENERAL_NAMES_free(gens);
}

void pgw_tls_get_info(SSL *ssl, pgw_tls_info_t *info)
{
    memset(info, 0, sizeof *info);
    snprintf(info->version, sizeof info->version, "%s", SSL_get_version(ssl));
    snprintf(info->cipher, sizeof info->cipher, "%s", SSL_get_cipher_name(ssl));
    X509 *x = SSL_get0_peer_certificate(ssl);
    if (!x || SSL_get_verify_result(ssl) != X509_V_OK)
        return;
    info->has_cert = 1;
    name_text(X509_get_subject_name(x), info->subject, sizeof info->subject);
    name_text(X509_get_issuer_name(x), info->issuer, sizeof info->issuer);
    /* A CN with an embedded NUL, or too long to hold, would compare as
     * something it is not: treat it as absent (PostgreSQL refuses it too). */
    int cnlen = X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, info->cn,
                                          sizeof info->cn);
    if (cnlen < 0 || (size_t)cnlen >= sizeof info->cn || strlen(info->cn) != (size_t)cnlen)
        info->cn[0] = '\0';
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    snprintf(info->serial, sizeof info->serial, "%s", hex ? hex : "00");
    OPENSSL_free(hex);
    BN_free(bn);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (X509_digest(x, EVP_sha256(), md, &mdlen) && mdlen == 32)
        for (unsigned i = 0; i < 32; i++)
            snprintf(info->sha256 + 2 * i, 3, "%02x", md[i]);
    info->not_before = asn1_time_s(X509_get0_notBefore(x));
    info->not_after = asn1_time_s(X509_get0_notAfter(x));
    get_sans(x, info);
}

void pgw_tls_describe_error(SSL *ssl, unsigned long errcode, char *out, size_t cap)
{
    long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (v != X509_V_OK) {
        snprintf(out, cap, "certificate verify failed: %s", X509_verify_cert_error_string(v));
        return;
    }
    if (errcode) {
        const char *r = ERR_reason_error_string(errcode);
        snprintf(out, cap, "%s", r ? r : "TLS error");
        return;
    }
    snprintf(out, cap, "TLS handshake failed");
}
