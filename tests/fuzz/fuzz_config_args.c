/* libFuzzer target: the command line (pgw_config_from_args).
 *
 * The input is split at NUL bytes into arguments (argv[0] is "pgwarden");
 * a first byte below 0x20 picks one of a few option names to put first, so
 * that the options are reached quickly. The parser must never crash: it
 * returns 0, 1 (--help, --version) or -1 with a message on stderr. Its
 * stderr and stdout go to memory streams, so that the message is checked
 * and the fuzzer's output stays readable (sanitizer reports write to fd 2
 * directly and still show).
 *
 * getaddrinfo is replaced for this process by one that only resolves
 * numeric addresses and "localhost": a fuzzer must not send DNS queries. */
#include <dlfcn.h>
#include <getopt.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    static gai_fn real;
    struct addrinfo h = { 0 };

    if (!real)
        real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    if (hints)
        h = *hints;
    if (!node || strcmp(node, "localhost") != 0)
        h.ai_flags |= AI_NUMERICHOST;
    h.ai_flags |= AI_NUMERICSERV;
    return real(node, service, &h, res);
}

#define MAX_ARGS 64

/* Releases what the parser keeps, where the parser has such a function
 * (the INI configuration adds it): weak, so that this target builds
 * either way. */
void pgw_config_free(pgw_config_t *cfg) __attribute__((weak));

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char first[][24] = { "--listen", "--upstream", "--metrics-listen", "--threads",
                                         "--drain-timeout", "--max-message-size", "--log-level",
                                         "--audit-file", "--parameter-max-bytes", "--log-parameters" };
    char *argv[MAX_ARGS + 2];
    int argc = 0;
    char *buf, *p, *end;
    pgw_config_t cfg;

    if (size > 4096)
        return 0;
    buf = malloc(size + 1);
    memcpy(buf, data, size);
    buf[size] = '\0';
    static char name[] = "pgwarden";
    argv[argc++] = name;
    p = buf;
    end = buf + size;
    if (size && (uint8_t)*p < 0x20) {
        argv[argc++] = first[(uint8_t)*p % (sizeof first / sizeof first[0])];
        p++;
    }
    while (p < end && argc < MAX_ARGS) {
        argv[argc++] = p;
        p += strlen(p) + 1;
    }
    argv[argc] = NULL;

    char *err = NULL, *out = NULL;
    size_t errlen = 0, outlen = 0;
    FILE *saved_err = stderr, *saved_out = stdout;
    stderr = open_memstream(&err, &errlen);
    stdout = open_memstream(&out, &outlen);
    if (!stderr || !stdout)
        abort();
    optind = 0;                     /* getopt_long starts over */
    int rc = pgw_config_from_args(&cfg, argc, argv);
    fclose(stderr);
    fclose(stdout);
    stderr = saved_err;
    stdout = saved_out;

    if (rc != 0 && rc != 1 && rc != -1)
        abort();
    if (rc == -1 && errlen == 0)
        abort();                    /* an error nobody is told about */
    if (rc == 1 && outlen == 0)
        abort();
    if (rc == 0) {
        if (cfg.nlisten < 1 || cfg.nlisten > PGW_MAX_LISTEN || cfg.threads < 1
            || cfg.max_message_size < 1024 || cfg.parameter_max_bytes < 1)
            abort();
        for (int i = 0; i < cfg.nlisten; i++)
            if (!memchr(cfg.listen[i].text, 0, sizeof cfg.listen[i].text)
                || (cfg.listen[i].is_unix && !memchr(cfg.listen[i].path, 0, sizeof cfg.listen[i].path)))
                abort();
    }
    if (pgw_config_free)
        pgw_config_free(&cfg);
    free(err);
    free(out);
    free(buf);
    return 0;
}
