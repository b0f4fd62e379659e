"""Decode YOLOv8 detector output and run per-class NMS, in NumPy.

Mirrors `ultralytics.utils.nms.non_max_suppression` (single label per box, strict `>` on the
confidence threshold, at most 30000 candidates into NMS, classes separated by a 7680-pixel
offset, suppression when IoU > threshold) so that the served pipeline returns what
Ultralytics returns for the same network output.

The greedy NMS is exact (the same boxes in the same order as torchvision's kernel on the same
float32 inputs) but vectorised: a Python loop over every kept box cost half a second per image
when nothing is suppressed (CONF_THRESHOLD 0, IOU_THRESHOLD 1, MULTI_LABEL: thousands of kept
boxes), which held the CPU pipeline for tens of seconds per request. Even vectorised, greedy NMS
is quadratic in the kept boxes, so the server gives each image a counted budget of pairwise IoU
evaluations (`NMS_PAIRS_PER_ANCHOR`) and refuses, with a message naming the fix, a request that
needs more; it never truncates an answer silently.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from yolo_triton.pipeline.validation import InputError

MAX_NMS = 30000
MAX_WH = 7680

# Candidates resolved together: IoU of a block against every box kept so far, then inside the
# block. Measured on the 2-core CPU (ms per image, median of 7; pairwise IoU evaluations per
# anchor in brackets), blocks of 64 / 128 / 256:
#   1x1-px image, MULTI_LABEL, CONF 0, IOU 1 (nothing suppressed): 74.5 / 68.1 / 70.3 (3238 / 3332 / 3519)
#   bus.jpg, the validator's options (CONF 0.001, IOU 0.7, MULTI_LABEL, MAX_DET 300): 2.7 / 2.1 / 3.2 (69 / 86 / 139)
# Smaller blocks pay NumPy's per-call overhead, larger ones compute more of their own IoU matrix.
NMS_BLOCK = 128
# IoU pairs per NumPy call when a block meets the kept boxes: keeps the float32 temporaries
# (128 KB each) inside a core's 1 MB L2, and lets later chunks of kept boxes skip candidates an
# earlier chunk suppressed. Measured (ms per image; 1x1-px image, MULTI_LABEL, CONF 0, IOU 1,
# MAX_DET 850 / 10000), 8192: 12.3 / 55.2, 16384: 9.9 / 43.0, 32768: 9.1 / 39.4, 131072: 13.5 / 66.7.
CHUNK_PAIRS = 32768
# What one IoU call costs beyond its pairs, in pairs: NumPy's per-call overhead and the block's
# bookkeeping (measured: a block of 8 boxes, two calls, 32 us; ~140 M pairs/s), charged so that
# many small classes (80 at 640: hundreds of blocks an image) pay for what they cost.
CALL_PAIRS = 2048
# The server's bound on NMS work: pairwise IoU evaluations (CALL_PAIRS included) per image, per
# anchor of the network output; the network's own cost grows with its anchors (measured on the
# 2-core CPU: 7.4-9.3 us per anchor at 320 and at 640, whatever else runs), so the bound scales
# like it. The kernel evaluates 100-190 M pairs/s, so 800 pairs per anchor cost 0.4-0.8x the
# network. Measured at 320, just inside the budget (64 images of 1x1 px, MULTI_LABEL, CONF 0,
# IOU 1, MAX_DETECTIONS 850: 693 pairs per anchor, served): 0.83-1.0 s of NMS next to 1.14-1.25 s
# of network, under 2x in all; a refused request costs less (it stops where its budget runs out).
# What ordinary use needs (pairs per anchor, assets/samples at 320): the predict defaults <= 3;
# the validator's protocol (CONF_THRESHOLD 0.001, MULTI_LABEL, MAX_DETECTIONS 300) <= 102; CONF 0
# with MULTI_LABEL and MAX_DETECTIONS 300 <= 251; single-label CONF 0, IOU 1, MAX_DETECTIONS
# 10000 (every anchor kept) <= 609. MULTI_LABEL with CONF 0, IOU 1 and MAX_DETECTIONS 10000
# (6300 boxes kept an image) needs ~3300: refused.
NMS_PAIRS_PER_ANCHOR = 800


class Detections(NamedTuple):
    """Boxes are xyxy; one row per detection, best score first."""

    boxes: np.ndarray  # (n, 4) float32
    scores: np.ndarray  # (n,) float32
    classes: np.ndarray  # (n,) int32

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32))


class NmsBudgetExceeded(InputError):
    """NMS would need more pairwise IoU evaluations than the server allows one image."""


class PairBudget:
    """Pairwise IoU evaluations one image may still spend; counted, so a refusal is reproducible
    (the same request is refused on every machine, whatever its load)."""

    def __init__(self, pairs: int) -> None:
        self.total = self.left = int(pairs)

    @classmethod
    def for_anchors(cls, anchors: int) -> PairBudget:
        """The server's budget for one image of a network output with `anchors` columns."""
        return cls(NMS_PAIRS_PER_ANCHOR * anchors)

    @property
    def spent(self) -> int:
        return self.total - self.left

    def spend(self, pairs: int) -> None:
        """Checked before the work is done: a refused image never costs more than its budget."""
        if pairs > self.left:
            raise NmsBudgetExceeded(f"NMS needs more than its budget of {self.total} pairwise IoU evaluations")
        self.left -= pairs


