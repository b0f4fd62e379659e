"""Decode and exact greedy NMS in four Triton kernels, in fixed-size buffers: capturable in a CUDA graph.

Candidates are each anchor's best class above the image's CONF_THRESHOLD, in the order
Ultralytics and torchvision give them (score descending, ties in anchor order: `nonzero` then a
stable sort), at most `k` of them:

1. `_compact`: one program per image lists its candidates' anchors in anchor order and counts them
   (all of them: an image with more than `k` is flagged, never truncated);
2. `_rank`: each candidate's place is the number that go before it (a higher score, or the same
   score and a lower anchor), so they are written sorted without a sort: box decoded to xyxy as
   `torch_decode.xywh2xyxy` decodes it, score, class.

Greedy NMS then keeps a box when no better-ranked kept box overlaps it by IoU > the image's
threshold. That is a sequential scan, but a cheap one once the overlaps are known, so the work is
split as torchvision's CUDA kernel splits it, with the scan on the GPU as well:

3. `_overlap_words`: for every candidate i and every later candidate j of its image, whether
   IoU(i, j) > threshold, packed 32 candidates to a 32-bit word (bit j % 32 of word j // 32 of
   row i). One program per image and block of 32 rows, looping over the blocks of columns the
   image has, so an image with few candidates costs little whatever `k` is.
4. `_greedy_rows`: one program per image scans its candidates 32 at a time. A block's members
   already suppressed by earlier blocks are one word of the running `removed` mask; the block is
   resolved member by member on that word (register work), then the rows of its kept members are
   OR-ed into `removed` in one tile. Kept boxes are mapped back to the original image
   (`geometry.unletterbox` term by term) and written at their rank, up to MAX_DETECTIONS; the
   scan stops once that many are kept.

Bits are decided exactly as `nms._iou_above` decides them: the class-offset boxes of Ultralytics
(`box + class * MAX_WH` in float32), torchvision's IoU formula term by term, IEEE division
(`div_rn`) and no fused multiply-adds (`enable_fp_fusion=False`), so the GPU rounds each step as
NumPy does and the kept boxes equal `torch_decode`'s bit for bit (tests/test_torch_nms.py).
Nothing waits for the host between the network and the table of kept rows.

On a machine without a CUDA GPU the same kernels run in Triton's interpreter (NumPy), which is
how CI checks them; `TRITON_INTERPRET=1` must be set before this module is imported for that.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from yolo_triton.pipeline.nms import MAX_WH

WORD = 32  # candidates per mask word
ROW = 6  # x1, y1, x2, y2, score, class of one kept box
HEADER = 2  # per image, before its rows: the count of kept rows, then whether the rows are exact
# Per image, as `GraphedNms` writes them: CONF_THRESHOLD, IOU_THRESHOLD, MAX_DETECTIONS, then the
# LETTERBOX row (gain_x, gain_y, pad_x, pad_y, orig_h, orig_w).
OPTIONS = 9


@triton.jit
def _compact(scores_ptr, options_ptr, index_ptr, counts_ptr, A: tl.constexpr, K: tl.constexpr, OPT: tl.constexpr,
             CHUNK: tl.constexpr):
    img = tl.program_id(0)
    conf = tl.load(options_ptr + img * OPT)
    count = tl.full([], 0, tl.int32)
    for start in range(0, A, CHUNK):
        a = start + tl.arange(0, CHUNK)
        hit = (tl.load(scores_ptr + img * A + a, mask=a < A, other=0.0) > conf) & (a < A)  # strict '>'
        here = hit.to(tl.int32)
        slot = count + tl.cumsum(here, 0) - 1
        tl.store(index_ptr + img * K + slot, a, mask=hit & (slot < K))
        count += tl.sum(here, 0)
    tl.store(counts_ptr + img, count)


@triton.jit
def _rank(raw_ptr, scores_ptr, classes_ptr, index_ptr, counts_ptr, boxes_ptr, cand_scores_ptr, cand_classes_ptr,
          A: tl.constexpr, K: tl.constexpr, RAW_IMAGE: tl.constexpr):
    img = tl.program_id(0)
    block = tl.program_id(1)
    n = tl.minimum(tl.load(counts_ptr + img), K)
    if block * 32 < n:
        i = block * 32 + tl.arange(0, 32)
        i_ok = i < n
        anchor = tl.load(index_ptr + img * K + i, mask=i_ok, other=0)
        s_i = tl.load(scores_ptr + img * A + anchor, mask=i_ok, other=0.0)
        before = tl.zeros([32], tl.int32)
        for jb in range(0, (n + 31) // 32):
            j = jb * 32 + tl.arange(0, 32)
            j_ok = j < n
            s_j = tl.load(scores_ptr + img * A + tl.load(index_ptr + img * K + j, mask=j_ok, other=0),
                          mask=j_ok, other=0.0)
            ahead = (s_j[None, :] > s_i[:, None]) | ((s_j[None, :] == s_i[:, None]) & (j[None, :] < i[:, None]))
            before += tl.sum((ahead & j_ok[None, :]).to(tl.int32), 1)
        raw = raw_ptr + img * RAW_IMAGE + anchor
        x = tl.load(raw, mask=i_ok, other=0.0)
        y = tl.load(raw + A, mask=i_ok, other=0.0)
        half_w = tl.load(raw + 2 * A, mask=i_ok, other=0.0) * 0.5  # / 2, exactly
        half_h = tl.load(raw + 3 * A, mask=i_ok, other=0.0) * 0.5
        box = boxes_ptr + (img * K + before) * 4
        tl.store(box + 0, x - half_w, mask=i_ok)  # torch_decode.xywh2xyxy
        tl.store(box + 1, y - half_h, mask=i_ok)
        tl.store(box + 2, x + half_w, mask=i_ok)
        tl.store(box + 3, y + half_h, mask=i_ok)
        tl.store(cand_scores_ptr + img * K + before, s_i, mask=i_ok)
        cls = tl.load(classes_ptr + img * A + anchor, mask=i_ok, other=0)
        tl.store(cand_classes_ptr + img * K + before, cls.to(tl.int32), mask=i_ok)


@triton.jit
def _shifted(boxes_ptr, classes_ptr, img, idx, ok, K: tl.constexpr, MAX_WH_: tl.constexpr):
    """Candidates `idx` of image `img` as Ultralytics' class-offset xyxy boxes, and their areas."""
    off = tl.load(classes_ptr + img * K + idx, mask=ok, other=0).to(tl.float32) * MAX_WH_
    base = boxes_ptr + (img * K + idx) * 4
    x1 = tl.load(base + 0, mask=ok, other=0.0) + off
    y1 = tl.load(base + 1, mask=ok, other=0.0) + off
    x2 = tl.load(base + 2, mask=ok, other=1.0) + off  # a unit box past the count: no 0/0 in lanes never read
    y2 = tl.load(base + 3, mask=ok, other=1.0) + off
    return x1, y1, x2, y2, (x2 - x1) * (y2 - y1)


