"""Bad input against the real server and in the clients.

Raw requests (tritonclient, bypassing DetectorClient's own checks) must get an INVALID_ARGUMENT-
style status whose message names the problem, and the next good request must get exactly the
detections it got before. The clients refuse the same inputs before sending anything.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import sample_images
from tritonclient.utils import InferenceServerException

from yolo_triton import spec
from yolo_triton.client import images
from yolo_triton.client.detector import OUTPUTS, DetectorClient, ServerError, build_inputs, parse_outputs
from yolo_triton.pipeline.validation import InputError, check_images, check_thresholds
from yolo_triton.serve.launcher import free_port

INVALID = "StatusCode.INVALID_ARGUMENT"
NOT_FOUND = "StatusCode.NOT_FOUND"


@pytest.fixture(scope="module")
def client(server):
    """One DetectorClient for the module (the shared fixture is per test)."""
    with DetectorClient(server.url, timeout_s=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference(client) -> tuple[np.ndarray, object]:
    """The sample photo with the most detections, and what the server answers for it."""
    best = max(sample_images().values(), key=lambda im: len(client.detect(im).detections.scores))
    det = client.detect(best).detections
    assert len(det.scores) > 0, "the reference photo must have detections for the comparison to mean anything"
    return best, det


@pytest.fixture(scope="module")
def raw(server):
    c = grpcclient.InferenceServerClient(server.url)
    yield c
    c.close()


def assert_still_serving(client: DetectorClient, reference) -> None:
    image, expected = reference
    got = client.detect(image).detections
    np.testing.assert_array_equal(got.classes, expected.classes)
    np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-3)
    np.testing.assert_allclose(got.scores, expected.scores, atol=1e-5)


def tensor(name: str, array: np.ndarray, wire: str, shape: list[int] | None = None) -> grpcclient.InferInput:
    """An input carrying `array`'s bytes; `shape` overrides the declared shape (to lie about it)."""
    inp = grpcclient.InferInput(name, list(array.shape), wire)
    inp.set_data_from_numpy(array)
    if shape is not None:
        inp.set_shape(shape)
    return inp


def image(array: np.ndarray, wire: str = "UINT8", shape: list[int] | None = None) -> grpcclient.InferInput:
    return tensor(spec.IMAGE.name, array, wire, shape)


def scalar(t: spec.TensorSpec, value: float, dtype: str | None = None, wire: str | None = None):
    return tensor(t.name, np.full((1, 1), value, dtype or t.np_dtype), wire or t.wire_dtype)


def u8(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.uint8)


GOOD = u8(1, 64, 64, 3)
JPEG = np.frombuffer(cv2.imencode(".jpg", np.full((32, 32, 3), 127, np.uint8))[1].tobytes(), np.uint8)

