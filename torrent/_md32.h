/* The finish SHA-1 and SHA-256 share (FIPS 180-4 section 5.1.1): 64-byte blocks,
 * the message's full blocks compressed straight from the caller's buffer, then the
 * tail, a 0x80 byte, zeros and the length in bits (64-bit big-endian) in one or two
 * more blocks; the state's 32-bit words out big-endian.
 *
 * Shared by _sha1.h and _sha256.h: each gives its initial state and its compression
 * function (portable, or with the CPU's SHA extensions).
 */
#ifndef FT_MD32_H
#define FT_MD32_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FT_MD32_BLOCK_SIZE 64

typedef void (*ft_md32_compress_fn)(uint32_t *st, const unsigned char *p, size_t nblocks);

static void ft_md32_digest(ft_md32_compress_fn compress, uint32_t *st, size_t nwords,
                           const unsigned char *p, size_t n, unsigned char *out)
{
    unsigned char tail[2 * FT_MD32_BLOCK_SIZE]; /* the tail plus padding spans at most 2 blocks */
    size_t full = n / FT_MD32_BLOCK_SIZE, rem = n % FT_MD32_BLOCK_SIZE, tlen, i;
    uint64_t nbits = (uint64_t)n * 8u;

    if (full)
        compress(st, p, full);
    if (rem)
        memcpy(tail, p + full * FT_MD32_BLOCK_SIZE, rem);
    tail[rem] = 0x80;
    tlen = (rem < FT_MD32_BLOCK_SIZE - 8) ? FT_MD32_BLOCK_SIZE : 2 * FT_MD32_BLOCK_SIZE;
    memset(tail + rem + 1, 0, tlen - rem - 1 - 8);
    for (i = 0; i < 8; i++)
        tail[tlen - 1 - i] = (unsigned char)(nbits >> (8 * i));
    compress(st, tail, tlen / FT_MD32_BLOCK_SIZE);
    for (i = 0; i < nwords; i++) {
        out[4 * i + 0] = (unsigned char)(st[i] >> 24);
        out[4 * i + 1] = (unsigned char)(st[i] >> 16);
        out[4 * i + 2] = (unsigned char)(st[i] >> 8);
        out[4 * i + 3] = (unsigned char)(st[i]);
    }
}

#endif /* FT_MD32_H */
