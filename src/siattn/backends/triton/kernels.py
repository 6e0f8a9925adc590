"""Triton kernels behind :mod:`siattn.backends.triton` (imported only where triton is installed).

Every kernel works in the log2 domain. For a raw dot product ``qk = q·k`` (no scale), a key t = q_pos − k_pos
back, and ``qk_scale = scale·log2(e)``, the kernels use

    none:             v = qk_scale·qk
    alibi:            v = qk_scale·qk − slope_h·log2(e)·t
    scale-invariant:  v = b·qk − γ·b²,  b = qk_scale·a_t,  γ = log2(e)/qk_scale²

so that v = log2(e)·(L − β/α) with L = a_t·s + m_t, s = scale·qk, m_t = β/α − a_t². The constant β/α cancels in
the softmax. Per tile the scale-invariant slope b is computed in one of two ways:

* exact (ORDER == 0): b² = A2·log2(1 + t/τ) + K2, b = sqrt(b²), with ``lg2.approx``/``sqrt.approx`` on CUDA
  (libdevice-free) and the precise functions under the interpreter;
* polynomial (ORDER = 1, 2, 3): t = i + k for a row whose nearest key in the tile is i back and k = 0 .. W−1, so
  b(i + k) is a polynomial in z = (k − h)/h (h = (W−1)/2) with per-row coefficients read from a table that was
  least-squares fitted on the host (``COEF``, rows [ORDER·(ORDER+1)/2 − 1, ...]). Tiles use it only when every
  distance in them is at least the order's threshold, chosen so that the logit error stays under 1e-4.
  Per element this costs ORDER fused multiply-adds and no special-function instruction.

Causal attention splits each program's key (or query) tiles into ranges by their smallest distance: far tiles
(order 1, 2, 3 polynomials), near tiles (exact), and the tiles that need the causal or length mask (exact).
"""

from __future__ import annotations

import triton
import triton.language as tl

MODE_NONE = 0
MODE_SI = 1
MODE_ALIBI = 2
NEG_INF = tl.constexpr(float("-inf"))
# lazy rescaling: the running maximum moves only when a row's block maximum exceeds it by this much (log2 units),
# so p = 2^(v − m) stays below 2^8 and the accumulator rescale is skipped on most tiles
LAZY_THRESHOLD = tl.constexpr(8.0)


@triton.jit
def _lg2(x, USE_ASM: tl.constexpr):
    if USE_ASM:
        y = tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                      is_pure=True, pack=1)
    else:
        y = tl.log2(x)
    return y


