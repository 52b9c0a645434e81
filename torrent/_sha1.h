/*
 * _sha1.h -- the SHA-1 backends behind torrent._fast and torrent._io (BEP 3
 * piece hashes). Each module compiles its own copy, with its own backend state.
 *
 * Theory of operation
 * -------------------
 * Three backends compute the same one-shot SHA-1 of a contiguous buffer:
 *
 *   FT_SHA1_OPENSSL   libcrypto, found with dlopen() at import time: the same
 *                     assembly hashlib uses (SHA-NI / AVX2 paths chosen by
 *                     OpenSSL itself). We never include OpenSSL headers nor
 *                     link libcrypto at build time, so the extension builds on
 *                     machines without libssl-dev; the few prototypes we need
 *                     are declared here. We call the low-level SHA1_Init /
 *                     SHA1_Update / SHA1_Final (deprecated in 3.0 but still
 *                     exported) because they take a caller-owned context: no
 *                     allocation, no lock, no provider fetch per call. OpenSSL
 *                     3's one-shot SHA1() goes through EVP_Q_digest, which
 *                     fetches the algorithm by name on every call, and is
 *                     slower for 16-256 KiB pieces. If the low-level symbols
 *                     are gone (a future libcrypto), we use EVP with a digest
 *                     fetched once.
 *   FT_SHA1_SHANI     our own compression function on the x86 SHA extensions,
 *                     compiled with a target attribute and chosen only when
 *                     CPUID says the CPU has them.
 *   FT_SHA1_PORTABLE  plain C, for every other machine.
 *
 * ft_sha1() never fails: if an OpenSSL call reports an error (allocation,
 * a FIPS provider refusing SHA-1, ...) that one digest is computed natively.
 * Every backend passes a known-answer self-test before it can be selected.
 *
 * All functions are safe to call without the GIL and from several threads,
 * except ft_sha1_setup() (once, at import) and ft_sha1_set_backend() (a test
 * hook: switching while another thread hashes is not supported).
 */
#ifndef FT_SHA1_H
#define FT_SHA1_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <dlfcn.h>

#include "_md32.h"
#include "_ossl_digest.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FT_HAVE_X86_SHANI 1
#include <cpuid.h>
#include <immintrin.h>
#endif

enum { FT_SHA1_OPENSSL = 0, FT_SHA1_SHANI = 1, FT_SHA1_PORTABLE = 2, FT_SHA1_NBACKENDS = 3 };

#define FT_SHA1_DIGEST_SIZE 20 /* FIPS 180-4 */
#define FT_SHA1_BLOCK_SIZE 64  /* FIPS 180-4: 512-bit message blocks */

/* The backend accessors below are for the module that reports and switches
 * backends (torrent._fast); another module including this header only to hash
 * (torrent._io) leaves them unused, which is not worth a warning. */
#if defined(__GNUC__) || defined(__clang__)
#define FT_SHA1_MAYBE_UNUSED __attribute__((unused))
#else
#define FT_SHA1_MAYBE_UNUSED
#endif

typedef void (*ft_sha1_compress_fn)(uint32_t st[5], const unsigned char *p, size_t nblocks);

/* ---------------------------------------------------------------- portable */

#define FT_ROL32(x, n) (((x) << (n)) | ((x) >> (32 - (n))))

static inline uint32_t ft_load_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* Rounds fully unrolled over a 16-word ring of the message schedule, so the
 * compiler keeps the working variables in registers instead of rotating them
 * through memory: about 4x the speed of the textbook loop (850 vs 200 MB/s). */
#define FT_W(i) w[(i) & 15]
#define FT_SCHED(i) (FT_W(i) = FT_ROL32(FT_W((i) + 13) ^ FT_W((i) + 8) ^ FT_W((i) + 2) ^ FT_W(i), 1))
#define FT_F1(b, c, d) ((d) ^ ((b) & ((c) ^ (d))))
#define FT_F2(b, c, d) ((b) ^ (c) ^ (d))
#define FT_F3(b, c, d) (((b) & (c)) | ((d) & ((b) | (c))))
#define FT_R0(a, b, c, d, e, i)                                                               \
    e += FT_ROL32(a, 5) + FT_F1(b, c, d) + 0x5A827999u + FT_W(i); b = FT_ROL32(b, 30)