# id -> (inputs, expected status, words the message must contain); messages are Triton's own or
# validation.py's, observed on tritonserver 2.51.
CASES: dict[str, tuple[Callable[[], list], str, tuple[str, ...]]] = {
    "dtype-float32": (lambda: [image(np.zeros((1, 8, 8, 3), np.float32), "FP32")], INVALID,
                      ("IMAGE", "FP32", "UINT8")),
    "dtype-bytes-encoded-jpeg": (lambda: [image(np.array([[JPEG.tobytes()]], dtype=object), "BYTES")], INVALID,
                                 ("IMAGE", "BYTES", "UINT8")),
    "encoded-jpeg-as-pixels": (lambda: [image(JPEG[None])], INVALID, ("unexpected shape", "IMAGE")),
    "rank-3-no-batch": (lambda: [image(u8(64, 64, 3))], INVALID, ("unexpected shape", "IMAGE", "[64,64,3]")),
    "rank-5": (lambda: [image(u8(1, 1, 64, 64, 3))], INVALID, ("unexpected shape", "IMAGE")),
    "1-channel": (lambda: [image(u8(1, 64, 64, 1))], INVALID, ("unexpected shape", "[1,64,64,1]")),
    "2-channels": (lambda: [image(u8(1, 64, 64, 2))], INVALID, ("unexpected shape", "[1,64,64,2]")),
    "4-channels": (lambda: [image(u8(1, 64, 64, 4))], INVALID, ("unexpected shape", "[1,64,64,4]")),
    "zero-bytes": (lambda: [image(u8(0), shape=[1, 64, 64, 3])], INVALID, ("byte size", "IMAGE", "got 0")),
    "truncated-bytes": (lambda: [image(u8(1, 10, 64, 3), shape=[1, 64, 64, 3])], INVALID,
                        ("byte size", "IMAGE", "got 1920")),
    "excess-bytes": (lambda: [image(u8(1, 100, 64, 3), shape=[1, 64, 64, 3])], INVALID, ("byte size", "IMAGE")),
    "empty-batch": (lambda: [image(u8(0, 64, 64, 3))], INVALID, ("IMAGE",)),
    "empty-batch-empty-image": (lambda: [image(u8(0, 0, 0, 3))], INVALID, ("IMAGE", "zero size")),
    "zero-height": (lambda: [image(u8(1, 0, 64, 3))], INVALID, ("IMAGE", "zero size")),
    "batch-over-limit": (lambda: [image(u8(spec.MAX_BATCH + 1, 4, 4, 3))], INVALID,
                         ("batch-size must be <=", str(spec.MAX_BATCH))),
    "side-over-limit-wide": (lambda: [image(u8(1, 1, spec.MAX_IMAGE_SIDE + 808, 3))], INVALID,
                             ("IMAGE", "exceeds the limit", str(spec.MAX_IMAGE_SIDE))),
    "side-over-limit-tall": (lambda: [image(u8(1, spec.MAX_IMAGE_SIDE + 1, 8, 3))], INVALID,
                             ("IMAGE", "exceeds the limit", str(spec.MAX_IMAGE_PIXELS))),
    "conf-nan": (lambda: [image(GOOD), scalar(spec.CONF_THRESHOLD, np.nan)], INVALID, ("CONF_THRESHOLD", "nan")),
    "conf-inf": (lambda: [image(GOOD), scalar(spec.CONF_THRESHOLD, np.inf)], INVALID, ("CONF_THRESHOLD", "inf")),
    "conf-above-1": (lambda: [image(GOOD), scalar(spec.CONF_THRESHOLD, 1.5)], INVALID,
                     ("CONF_THRESHOLD", "[0, 1]", "1.5")),
    "iou-negative": (lambda: [image(GOOD), scalar(spec.IOU_THRESHOLD, -0.25)], INVALID,
                     ("IOU_THRESHOLD", "[0, 1]", "-0.25")),
    "iou-nan": (lambda: [image(GOOD), scalar(spec.IOU_THRESHOLD, np.nan)], INVALID, ("IOU_THRESHOLD", "nan")),
    "max-det-zero": (lambda: [image(GOOD), scalar(spec.MAX_DETECTIONS, 0)], INVALID, ("MAX_DETECTIONS", "got 0")),
    "max-det-huge": (lambda: [image(GOOD), scalar(spec.MAX_DETECTIONS, 2_000_000)], INVALID,
                     ("MAX_DETECTIONS", "2000000")),
    "conf-float64": (lambda: [image(GOOD), scalar(spec.CONF_THRESHOLD, 0.5, "float64", "FP64")], INVALID,
                     ("CONF_THRESHOLD", "FP64", "FP32")),
    "conf-batch-mismatch": (lambda: [image(u8(2, 64, 64, 3)), scalar(spec.CONF_THRESHOLD, 0.5)], INVALID,
                            ("batch size does not match",)),
    "unknown-input": (lambda: [image(GOOD), tensor("FOO", np.zeros((1, 1), np.float32), "FP32")], INVALID,
                      ("unexpected inference input", "FOO")),
}


FUSED = spec.variant("ort_fused").ensemble


@pytest.mark.parametrize("model", [spec.ALIAS, FUSED])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_raw_bad_request_gets_clear_error_and_server_carries_on(raw, client, reference, case, model):
    build, status, words = CASES[case]
    with pytest.raises(InferenceServerException) as err:
        raw.infer(model, build(), client_timeout=60)
    assert err.value.status() == status, err.value.message()
    message = err.value.message()
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    assert_still_serving(client, reference)


def test_unknown_model_and_output_names(raw, client, reference):
    with pytest.raises(InferenceServerException) as err:
        raw.infer("no_such_model", [image(GOOD)], client_timeout=60)
    assert err.value.status() == NOT_FOUND and "no_such_model" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        raw.infer(spec.ALIAS, [image(GOOD)], outputs=[grpcclient.InferRequestedOutput("NO_SUCH_OUTPUT")],
                  client_timeout=60)
    assert err.value.status() == INVALID and "NO_SUCH_OUTPUT" in err.value.message()
    assert_still_serving(client, reference)


