/*
 * _sha256.h -- the SHA-256 backends behind torrent._fast and torrent._io
 * (BEP 52 merkle trees: 16 KiB leaf blocks and 64-byte interior nodes).
 *
 * Theory of operation
 * -------------------
 * The same pattern as _sha1.h, with three backends computing the same
 * one-shot SHA-256 of a contiguous buffer:
 *
 *   FT_SHA256_OPENSSL   libcrypto, found with dlopen() at import time: the
 *                       assembly hashlib uses (SHA-NI / AVX2 chosen by OpenSSL
 *                       itself). No OpenSSL header is included and libcrypto is
 *                       not linked at build time. The low-level SHA256_Init /
 *                       SHA256_Update / SHA256_Final take a caller-owned
 *                       context (no allocation, no provider fetch per call),
 *                       which matters for the 64-byte interior nodes of a
 *                       merkle tree; if they are gone, EVP with a digest
 *                       fetched once.
 *   FT_SHA256_SHANI     our own compression function on the x86 SHA
 *                       extensions (sha256rnds2 / sha256msg1 / sha256msg2),
 *                       compiled with a target attribute and chosen only when
 *                       CPUID says the CPU has them.
 *   FT_SHA256_PORTABLE  plain C (FIPS 180-4 section 6.2), for every other
 *                       machine.
 *
 * ft_sha256() never fails: if an OpenSSL call reports an error, that one
 * digest is computed natively. Each backend passes a known-answer self-test
 * before it can be selected.
 *
 * All functions are safe to call without the GIL and from several threads,
 * except ft_sha256_setup() (once, at import) and ft_sha256_set_backend() (a
 * test hook: switching while another thread hashes is not supported).
 */
#ifndef FT_SHA256_H
#define FT_SHA256_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <dlfcn.h>

#include "_md32.h"
#include "_ossl_digest.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define FT_S256_HAVE_X86_SHANI 1
#include <cpuid.h>
#include <immintrin.h>
#endif

/* The backend accessors below are for the module that reports and switches
 * backends (torrent._fast); the I/O thread (torrent._io), which includes this
 * header only to hash, leaves them unused, which is not worth a warning. */
#if defined(__GNUC__) || defined(__clang__)
#define FT_SHA256_MAYBE_UNUSED __attribute__((unused))
#else
#define FT_SHA256_MAYBE_UNUSED
#endif

enum { FT_SHA256_OPENSSL = 0, FT_SHA256_SHANI = 1, FT_SHA256_PORTABLE = 2, FT_SHA256_NBACKENDS = 3 };

typedef void (*ft_sha256_compress_fn)(uint32_t st[8], const unsigned char *p, size_t nblocks);

#define FT_SHA256_DIGEST_SIZE 32 /* FIPS 180-4 */
#define FT_SHA256_BLOCK_SIZE 64  /* FIPS 180-4: 512-bit message blocks */

/* ---------------------------------------------------------------- portable */

static const uint32_t ft_sha256_k[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u,
    0xab1c5ed5u, 0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu,
    0x9bdc06a7u, 0xc19bf174u, 0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu,
    0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau, 0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
    0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u, 0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu,
    0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u, 0xa2bfe8a1u, 0xa81a664bu,
    0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u, 0x19a4c116u,
    0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u,
    0xc67178f2u};

#define FT_ROR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define FT_S256_CH(e, f, g) ((g) ^ ((e) & ((f) ^ (g))))
#define FT_S256_MAJ(a, b, c) (((a) & (b)) | ((c) & ((a) | (b))))
#define FT_S256_SIG0(a) (FT_ROR32(a, 2) ^ FT_ROR32(a, 13) ^ FT_ROR32(a, 22))
#define FT_S256_SIG1(e) (FT_ROR32(e, 6) ^ FT_ROR32(e, 11) ^ FT_ROR32(e, 25))
#define FT_S256_sig0(x) (FT_ROR32(x, 7) ^ FT_ROR32(x, 18) ^ ((x) >> 3))
#define FT_S256_sig1(x) (FT_ROR32(x, 17) ^ FT_ROR32(x, 19) ^ ((x) >> 10))

static inline uint32_t ft_s256_load_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* The message schedule lives in a 16-word ring; eight rounds per loop step
 * rotate the roles of a..h instead of moving the working variables. */
#define FT_S256_W(i) w[(i) & 15]
#define FT_S256_SCHED(i)                                                                      \
    (FT_S256_W(i) += FT_S256_sig1(FT_S256_W((i) + 14)) + FT_S256_W((i) + 9) +                 \
                     FT_S256_sig0(FT_S256_W((i) + 1)))