def xywh2xyxy(xywh: np.ndarray) -> np.ndarray:
    out = np.empty_like(xywh)
    half_w, half_h = xywh[:, 2] / 2, xywh[:, 3] / 2
    out[:, 0] = xywh[:, 0] - half_w
    out[:, 1] = xywh[:, 1] - half_h
    out[:, 2] = xywh[:, 0] + half_w
    out[:, 3] = xywh[:, 1] + half_h
    return out


def _iou_above(a: np.ndarray, a_area: np.ndarray, b: np.ndarray, b_area: np.ndarray, t: float) -> np.ndarray:
    """(len(a), len(b)) mask of IoU > t; a, b are (4, n) xyxy columns.

    Term by term torchvision's float32 formula, `inter / (area_a + area_b - inter)` with
    `inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1))`, so every comparison rounds
    the same way. NaN (a degenerate 0/0, or NaN coordinates) compares False: it never suppresses.
    """
    w = np.minimum(a[2][:, None], b[2])
    w -= np.maximum(a[0][:, None], b[0])
    np.maximum(w, 0, out=w)
    h = np.minimum(a[3][:, None], b[3])
    h -= np.maximum(a[1][:, None], b[1])
    np.maximum(h, 0, out=h)
    w *= h  # inter
    np.add(a_area[:, None], b_area, out=h)
    h -= w  # union
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(w, h, out=w)
    return w > t


_UPPER = ~np.tri(NMS_BLOCK, NMS_BLOCK, 0, bool)  # strictly above the diagonal (np.triu took 60 us a block)


def _resolve_block(above: np.ndarray) -> np.ndarray:
    """Greedy NMS inside a block, given `above[j, k]` = IoU(j, k) > t: which members are kept.

    The plain greedy loop (member j, if still kept, drops every later k with above[j, k]) over
    the members that suppress anything, with each member's row packed into a Python int: one
    shift and one `|=` a step (~0.15 us), a fraction of what computing the block's IoU costs,
    and exact whatever the suppression chains (Cluster-NMS fixed-point passes need one pass
    per link of the longest chain).
    """
    m = len(above)
    upper = _UPPER[:m, :m] if m <= len(_UPPER) else ~np.tri(m, m, 0, bool)
    above &= upper
    rows = np.flatnonzero(above.any(1))
    if rows.size == 0:
        return np.ones(m, bool)
    width = (m + 7) // 8
    packed = np.packbits(above[rows], axis=1, bitorder="little").tobytes()
    removed = 0
    for i, j in enumerate(rows.tolist()):
        if not (removed >> j) & 1:
            removed |= int.from_bytes(packed[i * width : (i + 1) * width], "little")
    gone = np.unpackbits(np.frombuffer(removed.to_bytes(width, "little"), np.uint8), bitorder="little")
    return gone[:m] == 0