@triton.jit
def _sqrt(x, USE_ASM: tl.constexpr):
    if USE_ASM:
        y = tl.inline_asm_elementwise("sqrt.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                      is_pure=True, pack=1)
    else:
        y = tl.sqrt(x)
    return y


@triton.jit
def _coefs(COEF, coef_len, idx_row, ORDER: tl.constexpr):
    """Per-row polynomial coefficients (c0, c1, c2, c3) of the order-ORDER table rows (zeros beyond ORDER)."""
    base: tl.constexpr = ORDER * (ORDER + 1) // 2 - 1
    ok = idx_row < coef_len
    c0 = tl.load(COEF + base * coef_len + idx_row, mask=ok, other=0.0)
    c1 = tl.load(COEF + (base + 1) * coef_len + idx_row, mask=ok, other=0.0)
    if ORDER >= 2:  # noqa: SIM108 (a constexpr branch: only the taken side is compiled)
        c2 = tl.load(COEF + (base + 2) * coef_len + idx_row, mask=ok, other=0.0)
    else:
        c2 = tl.zeros_like(c0)
    if ORDER >= 3:  # noqa: SIM108
        c3 = tl.load(COEF + (base + 3) * coef_len + idx_row, mask=ok, other=0.0)
    else:
        c3 = tl.zeros_like(c0)
    return c0, c1, c2, c3


@triton.jit
def _horner(c0, c1, c2, c3, zcol, ORDER: tl.constexpr):
    z = zcol[None, :]
    if ORDER == 1:
        b = c0[:, None] + c1[:, None] * z
    elif ORDER == 2:
        b = c0[:, None] + z * (c1[:, None] + z * c2[:, None])
    else:
        b = c0[:, None] + z * (c1[:, None] + z * (c2[:, None] + z * c3[:, None]))
    return b


@triton.jit
def _si_slope(qk, trow, tcol, idx_row, zcol, COEF, coef_len, inv_tau, A2, K2,
              ORDER: tl.constexpr, ABS: tl.constexpr, USE_ASM: tl.constexpr):
    """b = qk_scale·a_t for a tile; t = trow[:, None] − tcol[None, :] (|t| when ABS)."""
    if ORDER == 0:
        t = trow[:, None] - tcol[None, :]
        if ABS:
            t = tl.abs(t)
        b2 = A2 * _lg2(t * inv_tau + 1.0, USE_ASM) + K2
        b = _sqrt(b2, USE_ASM)
    else:
        c0, c1, c2, c3 = _coefs(COEF, coef_len, idx_row, ORDER)
        b = _horner(c0, c1, c2, c3, zcol, ORDER)
    return b


@triton.jit
def _logits(qk, trow, tcol, idx_row, zcol, COEF, coef_len, slope2, qk_scale, inv_tau, A2, K2, NEG_GAMMA,
            MODE: tl.constexpr, ORDER: tl.constexpr, ABS: tl.constexpr, USE_ASM: tl.constexpr):
    """(v, b): log2-domain logits of a tile and the slope dv/d(qk) (b for scale-invariant, else unused)."""
    if MODE == 1:
        b = _si_slope(qk, trow, tcol, idx_row, zcol, COEF, coef_len, inv_tau, A2, K2, ORDER, ABS, USE_ASM)
        v = b * (qk + NEG_GAMMA * b)
    elif MODE == 2:
        if ABS:
            t = tl.abs(trow[:, None] - tcol[None, :])
            v = qk * qk_scale - slope2 * t
        else:
            v = qk * qk_scale + (slope2 * tcol[None, :] - slope2 * trow[:, None])
        b = v
    else:
        v = qk * qk_scale
        b = v
    return v, b


@triton.jit
def _schedule(LONGEST_LAST: tl.constexpr):
    """(tile, head) of this program in a grid (SECTION, n_tiles, cdiv(n_heads, SECTION)); head may reach past the
    last one (the caller returns then).

    Causal tiles differ in length (a query tile's work grows with its index, a key tile's shrinks), and a GPU
    starts programs in grid order (axis 0 fastest), so the order decides how long the last wave idles. Heads are
    taken SECTION at a time (a group whose keys stay in L2 together); within a group the programs go longest tile
    first, all of the group's heads at each tile, so the last programs to start are the shortest. SECTION = 1 is
    head by head. Every index is a program id, which the compiler may re-read instead of keeping a register."""
    head = tl.program_id(2) * tl.num_programs(0) + tl.program_id(0)
    if LONGEST_LAST:  # noqa: SIM108 (a constexpr branch: only the taken side is compiled)
        tile = tl.num_programs(1) - 1 - tl.program_id(1)
    else:
        tile = tl.program_id(1)
    return tile, head


# --------------------------------------------------------------------------------------------------- forward
@triton.jit
def _head_tile(desc, b, h, row0, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Rows row0 .. row0 + ROWS − 1 of head (b, h) through a TMA descriptor of a (B, H, T, COLS) tensor with
    (1, 1, ROWS, COLS) blocks (rows past T read as zeros)."""
    return desc.load([b, h, row0, 0]).reshape(ROWS, COLS)


@triton.jit
def _head_base(X, b, h, sxb, sxh, TMA_LOADS: tl.constexpr):
    """Where head (b, h) of a (B, H, T, D) tensor X starts: X itself when it is a TMA descriptor (read through
    ``_head_tile``), else the pointer to the head's first row."""
    if TMA_LOADS:  # noqa: SIM108 (a constexpr branch: only the taken side is compiled)
        base = X
    else:
        base = X + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh
    return base


@triton.jit
def _head_rows(base, b, h, row0, offs_r, offs_d, sxr, n_rows, TMA_LOADS: tl.constexpr):
    """Rows row0 + offs_r of one head (rows at or past n_rows read as zeros); ``base`` from ``_head_base``."""
    if TMA_LOADS:
        x = _head_tile(base, b, h, row0, offs_r.shape[0], offs_d.shape[0])
    else:
        rows = row0 + offs_r
        x = tl.load(base + rows[:, None] * sxr + offs_d[None, :], mask=rows[:, None] < n_rows, other=0.0)
    return x


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n, offs_d, lo, hi,
               q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2, NEG_GAMMA,
               BLOCK_N: tl.constexpr, MODE: tl.constexpr, ORDER: tl.constexpr, MASKED: tl.constexpr,
               CAUSAL: tl.constexpr, LAZY: tl.constexpr, BOUND: tl.constexpr, USE_ASM: tl.constexpr,
               FIXED: tl.constexpr = False, first_real=-1, TMA_LOADS: tl.constexpr = False,
               DOCS: tl.constexpr = False, DOC_START=None, ds_row=None):
    """Online-softmax steps over key tiles lo .. hi−1; steps i < first_real run tile 0 instead (a sample of the
    farthest keys inside another loop). FIXED: keep the offset m_i as it is (no row maximum, no rescaling;
    p = 2^(v − m_i) may exceed 1, see ``fwd_kernel``); only for unmasked tiles. With TMA_LOADS, k_base and v_base
    are descriptors (``_head_tile``) of the key head (kv_b, kv_h). DOCS (packed documents, masked tiles): also hide
    the keys outside each row's document (``_same_doc``); a row may then see no key of a tile, so the update
    shifts by 0 where the running maximum is still −inf (no NaN) and rescales on every tile."""
    tcol = offs_n.to(tl.float32)
    for i in range(lo, hi):
        n0 = tl.where(i < first_real, 0, i) * BLOCK_N
        offs_k = n0 + offs_n
        if TMA_LOADS:  # a descriptor zero-fills keys past Tk, as the masked load does
            kt = tl.trans(_head_tile(k_base, kv_b, kv_h, n0, BLOCK_N, offs_d.shape[0]))
        elif MASKED:
            kt = tl.load(k_base + offs_k[None, :] * skn + offs_d[:, None], mask=offs_k[None, :] < Tk, other=0.0)
        else:
            kt = tl.load(k_base + offs_k[None, :] * skn + offs_d[:, None])
        qk = tl.dot(q, kt)
        if FIXED:
            if MODE == 1 and ORDER > 0:
                idx_row = q_offset + offs_m - n0 - (BLOCK_N - 1)
                c0, c1, c2, c3 = _coefs(COEF, coef_len, idx_row, ORDER)
                b = _horner(c0, c1, c2, c3, zcol, ORDER)
                p = tl.math.exp2(b * (qk + NEG_GAMMA * b) - m_i[:, None])
            elif MODE == 0:
                p = tl.math.exp2(qk * qk_scale - m_i[:, None])
            else:
                trow = (q_offset + offs_m - n0).to(tl.float32)
                idx_row = q_offset + offs_m - n0 - (BLOCK_N - 1)
                s, _b = _logits(qk, trow, tcol, idx_row, zcol, COEF, coef_len, slope2, qk_scale, inv_tau, A2, K2,
                                NEG_GAMMA, MODE, ORDER, not CAUSAL, USE_ASM)
                p = tl.math.exp2(s - m_i[:, None])
        else:
            if MODE == 1 and ORDER > 0 and BOUND:
                # far tile: bound the row maximum of v = b·qk − γb² from max(qk) and the row's range of b
                # (b is monotone in t), so v itself is never materialised: p = 2^(b·(qk − γb) − m)
                idx_row = q_offset + offs_m - n0 - (BLOCK_N - 1)
                c0, c1, c2, c3 = _coefs(COEF, coef_len, idx_row, ORDER)
                b = _horner(c0, c1, c2, c3, zcol, ORDER)
                b_lo = c0 - c1 + c2 - c3
                b_hi = c0 + c1 + c2 + c3
                q_max = tl.max(qk, 1)
                b_star = tl.minimum(tl.maximum(q_max * (-0.5 / NEG_GAMMA), tl.minimum(b_lo, b_hi)),
                                    tl.maximum(b_lo, b_hi))
                m_new = tl.maximum(m_i, b_star * (q_max + NEG_GAMMA * b_star))
                s = b
                sc = 1.0
            elif MODE == 0:
                s = qk
                sc = qk_scale
                m_new = tl.maximum(m_i, tl.max(s, 1) * sc)
            else:
                trow = (q_offset + offs_m - n0).to(tl.float32)
                idx_row = q_offset + offs_m - n0 - (BLOCK_N - 1)
                s, _b = _logits(qk, trow, tcol, idx_row, zcol, COEF, coef_len, slope2, qk_scale, inv_tau, A2, K2,
                                NEG_GAMMA, MODE, ORDER, not CAUSAL, USE_ASM)
                sc = 1.0
                if MASKED:
                    vis = offs_k[None, :] < Tk
                    if CAUSAL:
                        vis = vis & (offs_k[None, :] <= q_offset + offs_m[:, None])
                    if DOCS:
                        vis = vis & _same_doc(DOC_START, ds_row, offs_k, Tk)
                    s = tl.where(vis, s, NEG_INF)
                m_new = tl.maximum(m_i, tl.max(s, 1))
            if MODE == 0 and MASKED:
                vis = offs_k[None, :] < Tk
                if CAUSAL:
                    vis = vis & (offs_k[None, :] <= q_offset + offs_m[:, None])
                if DOCS:
                    vis = vis & _same_doc(DOC_START, ds_row, offs_k, Tk)
                s = tl.where(vis, s, NEG_INF)
                m_new = tl.maximum(m_i, tl.max(s, 1) * sc)
            if DOCS and MASKED:
                m_use = tl.where(m_new == NEG_INF, 0.0, m_new)
                alpha = tl.math.exp2(m_i - m_use)
                acc = acc * alpha[:, None]
                l_i = l_i * alpha
                m_i = m_new
            elif LAZY:
                if tl.max(m_new - m_i, 0) > LAZY_THRESHOLD:
                    alpha = tl.math.exp2(m_i - m_new)
                    acc = acc * alpha[:, None]
                    l_i = l_i * alpha
                    m_i = m_new
            else:
                alpha = tl.math.exp2(m_i - m_new)
                acc = acc * alpha[:, None]
                l_i = l_i * alpha
                m_i = m_new
            if MODE == 1 and ORDER > 0 and BOUND:
                p = tl.math.exp2(s * (qk + NEG_GAMMA * s) - m_i[:, None])
            elif DOCS and MASKED:
                p = tl.math.exp2(s * sc - m_use[:, None])
            else:
                p = tl.math.exp2(s * sc - m_i[:, None])
        l_i += tl.sum(p, 1)
        if TMA_LOADS:
            vt = _head_tile(v_base, kv_b, kv_h, n0, BLOCK_N, offs_d.shape[0])
        elif MASKED:
            vt = tl.load(v_base + offs_k[:, None] * svn + offs_d[None, :], mask=offs_k[:, None] < Tk, other=0.0)
        else:
            vt = tl.load(v_base + offs_k[:, None] * svn + offs_d[None, :])
        acc = tl.dot(p.to(vt.dtype), vt, acc)
    return acc, l_i, m_i


@triton.jit
def _same_doc(DOC_START, ds_row, offs_k, Tk):
    """(rows, keys) True where key offs_k lies in the document of the row whose document starts at ds_row (packed
    documents: DOC_START holds each position's document start; keys at or past Tk match no row)."""
    ds_col = tl.load(DOC_START + offs_k, mask=offs_k < Tk, other=-1)
    return ds_row[:, None] == ds_col[None, :]


@triton.jit
def _count_far(x, BLOCK: tl.constexpr):
    """Number of tiles i >= 0 with i·BLOCK <= x (0 when x < 0)."""
    return tl.where(x >= 0, x // BLOCK + 1, 0)


@triton.jit
def _fwd_regimes(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n, offs_d, n1, n2, n3, n_full,
                 n_end, q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2, NEG_GAMMA,
                 BLOCK_N: tl.constexpr, MODE: tl.constexpr, CAUSAL: tl.constexpr, LAZY: tl.constexpr,
                 BOUND: tl.constexpr, USE_ASM: tl.constexpr, STATIC: tl.constexpr, TMA_LOADS: tl.constexpr = False,
                 n_start=0, DOCS: tl.constexpr = False, DOC_START=None, ds_row=None):
    """All key tiles of one query block: far tiles [0, n1), [n1, n2), [n2, n3) with polynomials of order 1, 2, 3
    (scale-invariant, causal), exact tiles [n3, n_full), masked tiles [n_full, n_end). Without the transform
    (or not causal) n1 = n2 = 0 and n3 only marks where STATIC's fixed-offset tiles end. Without STATIC the tiles
    start at ``n_start`` (packed documents: the first tile of the rows' one document; n1 >= n_start), and DOCS
    masks the masked tiles by document too (packed documents run without STATIC).

    STATIC: the masked, exact and farthest tiles go first (online softmax; the farthest one inside the exact
    tiles' loop), then the other far tiles keep that running maximum as a fixed offset: no row maximum and no
    accumulator rescaling on most tiles."""
    if STATIC:
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n, offs_d,
                                   n_full, n_end, q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2,
                                   NEG_GAMMA, BLOCK_N, MODE, 0, True, CAUSAL, LAZY, BOUND, USE_ASM, TMA_LOADS=TMA_LOADS)
        if CAUSAL:
            # the near tiles [n3, n_full), preceded by the farthest tile (the largest a_t, so the widest logits)
            # as a sample of the far maxima: its step i = n3 − 1 runs tile 0 (one loop, one pipeline fill)
            n0 = tl.minimum(n3, 1)
            acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n, offs_d,
                                       n3 - n0, n_full, q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau,
                                       A2, K2, NEG_GAMMA, BLOCK_N, MODE, 0, False, CAUSAL, LAZY, BOUND, USE_ASM,
                                       False, n3, TMA_LOADS=TMA_LOADS)
        else:  # nothing is near: the first full tile sets the offset
            n_fix = tl.minimum(n3 + 1, n_full)
            acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n, offs_d,
                                       n3, n_fix, q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2,
                                       K2, NEG_GAMMA, BLOCK_N, MODE, 0, False, CAUSAL, LAZY, BOUND, USE_ASM,
                                       TMA_LOADS=TMA_LOADS)
            acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n, offs_d,
                                       n_fix, n_full, q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2,
                                       K2, NEG_GAMMA, BLOCK_N, MODE, 0, False, CAUSAL, LAZY, BOUND, USE_ASM, True,
                                       TMA_LOADS=TMA_LOADS)
        if CAUSAL:
            if MODE == 1:
                acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n,
                                           offs_d, tl.maximum(n2, n0), n3, q_offset, Tk, COEF, coef_len, zcol, slope2,
                                           qk_scale, inv_tau, A2, K2, NEG_GAMMA, BLOCK_N, MODE, 3, False, CAUSAL,
                                           LAZY, BOUND, USE_ASM, True, TMA_LOADS=TMA_LOADS)
                acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n,
                                           offs_d, tl.maximum(n1, n0), n2, q_offset, Tk, COEF, coef_len, zcol, slope2,
                                           qk_scale, inv_tau, A2, K2, NEG_GAMMA, BLOCK_N, MODE, 2, False, CAUSAL,
                                           LAZY, BOUND, USE_ASM, True, TMA_LOADS=TMA_LOADS)
                acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n,
                                           offs_d, n0, n1, q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale,
                                           inv_tau, A2, K2, NEG_GAMMA, BLOCK_N, MODE, 1, False, CAUSAL, LAZY, BOUND,
                                           USE_ASM, True, TMA_LOADS=TMA_LOADS)
            else:
                acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n,
                                           offs_d, n0, n3, q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale,
                                           inv_tau, A2, K2, NEG_GAMMA, BLOCK_N, MODE, 0, False, CAUSAL, LAZY, BOUND,
                                           USE_ASM, True, TMA_LOADS=TMA_LOADS)
    else:
        if MODE == 1 and CAUSAL:
            acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n, offs_d,
                                       n_start, n1, q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2,
                                       K2, NEG_GAMMA, BLOCK_N, MODE, 1, False, CAUSAL, LAZY, BOUND, USE_ASM,
                                       TMA_LOADS=TMA_LOADS)
            acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n, offs_d,
                                       n1, n2, q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2,
                                       NEG_GAMMA, BLOCK_N, MODE, 2, False, CAUSAL, LAZY, BOUND, USE_ASM,
                                       TMA_LOADS=TMA_LOADS)
            acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n, offs_d,
                                       n2, n3, q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2,
                                       NEG_GAMMA, BLOCK_N, MODE, 3, False, CAUSAL, LAZY, BOUND, USE_ASM,
                                       TMA_LOADS=TMA_LOADS)
            n_exact = n3
        else:
            n_exact = n_start
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n, offs_d,
                                   n_exact, n_full, q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2,
                                   K2, NEG_GAMMA, BLOCK_N, MODE, 0, False, CAUSAL, LAZY, BOUND, USE_ASM,
                                   TMA_LOADS=TMA_LOADS)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, kv_b, kv_h, skn, svn, offs_m, offs_n, offs_d,
                                   n_full, n_end, q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2,
                                   NEG_GAMMA, BLOCK_N, MODE, 0, True, CAUSAL, LAZY, BOUND, USE_ASM, TMA_LOADS=TMA_LOADS,
                                   DOCS=DOCS, DOC_START=DOC_START, ds_row=ds_row)
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["BH", "Tq", "Tk", "q_offset", "coef_len", "T1", "T2", "T3"])
def fwd_kernel(Q, K, V, O, LSE, COEF, SLOPES, FLAGS, DOC_START, DOC_END,
               sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sob, soh, som,
               BH, H, G, Tq, Tk, q_offset, coef_len,
               qk_scale, inv_tau, A2, K2, NEG_GAMMA, T1, T2, T3,
               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MODE: tl.constexpr,
               CAUSAL: tl.constexpr, LAZY: tl.constexpr, BOUND: tl.constexpr, USE_ASM: tl.constexpr,
               STATIC: tl.constexpr = False, REDO: tl.constexpr = False, TMA_LOADS: tl.constexpr = False,
               VARLEN: tl.constexpr = False):
    """Output and log2-sum-exp of one BLOCK_M query block; grid (SECTION, cdiv(Tq, BLOCK_M), cdiv(B·H, SECTION))
    (``_schedule``: the last query blocks, the longest causal rows, first).

    VARLEN (packed documents, B = 1, Tq = Tk, q_offset = 0, without STATIC): DOC_START and DOC_END (int32, (T,))
    hold each position's document start and end. The key loop starts at the tile of the first row's document
    start; the tiles before the last row's document start are masked per element by document, and the far/near
    regimes (polynomial a_t included: distances within a document are unchanged) run only on the tiles after it,
    whose keys share every row's document.

    STATIC (see ``_fwd_regimes``): with a fixed offset p = 2^(v − m) exceeds 1 where a far logit is above the
    offset m; that is exact as long as nothing overflows (p in float32 and as the bf16/fp16 operand of P·V, the
    row sum l, the accumulator). An overflow leaves an inf or nan in l or the accumulator, so the program flags
    its block in FLAGS (int32, one per program) when either is not finite at the end. A second launch with REDO
    recomputes the flagged blocks with the online softmax on every tile (the other programs return after one
    load): no host synchronisation, and the result never rests on the fixed offset."""
    n_blocks = tl.num_programs(1)
    pid_m, bh = _schedule(True)
    if bh >= BH:
        return
    if REDO:  # noqa: SIM102 (a constexpr branch around a run-time one)
        if tl.load(FLAGS + bh * n_blocks + pid_m) == 0:
            return
    b = bh // H
    h = bh % H
    hk = h // G
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m[:, None] * sqm + offs_d[None, :],
                mask=offs_m[:, None] < Tq, other=0.0)
    k_base = _head_base(K, b, hk, skb, skh, TMA_LOADS)
    v_base = _head_base(V, b, hk, svb, svh, TMA_LOADS)
    slope2 = 0.0
    if MODE == 2:
        slope2 = tl.load(SLOPES + h)
    half = (BLOCK_N - 1) * 0.5
    zcol = (half - offs_n.to(tl.float32)) / half  # t = i + (BLOCK_N − 1 − j): z = (k − h)/h

    if CAUSAL:
        row_last = tl.minimum(m0 + BLOCK_M, Tq) - 1
        n_end = tl.cdiv(tl.minimum(Tk, q_offset + row_last + 1), BLOCK_N)
        n_full = tl.minimum((q_offset + m0 + 1) // BLOCK_N, Tk // BLOCK_N)
    else:
        n_end = tl.cdiv(Tk, BLOCK_N)
        n_full = Tk // BLOCK_N
    n1 = 0
    n2 = 0
    n3 = 0
    if MODE == 1 and CAUSAL:
        base_x = q_offset + m0 - BLOCK_N + 1  # tile i has smallest distance base_x − i·BLOCK_N
        n1 = tl.minimum(_count_far(base_x - T1, BLOCK_N), n_full)
        n2 = tl.maximum(tl.minimum(_count_far(base_x - T2, BLOCK_N), n_full), n1)
        n3 = tl.maximum(tl.minimum(_count_far(base_x - T3, BLOCK_N), n_full), n2)
    elif CAUSAL:  # plain and ALiBi: no transform to approximate; every full tile but the last counts as far (the
        n3 = tl.maximum(n_full - 1, 0)  # last one is seen by every row, so STATIC starts from a finite maximum)
    m_i = tl.full([BLOCK_M], NEG_INF, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if VARLEN:
        n_lo, n_start, n_full, n_end, ds_row = _doc_tiles(DOC_START, DOC_END, offs_m, m0, Tq, n_full, n_end,
                                                          BLOCK_M, BLOCK_N, CAUSAL)
        n1 = tl.maximum(n1, n_start)
        n2 = tl.maximum(n2, n1)
        n3 = tl.maximum(n3, n2)
        acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, b, hk, skn, svn, offs_m, offs_n, offs_d, n_lo,
                                   n_start, q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2,
                                   NEG_GAMMA, BLOCK_N, MODE, 0, True, CAUSAL, LAZY, BOUND, USE_ASM, TMA_LOADS=TMA_LOADS,
                                   DOCS=True, DOC_START=DOC_START, ds_row=ds_row)
    else:
        n_start = 0
        ds_row = offs_m
    acc, l_i, m_i = _fwd_regimes(acc, l_i, m_i, q, k_base, v_base, b, hk, skn, svn, offs_m, offs_n, offs_d, n1, n2, n3,
                                 n_full, n_end, q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2,
                                 K2, NEG_GAMMA, BLOCK_N, MODE, CAUSAL, LAZY, BOUND, USE_ASM, STATIC, TMA_LOADS,
                                 n_start, VARLEN, DOC_START, ds_row)
    row_ok = offs_m < Tq
    out = acc / l_i[:, None]
    tl.store(LSE + bh.to(tl.int64) * Tq + offs_m, m_i + tl.log2(l_i), mask=row_ok)
    tl.store(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_m[:, None] * som + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=row_ok[:, None])
    if STATIC:  # an overflow of the fixed offset leaves inf or nan (each fails "< inf") in l or acc; checked
        # element by element, since max() would drop a nan
        bad = tl.max((~(tl.abs(l_i) < float("inf"))).to(tl.int32), 0)
        bad = tl.maximum(bad, tl.max(tl.max((~(tl.abs(acc) < float("inf"))).to(tl.int32), 1), 0))
        tl.store(FLAGS + bh * n_blocks + pid_m, bad)


@triton.jit
def _doc_tiles(DOC_START, DOC_END, offs_m, m0, Tq, n_full, n_end, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               CAUSAL: tl.constexpr):
    """Key tiles of a query block of packed documents: (n_lo, n_start, n_full, n_end, ds_row). Tiles
    [n_lo, n_start) hold keys of the block's documents but not only of its last row's: masked by document.
    Causal: [n_start, n_full) share every row's document (the regimes), [n_full, n_end) are masked as before (and
    by document). Not causal: every tile [n_lo, n_end) up to the last row's document end is masked by document.
    ds_row: each row's document start (−2 past Tq: such rows see no key)."""
    row_last = tl.minimum(m0 + BLOCK_M, Tq) - 1
    ds_row = tl.load(DOC_START + offs_m, mask=offs_m < Tq, other=-2)
    n_lo = tl.load(DOC_START + m0) // BLOCK_N
    if CAUSAL:
        n_start = tl.minimum(tl.maximum(tl.cdiv(tl.load(DOC_START + row_last), BLOCK_N), n_lo), n_full)
    else:
        n_end = tl.cdiv(tl.load(DOC_END + row_last), BLOCK_N)
        n_full = n_lo
        n_start = n_lo
    return n_lo, n_start, n_full, n_end, ds_row


# -------------------------------------------------------------------------------------------------- backward
@triton.jit
def bwd_preprocess_kernel(O, DO, DELTA, DQACC, sob, soh, som, sdob, sdoh, sdom, H, T, n_rows, dq_pitch,
                          HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, ZERO_DQ: tl.constexpr = False):
    """delta[b, h, m] = Σ_d O[b, h, m, d]·dO[b, h, m, d] for (B, H, T, HEAD_DIM) tensors of any strides (a
    transposed (B, T, H, D) view included); DELTA is contiguous (B, H, T), row r = (b·H + h)·T + m. ZERO_DQ:
    also zero the fused backward's dQ accumulator DQACC[b·H + h, :, m] (B·H, HEAD_DIM, dq_pitch) of the same
    rows, which saves a separate fill of it."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = rows[:, None] < n_rows
    r = rows.to(tl.int64)
    m = r % T
    h = (r // T) % H
    b = r // T // H
    o = tl.load(O + (b * sob + h * soh + m * som)[:, None] + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
    do = tl.load(DO + (b * sdob + h * sdoh + m * sdom)[:, None] + offs_d[None, :], mask=ok, other=0.0)
    tl.store(DELTA + rows, tl.sum(o * do.to(tl.float32), 1), mask=rows < n_rows)
    if ZERO_DQ:
        acc = DQACC + ((r // T) * HEAD_DIM * dq_pitch + m)[:, None] + offs_d[None, :].to(tl.int64) * dq_pitch
        tl.store(acc, tl.zeros([BLOCK, HEAD_DIM], tl.float32), mask=ok)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_base, do_base, q_b, q_h, lse_base, delta_base, dq_dst, dq_row, dq_pitch, sqm, sdom,
                offs_n, offs_mb, offs_d, lo, hi, q_offset, Tq, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2,
                NEG_GAMMA, BLOCK_M: tl.constexpr, MODE: tl.constexpr, ORDER: tl.constexpr, MASKED: tl.constexpr,
                CAUSAL: tl.constexpr, USE_ASM: tl.constexpr, EARLY_DP: tl.constexpr, FUSED_DQ: tl.constexpr,
                TMA_LOADS: tl.constexpr = False, ORDER_DQ: tl.constexpr = 0, DOCS: tl.constexpr = False,
                DOC_START=None, ds_key=None):
    """Accumulate dK, dV of one key tile (rows = keys) over query tiles lo .. hi−1 (columns = queries).
    EARLY_DP: issue dPᵀ = V·dOᵀ right after Sᵀ = K·Qᵀ, before the softmax, instead of after the dV update (ptxas
    then spills fewer registers; 3–8% faster on the H200). FUSED_DQ (1: atomics through pointers, 2: TMA
    reductions through the descriptor ``dq_dst``, whose rows dq_row .. dq_row + HEAD_DIM − 1 are the query head's):
    also add this key tile's share of dQᵀ = Kᵀ·dSᵀ (HEAD_DIM × BLOCK_M, float32, unscaled) into a
    (HEAD_DIM, dq_pitch) accumulator of the query head. ORDER_DQ: where the
    dQᵀ product is issued (Triton waits for a non-accumulating wgmma, and so for every earlier one, right after
    issuing it; accumulating ones stay in flight until the next wait): 0 after dK (dV, dK, dQᵀ), 1 before dK (dK
    then runs on during the reduction and the next step's loads), 2 before dV and dK. With TMA_LOADS, q_base and
    do_base are descriptors (``_head_tile``) of the query head (q_b, q_h). DOCS (packed documents, masked tiles):
    also hide the queries outside each key's document (``ds_key``: the keys' document starts), causal or not."""
    tcol = -offs_mb.to(tl.float32)  # t = (q_offset + m0 − n) + j
    for i in range(lo, hi):
        m0 = i * BLOCK_M
        offs_m = m0 + offs_mb
        row_ok = offs_m < Tq
        if TMA_LOADS:
            qt = tl.trans(_head_tile(q_base, q_b, q_h, m0, BLOCK_M, offs_d.shape[0]))
        else:
            qt = tl.load(q_base + offs_m[None, :] * sqm + offs_d[:, None], mask=row_ok[None, :], other=0.0)
        lse = tl.load(lse_base + offs_m, mask=row_ok, other=0.0)
        sT = tl.dot(k, qt)
        if EARLY_DP:
            do = _head_rows(do_base, q_b, q_h, m0, offs_mb, offs_d, sdom, Tq, TMA_LOADS)
            dpT = tl.dot(v, tl.trans(do))
        trow = (q_offset + m0 - offs_n).to(tl.float32)
        idx_row = q_offset + m0 - offs_n
        vT, bT = _logits(sT, trow, tcol, idx_row, zcol, COEF, coef_len, slope2, qk_scale, inv_tau, A2, K2,
                         NEG_GAMMA, MODE, ORDER, not CAUSAL, USE_ASM)
        pT = tl.math.exp2(vT - lse[None, :])
        if MASKED:
            if DOCS:
                ds_rows = tl.load(DOC_START + offs_m, mask=row_ok, other=-2)
                vis = ds_key[:, None] == ds_rows[None, :]
                if CAUSAL:
                    vis = vis & (offs_m[None, :] + q_offset >= offs_n[:, None])
            else:
                vis = offs_m[None, :] + q_offset >= offs_n[:, None]
            pT = tl.where(vis, pT, 0.0)
        if not EARLY_DP:
            do = _head_rows(do_base, q_b, q_h, m0, offs_mb, offs_d, sdom, Tq, TMA_LOADS)
        if FUSED_DQ == 0 or ORDER_DQ < 2:
            dv = tl.dot(pT.to(do.dtype), do, dv)
        delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
        if not EARLY_DP:
            dpT = tl.dot(v, tl.trans(do))
        dsT = pT * (dpT - delta[None, :])
        if MODE == 1:
            dsT = dsT * bT
            if MASKED:
                dsT = tl.where(vis, dsT, 0.0)
        ds16 = dsT.to(qt.dtype)
        if FUSED_DQ > 0 and ORDER_DQ > 0:
            dqT = tl.dot(tl.trans(k), ds16)  # (HEAD_DIM, BLOCK_M): M = 128 keeps it a wgmma
        if FUSED_DQ > 0 and ORDER_DQ == 2:
            dv = tl.dot(pT.to(do.dtype), do, dv)
        dk = tl.dot(ds16, tl.trans(qt), dk)
        if FUSED_DQ > 0:
            if ORDER_DQ == 0:
                dqT = tl.dot(tl.trans(k), ds16)
            if FUSED_DQ == 2:
                dq_dst.atomic_add([dq_row, m0], dqT)
            else:
                tl.atomic_add(dq_dst + offs_d[:, None] * dq_pitch + offs_m[None, :], dqT, mask=row_ok[None, :],
                              sem="relaxed")
    return dk, dv


@triton.jit
def _first_tile_at(y, BLOCK: tl.constexpr):
    """Smallest tile index i >= 0 with i·BLOCK >= y."""
    return tl.where(y > 0, (y + BLOCK - 1) // BLOCK, 0)


@triton.jit(do_not_specialize=["BHkv", "Tq", "Tk", "q_offset", "coef_len", "T1", "T2", "T3", "dq_pitch"])
def bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, DQACC, COEF, SLOPES, DOC_START, DOC_END,
                    sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdom, sdkb, sdkh, sdkn,
                    sdvb, sdvh, sdvn, BHkv, Hkv, G, Tq, Tk, q_offset, coef_len, dq_pitch,
                    qk_scale, inv_tau, A2, K2, NEG_GAMMA, DS_SCALE, T1, T2, T3,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MODE: tl.constexpr,
                    CAUSAL: tl.constexpr, USE_ASM: tl.constexpr, POLY: tl.constexpr = 3,
                    EARLY_DP: tl.constexpr = True, FUSED_DQ: tl.constexpr = 0, TMA_LOADS: tl.constexpr = False,
                    ORDER_DQ: tl.constexpr = 0, VARLEN: tl.constexpr = False):
    """One program per (key tile, batch·kv head), ordered by ``_schedule``: dK, dV summed over the G query heads
    of the group; with FUSED_DQ (see ``_dkdv_tiles``) also every query head's dQᵀ, accumulated in float32 in
    DQACC (B·H, HEAD_DIM, dq_pitch), zeroed before the launch (``dq_from_accumulator_kernel`` finishes it); with
    FUSED_DQ = 2 DQACC is a TMA descriptor of it seen as (B·H·HEAD_DIM, Tq) with (HEAD_DIM, BLOCK_M) blocks.

    Far query tiles (scale-invariant, causal) take a_t from polynomials: POLY = 3 uses orders 3, 2, 1 as the
    distance grows (three loops: least arithmetic), 1 uses order 3 for all of them (one loop: fewer registers
    spilled), 0 none (the exact transform on every tile).

    VARLEN (packed documents; DOC_START, DOC_END as in ``fwd_kernel``): the query tiles end with the document of
    the tile's last key; the regimes run on the tiles whose rows all lie in the one document of every key of the
    tile, and the others are masked by document."""
    pid_n, bhk = _schedule(False)  # the first key tiles are the longest
    if bhk >= BHkv:
        return
    b = bhk // Hkv
    hk = bhk % Hkv
    n0 = pid_n * BLOCK_N
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_mb = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n[:, None] < Tk
    k = tl.load(K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh + offs_n[:, None] * skn + offs_d[None, :],
                mask=key_ok, other=0.0)
    v = tl.load(V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh + offs_n[:, None] * svn + offs_d[None, :],
                mask=key_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    half = (BLOCK_M - 1) * 0.5
    zcol = (offs_mb.to(tl.float32) - half) / half  # t = i + j: z = (j − h)/h

    m_end = tl.cdiv(Tq, BLOCK_M)
    if VARLEN:
        key_last = tl.minimum(n0 + BLOCK_N, Tk) - 1
        m_end = tl.cdiv(tl.load(DOC_END + key_last), BLOCK_M)
        ds_key = tl.load(DOC_START + offs_n, mask=offs_n < Tk, other=-1)
    else:
        ds_key = offs_n
    if CAUSAL:
        m_lo = tl.minimum(tl.maximum(n0 - q_offset, 0) // BLOCK_M, m_end)
        m_full = tl.minimum(tl.maximum(_first_tile_at(n0 + BLOCK_N - 1 - q_offset, BLOCK_M), m_lo), m_end)
    else:
        m_lo = 0
        m_full = 0
    m_reg = m_end  # the regimes' last tile (VARLEN: the masked tiles [m_reg, m_end) follow)
    if VARLEN:
        if CAUSAL:  # rows of one document with every key: a key tile within one document, rows before its end
            one_doc = tl.load(DOC_START + key_last) <= n0
            m_reg = tl.where(one_doc, tl.load(DOC_END + n0) // BLOCK_M, m_full)
            m_reg = tl.minimum(tl.maximum(m_reg, m_full), m_end)
        else:
            m_lo = tl.load(DOC_START + n0) // BLOCK_M
            m_full = m_end
            m_reg = m_end
    if MODE == 1 and CAUSAL and POLY > 0:
        base_y = n0 + BLOCK_N - 1 - q_offset  # tile i has smallest distance i·BLOCK_M − base_y
        s3 = tl.minimum(tl.maximum(_first_tile_at(base_y + T3, BLOCK_M), m_full), m_reg)
        s2 = tl.minimum(tl.maximum(_first_tile_at(base_y + T2, BLOCK_M), s3), m_reg)
        s1 = tl.minimum(tl.maximum(_first_tile_at(base_y + T1, BLOCK_M), s2), m_reg)
        # up to 4 exact tiles before the polynomial ones join the masked loop (one pipeline fill less; their masks
        # are all true)
        m_near = tl.where(s3 - m_full <= 4, s3, m_full)
    else:
        s3 = m_reg
        s2 = m_reg
        s1 = m_reg
        m_near = m_full
    for g in range(0, G):
        h = hk * G + g
        q_base = _head_base(Q, b, h, sqb, sqh, TMA_LOADS)
        do_base = _head_base(DO, b, h, sdob, sdoh, TMA_LOADS)
        row_base = (b * Hkv * G + h).to(tl.int64) * Tq
        lse_base = LSE + row_base
        delta_base = DELTA + row_base
        if FUSED_DQ == 2:  # a host-side descriptor of the (B·H·HEAD_DIM, Tq) accumulator (no tensormap to build here)
            dq_dst = DQACC
            dq_row = (b * Hkv * G + h) * HEAD_DIM
        else:
            dq_dst = DQACC + (b * Hkv * G + h).to(tl.int64) * HEAD_DIM * dq_pitch
            dq_row = 0
        if MODE == 2:  # noqa: SIM108 (constexpr branch)
            slope2 = tl.load(SLOPES + h)
        else:
            slope2 = 0.0
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, b, h, lse_base, delta_base, dq_dst, dq_row, dq_pitch, sqm,
                             sdom, offs_n, offs_mb, offs_d, m_lo, m_near, q_offset, Tq, COEF, coef_len, zcol, slope2,
                             qk_scale, inv_tau, A2, K2, NEG_GAMMA, BLOCK_M, MODE, 0, True, CAUSAL, USE_ASM, EARLY_DP,
                             FUSED_DQ, TMA_LOADS, ORDER_DQ, VARLEN, DOC_START, ds_key)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, b, h, lse_base, delta_base, dq_dst, dq_row, dq_pitch, sqm,
                             sdom, offs_n, offs_mb, offs_d, m_near, s3, q_offset, Tq, COEF, coef_len, zcol, slope2,
                             qk_scale, inv_tau, A2, K2, NEG_GAMMA, BLOCK_M, MODE, 0, False, CAUSAL, USE_ASM, EARLY_DP,
                             FUSED_DQ, TMA_LOADS, ORDER_DQ)
        if MODE == 1 and CAUSAL and POLY == 1:
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, b, h, lse_base, delta_base, dq_dst, dq_row, dq_pitch,
                                 sqm, sdom, offs_n, offs_mb, offs_d, s3, m_reg, q_offset, Tq, COEF, coef_len, zcol,
                                 slope2, qk_scale, inv_tau, A2, K2, NEG_GAMMA, BLOCK_M, MODE, 3, False, CAUSAL,
                                 USE_ASM, EARLY_DP, FUSED_DQ, TMA_LOADS, ORDER_DQ)
        if MODE == 1 and CAUSAL and POLY == 3:
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, b, h, lse_base, delta_base, dq_dst, dq_row, dq_pitch,
                                 sqm, sdom, offs_n, offs_mb, offs_d, s3, s2, q_offset, Tq, COEF, coef_len, zcol, slope2,
                                 qk_scale, inv_tau, A2, K2, NEG_GAMMA, BLOCK_M, MODE, 3, False, CAUSAL,
                                 USE_ASM, EARLY_DP, FUSED_DQ, TMA_LOADS, ORDER_DQ)
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, b, h, lse_base, delta_base, dq_dst, dq_row, dq_pitch,
                                 sqm, sdom, offs_n, offs_mb, offs_d, s2, s1, q_offset, Tq, COEF, coef_len, zcol, slope2,
                                 qk_scale, inv_tau, A2, K2, NEG_GAMMA, BLOCK_M, MODE, 2, False, CAUSAL,
                                 USE_ASM, EARLY_DP, FUSED_DQ, TMA_LOADS, ORDER_DQ)
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, b, h, lse_base, delta_base, dq_dst, dq_row, dq_pitch,
                                 sqm, sdom, offs_n, offs_mb, offs_d, s1, m_reg, q_offset, Tq, COEF, coef_len, zcol,
                                 slope2, qk_scale, inv_tau, A2, K2, NEG_GAMMA, BLOCK_M, MODE, 1, False, CAUSAL,
                                 USE_ASM, EARLY_DP, FUSED_DQ, TMA_LOADS, ORDER_DQ)
        if VARLEN:
            dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, b, h, lse_base, delta_base, dq_dst, dq_row, dq_pitch,
                                 sqm, sdom, offs_n, offs_mb, offs_d, m_reg, m_end, q_offset, Tq, COEF, coef_len, zcol,
                                 slope2, qk_scale, inv_tau, A2, K2, NEG_GAMMA, BLOCK_M, MODE, 0, True, CAUSAL,
                                 USE_ASM, EARLY_DP, FUSED_DQ, TMA_LOADS, ORDER_DQ, True, DOC_START, ds_key)
    out_ok = offs_n[:, None] < Tk
    dk_ptr = b.to(tl.int64) * sdkb + hk.to(tl.int64) * sdkh + offs_n[:, None] * sdkn + offs_d[None, :]
    dv_ptr = b.to(tl.int64) * sdvb + hk.to(tl.int64) * sdvh + offs_n[:, None] * sdvn + offs_d[None, :]
    tl.store(DK + dk_ptr, (dk * DS_SCALE).to(DK.dtype.element_ty), mask=out_ok)
    tl.store(DV + dv_ptr, dv.to(DV.dtype.element_ty), mask=out_ok)  # dK and dV may differ in layout


@triton.jit
def dq_from_accumulator_kernel(DQACC, DQ, sdqb, sdqh, sdqm, H, Tq, dq_pitch, DS_SCALE,
                               HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """dQ[b, h, m, :] = DS_SCALE·DQACC[b·H + h, :, m] in dQ's dtype and strides; grid (cdiv(Tq, BLOCK), B·H)."""
    bh = tl.program_id(1)
    offs_m = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs_m < Tq
    acc = tl.load(DQACC + bh.to(tl.int64) * HEAD_DIM * dq_pitch + offs_d[:, None] * dq_pitch + offs_m[None, :],
                  mask=ok[None, :], other=0.0)
    b = bh // H
    h = bh % H
    tl.store(DQ + b.to(tl.int64) * sdqb + h.to(tl.int64) * sdqh + offs_m[:, None] * sdqm + offs_d[None, :],
             tl.trans(acc * DS_SCALE).to(DQ.dtype.element_ty), mask=ok[:, None])


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, k_base, v_base, skn, svn, offs_m, offs_n, offs_d, lo, hi,
              q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2, NEG_GAMMA,
              BLOCK_N: tl.constexpr, MODE: tl.constexpr, ORDER: tl.constexpr, MASKED: tl.constexpr,
              CAUSAL: tl.constexpr, USE_ASM: tl.constexpr, ROW_TERM: tl.constexpr = False,
              DOCS: tl.constexpr = False, DOC_START=None, ds_row=None):
    """Accumulate dQ of one query tile over key tiles lo .. hi−1. ROW_TERM: accumulate instead the row term
    Σ_j P_ij·dP_ij into every column of ``dq`` (the backward's own P and dP, see :func:`bwd_dq_kernel`). DOCS:
    masked tiles hide keys of other documents (``_same_doc``)."""
    tcol = offs_n.to(tl.float32)
    for i in range(lo, hi):
        n0 = i * BLOCK_N
        offs_k = n0 + offs_n
        if MASKED:
            kt = tl.load(k_base + offs_k[None, :] * skn + offs_d[:, None], mask=offs_k[None, :] < Tk, other=0.0)
            vt = tl.load(v_base + offs_k[None, :] * svn + offs_d[:, None], mask=offs_k[None, :] < Tk, other=0.0)
        else:
            kt = tl.load(k_base + offs_k[None, :] * skn + offs_d[:, None])
            vt = tl.load(v_base + offs_k[None, :] * svn + offs_d[:, None])
        qk = tl.dot(q, kt)
        trow = (q_offset + offs_m - n0).to(tl.float32)
        idx_row = q_offset + offs_m - n0 - (BLOCK_N - 1)
        s, bsl = _logits(qk, trow, tcol, idx_row, zcol, COEF, coef_len, slope2, qk_scale, inv_tau, A2, K2,
                         NEG_GAMMA, MODE, ORDER, not CAUSAL, USE_ASM)
        p = tl.math.exp2(s - lse[:, None])
        if MASKED:
            vis = offs_k[None, :] < Tk
            if CAUSAL:
                vis = vis & (offs_k[None, :] <= q_offset + offs_m[:, None])
            if DOCS:
                vis = vis & _same_doc(DOC_START, ds_row, offs_k, Tk)
            p = tl.where(vis, p, 0.0)
        dp = tl.dot(do, vt)
        if ROW_TERM:
            dq = dq + tl.sum(p * dp, 1)[:, None]
        else:
            ds = p * (dp - delta[:, None])
            if MODE == 1:
                ds = ds * bsl
                if MASKED:
                    ds = tl.where(vis, ds, 0.0)
            dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq)
    return dq


