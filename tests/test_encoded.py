"""IMAGE_BYTES: encoded files decoded on the server, against the raw-pixel path on the same images.

Header checks run without a server (every bad-bytes class, the 20000x20000 PNG bomb); the rest
sends real requests to the real server: the same detections as IMAGE for JPEG and PNG files of
several sizes, mixed sizes in one request, each refusal naming the image's index while the server
keeps serving, and the client's choice of transport. GPU decoding (nvJPEG) runs where CUDA is;
tests/test_jpeg_kernels.py checks its last two steps on the CPU.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from conftest import SAMPLES, sample_images
from tritonclient.utils import InferenceServerException

from yolo_triton import spec
from yolo_triton.client import detect, images, transport
from yolo_triton.client.detector import OUTPUTS, DetectorClient, ServerError, encoded_input, parse_outputs
from yolo_triton.pipeline import encoded
from yolo_triton.pipeline.validation import InputError
from yolo_triton.serve import launcher
from yolo_triton.serve.install import TritonInstall, stub_numpy_problem, stub_numpy_version

MODELS = (spec.ALIAS, spec.variant("ort").ensemble, spec.variant("ort_fused").ensemble)
BUS = cv2.imread(str(SAMPLES / "bus.jpg"))


def encode(image: np.ndarray, ext: str, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(w: int = 20000, h: int = 20000) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose IHDR claims w x h (one compressed row)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + 3 * 64), 9)
    return encoded.PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF APP1 segment (IFD0: one Orientation tag) right after SOI."""
    tiff = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1,
                                                                                  orientation, 0) + b"\0\0\0\0"
    app1 = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def png_of_rows(w: int, h: int, colour: int, depth: int, interlace: int, rows: bytes, extra: int = 0,
                chunks: bytes = b"") -> bytes:
    """A PNG of already filtered scanlines (`rows`) with `chunks` after IHDR (PLTE, tRNS, text),
    followed in the same zlib stream by `extra` zero bytes that belong to no image."""
    z = zlib.compressobj(6)
    body = z.compress(rows) + z.compress(bytes(extra)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, interlace)
    return (encoded.PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + chunks + png_chunk(b"IDAT", body)
            + png_chunk(b"IEND", b""))


def adam7_rows(pixels: np.ndarray) -> bytes:
    """The interlaced scanlines (filter 0) of an 8-bit image (H, W, C), pass by pass."""
    out = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
                           (0, 1, 1, 2)):
        sub = pixels[y0::dy, x0::dx]
        if sub.shape[0] and sub.shape[1]:
            out += b"".join(b"\0" + row.tobytes() for row in sub)
    return out