#define FT_R1(a, b, c, d, e, i)                                                               \
    e += FT_ROL32(a, 5) + FT_F1(b, c, d) + 0x5A827999u + FT_SCHED(i); b = FT_ROL32(b, 30)
#define FT_R2(a, b, c, d, e, i)                                                               \
    e += FT_ROL32(a, 5) + FT_F2(b, c, d) + 0x6ED9EBA1u + FT_SCHED(i); b = FT_ROL32(b, 30)
#define FT_R3(a, b, c, d, e, i)                                                               \
    e += FT_ROL32(a, 5) + FT_F3(b, c, d) + 0x8F1BBCDCu + FT_SCHED(i); b = FT_ROL32(b, 30)
#define FT_R4(a, b, c, d, e, i)                                                               \
    e += FT_ROL32(a, 5) + FT_F2(b, c, d) + 0xCA62C1D6u + FT_SCHED(i); b = FT_ROL32(b, 30)
/* five rounds, rotating the roles of a..e instead of moving values */
#define FT_R5(R, i)                                                                           \
    R(a, b, c, d, e, (i) + 0); R(e, a, b, c, d, (i) + 1); R(d, e, a, b, c, (i) + 2);          \
    R(c, d, e, a, b, (i) + 3); R(b, c, d, e, a, (i) + 4)

static void ft_sha1_compress_portable(uint32_t st[5], const unsigned char *p, size_t nblocks)
{
    while (nblocks--) {
        uint32_t w[16];
        uint32_t a = st[0], b = st[1], c = st[2], d = st[3], e = st[4];
        int i;
        for (i = 0; i < 16; i++)
            w[i] = ft_load_be32(p + 4 * i);
        FT_R5(FT_R0, 0); FT_R5(FT_R0, 5); FT_R5(FT_R0, 10);
        FT_R0(a, b, c, d, e, 15); FT_R1(e, a, b, c, d, 16); FT_R1(d, e, a, b, c, 17);
        FT_R1(c, d, e, a, b, 18); FT_R1(b, c, d, e, a, 19);
        FT_R5(FT_R2, 20); FT_R5(FT_R2, 25); FT_R5(FT_R2, 30); FT_R5(FT_R2, 35);
        FT_R5(FT_R3, 40); FT_R5(FT_R3, 45); FT_R5(FT_R3, 50); FT_R5(FT_R3, 55);
        FT_R5(FT_R4, 60); FT_R5(FT_R4, 65); FT_R5(FT_R4, 70); FT_R5(FT_R4, 75);
        st[0] += a; st[1] += b; st[2] += c; st[3] += d; st[4] += e;
        p += FT_SHA1_BLOCK_SIZE;
    }
}

/* ------------------------------------------------------------------ SHA-NI */

#ifdef FT_HAVE_X86_SHANI
/* One group of four rounds in the steady state (rounds 12..79): E_IN absorbs
 * the schedule word, E_OUT keeps the old ABCD, and the message schedule of
 * later rounds advances (msg2 / msg1 / xor). The schedule updates computed in
 * the last groups are unused and removed by the compiler. */
#define FT_SHANI_GROUP(E_IN, E_OUT, MA, MB, MC, MD, F)                                        \
    do {                                                                                      \
        E_IN = _mm_sha1nexte_epu32(E_IN, MA);                                                 \
        E_OUT = abcd;                                                                         \
        MB = _mm_sha1msg2_epu32(MB, MA);                                                      \
        abcd = _mm_sha1rnds4_epu32(abcd, E_IN, F);                                            \
        MD = _mm_sha1msg1_epu32(MD, MA);                                                      \
        MC = _mm_xor_si128(MC, MA);                                                           \
    } while (0)