@triton.jit(do_not_specialize=["BH", "Tq", "Tk", "q_offset", "coef_len", "T1", "T2", "T3"])
def bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, COEF, SLOPES, DOC_START, DOC_END,
                  sqb, sqh, sqm, skb, skh, skn, svb, svh, svn, sdob, sdoh, sdom, sdqb, sdqh, sdqm,
                  BH, H, G, Tq, Tk, q_offset, coef_len,
                  qk_scale, inv_tau, A2, K2, NEG_GAMMA, DS_SCALE, T1, T2, T3,
                  HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MODE: tl.constexpr,
                  CAUSAL: tl.constexpr, USE_ASM: tl.constexpr, ROW_TERM: tl.constexpr = False,
                  VARLEN: tl.constexpr = False):
    """dQ of one query tile; with ROW_TERM, the exact row term DELTA[bh, m] = Σ_j P_mj·dP_mj of the tile instead.
    The key tiles as in ``fwd_kernel`` (VARLEN: packed documents, ``_doc_tiles``).

    The row term of dL = P∘(dP − Δ) is usually taken as Δ = rowsum(dO∘O) from the stored output, which the
    forward rounded to the input dtype after a P·V product with P rounded too. Where attention is peaked
    (P_mj ≈ 1 for one key) dP_mj − Δ cancels to a small number and that rounding dominates it: dK and dQ lose
    their leading digits. Summing Δ from the same P and dP the gradient kernels recompute keeps it consistent.
    """
    pid_m, bh = _schedule(True)
    if bh >= BH:
        return
    b = bh // H
    h = bh % H
    hk = h // G
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Tq
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m[:, None] * sqm + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b.to(tl.int64) * sdob + h.to(tl.int64) * sdoh + offs_m[:, None] * sdom + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * Tq + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + bh.to(tl.int64) * Tq + offs_m, mask=row_ok, other=0.0)
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    slope2 = 0.0
    if MODE == 2:
        slope2 = tl.load(SLOPES + h)
    half = (BLOCK_N - 1) * 0.5
    zcol = (half - offs_n.to(tl.float32)) / half
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    if CAUSAL:
        row_last = tl.minimum(m0 + BLOCK_M, Tq) - 1
        n_end = tl.cdiv(tl.minimum(Tk, q_offset + row_last + 1), BLOCK_N)
        n_full = tl.minimum((q_offset + m0 + 1) // BLOCK_N, Tk // BLOCK_N)
    else:
        n_end = tl.cdiv(Tk, BLOCK_N)
        n_full = Tk // BLOCK_N
    if VARLEN:
        n_lo, n_start, n_full, n_end, ds_row = _doc_tiles(DOC_START, DOC_END, offs_m, m0, Tq, n_full, n_end,
                                                          BLOCK_M, BLOCK_N, CAUSAL)
        dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, skn, svn, offs_m, offs_n, offs_d, n_lo, n_start,
                       q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2, NEG_GAMMA, BLOCK_N,
                       MODE, 0, True, CAUSAL, USE_ASM, ROW_TERM, True, DOC_START, ds_row)
    else:
        n_start = 0
        ds_row = offs_m
    if MODE == 1 and CAUSAL:
        base_x = q_offset + m0 - BLOCK_N + 1
        n1 = tl.maximum(tl.minimum(_count_far(base_x - T1, BLOCK_N), n_full), n_start)
        n2 = tl.maximum(tl.minimum(_count_far(base_x - T2, BLOCK_N), n_full), n1)
        n3 = tl.maximum(tl.minimum(_count_far(base_x - T3, BLOCK_N), n_full), n2)
        dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, skn, svn, offs_m, offs_n, offs_d, n_start, n1,
                       q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2, NEG_GAMMA,
                       BLOCK_N, MODE, 1, False, CAUSAL, USE_ASM, ROW_TERM)
        dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, skn, svn, offs_m, offs_n, offs_d, n1, n2,
                       q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2, NEG_GAMMA,
                       BLOCK_N, MODE, 2, False, CAUSAL, USE_ASM, ROW_TERM)
        dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, skn, svn, offs_m, offs_n, offs_d, n2, n3,
                       q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2, NEG_GAMMA,
                       BLOCK_N, MODE, 3, False, CAUSAL, USE_ASM, ROW_TERM)
        dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, skn, svn, offs_m, offs_n, offs_d, n3, n_full,
                       q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2, NEG_GAMMA,
                       BLOCK_N, MODE, 0, False, CAUSAL, USE_ASM, ROW_TERM)
    else:
        dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, skn, svn, offs_m, offs_n, offs_d, n_start, n_full,
                       q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2, NEG_GAMMA,
                       BLOCK_N, MODE, 0, False, CAUSAL, USE_ASM, ROW_TERM)
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, skn, svn, offs_m, offs_n, offs_d, n_full, n_end,
                   q_offset, Tk, COEF, coef_len, zcol, slope2, qk_scale, inv_tau, A2, K2, NEG_GAMMA, BLOCK_N,
                   MODE, 0, True, CAUSAL, USE_ASM, ROW_TERM, VARLEN, DOC_START, ds_row)
    if ROW_TERM:  # every column holds the same sum
        tl.store(DELTA + bh.to(tl.int64) * Tq + offs_m, tl.max(dq, 1), mask=row_ok)
    else:
        tl.store(DQ + b.to(tl.int64) * sdqb + h.to(tl.int64) * sdqh + offs_m[:, None] * sdqm + offs_d[None, :],
                 (dq * DS_SCALE).to(DQ.dtype.element_ty), mask=row_ok[:, None])