@pytest.mark.parametrize("model", [spec.ALIAS, FUSED])
def test_missing_image_is_refused_not_hung(raw, client, reference, model):
    """Triton 2.51 does not check an ensemble's required inputs; the request still fails at once
    (INVALID_ARGUMENT, "unexpected deadlock ... no more ensemble steps can be made"). A python
    model's are checked before it runs."""
    with pytest.raises(InferenceServerException) as err:
        raw.infer(model, [scalar(spec.CONF_THRESHOLD, 0.5)], client_timeout=30)
    assert err.value.status() == INVALID and model in err.value.message()
    assert_still_serving(client, reference)


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (1, 4000), (4000, 1), (spec.MAX_IMAGE_SIDE, 2), (3, 7)],
                         ids=["1x1", "2x2", "1x4000", "4000x1", "at-side-limit", "3x7"])
def test_tiny_and_extreme_aspect_images_are_served(client, facts, shape):
    h, w = shape
    det = client.detect(np.random.default_rng(h * w).integers(0, 255, (h, w, 3), dtype=np.uint8),
                        conf=0.01).detections
    assert det.boxes.shape == (len(det.scores), 4)
    assert (det.boxes[:, [0, 2]] >= 0).all() and (det.boxes[:, [0, 2]] <= w).all()
    assert (det.boxes[:, [1, 3]] >= 0).all() and (det.boxes[:, [1, 3]] <= h).all()
    assert ((det.classes >= 0) & (det.classes < len(facts.names))).all()


def test_bad_requests_do_not_spoil_the_batch_they_share(server, reference):
    """Good and bad requests sent together (the dynamic batcher groups them in one execute()):
    only the bad ones fail."""
    image_, expected = reference
    bad = u8(1, 1, spec.MAX_IMAGE_SIDE + 1, 3)

    def send(i: int):
        c = grpcclient.InferenceServerClient(server.url)
        try:
            if i % 2:
                with pytest.raises(InferenceServerException) as err:
                    c.infer(spec.ALIAS, [image(bad)], client_timeout=120)
                return err.value.status()
            return parse_outputs(c.infer(spec.ALIAS, build_inputs(image_[None]), outputs=OUTPUTS,
                                         client_timeout=120))[0]
        finally:
            c.close()

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(16)))
    for i, r in enumerate(results):
        if i % 2:
            assert r == INVALID
        else:
            np.testing.assert_allclose(r.boxes, expected.boxes, atol=1e-3)
            np.testing.assert_array_equal(r.classes, expected.classes)


# --- the clients refuse the same things before sending ------------------------------------------


@pytest.fixture(scope="module")
def offline():
    """A client whose server does not exist: an InputError (not UNAVAILABLE) proves the check
    came before any attempt to send."""
    with DetectorClient(f"127.0.0.1:{free_port()}", timeout_s=5) as c:
        yield c


HUGE = np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (1, 16000, 16000, 3))  # 768 MB, none allocated

CLIENT_CASES = {
    "float-pixels": (np.zeros((1, 8, 8, 3), np.float32), "dtype must be uint8"),
    "rank-3": (u8(8, 8, 3), "rank 3"),
    "grayscale-raw": (u8(1, 8, 8, 1), "3 channels"),
    "2-channels": (u8(1, 8, 8, 2), "3 channels"),
    "rgba-raw": (u8(1, 8, 8, 4), "convert grayscale/RGBA"),
    "empty-batch": (u8(0, 8, 8, 3), "empty batch"),
    "batch-over-limit": (u8(spec.MAX_BATCH + 1, 2, 2, 3), f"limit of {spec.MAX_BATCH}"),
    "16000x16000": (HUGE, "exceeds the limit"),
    "extreme-aspect-over-side": (u8(1, 1, spec.MAX_IMAGE_SIDE + 1, 3), "exceeds the limit"),
    "pixels-over-total": (np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (1, 8000, 5001, 3)), "40000000"),
    "zero-width": (u8(1, 8, 0, 3), "zero size"),
    "list-not-array": ([[[[0, 0, 0]]]], "numpy array"),
}