__attribute__((target("sha,sse4.1,ssse3"))) static void
ft_sha1_compress_shani(uint32_t st[5], const unsigned char *p, size_t nblocks)
{
    /* byte-swap each 32-bit word and reverse the word order */
    const __m128i mask = _mm_set_epi64x(0x0001020304050607ULL, 0x08090a0b0c0d0e0fULL);
    __m128i abcd, abcd_save, e0, e0_save, e1, m0, m1, m2, m3;

    abcd = _mm_loadu_si128((const __m128i *)st);
    e0 = _mm_set_epi32((int)st[4], 0, 0, 0);
    abcd = _mm_shuffle_epi32(abcd, 0x1B);

    while (nblocks--) {
        abcd_save = abcd;
        e0_save = e0;

        /* rounds 0-3 */
        m0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 0)), mask);
        e0 = _mm_add_epi32(e0, m0);
        e1 = abcd;
        abcd = _mm_sha1rnds4_epu32(abcd, e0, 0);

        /* rounds 4-7 */
        m1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), mask);
        e1 = _mm_sha1nexte_epu32(e1, m1);
        e0 = abcd;
        abcd = _mm_sha1rnds4_epu32(abcd, e1, 0);
        m0 = _mm_sha1msg1_epu32(m0, m1);

        /* rounds 8-11 */
        m2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), mask);
        e0 = _mm_sha1nexte_epu32(e0, m2);
        e1 = abcd;
        abcd = _mm_sha1rnds4_epu32(abcd, e0, 0);
        m1 = _mm_sha1msg1_epu32(m1, m2);
        m0 = _mm_xor_si128(m0, m2);

        /* rounds 12-15 */
        m3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), mask);
        FT_SHANI_GROUP(e1, e0, m3, m0, m1, m2, 0);
        /* rounds 16-79: the round function changes every 20 rounds */
        FT_SHANI_GROUP(e0, e1, m0, m1, m2, m3, 0);
        FT_SHANI_GROUP(e1, e0, m1, m2, m3, m0, 1);
        FT_SHANI_GROUP(e0, e1, m2, m3, m0, m1, 1);
        FT_SHANI_GROUP(e1, e0, m3, m0, m1, m2, 1);
        FT_SHANI_GROUP(e0, e1, m0, m1, m2, m3, 1);
        FT_SHANI_GROUP(e1, e0, m1, m2, m3, m0, 1);
        FT_SHANI_GROUP(e0, e1, m2, m3, m0, m1, 2);
        FT_SHANI_GROUP(e1, e0, m3, m0, m1, m2, 2);
        FT_SHANI_GROUP(e0, e1, m0, m1, m2, m3, 2);
        FT_SHANI_GROUP(e1, e0, m1, m2, m3, m0, 2);
        FT_SHANI_GROUP(e0, e1, m2, m3, m0, m1, 2);
        FT_SHANI_GROUP(e1, e0, m3, m0, m1, m2, 3);
        FT_SHANI_GROUP(e0, e1, m0, m1, m2, m3, 3);
        FT_SHANI_GROUP(e1, e0, m1, m2, m3, m0, 3);
        FT_SHANI_GROUP(e0, e1, m2, m3, m0, m1, 3);
        FT_SHANI_GROUP(e1, e0, m3, m0, m1, m2, 3);

        e0 = _mm_sha1nexte_epu32(e0, e0_save);
        abcd = _mm_add_epi32(abcd, abcd_save);
        p += FT_SHA1_BLOCK_SIZE;
    }

    abcd = _mm_shuffle_epi32(abcd, 0x1B);
    _mm_storeu_si128((__m128i *)st, abcd);
    st[4] = (uint32_t)_mm_extract_epi32(e0, 3);
}

static int ft_cpu_has_shani(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return 0;
    if (!(c & (1u << 9)) || !(c & (1u << 19))) /* SSSE3, SSE4.1 */
        return 0;
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 29) & 1; /* CPUID.(EAX=7,ECX=0):EBX.SHA[bit 29] */
}
#endif /* FT_HAVE_X86_SHANI */

/* One-shot SHA-1 with a native compression function (the padding and
 * output: _md32.h). */
static void ft_sha1_native(ft_sha1_compress_fn compress, const unsigned char *p, size_t n,
                           unsigned char out[FT_SHA1_DIGEST_SIZE])
{
    uint32_t st[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};

    ft_md32_digest(compress, st, 5, p, n, out);
}

/* ----------------------------------------------------------------- OpenSSL */

static ft_ossl_digest ft_sha1_ossl;

/* Returns 1 on success; 0 if OpenSSL failed (the caller then hashes natively). */
static int ft_sha1_openssl(const unsigned char *p, size_t n, unsigned char out[FT_SHA1_DIGEST_SIZE])
{
    return ft_ossl_digest_run(&ft_sha1_ossl, p, n, out);
}

static int ft_sha1_load_openssl(void)
{
    return ft_ossl_digest_load(&ft_sha1_ossl, "SHA1", "EVP_sha1", FT_SHA1_DIGEST_SIZE);
}

/* ------------------------------------------------------------ dispatching */

