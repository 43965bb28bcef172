# ruff: noqa: NPY002  (numba-compiled code can only use the legacy np.random API; it is
# seeded from the caller's Generator, so runs are reproducible from `rng=`)
"""Numba kernels of the degradation KMC (rejection-free BKL/Gillespie event loop).

Rates are grouped into classes whose members share one rate constant (surface Br, bulk Br,
adatoms, surface Cs, thermal-desorption classes of Br by coordination) plus the size-dependent
cluster hops and Pb⁰ detachment from clusters; a class is chosen with
probability proportional to its total rate and a member uniformly (or by weight for
clusters), so every step executes an event: Bortz, Kalos & Lebowitz, J. Comput. Phys. 17,
10 (1975); Gillespie, J. Comput. Phys. 22, 403 (1976).  A Pb⁰ adatom or cluster may
enter a free node next to a host B site (or on the support film), or any free node lower
along lab z (unsupported Pb⁰ falls towards the support).  Adatoms are kept in seven
buckets by the number ``b`` of their hop directions not blocked by a host B site (rate
``b·Γ/6``), so hops into the crystal are never attempted; a hop onto another adatom or into
unsupported vacuum is a null event (time still advances exactly, uniformisation).

Thermal Br desorption: every Br sits in one of ``N_TKEYS`` classes, key ``1 + 2q + bulk``
(``q`` its coordination, see :data:`perovstem.simulate.kmc_params.BR_COORDINATION_FACE`;
key 0 = desorbed), stored as contiguous segments of one array so that moving a Br between
classes costs one swap per class boundary crossed; ``q`` drops by one for each B site removed
from the node blocks around its two ends.

State is held in plain arrays grouped in tuples (see :mod:`perovstem.simulate.kmc`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

KIND_CS, KIND_PB, KIND_CD, KIND_BR = 0, 1, 2, 3
EV_BIRTH, EV_MERGE, EV_DEATH = 0, 1, 2
# nucleation site classes (host B sites among the 26 neighbours: ≤ 4, 5–7, ≥ 8; support film)
SITE_CORNER, SITE_EDGE, SITE_FACE, SITE_SUPPORT = 0, 1, 2, 3

# counters
C_NSURF, C_NBULK, C_NAD, C_NLIVE, C_NEXTID, C_NEV, C_NCS_SURF = 0, 1, 2, 3, 4, 5, 6
C_BR_DES_TOTAL, C_PENDING, C_NPB, C_NCS, C_NB, C_NBR = 7, 8, 9, 10, 11, 12
C_DES_SURF, C_DES_BULK, C_REDUCED, C_HOP_ACC, C_HOP_REJ, C_BIRTHS, C_MERGES = (
    13,
    14,
    15,
    16,
    17,
    18,
    19,
)
C_ATTACH, C_CS_LOST, C_CD_LOST, C_STRIPS, C_CL_HOPS, C_STEPS, C_NUC_REJ = (
    20,
    21,
    22,
    23,
    24,
    25,
    26,
)
C_NCLATOMS = 27
C_DES_TH, C_DETACH, C_DEATHS = 28, 29, 30
C_BR_ORPHANED = 31  # host Br that left with their last cation neighbour (I_ORPHAN)
N_COUNTERS = 32
FRAME_COUNTERS = slice(13, 27)
FRAME_COUNTERS_2 = slice(28, 32)

# float params
P_KSURF, P_KBULK, P_GAMMA, P_CLMOB, P_CLALPHA, P_KSTRIP, P_MINCS = 0, 1, 2, 3, 4, 5, 6
P_RCOEF, P_CAPTURE, P_GAP, P_HALFA, P_PCORNER, P_PEDGE, P_PFACE = 7, 8, 9, 10, 11, 12, 13
P_KTHREF = 14  # thermal desorption rate of a face Br (q = 26), s⁻¹ (exposure reference)
N_FPARAMS = 15
# int params
I_NCRIT, I_BRPERPB, I_SHRINK, I_NUCLEATE, I_CLMIG, I_ORPHAN = 0, 1, 2, 3, 4, 5
N_IPARAMS = 6
# float state
S_WSUM, S_TIME, S_EXPO_SURF, S_EXPO_BULK = 0, 1, 2, 3  # exposures: ∫ n_Br dt (s)
S_COMP_TH, S_DSUM = 4, 5  # ∫ r_thermal dt (expected thermal desorptions); Σ detachment rates
S_COMP_DET = 6  # ∫ r_detach dt (expected detachments)
N_FSTATE = 7
# thermal Br classes: key 0 = desorbed, 1 + 2q + bulk for q = 0 … 52
N_TKEYS = 1 + 2 * 53


@njit(cache=True)
def seed(s):
    np.random.seed(s)


@njit(cache=True)
def _list_add(lst, where, counters, ci, item):
    k = counters[ci]
    lst[k] = item
    where[item] = k
    counters[ci] = k + 1


@njit(cache=True)
def _list_remove(lst, where, counters, ci, item):
    k = where[item]
    last = counters[ci] - 1
    moved = lst[last]
    lst[k] = moved
    where[moved] = k
    where[item] = -1
    counters[ci] = last


@njit(cache=True)
def _tb_move(h, b, L):
    """Move Br ``h`` to thermal class ``b`` (segmented array; one swap per boundary)."""
    arr, pos, key, start, kth, rate = L[7], L[8], L[9], L[10], L[11], L[12]
    a = key[h]
    if a == b:
        return
    if b < a:
        for k in range(a, b, -1):
            p = pos[h]
            f = start[k]
            o = arr[f]
            arr[f] = h
            pos[h] = f
            arr[p] = o
            pos[o] = p
            start[k] = f + 1
    else:
        for k in range(a, b):
            p = pos[h]
            last = start[k + 1] - 1
            o = arr[last]
            arr[last] = h
            pos[h] = last
            arr[p] = o
            pos[o] = p
            start[k + 1] = last
    key[h] = b
    rate[0] += kth[b] - kth[a]


@njit(cache=True)
def thermal_rate(L):
    """Exact total thermal desorption rate Σ_k n_k·k_k (also stored in ``L[12][0]``)."""
    start, kth = L[10], L[11]
    r = 0.0
    for k in range(1, N_TKEYS):
        r += (start[k + 1] - start[k]) * kth[k]
    L[12][0] = r
    return r


@njit(cache=True)
def _remove_host(h0, H, L, N, A, counters, ip):
    present, kind, nb_ptr, nb_idx, node_of, cnt_br, cnt_b, cnt_cs, host_pos = H
    surf_list, surf_where, bulk_list, bulk_where, cs_list, cs_where, stack = L[:7]
    node_host, host_nb = N[0], N[1]
    off26 = N[7]
    shrink = ip[I_SHRINK] != 0
    orphan = shrink and ip[I_ORPHAN] != 0
    stack[0] = h0
    top = 1
    while top > 0:
        top -= 1
        h = stack[top]
        if not present[h]:
            continue
        present[h] = False
        k = kind[h]
        if k == KIND_BR:
            if surf_where[h] >= 0:
                _list_remove(surf_list, surf_where, counters, C_NSURF, h)
            elif bulk_where[h] >= 0:
                _list_remove(bulk_list, bulk_where, counters, C_NBULK, h)
            counters[C_NBR] -= 1
            if L[8][h] >= 0:
                _tb_move(h, 0, L)
        elif k == KIND_CS:
            if cs_where[h] >= 0:
                _list_remove(cs_list, cs_where, counters, C_NCS_SURF, h)
            counters[C_NCS] -= 1
            counters[C_CS_LOST] += 1
        else:
            nd = node_of[h]
            node_host[nd] = False
            node_br, tkey = N[11], L[9]
            for o in off26:
                host_nb[nd + o] -= 1
                for s in range(6):  # Br bridging this node lose one unit of coordination
                    b = node_br[nd + o, s]
                    if b >= 0 and present[b] and tkey[b] >= 3:
                        _tb_move(b, tkey[b] - 2, L)
            for o in N[6]:  # adatoms next to this site gain an open hop direction
                if N[2][nd + o] != -1:
                    _rebucket(nd + o, N, A, counters)
            counters[C_NB] -= 1
            if k == KIND_PB:
                counters[C_NPB] -= 1
            else:
                counters[C_CD_LOST] += 1
        for p in range(nb_ptr[h], nb_ptr[h + 1]):
            m = nb_idx[p]
            if not present[m]:
                continue
            if k == KIND_BR:
                cnt_br[m] -= 1
            elif k == KIND_CS:
                cnt_cs[m] -= 1
            else:
                cnt_b[m] -= 1
            km = kind[m]
            if km == KIND_BR:
                if orphan and k != KIND_BR and cnt_b[m] == 0 and cnt_cs[m] == 0:
                    # its last cation has gone: a Br⁻ with no cation neighbour leaves too
                    # (once: pushed at the removal of its last cation only, so a Br neighbour
                    # leaving later in the same cascade cannot push it again)
                    counters[C_BR_ORPHANED] += 1
                    stack[top] = m
                    top += 1
                elif bulk_where[m] >= 0:
                    _list_remove(bulk_list, bulk_where, counters, C_NBULK, m)
                    _list_add(surf_list, surf_where, counters, C_NSURF, m)
                    if L[8][m] >= 0 and L[9][m] >= 2:
                        _tb_move(m, L[9][m] - 1, L)
            elif km == KIND_CS:
                if shrink and (cnt_br[m] == 0 or cnt_b[m] == 0):
                    stack[top] = m
                    top += 1
                elif cs_where[m] < 0:
                    _list_add(cs_list, cs_where, counters, C_NCS_SURF, m)
            elif km == KIND_CD:
                if shrink and cnt_br[m] == 0:
                    stack[top] = m
                    top += 1


@njit(cache=True)
def _radius(n, fp):
    return fp[P_RCOEF] * n ** (1.0 / 3.0)


@njit(cache=True)
def _dist(a, b):
    return math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (a[2] - b[2]) ** 2)


@njit(cache=True)
def _update_centre(c, N, C, fp):
    node_pos, node_out = N[3], N[4]
    cl_n, cl_anchor, cl_centre, cl_R = C[1], C[2], C[3], C[4]
    r = _radius(cl_n[c], fp)
    cl_R[c] = r
    a = cl_anchor[c]
    lift = max(r - fp[P_HALFA], 0.0)
    for d in range(3):
        cl_centre[c, d] = node_pos[a, d] + node_out[a, d] * lift


@njit(cache=True)
def _weight_sum(C, counters, fp, fs):
    """Set ``fs[S_WSUM]`` = Σ n^(−α) (cluster hops) and ``fs[S_DSUM]`` = Σ k_det(n)."""
    cl_n, cl_live, det_tab = C[1], C[5], C[8]
    s = 0.0
    d = 0.0
    for i in range(counters[C_NLIVE]):
        n = cl_n[cl_live[i]]
        s += n ** (-fp[P_CLALPHA])
        d += det_tab[n]
    fs[S_WSUM] = s
    fs[S_DSUM] = d


@njit(cache=True)
def _capture(nd, N, C, counters, fp):
    node_pos = N[3]
    cl_centre, cl_R, cl_live = C[3], C[4], C[5]
    best = -1
    bestd = 1e300
    cap = fp[P_CAPTURE]
    for i in range(counters[C_NLIVE]):
        c = cl_live[i]
        d = _dist(node_pos[nd], cl_centre[c]) - cl_R[c]
        if d <= cap and d < bestd:
            bestd = d
            best = c
    return best


@njit(cache=True)
def _n_open(nd, N):
    """Number of the six hop directions of node ``nd`` not blocked by a host B site."""
    k = 0
    for o in N[6]:
        t = nd + o
        if not N[0][t] and not N[5][t]:
            k += 1
    return k


@njit(cache=True)
def _add_adatom(nd, N, A, counters):
    """Put an adatom on node ``nd``, in the bucket of its number of open directions."""
    lst, cnt = A
    cap = lst.shape[1]
    b = _n_open(nd, N)
    i = cnt[b]
    lst[b, i] = nd
    cnt[b] = i + 1
    N[2][nd] = b * cap + i
    counters[C_NAD] += 1


@njit(cache=True)
def _remove_adatom_at(nd, N, A, counters):
    """Remove the adatom at node ``nd`` (``node_ad = bucket·cap + index``)."""
    lst, cnt = A
    cap = lst.shape[1]
    node_ad = N[2]
    code = node_ad[nd]
    b = code // cap
    i = code - b * cap
    last = cnt[b] - 1
    moved = lst[b, last]
    lst[b, i] = moved
    node_ad[moved] = b * cap + i
    node_ad[nd] = -1
    cnt[b] = last
    counters[C_NAD] -= 1


@njit(cache=True)
def _rebucket(nd, N, A, counters):
    _remove_adatom_at(nd, N, A, counters)
    _add_adatom(nd, N, A, counters)


@njit(cache=True)
def _log_event(kind, cid, p1, p2, n, site, E, counters, fs):
    ev_kind, ev_time, ev_id, ev_p1, ev_p2, ev_n, ev_site = E
    e = counters[C_NEV]
    ev_kind[e] = kind
    ev_time[e] = fs[S_TIME]
    ev_id[e] = cid
    ev_p1[e] = p1
    ev_p2[e] = p2
    ev_n[e] = n
    ev_site[e] = site
    counters[C_NEV] = e + 1


@njit(cache=True)
def _new_cluster(n, anchor, N, C, counters, fp):
    cl_alive, cl_n, cl_anchor, cl_live, cl_where = C[0], C[1], C[2], C[5], C[6]
    c = counters[C_NEXTID]
    counters[C_NEXTID] = c + 1
    cl_alive[c] = True
    cl_n[c] = n
    cl_anchor[c] = anchor
    _list_add(cl_live, cl_where, counters, C_NLIVE, c)
    _update_centre(c, N, C, fp)
    return c


@njit(cache=True)
def _valid_anchor(nd, N):
    return (not N[5][nd]) and (not N[0][nd])


@njit(cache=True)
def _merge(c, j, N, C, E, counters, fp, fs):
    node_pos, off26, inv_m, grid = N[3], N[7], N[8], N[9]
    cl_alive, cl_n, cl_anchor, cl_live, cl_where = C[0], C[1], C[2], C[5], C[6]
    nc = cl_n[c]
    nj = cl_n[j]
    n = nc + nj
    wp = np.empty(3)
    for d in range(3):
        wp[d] = (nc * node_pos[cl_anchor[c], d] + nj * node_pos[cl_anchor[j], d]) / n
    # nearest node to the mass-weighted anchor position
    ijk = np.empty(3, dtype=np.int64)
    for d in range(3):
        f = 0.0
        for e in range(3):
            f += (wp[e] - node_pos[0, e]) * inv_m[e, d]
        v = int(np.rint(f))
        ijk[d] = min(max(v, 1), grid[d] - 2)
    cand = (ijk[0] * grid[1] + ijk[1]) * grid[2] + ijk[2]
    anchor = -1
    if _valid_anchor(cand, N):
        anchor = cand
    else:
        bestd = 1e300
        for o in off26:
            nd = cand + o
            if _valid_anchor(nd, N):
                dd = _dist(node_pos[nd], wp)
                if dd < bestd:
                    bestd = dd
                    anchor = nd
    if anchor < 0:
        anchor = cl_anchor[c] if nc >= nj else cl_anchor[j]
    cl_alive[c] = False
    cl_alive[j] = False
    _list_remove(cl_live, cl_where, counters, C_NLIVE, c)
    _list_remove(cl_live, cl_where, counters, C_NLIVE, j)
    e_id = _new_cluster(n, anchor, N, C, counters, fp)
    _log_event(EV_MERGE, e_id, c, j, n, -1, E, counters, fs)
    counters[C_MERGES] += 1
    return e_id


@njit(cache=True)
def _post_change(c, N, A, C, E, counters, fp, fs):
    """Absorb adatoms inside the capture shell of cluster ``c`` and merge touching clusters."""
    node_pos = N[3]
    cl_n, cl_centre, cl_R, cl_live = C[1], C[3], C[4], C[5]
    cap = fp[P_CAPTURE]
    while True:
        absorbed = False
        for b in range(7):
            i = A[1][b] - 1
            while i >= 0:
                nd = A[0][b, i]
                if _dist(node_pos[nd], cl_centre[c]) <= cl_R[c] + cap:
                    _remove_adatom_at(nd, N, A, counters)
                    cl_n[c] += 1
                    counters[C_ATTACH] += 1
                    counters[C_NCLATOMS] += 1
                    absorbed = True
                i -= 1
        if absorbed:
            _update_centre(c, N, C, fp)
            continue
        merged = False
        for ii in range(counters[C_NLIVE]):
            j = cl_live[ii]
            if j == c:
                continue
            if _dist(cl_centre[c], cl_centre[j]) <= cl_R[c] + cl_R[j] + fp[P_GAP]:
                c = _merge(c, j, N, C, E, counters, fp, fs)
                merged = True
                break
        if not merged:
            break
    _weight_sum(C, counters, fp, fs)


@njit(cache=True)
def _arrive(nd, N, A, C, E, counters, fp, ip, fs):
    """An adatom has arrived at node ``nd``: capture by a cluster, or try to nucleate."""
    host_nb, node_ad, off26 = N[1], N[2], N[7]
    cl_n = C[1]
    c = _capture(nd, N, C, counters, fp)
    if c >= 0:
        _remove_adatom_at(nd, N, A, counters)
        cl_n[c] += 1
        counters[C_ATTACH] += 1
        counters[C_NCLATOMS] += 1
        _update_centre(c, N, C, fp)
        _post_change(c, N, A, C, E, counters, fp, fs)
        return
    if ip[I_NUCLEATE] == 0:
        return
    m = 0
    for o in off26:
        if node_ad[nd + o] != -1:
            m += 1
    if m + 1 < ip[I_NCRIT]:
        return
    h = host_nb[nd]
    if N[10][nd]:  # support film: a flat face
        h -= 9
        site = SITE_SUPPORT
        w = fp[P_PFACE]
    elif h <= 4:
        site = SITE_CORNER
        w = fp[P_PCORNER]
    elif h <= 7:
        site = SITE_EDGE
        w = fp[P_PEDGE]
    else:
        site = SITE_FACE
        w = fp[P_PFACE]
    if np.random.random() >= w:
        counters[C_NUC_REJ] += 1
        return
    _remove_adatom_at(nd, N, A, counters)
    for o in off26:
        if node_ad[nd + o] != -1:
            _remove_adatom_at(nd + o, N, A, counters)
    c = _new_cluster(m + 1, nd, N, C, counters, fp)
    counters[C_NCLATOMS] += m + 1
    _log_event(EV_BIRTH, c, -1, -1, m + 1, site, E, counters, fs)
    counters[C_BIRTHS] += 1
    _post_change(c, N, A, C, E, counters, fp, fs)


@njit(cache=True)
def _free_nodes_near(c, r_min, r_max, N, C, fp):
    """Free, supported nodes (touching a host B site or on the support film, no adatom) at
    distance ``r_min < d ≤ r_max`` (Å) from the centre of cluster ``c``."""
    node_host, host_nb, node_ad, node_pos, node_border, grid = N[0], N[1], N[2], N[3], N[5], N[9]
    centre = C[3][c]
    anchor = C[2][c]
    ny, nz = grid[1], grid[2]
    i0 = anchor // (ny * nz)
    j0 = (anchor // nz) % ny
    k0 = anchor % nz
    w = int(r_max / (1.8 * fp[P_HALFA])) + 2
    out = np.empty((2 * w + 1) ** 3, np.int64)
    m = 0
    for i in range(max(i0 - w, 0), min(i0 + w + 1, grid[0])):
        for j in range(max(j0 - w, 0), min(j0 + w + 1, ny)):
            for k in range(max(k0 - w, 0), min(k0 + w + 1, nz)):
                nd = (i * ny + j) * nz + k
                if node_host[nd] or node_border[nd] or node_ad[nd] != -1 or host_nb[nd] <= 0:
                    continue
                d = _dist(node_pos[nd], centre)
                if r_min < d <= r_max:
                    out[m] = nd
                    m += 1
    return out[:m]


@njit(cache=True)
def _detach(c, N, A, C, E, counters, fp, ip, fs):
    """One Pb⁰ atom leaves cluster ``c`` and becomes an adatom just outside its capture
    shell; a cluster left with fewer than ``critical_nucleus`` atoms dissolves into adatoms
    (death event).  A null event if no free supported node is found."""
    cl_alive, cl_n, cl_R, cl_live, cl_where = C[0], C[1], C[4], C[5], C[6]
    n = cl_n[c]
    cap = fp[P_CAPTURE]
    a = 2.0 * fp[P_HALFA]
    if n - 1 < ip[I_NCRIT]:
        cand = _free_nodes_near(c, -1.0, cl_R[c] + cap + a, N, C, fp)
        if cand.size < n:
            counters[C_HOP_REJ] += 1
            return
        for i in range(n):  # n distinct random nodes (partial Fisher–Yates)
            r = i + np.random.randint(0, cand.size - i)
            tmp = cand[i]
            cand[i] = cand[r]
            cand[r] = tmp
        cl_alive[c] = False
        _list_remove(cl_live, cl_where, counters, C_NLIVE, c)
        counters[C_NCLATOMS] -= n
        for i in range(n):
            _add_adatom(cand[i], N, A, counters)
        _log_event(EV_DEATH, c, -1, -1, n, -1, E, counters, fs)
        counters[C_DEATHS] += 1
        counters[C_DETACH] += 1
        _weight_sum(C, counters, fp, fs)
        return
    cl_n[c] = n - 1
    _update_centre(c, N, C, fp)
    r0 = cl_R[c] + cap
    cand = _free_nodes_near(c, r0, r0 + a, N, C, fp)
    if cand.size == 0:
        cand = _free_nodes_near(c, r0, r0 + 2.0 * a, N, C, fp)
    if cand.size == 0:
        cl_n[c] = n
        _update_centre(c, N, C, fp)
        counters[C_HOP_REJ] += 1
        return
    nd = cand[np.random.randint(0, cand.size)]
    counters[C_NCLATOMS] -= 1
    counters[C_DETACH] += 1
    _post_change(c, N, A, C, E, counters, fp, fs)
    _add_adatom(nd, N, A, counters)
    _arrive(nd, N, A, C, E, counters, fp, ip, fs)


@njit(cache=True)
def _reduce_near(h, H, L, N, A, C, E, counters, fp, ip, fs):
    """Reduce the host Pb²⁺ next to the lost Br ``h`` (fewest Br left) to a Pb⁰ adatom."""
    present, kind, nb_ptr, nb_idx, node_of, cnt_br = H[0], H[1], H[2], H[3], H[4], H[5]
    host_pos = H[8]
    node_ad = N[2]
    best = -1
    bestc = 1 << 30
    for p in range(nb_ptr[h], nb_ptr[h + 1]):
        m = nb_idx[p]
        if present[m] and kind[m] == KIND_PB and cnt_br[m] < bestc:
            bestc = cnt_br[m]
            best = m
    if best < 0:
        bestd = 1e300
        for m in range(kind.size):
            if present[m] and kind[m] == KIND_PB:
                d = _dist(host_pos[m], host_pos[h])
                if d < bestd:
                    bestd = d
                    best = m
    if best < 0:
        return
    counters[C_PENDING] -= ip[I_BRPERPB]
    nd = node_of[best]
    _remove_host(best, H, L, N, A, counters, ip)
    counters[C_REDUCED] += 1
    if node_ad[nd] == -1:
        _add_adatom(nd, N, A, counters)
        _arrive(nd, N, A, C, E, counters, fp, ip, fs)


@njit(cache=True)
def _desorb(h, H, L, N, A, C, E, counters, fp, ip, fs):
    _remove_host(h, H, L, N, A, counters, ip)
    counters[C_BR_DES_TOTAL] += 1
    counters[C_PENDING] += 1
    if counters[C_PENDING] >= ip[I_BRPERPB] and counters[C_NPB] > 0:
        _reduce_near(h, H, L, N, A, C, E, counters, fp, ip, fs)


@njit(cache=True)
def _strip(H, L, N, A, counters, ip):
    """CsBr stripping: a random surface Cs leaves together with one of its Br."""
    present, kind, nb_ptr, nb_idx = H[0], H[1], H[2], H[3]
    cs_list, surf_where = L[4], L[1]
    c = cs_list[np.random.randint(0, counters[C_NCS_SURF])]
    pick = -1
    for p in range(nb_ptr[c], nb_ptr[c + 1]):
        m = nb_idx[p]
        if present[m] and kind[m] == KIND_BR:
            if surf_where[m] >= 0:
                pick = m
                break
            if pick < 0:
                pick = m
    if pick >= 0:
        _remove_host(pick, H, L, N, A, counters, ip)
    _remove_host(c, H, L, N, A, counters, ip)
    counters[C_STRIPS] += 1


@njit(cache=True)
def _is_lower(tgt, cur, N):
    """True if node ``tgt`` is lower (lab z) than ``cur``: unsupported Pb⁰ may fall."""
    return N[3][tgt, 2] < N[3][cur, 2] - 1e-6


@njit(cache=True)
def run_interval(t, t_end, H, L, N, A, C, E, counters, fp, ip, fs, max_steps):
    """Advance the state from time ``t`` to ``t_end`` (s); return the time reached.

    Stops early (returning a time < ``t_end``) only after ``max_steps`` steps.
    """
    surf_list, bulk_list = L[0], L[2]
    node_host, host_nb, node_ad, node_border, off6 = N[0], N[1], N[2], N[5], N[6]
    ad_lst, ad_cnt = A
    cl_n, cl_anchor, cl_live = C[1], C[2], C[5]
    k_surf = fp[P_KSURF]
    k_bulk = fp[P_KBULK]
    gam = fp[P_GAMMA]
    k_strip = fp[P_KSTRIP]
    k_th_ref = fp[P_KTHREF]
    det_tab = C[8]
    cap_cl = C[0].shape[0]
    cap_ev = E[0].shape[0]
    thermal_rate(L)
    _weight_sum(C, counters, fp, fs)
    steps = 0
    while steps < max_steps:
        if (
            counters[C_NEXTID] + counters[C_NLIVE] + 8 >= cap_cl
            or counters[C_NEV] + counters[C_NLIVE] + 8 >= cap_ev
        ):
            return t  # the caller enlarges the cluster and event arrays

        r_s = counters[C_NSURF] * k_surf
        r_b = counters[C_NBULK] * k_bulk
        w_h = 0
        for b in range(1, 7):
            w_h += b * ad_cnt[b]
        r_h = w_h * gam / 6.0
        r_c = 0.0
        if ip[I_CLMIG] != 0 and counters[C_NLIVE] > 0:
            r_c = gam * fp[P_CLMOB] * fs[S_WSUM]
        r_g = 0.0
        if (
            k_strip > 0.0
            and counters[C_NCS_SURF] > 0
            and counters[C_NCS] > fp[P_MINCS] * counters[C_NB]
        ):
            r_g = counters[C_NCS_SURF] * k_strip
        r_t = max(L[12][0], 0.0) if k_th_ref > 0.0 else 0.0
        r_d = fs[S_DSUM] if counters[C_NLIVE] > 0 else 0.0
        r = r_s + r_b + r_h + r_c + r_g + r_t + r_d
        if r <= 0.0:
            fs[S_EXPO_SURF] += counters[C_NSURF] * (t_end - t)
            fs[S_EXPO_BULK] += counters[C_NBULK] * (t_end - t)
            return t_end
        dt = -math.log(1.0 - np.random.random()) / r
        if t + dt >= t_end:
            fs[S_EXPO_SURF] += counters[C_NSURF] * (t_end - t)
            fs[S_EXPO_BULK] += counters[C_NBULK] * (t_end - t)
            fs[S_COMP_TH] += r_t * (t_end - t)
            fs[S_COMP_DET] += r_d * (t_end - t)
            return t_end
        fs[S_EXPO_SURF] += counters[C_NSURF] * dt
        fs[S_EXPO_BULK] += counters[C_NBULK] * dt
        fs[S_COMP_TH] += r_t * dt
        fs[S_COMP_DET] += r_d * dt
        t += dt
        fs[S_TIME] = t
        steps += 1
        counters[C_STEPS] += 1
        x = np.random.random() * r
        if x < r_s:
            h = surf_list[np.random.randint(0, counters[C_NSURF])]
            counters[C_DES_SURF] += 1
            _desorb(h, H, L, N, A, C, E, counters, fp, ip, fs)
        elif x < r_s + r_b:
            h = bulk_list[np.random.randint(0, counters[C_NBULK])]
            counters[C_DES_BULK] += 1
            _desorb(h, H, L, N, A, C, E, counters, fp, ip, fs)
        elif x < r_s + r_b + r_h:
            # adatom with b open directions has rate b·Γ/6: pick bucket, adatom, direction
            y = (x - r_s - r_b) / (gam / 6.0)
            b = 6
            for bb in range(1, 7):
                wb = bb * ad_cnt[bb]
                if y < wb:
                    b = bb
                    break
                y -= wb
            i = min(int(y / b), ad_cnt[b] - 1)
            j = min(int(y - i * b), b - 1)
            nd = ad_lst[b, i]
            tgt = -1
            for o in off6:
                t2 = nd + o
                if not node_host[t2] and not node_border[t2]:
                    if j == 0:
                        tgt = t2
                        break
                    j -= 1
            ok = tgt >= 0 and node_ad[tgt] == -1
            if ok and host_nb[tgt] == 0 and not _is_lower(tgt, nd, N):
                ok = _capture(tgt, N, C, counters, fp) >= 0
            if not ok:
                counters[C_HOP_REJ] += 1
                continue
            counters[C_HOP_ACC] += 1
            _remove_adatom_at(nd, N, A, counters)
            _add_adatom(tgt, N, A, counters)
            _arrive(tgt, N, A, C, E, counters, fp, ip, fs)
        elif x < r_s + r_b + r_h + r_c:
            y = (x - r_s - r_b - r_h) / (gam * fp[P_CLMOB])
            c = cl_live[counters[C_NLIVE] - 1]
            acc = 0.0
            for ii in range(counters[C_NLIVE]):
                acc += cl_n[cl_live[ii]] ** (-fp[P_CLALPHA])
                if y < acc:
                    c = cl_live[ii]
                    break
            tgt = cl_anchor[c] + off6[np.random.randint(0, 6)]
            if (
                node_border[tgt]
                or node_host[tgt]
                or (host_nb[tgt] == 0 and not _is_lower(tgt, cl_anchor[c], N))
            ):
                counters[C_HOP_REJ] += 1
                continue
            cl_anchor[c] = tgt
            counters[C_CL_HOPS] += 1
            C[7][c] += 1
            _update_centre(c, N, C, fp)
            _post_change(c, N, A, C, E, counters, fp, fs)
        elif x < r_s + r_b + r_h + r_c + r_g:
            _strip(H, L, N, A, counters, ip)
        elif x < r_s + r_b + r_h + r_c + r_g + r_t:
            # thermal desorption: class by cumulative rate, then a member uniformly
            y = x - (r_s + r_b + r_h + r_c + r_g)
            start, kth, arr = L[10], L[11], L[7]
            h = -1
            for k in range(1, N_TKEYS):
                nk = start[k + 1] - start[k]
                if nk == 0 or kth[k] <= 0.0:
                    continue
                wk = nk * kth[k]
                if y < wk:
                    h = arr[start[k] + min(int(y / kth[k]), nk - 1)]
                    break
                y -= wk
            if h < 0:  # round-off of the running total: refresh it (null event)
                thermal_rate(L)
                continue
            counters[C_DES_TH] += 1
            _desorb(h, H, L, N, A, C, E, counters, fp, ip, fs)
        else:
            y = x - (r_s + r_b + r_h + r_c + r_g + r_t)
            c = -1
            for ii in range(counters[C_NLIVE]):
                cc = cl_live[ii]
                wk = det_tab[cl_n[cc]]
                if y < wk:
                    c = cc
                    break
                y -= wk
            if c < 0:  # round-off
                _weight_sum(C, counters, fp, fs)
                continue
            _detach(c, N, A, C, E, counters, fp, ip, fs)
    return t


@njit(cache=True)
def settle(N, A, C, E, counters, fp, ip, fs):
    """Process initial adatoms and clusters (captures, merges) before the first event."""
    n_live = counters[C_NLIVE]
    cl_live = C[5]
    for i in range(n_live):
        c = cl_live[i]
        if C[0][c]:
            _post_change(c, N, A, C, E, counters, fp, fs)
    nodes = np.empty(counters[C_NAD], np.int64)
    k = 0
    for b in range(7):
        for i in range(A[1][b]):
            nodes[k] = A[0][b, i]
            k += 1
    for nd in nodes:
        if N[2][nd] != -1:
            _arrive(nd, N, A, C, E, counters, fp, ip, fs)
    _weight_sum(C, counters, fp, fs)
