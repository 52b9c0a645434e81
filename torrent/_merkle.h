/*
 * _merkle.h -- BEP 52 (BitTorrent v2) merkle roots on _sha256.h's ft_sha256,
 * shared by torrent._fast (the kernels) and torrent._io (the I/O thread).
 *
 * Theory of operation
 * -------------------
 * A v2 tree's leaves are the SHA-256 of each 16 KiB block of a file (the
 * last block hashed at its real length); each node is the SHA-256 of its two
 * children (64 bytes); a tree is as wide as a power of two, and the leaves
 * past the data are zero hashes (32 zero bytes), so a missing subtree of
 * height k is the root of 2**k zero leaves: ft_merkle_zero[k], computed once
 * at import by ft_merkle_setup(). Padding a tree then costs one hash per
 * level, never a hash of zeros.
 *
 * Nodes are folded as they come (ft_merkle_acc): node i is pushed, and each
 * completed left sibling on its way up is combined with it, so the pending
 * nodes are at most one per level (a stack of FT_MERKLE_MAX_DEPTH + 1, on the
 * caller's stack): no allocation, so the I/O thread can check a piece with
 * nothing but its bytes. ft_merkle_finish() then closes the right edge with
 * the zero roots. The hash count is the tree's: one per leaf, one per inner
 * node of the nodes given, one per level of padding.
 *
 * Everything here is safe without the GIL and from several threads, except
 * ft_merkle_setup() (once, at import, after ft_sha256_setup()). The zero
 * roots are per module, like the SHA-256 backend choice.
 */
#ifndef FT_MERKLE_H
#define FT_MERKLE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_sha256.h"

#define FT_MERKLE_BLOCK 16384 /* BEP 52: one leaf per 16 KiB block */
#define FT_MERKLE_HASH 32     /* a SHA-256 digest: every leaf, node and root */
/* Bound on a tree's height above the leaves: 2**48 leaves of 16 KiB is 4 EiB,
 * beyond any file (torrent._fast.MAX_MERKLE_DEPTH). */
#define FT_MERKLE_MAX_DEPTH 48

/* ft_merkle_zero[k]: the root of 2**k zero leaves (k = 0: the zero leaf). */
static unsigned char ft_merkle_zero[FT_MERKLE_MAX_DEPTH + 1][FT_MERKLE_HASH];

static void ft_merkle_setup(void)
{
    unsigned char pair[2 * FT_MERKLE_HASH];
    int k;
    memset(ft_merkle_zero[0], 0, FT_MERKLE_HASH);
    for (k = 0; k < FT_MERKLE_MAX_DEPTH; k++) {
        memcpy(pair, ft_merkle_zero[k], FT_MERKLE_HASH);
        memcpy(pair + FT_MERKLE_HASH, ft_merkle_zero[k], FT_MERKLE_HASH);
        ft_sha256(pair, sizeof(pair), ft_merkle_zero[k + 1]);
    }
}

/* SHA-256(left || right) into out (which may be either input). */
static inline void ft_merkle_pair(const unsigned char *left, const unsigned char *right,
                                  unsigned char *out)
{
    unsigned char pair[2 * FT_MERKLE_HASH];
    memcpy(pair, left, FT_MERKLE_HASH);
    memcpy(pair + FT_MERKLE_HASH, right, FT_MERKLE_HASH);
    ft_sha256(pair, sizeof(pair), out);
}

/* A tree being folded: stack[k] is the pending left node of height
 * level + k, valid where bit k of n is set (and stack[depth] once n is the
 * whole width 2**depth). */
typedef struct {
    unsigned char stack[FT_MERKLE_MAX_DEPTH + 1][FT_MERKLE_HASH];
    uint64_t n;  /* nodes pushed */
    int level;   /* their height above the 16 KiB blocks (0: leaves) */
} ft_merkle_acc;

static inline void ft_merkle_init(ft_merkle_acc *a, int level)
{
    a->n = 0;
    a->level = level;
}

/* Push the next node. The caller pushes at most 2**depth nodes, with
 * level + depth <= FT_MERKLE_MAX_DEPTH. */
static inline void ft_merkle_push(ft_merkle_acc *a, const unsigned char node[FT_MERKLE_HASH])
{
    unsigned char cur[FT_MERKLE_HASH];
    uint64_t k = a->n;
    int l = 0;
    memcpy(cur, node, FT_MERKLE_HASH);
    while (k & 1) {
        ft_merkle_pair(a->stack[l], cur, cur);
        k >>= 1;
        l++;
    }
    memcpy(a->stack[l], cur, FT_MERKLE_HASH);
    a->n++;
}

/* The root of the nodes pushed, the tree padded to 2**depth of them. */
static inline void ft_merkle_finish(const ft_merkle_acc *a, int depth,
                                    unsigned char root[FT_MERKLE_HASH])
{
    unsigned char cur[FT_MERKLE_HASH];
    int have = 0, l;
    if (a->n == ((uint64_t)1 << depth)) {
        memcpy(root, a->stack[depth], FT_MERKLE_HASH);
        return;
    }
    /* Up the right edge: at height l, a pending left node (bit l of n) takes
     * what is on its right (the edge so far, or a zero subtree); the edge alone
     * takes a zero subtree on its right. */
    for (l = 0; l < depth; l++) {
        if ((a->n >> l) & 1) {
            ft_merkle_pair(a->stack[l], have ? cur : ft_merkle_zero[a->level + l], cur);
            have = 1;
        } else if (have) {
            ft_merkle_pair(cur, ft_merkle_zero[a->level + l], cur);
        }
    }
    memcpy(root, have ? cur : ft_merkle_zero[a->level + depth], FT_MERKLE_HASH);
}

/* log2 of a power of two. */
static inline int ft_merkle_log2(uint64_t x)
{
    int k = 0;
    while (x > 1) {
        x >>= 1;
        k++;
    }
    return k;
}

/* The root of len bytes as 16 KiB leaves (the last one short), padded with
 * zero hashes to width leaves: width a power of two, at least the blocks of
 * len, at most 2**FT_MERKLE_MAX_DEPTH. A v2 piece's hash is this with the
 * piece's file bytes and its width (torrent.v2pieces). */
static void ft_merkle_root_of(const unsigned char *p, size_t len, uint64_t width,
                              unsigned char out[FT_MERKLE_HASH])
{
    ft_merkle_acc a;
    unsigned char leaf[FT_MERKLE_HASH];
    size_t off = 0, take;
    ft_merkle_init(&a, 0);
    while (off < len) {
        take = len - off > FT_MERKLE_BLOCK ? FT_MERKLE_BLOCK : len - off;
        ft_sha256(p + off, take, leaf);
        ft_merkle_push(&a, leaf);
        off += take;
    }
    ft_merkle_finish(&a, ft_merkle_log2(width), out);
}

/* 1 if the root of len bytes padded to width leaves (as ft_merkle_root_of) is
 * want, else 0. */
static int ft_merkle_check(const unsigned char *p, size_t len, uint64_t width,
                           const unsigned char want[FT_MERKLE_HASH])
{
    unsigned char root[FT_MERKLE_HASH];
    ft_merkle_root_of(p, len, width, root);
    return memcmp(root, want, FT_MERKLE_HASH) == 0;
}

#endif /* FT_MERKLE_H */