def _greedy(boxes: np.ndarray, t: float, limit: int, budget: PairBudget | None) -> np.ndarray:
    """Positions kept by greedy NMS of `boxes` (n, 4), taken in row order, at most `limit` of them.

    Exactly the per-box loop (the first box is kept, every later box whose IoU with it is > t is
    dropped, repeat) computed NMS_BLOCK candidates at a time: each block is first tested against
    the boxes already kept, then resolved internally. Stops once `limit` boxes are kept: the
    caller keeps only the `limit` best anyway.
    """
    n = len(boxes)
    cols = np.ascontiguousarray(boxes.T)
    area = (cols[2] - cols[0]) * (cols[3] - cols[1])
    cap = min(n, limit)
    if cap == 0:
        return np.empty(0, np.intp)
    kept = np.empty(cap, np.intp)
    kept_cols = np.empty((4, cap), np.float32)
    kept_area = np.empty(cap, np.float32)
    k = 0
    for start in range(0, n, NMS_BLOCK):
        alive = np.arange(start, min(start + NMS_BLOCK, n))
        lo = 0
        while lo < k and alive.size:
            hi = min(lo + max(1, CHUNK_PAIRS // alive.size), k)
            if budget is not None:
                budget.spend((hi - lo) * alive.size + CALL_PAIRS)
            hit = _iou_above(kept_cols[:, lo:hi], kept_area[lo:hi], cols[:, alive], area[alive], t).any(0)
            alive = alive[~hit]
            lo = hi
        if alive.size > 1:
            if budget is not None:
                budget.spend(alive.size * alive.size + CALL_PAIRS)
            block = cols[:, alive]
            alive = alive[_resolve_block(_iou_above(block, area[alive], block, area[alive], t))]
        take = alive[: cap - k]
        kept[k : k + take.size] = take
        kept_cols[:, k : k + take.size] = cols[:, take]
        kept_area[k : k + take.size] = area[take]
        k += take.size
        if k == cap:
            break
    return kept[:k]


def _order(scores: np.ndarray) -> np.ndarray:
    """Descending score, equal scores in input order (stable), as torchvision's CPU kernel sorts."""
    return np.argsort(-scores, kind="stable")


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """`_order(scores)[:k]`, without sorting every score: a stable argsort of MULTI_LABEL's 672000
    candidates (80 classes at 640, CONF_THRESHOLD 0) took 80 ms, longer than the network.

    The k-th best score v splits them: every score above v, then the first (in input order) of
    those equal to v, which is where a stable sort puts them; only those k are sorted.
    """
    if scores.size <= k:
        return _order(scores)
    neg = -scores
    v = np.partition(neg, k - 1)[k - 1]
    if np.isnan(v):  # fewer than k comparable scores: the plain sort decides where NaN goes
        return _order(scores)[:k]
    above = np.flatnonzero(neg < v)
    chosen = np.concatenate([above, np.flatnonzero(neg == v)[: k - above.size]])
    chosen.sort()
    return chosen[_order(scores[chosen])]


def _limit(max_det: int | None, n: int) -> int:
    return n if max_det is None else max(0, min(int(max_det), n))


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_det: int | None = None,
        budget: PairBudget | None = None) -> np.ndarray:
    """Greedy NMS (`torchvision.ops.nms`); indices of kept boxes in descending score order.

    Equal scores keep their input order (stable sort), as torchvision's CPU kernel does.
    `max_det`: only the first max_det kept indices are wanted (the search stops there).
    `budget`: raises NmsBudgetExceeded before evaluating more IoU pairs than it has left.
    """
    order = _order(scores)
    boxes = np.asarray(boxes, np.float32)
    return order[_greedy(boxes[order], iou_threshold, _limit(max_det, len(order)), budget)]


def _groups(labels: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A stable permutation that makes equal labels contiguous, and each run's [start, stop)."""
    perm = np.argsort(labels, kind="stable")
    cuts = np.flatnonzero(np.diff(labels[perm])) + 1
    edges = [0, *cuts.tolist(), len(labels)]
    return perm, list(zip(edges[:-1], edges[1:]))


def _per_class(
    boxes: np.ndarray, order: np.ndarray, classes: np.ndarray, t: float, limit: int, budget: PairBudget | None
) -> np.ndarray:
    """Greedy NMS run separately per class over score-`order`ed candidates, merged back in order.

    Kept boxes of one class are what that class's own greedy pass keeps; the answer lists them
    in the global order (a stable merge by score). Each class stops at `limit` kept: a class's
    later boxes come after `limit` others and cannot be in the first `limit`.
    """
    keep = np.zeros(len(order), bool)  # by position in `order`
    perm, runs = _groups(classes[order])
    for a, b in runs:
        members = perm[a:b]  # positions in `order`, ascending: each class in score order
        keep[members[_greedy(boxes[order[members]], t, limit, budget)]] = True
    return order[keep][:limit]


def batched_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
                max_det: int | None = None, budget: PairBudget | None = None) -> np.ndarray:
    """Per-class greedy NMS (`torchvision.ops.batched_nms`: boxes of different classes never
    suppress each other); indices of kept boxes in descending score order, ties in input order."""
    order = _order(scores)
    boxes = np.asarray(boxes, np.float32)
    return _per_class(boxes, order, np.asarray(classes), iou_threshold, _limit(max_det, len(order)), budget)


def _classes_apart(boxes: np.ndarray, classes: np.ndarray) -> bool:
    """True when no box can overlap a box of another class: the x-extents of the classes are
    disjoint and ordered by class id (what the MAX_WH offset achieves for boxes narrower than
    it). Then IoU across classes is 0 (or a NaN 0/0), which no threshold >= 0 suppresses, and
    per-class NMS keeps exactly what NMS over all the offset boxes keeps. NaN or infinite
    coordinates make the comparison fail, and everything goes through one pass."""
    perm, runs = _groups(classes)
    starts = np.array([a for a, _ in runs])
    x = boxes[perm][:, [0, 2]]
    lo = np.minimum.reduceat(x.min(1), starts)
    hi = np.maximum.reduceat(x.max(1), starts)
    return bool(np.all(hi[:-1] <= lo[1:]))


def _charge(n: int) -> int:
    """What `_greedy` over n boxes is charged at most (PairBudget's units): every block against
    the boxes kept before it and against itself, and about two calls a block."""
    return n * (n + NMS_BLOCK) // 2 + 2 * CALL_PAIRS * -(-n // NMS_BLOCK)


def _per_class_cheaper(classes: np.ndarray) -> bool:
    """Per-class passes cost less than one pass over every box (both keep the same boxes when the
    classes are apart): true for many boxes in few classes, false for a crowded scene's few boxes
    in many classes (179 boxes in 34 classes at 640, on the 2-core CPU: 1.7 ms in per-class
    passes, 0.3 ms in one pass). Decided by the budget's own charges, so the cheaper pass is also
    the one that spends less of it."""
    sizes = np.bincount(classes)
    return sum(_charge(int(m)) for m in sizes[sizes > 0]) < _charge(len(classes))


def _candidates(raw: np.ndarray, conf: float, multi_label: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(anchor index, score, class) of every candidate above `conf`, in Ultralytics' order.

    Single label: the best class per anchor. Multi label (the validator's protocol): every
    (anchor, class) pair above the threshold, anchor-major like `torch.where(cls > conf)`.
    """
    scores_all = raw[4:]
    if multi_label:
        anchors, classes = np.nonzero(scores_all.T > conf)
        return anchors, scores_all[classes, anchors], classes
    # The best score of every anchor, then the class of the few above `conf` only: argmax over the
    # whole (nc, anchors) block took 0.7-1.1 ms at 640 on the 2-core CPU, max 0.1-0.15 ms. Same
    # answer: argmax's class holds exactly max's value (a NaN column is NaN either way, and dropped).
    best = scores_all.max(0)
    keep = np.flatnonzero(best > conf)
    return keep, best[keep], scores_all[:, keep].argmax(0)


def decode(raw: np.ndarray, conf: float, iou: float, max_det: int, multi_label: bool = False,
           budget: PairBudget | None = None) -> Detections:
    """One image's detector output (4 + nc, anchors) -> detections in network-input pixels.

    NMS runs over the class-offset boxes, as Ultralytics' does (the offset changes how the
    coordinates round); per class when that is charged less (`_per_class_cheaper`: many boxes
    in few classes) and the offset provably keeps classes apart, which is the same answer for
    less work. `budget` (the server's, `PairBudget.for_anchors`) turns an image
    whose NMS would exceed it into an NmsBudgetExceeded naming the options that caused it.
    """
    keep, scores, classes = _candidates(raw, conf, multi_label)
    if keep.size == 0:
        return Detections.empty()
    if keep.size > MAX_NMS:
        top = _best(scores, MAX_NMS)
        keep, scores, classes = keep[top], scores[top], classes[top]
    boxes = xywh2xyxy(raw[:4, keep].T.astype(np.float32))
    scores, classes = scores.astype(np.float32), classes.astype(np.int32)
    offsets = (classes[:, None] * MAX_WH).astype(np.float32)  # float32 like Ultralytics' torch math
    offset_boxes = boxes + offsets
    order, limit = _order(scores), _limit(max_det, len(scores))
    try:
        if iou >= 0 and _per_class_cheaper(classes) and _classes_apart(offset_boxes, classes):
            kept = _per_class(offset_boxes, order, classes, iou, limit, budget)
        else:
            kept = order[_greedy(offset_boxes[order], iou, limit, budget)]
    except NmsBudgetExceeded:
        n_classes = len(np.unique(classes))
        mode = "MULTI_LABEL (every class above the threshold)" if multi_label else "single-label decoding"
        raise NmsBudgetExceeded(  # only a budget raises it
            f"NMS over budget: {mode} with CONF_THRESHOLD {conf:g} gives {keep.size} candidates in an image "
            f"({n_classes} classes); greedy NMS over them with IOU_THRESHOLD {iou:g} and MAX_DETECTIONS {max_det} "
            f"needs more than this server's budget of {budget.total if budget else 0} pairwise IoU evaluations "
            f"per image ({NMS_PAIRS_PER_ANCHOR} per network output anchor): raise CONF_THRESHOLD, "
            f"lower MAX_DETECTIONS or lower IOU_THRESHOLD"
        ) from None
    return Detections(boxes[kept], scores[kept], classes[kept])