static int ft_sha1_backend = FT_SHA1_PORTABLE;
static int ft_sha1_ok[FT_SHA1_NBACKENDS] = {0, 0, 1};

static void ft_sha1(const unsigned char *p, size_t n, unsigned char out[FT_SHA1_DIGEST_SIZE])
{
    switch (ft_sha1_backend) {
    case FT_SHA1_OPENSSL:
        if (ft_sha1_openssl(p, n, out))
            return;
        /* OpenSSL failed on this call: hash natively, as fast as we can */
#ifdef FT_HAVE_X86_SHANI
        if (ft_sha1_ok[FT_SHA1_SHANI]) {
            ft_sha1_native(ft_sha1_compress_shani, p, n, out);
            return;
        }
#endif
        break;
#ifdef FT_HAVE_X86_SHANI
    case FT_SHA1_SHANI:
        ft_sha1_native(ft_sha1_compress_shani, p, n, out);
        return;
#endif
    default:
        break;
    }
    ft_sha1_native(ft_sha1_compress_portable, p, n, out);
}

/* Known answer (FIPS 180-2 appendix A.1): SHA-1("abc"). A 1000-byte message
 * as well, so multi-block input and the two-block padding are exercised. */
static int ft_sha1_selftest(int backend)
{
    static const unsigned char abc[FT_SHA1_DIGEST_SIZE] = {
        0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e,
        0x25, 0x71, 0x78, 0x50, 0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d};
    unsigned char a[FT_SHA1_DIGEST_SIZE], b[FT_SHA1_DIGEST_SIZE], msg[1000];
    size_t i;
    int saved = ft_sha1_backend;
    for (i = 0; i < sizeof(msg); i++)
        msg[i] = (unsigned char)(i * 131u + 7u);
    if (backend == FT_SHA1_OPENSSL) {
        if (!ft_sha1_openssl((const unsigned char *)"abc", 3, a) || memcmp(a, abc, sizeof(a)))
            return 0;
        if (!ft_sha1_openssl(msg, sizeof(msg), a))
            return 0;
    } else {
        ft_sha1_backend = backend;
        ft_sha1((const unsigned char *)"abc", 3, a);
        ft_sha1(msg, sizeof(msg), b);
        ft_sha1_backend = saved;
        if (memcmp(a, abc, sizeof(a)))
            return 0;
        memcpy(a, b, sizeof(a));
    }
    /* the 1000-byte digest must agree with the portable reference */
    ft_sha1_native(ft_sha1_compress_portable, msg, sizeof(msg), b);
    return memcmp(a, b, sizeof(a)) == 0;
}

/* Once, at import: find the backends and select the fastest that passes. */
static void ft_sha1_setup(void)
{
    ft_sha1_backend = FT_SHA1_PORTABLE;
    ft_sha1_ok[FT_SHA1_PORTABLE] = ft_sha1_selftest(FT_SHA1_PORTABLE);
#ifdef FT_HAVE_X86_SHANI
    if (ft_cpu_has_shani())
        ft_sha1_ok[FT_SHA1_SHANI] = ft_sha1_selftest(FT_SHA1_SHANI);
#endif
    if (ft_sha1_load_openssl())
        ft_sha1_ok[FT_SHA1_OPENSSL] = ft_sha1_selftest(FT_SHA1_OPENSSL);
    if (ft_sha1_ok[FT_SHA1_OPENSSL])
        ft_sha1_backend = FT_SHA1_OPENSSL;
    else if (ft_sha1_ok[FT_SHA1_SHANI])
        ft_sha1_backend = FT_SHA1_SHANI;
}

FT_SHA1_MAYBE_UNUSED static int ft_sha1_available(int backend)
{
    return backend >= 0 && backend < FT_SHA1_NBACKENDS && ft_sha1_ok[backend];
}

FT_SHA1_MAYBE_UNUSED static int ft_sha1_get_backend(void) { return ft_sha1_backend; }

/* Returns 0 on success, -1 if that backend is not available here. */
FT_SHA1_MAYBE_UNUSED static int ft_sha1_set_backend(int backend)
{
    if (!ft_sha1_available(backend))
        return -1;
    ft_sha1_backend = backend;
    return 0;
}

FT_SHA1_MAYBE_UNUSED static const char *ft_sha1_openssl_path(void) { return ft_sha1_ossl.path ? ft_sha1_ossl.path : ""; }

#endif /* FT_SHA1_H */