@pytest.mark.parametrize("case", list(CLIENT_CASES), ids=list(CLIENT_CASES))
def test_client_refuses_bad_images_before_sending(offline, case):
    array, words = CLIENT_CASES[case]
    with pytest.raises(InputError, match="IMAGE") as err:
        offline.infer(array)
    assert words in str(err.value)


@pytest.mark.parametrize(
    "thresholds, words",
    [({"conf": float("nan")}, "CONF_THRESHOLD"), ({"conf": float("inf")}, "CONF_THRESHOLD"),
     ({"conf": -0.1}, "CONF_THRESHOLD"), ({"iou": 1.01}, "IOU_THRESHOLD"), ({"max_det": 0}, "MAX_DETECTIONS"),
     ({"max_det": 2.5}, "whole number")],
    ids=["conf-nan", "conf-inf", "conf-negative", "iou-above-1", "max-det-zero", "max-det-fraction"],
)
def test_client_refuses_bad_thresholds_before_sending(offline, thresholds, words):
    with pytest.raises(InputError, match=words):
        offline.detect(u8(8, 8, 3), **thresholds)


def test_client_names_an_unknown_model_without_retrying(server):
    with DetectorClient(server.url, model="no_such_model", timeout_s=30) as c:
        with pytest.raises(ServerError) as err:
            c.detect(u8(8, 8, 3))
    assert err.value.status == NOT_FOUND
    assert "no_such_model" in str(err.value) and "attempts" not in str(err.value)


def test_validation_accepts_what_the_server_serves():
    assert check_images(u8(spec.MAX_BATCH, 1, 1, 3)).shape[0] == spec.MAX_BATCH
    edge = np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (1, spec.MAX_IMAGE_SIDE, 4882, 3))
    assert check_images(edge) is edge  # 8192 x 4882 = 39.99 M pixels: inside both limits
    assert check_thresholds(2, np.array([[0.0], [1.0]], np.float32), None, np.array([[1], [10_000]], np.int32)) == [
        (0.0, spec.DEFAULT_IOU, 1), (1.0, spec.DEFAULT_IOU, 10_000)]


# --- files: decoded and converted by the client -------------------------------------------------


@pytest.mark.parametrize("cut", ["half", "last-2-bytes", "header-only"])
@pytest.mark.parametrize("fmt", [".jpg", ".png"])
def test_truncated_files_are_refused_with_the_file_named(fmt, cut):
    data = cv2.imencode(fmt, next(iter(sample_images().values())))[1].tobytes()
    data = {"half": data[: len(data) // 2], "last-2-bytes": data[:-2], "header-only": data[:40]}[cut]
    with pytest.raises(InputError, match=rf"photo\{fmt}: truncated (JPEG|PNG) \(.*\); send the whole file"):
        images.decode(data, f"photo{fmt}")


@pytest.mark.parametrize("data", [b"", b"%PDF-1.7 not an image", bytes(range(256)) * 40, b"\xff\xd8\xff"],
                         ids=["0-bytes", "pdf", "random-bytes", "jpeg-magic-only"])
def test_non_image_bytes_are_refused(data):
    with pytest.raises(InputError, match="upload"):
        images.decode(data, "upload")


def test_rgba_and_grayscale_files_are_converted_not_rejected(client, reference, tmp_path):
    """RGBA with an opaque alpha carries the same pixels: the same detections must come back."""
    image_, expected = reference
    rgba = images.decode(cv2.imencode(".png", cv2.cvtColor(image_, cv2.COLOR_BGR2BGRA))[1].tobytes(), "rgba.png")
    assert rgba.shape == image_.shape and rgba.dtype == np.uint8
    got = client.detect(rgba).detections
    np.testing.assert_allclose(got.boxes, expected.boxes, atol=1e-3)
    gray = images.decode(cv2.imencode(".png", cv2.cvtColor(image_, cv2.COLOR_BGR2GRAY))[1].tobytes(), "gray.png")
    deep = images.decode(cv2.imencode(".png", image_.astype(np.uint16) * 257)[1].tobytes(), "16bit.png")
    assert gray.shape == deep.shape == image_.shape
    np.testing.assert_array_equal(deep, image_)  # 16-bit -> 8-bit keeps the high byte
    for im in (gray, deep):
        det = client.detect(im).detections
        assert det.boxes.shape == (len(det.scores), 4)