JPEG = encode(BUS, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90)
PNG = encode(BUS, ".png")
PROGRESSIVE = encode(BUS, ".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1)


def with_scans(progressive: bytes, scans: int) -> bytes:
    """The progressive JPEG with its last scan repeated until it has `scans` scans: legal markers,
    and each repeat one more pass of the decoder over the whole image (libjpeg-turbo's LJT-01-003)."""
    last, end = progressive.rindex(b"\xff\xda"), progressive.rindex(b"\xff\xd9")
    extra = scans - progressive.count(b"\xff\xda")
    return progressive[:end] + progressive[last:end] * extra + progressive[end:]


BAD = {  # class -> (bytes, words the refusal must contain)
    "empty": (b"", "empty"),
    "not-an-image": (b"hello, this is text and not a picture", "not an image"),
    "gif": (b"GIF89a" + b"\0" * 64, "unsupported format GIF"),
    "bmp": (encode(BUS[:32, :32], ".bmp"), "unsupported format BMP"),
    "truncated-jpeg": (JPEG[: len(JPEG) // 2], "truncated JPEG"),
    "truncated-png": (PNG[: len(PNG) // 2], "truncated PNG"),
    "truncated-webp": (encode(BUS[:64, :64], ".webp")[:-40], "truncated WebP"),
    "png-bomb": (png_bomb(), "20000x20000 exceeds the limit"),
    "corrupt-png-data": (PNG[:100] + bytes(200) + PNG[-12:], "corrupt or oversized png"),
}
BAD["png-text-over-1-mb"] = (png_of_rows(8, 8, 0, 8, 0, b"".join(b"\0" + bytes(8) for _ in range(8)),
                                         chunks=png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(bytes(2 << 20)))),
                             "corrupt or oversized png: Decompressed data too large")
_IHDR = PNG[12:26] + b"\x01" + PNG[27:29]  # chunk type and data, compression method set to 1
BAD["png-ihdr-libpng-refuses"] = (PNG[:12] + _IHDR + struct.pack(">I", zlib.crc32(_IHDR)) + PNG[33:],
                                  "compression method 1")
_TALLER = PNG[12:20] + struct.pack(">I", BUS.shape[0] + 8) + PNG[24:29]  # IHDR claiming 8 rows more than its data
BAD["png-data-ends-before-its-last-row"] = (PNG[:12] + _TALLER + struct.pack(">I", zlib.crc32(_TALLER)) + PNG[33:],
                                            "its image data ends before its last row")
_APP0_END = 4 + int.from_bytes(JPEG[4:6], "big")  # where the second segment starts
BAD["jpeg-junk-before-a-marker"] = (JPEG[:_APP0_END] + b"\x12\xff" + JPEG[_APP0_END:],
                                    f"no marker at byte {_APP0_END}")
BAD["jpeg-too-many-scans"] = (with_scans(PROGRESSIVE, spec.MAX_JPEG_SCANS + 1),
                              f"{spec.MAX_JPEG_SCANS + 1} scans, over the limit of {spec.MAX_JPEG_SCANS}")
BAD["jpeg-too-many-segments"] = (JPEG[:2] + b"\xff\xfe\x00\x02" * spec.MAX_JPEG_SEGMENTS + JPEG[2:],
                                 f"over {spec.MAX_JPEG_SEGMENTS} marker segments")
# A JPEG whose frame header claims 9000 x 4 (one side over MAX_IMAGE_SIDE), the rest intact.
_SOF = JPEG.index(b"\xff\xc0")
BAD["jpeg-over-side"] = (JPEG[: _SOF + 5] + struct.pack(">HH", 4, 9000) + JPEG[_SOF + 9 :], "9000x4 exceeds the limit")


@pytest.mark.parametrize("case", list(BAD))
def test_every_bad_bytes_class_is_refused_by_the_header_check_naming_the_image(case):
    data, words = BAD[case]
    with pytest.raises(InputError) as err:
        encoded.decode_all([JPEG, data])
    assert f"{spec.IMAGE_BYTES.name}[1]" in str(err.value) and words in str(err.value), str(err.value)


def test_a_png_claiming_20000x20000_is_refused_before_any_large_allocation():
    bomb = png_bomb()
    assert len(bomb) < 1000
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="refused before decoding"):
            encoded.decode_all([bomb])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"{peak} bytes allocated for a refused header (decoding it would take 1.2 GB)"


def test_headers_give_the_size_of_every_format():
    image = BUS[:301, :207]
    for ext, fmt in ((".jpg", "jpeg"), (".png", "png"), (".webp", "webp")):
        h = encoded.read_header(encode(image, ext), 0)
        assert (h.format, h.width, h.height) == (fmt, 207, 301)
    lossless = encoded.read_header(encode(image, ".webp", cv2.IMWRITE_WEBP_QUALITY, 101), 0)
    assert (lossless.format, lossless.width, lossless.height) == ("webp", 207, 301)


def png_with_orientation(png: bytes, orientation: int) -> bytes:
    """The PNG with an eXIf chunk (a little-endian TIFF, IFD0: one Orientation tag) after its image
    data (OpenCV reads it there too, and the header check must find it past IDAT)."""
    tiff = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1,
                                                                                  orientation, 0) + b"\0\0\0\0"
    end = png.rindex(b"IEND") - 4
    return png[:end] + png_chunk(b"eXIf", tiff) + png[end:]


@pytest.mark.parametrize("ext", [".jpg", ".png"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_cv2_imread_applies_it(tmp_path, orientation, ext):
    """Ultralytics reads files with cv2.imread (EXIF applied, to JPEG and PNG files): the server's
    decode and the client's reader must give exactly that image."""
    plain = encode(BUS[:120, :90], ext)
    data = with_orientation(plain, orientation) if ext == ".jpg" else png_with_orientation(plain, orientation)
    path = tmp_path / f"rotated{ext}"
    path.write_bytes(data)
    want = cv2.imread(str(path))
    header = encoded.read_header(data, 0)
    assert header.orientation == orientation
    assert encoded.oriented_shape(header) == want.shape[:2]
    np.testing.assert_array_equal(encoded.decode(data, header, 0), want)
    np.testing.assert_array_equal(images.read(path), want)


def test_the_first_of_two_exif_segments_gives_the_orientation_as_in_cv2_imread(tmp_path):
    data = with_orientation(with_orientation(encode(BUS[:120, :90], ".jpg"), 3), 6)  # 6 first, then 3
    path = tmp_path / "two-exif.jpg"
    path.write_bytes(data)
    want = cv2.imread(str(path))
    assert encoded.read_header(data, 0).orientation == 6 and want.shape[:2] == (90, 120)
    np.testing.assert_array_equal(encoded.decode_all([data])[0], want)
    np.testing.assert_array_equal(images.read(path), want)


# --- against the server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clients(server):
    out = {m: DetectorClient(server.url, model=m, timeout_s=60) for m in MODELS}
    yield out
    for c in out.values():
        c.close()


def assert_same(got, want) -> None:
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)


def served_on_gpu(server, model: str) -> bool:
    """Whether `model` is, or is the alias of, a GPU variant."""
    target = server.plan.alias if model == spec.ALIAS else next(v for v in spec.VARIANTS if v.ensemble == model)
    return target is not None and "gpu" in target.needs


def assert_same_answer(server, model: str, got, want, conf: float = spec.DEFAULT_CONF) -> None:
    """The same answer for the same pixels: exactly on the CPU variants; on a GPU variant up to FP16
    rounding, since each of its instances and batch sizes replays a network compiled apart (on an
    H100, boxes 0.1 px apart between its two instances)."""
    if served_on_gpu(server, model):
        from test_gpu import assert_fp16_twins

        assert_fp16_twins(got, want, conf)  # both ways
    else:
        assert_same(got, want)


def test_jpegs_at_the_scan_and_segment_limits_are_decoded():
    """The caps leave real files alone: encoders write about ten scans, and a file with exactly the
    limit of scans, or of marker segments, is decoded (comments change no pixel)."""
    assert 5 <= PROGRESSIVE.count(b"\xff\xda") <= 20
    assert encoded.decode_all([with_scans(PROGRESSIVE, spec.MAX_JPEG_SCANS)])[0].shape == BUS.shape
    padded = JPEG[:2] + b"\xff\xfe\x00\x02" * (spec.MAX_JPEG_SEGMENTS - 9) + JPEG[2:]  # 9 of its own, with SOS
    np.testing.assert_array_equal(encoded.decode_all([padded])[0], encoded.decode_all([JPEG])[0])


PNG_LAYOUTS = [  # (colour type, bit depth, interlaced): grey, RGB, palette (with tRNS), grey + alpha, RGBA
    (0, 1, 0), (0, 2, 0), (0, 4, 0), (0, 8, 1), (0, 16, 0), (2, 8, 1), (2, 16, 0), (3, 1, 0), (3, 4, 0), (3, 8, 1),
    (4, 8, 0), (4, 16, 1), (6, 8, 0), (6, 16, 1),
]


@pytest.mark.parametrize("layout", PNG_LAYOUTS, ids=lambda x: "colour{}-{}bit{}".format(*x[:2], "-adam7" * x[2]))
def test_pngs_of_every_layout_decode_to_opencvs_pixels(layout):
    """PNG is decoded by Pillow, not OpenCV (pipeline/png.py says why): its pixels must be
    OpenCV's IMREAD_COLOR pixels for every layout a PNG can have. Random samples, every palette
    entry used, a tRNS chunk on the palette."""
    colour, depth, interlace = layout
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    w, h = 61, 29
    rng = np.random.default_rng(depth * 10 + colour)
    if depth >= 8:
        pixels = rng.integers(0, 256, (h, w, channels * depth // 8), dtype=np.uint8)
        rows = adam7_rows(pixels) if interlace else b"".join(b"\0" + row.tobytes() for row in pixels)
    else:
        rows = b"".join(b"\0" + rng.integers(0, 256, -(-w * depth // 8), dtype=np.uint8).tobytes() for _ in range(h))
    chunks = b""
    if colour == 3:
        entries = 1 << depth
        chunks = png_chunk(b"PLTE", rng.integers(0, 256, 3 * entries, dtype=np.uint8).tobytes())
        chunks += png_chunk(b"tRNS", rng.integers(0, 256, entries, dtype=np.uint8).tobytes())
    data = png_of_rows(w, h, colour, depth, interlace, rows, chunks=chunks)
    want = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert want is not None and want.shape == (h, w, 3)
    np.testing.assert_array_equal(encoded.decode_all([data])[0], want)


@pytest.mark.parametrize("interlace", [0, 1])
def test_a_png_whose_last_rows_are_black_decodes_as_opencv_decodes_it(interlace):
    """Blank last rows are what a short zlib stream leaves in Pillow's image, so they send the
    file to the exact check (its data inflated up to the image's size): a whole file passes it."""
    pixels = np.random.default_rng(2).integers(0, 256, (29, 61, 3), dtype=np.uint8)
    pixels[-3:] = 0
    rows = adam7_rows(pixels) if interlace else b"".join(b"\0" + row.tobytes() for row in pixels)
    data = png_of_rows(61, 29, 2, 8, interlace, rows)
    np.testing.assert_array_equal(encoded.decode_all([data])[0], cv2.imdecode(np.frombuffer(data, np.uint8), 1))


def test_a_png_with_compressed_data_after_its_image_decodes_to_that_image():
    """64 MB of zeros inflating after the image's own data change nothing in the pixels. (That
    Pillow leaves them alone, where OpenCV's libpng inflates them all, is a cost: measured in
    docs/benchmarks.md, not asserted here.)"""
    pixels = np.random.default_rng(1).integers(0, 256, (29, 61, 3), dtype=np.uint8)
    rows = b"".join(b"\0" + row.tobytes() for row in pixels)
    plain = png_of_rows(61, 29, 2, 8, 0, rows)
    padded = png_of_rows(61, 29, 2, 8, 0, rows, extra=64 << 20)
    assert len(padded) < len(plain) + (128 << 10)  # 64 MB of zeros compress to about 64 KB
    np.testing.assert_array_equal(encoded.decode_all([padded])[0], encoded.decode_all([plain])[0])
    np.testing.assert_array_equal(encoded.decode_all([plain])[0], pixels[..., ::-1])


# Files at the per-image limit (8192 x 4882, 40 M pixels): four fit in one request, five do not.
AT_IMAGE_LIMIT = (spec.MAX_IMAGE_SIDE, spec.MAX_IMAGE_PIXELS // spec.MAX_IMAGE_SIDE)
PER_REQUEST = spec.MAX_REQUEST_PIXELS // (AT_IMAGE_LIMIT[0] * AT_IMAGE_LIMIT[1])


def test_a_request_whose_files_decode_past_the_request_limit_is_refused_from_their_headers():
    files = [png_bomb(*AT_IMAGE_LIMIT)] * (PER_REQUEST + 1)
    assert PER_REQUEST == 4 and len(b"".join(files)) < 4096  # a few hundred bytes each, 120 MB each decoded
    encoded.read_headers(files[:PER_REQUEST])  # at the limit: accepted
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as err:
            encoded.decode_all(files)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    total = (PER_REQUEST + 1) * AT_IMAGE_LIMIT[0] * AT_IMAGE_LIMIT[1]
    assert str(err.value) == (f"IMAGE_BYTES: the request's 5 images decode to {total} pixels together, over the "
                              f"limit of {spec.MAX_REQUEST_PIXELS} per request; send them in several requests")
    assert peak < 1 << 20, f"{peak} bytes allocated for refused headers"


def test_the_cpu_letterbox_decodes_one_file_at_a_time_and_refuses_only_a_file_that_does_not_decode():
    """A batch of files holds one decoded image at a time (tracemalloc sees NumPy's allocations,
    OpenCV's decoded images among them), and a file whose data fails after a good header is
    answered with its error while the others get the pixels their decoded arrays get."""
    from yolo_triton.pipeline import cpu

    big = encode(np.full((2000, 3000, 3), 90, np.uint8), ".png")  # 18 MB decoded, a few KB sent
    corrupt = BAD["corrupt-png-data"][0]
    data = [big, JPEG, big, corrupt, big, big, big]
    files = encoded.encoded_files(data)
    assert [f.shape for f in files[:2]] == [(1, 2000, 3000, 3), (1, *BUS.shape)]
    letterbox = cpu.Letterbox(320)  # its batch buffers are allocated here, before the count starts
    tracemalloc.start()
    try:
        pixels, rows = letterbox(files)
        got, peak = pixels.copy(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    decoded = 2000 * 3000 * 3
    # Decoding one file briefly takes two copies (the decoder's, then BGR); all five would be five.
    assert peak < 3 * decoded, f"{peak / decoded:.1f} decoded images held at once"
    assert isinstance(rows[3], InputError), rows[3]
    assert str(rows[3]).startswith("IMAGE_BYTES[3]: corrupt or oversized png"), rows[3]
    good = [i for i in range(len(data)) if i != 3]
    want_pixels, want_rows = cpu.Letterbox(320)([cv2.imdecode(np.frombuffer(data[i], np.uint8), cv2.IMREAD_COLOR)[None]
                                                 for i in good])
    np.testing.assert_array_equal(got[good], want_pixels)
    for i, want in zip(good, want_rows):
        np.testing.assert_array_equal(rows[i], want)


@pytest.mark.parametrize("model", MODELS)
def test_a_request_over_the_pixel_limit_is_refused_and_the_server_keeps_serving(server, clients, model):
    raw = grpcclient.InferenceServerClient(server.url)
    inp = grpcclient.InferInput(spec.IMAGE_BYTES.name, [PER_REQUEST + 1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[png_bomb(*AT_IMAGE_LIMIT)]] * (PER_REQUEST + 1), dtype=object))
    try:
        with pytest.raises(InferenceServerException) as err:
            raw.infer(model, [inp], outputs=OUTPUTS)
    finally:
        raw.close()
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT", err.value.message()
    assert f"over the limit of {spec.MAX_REQUEST_PIXELS} per request" in err.value.message()
    want = clients[model].detect(images.decode(JPEG)).detections
    assert_same_answer(server, model, clients[model].detect_encoded(JPEG).detections, want)


@pytest.mark.parametrize("variant", ["ort", "ort_fused"])
def test_a_cpu_model_holds_one_decoded_file_at_a_time_while_serving_a_request_of_many(server, clients, variant):
    """The python model that decodes (the staged preprocess, the fused pipeline) is measured itself:
    its peak resident memory is reset (/proc/<pid>/clear_refs), then a request of six 4000x4000
    PNGs (48 MB each decoded, 288 MB together, a few hundred KB sent) must raise it by less than
    four and a half decoded images: decoding one briefly takes about three and a half (Pillow's
    image, its bytes, BGR), holding all six would take six or more."""
    from test_faults import stub_of

    v = spec.variant(variant)
    stub = stub_of(server.proc.pid, v.pipeline or v.preprocess)
    data = encode(np.full((4000, 4000, 3), 70, np.uint8), ".png")
    decoded = 4000 * 4000 * 3

    def status(field: str) -> int:
        line = next(x for x in Path(f"/proc/{stub.pid}/status").read_text().splitlines() if x.startswith(field))
        return int(line.split()[1]) * 1024

    Path(f"/proc/{stub.pid}/clear_refs").write_text("5")  # VmHWM back to the current VmRSS
    before = status("VmRSS:")
    dets, _ = clients[v.ensemble].infer_encoded([data] * 6)
    grown = status("VmHWM:") - before
    assert len(dets) == 6
    assert grown < 4.5 * decoded, f"peak grew by {grown / decoded:.1f} decoded images"


SIZES = ((1080, 810), (480, 640), (333, 1000), (64, 48))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_encoded_files_get_the_detections_their_decoded_pixels_get(server, clients, model, ext):
    client = clients[model]
    seen = 0
    for h, w in SIZES:
        data = encode(cv2.resize(BUS, (w, h), interpolation=cv2.INTER_AREA), ext)
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # what a pixel client sends
        want = client.detect(pixels).detections
        assert_same_answer(server, model, client.detect_encoded(data).detections, want)
        seen += len(want.scores)
    assert seen > 0, "the comparison must include detections"


@pytest.mark.parametrize("model", MODELS)
def test_one_request_of_mixed_sizes_and_formats_answers_each_as_alone(server, clients, model):
    client = clients[model]
    files = [encode(im, ext) for im, ext in zip(sample_images().values(), (".jpg", ".png") * 4)]
    files.append((SAMPLES / "bus.jpg").read_bytes())
    dets, _ = client.infer_encoded(files, conf=0.2)
    assert len(dets) == len(files)
    for data, got in zip(files, dets):
        alone = client.detect_encoded(data, conf=0.2).detections
        assert_same_answer(server, model, got, alone, conf=0.2)  # a batch of nine replays another graph


@pytest.mark.parametrize("model", MODELS)
def test_bad_bytes_get_invalid_argument_naming_the_image_and_the_server_keeps_serving(server, clients, model):
    raw = grpcclient.InferenceServerClient(server.url)
    try:
        for case, (data, words) in BAD.items():
            inp = grpcclient.InferInput(spec.IMAGE_BYTES.name, [2, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[JPEG], [data]], dtype=object))
            with pytest.raises(InferenceServerException) as err:
                raw.infer(model, [inp], outputs=OUTPUTS)
            message = err.value.message()
            assert err.value.status() == "StatusCode.INVALID_ARGUMENT", (case, message)
            assert f"{spec.IMAGE_BYTES.name}[1]" in message and words in message, (case, message)
    finally:
        raw.close()
    client = clients[model]
    want = client.detect(images.decode(JPEG)).detections
    assert_same_answer(server, model, client.detect_encoded(JPEG).detections, want)


@pytest.mark.parametrize("model", MODELS)
def test_a_request_with_both_image_inputs_or_only_options_is_refused(server, model):
    raw = grpcclient.InferenceServerClient(server.url)
    pixels = grpcclient.InferInput(spec.IMAGE.name, [1, 8, 8, 3], "UINT8")
    pixels.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
    conf = grpcclient.InferInput(spec.CONF_THRESHOLD.name, [1, 1], "FP32")
    conf.set_data_from_numpy(np.full((1, 1), 0.3, np.float32))
    try:
        with pytest.raises(InferenceServerException) as both:
            raw.infer(model, [encoded_input([JPEG]), pixels])
        assert both.value.status() == "StatusCode.INVALID_ARGUMENT" and "not both" in both.value.message()
        for inputs in ([conf], []):
            with pytest.raises(InferenceServerException) as neither:
                raw.infer(model, inputs)
            assert neither.value.status() == "StatusCode.INVALID_ARGUMENT", neither.value.message()
    finally:
        raw.close()


def test_the_client_refuses_bad_files_before_sending(clients):
    with pytest.raises(InputError, match=r"IMAGE_BYTES\[1\]: .*exceeds the limit"):
        clients[spec.ALIAS].infer_encoded([JPEG, png_bomb()])
    with pytest.raises(InputError, match="over the limit of .* per request"):
        clients[spec.ALIAS].infer_encoded([png_bomb(*AT_IMAGE_LIMIT)] * (PER_REQUEST + 1))


# --- the client's transport ------------------------------------------------------------------------


def test_transport_auto_sends_bytes_to_a_remote_server_and_pixels_on_this_host():
    jpeg, raw_bmp = JPEG, encode(BUS[:16, :16], ".bmp")
    remote = "192.0.2.7:8001"  # TEST-NET-1: never an address of this host
    assert transport.choose("auto", remote, jpeg) == "encoded"
    assert transport.choose("auto", remote, PNG) == "encoded"
    assert transport.choose("auto", remote, raw_bmp) == "pixels", "a BMP is not re-encoded, pixels go"
    assert transport.choose("auto", remote, None) == "pixels", "video frames are pixels"
    for local in ("127.0.0.1:8001", "localhost:8001", "[::1]:8001"):
        assert transport.choose("auto", local, jpeg) == "pixels", local
    assert transport.choose("encoded", "127.0.0.1:8001", jpeg) == "encoded"
    assert transport.choose("shm", remote, jpeg) == "shm"
    with pytest.raises(InputError, match="unknown transport"):
        transport.choose("carrier-pigeon", remote, jpeg)


@pytest.mark.parametrize("how", ["encoded", "pixels", "shm"])
def test_detect_cli_gives_the_same_detections_on_every_transport(server, tmp_path, how):
    path = tmp_path / "bus.png"
    path.write_bytes(PNG)
    out = tmp_path / f"{how}.json"
    assert detect.main(["--url", server.url, "--transport", how, "--json", str(out), str(path)]) == 0
    got = json.loads(out.read_text())[0]
    with DetectorClient(server.url, timeout_s=60) as c:
        want = c.detect(images.read(path)).detections
    assert (got["width"], got["height"]) == (BUS.shape[1], BUS.shape[0])
    assert [d["class_id"] for d in got["detections"]] == want.classes.tolist()
    np.testing.assert_allclose([d["box"] for d in got["detections"]], want.boxes, atol=0.01)


def test_forcing_encoded_on_a_file_that_is_not_encoded_says_so(server, tmp_path, capsys):
    path = tmp_path / "bus.bmp"
    path.write_bytes(encode(BUS[:64, :64], ".bmp"))
    assert detect.main(["--url", server.url, "--transport", "encoded", str(path)]) == 1
    assert "not JPEG, PNG or WebP" in capsys.readouterr().err


def test_a_refusal_keeps_its_reason_apart_from_the_index_it_names():
    import pickle

    with pytest.raises(encoded.EncodedImageError) as got:
        encoded.read_header(b"\xff\xd8\xff", 4)
    e = got.value
    assert (e.index, str(e)) == (4, f"IMAGE_BYTES[4]: {e.why}") and e.why.startswith("truncated JPEG")
    again = pickle.loads(pickle.dumps(e))
    assert (type(again), again.index, again.why, str(again)) == (type(e), e.index, e.why, str(e))


def test_detect_cli_names_a_truncated_file_by_its_path_and_goes_on(server, tmp_path, capsys):
    """The header checks the server makes run in the client too, before sending; their message
    names the file, not the request's IMAGE_BYTES[0], and the next file is still served."""
    cut, whole = tmp_path / "cut.jpg", tmp_path / "whole.jpg"
    jpeg = encode(BUS, ".jpg")
    cut.write_bytes(jpeg[: len(jpeg) // 2])
    whole.write_bytes(jpeg)
    assert detect.main(["--url", server.url, "--transport", "encoded", str(cut), str(whole)]) == 1
    out = capsys.readouterr()
    assert f"error: {cut}: truncated JPEG (no end-of-image marker after the scan)" in out.err
    assert "IMAGE_BYTES" not in out.err
    assert f"{whole}: {BUS.shape[1]}x{BUS.shape[0]}," in out.out


def test_server_error_type_is_unchanged_for_encoded_requests(clients):
    """A refusal from the server reaches the caller as ServerError with the server's message."""
    with pytest.raises(ServerError, match=r"IMAGE_BYTES\[0\]: truncated JPEG"):
        clients[spec.ALIAS]._call(clients[spec.ALIAS].client.infer, spec.ALIAS,
                                  [_unchecked([JPEG[:-300]])], outputs=OUTPUTS)


def _unchecked(files: list[bytes]) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(spec.IMAGE_BYTES.name, [len(files), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[f] for f in files], dtype=object).reshape(len(files), 1))
    return inp


def test_parse_outputs_of_an_encoded_request_lines_up_with_the_files(server):
    raw = grpcclient.InferenceServerClient(server.url)
    try:
        result = raw.infer(spec.ALIAS, [encoded_input([JPEG, PNG])], outputs=OUTPUTS)
    finally:
        raw.close()
    jpeg, png = parse_outputs(result)
    assert len(jpeg.scores) > 0 and len(png.scores) > 0


def test_numpy_2_under_the_bundled_stub_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    """The 2.51 stub reads BYTES inputs wrongly under NumPy 2 and dies: the launcher says so instead."""
    bundled = TritonInstall(tmp_path / "pytriton" / "tritonserver" / "bin" / "tritonserver", tmp_path, bundled=True)
    unpacked = TritonInstall(Path("/opt/x/pytriton/tritonserver/bin/tritonserver"), tmp_path)
    container = TritonInstall(Path("/opt/tritonserver/bin/tritonserver"), tmp_path)
    assert "numpy<2" in stub_numpy_problem(bundled, lambda: "2.5.2")
    assert stub_numpy_problem(unpacked, lambda: "2.1.0") is not None
    assert stub_numpy_problem(bundled, lambda: "1.26.4") is None
    assert stub_numpy_problem(container, lambda: "2.5.2") is None  # NVIDIA's container: its stub matches its NumPy
    assert stub_numpy_version() == np.__version__  # this venv's, as the stub imports it
    monkeypatch.setattr(launcher, "stub_numpy_version", lambda: "2.5.2")
    with pytest.raises(launcher.LaunchError, match=r"NumPy 2\.5\.2 .* BYTES input"):
        launcher.Server(tmp_path)


# --- the GPU decoders (where CUDA is) --------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU visible to torch (none here)")
GPU_MODELS = (spec.variant("gpu").ensemble, spec.variant("gpu_fused").ensemble)


SAMPLINGS = {"4:2:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "4:2:2": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
             "4:4:4": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, "4:4:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440}


def jpegs_of_every_layout(orientation: int = 1) -> dict[str, bytes]:
    """bus.jpg at every size of SIZES in every chroma layout the GPU decodes and greyscale, each
    with the EXIF orientation given."""
    files = {}
    for h, w in SIZES:
        image = cv2.resize(BUS, (w, h))
        for name, flag in SAMPLINGS.items():
            files[f"{w}x{h} {name}"] = encode(image, ".jpg", cv2.IMWRITE_JPEG_SAMPLING_FACTOR, flag)
        files[f"{w}x{h} grey"] = encode(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), ".jpg")
    return {name: with_orientation(data, orientation) for name, data in files.items()}


def test_headers_say_which_jpegs_the_gpu_decodes_and_their_chroma_layout():
    files = jpegs_of_every_layout()
    for name, data in files.items():
        h = encoded.read_header(data, 0)
        assert h.nvjpeg, name
        want = {"4:2:2": (2, 1), "4:4:4": (1, 1), "4:4:0": (1, 2), "grey": None}.get(name.split()[1], (2, 2))
        assert h.chroma == want, name
    assert not encoded.read_header(PROGRESSIVE, 0).nvjpeg  # nvJPEG's pixels were up to 3 levels off
    image = BUS[:64, :48]
    four_one_one = encode(image, ".jpg", cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411)
    assert not encoded.read_header(four_one_one, 0).nvjpeg  # 4:1:1: upsampled by OpenCV on the host
    # An Adobe marker with transform 0 in place of the JFIF marker: an RGB JPEG, left to the host.
    jpeg = encode(image, ".jpg")
    app0_end = 4 + struct.unpack_from(">H", jpeg, 4)[0]
    adobe = b"Adobe" + bytes([0, 100, 0, 0, 0, 0, 0])
    rgb = jpeg[:2] + b"\xff\xee" + struct.pack(">H", len(adobe) + 2) + adobe + jpeg[app0_end:]
    header = encoded.read_header(rgb, 0)
    assert not header.nvjpeg and (header.width, header.height) == (48, 64)
    assert cv2.imdecode(np.frombuffer(rgb, np.uint8), cv2.IMREAD_COLOR).shape == (64, 48, 3)  # a valid JPEG


def test_where_the_gpu_decoder_cannot_run_the_host_decodes_and_the_load_line_says_why():
    from yolo_triton.pipeline import torch_encoded

    gpu, note = torch_encoded.gpu_jpeg_or_none(torch.device("cpu"), wanted=True)
    assert gpu is None and note.startswith("JPEG: decoded on the host, the GPU decoder failed its load check ("), note
    gpu, note = torch_encoded.gpu_jpeg_or_none(torch.device("cpu"), wanted=False)
    assert gpu is None and note == 'JPEG: decoded on the host (config nvjpeg: "0")'
    files = [JPEG, PNG]
    for data, t in zip(files, torch_encoded.decode_all(files, torch.device("cpu"), gpu)):
        np.testing.assert_array_equal(t[0].numpy(), encoded.decode(data, encoded.read_header(data, 0), 0))


@needs_cuda
@pytest.mark.parametrize("orientation", [1, 6, 7])
def test_the_gpu_jpeg_decoder_gives_opencvs_pixels(orientation):
    """nvJPEG's planes, upsampled and converted as libjpeg-turbo does (pipeline.jpeg_kernels),
    against OpenCV on every layout, size and orientation: at most MAX_LEVELS_OFF grey levels
    apart (the inverse DCT is nvJPEG's), and the load check passes."""
    from yolo_triton.pipeline import torch_encoded

    device = torch.device("cuda", 0)
    gpu, note = torch_encoded.gpu_jpeg_or_none(device, wanted=True)
    assert gpu is not None, note
    files = jpegs_of_every_layout(orientation)
    for i, (name, data) in enumerate(files.items()):
        assert gpu.decode(data, encoded.read_header(data, i), i) is not None, name  # not left to the host
    got = torch_encoded.decode_all([*files.values(), PNG, PROGRESSIVE], device, gpu)
    worst = {}
    for i, (name, data, t) in enumerate(zip([*files, "png", "progressive"], [*files.values(), PNG, PROGRESSIVE], got)):
        want = encoded.decode(data, encoded.read_header(data, i), i).astype(int)
        assert tuple(t.shape) == (1, *want.shape) and t.is_cuda, name
        diff = np.abs(t[0].cpu().numpy().astype(int) - want)
        worst[name] = (int(diff.max()), int((diff > 0).sum()))
        assert diff.max() <= torch_encoded.MAX_LEVELS_OFF, (name, worst[name])
    print(f"orientation {orientation}: {note}; (max levels off, values off) per file: {worst}")


@needs_cuda
@pytest.mark.parametrize("model", GPU_MODELS)
def test_served_gpu_models_give_the_raw_paths_detections_for_encoded_files(server, model):
    from test_serving import iou_matrix

    with DetectorClient(server.url, model=model, timeout_s=120) as client:
        for data in (JPEG, PNG, (SAMPLES / "bus.jpg").read_bytes()):
            want = client.detect(images.decode(data)).detections
            got = client.detect_encoded(data).detections
            assert len(got.scores) == len(want.scores) > 0
            np.testing.assert_array_equal(got.classes, want.classes)
            assert np.diag(iou_matrix(got.boxes, want.boxes)).min() >= 0.99
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-2)
        with pytest.raises(ServerError, match=r"IMAGE_BYTES\[1\]: .*exceeds the limit"):
            client._call(client.client.infer, model, [_unchecked([JPEG, png_bomb()])], outputs=OUTPUTS)


@pytest.mark.parametrize("model", MODELS)
def test_an_empty_image_bytes_beside_image_is_no_second_image(server, model):
    """perf_analyzer's shared-memory mode sends every optional input: IMAGE with an IMAGE_BYTES of
    empty elements is answered as IMAGE alone; an empty IMAGE_BYTES alone is still refused."""
    image = images.read(SAMPLES / "bus.jpg")
    raw = grpcclient.InferenceServerClient(server.url)
    pixels = grpcclient.InferInput(spec.IMAGE.name, [1, *image.shape], "UINT8")
    pixels.set_data_from_numpy(image[None])
    empty = grpcclient.InferInput(spec.IMAGE_BYTES.name, [1, 1], "BYTES")
    empty.set_data_from_numpy(np.array([[b""]], dtype=np.object_))
    outputs = [grpcclient.InferRequestedOutput(t.name) for t in spec.ENSEMBLE_OUTPUTS]
    try:
        alone = raw.infer(model, [pixels], outputs=outputs)
        beside = raw.infer(model, [pixels, empty], outputs=outputs)
        for t in spec.ENSEMBLE_OUTPUTS:
            assert np.array_equal(alone.as_numpy(t.name), beside.as_numpy(t.name)), t.name
        assert int(alone.as_numpy(spec.NUM_DETECTIONS.name)[0]) > 0
        with pytest.raises(InferenceServerException) as only_empty:
            raw.infer(model, [empty], outputs=outputs)
        assert only_empty.value.status() == "StatusCode.INVALID_ARGUMENT", only_empty.value.message()
    finally:
        raw.close()