@triton.jit
def _overlap_words(
    boxes_ptr, classes_ptr, counts_ptr, options_ptr, mask_ptr,
    K: tl.constexpr, W: tl.constexpr, OPT: tl.constexpr, MAX_WH_: tl.constexpr,
):
    img = tl.program_id(0)
    block = tl.program_id(1)
    n = tl.minimum(tl.load(counts_ptr + img), K).to(tl.int32)
    if block * 32 < n:
        t = tl.load(options_ptr + img * OPT + 1)
        lane = tl.arange(0, 32)
        bit = tl.full([32], 1, tl.int32) << lane
        r = block * 32 + lane
        r_ok = r < n
        x1r, y1r, x2r, y2r, area_r = _shifted(boxes_ptr, classes_ptr, img, r, r_ok, K, MAX_WH_)
        for cb in range(block, (n + 31) // 32):
            c = cb * 32 + lane
            c_ok = c < n
            x1c, y1c, x2c, y2c, area_c = _shifted(boxes_ptr, classes_ptr, img, c, c_ok, K, MAX_WH_)
            w = tl.minimum(x2r[:, None], x2c[None, :]) - tl.maximum(x1r[:, None], x1c[None, :])
            h = tl.minimum(y2r[:, None], y2c[None, :]) - tl.maximum(y1r[:, None], y1c[None, :])
            inter = tl.maximum(w, 0.0) * tl.maximum(h, 0.0)
            union = (area_r[:, None] + area_c[None, :]) - inter
            above = (tl.div_rn(inter, union) > t) & (c[None, :] > r[:, None]) & c_ok[None, :]
            word = tl.sum(tl.where(above, bit[None, :], 0), 1)  # distinct bits: the sum is their OR
            tl.store(mask_ptr + (img * K + r) * W + cb, word, mask=r_ok)


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _greedy_rows(
    mask_ptr, boxes_ptr, scores_ptr, classes_ptr, counts_ptr, options_ptr, out_ptr,
    K: tl.constexpr, W: tl.constexpr, WP: tl.constexpr, OPT: tl.constexpr, ROW_: tl.constexpr,
    HEADER_: tl.constexpr,
):
    img = tl.program_id(0)
    total = tl.load(counts_ptr + img)
    n = tl.minimum(total, K).to(tl.int32)
    opt = options_ptr + img * OPT
    max_det = tl.load(opt + 2).to(tl.int32)
    gain_x = tl.load(opt + 3)
    gain_y = tl.load(opt + 4)
    pad_x = tl.load(opt + 5)
    pad_y = tl.load(opt + 6)
    orig_h = tl.load(opt + 7)
    orig_w = tl.load(opt + 8)
    out = out_ptr + img * (HEADER_ + K * ROW_)
    lane = tl.arange(0, 32)
    words = tl.arange(0, WP)
    one = tl.full([], 1, tl.int32)
    removed = tl.zeros([WP], tl.int32)
    kept = tl.full([], 0, tl.int32)
    for cb in range(0, (n + 31) // 32):
        if kept < max_det:
            # The block's own word of each member's row comes in one load; which members earlier
            # blocks removed is one word of `removed`. The block is then resolved member by member
            # in registers, and the rows of its kept members are OR-ed into `removed` in one tile.
            r = cb * 32 + lane
            r_ok = r < n
            rows = mask_ptr + (img * K + r) * W
            diagonal = tl.load(rows + cb, mask=r_ok, other=0)
            gone = tl.sum(tl.where(words == cb, removed, 0), 0)
            keep_bits = tl.full([], 0, tl.int32)
            for m in tl.static_range(32):
                word = tl.sum(tl.where(lane == m, diagonal, 0), 0)  # one lane: the sum is its word
                alive = (((gone >> m) & 1) == 0) & (cb * 32 + m < n)
                keep_bits = keep_bits | tl.where(alive, one << m, 0)
                gone = gone | tl.where(alive, word, 0)
            keep = ((keep_bits >> lane) & 1) != 0
            later = tl.load(rows[:, None] + words[None, :],
                            mask=keep[:, None] & (words[None, :] > cb) & (words[None, :] < W), other=0)
            removed = removed | tl.reduce(later, 0, _bit_or)
            kept_here = keep.to(tl.int32)
            rank = kept + tl.cumsum(kept_here, 0) - 1
            write = keep & (rank < max_det)
            base = boxes_ptr + (img * K + r) * 4
            x1 = tl.load(base + 0, mask=write, other=0.0)
            y1 = tl.load(base + 1, mask=write, other=0.0)
            x2 = tl.load(base + 2, mask=write, other=0.0)
            y2 = tl.load(base + 3, mask=write, other=0.0)
            score = tl.load(scores_ptr + img * K + r, mask=write, other=0.0)
            cls = tl.load(classes_ptr + img * K + r, mask=write, other=0).to(tl.float32)
            dest = out + HEADER_ + rank * ROW_
            # geometry.unletterbox: (v - pad) / gain, then clipped to the image
            tl.store(dest + 0, tl.minimum(tl.maximum(tl.div_rn(x1 - pad_x, gain_x), 0.0), orig_w), mask=write)
            tl.store(dest + 1, tl.minimum(tl.maximum(tl.div_rn(y1 - pad_y, gain_y), 0.0), orig_h), mask=write)
            tl.store(dest + 2, tl.minimum(tl.maximum(tl.div_rn(x2 - pad_x, gain_x), 0.0), orig_w), mask=write)
            tl.store(dest + 3, tl.minimum(tl.maximum(tl.div_rn(y2 - pad_y, gain_y), 0.0), orig_h), mask=write)
            tl.store(dest + 4, score, mask=write)
            tl.store(dest + 5, cls, mask=write)
            kept += tl.sum(kept_here, 0)
    tl.store(out + 0, tl.minimum(kept, max_det).to(tl.float32))
    tl.store(out + 1, (total <= K).to(tl.float32))


def nms_table(
    raw: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, options: torch.Tensor, k: int,
) -> torch.Tensor:
    """Decode + greedy NMS + map back of a (b, 4 + nc, anchors) float32 batch, as one packed table.

    `scores` and `classes` (b, anchors) are each anchor's best class score and class
    (`torch_decode.best_class`); `options` (b, OPTIONS) float32 each image's CONF_THRESHOLD,
    IOU_THRESHOLD, MAX_DETECTIONS and LETTERBOX row. Returns (b, HEADER + k * ROW): per image its
    count of kept rows, 1.0 if exact (at most k candidates), then its kept boxes in original-image
    pixels with score and class, best first (rows past the count are left as they were). Fixed
    shapes, no host synchronisation: capturable in a CUDA graph.
    """
    b, rows, anchors = raw.shape
    k = min(k, anchors)
    w = triton.cdiv(k, WORD)
    device = raw.device
    raw, scores, classes, options = (t.contiguous() for t in (raw, scores, classes, options))
    index = torch.empty((b, k), dtype=torch.int32, device=device)
    counts = torch.empty((b,), dtype=torch.int32, device=device)
    boxes = torch.empty((b, k, 4), dtype=torch.float32, device=device)
    cand_scores = torch.empty((b, k), dtype=torch.float32, device=device)
    cand_classes = torch.empty((b, k), dtype=torch.int32, device=device)
    mask = torch.empty((b, k, w), dtype=torch.int32, device=device)
    out = torch.empty((b, HEADER + k * ROW), dtype=torch.float32, device=device)
    if b == 0:
        return out
    exact = {"enable_fp_fusion": False} if raw.is_cuda else {}
    _compact[(b,)](scores, options, index, counts, A=anchors, K=k, OPT=OPTIONS, CHUNK=4096, num_warps=8)
    _rank[(b, w)](raw, scores, classes, index, counts, boxes, cand_scores, cand_classes, A=anchors, K=k,
                  RAW_IMAGE=rows * anchors, num_warps=4, **exact)
    _overlap_words[(b, w)](boxes, cand_classes, counts, options, mask, K=k, W=w, OPT=OPTIONS, MAX_WH_=float(MAX_WH),
                           num_warps=4, **exact)
    _greedy_rows[(b,)](mask, boxes, cand_scores, cand_classes, counts, options, out, K=k, W=w,
                       WP=triton.next_power_of_2(w), OPT=OPTIONS, ROW_=ROW, HEADER_=HEADER, num_warps=1, **exact)
    return out
