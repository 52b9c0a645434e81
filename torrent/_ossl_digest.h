/* One-shot digests from the system's libcrypto, loaded with dlopen.
 *
 * Shared by _sha1.h and _sha256.h: each keeps one ft_ossl_digest, loaded
 * once (ft_ossl_digest_load) and used from any thread (ft_ossl_digest_run).
 * The legacy one-shot API (SHA1_Init/Update/Final, SHA256_...) is used when
 * the library still exports it; else EVP, with the digest fetched once
 * (3.x: EVP_MD_fetch) or taken from EVP_sha1 / EVP_sha256. The library is
 * kept open for the life of the process: digests may be in flight on other
 * threads, and hashlib has it mapped already.
 */
#ifndef FT_OSSL_DIGEST_H
#define FT_OSSL_DIGEST_H

#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* OpenSSL's SHA_CTX is 96 bytes and SHA256_CTX 112; we give either room to
 * spare and the alignment of anything it could contain. */
#define FT_OSSL_CTX_SIZE 256
typedef union {
    unsigned char bytes[FT_OSSL_CTX_SIZE];
    long double align_ld;
    uint64_t align_u64;
    void *align_ptr;
} ft_ossl_ctx;

typedef int (*ft_ossl_Init_t)(void *ctx);
typedef int (*ft_ossl_Update_t)(void *ctx, const void *data, size_t n);
typedef int (*ft_ossl_Final_t)(unsigned char *md, void *ctx);
typedef void *(*ft_EVP_MD_CTX_new_t)(void);
typedef void (*ft_EVP_MD_CTX_free_t)(void *ctx);
typedef int (*ft_EVP_DigestInit_ex_t)(void *ctx, const void *md, void *engine);
typedef int (*ft_EVP_DigestUpdate_t)(void *ctx, const void *data, size_t n);
typedef int (*ft_EVP_DigestFinal_ex_t)(void *ctx, unsigned char *md, unsigned int *size);
typedef const void *(*ft_EVP_md_t)(void);
typedef void *(*ft_EVP_MD_fetch_t)(void *libctx, const char *algorithm, const char *properties);

typedef struct {
    const char *path; /* the soname that loaded, for backend_info() */
    unsigned int size; /* the digest's length */
    ft_ossl_Init_t init;
    ft_ossl_Update_t update;
    ft_ossl_Final_t final;
    ft_EVP_MD_CTX_new_t evp_ctx_new;
    ft_EVP_MD_CTX_free_t evp_ctx_free;
    ft_EVP_DigestInit_ex_t evp_init;
    ft_EVP_DigestUpdate_t evp_update;
    ft_EVP_DigestFinal_ex_t evp_final;
    const void *evp_md;
} ft_ossl_digest;

/* Load digest ``name`` ("SHA1", "SHA256"): the legacy symbols NAME_Init,
 * NAME_Update, NAME_Final, else EVP with EVP_MD_fetch(NAME) or ``evp_fn``
 * ("EVP_sha1"). Returns 1 when one of the two is usable. */
static int ft_ossl_digest_load(ft_ossl_digest *d, const char *name, const char *evp_fn,
                               unsigned int size)
{
    /* libcrypto 3 first: it is what current distributions ship. */
    static const char *const names[] = {"libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so"};
    char sym[32];
    size_t i;
    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (!h)
            continue;
        memset(d, 0, sizeof(*d));
        d->path = names[i];
        d->size = size;
        snprintf(sym, sizeof(sym), "%s_Init", name);
        *(void **)&d->init = dlsym(h, sym);
        snprintf(sym, sizeof(sym), "%s_Update", name);
        *(void **)&d->update = dlsym(h, sym);
        snprintf(sym, sizeof(sym), "%s_Final", name);
        *(void **)&d->final = dlsym(h, sym);
        if (!d->init || !d->update || !d->final) {
            ft_EVP_md_t evp_md;
            ft_EVP_MD_fetch_t fetch;
            d->init = NULL;
            *(void **)&d->evp_ctx_new = dlsym(h, "EVP_MD_CTX_new");
            *(void **)&d->evp_ctx_free = dlsym(h, "EVP_MD_CTX_free");
            *(void **)&d->evp_init = dlsym(h, "EVP_DigestInit_ex");
            *(void **)&d->evp_update = dlsym(h, "EVP_DigestUpdate");
            *(void **)&d->evp_final = dlsym(h, "EVP_DigestFinal_ex");
            *(void **)&fetch = dlsym(h, "EVP_MD_fetch");
            *(void **)&evp_md = dlsym(h, evp_fn);
            if (d->evp_ctx_new && d->evp_ctx_free && d->evp_init && d->evp_update &&
                d->evp_final) {
                /* A digest fetched once (3.x) spares an implicit fetch per call. */
                d->evp_md = fetch ? fetch(NULL, name, NULL) : NULL;
                if (!d->evp_md && evp_md)
                    d->evp_md = evp_md();
            }
            if (!d->evp_md) {
                memset(d, 0, sizeof(*d));
                dlclose(h);
                continue;
            }
        }
        return 1;
    }
    return 0;
}

/* The digest of p[0:n] into out (d->size bytes). Returns 1 on success; 0 if
 * OpenSSL failed (the caller then hashes natively). */
static int ft_ossl_digest_run(const ft_ossl_digest *d, const unsigned char *p, size_t n,
                              unsigned char *out)
{
    if (d->init) {
        ft_ossl_ctx ctx;
        return d->init(&ctx) == 1 && d->update(&ctx, p, n) == 1 && d->final(out, &ctx) == 1;
    }
    if (d->evp_md) {
        unsigned int len = 0;
        int ok;
        void *ctx = d->evp_ctx_new();
        if (!ctx)
            return 0;
        ok = d->evp_init(ctx, d->evp_md, NULL) == 1 && d->evp_update(ctx, p, n) == 1 &&
             d->evp_final(ctx, out, &len) == 1 && len == d->size;
        d->evp_ctx_free(ctx);
        return ok;
    }
    return 0;
}

#endif /* FT_OSSL_DIGEST_H */