#define FT_S256_ROUND(a, b, c, d, e, f, g, h, i, wi)                                          \
    do {                                                                                      \
        uint32_t t1_ = (h) + FT_S256_SIG1(e) + FT_S256_CH(e, f, g) + ft_sha256_k[i] + (wi);   \
        uint32_t t2_ = FT_S256_SIG0(a) + FT_S256_MAJ(a, b, c);                                \
        (d) += t1_;                                                                           \
        (h) = t1_ + t2_;                                                                      \
    } while (0)
#define FT_S256_EIGHT(i, W)                                                                   \
    FT_S256_ROUND(a, b, c, d, e, f, g, h, (i) + 0, W((i) + 0));                               \
    FT_S256_ROUND(h, a, b, c, d, e, f, g, (i) + 1, W((i) + 1));                               \
    FT_S256_ROUND(g, h, a, b, c, d, e, f, (i) + 2, W((i) + 2));                               \
    FT_S256_ROUND(f, g, h, a, b, c, d, e, (i) + 3, W((i) + 3));                               \
    FT_S256_ROUND(e, f, g, h, a, b, c, d, (i) + 4, W((i) + 4));                               \
    FT_S256_ROUND(d, e, f, g, h, a, b, c, (i) + 5, W((i) + 5));                               \
    FT_S256_ROUND(c, d, e, f, g, h, a, b, (i) + 6, W((i) + 6));                               \
    FT_S256_ROUND(b, c, d, e, f, g, h, a, (i) + 7, W((i) + 7))

static void ft_sha256_compress_portable(uint32_t st[8], const unsigned char *p, size_t nblocks)
{
    while (nblocks--) {
        uint32_t w[16];
        uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
        uint32_t e = st[4], f = st[5], g = st[6], h = st[7];
        int i;
        for (i = 0; i < 16; i++)
            w[i] = ft_s256_load_be32(p + 4 * i);
        FT_S256_EIGHT(0, FT_S256_W);
        FT_S256_EIGHT(8, FT_S256_W);
        for (i = 16; i < 64; i += 8) {
            FT_S256_EIGHT(i, FT_S256_SCHED);
        }
        st[0] += a; st[1] += b; st[2] += c; st[3] += d;
        st[4] += e; st[5] += f; st[6] += g; st[7] += h;
        p += FT_SHA256_BLOCK_SIZE;
    }
}

/* ------------------------------------------------------------------ SHA-NI */

#ifdef FT_S256_HAVE_X86_SHANI
/* Two rounds per sha256rnds2: the low two words of MSG (message words plus
 * round constants) update CDGH from ABEF, the high two then ABEF from CDGH. */
#define FT_S256_RNDS4(MSG)                                                                    \
    do {                                                                                      \
        st1 = _mm_sha256rnds2_epu32(st1, st0, MSG);                                           \
        st0 = _mm_sha256rnds2_epu32(st0, st1, _mm_shuffle_epi32(MSG, 0x0E));                  \
    } while (0)
/* Rounds 4i..4i+3 with the message words of group i in MI; the schedule of
 * later groups advances: NEXT receives W[4i+4..] (msg2 of its msg1 part plus
 * words i-7), and PREV its msg1 part for four groups on. */
#define FT_S256_GROUP(i, PREV, MI, NEXT, DO_MSG1)                                             \
    do {                                                                                      \
        __m128i msg_ = _mm_add_epi32(MI, _mm_loadu_si128((const __m128i *)(ft_sha256_k + 4 * (i)))); \
        st1 = _mm_sha256rnds2_epu32(st1, st0, msg_);                                          \
        NEXT = _mm_sha256msg2_epu32(_mm_add_epi32(NEXT, _mm_alignr_epi8(MI, PREV, 4)), MI);   \
        st0 = _mm_sha256rnds2_epu32(st0, st1, _mm_shuffle_epi32(msg_, 0x0E));                 \
        if (DO_MSG1)                                                                          \
            PREV = _mm_sha256msg1_epu32(PREV, MI);                                            \
    } while (0)