# ---------------------------------------------------------------------------------------------------- decode
@triton.jit(do_not_specialize=["Tq", "Tk", "q_offset", "chunk"])
def decode_split_kernel(Q, K, V, OP, LP, SLOPES,
                        sqb, sqh, sqm, skb, skh, skn, svb, svh, svn,
                        Hkv, G, Tq, Tk, q_offset, chunk,
                        qk_scale, inv_tau, A2, K2, NEG_GAMMA,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        MODE: tl.constexpr, CAUSAL: tl.constexpr, USE_ASM: tl.constexpr):
    """Split-K decoding: the G·Tq query rows of one kv head against keys [split·chunk, (split+1)·chunk).

    Writes the split's normalised output OP[bhk, split, row, :] and log2-sum-exp LP[bhk, split, row]
    (−inf where no key of the split is visible)."""
    split = tl.program_id(0)
    n_splits = tl.num_programs(0)
    bhk = tl.program_id(1)
    b = bhk // Hkv
    hk = bhk % Hkv
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < G * Tq
    g = rows // Tq
    r = rows % Tq
    h = hk * G + g
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    q = tl.load(Q + b.to(tl.int64) * sqb + h.to(tl.int64)[:, None] * sqh + r[:, None] * sqm + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    slope2 = tl.zeros([BLOCK_M], tl.float32)
    if MODE == 2:
        slope2 = tl.load(SLOPES + h, mask=row_ok, other=0.0)
    k_base = K + b.to(tl.int64) * skb + hk.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + hk.to(tl.int64) * svh
    qpos = (q_offset + r).to(tl.float32)
    c_lo = split * chunk
    c_hi = tl.minimum(Tk, c_lo + chunk)
    if CAUSAL:
        c_hi = tl.minimum(c_hi, q_offset + Tq)
    m_i = tl.full([BLOCK_M], NEG_INF, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for n0 in range(c_lo, c_hi, BLOCK_N):
        offs_k = n0 + offs_n
        kmask = offs_k < c_hi
        kt = tl.load(k_base + offs_k[None, :] * skn + offs_d[:, None], mask=kmask[None, :], other=0.0)
        vt = tl.load(v_base + offs_k[:, None] * svn + offs_d[None, :], mask=kmask[:, None], other=0.0)
        qk = tl.dot(q, kt)
        t = qpos[:, None] - offs_k.to(tl.float32)[None, :]
        if not CAUSAL:
            t = tl.abs(t)
        if MODE == 1:
            b2 = A2 * _lg2(t * inv_tau + 1.0, USE_ASM) + K2
            bsl = _sqrt(b2, USE_ASM)
            s = bsl * (qk + NEG_GAMMA * bsl)
        elif MODE == 2:
            s = qk * qk_scale - slope2[:, None] * t
        else:
            s = qk * qk_scale
        vis = kmask[None, :]
        if CAUSAL:
            vis = vis & (t >= 0)
        s = tl.where(vis, s, NEG_INF)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == NEG_INF, 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
        m_i = m_new
    has = l_i > 0.0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), NEG_INF)
    part = (bhk.to(tl.int64) * n_splits + split) * BLOCK_M
    tl.store(LP + part + rows, lse)
    tl.store(OP + (part + rows[:, None]) * HEAD_DIM + offs_d[None, :], out)


@triton.jit
def decode_combine_kernel(OP, LP, O, sob, soh, som, Hkv, G, Tq, n_splits,
                          HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr):
    """out[row] = Σ_s 2^(LP_s − M)·OP_s / Σ_s 2^(LP_s − M) over the splits of one query row."""
    row = tl.program_id(0)
    bhk = tl.program_id(1)
    b = bhk // Hkv
    hk = bhk % Hkv
    g = row // Tq
    r = row % Tq
    h = hk * G + g
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    s_ok = offs_s < n_splits
    part = (bhk.to(tl.int64) * n_splits + offs_s) * BLOCK_M + row
    lse = tl.load(LP + part, mask=s_ok, other=NEG_INF)
    m = tl.max(lse, 0)
    w = tl.math.exp2(lse - m)
    o = tl.load(OP + part[:, None] * HEAD_DIM + offs_d[None, :], mask=s_ok[:, None], other=0.0)
    out = tl.sum(w[:, None] * o, 0) / tl.sum(w, 0)
    tl.store(O + b.to(tl.int64) * sob + h.to(tl.int64) * soh + r * som + offs_d, out.to(O.dtype.element_ty))