__attribute__((target("sha,sse4.1,ssse3"))) static void
ft_sha256_compress_shani(uint32_t st[8], const unsigned char *p, size_t nblocks)
{
    /* byte-swap each 32-bit word (the message is big-endian) */
    const __m128i mask = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i st0, st1, tmp, save0, save1, m0, m1, m2, m3, msg;

    /* state words a..h into the ABEF / CDGH order the instructions use */
    tmp = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&st[0]), 0xB1); /* CDAB */
    st1 = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&st[4]), 0x1B); /* EFGH */
    st0 = _mm_alignr_epi8(tmp, st1, 8);                                       /* ABEF */
    st1 = _mm_blend_epi16(st1, tmp, 0xF0);                                    /* CDGH */

    while (nblocks--) {
        save0 = st0;
        save1 = st1;

        m0 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 0)), mask);
        msg = _mm_add_epi32(m0, _mm_loadu_si128((const __m128i *)(ft_sha256_k + 0)));
        FT_S256_RNDS4(msg);

        m1 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16)), mask);
        msg = _mm_add_epi32(m1, _mm_loadu_si128((const __m128i *)(ft_sha256_k + 4)));
        FT_S256_RNDS4(msg);
        m0 = _mm_sha256msg1_epu32(m0, m1);

        m2 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 32)), mask);
        msg = _mm_add_epi32(m2, _mm_loadu_si128((const __m128i *)(ft_sha256_k + 8)));
        FT_S256_RNDS4(msg);
        m1 = _mm_sha256msg1_epu32(m1, m2);

        m3 = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 48)), mask);
        FT_S256_GROUP(3, m2, m3, m0, 1);
        FT_S256_GROUP(4, m3, m0, m1, 1);
        FT_S256_GROUP(5, m0, m1, m2, 1);
        FT_S256_GROUP(6, m1, m2, m3, 1);
        FT_S256_GROUP(7, m2, m3, m0, 1);
        FT_S256_GROUP(8, m3, m0, m1, 1);
        FT_S256_GROUP(9, m0, m1, m2, 1);
        FT_S256_GROUP(10, m1, m2, m3, 1);
        FT_S256_GROUP(11, m2, m3, m0, 1);
        FT_S256_GROUP(12, m3, m0, m1, 1);
        FT_S256_GROUP(13, m0, m1, m2, 0);
        FT_S256_GROUP(14, m1, m2, m3, 0);
        msg = _mm_add_epi32(m3, _mm_loadu_si128((const __m128i *)(ft_sha256_k + 60)));
        FT_S256_RNDS4(msg);

        st0 = _mm_add_epi32(st0, save0);
        st1 = _mm_add_epi32(st1, save1);
        p += FT_SHA256_BLOCK_SIZE;
    }

    tmp = _mm_shuffle_epi32(st0, 0x1B);    /* FEBA */
    st1 = _mm_shuffle_epi32(st1, 0xB1);    /* DCHG */
    st0 = _mm_blend_epi16(tmp, st1, 0xF0); /* DCBA */
    st1 = _mm_alignr_epi8(st1, tmp, 8);    /* HGFE */
    _mm_storeu_si128((__m128i *)&st[0], st0);
    _mm_storeu_si128((__m128i *)&st[4], st1);
}

static int ft_s256_cpu_has_shani(void)
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
#endif /* FT_S256_HAVE_X86_SHANI */

/* One-shot SHA-256 with a native compression function (the padding and
 * output: _md32.h). */
static void ft_sha256_native(ft_sha256_compress_fn compress, const unsigned char *p, size_t n,
                             unsigned char out[FT_SHA256_DIGEST_SIZE])
{
    uint32_t st[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                      0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};

    ft_md32_digest(compress, st, 8, p, n, out);
}

/* ----------------------------------------------------------------- OpenSSL */

static ft_ossl_digest ft_s256_ossl;

/* Returns 1 on success; 0 if OpenSSL failed (the caller then hashes natively). */
static int ft_sha256_openssl(const unsigned char *p, size_t n, unsigned char out[FT_SHA256_DIGEST_SIZE])
{
    return ft_ossl_digest_run(&ft_s256_ossl, p, n, out);
}

static int ft_sha256_load_openssl(void)
{
    return ft_ossl_digest_load(&ft_s256_ossl, "SHA256", "EVP_sha256", FT_SHA256_DIGEST_SIZE);
}

/* ------------------------------------------------------------ dispatching */

static int ft_sha256_backend = FT_SHA256_PORTABLE;
static int ft_sha256_ok[FT_SHA256_NBACKENDS] = {0, 0, 1};

static void ft_sha256(const unsigned char *p, size_t n, unsigned char out[FT_SHA256_DIGEST_SIZE])
{
    switch (ft_sha256_backend) {
    case FT_SHA256_OPENSSL:
        if (ft_sha256_openssl(p, n, out))
            return;
        /* OpenSSL failed on this call: hash natively, as fast as we can */
#ifdef FT_S256_HAVE_X86_SHANI
        if (ft_sha256_ok[FT_SHA256_SHANI]) {
            ft_sha256_native(ft_sha256_compress_shani, p, n, out);
            return;
        }
#endif
        break;
#ifdef FT_S256_HAVE_X86_SHANI
    case FT_SHA256_SHANI:
        ft_sha256_native(ft_sha256_compress_shani, p, n, out);
        return;
#endif
    default:
        break;
    }
    ft_sha256_native(ft_sha256_compress_portable, p, n, out);
}

/* Known answers (FIPS 180-2 appendix B.1 and B.2): SHA-256("abc") and the
 * 56-byte two-block message; a 1000-byte message must agree with the portable
 * reference, so multi-block input is exercised on every backend. */
static int ft_sha256_selftest(int backend)
{
    static const unsigned char abc[FT_SHA256_DIGEST_SIZE] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
        0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    static const char two[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    static const unsigned char two_md[FT_SHA256_DIGEST_SIZE] = {
        0x24, 0x8d, 0x6a, 0x61, 0xd2, 0x06, 0x38, 0xb8, 0xe5, 0xc0, 0x26, 0x93, 0x0c, 0x3e, 0x60, 0x39,
        0xa3, 0x3c, 0xe4, 0x59, 0x64, 0xff, 0x21, 0x67, 0xf6, 0xec, 0xed, 0xd4, 0x19, 0xdb, 0x06, 0xc1};
    unsigned char a[FT_SHA256_DIGEST_SIZE], b[FT_SHA256_DIGEST_SIZE], c[FT_SHA256_DIGEST_SIZE];
    unsigned char msg[1000];
    size_t i;
    int saved = ft_sha256_backend;
    for (i = 0; i < sizeof(msg); i++)
        msg[i] = (unsigned char)(i * 131u + 7u);
    if (backend == FT_SHA256_OPENSSL) {
        if (!ft_sha256_openssl((const unsigned char *)"abc", 3, a) ||
            !ft_sha256_openssl((const unsigned char *)two, sizeof(two) - 1, b) ||
            !ft_sha256_openssl(msg, sizeof(msg), c))
            return 0;
    } else {
        ft_sha256_backend = backend;
        ft_sha256((const unsigned char *)"abc", 3, a);
        ft_sha256((const unsigned char *)two, sizeof(two) - 1, b);
        ft_sha256(msg, sizeof(msg), c);
        ft_sha256_backend = saved;
    }
    if (memcmp(a, abc, sizeof(a)) || memcmp(b, two_md, sizeof(b)))
        return 0;
    ft_sha256_native(ft_sha256_compress_portable, msg, sizeof(msg), a);
    return memcmp(a, c, sizeof(a)) == 0;
}

/* Once, at import: find the backends and select the fastest that passes. */
static void ft_sha256_setup(void)
{
    ft_sha256_backend = FT_SHA256_PORTABLE;
    ft_sha256_ok[FT_SHA256_PORTABLE] = ft_sha256_selftest(FT_SHA256_PORTABLE);
#ifdef FT_S256_HAVE_X86_SHANI
    if (ft_s256_cpu_has_shani())
        ft_sha256_ok[FT_SHA256_SHANI] = ft_sha256_selftest(FT_SHA256_SHANI);
#endif
    if (ft_sha256_load_openssl())
        ft_sha256_ok[FT_SHA256_OPENSSL] = ft_sha256_selftest(FT_SHA256_OPENSSL);
    if (ft_sha256_ok[FT_SHA256_OPENSSL])
        ft_sha256_backend = FT_SHA256_OPENSSL;
    else if (ft_sha256_ok[FT_SHA256_SHANI])
        ft_sha256_backend = FT_SHA256_SHANI;
}

FT_SHA256_MAYBE_UNUSED static int ft_sha256_available(int backend)
{
    return backend >= 0 && backend < FT_SHA256_NBACKENDS && ft_sha256_ok[backend];
}

FT_SHA256_MAYBE_UNUSED static int ft_sha256_get_backend(void) { return ft_sha256_backend; }

/* Returns 0 on success, -1 if that backend is not available here. */
FT_SHA256_MAYBE_UNUSED static int ft_sha256_set_backend(int backend)
{
    if (!ft_sha256_available(backend))
        return -1;
    ft_sha256_backend = backend;
    return 0;
}

#endif /* FT_SHA256_H */
